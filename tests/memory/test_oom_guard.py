"""OOMGuard: an out-of-memory error splits the batch; loss and gradients equal the full batch's."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from hypothesis import given, strategies as st

import warppack
from warppack.memory.device import is_oom_error
from warppack.memory.oom_guard import split_points

from support.simulated_device import SimulatedDevice, ToyLM
from support.torchrun import torchrun

LENGTHS = [9, 4, 13, 6, 11, 3, 8]  # all different: a sequence is known by its length


def _examples(lengths=LENGTHS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 64, (n,), generator=gen)} for n in lengths]


def _llama(seed=0):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).double()
    model.set_attn_implementation("warppack")
    return model


def _twins(make):
    a, b = make(), make()
    b.load_state_dict(a.state_dict())
    return a, b


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close_grads(a, b, rtol=1e-6):
    # transformers computes the loss in float32 even for a float64 model: float32 round-off is the floor
    assert a.keys() == b.keys()
    for name in a:
        scale = b[name].abs().max().item() or 1.0
        assert (a[name] - b[name]).abs().max().item() <= rtol * scale, name


# ---- classifiers and helpers -----------------------------------------------------------------------
@pytest.mark.parametrize("error,expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"), True),
    (torch.cuda.OutOfMemoryError("anything"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED."), False),
    (RuntimeError("shape mismatch"), False),
    (ValueError("CUDA out of memory"), False),
    (KeyboardInterrupt(), False),
])
def test_is_oom_error(error, expected):
    assert is_oom_error(error) is expected


@given(st.lists(st.integers(1, 100), min_size=2, max_size=30))
def test_split_points_balance_tokens_at_a_sequence_boundary(lengths):
    cut = split_points(lengths, 0, len(lengths))
    assert 0 < cut < len(lengths)
    best = min(abs(sum(lengths[:i]) - sum(lengths[i:])) for i in range(1, len(lengths)))
    assert abs(sum(lengths[:cut]) - sum(lengths[cut:])) == best


# ---- no loss: split batches give the full batch's loss and gradients --------------------------------
@pytest.mark.parametrize("phase", ["forward", "backward"])
@pytest.mark.parametrize("accumulating", [False, True], ids=["first-micro-batch", "grads-already-there"])
def test_split_loss_and_gradients_equal_the_full_batch(phase, accumulating):
    reference, guarded = _twins(_llama)
    collate = warppack.PackedCollator(pad_to_multiple_of=4)
    batch = collate(_examples())
    if accumulating:  # an earlier micro-batch left gradients: a failed half-backward must not corrupt them
        earlier = collate(_examples([5, 7], seed=1))
        for model in (reference, guarded):
            model(**earlier).loss.backward()
    full = reference(**batch).loss
    full.backward()
    trigger = guarded.model.layers[1] if phase == "backward" else None
    device = SimulatedDevice(total_bytes=0.7 * batch["input_ids"].shape[-1]).attach(guarded, phase=phase,
                                                                                   trigger=trigger)
    guard = warppack.OOMGuard(guarded, collator=collate)
    loss = guard(batch)
    assert device.ooms == 1 and guard.ooms == 1 and guard.splits == 1
    torch.testing.assert_close(loss, full.detach(), rtol=1e-6, atol=0)
    _assert_close_grads(_grads(guarded), _grads(reference))


def test_recursive_splits_lose_no_example_and_lower_the_budget(caplog):
    reference, guarded = _twins(_llama)
    collate = warppack.PackedCollator()
    batch = collate(_examples())
    full = reference(**batch).loss
    full.backward()
    device = SimulatedDevice(total_bytes=16).attach(guarded)  # only ~a quarter of the batch fits
    seen_budgets = []
    guard = warppack.OOMGuard(guarded, collator=collate, on_budget_change=seen_budgets.append)
    with caplog.at_level(logging.WARNING, logger="warppack"):
        loss = guard(batch)
    ran = sorted(n for lengths in device.seen for n in lengths)
    assert ran == sorted(LENGTHS)  # every sequence exactly once in a micro-batch that ran
    assert device.ooms >= 3 and guard.splits == len(device.seen) - 1
    torch.testing.assert_close(loss, full.detach(), rtol=1e-6, atol=0)
    _assert_close_grads(_grads(guarded), _grads(reference))
    assert guard.max_tokens == seen_budgets[-1] == int(min(e["tokens"] for e in guard.events) * 0.9)
    assert "out of memory on 54 tokens (7 sequences)" in caplog.text and "lowered from None to" in caplog.text


def test_later_batches_are_split_ahead_of_the_lowered_budget():
    reference, guarded = _twins(lambda: ToyLM().double())
    collate = warppack.PackedCollator()
    device = SimulatedDevice(total_bytes=50).attach(guarded)
    guard = warppack.OOMGuard(guarded, collator=collate)
    guard(collate(_examples()))  # 54 tokens: out of memory, split; the budget becomes 0.9 * 54
    ooms, budget = device.ooms, guard.max_tokens
    assert ooms == 1 and budget == 48
    guarded.zero_grad()
    batch = collate(_examples(seed=5))
    loss = guard(batch)  # would run out of memory as one batch: split before it runs
    assert device.ooms == ooms and [sum(s) for s in device.seen[-2:]] == [46, 8]
    full = reference(**batch)["loss"]
    full.backward()
    torch.testing.assert_close(loss, full.detach(), rtol=1e-12, atol=0)  # float64 throughout
    _assert_close_grads(_grads(guarded), _grads(reference), rtol=1e-12)


def test_sum_reduction_adds_halves_unweighted():
    reference, guarded = _twins(lambda: ToyLM().double())
    collate = warppack.PackedCollator()
    batch = collate(_examples())

    def summed(model, batch):  # a loss normalised by a fixed count, like num_items_in_batch
        logits = model(**batch)["logits"][:, :-1]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                                 reduction="sum") / 100.0

    full = summed(reference, batch)
    full.backward()
    SimulatedDevice(total_bytes=40).attach(guarded)
    loss = warppack.OOMGuard(guarded, collator=collate, loss_fn=summed, reduction="sum")(batch)
    torch.testing.assert_close(loss, full.detach(), rtol=1e-12, atol=0)  # float64 throughout
    _assert_close_grads(_grads(guarded), _grads(reference), rtol=1e-12)


def test_a_single_sequence_that_does_not_fit_raises_clearly():
    model = ToyLM()
    SimulatedDevice(total_bytes=10).attach(model)
    guard = warppack.OOMGuard(model)
    with pytest.raises(torch.OutOfMemoryError, match="single sequence of 13 tokens, which cannot be split"):
        guard(warppack.PackedCollator()(_examples([4, 13])))


def test_other_errors_propagate_and_leave_gradients_as_they_were():
    model = ToyLM()
    model(**warppack.PackedCollator()(_examples([5])))["loss"].backward()
    before = _grads(model)

    def broken(model, batch):
        model(**batch)["loss"].backward()
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        warppack.OOMGuard(model, loss_fn=broken)(warppack.PackedCollator()(_examples()))
    assert all(torch.equal(a, b) for a, b in zip(_grads(model).values(), before.values()))


def test_settings_are_validated_and_state_round_trips():
    model = ToyLM()
    with pytest.raises(ValueError, match="reduction must be 'mean'"):
        warppack.OOMGuard(model, reduction="avg")
    with pytest.raises(ValueError, match="shrink must be in"):
        warppack.OOMGuard(model, shrink=1.5)
    guard = warppack.OOMGuard(model, max_tokens=100)
    guard.ooms = 2
    other = warppack.OOMGuard(model)
    other.load_state_dict(guard.state_dict())
    assert other.max_tokens == 100 and other.ooms == 2


# ---- lockstep across ranks (2 gloo processes; only rank 1 runs out of memory) ------------------------
@pytest.mark.distributed
def test_two_ranks_decide_in_lockstep_when_only_one_runs_out_of_memory(tmp_path):
    torchrun("calibrate_oom_guard_ranks.py", 2, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["ooms"] == 0 and r1["ooms"] >= 1  # only rank 1 ran out of memory...
    assert r0["budgets"] == r1["budgets"] and r0["budgets"][0] is not None  # ...both lowered the budget alike
    assert r0["steps"] == r1["steps"] == 3
    assert r0["grad_error"] < 1e-12 and r1["grad_error"] < 1e-12  # == averaged full-batch gradients
    assert r0["params"] == r1["params"]  # replicas stayed identical after the optimizer steps
