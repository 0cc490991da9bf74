"""plan() and lengths_of() fed random malformed input: a TypeError/ValueError naming the argument.

Never another exception type (numpy's, Arrow's, a KeyError alone) and never a silent result.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import warppack
from warppack import lengths_of, plan
from warppack.engine.options import index_past_int64

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_NOT_A_NUMBER = st.one_of(
    st.none(), st.text(max_size=3), st.binary(max_size=2), st.floats(allow_nan=True), st.booleans(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.lists(st.integers(), max_size=3),
)
_BAD_COUNT = st.one_of(
    st.integers(max_value=0), st.integers(min_value=2**31), st.floats(), st.booleans(), st.text(max_size=3),
    st.none(), st.just(np.int64(-4)), st.just(np.float32(8)),
)
_VALID_LENGTHS = st.lists(st.integers(1, 64), min_size=1, max_size=12)


@st.composite
def bad_lengths(draw):
    """Lengths that are not one integer count >= 1 per example (or do not fit the budget of 64)."""
    good = draw(_VALID_LENGTHS)
    kind = draw(st.sampled_from(["item", "value", "container", "array", "uint64", "bigint"]))
    if kind == "item":  # one entry of a Python list is no count
        at = draw(st.integers(0, len(good) - 1))
        good[at] = draw(_NOT_A_NUMBER)  # floats too, even whole ones: a count is an int
        return good
    if kind == "value":  # a count no plan can hold: negative, zero, past the budget or int64
        good[draw(st.integers(0, len(good) - 1))] = draw(st.one_of(st.integers(max_value=0), st.integers(65, 2**62)))
        return good
    if kind == "container":
        return draw(st.one_of(
            _NOT_A_NUMBER.filter(lambda v: not isinstance(v, list)), st.integers(),
            st.lists(st.lists(st.integers(1, 9), max_size=3), min_size=1, max_size=4),  # token ids, not counts
            st.lists(st.fixed_dictionaries({"input_ids": st.lists(st.integers(1, 9))}), min_size=1, max_size=3),
            st.just(x for x in good),
        ))
    if kind == "array":  # numpy of the wrong dtype or dimension
        return draw(st.sampled_from([
            np.asarray(good, np.float64) + 0.5, np.asarray(good, bool), np.asarray(good).reshape(1, -1),
            np.asarray(good[0]), np.asarray([str(v) for v in good]), np.asarray(good, object).reshape(1, -1),
        ]))
    if kind == "uint64":
        array = np.asarray(good, np.uint64)
        array[draw(st.integers(0, len(good) - 1))] = draw(st.integers(2**63, 2**64 - 1))
        return array
    good[draw(st.integers(0, len(good) - 1))] = draw(st.integers(2**63, 2**80))  # past int64
    return good


@SETTINGS
@given(lengths=bad_lengths(), strategy=st.sampled_from(["bfd", "ffd", "online"]))
def test_plan_refuses_malformed_lengths(lengths, strategy):
    with pytest.raises((TypeError, ValueError)) as info:
        plan(lengths, 64, strategy=strategy)
    assert type(info.value) in (TypeError, ValueError)
    message = str(info.value)
    assert "lengths" in message or "example" in message, message


@SETTINGS
@given(
    name=st.sampled_from(["max_tokens", "max_seqs_per_bin", "buffer_size", "strategy", "overlong", "shuffle", "seed"]),
    data=st.data(),
)
def test_plan_refuses_malformed_options(name, data):
    value = data.draw({
        "max_tokens": _BAD_COUNT, "max_seqs_per_bin": _BAD_COUNT.filter(lambda v: v is not None),
        "buffer_size": _BAD_COUNT, "strategy": _NOT_A_NUMBER, "overlong": _NOT_A_NUMBER,
        "shuffle": st.one_of(st.integers(), st.text(max_size=2), st.none(), st.floats()),
        "seed": st.one_of(st.floats(), st.text(max_size=2), st.none(), st.booleans()),
    }[name])
    kwargs = {"max_tokens": 64, name: value}
    with pytest.raises((TypeError, ValueError)) as info:
        plan([3, 5, 8], **kwargs)
    assert type(info.value) in (TypeError, ValueError)
    assert name in str(info.value), str(info.value)


@st.composite
def bad_data(draw):
    """Inputs lengths_of cannot count: wrong containers, rows that are no sequence of token ids."""
    kind = draw(st.sampled_from(["container", "row", "field", "array"]))
    if kind == "container":
        return draw(st.one_of(
            st.none(), st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=2),
            st.just(x for x in [[1], [2]]), st.dictionaries(st.sampled_from(["text", "ids"]), st.integers(), max_size=2),
        ))
    bad_row = draw(st.one_of(
        st.none(), st.integers(), st.floats(), st.text(max_size=4), st.booleans(),
        st.lists(st.one_of(st.none(), st.floats(), st.text(max_size=2), st.booleans(), st.lists(st.integers(), max_size=2)),
                 min_size=1, max_size=3),  # a first item that is no token id
        st.sampled_from([np.asarray(3), np.ones((2, 2), np.int64), np.ones(3), np.ones(2, bool), np.asarray(["a"])]),
    ))
    rows = [[1, 2], [3]]
    at = draw(st.integers(0, len(rows)))
    if kind == "row":
        return rows[:at] + [bad_row] + rows[at:]
    if kind == "field":
        examples = [{"input_ids": r} for r in rows]
        missing = draw(st.booleans())
        return examples[:at] + [{"text": "hi"} if missing else {"input_ids": bad_row}] + examples[at:]
    return draw(st.sampled_from([
        np.array([3, -1]), np.array([1.5, 2.0]), np.array([True]), np.ones((2, 2), np.int64), np.asarray(4),
        np.array([2**63], np.uint64), np.array([2**64 - 1, 3], np.uint64),
    ]))


@SETTINGS
@given(data=bad_data())
def test_lengths_of_refuses_malformed_data(data):
    with pytest.raises((TypeError, ValueError)) as info:
        lengths_of(data)
    message = str(info.value)
    assert "data" in message or "example" in message, message


@pytest.mark.parametrize("column", [None, 3, ["input_ids"], b"input_ids"])
def test_lengths_of_refuses_a_column_that_is_no_name(column):
    with pytest.raises(TypeError, match=r"column must be the name of the field of token ids"):
        lengths_of([{"input_ids": [1]}], column=column)


def test_plan_of_malformed_lengths_names_the_fix():
    with pytest.raises(TypeError, match=r"lengths\[0\] = \[1, 2\] \(list\).*warppack\.lengths_of"):
        plan([[1, 2], [3]], 16)
    with pytest.raises(TypeError, match=r"lengths\[0\] = \[1, 2\].*warppack\.lengths_of"):
        warppack.PackedBatchSampler([[1, 2], [3]], 16)


@pytest.mark.parametrize("values, index", [
    ([1, 2**63, 2**64 - 1, 3], 2), ([2**63], 0), ([1, 2**63 - 1], None), ([], None),
])
def test_plan_and_lengths_of_find_values_past_int64_by_one_rule(values, index):
    array = np.array(values, dtype=np.uint64)
    assert index_past_int64(array) == index
    assert index_past_int64(array.astype(np.int64)) is None  # no other dtype can hold such a value
    if index is None:
        return
    shown = rf"\[{index}\] = {values[index]} overflows int64"
    with pytest.raises(ValueError, match=rf"lengths{shown}"):
        plan(array, 16)
    with pytest.raises(ValueError, match=rf"data{shown}"):
        lengths_of(array)
