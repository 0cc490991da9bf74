"""PNG plots of bench_train.py's results.json (matplotlib, no display needed).

    python benchmarks/plot_train.py out/results.json [--out docs/img]

Writes train_throughput.png, train_memory.png and eval_throughput.png (bench_train.py writes them
itself after a run; this redraws them from a results file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from benchlib.plots import plot


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json written by bench_train.py")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: beside results.json)")
    args = p.parse_args(argv)
    for path in plot(Path(args.results), Path(args.out) if args.out else Path(args.results).parent):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
