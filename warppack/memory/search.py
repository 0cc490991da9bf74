"""The calibrator's pure parts: which batches a probe trains on, and where the search goes next.

No device and no model here, so every piece is tested exhaustively on CPU:

* :func:`pessimistic_lengths` -- the three batch shapes that stress a budget most;
* :func:`probe_schedule` -- the order one probe trains them in, with the token total changing from
  step to step (fragmentation of the caching allocator only shows when shapes change);
* :func:`next_budget` / :func:`search_budget` -- the bracketing search over budgets.

>>> probe_schedule(10, 4, short_len=3)
[[4, 4], [4, 4, 2], [3, 3, 3, 1], [4, 4, 2], [4]]
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["pessimistic_lengths", "probe_schedule", "next_budget", "search_budget", "INT32_LIMIT"]

INT32_LIMIT = 2**31 - 1


def pessimistic_lengths(budget: int, max_seq_len: int, *, short_len: int = 16,
                        max_sequences: Optional[int] = None, static_shape: bool = False) -> List[List[int]]:
    """Sequence lengths of the batches that stress a budget most, most likely to fail first.

    1. as many ``max_seq_len`` sequences as fit, the rest as one more (the largest sum of squared
       lengths: what attention costs when it is not varlen);
    2. many short sequences filling the budget (per-sequence overheads);
    3. the single longest sequence -- or, with ``static_shape`` (every batch padded to the budget)
       and ``max_sequences=m``, ``m`` one-token sequences: every boundary is taken, so the padding
       is one segment ``budget - m`` long, the longest any batch holds (attention runs over it like
       over a sequence). Without ``max_sequences``, static padding comes in pieces of at most 512 tokens.

    >>> pessimistic_lengths(10, 4, short_len=3)
    [[4, 4, 2], [3, 3, 3, 1], [4]]
    """
    full, rest = divmod(budget, max_seq_len)
    long = [max_seq_len] * full + ([rest] if rest else [])
    short_len = min(short_len, max_seq_len)
    count, rest = divmod(budget, short_len)
    short = [short_len] * count + ([rest] if rest else [])
    if max_sequences is not None and len(short) > max_sequences:
        base, extra = divmod(budget, max_sequences)  # fewest tokens per sequence the cap allows
        short = [min(max_seq_len, base + (i < extra)) for i in range(max_sequences)]
    shapes: List[List[int]] = []
    for lengths in (long, short, _alone(budget, max_seq_len, max_sequences, static_shape)):
        if lengths not in shapes:
            shapes.append(lengths)
    return shapes


def _alone(budget: int, max_seq_len: int, max_sequences: Optional[int], static_shape: bool) -> List[int]:
    if static_shape and max_sequences is not None:
        return [1] * min(max_sequences, budget)
    return [min(max_seq_len, budget)]


def probe_schedule(budget: int, max_seq_len: int, *, short_len: int = 16,
                   max_sequences: Optional[int] = None, static_shape: bool = False) -> List[List[int]]:
    """The batches one probe trains on, in order, so that a probe sees what a training run sees.

    A run's token total changes from batch to batch, and PyTorch's caching allocator cannot reuse a
    cached block for a larger tensor: when a batch is bigger than the one before, the old blocks
    stay reserved next to the new ones (worst when the optimizer state was carved out of them at the
    first step). A probe whose batches all hold exactly ``budget`` tokens never shows this. So:

    Each pessimistic batch therefore follows one a little smaller than itself (the worst case is a
    batch whose need is just under the next one's -- either order of the two batches at the budget):

    1. whole ``max_seq_len`` sequences only, *fewer* tokens than the budget (what a stream of long
       sequences packs to); the first step of a probe also creates the optimizer state, as in a run;
    2. long sequences filling the budget (the largest sum of squared lengths): the total grows;
    3. many short sequences filling the budget (per-sequence overheads), after the long batch;
    4. the long batch again, after the short one (whichever of the two needs more comes second once);
    5. the single longest sequence (cheap: checks it alone, as the search always did); under
       ``static_shape`` with ``max_sequences``, the longest-padding batch instead (see
       :func:`pessimistic_lengths`).
    """
    shapes = pessimistic_lengths(budget, max_seq_len, short_len=short_len, max_sequences=max_sequences,
                                 static_shape=static_shape)
    long, others = shapes[0], shapes[1:]
    single = _alone(budget, max_seq_len, max_sequences, static_shape)
    shorts = [lengths for lengths in others if lengths != single]
    whole = max(1, (budget - 1) // max_seq_len)  # strictly fewer tokens than the budget when possible
    first = [max_seq_len] * whole if budget > max_seq_len else [max(1, budget // 2)]
    schedule = [first, long] + (shorts + [long] if shorts else []) + ([single] if single in others else [])
    return [lengths for i, lengths in enumerate(schedule) if i == 0 or lengths != schedule[i - 1]]


def _linear_guess(points: Sequence[Tuple[int, float]], lo: int, target: float) -> Optional[float]:
    """Budget whose peak would be ``target`` on the line through the two measured points nearest lo."""
    below = sorted(p for p in points if p[0] <= lo)
    above = sorted(p for p in points if p[0] > lo)
    pair = (below[-1], above[0]) if below and above else tuple(below[-2:])
    if len(pair) < 2 or pair[1][0] == pair[0][0]:
        return None
    (b1, p1), (b2, p2) = pair
    slope = (p2 - p1) / (b2 - b1)
    if slope <= 0:
        return None
    return b1 + (target - p1) / slope


def next_budget(lo: int, hi: Optional[int], points: Sequence[Tuple[int, float]], *, target: float,
                tolerance: float, granularity: int = 1, upper: int = INT32_LIMIT) -> int:
    """The next budget to try: ``lo`` fit, ``hi`` did not (None: nothing failed yet).

    ``points`` are measured ``(budget, peak_bytes)`` pairs (a budget that ran out of memory has
    none). Aims just under the linear prediction of where the peak reaches ``target``, never closer
    to ``lo`` than the tolerance and, once bracketed, never past 3/4 of the gap (so a bad
    prediction still shrinks the bracket like a bisection would).
    """
    guess = _linear_guess(points, lo, target)
    floor = lo * (1 + tolerance)  # if this fails, the bracket is within tolerance
    aim = guess * (1 - tolerance / 5) if guess is not None else None
    if hi is None:
        candidate = lo * 2.0 if aim is None else min(max(aim, floor), lo * 16.0)
    else:
        ceiling = lo + 0.75 * (hi - lo)
        candidate = math.sqrt(lo * hi) if aim is None or aim >= hi else aim
        candidate = min(max(candidate, floor), ceiling)
    candidate = min(candidate, upper)
    budget = int(candidate) // granularity * granularity
    return max(budget, lo + granularity)


def _refinement(lo: int, hi: Optional[int], points: Sequence[Tuple[int, float]], *, target: float,
                margin: float, granularity: int) -> Optional[int]:
    """A budget strictly inside ``(lo, hi)``, ``margin`` under the predicted crossing of ``target``
    (the bracket's midpoint when the line puts the crossing at or past ``hi``); None if none."""
    if hi is None:
        return None
    guess = _linear_guess(points, lo, target)
    if guess is None:
        return None
    aim = guess * (1 - margin)
    if aim >= hi:  # hi failed where the line says it fits (out of memory before the peak): halve the gap
        aim = (lo + hi) / 2
    budget = int(aim) // granularity * granularity
    return budget if lo < budget < hi else None


def search_budget(probe: Callable[[int], Tuple[bool, Optional[float], Optional[str]]], *, start: int,
                  target: float, tolerance: float = 0.05, granularity: int = 1,
                  upper: int = INT32_LIMIT, max_probes: int = 30, margin: Optional[float] = None,
                  on_probe: Optional[Callable[[dict], None]] = None) -> Tuple[Optional[int], List[dict]]:
    """Largest budget ``probe`` accepts, to a relative gap ``<= tolerance``; ``(None, history)`` if ``start`` fails.

    ``probe(budget) -> (fits, load or None, error or None)`` must already agree across ranks; ``load``
    (e.g. peak bytes, or a fraction of usable memory) is about affine in the budget and fits up to
    ``target``; None when the step ran out of memory. Once bracketed, up to two refinement probes
    aim ``margin`` (default ``tolerance / 5``) under the interpolated crossing inside the bracket
    (marked ``"refinement": True`` in the history), or at the bracket's midpoint when the line
    puts the crossing at or past the failed budget (it ran out of memory before its peak showed).
    A second refinement follows a failed first one, or a fitting one after which the line still
    predicts at least ``margin`` more.
    """
    margin = tolerance / 5 if margin is None else margin
    lo: Optional[int] = None
    hi: Optional[int] = None
    points: List[Tuple[int, float]] = []
    history: List[dict] = []
    budget, refining, refinements = start, False, 0
    while True:
        fits, peak, error = probe(budget)
        history.append({"budget": budget, "fits": fits, "load": peak, "error": error})
        if refining:
            history[-1]["refinement"], refining = True, False
        if on_probe is not None:
            on_probe(history[-1])
        if peak is not None:
            points.append((budget, float(peak)))
        if fits:
            lo = budget
        else:
            hi = budget
        if lo is None:
            return None, history
        done = (hi is not None and (hi <= lo * (1 + tolerance) or hi - lo <= granularity)) or lo + granularity > upper
        if len(history) >= max_probes:
            return lo, history
        if done:
            # Bracketed within tolerance: probe where the line through the bracket's peaks meets
            # the target (the bisection alone gives away up to ``tolerance``). After a refinement
            # that fits, another only if the new line predicts at least ``margin`` more.
            refine = _refinement(lo, hi, points, target=target, margin=margin, granularity=granularity)
            small_gain = refine is not None and refinements and history[-1]["fits"] and refine < lo * (1 + margin)
            if refine is None or refinements >= 2 or small_gain:
                return lo, history
            budget, refining, refinements = refine, True, refinements + 1
            continue
        budget = next_budget(lo, hi, points, target=target, tolerance=tolerance, granularity=granularity,
                             upper=upper)
