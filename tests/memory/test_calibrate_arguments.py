"""calibrate_token_budget's arguments: each malformed one is a ValueError/TypeError naming it, before any probe.

Also the one signature: ``calibrate`` and ``calibrate_token_budget`` take the same keyword-only
arguments (``inspect.signature`` shows them on both), so the CLI and ``help()`` read the real list.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import warppack
from warppack.memory.calibrate import calibrate

from support.simulated_device import SimulatedDevice, ToyLM

torch.manual_seed(0)
MODEL = ToyLM()
OPTIMIZER = torch.optim.AdamW(MODEL.parameters(), lr=1e-2)
DEVICE = SimulatedDevice(total_bytes=20_000, static_bytes=1000, per_token=100).attach(MODEL)

ODD = st.one_of(st.text(max_size=3), st.binary(max_size=2), st.floats(allow_nan=True), st.just(object()),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=1), st.integers(), max_size=1))
NOT_FLAG = st.one_of(ODD, st.none(), st.integers(-1, 2))
NOT_COUNT = st.one_of(ODD, st.none(), st.booleans(), st.integers(max_value=0), st.integers(min_value=2**31))
NOT_FRACTION = st.one_of(ODD.filter(lambda v: not isinstance(v, float) or not 0 < v < 1), st.none(), st.booleans(),
                         st.integers(), st.floats(max_value=0), st.floats(min_value=1))
NOT_OBJECT = st.one_of(st.integers(), st.text(max_size=3), st.just(object()), st.just(torch.zeros(2)))

BAD = {
    "model": st.one_of(NOT_OBJECT, st.none(), st.just(torch.nn.ReLU())),  # ReLU: a module without parameters
    "max_seq_len": NOT_COUNT,
    "optimizer": NOT_OBJECT,
    "collator": st.one_of(NOT_OBJECT, st.just(len), st.just({})),
    "headroom": NOT_FRACTION,
    "tolerance": NOT_FRACTION,
    "short_len": NOT_COUNT,
    "upper_bound": NOT_COUNT.filter(lambda v: v is not None),
    "reserve_bytes": st.one_of(ODD, st.none(), st.booleans(), st.integers(max_value=-1),
                               st.integers(min_value=18_400)),  # the last: leaves no memory to train in
    "loss_fn": NOT_OBJECT,
    "gradient_accumulation_steps": st.one_of(ODD, st.booleans(), st.integers(max_value=0)),
    "enforce_headroom": NOT_FLAG,
    "cache": NOT_FLAG,
    "cache_dir": st.one_of(st.integers(), st.floats(), st.binary(max_size=2), st.just(object())),
    "progress": NOT_FLAG.filter(lambda v: v is not None),
    "memory": NOT_OBJECT,
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(BAD)))
def test_each_malformed_argument_is_refused_by_name_before_any_probe(data, name):
    arguments = {"model": MODEL, "optimizer": OPTIMIZER, "max_seq_len": 32, "memory": DEVICE, "cache": False}
    arguments[name] = data.draw(BAD[name], label=name)
    probes, state = DEVICE.resets, {k: v.clone() for k, v in MODEL.state_dict().items()}
    try:
        warppack.calibrate_token_budget(**arguments)
    except (ValueError, TypeError) as exc:
        assert name in str(exc), f"the error does not name {name!r}: {exc}"
    else:
        pytest.fail(f"a malformed {name} was accepted")
    assert DEVICE.resets == probes, "refused before measuring anything"
    assert all(torch.equal(state[k], v) for k, v in MODEL.state_dict().items())


def test_negative_reserve_bytes_is_refused_not_ignored():
    with pytest.raises(ValueError, match=r"reserve_bytes must be an int >= 0, got -4096"):
        warppack.calibrate_token_budget(MODEL, optimizer=OPTIMIZER, max_seq_len=32, memory=DEVICE, cache=False,
                                        reserve_bytes=-4096)


def test_both_entry_points_have_one_keyword_only_signature():
    budget, report = inspect.signature(warppack.calibrate_token_budget), inspect.signature(calibrate)
    assert list(budget.parameters) == list(report.parameters)
    assert budget.parameters == report.parameters
    assert budget.return_annotation == "int" and report.return_annotation == "CalibrationReport"
    assert all(p.kind is p.KEYWORD_ONLY for name, p in budget.parameters.items() if name != "model")
    assert budget.parameters["headroom"].default == 0.08 and budget.parameters["cache"].default is True
    with pytest.raises(TypeError):
        warppack.calibrate_token_budget(MODEL, 32)  # keyword-only, as the signature says
