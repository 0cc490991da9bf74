"""HF Trainer integration: ``WarpPackCallback`` (this module) and ``pack_trainer`` (:mod:`warppack.hf_trainer.trainer`).

One call turns an existing ``Trainer`` into a packed one; it adds this callback when the trainer
has none::

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    warppack.pack_trainer(trainer)      # or pack_trainer(trainer, packing=warppack.PackingConfig(...))

``pack_trainer`` makes the train and eval loaders ``PackedBatchSampler`` loaders under the token
budget (so ``len(train_dataloader)`` is exact and ``max_steps``, schedules and epochs are right),
picks the budget (the ``PackingConfig``'s, the checkpoint's, calibrated on the GPU, or from the
lengths), and, with ``WarpPackCallback(oom_guard=True)``, runs each training step through an
:class:`~warppack.OOMGuard`. The callback runs ``check_model`` at train start, sets the sampler's
epoch, and puts packing statistics (and what the budget truncates) into the Trainer's logs; its
state goes into checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict, Mapping, Optional, Tuple, Union

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

from warppack.engine.config import OverlongCounts, PackingConfig, merge_packing
from warppack.engine.lengths import lengths_of
from warppack.hf_trainer.budget import calibrated_budget, fallback_budget, sequence_length
from warppack.loaders.sampler.sampler import PackedBatchSampler
from warppack.model.check import check_model

__all__ = ["TRAINER_OVERLONG", "WarpPackCallback"]
logger = logging.getLogger("warppack")
PACKING_AWARE = ("warppack", "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")
#: What a packed Trainer does to an example longer than the budget when no policy is configured (as TRL).
TRAINER_OVERLONG = "truncate"


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


def _packing_of(packing: Union[PackingConfig, Mapping[str, Any], None]) -> Optional[PackingConfig]:
    # A checkpoint stores the config's fields as a dict; the Trainer rebuilds the callback from it.
    return PackingConfig(**packing) if isinstance(packing, Mapping) else packing


class WarpPackCallback(TrainerCallback, ExportableState):
    """Token-budget packing for HF ``Trainer`` (use with :func:`pack_trainer`, which adds one if needed).

    ``packing``: a :class:`~warppack.PackingConfig` (budget, overlong policy, strategy, padding);
    ``max_tokens`` is its budget, as a shortcut. Without a budget it is a resumed checkpoint's, else
    calibrated on the GPU (``calibrate=True``, or a dict of ``calibrate_token_budget`` keywords such as
    ``{"headroom": 0.1}``). Without CUDA nothing is calibrated: the budget becomes
    ``per_device_train_batch_size × max_seq_len``, or, with no ``max_seq_len``, × the 99% quantile of
    the training lengths (never the single longest), rounded up to a multiple of 64, with a warning
    that says so. With no ``overlong`` policy, examples longer than the budget are truncated, as TRL
    does; a warning each epoch and the training logs (``truncated_examples``, ``truncated_tokens``,
    ``truncated_token_fraction``) count them.
    ``max_seq_len``: the longest sequence to calibrate for (default: TRL's ``SFTConfig.max_length``,
    else the longest in the train set). ``check``: run ``warppack.check_model`` once at train start.
    ``oom_guard``: split batches on CUDA out-of-memory instead of crashing. ``log_stats``: packing
    efficiency, padding fraction, sequences per batch and real tokens/s (this process) in every
    training log.
    """

    def __init__(self, max_tokens: Optional[int] = None, *,
                 packing: Union[PackingConfig, Mapping[str, Any], None] = None, max_seq_len: Optional[int] = None,
                 calibrate: Union[bool, Mapping[str, Any]] = True, check: bool = True, oom_guard: bool = False,
                 log_stats: bool = True) -> None:
        require_transformers("warppack.WarpPackCallback")
        self.packing = merge_packing(_packing_of(packing), {"max_tokens": max_tokens}, owner="WarpPackCallback")
        self.max_tokens = self.packing.max_tokens  # the budget in use, once decided
        self.max_seq_len, self.calibrate, self.check = max_seq_len, calibrate, check
        self.oom_guard, self.log_stats = oom_guard, log_stats
        self.budget_source = "WarpPackCallback's packing" if self.max_tokens is not None else None
        self.overlong_metrics: Dict[str, float] = {}  # what the budget truncates, for the training logs
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
        return {"args": {"packing": self.packing.given(), "max_seq_len": self.max_seq_len, "calibrate": calibrate,
                         "check": self.check, "oom_guard": self.oom_guard, "log_stats": self.log_stats},
                "attributes": {"max_tokens": self.max_tokens, "budget_source": self.budget_source,
                               "overlong_metrics": self.overlong_metrics,
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

    # -- used by pack_trainer and the packed Trainer ------------------------------------------------
    def adopt(self, packing: PackingConfig, source: Optional[str]) -> None:
        """Take the trainer's ``packing`` (merged by ``pack_trainer``); ``source`` says where its budget came from."""
        self.packing = packing
        if packing.max_tokens is not None:
            self.max_tokens, self.budget_source = packing.max_tokens, source

    def trainer_packing(self) -> PackingConfig:
        """The config the loaders and the collator use: the decided budget, and truncation unless told otherwise."""
        return self.packing.replace(max_tokens=self.max_tokens, overlong=self.packing.overlong or TRAINER_OVERLONG)

    def lengths(self, dataset) -> Any:
        key = id(dataset)
        if key not in self._lengths:
            self._lengths[key] = (dataset, lengths_of(dataset))  # dataset kept: ids stay unique
        return self._lengths[key][1]

    def resolve_budget(self, trainer, dataset) -> int:
        """The token budget, deciding it (checkpoint, calibration, lengths) the first time."""
        if self.max_tokens is not None:
            return self.max_tokens
        if self._resume_budget is not None:
            self.max_tokens, self.budget_source = self._resume_budget, "the resumed checkpoint"
        elif not self.calibrate:
            raise ValueError("WarpPackCallback has no token budget: pass packing=warppack.PackingConfig(max_tokens="
                             "...) to pack_trainer, or leave calibrate=True")
        else:
            self.max_tokens, self.budget_source = self._measure(trainer, dataset)
        logger.warning("warppack: token budget %d tokens per batch (%s)", self.max_tokens, self.budget_source)
        return self.max_tokens

    def _measure(self, trainer: Any, dataset: Any) -> Tuple[int, str]:
        from warppack.memory.device import no_cuda_reason

        lengths = self.lengths(dataset)
        configured = sequence_length(trainer.args, self.max_seq_len)
        options = dict(self.calibrate) if isinstance(self.calibrate, Mapping) else {}
        device = next(trainer.model.parameters()).device
        if "memory" not in options and device.type != "cuda":
            budget, how = fallback_budget(lengths, trainer.args.per_device_train_batch_size, configured=configured,
                                          multiple=self.packing.pad_to_multiple_of)
            return budget, (f"not calibrated: {no_cuda_reason(device)}; {how}. Choose it with "
                            f"pack_trainer(trainer, packing=warppack.PackingConfig(max_tokens=...))")
        return calibrated_budget(trainer, lengths, configured=configured, options=options)

    def note_overlong(self, counts: Optional[OverlongCounts]) -> None:
        """Remember what the training sampler truncates, for the training logs."""
        self.overlong_metrics = counts.metrics() if counts is not None else {}

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
