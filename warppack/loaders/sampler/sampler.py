"""PackedBatchSampler: token-budget batches of a map-style dataset, sharded over ranks with equal steps.

One epoch is planned globally (all examples, every rank computes the same plan from ``seed`` and the
epoch), then laid out as a grid of ``steps × num_replicas`` bins: bins are sorted by real tokens
(then Σlen², the attention cost) and dealt a step at a time, so the bins that run together are of
the same size and no rank waits for a straggler. Rank ``r`` yields column ``r``.

Equal steps: the number of bins is raised to a multiple of ``num_replicas`` by splitting the smallest
multi-sequence bins in two (never exceeding the budget); only when there are fewer sequences than
slots does a rank get an explicit empty batch (``[]``, which ``PackedCollator(allow_empty=True)``
turns into a single padding token whose labels are all ignored: a zero-loss step; the sampler warns
once per epoch, as it cannot see the collator).

>>> import warppack
>>> sampler = warppack.PackedBatchSampler([5, 3, 8, 2, 7], max_tokens=8, num_replicas=2, rank=0, shuffle=False)
>>> len(sampler), list(sampler)                        # bins: [2]=8 tokens, [3]=2
(2, [[2], [3]])
>>> list(warppack.PackedBatchSampler([5, 3, 8, 2, 7], 8, num_replicas=2, rank=1, shuffle=False))
[[0, 1], [4]]
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Sampler

from warppack.distributed import MAX_REPLICAS
from warppack.engine.config import OverlongCounts, PackingConfig
from warppack.engine.options import check_flag, check_int
from warppack.loaders.sampler.bins import Bins
from warppack.loaders.sampler.config import CHECKED, STATE_FORMAT, SamplerConfig
from warppack.loaders.sampler.iterator import BatchIterator
from warppack.loaders.sampler.layout import Layout, epoch_bins, epoch_layout
from warppack.loaders.state import (
    EPOCH_MAX,
    Fixed,
    Generation,
    SavedFields,
    check_epoch,
    check_saved_options,
)

__all__ = ["PackedBatchSampler"]


class PackedBatchSampler(Sampler[List[int]]):
    """Batches of dataset indices under a token budget, for ``DataLoader(ds, batch_sampler=...)``.

    ``lengths`` holds the token count of every example (``warppack.lengths_of(ds)``). Each epoch
    packs all examples once (``strategy``: ``"bfd"``, ``"ffd"`` or ``"online"``) and gives rank
    ``rank`` of ``num_replicas`` (both default to the initialised process group) a disjoint share:

    - every example exactly once per epoch over all ranks, and ``len()`` — exact before iteration —
      the same on every rank; where there are fewer sequences than ``steps × num_replicas`` slots a
      rank gets an empty batch ``[]``, which the collator must accept as a zero-loss step
      (``PackedCollator(allow_empty=True)``; a warning per epoch names the rank and the count, unless
      ``warn_empty=False`` says that the collator accepts them);
    - per step, the ranks' bins have near-equal real tokens, then Σlen²;
    - ``shuffle=True`` re-draws the bins and their order from ``seed`` and ``set_epoch(e)``;
    - ``state_dict()``/``load_state_dict()`` resume at any batch boundary, even on another world size.

    ``drop_last=True`` drops the ``len(bins) % num_replicas`` least-filled bins instead of splitting
    bins (those examples are skipped that epoch). ``overlong="truncate"`` packs an example longer than
    the budget as its first ``max_tokens`` tokens, with a warning per epoch that counts them (pair
    with a collator that truncates too: ``packing=PackingConfig(max_tokens, overlong="truncate")``
    for both). ``packing``: a :class:`~warppack.PackingConfig` giving ``max_tokens``, ``strategy``,
    ``overlong`` and ``max_sequences`` (``max_seqs_per_bin``); arguments left at their defaults
    take its values, and one that disagrees with it is an error. ``interleaved=True`` yields the batches of all ranks step by step
    (``len() = steps × num_replicas``) for wrappers that deal batches to ranks themselves —
    ``accelerate.Accelerator.prepare`` and HF ``Trainer`` do.

    Concurrency: one pass at a time per sampler — ``iter()`` starts a new pass and the previous
    iterator raises ``RuntimeError`` on its next batch. One thread at a time: a second thread calling
    ``next()`` while a batch is being handed out gets ``RuntimeError``; ``state_dict()`` waits for that
    batch. The DataLoader runs a batch sampler in the main process and sends only the indices to its
    worker processes, so any ``num_workers`` is safe; each rank builds its own sampler.

    Examples:
        >>> s = PackedBatchSampler([4, 4, 4, 4, 2], max_tokens=8, shuffle=False)
        >>> [sum([4, 4, 4, 4, 2][i] for i in b) for b in s]
        [8, 8, 2]
    """

    # The options, read-only: the plan, len() and saved states depend on them.
    lengths = Fixed[np.ndarray]()
    max_tokens = Fixed[int]()
    shuffle = Fixed[bool]()
    seed = Fixed[int]()
    drop_last = Fixed[bool]()
    strategy = Fixed[str]()
    num_replicas = Fixed[int]()
    rank = Fixed[int]()
    max_seqs_per_bin = Fixed[Optional[int]]()
    overlong = Fixed[str]()
    packing = Fixed[PackingConfig]()  # the options above that a collator shares, as one config
    interleaved = Fixed[bool]()

    def __init__(
        self,
        lengths: Any,
        max_tokens: Optional[int] = None,
        *,
        packing: Optional[PackingConfig] = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        strategy: str = "bfd",
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        max_seqs_per_bin: Optional[int] = None,
        overlong: str = "error",
        interleaved: bool = False,
        warn_empty: bool = True,
    ) -> None:
        self.warn_empty = check_flag(warn_empty, name="warn_empty")
        self._config = SamplerConfig.build(
            lengths, max_tokens, packing=packing, shuffle=shuffle, seed=seed, drop_last=drop_last, strategy=strategy,
            num_replicas=num_replicas, rank=rank, max_seqs_per_bin=max_seqs_per_bin, overlong=overlong,
            interleaved=interleaved,
        )
        self._generation = Generation("PackedBatchSampler")
        self._epoch = 0
        self._history: List[List[int]] = []  # [[num_replicas, steps], ...] run earlier this epoch (resharded resume)
        self._start = 0  # step of the current layout where the next pass starts
        self._live: Optional[BatchIterator] = None
        self._bins_cache: Optional[Tuple[int, Bins]] = None
        self._layout_cache: Optional[Tuple[Tuple[int, Tuple[Tuple[int, ...], ...]], Layout]] = None
        self._warned_epoch: Optional[int] = None  # the last epoch whose truncations were reported
        self._warned_empty_epoch: Optional[int] = None  # the last epoch whose empty batches were reported

    # -- planning ----------------------------------------------------------------------------
    def _epoch_bins(self, epoch: int) -> Bins:
        cached = self._bins_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        bins = epoch_bins(self._config, epoch)
        self._bins_cache = (epoch, bins)
        return bins

    def _layout(self, epoch: int, history: Sequence[Sequence[int]]) -> Layout:
        key = (epoch, tuple(tuple(h) for h in history))
        cached = self._layout_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        layout = epoch_layout(self._config, self._epoch_bins(epoch), epoch, history)
        self._layout_cache = (key, layout)
        return layout

    def _current(self) -> Optional[BatchIterator]:
        """The pass that runs now, unless set_epoch()/load_state_dict() made it stale."""
        live = self._live
        return live if live is not None and live.generation == self._generation.number else None

    # -- Sampler -----------------------------------------------------------------------------
    def __iter__(self) -> BatchIterator:
        self._generation.advance("iter() was called again", new_pass=True)
        counts = self.overlong_counts
        if counts is not None and self._warned_epoch != self._epoch:
            self._warned_epoch = self._epoch
            warnings.warn(counts.message(f"PackedBatchSampler, epoch {self._epoch}"), stacklevel=2)
        layout = self._layout(self._epoch, self._history)
        self._warn_empty(layout)
        iterator = BatchIterator(
            layout, epoch=self._epoch, history=self._history, start=self._start,
            generation=self._generation, num_replicas=self.num_replicas, rank=self.rank,
            interleaved=self.interleaved, on_step=self._on_step)
        self._live = iterator
        return iterator

    def _warn_empty(self, layout: Layout) -> None:
        # The collator decides what [] becomes and this sampler cannot see it: say it here, once an epoch.
        if not self.warn_empty or self._warned_empty_epoch == self._epoch or (self.interleaved and self.rank != 0):
            return  # interleaved: every process holds all ranks' batches, and one of them says it
        counts = layout.empty_batches(self._start)
        ranks = list(range(self.num_replicas)) if self.interleaved else [self.rank]
        empty = [r for r in ranks if counts[r]]
        if not empty:
            return
        self._warned_empty_epoch = self._epoch
        total = int(sum(counts[r] for r in empty))
        who = f"rank {empty[0]}" if len(empty) == 1 else "ranks " + ", ".join(map(str, empty))
        steps = layout.steps_before + layout.num_steps
        plural = "s" if steps != 1 else ""
        warnings.warn(
            f"PackedBatchSampler, epoch {self._epoch}: {total} empty batch{'es' if total != 1 else ''} ([]) for "
            f"{who} of {self.num_replicas}, as there are fewer sequences than the {steps} step{plural} × "
            f"{self.num_replicas} ranks of the epoch (equal steps). A DataLoader passes each to collate_fn as "
            f"[]: build the collator with PackedCollator(..., allow_empty=True) to run it as a zero-loss step (a "
            f"PackedCollator without allow_empty=True raises ValueError)", stacklevel=3)

    def _on_step(self, iterator: BatchIterator, first: bool) -> None:
        self._live = iterator
        if first:
            self._history, self._start = [], 0  # the resume point is used once

    def __len__(self) -> int:
        live = self._current()
        layout = live.layout if live is not None else self._layout(self._epoch, self._history)
        steps = layout.steps_before + layout.num_steps
        return steps * self.num_replicas if self.interleaved else steps

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def sampler(self) -> "PackedBatchSampler":
        """This sampler: Accelerate forwards ``set_epoch`` to ``batch_sampler.sampler`` once it wraps it."""
        return self

    @property
    def overlong_counts(self) -> Optional[OverlongCounts]:
        """The examples longer than ``max_tokens`` that are truncated each epoch (None: none)."""
        return self._config.overlong_counts

    def set_epoch(self, epoch: int) -> None:
        """Plan epoch ``epoch`` next (deterministic from ``seed``); the same epoch again keeps a loaded resume point."""
        epoch = check_epoch(epoch)
        if epoch == self._epoch:
            return
        self._generation.advance(f"set_epoch({epoch}) after epoch {self._epoch}")
        self._epoch, self._history, self._start = epoch, [], 0

    # -- state -------------------------------------------------------------------------------
    def state_dict(self, *, consumed: Optional[int] = None) -> Dict[str, Any]:
        """The position to resume from: epoch, step, world size and the fields that fix the plan.

        The state is the same on every rank, so any rank's state resumes any rank (also on another
        world size). It counts the batches this sampler has handed out; under a plain ``DataLoader``
        with workers those run ahead of your loop by the prefetched batches, so pass ``consumed=`` —
        the batches your current pass has taken from the loader — or use torchdata's
        ``StatefulDataLoader``, which snapshots the sampler at the right batch by itself.
        """
        live = self._current()
        if live is not None:
            with live.one_thread.lock:  # not half-way through a batch another thread is taking
                epoch, history, start, step = live.epoch, live.history, live.start, live.step
        else:
            epoch, history, start, step = self._epoch, self._history, self._start, self._start
        if consumed is not None:
            consumed = check_int(consumed, name="consumed", minimum=0)
            if start + consumed > step:
                raise ValueError(
                    f"consumed={consumed} is more than the {step - start} batches this pass has handed out"
                )
            step = start + int(consumed)
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "step": step,
            "history": [list(map(int, h)) for h in history],
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            **self._config.saved_options(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume where ``state`` was taken: the next pass yields exactly the rest of that epoch.

        Refuses (``ValueError``, listing the fields) a state from other lengths, budget, seed or
        packing options, and one whose position fields are of the wrong type or out of range for this
        plan (naming the field). A state from another world size keeps exactly-once: the bins no rank
        had reached are dealt again over the current ranks.
        """
        check_saved_options(state, expected_format=STATE_FORMAT, options=self._config.saved_options(),
                            checked=CHECKED, owner="PackedBatchSampler", noun="sampler", absent_ok=False)
        fields = SavedFields(state, owner="PackedBatchSampler", noun="sampler")
        epoch = fields.integer("epoch", fields.get("epoch"), maximum=EPOCH_MAX)
        step = fields.integer("step", fields.get("step"))
        saved_world = fields.integer("num_replicas", fields.get("num_replicas"), minimum=1, maximum=MAX_REPLICAS)
        fields.integer("rank", fields.get("rank"), maximum=saved_world - 1)
        history = []
        for i, segment in enumerate(fields.items("history", fields.get("history"))):
            world, steps = fields.items(f"history[{i}]", segment, length=2)
            history.append([fields.integer(f"history[{i}][0] (num_replicas)", world, minimum=1, maximum=MAX_REPLICAS),
                            fields.integer(f"history[{i}][1] (steps)", steps, minimum=1)])
        saved_history = len(history)
        if saved_world != self.num_replicas and step > 0:
            # The saved world size consumed `step` steps of its layout; the rest is re-dealt here.
            history, step = history + [[saved_world, step]], 0
        # Planned now (and cached for the pass that follows) to check every step count against it.
        layout = self._layout(epoch, history)
        for i, ((_, steps), had) in enumerate(zip(history, layout.replayed)):
            if steps > had:
                field, value = (f"history[{i}]", history[i]) if i < saved_history else ("step", steps)
                fields.fail(field, value, f"epoch {epoch} has only {had} steps on {history[i][0]} ranks")
        if step > layout.num_steps:
            fields.fail("step", step, f"epoch {epoch} has only {layout.num_steps} steps on {self.num_replicas} ranks")
        self._generation.advance(f"load_state_dict(epoch={epoch}, step={step})")
        self._epoch, self._history, self._start = epoch, history, step

    def __repr__(self) -> str:
        return (
            f"PackedBatchSampler(num_examples={len(self.lengths)}, max_tokens={self.max_tokens}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle}, seed={self.seed}, "
            f"strategy={self.strategy!r}, epoch={self._epoch})"
        )
