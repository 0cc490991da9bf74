"""Batched request encoding gives every request the token ids of lm-eval's own per-request path.

The reference is ``HFLM`` with the same arguments: ``TemplateLM.loglikelihood`` (``_encode_pair``,
the empty-context prefix token) and ``HFLM.loglikelihood_rolling`` (``tok_encode`` per document),
each with its scoring replaced by a recorder of the token requests it would score.
"""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval", reason="pip install 'lm-eval==0.4.*' to test the lm-eval backend")
transformers = pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from warppack.harness import WarpPackLM  # noqa: E402
from warppack.harness import backend as backend_module  # noqa: E402
from warppack.harness.encoding import batches_exactly, encode_pairs  # noqa: E402

LONG = "A binary search looks for a value in a sorted list by halving it. " * 300
ADVERSARIAL_PAIRS = [
    ("", "The river rises in the hills"),  # empty context: the prefix token
    ("", " a continuation with a leading space"),
    ("", "<s>starts with the BOS text"),
    ("", "<|endoftext|>starts with the EOS text"),
    ("Question: What do bees make?\nAnswer:  ", "honey"),  # trailing spaces move to the continuation
    ("Answer:\n\t \n", " no"),
    ("   ", "a context of spaces only"),
    ("Hello", "\n\nthere"),  # continuations starting with whitespace
    ("Hello", "  two spaces"),
    ("Hello", " "),
    ("Hello", ""),
    ("Café, naïve, Straße, 日本語, emoji 🎉\u00a0", "über 🚀 ok"),  # unicode, a trailing no-break space
    ("e\u0301", "\u0301x combining marks"),
    ("ideographic space\u3000", "next"),
    ("<s>Question: starts with BOS", " yes"),
    ("<|endoftext|>after EOS", " yes"),
    (LONG, " in a sorted list"),  # very long (left truncation happens later, on the token ids)
    ("short", LONG),
    ("Question: What do bees make?\nAnswer:", " honey"),  # duplicates are encoded once, answered twice
    ("Question: What do bees make?\nAnswer:", " honey"),
]
ADVERSARIAL_TEXTS = [LONG, "Café 日本語 🎉 naïve", "<s>a document that starts with BOS", "  leading spaces",
                     "trailing spaces  ", "one", "one"]


@pytest.fixture(scope="module")
def task_requests(local_tasks):
    """``{request type: [Instance, ...]}`` of the local log-likelihood tasks."""
    folder, names = local_tasks
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    found: dict = {"loglikelihood": [], "loglikelihood_rolling": []}
    for task in manager.load([n for n in names if n != "warppack_generate"])["tasks"].values():
        task.build_all_requests(rank=0, world_size=1)
        for instance in task.instances:
            found[instance.request_type].append(instance)
    assert found["loglikelihood"] and found["loglikelihood_rolling"]
    return found


def instances(kind, arguments):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in arguments]


def recorded(lm, monkeypatch):
    """The token requests ``lm`` hands to its scoring (which is replaced: nothing runs the model)."""
    seen = []

    def record(requests, disable_tqdm=False, override_bs=None):
        seen.extend(requests)
        return [(0.0, False)] * len(requests)

    monkeypatch.setattr(lm, "_loglikelihood_tokens", record)
    return seen


def assert_same_token_ids(packed, reference, requests, monkeypatch):
    pairs = requests["loglikelihood"] + instances("loglikelihood", ADVERSARIAL_PAIRS)
    texts = requests["loglikelihood_rolling"] + instances("loglikelihood_rolling", [(t,) for t in ADVERSARIAL_TEXTS])
    want, got = recorded(reference, monkeypatch), recorded(packed, monkeypatch)
    reference.loglikelihood(pairs, disable_tqdm=True)
    packed.loglikelihood(pairs, disable_tqdm=True)
    assert len(got) == len(want) == len(pairs)
    for request, g, w in zip(pairs, got, want):
        assert g == w, request.args
    del want[:], got[:]
    reference.loglikelihood_rolling(texts, disable_tqdm=True)
    packed.loglikelihood_rolling(texts, disable_tqdm=True)
    assert got == want and len(want) >= len(texts)


@pytest.mark.parametrize("options", [{}, {"add_bos_token": True}, {"add_bos_token": False},
                                     {"add_bos_token": True, "prefix_token_id": 0}])
def test_batched_encoding_gives_lm_eval_token_ids(tiny_checkpoint, task_requests, monkeypatch, options):
    arguments = dict(pretrained=str(tiny_checkpoint), dtype="float32", device="cpu", **options)
    reference = HFLM(**arguments)
    packed = WarpPackLM(**arguments, max_tokens=128)
    assert packed._encodes_in_batches()
    for name in ("tok_encode", "_encode_pair"):  # lm-eval's per-request path is not taken
        monkeypatch.setattr(packed, name, lambda *args, **kwargs: pytest.fail("encoded one request at a time"))
    assert_same_token_ids(packed, reference, task_requests, monkeypatch)


@pytest.mark.slow
def test_batched_encoding_gives_lm_eval_token_ids_with_smollm2(smollm2, task_requests, monkeypatch):
    model, tokenizer = smollm2
    reference = HFLM(pretrained=model, tokenizer=tokenizer)
    packed = WarpPackLM(pretrained=model, tokenizer=tokenizer, max_tokens=256)
    assert packed._encodes_in_batches()
    assert_same_token_ids(packed, reference, task_requests, monkeypatch)


def test_tokenizers_that_may_batch_differently_are_left_to_lm_eval(tiny_checkpoint, task_requests, monkeypatch):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert batches_exactly(tokenizer)

    base = type(tokenizer)  # a subclass overriding encode(), as CodeLlama's (it splits a string at its fill token)
    tokenizer.__class__ = type("Overriding", (base,), {"encode": lambda self, *a, **k: base.encode(self, *a, **k)})
    assert not batches_exactly(tokenizer) and not batches_exactly(object())
    arguments = dict(pretrained=str(tiny_checkpoint), dtype="float32", device="cpu")
    packed = WarpPackLM(**arguments, max_tokens=128)
    monkeypatch.setattr(backend_module, "batches_exactly", lambda tokenizer: False)
    assert not packed._encodes_in_batches()
    assert_same_token_ids(packed, HFLM(**arguments), task_requests, monkeypatch)


def test_an_empty_request_is_refused_with_its_index(tiny_checkpoint):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match=r"loglikelihood request 1: context '' and continuation '', which encodes "
                                         r"to no tokens"):
        encode_pairs(tokenizer, [("a", "b"), ("", "")], add_bos_token=None, prefix_token_id=tokenizer.bos_token_id)
