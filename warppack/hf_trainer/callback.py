"""HF Trainer integration: ``WarpPackCallback`` (this module) and ``pack_trainer`` (:mod:`warppack.hf_trainer.trainer`).

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

from warppack.engine.lengths import lengths_of
from warppack.loaders.sampler.sampler import PackedBatchSampler
from warppack.model.check import check_model

__all__ = ["WarpPackCallback"]
logger = logging.getLogger("warppack")
PACKING_AWARE = ("warppack", "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def require_transformers(what: str) -> None:
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
        require_transformers("warppack.WarpPackCallback")
        self.max_tokens = max_tokens
        self.max_seq_len, self.calibrate, self.check = max_seq_len, calibrate, check
        self.oom_guard, self.log_stats = oom_guard, log_stats
        self.budget_source = "given" if max_tokens is not None else None
        self.guard_state: Optional[dict] = None
        self.checked = False
        self._guard: Optional[Any] = None  # an OOMGuard, built on the first guarded step
        self.stats = _Stats()
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
        self.stats.reset()

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        # A single process's accelerate loader does not forward set_epoch to a batch sampler.
        sampler = getattr(train_dataloader, "batch_sampler", None)
        while sampler is not None and not isinstance(sampler, PackedBatchSampler):
            sampler = getattr(sampler, "batch_sampler", None)  # accelerate's BatchSamplerShard wraps it
        if sampler is not None:
            sampler.set_epoch(int(math.floor((state.epoch or 0) + 1e-6)))

    def ensure_checked(self, model) -> None:
        """Run ``warppack.check_model`` once (raises ``ContaminationError`` naming the cause)."""
        if self.check and not self.checked and model is not None:
            report = check_model(model)
            logger.info("warppack: check_model passed (%s)", report)
        self.checked = True

    # -- used by the packed Trainer -----------------------------------------------------------------
    def lengths(self, dataset) -> Any:
        key = id(dataset)
        if key not in self._lengths:
            self._lengths[key] = (dataset, lengths_of(dataset))  # dataset kept: ids stay unique
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
        from warppack.memory.calibrate import calibrate_token_budget, default_loss
        from warppack.memory.device import no_cuda_reason

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
            from warppack.memory.oom_guard import OOMGuard

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
