"""PackingConfig: the token budget and the packing policy, as one object every component takes.

``PackedCollator``, ``PackedBatchSampler``, ``PackedIterableDataset``, ``WarpPackCallback`` and
``pack_trainer`` all take ``packing=``; built from one config they cannot disagree on the budget or
on what happens to an example longer than it. ``OverlongCounts`` says what a budget cuts, so that
truncating or splitting is never silent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np

from warppack.engine.options import (
    check_flag,
    check_optional_count,
    check_overlong,
    check_strategy,
)

__all__ = ["OverlongCounts", "PackingConfig", "check_multiple", "count_overlong", "merge_packing", "split_pieces",
           "tally_overlong"]


def check_multiple(max_tokens: Optional[int], multiple: Optional[int]) -> None:
    """Padding up to a multiple must stay within the budget: refuse a budget that is no multiple."""
    if max_tokens is None or not multiple or max_tokens % multiple == 0:
        return
    lower = max_tokens // multiple * multiple
    choices = f"{lower} or {lower + multiple}" if lower else f"{multiple}"
    raise ValueError(
        f"max_tokens={max_tokens} is not a multiple of pad_to_multiple_of={multiple}, so padding a batch "
        f"to a multiple could take it past the budget; pick a max_tokens that is a multiple, e.g. {choices}"
    )


@dataclass(frozen=True, init=False)
class PackingConfig:
    """How batches are packed: the one set of options the collator, the loaders and the Trainer share.

    - ``max_tokens``: the token budget of a batch, padding included (None: decided later, e.g. by
      ``pack_trainer``; a collator without one packs whatever it is given).
    - ``overlong``: what happens to an example longer than ``max_tokens``: ``"error"``,
      ``"truncate"`` (its first ``max_tokens`` tokens) or ``"split"`` (consecutive pieces, streams
      only). None means not chosen: an error, except under ``pack_trainer``, which truncates as TRL
      does and warns.
    - ``strategy``: ``"bfd"``, ``"ffd"`` or ``"online"`` (the planners of ``warppack.plan``).
    - ``pad_to_multiple_of``: pad each batch's length to a multiple (``max_tokens`` must be one).
    - ``static_shape``: pad every batch to exactly ``max_tokens`` tokens and ``max_sequences + 1``
      boundaries (one shape for ``torch.compile`` and CUDA graphs).
    - ``max_sequences``: the most sequences in one batch (the loaders' ``max_seqs_per_bin``).

    >>> config = PackingConfig(4096, overlong="truncate")
    >>> config
    PackingConfig(max_tokens=4096, overlong='truncate')
    >>> config.replace(max_tokens=8192).max_tokens
    8192
    """

    max_tokens: Optional[int]
    overlong: Optional[str]
    strategy: str
    pad_to_multiple_of: Optional[int]
    static_shape: bool
    max_sequences: Optional[int]

    def __init__(self, max_tokens: Optional[int] = None, *, overlong: Optional[str] = None, strategy: str = "bfd",
                 pad_to_multiple_of: Optional[int] = None, static_shape: bool = False,
                 max_sequences: Optional[int] = None) -> None:
        put = object.__setattr__  # frozen: the checked values are stored once, here
        put(self, "max_tokens", check_optional_count(max_tokens, name="max_tokens"))
        put(self, "overlong", None if overlong is None else check_overlong(overlong))
        put(self, "strategy", check_strategy(strategy))
        put(self, "pad_to_multiple_of", check_optional_count(pad_to_multiple_of, name="pad_to_multiple_of"))
        put(self, "static_shape", check_flag(static_shape, name="static_shape"))
        put(self, "max_sequences", check_optional_count(max_sequences, name="max_sequences"))
        check_multiple(self.max_tokens, self.pad_to_multiple_of)

    def replace(self, **changes: Any) -> "PackingConfig":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def given(self) -> Dict[str, Any]:
        """The fields set to something other than their default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(_DEFAULTS, f.name)}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.given().items())
        return f"PackingConfig({shown})"


_DEFAULTS = PackingConfig()


def merge_packing(packing: Optional[PackingConfig], given: Mapping[str, Any], *, owner: str,
                  source: str = "packing", names: Optional[Mapping[str, str]] = None) -> PackingConfig:
    """``packing`` with the options in ``given`` (field -> value; None: not given) filled in.

    An option set in both (not at its default in ``packing``) to different values is an error: the
    budget and the policy are set in one place. ``names`` maps a field to the argument that
    ``owner`` calls it, for the message; ``source`` names where ``packing`` came from.
    """
    if packing is not None and not isinstance(packing, PackingConfig):
        raise TypeError(f"packing must be a warppack.PackingConfig, got {packing!r} of type "
                        f"{type(packing).__name__}; pass e.g. packing=warppack.PackingConfig(max_tokens=8192)")
    base = packing if packing is not None else PackingConfig()
    set_in_base = base.given()
    changes = {}
    for field, value in given.items():
        if value is None:
            continue
        if field in set_in_base and set_in_base[field] != value:
            argument = (names or {}).get(field, field)
            raise ValueError(
                f"{owner} got {argument}={value!r} but {source} has {field}={set_in_base[field]!r} ({base!r}); "
                f"set {field} in one place, the PackingConfig, so the collator, the loaders and the Trainer "
                f"use the same value"
            )
        changes[field] = value
    return base.replace(**changes) if changes else base


@dataclass(frozen=True)
class OverlongCounts:
    """What a budget does to the examples longer than it: how many, how many tokens, what share."""

    policy: str  # "truncate" or "split"
    max_tokens: int
    examples: int  # examples longer than max_tokens
    tokens: int  # truncate: the tokens cut; split: the tokens of the split examples
    pieces: int  # the sequences those examples become
    total_examples: int
    total_tokens: int

    @property
    def fraction(self) -> float:
        """``tokens`` as a share of all tokens."""
        return self.tokens / self.total_tokens if self.total_tokens else 0.0

    def message(self, owner: str) -> str:
        share = self.examples / self.total_examples if self.total_examples else 0.0
        longer = (f"{owner}: {self.examples:,} of {self.total_examples:,} examples ({share:.1%}) are longer than "
                  f"max_tokens={self.max_tokens:,}")
        if self.policy == "truncate":
            return (f"{longer} and are truncated to it: {self.tokens:,} of {self.total_tokens:,} tokens "
                    f"({self.fraction:.1%} of the data) are cut. Raise max_tokens to keep them, or pass "
                    f"overlong='error' to refuse them")
        return (f"{longer} and are split into {self.pieces:,} pieces: {self.tokens:,} of {self.total_tokens:,} tokens "
                f"({self.fraction:.1%} of the data) are in split examples, whose later pieces start without the "
                f"text before them. Raise max_tokens to keep them whole")

    def metrics(self) -> Dict[str, float]:
        """The counts as training-log metrics."""
        verb = "truncated" if self.policy == "truncate" else "split"
        return {f"{verb}_examples": self.examples, f"{verb}_tokens": self.tokens,
                f"{verb}_token_fraction": self.fraction}


def count_overlong(lengths: np.ndarray, max_tokens: int, overlong: str) -> Optional[OverlongCounts]:
    """What ``overlong`` does to ``lengths`` under ``max_tokens``; None when nothing is truncated or split."""
    if overlong not in ("truncate", "split") or not len(lengths):
        return None
    longer = lengths[lengths > max_tokens].astype(np.int64)
    pieces = len(longer) if overlong == "truncate" else split_pieces(longer, max_tokens)
    return tally_overlong(overlong, max_tokens, examples=len(lengths), tokens=int(lengths.sum(dtype=np.int64)),
                          longer=len(longer), longer_tokens=int(longer.sum()), pieces=pieces)


def tally_overlong(overlong: str, max_tokens: int, *, examples: int, tokens: int, longer: int, longer_tokens: int,
                   pieces: int) -> Optional[OverlongCounts]:
    """The counts from sums kept as examples go by (a stream meets them one at a time); None when nothing is cut.

    ``examples`` and ``tokens`` count all of them; ``longer``, ``longer_tokens`` and ``pieces`` the examples
    longer than ``max_tokens``, their tokens and the sequences ``overlong`` makes of them.
    """
    if overlong not in ("truncate", "split") or not longer:
        return None
    affected = longer_tokens - longer * max_tokens if overlong == "truncate" else longer_tokens
    return OverlongCounts(policy=overlong, max_tokens=max_tokens, examples=longer, tokens=affected, pieces=pieces,
                          total_examples=examples, total_tokens=tokens)


def split_pieces(lengths: np.ndarray, max_tokens: int) -> int:
    """Sequences that ``overlong="split"`` makes of the (positive) ``lengths`` at ``max_tokens``."""
    return int(((np.asarray(lengths, dtype=np.int64) + (max_tokens - 1)) // max_tokens).sum())
