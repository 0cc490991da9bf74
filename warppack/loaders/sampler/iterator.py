"""One pass of a PackedBatchSampler over the rest of an epoch: the batches of one rank, or of all interleaved."""

from __future__ import annotations

from typing import Callable, Iterator, List, Sequence

from warppack.loaders.sampler.layout import Layout
from warppack.loaders.state import Generation, OneThread

__all__ = ["BatchIterator"]


class BatchIterator(Iterator[List[int]]):
    """Yields the batches of ``layout`` from step ``start``; checks on every batch that its owner was not reconfigured.

    Its position (``epoch``, ``history``, ``start``, ``step``) is what the sampler's ``state_dict()``
    saves while the pass runs. ``on_step(iterator, first)`` tells the owner, before every batch, which
    pass is live and whether it is the pass's first batch (the owner's resume point is then used up).
    """

    def __init__(self, layout: Layout, *, epoch: int, history: Sequence[Sequence[int]], start: int,
                 generation: Generation, num_replicas: int, rank: int, interleaved: bool,
                 on_step: Callable[["BatchIterator", bool], None]) -> None:
        self.layout = layout
        self.epoch = epoch
        self.history = [list(h) for h in history]
        self.start = start
        self.generation = generation.number
        self._owner_generation = generation
        self._num_replicas, self._rank, self._interleaved = num_replicas, rank, interleaved
        self._on_step = on_step
        # interleaved: one slot per (step, rank), all ranks' batches in turn; else one slot per step.
        self.slot = start * (num_replicas if interleaved else 1)
        self.started = False
        self.one_thread = OneThread("PackedBatchSampler")

    @property
    def step(self) -> int:
        """Steps of the current layout handed out so far (a step is complete once every slot is out)."""
        return self.slot // self._num_replicas if self._interleaved else self.slot

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> List[int]:
        with self.one_thread:
            self._owner_generation.check(self.generation, epoch=self.epoch)
            first, self.started = not self.started, True
            self._on_step(self, first)
            grid = self.layout.grid
            if self._interleaved:
                if self.slot >= grid.size:
                    raise StopIteration
                step, rank = divmod(self.slot, self._num_replicas)
            else:
                if self.slot >= grid.shape[0]:
                    raise StopIteration
                step, rank = self.slot, self._rank
            batch = self.layout.batch(step, rank)
            self.slot += 1
            return batch
