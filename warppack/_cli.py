"""The ``warppack`` console script (also ``python -m warppack``)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from warppack import __version__, _demo

    parser = argparse.ArgumentParser(
        prog="warppack", description="Padding-free training and evaluation for PyTorch language models."
    )
    parser.add_argument("--version", action="version", version=f"warppack {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a small LM on the stdlib's sources, packed vs padded",
        description=_demo.__doc__,
    )
    _demo.add_arguments(demo)
    demo.set_defaults(handler=_demo.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f"warppack {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
