"""HF Trainer integration: ``WarpPackCallback`` and the one call that packs a Trainer's loaders.

Three lines turn an existing ``Trainer`` into a packed one::

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=warppack.PackedCollator(),        # 1. the collator
                      callbacks=[warppack.WarpPackCallback()])        # 2. the callback
    warppack.pack_trainer(trainer)                                    # 3. the one call

``pack_trainer`` makes the train and eval loaders ``PackedBatchSampler`` loaders under the token
budget (so ``len(train_dataloader)`` is exact and ``max_steps``, schedules and epochs are right),
picks the budget (the callback's, the collator's, the checkpoint's, or calibrated on the GPU),
and, with ``WarpPackCallback(oom_guard=True)``, runs each training step through an
:class:`~warppack.OOMGuard`. The callback runs ``check_model`` at train start, sets the sampler's
epoch, and puts packing statistics into the Trainer's logs; its state goes into checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping, Optional, Union

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:  # warppack itself works without transformers; only this module needs it
    _MISSING: Optional[ImportError] = error

    class TrainerCallback:  # type: ignore[no-redef]  # placeholder: instantiating says what to install
        pass

    class ExportableState:  # type: ignore[no-redef]
        pass
else:
    _MISSING = None

__all__ = ["WarpPackCallback", "pack_trainer"]
logger = logging.getLogger("warppack")
_PACKING_AWARE = ("warppack", "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def _require_transformers(what: str) -> None:
    if _MISSING is not None:
        raise ImportError(f"{what} needs transformers and accelerate: pip install 'warppack[hf]' ({_MISSING})")


class _Stats:
    """Packing statistics of the batches trained since the last log (this process)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batches = self.tokens = self.padding = self.sequences = 0
        self.since = time.perf_counter()

    def observe(self, batch: Any) -> None:
        if all(hasattr(batch, a) for a in ("num_tokens", "num_padding", "num_sequences")):
            self.batches += 1
            self.tokens += batch.num_tokens
            self.padding += batch.num_padding
            self.sequences += batch.num_sequences

    def pop(self, budget: Optional[int]) -> dict:
        if not self.batches:
            return {}
        seconds = max(time.perf_counter() - self.since, 1e-9)
        logs = {"padding_fraction": self.padding / max(self.tokens + self.padding, 1),
                "sequences_per_batch": self.sequences / self.batches,
                "real_tokens_per_second": self.tokens / seconds}
        if budget:
            logs["packing_efficiency"] = self.tokens / (self.batches * budget)
            logs["token_budget"] = budget
        self.reset()
        return logs


class WarpPackCallback(TrainerCallback, ExportableState):
    """Token-budget packing for HF ``Trainer`` (use with :func:`pack_trainer`).

    ``max_tokens``: the budget; None takes the collator's ``max_tokens``, then a resumed checkpoint's,
    then calibrates it on the GPU (``calibrate=True``, or a dict of ``calibrate_token_budget``
    keywords such as ``{"headroom": 0.1}``). Without CUDA nothing is calibrated: the budget becomes
    ``per_device_train_batch_size * max_seq_len`` (the tokens of your padded batches), logged as such.
    ``max_seq_len``: the longest sequence to calibrate for (default: the longest in the train set).
    ``check``: run ``warppack.check_model`` once at train start. ``oom_guard``: split batches on CUDA
    out-of-memory instead of crashing. ``log_stats``: packing efficiency, padding fraction, sequences
    per batch and real tokens/s (this process) in every training log.
    """

    def __init__(self, max_tokens: Optional[int] = None, *, max_seq_len: Optional[int] = None,
                 calibrate: Union[bool, Mapping[str, Any]] = True, check: bool = True, oom_guard: bool = False,
                 log_stats: bool = True) -> None:
        _require_transformers("warppack.WarpPackCallback")
        self.max_tokens = max_tokens
        self.max_seq_len, self.calibrate, self.check = max_seq_len, calibrate, check
        self.oom_guard, self.log_stats = oom_guard, log_stats
        self.budget_source = "given" if max_tokens is not None else None
        self.guard_state: Optional[dict] = None
        self.checked = False
        self._guard = None
        self._stats = _Stats()
        self._lengths: dict = {}
        self._resume_budget: Optional[int] = None

    # -- checkpoint state (TrainerState.stateful_callbacks) ------------------------------------------
    def state(self) -> dict:
        calibrate = self.calibrate if isinstance(self.calibrate, bool) else {
            k: v for k, v in self.calibrate.items() if isinstance(v, (bool, int, float, str, type(None)))}
        return {"args": {"max_seq_len": self.max_seq_len, "calibrate": calibrate, "check": self.check,
                         "oom_guard": self.oom_guard, "log_stats": self.log_stats},
                "attributes": {"max_tokens": self.max_tokens, "budget_source": self.budget_source,
                               "guard_state": self._guard.state_dict() if self._guard else self.guard_state}}

    # -- events -------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ensure_checked(model)
        logger.info("warppack: training on packed batches of at most %s tokens (%s)", self.max_tokens,
                    self.budget_source)
        self._stats.reset()

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        # A single process's accelerate loader does not forward set_epoch to a batch sampler.
        from warppack import PackedBatchSampler

        sampler = getattr(train_dataloader, "batch_sampler", None)
        while sampler is not None and not isinstance(sampler, PackedBatchSampler):
            sampler = getattr(sampler, "batch_sampler", None)  # accelerate's BatchSamplerShard wraps it
        if sampler is not None:
            sampler.set_epoch(int(math.floor((state.epoch or 0) + 1e-6)))

    def ensure_checked(self, model) -> None:
        """Run ``warppack.check_model`` once (raises ``ContaminationError`` naming the cause)."""
        import warppack

        if self.check and not self.checked and model is not None and hasattr(warppack, "check_model"):
            report = warppack.check_model(model)
            logger.info("warppack: check_model passed (%s)", report)
        self.checked = True

    # -- used by the packed Trainer -----------------------------------------------------------------
    def lengths(self, dataset) -> Any:
        key = id(dataset)
        if key not in self._lengths:
            import warppack

            self._lengths[key] = (dataset, warppack.lengths_of(dataset))  # dataset kept: ids stay unique
        return self._lengths[key][1]

    def resolve_budget(self, trainer, dataset) -> int:
        """The token budget, deciding it (collator, checkpoint, calibration) the first time."""
        if self.max_tokens is not None:
            return self.max_tokens
        collator = trainer.data_collator
        if getattr(collator, "max_tokens", None):
            self.max_tokens, self.budget_source = collator.max_tokens, "the collator's max_tokens"
        elif self._resume_budget is not None:
            self.max_tokens, self.budget_source = self._resume_budget, "the resumed checkpoint"
        elif not self.calibrate:
            raise ValueError("WarpPackCallback has no token budget: pass max_tokens=..., set it on the "
                             "PackedCollator, or leave calibrate=True")
        else:
            self.max_tokens = self._calibrate(trainer, dataset)
        return self.max_tokens

    def _calibrate(self, trainer, dataset) -> int:
        from warppack._calibration import calibrate_token_budget, default_loss
        from warppack._memory import no_cuda_reason

        args, model = trainer.args, trainer.model
        max_seq_len = self.max_seq_len or int(max(self.lengths(dataset)))
        kwargs = dict(self.calibrate) if isinstance(self.calibrate, Mapping) else {}
        device = next(model.parameters()).device
        if "memory" not in kwargs and device.type != "cuda":
            multiple = getattr(trainer.data_collator, "pad_to_multiple_of", None) or 1
            budget = -(-args.per_device_train_batch_size * max_seq_len // multiple) * multiple
            self.budget_source = (f"not calibrated: {no_cuda_reason(device)}; per_device_train_batch_size x "
                                  f"max_seq_len = {args.per_device_train_batch_size} x {max_seq_len}")
            logger.warning("warppack: token budget %d (%s). Pass WarpPackCallback(max_tokens=...) to choose it",
                           budget, self.budget_source)
            return budget
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
                  **kwargs}
        budget = calibrate_token_budget(model, max_seq_len=max_seq_len, optimizer=optimizer,
                                        accelerator=trainer.accelerator, collator=trainer.data_collator,
                                        loss_fn=loss_fn, **kwargs)
        self.budget_source = f"calibrated for max_seq_len={max_seq_len}"
        return budget

    def guard(self, trainer, model):
        if self._guard is None:
            from warppack._oom import OOMGuard

            self._guard = OOMGuard(model, collator=trainer.data_collator, max_tokens=self.max_tokens,
                                   accelerator=trainer.accelerator)
            if self.guard_state:
                self._guard.load_state_dict(self.guard_state)
        return self._guard

    def remember_resume(self, checkpoint: Optional[str]) -> None:
        """Take the budget a checkpoint trained with, so the resumed plan (and position) is the same."""
        path = os.path.join(checkpoint, "trainer_state.json") if checkpoint else None
        if not path or not os.path.isfile(path):
            return
        with open(path) as f:
            saved = json.load(f).get("stateful_callbacks", {}).get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        budget = (saved or {}).get("attributes", {}).get("max_tokens")
        if budget is None:
            return
        if self.max_tokens is not None and self.max_tokens != budget:
            logger.warning("warppack: resuming a run packed at %d tokens with max_tokens=%d: batches differ from "
                           "the checkpoint's plan, so the resumed position is not the same data", budget,
                           self.max_tokens)
        self._resume_budget = budget
        guard = (saved or {}).get("attributes", {}).get("guard_state")
        if guard and self.guard_state is None:
            self.guard_state = guard


def pack_trainer(trainer, callback: Optional[WarpPackCallback] = None, *, set_attention: bool = True):
    """Make ``trainer`` train and evaluate on token-budget packed batches; returns its WarpPackCallback.

    Uses the ``WarpPackCallback`` already added to the trainer (else ``callback``, else a default one),
    a ``PackedCollator`` as ``data_collator`` (the Trainer's default collator is replaced by one), and
    switches the model to ``attn_implementation="warppack"`` unless it already reads packed batches.
    """
    _require_transformers("warppack.pack_trainer")
    from warppack._collator import PackedCollator

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
    if set_attention and config is not None and impl not in _PACKING_AWARE:
        trainer.model.set_attn_implementation("warppack")
        logger.info("warppack: attn_implementation %r -> 'warppack' (packed sequences must not see each other)",
                    impl)
    trainer.__class__ = _packed_class(type(trainer))
    return callback


_CLASSES: dict = {}


def _packed_class(cls):
    if issubclass(cls, _PackedTrainer):
        return cls
    if cls not in _CLASSES:  # e.g. PackedTrainer, PackedSFTTrainer: the user's class with the methods below first
        _CLASSES[cls] = type(f"Packed{cls.__name__}", (_PackedTrainer, cls), {"__module__": cls.__module__})
    return _CLASSES[cls]


class _PackedTrainer:
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
        import warppack

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
        sampler = warppack.PackedBatchSampler(
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
            callback._stats.observe(inputs)
        if not callback.oom_guard:
            return super().training_step(model, inputs, num_items_in_batch, *args, **kwargs)
        from warppack._calibration import unwrap_ddp

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
            logs.update(callback._stats.pop(callback.max_tokens))
        return super().log(logs, *args, **kwargs)
