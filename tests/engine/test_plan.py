"""plan() and Plan: the Python layer over the engine (the engine itself: test_native.py)."""

import numpy as np
import pytest
import torch

import warppack
from warppack import plan


def test_docstring_example_and_plan_properties():
    p = plan([5, 3, 8, 2], max_tokens=8)
    assert p.num_bins == len(p) == 3 == p.lower_bound
    assert sorted(sorted(b.tolist()) for b in p.bins) == [[0, 1], [2], [3]]
    assert p.efficiency == pytest.approx(18 / 24)
    assert p.bin_tokens().tolist() == [int(sum([5, 3, 8, 2][i] for i in b)) for b in p.bins]
    assert all(b.dtype == np.int64 for b in p.bins)
    assert "num_bins=3" in repr(p)


@pytest.mark.parametrize("kind", ["list", "int32", "int64", "uint16", "tensor"])
def test_accepts_common_length_containers(kind):
    raw = [3, 9, 1, 4, 4, 7]
    lengths = {
        "list": raw,
        "int32": np.asarray(raw, dtype=np.int32),
        "int64": np.asarray(raw, dtype=np.int64),
        "uint16": np.asarray(raw, dtype=np.uint16),
        "tensor": torch.tensor(raw),
    }[kind]
    p = plan(lengths, 10)
    assert sorted(np.concatenate(list(p.bins)).tolist()) == list(range(len(raw)))


def test_empty_lengths_give_an_empty_plan():
    p = plan([], 16)
    assert p.num_bins == 0 and p.efficiency == 1.0 and p.lower_bound == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lengths=[1.5, 2], max_tokens=8), TypeError, r"lengths must be integer token counts, got dtype float64"),
        (dict(lengths=[[1, 2]], max_tokens=8), TypeError, r"lengths\[0\] = \[1, 2\] \(list\).*lengths_of"),
        (dict(lengths=[[1, 2], [3]], max_tokens=8), TypeError, r"lengths\[0\] = \[1, 2\].*lengths_of"),
        (dict(lengths=np.ones((2, 3), np.int64), max_tokens=8), ValueError, r"1-D .* got shape \(2, 3\)"),
        (dict(lengths=np.array(5), max_tokens=8), ValueError, r"got shape \(\)"),
        (dict(lengths=5, max_tokens=8), TypeError, r"got 5 \(int\)"),
        (dict(lengths=None, max_tokens=8), TypeError, r"got None"),
        (dict(lengths=[{"input_ids": [1]}], max_tokens=8), TypeError, r"lengths\[0\] = \{'input_ids'.*lengths_of"),
        (dict(lengths=[3, True], max_tokens=8), TypeError, r"lengths\[1\] is the bool True"),
        (dict(lengths=np.array([True]), max_tokens=8), TypeError, r"dtype bool"),
        (dict(lengths=["3"], max_tokens=8), TypeError, r"lengths\[0\] = '3' \(str\)"),
        (dict(lengths=np.array([2**64 - 1], np.uint64), max_tokens=8), ValueError, r"lengths\[0\] = 18446744073709551615 overflows int64"),
        (dict(lengths=[-1, 2**63], max_tokens=8), ValueError, r"lengths\[1\] = 9223372036854775808 overflows int64"),
        (dict(lengths=[2**64], max_tokens=8), ValueError, r"lengths\[0\] = 18446744073709551616 overflows int64"),
        (dict(lengths=(n for n in [1, 2]), max_tokens=8), TypeError, r"generator"),
        (dict(lengths=[1, 2], max_tokens=8, shuffle="yes"), TypeError, r"shuffle must be True or False, got 'yes'"),
        (dict(lengths=[1, 2], max_tokens=0), ValueError, "max_tokens must be > 0"),
        (dict(lengths=[1, 2], max_tokens=8.0), TypeError, "max_tokens must be a positive int"),
        (dict(lengths=[1, 2], max_tokens=2**31), ValueError, "int32 range"),
        (dict(lengths=[1, 2], max_tokens=8, strategy="best"), ValueError, "strategy='best'"),
        (dict(lengths=[1, 2], max_tokens=8, overlong="drop"), ValueError, "overlong='drop'"),
        (dict(lengths=[1, 2], max_tokens=8, max_seqs_per_bin=0), ValueError, "max_seqs_per_bin"),
        (dict(lengths=[4, 12], max_tokens=8), ValueError, r"example 1 has 12 tokens.*max_tokens=8"),
        (dict(lengths=[4, 0], max_tokens=8), ValueError, r"example 1"),
        (dict(lengths=[4, -2], max_tokens=8), ValueError, r"example 1"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    lengths = kwargs.pop("lengths")
    max_tokens = kwargs.pop("max_tokens")
    with pytest.raises(error, match=match):
        plan(lengths, max_tokens, **kwargs)


def test_overlong_policies_through_plan():
    p = plan([20, 3], 8, overlong="split")
    pieces = sorted(zip(p.items.tolist(), p.starts.tolist(), p.sizes.tolist()))
    assert pieces == [(0, 0, 8), (0, 8, 8), (0, 16, 4), (1, 0, 3)]
    t = plan([20, 3], 8, overlong="truncate")
    assert sorted(zip(t.items.tolist(), t.sizes.tolist())) == [(0, 8), (1, 3)]
    assert t.num_tokens == 11


def test_shuffle_is_deterministic_per_seed():
    lengths = np.random.default_rng(0).integers(1, 100, 500)
    a = plan(lengths, 256, shuffle=True, seed=1)
    b = plan(lengths, 256, shuffle=True, seed=1)
    c = plan(lengths, 256, shuffle=True, seed=2)
    assert [x.tolist() for x in a.bins] == [x.tolist() for x in b.bins]
    assert [x.tolist() for x in a.bins] != [x.tolist() for x in c.bins]
    assert sorted(map(tuple, map(sorted, (x.tolist() for x in a.bins)))) == sorted(
        map(tuple, map(sorted, (x.tolist() for x in c.bins)))
    )


def test_real_cpython_lengths_split(shared_data):
    lengths = np.load(shared_data / "cpython_stdlib_smollm2_lengths.npy")
    lengths = lengths[lengths > 0]
    p = plan(lengths, 8192, overlong="split")
    assert p.num_tokens == int(lengths.sum())
    assert p.num_bins <= p.lower_bound * 1.02 + 1
    assert (p.bin_tokens() <= 8192).all()


def test_public_names():
    for name in ("plan", "Plan", "PackedCollator", "PackedBatch", "lengths_of", "unpack"):
        assert name in warppack.__all__ and hasattr(warppack, name)


def test_bins_repr_shows_the_first_bins_and_the_count():
    assert repr(warppack.plan([3, 5, 2], 8).bins) == "[[1, 0], [2]]"
    many = repr(warppack.plan([1] * 100, 8).bins)
    assert many.startswith("[[0, 1, 2, 3, 4, 5, 6, 7], ") and many.endswith(", ... (13 bins)]")


def test_a_dataset_passed_as_lengths_points_to_lengths_of():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]]})
    with pytest.raises(TypeError, match=r"got a datasets\.arrow_dataset\.Dataset; count the tokens with warppack\.lengths_of"):
        plan(ds, 8)


def test_sizes_of_a_whole_plan_refuse_lengths_changed_after_planning():
    lengths = np.array([3, 5, 2], np.int64)
    p = plan(lengths, 8)
    lengths[1] = 9
    with pytest.raises(ValueError, match=r"changed after planning.*lengths\.copy\(\)"):
        p.sizes
    lengths[1] = 5
    assert p.sizes.tolist() == [5, 3, 2] and p.bin_tokens().tolist() == [8, 2]
