"""Distributed sharding: token imbalance, step counts and straggler cost on 8 and 64 ranks.

Three ways to feed ``W`` data-parallel ranks, on the shared real length data:

- **warppack**: ``PackedBatchSampler`` — one global plan, bins of alike size dealt a step at a time.
- **DistributedSampler + fixed batch**: torch's sampler (shuffled, padded to a multiple of ``W`` by
  repeating examples) and ``b = max_tokens // mean length`` examples per batch, collated without
  padding (the best case for it: work ∝ real tokens).
- **per-rank packing, truncated** (the axolotl approach): each rank packs its own ``DistributedSampler``
  share with the same C++ BFD and all ranks stop at the smallest bin count.

A step lasts as long as its slowest rank, so the epoch costs Σ_step max_rank(work). ``imbalance`` is
that over Σ_step mean_rank(work) (1.00 = no rank ever waits); ``epoch time`` is it over the ideal
total work / W. Work is real tokens (MLP-bound steps) or Σlen² (attention-bound). ``over budget`` is
the share of batches holding more than ``max_tokens`` tokens (an OOM risk a fixed batch size takes).

    python benchmarks/bench_distributed.py            # all shared data sets, 8 and 64 ranks
    python benchmarks/bench_distributed.py --data-dir ../shared/data --ranks 8 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from benchlib.data import DEFAULT_DATA_DIR, datasets

import warppack


def load(data_dir: Path) -> dict:
    """name -> (lengths, max_tokens, overlong) for the shared length data found in ``data_dir``."""
    out = {name: (d["lengths"], d["max_tokens"], d["overlong"])
           for name, d in datasets(data_dir, lognormal_n=0).items()}
    if not out:
        raise SystemExit(f"no length data in {data_dir}; pass --data-dir")
    return out


def summarise(tokens: np.ndarray, sumsq: np.ndarray, *, n: int, seen: np.ndarray, budget: int, total: int,
              world: int) -> dict:
    """Metrics of a ``[steps, world]`` grid of per-rank work (0 for an empty batch)."""
    out = {"steps": tokens.shape[0]}
    counts = np.bincount(seen, minlength=n)
    out["dropped"] = int((counts == 0).sum())
    out["duplicated"] = int(np.maximum(counts - 1, 0).sum())
    for name, work in (("tok", tokens), ("sq", sumsq)):
        out[f"{name}_imbalance"] = work.max(axis=1).sum() / work.mean(axis=1).sum()
    out["epoch_time"] = tokens.max(axis=1).sum() / (total / world)  # vs the dataset's tokens spread evenly
    out["over_budget"] = float((tokens > budget).mean())
    return out


def warppack_grid(lengths: np.ndarray, budget: int, overlong: str, world: int) -> Tuple[np.ndarray, ...]:
    sampler = warppack.PackedBatchSampler(lengths, budget, num_replicas=world, rank=0, seed=0, overlong=overlong)
    layout = sampler._layout(0, [])  # the grid every rank computes; bin ids, -1 for an empty batch
    grid, bins = layout.grid, layout.bins
    real = grid >= 0
    tokens = np.where(real, bins.tokens[np.maximum(grid, 0)], 0)
    sumsq = np.where(real, bins.sumsq[np.maximum(grid, 0)], 0)
    seen = bins.gather(grid[real])[0]
    if bins.perm is not None:
        seen = bins.perm[seen]  # planned positions -> dataset indices
    return tokens, sumsq, seen


def distributed_sampler_grid(lengths: np.ndarray, budget: int, overlong: str, world: int,
                             rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    clipped = np.minimum(lengths, budget) if overlong == "truncate" else lengths
    n = len(lengths)
    batch = max(1, budget // int(round(clipped.mean())))
    order = rng.permutation(n)
    per_rank = -(-n // world)
    padded = np.concatenate([order, order[: per_rank * world - n]])  # DistributedSampler repeats to even out
    shards = padded.reshape(per_rank, world).T  # rank r takes indices r, r + W, ...
    steps = -(-per_rank // batch)
    ids = np.full((world, steps * batch), -1, dtype=np.int64)
    ids[:, :per_rank] = shards
    length = np.where(ids >= 0, clipped[np.maximum(ids, 0)], 0).reshape(world, steps, batch)
    tokens = length.sum(axis=2).T
    sumsq = (length * length).sum(axis=2).T
    return tokens, sumsq, padded, batch


def per_rank_packing_grid(lengths: np.ndarray, budget: int, overlong: str, world: int,
                          rng: np.random.Generator) -> Tuple[np.ndarray, ...]:
    n = len(lengths)
    order = rng.permutation(n)
    per_rank = []
    for r in range(world):
        share = order[r::world]
        p = warppack.plan(lengths[share], budget, overlong=overlong)
        tok = p.bin_tokens()
        sq = np.add.reduceat(p.sizes * p.sizes, p.bin_offsets[:-1]) if p.num_bins else np.zeros(0, np.int64)
        shuffle = rng.permutation(p.num_bins)
        per_rank.append((tok[shuffle], sq[shuffle], p, share, shuffle))
    steps = min(len(t) for t, *_ in per_rank)  # truncate to the smallest count: equal steps, dropped data
    tokens = np.stack([t[:steps] for t, *_ in per_rank], axis=1)
    sumsq = np.stack([s[:steps] for _, s, *_ in per_rank], axis=1)
    seen = []
    for _, _, p, share, shuffle in per_rank:
        for b in shuffle[:steps]:
            seen.append(share[p.items[p.bin_offsets[b]:p.bin_offsets[b + 1]]])
    return tokens, sumsq, np.concatenate(seen) if seen else np.zeros(0, np.int64)


_RESUME = """
import json, sys, time
import numpy as np
import warppack
lengths, state = np.load(sys.argv[1]), json.load(open(sys.argv[2]))
t0 = time.perf_counter()
sampler = warppack.PackedBatchSampler(lengths, state["max_tokens"], num_replicas=8, rank=3, seed=state["seed"],
                                      overlong=state["overlong"])
sampler.load_state_dict(state)
next(iter(sampler))
print(time.perf_counter() - t0)
"""


def timings(lengths: np.ndarray, budget: int, overlong: str) -> dict:
    """Planning one epoch for 8 ranks; resuming late in the epoch in a fresh process (as after a restart)."""
    t0 = time.perf_counter()
    sampler = warppack.PackedBatchSampler(lengths, budget, num_replicas=8, rank=3, seed=0, overlong=overlong)
    steps = len(sampler)
    plan_s = time.perf_counter() - t0
    state = sampler.state_dict()
    state["step"] = steps - 2  # late in the epoch: a resume must not replay what came before
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "lengths.npy", lengths)
        (Path(tmp) / "state.json").write_text(json.dumps(state))
        done = subprocess.run([sys.executable, "-c", _RESUME, str(Path(tmp) / "lengths.npy"),
                               str(Path(tmp) / "state.json")],
                              capture_output=True, text=True, check=True)
    return {"plan_s": plan_s, "resume_s": float(done.stdout.split()[-1]), "steps": steps}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--no-timing", action="store_true", help="skip the plan/resume timings")
    args = parser.parse_args(argv)
    data = load(args.data_dir)
    timing_rows = []
    if not args.no_timing:  # first, while this process holds little memory
        sets = list(data.items())
        wiki = data.get("wikipedia512 (16.3M)")
        if wiki is not None:  # the 10M mark of the resume target
            sets.insert(1, ("wikipedia512, first 10M", (wiki[0][:10_000_000].copy(), wiki[1], wiki[2])))
        for name, (lengths, budget, overlong) in sets:
            timing_rows.append((name, len(lengths), timings(lengths, budget, overlong)))
    print(f"# bench_distributed: data {args.data_dir}, ranks {args.ranks}")
    header = ("| data | ranks | method | steps | dropped | duplicated | token imbalance | Σlen² imbalance "
              "| epoch time | over budget |")
    print(header)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (lengths, budget, overlong) in data.items():
        clipped = np.minimum(lengths, budget) if overlong == "truncate" else lengths
        total = int(clipped.sum())
        n = len(lengths)
        for world in args.ranks:
            rng = np.random.default_rng(world)
            rows = []
            tokens, sumsq, seen = warppack_grid(lengths, budget, overlong, world)
            rows.append(("warppack", summarise(tokens, sumsq, n=n, seen=seen, budget=budget, total=total,
                                               world=world)))
            tokens, sumsq, seen, batch = distributed_sampler_grid(lengths, budget, overlong, world, rng)
            rows.append((f"DistributedSampler, batch {batch}",
                         summarise(tokens, sumsq, n=n, seen=seen, budget=budget, total=total, world=world)))
            tokens, sumsq, seen = per_rank_packing_grid(lengths, budget, overlong, world, rng)
            rows.append(("per-rank packing, truncated",
                         summarise(tokens, sumsq, n=n, seen=seen, budget=budget, total=total, world=world)))
            for method, m in rows:
                print(f"| {name} | {world} | {method} | {m['steps']:,} | {m['dropped']:,} | {m['duplicated']:,} "
                      f"| {m['tok_imbalance']:.4f} | {m['sq_imbalance']:.3f} | {m['epoch_time']:.3f} "
                      f"| {100 * m['over_budget']:.1f}% |")
            sys.stdout.flush()
    if timing_rows:
        print()
        print("| data | examples | plan one epoch (8 ranks) | resume late in the epoch, fresh process |")
        print("|---|---:|---:|---:|")
        for name, n, t in timing_rows:
            print(f"| {name} | {n:,} | {t['plan_s']:.2f} s | {t['resume_s']:.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
