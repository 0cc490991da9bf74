"""Medians over repeated runs of bench_train.py: one table per distribution, the targets on the medians.

    python benchmarks/compare_runs.py docs/results/bench_train_h200.json docs/results/bench_train_h200_repeat.json

Each run already reports the median of its timed windows; this takes the median of those over the
runs, shows the spread between runs, and recomputes the targets from the medians. The last
column of the target list, the *ceiling*, is the compute-only bound over the best of arms (2)-(5):
no batching with the same model and kernel can beat the best peer by more than that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

from benchlib.targets import ARM_ORDER, padding_removal_target, train_targets


def load_runs(paths: List[Path]) -> List[dict]:
    """The runs' results; refuses runs from different GPUs or software, whose medians would not mix."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"compare_runs: cannot read {path}: {error}; pass results.json files "
                             "written by bench_train.py") from None
        if "train" not in runs[-1]:
            raise SystemExit(f"compare_runs: {path} has no 'train' section; run bench_train.py with "
                             "--parts including train")
    keys = ("gpu", "torch", "transformers")
    first = {k: runs[0]["meta"].get(k) for k in keys}
    for path, run in zip(paths[1:], runs[1:]):
        other = {k: run["meta"].get(k) for k in keys}
        if other != first:
            raise SystemExit(f"compare_runs: {path} ran on {other}, {paths[0]} on {first}; compare runs "
                             "of one machine and one software stack")
    return runs


def median_arms(runs: List[dict], dist: str) -> Dict[str, dict]:
    """Per arm: each run's median tokens/s, their median, and the first run's epoch statistics."""
    arms: Dict[str, dict] = {}
    for key in ARM_ORDER:
        per_run = [r["train"].get(dist, {}).get("arms", {}).get(key, {}) for r in runs]
        values = [a["real_tokens_per_s"] for a in per_run if a.get("real_tokens_per_s")]
        if values:
            first = next(a for a in per_run if a.get("real_tokens_per_s"))
            arms[key] = dict(name=first["name"], runs=values, real_tokens_per_s=statistics.median(values),
                             epoch=first["epoch"], size=first.get("size"), size_kind=first.get("size_kind"))
    return arms


def report(runs: List[dict], names: List[str]) -> str:
    meta = runs[0]["meta"]
    lines = [f"# bench_train.py over {len(runs)} runs: {meta.get('gpu')}, torch {meta.get('torch')}, "
             f"transformers {meta.get('transformers')}", ""]
    lines += [f"- run {i + 1}: `{n}`" for i, n in enumerate(names)]
    for dist in runs[0]["train"]:
        arms = median_arms(runs, dist)
        if not arms:
            continue
        bound = arms.get("7", {}).get("real_tokens_per_s")
        lines += ["", f"## {dist}", "",
                  "| arm | batching | size | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
                  + " | median | spread | ratio to 7 |",
                  "|---|---|---:|" + "---:|" * (len(runs) + 3)]
        for key, a in arms.items():
            spread = (max(a["runs"]) - min(a["runs"])) / a["real_tokens_per_s"]
            ratio = f"{a['real_tokens_per_s'] / bound:.3f}" if bound else ""
            lines.append(f"| {key} | {a['name']} | {a['size']} {a['size_kind']} | "
                         + " | ".join(f"{v:,.0f}" for v in a["runs"])
                         + f" | {a['real_tokens_per_s']:,.0f} | {spread:.1%} | {ratio} |")
        lines.append("")
        for name, t in train_targets(arms).items():
            limit = f", limit {t['limit']:.2f}x" if "limit" in t else ""
            lines.append(f"- **{t['result']}** {name}: {t['value']:.3f} (goal {t['goal']:.2f}{limit})")
        peers = [arms[k]["real_tokens_per_s"] for k in ("2", "3", "4", "5") if k in arms]
        if bound and peers:
            lines.append(f"- ceiling: compute-only bound / best of (2)-(5) = {bound / max(peers):.3f}")
    lines += eval_lines(runs)
    return "\n".join(lines) + "\n"


def eval_lines(runs: List[dict]) -> List[str]:
    """Forward-only scoring: each arm's median over the runs, packed vs padded on the medians."""
    lines: List[str] = []
    for dist, first in runs[0].get("eval", {}).items():
        if not isinstance(first, dict) or not first.get("arms"):
            continue
        per_arm = {name: [r["eval"].get(dist, {}).get("arms", {}).get(name, {}).get("real_tokens_per_s")
                          for r in runs] for name in first["arms"]}
        medians = {name: statistics.median([v for v in vs if v]) for name, vs in per_arm.items() if any(vs)}
        if "packed" not in medians or "padded" not in medians:
            continue
        lines += ["", f"## eval {dist}", "", "| arm | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
                  + " | median | vs padded |", "|---|" + "---:|" * (len(runs) + 2)]
        for name, m in medians.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:,.0f}" if v else "" for v in per_arm[name])
                         + f" | {m:,.0f} | {m / medians['padded']:.2f} |")
        limit = first.get("padding_removal_limit")
        if limit:
            t = padding_removal_target(medians["packed"] / medians["padded"], limit)
            lines += ["", f"- **{t['result']}** packed vs padded >= 0.95 x padding-removal limit: {t['value']:.2f}x "
                      f"(limit {limit:.2f}x, goal {t['goal']:.2f}x)"]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json files written by bench_train.py")
    args = p.parse_args(argv)
    paths = [Path(r) for r in args.results]
    print(report(load_runs(paths), [str(p) for p in paths]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
