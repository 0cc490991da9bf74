"""Collation speed: PackedCollator vs transformers' DataCollatorWithFlattening and WithPadding.

    python benchmarks/bench_collate.py          # 8,192- and 65,536-token batches
    python benchmarks/bench_collate.py --quick  # fewer repeats (CI smoke)

Examples are lognormal SFT-like sequences filling the budget, given as Python lists, numpy arrays
or zero-copy numpy views of an Arrow list column of int64 or int32 (what a `datasets` Dataset in
numpy format hands out). Real tokens per second of one collate call on one core, median over repeats;
warppack's headline row includes reading a key (its tensor views are made on first access), the
"views unread" row is the call alone, what a batch that goes straight to ``.to(device)`` costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import numpy as np
import torch
from benchlib.data import lognormal_sft
from benchlib.peers import word_tokenizer

import warppack


def _examples(budget: int, source: str, seed: int = 0):
    lengths = lognormal_sft(100_000, max_len=min(budget, 4096), seed=seed)
    cut = int(np.searchsorted(np.cumsum(lengths), budget, side="right"))
    lengths = lengths[:cut]
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 50_000, n, dtype=np.int64) for n in lengths]
    if source == "list":
        return [{"input_ids": a.tolist()} for a in arrays]
    if source == "numpy":
        return [{"input_ids": a} for a in arrays]
    import pyarrow as pa

    # `datasets` often stores token ids as int32: "arrow-int32" checks they are read in place too.
    value_type = pa.int32() if source == "arrow-int32" else pa.int64()
    column = pa.array([a for a in arrays], type=pa.list_(value_type))
    values = column.values.to_numpy(zero_copy_only=True)
    offsets = column.offsets.to_numpy()
    return [{"input_ids": values[offsets[i] : offsets[i + 1]]} for i in range(len(arrays))]


def _hf_collators():
    from transformers import DataCollatorWithFlattening, DataCollatorWithPadding

    return {
        "DataCollatorWithFlattening": DataCollatorWithFlattening(return_tensors="pt"),
        "DataCollatorWithPadding": DataCollatorWithPadding(word_tokenizer(), return_tensors="pt"),
    }


def _median_seconds(fn, examples, repeats: int) -> float:
    fn(examples)  # warm-up: the pool's buffer, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(examples)
        times.append(time.perf_counter() - start)
        del out
    return float(np.median(times))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats
    torch.set_num_threads(1)
    peers = _hf_collators()
    print("| batch tokens | examples from | collator | sequences | µs / batch | M tokens/s | vs PackedCollator |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for budget in (8192, 65536):
        for source in ("list", "numpy", "arrow", "arrow-int32"):
            try:
                examples = _examples(budget, source)
            except ImportError:
                print(f"| {budget:,} | {source} | (pyarrow not installed) | | | | |")
                continue
            real = sum(len(e["input_ids"]) for e in examples)
            ours = warppack.PackedCollator(budget)
            # Tensor views are made on first access (a batch that goes straight to .to(device)
            # never needs the host ones); the headline row reads a key, so it pays for them too,
            # as a peer's dict of tensors does.
            results = {
                "warppack PackedCollator": _median_seconds(lambda ex: ours(ex)["input_ids"], examples, repeats),
                "warppack, views unread": _median_seconds(ours, examples, repeats),
            }
            pool = next(iter(ours._pools.values()))
            allocations = pool.allocations
            for name, collate in peers.items():
                peer_repeats = max(3, repeats // 10)
                results[name] = _median_seconds(collate, examples, peer_repeats)
            _median_seconds(ours, examples, repeats)
            steady = "no allocation in steady state" if pool.allocations == allocations else "ALLOCATED"
            base = results["warppack PackedCollator"]
            for name, seconds in results.items():
                if name == "warppack PackedCollator":
                    ratio = "1.00 (" + steady + ")"
                elif name.startswith("warppack"):
                    ratio = f"{seconds / base:.2f}"
                else:
                    ratio = f"{seconds / base:,.1f}x slower"
                print(
                    f"| {budget:,} | {source} | {name} | {len(examples)} | {seconds * 1e6:,.0f} | "
                    f"{real / seconds / 1e6:,.1f} | {ratio} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
