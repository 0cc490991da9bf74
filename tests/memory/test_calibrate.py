"""calibrate_token_budget on CPU through a simulated device (tests/simulated_device.py)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import warppack
import warppack.memory.calibrate as calibration_module
from warppack.memory.calibrate import next_budget, pessimistic_lengths, probe_schedule, search_budget
from warppack.memory.cache import calibration_key, key_digest
from warppack.memory.device import DeviceMemory, TrainingSnapshot

from support.paths import REPO
from support.simulated_device import SimulatedDevice, ToyLM, adversarial_batches
from support.torchrun import torchrun


def _device(**overrides):
    spec = dict(total_bytes=1_000_000, static_bytes=100_000, per_token=100, per_square=0.5, per_sequence=50)
    spec.update(overrides)
    return SimulatedDevice(**spec)


def _toy(seed=0, **kw):
    torch.manual_seed(seed)
    model = ToyLM(**kw)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


# ---- pure pieces --------------------------------------------------------------------------------
@given(budget=st.integers(1, 5000), max_seq_len=st.integers(1, 600), short=st.integers(1, 64),
       cap=st.one_of(st.none(), st.integers(1, 400)), static=st.booleans())
def test_pessimistic_lengths_fill_the_budget_with_legal_sequences(budget, max_seq_len, short, cap, static):
    budget = max(budget, max_seq_len)
    shapes = pessimistic_lengths(budget, max_seq_len, short_len=short, max_sequences=cap, static_shape=static)
    assert shapes[0][: budget // max_seq_len] == [max_seq_len] * (budget // max_seq_len)
    # the single longest sequence; under static_shape with max_sequences=m, m one-token sequences
    # (all boundaries taken: the longest padding segment)
    alone = [1] * min(cap, budget) if static and cap else [max_seq_len]
    assert alone in shapes or shapes[0] == alone
    for lengths in shapes:
        assert sum(lengths) <= budget and all(1 <= n <= max_seq_len for n in lengths)
    assert sum(shapes[0]) == budget
    short = min(short, max_seq_len)
    if cap is None or -(-budget // short) <= cap:  # many short sequences filling the budget exactly
        assert any(sum(x) == budget and max(x) <= short for x in shapes)
    else:  # as many sequences as the cap allows, as short as possible
        assert any(len(x) == cap and sum(x) == min(budget, cap * max_seq_len) for x in shapes)


@given(budget=st.integers(1, 5000), max_seq_len=st.integers(1, 600), short=st.integers(1, 64),
       cap=st.one_of(st.none(), st.integers(1, 400)), static=st.booleans())
def test_probe_schedule_varies_the_token_total_and_covers_every_pessimistic_shape(budget, max_seq_len, short, cap,
                                                                                  static):
    budget = max(budget, max_seq_len, 2)  # the search starts at max_seq_len; one token cannot vary
    schedule = probe_schedule(budget, max_seq_len, short_len=short, max_sequences=cap, static_shape=static)
    for lengths in schedule:
        assert 1 <= sum(lengths) <= budget and all(1 <= n <= max_seq_len for n in lengths)
    for shape in pessimistic_lengths(budget, max_seq_len, short_len=short, max_sequences=cap, static_shape=static):
        assert shape in schedule
    totals = [sum(x) for x in schedule]
    # the first batch (where the optimizer state is created) is smaller than a later one: the total
    # grows inside every probe, the transition that fragments the caching allocator
    assert totals[0] < totals[1] == budget and schedule[1] == pessimistic_lengths(budget, max_seq_len)[0]
    # the short batch sits between two long ones: whichever needs more follows the other once
    assert all(schedule[i - 1] == schedule[i + 1] == schedule[1] for i, x in enumerate(schedule)
               if 1 < i < len(schedule) - 1 and len(x) > 1 and x != schedule[1])


@settings(max_examples=120, deadline=None)
@given(static=st.floats(0, 5e5), per_token=st.floats(1, 500), per_square=st.floats(0, 2),
       max_seq_len=st.integers(8, 512), headroom=st.floats(0.02, 0.5), tolerance=st.floats(0.01, 0.2),
       granularity=st.sampled_from([1, 8, 64]))
def test_search_brackets_the_best_budget_within_tolerance(static, per_token, per_square, max_seq_len, headroom,
                                                          tolerance, granularity):
    device = SimulatedDevice(total_bytes=1e7, static_bytes=static, per_token=per_token, per_square=per_square)
    target = (1 - headroom) * device.total_bytes
    start = -(-max_seq_len // granularity) * granularity

    def probe(budget):
        peak = device.need_at_budget(budget, max_seq_len)
        if peak > device.total_bytes:
            return False, None, "CUDA out of memory"
        return peak <= target, peak, None

    best = device.best_budget(max_seq_len, headroom=headroom, granularity=granularity)
    found, history = search_budget(probe, start=start, target=target, tolerance=tolerance, granularity=granularity)
    if best < start:
        assert found is None and len(history) == 1
        return
    assert found is not None and found % granularity == 0 and probe(found)[0]
    assert found <= best and (best - found <= granularity or best <= found * (1 + tolerance))
    assert len(history) <= 12


@settings(max_examples=150, deadline=None)
@given(static=st.floats(0, 5e6), per_token=st.floats(1, 500), tolerance=st.floats(0.01, 0.2),
       margin=st.floats(0.0005, 0.05), granularity=st.sampled_from([1, 8, 64]))
def test_refinement_lands_within_its_margin_of_an_affine_crossing(static, per_token, tolerance, margin,
                                                                  granularity):
    target = 1e8

    def probe(budget):
        peak = static + per_token * budget
        return peak <= target, peak, None

    best = int((target - static) / per_token) // granularity * granularity
    found, history = search_budget(probe, start=granularity, target=target, tolerance=tolerance,
                                   granularity=granularity, margin=margin)
    assert found is not None and found <= best and probe(found)[0]
    assert found >= best * (1 - margin) - 2 * granularity, (found, best, history)
    assert sum(bool(h.get("refinement")) for h in history) <= 2


def test_a_refinement_that_runs_out_of_memory_gets_a_second_one():
    # Out of memory below the line's prediction (fragmentation): a failure without a peak leaves the
    # line pointing past it, so each refinement halves what is left of the bracket instead.
    wall = 9_830

    def probe(budget):
        if budget >= wall:
            return False, None, "CUDA out of memory"
        return 100 * budget <= 1e6, 100.0 * budget, None

    found, history = search_budget(probe, start=64, target=1e6, tolerance=0.05)
    refinements = [h for h in history if h.get("refinement")]
    assert len(refinements) == 2 and not refinements[0]["fits"] and refinements[1]["fits"], history
    assert found == refinements[1]["budget"] and wall * 0.995 <= found < wall
    lo, hi = 9_780, 9_900  # the bracket when the refinements start (the last fit, the first OOM)
    assert [r["budget"] for r in refinements] == [(lo + hi) // 2, (lo + (lo + hi) // 2) // 2]


def test_next_budget_extrapolates_then_stays_inside_the_bracket():
    points = [(100, 1100.0), (200, 2100.0)]  # 10 bytes per token over 100 static
    guess = next_budget(200, None, points, target=10_100, tolerance=0.05)
    assert 950 <= guess < 1000  # just under the predicted 1000
    assert 200 * 1.05 <= next_budget(200, 230, points, target=10_100, tolerance=0.05) <= 222.5
    assert next_budget(200, None, [(200, 2100.0)], target=10_100, tolerance=0.05) == 400  # no slope yet: double


# ---- the calibrator on a simulated device --------------------------------------------------------
def test_calibrated_budget_is_within_tolerance_of_the_best_and_leaves_headroom(tmp_path):
    model, opt = _toy()
    device = _device().attach(model)
    budget = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=256, memory=device,
                                             collator=warppack.PackedCollator(pad_to_multiple_of=8),
                                             cache_dir=tmp_path)
    best = device.best_budget(256, headroom=0.08, granularity=8)
    assert budget % 8 == 0 and best / 1.05 <= budget <= best
    assert all(device.need(s) <= 0.92 * device.total_bytes for s in pessimistic_lengths(budget, 256))
    assert device.resets <= 8  # probes


def test_static_shapes_let_the_budget_come_closer_to_the_headroom_line(tmp_path):
    # Every static_shape batch holds the budget, so a probe's peak is the run's: the last probe aims
    # tolerance/20 under the predicted crossing instead of tolerance/5.
    model, opt = _toy()
    device = _device(per_square=0.0).attach(model)
    static = warppack.PackedCollator(8, pad_to_multiple_of=8, static_shape=True)
    report = calibration_module.calibrate(model, optimizer=opt, max_seq_len=256, memory=device, cache=False,
                                          collator=static)
    best = device.best_budget(256, headroom=0.08, granularity=8)
    assert report.max_tokens % 8 == 0 and best * (1 - 0.05 / 20) - 16 <= report.max_tokens <= best, report.probes
    seen = {sum(lengths) for lengths in device.seen[1:]}  # after the warm-up step: every batch is a full budget
    assert seen <= {p["budget"] for p in report.probes}
    ooms, peak = _adversarial(device, report.max_tokens)
    assert ooms == 0


def _adversarial(device, budget, max_seq_len=128, batches=4):
    """(OOMs, peak reserved) of the three adversarial streams run back to back from a fresh start."""
    return device.replay([b for stream in adversarial_batches(budget, max_seq_len, batches).values() for b in stream])


def _largest_fitting(device, start, granularity=8, max_seq_len=128):
    """The largest budget whose adversarial streams run without OOM (the benchmark's definition of fits)."""
    lo, hi = 0, start
    while _adversarial(device, hi, max_seq_len)[0] == 0:
        lo, hi = hi, hi * 2
    while hi - lo > granularity:
        mid = (lo + hi) // 2 // granularity * granularity
        lo, hi = (mid, hi) if _adversarial(device, mid, max_seq_len)[0] == 0 else (lo, mid)
    return lo


def _fragmenting_device(model):
    return _device(static_bytes=20_000, fragmentation=0.3).attach(model)


def test_headroom_bounds_the_reserved_peak_through_fragmentation_on_adversarial_streams(tmp_path):
    model, opt = _toy()
    device = _fragmenting_device(model)
    report = calibration_module.calibrate(model, optimizer=opt, max_seq_len=128, memory=device, cache=False,
                                          collator=warppack.PackedCollator(pad_to_multiple_of=8))
    budget = report.max_tokens
    fitted = [p for p in report.probes if p["fits"]]
    assert all(p["peak_bytes"] <= report.target_bytes for p in fitted)
    # the probes saw fragmentation: reserved above allocated (a search on allocated would go higher)
    assert all(p["peak_bytes"] > p["peak_allocated_bytes"] for p in fitted)
    ooms, peak = _adversarial(device, budget)
    assert ooms == 0 and peak <= 0.92 * device.total_bytes
    fits = _largest_fitting(device, budget)
    assert budget / fits >= 0.85, (budget, fits)  # the headroom (8%) and the search's tolerance, nothing more


def test_enforced_headroom_caps_the_allocator_and_budgets_from_the_allocated_peak():
    model, opt = _toy()
    device = _fragmenting_device(model)
    predicted = calibration_module.calibrate(model, optimizer=opt, max_seq_len=128, memory=device, cache=False,
                                             collator=warppack.PackedCollator(pad_to_multiple_of=8))
    report = calibration_module.calibrate(model, optimizer=opt, max_seq_len=128, memory=device, cache=False,
                                          collator=warppack.PackedCollator(pad_to_multiple_of=8),
                                          enforce_headroom=True)
    assert device.limit == report.target_bytes  # left in place for the run
    assert report.max_tokens > predicted.max_tokens
    ooms, peak = _adversarial(device, report.max_tokens)  # the run, under the cap
    assert ooms == 0 and peak <= 0.92 * device.total_bytes
    device.limit = device.total_bytes  # what really fits: the whole device, no cap
    fits = _largest_fitting(device, report.max_tokens)
    assert report.max_tokens / fits >= 0.9, (report.max_tokens, fits)


def test_enforced_cap_is_the_headroom_line_whatever_reserve_bytes_keeps_back():
    # reserve_bytes is room for later allocations (DDP's gradient buckets): they must fit under the
    # cap too, so the cap stays at the line and the budget shrinks instead.
    model, opt = _toy()
    device = _device().attach(model)
    report = calibration_module.calibrate(model, optimizer=opt, max_seq_len=64, memory=device, cache=False,
                                          enforce_headroom=True, reserve_bytes=100_000)
    assert device.limit == int(0.92 * device.total_bytes)
    assert report.target_bytes == int(0.92 * device.total_bytes) - 100_000
    assert all(p["peak_allocated_bytes"] <= report.target_bytes for p in report.probes if p["fits"])


def test_enforce_headroom_needs_a_device_that_can_cap():
    model, opt = _toy()
    device = _device().attach(model)
    device.cap = DeviceMemory.cap.__get__(device)  # a backend without a cap
    with pytest.raises(NotImplementedError, match="enforce_headroom=False"):
        warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, memory=device, cache=False,
                                        enforce_headroom=True)


def test_constant_shape_probes_would_miss_the_fragmentation(monkeypatch):
    # The check above can fail: probes whose batches all hold the budget (the old schedule) never
    # fragment, so their budget overruns the headroom once a real stream changes shapes.
    monkeypatch.setattr(calibration_module, "probe_schedule", pessimistic_lengths)
    model, opt = _toy()
    device = _fragmenting_device(model)
    budget = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=128, memory=device, cache=False)
    ooms, peak = _adversarial(device, budget)
    assert peak > 0.92 * device.total_bytes


def test_headroom_is_applied_to_reserved_not_allocated():
    # A device whose reserved peak is 10% above its allocated peak: the budget must follow reserved.
    class Fragmented(SimulatedDevice):
        def peak_bytes(self):
            return int(self.peak_allocated_bytes() * 1.1)

    model, opt = _toy()
    plain = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=128, memory=_device().attach(model),
                                            cache=False)
    model, opt = _toy()
    spec = dict(total_bytes=1_000_000, static_bytes=100_000, per_token=100, per_square=0.5, per_sequence=50)
    fragmented = Fragmented(**spec).attach(model)
    budget = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=128, memory=fragmented, cache=False)
    assert budget < plain * 0.95
    assert all(fragmented.need(s) * 1.1 <= 0.92 * fragmented.total_bytes for s in probe_schedule(budget, 128))


def test_each_probe_starts_from_the_given_optimizer_state_and_an_empty_cache():
    model, opt = _toy()
    device = _device().attach(model)
    states = []
    real_reset = device.reset_peak

    def reset_peak():
        states.append(len(opt.state))
        real_reset()

    device.reset_peak = reset_peak
    warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=128, memory=device, cache=False)
    assert len(states) >= 3 and set(states) == {0}  # the warmup's state was dropped before every probe
    assert not opt.state


@pytest.mark.parametrize("headroom", [0, 1, 1.5, -0.1, True, "0.1"])
def test_headroom_outside_zero_one_is_refused(headroom):
    model, opt = _toy()
    with pytest.raises(ValueError, match=r"headroom must be a fraction strictly between 0 and 1.*headroom=0\.08"):
        warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, headroom=headroom,
                                        memory=_device(), cache=False)


def test_without_cuda_the_error_says_why():
    model, opt = _toy()
    with pytest.raises(RuntimeError, match="CUDA") as info:
        warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, cache=False)
    if torch.version.cuda is None:
        assert "CPU-only" in str(info.value) and "budget yourself" in str(info.value)


@pytest.mark.parametrize("per_token,match", [(100, r"needed 0\.00 GiB"), (10_000, "ran out of memory")])
def test_model_that_does_not_fit_one_sequence_says_how_much_it_needed(per_token, match):
    model, opt = _toy()
    device = _device(per_token=per_token, per_square=3).attach(model)  # 512 tokens: > 92% (or > 100%)
    with pytest.raises(RuntimeError, match=r"does not fit one max_seq_len=512 sequence on simulated-gpu") as info:
        warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=512, memory=device, cache=False)
    assert "headroom=0.08" in str(info.value) and "activation checkpointing" in str(info.value)
    assert __import__("re").search(match, str(info.value))


def test_weights_and_optimizer_state_alone_not_fitting_is_said_plainly():
    model, opt = _toy()
    device = _device(static_bytes=2_000_000).attach(model)  # over the device before any token
    with pytest.raises(RuntimeError, match="already runs out of memory on simulated-gpu"):
        warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, memory=device, cache=False)
    assert not opt.state  # restored even so


def test_non_oom_errors_are_not_swallowed():
    model, opt = _toy()

    def broken(model, batch):
        raise KeyError("labels")

    with pytest.raises(KeyError):
        warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=64, memory=_device().attach(model),
                                        loss_fn=broken, cache=False)


def test_accelerate_prepared_model_and_optimizer_with_mixed_precision(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    model, opt = _toy()
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=2)
    try:
        model, opt = accelerator.prepare(model, opt)
        device = _device().attach(model)
        before = _state(model, opt.optimizer)
        budget = warppack.calibrate_token_budget(model, accelerator=accelerator, max_seq_len=128, memory=device,
                                                 cache_dir=tmp_path)  # the optimizer comes from the accelerator
        best = device.best_budget(128, headroom=0.08)
        assert best / 1.05 <= budget <= best
        _assert_same(before, _state(model, opt.optimizer))
        key = json.loads(next(tmp_path.glob("*.json")).read_text())["key"]
        assert key["mixed_precision"] == "bf16" and key["settings"]["gradient_accumulation"] is True
        assert key["optimizer"]["class"] == "torch.optim.adamw.AdamW"
    finally:
        accelerate.state.AcceleratorState._reset_state(True)  # no state leaks into other tests


# ---- leaves everything as it found it --------------------------------------------------------------
def _state(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()},
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
            torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy(), model.training)


def _assert_same(a, b):
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        assert a[2][key].keys() == b[2][key].keys()
        assert all(torch.equal(a[2][key][k], b[2][key][k]) if torch.is_tensor(a[2][key][k])
                   else a[2][key][k] == b[2][key][k] for k in a[2][key])
    assert a[3] == b[3] and torch.equal(a[4], b[4]) and a[5] == b[5] and np.array_equal(a[6], b[6]) and a[7] == b[7]


@pytest.mark.parametrize("warm", [False, True], ids=["fresh-optimizer", "mid-training"])
def test_model_optimizer_grads_and_rng_are_restored_bit_for_bit(warm, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                      attention_dropout=0.1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.set_attn_implementation("warppack")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    if warm:  # state, gradients and a scheduler-changed lr exist and must survive
        batch = warppack.PackedCollator()([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10, 11]}])
        model(**batch).loss.backward()
        opt.step()
        model(**batch).loss.backward()
        opt.param_groups[0]["lr"] = 0.05
    model.eval()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    before = _state(model, opt)
    device = SimulatedDevice(total_bytes=6e4, static_bytes=1e4, per_token=100).attach(model)
    budget = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=32, short_len=32, memory=device,
                                             cache=False)  # few segments: the CPU attention path is slow
    assert 300 < budget < 600 and device.forwards > 3
    _assert_same(before, _state(model, opt))


def test_snapshot_restores_state_the_step_deleted_or_replaced():
    model, opt = _toy()
    model(**warppack.PackedCollator()([{"input_ids": [1, 2, 3]}]))["loss"].backward()
    opt.step()
    before = _state(model, opt)
    with TrainingSnapshot(model, opt):
        del opt.state[model.head.weight]["exp_avg"]
        opt.state[model.head.bias]["exp_avg"] = torch.zeros(3)  # replaced with another shape
        opt.param_groups[0]["extra"] = 1
        model.head.weight.grad = None
        model.train(not model.training)
    _assert_same(before, _state(model, opt))


# ---- the cache --------------------------------------------------------------------------------------
def test_cache_skips_the_search_and_keys_on_what_changes_the_result(tmp_path):
    model, opt = _toy()
    device = _device().attach(model)
    kwargs = dict(optimizer=opt, max_seq_len=128, memory=device, cache_dir=tmp_path)
    first = warppack.calibrate_token_budget(model, **kwargs)
    probes = device.resets
    assert warppack.calibrate_token_budget(model, **kwargs) == first and device.resets == probes  # a hit
    (entry,) = tmp_path.glob("*.json")
    stored = json.loads(entry.read_text())
    assert stored["max_tokens"] == first and stored["key"]["device"]["name"] == "simulated-gpu"
    warppack.calibrate_token_budget(model, **{**kwargs, "headroom": 0.2})
    assert device.resets > probes and len(list(tmp_path.glob("*.json"))) == 2  # another setting: a miss


def test_cache_key_changes_with_each_input():
    transformers = pytest.importorskip("transformers")
    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**small))
    base = dict(optimizer=torch.optim.AdamW(model.parameters()), device={"name": "H100", "total_bytes": 80},
                world_size=1, mixed_precision="bf16", settings={"max_seq_len": 4096})

    def digest(m=model, **changes):
        return key_digest(calibration_key(m, **{**base, **changes}))

    variants = {
        "config": digest(transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**small, "num_hidden_layers": 2}))),
        "dtype": digest(transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)).to(torch.bfloat16)),
        "optimizer": digest(optimizer=torch.optim.SGD(model.parameters(), lr=0.1)),
        "optimizer flag": digest(optimizer=torch.optim.AdamW(model.parameters(), amsgrad=True)),
        "device": digest(device={"name": "H100", "total_bytes": 94}),
        "world": digest(world_size=8),
        "precision": digest(mixed_precision="no"),
        "settings": digest(settings={"max_seq_len": 2048}),
        "allocator": digest(device={"name": "H100", "total_bytes": 80,
                                    "allocator": {"backend": "native", "conf": "expandable_segments:True"}}),
    }
    new_name = hasattr(model, "activation_checkpointing_enable")  # transformers renamed it; the old name warns
    (model.activation_checkpointing_enable if new_name else model.gradient_checkpointing_enable)()
    variants["checkpointing"] = digest()
    (model.activation_checkpointing_disable if new_name else model.gradient_checkpointing_disable)()
    model.set_attn_implementation("sdpa")
    variants["attention"] = digest()
    model.set_attn_implementation("eager")
    same_weights_other_init = transformers.LlamaForCausalLM(transformers.LlamaConfig(**small))
    assert digest(same_weights_other_init) == digest(same_weights_other_init)
    assert len(set(variants.values()) | {digest()}) == len(variants) + 1


# ---- all ranks agree (2 gloo processes) --------------------------------------------------------------
def _run_two_ranks(script: str, out: Path) -> list:
    """``tests/support/dist_scripts/<script>`` on 2 gloo processes; each rank's ``rank{r}.json``."""
    torchrun(script, 2, out)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _run_two_ranks("calibrate_two_ranks.py", tmp_path_factory.mktemp("calibrate_ranks"))


@pytest.mark.distributed
def test_two_ranks_agree_on_the_smaller_device_budget(two_ranks):
    r0, r1 = two_ranks
    assert r0["budget"] == r1["budget"] == min(r0["alone"], r1["alone"])
    assert r0["alone"] != r1["alone"]  # the ranks really had different memory
    # rank 0 had a (wrong) cache entry, rank 1 none: both measured instead of trusting half a cache
    assert r0["with_cache"] == r1["with_cache"] == r0["budget"]


@pytest.mark.distributed
def test_fsdp2_sharded_ranks_agree_and_get_their_shards_back(tmp_path):
    pytest.importorskip("transformers")
    r0, r1 = _run_two_ranks("calibrate_fsdp_ranks.py", tmp_path)
    assert r0["sharded"].startswith("FSDP")
    assert r0["alone"] != r1["alone"]  # the ranks really had different memory
    assert r0["budget"] == r1["budget"] == min(r0["alone"], r1["alone"])
    assert r0["restored"] and r1["restored"]  # local shards, gradients and optimizer state, bit for bit
    assert "enforce_headroom=False" in r0["refused"] and "enforce_headroom=False" in r1["refused"]


@pytest.mark.distributed
def test_accelerate_ddp_ranks_agree_with_the_accelerators_optimizer(tmp_path):
    pytest.importorskip("accelerate")
    r0, r1 = _run_two_ranks("calibrate_accelerate_ranks.py", tmp_path)
    assert r0["wrapped"] == "DistributedDataParallel" and "MULTI_CPU" in r0["distributed_type"]
    assert r0["alone"] != r1["alone"]
    assert r0["budget"] == r1["budget"] == min(r0["alone"], r1["alone"])


@pytest.mark.slow
def test_gpu_benchmark_script_runs_in_smoke_mode(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_calibration

    assert gpu_calibration.main(["--smoke", "--batches", "1", "--models", "tiny-llama-lora", "--accelerate",
                                 "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "gpu_calibration.json").read_text())["rows"]
    assert row["adversarial"]["ooms"] == 0 and row["adversarial"]["peak_reserved_fraction"] <= 0.92
    assert row["state_changed"] == [] and row["fits"]["trials"]
    assert row["calibrated"] <= row["fits"]["largest_fitting"] < row["fits"]["first_failing"]
    assert 0.85 <= row["calibrated_over_first_failing"] <= row["calibrated_over_fits"] <= 1
    assert row["accelerate"]["batch_size"] > 0
    assert "| tiny-llama-lora |" in (tmp_path / "gpu_calibration.md").read_text()
    # the configuration of the H200 evidence: static shapes and the enforced cap
    enforced = tmp_path / "enforced"
    assert gpu_calibration.main(["--smoke", "--batches", "1", "--models", "tiny-llama", "--accelerate",
                                 "--static-shape", "--enforce-headroom", "--out", str(enforced)]) == 0
    data = json.loads((enforced / "gpu_calibration.json").read_text())
    (row,) = data["rows"]
    assert data["meta"]["static_shape"] and data["meta"]["enforce_headroom"]
    assert row["adversarial"]["ooms"] == 0 and row["adversarial"]["peak_reserved_fraction"] <= 0.92
    # (the ratio is the GPU's to show: in this simulation a static batch's padding segment costs its
    # square, so the probes' mostly empty batch sets the budget)
    assert 0 < row["calibrated"] and row["accelerate"]["batch_size"] > 0
    assert "allocator capped at the headroom line" in (enforced / "gpu_calibration.md").read_text()
