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


class _Bins:
    """The bins of one epoch. Base bins are slices of two flat arrays; bins made by splitting are appended."""

    def __init__(self, items: np.ndarray, sizes: np.ndarray, offsets: np.ndarray) -> None:
        self.items, self.sizes = items, sizes
        self.begin, self.end = offsets[:-1], offsets[1:]
        n = len(self.begin)
        if n:
            self.tokens = np.add.reduceat(sizes, self.begin)
            self.sumsq = np.add.reduceat(sizes * sizes, self.begin)
        else:
            self.tokens = self.sumsq = np.zeros(0, dtype=np.int64)
        self.extra: List[tuple] = []  # (items, sizes) of bins num_base.., from splits

    @property
    def num_base(self) -> int:
        return len(self.begin)

    def fork(self) -> "_Bins":
        """A view sharing the base arrays, with its own split bins (layouts must not see each other's)."""
        twin = object.__new__(_Bins)
        twin.__dict__.update(self.__dict__)
        twin.extra = []
        return twin

    def count(self, b: int) -> int:
        return int(self.end[b] - self.begin[b]) if b < self.num_base else len(self.extra[b - self.num_base][0])

    def pieces(self, b: int):
        if b < self.num_base:
            lo, hi = self.begin[b], self.end[b]
            return self.items[lo:hi], self.sizes[lo:hi]
        return self.extra[b - self.num_base]

    def add(self, items: np.ndarray, sizes: np.ndarray) -> int:
        self.extra.append((items, sizes))
        self.tokens = np.append(self.tokens, sizes.sum())
        self.sumsq = np.append(self.sumsq, (sizes * sizes).sum())
        return self.num_base + len(self.extra) - 1


def _sort_keys(bins: _Bins, ids: np.ndarray, max_tokens: int) -> np.ndarray:
    """Real tokens (quantised to 1/1024 of the budget) first, Σlen² second, in one int64 per bin."""
    levels = min(1024, max_tokens)
    tokens = bins.tokens[ids] * levels // max_tokens
    # Σlen² <= tokens² <= max_tokens², so this fits in 52 bits and the total in 63.
    sumsq = (bins.sumsq[ids].astype(np.float64) / float(max_tokens) ** 2 * 2.0**52).astype(np.int64)
    return (tokens << 52) + sumsq


def _halves(items: np.ndarray, sizes: np.ndarray):
    """Split a bin in two of near-equal tokens (longest first onto the lighter side); both non-empty."""
    order = np.argsort(-sizes, kind="stable")
    sides: List[List[int]] = [[], []]
    load = [0, 0]
    for k in order.tolist():
        side = 0 if load[0] <= load[1] else 1
        sides[side].append(k)
        load[side] += int(sizes[k])
    return [(items[np.asarray(s, dtype=np.int64)], sizes[np.asarray(s, dtype=np.int64)]) for s in sides]


def _split_to_fill(bins: _Bins, live: np.ndarray, need: int):
    """Split the smallest multi-sequence bins until ``need`` more bins exist (or nothing can be split)."""
    counts = np.array([bins.count(b) for b in live], dtype=np.int64) if len(live) < 4096 else None
    if counts is None:  # vectorised for base bins; split bins are few
        base = live < bins.num_base
        counts = np.empty(len(live), dtype=np.int64)
        counts[base] = bins.end[live[base]] - bins.begin[live[base]]
        counts[~base] = [bins.count(b) for b in live[~base]]
    multi = live[counts >= 2]
    if not len(multi):
        return live, need
    pick = multi[np.lexsort((multi, bins.tokens[multi]))[:need]]
    heap = [(int(bins.tokens[b]), int(b)) for b in pick]
    heapq.heapify(heap)
    removed, added = [], []
    while need and heap:
        _, b = heapq.heappop(heap)
        removed.append(b)
        need -= 1
        for items, sizes in _halves(*bins.pieces(b)):
            new = bins.add(items, sizes)
            added.append(new)
            if len(items) >= 2:
                heapq.heappush(heap, (int(sizes.sum()), new))
    gone = set(removed)
    added = [b for b in added if b not in gone]
    live = np.concatenate([live[~np.isin(live, removed)], np.asarray(added, dtype=np.int64)])
    return live, need


def _schedule(bins: _Bins, live: np.ndarray, world: int, *, drop_last: bool, shuffle: bool,
              rng: np.random.Generator, max_tokens: int) -> np.ndarray:
    """Deal the ``live`` bins into a ``[steps, world]`` grid of bin ids (-1: an empty batch)."""
    total = len(live)
    if drop_last:
        steps = total // world
        if steps * world < total:  # drop the least-filled bins, not arbitrary ones
            keep = np.argsort(_sort_keys(bins, live, max_tokens), kind="stable")[total - steps * world:]
            live = live[np.sort(keep)]
    else:
        steps = -(-total // world)
        need = steps * world - total
        if need:
            live, _ = _split_to_fill(bins, live, need)
    order = live[np.argsort(-_sort_keys(bins, live, max_tokens), kind="stable")]
    grid = np.full(steps * world, -1, dtype=np.int64)
    grid[: len(order)] = order
    grid = grid.reshape(steps, world)
    if shuffle:
        grid = rng.permuted(grid, axis=1)[rng.permutation(steps)]
    elif steps:
        # Rotate so that no rank always gets the largest bin of its step.
        cols = (np.arange(world)[None, :] + np.arange(steps)[:, None]) % world
        grid = np.take_along_axis(grid, cols, axis=1)
    return grid


class _Layout:
    __slots__ = ("bins", "grid", "steps_before")

    def __init__(self, bins: _Bins, grid: np.ndarray, steps_before: int) -> None:
        self.bins, self.grid, self.steps_before = bins, grid, steps_before

    @property
    def num_steps(self) -> int:
        return self.grid.shape[0]

    def batch(self, step: int, rank: int) -> List[int]:
        b = int(self.grid[step, rank])
        return [] if b < 0 else self.bins.pieces(b)[0].tolist()


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
            perm = _rng(self.seed, epoch, 0).permutation(len(lengths))
            packed = plan(lengths[perm], self.max_tokens, **kwargs)
            items = perm[packed.items]
        else:
            packed = plan(lengths, self.max_tokens, **kwargs)
            items = packed.items
        bins = _Bins(items, packed.sizes, packed.bin_offsets)
        self._bins_cache = (epoch, bins)
        return bins

    def _layout(self, epoch: int, history: Sequence[Sequence[int]]) -> _Layout:
        key = (epoch, tuple(tuple(h) for h in history))
        cached = self._layout_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        bins = self._epoch_bins(epoch).fork()
        live = np.arange(bins.num_base, dtype=np.int64)
        options = dict(drop_last=self.drop_last, shuffle=self.shuffle, max_tokens=self.max_tokens)
        # Replay the layouts that ran earlier this epoch (other world sizes) and keep what they had
        # not reached: exactly-once holds across a resharded resume.
        for segment, (world, steps) in enumerate(history):
            grid = _schedule(bins, live, world, rng=_rng(self.seed, epoch, 1 + segment), **options)
            rest = grid[steps:].ravel()
            live = rest[rest >= 0]
        grid = _schedule(bins, live, self.num_replicas, rng=_rng(self.seed, epoch, 1 + len(history)), **options)
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
