"""``--model warppack`` against ``--model hf`` on a tiny checkpoint folder: the same answers, packed.

The checkpoint (conftest.py) has 64 positions, so lm-eval's rolling windows and left truncation
both happen on the local tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval", reason="pip install 'lm-eval==0.4.*' to test the lm-eval backend")
transformers = pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from support.paths import REPO  # noqa: E402

from warppack.harness import WarpPackLM  # noqa: E402

ARGS = "dtype=float32,device=cpu"


def test_model_names_and_folder_score_as_the_hf_backend(tiny_checkpoint, lm_eval_runs):
    evaluate, assert_same_results = lm_eval_runs
    reference = evaluate("hf", model_args=f"pretrained={tiny_checkpoint},{ARGS}", batch_size=4)
    packed = evaluate("warppack", model_args=f"pretrained={tiny_checkpoint},{ARGS},max_tokens=128", batch_size=4)
    # A random model's word perplexity is in the millions: its printed digits go past float precision.
    assert_same_results(packed, reference, same_table=False)


def requests(kind, arguments):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in arguments]


def test_loaded_model_scores_as_the_hf_backend(tiny_checkpoint):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint, attn_implementation="sdpa").eval()
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3)
    pairs = [("Question: What do bees make?\nAnswer:", f" {choice}") for choice in ("honey", "cheese", "wool")]
    pairs += [("", "The river rises in the hills"),  # empty context: lm-eval's prefix token
              ("A binary search looks for a value " * 12, " in a sorted list")]  # cut from the left
    texts = [("The river rises in the hills to the north and runs south through farmland " * 8,), ("Short note.",)]
    assert min(len(tokenizer(pairs[-1][0])["input_ids"]), len(tokenizer(texts[0][0])["input_ids"])) > 2 * 64
    want = reference.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    want_rolling = reference.loglikelihood_rolling(requests("loglikelihood_rolling", texts), disable_tqdm=True)

    packed = WarpPackLM(pretrained=model, tokenizer=tokenizer, max_tokens=100)
    assert model.config._attn_implementation == "warppack"  # switched: packed rows must not see each other
    got = packed.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    got_rolling = packed.loglikelihood_rolling(requests("loglikelihood_rolling", texts), disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    assert got_rolling == pytest.approx(want_rolling, abs=1e-4)


@pytest.fixture(scope="module")
def tiny_lm(tiny_checkpoint):
    return WarpPackLM(pretrained=str(tiny_checkpoint), dtype="float32", device="cpu", max_tokens=256)


def test_a_shared_context_is_one_sequence_and_one_forward_per_batch(tiny_lm):
    seen = []
    hook = tiny_lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["cu_seq_lens_q"].tolist()), with_kwargs=True)
    context = "Question: Which planet is closest to the sun?\nAnswer:"
    prefix = tiny_lm.tok_encode(context)
    words = [w for w in (" the", " a", " in", " is", " of", " and", " to", " it")
             if tiny_lm.tok_encode(context + w)[:-1] == prefix]
    assert len(words) >= 3  # one-token continuations (as lm-eval's letter choices are)
    try:
        tiny_lm.loglikelihood(requests("loglikelihood", [(context, w) for w in words]), disable_tqdm=True)
    finally:
        hook.remove()
    assert seen == [[0, len(prefix)]]  # one forward of the one shared row


def test_bad_requests_and_models_are_refused(tiny_lm, tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"loglikelihood request 1 has 2 context and 0 continuation tokens"):
        tiny_lm._loglikelihood_tokens([(None, [5, 6], [7]), (None, [5, 6], [])])
    with pytest.raises(ValueError, match=r"attn_implementation='sdpa': the warppack backend packs sequences"):
        WarpPackLM(pretrained=str(tiny_checkpoint), attn_implementation="sdpa", device="cpu")
    t5 = transformers.T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    t5.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"backend='seq2seq': the warppack backend packs decoder-only"):
        WarpPackLM(pretrained=str(tmp_path), device="cpu")


def _run(arguments, *, timeout=600):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")  # HF_*_OFFLINE=1 from conftest's fixture
    return subprocess.run([sys.executable, *arguments], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _typed(row: dict, *, text: bool) -> dict:
    """A logged sample with its responses as Python values again (lm-eval writes them as strings)."""
    if not text:
        row["resps"] = [[[float(r[0][0]), r[0][1] == "True"]] if isinstance(r[0], list) else [float(r[0])]
                        for r in row["resps"]]
    return row


@pytest.mark.slow  # lm-eval's command line indexes all of its ~14k built-in task files first (~10 s)
def test_command_line_scores_as_the_hf_backend(tiny_checkpoint, tmp_path, lm_eval_runs, local_tasks):
    evaluate, assert_same_results = lm_eval_runs
    tasks, names = local_tasks
    done = _run(["-m", "warppack.harness", "run", "--model", "warppack", "--model_args",
                 f"pretrained={tiny_checkpoint},dtype=float32,max_tokens=128", "--device", "cpu",
                 "--tasks", ",".join(names), "--include_path", str(tasks), "--batch_size", "4",
                 "--log_samples", "--output_path", str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = tmp_path.rglob("results_*.json")
    packed = json.loads(results_file.read_text())
    packed["samples"] = {task: [_typed(json.loads(line), text=task == "warppack_generate") for line in
                                next(tmp_path.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
                         for task in names}
    reference = evaluate("hf", model_args=f"pretrained={tiny_checkpoint},{ARGS}", batch_size=4)
    assert_same_results(packed, reference, same_table=False)
    assert "warppack_perplexity" in done.stdout  # lm-eval printed its table
