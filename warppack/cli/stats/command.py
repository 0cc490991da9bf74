"""``warppack stats DATA [--max-tokens N]``: what packing does for a data set, before any training.

DATA is a HF ``datasets`` folder saved with ``save_to_disk``, a parquet, Arrow (IPC file or
stream) or JSON Lines file, or a ``.npy`` array of lengths. The lengths come from the column's
Arrow offsets (no loop over rows); a column of integers is taken as the lengths themselves.

For every strategy (bfd, ffd, online) the report gives the number of batches, how close that is to
the lower bound, the packing efficiency, the padding avoided against padding every example to the
longest one and against dynamic padding (random batches padded to their longest), and the
speed-up limit those imply (padded token slots / packed token slots). It recommends a budget,
which is the one used when ``--max-tokens`` is not given, and writes a PNG of the length histogram
(budgets marked) and of each strategy's efficiency against the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

from warppack.cli.errors import (
    EXIT_BAD_COLUMN,
    EXIT_BAD_PATH,
    EXIT_MISSING_DEPENDENCY,
    EXIT_NOTHING_TO_PACK,
    EXIT_USAGE,
    CliError,
)
from warppack.cli.options import check_count, check_fraction, check_seed

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
from warppack.cli.stats.refusals import BadLength, NothingToPack, Overlong, TooManyPieces
from warppack.cli.stats.report import format_report

__all__ = [
    "LoadedLengths",
    "STRATEGIES",
    "Stats",
    "StrategyStats",
    "add_arguments",
    "compute_stats",
    "dynamic_padding_slots",
    "format_report",
    "load_lengths",
    "recommend_budget",
    "run",
]


def _default_name(data: str) -> str:
    return f"{Path(data).expanduser().resolve().name}-warppack-stats.png"


def _default_plot_path(data: str) -> Tuple[Path, str]:
    parent = Path(data).expanduser().resolve().parent
    if os.access(parent, os.W_OK):
        return parent / _default_name(data), "next to the data"
    return Path.cwd() / _default_name(data), "in the current folder (the data's folder is not writable)"


def _plot_path(args: argparse.Namespace) -> Tuple[Optional[Path], str]:
    """Where the PNG goes (None: no plot) and how that was decided, checked before any work."""
    if args.no_plot:
        return None, ""
    if args.plot is None:
        return _default_plot_path(args.data)
    path = Path(args.plot).expanduser()
    if path.is_dir():
        return path / _default_name(args.data), "--plot names a folder"
    suffix = path.suffix.lower()
    if suffix == "":
        return path.with_name(path.name + ".png"), "--plot, .png added"
    if suffix != ".png":
        raise CliError(
            f"--plot {args.plot}: the plot is a PNG; name the file *.png (or give no extension: .png is added)",
            EXIT_USAGE,
        )
    return path, "--plot"


def _check_options(args: argparse.Namespace) -> None:
    for flag, value in (("--max-tokens", args.max_tokens), ("--batch-size", args.batch_size),
                        ("--max-length", args.max_length), ("--buffer-size", args.buffer_size)):
        check_count(value, flag=flag, example=8 if flag == "--batch-size" else 8192)
    check_seed(args.seed)
    check_fraction(args.target_efficiency, flag="--target-efficiency", closed_above=True)


def _compute(loaded: LoadedLengths, args: argparse.Namespace) -> Stats:
    """The numbers, with what they refuse as the exit code a script can test."""
    try:
        return compute_stats(
            loaded.lengths,
            args.max_tokens,
            overlong=args.overlong,
            batch_size=args.batch_size,
            max_length=args.max_length,
            buffer_size=args.buffer_size,
            target_efficiency=args.target_efficiency,
            seed=args.seed,
        )
    except Overlong as error:
        raise CliError(
            f"{error.count:,} examples are longer than --max-tokens {error.max_tokens:,} (the first is example "
            f"{error.index}, {error.length:,} tokens); raise --max-tokens or pass --overlong truncate/split",
            EXIT_USAGE,
        ) from None
    except TooManyPieces as error:
        raise CliError(
            f"--overlong split with --max-tokens {error.max_tokens:,} cuts the examples into {error.pieces:,} "
            f"sequences, more than the {error.limit:,} stats plans; raise --max-tokens or pass --overlong truncate",
            EXIT_USAGE,
        ) from None
    except NothingToPack as error:
        raise CliError(str(error), EXIT_NOTHING_TO_PACK) from None
    except BadLength as error:
        raise CliError(str(error), EXIT_BAD_COLUMN) from None
    except (TypeError, ValueError) as error:
        raise CliError(str(error), EXIT_USAGE) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        metavar="DATA",
        help="a HF datasets folder (save_to_disk), a .parquet/.arrow/.jsonl file, or a .npy of lengths",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="token budget per batch (default: the recommended budget the report explains)",
    )
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
        help="where to write the PNG, a .png file or a folder (default: DATA-warppack-stats.png next to the "
        "data, else in the current folder)",
    )
    plot.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    plot_path, where = _plot_path(args)
    loaded = load_lengths(args.data, args.column, args.split)
    stats = _compute(loaded, args)
    plot_note = ""
    if plot_path is not None:
        from warppack.cli import plots as _plots

        try:
            _plots.stats_figure(loaded.lengths[loaded.lengths > 0], stats, plot_path, title=loaded.source)
            plot_note = (
                f"plot: {plot_path} ({where}): length histogram with the budget marked, and each strategy's "
                f"efficiency against the budget; --plot PATH to choose, --no-plot to skip"
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
