"""A saved PackedIterableDataset position, read as untrusted input: every field type- and range-checked.

A position that passes resumes without a KeyError or IndexError later and without silently
skipping examples: its cursor is within the shard, every piece it holds was read by that shard and
fits the budget. What only the examples can tell (a piece within its example, the end of a plain
stream) is checked when the stream restores it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from warppack.distributed import MAX_REPLICAS
from warppack.engine.options import INT32_MAX
from warppack.loaders.state import EPOCH_MAX, SavedFields
from warppack.loaders.stream.shards import owned_count, shard_span

__all__ = ["check_position", "state_fields"]


def state_fields(state: Mapping[str, Any]) -> SavedFields:
    return SavedFields(state, owner="PackedIterableDataset", noun="dataset")


def check_position(state: Mapping[str, Any], *, max_tokens: int, max_seqs_per_bin: Optional[int],
                   num_examples: Optional[int]) -> Dict[str, Any]:
    """The position fields of ``state``, as plain ints and lists; ValueError naming the first bad field.

    ``num_examples``: the length of an indexed source (None for a stream, whose end is unknown here).
    """
    f = state_fields(state)
    epoch = f.integer("epoch", f.get("epoch"), maximum=EPOCH_MAX)
    world = f.integer("num_replicas", f.get("num_replicas"), minimum=1, maximum=MAX_REPLICAS)
    rank = f.integer("rank", f.get("rank"), maximum=world - 1)
    cursor = f.integer("cursor", f.get("cursor"))
    next_key = f.integer("next_key", f.get("next_key"))
    flushed = f.flag("flushed", f.get("flushed"))
    yielded = f.integer("yielded", f.get("yielded"))
    empties = f.integer("empties_done", f.get("empties_done"), maximum=yielded)
    pending_raw = f.items("pending", f.get("pending"))
    ready_raw = f.items("ready", f.get("ready"))
    position: Dict[str, Any] = {"epoch": epoch, "num_replicas": world, "rank": rank, "cursor": cursor,
                                "next_key": next_key, "flushed": flushed, "yielded": yielded,
                                "empties_done": empties, "pending": [], "ready": []}
    workers_raw, worker_raw = f.get("num_workers"), f.get("worker")
    if workers_raw is None:  # saved before the first batch: no split chosen, nothing read
        if worker_raw is not None:
            f.fail("worker", worker_raw, "set although num_workers is None")
        for name in ("cursor", "next_key", "yielded", "flushed", "pending", "ready"):
            if state[name]:
                f.fail(name, state[name], "not empty although num_workers is None (a position saved before the "
                                          "first batch)")
        return {**position, "num_workers": None, "worker": None}
    workers = f.integer("num_workers", workers_raw, minimum=1, maximum=INT32_MAX)
    worker = f.integer("worker", worker_raw, maximum=workers - 1)
    offset, stride = shard_span(world, rank, workers, worker)
    shard = f"rank {rank} of {world}, worker {worker} of {workers}"
    if num_examples is not None:
        owned = owned_count(num_examples, offset, stride)
        if cursor > owned:
            f.fail("cursor", cursor, f"the shard of {shard} holds only {owned} of the {num_examples} examples")
        if flushed and cursor < owned:
            f.fail("flushed", flushed, f"the stream is marked ended after {cursor} of its {owned} examples")
    if empties and not flushed:
        f.fail("empties_done", empties, "empty batches come only after the stream ended (flushed is False)")
    if flushed and pending_raw:
        f.fail("pending", pending_raw, "the window is emptied into ready bins when the stream ends (flushed)")
    keys: Set[int] = set()
    spans: Set[Tuple[int, int]] = set()  # (position, start): a piece held twice would be trained on twice

    def piece(field: str, value: Any) -> List[int]:
        key, where, start, size = f.items(field, value, length=4)
        key = f.integer(f"{field}[0] (key)", key)
        if key >= next_key or key in keys:
            f.fail(field, value, f"keys are distinct and below next_key={next_key}")
        keys.add(key)
        where = f.integer(f"{field}[1] (position)", where)
        if where < offset or (where - offset) % stride or (where - offset) // stride >= cursor:
            f.fail(field, value, f"position {where} is not one the shard of {shard} has read ({cursor} examples, "
                                 f"positions {offset}, {offset + stride}, ...)")
        start = f.integer(f"{field}[2] (start)", start)
        size = f.integer(f"{field}[3] (size)", size, minimum=1, maximum=max_tokens)
        if (where, start) in spans:
            f.fail(field, value, f"tokens from {start} of the example at position {where} are held twice")
        spans.add((where, start))
        return [key, where, start, size]

    position["pending"] = [piece(f"pending[{i}]", v) for i, v in enumerate(pending_raw)]
    for b, raw in enumerate(ready_raw):
        pieces = [piece(f"ready[{b}][{i}]", v) for i, v in enumerate(f.items(f"ready[{b}]", raw))]
        tokens = sum(p[3] for p in pieces)
        if not pieces or tokens > max_tokens:
            f.fail(f"ready[{b}]", raw, f"a bin holds 1 to max_tokens={max_tokens} tokens, this one {tokens}")
        if max_seqs_per_bin is not None and len(pieces) > max_seqs_per_bin:
            f.fail(f"ready[{b}]", raw, f"{len(pieces)} pieces, more than max_seqs_per_bin={max_seqs_per_bin}")
        position["ready"].append(pieces)
    return {**position, "num_workers": workers, "worker": worker}
