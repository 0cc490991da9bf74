"""``pack_trainer``: the one call that makes an HF ``Trainer`` train and evaluate on packed batches.

It puts :class:`_PackedTrainer` before the trainer's own class: packed train/eval/test loaders
(``PackedBatchSampler`` under the token budget the :class:`~warppack.WarpPackCallback` resolves,
built from the same :class:`~warppack.PackingConfig` as the collator, so ``len(train_dataloader)``
is exact and the two cannot disagree), the OOM guard around ``training_step`` when asked for, the
split micro-batch's loss weight, and the packing statistics merged into training logs. The
callback (:mod:`warppack.hf_trainer.callback`) owns the budget, the checks and the statistics; this
module only wires them into the Trainer's methods.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, List, Optional

import torch

from warppack.engine.config import PackingConfig
from warppack.hf_trainer.budget import LENGTH_QUANTILE, sequence_length
from warppack.hf_trainer.callback import (
    PACKING_AWARE,
    TRAINER_OVERLONG,
    WarpPackCallback,
    require_transformers,
)
from warppack.hf_trainer.wiring import collator_for, default_collator, merged_packing
from warppack.loaders.sampler.sampler import PackedBatchSampler

__all__ = ["pack_trainer"]
logger = logging.getLogger("warppack")


def pack_trainer(trainer, callback: Optional[WarpPackCallback] = None, *, packing: Optional[PackingConfig] = None,
                 set_attention: bool = True) -> WarpPackCallback:
    """Make ``trainer`` train and evaluate on token-budget packed batches; returns its WarpPackCallback.

    ``packing``: a :class:`~warppack.PackingConfig` (budget, overlong policy, strategy, padding). It
    is merged with the ``WarpPackCallback`` already added to the trainer (else ``callback``, else a
    new one) and the ``PackedCollator`` given as ``data_collator``; a value set in two of them must
    be the same. The Trainer's (or TRL's) default collator is replaced by a ``PackedCollator``, and
    the model is switched to ``attn_implementation="warppack"`` unless it already reads packed
    batches. Without a budget it is decided when the first loader is built: a resumed checkpoint's,
    calibrated on the GPU, or from the lengths (see :class:`~warppack.WarpPackCallback`). Without an
    ``overlong`` policy, examples longer than the budget are truncated, as TRL does. Everything it
    changes is logged once, at WARNING.
    """

    require_transformers("warppack.pack_trainer")

    already = isinstance(trainer, _PackedTrainer)
    found = [c for c in trainer.callback_handler.callbacks if isinstance(c, WarpPackCallback)]
    callback = found[0] if found else callback or WarpPackCallback()
    replaced = default_collator(trainer)
    collator = replaced[0] if replaced is not None else trainer.data_collator
    config, origin = merged_packing(packing, callback.packing, collator)
    if config.overlong == "split":
        raise ValueError("pack_trainer: overlong='split' cannot be used by the Trainer's batch sampler (it yields "
                         "dataset indices, not token ranges); use overlong='truncate' or 'error', or split long "
                         "examples into several rows before training")
    # Everything is checked: from here on the trainer changes, and each change is reported.
    changes: List[str] = []
    if not found:
        trainer.add_callback(callback)
        changes.append("callbacks: + WarpPackCallback (budget, check_model at train start, packing metrics in the "
                       "logs, state in checkpoints)")
    if replaced is not None:
        trainer.data_collator = collator
        changes.append(replaced[1])
    callback.adopt(config, origin)
    model_config = getattr(trainer.model, "config", None)
    impl = getattr(model_config, "_attn_implementation", None)
    if set_attention and model_config is not None and impl not in PACKING_AWARE:
        trainer.model.set_attn_implementation("warppack")
        changes.append(f"attn_implementation: {impl!r} -> 'warppack' (packed sequences must not see each other)")
    cls = type(trainer)
    trainer.__class__ = _packed_class(cls)
    if not already:
        changes.append(f"class: {cls.__name__} -> {trainer.__class__.__name__} (train/eval/test loaders: "
                       f"PackedBatchSampler under the token budget, exact len(train_dataloader))")
    changes += _plan_lines(trainer, callback, config)
    (logger.info if already else logger.warning)("warppack.pack_trainer changed the trainer:\n  - %s",
                                                 "\n  - ".join(changes))
    return callback


def _plan_lines(trainer, callback: WarpPackCallback, config: PackingConfig) -> List[str]:
    """The budget and the overlong policy, as pack_trainer reports them."""
    if callback.max_tokens is not None:
        lines = [f"token budget: {callback.max_tokens:,} tokens per batch ({callback.budget_source})"]
    else:
        configured = sequence_length(trainer.args, callback.max_seq_len)
        length = f"{configured[1]} = {configured[0]:,}" if configured else \
            f"the {LENGTH_QUANTILE:.0%} quantile of the training lengths"
        lines = [f"token budget: decided when the first loader is built: a resumed checkpoint's, else calibrated on "
                 f"the GPU, else per_device_train_batch_size x {length}"]
    if config.overlong is None:
        lines.append(f"examples longer than the budget: {TRAINER_OVERLONG}d, as TRL does (no overlong policy set: "
                     f"packing=warppack.PackingConfig(overlong='error') refuses them); a warning each epoch and the "
                     f"training logs count them")
    else:
        lines.append(f"examples longer than the budget: overlong={config.overlong!r}")
    return lines


if TYPE_CHECKING:  # the methods below override a Trainer's, whichever Trainer class they are mixed into
    from transformers import Trainer as _TrainerBase
else:
    _TrainerBase = object

_CLASSES: dict = {}


def _packed_class(cls):
    if issubclass(cls, _PackedTrainer):
        return cls
    if cls not in _CLASSES:  # e.g. PackedTrainer, PackedSFTTrainer: the user's class with the methods below first
        _CLASSES[cls] = type(f"Packed{cls.__name__}", (_PackedTrainer, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


class _PackedTrainer(_TrainerBase):
    """What a packed Trainer overrides; ``pack_trainer`` puts it before the trainer's own class."""

    _warppack_weight = 1.0  # a split micro-batch's share of the loss (OOM guard), applied in compute_loss
    # Provided by the Trainer class this is mixed into (annotations only, for type checkers).
    args: Any
    model: Any
    accelerator: Any
    data_collator: Any
    train_dataset: Any
    eval_dataset: Any
    callback_handler: Any

    def _warppack(self) -> WarpPackCallback:
        # Looked up each time: resuming may replace the callback object with one rebuilt from its state.
        return next(c for c in self.callback_handler.callbacks if isinstance(c, WarpPackCallback))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir)
        if isinstance(checkpoint, (str, os.PathLike)):
            self._warppack().remember_resume(os.fspath(checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        return self._packed_loader(self.train_dataset, "Training", train=True)

    def get_eval_dataloader(self, eval_dataset=None):
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset.")
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        return self._packed_loader(self.eval_dataset if eval_dataset is None else eval_dataset, "Evaluation",
                                   train=False)

    def get_test_dataloader(self, test_dataset):
        return self._packed_loader(test_dataset, "test", train=False)

    def _packed_loader(self, dataset, description: str, *, train: bool):
        callback, args = self._warppack(), self.args
        callback.resolve_budget(self, self.train_dataset if self.train_dataset is not None else dataset)
        packing = callback.trainer_packing()
        # The collator takes the decided budget and policy: it truncates exactly what the sampler does.
        self.data_collator = collator_for(self.data_collator, packing)
        lengths = callback.lengths(dataset)
        callback.ensure_checked(self.model)
        collate = self.data_collator
        if type(dataset).__module__.startswith("datasets") and hasattr(self, "_remove_unused_columns"):
            dataset = self._remove_unused_columns(dataset, description=description)
        elif hasattr(self, "_get_collator_with_removed_columns"):
            collate = self._get_collator_with_removed_columns(collate, description=description)
        # interleaved: the batches of all ranks, step by step; accelerate deals them out, one per rank.
        sampler = PackedBatchSampler(
            lengths, packing=packing, shuffle=train, seed=args.seed if args.data_seed is None else args.data_seed,
            drop_last=train and args.dataloader_drop_last, interleaved=True,
            warn_empty=False)  # collator_for gives the collator allow_empty=True
        if train:
            callback.note_overlong(sampler.overlong_counts)
        workers = args.dataloader_num_workers
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, persistent_workers=workers > 0 and args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None)
        return self.accelerator.prepare(loader)

    def training_step(self, model, inputs, num_items_in_batch=None, *args, **kwargs):
        callback = self._warppack()
        if callback.log_stats:
            callback.stats.observe(inputs)
        if not callback.oom_guard:
            return super().training_step(model, inputs, num_items_in_batch, *args, **kwargs)
        from warppack.memory.step import unwrap_ddp

        def step(micro, weight):
            self._warppack_weight = weight
            try:  # the module inside DDP: no collective in a micro-step; the guard syncs gradients after
                return super(_PackedTrainer, self).training_step(unwrap_ddp(model), micro, num_items_in_batch,
                                                                 *args, **kwargs)
            finally:
                self._warppack_weight = 1.0

        # With num_items_in_batch the loss is a sum over a fixed count: halves add up unweighted.
        summed = num_items_in_batch is not None and bool(
            getattr(self, "model_accepts_loss_kwargs", False) or getattr(self, "compute_loss_func", None))
        return callback.guard(self, model).run(inputs, step, reduction="sum" if summed else "mean",
                                               sync_gradients=self.accelerator.sync_gradients)

    def compute_loss(self, model, inputs, *args, **kwargs):
        output = super().compute_loss(model, inputs, *args, **kwargs)
        weight = self._warppack_weight
        if weight == 1.0:
            return output
        return (output[0] * weight, *output[1:]) if isinstance(output, tuple) else output * weight

    def log(self, logs, *args, **kwargs):
        callback = self._warppack()
        if "loss" in logs:  # training logs only, before reporters see them
            if callback.log_stats:
                logs.update(callback.stats.pop(callback.max_tokens))
            logs.update(callback.overlong_metrics)
        return super().log(logs, *args, **kwargs)
