"""The ``warppack`` console script (also ``python -m warppack``).

Commands: ``stats`` (what packing does for a data set), ``calibrate`` (the token budget that fits
on this GPU) and ``demo`` (packed vs padded training on real text). Every failure a script may want to tell apart has its own exit code (see
``EXIT_CODES`` and docs/cli.md) and a one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from warppack.cli.errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)

__all__ = ["build_parser", "main"]

def _epilog() -> str:
    codes = "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())
    return f"exit codes: {codes}. Errors are one line on stderr."


def _plain(doc: Optional[str]) -> str:
    """A module docstring for the terminal: reST ``literals`` shown as `literals`."""
    return (doc or "").replace("``", "`")


def build_parser() -> argparse.ArgumentParser:
    from warppack._version import __version__
    from warppack.cli import calibrate as _cli_calibrate
    from warppack.cli import demo as _demo
    from warppack.cli.stats import command as _stats

    parser = argparse.ArgumentParser(
        prog="warppack",
        description="Padding-free training and evaluation for PyTorch language models.",
        epilog=_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"warppack {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, module, summary in (
        ("stats", _stats, "what packing does for a data set: bins, efficiency, padding avoided, a budget"),
        ("calibrate", _cli_calibrate, "measure the largest token budget that trains on this GPU"),
        ("demo", _demo, "train a small LM on the stdlib's sources, packed vs padded"),
    ):
        command = commands.add_parser(name, help=summary, description=_plain(module.__doc__), epilog=_epilog(),
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
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
