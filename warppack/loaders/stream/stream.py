"""One (rank, worker) stream of a PackedIterableDataset: its examples read, packed online and collated.

All progress lives in attributes, so ``state()`` can save it, packing window included, and a new
stream restores it exactly.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping
from itertools import islice
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Set,
    Tuple,
)

import numpy as np

from warppack import _packer
from warppack.batch.collator import empty_step
from warppack.engine.config import tally_overlong
from warppack.loaders.state import Generation, OneThread, SavedFields
from warppack.loaders.stream.saved import state_fields
from warppack.loaders.stream.shards import owned_count, shard_span

__all__ = ["Stream", "StreamBudget", "check_same_split", "fresh_position"]

_END = object()


class StreamBudget(NamedTuple):
    """What one packed batch of a stream may hold, and what happens to a longer example."""

    max_tokens: int
    max_seqs_per_bin: int  # 0: unlimited
    buffer_size: int
    overlong: str


def fresh_position(epoch: int, num_replicas: int, rank: int) -> Dict[str, Any]:
    """The position of a stream that has not started: nothing read, nothing pending."""
    return {"epoch": epoch, "num_replicas": num_replicas, "rank": rank, "num_workers": None, "worker": None,
            "cursor": 0, "next_key": 0, "pending": [], "ready": [], "flushed": False, "yielded": 0,
            "empties_done": 0}


def check_same_split(position: Dict[str, Any], world: int, rank: int, workers: int, worker: int) -> None:
    """A stream position saved mid-epoch resumes only the same (rank, worker) shard of the same split."""
    saved = (position["num_replicas"], position["rank"], position["num_workers"], position["worker"])
    if saved != (world, rank, workers, worker):
        raise ValueError(
            f"this state was saved mid-epoch by rank {saved[1]} of {saved[0]}, worker {saved[3]} of "
            f"{saved[2]}, but is loaded into rank {rank} of {world}, worker {worker} of {workers}; a "
            f"stream's position cannot be re-dealt to another split. Resume with the same world size "
            f"and num_workers (torchdata's StatefulDataLoader restores each worker's own state), or "
            f"resume at an epoch boundary"
        )


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


class Stream(Iterator[Any]):
    """The examples of one (rank, worker) shard, packed online; all progress lives in attributes."""

    def __init__(self, source: Any, *, lengths: Optional[np.ndarray], order: Optional[np.ndarray], indexed: bool,
                 budget: "StreamBudget", collate: Callable[[List[Any]], Any], epoch: int, generation: Generation,
                 placement: Tuple[int, int, int, int], empties_target: int, resume: Optional[Dict[str, Any]],
                 on_step: Callable[["Stream", bool], None]) -> None:
        self.source, self.lengths, self.order, self.indexed = source, lengths, order, indexed
        self.budget, self.collate = budget, collate
        self.generation = generation.number
        self._owner_generation = generation
        self._on_step = on_step
        self.epoch = epoch
        world, rank, workers, worker = placement
        self.world, self.rank, self.workers, self.worker = world, rank, workers, worker
        self.offset, self.stride = shard_span(world, rank, workers, worker)
        self.packer = _packer.OnlinePacker(budget.max_tokens, budget.max_seqs_per_bin, budget.buffer_size)
        self.pieces: Dict[int, Tuple[int, int, int]] = {}  # key -> (position, start, size)
        self.cache: Dict[int, Any] = {}  # position -> example, while a piece of it waits
        self.refs: Dict[int, int] = {}  # position -> its pieces not yet handed out
        self.ready: Deque[np.ndarray] = deque()  # closed bins (arrays of keys) not yet handed out
        self.cursor = 0  # examples of this shard pushed so far
        self.next_key = 0
        self.flushed = False
        self.yielded = 0
        self.empties_done = 0
        self.finished = False
        self.started = False
        self.iterator: Optional[Iterator[Any]] = None  # a streamed source, opened at the first read
        self.empties_target = empties_target
        # Without lengths= nobody knows the data's lengths in advance: this shard counts what its
        # policy truncates or splits and says so when its pass has read everything.
        self._read_counts = [0, 0, 0, 0, 0]  # examples, tokens; longer examples, their tokens, their pieces
        self.one_thread = OneThread("PackedIterableDataset")
        if resume is not None:
            self._restore(resume)

    # -- reading -----------------------------------------------------------------------------
    def _position(self, k: int) -> int:
        return self.offset + k * self.stride

    def _fetch_indexed(self, position: int) -> Any:
        index = int(self.order[position]) if self.order is not None else position
        return self.source[index]

    def _open_stream(self, first_k: int) -> Iterator[Any]:
        source = self.source
        base = source() if callable(source) and not hasattr(source, "__iter__") else source
        return islice(iter(base), self._position(first_k), None, self.stride)

    def _num_owned(self) -> int:
        return owned_count(len(self.source), self.offset, self.stride)

    def _read(self) -> Any:
        """The next example of this shard, or _END."""
        if self.indexed:
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
        lengths = self.lengths
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
        pieces = _pieces(n, self.budget.max_tokens, self.budget.overlong, position)
        self._count(n, len(pieces))
        for start, size in pieces:
            key = self.next_key
            self.next_key += 1
            self.pieces[key] = (position, start, size)
            self.refs[position] = self.refs.get(position, 0) + 1
            self.ready.extend(self.packer.push(key, size))
        if self.refs.get(position):
            self.cache[position] = example
        self.cursor += 1
        return True

    def _count(self, n: int, pieces: int) -> None:
        counts = self._read_counts
        counts[0] += 1
        counts[1] += n
        if n > self.budget.max_tokens:  # truncated or split: _pieces refused it under "error"
            counts[2] += 1
            counts[3] += n
            counts[4] += pieces

    def _report_overlong(self) -> None:
        examples, tokens, longer, longer_tokens, pieces = self._read_counts
        counts = tally_overlong(self.budget.overlong, self.budget.max_tokens, examples=examples, tokens=tokens,
                                longer=longer, longer_tokens=longer_tokens, pieces=pieces)
        if self.lengths is not None or counts is None:
            return  # with lengths= the dataset reported the whole epoch before it started
        warnings.warn(counts.message(f"PackedIterableDataset, epoch {self.epoch}, rank {self.rank}, worker "
                                     f"{self.worker}"), stacklevel=3)

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
    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> Any:
        with self.one_thread:
            self._owner_generation.check(self.generation, epoch=self.epoch)
            first, self.started = not self.started, True
            self._on_step(self, first)
            while not self.ready:
                if self.flushed:
                    if self.empties_done < self.empties_target:
                        self.empties_done += 1
                        self.yielded += 1
                        return empty_step(self.collate)
                    self.finished = True
                    raise StopIteration
                if not self._advance():
                    self.ready.extend(self.packer.flush())
                    self.flushed = True
                    self._report_overlong()
            keys = self.ready.popleft()
            examples = [self._take(int(key)) for key in keys]
            self.yielded += 1
            return self.collate(examples)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        with self.one_thread.lock:  # not half-way through a batch another thread is taking
            return self._state()

    def _state(self) -> Dict[str, Any]:
        pending = [[int(k), *self.pieces[int(k)]] for k in self.packer.pending()]
        ready = [[[int(k), *self.pieces[int(k)]] for k in keys] for keys in self.ready]
        return {
            "epoch": self.epoch, "num_replicas": self.world, "rank": self.rank,
            "num_workers": self.workers, "worker": self.worker, "cursor": self.cursor,
            "next_key": self.next_key, "pending": pending, "ready": ready, "flushed": self.flushed,
            "yielded": self.yielded, "empties_done": self.empties_done,
        }

    def _restore(self, state: Dict[str, Any]) -> None:
        """Continue from a position ``check_position`` accepted; what only the examples can tell is checked here."""
        fields = state_fields(state)
        self.cursor, self.next_key = state["cursor"], state["next_key"]
        self.flushed, self.yielded, self.empties_done = state["flushed"], state["yielded"], state["empties_done"]
        if self.empties_done > self.empties_target:
            fields.fail("empties_done", self.empties_done,
                        f"this stream ends with {self.empties_target} empty batches this epoch")
        labels = {}  # key -> the field that saved the piece, for errors
        for i, (key, position, start, size) in enumerate(state["pending"]):
            self.pieces[key], labels[key] = (position, start, size), f"pending[{i}]"
            if self.packer.push(key, size):  # the window held these, so no push can close a bin
                budget = self.budget
                fields.fail("pending", state["pending"], f"more than one window of buffer_size={budget.buffer_size} "
                                                         f"open bins under max_tokens={budget.max_tokens}")
        for b, keys in enumerate(state["ready"]):
            for i, (key, position, start, size) in enumerate(keys):
                self.pieces[key], labels[key] = (position, start, size), f"ready[{b}][{i}]"
            self.ready.append(np.asarray([k[0] for k in keys], dtype=np.int64))
        needed = set()  # positions of examples that pieces still wait on
        for position, *_ in self.pieces.values():
            self.refs[position] = self.refs.get(position, 0) + 1
            needed.add(position)
        if self.indexed:
            for position in needed:
                self.cache[position] = self._fetch_indexed(position)
        else:
            self._reread(needed, fields)
        for key, (position, start, size) in self.pieces.items():
            n = self._length(self.cache[position], position)
            if (start, size) not in _pieces(n, self.budget.max_tokens, self.budget.overlong, position):
                fields.fail(labels[key], [key, position, start, size],
                            f"tokens {start}:{start + size} of the example at position {position} ({n} tokens) are not "
                            f"a piece overlong={self.budget.overlong!r} makes")

    def _reread(self, needed: Set[int], fields: SavedFields) -> None:
        """Read a plain stream again up to the cursor, keeping the examples that pieces wait on.

        A stream cannot seek: it is read from the first example still waiting, or the last one read
        (islice skips the rest at C speed), which also proves the source has the examples the state
        says were read.
        """
        first = min({(p - self.offset) // self.stride for p in needed} | ({self.cursor - 1} if self.cursor else set()),
                    default=0)
        self.iterator = iterator = self._open_stream(first)
        for k in range(first, self.cursor):
            example = next(iterator, _END)
            if example is _END:
                fields.fail("cursor", self.cursor, f"the source holds only {k} examples of this shard: it is not the "
                                                   f"source the state was saved from")
            if self._position(k) in needed:
                self.cache[self._position(k)] = example
        if self.flushed and next(iterator, _END) is not _END:
            fields.fail("flushed", True, f"the stream is marked ended after {self.cursor} examples of this shard, but "
                                         f"the source holds more")
