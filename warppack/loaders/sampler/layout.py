"""Epoch planning and rank balancing for PackedBatchSampler: one plan, dealt as a ``steps × ranks`` grid.

Every rank computes the same layout from the options, ``seed`` and the epoch. Bins are raised to a
multiple of the world size by splitting the smallest, sorted by size and dealt a step at a time, so
the bins that run together are alike; few bins per rank get a lowered budget or a levelled tail.
"""

from __future__ import annotations

import heapq
from typing import List, Optional, Sequence, Tuple

import numpy as np

from warppack.engine.plan import plan
from warppack.loaders.sampler.bins import Bins, Pieces, halves, sort_keys
from warppack.loaders.sampler.config import SamplerConfig

__all__ = ["Layout", "epoch_bins", "epoch_layout"]


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**64, *words])


_BLOCK = 64


def _epoch_permutation(rng: np.random.Generator, n: int, *, whole: bool) -> np.ndarray:
    """The order examples are planned in this epoch.

    Best/first-fit decreasing only look at the order to break ties between equal lengths, so
    shuffling blocks of 64 examples (and rotating inside them) re-draws the bins as well as a full
    permutation does, at a fraction of its memory traffic (it matters at 10M examples, on resume).
    The online strategy packs in this order, so it gets a full permutation.
    """
    if whole or n < 4 * _BLOCK:
        return rng.permutation(n)
    blocks = n // _BLOCK
    order = rng.permutation(blocks)
    inner = (np.arange(_BLOCK) + int(rng.integers(_BLOCK))) % _BLOCK
    perm = np.empty(n, dtype=np.int64)
    perm[: blocks * _BLOCK] = (order[:, None] * _BLOCK + inner[None, :]).ravel()
    perm[blocks * _BLOCK:] = np.arange(blocks * _BLOCK, n)
    return perm


def _split_to_fill(bins: Bins, live: np.ndarray, need: int) -> np.ndarray:
    """Split the smallest multi-sequence bins until ``need`` more bins exist (or nothing can be split)."""
    multi = live[bins.counts(live) >= 2]
    if not len(multi) or not need:
        return live
    if len(multi) > need:  # only the `need` smallest (by tokens, then id) can be picked
        tokens = bins.tokens[multi]
        multi = multi[tokens <= np.partition(tokens, need - 1)[need - 1]]
    pick = multi[np.lexsort((multi, bins.tokens[multi]))[:need]]
    # Heap of (tokens, tie, bin): a bin is ("old", id) or ("new", index into `made`).
    heap: List[Tuple[int, int, Tuple[str, int]]] = [(int(bins.tokens[b]), k, ("old", int(b)))
                                                    for k, b in enumerate(pick)]
    heapq.heapify(heap)
    made: List[Optional[Pieces]] = []  # None: split again since
    removed: List[int] = []
    tie = len(heap)
    while need and heap:
        _, _, (kind, ref) = heapq.heappop(heap)
        if kind == "old":
            parts = halves(*bins.pieces(ref))
            removed.append(ref)
        else:
            again = made[ref]
            assert again is not None, "a bin leaves the heap when it is split, so it is split once"
            parts = halves(*again)
            made[ref] = None
        need -= 1
        for items, sizes in parts:
            made.append((items, sizes))
            if len(items) >= 2:
                tie += 1
                heapq.heappush(heap, (int(sizes.sum()), tie, ("new", len(made) - 1)))
    kept = [m for m in made if m is not None]
    counts = np.asarray([len(m[0]) for m in kept], dtype=np.int64)
    ids = bins.append(np.concatenate([m[0] for m in kept]), np.concatenate([m[1] for m in kept]),
                      np.concatenate([[0], np.cumsum(counts)]))
    keep = np.ones(bins.num_bins, dtype=bool)
    keep[removed] = False
    return np.concatenate([live[keep[live]], ids])


def _grid(bins: Bins, live: np.ndarray, world: int, steps: int, max_tokens: int) -> np.ndarray:
    """Sorted by size and dealt ``world`` at a time: the bins of one step are alike."""
    order = live[np.argsort(-sort_keys(bins, live, max_tokens), kind="stable")]
    grid = np.full(steps * world, -1, dtype=np.int64)
    grid[: len(order)] = order
    return grid.reshape(steps, world)


def _imbalance(bins: Bins, grid: np.ndarray) -> float:
    tokens = np.where(grid >= 0, bins.tokens[np.maximum(grid, 0)], 0)
    mean = tokens.mean(axis=1).sum()
    return float(tokens.max(axis=1).sum() / mean) if mean else 1.0


def _rebalanced(bins: Bins, live: np.ndarray, slots: int,
                config: SamplerConfig) -> Optional[Tuple[Bins, np.ndarray]]:
    """Re-pack the examples of ``live`` under the smallest budget that still fits ``slots`` bins.

    With the step count fixed by the full-budget plan, the slack of the last steps is spread over all
    bins instead of leaving one step of near-empty bins next to full ones (few bins per rank).
    Examples longer than the lowered budget keep a bin of their own. Returns ``(bins, live)`` or None.
    """
    items, sizes = bins.gather(live)
    if not len(sizes):
        return None
    max_tokens = config.max_tokens

    def pack(capacity: int) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        big = sizes > capacity
        small = ~big
        packed = plan(sizes[small], capacity, strategy=config.strategy, max_seqs_per_bin=config.max_seqs_per_bin)
        if packed.num_bins + int(big.sum()) > slots:
            return None
        n_big = int(big.sum())
        offsets = np.concatenate([packed.bin_offsets, packed.bin_offsets[-1] + np.arange(1, n_big + 1)])
        return (np.concatenate([items[small][packed.items], items[big]]),
                np.concatenate([packed.sizes, sizes[big]]), offsets)

    low, high = max(1, -(-int(sizes.sum()) // slots)), max_tokens
    best = None
    for _ in range(8):  # a few plans: each is O(n) in C++
        if low > high:
            break
        middle = (low + high) // 2
        packed = pack(middle)
        if packed is None:
            low = middle + 1
        else:
            best, high = packed, middle - 1
    if best is None:
        return None
    twin = bins.fork()
    return twin, twin.append(*best)


def _level_tail(bins: Bins, grid: np.ndarray, rows: int,
                config: SamplerConfig) -> Optional[Tuple[Bins, np.ndarray]]:
    """Re-deal the pieces of the last ``rows`` steps of a sorted grid longest-first onto the lightest bin.

    The smallest bins of a plan (its tail) differ most in size; spreading their sequences evenly
    over the same number of bins evens out the steps they make. Returns ``(bins, grid)`` or None
    when a piece would not fit (the caller keeps what it had).
    """
    world = grid.shape[1]
    tail = grid[-rows:].ravel()
    items, sizes = bins.gather(tail[tail >= 0])
    slots = rows * world
    max_tokens, max_seqs = config.max_tokens, config.max_seqs_per_bin or len(sizes) + 1
    heap = [(0, 0, b) for b in range(slots)]
    members: List[List[int]] = [[] for _ in range(slots)]
    for k in np.argsort(-sizes, kind="stable").tolist():
        load, count, b = heapq.heappop(heap)
        size = int(sizes[k])
        if load + size > max_tokens or count >= max_seqs:
            return None
        members[b].append(k)
        heapq.heappush(heap, (load + size, count + 1, b))
    filled = [m for m in members if m]
    order = np.asarray([k for m in filled for k in m], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in filled])]).astype(np.int64)
    twin = bins.fork()
    ids = twin.append(items[order], sizes[order], offsets)
    head = grid[:-rows].ravel()
    live = np.concatenate([head[head >= 0], ids])
    return twin, _grid(twin, live, world, grid.shape[0], max_tokens)


#: Σ_step max_rank(tokens) / Σ_step mean_rank(tokens) under which a layout is not worth improving.
_EVEN_ENOUGH = 1.005


def _schedule(bins: Bins, live: np.ndarray, world: int, *, rng: np.random.Generator,
              config: SamplerConfig) -> Tuple[Bins, np.ndarray]:
    """Deal the ``live`` bins into a ``[steps, world]`` grid of bin ids (-1: an empty batch).

    Returns ``(bins, grid)``: ``bins`` gains the bins made by splitting or rebalancing.
    """
    max_tokens = config.max_tokens
    total = len(live)
    if config.drop_last:
        steps = total // world
        if steps * world < total:  # drop the least-filled bins, not arbitrary ones
            keep = np.argsort(sort_keys(bins, live, max_tokens), kind="stable")[total - steps * world:]
            live = live[np.sort(keep)]
        grid = _grid(bins, live, world, steps, max_tokens)
    else:
        steps = -(-total // world)
        live = _split_to_fill(bins, live, steps * world - total)
        grid = _grid(bins, live, world, steps, max_tokens)
        # With few bins per rank the last steps mix near-empty bins with full ones. Keeping the step
        # count, try a lower budget for the whole epoch, then level the tail; keep the most even.
        best = _imbalance(bins, grid) if steps else 1.0
        if best > _EVEN_ENOUGH:
            lowered = _rebalanced(bins, live, steps * world, config)
            if lowered is not None:
                twin, twin_live = lowered
                twin_live = _split_to_fill(twin, twin_live, steps * world - len(twin_live))
                twin_grid = _grid(twin, twin_live, world, steps, max_tokens)
                if _imbalance(twin, twin_grid) < best:
                    bins, grid, best = twin, twin_grid, _imbalance(twin, twin_grid)
        for rows in (1, 2, 3):
            if best <= _EVEN_ENOUGH or rows >= steps:
                break
            leveled = _level_tail(bins, grid, rows, config)
            if leveled is not None and _imbalance(*leveled) < best:
                (bins, grid), best = leveled, _imbalance(*leveled)
    if config.shuffle:
        grid = rng.permuted(grid, axis=1)[rng.permutation(steps)]
    elif steps:
        # Rotate so that no rank always gets the largest bin of its step.
        cols = (np.arange(world)[None, :] + np.arange(steps)[:, None]) % world
        grid = np.take_along_axis(grid, cols, axis=1)
    return bins, grid


class Layout:
    """The grid of one epoch on one world size: ``grid[step, rank]`` is a bin id of ``bins`` (-1: empty).

    ``replayed[i]`` is how many steps the layout of ``history[i]`` had: a saved history must not
    claim more (its bins would be taken as done, and the epoch would end early).
    """

    __slots__ = ("bins", "grid", "steps_before", "replayed")

    def __init__(self, bins: Bins, grid: np.ndarray, steps_before: int, replayed: Sequence[int] = ()) -> None:
        self.bins = bins
        self.grid = grid
        self.steps_before = steps_before  # steps run earlier this epoch on other world sizes
        self.replayed = list(replayed)

    @property
    def num_steps(self) -> int:
        return int(self.grid.shape[0])

    def empty_batches(self, start: int) -> np.ndarray:
        """Per rank, the empty batches from step ``start`` to the end of the layout."""
        return (self.grid[start:] < 0).sum(axis=0)

    def batch(self, step: int, rank: int) -> List[int]:
        """Dataset indices of the batch of ``rank`` at ``step``."""
        b = int(self.grid[step, rank])
        return [] if b < 0 else self.bins.examples(b).tolist()


def epoch_bins(config: SamplerConfig, epoch: int) -> Bins:
    """The plan of all examples for ``epoch``, before it is dealt to ranks."""
    lengths = config.lengths
    perm: Optional[np.ndarray] = None
    if config.shuffle:
        # Planning a permutation changes which equal-length examples share a bin, so the bins
        # themselves (not only their order) differ from epoch to epoch.
        perm = _epoch_permutation(_rng(config.seed, epoch, 0), len(lengths), whole=config.strategy == "online")
        lengths = lengths[perm]
    packed = plan(lengths, config.max_tokens, strategy=config.strategy, max_seqs_per_bin=config.max_seqs_per_bin,
                  overlong=config.overlong)
    # Bins hold planned positions; ``perm`` maps them to dataset indices batch by batch (mapping
    # all 10M up front would cost a full gather on every resume).
    return Bins(packed.items, packed.sizes, packed.bin_offsets, perm=perm)


def epoch_layout(config: SamplerConfig, planned: Bins, epoch: int, history: Sequence[Sequence[int]]) -> Layout:
    """Deal ``planned`` (the bins of ``epoch``) to ``config.num_replicas`` ranks.

    ``history`` lists ``[num_replicas, steps]`` of the layouts that ran earlier this epoch (a resume
    on another world size): they are replayed and only the bins they had not reached are dealt, so
    exactly-once holds across a resharded resume.
    """
    bins = planned.fork()
    live = np.arange(bins.num_bins, dtype=np.int64)
    replayed = []
    for segment, (world, steps) in enumerate(history):
        bins, grid = _schedule(bins, live, world, rng=_rng(config.seed, epoch, 1 + segment), config=config)
        replayed.append(int(grid.shape[0]))
        rest = grid[steps:].ravel()
        live = rest[rest >= 0]
    bins, grid = _schedule(bins, live, config.num_replicas, rng=_rng(config.seed, epoch, 1 + len(history)),
                           config=config)
    return Layout(bins, grid, sum(steps for _, steps in history), replayed)
