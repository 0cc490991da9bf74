"""The options of a PackedIterableDataset: validated once, frozen, and the fields a saved state must match."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from warppack.batch.collator import PackedCollator
from warppack.distributed import resolve_replicas
from warppack.engine.config import OverlongCounts, PackingConfig, count_overlong, merge_packing
from warppack.engine.options import (
    check_flag,
    check_int,
    check_int32_count,
    check_max_seqs_per_bin,
    check_overlong,
    check_seed,
)
from warppack.engine.plan import as_lengths_array
from warppack.loaders.state import check_positive_lengths, lengths_fingerprint
from warppack.loaders.stream.shards import indexed

__all__ = ["IterableConfig", "STATE_FORMAT", "CHECKED"]

STATE_FORMAT = "warppack.PackedIterableDataset/1"
#: Saved fields that must match for a state to be loaded: another value means another stream of batches.
CHECKED = ("max_tokens", "buffer_size", "seed", "shuffle", "max_seqs_per_bin", "overlong", "num_examples",
           "lengths_fingerprint")


# eq=False: ``lengths`` is an array (elementwise ==), and two configs are never compared whole.
@dataclass(frozen=True, eq=False)
class IterableConfig:
    """Everything fixed at construction; the split, ``len()`` and saved states depend on all of it."""

    source: Any
    max_tokens: int
    buffer_size: int
    collator: Callable[[List[Any]], Any]
    lengths: Optional[np.ndarray]
    shuffle: bool
    seed: int
    max_seqs_per_bin: Optional[int]
    overlong: str
    num_replicas: int
    rank: int
    num_workers: Optional[int]
    indexed: bool  # the source is read by position (resume is O(1), shuffle works), else streamed
    packing: PackingConfig  # the options above that the collator shares, with the dataset's policy

    @classmethod
    def build(
        cls,
        source: Any,
        max_tokens: Optional[int],
        *,
        packing: Optional[PackingConfig],
        buffer_size: int,
        collator: Optional[Callable[[List[Any]], Any]],
        lengths: Any,
        shuffle: bool,
        seed: int,
        max_seqs_per_bin: Optional[int],
        overlong: str,
        num_replicas: Optional[int],
        rank: Optional[int],
        num_workers: Optional[int],
    ) -> "IterableConfig":
        """Validate the constructor arguments of PackedIterableDataset; errors name the setting to change.

        Options left at their defaults take ``packing``'s values; one given in both must agree.
        """
        if max_tokens is not None:
            check_int32_count(max_tokens)
        buffer_size = check_int32_count(buffer_size, name="buffer_size")
        if max_seqs_per_bin is not None:
            max_seqs_per_bin = check_max_seqs_per_bin(max_seqs_per_bin)
        check_overlong(overlong)
        merged = merge_packing(
            packing, {"max_tokens": max_tokens, "overlong": None if overlong == "error" else overlong,
                      "max_sequences": max_seqs_per_bin},
            owner="PackedIterableDataset", names={"max_sequences": "max_seqs_per_bin"})
        if merged.max_tokens is None:
            raise TypeError("PackedIterableDataset needs a token budget: pass max_tokens=... or "
                            "packing=warppack.PackingConfig(max_tokens=...)")
        budget, max_seqs_per_bin, overlong = merged.max_tokens, merged.max_sequences, merged.overlong or "error"
        merged = merged.replace(overlong=overlong)
        seed = check_seed(seed)
        shuffle = check_flag(shuffle, name="shuffle")
        if isinstance(source, (str, bytes)):
            raise TypeError("source must be a collection or stream of examples, got a string")
        if isinstance(source, Mapping):
            raise TypeError(
                f"source is a mapping ({type(source).__name__}), not a collection of examples; pass one split "
                f"(e.g. source=dataset_dict['train']) or a list of examples"
            )
        is_indexed = indexed(source)
        if not is_indexed:
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
        if shuffle and not is_indexed:
            raise ValueError(
                "shuffle=True needs a source that can be read by index (a list or map-style dataset); "
                "shuffle the stream at its source instead (e.g. HF IterableDataset.shuffle(buffer_size=...))"
            )
        if collator is None:
            collator = _default_collator(merged)
        elif not callable(collator):
            raise TypeError(
                f"collator must be a function from a list of examples to a batch, got {collator!r} of type "
                f"{type(collator).__name__}; pass e.g. collator=warppack.PackedCollator({budget}) or leave it None"
            )
        else:
            _check_collator_budget(collator, merged)
        array = None if lengths is None else as_lengths_array(lengths)
        if array is not None:
            check_positive_lengths(array)
        if array is not None and is_indexed and len(array) != len(source):
            raise ValueError(
                f"lengths has {len(array)} entries but the source holds {len(source)} examples; pass "
                f"one token count per example (warppack.lengths_of(source))"
            )
        world, rank_ = resolve_replicas(num_replicas, rank, owner="PackedIterableDataset")
        if num_workers is not None:
            num_workers = check_int(num_workers, name="num_workers", minimum=0, example=2)
        return cls(
            source=source, max_tokens=budget, buffer_size=buffer_size, collator=collator, lengths=array,
            shuffle=shuffle, seed=seed, max_seqs_per_bin=max_seqs_per_bin, overlong=overlong,
            num_replicas=world, rank=rank_, num_workers=num_workers, indexed=is_indexed, packing=merged,
        )

    @cached_property
    def overlong_counts(self) -> Optional[OverlongCounts]:
        """The examples the budget truncates or splits, from ``lengths`` (None: none, or no lengths)."""
        return None if self.lengths is None else count_overlong(self.lengths, self.max_tokens, self.overlong)

    @cached_property
    def lengths_fingerprint(self) -> Optional[str]:
        # Lazy: hashing 10M lengths costs ~0.1 s, needed only when a state is saved or loaded.
        return None if self.lengths is None else lengths_fingerprint(self.lengths)

    def saved_options(self) -> Dict[str, Any]:
        """The ``CHECKED`` fields, as a state records them."""
        return {
            "max_tokens": self.max_tokens, "buffer_size": self.buffer_size, "seed": self.seed,
            "shuffle": self.shuffle, "max_seqs_per_bin": self.max_seqs_per_bin, "overlong": self.overlong,
            "num_examples": len(self.source) if self.indexed else None,
            "lengths_fingerprint": self.lengths_fingerprint,
        }


def _default_collator(packing: PackingConfig) -> Callable[[List[Any]], Any]:
    # The stream hands the collator pieces that already fit: a split example arrives as its pieces.
    return PackedCollator(packing=packing.replace(overlong=None if packing.overlong == "split" else packing.overlong))


def _check_collator_budget(collator: Any, packing: PackingConfig) -> None:
    """A PackedCollator with its own budget or sequence cap must agree with the dataset's."""
    if not isinstance(collator, PackedCollator):
        return
    for field, argument in (("max_tokens", "max_tokens"), ("max_sequences", "max_seqs_per_bin")):
        mine, theirs = getattr(packing, field), getattr(collator, field)
        if theirs is not None and theirs != mine:
            raise ValueError(
                f"PackedIterableDataset packs with {argument}={mine} but its collator has {field}={theirs}; "
                f"build both from one warppack.PackingConfig (packing=...) or leave collator=None"
            )
