"""Typed surface of the native boundary (warppack/_packer.pyx over cpp/).

Every engine error is a ValueError whose message names the index, the value, the setting and the
fix; wrong array types, dtypes or layouts are TypeError/ValueError saying what was received.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]

def plan_lengths(
    lengths: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    max_tokens: int,
    strategy: int,
    max_seqs_per_bin: int,
    overlong: int,
    buffer_size: int,
    shuffle: bool,
    seed: int,
) -> Tuple[Int64Array, Int64Array, Int64Array, Int64Array]:
    """Packs examples of the given lengths into bins of at most ``max_tokens`` tokens.

    ``lengths`` is a C-contiguous 1-D int32 or int64 array, copied once before the engine runs (it
    reads the lengths in several passes without the GIL, so a thread writing the caller's array
    meanwhile must not make the passes disagree). ``strategy``: 0 best-fit
    decreasing, 1 first-fit decreasing, 2 online (``OnlinePacker`` over the examples in order, with
    ``buffer_size``). ``overlong``: 0 error, 1 truncate to ``max_tokens``, 2 split into chunks of
    ``max_tokens``. ``max_seqs_per_bin`` 0 means unlimited. ``shuffle`` permutes the order of the bins
    (not their contents) deterministically from ``seed`` (taken modulo 2**64).

    Returns ``(items, starts, sizes, bin_offsets)``: piece k is tokens
    ``[starts[k], starts[k] + sizes[k])`` of example ``items[k]``; bin b is pieces
    ``bin_offsets[b]:bin_offsets[b + 1]``, longest first.
    """

def plan_whole(
    lengths: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    max_tokens: int,
    strategy: int,
    max_seqs_per_bin: int,
    overlong: int,
    shuffle: bool,
    seed: int,
) -> Optional[Tuple[Int64Array, Int64Array, int]]:
    """The ``plan_lengths`` plan of bfd (0) or ffd (1) when every example fits whole, in less memory.

    Returns ``(items, bin_offsets, num_tokens)``: one index per example (bin b is
    ``items[bin_offsets[b]:bin_offsets[b + 1]]``) and the sum of the lengths; the bins are exactly
    those of ``plan_lengths`` with the same arguments. Returns None when ``overlong`` is truncate or
    split and some example is longer than ``max_tokens`` (call ``plan_lengths``); raises like it
    otherwise. Uses 12 bytes per example (output included) and about 16 per bin. ``lengths`` is
    read in place, each entry exactly once: a thread writing it meanwhile gets the plan of the
    values read, never an inconsistent one.
    """

class OnlinePacker:
    """Best-fit packing of a stream over a window of at most ``buffer_size`` pending items.

    An item of exactly ``max_tokens`` tokens (or any item when ``max_seqs_per_bin == 1``) is emitted
    as a bin at once. Otherwise it waits in the window; when a push makes the window hold
    ``buffer_size + 1`` items, one bin is closed: it starts with the longest pending item and takes
    the longest items that still fit (ties to the earliest pushed). The state depends only on the
    pushed ``(key, length)`` sequence: pushing ``pending()`` with ``pending_lengths()`` into a fresh
    packer restores it.
    """

    def __init__(self, max_tokens: int, max_seqs_per_bin: int = 0, buffer_size: int = 1024) -> None: ...
    def push(self, key: int, length: int) -> list[Int64Array]:
        """Adds one item (1 <= length <= max_tokens); returns the bins (arrays of keys) it closed."""
    def flush(self) -> list[Int64Array]:
        """Closes bins until the window is empty and returns them."""
    def pending(self) -> Int64Array:
        """Keys in the window, in push order."""
    def pending_lengths(self) -> Int64Array:
        """Lengths of ``pending()``, same order."""
    def __len__(self) -> int:
        """Number of pending items."""
    def __reduce__(self) -> tuple: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def max_seqs_per_bin(self) -> int: ...
    @property
    def buffer_size(self) -> int: ...

TokenArray = npt.NDArray[np.int32] | npt.NDArray[np.int64]
Labels = Optional[Sequence[Optional[TokenArray]]]

def write_layout(
    ids: Sequence[TokenArray], labels: Labels, total_tokens: int, num_cu: int, pad_token_id: int,
    label_pad_id: int, input_ids_out: Int64Array, labels_out: Int64Array, position_ids_out: Int64Array,
    seq_idx_out: npt.NDArray[np.int32], cu_seqlens_out: npt.NDArray[np.int32],
) -> None:
    """Writes one packed row (the "Batch buffer" contract of docs/architecture.md).

    Inputs are C-contiguous 1-D int32 or int64 arrays, read in place and widened while copying
    (labels entries may be None: the ids are used). The four token outputs must hold exactly
    ``total_tokens`` entries (< 2**31) and ``cu_seqlens_out``
    exactly ``num_cu`` (>= n + 1, plus one when there is padding); all outputs must be writable
    C-contiguous arrays (use ``tensor.numpy()`` for torch CPU tensors). The first label of every
    sequence and all padding labels become ``label_pad_id``; padding tokens have seq_idx -1 and
    come in segments (of at most 512 tokens where ``num_cu`` has spare entries) whose positions
    restart at 0, and ``cu_seqlens`` ends with ``total_tokens`` repeated up to ``num_cu``.
    """

def write_layout_into(
    ids: Sequence[TokenArray], labels: Labels, total_tokens: int, num_cu: int, pad_token_id: int,
    label_pad_id: int, buffer: npt.NDArray[np.uint8],
) -> None:
    """``write_layout`` into one writable, 8-byte aligned, C-contiguous uint8 buffer of at least
    ``28 * total_tokens + 4 * num_cu`` bytes: input_ids, labels, position_ids (int64), seq_idx,
    cu_seqlens (int32), back to back (``warppack.batch.packed.BufferLayout``). One buffer to hand over
    instead of five views: this runs once per batch.
    """

