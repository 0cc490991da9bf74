"""The epoch a PackedIterableDataset's main process set, visible to DataLoader workers started earlier.

A DataLoader worker iterates its own copy of the dataset, made when the worker started. With
``persistent_workers=True`` that copy lives on across epochs, so ``set_epoch()`` in the main process
never reaches it through the copy; it reaches it through one int64 of shared memory (a CPU tensor
after ``share_memory_()``: inherited by forked workers, passed as shared memory to spawned ones).
The worker reads it when it starts a pass. HF ``datasets.IterableDataset`` keeps its epoch the same way.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

__all__ = ["SharedEpoch"]

_EPOCH_BITS = 32
_EPOCH_MASK = (1 << _EPOCH_BITS) - 1
_SERIAL_MASK = (1 << 31) - 1


class SharedEpoch:
    """``serial << 32 | epoch`` in one shared int64, written by the main process only.

    The serial counts publications, so a copy can tell "the main process set an epoch since I last
    looked" (apply it) from "my epoch differs because a state was loaded into me" (keep it). One
    int64 is read and written whole: a worker never sees half a publication.
    """

    def __init__(self, epoch: int) -> None:
        self._cell = torch.full((1,), epoch, dtype=torch.int64).share_memory_()
        self._seen = epoch

    def publish(self, epoch: int) -> None:
        """Set ``epoch`` for every copy's next pass (``0 <= epoch < 2**32``)."""
        serial = ((self._seen >> _EPOCH_BITS) + 1) & _SERIAL_MASK
        self._seen = (serial << _EPOCH_BITS) | epoch
        self._cell[0] = self._seen

    def news(self) -> Optional[int]:
        """The epoch published since this copy last looked (or was made), else None."""
        value = int(self._cell[0])
        if value == self._seen:
            return None
        self._seen = value
        return value & _EPOCH_MASK

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        # A plain pickle (torch.save, deepcopy) copies the tensor out of shared memory: share the copy
        # again so that workers forked from this object see its publications (no-op when shared).
        self._cell.share_memory_()
