"""``warppack stats DATA --max-tokens N``: what packing does for a data set, before any training.

DATA is a HF ``datasets`` folder saved with ``save_to_disk``, a parquet, Arrow (IPC file or
stream) or JSON Lines file, or a ``.npy`` array of lengths. The lengths come from the column's
Arrow offsets (no loop over rows); a column of integers is taken as the lengths themselves.

For every strategy (bfd, ffd, online) the report gives the number of batches, how close that is to
the lower bound, the packing efficiency, the padding avoided against padding every example to the
longest one and against dynamic padding (random batches padded to their longest), and the
speed-up limit those imply (padded token slots / packed token slots). It ends with a recommended
budget and writes a PNG of the length histogram (budget marked) and of the fill of the batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

from warppack.cli.errors import (
    EXIT_BAD_PATH,
    EXIT_MISSING_DEPENDENCY,
    EXIT_USAGE,
    CliError,
)

# The command is this module; the reading, the numbers, the budget sweep and the report each live
# in their own module and are re-exported here, the names the tests and scripts import.
from warppack.cli.stats.budget import recommend_budget
from warppack.cli.stats.numbers import (
    STRATEGIES,
    Stats,
    StrategyStats,
    compute_stats,
    dynamic_padding_slots,
)
from warppack.cli.stats.reader import LoadedLengths, load_lengths
from warppack.cli.stats.report import format_report

__all__ = [
    "add_arguments",
    "run",
    "load_lengths",
    "compute_stats",
    "dynamic_padding_slots",
    "recommend_budget",
    "format_report",
    "LoadedLengths",
    "StrategyStats",
    "Stats",
    "STRATEGIES",
]


def _default_plot_path(data: str) -> Tuple[Path, str]:
    path = Path(data).expanduser().resolve()
    name = f"{path.name}-warppack-stats.png"
    parent = path.parent
    if os.access(parent, os.W_OK):
        return parent / name, "next to the data"
    return Path.cwd() / name, "in the current folder (the data's folder is not writable)"


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value <= 0:
        raise CliError(f"{name} must be a positive number of tokens, got {value}", EXIT_USAGE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        metavar="DATA",
        help="a HF datasets folder (save_to_disk), a .parquet/.arrow/.jsonl file, or a .npy of lengths",
    )
    parser.add_argument("--max-tokens", type=int, required=True, metavar="N", help="token budget per batch")
    parser.add_argument(
        "--column", default="input_ids", help="column of token ids, or of integer lengths (default input_ids)"
    )
    parser.add_argument("--split", default=None, help="split of a DatasetDict folder (default: train, or the only one)")
    parser.add_argument(
        "--overlong",
        choices=("truncate", "split", "error"),
        default="truncate",
        help="examples longer than the budget: counted truncated (default), split into chunks, or an error",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="examples per batch of the dynamic-padding baseline (default: 8, assumed)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="L",
        help="length the pad-to-max baseline pads to (default: the longest example)",
    )
    parser.add_argument(
        "--buffer-size", type=int, default=1024, help="look-ahead window of the online strategy (default 1024)"
    )
    parser.add_argument(
        "--target-efficiency",
        type=float,
        default=0.99,
        help="efficiency the recommended budget must reach with bfd (default 0.99)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batches and samples (default 0)")
    plot = parser.add_mutually_exclusive_group()
    plot.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="where to write the PNG (default: DATA-warppack-stats.png next to the data, else in the current folder)",
    )
    plot.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    _positive("--max-tokens", args.max_tokens)
    _positive("--batch-size", args.batch_size)
    _positive("--max-length", args.max_length)
    _positive("--buffer-size", args.buffer_size)
    if not 0 < args.target_efficiency <= 1:
        raise CliError(f"--target-efficiency must be in (0, 1], got {args.target_efficiency}", EXIT_USAGE)
    if args.max_tokens >= 2**31:
        raise CliError(f"--max-tokens {args.max_tokens} exceeds the int32 range of cu_seqlens", EXIT_USAGE)
    loaded = load_lengths(args.data, args.column, args.split)
    stats = compute_stats(
        loaded.lengths,
        args.max_tokens,
        overlong=args.overlong,
        batch_size=args.batch_size,
        max_length=args.max_length,
        buffer_size=args.buffer_size,
        target_efficiency=args.target_efficiency,
        seed=args.seed,
    )
    plot_path: Optional[Path] = None
    plot_note = ""
    if not args.no_plot:
        from warppack.cli import plots as _plots

        if args.plot is not None:
            plot_path, where = Path(args.plot).expanduser(), "--plot"
        else:
            plot_path, where = _default_plot_path(args.data)
        try:
            _plots.stats_figure(loaded.lengths[loaded.lengths > 0], stats, plot_path, title=loaded.source)
            plot_note = (
                f"plot: {plot_path} ({where}): length histogram with the budget marked, and the fill "
                f"of the batches; --plot PATH to choose, --no-plot to skip"
            )
        except _plots.MatplotlibMissing as error:
            if args.plot is not None:
                raise CliError(str(error), EXIT_MISSING_DEPENDENCY) from None
            plot_path = None
            plot_note = f"no plot: {error}"
        except OSError as error:
            raise CliError(f"cannot write the plot to {plot_path}: {error.strerror or error}", EXIT_BAD_PATH) from None
    if args.json:
        payload = stats.to_json()
        payload.update(
            data=loaded.source,
            format=loaded.kind,
            column=loaded.column,
            notes=loaded.notes,
            plot=str(plot_path) if plot_path else None,
        )
        print(json.dumps(payload, indent=2))
        if plot_note and plot_path is None:
            print(plot_note, file=sys.stderr)
    else:
        print(format_report(loaded, stats))
        if plot_note:
            print()
            print(plot_note)
    return 0
