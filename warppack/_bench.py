"""``warppack bench``: run the planner and collator benchmarks of a source checkout.

Runs ``benchmarks/bench_plan.py`` (planning speed and bins against TRL, lightbinpack and
``binpacking``; peers that are not installed are skipped) and ``benchmarks/bench_collate.py``
(collation against transformers' collators), one after the other, each in its own Python process,
and prints their Markdown tables. The scripts live in the repository, not in the installed package:
``warppack bench`` finds them next to the package of an editable install (``pip install -e .``),
or where ``--benchmarks-dir`` or the ``WARPPACK_BENCHMARKS`` variable points.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from warppack._cli import EXIT_BAD_PATH, EXIT_FAILURE, EXIT_USAGE, CliError

__all__ = ["add_arguments", "run", "find_benchmarks", "SCRIPTS"]

SCRIPTS: Dict[str, str] = {"plan": "bench_plan.py", "collate": "bench_collate.py"}


def find_benchmarks(explicit: Optional[str] = None) -> Path:
    """The ``benchmarks/`` folder holding the scripts, or a CliError saying where it looked."""
    import warppack

    if explicit is None:
        explicit = os.environ.get("WARPPACK_BENCHMARKS") or None
    if explicit is not None:
        candidates = [Path(explicit).expanduser()]
    else:
        package = Path(warppack.__file__).resolve().parent
        candidates = [package.parent / "benchmarks"]
    for folder in candidates:
        if all((folder / script).is_file() for script in SCRIPTS.values()):
            return folder
    looked = ", ".join(str(c) for c in candidates)
    if explicit is not None:
        raise CliError(
            f"no {' and '.join(SCRIPTS.values())} in {looked}; point --benchmarks-dir at the "
            f"benchmarks/ folder of a warppack source checkout",
            EXIT_BAD_PATH,
        )
    raise CliError(
        f"the benchmark scripts are not installed with the package (looked in {looked}); they live in "
        f"the source repository: run `pip install -e .` in a checkout, or pass --benchmarks-dir "
        f"PATH/TO/warppack/benchmarks",
        EXIT_BAD_PATH,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        choices=sorted(SCRIPTS),
        action="append",
        default=None,
        help="run only this benchmark (repeatable; default: plan, then collate)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    parser.add_argument(
        "--benchmarks-dir",
        default=None,
        metavar="PATH",
        help="the benchmarks/ folder (default: next to the package, or $WARPPACK_BENCHMARKS)",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the scripts that would run, and their folder, then exit"
    )


def run(args: argparse.Namespace) -> int:
    folder = find_benchmarks(args.benchmarks_dir)
    names: List[str] = args.only or ["plan", "collate"]
    names = list(dict.fromkeys(names))
    if args.list:
        for name in names:
            print(folder / SCRIPTS[name])
        return 0
    for name in names:
        script = folder / SCRIPTS[name]
        command = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"$ {' '.join(command[1:])}", flush=True)
        try:
            completed = subprocess.run(command, cwd=str(folder.parent))
        except OSError as error:
            raise CliError(f"cannot start {script}: {error}", EXIT_USAGE) from None
        if completed.returncode != 0:
            raise CliError(f"{script.name} exited with code {completed.returncode}", EXIT_FAILURE)
        print(flush=True)
    return 0
