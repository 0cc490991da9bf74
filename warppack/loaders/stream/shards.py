"""How a PackedIterableDataset splits its source over ranks and DataLoader workers, and pads ranks to equal steps.

Rank ``r`` of ``W`` takes positions ``p`` with ``p % W == r``; worker ``w`` of ``n`` takes, among
those, every ``n``-th (``(p // W) % n == w``): one (rank, worker) shard is positions ``r + W·w``,
step ``W·n``. With ``lengths=`` every worker simulates the packing of all shards (C++, no example is
read) and pads its rank with empty batches up to the largest rank's count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from warppack.engine.plan import plan

__all__ = ["empties_for", "indexed", "owned_count", "self_sharding", "shard_counts", "shard_span", "worker_placement"]


def self_sharding(source: Any) -> bool:
    """HF ``datasets.IterableDataset`` hands each DataLoader worker its own file shards by itself."""
    return type(source).__module__.split(".")[0] == "datasets" and hasattr(source, "n_shards")


def indexed(source: Any) -> bool:
    """Whether ``source`` is read by position (a list or map-style dataset) rather than streamed."""
    if isinstance(source, (str, bytes, Mapping, IterableDataset)) or self_sharding(source):
        return False
    return hasattr(source, "__len__") and hasattr(source, "__getitem__")


def worker_placement(source: Any, *, num_workers: Optional[int], has_lengths: bool) -> Tuple[int, int]:
    """(workers the source is split over by position, this worker's index), checked against ``num_workers``."""
    info = get_worker_info()
    workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
    if num_workers is not None and max(1, num_workers) != workers:
        raise ValueError(
            f"PackedIterableDataset(num_workers={num_workers}) but the DataLoader runs {workers} "
            f"worker(s); pass the DataLoader's num_workers to the dataset"
        )
    if workers > 1 and self_sharding(source):
        if has_lengths:
            raise ValueError(
                "a HF datasets.IterableDataset splits itself over DataLoader workers by file shard, so "
                "lengths= cannot predict each worker's batches; drop lengths= and wrap the loader in "
                "warppack.equal_steps(...), or use num_workers=0"
            )
        return 1, 0  # the source already gives this worker its own examples
    return workers, worker


def shard_span(world: int, rank: int, workers: int, worker: int) -> Tuple[int, int]:
    """(first position, step between positions) of the (rank, worker) shard."""
    return rank + world * worker, world * workers


def owned_count(num_examples: int, offset: int, stride: int) -> int:
    """Positions of a source of ``num_examples`` that the shard starting at ``offset`` reads."""
    return max(0, -(-(num_examples - offset) // stride))


def shard_counts(lengths: np.ndarray, world: int, workers: int, *, max_tokens: int, buffer_size: int,
                 max_seqs_per_bin: Optional[int], overlong: str) -> np.ndarray:
    """Bins each (rank, worker) shard of ``lengths`` (in read order) packs into, ``[world, workers]``."""
    counts = np.zeros((world, workers), dtype=np.int64)
    for r in range(world):
        for w in range(workers):
            shard = np.ascontiguousarray(lengths[r + world * w:: world * workers])
            if len(shard):
                counts[r, w] = plan(shard, max_tokens, strategy="online", buffer_size=buffer_size,
                                    max_seqs_per_bin=max_seqs_per_bin, overlong=overlong).num_bins
    return counts


def empties_for(counts: np.ndarray, rank: int, worker: int) -> int:
    """Empty batches ``worker`` of ``rank`` adds so that its rank ends with as many as the largest rank."""
    deficit = int(counts.sum(axis=1).max() - counts[rank].sum())
    # Hand the rank's padding to its workers with the fewest bins first (deterministic).
    totals = counts[rank].copy()
    mine = 0
    for _ in range(deficit):
        w = int(np.argmin(totals))
        totals[w] += 1
        mine += w == worker
    return mine
