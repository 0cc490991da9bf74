"""PackedIterableDataset: online packing of a stream into PackedBatches, sharded over ranks and workers.

The source is split by example position: rank ``r`` of ``W`` takes positions ``p`` with
``p % W == r``; DataLoader worker ``w`` of ``n`` takes, among those, every ``n``-th (``(p // W) % n
== w``). Each (rank, worker) stream is packed by ``_packer.OnlinePacker`` (best fit over a window of
``buffer_size`` sequences) and collated in the worker. Every example is read by exactly one stream.

Equal steps: a stream's length is unknown until it ends, so ranks cannot agree on a step count
without either knowing the lengths up front or talking. ``lengths=`` gives the first: every worker
simulates the packing of all shards (C++, no example is read) and pads its rank with empty batches
up to the largest rank's count — exact, no communication, and ``len()`` is known. Otherwise wrap the
loader in :func:`warppack.equal_steps` (one all-reduce of a flag per step).

>>> import warppack
>>> examples = [{"input_ids": list(range(1, n + 1))} for n in (5, 3, 8, 2)]
>>> ds = warppack.PackedIterableDataset(examples, max_tokens=8, buffer_size=2)
>>> [b.num_sequences for b in ds], [b.num_tokens for b in ds]
([1, 2, 1], [8, 8, 2])
"""

from __future__ import annotations

import hashlib
import numbers
import warnings
from collections import deque
from collections.abc import Mapping
from itertools import islice
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from warppack import _packer
from warppack._distributed import resolve_replicas
from warppack._planning import DEFAULT_BUFFER_SIZE, OVERLONG_POLICIES, as_lengths_array, check_max_tokens, plan

__all__ = ["PackedIterableDataset"]

_FORMAT = "warppack.PackedIterableDataset/1"
_CHECKED = ("max_tokens", "buffer_size", "seed", "shuffle", "max_seqs_per_bin", "overlong", "num_examples",
            "lengths_fingerprint")
_END = object()
_FROZEN = frozenset(("source", "max_tokens", "buffer_size", "collator", "lengths", "shuffle", "seed",
                     "max_seqs_per_bin", "overlong", "num_replicas", "rank", "num_workers"))


def _self_sharding(source: Any) -> bool:
    """HF ``datasets.IterableDataset`` hands each DataLoader worker its own file shards by itself."""
    return type(source).__module__.split(".")[0] == "datasets" and hasattr(source, "n_shards")


def _indexed(source: Any) -> bool:
    if isinstance(source, (str, bytes, Mapping, IterableDataset)) or _self_sharding(source):
        return False
    return hasattr(source, "__len__") and hasattr(source, "__getitem__")


def _pieces(n: int, max_tokens: int, overlong: str, position: int) -> List[Tuple[int, int]]:
    if n <= max_tokens:
        return [(0, n)]
    if overlong == "truncate":
        return [(0, max_tokens)]
    if overlong == "split":
        return [(start, min(max_tokens, n - start)) for start in range(0, n, max_tokens)]
    raise ValueError(
        f"example at position {position} of the source has {n} tokens, more than max_tokens={max_tokens}; "
        f"raise max_tokens, filter long examples, or pass overlong='truncate' or overlong='split'"
    )


class _Stream:
    """The examples of one (rank, worker) shard, packed online; all progress lives in attributes."""

    def __init__(self, ds: "PackedIterableDataset", world: int, rank: int, workers: int, worker: int,
                 resume: Optional[Dict[str, Any]]) -> None:
        self.ds = ds
        self.version = ds._version
        self.epoch = ds._epoch
        self.world, self.rank, self.workers, self.worker = world, rank, workers, worker
        self.stride = world * workers
        self.offset = rank + world * worker
        self.packer = _packer.OnlinePacker(ds.max_tokens, ds.max_seqs_per_bin or 0, ds.buffer_size)
        self.order = ds._order(self.epoch) if ds._is_indexed else None
        self.pieces: Dict[int, Tuple[int, int, int]] = {}  # key -> (position, start, size)
        self.cache: Dict[int, Any] = {}  # position -> example, while a piece of it waits
        self.refs: Dict[int, int] = {}
        self.ready: deque = deque()  # closed bins (arrays of keys) not yet handed out
        self.cursor = 0  # examples of this shard pushed so far
        self.next_key = 0
        self.flushed = False
        self.yielded = 0
        self.empties_done = 0
        self.finished = False
        self.started = False
        self.iterator = None
        self.empties_target = ds._empties_for(self.epoch, world, rank, workers, worker)
        if resume is not None:
            self._restore(resume)

    # -- reading -----------------------------------------------------------------------------
    def _position(self, k: int) -> int:
        return self.offset + k * self.stride

    def _fetch_indexed(self, position: int) -> Any:
        index = int(self.order[position]) if self.order is not None else position
        return self.ds.source[index]

    def _open_stream(self, first_k: int):
        source = self.ds.source
        base = source() if callable(source) and not hasattr(source, "__iter__") else source
        return islice(iter(base), self._position(first_k), None, self.stride)

    def _num_owned(self) -> int:
        n = len(self.ds.source)
        return max(0, -(-(n - self.offset) // self.stride))

    def _read(self) -> Any:
        """The next example of this shard, or _END."""
        if self.ds._is_indexed:
            if self.cursor >= self._num_owned():
                return _END
            return self._fetch_indexed(self._position(self.cursor))
        if self.iterator is None:
            self.iterator = self._open_stream(self.cursor)
        return next(self.iterator, _END)

    def _length(self, example: Any, position: int) -> int:
        try:
            n = len(example["input_ids"])
        except (TypeError, KeyError, IndexError):
            got = sorted(example)[:6] if isinstance(example, Mapping) else type(example).__name__
            raise TypeError(
                f"example at position {position} of the source: expected a mapping with 'input_ids' (and "
                f"optional 'labels'), got {got}"
            ) from None
        if n == 0:
            raise ValueError(
                f"example at position {position} of the source has no tokens; filter empty examples out "
                f"of the source"
            )
        lengths = self.ds.lengths
        if lengths is not None:
            index = int(self.order[position]) if self.order is not None else position
            if index >= len(lengths) or lengths[index] != n:
                want = "missing" if index >= len(lengths) else int(lengths[index])
                raise ValueError(
                    f"example at position {position} of the source has {n} tokens but lengths[{index}] is "
                    f"{want}; lengths= must list the token count of every example in source order"
                )
        return n

    def _advance(self) -> bool:
        example = self._read()
        if example is _END:
            return False
        position = self._position(self.cursor)
        n = self._length(example, position)
        for start, size in _pieces(n, self.ds.max_tokens, self.ds.overlong, position):
            key = self.next_key
            self.next_key += 1
            self.pieces[key] = (position, start, size)
            self.refs[position] = self.refs.get(position, 0) + 1
            self.ready.extend(self.packer.push(key, size))
        if self.refs.get(position):
            self.cache[position] = example
        self.cursor += 1
        return True

    def _take(self, key: int) -> Any:
        position, start, size = self.pieces.pop(key)
        example = self.cache[position]
        self.refs[position] -= 1
        if not self.refs[position]:
            del self.refs[position], self.cache[position]
        ids = example["input_ids"]
        if start == 0 and size == len(ids):
            return example
        piece = {"input_ids": ids[start:start + size]}
        if example.get("labels") is not None:
            piece["labels"] = example["labels"][start:start + size]
        return piece

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> "_Stream":
        return self

    def __next__(self):
        ds = self.ds
        if ds._version != self.version:
            raise RuntimeError(
                f"PackedIterableDataset was reconfigured ({ds._change}) while this pass over epoch {self.epoch} "
                f"was running; continuing would mix two epochs. Call set_epoch()/load_state_dict() between "
                f"passes and start a new pass over the DataLoader"
            )
        ds._live = self
        if not self.started:
            self.started = True
            ds._resume = None  # a loaded state is used by one pass
        while not self.ready:
            if self.flushed:
                if self.empties_done < self.empties_target:
                    self.empties_done += 1
                    self.yielded += 1
                    return ds.collator([])
                self.finished = True
                raise StopIteration
            if not self._advance():
                self.ready.extend(self.packer.flush())
                self.flushed = True
        keys = self.ready.popleft()
        examples = [self._take(int(key)) for key in keys]
        self.yielded += 1
        return ds.collator(examples)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        pending = [[int(k), *self.pieces[int(k)]] for k in self.packer.pending()]
        ready = [[[int(k), *self.pieces[int(k)]] for k in keys] for keys in self.ready]
        return {
            "epoch": self.epoch, "num_replicas": self.world, "rank": self.rank,
            "num_workers": self.workers, "worker": self.worker, "cursor": self.cursor,
            "next_key": self.next_key, "pending": pending, "ready": ready, "flushed": self.flushed,
            "yielded": self.yielded, "empties_done": self.empties_done,
        }

    def _restore(self, state: Dict[str, Any]) -> None:
        self.cursor, self.next_key = int(state["cursor"]), int(state["next_key"])
        self.flushed, self.yielded = bool(state["flushed"]), int(state["yielded"])
        self.empties_done = int(state["empties_done"])
        needed = set()
        for key, position, start, size in state["pending"]:
            self.pieces[key] = (position, start, size)
            if self.packer.push(key, size):  # the window held these, so no push can close a bin
                raise ValueError("corrupt PackedIterableDataset state: its pending window does not fit the budget")
            needed.add(position)
        for keys in state["ready"]:
            for key, position, start, size in keys:
                self.pieces[key] = (position, start, size)
                needed.add(position)
            self.ready.append(np.asarray([k[0] for k in keys], dtype=np.int64))
        for position, *_ in self.pieces.values():
            self.refs[position] = self.refs.get(position, 0) + 1
        if self.ds._is_indexed:
            for position in needed:
                self.cache[position] = self._fetch_indexed(position)
            return
        # A plain stream cannot seek: read it again from the first example still waiting (islice
        # skips the rest at C speed) and keep reading from the cursor afterwards.
        first = min(((p - self.offset) // self.stride for p in needed), default=self.cursor)
        self.iterator = self._open_stream(first)
        for k in range(first, self.cursor):
            example = next(self.iterator, _END)
            if example is _END:
                raise ValueError(
                    f"the source ended at example {k} of this shard but the loaded state had read {self.cursor}: "
                    f"the source is not the one the state was saved from"
                )
            if self._position(k) in needed:
                self.cache[self._position(k)] = example


class PackedIterableDataset(IterableDataset):
    """Packs a stream of examples online into :class:`~warppack.PackedBatch`\\ es of at most ``max_tokens``.

    ``source``: a list / map-style dataset (read by index: resume is O(1) and ``shuffle`` works), a
    re-iterable stream (HF ``datasets.IterableDataset``, any iterable that restarts on ``iter()``) or
    a zero-argument callable returning a fresh iterator. Use it with ``DataLoader(ds,
    batch_size=None, num_workers=...)``; each example is read by exactly one rank and worker.

    - ``buffer_size``: sequences the online packer may hold back to find a better fit.
    - ``collator``: turns a list of examples into a batch (default ``PackedCollator(max_tokens)``).
    - ``overlong``: ``"error"``, ``"truncate"`` or ``"split"`` (consecutive chunks ≤ budget, each its
      own sequence).
    - ``lengths``: token count of every example in source order. Enables equal steps across ranks
      without communication (explicit empty batches pad the shorter ranks) and ``len()`` (then also
      pass ``num_workers``: the DataLoader's, which the main process cannot see).
    - ``num_replicas``/``rank`` default to the initialised process group.

    ``state_dict()``/``load_state_dict()`` capture the position and the packer's window, so a resumed
    pass yields exactly the batches the uninterrupted one would have. With DataLoader workers the
    state lives in the workers: use torchdata's ``StatefulDataLoader``.

    >>> ds = PackedIterableDataset([{"input_ids": [1] * n} for n in (3, 3, 3)], max_tokens=6,
    ...                            lengths=[3, 3, 3], num_workers=0)
    >>> len(ds), [b.num_sequences for b in ds]
    (2, [2, 1])
    """

    def __init__(
        self,
        source: Any,
        max_tokens: int,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        collator: Optional[Callable[[List[Any]], Any]] = None,
        lengths: Any = None,
        shuffle: bool = False,
        seed: int = 0,
        max_seqs_per_bin: Optional[int] = None,
        overlong: str = "error",
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        num_workers: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.max_tokens = check_max_tokens(max_tokens)
        self.buffer_size = check_max_tokens(buffer_size, name="buffer_size")
        self.max_seqs_per_bin = (
            None if max_seqs_per_bin is None else check_max_tokens(max_seqs_per_bin, name="max_seqs_per_bin")
        )
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong={overlong!r} is not one of {sorted(OVERLONG_POLICIES)}; the default is 'error'")
        self.overlong = overlong
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = int(seed)
        if isinstance(source, (str, bytes)):
            raise TypeError("source must be a collection or stream of examples, got a string")
        self._is_indexed = _indexed(source)
        if not self._is_indexed:
            if hasattr(source, "__iter__"):
                if iter(source) is source:
                    raise TypeError(
                        f"source is a one-shot iterator ({type(source).__name__}): it cannot be read again "
                        f"for the next epoch, by DataLoader workers or on resume. Pass the collection, a "
                        f"re-iterable dataset, or a zero-argument function returning a fresh iterator "
                        f"(e.g. source=lambda: my_generator())"
                    )
            elif not callable(source):
                raise TypeError(
                    f"source must be a list/dataset of examples, an iterable, or a function returning an "
                    f"iterator; got {type(source).__name__}"
                )
        if shuffle and not self._is_indexed:
            raise ValueError(
                "shuffle=True needs a source that can be read by index (a list or map-style dataset); "
                "shuffle the stream at its source instead (e.g. HF IterableDataset.shuffle(buffer_size=...))"
            )
        self.shuffle = bool(shuffle)
        self.source = source
        self.collator = collator if collator is not None else _default_collator(self.max_tokens)
        self.lengths = None if lengths is None else as_lengths_array(lengths)
        if self.lengths is not None and self._is_indexed and len(self.lengths) != len(source):
            raise ValueError(
                f"lengths has {len(self.lengths)} entries but the source holds {len(source)} examples; pass "
                f"one token count per example (warppack.lengths_of(source))"
            )
        self.num_replicas, self.rank = resolve_replicas(num_replicas, rank, owner="PackedIterableDataset")
        if num_workers is not None and (
            isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0
        ):
            raise ValueError(f"num_workers must be an int >= 0 (the DataLoader's), got {num_workers!r}")
        self.num_workers = num_workers
        self._epoch = 0
        self._version = 0
        self._change = ""
        self._resume: Optional[Dict[str, Any]] = None
        self._live: Optional[_Stream] = None
        self._steps_equalized = False
        self._warned = False
        self._fingerprint: Optional[str] = None
        self._counts_cache: Optional[tuple] = None
        self._order_cache: Optional[tuple] = None
        self._frozen = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN and self.__dict__.get("_frozen"):
            raise AttributeError(
                f"PackedIterableDataset.{name} is fixed at construction (the split, len() and saved states "
                f"depend on it); build a new PackedIterableDataset with {name}={value!r}"
            )
        object.__setattr__(self, name, value)

    def __getstate__(self) -> Dict[str, Any]:
        # The live stream holds iterators and a native packer: workers start their own.
        state = self.__dict__.copy()
        state.update(_live=None, _counts_cache=None, _order_cache=None)
        return state

    # -- epochs ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (with ``shuffle``, a new order from ``seed``); forwarded to the source."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"set_epoch takes an int >= 0, got {epoch!r}")
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(int(epoch))
        if int(epoch) == self._epoch:
            return
        self._change = f"set_epoch({int(epoch)}) after epoch {self._epoch}"
        self._epoch, self._resume = int(epoch), None
        self._version += 1

    def _order(self, epoch: int) -> Optional[np.ndarray]:
        """Source index of each position this epoch (None: positions are indices)."""
        if not self.shuffle:
            return None
        if self._order_cache is None or self._order_cache[0] != epoch:
            rng = np.random.default_rng([self.seed % 2**64, epoch, 0])
            self._order_cache = (epoch, rng.permutation(len(self.source)))
        return self._order_cache[1]

    # -- equal steps from known lengths ------------------------------------------------------
    def _shard_counts(self, epoch: int, workers: int) -> np.ndarray:
        """Bins each (rank, worker) shard packs into, ``[num_replicas, workers]``, simulated in C++."""
        key = (epoch, workers)
        if self._counts_cache is not None and self._counts_cache[0] == key:
            return self._counts_cache[1]
        lengths = self.lengths
        order = self._order(epoch)
        if order is not None:
            lengths = lengths[order]
        world = self.num_replicas
        counts = np.zeros((world, workers), dtype=np.int64)
        for r in range(world):
            for w in range(workers):
                shard = np.ascontiguousarray(lengths[r + world * w:: world * workers])
                if len(shard):
                    counts[r, w] = plan(shard, self.max_tokens, strategy="online", buffer_size=self.buffer_size,
                                        max_seqs_per_bin=self.max_seqs_per_bin, overlong=self.overlong).num_bins
        self._counts_cache = (key, counts)
        return counts

    def _empties_for(self, epoch: int, world: int, rank: int, workers: int, worker: int) -> int:
        if self.lengths is None:
            return 0
        counts = self._shard_counts(epoch, workers)
        deficit = int(counts.sum(axis=1).max() - counts[rank].sum())
        # Hand the rank's padding to its workers with the fewest bins first (deterministic).
        totals = counts[rank].copy()
        mine = 0
        for _ in range(deficit):
            w = int(np.argmin(totals))
            totals[w] += 1
            mine += w == worker
        return mine

    def __len__(self) -> int:
        if self.lengths is None:
            raise TypeError(
                "len(PackedIterableDataset) is only known with lengths= (the token count of every example); "
                "without it the number of batches is known when the stream ends"
            )
        if self.num_workers is None:
            raise TypeError(
                "len(PackedIterableDataset) depends on how many DataLoader workers split the stream; pass "
                "num_workers= (the DataLoader's) to the dataset"
            )
        counts = self._shard_counts(self._epoch, max(1, self.num_workers))
        return int(counts.sum(axis=1).max())

    # -- iteration ---------------------------------------------------------------------------
    def _placement(self) -> Tuple[int, int]:
        """(workers this source is split over by position, this worker's index)."""
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        if self.num_workers is not None and max(1, self.num_workers) != workers:
            raise ValueError(
                f"PackedIterableDataset(num_workers={self.num_workers}) but the DataLoader runs {workers} "
                f"worker(s); pass the DataLoader's num_workers to the dataset"
            )
        if workers > 1 and _self_sharding(self.source):
            if self.lengths is not None:
                raise ValueError(
                    "a HF datasets.IterableDataset splits itself over DataLoader workers by file shard, so "
                    "lengths= cannot predict each worker's batches; drop lengths= and wrap the loader in "
                    "warppack.equal_steps(...), or use num_workers=0"
                )
            return 1, 0  # the source already gives this worker its own examples
        return workers, worker

    def __iter__(self) -> _Stream:
        workers, worker = self._placement()
        world, rank = self.num_replicas, self.rank
        resume = self._resume
        if resume is not None and resume["cursor"] == 0 and not resume["ready"] and resume["yielded"] == 0:
            resume = None  # nothing was consumed: start fresh wherever it was saved
        if resume is not None:
            saved = (resume["num_replicas"], resume["rank"], resume["num_workers"], resume["worker"])
            if saved != (world, rank, workers, worker):
                raise ValueError(
                    f"this state was saved mid-epoch by rank {saved[1]} of {saved[0]}, worker {saved[3]} of "
                    f"{saved[2]}, but is loaded into rank {rank} of {world}, worker {worker} of {workers}; a "
                    f"stream's position cannot be re-dealt to another split. Resume with the same world size "
                    f"and num_workers (torchdata's StatefulDataLoader restores each worker's own state), or "
                    f"resume at an epoch boundary"
                )
        if world > 1 and self.lengths is None and not self._steps_equalized and not self._warned:
            self._warned = True
            if rank == 0 and worker == 0:
                warnings.warn(
                    "PackedIterableDataset on several ranks without lengths=: ranks may run out at different "
                    "steps and the next collective would hang. Pass lengths= or iterate "
                    "warppack.equal_steps(loader)",
                    stacklevel=2,
                )
        stream = _Stream(self, world, rank, workers, worker, resume)
        self._live = stream
        return stream

    # -- state -------------------------------------------------------------------------------
    def _lengths_fingerprint(self) -> Optional[str]:
        if self.lengths is None:
            return None
        if self._fingerprint is None:
            data = np.ascontiguousarray(self.lengths, dtype=np.int64)
            self._fingerprint = hashlib.blake2b(memoryview(data).cast("B"), digest_size=16).hexdigest()
        return self._fingerprint

    def _config(self) -> Dict[str, Any]:
        return {
            "max_tokens": self.max_tokens, "buffer_size": self.buffer_size, "seed": self.seed,
            "shuffle": self.shuffle, "max_seqs_per_bin": self.max_seqs_per_bin, "overlong": self.overlong,
            "num_examples": len(self.source) if self._is_indexed else None,
            "lengths_fingerprint": self._lengths_fingerprint(),
        }

    def state_dict(self) -> Dict[str, Any]:
        """The position of this process's (or DataLoader worker's) stream, its packing window included."""
        live = self._live
        if live is not None and live.version == self._version:
            position = live.state()
        elif self._resume is not None:
            position = self._resume
        else:
            position = {"epoch": self._epoch, "num_replicas": self.num_replicas, "rank": self.rank,
                        "num_workers": None, "worker": None, "cursor": 0, "next_key": 0, "pending": [],
                        "ready": [], "flushed": False, "yielded": 0, "empties_done": 0}
        return {"format": _FORMAT, **position, **self._config()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` on the next pass; refuses a state of other data or options (fields listed)."""
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a PackedIterableDataset state (format {got!r}, expected {_FORMAT!r})")
        mine = self._config()
        wrong = [f"{k}: saved {state.get(k)!r}, this dataset {mine[k]!r}" for k in _CHECKED
                 if k in state and state[k] != mine[k]]
        if wrong:
            raise ValueError(
                "this state was saved by a PackedIterableDataset over other data or options, so resuming would "
                "not continue the same stream; mismatched fields: " + "; ".join(wrong)
            )
        self._change = f"load_state_dict(epoch={state['epoch']})"
        self._epoch = int(state["epoch"])
        self._resume = {k: state[k] for k in ("epoch", "num_replicas", "rank", "num_workers", "worker", "cursor",
                                              "next_key", "pending", "ready", "flushed", "yielded", "empties_done")}
        self._version += 1
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(self._epoch)

    def __repr__(self) -> str:
        return (
            f"PackedIterableDataset(max_tokens={self.max_tokens}, buffer_size={self.buffer_size}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, overlong={self.overlong!r}, epoch={self._epoch})"
        )


def _default_collator(max_tokens: int):
    from warppack._collator import PackedCollator

    return PackedCollator(max_tokens)
