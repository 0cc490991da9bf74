"""calibrate_token_budget at its defaults on each kind of model configuration, on a simulated device.

Each model of ``support.calibration_models.KINDS`` (GQA ratios 1/4/8, tied and untied embeddings,
activation checkpointing, LoRA on a frozen base, Qwen2/Qwen3/Gemma2) is calibrated once on a
:class:`ModelMemory`, whose costs follow what the model and optimizer hold at each forward. The
largest budget that fits is computed here from the formula of the configuration as it will be
trained, over every batch a run can see -- not from the calibrator's own probe shapes.
"""

from __future__ import annotations

import copy
import inspect
import random
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import warppack  # noqa: E402

from support.calibration_models import (  # noqa: E402
    KINDS,
    Costs,
    ModelMemory,
    base_model,
    calibration_model,
    checkpointing,
    planned_costs,
)
from support.models import random_sequences  # noqa: E402
from support.simulated_device import adversarial_batches  # noqa: E402

MAX_SEQ_LEN = 64
HEADROOM = inspect.signature(warppack.calibrate_token_budget).parameters["headroom"].default
# Where each device's headroom line falls, in tokens of max_seq_len sequences: not a multiple of
# MAX_SEQ_LEN, and different per kind so the searches take different paths.
TOKENS = {"llama-gqa4-untied": 544, "llama-gqa1-tied": 420, "llama-gqa4-checkpointing": 700,
          "qwen2-gqa8-tied": 300, "qwen3-gqa4-checkpointing": 610, "gemma2-gqa4-tied": 470,
          "lora-optimizer-over-trainable": 300, "lora-optimizer-over-all": 330}
# Calibrated mid-training: AdamW holds state (for the adapters only), the next step's gradients pending.
WARM = {"lora-optimizer-over-all"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two threads on these tiny matrices are slower than one, and the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _line(device: ModelMemory) -> float:
    return (1 - HEADROOM) * device.total_bytes


def _worst_need(costs: Costs, budget: int) -> float:
    """The most ``costs`` needs over the batches of ``budget`` tokens a run can see: all max_seq_len
    sequences, all one-token ones, half the tokens in each."""
    full, rest = divmod(budget, MAX_SEQ_LEN)
    half = budget // 2 // MAX_SEQ_LEN
    batches = ([MAX_SEQ_LEN] * full + ([rest] if rest else []), [1] * budget,
               [MAX_SEQ_LEN] * half + [1] * (budget - half * MAX_SEQ_LEN))
    return max(costs.need(lengths) for lengths in batches)


def _largest_fitting(costs: Costs, line: float) -> int:
    lo, hi = 0, 1
    while _worst_need(costs, hi) <= line:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _worst_need(costs, mid) <= line else (lo, mid)
    return lo


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    base = base_model(model)
    adapters = {name: (module.disable_adapters, module.merged, list(module.active_adapters))
                for name, module in model.named_modules() if hasattr(module, "lora_A")}
    return {
        "parameters": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "checkpointing": (checkpointing(model), {n: m.gradient_checkpointing for n, m in model.named_modules()
                                                 if hasattr(m, "gradient_checkpointing")}),
        "tied": base.get_output_embeddings().weight is base.get_input_embeddings().weight,
        "adapters": (list(model.active_adapters) if isinstance(model, peft.PeftModel) else [], adapters),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state(legacy=False)),
    }


def _differences(a: Any, b: Any, path: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in _differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if torch.is_tensor(a) and torch.is_tensor(b):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        same = np.array_equal(a, b)
    else:
        same = type(a) is type(b) and a == b
    return [] if same else [path]


@dataclass
class Calibrated:
    kind: str
    model: Any
    optimizer: torch.optim.Optimizer
    device: ModelMemory
    planned: Costs
    budget: int
    before: Dict[str, Any]
    after: Dict[str, Any]


def _backward(model: torch.nn.Module, lengths: List[int], budget: int) -> None:
    vocab = base_model(model).config.vocab_size
    examples = [{"input_ids": ids} for ids in random_sequences(lengths, vocab_size=vocab, seed=len(lengths))]
    model(**warppack.PackedCollator(budget)(examples)).loss.backward()


def _one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, lengths: List[int], budget: int) -> None:
    _backward(model, lengths, budget)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.fixture(scope="module", params=list(KINDS))
def calibrated(request) -> Calibrated:
    kind = request.param
    model, optimizer, device = calibration_model(kind, tokens=TOKENS[kind], max_seq_len=MAX_SEQ_LEN)
    if kind in WARM:
        model.train()
        _one_step(model, optimizer, [MAX_SEQ_LEN, 5], MAX_SEQ_LEN + 5)
        _backward(model, [9, 7], 16)
        model.eval()
    planned = planned_costs(model, optimizer)
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    before = _state(model, optimizer)
    budget = warppack.calibrate_token_budget(model, optimizer=optimizer, max_seq_len=MAX_SEQ_LEN, memory=device,
                                             cache=False)
    return Calibrated(kind, model, optimizer, device, planned, budget, before, _state(model, optimizer))


def test_budget_is_at_least_nine_tenths_of_the_largest_that_fits_and_never_above_it(calibrated):
    largest = _largest_fitting(calibrated.planned, _line(calibrated.device))
    assert largest >= TOKENS[calibrated.kind]  # the device is sized as asked
    assert 0.9 * largest <= calibrated.budget <= largest, (calibrated.budget, largest)


def test_model_optimizer_and_rng_are_left_exactly_as_they_were(calibrated):
    assert not _differences(calibrated.before, calibrated.after)
    assert calibrated.device.forwards > 10  # real training steps ran in between


def test_probes_hold_adamw_state_for_the_trainable_parameters_only(calibrated):
    model = calibrated.model
    trainable = sum(p.nbytes for p in model.parameters() if p.requires_grad)
    assert calibrated.device.most_state_bytes == 2 * trainable
    if "lora" in calibrated.kind:  # the frozen base got none, whichever parameters the optimizer was given
        assert trainable < 0.2 * sum(p.nbytes for p in model.parameters())


def test_a_run_on_adversarial_batches_at_the_budget_stays_under_the_headroom(calibrated):
    model, optimizer, device, budget = calibrated.model, calibrated.optimizer, calibrated.device, calibrated.budget
    model.train()
    device.reset_peak()
    ooms = device.ooms
    streams = adversarial_batches(budget, MAX_SEQ_LEN, 2)
    for stream in streams.values():
        for lengths in stream:
            _one_step(model, optimizer, lengths, budget)
    assert max(sum(lengths) for stream in streams.values() for lengths in stream) == budget
    assert device.ooms == ooms and device.peak_bytes() <= _line(device)


def _bounds_apart(kind: str, change) -> tuple:
    """Largest fitting budgets of the configuration and of ``change(model, optimizer) -> Costs`` on its device."""
    model, optimizer, device = calibration_model(kind, tokens=TOKENS[kind], max_seq_len=MAX_SEQ_LEN)
    planned = planned_costs(model, optimizer)
    return _largest_fitting(planned, _line(device)), _largest_fitting(change(model, optimizer), _line(device))


def _checkpointing_off(model, optimizer) -> Costs:
    (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    return planned_costs(model, optimizer)


def _base_unfrozen(model, optimizer) -> Costs:
    for p in model.parameters():  # gradients for the base; state too if the optimizer holds it
        p.requires_grad_(True)
    return planned_costs(model, optimizer)


def _state_for_frozen_parameters(model, optimizer) -> Costs:
    planned = planned_costs(model, optimizer)
    frozen = sum(2 * p.nbytes for p in model.parameters() if not p.requires_grad)
    return Costs(planned.static_bytes + frozen, planned.per_token, planned.per_square)


def _short_sequences_only(model, optimizer) -> Costs:
    planned = planned_costs(model, optimizer)  # what probes of 16-token sequences alone would see
    return Costs(planned.static_bytes, planned.per_token + 16 * planned.per_square, 0.0)


@pytest.mark.parametrize("kind,change", [
    ("llama-gqa4-checkpointing", _checkpointing_off),
    ("qwen3-gqa4-checkpointing", _checkpointing_off),
    ("lora-optimizer-over-trainable", _base_unfrozen),
    ("lora-optimizer-over-all", _base_unfrozen),
    ("lora-optimizer-over-all", _state_for_frozen_parameters),
    ("llama-gqa4-untied", _short_sequences_only),
], ids=["llama-checkpointing-off", "qwen3-checkpointing-off", "lora-base-unfrozen", "lora-all-base-unfrozen",
        "lora-state-for-frozen",
        "short-sequences-only"])
def test_a_calibrator_measuring_another_configuration_would_miss_the_bounds(kind, change):
    # What keeps the assertions above tight: probing with checkpointing off, the LoRA base unfrozen,
    # AdamW state for frozen parameters, or without long sequences moves the budget out of
    # [0.9 * largest, largest].
    largest, other = _bounds_apart(kind, change)
    assert not 0.9 * largest <= other <= largest, (largest, other)


def test_modules_in_another_mode_than_the_top_one_keep_theirs():
    # get_peft_model wraps an eval-mode model (as from_pretrained returns it) in a training-mode wrapper.
    model, optimizer, device = calibration_model("lora-optimizer-over-trainable", tokens=200,
                                                 max_seq_len=MAX_SEQ_LEN)
    model.train()
    base_model(model).eval()
    before = {n: m.training for n, m in model.named_modules()}
    warppack.calibrate_token_budget(model, optimizer=optimizer, max_seq_len=MAX_SEQ_LEN, memory=device, cache=False)
    assert {n: m.training for n, m in model.named_modules()} == before
