"""Tiny models of each configuration that changes training memory, and a device whose formula reads them.

``calibration_model(kind)`` builds one of :data:`KINDS` -- GQA ratios 1, 4 and 8, tied and untied
embeddings, activation checkpointing, a LoRA fine-tune (adapters on every linear layer of a frozen
base; its AdamW over the trainable parameters, or over all of them) and families other than Llama --
as a random-init fp32 transformers model in eval mode (as ``from_pretrained`` returns one) with its
AdamW, and a :class:`ModelMemory` sized so that ``tokens`` tokens of ``max_seq_len`` sequences fill
the device up to the headroom line.

:class:`ModelMemory` is a :class:`~support.simulated_device.SimulatedDevice` whose coefficients are
recomputed at every forward from what the model and optimizer hold *then* (:func:`live_costs`): the
weights, a gradient for each parameter that requires one, the optimizer state tensors that exist,
and activations per token that follow the architecture, the LoRA adapters and whether checkpointing
is in effect. :func:`planned_costs` is the same formula for the configuration as it will be trained
(every trainable parameter with its AdamW state), read before anything runs: a calibrator that
probed another configuration than the one it was given (checkpointing off, the base unfrozen, state
for frozen parameters) measures other costs than those.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from support.models import tiny_model
from support.simulated_device import SimulatedDevice

__all__ = ["Costs", "KINDS", "Kind", "ModelMemory", "base_model", "calibration_model", "checkpointing",
           "held_state_bytes", "live_costs", "planned_costs"]

# Wide enough that weights, gradients and AdamW state are a third of the device at a few hundred
# tokens: a calibrator that measured them wrong (a LoRA base unfrozen, state for frozen parameters)
# lands more than 10% away from the budget that fits.
_SIZE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=8)
_LORA_RANK = 8
_LORA_DROPOUT = 0.05  # draws random numbers in every training step


@dataclass(frozen=True)
class Kind:
    family: str
    kv_heads: int
    tied: Optional[bool] = None  # None: the family's default
    checkpointing: bool = False
    lora: bool = False
    optimizer_over: str = "all"  # "all" parameters, or only the "trainable" ones


#: The configurations, by the name the tests show.
KINDS: Dict[str, Kind] = {
    "llama-gqa4-untied": Kind("llama", kv_heads=2, tied=False),
    "llama-gqa1-tied": Kind("llama", kv_heads=8, tied=True),
    "llama-gqa4-checkpointing": Kind("llama", kv_heads=2, tied=False, checkpointing=True),
    "qwen2-gqa8-tied": Kind("qwen2", kv_heads=1, tied=True),
    "qwen3-gqa4-checkpointing": Kind("qwen3", kv_heads=2, checkpointing=True),
    "gemma2-gqa4-tied": Kind("gemma2", kv_heads=2),
    "lora-optimizer-over-trainable": Kind("llama", kv_heads=2, tied=False, lora=True, optimizer_over="trainable"),
    "lora-optimizer-over-all": Kind("llama", kv_heads=2, tied=False, lora=True),
}


@dataclass(frozen=True)
class Costs:
    """``need(lengths) = static_bytes + per_token * sum(lengths) + per_square * sum(length**2)``."""

    static_bytes: float
    per_token: float
    per_square: float

    def need(self, lengths: Sequence[int]) -> float:
        return self.static_bytes + self.per_token * sum(lengths) + self.per_square * sum(n * n for n in lengths)


def base_model(model: torch.nn.Module) -> Any:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def checkpointing(model: torch.nn.Module) -> bool:
    """Whether activation checkpointing is switched on (in effect only in training mode)."""
    base = base_model(model)
    if hasattr(base, "is_activation_checkpointing"):  # transformers' new name; the old one warns
        return bool(base.is_activation_checkpointing)
    return bool(getattr(base, "is_gradient_checkpointing", False))


def _adapter_elements(model: torch.nn.Module) -> int:
    """Elements per token the LoRA adapters in effect keep: each one's rank, and its input again when
    it drops out of it."""
    total = 0
    layers: Any = [m for m in model.modules() if hasattr(m, "lora_A") and isinstance(getattr(m, "r", None), dict)]
    for layer in layers:  # peft's LoraLayer: one rank and one dropout per adapter name
        if layer.disable_adapters:
            continue
        for name in [name for name in layer.active_adapters if name in layer.r]:
            dropped = isinstance(layer.lora_dropout[name], torch.nn.Dropout)
            total += layer.r[name] + (layer.in_features if dropped else 0)
    return total


def _activations(model: torch.nn.Module, *, checkpointed: bool) -> Tuple[float, float]:
    """(per_token, per_square) bytes of what a training forward keeps for its backward."""
    config = base_model(model).config
    element = next(model.parameters()).element_size()
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    # norms' inputs, q, k, v, attention output, residuals, the MLP's four intermediates, the adapters'
    layer = element * (4 * hidden + 3 * heads * head_dim + 2 * kv_heads * head_dim
                       + 4 * config.intermediate_size + _adapter_elements(model) / layers)
    logits = 3 * element * config.vocab_size  # logits, their log-softmax and its gradient
    # Scores as an attention that keeps them would (so a run's longest sequences cost it most).
    scores = element * heads
    if checkpointed:  # each layer's input, plus one layer recomputed at a time
        return element * layers * hidden + layer + logits, scores
    return layers * layer + logits, layers * scores


def _weights(model: torch.nn.Module) -> float:
    return float(sum(t.nbytes for t in model.parameters()) + sum(t.nbytes for t in model.buffers()))


def _gradients(model: torch.nn.Module) -> float:
    return float(sum(p.nbytes for p in model.parameters() if p.requires_grad))


def planned_costs(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Costs:
    """The formula for ``model`` as it will be trained: checkpointing as switched, AdamW's two state
    tensors for each parameter of the optimizer that gets a gradient."""
    adam = sum(2 * p.nbytes for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
    per_token, per_square = _activations(model, checkpointed=checkpointing(model))
    return Costs(_weights(model) + _gradients(model) + adam, per_token, per_square)


def held_state_bytes(optimizer: torch.optim.Optimizer) -> float:
    """Bytes of the optimizer's per-element state tensors that exist now (not its scalar step counts)."""
    return float(sum(v.nbytes for state in optimizer.state.values() for v in state.values()
                     if torch.is_tensor(v) and v.dim() > 0))


def live_costs(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Costs:
    """The formula for what ``model`` and ``optimizer`` hold and would keep right now."""
    per_token, per_square = _activations(model, checkpointed=checkpointing(model) and base_model(model).training)
    return Costs(_weights(model) + _gradients(model) + held_state_bytes(optimizer), per_token, per_square)


class ModelMemory(SimulatedDevice):
    """A simulated device whose formula is :func:`live_costs` at each forward of the attached model."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, total_bytes: float) -> None:
        super().__init__(total_bytes=total_bytes)
        self.model, self.optimizer = model, optimizer
        self.most_state_bytes = 0.0  # the most optimizer state any forward saw
        self.refresh()
        self.attach(model)
        # prepended after attach's accounting hook, so it runs first
        model.register_forward_pre_hook(lambda module, args: self.refresh(), prepend=True)

    def refresh(self) -> None:
        costs = live_costs(self.model, self.optimizer)
        self.static, self.per_token, self.per_square = costs.static_bytes, costs.per_token, costs.per_square
        self.most_state_bytes = max(self.most_state_bytes, held_state_bytes(self.optimizer))


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    import peft

    config = peft.LoraConfig(r=_LORA_RANK, lora_alpha=2 * _LORA_RANK, lora_dropout=_LORA_DROPOUT,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' old name of the checkpointing flag
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return peft.get_peft_model(model, config)


def calibration_model(kind: str, *, tokens: int, max_seq_len: int, headroom: float = 0.08,
                      seed: int = 0) -> Tuple[Any, torch.optim.Optimizer, ModelMemory]:
    """``(model, optimizer, device)`` of ``KINDS[kind]``, the device sized so that ``tokens`` tokens of
    ``max_seq_len``-token sequences (the costliest batch of that many) reach its headroom line."""
    spec = KINDS[kind]
    overrides: Dict[str, Any] = dict(_SIZE, num_key_value_heads=spec.kv_heads, max_position_embeddings=max_seq_len)
    if spec.tied is not None:
        overrides["tie_word_embeddings"] = spec.tied
    model = tiny_model(spec.family, seed=seed, **overrides)
    if spec.checkpointing:
        # transformers renamed it; the old name still works but warns
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if spec.lora:
        model = _lora(model).eval()  # the wrapper is made in training mode around the eval-mode model
    params = [p for p in model.parameters() if p.requires_grad or spec.optimizer_over == "all"]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    full, rest = divmod(tokens, max_seq_len)
    costliest = planned_costs(model, optimizer).need([max_seq_len] * full + ([rest] if rest else []))
    device = ModelMemory(model, optimizer, total_bytes=math.ceil(costliest / (1 - headroom)))
    return model, optimizer, device
