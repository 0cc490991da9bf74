"""PNG figures for the command line (matplotlib is optional: ``pip install matplotlib``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

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


def _tokens(value: float) -> str:
    """A token count as a short tick label: 512, 8k, 1.5M, 2B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _histogram_panel(axes: Any, lengths: np.ndarray, stats: "Stats") -> None:
    from matplotlib.ticker import FuncFormatter

    longest = int(lengths.max())
    top = max(longest, stats.max_tokens)
    edges = np.linspace(0, top, min(100, max(10, top)) + 1)
    counts, edges = np.histogram(lengths, bins=edges)
    axes.stairs(counts, edges, fill=True, color="#7f7f7f", alpha=0.6, label=f"{len(lengths):,} examples")
    axes.axvline(stats.max_tokens, color="#d62728", linewidth=2, label=f"budget {stats.max_tokens:,}")
    rec = stats.recommended["max_tokens"]
    if rec != stats.max_tokens and rec <= top * 1.05:
        axes.axvline(rec, color="#9467bd", linestyle="--", label=f"recommended {rec:,}")
    if counts.max() > 50 * max(1, np.median(counts[counts > 0])):
        axes.set_yscale("log")
    axes.set_xlim(0, top * 1.03)
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _tokens(value)))
    axes.set_xlabel("tokens per example")
    axes.set_ylabel("examples")
    axes.set_title("length histogram")
    axes.legend(loc="upper right")


def _efficiency_panel(axes: Any, stats: "Stats") -> None:
    """Each strategy's efficiency over the swept budgets: what a larger (or smaller) budget buys."""
    from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter

    sweep, rec = stats.sweep, stats.recommended
    styles = {"bfd": ("-", "o"), "ffd": ("--", "s"), "online": (":", "^")}
    same: Dict[Tuple[float, ...], List[str]] = {}  # strategies that pack alike share one line
    for strategy, curve in sweep.efficiency.items():
        same.setdefault(tuple(np.round(curve, 6)), []).append(strategy)
    for rounded, names in same.items():
        line, marker = styles.get(names[0], ("-", "o"))
        axes.plot(sweep.budgets, rounded, color=_COLORS.get(names[0]), linestyle=line, marker=marker,
                  markersize=4, linewidth=2, label=" = ".join(names))
    if sweep.budgets[0] < stats.longest:  # budgets that truncate (or split) the longest examples
        effect = {"truncate": "truncated", "split": "split"}.get(stats.overlong, stats.overlong)
        axes.axvspan(sweep.budgets[0], stats.longest, color="#7f7f7f", alpha=0.12,
                     label=f"below the longest example: examples {effect}")
    chosen = "budget" if stats.max_tokens_given else "budget (recommended)"
    axes.axvline(stats.max_tokens, color="#d62728", linewidth=2, label=f"{chosen} {stats.max_tokens:,}")
    if rec["max_tokens"] != stats.max_tokens:
        axes.axvline(rec["max_tokens"], color="#9467bd", linestyle="--", label=f"recommended {rec['max_tokens']:,}")
    axes.axhline(rec["target_efficiency"], color="#7f7f7f", linestyle=":", linewidth=1,
                 label=f"target {rec['target_efficiency']:.0%}")
    if len(set(sweep.budgets)) > 1:
        axes.set_xscale("log")
        decades = np.log10(sweep.budgets[-1] / sweep.budgets[0])
        subs = (1.0, 2.0, 5.0) if decades < 3 else (1.0,)  # 1-2-5 ticks crowd a wide range
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: _tokens(value)))
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    lowest = min(min(curve) for curve in sweep.efficiency.values())
    axes.set_ylim(max(0.0, min(lowest, rec["target_efficiency"]) - 0.01), 1.002)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    sampled = f" (a sample of {sweep.sampled:,})" if sweep.sampled < stats.examples - stats.empty else ""
    axes.set_xlabel("max_tokens (token budget per batch)")
    axes.set_ylabel("packing efficiency (real tokens / token slots)")
    axes.set_title(f"efficiency against the budget{sampled}")
    axes.legend(loc="best", fontsize="small", framealpha=0.9)


def stats_figure(
    lengths: np.ndarray, stats: "Stats", path: Union[str, Path], *, title: Optional[str] = None
) -> Path:
    """Write a two-panel PNG: the length histogram with the budgets marked, and each strategy's
    efficiency against the budget over the swept budgets.

    Drawn on a bare ``Figure`` (no pyplot, no GUI backend), so it works headless and in threads.
    """
    figure_class = _figure_class()
    path = Path(path)
    figure = figure_class(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    _histogram_panel(left, lengths, stats)
    _efficiency_panel(right, stats)
    if title:
        figure.suptitle(f"warppack stats: {title}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, format="png")  # exactly ``path``: no extension guessed or added
    return path
