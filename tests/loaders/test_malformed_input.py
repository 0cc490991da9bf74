"""Malformed input to both loaders: a ValueError/TypeError naming the argument or saved field, nothing else.

Random bad values for each constructor argument and each field of a saved state (wrong types,
out-of-range numbers, missing fields, corrupt nested entries): the loader must refuse them with a
message that names what was wrong — never another exception type, never a silently accepted value.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warppack import PackedBatchSampler, PackedIterableDataset
from warppack.distributed import MAX_REPLICAS
from warppack.loaders.state import EPOCH_MAX

LENGTHS = [3, 5, 7, 2, 9, 4, 8, 1] * 6
EXAMPLES = [{"input_ids": np.arange(n, dtype=np.int64) + 1} for n in LENGTHS]
BUDGET = 16

# -- bad values --------------------------------------------------------------------------------
JUNK = st.one_of(
    st.none(), st.text(max_size=4), st.binary(max_size=3), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.complex_numbers(max_magnitude=3), st.just(object()),
)
NOT_NONE_JUNK = JUNK.filter(lambda v: v is not None)
NOT_FLAG = st.one_of(JUNK, st.integers(-2, 3))
NOT_COUNT = st.one_of(JUNK, st.booleans(), st.integers(max_value=0), st.integers(min_value=2**31))
NOT_OPTIONAL_COUNT = st.one_of(NOT_NONE_JUNK, st.booleans(), st.integers(max_value=0), st.integers(min_value=2**31))
NOT_SEED = st.one_of(JUNK, st.booleans())
CHOICES = ("bfd", "ffd", "online", "error", "truncate", "split")
NOT_CHOICE = st.one_of(JUNK, st.integers(), st.text(max_size=6).filter(lambda s: s not in CHOICES))
NOT_WORLD = st.one_of(NOT_NONE_JUNK, st.booleans(), st.integers(max_value=0), st.integers(min_value=MAX_REPLICAS + 1))
NOT_RANK = st.one_of(NOT_NONE_JUNK, st.booleans(), st.integers(max_value=-1), st.integers(min_value=2))


@st.composite
def bad_lengths(draw, size=len(LENGTHS)):
    """Lengths that are not one positive int per example (ragged lists aside: numpy's own error)."""
    kind = draw(st.sampled_from(["nonpositive", "float", "text", "junk", "2-D", "bool", "huge", "scalar"]))
    good = list(LENGTHS[:size])
    if kind == "nonpositive":
        good[draw(st.integers(0, size - 1))] = draw(st.integers(-10**6, 0))
        return good
    if kind == "float":
        return [float(n) + draw(st.sampled_from([0.0, 0.5])) for n in good]
    if kind == "text":
        return [str(n) for n in good]
    if kind == "2-D":
        return [[n, n] for n in good]
    if kind == "bool":
        return [True] * size
    if kind == "huge":
        return good[:-1] + [2**64 + draw(st.integers(0, 10))]
    if kind == "scalar":
        return draw(st.integers(1, 8))
    return draw(NOT_NONE_JUNK.filter(lambda v: not isinstance(v, list)))


def refused(call, name: str) -> None:
    """``call()`` raises ValueError/TypeError whose message names ``name`` (any other exception propagates)."""
    try:
        call()
    except (ValueError, TypeError) as exc:
        assert name in str(exc), f"the error does not name {name!r}: {exc}"
    else:
        pytest.fail(f"a malformed {name} was accepted")


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- constructors ------------------------------------------------------------------------------
SAMPLER_BAD = {
    "lengths": bad_lengths(), "max_tokens": NOT_COUNT, "shuffle": NOT_FLAG, "seed": NOT_SEED,
    "drop_last": NOT_FLAG, "strategy": NOT_CHOICE, "num_replicas": NOT_WORLD, "rank": NOT_RANK,
    "max_seqs_per_bin": NOT_OPTIONAL_COUNT, "overlong": st.one_of(NOT_CHOICE, st.just("split")),
    "interleaved": NOT_FLAG,
}


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(SAMPLER_BAD)))
def test_sampler_refuses_each_malformed_argument(data, name):
    kwargs = {"lengths": LENGTHS, "max_tokens": BUDGET, "num_replicas": 2, "rank": 1}
    kwargs[name] = data.draw(SAMPLER_BAD[name], label=name)
    refused(lambda: PackedBatchSampler(**kwargs), name)


DATASET_BAD = {
    "source": st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3), st.binary(max_size=3),
                        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                        st.just(iter(EXAMPLES))),
    "max_tokens": NOT_COUNT, "buffer_size": NOT_COUNT, "collator": NOT_NONE_JUNK,
    "lengths": st.one_of(bad_lengths(), st.lists(st.integers(1, 8), max_size=len(LENGTHS) - 1)),
    "shuffle": NOT_FLAG, "seed": NOT_SEED, "max_seqs_per_bin": NOT_OPTIONAL_COUNT,
    "overlong": NOT_CHOICE, "num_replicas": NOT_WORLD, "rank": NOT_RANK,
    "num_workers": st.one_of(NOT_NONE_JUNK, st.booleans(), st.integers(max_value=-1)),
}


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(DATASET_BAD)))
def test_dataset_refuses_each_malformed_argument(data, name):
    kwargs = {"source": EXAMPLES, "max_tokens": BUDGET, "num_replicas": 2, "rank": 1, "lengths": LENGTHS,
              "num_workers": 0}
    kwargs[name] = data.draw(DATASET_BAD[name], label=name)
    # The dataset reads its examples lazily: a first batch is part of "accepted".
    refused(lambda: next(iter(PackedIterableDataset(**kwargs))), name)


# -- saved states ------------------------------------------------------------------------------
def other_than(value):
    """Junk that is not ``value`` (of another type or value): a saved option that cannot match."""
    return st.one_of(JUNK, st.booleans(), st.integers()).filter(lambda v: type(v) is not type(value) or v != value)


def not_int(minimum, maximum=None):
    out_of_range = [st.integers(max_value=minimum - 1)]
    if maximum is not None:
        out_of_range.append(st.integers(min_value=maximum + 1))
    return st.one_of(JUNK, st.booleans(), *out_of_range)


@st.composite
def bad_pairs(draw):
    """A ``history`` with one malformed ``[num_replicas, steps]`` entry."""
    good = [[3, 1]] * draw(st.integers(0, 2))
    bad = draw(st.one_of(NOT_NONE_JUNK.filter(lambda v: not isinstance(v, list)),
                         st.lists(st.integers(1, 3), max_size=4).filter(lambda v: len(v) != 2),
                         st.tuples(not_int(1, MAX_REPLICAS), st.integers(1, 2)).map(list),
                         st.tuples(st.integers(1, 4), not_int(1, 10**6 - 1)).map(list),
                         st.tuples(st.integers(1, 4), st.integers(10**6, 10**9)).map(list)))
    return good + [bad] + good


def saved_mid_epoch(loader):
    """``loader`` and its state after two batches (a fresh loader of the same options resumes it)."""
    it = iter(loader)
    next(it)
    next(it)
    return loader, loader.state_dict()


SAMPLER_STATE_BAD = {
    "format": other_than("warppack.PackedBatchSampler/1"), "epoch": not_int(0, EPOCH_MAX),
    "step": not_int(0, 10**6 - 1),
    "num_replicas": not_int(1, MAX_REPLICAS), "rank": not_int(0, 1),
    "history": st.one_of(NOT_NONE_JUNK.filter(lambda v: not isinstance(v, list)), bad_pairs()),
}


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(SAMPLER_STATE_BAD) + ["num_examples", "lengths_fingerprint",
                                                                        "max_tokens", "seed", "shuffle", "strategy",
                                                                        "max_seqs_per_bin", "overlong", "drop_last"]),
       delete=st.booleans())
def test_sampler_refuses_each_malformed_saved_field(data, name, delete):
    sampler, state = saved_mid_epoch(PackedBatchSampler(LENGTHS, BUDGET, num_replicas=2, rank=0, seed=4))
    bad = corrupted(data, state, name, SAMPLER_STATE_BAD, delete=delete)
    refused(lambda: sampler.load_state_dict(bad), name)


def corrupted(data, state, name, table, *, delete):
    """``state`` with field ``name`` deleted or replaced by a bad value (from ``table``, else of another type)."""
    bad = copy.deepcopy(state)
    if delete:
        del bad[name]
    else:
        bad[name] = data.draw(table[name] if name in table else other_than(state[name]), label=name)
    return bad


@st.composite
def bad_pieces(draw):
    """A list of ``[key, position, start, size]`` pieces with one malformed entry."""
    bad = draw(st.one_of(
        NOT_NONE_JUNK.filter(lambda v: not isinstance(v, list)),
        st.lists(st.integers(0, 3), max_size=6).filter(lambda v: len(v) != 4),
        st.tuples(not_int(0, 10**6 - 1).filter(lambda v: not isinstance(v, int) or v < 0), st.just(0), st.just(0),
                  st.just(3)).map(list),
        st.tuples(st.integers(10**6, 10**9), st.just(0), st.just(0), st.just(3)).map(list),   # key >= next_key
        st.tuples(st.just(0), not_int(0, 10**6 - 1), st.just(0), st.just(3)).map(list),       # position
        st.tuples(st.just(0), st.just(0), not_int(0), st.just(3)).map(list),                  # start
        st.tuples(st.just(0), st.just(0), st.just(0), not_int(1, BUDGET)).map(list),          # size
    ))
    return [bad]


DATASET_STATE_BAD = {
    "format": other_than("warppack.PackedIterableDataset/1"), "epoch": not_int(0, EPOCH_MAX),
    "num_replicas": not_int(1, MAX_REPLICAS), "rank": not_int(0, 0), "num_workers": not_int(1, 2**31 - 1),
    "worker": not_int(0, 0), "cursor": not_int(0, len(LENGTHS)), "next_key": not_int(0),
    "pending": st.one_of(NOT_NONE_JUNK.filter(lambda v: not isinstance(v, list)), bad_pieces()),
    "ready": st.one_of(NOT_NONE_JUNK.filter(lambda v: not isinstance(v, list)), bad_pieces().map(lambda b: [b]),
                       st.just([[]])),
    "flushed": NOT_FLAG, "yielded": not_int(0), "empties_done": not_int(0, 0),
}
DATASET_OPTIONS = ["max_tokens", "buffer_size", "seed", "shuffle", "max_seqs_per_bin", "overlong", "num_examples",
                   "lengths_fingerprint"]


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(DATASET_STATE_BAD) + DATASET_OPTIONS), delete=st.booleans())
def test_dataset_refuses_each_malformed_saved_field(data, name, delete):
    ds, state = saved_mid_epoch(PackedIterableDataset(EXAMPLES, BUDGET, buffer_size=4, collator=len))
    # Options may be absent (states of older versions lack some): only position fields are deleted.
    bad = corrupted(data, state, name, DATASET_STATE_BAD, delete=delete and name not in DATASET_OPTIONS)

    def resume():
        ds.load_state_dict(bad)
        list(ds)  # what only the examples tell is checked when the pass restores

    refused(resume, name)


@pytest.mark.parametrize("loader", ["sampler", "dataset"])
@pytest.mark.parametrize("kwargs,match", [
    ({"num_replicas": 0, "rank": 0}, r"num_replicas must be an int >= 1, got 0"),
    ({"num_replicas": -2, "rank": 0}, r"num_replicas must be an int >= 1, got -2"),
    ({"num_replicas": 2**21, "rank": 0}, r"num_replicas must be <= 1048576"),
    ({"num_replicas": 2, "rank": 2}, r"rank=2 is out of range for num_replicas=2; ranks are 0..1"),
    ({"num_replicas": 2, "rank": -1}, r"rank must be an int >= 0, got -1"),
    ({"max_seqs_per_bin": 0}, r"max_seqs_per_bin must be > 0"),
])
def test_world_and_per_bin_settings_are_refused_clearly(loader, kwargs, match):
    build = PackedBatchSampler if loader == "sampler" else PackedIterableDataset
    with pytest.raises(ValueError, match=match):
        build(LENGTHS if loader == "sampler" else EXAMPLES, BUDGET, **kwargs)
