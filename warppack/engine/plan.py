"""Planning: which sequences share a batch under a token budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Iterator, Optional

import numpy as np

from warppack import _packer
from warppack.engine.options import (
    DEFAULT_BUFFER_SIZE,
    OVERLONG_POLICIES,
    STRATEGIES,
    check_int32_count,
    check_overlong,
    check_seed,
    check_strategy,
)

__all__ = ["Plan", "as_lengths_array", "plan"]


def as_lengths_array(lengths: Any) -> np.ndarray:
    """Return a C-contiguous int32/int64 view of ``lengths`` (zero-copy when it already is one)."""
    if isinstance(lengths, np.ndarray) and lengths.dtype in (np.int32, np.int64):
        array = lengths
    else:
        if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):  # a torch tensor
            lengths = lengths.detach().cpu().numpy()
        array = np.asarray(lengths)
        if array.size == 0:
            array = array.astype(np.int64)
        elif array.dtype.kind == "b" or array.dtype.kind not in "iu":
            raise TypeError(
                f"lengths must be integers, got dtype {array.dtype}; pass token counts such as "
                f"np.asarray(lengths, dtype=np.int64)"
            )
        elif array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
            raise ValueError("lengths overflow int64; token counts must be below 2**63")
        if array.dtype not in (np.int32, np.int64):
            array = array.astype(np.int64)
    if array.ndim != 1:
        raise ValueError(f"lengths must be 1-D (one token count per example), got shape {array.shape}")
    return np.ascontiguousarray(array)


class _BinView(Sequence):
    """Lazy per-bin index arrays: slices of one flat array, so a 16M-sequence plan stays compact."""

    def __init__(self, items: np.ndarray, offsets: np.ndarray) -> None:
        self._items = items
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"bin {index} out of range for a plan of {n} bins")
        return self._items[self._offsets[index] : self._offsets[index + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        items, offsets = self._items, self._offsets
        for b in range(len(offsets) - 1):
            yield items[offsets[b] : offsets[b + 1]]

    def __repr__(self) -> str:
        # The first few bins, as lists: a plan of millions must not print them all.
        shown = ", ".join(str(self[b].tolist()) for b in range(min(len(self), 3)))
        more = f", ... ({len(self)} bins)" if len(self) > 3 else ""
        return f"[{shown}{more}]"


class Plan:
    """The result of :func:`plan`: bins of example indices, in emission order.

    ``items[k]`` is the example of the k-th packed piece and ``starts[k]``/``sizes[k]`` its token
    range (the whole example unless ``overlong`` truncated or split it). Bin ``b`` is
    ``items[bin_offsets[b]:bin_offsets[b + 1]]``. When every example is packed whole (the usual
    case) only ``items`` and ``bin_offsets`` are stored; ``starts``/``sizes`` are built on first use
    from the planned lengths, which the plan keeps a reference to (do not modify them in place).
    """

    def __init__(
        self,
        *,
        items: np.ndarray,
        bin_offsets: np.ndarray,
        max_tokens: int,
        strategy: str,
        starts: Optional[np.ndarray] = None,
        sizes: Optional[np.ndarray] = None,
        lengths: Optional[np.ndarray] = None,
        num_tokens: Optional[int] = None,
    ) -> None:
        if (starts is None or sizes is None) and lengths is None:
            raise ValueError("a Plan needs starts and sizes, or the lengths of whole examples")
        self.items = items
        self.bin_offsets = bin_offsets
        self.max_tokens = max_tokens
        self.strategy = strategy
        self._starts = starts
        self._sizes = sizes
        self._lengths = lengths
        self._num_tokens = num_tokens

    @property
    def starts(self) -> np.ndarray:
        """First token of each piece (int64); all zero when every example is packed whole."""
        if self._starts is None:
            self._starts = np.zeros(len(self.items), dtype=np.int64)
        return self._starts

    @property
    def sizes(self) -> np.ndarray:
        """Tokens of each piece (int64)."""
        if self._sizes is None:
            assert self._lengths is not None  # __init__ checked
            self._sizes = self._lengths.take(self.items).astype(np.int64, copy=False)
        return self._sizes

    @property
    def bins(self) -> Sequence:
        """Per-bin int64 arrays of example indices (views, no copy)."""
        return _BinView(self.items, self.bin_offsets)

    @property
    def num_bins(self) -> int:
        return len(self.bin_offsets) - 1

    @property
    def num_tokens(self) -> int:
        """Real tokens packed (after truncation, if any)."""
        if self._num_tokens is None:
            self._num_tokens = int(self.sizes.sum())
        return self._num_tokens

    def bin_tokens(self) -> np.ndarray:
        """Real tokens in each bin (int64, one entry per bin)."""
        if self.num_bins == 0:  # reduceat cannot take an empty index list
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(self.sizes, self.bin_offsets[:-1])  # no bin is empty

    @property
    def efficiency(self) -> float:
        """Real tokens / (num_bins * max_tokens); 1.0 means no padding at all."""
        if self.num_bins == 0:
            return 1.0
        return self.num_tokens / (self.num_bins * self.max_tokens)

    @property
    def lower_bound(self) -> int:
        """No packing can use fewer bins than ``ceil(total tokens / max_tokens)``."""
        return math.ceil(self.num_tokens / self.max_tokens)

    def __len__(self) -> int:
        return self.num_bins

    def __repr__(self) -> str:
        return (
            f"Plan(strategy={self.strategy!r}, max_tokens={self.max_tokens}, num_bins={self.num_bins}, "
            f"lower_bound={self.lower_bound}, efficiency={self.efficiency:.4f})"
        )


def plan(
    lengths: Any,
    max_tokens: int,
    *,
    strategy: str = "bfd",
    shuffle: bool = False,
    seed: int = 0,
    max_seqs_per_bin: Optional[int] = None,
    overlong: str = "error",
    buffer_size: int = DEFAULT_BUFFER_SIZE,
) -> Plan:
    """Pack ``lengths`` into bins of at most ``max_tokens`` tokens.

    ``strategy`` is ``"bfd"`` (best-fit decreasing, the default), ``"ffd"`` (first-fit decreasing)
    or ``"online"`` (best fit over a look-ahead window of ``buffer_size``, in stream order).
    ``shuffle=True`` permutes the order of the bins deterministically from ``seed``. ``overlong``
    says what happens to an example longer than the budget: ``"error"``, ``"truncate"`` or
    ``"split"`` (consecutive chunks, each its own sequence).

    >>> p = plan([5, 3, 8, 2], max_tokens=8)
    >>> [b.tolist() for b in p.bins], p.efficiency
    ([[2], [0, 1], [3]], 0.75)
    """
    array = as_lengths_array(lengths)
    budget = check_int32_count(max_tokens)
    check_strategy(strategy)
    check_overlong(overlong)
    if max_seqs_per_bin is not None:
        max_seqs_per_bin = check_int32_count(max_seqs_per_bin, name="max_seqs_per_bin")
    buffer_size = check_int32_count(buffer_size, name="buffer_size")
    seed = check_seed(seed)
    if strategy != "online":
        whole = _packer.plan_whole(
            array, budget, STRATEGIES[strategy], max_seqs_per_bin or 0, OVERLONG_POLICIES[overlong],
            bool(shuffle), int(seed) % 2**64,
        )
        if whole is not None:
            items, offsets, tokens = whole
            return Plan(items=items, bin_offsets=offsets, max_tokens=budget, strategy=strategy,
                        lengths=array, num_tokens=tokens)
    items, starts, sizes, offsets = _packer.plan_lengths(
        array,
        budget,
        STRATEGIES[strategy],
        max_seqs_per_bin or 0,
        OVERLONG_POLICIES[overlong],
        buffer_size,
        bool(shuffle),
        int(seed) % 2**64,
    )
    return Plan(
        items=items,
        starts=starts,
        sizes=sizes,
        bin_offsets=offsets,
        max_tokens=budget,
        strategy=strategy,
    )
