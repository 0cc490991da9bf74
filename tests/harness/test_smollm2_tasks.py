"""The real SmolLM2-135M-Instruct weights: ``--model warppack`` scores as ``--model hf`` on four local tasks.

CPU, fp32, ``max_length=32`` (so each rolling document of ~60 tokens spans two of lm-eval's
windows): every request's log-likelihood within 1e-4, every is_greedy and generated text identical,
lm-eval's printed table identical.
"""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval", reason="pip install 'lm-eval==0.4.*' to test the lm-eval backend")

from lm_eval.models.huggingface import HFLM  # noqa: E402

from warppack.harness import WarpPackLM  # noqa: E402

pytestmark = pytest.mark.slow
ARGS = dict(max_length=32, batch_size=4)


def test_same_scores_as_the_hf_backend(smollm2, lm_eval_runs):
    evaluate, assert_same_results = lm_eval_runs
    model, tokenizer = smollm2
    model.set_attn_implementation("sdpa")  # what --model hf loads by default
    reference = evaluate(HFLM(pretrained=model, tokenizer=tokenizer, **ARGS))
    packed = evaluate(WarpPackLM(pretrained=model, tokenizer=tokenizer, max_tokens=256, **ARGS))
    assert model.config._attn_implementation == "warppack"
    assert_same_results(packed, reference)
