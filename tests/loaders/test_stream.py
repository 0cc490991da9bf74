"""PackedIterableDataset: exactly once over ranks × workers, equal steps from lengths, resume, misuse."""

from __future__ import annotations

import types
import warnings
from collections import defaultdict
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import warppack
from warppack import PackedIterableDataset

from support.resume_harness import (IterableSession, StatefulDataLoader, check_resume, check_skip_first_batches, example_ids,
                            iterable_stateful_session, make_examples)

WORLDS = (1, 2, 3, 7, 8)
SCALE = 10_000  # token value = example id * SCALE + position: a piece tells where it came from


def span_examples(lengths):
    return [{"input_ids": np.arange(n, dtype=np.int64) + i * SCALE} for i, n in enumerate(lengths)]


def spans(examples):
    """A collator that keeps only (example id, start, size) of every piece: cheap and inspectable."""
    return [(int(e["input_ids"][0]) // SCALE, int(e["input_ids"][0]) % SCALE, len(e["input_ids"])) for e in examples]


def interleave(per_worker):
    """What an in-order DataLoader makes of its workers' streams: round robin, skipping finished ones."""
    out, iters = [], [iter(w) for w in per_worker]
    while iters:
        alive = []
        for it in iters:
            item = next(it, None)
            if item is not None:
                out.append(item)
                alive.append(it)
        iters = alive
    return out


def simulate(make, world, workers):
    """Each rank's batches, with DataLoader workers simulated in-process (get_worker_info patched)."""
    per_rank = []
    for rank in range(world):
        ds = make(rank)
        if workers == 0:
            per_rank.append(list(ds))
            continue
        streams = []
        for w in range(workers):
            info = types.SimpleNamespace(id=w, num_workers=workers)
            with mock.patch("warppack.loaders.stream.shards.get_worker_info", return_value=info):
                streams.append(list(iter(ds)))
        per_rank.append(interleave(streams))
    return per_rank


def check_spans(lengths, max_tokens, overlong, per_rank, *, equal):
    covered = defaultdict(list)
    for batches in per_rank:
        for batch in batches:
            assert sum(size for _, _, size in batch) <= max_tokens, "budget"
            for i, start, size in batch:
                covered[i].append((start, size))
    for i, n in enumerate(lengths):
        pieces = sorted(covered.pop(i, []))
        want = min(n, max_tokens) if overlong == "truncate" else n
        assert pieces and pieces[0][0] == 0, f"example {i} missing"
        assert all(a[0] + a[1] == b[0] for a, b in zip(pieces, pieces[1:])), f"example {i} has gaps or repeats"
        assert pieces[-1][0] + pieces[-1][1] == want, f"example {i} covered {pieces}, length {want}"
        if overlong != "split":
            assert len(pieces) == 1, f"example {i} read {len(pieces)} times"
    assert not covered, f"unknown examples {sorted(covered)}"
    if equal:
        assert len({len(b) for b in per_rank}) == 1, f"unequal steps {[len(b) for b in per_rank]}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 80), max_size=90), world=st.sampled_from(WORLDS),
       workers=st.sampled_from([0, 1, 3]), overlong=st.sampled_from(["truncate", "split"]),
       buffer_size=st.integers(1, 12), with_lengths=st.booleans(), shuffle=st.booleans(),
       max_seqs=st.sampled_from([None, 2]))
def test_exactly_once_equal_steps_budget_simulated_workers(lengths, world, workers, overlong, buffer_size,
                                                            with_lengths, shuffle, max_seqs):
    examples = span_examples(lengths)

    def make(rank):
        return PackedIterableDataset(examples, 48, buffer_size=buffer_size, collator=spans, overlong=overlong,
                                     lengths=lengths if with_lengths else None, shuffle=shuffle, seed=5,
                                     max_seqs_per_bin=max_seqs, num_replicas=world, rank=rank, num_workers=workers)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_rank = simulate(make, world, workers)
    check_spans(lengths, 48, overlong, per_rank, equal=with_lengths)
    if max_seqs:
        assert all(len(b) <= max_seqs for r in per_rank for b in r)
    if with_lengths:
        assert len(make(0)) == len(per_rank[0]), "len() is exact with lengths= and num_workers="


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 40), max_size=40), world=st.sampled_from(WORLDS),
       workers=st.sampled_from([1, 3]))
def test_exactly_once_equal_steps_real_workers(lengths, world, workers):
    examples = span_examples(lengths)
    per_rank = []
    for rank in range(world):
        ds = PackedIterableDataset(examples, 48, buffer_size=4, collator=spans, overlong="split", lengths=lengths,
                                   num_replicas=world, rank=rank, num_workers=workers)
        per_rank.append(list(DataLoader(ds, batch_size=None, num_workers=workers)))
    check_spans(lengths, 48, "split", per_rank, equal=True)


def test_same_stream_for_zero_and_one_worker_and_collated_batches():
    examples, lengths = make_examples(80, seed=2)
    ds = PackedIterableDataset(examples, 256, buffer_size=6)
    inline = [example_ids(b) for b in ds]
    one = [example_ids(b) for b in DataLoader(ds, batch_size=None, num_workers=1)]
    assert inline == one
    assert sorted(i for b in inline for i in b) == list(range(80))
    batch = next(iter(ds))
    assert isinstance(batch, warppack.PackedBatch) and batch.num_tokens <= 256


def test_stream_sources_and_one_shot_iterators():
    examples = span_examples([5, 9, 3, 12, 7])

    class Reiterable:
        def __iter__(self):
            return iter(examples)

    for source in (Reiterable(), lambda: (e for e in examples)):
        ds = PackedIterableDataset(source, 16, collator=spans)
        check_spans([5, 9, 3, 12, 7], 16, "error", [list(ds)], equal=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        PackedIterableDataset(iter(examples), 16)
    with pytest.raises(ValueError, match="shuffle=True needs a source that can be read by index"):
        PackedIterableDataset(Reiterable(), 16, shuffle=True)


def test_hf_datasets_sources_exactly_once_with_workers():
    datasets = pytest.importorskip("datasets")
    lengths = np.random.default_rng(0).integers(1, 30, size=50).tolist()
    table = datasets.Dataset.from_dict({"input_ids": [e["input_ids"].tolist() for e in span_examples(lengths)]})
    # Map-style: read by index.
    per_rank = [list(PackedIterableDataset(table, 64, collator=spans, num_replicas=2, rank=r, lengths=lengths))
                for r in range(2)]
    check_spans(lengths, 64, "error", per_rank, equal=False)
    # Streaming: HF splits it over the workers by shard itself; warppack must not split it again.
    stream = table.to_iterable_dataset(num_shards=4)
    per_rank = []
    for rank in range(2):
        ds = PackedIterableDataset(stream, 64, collator=spans, num_replicas=2, rank=rank)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            per_rank.append(list(DataLoader(ds, batch_size=None, num_workers=2)))
    check_spans(lengths, 64, "error", per_rank, equal=False)


def test_shuffle_is_deterministic_per_epoch():
    examples = span_examples(list(range(1, 60)))
    ds = PackedIterableDataset(examples, 64, collator=spans, shuffle=True, seed=3, buffer_size=4)
    first = list(ds)
    assert first == list(ds)
    ds.set_epoch(1)
    assert list(ds) != first


def test_bad_examples_and_lengths_are_named():
    with pytest.raises(ValueError, match="position 1 of the source has 9 tokens, more than max_tokens=8"):
        list(PackedIterableDataset(span_examples([3, 9]), 8))
    with pytest.raises(ValueError, match="position 1 of the source has no tokens"):
        list(PackedIterableDataset([{"input_ids": [1]}, {"input_ids": []}], 8))
    with pytest.raises(ValueError, match=r"has 3 tokens but lengths\[0\] is 4"):
        list(PackedIterableDataset(span_examples([3]), 8, lengths=[4]))
    with pytest.raises(ValueError, match="lengths has 1 entries but the source holds 2"):
        PackedIterableDataset(span_examples([3, 4]), 8, lengths=[4])
    with pytest.raises(TypeError, match="expected a mapping with 'input_ids'"):
        list(PackedIterableDataset([[1, 2, 3]], 8))
    with pytest.raises(TypeError, match="only known with lengths="):
        len(PackedIterableDataset(span_examples([3]), 8))
    with pytest.raises(TypeError, match="pass num_workers="):
        len(PackedIterableDataset(span_examples([3]), 8, lengths=[3]))
    ds = PackedIterableDataset(span_examples([3, 4, 5]), 8, num_workers=2)
    one_worker = types.SimpleNamespace(id=0, num_workers=1)  # as inside a DataLoader(num_workers=1) worker
    with mock.patch("warppack.loaders.stream.shards.get_worker_info", return_value=one_worker):
        with pytest.raises(ValueError, match=r"num_workers=2\) but the DataLoader runs 1 worker"):
            iter(ds)


def test_warns_without_lengths_on_several_ranks_unless_equalized():
    with pytest.warns(UserWarning, match="without lengths=.*equal_steps"):
        list(PackedIterableDataset(span_examples([3, 4]), 8, num_replicas=2, rank=0, collator=spans))
    ds = PackedIterableDataset(span_examples([3, 4]), 8, num_replicas=2, rank=0, collator=spans)
    loader = DataLoader(ds, batch_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(warppack.equal_steps(loader))) == 1


def test_reconfiguring_mid_iteration_is_a_clear_error():
    ds = PackedIterableDataset(span_examples([3] * 20), 8, collator=spans)
    it = iter(ds)
    next(it)
    ds.set_epoch(1)
    with pytest.raises(RuntimeError, match=r"reconfigured \(set_epoch\(1\) after epoch 0\)"):
        next(it)
    with pytest.raises(AttributeError, match="buffer_size is fixed at construction"):
        ds.buffer_size = 4


# -- state -----------------------------------------------------------------------------------
def test_state_refused_for_other_options_and_other_splits():
    examples = span_examples([3, 5, 7, 2, 9, 4] * 5)
    ds = PackedIterableDataset(examples, 16, buffer_size=4, num_replicas=3, rank=1, collator=spans)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="max_tokens: saved 16, this dataset 32; buffer_size: saved 4, this dataset 8"):
        PackedIterableDataset(examples, 32, buffer_size=8, num_replicas=3, rank=1).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples: saved 30, this dataset 29"):
        PackedIterableDataset(examples[:-1], 16, buffer_size=4, num_replicas=3, rank=1).load_state_dict(state)
    other = PackedIterableDataset(examples, 16, buffer_size=4, num_replicas=2, rank=1, collator=spans)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="mid-epoch by rank 1 of 3, worker 0 of 1, but is loaded into rank 1 of 2"):
        iter(other)
    other.set_epoch(1)  # an epoch boundary: a new split is fine
    assert list(other)


def test_skip_first_batches_resume_path():
    examples, lengths = make_examples(150, seed=4)

    def make():
        return DataLoader(PackedIterableDataset(examples, 256, buffer_size=8, overlong="split"), batch_size=None)

    check_skip_first_batches(make, set_epoch=lambda loader, e: loader.dataset.set_epoch(e))


CASES = [(1, 64), (37, 128), (1000, 2048)]


@pytest.mark.parametrize("n,max_tokens", CASES)
def test_resume_every_boundary_single_process(n, max_tokens):
    examples, lengths = make_examples(n, seed=n, long_every=97, long_len=max_tokens * 2)
    buffer = 6 if n < 1000 else 64  # ~60 examples of ~30 tokens fill 2048: about 15 batches an epoch
    # rank 1 of 3 with lengths=: the padding empty batches are on the resumed path too
    check_resume(lambda: IterableSession(examples, max_tokens=max_tokens, buffer_size=buffer, overlong="split",
                                         lengths=lengths, num_replicas=3, rank=1, num_workers=0, shuffle=True),
                 epochs=3)

    def stream():  # a plain stream: resume re-reads it up to the saved position
        return (e for e in examples)

    check_resume(lambda: IterableSession(stream, max_tokens=max_tokens, buffer_size=buffer // 2, overlong="split"),
                 epochs=2)


@pytest.mark.slow
@pytest.mark.parametrize("n,max_tokens", CASES)
def test_resume_every_boundary_stateful_dataloader_two_workers(n, max_tokens):
    if StatefulDataLoader is None:
        pytest.skip("torchdata is not installed (pip install torchdata)")
    examples, lengths = make_examples(n, seed=n, long_every=97, long_len=max_tokens * 2)
    buffer = 6 if n < 1000 else 64
    check_resume(lambda: iterable_stateful_session(examples, max_tokens=max_tokens, num_workers=2, buffer_size=buffer,
                                                   overlong="split", lengths=lengths), epochs=2)
