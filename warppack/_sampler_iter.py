"""One pass of a PackedBatchSampler over the rest of an epoch: the batches of one rank, or of all interleaved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List

if TYPE_CHECKING:
    from warppack._sampler import PackedBatchSampler

__all__ = ["BatchIterator"]


class BatchIterator(Iterator[List[int]]):
    """Yields the batches from step ``start``; checks on every batch that the sampler was not reconfigured.

    Its position (``epoch``, ``history``, ``start``, ``step``) is what ``state_dict()`` saves while the
    pass runs.
    """

    def __init__(self, sampler: "PackedBatchSampler", start: int) -> None:
        self._sampler = sampler
        self.generation = sampler._generation.number
        self.epoch = sampler._epoch
        self.history = [list(h) for h in sampler._history]
        self.layout = sampler._layout(self.epoch, self.history)
        if start > self.layout.num_steps:
            raise ValueError(
                f"the loaded state is at step {start} of epoch {self.epoch}, but this epoch has only "
                f"{self.layout.num_steps} steps here: the state does not belong to this sampler"
            )
        self.start = start
        # interleaved: one slot per (step, rank), all ranks' batches in turn; else one slot per step.
        self.slot = start * (sampler.num_replicas if sampler.interleaved else 1)
        self.started = False

    @property
    def step(self) -> int:
        """Steps of the current layout handed out so far (a step is complete once every slot is out)."""
        return self.slot // self._sampler.num_replicas if self._sampler.interleaved else self.slot

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> List[int]:
        sampler = self._sampler
        sampler._generation.check(self.generation, epoch=self.epoch)
        sampler._live = self
        if not self.started:
            self.started = True
            sampler._history, sampler._start = [], 0  # the resume point is used once
        grid = self.layout.grid
        if sampler.interleaved:
            world = sampler.num_replicas
            if self.slot >= grid.size:
                raise StopIteration
            step, rank = divmod(self.slot, world)
        else:
            if self.slot >= grid.shape[0]:
                raise StopIteration
            step, rank = self.slot, sampler.rank
        self.slot += 1
        return self.layout.batch(step, rank)
