"""The budget sweep of ``warppack stats``: how well each strategy packs over a range of budgets.

The recommended budget is the smallest multiple of ``ROUND_TO`` that holds the longest example
and packs to the target efficiency with bfd; GPU memory is the upper limit, which
``warppack calibrate`` measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from warppack.engine.config import split_pieces
from warppack.engine.options import DEFAULT_BUFFER_SIZE, INT32_MAX
from warppack.engine.plan import plan
from warppack.progress import Progress

__all__ = [
    "BudgetSweep",
    "MAX_SPLIT_PIECES",
    "ROUND_TO",
    "SWEEP_FACTORS",
    "SWEEP_SAMPLE",
    "SWEEP_STEPS_BELOW",
    "recommend_budget",
    "sweep_budgets",
    "sweep_efficiency",
]

ROUND_TO = 64  # recommended budgets are multiples of this (tensor-core friendly)
SWEEP_FACTORS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16)
SWEEP_STEPS_BELOW = 4  # budgets swept between a given budget and the longest example
SWEEP_SAMPLE = 200_000  # the sweep plans at most this many lengths (a fixed random sample)
# Splitting keeps every piece in memory (here and in the engine, tens of bytes each): past this
# count a split is refused rather than left to exhaust memory.
MAX_SPLIT_PIECES = 2**26


def _budget(value: float) -> int:
    """``value`` rounded up to a multiple of ``ROUND_TO``, within the int32 range of cu_seqlens."""
    return min(int(math.ceil(value / ROUND_TO) * ROUND_TO), INT32_MAX)


def sweep_budgets(longest: int, given: Optional[int] = None) -> List[int]:
    """The budgets swept: multiples of the longest example, the given budget, and budgets in between."""
    base = _budget(longest)
    budgets = {_budget(base * factor) for factor in SWEEP_FACTORS}
    if given is not None:
        budgets.add(given)
        if given < base:  # what a budget too small for the longest example gives, up to one that fits
            budgets.update(_budget(b) for b in np.geomspace(given, base, SWEEP_STEPS_BELOW + 2)[1:-1])
    return sorted(budgets)


@dataclass
class BudgetSweep:
    """The packing efficiency of each strategy at each budget, planned on ``sampled`` lengths."""

    budgets: List[int]
    efficiency: Dict[str, List[float]]
    sample: np.ndarray = field(repr=False)

    @property
    def sampled(self) -> int:
        return len(self.sample)

    def to_json(self) -> Dict[str, Any]:
        return {"sampled": self.sampled, "max_tokens": self.budgets, "efficiency": self.efficiency}


def _sample(lengths: np.ndarray, seed: int) -> np.ndarray:
    if len(lengths) <= SWEEP_SAMPLE:
        return lengths
    return lengths[np.random.default_rng(seed).choice(len(lengths), SWEEP_SAMPLE, replace=False)]


def sweep_efficiency(
    lengths: np.ndarray,
    budgets: Sequence[int],
    *,
    strategies: Sequence[str] = ("bfd",),
    overlong: str = "truncate",
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    seed: int = 0,
    bar: Optional[Progress] = None,
) -> BudgetSweep:
    """Plan a sample of ``lengths`` at every budget with every strategy (``overlong`` for the small ones)."""
    sample = _sample(lengths, seed)
    efficiency: Dict[str, List[float]] = {}
    for strategy in strategies:
        if bar is not None:
            bar.set_description(f"sweeping budgets ({strategy})")
        curve = efficiency[strategy] = []
        for budget in budgets:
            packed = plan(sample, budget, strategy=strategy, overlong=overlong, buffer_size=buffer_size)
            curve.append(float(packed.efficiency))
            if bar is not None:
                bar.update()
    return BudgetSweep(budgets=[int(b) for b in budgets], efficiency=efficiency, sample=sample)


def recommend_budget(
    lengths: np.ndarray,
    *,
    target_efficiency: float = 0.99,
    given: Optional[int] = None,
    seed: int = 0,
    bar: Optional[Progress] = None,
    sweep: Optional[BudgetSweep] = None,
) -> Dict[str, Any]:
    """The smallest budget (a multiple of 64 holding the longest example) that bfd packs this well.

    Read off ``sweep`` (its bfd curve) when given, else swept here. Larger budgets pack at least
    about as well; GPU memory is the upper limit (``warppack calibrate``).
    """
    longest = int(lengths.max())
    if sweep is None:
        sweep = sweep_efficiency(lengths, sweep_budgets(longest, given), seed=seed, bar=bar)
    curve = [(b, e) for b, e in zip(sweep.budgets, sweep.efficiency["bfd"]) if b >= longest]
    reached = [(b, e) for b, e in curve if e >= target_efficiency]
    if reached:
        budget, efficiency = reached[0]
        reason = (
            f"the smallest multiple of {ROUND_TO} that holds the longest example ({longest:,} tokens) "
            f"and packs at least {target_efficiency:.0%} efficient with bfd"
        )
    else:
        best = max(e for _, e in curve)
        budget, efficiency = next((b, e) for b, e in curve if e >= best - 0.005)
        reason = (
            f"no budget from {curve[0][0]:,} to {curve[-1][0]:,} tokens packs {target_efficiency:.0%} "
            f"efficient (too few examples to fill bins that large); this is the smallest within half a "
            f"point of the best ({best:.2%})"
        )
    result: Dict[str, Any] = {
        "max_tokens": int(budget),
        "efficiency": float(efficiency),
        "reason": reason,
        "target_efficiency": target_efficiency,
        "sampled": sweep.sampled,
        "sweep": [{"max_tokens": int(b), "efficiency": float(e)} for b, e in curve],
        "longest": longest,
        "split_alternative": None,
    }
    if given is not None and given < longest and split_pieces(sweep.sample, given) <= MAX_SPLIT_PIECES:
        # a budget that holds the longest example may not fit in memory: keep the given one, split the rest
        split = plan(sweep.sample, given, overlong="split")
        result["split_alternative"] = {
            "max_tokens": int(given),
            "efficiency": float(split.efficiency),
            "examples_split": int((sweep.sample > given).sum()),
        }
    if bar is not None:
        bar.update()
    return result
