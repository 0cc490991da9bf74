"""The largest batch that fits: a linear memory fit from two small probes, then the real worst batch.

A probe runs one training step on the epoch's worst batch at a size and reports
``(ok, slot tokens, peak bytes, seconds)``; ``ok`` is False after an out-of-memory error.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from .arms import Arm

GIB = 2**30
PROBE_TOKENS = (4096, 16384)

Probe = Callable[[int], Tuple[bool, int, int, float]]


def fit_line(points: List[Tuple[int, int]]) -> Optional[Tuple[float, float]]:
    """(fixed bytes, bytes per slot token) through two (slot tokens, peak) points; through the origin
    and the last point when they do not rise; None without points."""
    if len(points) == 2 and points[1][0] > points[0][0] and points[1][1] > points[0][1]:
        c = (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])
        return points[0][1] - c * points[0][0], c
    if points:
        return 0.0, points[-1][1] / max(points[-1][0], 1)
    return None


def probe_points(arm: Arm, probe: Probe, res: dict) -> List[Tuple[int, int]]:
    """(slot tokens, peak bytes) of the probes that ran at about 4k and 16k slot tokens."""
    searched = res.setdefault("search", {"probes": [], "tries": []})
    hi = int(min(len(arm.lengths), 1 << 20))
    points = []
    for target in PROBE_TOKENS:
        size = arm.size_for_slots(target, hi=min(hi, target))
        ok, slot, peak, sec = probe(size)
        searched["probes"].append(dict(size=size, slot_tokens=slot, peak_gib=peak / GIB, ok=ok, seconds=sec))
        if ok:
            points.append((slot, peak))
        else:
            res["oom_search"] = res.get("oom_search", 0) + 1
    return points


def largest_size(arm: Arm, probe: Probe, cap: int, res: dict) -> int:
    """Largest size whose worst batch of the epoch runs under ``cap`` bytes: fit peak = a + c * slot
    tokens from two probes, predict, then run the worst batch for real (10% smaller after an
    out-of-memory error). Records the probes, tries and the worst batch in ``res``."""
    fit = fit_line(probe_points(arm, probe, res))
    if fit is None:
        raise RuntimeError(f"arm {arm.key}: even the {PROBE_TOKENS[0]:,}-token probe ran out of memory")
    a, c = fit
    target = int((cap - a) / c)
    searched = res["search"]
    searched.update(fit_bytes_per_token=c, fit_fixed_gib=a / GIB, cap_gib=cap / GIB, predicted_slot_tokens=target)
    hi = int(min(len(arm.lengths), 1 << 20))
    for _ in range(6):
        size = arm.size_for_slots(target, hi=min(hi, max(target, 1)))
        ok, slot, peak, sec = probe(size)
        searched["tries"].append(dict(size=size, slot_tokens=slot, peak_gib=peak / GIB, ok=ok, seconds=sec))
        if ok:
            res["worst_batch"] = dict(slot_tokens=slot, peak_gib=peak / GIB, seconds=sec)
            return size
        res["oom_search"] = res.get("oom_search", 0) + 1
        target = int(min(target, slot) * 0.9)
    raise RuntimeError(f"arm {arm.key}: no size fits after 6 tries")
