"""Planning speed and quality: warppack vs TRL's BFD, lightbinpack's OBFD and `binpacking`, one run.

    python benchmarks/bench_plan.py            # all data sets, one core
    python benchmarks/bench_plan.py --quick    # small sizes (CI smoke)

Peers that are not installed are skipped with a note. Slow Python peers run on a prefix of the data
(their rate is sequences/s, so it is comparable); warppack runs on the same prefix for their bin
counts. Times are medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
from benchlib.data import DEFAULT_DATA_DIR, datasets

import warppack

PEER_PREFIX = {"trl": 200_000, "binpacking": 50_000}


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _warppack(strategy):
    def run(lengths, budget, overlong):
        return warppack.plan(lengths, budget, strategy=strategy, overlong=overlong).num_bins

    return run


def _lightbinpack(lengths, budget, overlong):
    import lightbinpack

    as_list = np.minimum(lengths, budget).tolist()  # conversion is not timed: see the note
    return lambda: len(lightbinpack.obfd(as_list, budget))


def _trl(lengths, budget, overlong):
    import pyarrow as pa
    from trl.data_utils import _pack_bfd

    lengths = np.minimum(lengths, budget)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(np.zeros(int(offsets[-1]), dtype=np.int32))
    table = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), values)})
    return lambda: _pack_bfd(table, budget).num_rows


def _binpacking(lengths, budget, overlong):
    import binpacking

    weights = np.minimum(lengths, budget).tolist()
    return lambda: len(binpacking.to_constant_volume(weights, budget))


PEERS = {"lightbinpack OBFD (C++)": _lightbinpack, "TRL _pack_bfd": _trl, "binpacking": _binpacking}


def _peak_extra_bytes_per_sequence(lengths: np.ndarray, budget: int, overlong: str) -> tuple:
    """Extra memory of one bfd plan per sequence, in a fresh process: (peak RSS, numpy peak).

    Peak RSS growth (Linux VmHWM, reset through /proc/self/clear_refs once the lengths are loaded
    and the extension is warm) counts every page the plan touches, whoever allocated it: numpy's
    output arrays, the engine's malloc'd scratch and its exactly-sized offsets, and anything a
    huge-page rounding adds. tracemalloc's peak is the cross-check for numpy's share: it counts
    the bytes numpy asked for, touched or not, but cannot see the C++ allocations.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lengths.npy")
        np.save(path, lengths)
        code = (
            "import numpy as np, re, tracemalloc, warppack\n"
            "def hwm():\n"
            "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
            f"lengths = np.load({path!r}); warppack.plan(lengths[:1000], {budget}, overlong={overlong!r})\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "before = hwm()\n"
            "tracemalloc.start()\n"
            f"p = warppack.plan(lengths, {budget}, overlong={overlong!r})\n"
            "traced = tracemalloc.get_traced_memory()[1]\n"
            "print((hwm() - before) / len(lengths), traced / len(lengths))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss, traced = out.stdout.split()
    return float(rss), float(traced)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    data = datasets(args.data_dir, lognormal_n=20_000 if args.quick else 1_000_000)
    if args.quick:
        data = {k: dict(v, lengths=v["lengths"][:20_000]) for k, v in data.items()}
    rows = []
    for name, spec in data.items():
        lengths, budget, overlong = spec["lengths"], spec["max_tokens"], spec["overlong"]
        n = len(lengths)
        lower = int(np.ceil(np.minimum(lengths, budget).sum() / budget))
        ours = {}
        for strategy in ("bfd", "ffd", "online"):
            seconds, bins = _median_time(lambda: _warppack(strategy)(lengths, budget, overlong), args.repeats)
            ours[strategy] = (seconds, bins)
            rows.append((name, f"warppack {strategy}", n, n / seconds, bins, bins / lower, ""))
        for peer, make in PEERS.items():
            prefix = min(n, PEER_PREFIX.get(peer.split()[0].lower(), n))
            sub = lengths[:prefix]
            try:
                fn = make(sub, budget, overlong)
            except ImportError as error:
                rows.append((name, peer, 0, float("nan"), 0, float("nan"), f"not installed ({error.name})"))
                continue
            repeats = args.repeats if prefix == n and peer.startswith("lightbinpack") else 1
            seconds, bins = _median_time(fn, repeats)
            our_bins = warppack.plan(sub, budget, overlong=overlong).num_bins
            note = f"first {prefix:,}; warppack bfd: {our_bins} bins" if prefix < n else ""
            speedup = (n / ours["bfd"][0]) / (prefix / seconds)
            sub_lower = int(np.ceil(np.minimum(sub, budget).sum() / budget))
            note = f"{note}; warppack bfd is {speedup:,.0f}x faster".lstrip("; ")
            rows.append((name, peer, prefix, prefix / seconds, bins, bins / sub_lower, note))
        if not args.quick and n >= 1_000_000:
            rss, traced = _peak_extra_bytes_per_sequence(lengths, budget, overlong)
            note = f"peak extra {rss:.1f} B/sequence (RSS, all allocations); numpy's share {traced:.1f} (tracemalloc)"
            rows.append((name, "warppack bfd memory", n, float("nan"), 0, float("nan"), note))

    header = "| data | planner | sequences | sequences/s | bins | bins / lower bound | note |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---|")
    for name, planner, n, rate, bins, ratio, note in rows:
        rate_s = "" if rate != rate else f"{rate / 1e6:,.2f}M"
        ratio_s = "" if ratio != ratio else f"{ratio:.4f}"
        print(f"| {name} | {planner} | {n:,} | {rate_s} | {bins:,} | {ratio_s} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
