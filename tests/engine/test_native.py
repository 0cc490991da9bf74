"""The native boundary (warppack._packer) against tests/reference_packer.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warppack import _packer

from support import reference_packer as ref

STRATEGY = {"bfd": 0, "ffd": 1, "online": 2}
OVERLONG = {"error": 0, "truncate": 1, "split": 2}
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_plan(lengths, max_tokens, strategy="bfd", max_seqs=0, overlong="error", buffer_size=1,
             shuffle=False, seed=0, dtype=np.int64):
    return _packer.plan_lengths(np.asarray(lengths, dtype=dtype), max_tokens, STRATEGY[strategy],
                                max_seqs, OVERLONG[overlong], buffer_size, shuffle, seed)


def as_bins(result):
    items, starts, sizes, offsets = result
    return [list(zip(items[a:b].tolist(), starts[a:b].tolist(), sizes[a:b].tolist()))
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def check_invariants(bins, lengths, max_tokens, max_seqs, overlong):
    assert all(bins), "empty bin"
    assert all(sum(p[2] for p in b) <= max_tokens for b in bins)
    if max_seqs:
        assert all(len(b) <= max_seqs for b in bins)
    covered = {}
    for b in bins:
        for item, start, size in b:
            covered.setdefault(item, []).append((start, size))
    assert sorted(covered) == list(range(len(lengths))), "every example exactly once"
    for item, ranges in covered.items():
        ranges.sort()
        expected_total = min(lengths[item], max_tokens) if overlong == "truncate" else lengths[item]
        position = 0
        for start, size in ranges:  # contiguous, non-overlapping, complete
            assert start == position and 1 <= size <= max_tokens
            position += size
        assert position == expected_total


@st.composite
def plan_cases(draw):
    regime = draw(st.sampled_from(["small", "small", "medium", "sparse"]))
    max_tokens = {
        "small": st.integers(1, 40),
        "medium": st.integers(3000, 65536),  # dense index with several bitset levels
        "sparse": st.integers(70000, 2_000_000),  # comparison-based fallback
    }[regime]
    max_tokens = draw(max_tokens)
    overlong = draw(st.sampled_from(list(OVERLONG)))
    upper = max_tokens * (3 if overlong != "error" else 1)
    lengths = draw(st.lists(st.integers(1, upper), max_size=60))
    return dict(
        lengths=lengths,
        max_tokens=max_tokens,
        strategy=draw(st.sampled_from(list(STRATEGY))),
        max_seqs=draw(st.sampled_from([0, 0, 1, 2, 3])),
        overlong=overlong,
        buffer_size=draw(st.integers(1, 6)),
        shuffle=draw(st.booleans()),
        seed=draw(st.integers(0, 2**64 - 1)),
    )


@FAST
@given(plan_cases(), st.sampled_from([np.int32, np.int64]))
def test_plan_matches_reference(case, dtype):
    bins = as_bins(run_plan(**case, dtype=dtype))
    assert bins == ref.plan(**case)
    check_invariants(bins, case["lengths"], case["max_tokens"], case["max_seqs"], case["overlong"])


@FAST
@given(plan_cases(), st.sampled_from([np.int32, np.int64]))
def test_whole_plan_matches_reference(case, dtype):
    # The lean path: the same bins as the general one whenever no example is truncated or split.
    if case["strategy"] == "online":
        case["strategy"] = "bfd"
    lengths = np.asarray(case["lengths"], dtype=dtype)
    result = _packer.plan_whole(lengths, case["max_tokens"], STRATEGY[case["strategy"]], case["max_seqs"],
                                OVERLONG[case["overlong"]], case["shuffle"], case["seed"])
    if lengths.size and lengths.max() > case["max_tokens"]:
        assert result is None
        return
    items, offsets, tokens = result
    assert tokens == int(lengths.sum())
    sizes = lengths.astype(np.int64)[items]
    assert as_bins((items, np.zeros_like(items), sizes, offsets)) == ref.plan(**case)


def test_whole_plan_equals_general_plan_at_scale():
    lengths = np.random.default_rng(5).lognormal(5.7, 1.0, size=300_000).astype(np.int64).clip(1, 4096)
    for strategy, max_seqs, shuffle in ((0, 0, False), (0, 3, True), (1, 0, True)):
        items, offsets, _ = _packer.plan_whole(lengths, 4096, strategy, max_seqs, 0, shuffle, 9)
        general = _packer.plan_lengths(lengths, 4096, strategy, max_seqs, 0, 1, shuffle, 9)
        assert np.array_equal(items, general[0]) and np.array_equal(offsets, general[3])


def test_whole_plan_errors_like_the_general_plan():
    with pytest.raises(ValueError, match=r"example 1 has 9 tokens, more than max_tokens=8"):
        _packer.plan_whole(np.array([3, 9], np.int64), 8, 0, 0, 0, False, 0)
    with pytest.raises(ValueError, match=r"example 0 has length 0"):
        _packer.plan_whole(np.array([0, 9], np.int32), 8, 0, 0, 1, False, 0)
    with pytest.raises(ValueError, match=r"online"):
        _packer.plan_whole(np.array([3], np.int64), 8, 2, 0, 0, False, 0)
    with pytest.raises(ValueError, match=r"strides"):
        _packer.plan_whole(np.ones(6, np.int64)[::2], 8, 0, 0, 0, False, 0)
    items, offsets, tokens = _packer.plan_whole(np.zeros(0, np.int64), 8, 0, 0, 0, False, 0)
    assert items.size == 0 and offsets.tolist() == [0] and tokens == 0


@FAST
@given(st.integers(1, 60).flatmap(lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), max_size=80))))
def test_bin_counts_against_textbook(case):
    max_tokens, lengths = case
    textbook = ref.textbook_best_fit_decreasing(lengths, max_tokens)
    assert len(as_bins(run_plan(lengths, max_tokens, "bfd"))) <= textbook
    ffd = ref.first_fit_decreasing(ref.pieces_of(lengths, max_tokens, "error"), max_tokens)
    assert len(as_bins(run_plan(lengths, max_tokens, "ffd"))) == len(ffd)
    assert sum(lengths) <= len(as_bins(run_plan(lengths, max_tokens, "online", buffer_size=4))) * max_tokens


def test_first_fit_tree_grows_past_initial_size():
    rng = np.random.default_rng(0)
    lengths = rng.integers(51, 101, size=1500)  # more than half the budget: one per bin
    lengths[::7] = rng.integers(1, 50, size=len(lengths[::7]))
    for strategy in ("ffd", "bfd"):
        got = as_bins(run_plan(lengths, 100, strategy, max_seqs=2))
        assert got == ref.plan(lengths.tolist(), 100, strategy, max_seqs=2)


@pytest.mark.parametrize("strategy", list(STRATEGY))
def test_medium_plans_match_reference(strategy):
    lengths = np.random.default_rng(4).lognormal(4.5, 1.0, size=2500).astype(np.int64).clip(1, None)
    for overlong, max_seqs in (("split", 0), ("truncate", 4)):
        case = dict(lengths=lengths.tolist(), max_tokens=384, strategy=strategy, max_seqs=max_seqs,
                    overlong=overlong, buffer_size=32, shuffle=True, seed=11)
        assert as_bins(run_plan(**case)) == ref.plan(**case)


def test_shuffle_is_deterministic_and_only_reorders_bins():
    lengths = np.random.default_rng(1).lognormal(5, 1, size=3000).astype(np.int64).clip(1, 1024)
    for strategy in STRATEGY:
        plain = as_bins(run_plan(lengths, 1024, strategy, buffer_size=64))
        a = as_bins(run_plan(lengths, 1024, strategy, buffer_size=64, shuffle=True, seed=7))
        b = as_bins(run_plan(lengths, 1024, strategy, buffer_size=64, shuffle=True, seed=7))
        c = as_bins(run_plan(lengths, 1024, strategy, buffer_size=64, shuffle=True, seed=8))
        assert a == b and a != c and a != plain
        assert sorted(a) == sorted(c) == sorted(plain)


def test_large_plan_is_valid():
    lengths = np.random.default_rng(2).lognormal(6, 1.2, size=200_000).astype(np.int32).clip(1, None)
    for strategy, overlong in (("bfd", "split"), ("ffd", "truncate"), ("online", "split")):
        items, starts, sizes, offsets = run_plan(lengths, 2048, strategy, overlong=overlong,
                                                 buffer_size=256, shuffle=True, seed=3)
        totals = np.add.reduceat(sizes, offsets[:-1])
        assert totals.max() <= 2048 and np.all(np.diff(offsets) > 0)
        expected = np.minimum(lengths, 2048) if overlong == "truncate" else lengths
        assert np.array_equal(np.bincount(items, weights=sizes, minlength=len(lengths)), expected)
        if strategy == "bfd":
            assert sizes.sum() / (len(offsets) - 1) / 2048 > 0.99


def test_empty_input():
    for strategy in STRATEGY:
        items, starts, sizes, offsets = run_plan([], 8, strategy)
        assert len(items) == len(starts) == len(sizes) == 0 and offsets.tolist() == [0]


def test_plan_errors_name_index_value_and_budget():
    with pytest.raises(ValueError, match=r"example 2 has 9 tokens, more than max_tokens=8; drop it, "
                                         r"raise max_tokens, or pass overlong='truncate' or overlong='split'"):
        run_plan([1, 2, 9], 8)
    with pytest.raises(ValueError, match=r"example 1 has length 0; empty examples must be filtered out"):
        run_plan([3, 0], 8, overlong="split")
    with pytest.raises(ValueError, match=r"example 0 has a negative length \(-4\)"):
        run_plan([-4], 8, "online")
    with pytest.raises(ValueError, match=r"max_tokens must be a positive number of tokens, got 0"):
        run_plan([1], 0)
    with pytest.raises(ValueError, match=r"max_tokens=2147483648 exceeds .* int32 range"):
        run_plan([1], 2**31)
    with pytest.raises(ValueError, match=r"strategy must be 0 \(bfd\), 1 \(ffd\) or 2 \(online\), got 5"):
        _packer.plan_lengths(np.ones(3, np.int64), 8, 5, 0, 0, 1, False, 0)
    with pytest.raises(ValueError, match=r"overlong must be"):
        _packer.plan_lengths(np.ones(3, np.int64), 8, 0, 0, 7, 1, False, 0)
    with pytest.raises(ValueError, match=r"max_seqs_per_bin must be >= 0"):
        _packer.plan_lengths(np.ones(3, np.int64), 8, 0, -1, 0, 1, False, 0)
    with pytest.raises(ValueError, match=r"buffer_size must be >= 1, got 0"):
        _packer.plan_lengths(np.ones(3, np.int64), 8, 2, 0, 0, 0, False, 0)
    with pytest.raises(ValueError, match=r"past 2147483646 pieces; raise max_tokens=1"):
        run_plan([2**40], 1, overlong="split")


@pytest.mark.parametrize(
    "lengths, kind, fragment",
    [
        (np.ones(3, np.float64), TypeError, "got numpy.ndarray of dtype float64"),
        (np.ones(3, np.uint32), TypeError, "dtype uint32"),
        (np.ones(3, ">i8"), TypeError, "dtype >i8"),
        ([1, 2, 3], TypeError, "got list"),
        (np.ones(6, np.int64)[::2], ValueError, "strides (16,)"),
        (np.ones((2, 3), np.int64), ValueError, "shape (2, 3)"),
    ],
)
def test_plan_rejects_wrong_arrays(lengths, kind, fragment):
    with pytest.raises(kind) as info:
        _packer.plan_lengths(lengths, 8, 0, 0, 0, 1, False, 0)
    assert fragment in str(info.value) and "np.ascontiguousarray(lengths, dtype=np.int64)" in str(info.value)


def test_plan_accepts_read_only_arrays_without_copy():
    lengths = np.array([3, 5, 2], np.int32)
    lengths.flags.writeable = False
    assert as_bins(_packer.plan_lengths(lengths, 8, 0, 0, 0, 1, False, 0)) == [[(1, 0, 5), (0, 0, 3)], [(2, 0, 2)]]


# -- online ------------------------------------------------------------------------------------

@FAST
@given(
    st.integers(1, 30).flatmap(lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), max_size=50))),
    st.integers(1, 8), st.sampled_from([0, 1, 2, 3]), st.data(),
)
def test_online_packer_matches_reference_and_resumes(case, buffer_size, max_seqs, data):
    max_tokens, lengths = case
    packer = _packer.OnlinePacker(max_tokens, max_seqs, buffer_size)
    model = ref.OnlineReference(max_tokens, max_seqs, buffer_size)
    cut = data.draw(st.integers(0, len(lengths)))
    got, expected = [], []
    for key, length in enumerate(lengths[:cut]):
        got += [b.tolist() for b in packer.push(key, length)]
        expected += [[e[0] for e in b] for b in model.push(key, length)]
        assert len(packer) <= buffer_size
    assert packer.pending().tolist() == [e[0] for e in model.window]
    assert packer.pending_lengths().tolist() == [e[1] for e in model.window]
    # Resume: a fresh packer fed the pending items behaves exactly like the original from here on.
    resumed = _packer.OnlinePacker(max_tokens, max_seqs, buffer_size)
    for key, length in zip(packer.pending().tolist(), packer.pending_lengths().tolist()):
        assert resumed.push(key, length) == []
    tail_a, tail_b = [], []
    for key, length in enumerate(lengths[cut:], start=cut):
        tail_a += [b.tolist() for b in packer.push(key, length)]
        tail_b += [b.tolist() for b in resumed.push(key, length)]
        expected += [[e[0] for e in b] for b in model.push(key, length)]
    tail_a += [b.tolist() for b in packer.flush()]
    tail_b += [b.tolist() for b in resumed.flush()]
    expected += [[e[0] for e in b] for b in model.flush()]
    assert tail_a == tail_b
    assert got + tail_a == expected
    flat = sorted(k for b in expected for k in b)
    assert flat == list(range(len(lengths)))  # exactly once
    assert all(sum(lengths[k] for k in b) <= max_tokens for b in expected)
    assert len(packer) == 0 and packer.flush() == []


def test_online_packer_pickles_with_its_window():
    packer = _packer.OnlinePacker(100, 3, 5)
    for key, length in enumerate([40, 70, 10, 90, 35]):
        packer.push(key, length)
    clone = pickle.loads(pickle.dumps(packer))
    assert repr(clone) == repr(packer)
    assert clone.pending().tolist() == packer.pending().tolist()
    for key, length in enumerate([60, 20, 80, 5], start=10):
        assert [b.tolist() for b in clone.push(key, length)] == [b.tolist() for b in packer.push(key, length)]
    assert [b.tolist() for b in clone.flush()] == [b.tolist() for b in packer.flush()]


def test_online_packer_errors_and_repr():
    packer = _packer.OnlinePacker(16, 0, 4)
    with pytest.raises(ValueError, match=r"example 7 has 17 tokens; the online packer takes 1..max_tokens=16"):
        packer.push(7, 17)
    with pytest.raises(ValueError, match=r"example 3 has 0 tokens"):
        packer.push(3, 0)
    with pytest.raises(ValueError, match=r"buffer_size must be >= 1, got 0"):
        _packer.OnlinePacker(16, 0, 0)
    with pytest.raises(ValueError, match=r"max_tokens must be in 1..2147483647"):
        _packer.OnlinePacker(0, 0, 4)
    with pytest.raises(ValueError, match=r"max_seqs_per_bin must be >= 0"):
        _packer.OnlinePacker(16, -2, 4)
    assert packer.push(2**62, 16)[0].tolist() == [2**62]  # a full item is a bin at once
    assert repr(packer) == "OnlinePacker(max_tokens=16, max_seqs_per_bin=0, buffer_size=4, pending=0)"


# -- layout ------------------------------------------------------------------------------------

def layout_arrays(total, num_cu):
    return [np.full(total, -7, np.int64) for _ in range(3)] + [np.full(total, -7, np.int32),
                                                               np.full(num_cu, -7, np.int32)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(0, 2**40), max_size=9), st.booleans()), max_size=7),
    st.one_of(st.integers(0, 5), st.integers(505, 2100)),  # past 512: padding in pieces, if entries are spare
    st.integers(0, 5), st.integers(0, 50), st.integers(-100, 5),
)
def test_layout_matches_reference(seqs, padding, extra_cu, pad_id, label_pad_id):
    ids = [np.array(s, np.int64) for s, _ in seqs]
    labels = [np.array(s, np.int64)[::-1].copy() if with_labels else None for s, with_labels in seqs]
    total = sum(len(s) for s, _ in seqs) + padding
    num_cu = len(seqs) + 1 + (padding > 0) + extra_cu
    out = layout_arrays(total, num_cu)
    _packer.write_layout(ids, labels, total, num_cu, pad_id, label_pad_id, *out)
    expected = ref.layout(ids, labels, total, num_cu, pad_id, label_pad_id)
    assert [o.tolist() for o in out] == list(expected)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 4), st.integers(1, 3000), st.integers(0, 12))
def test_padding_pieces_are_short_even_and_restart_their_positions(n, padding, extra_cu):
    # Independent of the reference: what the split promises, read back from the outputs.
    ids = [np.arange(1, 4, dtype=np.int64)] * n
    total, num_cu = 3 * n + padding, n + 2 + extra_cu
    out = layout_arrays(total, num_cu)
    _packer.write_layout(ids, None, total, num_cu, 0, -100, *out)
    positions, seq_idx, cu = out[2], out[3], out[4].tolist()
    pieces = [(a, b) for a, b in zip(cu[n:], cu[n + 1:]) if b > a]
    lengths = [b - a for a, b in pieces]
    spare = num_cu - 1 - n
    assert sum(lengths) == padding and len(lengths) <= spare and cu[-1] == total
    assert max(lengths) - min(lengths) <= 1
    if spare * 512 >= padding:
        assert max(lengths) <= 512 and len(lengths) == -(-padding // 512)
    else:
        assert len(lengths) == spare  # every spare entry used
    assert all(positions[a:b].tolist() == list(range(b - a)) for a, b in pieces)
    assert (seq_idx[3 * n:] == -1).all() and cu == sorted(cu)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.integers(0, 2**31 - 1), max_size=9), st.sampled_from([None, 32, 64]),
                       st.sampled_from([32, 64])), max_size=7),
    st.integers(0, 5), st.integers(-100, 5),
)
def test_layout_int32_sources_match_int64(seqs, padding, label_pad_id):
    # Arrow columns are often int32: read in place they must give exactly the int64 batch.
    width = {32: np.int32, 64: np.int64}
    ids = [np.array(s, width[w]) for s, _, w in seqs]
    labels = [None if lw is None else np.array(s, width[lw])[::-1].copy() for s, lw, _ in seqs]
    total = sum(len(s) for s, _, _ in seqs) + padding
    num_cu = len(seqs) + 2
    out = layout_arrays(total, num_cu)
    _packer.write_layout(ids, labels, total, num_cu, 1, label_pad_id, *out)
    wide = layout_arrays(total, num_cu)
    _packer.write_layout([a.astype(np.int64) for a in ids],
                         [None if a is None else a.astype(np.int64) for a in labels],
                         total, num_cu, 1, label_pad_id, *wide)
    assert [o.tolist() for o in out] == [o.tolist() for o in wide]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=9), max_size=6), st.integers(0, 4),
       st.integers(0, 2), st.integers(0, 16))
def test_layout_into_one_buffer_matches_the_five_arrays(seqs, padding, extra_cu, slack):
    ids = [np.array(s, np.int32 if k % 2 else np.int64) for k, s in enumerate(seqs)]
    total = sum(map(len, seqs)) + padding
    num_cu = len(seqs) + 2 + extra_cu
    buffer = np.full(28 * total + 4 * num_cu + slack, 0x5A, np.uint8)
    _packer.write_layout_into(ids, None, total, num_cu, 3, -100, buffer)
    out = layout_arrays(total, num_cu)
    _packer.write_layout(ids, None, total, num_cu, 3, -100, *out)
    t = total
    got = [buffer[:8 * t].view(np.int64), buffer[8 * t:16 * t].view(np.int64), buffer[16 * t:24 * t].view(np.int64),
           buffer[24 * t:28 * t].view(np.int32), buffer[28 * t:28 * t + 4 * num_cu].view(np.int32)]
    assert [g.tolist() for g in got] == [o.tolist() for o in out]
    assert (buffer[28 * t + 4 * num_cu:] == 0x5A).all()  # nothing written past the layout


def test_layout_into_rejects_bad_buffers():
    ids = [np.arange(1, 4, dtype=np.int64)]
    with pytest.raises(ValueError, match=r"holds 94 bytes but the layout needs 95|needs 96"):
        _packer.write_layout_into(ids, None, 3, 3, 0, -100, np.zeros(94, np.uint8))
    with pytest.raises(ValueError, match=r"8-byte aligned"):
        _packer.write_layout_into(ids, None, 3, 2, 0, -100, np.zeros(200, np.uint8)[1:])
    with pytest.raises(TypeError, match=r"uint8"):
        _packer.write_layout_into(ids, None, 3, 2, 0, -100, np.zeros(200, np.int64))
    with pytest.raises(TypeError, match=r"uint8"):
        _packer.write_layout_into(ids, None, 3, 2, 0, -100, np.zeros(200, np.uint8)[::2])
    frozen = np.zeros(200, np.uint8)
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match=r"writable"):
        _packer.write_layout_into(ids, None, 3, 2, 0, -100, frozen)
    with pytest.raises(ValueError, match=r"total_tokens=-1"):
        _packer.write_layout_into(ids, None, -1, 2, 0, -100, np.zeros(200, np.uint8))
    with pytest.raises(ValueError, match=r"num_cu must be in"):
        _packer.write_layout_into(ids, None, 3, 0, 0, -100, np.zeros(200, np.uint8))
    with pytest.raises(ValueError, match=r"more than total_tokens=2"):
        _packer.write_layout_into(ids, None, 2, 3, 0, -100, np.zeros(200, np.uint8))


def test_layout_rejects_negative_int32_ids():
    with pytest.raises(ValueError, match=r"sequence 1 has token id -3 at position 2"):
        _packer.write_layout([np.arange(2, dtype=np.int32), np.array([4, 5, -3], np.int32)], None, 5, 3, 0,
                             -100, *layout_arrays(5, 3))


def test_layout_accepts_none_labels_list_and_views():
    ids = [np.arange(5, dtype=np.int64)[1:], np.arange(3, dtype=np.int64)]
    ids[1].flags.writeable = False
    out = layout_arrays(8, 4)
    _packer.write_layout(ids, None, 8, 4, 0, -100, *out)
    assert out[1].tolist() == [-100, 2, 3, 4, -100, 1, 2, -100]
    assert out[4].tolist() == [0, 4, 7, 8]


@pytest.mark.parametrize(
    "mutate, kind, pattern",
    [
        (lambda a: a.update(labels=[np.arange(3), np.arange(3)]), ValueError,
         r"sequence 0 has 4 input_ids but 3 labels; they must have the same length"),
        (lambda a: a.update(labels=[None]), ValueError, r"got 2 input_ids arrays but 1 labels entries"),
        (lambda a: a.update(total=6), ValueError, r"more than total_tokens=6 tokens \(at sequence 1\)"),
        (lambda a: a.update(num_cu=3), ValueError, r"num_cu=3 is too small for 2 sequences and a padding segment; it must be >= 4"),
        (lambda a: a.update(total=7, num_cu=2), ValueError, r"num_cu=2 is too small for 2 sequences; it must be >= 3"),
        (lambda a: a.update(total=2**31), ValueError, r"exceeds the int32 range of cu_seqlens .*lower max_tokens"),
        (lambda a: a.update(total=-1), ValueError, r"total_tokens must be >= 0"),
        (lambda a: a["ids"].__setitem__(1, np.array([1, 2, -5])), ValueError,
         r"sequence 1 has token id -5 at position 2; token ids must be non-negative"),
        (lambda a: a.update(pad=-1), ValueError, r"pad_token_id=-1 is negative"),
        (lambda a: a["out"].__setitem__(0, np.zeros(9, np.int64)), ValueError, r"input_ids has 9 entries but the layout needs exactly 8"),
        (lambda a: a["out"].__setitem__(2, np.zeros(7, np.int64)), ValueError, r"position_ids has 7 entries"),
        (lambda a: a["out"].__setitem__(3, np.zeros(8, np.int32)[:0]), ValueError, r"seq_idx has 0 entries"),
        (lambda a: a["out"].__setitem__(4, np.zeros(5, np.int32)), ValueError, r"cu_seqlens has 5 entries but the layout needs exactly 4"),
        (lambda a: a["out"].__setitem__(3, np.zeros(8, np.int64)), TypeError, r"seq_idx_out must be a writable C-contiguous 1-D int32"),
        (lambda a: a["out"].__setitem__(1, np.zeros(16, np.int64)[::2]), TypeError, r"labels_out must be .*strides \(16,\)"),
        (lambda a: a["out"].__setitem__(0, np.zeros(8, np.int64).view(np.float64)), TypeError, r"input_ids_out must be"),
        (lambda a: a["ids"].__setitem__(0, np.arange(4, dtype=np.int16)), TypeError, r"ids\[0\] must be a C-contiguous 1-D int32 or int64"),
        (lambda a: a["ids"].__setitem__(0, [1, 2, 3, 4]), TypeError, r"ids\[0\] must be .* got list"),
        (lambda a: a["ids"].__setitem__(0, np.zeros((2, 2), np.int64)), TypeError, r"ids\[0\] must be"),
        (lambda a: a.update(labels=[np.arange(4, dtype=np.uint64), None]), TypeError, r"labels\[0\] must be"),
    ],
)
def test_layout_errors(mutate, kind, pattern):
    args = dict(ids=[np.arange(4, dtype=np.int64), np.arange(3, dtype=np.int64)], labels=[None, None],
                total=8, num_cu=4, pad=0, out=layout_arrays(8, 4))
    mutate(args)
    with pytest.raises(kind, match=pattern):
        _packer.write_layout(args["ids"], args["labels"], args["total"], args["num_cu"], args["pad"], -100,
                             *args["out"])


def test_layout_rejects_read_only_output():
    out = layout_arrays(4, 2)
    out[0].flags.writeable = False
    with pytest.raises(TypeError, match=r"input_ids_out must be a writable"):
        _packer.write_layout([np.arange(4, dtype=np.int64)], None, 4, 2, 0, -100, *out)


def test_adversarial_inputs_raise_cleanly():
    """Sizes and values Python might hand the boundary by mistake: exceptions, never a crash."""
    big = np.array([2**62, 2**62], np.int64)
    calls = [
        lambda: _packer.plan_lengths(big, 2**31 - 1, 0, 0, 2, 1, False, 0),  # split into too many
        lambda: _packer.plan_lengths(big, 8, 0, 0, 0, 1, False, 0),
        lambda: _packer.plan_lengths(np.array([-(2**63)], np.int64), 8, 1, 0, 1, 1, False, 0),
        lambda: _packer.plan_lengths(np.array([0], np.int32), 8, 2, 0, 1, 1, True, 0),
        lambda: _packer.plan_lengths(np.array([1], np.int64), -(2**63), 0, 0, 0, 1, False, 0),
        lambda: _packer.plan_lengths(np.array([1], np.int64), 8, -1, 0, 0, 1, False, 0),
        lambda: _packer.plan_lengths(np.array([1], np.int64), 8, 2, 0, 0, -(2**63), False, 0),
        lambda: _packer.OnlinePacker(2**62, 0, 1),
        lambda: _packer.OnlinePacker(8, 0, 1).push(0, 2**62),
        lambda: _packer.OnlinePacker(8, 0, 1).push(0, -1),
        lambda: _packer.write_layout([np.arange(3, dtype=np.int64)], None, 2**40, 3, 0, -100, *layout_arrays(4, 3)),
        lambda: _packer.write_layout([np.arange(3, dtype=np.int64)], None, 3, 1, 0, -100, *layout_arrays(3, 1)),
        lambda: _packer.write_layout([np.arange(3, dtype=np.int64)], None, 3, 0, 0, -100, *layout_arrays(3, 0)),
        lambda: _packer.write_layout([np.arange(3, dtype=np.int64)], None, 3, 2, 0, -100, *layout_arrays(2, 2)),
        lambda: _packer.write_layout([np.arange(3, dtype=np.int64)], None, 3, -5, 0, -100, *layout_arrays(3, 2)),
        lambda: _packer.write_layout([np.arange(3, dtype=np.int64)] * 3, None, 9, 2, 0, -100, *layout_arrays(9, 2)),
        lambda: _packer.write_layout([np.array([2**63 - 1, -(2**63)])], None, 2, 2, 0, -100, *layout_arrays(2, 2)),
    ]
    for call in calls:
        with pytest.raises((ValueError, OverflowError)):
            call()
    # The planner recomputes the piece count itself: huge-but-valid values still plan.
    assert as_bins(_packer.plan_lengths(np.array([2**31 - 1] * 2, np.int64), 2**31 - 1, 0, 0, 0, 1, False, 0)) == \
        [[(0, 0, 2**31 - 1)], [(1, 0, 2**31 - 1)]]
