"""Bins of one epoch as ranges of flat arrays: cheap to extend, fork and gather (PackedBatchSampler)."""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["Bins", "Pieces", "halves", "sort_keys"]

#: (items, sizes) of a bin's pieces: planned positions and their token counts.
Pieces = Tuple[np.ndarray, np.ndarray]


class Bins:
    """Bins as contiguous ranges ``[begin, end)`` of flat arrays of planned positions and piece sizes.

    Positions below ``len(items)`` are in the plan's own arrays; bins made later (splits,
    rebalancing) live in small ``extra_*`` arrays after them, so adding a few never copies the plan.
    A fork shares every array it had: ``append`` replaces arrays, it never writes into them.
    """

    def __init__(self, items: np.ndarray, sizes: np.ndarray, offsets: np.ndarray,
                 perm: Optional[np.ndarray] = None) -> None:
        self.items: np.ndarray = items
        self.sizes: np.ndarray = sizes
        self.perm: Optional[np.ndarray] = perm  # planned position -> dataset index (None: the same)
        self.extra_items: np.ndarray = np.zeros(0, dtype=np.int64)
        self.extra_sizes: np.ndarray = self.extra_items
        self.begin: np.ndarray = offsets[:-1]
        self.end: np.ndarray = offsets[1:]
        self.tokens, self.sumsq = _sums(sizes, offsets)  # per bin: real tokens, Σlen²

    @property
    def num_bins(self) -> int:
        return len(self.begin)

    def fork(self) -> "Bins":
        return copy.copy(self)

    def counts(self, ids: np.ndarray) -> np.ndarray:
        return self.end[ids] - self.begin[ids]

    def pieces(self, b: int) -> Pieces:
        lo, hi, base = int(self.begin[b]), int(self.end[b]), len(self.items)
        if lo >= base:
            return self.extra_items[lo - base:hi - base], self.extra_sizes[lo - base:hi - base]
        return self.items[lo:hi], self.sizes[lo:hi]

    def gather(self, ids: np.ndarray) -> Pieces:
        """Flat (items, sizes) of the pieces of bins ``ids``, in bin order."""
        counts = self.counts(ids)
        total = int(counts.sum()) if len(ids) else 0
        if not total:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        first = np.cumsum(counts) - counts
        index = np.arange(total, dtype=np.int64) - np.repeat(first - self.begin[ids], counts)
        base = len(self.items)
        if not len(self.extra_items):
            return self.items[index], self.sizes[index]
        extra = index >= base
        items = np.empty(total, dtype=np.int64)
        sizes = np.empty(total, dtype=np.int64)
        items[~extra], sizes[~extra] = self.items[index[~extra]], self.sizes[index[~extra]]
        items[extra], sizes[extra] = self.extra_items[index[extra] - base], self.extra_sizes[index[extra] - base]
        return items, sizes

    def examples(self, b: int) -> np.ndarray:
        """Dataset indices of bin ``b``."""
        items = self.pieces(b)[0]
        return items if self.perm is None else self.perm[items]

    def append(self, items: np.ndarray, sizes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Add bins ``items[offsets[k]:offsets[k + 1]]``; returns their ids."""
        start = len(self.items) + len(self.extra_items)
        first = self.num_bins
        tokens, sumsq = _sums(sizes, offsets)
        self.extra_items = np.concatenate([self.extra_items, items])
        self.extra_sizes = np.concatenate([self.extra_sizes, sizes])
        self.begin = np.concatenate([self.begin, start + offsets[:-1]])
        self.end = np.concatenate([self.end, start + offsets[1:]])
        self.tokens = np.concatenate([self.tokens, tokens])
        self.sumsq = np.concatenate([self.sumsq, sumsq])
        return np.arange(first, self.num_bins, dtype=np.int64)


def _sums(sizes: np.ndarray, offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if len(offsets) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.add.reduceat(sizes, offsets[:-1]), np.add.reduceat(sizes * sizes, offsets[:-1])


def sort_keys(bins: Bins, ids: np.ndarray, max_tokens: int) -> np.ndarray:
    """Real tokens (quantised to 1/1024 of the budget) first, Σlen² second, in one int64 per bin."""
    levels = min(1024, max_tokens)
    tokens = bins.tokens[ids] * levels // max_tokens
    # Σlen² <= tokens² <= max_tokens², so this fits in 52 bits and the total in 63.
    sumsq = (bins.sumsq[ids].astype(np.float64) / float(max_tokens) ** 2 * 2.0**52).astype(np.int64)
    return (tokens << 52) + sumsq


def halves(items: np.ndarray, sizes: np.ndarray) -> List[Pieces]:
    """Split a bin in two of near-equal tokens (longest first onto the lighter side); both non-empty."""
    sides: List[List[int]] = [[], []]
    load = [0, 0]
    for k in np.argsort(-sizes, kind="stable").tolist():
        side = 0 if load[0] <= load[1] else 1
        sides[side].append(k)
        load[side] += int(sizes[k])
    return [(items[s], sizes[s]) for s in (np.asarray(x, dtype=np.int64) for x in sides)]
