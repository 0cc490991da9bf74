"""The options of a PackedBatchSampler: validated once, frozen, and the fields a saved state must match."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, Optional

import numpy as np

from warppack.distributed import resolve_replicas
from warppack.engine.config import OverlongCounts, PackingConfig, count_overlong, merge_packing
from warppack.engine.options import (
    check_flag,
    check_int32_count,
    check_max_seqs_per_bin,
    check_overlong,
    check_seed,
    check_strategy,
)
from warppack.engine.plan import as_lengths_array
from warppack.loaders.state import check_positive_lengths, lengths_fingerprint

__all__ = ["SamplerConfig", "STATE_FORMAT", "CHECKED"]

STATE_FORMAT = "warppack.PackedBatchSampler/1"
#: Saved fields that must match for a state to be loaded: another value means another plan.
CHECKED = ("num_examples", "lengths_fingerprint", "max_tokens", "seed", "shuffle", "strategy",
           "max_seqs_per_bin", "overlong", "drop_last")


# eq=False: ``lengths`` is an array (elementwise ==), and two configs are never compared whole.
@dataclass(frozen=True, eq=False)
class SamplerConfig:
    """Everything fixed at construction; the plan, ``len()`` and saved states depend on all of it."""

    lengths: np.ndarray
    max_tokens: int
    shuffle: bool
    seed: int
    drop_last: bool
    strategy: str
    num_replicas: int
    rank: int
    max_seqs_per_bin: Optional[int]
    overlong: str
    interleaved: bool
    packing: PackingConfig  # the options above that the collator shares, with the sampler's policy

    @classmethod
    def build(
        cls,
        lengths: Any,
        max_tokens: Optional[int],
        *,
        packing: Optional[PackingConfig],
        shuffle: bool,
        seed: int,
        drop_last: bool,
        strategy: str,
        num_replicas: Optional[int],
        rank: Optional[int],
        max_seqs_per_bin: Optional[int],
        overlong: str,
        interleaved: bool,
    ) -> "SamplerConfig":
        """Validate the constructor arguments of PackedBatchSampler; errors name the setting to change.

        Options left at their defaults take ``packing``'s values; one given in both must agree.
        """
        if max_tokens is not None:
            check_int32_count(max_tokens)
        check_strategy(strategy)
        check_overlong(overlong)
        if max_seqs_per_bin is not None:
            max_seqs_per_bin = check_max_seqs_per_bin(max_seqs_per_bin)
        merged = merge_packing(
            packing, {"max_tokens": max_tokens, "strategy": None if strategy == "bfd" else strategy,
                      "overlong": None if overlong == "error" else overlong, "max_sequences": max_seqs_per_bin},
            owner="PackedBatchSampler", names={"max_sequences": "max_seqs_per_bin"})
        if merged.max_tokens is None:
            raise TypeError("PackedBatchSampler needs a token budget: pass max_tokens=... or "
                            "packing=warppack.PackingConfig(max_tokens=...)")
        budget, strategy, max_seqs_per_bin = merged.max_tokens, merged.strategy, merged.max_sequences
        overlong = merged.overlong or "error"
        if overlong == "split":
            raise ValueError(
                "overlong='split' cannot be expressed by a batch sampler: it yields dataset indices, and a "
                "split example would need token ranges. Use overlong='truncate' (with PackedCollator("
                "max_tokens, overlong='truncate')), filter long examples, or stream with "
                "warppack.PackedIterableDataset(..., overlong='split')"
            )
        seed = check_seed(seed)
        shuffle, drop_last = check_flag(shuffle, name="shuffle"), check_flag(drop_last, name="drop_last")
        interleaved = check_flag(interleaved, name="interleaved")
        array = as_lengths_array(lengths)
        check_positive_lengths(array)
        if len(array):
            high = int(np.argmax(array))
            if overlong == "error" and array[high] > budget:
                raise ValueError(
                    f"example {high} has {int(array[high])} tokens, more than max_tokens={budget}; raise "
                    f"max_tokens, filter long examples, pass overlong='truncate', or stream with "
                    f"PackedIterableDataset(..., overlong='split')"
                )
        world, rank_ = resolve_replicas(num_replicas, rank, owner="PackedBatchSampler")
        return cls(
            lengths=array, max_tokens=budget, shuffle=shuffle, seed=seed, drop_last=drop_last, strategy=strategy,
            num_replicas=world, rank=rank_, max_seqs_per_bin=max_seqs_per_bin, overlong=overlong,
            interleaved=interleaved, packing=merged.replace(overlong=overlong),
        )

    @cached_property
    def overlong_counts(self) -> Optional[OverlongCounts]:
        """The examples the budget truncates, counted once (None: none is)."""
        return count_overlong(self.lengths, self.max_tokens, self.overlong)

    @cached_property
    def lengths_fingerprint(self) -> str:
        # Lazy: hashing 10M lengths costs ~0.1 s, needed only when a state is saved or loaded.
        return lengths_fingerprint(self.lengths)

    def saved_options(self) -> Dict[str, Any]:
        """The ``CHECKED`` fields, as a state records them."""
        return {
            "num_examples": int(len(self.lengths)),
            "lengths_fingerprint": self.lengths_fingerprint,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "strategy": self.strategy,
            "max_seqs_per_bin": self.max_seqs_per_bin,
            "overlong": self.overlong,
            "drop_last": self.drop_last,
        }
