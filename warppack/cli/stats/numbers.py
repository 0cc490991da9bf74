"""The numbers of ``warppack stats``: every strategy's plan of the lengths against padded baselines.

For every strategy (bfd, ffd, online): the number of batches, how close that is to the lower
bound, the packing efficiency, the padding avoided against padding every example to the longest
one and against dynamic padding (random batches padded to their longest), and the speed-up limit
those imply (padded token slots / packed token slots).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from warppack.cli.stats.budget import (
    MAX_SPLIT_PIECES,
    BudgetSweep,
    recommend_budget,
    sweep_budgets,
    sweep_efficiency,
)
from warppack.cli.stats.refusals import NothingToPack, Overlong, TooManyPieces, check_lengths
from warppack.engine.config import split_pieces
from warppack.engine.options import DEFAULT_BUFFER_SIZE, check_int32_count, check_overlong
from warppack.engine.plan import plan
from warppack.progress import Progress

__all__ = ["STRATEGIES", "Stats", "StrategyStats", "compute_stats", "dynamic_padding_slots"]

STRATEGIES = ("bfd", "ffd", "online")


@dataclass
class StrategyStats:
    strategy: str
    bins: int
    lower_bound: int
    efficiency: float
    padding_fraction: float
    padding_tokens: int
    avoided_vs_pad_to_max: Optional[float]  # fraction of that baseline's padding removed; None if it has none
    avoided_vs_dynamic: Optional[float]
    speedup_limit_vs_pad_to_max: float  # baseline token slots / packed token slots
    speedup_limit_vs_dynamic: float
    seconds: float


@dataclass
class Stats:
    examples: int
    empty: int
    tokens: int
    max_tokens: int
    overlong: str
    longer_than_budget: int
    tokens_cut: int  # tokens dropped by overlong="truncate"
    pieces: int  # sequences after overlong="split"
    longest: int
    pad_to_max_length: int
    pad_to_max_slots: int
    dynamic_batch_size: int
    dynamic_batch_size_assumed: bool
    dynamic_slots: int
    strategies: List[StrategyStats]
    recommended: Dict[str, Any]
    max_tokens_given: bool  # False: max_tokens is the recommended budget
    sweep: BudgetSweep

    @property
    def pad_to_max_padding(self) -> float:
        return 1 - self.tokens / self.pad_to_max_slots if self.pad_to_max_slots else 0.0

    @property
    def dynamic_padding(self) -> float:
        return 1 - self.tokens / self.dynamic_slots if self.dynamic_slots else 0.0

    def to_json(self) -> Dict[str, Any]:
        return {
            "examples": self.examples,
            "empty_examples_ignored": self.empty,
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "max_tokens_given": self.max_tokens_given,
            "overlong": self.overlong,
            "longer_than_budget": self.longer_than_budget,
            "tokens_cut": self.tokens_cut,
            "sequences": self.pieces,
            "longest": self.longest,
            "pad_to_max": {
                "length": self.pad_to_max_length,
                "slots": self.pad_to_max_slots,
                "padding_fraction": self.pad_to_max_padding,
            },
            "dynamic_padding": {
                "batch_size": self.dynamic_batch_size,
                "batch_size_assumed": self.dynamic_batch_size_assumed,
                "slots": self.dynamic_slots,
                "padding_fraction": self.dynamic_padding,
            },
            "strategies": {
                s.strategy: {
                    "bins": s.bins,
                    "lower_bound": s.lower_bound,
                    "efficiency": s.efficiency,
                    "padding_fraction": s.padding_fraction,
                    "padding_tokens": s.padding_tokens,
                    "padding_avoided_vs_pad_to_max": s.avoided_vs_pad_to_max,
                    "padding_avoided_vs_dynamic": s.avoided_vs_dynamic,
                    "speedup_limit_vs_pad_to_max": s.speedup_limit_vs_pad_to_max,
                    "speedup_limit_vs_dynamic": s.speedup_limit_vs_dynamic,
                    "seconds": s.seconds,
                }
                for s in self.strategies
            },
            "recommended": self.recommended,
            "budget_sweep": self.sweep.to_json(),
        }


def dynamic_padding_slots(lengths: np.ndarray, batch_size: int, *, seed: int = 0) -> int:
    """Token slots of random batches of ``batch_size`` each padded to its longest (DataLoader shuffle)."""
    n = len(lengths)
    if n == 0:
        return 0
    shuffled = np.asarray(lengths, dtype=np.int64)[np.random.default_rng(seed).permutation(n)]
    full = n - n % batch_size
    slots = int(shuffled[:full].reshape(-1, batch_size).max(axis=1).sum()) * batch_size
    if full < n:
        slots += int(shuffled[full:].max()) * (n - full)
    return slots


def _avoided(baseline_slots: int, packed_slots: int, tokens: int) -> Optional[float]:
    baseline_padding = baseline_slots - tokens
    if baseline_padding <= 0:
        return None
    return 1 - (packed_slots - tokens) / baseline_padding


def _pieces(lengths: np.ndarray, max_tokens: int, overlong: str) -> np.ndarray:
    """Sequence lengths after the overlong policy: the sequences every batching scheme must hold."""
    if overlong == "truncate":
        return np.minimum(lengths, max_tokens)
    if overlong == "split":
        over = lengths > max_tokens
        if not over.any():
            return lengths
        full, rest = np.divmod(lengths[over], max_tokens)
        chunks = [lengths[~over], np.full(int(full.sum()), max_tokens, dtype=np.int64), rest[rest > 0]]
        return np.concatenate(chunks)
    return lengths


def compute_stats(
    lengths: np.ndarray,
    max_tokens: Optional[int] = None,
    *,
    overlong: str = "truncate",
    batch_size: Optional[int] = None,
    max_length: Optional[int] = None,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    strategies: Tuple[str, ...] = STRATEGIES,
    target_efficiency: float = 0.99,
    seed: int = 0,
) -> Stats:
    """Plan ``lengths`` with every strategy and compare with padding (see the module docstring).

    Without ``max_tokens`` the recommended budget is used. Bad input raises the ValueErrors of
    :mod:`warppack.cli.stats.refusals`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    check_lengths(lengths)
    overlong = check_overlong(overlong)
    empty = int((lengths == 0).sum())
    nonempty = lengths[lengths > 0] if empty else lengths
    if len(nonempty) == 0:
        what = "there are no examples" if len(lengths) == 0 else f"all {len(lengths):,} examples are empty"
        raise NothingToPack(f"nothing to pack: {what}")
    given = max_tokens is not None
    if max_tokens is not None:
        max_tokens = check_int32_count(max_tokens)
        longer_mask = lengths > max_tokens
        if overlong == "error" and longer_mask.any():
            index = int(np.argmax(longer_mask))
            raise Overlong(
                count=int(longer_mask.sum()), index=index, length=int(lengths[index]), max_tokens=max_tokens
            )
        if overlong == "split":
            count = split_pieces(nonempty, max_tokens)
            if count > MAX_SPLIT_PIECES:
                raise TooManyPieces(pieces=count, limit=MAX_SPLIT_PIECES, max_tokens=max_tokens)

    budgets = sweep_budgets(int(nonempty.max()), max_tokens)
    swept = tuple(dict.fromkeys(("bfd", *strategies)))  # bfd's curve chooses the recommended budget
    steps = len(swept) * len(budgets) + 1 + len(strategies)
    with Progress(steps, desc=f"planning {len(nonempty):,} lengths", unit="plan") as bar:
        sweep = sweep_efficiency(
            nonempty, budgets, strategies=swept, overlong=overlong, buffer_size=buffer_size, seed=seed, bar=bar
        )
        recommended = recommend_budget(
            nonempty, target_efficiency=target_efficiency, given=max_tokens, seed=seed, bar=bar, sweep=sweep
        )
        budget = recommended["max_tokens"] if max_tokens is None else max_tokens
        pieces = _pieces(nonempty, budget, overlong)
        tokens = int(pieces.sum())
        pad_length = max(int(pieces.max()), int(max_length or 0))
        pad_slots = len(pieces) * pad_length
        batch = 8 if batch_size is None else int(batch_size)
        dyn_slots = dynamic_padding_slots(pieces, batch, seed=seed)
        results = []
        for strategy in strategies:
            bar.set_description(f"planning {len(nonempty):,} lengths ({strategy})")
            start = time.perf_counter()
            p = plan(nonempty, budget, strategy=strategy, overlong=overlong, buffer_size=buffer_size)
            seconds = time.perf_counter() - start
            bar.update()
            slots = p.num_bins * budget
            results.append(
                StrategyStats(
                    strategy=strategy,
                    bins=p.num_bins,
                    lower_bound=p.lower_bound,
                    efficiency=p.efficiency,
                    padding_fraction=1 - p.efficiency,
                    padding_tokens=slots - tokens,
                    avoided_vs_pad_to_max=_avoided(pad_slots, slots, tokens),
                    avoided_vs_dynamic=_avoided(dyn_slots, slots, tokens),
                    speedup_limit_vs_pad_to_max=pad_slots / slots,
                    speedup_limit_vs_dynamic=dyn_slots / slots,
                    seconds=seconds,
                )
            )
    return Stats(
        examples=len(lengths),
        empty=empty,
        tokens=tokens,
        max_tokens=budget,
        overlong=overlong,
        longer_than_budget=int((nonempty > budget).sum()),
        tokens_cut=int(nonempty.sum()) - tokens,
        pieces=len(pieces),
        longest=int(nonempty.max()),
        pad_to_max_length=pad_length,
        pad_to_max_slots=pad_slots,
        dynamic_batch_size=batch,
        dynamic_batch_size_assumed=batch_size is None,
        dynamic_slots=dyn_slots,
        strategies=results,
        recommended=recommended,
        max_tokens_given=given,
        sweep=sweep,
    )
