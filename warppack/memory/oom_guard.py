"""``OOMGuard``: an opt-in training-step wrapper that turns a CUDA out-of-memory error into a split.

On an out-of-memory error the packed batch is split in two at a sequence boundary (rebuilt with the
collator from the batch's own sequences), both halves run as gradient accumulation weighted by
their label tokens -- so loss and gradients equal the full batch's -- and the token budget for later
batches is lowered. No example is lost and no optimizer step is skipped. Batches larger than the
lowered budget are split before they run, so one OOM does not repeat every step.

Distributed (DDP): every micro-step runs on the module inside DistributedDataParallel (no
collective inside a forward or backward, so one rank's retry cannot leave the others waiting);
after the step every rank all-reduces the out-of-memory flag and lowers the budget identically,
then gradients are averaged in buckets, as DDP would. See docs/calibration.md.

>>> guard = warppack.OOMGuard(model, collator=collate, max_tokens=max_tokens)   # doctest: +SKIP
>>> for batch in loader:                                                        # doctest: +SKIP
...     loss = guard(batch.to("cuda"))       # forward + backward, split on OOM
...     optimizer.step(); optimizer.zero_grad()
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from warppack.batch.collator import PackedCollator
from warppack.batch.packed import PackedBatch, unpack
from warppack.memory.device import (
    all_ranks_max,
    gathers_parameters,
    is_oom_error,
    world_size,
)
from warppack.memory.step import default_loss, unwrap_ddp

__all__ = ["OOMGuard", "split_points"]

logger = logging.getLogger("warppack")
_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


def split_points(lengths: Sequence[int], start: int, end: int) -> int:
    """Index in ``(start, end)`` that splits sequences ``start:end`` into two halves of nearly equal tokens.

    >>> split_points([5, 1, 1, 5], 0, 4)
    2
    """
    if end - start < 2:
        raise ValueError("a single sequence cannot be split")
    cum = np.cumsum(lengths[start:end])
    cut = int(np.argmin(np.abs(cum[:-1] - cum[-1] / 2))) + 1
    return start + cut


def _groups(lengths: Sequence[int], budget: int) -> List[Tuple[int, int]]:
    """Consecutive runs of sequences, each within ``budget`` tokens (a longer sequence runs alone)."""
    groups, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > budget:
            groups.append((start, i))
            start, total = i, 0
        total += n
    groups.append((start, len(lengths)))
    return groups


class _Sequences:
    """The real sequences of one packed batch on the host, rebuilt into smaller batches on demand."""

    def __init__(self, batch: Mapping[str, Any], collator: PackedCollator) -> None:
        packed = batch if isinstance(batch, PackedBatch) else PackedBatch(dict(batch))
        self.device = packed["input_ids"].device
        self.ids = [t.clone() for t in unpack(packed["input_ids"].cpu(), packed)]
        self.labels = [t.clone() for t in unpack(packed["labels"].cpu(), packed)]
        self.lengths = [len(t) for t in self.ids]
        self.label_counts = [int((t != collator.label_pad_id).sum()) for t in self.labels]
        self.total_labels = sum(self.label_counts)
        self.collator = collator

    def __len__(self) -> int:
        return len(self.ids)

    def build(self, start: int, end: int) -> PackedBatch:
        examples = [{"input_ids": self.ids[i], "labels": self.labels[i]} for i in range(start, end)]
        return self.collator(examples).to(self.device)

    def weight(self, start: int, end: int, reduction: str) -> float:
        if reduction == "sum":  # the loss is already normalised by a constant: halves just add up
            return 1.0
        share = sum(self.label_counts[start:end])
        return share / self.total_labels if self.total_labels else (end - start) / len(self)


class OOMGuard:
    """Run forward + backward of a packed batch; on out-of-memory split it instead of crashing.

    ``collator`` rebuilds the halves (its ``pad_to_multiple_of`` and ids are reused; never a static
    shape, which would not shrink). ``reduction="mean"`` (transformers' default token-mean loss)
    weights each half by its share of label tokens; ``"sum"`` (a loss normalised by a constant such
    as ``num_items_in_batch``) adds halves unweighted. After an OOM on ``T`` tokens the budget
    ``max_tokens`` becomes ``shrink * T`` (rounded down to the collator's multiple, at least
    ``min_tokens``); ``on_budget_change(new)`` callbacks see it too.
    """

    def __init__(self, model: torch.nn.Module, *, collator: Optional[PackedCollator] = None,
                 max_tokens: Optional[int] = None, accelerator: Any = None,
                 loss_fn: Optional[Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]] = None,
                 reduction: str = "mean", shrink: float = 0.9, min_tokens: int = 1,
                 on_budget_change: Optional[Callable[[int], None]] = None) -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' (token-mean loss) or 'sum' (loss normalised by a "
                             f"fixed count such as num_items_in_batch), got {reduction!r}")
        if not 0 < shrink < 1:
            raise ValueError(f"shrink must be in (0, 1): the budget becomes shrink * the tokens that ran out "
                             f"of memory; got {shrink!r}")
        _refuse_sharded(model)
        c = collator or PackedCollator()
        self._collator = PackedCollator(None, pad_token_id=c.pad_token_id, label_pad_id=c.label_pad_id,
                                        pad_to_multiple_of=c.pad_to_multiple_of, pin_memory=False)
        self.model, self.accelerator = model, accelerator
        self.loss_fn = loss_fn or default_loss
        self.reduction, self.shrink, self.min_tokens = reduction, float(shrink), int(min_tokens)
        self._max_tokens = max_tokens
        self._listeners = [on_budget_change] if on_budget_change else []
        self.ooms = 0       # out-of-memory errors caught on this rank
        self.splits = 0     # extra micro-batches this rank ran (beyond one per step)
        self.events: List[dict] = []

    @property
    def max_tokens(self) -> Optional[int]:
        """The token budget for later batches (lowered after an OOM on any rank); read it in samplers."""
        return self._max_tokens

    def add_budget_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def __call__(self, batch: Mapping[str, Any], *, sync_gradients: Optional[bool] = None) -> torch.Tensor:
        """Forward + backward of ``batch`` (``loss_fn``, ``accelerator.backward``); returns the detached loss."""
        return self.run(batch, self._step, sync_gradients=sync_gradients)

    def _step(self, micro: Mapping[str, Any], weight: float) -> torch.Tensor:
        loss = self.loss_fn(unwrap_ddp(self.model), micro)
        if weight != 1.0:
            loss = loss * weight
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()
        return loss.detach()

    def run(self, batch: Mapping[str, Any], step_fn: Callable[[Mapping[str, Any], float], torch.Tensor], *,
            reduction: Optional[str] = None, sync_gradients: Optional[bool] = None) -> torch.Tensor:
        """Like calling the guard, with your own micro-step: ``step_fn(micro_batch, weight)`` must backprop
        ``weight * loss`` and return it detached. The returned losses are summed."""
        reduction = reduction or self.reduction
        if sync_gradients is None:
            sync_gradients = bool(getattr(self.accelerator, "sync_gradients", True))
        params = [p for p in self.model.parameters() if p.requires_grad]
        sequences: Optional[_Sequences] = None
        queue: deque = deque([None])  # None: the batch as given; (start, end): a run of its sequences
        tokens = int(batch["input_ids"].shape[-1])
        if self._max_tokens is not None and tokens > self._max_tokens:
            sequences = _Sequences(batch, self._collator)
            if len(sequences) > 1:  # split ahead: this budget already ran out of memory once
                queue = deque(_groups(sequences.lengths, self._max_tokens))
        failed_at: Optional[int] = None
        total, done = None, 0
        while queue:
            part = queue.popleft()
            if part is None:
                micro, weight = batch, 1.0
            else:
                assert sequences is not None
                micro, weight = sequences.build(*part), sequences.weight(part[0], part[1], reduction)
            loss = self._attempt(step_fn, micro, weight, params)
            if loss is not None:
                total, done = (loss if total is None else total + loss), done + 1
                continue
            size = int(micro["input_ids"].shape[-1])
            failed_at = size if failed_at is None else min(failed_at, size)
            if sequences is None:
                sequences = _Sequences(batch, self._collator)
            start, end = part or (0, len(sequences))
            if end - start < 2:
                raise torch.OutOfMemoryError(
                    f"warppack OOMGuard: out of memory on a single sequence of {sequences.lengths[start]} "
                    f"tokens, which cannot be split; lower max_seq_len (truncate or split long examples), "
                    f"enable gradient checkpointing, or recalibrate the token budget")
            mid = split_points(sequences.lengths, start, end)
            queue.extendleft([(mid, end), (start, mid)])
            self.events.append({"tokens": size, "sequences": end - start, "halves": (mid - start, end - mid)})
            logger.warning("warppack OOMGuard: out of memory on %d tokens (%d sequences); running them as "
                           "two micro-batches of %d and %d sequences", size, end - start, mid - start, end - mid)
        self.splits += done - 1
        assert total is not None  # at least one micro-batch ran (or an error was raised)
        self._agree_on_budget(failed_at)
        if sync_gradients and world_size() > 1 and unwrap_ddp(self.model) is not self.model:
            _average_gradients(params)
        return total

    def _attempt(self, step_fn, micro, weight: float, params) -> Optional[torch.Tensor]:
        # Gradients from earlier micro-batches are set aside, so a backward that fails half-way
        # (some parameters already accumulated, others not) can be undone exactly.
        stash = [p.grad for p in params] if any(p.grad is not None for p in params) else None
        if stash is not None:
            for p in params:
                p.grad = None
        error = None
        try:
            loss = step_fn(micro, weight)
        except Exception as exc:  # noqa: BLE001 - non-OOM errors are re-raised below
            error = exc if not is_oom_error(exc) else None
            failed = True
            if error is None:
                self.ooms += 1
        else:
            failed = False
        if failed:  # outside the except block: its traceback holds the activations
            loss = None
            for i, p in enumerate(params):
                p.grad = None if stash is None else stash[i]
            if error is not None:
                raise error
            _release()
            return None
        if stash is not None:
            for p, old in zip(params, stash):
                if old is not None:
                    p.grad = old if p.grad is None else old.add_(p.grad)  # keeps the old tensor
        return loss

    def _agree_on_budget(self, failed_at: Optional[int]) -> None:
        # Every rank calls this once per step; all lower the budget the same way or none does.
        smallest = failed_at if failed_at is not None else 2**53
        any_failed, neg_smallest = all_ranks_max([failed_at is not None, -smallest])
        if not any_failed:
            return
        multiple = self._collator.pad_to_multiple_of or 1
        new = max(self.min_tokens, int(-neg_smallest * self.shrink) // multiple * multiple)
        if self._max_tokens is None or new < self._max_tokens:
            logger.warning("warppack OOMGuard: token budget for later batches lowered from %s to %d",
                           self._max_tokens, new)
            self._max_tokens = new
            for listener in self._listeners:
                listener(new)

    def state_dict(self) -> dict:
        return {"max_tokens": self._max_tokens, "ooms": self.ooms, "splits": self.splits}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._max_tokens = state.get("max_tokens", self._max_tokens)
        self.ooms, self.splits = int(state.get("ooms", 0)), int(state.get("splits", 0))


def _release() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _refuse_sharded(model: torch.nn.Module) -> None:
    if world_size() == 1:
        return
    if gathers_parameters(model):
        raise ValueError(
            "OOMGuard in a distributed run supports DistributedDataParallel models; with FSDP or DeepSpeed a "
            "forward gathers parameters from every rank, so one rank retrying a split would desynchronise "
            "them. Calibrate the budget instead (warppack.calibrate_token_budget) and run without the guard")


def _average_gradients(params) -> None:
    """Average gradients over ranks in ~25 MB buckets (what DDP does, without its overlap)."""
    dist = torch.distributed
    world = world_size()
    for p in params:  # every rank must reduce the same list, even for parameters this step did not use
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: dict = {}
    for p in params:
        buckets.setdefault((p.grad.dtype, p.grad.device), [[]])
        current = buckets[(p.grad.dtype, p.grad.device)]
        if sum(g.numel() * g.element_size() for g in current[-1]) > _BUCKET_BYTES:
            current.append([])
        current[-1].append(p.grad)
    for groups in buckets.values():
        for grads in groups:
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            flat.div_(world)
            for grad, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(synced)
