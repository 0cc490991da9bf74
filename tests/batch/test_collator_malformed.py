"""PackedCollator fed random malformed input: a TypeError/ValueError naming the example and field.

Never another exception type, never a batch made of what it could not read.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warppack import PackedCollator

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_GOOD = st.lists(st.integers(0, 50_000), min_size=1, max_size=8)
_CONTAINERS = {
    "list": list,
    "int64": lambda v: np.asarray(v, np.int64),
    "int32": lambda v: np.asarray(v, np.int32),
    "tensor": lambda v: torch.tensor(v),
}


def _bad_ids():
    """Token ids no batch can hold: wrong types or shapes, values outside 0..2**63-1."""
    return st.one_of(
        st.none(), st.integers(), st.text(max_size=4), st.floats(), st.booleans(),
        st.lists(st.floats(allow_nan=True), min_size=1, max_size=4),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.lists(st.text(max_size=2), min_size=1, max_size=3),
        st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3), min_size=1, max_size=3),  # batched
        st.just([]),  # empty, without skip_empty
        st.lists(st.integers(max_value=-1), min_size=1, max_size=3),  # negative
        st.lists(st.integers(2**63, 2**70), min_size=1, max_size=2),  # past int64
        st.sampled_from([
            np.asarray(7), torch.tensor(7), np.ones((2, 3), np.int64), torch.ones(1, 4, dtype=torch.long),
            np.array([2**63, 1], np.uint64), np.ones(3, np.float32), torch.ones(3), torch.ones(2, dtype=torch.bool),
            np.array(["a", "b"]), np.array([1, -5], np.int32),
        ]),
    )


def _negative_integers(value) -> bool:
    """A 1-D integer list or array with a negative entry: legal labels (ignore indices), illegal ids."""
    if isinstance(value, list):
        return bool(value) and all(type(v) is int for v in value) and min(value) < 0
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "i" and bool((value < 0).any())


@st.composite
def bad_batches(draw):
    """A list of examples with one malformed example (or field), anywhere in it."""
    kind = draw(st.sampled_from(list(_CONTAINERS)))
    examples = [{"input_ids": _CONTAINERS[kind](ids)} for ids in draw(st.lists(_GOOD, max_size=4))]
    at = draw(st.integers(0, len(examples)))
    fault = draw(st.sampled_from(["example", "ids", "labels", "mask"]))
    if fault == "example":
        bad = draw(st.one_of(st.none(), st.integers(), st.text(max_size=3), _GOOD,
                             st.fixed_dictionaries({"text": st.text(max_size=3)})))
    elif fault == "ids":
        bad = {"input_ids": draw(_bad_ids())}
    elif fault == "labels":
        ids = draw(_GOOD)
        # Negative labels are fine (-100 is the ignore index); missing ones (None) too.
        labels = _bad_ids().filter(lambda v: v is not None and not _negative_integers(v))
        bad = {"input_ids": ids, "labels": draw(st.one_of(labels, st.just(ids + [1])))}
    else:
        ids = draw(_GOOD)
        mask = draw(st.one_of(st.just([1] * (len(ids) - 1) + [0]), st.just([1] * (len(ids) + 1)),
                              st.just("all"), st.just(np.ones(len(ids)) * 0.5)))
        bad = {"input_ids": ids, "attention_mask": mask}
    return examples[:at] + [bad] + examples[at:], at


@SETTINGS
@given(case=bad_batches(), max_tokens=st.sampled_from([None, 64, 4096]))
def test_collator_refuses_malformed_examples(case, max_tokens):
    examples, at = case
    with pytest.raises((TypeError, ValueError)) as info:
        PackedCollator(max_tokens)(examples)
    assert type(info.value) in (TypeError, ValueError)
    assert f"example {at} of this batch" in str(info.value), str(info.value)


@SETTINGS
@given(examples=st.one_of(
    st.none(), st.integers(), st.text(max_size=3), st.binary(max_size=3), st.floats(),
    st.fixed_dictionaries({"input_ids": _GOOD}), st.sets(st.integers(), max_size=2),
    st.builds(lambda ids: ({"input_ids": i} for i in ids), st.lists(_GOOD, max_size=2)),
))
def test_collator_refuses_what_is_no_list_of_examples(examples):
    with pytest.raises(TypeError, match=r"examples must be a list of examples"):
        PackedCollator()(examples)


@SETTINGS
@given(
    name=st.sampled_from(["max_tokens", "pad_to_multiple_of", "max_sequences", "pad_token_id", "label_pad_id",
                          "static_shape", "skip_empty", "allow_empty", "pin_memory", "overlong"]),
    value=st.one_of(st.none(), st.floats(), st.text(max_size=3), st.integers(-(2**70), 2**70), st.booleans()),
)
def test_collator_options_are_refused_or_kept(name, value):
    kwargs = {name: value}
    if name in ("static_shape", "overlong"):
        kwargs["max_tokens"] = 64
    try:
        collate = PackedCollator(**kwargs)
    except (TypeError, ValueError) as error:
        assert name in str(error), str(error)
        return
    assert getattr(collate, name) == value  # accepted values are kept as given


@pytest.mark.parametrize("empty", [[], ()])
def test_an_empty_list_is_refused_unless_allowed(empty):
    with pytest.raises(ValueError, match=r"examples=(\[\]|\(\)) holds no example.*PackedBatchSampler's equal-steps "
                                         r"padding.*PackedCollator\(\.\.\., allow_empty=True\).*empty_batch\(\)"):
        PackedCollator(64)(empty)
    assert PackedCollator(64, allow_empty=True)(empty).num_sequences == 0
    with pytest.raises(TypeError, match=r"allow_empty must be True or False, got 'yes'.*allow_empty=False"):
        PackedCollator(allow_empty="yes")


@pytest.mark.parametrize("multiple, choices", [(64, "960 or 1024"), (3000, "3000")])
def test_a_budget_that_is_no_multiple_of_the_padding_is_refused(multiple, choices):
    with pytest.raises(ValueError, match=rf"max_tokens=1000 is not a multiple of pad_to_multiple_of={multiple}.*"
                                         rf"pick a max_tokens that is a multiple, e.g. {choices}"):
        PackedCollator(1000, pad_to_multiple_of=multiple)
    batch = PackedCollator(1024, pad_to_multiple_of=64)([{"input_ids": list(range(1, 1000))}])
    assert batch["input_ids"].shape == (1, 1024)  # the padded total stays within the budget


def test_zero_dimensional_ids_take_the_error_path():
    for ids in (np.asarray(5), torch.tensor(5)):
        with pytest.raises(ValueError, match=r"example 1 of this batch: 'input_ids' has shape \(\)"):
            PackedCollator()([{"input_ids": np.arange(1, 4)}, {"input_ids": ids}])
