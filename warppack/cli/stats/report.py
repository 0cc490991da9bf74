"""The text report of ``warppack stats``: the data, the padded baselines, one table row per strategy."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from warppack.cli.stats.numbers import Stats
from warppack.cli.stats.reader import LoadedLengths

__all__ = ["format_report"]

def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def format_report(loaded: LoadedLengths, stats: Stats) -> str:
    lengths = loaded.lengths[loaded.lengths > 0]
    what = f"column {loaded.column!r}" if loaded.column else "lengths"
    out = [
        f"data: {loaded.source} ({loaded.kind}, {what}): {stats.examples:,} examples, "
        f"{int(lengths.sum()):,} tokens",
    ]
    out += [f"  note: {note}" for note in loaded.notes]
    if stats.empty:
        out.append(f"  note: {stats.empty:,} empty examples ignored (nothing to pack in them)")
    q = np.percentile(lengths, [50, 99]).astype(int)
    out.append(
        f"lengths: min {int(lengths.min()):,}, median {q[0]:,}, mean {lengths.mean():,.1f}, "
        f"p99 {q[1]:,}, max {int(lengths.max()):,}"
    )
    if stats.max_tokens_given:
        out.append(f"budget: {stats.max_tokens:,} tokens per batch (--max-tokens)")
    else:
        out.append(
            f"budget: {stats.max_tokens:,} tokens per batch (recommended: the budget below, as no "
            f"--max-tokens was given)"
        )
    if stats.longer_than_budget:
        if stats.overlong == "truncate":
            effect = f"truncated to the budget, {stats.tokens_cut:,} tokens ({stats.tokens_cut / (stats.tokens + stats.tokens_cut):.2%}) cut"
        else:
            effect = f"split into chunks of at most the budget ({stats.pieces:,} sequences in all)"
        out.append(
            f"  warning: {stats.longer_than_budget:,} examples are longer than the budget: {effect} "
            f"(--overlong {stats.overlong})"
        )
    batch_note = "assumed; set it with --batch-size" if stats.dynamic_batch_size_assumed else "--batch-size"
    out += [
        "",
        "padded baselines (same tokens):",
        f"  pad to max ({stats.pad_to_max_length:,} tokens per example): "
        f"{stats.pad_to_max_slots:,} slots, {stats.pad_to_max_padding:.1%} padding",
        f"  dynamic padding (random batches of {stats.dynamic_batch_size}, {batch_note}; each padded to "
        f"its longest): {stats.dynamic_slots:,} slots, {stats.dynamic_padding:.1%} padding",
        "",
        "packed:",
    ]
    headers = [
        "strategy",
        "batches",
        "lower bound",
        "efficiency",
        "padding",
        "pad avoided vs max",
        "vs dynamic",
        "speed-up limit vs max",
        "vs dynamic",
    ]
    rows = [
        [
            s.strategy,
            f"{s.bins:,}",
            f"{s.lower_bound:,}",
            f"{s.efficiency:.2%}",
            f"{s.padding_fraction:.2%}",
            _pct(s.avoided_vs_pad_to_max),
            _pct(s.avoided_vs_dynamic),
            f"{s.speedup_limit_vs_pad_to_max:.2f}x",
            f"{s.speedup_limit_vs_dynamic:.2f}x",
        ]
        for s in stats.strategies
    ]
    out.append(_table(headers, rows))
    out.append(
        "  speed-up limit = padded token slots / packed token slots: the most that removing padding "
        "can give (attention's per-sequence cost aside)"
    )
    rec = stats.recommended
    sampled = f", on a random sample of {rec['sampled']:,}" if rec["sampled"] < len(lengths) else ""
    out += [
        "",
        f"recommended budget: --max-tokens {rec['max_tokens']:,} (bfd {rec['efficiency']:.2%} "
        f"efficient{sampled}): {rec['reason']}.",
        ("  Larger budgets pack about as well; " if rec["efficiency"] >= rec["target_efficiency"] else "  ")
        + "GPU memory sets the upper limit: `warppack calibrate MODEL_DIR` measures it.",
    ]
    alt = rec.get("split_alternative")
    if alt:
        out.append(
            f"  or, if {rec['max_tokens']:,} tokens do not fit in memory: keep --max-tokens "
            f"{alt['max_tokens']:,} with --overlong split: no token lost, bfd {alt['efficiency']:.2%} "
            f"efficient ({alt['examples_split']:,} examples split into chunks{sampled})."
        )
    return "\n".join(out)
