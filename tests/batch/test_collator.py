"""PackedCollator and PackedBatch: layout properties, one storage, bad input, buffer reuse."""

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import warppack
from warppack import PackedBatch, PackedCollator, unpack

sequences = st.lists(
    st.lists(st.integers(0, 50_000), min_size=1, max_size=40), min_size=0, max_size=12
)


def _storage_ptrs(batch):
    return {v.untyped_storage().data_ptr() for v in batch.values() if torch.is_tensor(v)}


@settings(max_examples=150, deadline=None)
@given(
    seqs=sequences,
    pad_multiple=st.sampled_from([None, 1, 8, 64]),
    with_labels=st.booleans(),
    kind=st.sampled_from(["list", "numpy32", "tensor"]),
)
def test_layout_properties(seqs, pad_multiple, with_labels, kind):
    convert = {
        "list": list,
        "numpy32": lambda s: np.asarray(s, dtype=np.int32),
        "tensor": lambda s: torch.tensor(s),
    }[kind]
    examples = []
    for s in seqs:
        example = {"input_ids": convert(s)}
        if with_labels:
            example["labels"] = convert([t % 7 for t in s])
        examples.append(example)
    batch = PackedCollator(pad_to_multiple_of=pad_multiple, allow_empty=True)(examples)  # [] too: the empty step

    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    cu = batch["cu_seq_lens_q"]
    total = ids.shape[1]
    assert ids.dtype == labels.dtype == pos.dtype == torch.int64
    assert cu.dtype == batch["seq_idx"].dtype == torch.int32
    assert ids.shape == labels.shape == pos.shape == batch["seq_idx"].shape == (1, total)
    assert batch["cu_seq_lens_k"] is cu
    # cu_seqlens: starts at 0, strictly increasing, ends at T.
    bounds = cu.tolist()
    assert bounds[0] == 0 and bounds[-1] == total
    assert all(b > a for a, b in zip(bounds, bounds[1:]))
    real = sum(len(s) for s in seqs)
    assert batch.num_tokens == real and batch.num_sequences == len(seqs)
    assert batch.num_padding == total - real
    if pad_multiple:
        assert total % pad_multiple == 0
    # unpack returns the original examples, positions restart, first label ignored.
    pieces = unpack(ids, batch)
    assert [p.tolist() for p in pieces] == seqs
    for i, (p, lab) in enumerate(zip(unpack(pos, batch), unpack(labels, batch))):
        assert p.tolist() == list(range(len(seqs[i])))
        expected = [t % 7 for t in seqs[i]] if with_labels else seqs[i]
        assert lab.tolist() == [-100] + expected[1:]
    assert batch["max_length_q"] == max([len(s) for s in seqs] + [total - real])
    # Padding: its own segment, labels ignored, seq_idx -1.
    if total > real:
        assert bounds[-2] == real
        assert (labels[0, real:] == -100).all() and (batch["seq_idx"][0, real:] == -1).all()
    seq_idx = batch["seq_idx"][0, :real].tolist()
    assert seq_idx == [i for i, s in enumerate(seqs) for _ in s]
    # One storage behind every tensor.
    assert len(_storage_ptrs(batch)) == 1


def test_static_shape_gives_one_shape():
    collate = PackedCollator(64, static_shape=True, max_sequences=8)
    shapes = set()
    for n in (1, 3, 8):
        batch = collate([{"input_ids": list(range(1, 5))}] * n)
        shapes.add((batch["input_ids"].shape, batch["cu_seq_lens_q"].shape, batch["max_length_q"]))
        assert batch.num_sequences == n and batch.num_tokens == 4 * n
        cu = batch["cu_seq_lens_q"].tolist()
        assert cu[n] == 4 * n and cu[n + 1:] == [64] * (len(cu) - n - 1)
    assert shapes == {(torch.Size([1, 64]), torch.Size([10]), 64)}


@pytest.mark.parametrize("max_sequences, pieces", [(None, 4), (2, 2)])
def test_static_padding_comes_in_short_segments_the_spare_boundaries_allow(max_sequences, pieces):
    # One 5-token sequence padded to 2048: attention over one 2043-token padding segment would cost
    # like a real sequence that long (quadratically in the exact kernels), and its positions would
    # count up to 2042. Spare boundaries take it in pieces of at most 512, as even as possible.
    batch = PackedCollator(2048, static_shape=True, max_sequences=max_sequences)([{"input_ids": [3, 4, 5, 6, 7]}])
    cu = batch["cu_seq_lens_q"].tolist()
    lengths = [b - a for a, b in zip(cu[1:], cu[2:]) if b > a]
    assert cu[:2] == [0, 5] and sum(lengths) == 2043 and len(lengths) == pieces
    assert max(lengths) - min(lengths) <= 1 and max(lengths) <= max(512, -(-2043 // pieces))
    positions = batch["position_ids"][0].tolist()
    assert max(positions[5:]) == max(lengths) - 1 and positions[5] == 0
    assert batch.num_sequences == 1 and batch.num_padding == 2043 and batch.num_tokens == 5
    assert len(unpack(batch["input_ids"], batch)) == 1
    assert (batch["labels"][0, 5:] == -100).all()


def test_empty_batch_is_a_zero_loss_padding_step():
    collate = PackedCollator(pad_to_multiple_of=8)
    for batch in (collate.empty_batch(), PackedCollator(pad_to_multiple_of=8, allow_empty=True)([])):
        assert batch.num_sequences == 0 and batch.num_tokens == 0 and batch.num_padding == 8
        assert (batch["labels"] == -100).all()
        assert batch["cu_seq_lens_q"].tolist() == [0, 8]
        logits = torch.randn(1, 8, 11, requires_grad=True)
        loss = warppack.causal_lm_loss(logits, batch["labels"], num_items_in_batch=5)
        loss.backward()
        assert float(loss.detach()) == 0.0 and not logits.grad.any(), "the step adds nothing to the loss or the gradients"
    static = PackedCollator(64, static_shape=True, max_sequences=4).empty_batch()
    assert static["input_ids"].shape == (1, 64) and static["cu_seq_lens_q"].shape == (6,)
    assert static.num_sequences == 0 and bool((static["labels"] == -100).all())
    assert PackedCollator().empty_batch()["input_ids"].shape == (1, 1)  # one padding token


def test_allow_empty_survives_copies():
    collate = PackedCollator(64, allow_empty=True)
    for clone in (pickle.loads(pickle.dumps(collate)), copy.deepcopy(collate)):
        assert clone.allow_empty and clone([]).num_sequences == 0
    assert "allow_empty=True" in repr(collate)
    assert not pickle.loads(pickle.dumps(PackedCollator())).allow_empty


def test_to_and_pin_memory_keep_one_buffer():
    batch = PackedCollator()([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    moved = batch.to("cpu")
    assert moved is batch  # already there: no copy
    clone = pickle.loads(pickle.dumps(batch))
    assert clone["input_ids"].tolist() == batch["input_ids"].tolist()
    rebuilt = PackedBatch(dict(batch))  # what HF Trainer's _prepare_input does
    assert rebuilt.num_sequences == 2 and rebuilt.num_padding == 0
    assert torch.equal(rebuilt["input_ids"], batch["input_ids"])
    with pytest.raises(TypeError, match="integer dtypes"):
        batch.to(torch.float16)


def test_buffer_is_reused_only_when_nobody_holds_the_batch():
    collate = PackedCollator()
    examples = [{"input_ids": list(range(1, 100))}]
    first = collate(examples)
    ptr = first.storage_ptr()
    second = collate(examples)
    assert second.storage_ptr() != ptr  # first is still alive: never overwritten
    snapshot = first["input_ids"].clone()
    del second
    for _ in range(20):
        collate(examples)  # steady state: the pool recycles
    assert torch.equal(first["input_ids"], snapshot)
    pool = next(iter(collate._pools.values()))
    assert pool.allocations <= 3


def test_a_batch_nobody_has_read_yet_still_owns_its_buffer():
    # Views are made on first access; the batch must hold its buffer before that, or the pool
    # would hand the same memory to the next batch.
    collate = PackedCollator()
    unread = collate([{"input_ids": list(range(1, 50))}])
    other = collate([{"input_ids": list(range(100, 150))}])
    assert unread.storage_ptr() != other.storage_ptr()
    clone = pickle.loads(pickle.dumps(unread))  # what a DataLoader worker sends: keys not read yet
    assert unread["input_ids"][0, :3].tolist() == [1, 2, 3] == clone["input_ids"][0, :3].tolist()
    assert len(unread) == len(clone) == 8 and set(unread) == set(clone)
    assert unread.num_tokens == 49 and other.input_ids[0, 0].item() == 100


@pytest.mark.parametrize(
    "examples, error, match",
    [
        ([{"input_ids": []}], ValueError, r"example 0 of this batch: 'input_ids' is empty"),
        ([{"input_ids": [1.5, 2.0]}], TypeError, r"example 0 of this batch: 'input_ids' has dtype float64"),
        ([{"input_ids": torch.ones(3)}], TypeError, r"dtype torch.float32"),
        ([{"input_ids": [1]}, {"input_ids": [[1, 2]]}], ValueError, r"example 1 of this batch: 'input_ids' has shape \(1, 2\)"),
        ([{"input_ids": [1, 2], "labels": [1]}], ValueError, r"example 0 of this batch: 'labels' has 1 tokens but 'input_ids' has 2"),
        ([{"input_ids": [3, -4]}], ValueError, r"-4"),
        ([{"input_ids": np.array([2**63], dtype=np.uint64)}], ValueError, r"overflows the int64"),
        ([{"text": "hi"}], TypeError, r"example 0 of this batch: expected a mapping with 'input_ids'"),
        ([{"input_ids": [1, 2], "attention_mask": [1, 0]}], ValueError, r"padding=False"),
    ],
)
def test_bad_examples_name_the_example_field_and_fix(examples, error, match):
    with pytest.raises(error, match=match):
        PackedCollator()(examples)


def test_budget_errors():
    with pytest.raises(ValueError, match=r"example 1 of this batch: 'input_ids' has 9 tokens, more than max_tokens=8"):
        PackedCollator(8)([{"input_ids": [1]}, {"input_ids": list(range(9))}])
    with pytest.raises(ValueError, match=r"hold 10 tokens, more than max_tokens=8.*PackedBatchSampler"):
        PackedCollator(8)([{"input_ids": list(range(5))}, {"input_ids": list(range(5))}])
    batch = PackedCollator(8, overlong="truncate")([{"input_ids": list(range(1, 12))}])
    assert batch["input_ids"].tolist() == [list(range(1, 9))]
    for bad in (0, -3, 2.5, "8", True):
        with pytest.raises((TypeError, ValueError), match="max_tokens"):
            PackedCollator(bad)
    with pytest.raises(ValueError, match="static_shape=True"):
        PackedCollator(static_shape=True)


def test_skip_empty():
    batch = PackedCollator(skip_empty=True)([{"input_ids": []}, {"input_ids": [7, 8]}])
    assert batch.num_sequences == 1 and batch["input_ids"].tolist() == [[7, 8]]


def test_unpack_validates_bounds():
    x = torch.arange(5)
    assert [t.tolist() for t in unpack(x, torch.tensor([0, 2, 5]))] == [[0, 1], [2, 3, 4]]
    assert [t.tolist() for t in unpack(x.view(1, 5, 1).squeeze(-1), [0, 2, 5], num_sequences=1)] == [[0, 1]]
    with pytest.raises(ValueError, match="never decrease"):
        unpack(x, torch.tensor([0, 3, 2]))
    with pytest.raises(ValueError, match="packed length 5"):
        unpack(x, torch.tensor([0, 9]))


def test_trainers_may_add_flags_and_replace_tensors():
    batch = PackedCollator()([{"input_ids": [1, 2, 3]}])
    batch["use_cache"] = False  # what TRL's SFTTrainer does before the forward
    assert batch["use_cache"] is False and batch.storage_ptr() is not None
    batch["labels"] = batch["labels"].clone()
    assert batch.storage_ptr() is None  # detached: moves now go tensor by tensor
    assert batch.to("cpu")["use_cache"] is False
    with pytest.raises(KeyError, match="part of the packed layout"):
        del batch["input_ids"]


_WIDTHS = {"list": list, "int32": lambda s: np.asarray(s, np.int32), "int64": lambda s: np.asarray(s, np.int64),
           "uint16": lambda s: np.asarray(s, np.uint16), "strided": lambda s: np.repeat(np.asarray(s, np.int64), 2)[::2],
           "tensor": lambda s: torch.tensor(s, dtype=torch.int32)}


@settings(max_examples=120, deadline=None)
@given(
    seqs=st.lists(st.tuples(st.lists(st.integers(0, 60_000), min_size=1, max_size=30),
                            st.sampled_from(list(_WIDTHS)), st.sampled_from([None, *_WIDTHS])), max_size=8),
    static=st.booleans(),
    mask=st.booleans(),
)
def test_every_source_type_gives_the_int64_batch(seqs, static, mask):
    # The fast path reads int32/int64 arrays in place; everything else is converted first. Both
    # must give exactly the batch of plain int64 arrays.
    def examples(wide):
        out = []
        for s, kind, label_kind in seqs:
            labels = [t % 11 for t in s]
            example = {"input_ids": np.asarray(s, np.int64) if wide else _WIDTHS[kind](s)}
            if label_kind is not None:
                example["labels"] = np.asarray(labels, np.int64) if wide else _WIDTHS[label_kind](labels)
            if mask:
                example["attention_mask"] = [1] * len(s)
            out.append(example)
        return out

    collate = PackedCollator(256, static_shape=static, max_sequences=8 if static else None, allow_empty=True)
    got, expected = collate(examples(False)), collate(examples(True))
    for key in ("input_ids", "labels", "position_ids", "seq_idx", "cu_seq_lens_q"):
        assert torch.equal(got[key], expected[key]), key
    assert got["max_length_q"] == expected["max_length_q"] and got.num_padding == expected.num_padding


@pytest.mark.parametrize("kind", ["int32", "int64", "list"])
def test_errors_name_the_example_on_every_path(kind):
    convert = _WIDTHS[kind]
    collate = PackedCollator(16, skip_empty=True)
    with pytest.raises(ValueError, match=r"example 2 of this batch: 'input_ids' has token id -3 at position 1"):
        collate([{"input_ids": convert([1, 2])}, {"input_ids": convert([])}, {"input_ids": convert([4, -3])}])
    with pytest.raises(ValueError, match=r"example 1 of this batch: 'labels' has 1 tokens but 'input_ids' has 2"):
        collate([{"input_ids": convert([1])}, {"input_ids": convert([1, 2]), "labels": convert([5])}])
    with pytest.raises(ValueError, match=r"example 1 of this batch: 'input_ids' has 17 tokens, more than max_tokens=16"):
        collate([{"input_ids": convert([1])}, {"input_ids": convert(list(range(17)))}])
    with pytest.raises(ValueError, match=r"example 0 of this batch: 'attention_mask' contains zeros"):
        collate([{"input_ids": convert([1, 2]), "attention_mask": np.array([1, 0])}])
    with pytest.raises(ValueError, match=r"example 1 of this batch: 'input_ids' has shape \(1, 2\)"):
        collate([{"input_ids": convert([1])}, {"input_ids": np.ones((1, 2), np.int64)}])
    batch = collate([{"input_ids": convert([7, 8])}, {"input_ids": convert([])}])
    assert batch["input_ids"].tolist() == [[7, 8]] and batch.num_sequences == 1
