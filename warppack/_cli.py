"""The ``warppack`` console script (also ``python -m warppack``).

Commands: ``stats`` (what packing does for a data set), ``calibrate`` (the token budget that fits
on this GPU), ``demo`` (packed vs padded training on real text) and ``bench`` (the planner and
collator benchmarks). Every failure a script may want to tell apart has its own exit code (see
``EXIT_CODES`` and docs/cli.md) and a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

__all__ = [
    "main",
    "build_parser",
    "CliError",
    "EXIT_CODES",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_BAD_PATH",
    "EXIT_BAD_COLUMN",
    "EXIT_NOTHING_TO_PACK",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_NO_DEVICE",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug: please report it) or a benchmark that failed
EXIT_USAGE = 2  # bad arguments or an invalid value (argparse uses 2 as well)
EXIT_BAD_PATH = 3  # a path that does not exist, cannot be read, or is not a supported format
EXIT_BAD_COLUMN = 4  # the column is missing, or holds no token ids / lengths
EXIT_NOTHING_TO_PACK = 5  # no rows, or every example is empty
EXIT_MISSING_DEPENDENCY = 6  # an optional package the command needs is not installed
EXIT_NO_DEVICE = 7  # no CUDA device (calibrate measures real GPU memory)
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES: Dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "unexpected error, or a benchmark script failed",
    EXIT_USAGE: "bad arguments or an invalid value",
    EXIT_BAD_PATH: "path missing, unreadable or not a supported format",
    EXIT_BAD_COLUMN: "column missing or not token ids / lengths",
    EXIT_NOTHING_TO_PACK: "nothing to pack (no rows, or all examples empty)",
    EXIT_MISSING_DEPENDENCY: "an optional dependency is not installed",
    EXIT_NO_DEVICE: "no CUDA device",
    EXIT_INTERRUPTED: "interrupted",
}


class CliError(Exception):
    """An error with a one-line message and the exit code the command ends with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _epilog() -> str:
    codes = "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())
    return f"exit codes: {codes}. Errors are one line on stderr."


def _plain(doc: Optional[str]) -> str:
    """A module docstring for the terminal: reST ``literals`` shown as `literals`."""
    return (doc or "").replace("``", "`")


def build_parser() -> argparse.ArgumentParser:
    from warppack import __version__, _bench, _cli_calibrate, _demo, _stats

    parser = argparse.ArgumentParser(
        prog="warppack",
        description="Padding-free training and evaluation for PyTorch language models.",
        epilog=_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"warppack {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    stats = commands.add_parser(
        "stats",
        help="what packing does for a data set: bins, efficiency, padding avoided, a budget",
        description=_plain(_stats.__doc__),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _stats.add_arguments(stats)
    stats.set_defaults(handler=_stats.run)

    calibrate = commands.add_parser(
        "calibrate",
        help="measure the largest token budget that trains on this GPU",
        description=_plain(_cli_calibrate.__doc__),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli_calibrate.add_arguments(calibrate)
    calibrate.set_defaults(handler=_cli_calibrate.run)

    demo = commands.add_parser(
        "demo",
        help="train a small LM on the stdlib's sources, packed vs padded",
        description=_plain(_demo.__doc__),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _demo.add_arguments(demo)
    demo.set_defaults(handler=_demo.run)

    bench = commands.add_parser(
        "bench",
        help="run the planner and collator benchmarks (benchmarks/ of a source checkout)",
        description=_plain(_bench.__doc__),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench.add_arguments(bench)
    bench.set_defaults(handler=_bench.run)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_USAGE
    prefix = f"warppack {args.command}: error:"
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"warppack {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CliError as error:
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return error.code
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `warppack stats ... | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter shutdown quiet
        except OSError:
            pass
        return EXIT_OK
    except Exception as error:  # never a traceback: one line, and how to get the traceback
        if os.environ.get("WARPPACK_DEBUG"):
            raise
        print(
            f"{prefix} unexpected {type(error).__name__}: {_one_line(error)} "
            f"(set WARPPACK_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
