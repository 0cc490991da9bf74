"""The token budget of a packed Trainer when none is given: calibrated on the GPU, else from the lengths.

Without a GPU to measure on, the budget stands in for the padded batches the Trainer would have
formed: ``per_device_train_batch_size`` sequences of a typical long length. That length is
``max_seq_len`` when one is known (``WarpPackCallback(max_seq_len=...)``, TRL's
``SFTConfig.max_length``), else a high quantile of the training lengths, never the single longest:
one outlier would otherwise set a budget that no step can allocate.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from warppack.engine.options import INT32_MAX

__all__ = ["BUDGET_MULTIPLE", "LENGTH_QUANTILE", "calibrated_budget", "fallback_budget", "sequence_length",
           "sft_max_length"]

#: The quantile of the training lengths that stands for a long sequence when none is configured.
LENGTH_QUANTILE = 0.99
#: Fallback budgets are rounded up to a multiple of this (and of the collator's ``pad_to_multiple_of``).
BUDGET_MULTIPLE = 64
_SFT_FIELDS = ("max_length", "max_seq_length")  # TRL's SFTConfig, newer and older spelling


def sft_max_length(args: Any) -> Optional[Tuple[str, int]]:
    """TRL's ``SFTConfig.max_length`` (or ``max_seq_length``) as ``(field, value)``, if ``args`` has one."""
    if not type(args).__module__.startswith("trl"):
        return None
    for field in _SFT_FIELDS:
        value = getattr(args, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:  # narrows the type, unlike is_int
            return field, value
    return None


def sequence_length(args: Any, max_seq_len: Optional[int]) -> Optional[Tuple[int, str]]:
    """The longest sequence the budget is meant for, and where it came from; None when not configured."""
    if max_seq_len is not None:
        return max_seq_len, f"WarpPackCallback(max_seq_len={max_seq_len})"
    sft = sft_max_length(args)
    if sft is not None:
        return sft[1], f"{type(args).__name__}.{sft[0]}"
    return None


def fallback_budget(lengths: np.ndarray, per_device: int, *, configured: Optional[Tuple[int, str]],
                    multiple: Optional[int]) -> Tuple[int, str]:
    """``per_device × length``, rounded up to a multiple of 64 (and of ``multiple``); the budget and how."""
    if configured is not None:
        length, origin = configured
    else:
        # "lower": an actual length at or below the quantile's position, so never the longest of two or more.
        length = int(np.quantile(lengths, LENGTH_QUANTILE, method="lower")) if len(lengths) else 1
        origin = f"the {LENGTH_QUANTILE:.0%} quantile of the training lengths (the longest is {int(lengths.max()):,})" \
            if len(lengths) else "no training lengths"
    step = math.lcm(BUDGET_MULTIPLE, multiple or 1)
    budget = -(-max(per_device * length, 1) // step) * step
    if budget > INT32_MAX:
        budget = INT32_MAX // step * step
    how = (f"per_device_train_batch_size x {origin} = {per_device} x {length:,}, rounded up to a multiple of "
           f"{step}")
    return budget, how


def calibrated_budget(trainer: Any, lengths: np.ndarray, *, configured: Optional[Tuple[int, str]],
                      options: Mapping[str, Any]) -> Tuple[int, str]:
    """The budget ``calibrate_token_budget`` measures for ``trainer``'s model, optimizer and precision."""
    from warppack.memory.calibrate import calibrate_token_budget, default_loss

    args, model = trainer.args, trainer.model
    max_seq_len = configured[0] if configured is not None else int(lengths.max())
    optimizer = trainer.optimizer
    if optimizer is None:  # the Trainer builds its own later: measure a twin of it, then drop it
        cls, opt_kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer = cls([p for p in model.parameters() if p.requires_grad], **opt_kwargs)
    # DDP allocates gradient buckets when it wraps the model, after this point: keep room for them.
    reserve = 0 if args.world_size == 1 else sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def loss_fn(model, batch):  # the Trainer's autocast / mixed precision, as its steps will run
        with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():
            return default_loss(model, batch)

    kwargs = {"reserve_bytes": reserve, "gradient_accumulation_steps": args.gradient_accumulation_steps,
              **options}
    budget = calibrate_token_budget(model, max_seq_len=max_seq_len, optimizer=optimizer,
                                    accelerator=trainer.accelerator, collator=trainer.data_collator,
                                    loss_fn=loss_fn, **kwargs)
    return budget, f"calibrated for max_seq_len={max_seq_len}"
