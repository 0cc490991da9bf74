"""The end-to-end benchmark's targets, computed from results (no torch needed: compare_runs.py uses them)."""

from __future__ import annotations

from typing import Dict

#: the order the training arms run in: warppack's first (its budget is calibrated on an empty device)
ARM_ORDER = ("6", "7", "1", "2", "3", "4", "5")


def padding_removal_target(speed: float, limit: float) -> dict:
    """A speed-up over padded batches against the padding-removal limit 1 / (1 - padding fraction)."""
    return dict(value=speed, limit=limit, goal=0.95 * limit, result="PASS" if speed >= 0.95 * limit else "FAIL")


def train_targets(arms: Dict[str, dict]) -> Dict[str, dict]:
    """The targets on the arms' results: warppack vs the compute-only bound, the best peer, padding."""
    tps: Dict[str, float] = {k: float(v["real_tokens_per_s"]) for k, v in arms.items() if v.get("real_tokens_per_s")}
    out: Dict[str, dict] = {}
    if "6" in tps and "7" in tps:
        r = tps["6"] / tps["7"]
        out["warppack >= 0.97 x compute-only bound (7)"] = dict(
            value=r, goal=0.97, result="PASS" if r >= 0.97 else "FAIL")
    base = {k: tps[k] for k in ("2", "3", "4", "5") if k in tps}
    if "6" in tps and base:
        best = max(base, key=lambda k: base[k])
        r = tps["6"] / base[best]
        out[f"warppack >= 1.15 x best of (2)-(5) (best: arm {best})"] = dict(
            value=r, goal=1.15, result="PASS" if r >= 1.15 else "FAIL")
    if "6" in tps and "1" in tps:
        pf = arms["1"]["epoch"]["padding_fraction"]
        limit = 1.0 / (1.0 - pf)
        out["speed-up over (1) >= 0.95 x padding-removal limit"] = padding_removal_target(tps["6"] / tps["1"], limit)
    return out
