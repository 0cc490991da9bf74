"""PNG figures for the command line (matplotlib is optional: ``pip install matplotlib``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from warppack.cli.stats.numbers import Stats

__all__ = ["MatplotlibMissing", "stats_figure"]

_COLORS = {"bfd": "#1f77b4", "ffd": "#ff7f0e", "online": "#2ca02c"}


class MatplotlibMissing(ImportError):
    """matplotlib is not installed; the message says how to install it."""


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissing(
            "matplotlib is not installed; pip install matplotlib"
        ) from None
    return Figure


def stats_figure(
    lengths: np.ndarray, stats: "Stats", path: Union[str, Path], *, title: Optional[str] = None
) -> Path:
    """Write a two-panel PNG: the length histogram with the budget marked, and the fill of the bins.

    Drawn on a bare ``Figure`` (no pyplot, no GUI backend), so it works headless and in threads.
    """
    figure_class = _figure_class()
    path = Path(path)
    figure = figure_class(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)

    longest = int(lengths.max())
    top = max(longest, stats.max_tokens)
    edges = np.linspace(0, top, min(100, max(10, top)) + 1)
    counts, edges = np.histogram(lengths, bins=edges)
    left.stairs(counts, edges, fill=True, color="#7f7f7f", alpha=0.6, label=f"{len(lengths):,} examples")
    left.axvline(stats.max_tokens, color="#d62728", linewidth=2, label=f"budget {stats.max_tokens:,}")
    rec = stats.recommended
    if rec and rec["max_tokens"] != stats.max_tokens and rec["max_tokens"] <= top * 1.05:
        left.axvline(
            rec["max_tokens"], color="#9467bd", linestyle="--", label=f"recommended {rec['max_tokens']:,}"
        )
    if counts.max() > 50 * max(1, np.median(counts[counts > 0])):
        left.set_yscale("log")
    left.set_xlim(0, top * 1.03)
    left.set_xlabel("tokens per example")
    left.set_ylabel("examples")
    left.set_title("length histogram")
    left.legend(loc="upper right")

    styles = {"bfd": "-", "ffd": "--", "online": ":"}
    for s in stats.strategies:
        fill = np.sort(np.clip(s.bin_fill, 0, 1))[::-1]
        rank = (np.arange(len(fill)) + 0.5) / max(1, len(fill))
        right.plot(
            rank,
            fill,
            color=_COLORS.get(s.strategy),
            linestyle=styles.get(s.strategy, "-"),
            linewidth=2,
            label=f"{s.strategy}: {s.bins:,} batches, {s.efficiency:.2%} efficient",
        )
    right.axhline(1.0, color="#d62728", linewidth=1, alpha=0.5)
    right.set_xlim(0, 1)
    lowest = min((float(s.bin_fill.min()) for s in stats.strategies if len(s.bin_fill)), default=0.0)
    right.set_ylim(max(0.0, min(0.9, lowest) - 0.05), 1.02)
    right.set_xlabel("batches, fullest first (fraction of all batches)")
    right.set_ylabel(f"fill (real tokens / {stats.max_tokens:,})")
    right.set_title("fill of the packed batches")
    right.legend(loc="lower left")
    if title:
        figure.suptitle(f"warppack stats: {title}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
