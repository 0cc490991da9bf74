"""PackedIterableDataset: exactly once over ranks × workers, equal steps from lengths, resume, misuse."""

from __future__ import annotations

import os
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
from warppack.engine.config import count_overlong

from support.resume_harness import (IterableSession, StatefulDataLoader, check_resume, check_skip_first_batches, example_ids,
                            iterable_stateful_session, make_examples)

WORLDS = (1, 2, 3, 7, 8)
SCALE = 10_000  # token value = example id * SCALE + position: a piece tells where it came from


def span_examples(lengths):
    return [{"input_ids": np.arange(n, dtype=np.int64) + i * SCALE} for i, n in enumerate(lengths)]


def spans(examples):
    """A collator that keeps only (example id, start, size) of every piece: cheap and inspectable."""
    return [(int(e["input_ids"][0]) // SCALE, int(e["input_ids"][0]) % SCALE, len(e["input_ids"])) for e in examples]


def pid_spans(examples):
    """``spans`` (as lists, as a DataLoader hands them over) and the process that collated them."""
    return os.getpid(), [list(piece) for piece in spans(examples)]


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


REFUSED = "This state was not saved by this dataset"


def mid_epoch_state(make, batches=2):
    ds = make()
    it = iter(ds)
    for _ in range(batches):
        next(it)
    return ds.state_dict()


@pytest.mark.parametrize("change,match", [
    ({"cursor": 10**9}, r"field cursor = 1000000000: the shard of rank 0 of 1, worker 0 of 1 holds only 30 of the 30"),
    ({"epoch": -1}, r"field epoch = -1: out of range"),
    ({"epoch": None}, r"field epoch = None: expected an int, got NoneType"),
    ({"flushed": "no"}, r"field flushed = 'no': expected True or False, got str"),
    ({"yielded": 1.5}, r"field yielded = 1.5: expected an int, got float"),
    ({"empties_done": 1}, r"field empties_done = 1: empty batches come only after the stream ended"),
    ({"num_workers": 0}, r"field num_workers = 0: out of range"),
    ({"worker": 3}, r"field worker = 3: out of range \(expected an int from 0 to 0\)"),
    ({"num_workers": None}, r"field worker = 0: set although num_workers is None"),
    ({"pending": [[0, 10**6, 0, 3]]}, r"field pending\[0\] = \[0, 1000000, 0, 3\]: position 1000000 is not one"),
    ({"pending": [[0, 0, 0, 3, 1]]}, r"field pending\[0\] = \[0, 0, 0, 3, 1\]: expected 4 entries, got 5"),
    ({"pending": [[0, 0, 0, 17]]}, r"field pending\[0\]\[3\] \(size\) = 17: out of range \(expected an int from 1 to 16"),
    ({"pending": [[0, 0, 0, 3], [1, 0, 0, 3]]}, r"field pending\[1\] .* held twice"),
    ({"pending": [[10**6, 0, 0, 3]]}, r"field pending\[0\] .* keys are distinct and below next_key"),
    ({"ready": [[]]}, r"field ready\[0\] = \[\]: a bin holds 1 to max_tokens=16 tokens, this one 0"),
    ({"ready": "x"}, r"field ready = 'x': expected a list, got str"),
])
def test_saved_positions_are_checked_field_by_field(change, match):
    examples = span_examples([3, 5, 7, 2, 9, 4] * 5)

    def make():
        return PackedIterableDataset(examples, 16, buffer_size=4, collator=spans)

    state = mid_epoch_state(make)
    assert state["pending"] and state["cursor"] > 2
    ds = make()
    with pytest.raises(ValueError, match=match) as info:
        ds.load_state_dict({**state, **change})
    assert REFUSED in str(info.value)
    assert list(ds) == list(make()), "a refused state changes nothing"


@pytest.mark.parametrize("field", ["epoch", "cursor", "pending", "ready", "num_workers", "flushed"])
def test_saved_position_missing_a_field_is_named(field):
    state = mid_epoch_state(lambda: PackedIterableDataset(span_examples([3, 5, 7] * 4), 16, collator=spans))
    del state[field]
    with pytest.raises(ValueError, match=rf"field '{field}' is missing"):
        PackedIterableDataset(span_examples([3, 5, 7] * 4), 16, collator=spans).load_state_dict(state)


def test_what_only_the_examples_tell_is_checked_when_the_pass_restores():
    lengths = [3, 5, 7, 2, 9, 4] * 5
    examples = span_examples(lengths)

    def make(source=examples, **kwargs):
        return PackedIterableDataset(source, 16, buffer_size=4, collator=spans, **kwargs)

    state = mid_epoch_state(make)
    key, position, start, size = state["pending"][0]
    ds = make()
    ds.load_state_dict({**state, "pending": [[key, position, start, size - 1]] + state["pending"][1:]})
    with pytest.raises(ValueError, match=rf"field pending\[0\] .* tokens 0:{size - 1} of the example at position "
                                         rf"{position} \({size} tokens\) are not a piece overlong='error' makes"):
        iter(ds)

    def stream():  # a plain stream: only reading it tells where it ends
        return iter(examples)

    state = mid_epoch_state(lambda: make(stream))
    ds = make(stream)
    ds.load_state_dict({**state, "cursor": state["cursor"] + 1000})
    with pytest.raises(ValueError, match=r"field cursor = \d+: the source holds only 30 examples of this shard"):
        iter(ds)
    ds = make(stream)
    ds.load_state_dict({**state, "flushed": True, "pending": []})
    with pytest.raises(ValueError, match=r"field flushed = True: the stream is marked ended after \d+ examples"):
        iter(ds)

    # rank 0 of 3 with lengths= ends with empty batches: no more than the plan has
    ds = make(lengths=lengths, num_replicas=3, rank=0, num_workers=0)
    done = list(ds)
    state = ds.state_dict()
    target = state["empties_done"]
    assert state["flushed"] and target >= 1 and done[-1] == []
    ds = make(lengths=lengths, num_replicas=3, rank=0, num_workers=0)
    ds.load_state_dict({**state, "empties_done": target + 1, "yielded": state["yielded"] + 1})
    with pytest.raises(ValueError, match=rf"field empties_done = {target + 1}: this stream ends with {target} empty"):
        iter(ds)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_set_epoch_reaches_persistent_workers(context):
    """Persistent workers keep their copy of the dataset; each epoch must still be the one set_epoch chose."""
    lengths = [8] * 30  # every example fills a bin: the workers' round robin is the single-process order

    def make():
        return PackedIterableDataset(span_examples(lengths), 8, collator=pid_spans, shuffle=True, seed=3,
                                     buffer_size=1)

    ds, inline = make(), make()
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context=context)
    orders, pids = [], set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        inline.set_epoch(epoch)
        got = list(loader)
        pids |= {pid for pid, _ in got}
        batches = [batch for _, batch in got]
        check_spans(lengths, 8, "error", [batches], equal=False)  # each example exactly once
        assert batches == [batch for _, batch in inline], f"epoch {epoch} differs from a num_workers=0 run"
        orders.append([i for batch in batches for i, _, _ in batch])
    assert len(pids) == 2, "the same two workers served every epoch"
    assert len({tuple(order) for order in orders}) == 3, "every epoch has its own order"


def test_persistent_workers_pack_each_epoch_like_fresh_workers():
    lengths = np.random.default_rng(7).integers(1, 30, size=90).tolist()

    def make():
        return PackedIterableDataset(span_examples(lengths), 48, collator=spans, shuffle=True, seed=5, buffer_size=4,
                                     lengths=lengths, num_workers=2)

    persistent, fresh = make(), make()
    kept = DataLoader(persistent, batch_size=None, num_workers=2, persistent_workers=True)
    restarted = DataLoader(fresh, batch_size=None, num_workers=2)
    epochs = []
    for epoch in range(3):
        persistent.set_epoch(epoch)
        fresh.set_epoch(epoch)
        got = list(kept)
        assert got == list(restarted) and len(got) == len(persistent)
        check_spans(lengths, 48, "error", [got], equal=False)
        epochs.append(got)
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]


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


@pytest.mark.slow
def test_resume_every_boundary_stateful_dataloader_persistent_workers_over_epochs():
    if StatefulDataLoader is None:
        pytest.skip("torchdata is not installed (pip install torchdata)")
    examples, lengths = make_examples(120, seed=11)
    check_resume(lambda: iterable_stateful_session(examples, max_tokens=256, num_workers=2, persistent_workers=True,
                                                   buffer_size=6, lengths=lengths, shuffle=True, seed=2),
                 epochs=3, boundaries=[0, 1, 5, 13, 20], epochs_differ=True)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=12), max_tokens=st.integers(1, 16),
       overlong=st.sampled_from(["truncate", "split"]))
def test_a_streams_overlong_report_is_count_overlong_of_what_it_read(lengths, max_tokens, overlong):
    """Counted one example at a time, the stream reports what count_overlong says of all the lengths at once."""
    expected = count_overlong(np.asarray(lengths, dtype=np.int64), max_tokens, overlong)
    ds = warppack.PackedIterableDataset([{"input_ids": [1] * n} for n in lengths], max_tokens, overlong=overlong,
                                        num_workers=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        list(ds)
    reports = [str(w.message).split(": ", 1)[1] for w in seen if "are longer than max_tokens" in str(w.message)]
    assert reports == ([] if expected is None else [expected.message("owner").split(": ", 1)[1]])


@pytest.mark.parametrize("overlong, cut", [("truncate", "6 of 31 tokens"), ("split", "22 of 31 tokens")])
def test_a_stream_without_lengths_reports_what_it_truncated_or_split(overlong, cut):
    source = [{"input_ids": [1] * n} for n in (3, 10, 4, 12, 2)]
    ds = warppack.PackedIterableDataset(source, 8, overlong=overlong, num_workers=0)
    with pytest.warns(UserWarning, match=rf"epoch 0.*2 of 5 examples \(40\.0%\) are longer than max_tokens=8.*{cut}"):
        batches = list(ds)
    assert sum(b.num_tokens for b in batches) == (31 - 6 if overlong == "truncate" else 31)
    ds.set_epoch(1)
    with pytest.warns(UserWarning, match="epoch 1"):
        list(ds)
    quiet = warppack.PackedIterableDataset(source[:1] + source[2:3], 8, overlong=overlong, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(quiet)
