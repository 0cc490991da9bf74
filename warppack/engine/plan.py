"""Planning: which sequences share a batch under a token budget."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Iterator, Optional

import numpy as np

from warppack import _packer
from warppack.engine.options import (
    DEFAULT_BUFFER_SIZE, INT64_MAX, OVERLONG_POLICIES, STRATEGIES, check_flag, check_int32_count,
    check_max_seqs_per_bin, check_overlong, check_seed, check_strategy, index_past_int64, is_int,
)

__all__ = ["Plan", "as_lengths_array", "plan"]

_ENGINE_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _not_lengths(got: str) -> TypeError:
    return TypeError(
        f"lengths must hold one integer token count per example, got {got}; count the tokens with "
        f"warppack.lengths_of(dataset_or_examples) and pass that"
    )


def _check_items(values: Any) -> None:
    """Items of a Python list/tuple: numpy would turn bools into 1/0, rows into a 2-D or ragged error."""
    odd = (bool, np.bool_, Mapping, str, bytes)
    if not any(issubclass(kind, odd) or hasattr(kind, "__len__") for kind in set(map(type, values))):
        return
    for index, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"lengths[{index}] is the bool {value}; lengths must be integer token counts")
        if isinstance(value, (Mapping, str, bytes)) or hasattr(value, "__len__"):
            raise _not_lengths(f"lengths[{index}] = {repr(value)[:40]} ({type(value).__name__})")


def _overflow(index: int, value: Any) -> ValueError:
    return ValueError(f"lengths[{index}] = {int(value)} overflows int64; token counts must be below 2**63")


def _out_of_range(values: Any) -> Optional[ValueError]:
    """The error for Python ints that fit no int64 (numpy made floats or objects of them), if any."""
    for index, value in enumerate(values):
        if is_int(value) and not -INT64_MAX - 1 <= int(value) <= INT64_MAX:
            return _overflow(index, value)
    return None


def as_lengths_array(lengths: Any) -> np.ndarray:
    """``lengths`` as a C-contiguous 1-D int32/int64 array (zero-copy when it already is one).

    Anything that is not one integer count per example raises a TypeError/ValueError saying what
    to pass: examples or a dataset (``warppack.lengths_of``), floats, bools, nested or 2-D values,
    values past int64.
    """
    if isinstance(lengths, np.ndarray) and lengths.dtype in _ENGINE_DTYPES and lengths.ndim == 1:
        return np.ascontiguousarray(lengths)
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):  # a torch tensor
        lengths = lengths.detach().cpu().numpy()
    if hasattr(lengths, "column_names") or isinstance(lengths, (Mapping, str, bytes)):
        raise _not_lengths(f"a {type(lengths).__module__}.{type(lengths).__name__}")
    if not hasattr(lengths, "__len__") and not hasattr(lengths, "__array__"):
        raise _not_lengths(f"{repr(lengths)[:40]} ({type(lengths).__name__})")
    if isinstance(lengths, (list, tuple)):
        _check_items(lengths)
    try:
        array = np.asarray(lengths)
    except (ValueError, OverflowError) as error:
        unreadable = _not_lengths(f"values numpy cannot read as one number each ({error})")
        raise _out_of_range(lengths) or unreadable from None
    # numpy holds ints past int64 as floats (a list with negatives) or objects
    widened = array.dtype == object or (array.dtype.kind == "f" and isinstance(lengths, (list, tuple)))
    overflow = _out_of_range(lengths) if widened and array.ndim == 1 else None
    if overflow is not None:
        raise overflow
    if array.dtype == object:
        raise _not_lengths(f"values of dtype object such as {repr(array.reshape(-1)[:1].tolist())[:40]}")
    if array.ndim != 1:
        raise ValueError(
            f"lengths must be 1-D (one token count per example), got shape {array.shape}; for token ids "
            f"pass warppack.lengths_of(examples)"
        )
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"lengths must be integer token counts, got dtype {array.dtype} (e.g. {array[0]!r}); pass "
            f"np.asarray(lengths, dtype=np.int64) if they are whole numbers"
        )
    high = index_past_int64(array)
    if high is not None:
        raise _overflow(high, array[high])
    if array.dtype not in _ENGINE_DTYPES:
        array = array.astype(np.int64)
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
    from the planned lengths, which the plan keeps a reference to: do not modify them before reading
    ``sizes`` (where the change shows, as another total or a size out of range, ``sizes`` raises).
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
        if (starts is None or sizes is None) and (lengths is None or num_tokens is None):
            raise ValueError("a Plan needs starts and sizes, or the lengths and num_tokens of whole examples")
        self.items, self.bin_offsets = items, bin_offsets
        self.max_tokens, self.strategy = max_tokens, strategy
        self._starts, self._sizes = starts, sizes
        self._lengths, self._num_tokens = lengths, num_tokens

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
            sizes = self._lengths.take(self.items).astype(np.int64, copy=False)
            changed = sizes.size and (sizes.min() < 1 or sizes.max() > self.max_tokens)
            if changed or int(sizes.sum()) != self._num_tokens:
                raise ValueError(
                    "the lengths passed to plan() changed after planning, so this plan's sizes are no longer "
                    "known; pass plan() a copy (lengths.copy()) of lengths you modify"
                )
            self._sizes = sizes
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

    The engine runs without the GIL, and reads each length once: plans of whole examples read the
    array in place (the engine keeps its own copy of what it read), truncating, splitting and
    online plans a private copy taken first. So a thread writing ``lengths`` meanwhile gets the
    plan of the values read (or the error about them), never an invalid one.

    >>> p = plan([5, 3, 8, 2], max_tokens=8)
    >>> [b.tolist() for b in p.bins], p.efficiency
    ([[2], [0, 1], [3]], 0.75)
    """
    array = as_lengths_array(lengths)
    budget = check_int32_count(max_tokens)
    options = (
        budget,
        STRATEGIES[check_strategy(strategy)],
        check_max_seqs_per_bin(max_seqs_per_bin) or 0,
        OVERLONG_POLICIES[check_overlong(overlong)],
    )
    window = check_int32_count(buffer_size, name="buffer_size")
    order = (check_flag(shuffle, name="shuffle"), check_seed(seed) % 2**64)
    if strategy != "online":
        whole = _packer.plan_whole(array, *options, *order)
        if whole is not None:
            items, offsets, tokens = whole
            return Plan(items=items, bin_offsets=offsets, max_tokens=budget, strategy=strategy, lengths=array,
                        num_tokens=tokens)
    items, starts, sizes, offsets = _packer.plan_lengths(array, *options, window, *order)
    return Plan(items=items, bin_offsets=offsets, max_tokens=budget, strategy=strategy, starts=starts,
                sizes=sizes)
