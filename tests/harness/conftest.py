"""Fixtures of the lm-eval backend tests: the local tasks and a tiny checkpoint folder (no hub access)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parent / "tasks"
TASK_NAMES = ["warppack_choice", "warppack_cloze", "warppack_perplexity", "warppack_generate"]


def task_texts() -> list:
    """Every string of the local task documents (what the tiny tokenizer is trained on)."""
    texts = []
    for path in sorted((TASKS / "data").glob("*.json")):
        for document in json.loads(path.read_text()):
            for value in document.values():
                texts += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return texts


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing in these tests may reach the Hugging Face hub (the tasks and checkpoints are local)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A folder with a random-init Llama (64 positions) and a byte-level BPE tokenizer of the task texts."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torch

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(task_texts() + ["Question: Answer: Q: A:\n"], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, initializer_range=0.2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def evaluate(lm, **kwargs) -> dict:
    """lm-eval's ``simple_evaluate`` of ``lm`` (an LM, or a model name with ``model_args=``) on the local
    tasks, per-request samples included."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)  # indexing every built-in task takes ~10 s
    return lm_eval.simple_evaluate(model=lm, tasks=TASK_NAMES, task_manager=manager,
                                   log_samples=True, **kwargs)


def responses(samples) -> dict:
    """``{(task, doc_id): [response, ...]}``: (logprob, is_greedy) pairs, rolling logprobs or generated text."""
    found = {}
    for task, rows in samples.items():
        for row in rows:
            found[task, row["doc_id"]] = [tuple(r[0]) if isinstance(r[0], (list, tuple)) else r[0]
                                          for r in row["resps"]]
    return found


def assert_same_results(packed: dict, reference: dict, *, tolerance: float = 1e-4, same_table: bool = True) -> None:
    """Every log-likelihood within ``tolerance``, is_greedy and generations identical, metrics within 1e-6
    (relative) and, with ``same_table``, lm-eval's printed table identical."""
    from lm_eval.utils import make_table

    got, want = responses(packed["samples"]), responses(reference["samples"])
    assert got.keys() == want.keys() and len(want) > 0
    for key, expected in want.items():
        actual = got[key]
        assert len(actual) == len(expected), key
        for a, e in zip(actual, expected):
            if isinstance(e, str):
                assert a == e, (key, a, e)
            elif isinstance(e, tuple):  # (logprob, is_greedy)
                assert abs(a[0] - e[0]) <= tolerance and bool(a[1]) == bool(e[1]), (key, a, e)
            else:  # a rolling document's summed logprob
                assert abs(a - e) <= tolerance, (key, a, e)
    for task, metrics in reference["results"].items():
        for name, value in metrics.items():
            if isinstance(value, float):
                assert packed["results"][task][name] == pytest.approx(value, rel=1e-6), (task, name)
    if same_table:
        assert make_table(packed) == make_table(reference)


@pytest.fixture(scope="session")
def lm_eval_runs():
    """``(evaluate, assert_same_results)`` for the test modules of this folder."""
    pytest.importorskip("lm_eval", reason="pip install 'lm-eval==0.4.*' to test the lm-eval backend")
    return evaluate, assert_same_results


@pytest.fixture(scope="session")
def local_tasks():
    """``(folder of the task YAMLs, task names)``."""
    return TASKS, TASK_NAMES
