"""The recommended budget of ``warppack stats``: a sweep of budgets planned with bfd.

The smallest multiple of ``ROUND_TO`` that holds the longest example and packs to the target
efficiency; GPU memory is the upper limit, which ``warppack calibrate`` measures.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

from warppack.engine.plan import plan
from warppack.progress import Progress

__all__ = ["ROUND_TO", "SWEEP_FACTORS", "SWEEP_SAMPLE", "recommend_budget"]

ROUND_TO = 64  # recommended budgets are multiples of this (tensor-core friendly)
SWEEP_FACTORS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16)
SWEEP_SAMPLE = 1_000_000  # the budget sweep plans at most this many lengths (a fixed random sample)


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def recommend_budget(
    lengths: np.ndarray,
    *,
    target_efficiency: float = 0.99,
    given: Optional[int] = None,
    seed: int = 0,
    bar: Optional[Progress] = None,
) -> Dict[str, Any]:
    """The smallest budget (a multiple of 64 holding the longest example) that bfd packs this well.

    Larger budgets pack at least about as well; GPU memory is the upper limit (``warppack calibrate``).
    """
    longest = int(lengths.max())
    base = _round_up(longest, ROUND_TO)
    candidates = sorted({_round_up(base * f, ROUND_TO) for f in SWEEP_FACTORS} | ({given} if given and given >= longest else set()))
    sample = lengths
    if len(lengths) > SWEEP_SAMPLE:
        sample = lengths[np.random.default_rng(seed).choice(len(lengths), SWEEP_SAMPLE, replace=False)]
    sweep = []
    for budget in candidates:
        efficiency = plan(sample, budget).efficiency
        sweep.append((budget, efficiency))
        if bar is not None:
            bar.update()
        if efficiency >= target_efficiency:
            break
    reached = [b for b, e in sweep if e >= target_efficiency]
    if reached:
        budget = reached[0]
        efficiency = dict(sweep)[budget]
        reason = (
            f"the smallest multiple of {ROUND_TO} that holds the longest example ({longest:,} tokens) "
            f"and packs at least {target_efficiency:.0%} efficient with bfd"
        )
    else:
        best = max(e for _, e in sweep)
        budget, efficiency = next((b, e) for b, e in sweep if e >= best - 0.005)
        reason = (
            f"no budget from {candidates[0]:,} to {candidates[-1]:,} tokens packs {target_efficiency:.0%} "
            f"efficient (too few examples to fill bins that large); this is the smallest within half a "
            f"point of the best ({best:.2%})"
        )
    result: Dict[str, Any] = {
        "max_tokens": int(budget),
        "efficiency": float(efficiency),
        "reason": reason,
        "target_efficiency": target_efficiency,
        "sampled": int(len(sample)),
        "sweep": [{"max_tokens": int(b), "efficiency": float(e)} for b, e in sweep],
        "longest": longest,
        "split_alternative": None,
    }
    if given is not None and given < longest:
        # a budget that holds the longest example may not fit in memory: keep the given one, split the rest
        split = plan(sample, given, overlong="split")
        result["split_alternative"] = {
            "max_tokens": int(given),
            "efficiency": float(split.efficiency),
            "examples_split": int((sample > given).sum()),
        }
        if bar is not None:
            bar.update()
    return result
