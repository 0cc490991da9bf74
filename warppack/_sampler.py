"""PackedBatchSampler: token-budget batches of a map-style dataset, sharded over ranks with equal steps.

One epoch is planned globally (all examples, every rank computes the same plan from ``seed`` and the
epoch), then laid out as a grid of ``steps × num_replicas`` bins: bins are sorted by real tokens
(then Σlen², the attention cost) and dealt a step at a time, so the bins that run together are of
the same size and no rank waits for a straggler. Rank ``r`` yields column ``r``.

Equal steps: the number of bins is raised to a multiple of ``num_replicas`` by splitting the smallest
multi-sequence bins in two (never exceeding the budget); only when there are fewer sequences than
slots does a rank get an explicit empty batch (``[]``, which ``PackedCollator`` turns into a single
padding token whose labels are all ignored: a zero-loss step).

>>> import warppack
>>> sampler = warppack.PackedBatchSampler([5, 3, 8, 2, 7], max_tokens=8, num_replicas=2, rank=0, shuffle=False)
>>> len(sampler), list(sampler)                        # bins: [2]=8 tokens, [3]=2
(2, [[2], [3]])
>>> list(warppack.PackedBatchSampler([5, 3, 8, 2, 7], 8, num_replicas=2, rank=1, shuffle=False))
[[0, 1], [4]]
"""

from __future__ import annotations

import hashlib
import heapq
import numbers
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from warppack._distributed import resolve_replicas
from warppack._planning import OVERLONG_POLICIES, STRATEGIES, as_lengths_array, check_max_tokens, plan

__all__ = ["PackedBatchSampler"]

_FORMAT = "warppack.PackedBatchSampler/1"
#: Saved fields that must match for a state to be loaded: another value means another plan.
_CHECKED = ("num_examples", "lengths_fingerprint", "max_tokens", "seed", "shuffle", "strategy",
            "max_seqs_per_bin", "overlong", "drop_last")
_FROZEN = frozenset(("lengths", "max_tokens", "shuffle", "seed", "drop_last", "strategy", "num_replicas",
                     "rank", "max_seqs_per_bin", "overlong", "interleaved"))


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


class _Bins:
    """Bins as contiguous ranges ``[begin, end)`` of flat arrays of planned positions and piece sizes.

    Positions below ``len(items)`` are in the plan's own arrays; bins made later (splits,
    rebalancing) live in small ``extra_*`` arrays after them, so adding a few never copies the plan.
    A fork shares every array it had.
    """

    def __init__(self, items: np.ndarray, sizes: np.ndarray, offsets: np.ndarray,
                 perm: Optional[np.ndarray] = None) -> None:
        self.items, self.sizes, self.perm = items, sizes, perm
        self.extra_items = self.extra_sizes = np.zeros(0, dtype=np.int64)
        self.begin, self.end = offsets[:-1], offsets[1:]
        self.tokens, self.sumsq = _sums(sizes, offsets)

    @property
    def num_bins(self) -> int:
        return len(self.begin)

    def fork(self) -> "_Bins":
        twin = object.__new__(_Bins)
        twin.__dict__.update(self.__dict__)
        return twin

    def counts(self, ids: np.ndarray) -> np.ndarray:
        return self.end[ids] - self.begin[ids]

    def pieces(self, b: int):
        lo, hi, base = int(self.begin[b]), int(self.end[b]), len(self.items)
        if lo >= base:
            return self.extra_items[lo - base:hi - base], self.extra_sizes[lo - base:hi - base]
        return self.items[lo:hi], self.sizes[lo:hi]

    def gather(self, ids: np.ndarray):
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


def _sums(sizes: np.ndarray, offsets: np.ndarray):
    if len(offsets) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.add.reduceat(sizes, offsets[:-1]), np.add.reduceat(sizes * sizes, offsets[:-1])


def _sort_keys(bins: _Bins, ids: np.ndarray, max_tokens: int) -> np.ndarray:
    """Real tokens (quantised to 1/1024 of the budget) first, Σlen² second, in one int64 per bin."""
    levels = min(1024, max_tokens)
    tokens = bins.tokens[ids] * levels // max_tokens
    # Σlen² <= tokens² <= max_tokens², so this fits in 52 bits and the total in 63.
    sumsq = (bins.sumsq[ids].astype(np.float64) / float(max_tokens) ** 2 * 2.0**52).astype(np.int64)
    return (tokens << 52) + sumsq


def _halves(items: np.ndarray, sizes: np.ndarray):
    """Split a bin in two of near-equal tokens (longest first onto the lighter side); both non-empty."""
    sides: List[List[int]] = [[], []]
    load = [0, 0]
    for k in np.argsort(-sizes, kind="stable").tolist():
        side = 0 if load[0] <= load[1] else 1
        sides[side].append(k)
        load[side] += int(sizes[k])
    return [(items[s], sizes[s]) for s in (np.asarray(x, dtype=np.int64) for x in sides)]


def _split_to_fill(bins: _Bins, live: np.ndarray, need: int) -> np.ndarray:
    """Split the smallest multi-sequence bins until ``need`` more bins exist (or nothing can be split)."""
    multi = live[bins.counts(live) >= 2]
    if not len(multi) or not need:
        return live
    if len(multi) > need:  # only the `need` smallest (by tokens, then id) can be picked
        tokens = bins.tokens[multi]
        multi = multi[tokens <= np.partition(tokens, need - 1)[need - 1]]
    pick = multi[np.lexsort((multi, bins.tokens[multi]))[:need]]
    # Heap of (tokens, tie, bin): a bin is ("old", id) or ("new", index into `made`).
    heap = [(int(bins.tokens[b]), k, ("old", int(b))) for k, b in enumerate(pick)]
    heapq.heapify(heap)
    made: List[Optional[tuple]] = []
    removed: List[int] = []
    tie = len(heap)
    while need and heap:
        _, _, (kind, ref) = heapq.heappop(heap)
        if kind == "old":
            parts = _halves(*bins.pieces(ref))
            removed.append(ref)
        else:
            parts = _halves(*made[ref])
            made[ref] = None
        need -= 1
        for items, sizes in parts:
            made.append((items, sizes))
            if len(items) >= 2:
                tie += 1
                heapq.heappush(heap, (int(sizes.sum()), tie, ("new", len(made) - 1)))
    made = [m for m in made if m is not None]
    counts = np.asarray([len(m[0]) for m in made], dtype=np.int64)
    ids = bins.append(np.concatenate([m[0] for m in made]), np.concatenate([m[1] for m in made]),
                      np.concatenate([[0], np.cumsum(counts)]))
    keep = np.ones(bins.num_bins, dtype=bool)
    keep[removed] = False
    return np.concatenate([live[keep[live]], ids])


def _grid(bins: _Bins, live: np.ndarray, world: int, steps: int, max_tokens: int) -> np.ndarray:
    """Sorted by size and dealt ``world`` at a time: the bins of one step are alike."""
    order = live[np.argsort(-_sort_keys(bins, live, max_tokens), kind="stable")]
    grid = np.full(steps * world, -1, dtype=np.int64)
    grid[: len(order)] = order
    return grid.reshape(steps, world)


def _imbalance(bins: _Bins, grid: np.ndarray) -> float:
    tokens = np.where(grid >= 0, bins.tokens[np.maximum(grid, 0)], 0)
    mean = tokens.mean(axis=1).sum()
    return float(tokens.max(axis=1).sum() / mean) if mean else 1.0


def _rebalanced(bins: _Bins, live: np.ndarray, slots: int, options: dict):
    """Re-pack the examples of ``live`` under the smallest budget that still fits ``slots`` bins.

    With the step count fixed by the full-budget plan, the slack of the last steps is spread over all
    bins instead of leaving one step of near-empty bins next to full ones (few bins per rank).
    Examples longer than the lowered budget keep a bin of their own. Returns ``(bins, live)`` or None.
    """
    items, sizes = bins.gather(live)
    if not len(sizes):
        return None
    max_tokens = options["max_tokens"]
    kwargs = dict(strategy=options["strategy"], max_seqs_per_bin=options["max_seqs_per_bin"])

    def pack(capacity: int):
        big = sizes > capacity
        small = ~big
        packed = plan(sizes[small], capacity, **kwargs)
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


def _level_tail(bins: _Bins, grid: np.ndarray, rows: int, options: dict):
    """Re-deal the pieces of the last ``rows`` steps of a sorted grid longest-first onto the lightest bin.

    The smallest bins of a plan (its tail) differ most in size; spreading their sequences evenly
    over the same number of bins evens out the steps they make. Returns ``(bins, grid)`` or None
    when a piece would not fit (the caller keeps what it had).
    """
    world = grid.shape[1]
    tail = grid[-rows:].ravel()
    items, sizes = bins.gather(tail[tail >= 0])
    slots = rows * world
    max_tokens, max_seqs = options["max_tokens"], options["max_seqs_per_bin"] or len(sizes) + 1
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


def _schedule(bins: _Bins, live: np.ndarray, world: int, *, rng: np.random.Generator, options: dict):
    """Deal the ``live`` bins into a ``[steps, world]`` grid of bin ids (-1: an empty batch).

    Returns ``(bins, grid)``: ``bins`` gains the bins made by splitting or rebalancing.
    """
    max_tokens = options["max_tokens"]
    total = len(live)
    if options["drop_last"]:
        steps = total // world
        if steps * world < total:  # drop the least-filled bins, not arbitrary ones
            keep = np.argsort(_sort_keys(bins, live, max_tokens), kind="stable")[total - steps * world:]
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
            lowered = _rebalanced(bins, live, steps * world, options)
            if lowered is not None:
                twin, twin_live = lowered
                twin_live = _split_to_fill(twin, twin_live, steps * world - len(twin_live))
                twin_grid = _grid(twin, twin_live, world, steps, max_tokens)
                if _imbalance(twin, twin_grid) < best:
                    bins, grid, best = twin, twin_grid, _imbalance(twin, twin_grid)
        for rows in (1, 2, 3):
            if best <= _EVEN_ENOUGH or rows >= steps:
                break
            leveled = _level_tail(bins, grid, rows, options)
            if leveled is not None and _imbalance(*leveled) < best:
                (bins, grid), best = leveled, _imbalance(*leveled)
    if options["shuffle"]:
        grid = rng.permuted(grid, axis=1)[rng.permutation(steps)]
    elif steps:
        # Rotate so that no rank always gets the largest bin of its step.
        cols = (np.arange(world)[None, :] + np.arange(steps)[:, None]) % world
        grid = np.take_along_axis(grid, cols, axis=1)
    return bins, grid


class _Layout:
    __slots__ = ("bins", "grid", "steps_before")

    def __init__(self, bins: _Bins, grid: np.ndarray, steps_before: int) -> None:
        self.bins, self.grid, self.steps_before = bins, grid, steps_before

    @property
    def num_steps(self) -> int:
        return self.grid.shape[0]

    def batch(self, step: int, rank: int) -> List[int]:
        b = int(self.grid[step, rank])
        return [] if b < 0 else self.bins.examples(b).tolist()


class _BatchIterator(Iterator[List[int]]):
    """One pass over the rest of an epoch; checks on every batch that the sampler was not reconfigured."""

    def __init__(self, sampler: "PackedBatchSampler", start: int) -> None:
        self._sampler = sampler
        self._version = sampler._version
        self.epoch = sampler._epoch
        self.history = [list(h) for h in sampler._history]
        self.layout = sampler._layout(self.epoch, self.history)
        if start > self.layout.num_steps:
            raise ValueError(
                f"the loaded state is at step {start} of epoch {self.epoch}, but this epoch has only "
                f"{self.layout.num_steps} steps here: the state does not belong to this sampler"
            )
        self.start = start
        self.slot = start * (sampler.num_replicas if sampler.interleaved else 1)
        self.started = False

    @property
    def step(self) -> int:
        """Steps of the current layout handed out so far (a step is complete once every slot is out)."""
        return self.slot // self._sampler.num_replicas if self._sampler.interleaved else self.slot

    def __iter__(self) -> "_BatchIterator":
        return self

    def __next__(self) -> List[int]:
        sampler = self._sampler
        if sampler._version != self._version:
            raise RuntimeError(
                f"PackedBatchSampler was reconfigured ({sampler._change}) while this iteration over epoch "
                f"{self.epoch} was running; continuing would mix two plans. Call set_epoch()/load_state_dict() "
                f"between epochs and start a new pass over the DataLoader"
            )
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


class PackedBatchSampler(Sampler[List[int]]):
    """Batches of dataset indices under a token budget, for ``DataLoader(ds, batch_sampler=...)``.

    ``lengths`` holds the token count of every example (``warppack.lengths_of(ds)``). Each epoch
    packs all examples once (``strategy``: ``"bfd"``, ``"ffd"`` or ``"online"``) and gives rank
    ``rank`` of ``num_replicas`` (both default to the initialised process group) a disjoint share:

    - every example exactly once per epoch over all ranks, and ``len()`` — exact before iteration —
      the same on every rank; where there are fewer sequences than ``steps × num_replicas`` slots a
      rank gets an empty batch ``[]`` (``PackedCollator([])`` is a zero-loss step);
    - per step, the ranks' bins have near-equal real tokens, then Σlen²;
    - ``shuffle=True`` re-draws the bins and their order from ``seed`` and ``set_epoch(e)``;
    - ``state_dict()``/``load_state_dict()`` resume at any batch boundary, even on another world size.

    ``drop_last=True`` drops the ``len(bins) % num_replicas`` least-filled bins instead of splitting
    bins (those examples are skipped that epoch). ``overlong="truncate"`` packs an example longer than
    the budget as its first ``max_tokens`` tokens (pair with ``PackedCollator(max_tokens,
    overlong="truncate")``). ``interleaved=True`` yields the batches of all ranks step by step
    (``len() = steps × num_replicas``) for wrappers that deal batches to ranks themselves —
    ``accelerate.Accelerator.prepare`` and HF ``Trainer`` do.

    >>> s = PackedBatchSampler([4, 4, 4, 4, 2], max_tokens=8, shuffle=False)
    >>> [sum([4, 4, 4, 4, 2][i] for i in b) for b in s]
    [8, 8, 2]
    """

    def __init__(
        self,
        lengths: Any,
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        strategy: str = "bfd",
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        max_seqs_per_bin: Optional[int] = None,
        overlong: str = "error",
        interleaved: bool = False,
    ) -> None:
        set_ = object.__setattr__
        budget = check_max_tokens(max_tokens)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not one of {sorted(STRATEGIES)}; the default is 'bfd'")
        if overlong == "split":
            raise ValueError(
                "overlong='split' cannot be expressed by a batch sampler: it yields dataset indices, and a "
                "split example would need token ranges. Use overlong='truncate' (with PackedCollator("
                "max_tokens, overlong='truncate')), filter long examples, or stream with "
                "warppack.PackedIterableDataset(..., overlong='split')"
            )
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong={overlong!r} is not one of ['error', 'truncate']; the default is 'error'")
        if max_seqs_per_bin is not None:
            max_seqs_per_bin = check_max_tokens(max_seqs_per_bin, name="max_seqs_per_bin")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {seed!r}")
        array = as_lengths_array(lengths)
        if len(array):
            low = int(np.argmin(array))
            if array[low] <= 0:
                raise ValueError(
                    f"lengths[{low}] = {int(array[low])}: every example needs at least one token; filter "
                    f"empty examples out of the dataset (and their lengths) first"
                )
            high = int(np.argmax(array))
            if overlong == "error" and array[high] > budget:
                raise ValueError(
                    f"example {high} has {int(array[high])} tokens, more than max_tokens={budget}; raise "
                    f"max_tokens, filter long examples, pass overlong='truncate', or stream with "
                    f"PackedIterableDataset(..., overlong='split')"
                )
        world, rank_ = resolve_replicas(num_replicas, rank, owner="PackedBatchSampler")
        set_(self, "lengths", array)
        set_(self, "max_tokens", budget)
        set_(self, "shuffle", bool(shuffle))
        set_(self, "seed", int(seed))
        set_(self, "drop_last", bool(drop_last))
        set_(self, "strategy", strategy)
        set_(self, "num_replicas", world)
        set_(self, "rank", rank_)
        set_(self, "max_seqs_per_bin", max_seqs_per_bin)
        set_(self, "overlong", overlong)
        set_(self, "interleaved", bool(interleaved))
        set_(self, "_epoch", 0)
        set_(self, "_history", [])  # [[num_replicas, steps], ...] run earlier this epoch (resharded resume)
        set_(self, "_start", 0)  # step of the current layout where the next pass starts
        set_(self, "_version", 0)
        set_(self, "_change", "")
        set_(self, "_live", None)
        set_(self, "_fingerprint", None)
        set_(self, "_bins_cache", None)
        set_(self, "_layout_cache", None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN:
            raise AttributeError(
                f"PackedBatchSampler.{name} is fixed at construction (the plan, len() and saved states depend "
                f"on it); build a new PackedBatchSampler with {name}={value!r}"
            )
        object.__setattr__(self, name, value)

    # -- planning ----------------------------------------------------------------------------
    def _epoch_bins(self, epoch: int) -> _Bins:
        cached = self._bins_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        lengths = self.lengths
        kwargs = dict(strategy=self.strategy, max_seqs_per_bin=self.max_seqs_per_bin, overlong=self.overlong)
        if self.shuffle:
            # Planning a permutation changes which equal-length examples share a bin, so the bins
            # themselves (not only their order) differ from epoch to epoch.
            perm = _epoch_permutation(_rng(self.seed, epoch, 0), len(lengths), whole=self.strategy == "online")
            packed = plan(lengths[perm], self.max_tokens, **kwargs)
        else:
            perm, packed = None, plan(lengths, self.max_tokens, **kwargs)
        # Bins hold planned positions; ``perm`` maps them to dataset indices batch by batch (mapping
        # all 10M up front would cost a full gather on every resume).
        bins = _Bins(packed.items, packed.sizes, packed.bin_offsets, perm=perm)
        self._bins_cache = (epoch, bins)
        return bins

    def _layout(self, epoch: int, history: Sequence[Sequence[int]]) -> _Layout:
        key = (epoch, tuple(tuple(h) for h in history))
        cached = self._layout_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        bins = self._epoch_bins(epoch).fork()
        live = np.arange(bins.num_bins, dtype=np.int64)
        options = dict(drop_last=self.drop_last, shuffle=self.shuffle, max_tokens=self.max_tokens,
                       strategy=self.strategy, max_seqs_per_bin=self.max_seqs_per_bin)
        # Replay the layouts that ran earlier this epoch (other world sizes) and keep what they had
        # not reached: exactly-once holds across a resharded resume.
        for segment, (world, steps) in enumerate(history):
            bins, grid = _schedule(bins, live, world, rng=_rng(self.seed, epoch, 1 + segment), options=options)
            rest = grid[steps:].ravel()
            live = rest[rest >= 0]
        bins, grid = _schedule(bins, live, self.num_replicas, rng=_rng(self.seed, epoch, 1 + len(history)),
                               options=options)
        layout = _Layout(bins, grid, sum(steps for _, steps in history))
        self._layout_cache = (key, layout)
        return layout

    def _current(self) -> Optional[_BatchIterator]:
        live = self._live
        return live if live is not None and live._version == self._version else None

    # -- Sampler -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[List[int]]:
        iterator = _BatchIterator(self, self._start)
        self._live = iterator
        return iterator

    def __len__(self) -> int:
        live = self._current()
        layout = live.layout if live is not None else self._layout(self._epoch, self._history)
        steps = layout.steps_before + layout.num_steps
        return steps * self.num_replicas if self.interleaved else steps

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def sampler(self) -> "PackedBatchSampler":
        """This sampler: Accelerate forwards ``set_epoch`` to ``batch_sampler.sampler`` once it wraps it."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Plan epoch ``epoch`` next (deterministic from ``seed``); the same epoch again keeps a loaded resume point."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"set_epoch takes an int >= 0, got {epoch!r}")
        if int(epoch) == self._epoch:
            return
        self._change = f"set_epoch({int(epoch)}) after epoch {self._epoch}"
        self._epoch, self._history, self._start = int(epoch), [], 0
        self._version += 1

    # -- state -------------------------------------------------------------------------------
    def _lengths_fingerprint(self) -> str:
        if self._fingerprint is None:
            data = np.ascontiguousarray(self.lengths, dtype=np.int64)
            self._fingerprint = hashlib.blake2b(memoryview(data).cast("B"), digest_size=16).hexdigest()
        return self._fingerprint

    def _config(self) -> Dict[str, Any]:
        return {
            "num_examples": int(len(self.lengths)),
            "lengths_fingerprint": self._lengths_fingerprint(),
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "strategy": self.strategy,
            "max_seqs_per_bin": self.max_seqs_per_bin,
            "overlong": self.overlong,
            "drop_last": self.drop_last,
        }

    def state_dict(self, *, consumed: Optional[int] = None) -> Dict[str, Any]:
        """The position to resume from: epoch, step, world size and the fields that fix the plan.

        The state is the same on every rank, so any rank's state resumes any rank (also on another
        world size). It counts the batches this sampler has handed out; under a plain ``DataLoader``
        with workers those run ahead of your loop by the prefetched batches, so pass ``consumed=`` —
        the batches your current pass has taken from the loader — or use torchdata's
        ``StatefulDataLoader``, which snapshots the sampler at the right batch by itself.
        """
        live = self._current()
        if live is not None:
            epoch, history, start, step = live.epoch, live.history, live.start, live.step
        else:
            epoch, history, start, step = self._epoch, self._history, self._start, self._start
        if consumed is not None:
            if isinstance(consumed, bool) or not isinstance(consumed, numbers.Integral) or consumed < 0:
                raise ValueError(f"consumed must be an int >= 0 (batches taken from the loader), got {consumed!r}")
            if start + consumed > step:
                raise ValueError(
                    f"consumed={consumed} is more than the {step - start} batches this pass has handed out"
                )
            step = start + int(consumed)
        return {
            "format": _FORMAT,
            "epoch": epoch,
            "step": step,
            "history": [list(map(int, h)) for h in history],
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            **self._config(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume where ``state`` was taken: the next pass yields exactly the rest of that epoch.

        Refuses (``ValueError``, listing the fields) a state from other lengths, budget, seed or
        packing options. A state from another world size keeps exactly-once: the bins no rank had
        reached are dealt again over the current ranks.
        """
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a PackedBatchSampler state (format {got!r}, expected {_FORMAT!r})")
        mine = self._config()
        wrong = [f"{k}: saved {state.get(k)!r}, this sampler {mine[k]!r}" for k in _CHECKED if state.get(k) != mine[k]]
        if wrong:
            raise ValueError(
                "this state was saved by a sampler over other data or options, so resuming would not continue "
                "the same epoch; mismatched fields: " + "; ".join(wrong)
            )
        epoch, step, saved_world = int(state["epoch"]), int(state["step"]), int(state["num_replicas"])
        history = [list(map(int, h)) for h in state["history"]]
        if step < 0 or epoch < 0:
            raise ValueError(f"corrupt state: epoch={epoch}, step={step}")
        if saved_world != self.num_replicas and step > 0:
            # The saved world size consumed `step` steps of its layout; the rest is re-dealt here.
            history, step = history + [[saved_world, step]], 0
        self._change = f"load_state_dict(epoch={epoch}, step={step})"
        self._epoch, self._history, self._start = epoch, history, step
        self._version += 1

    def __repr__(self) -> str:
        return (
            f"PackedBatchSampler(num_examples={len(self.lengths)}, max_tokens={self.max_tokens}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle}, seed={self.seed}, "
            f"strategy={self.strategy!r}, epoch={self._epoch})"
        )
