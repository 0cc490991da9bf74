"""What ``pack_trainer`` puts in place: one PackingConfig from the trainer's parts, and the collator for it.

The budget and the overlong policy may be given to ``pack_trainer(packing=...)``, to the
``WarpPackCallback`` or to the ``PackedCollator``; they are merged into one config (a value given
in two places must be the same), and the collator and every loader are then built from it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from warppack.batch.collator import PackedCollator
from warppack.engine.config import PackingConfig, merge_packing

__all__ = ["collator_for", "default_collator", "merged_packing"]


def default_collator(trainer: Any) -> Optional[Tuple[PackedCollator, str]]:
    """A PackedCollator in place of the Trainer's (or TRL's) default collator, and what was replaced; None if kept."""
    collator = trainer.data_collator
    if isinstance(collator, PackedCollator):
        return None
    from transformers import DataCollatorWithPadding, default_data_collator

    trl_default = type(collator).__module__.startswith("trl") and type(collator).__name__ == (
        "DataCollatorForLanguageModeling")
    if collator is not default_data_collator and not isinstance(collator, DataCollatorWithPadding) and not trl_default:
        raise TypeError(f"pack_trainer needs a warppack.PackedCollator as data_collator, got "
                        f"{type(collator).__name__}; pass Trainer(..., data_collator=warppack.PackedCollator()), or "
                        f"leave data_collator unset and pack_trainer puts one in")
    tokenizer = getattr(trainer, "processing_class", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if isinstance(pad, int) and pad >= 0 else 0
    name = getattr(collator, "__name__", type(collator).__name__)
    return (PackedCollator(pad_token_id=pad, allow_empty=True),
            f"data_collator: {name} -> PackedCollator(pad_token_id={pad}, allow_empty=True)")


def merged_packing(packing: Optional[PackingConfig], callback_packing: PackingConfig,
                   collator: PackedCollator) -> Tuple[PackingConfig, Optional[str]]:
    """One config from ``pack_trainer(packing=)``, the callback's and the collator's; and where its budget is from."""
    merged = merge_packing(packing, {}, owner="pack_trainer")
    sources: List[Tuple[PackingConfig, str]] = [(merged, "pack_trainer(packing=...)")]
    for owner, given in (("the trainer's WarpPackCallback", callback_packing),
                         ("the trainer's PackedCollator", collator.packing)):
        merged = merge_packing(merged, given.given(), owner=owner, source="the packing merged so far")
        sources.append((given, owner))
    origin = next((name for config, name in sources if config.max_tokens is not None), None)
    return merged, origin


def collator_for(collator: PackedCollator, packing: PackingConfig) -> PackedCollator:
    """``collator`` when it already packs as ``packing`` says, else a copy of its other settings that does.

    The copy takes ``allow_empty=True``: the packed Trainer's sampler gives a rank ``[]`` where an epoch
    has fewer sequences than ``steps × world size`` slots, and that rank must still run the step.
    """
    # Every field but the strategy shapes a collator's batches.
    if collator.allow_empty and collator.packing.replace(strategy=packing.strategy) == packing:
        return collator
    return PackedCollator(packing=packing, pad_token_id=collator.pad_token_id, label_pad_id=collator.label_pad_id,
                          pin_memory=collator.pin_memory, skip_empty=collator.skip_empty, allow_empty=True)
