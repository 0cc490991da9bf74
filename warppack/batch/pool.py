"""A small pool of reusable host buffers, so steady-state collation allocates nothing."""

from __future__ import annotations

import threading
from typing import Any, List, Optional

import torch

__all__ = ["BufferPool"]


def _storage_in_use(buffer: torch.Tensor) -> bool:
    """True while any tensor other than ``buffer`` itself (a view handed out) shares its storage."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # private API gone: never reuse, always correct
        return True
    # One reference from ``buffer``, one from the temporary storage object made for the query.
    return use_count(buffer.untyped_storage()._cdata) > 2


class _Slot:
    __slots__ = ("buffer", "copy_done")

    def __init__(self, buffer: torch.Tensor) -> None:
        self.buffer = buffer
        self.copy_done: Any = None  # a CUDA event recorded after the last async copy out of it


class BufferPool:
    """Hands out uint8 host buffers of at least ``nbytes``, recycling those nobody uses any more.

    A buffer is reused only when no view of it is alive (every batch made from it was dropped) and
    no asynchronous device copy out of it is still pending, so reuse can never change a batch that
    someone still sees. Buffers are pinned when ``pinned=True`` (fast, asynchronous host→device).

    Safe to share between threads: a lock covers the choice of a buffer and the creation of the
    view handed out, and that view is what marks the buffer as taken, so two callers never get the
    same buffer.
    """

    def __init__(self, *, pinned: bool, max_buffers: int = 4) -> None:
        self.pinned = pinned
        self.max_buffers = max_buffers
        self._slots: List[_Slot] = []
        self._lock = threading.Lock()
        self.allocations = 0  # buffers created so far; constant in steady state

    def _free(self, slot: _Slot) -> bool:
        if _storage_in_use(slot.buffer):
            return False
        if slot.copy_done is not None and not slot.copy_done.query():
            return False
        return True

    def _allocate(self, nbytes: int) -> torch.Tensor:
        self.allocations += 1
        # Round up so that slightly larger batches later still fit the same buffer.
        capacity = max(4096, 1 << (max(nbytes, 1) - 1).bit_length())
        return torch.empty(capacity, dtype=torch.uint8, pin_memory=self.pinned)

    def acquire(self, nbytes: int) -> torch.Tensor:
        """A view of exactly ``nbytes`` bytes of a buffer nobody else holds; its contents are undefined.

        The buffer returns to the pool once the view and every tensor made from it are gone.
        """
        with self._lock:
            best: Optional[_Slot] = None
            for slot in self._slots:
                if slot.buffer.numel() >= nbytes and self._free(slot):
                    if best is None or slot.buffer.numel() < best.buffer.numel():
                        best = slot
            if best is not None:
                best.copy_done = None
                # Made under the lock: until this view exists the buffer looks free to other callers.
                return best.buffer[:nbytes]
            buffer = self._allocate(nbytes)
            if len(self._slots) < self.max_buffers:
                self._slots.append(_Slot(buffer))
            else:
                # Replace a free slot that was too small, so the pool adapts to larger batches.
                for i, slot in enumerate(self._slots):
                    if self._free(slot):
                        self._slots[i] = _Slot(buffer)
                        break
            return buffer[:nbytes]

    def note_copy(self, buffer: torch.Tensor, device: torch.device) -> None:
        """Record that an (possibly asynchronous) copy out of ``buffer`` was queued on ``device``."""
        if device.type != "cuda":
            return
        with self._lock:
            for slot in self._slots:
                if slot.buffer.data_ptr() == buffer.data_ptr():
                    event = torch.cuda.Event()
                    event.record(torch.cuda.current_stream(device))
                    slot.copy_done = event
                    return
