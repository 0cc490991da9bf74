"""``pack_trainer``: the one call that makes an HF ``Trainer`` train and evaluate on packed batches.

It puts :class:`_PackedTrainer` before the trainer's own class: packed train/eval/test loaders
(``PackedBatchSampler`` under the token budget the :class:`~warppack.WarpPackCallback` resolves,
so ``len(train_dataloader)`` is exact), the OOM guard around ``training_step`` when asked for, the
split micro-batch's loss weight, and the packing statistics merged into training logs. The
callback (:mod:`warppack.hf_trainer.callback`) owns the budget, the checks and the statistics; this module
only wires them into the Trainer's methods.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Optional

import torch

from warppack.batch.collator import PackedCollator
from warppack.hf_trainer.callback import (
    PACKING_AWARE,
    WarpPackCallback,
    require_transformers,
)
from warppack.loaders.sampler.sampler import PackedBatchSampler

__all__ = ["pack_trainer"]
logger = logging.getLogger("warppack")


def pack_trainer(trainer, callback: Optional[WarpPackCallback] = None, *, set_attention: bool = True):
    """Make ``trainer`` train and evaluate on token-budget packed batches; returns its WarpPackCallback.

    Uses the ``WarpPackCallback`` already added to the trainer (else ``callback``, else a default one),
    a ``PackedCollator`` as ``data_collator`` (the Trainer's default collator is replaced by one), and
    switches the model to ``attn_implementation="warppack"`` unless it already reads packed batches.
    """

    require_transformers("warppack.pack_trainer")

    found = [c for c in trainer.callback_handler.callbacks if isinstance(c, WarpPackCallback)]
    callback = found[0] if found else callback or WarpPackCallback()
    if not found:
        trainer.add_callback(callback)
    collator = trainer.data_collator
    if not isinstance(collator, PackedCollator):
        from transformers import DataCollatorWithPadding, default_data_collator

        if collator is not default_data_collator and not isinstance(collator, DataCollatorWithPadding):
            raise TypeError(f"pack_trainer needs a warppack.PackedCollator as data_collator, got "
                            f"{type(collator).__name__}; pass Trainer(..., data_collator=warppack.PackedCollator())")
        tokenizer = getattr(trainer, "processing_class", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        trainer.data_collator = PackedCollator(pad_token_id=pad if isinstance(pad, int) and pad >= 0 else 0)
    config = getattr(trainer.model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if set_attention and config is not None and impl not in PACKING_AWARE:
        trainer.model.set_attn_implementation("warppack")
        logger.info("warppack: attn_implementation %r -> 'warppack' (packed sequences must not see each other)",
                    impl)
    trainer.__class__ = _packed_class(type(trainer))
    return callback


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
        budget = callback.resolve_budget(self, self.train_dataset if self.train_dataset is not None else dataset)
        lengths = callback.lengths(dataset)
        callback.ensure_checked(self.model)
        collate = self.data_collator
        if type(dataset).__module__.startswith("datasets") and hasattr(self, "_remove_unused_columns"):
            dataset = self._remove_unused_columns(dataset, description=description)
        elif hasattr(self, "_get_collator_with_removed_columns"):
            collate = self._get_collator_with_removed_columns(collate, description=description)
        # interleaved: the batches of all ranks, step by step; accelerate deals them out, one per rank.
        sampler = PackedBatchSampler(
            lengths, budget, shuffle=train, seed=args.seed if args.data_seed is None else args.data_seed,
            drop_last=train and args.dataloader_drop_last, interleaved=True)
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
        if callback.log_stats and "loss" in logs:  # training logs only, before reporters see them
            logs.update(callback.stats.pop(callback.max_tokens))
        return super().log(logs, *args, **kwargs)
