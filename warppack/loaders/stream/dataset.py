"""PackedIterableDataset: online packing of a stream into PackedBatches, sharded over ranks and workers.

The source is split by example position: rank ``r`` of ``W`` takes positions ``p`` with
``p % W == r``; DataLoader worker ``w`` of ``n`` takes, among those, every ``n``-th (``(p // W) % n
== w``). Each (rank, worker) stream is packed by ``_packer.OnlinePacker`` (best fit over a window of
``buffer_size`` sequences) and collated in the worker. Every example is read by exactly one stream.

Equal steps: a stream's length is unknown until it ends, so ranks cannot agree on a step count
without either knowing the lengths up front or talking. ``lengths=`` gives the first: every worker
simulates the packing of all shards (C++, no example is read) and pads its rank with empty batches
up to the largest rank's count — exact, no communication, and ``len()`` is known. Otherwise wrap the
loader in :func:`warppack.equal_steps` (one all-reduce of a flag per step).

>>> import warppack
>>> examples = [{"input_ids": list(range(1, n + 1))} for n in (5, 3, 8, 2)]
>>> ds = warppack.PackedIterableDataset(examples, max_tokens=8, buffer_size=2)
>>> [b.num_sequences for b in ds], [b.num_tokens for b in ds]
([1, 2, 1], [8, 8, 2])
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from warppack.engine.config import OverlongCounts, PackingConfig
from warppack.engine.options import DEFAULT_BUFFER_SIZE
from warppack.loaders.state import Fixed, Generation, check_epoch, check_saved_options
from warppack.loaders.stream.config import CHECKED, STATE_FORMAT, IterableConfig
from warppack.loaders.stream.epoch import SharedEpoch
from warppack.loaders.stream.saved import check_position
from warppack.loaders.stream.shards import empties_for, shard_counts, worker_placement
from warppack.loaders.stream.stream import (
    Stream,
    StreamBudget,
    check_same_split,
    fresh_position,
)

__all__ = ["PackedIterableDataset"]


class PackedIterableDataset(IterableDataset):
    """Packs a stream of examples online into :class:`~warppack.PackedBatch`\\ es of at most ``max_tokens``.

    ``source``: a list / map-style dataset (read by index: resume is O(1) and ``shuffle`` works), a
    re-iterable stream (HF ``datasets.IterableDataset``, any iterable that restarts on ``iter()``) or
    a zero-argument callable returning a fresh iterator. Use it with ``DataLoader(ds,
    batch_size=None, num_workers=...)``; each example is read by exactly one rank and worker.

    - ``buffer_size``: sequences the online packer may hold back to find a better fit.
    - ``collator``: turns a list of examples into a batch (default: a ``PackedCollator`` of the same
      ``packing``); a ``PackedCollator`` given here must have the same budget.
    - ``overlong``: ``"error"``, ``"truncate"`` or ``"split"`` (consecutive chunks ≤ budget, each its
      own sequence). With ``lengths=``, a warning per epoch counts what is truncated or split.
    - ``packing``: a :class:`~warppack.PackingConfig` giving ``max_tokens``, ``overlong``,
      ``max_sequences`` (``max_seqs_per_bin``) and the default collator's padding options; arguments
      left at their defaults take its values, and one that disagrees with it is an error. Its
      ``strategy`` is not used: a stream is always packed online.
    - ``lengths``: token count of every example in source order. Enables equal steps across ranks
      without communication (explicit empty batches pad the shorter ranks: a ``PackedCollator``'s
      ``empty_batch()``, or ``collator([])`` for another collator, which must then return a zero-loss
      step) and ``len()`` (then also pass ``num_workers``: the DataLoader's, which the main process
      cannot see).
    - ``num_replicas``/``rank`` default to the initialised process group.

    ``state_dict()``/``load_state_dict()`` capture the position and the packer's window, so a resumed
    pass yields exactly the batches the uninterrupted one would have. With DataLoader workers the
    state lives in the workers: use torchdata's ``StatefulDataLoader``.

    Concurrency: one pass at a time per object — ``iter()`` starts a new pass and the previous
    iterator raises ``RuntimeError`` on its next batch. One thread at a time: a second thread calling
    ``next()`` while a batch is being made gets ``RuntimeError``; ``state_dict()`` waits for that batch.
    Safe to hand to DataLoader worker processes (fork or spawn, persistent or not): each worker
    iterates its own copy over a disjoint shard, and ``set_epoch()`` in the main process reaches
    persistent workers at their next pass (through shared memory; a mid-epoch position does not:
    use ``StatefulDataLoader``). The source and the collator are called from that one thread.

    >>> ds = PackedIterableDataset([{"input_ids": [1] * n} for n in (3, 3, 3)], max_tokens=6,
    ...                            lengths=[3, 3, 3], num_workers=0)
    >>> len(ds), [b.num_sequences for b in ds]
    (2, [2, 1])
    """

    # The options, read-only: the split, len() and saved states depend on them.
    source = Fixed[Any]()
    max_tokens = Fixed[int]()
    buffer_size = Fixed[int]()
    collator = Fixed[Callable[[List[Any]], Any]]()
    lengths = Fixed[Optional[np.ndarray]]()
    shuffle = Fixed[bool]()
    seed = Fixed[int]()
    max_seqs_per_bin = Fixed[Optional[int]]()
    overlong = Fixed[str]()
    packing = Fixed[PackingConfig]()  # the options above that a collator shares, as one config
    num_replicas = Fixed[int]()
    rank = Fixed[int]()
    num_workers = Fixed[Optional[int]]()

    def __init__(
        self,
        source: Any,
        max_tokens: Optional[int] = None,
        *,
        packing: Optional[PackingConfig] = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        collator: Optional[Callable[[List[Any]], Any]] = None,
        lengths: Any = None,
        shuffle: bool = False,
        seed: int = 0,
        max_seqs_per_bin: Optional[int] = None,
        overlong: str = "error",
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        self._config = IterableConfig.build(
            source, max_tokens, packing=packing, buffer_size=buffer_size, collator=collator, lengths=lengths, shuffle=shuffle,
            seed=seed, max_seqs_per_bin=max_seqs_per_bin, overlong=overlong, num_replicas=num_replicas,
            rank=rank, num_workers=num_workers,
        )
        self._generation = Generation("PackedIterableDataset")
        self._epoch = 0
        self._shared_epoch = SharedEpoch(0)  # set_epoch() of the main process, for persistent workers
        self._resume: Optional[Dict[str, Any]] = None  # a loaded position, for the next pass
        self._live: Optional[Stream] = None
        self._steps_equalized = False  # set by warppack.equal_steps(loader): no warning then
        self._warned = False
        self._warned_epoch: Optional[int] = None  # the last epoch whose truncations or splits were reported
        self._counts_cache: Optional[Tuple[Tuple[int, int], np.ndarray]] = None
        self._order_cache: Optional[Tuple[int, np.ndarray]] = None

    def __getstate__(self) -> Dict[str, Any]:
        # The live stream holds iterators and a native packer: workers start their own.
        state = self.__dict__.copy()
        state.update(_live=None, _counts_cache=None, _order_cache=None)
        return state

    # -- epochs ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def overlong_counts(self) -> Optional[OverlongCounts]:
        """With ``lengths=``: the examples longer than ``max_tokens`` that each epoch truncates or splits."""
        return self._config.overlong_counts

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (with ``shuffle``, a new order from ``seed``); forwarded to the source.

        Called in the main process, it also reaches DataLoader workers that outlive a pass
        (``persistent_workers=True``) when they start their next one.
        """
        epoch = check_epoch(epoch)
        if get_worker_info() is None:
            self._shared_epoch.publish(epoch)
        self._switch_epoch(epoch)

    def _switch_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)
        if epoch == self._epoch:
            return
        self._generation.advance(f"set_epoch({epoch}) after epoch {self._epoch}")
        self._epoch, self._resume = epoch, None

    def _order(self, epoch: int) -> Optional[np.ndarray]:
        """Source index of each position this epoch (None: positions are indices)."""
        if not self.shuffle:
            return None
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed % 2**64, epoch, 0])
            self._order_cache = (epoch, rng.permutation(len(self.source)))
        return self._order_cache[1]

    # -- equal steps from known lengths ------------------------------------------------------
    def _shard_counts(self, epoch: int, workers: int) -> np.ndarray:
        """Bins each (rank, worker) shard packs into, ``[num_replicas, workers]``, simulated in C++."""
        key = (epoch, workers)
        if self._counts_cache is not None and self._counts_cache[0] == key:
            return self._counts_cache[1]
        lengths = self.lengths
        assert lengths is not None, "callers check lengths= first: only then are the counts known"
        order = self._order(epoch)
        if order is not None:
            lengths = lengths[order]
        counts = shard_counts(lengths, self.num_replicas, workers, max_tokens=self.max_tokens,
                              buffer_size=self.buffer_size, max_seqs_per_bin=self.max_seqs_per_bin,
                              overlong=self.overlong)
        self._counts_cache = (key, counts)
        return counts

    def _empties_for(self, epoch: int, world: int, rank: int, workers: int, worker: int) -> int:
        """Empty batches this (rank, worker) stream ends with; 0 without lengths=."""
        if self.lengths is None:
            return 0
        return empties_for(self._shard_counts(epoch, workers), rank, worker)

    def __len__(self) -> int:
        if self.lengths is None:
            raise TypeError(
                "len(PackedIterableDataset) is only known with lengths= (the token count of every example); "
                "without it the number of batches is known when the stream ends"
            )
        if self.num_workers is None:
            raise TypeError(
                "len(PackedIterableDataset) depends on how many DataLoader workers split the stream; pass "
                "num_workers= (the DataLoader's) to the dataset"
            )
        counts = self._shard_counts(self._epoch, max(1, self.num_workers))
        return int(counts.sum(axis=1).max())

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Stream:
        published = self._shared_epoch.news()  # only in a worker copy: the main process set an epoch since
        if published is not None:
            self._switch_epoch(published)
        self._generation.advance("iter() was called again", new_pass=True)
        workers, worker = worker_placement(self.source, num_workers=self.num_workers,
                                           has_lengths=self.lengths is not None)
        world, rank = self.num_replicas, self.rank
        resume = self._resume
        if resume is not None and resume["cursor"] == 0 and not resume["ready"] and resume["yielded"] == 0:
            resume = None  # nothing was consumed: start fresh wherever it was saved
        if resume is not None:
            check_same_split(resume, world, rank, workers, worker)
        if world > 1 and self.lengths is None and not self._steps_equalized and not self._warned:
            self._warned = True
            if rank == 0 and worker == 0:
                warnings.warn(
                    "PackedIterableDataset on several ranks without lengths=: ranks may run out at different "
                    "steps and the next collective would hang. Pass lengths= or iterate "
                    "warppack.equal_steps(loader)",
                    stacklevel=2,
                )
        counts = self.overlong_counts
        if counts is not None and rank == 0 and worker == 0 and self._warned_epoch != self._epoch:
            self._warned_epoch = self._epoch  # the counts cover every rank and worker: one of them says so
            warnings.warn(counts.message(f"PackedIterableDataset, epoch {self._epoch}"), stacklevel=2)
        stream = Stream(
            self.source, lengths=self.lengths, order=self._order(self._epoch) if self._config.indexed else None,
            indexed=self._config.indexed,
            budget=StreamBudget(self.max_tokens, self.max_seqs_per_bin or 0, self.buffer_size, self.overlong),
            collate=self.collator, epoch=self._epoch, generation=self._generation,
            placement=(world, rank, workers, worker),
            empties_target=self._empties_for(self._epoch, world, rank, workers, worker), resume=resume,
            on_step=self._on_step)
        self._live = stream
        return stream

    def _on_step(self, stream: Stream, first: bool) -> None:
        self._live = stream
        if first:
            self._resume = None  # a loaded state is used by one pass

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The position of this process's (or DataLoader worker's) stream, its packing window included."""
        live = self._live
        if live is not None and live.generation == self._generation.number:
            position = live.state()
        elif self._resume is not None:
            position = self._resume
        else:
            position = fresh_position(self._epoch, self.num_replicas, self.rank)
        return {"format": STATE_FORMAT, **position, **self._config.saved_options()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` on the next pass; refuses a state of other data or options (fields listed)."""
        # States of older versions may lack a checked field: only the fields a state holds must match.
        check_saved_options(state, expected_format=STATE_FORMAT, options=self._config.saved_options(),
                            checked=CHECKED, owner="PackedIterableDataset", noun="dataset", absent_ok=True)
        position = check_position(state, max_tokens=self.max_tokens, max_seqs_per_bin=self.max_seqs_per_bin,
                                  num_examples=len(self.source) if self._config.indexed else None)
        self._generation.advance(f"load_state_dict(epoch={position['epoch']})")
        self._epoch = position["epoch"]
        self._resume = position
        if get_worker_info() is None:
            self._shared_epoch.publish(self._epoch)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(self._epoch)

    def __repr__(self) -> str:
        return (
            f"PackedIterableDataset(max_tokens={self.max_tokens}, buffer_size={self.buffer_size}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, overlong={self.overlong!r}, epoch={self._epoch})"
        )
