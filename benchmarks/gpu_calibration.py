"""Calibrated token budget vs what really fits, on one GPU.

For a ~0.5B and a ~1B Llama-config model trained with AdamW in bf16, each phase in a FRESH process
(what a user's training run sees: no cached blocks or optimizer state left by another phase):

1. ``calibrate`` -- warppack's calibrated budget and its time (target <= 60 s); then, in the same
   process, accelerate's ``find_executable_batch_size`` (padded rows of max_seq_len, sdpa): the
   tokens per step it reaches;
2. ``adversarial`` -- the adversarial length streams (all max_seq_len, all tiny, bimodal; run back
   to back) at the calibrated budget: out-of-memory count (target 0) and peak reserved memory
   (target <= 92% of the device);
3. ``fits`` -- the largest budget that really fits, defined as for 2: the same streams run without
   OOM. Each candidate starts clean (optimizer state dropped, cache emptied, peaks reset); +3% steps
   from the calibrated budget until one fails (or -3% while it fails), then bisection to
   ``--granularity`` tokens; calibrated / fits is the efficiency (target >= 90%).

    python benchmarks/gpu_calibration.py --out out/calib --time-limit 540     # GPU, both models, < 9 min
    ... --expandable-segments --static-shape --enforce-headroom      # the configuration that meets every target
    python benchmarks/gpu_calibration.py --smoke                     # CPU: tiny model, simulated memory

Writes ``gpu_calibration.json`` and ``gpu_calibration.md`` under ``--out`` (default ``$OUT`` or
``./out``) after every phase, so a timeout still leaves the phases that finished.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch
from benchlib.calibration import SimulatedMemory, adversarial_batches

import warppack  # registers attn_implementation="warppack"
from warppack.memory.calibrate import calibrate
from warppack.memory.device import CudaMemory, allocator_config, is_oom_error
from warppack.memory.step import TrainStep, make_batch

VOCAB = 32000
MODELS = {  # ~0.50B and ~1.10B parameters (untied embeddings)
    "llama-0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                       num_key_value_heads=4),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8),
}
SMOKE_MODEL = {"tiny": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1)}
HEADROOM = inspect.signature(calibrate).parameters["headroom"].default  # the cap calibrate() leaves
PHASE_CAP = {"calibrate": 150.0, "adversarial": 100.0}  # seconds, startup included; fits gets the rest


def log(message: str) -> None:
    print(f"[gpu_calibration {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- inside a worker process ---------------------------------------------------------------------
class Device:
    """Peaks and release on the real GPU, or on the simulated device (``--smoke``)."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.memory: SimulatedMemory | CudaMemory
        if smoke:
            self.memory = SimulatedMemory(total_bytes=2e5, static_bytes=2e4, per_token=300, per_square=2.0)
            self.torch_device = torch.device("cpu")
        else:
            self.memory = CudaMemory(0)
            self.torch_device = torch.device("cuda", 0)
        self.total = self.memory.total_bytes

    def clean(self, model: Any, optimizer: torch.optim.Optimizer) -> None:
        """The state a fresh process is in after loading the model: no optimizer state, no gradients,
        no cached blocks, peak counters reset."""
        optimizer.state.clear()
        model.zero_grad(set_to_none=True)
        self.memory.reset_peak()  # releases (gc + empty_cache) first

    def release(self) -> None:
        self.memory.release()

    def uncap(self) -> None:
        """Undo ``calibrate(enforce_headroom=True)``'s allocator cap."""
        if isinstance(self.memory, SimulatedMemory):
            self.memory.uncap()
        else:
            torch.cuda.set_per_process_memory_fraction(1.0, self.torch_device)

    def peaks(self) -> dict:
        if self.smoke:
            reserved, allocated = self.memory.peak_bytes(), self.memory.peak_allocated_bytes()
        else:
            torch.cuda.synchronize()
            reserved, allocated = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
        return {"peak_reserved_bytes": int(reserved), "peak_reserved_fraction": reserved / self.total,
                "peak_allocated_bytes": int(allocated), "peak_allocated_fraction": allocated / self.total,
                # what is not free: reserved + CUDA context/NCCL (the calibrator's own measure)
                "peak_not_free_fraction": self.memory.peak_bytes() / self.total}


def build(arch: dict, device: Device, max_seq_len: int) -> Tuple[Any, torch.optim.Optimizer, torch.dtype]:
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.float32 if device.smoke else torch.bfloat16
    config = LlamaConfig(vocab_size=64 if device.smoke else VOCAB, max_position_embeddings=max(4096, max_seq_len),
                         use_cache=False, tie_word_embeddings=False, **arch)
    torch.manual_seed(0)
    with torch.device(device.torch_device):
        model: Any = LlamaForCausalLM(config)
    model.to(dtype=dtype)
    model.set_attn_implementation("warppack")
    model.train()
    if isinstance(device.memory, SimulatedMemory):
        device.memory.attach(model)
    device.release()  # the fp32 copy made at construction
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5), dtype


def run_step(step: TrainStep, lengths: List[int], budget: int, collator: warppack.PackedCollator, vocab: int,
             device: Device) -> bool:
    """One training step on a batch of ``lengths``; False on out-of-memory (memory released)."""
    try:
        step(make_batch(lengths, budget, collator, vocab, device.torch_device))
        ok = True
    except Exception as error:  # noqa: BLE001 - only OOM is swallowed
        if not is_oom_error(error):
            raise
        ok = False
    if not ok:  # outside the except block, whose traceback holds the activations
        step.clear_grads()
        device.release()
    return ok


def adversarial_pass(model: Any, optimizer: torch.optim.Optimizer, budget: int, args: argparse.Namespace,
                     collator: warppack.PackedCollator, device: Device) -> dict:
    """The three streams back to back from a clean state; OOMs, steps and peaks."""
    device.clean(model, optimizer)
    step = TrainStep(model, optimizer, None, None, accumulate=False)
    ooms, steps, began = 0, 0, time.perf_counter()
    per_stream = {}
    for name, batches in adversarial_batches(budget, args.max_seq_len, args.batches).items():
        failed = sum(not run_step(step, lengths, budget, collator, model.config.vocab_size, device)
                     for lengths in batches)
        per_stream[name] = {"steps": len(batches), "ooms": failed, "tokens": [sum(b) for b in batches]}
        ooms, steps = ooms + failed, steps + len(batches)
    return {"budget": budget, "steps": steps, "ooms": ooms, **device.peaks(), "streams": per_stream,
            "seconds": time.perf_counter() - began}


def accelerate_search(model: Any, optimizer: torch.optim.Optimizer, max_seq_len: int, device: Device,
                      start: int) -> dict:
    from accelerate.utils import find_executable_batch_size

    device.clean(model, optimizer)
    model.set_attn_implementation("sdpa")
    attempts = []
    began = time.perf_counter()

    @find_executable_batch_size(starting_batch_size=start)
    def train(batch_size):
        attempts.append(batch_size)
        ids = torch.randint(3, model.config.vocab_size, (batch_size, max_seq_len), device=device.torch_device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch_size

    try:
        batch_size = train()
    except RuntimeError as error:  # "No executable batch size found, reached zero."
        batch_size = 0
        attempts.append(str(error))
    model.set_attn_implementation("warppack")
    return {"batch_size": batch_size, "tokens_per_step": batch_size * max_seq_len, "attempts": len(attempts),
            "seconds": time.perf_counter() - began}


def worker(args: argparse.Namespace) -> None:
    """One phase for one model, in this (fresh) process; results go to ``--result`` as they come."""
    result = Path(args.result)
    device = Device(args.smoke)
    arch = (SMOKE_MODEL if args.smoke else MODELS)[args.model]
    began = time.perf_counter()
    model, optimizer, dtype = build(arch, device, args.max_seq_len)
    # The layout template the probes and streams copy (make_batch sets each batch's budget); under
    # --static-shape every batch is padded to its budget, so every step allocates the same tensors.
    collator = warppack.PackedCollator(args.granularity if args.static_shape else None,
                                       pad_to_multiple_of=args.granularity, static_shape=args.static_shape)
    out: dict = {"load_seconds": time.perf_counter() - began}

    def save():
        result.write_text(json.dumps(out, default=str))

    if args.worker == "calibrate":
        out.update(parameters=sum(p.numel() for p in model.parameters()), dtype=str(dtype).replace("torch.", ""),
                   device=device.memory.name, total_bytes=device.total, allocator_conf=allocator_config())
        report = calibrate(model, optimizer=optimizer, max_seq_len=args.max_seq_len, collator=collator, cache=False,
                           progress=False, memory=device.memory, enforce_headroom=args.enforce_headroom)
        out.update(calibrated=report.max_tokens, calibration_seconds=report.seconds, probes=report.probes,
                   target_bytes=report.target_bytes, attention_backend=warppack.attention_backend())
        save()
        log(f"{args.model}: calibrated {report.max_tokens} tokens in {report.seconds:.1f}s "
            f"({len(report.probes)} probes)")
        if args.enforce_headroom:  # accelerate's search gets the whole device, as it would without warppack
            device.uncap()
        out["accelerate"] = accelerate_search(model, optimizer, args.max_seq_len, device, args.accelerate_start)
        log(f"{args.model}: accelerate find_executable_batch_size -> {out['accelerate']['batch_size']} rows")
    elif args.worker == "adversarial":
        if args.enforce_headroom:  # the cap calibrate(enforce_headroom=True) leaves for the run
            device.memory.cap(int((1 - HEADROOM) * device.total))
        out["adversarial"] = adversarial_pass(model, optimizer, args.budget, args, collator, device)
        a = out["adversarial"]
        log(f"{args.model}: adversarial at {args.budget}: {a['ooms']}/{a['steps']} OOM, peak reserved "
            f"{a['peak_reserved_fraction']:.1%}")
    else:  # fits
        g = args.granularity
        trials: list = []
        out["fits"] = {"trials": trials, "complete": False}

        def fits(budget: int) -> bool:
            run = adversarial_pass(model, optimizer, budget, args, collator, device)
            trials.append({k: run[k] for k in ("budget", "ooms", "steps", "peak_reserved_fraction", "seconds")})
            log(f"{args.model}: fits? {budget}: {run['ooms']} OOM, peak reserved {run['peak_reserved_fraction']:.1%}")
            return run["ooms"] == 0

        deadline = time.time() + args.seconds
        lo, hi = None, None
        budget = args.budget
        while (lo is None or hi is None) and time.time() < deadline:  # +-3% steps until bracketed
            if fits(budget):
                lo = budget
                budget = max(int(budget * 1.03) // g * g, budget + g)
            else:
                hi = budget
                budget = max(int(budget * 0.97) // g * g, g)
            out["fits"].update(largest_fitting=lo, first_oom=hi)
            save()
        while lo is not None and hi is not None and hi - lo > g and time.time() < deadline:
            mid = (lo + hi) // 2 // g * g
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
            out["fits"].update(largest_fitting=lo, first_oom=hi)
            save()
        out["fits"].update(largest_fitting=lo, first_oom=hi,
                           complete=lo is not None and hi is not None and hi - lo <= g)
    out["seconds"] = time.perf_counter() - began
    save()


# ---- the parent: one fresh process per phase -------------------------------------------------------
def run_phase(phase: str, name: str, args: argparse.Namespace, seconds: float, budget: Optional[int] = None) -> dict:
    out = Path(args.out)
    result = out / f".{name}.{phase}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", phase, "--model", name,
               "--result", str(result), "--max-seq-len", str(args.max_seq_len), "--granularity", str(args.granularity),
               "--batches", str(args.batches), "--accelerate-start", str(args.accelerate_start),
               "--seconds", str(max(1.0, seconds - 45))]  # fits: no new candidate in the last 45 s
    if budget is not None:
        command += ["--budget", str(budget)]
    if args.smoke:
        command.append("--smoke")
    if args.static_shape:
        command.append("--static-shape")
    if args.enforce_headroom:
        command.append("--enforce-headroom")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.expandable_segments:
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    log(f"{name}: {phase} (fresh process, up to {seconds:.0f}s)")
    began = time.time()
    try:
        proc = subprocess.run(command, env=env, timeout=max(1.0, seconds), stderr=subprocess.PIPE, text=True)
        error = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    except subprocess.TimeoutExpired:
        error = f"timed out after {seconds:.0f}s"
    data = json.loads(result.read_text()) if result.exists() else {}
    if error:
        log(f"{name}: {phase} {error}")
        data["error"] = error
    data["wall_seconds"] = time.time() - began
    return data


def summarise(row: dict) -> None:
    fits = row.get("fits", {})
    if row.get("calibrated") and fits.get("largest_fitting"):
        row["calibrated_over_fits"] = row["calibrated"] / fits["largest_fitting"]


def markdown(rows: List[dict], meta: dict) -> str:
    lines = [f"# Token budget calibration ({meta['device']}, torch {meta['torch']}, transformers {meta['transformers']})",
             "", f"max_seq_len {meta['max_seq_len']}, AdamW, {rows[0].get('dtype', '') if rows else ''}, allocator "
             f"conf {meta['allocator_conf'] or '(default)'}, "
             f"{'static_shape batches (padded to the budget)' if meta.get('static_shape') else 'dynamic batch shapes'}"
             f"{', allocator capped at the headroom line (enforce_headroom)' if meta.get('enforce_headroom') else ''}"
             f"; command: `{meta['command']}`", "",
             "| model | params | calibrated | largest fitting | calibrated/fits | calibration s | probes | "
             "adversarial OOMs | peak reserved | peak allocated | accelerate bs x len | accelerate tokens/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc, adv, fits = r.get("accelerate", {}), r.get("adversarial", {}), r.get("fits", {})

        def pct(x):
            return "-" if x is None else f"{x:.1%}"

        largest = fits.get("largest_fitting")
        lines.append(
            f"| {r['model']} | {r.get('parameters', 0) / 1e9:.2f}B | {r.get('calibrated', '-')} | "
            f"{'-' if largest is None else largest}{'' if fits.get('complete') else ' (search incomplete)'} | "
            f"{pct(r.get('calibrated_over_fits'))} | {r.get('calibration_seconds', float('nan')):.1f} | "
            f"{len(r.get('probes', []))} | {adv.get('ooms', '-')}/{adv.get('steps', '-')} | "
            f"{pct(adv.get('peak_reserved_fraction'))} | {pct(adv.get('peak_allocated_fraction'))} | "
            f"{acc.get('batch_size', '-')} x {r.get('max_seq_len', '-')} | {acc.get('tokens_per_step', '-')} |")
    lines += ["", "Targets: calibrated/fits >= 90%, calibration <= 60 s, 0 OOM and peak reserved <= 92% on the "
              "adversarial streams (all max_seq_len, all tiny, bimodal; back to back, fresh process). *largest "
              "fitting*: the largest budget whose adversarial streams run without OOM (same streams, clean state "
              "per candidate). Each phase ran in its own process."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny model on the simulated device")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {list(MODELS)}")
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--granularity", type=int, default=None, help="pad_to_multiple_of (default 64; smoke 8)")
    parser.add_argument("--batches", type=int, default=None, help="batches per adversarial stream (default 6)")
    parser.add_argument("--accelerate-start", type=int, default=128, help="find_executable_batch_size start")
    parser.add_argument("--time-limit", type=float, default=540, help="all models and phases within this many s")
    parser.add_argument("--expandable-segments", action="store_true",
                        help="run every phase with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    parser.add_argument("--static-shape", action="store_true",
                        help="PackedCollator(static_shape=True): every batch padded to the budget, in every phase")
    parser.add_argument("--enforce-headroom", action="store_true",
                        help="calibrate(enforce_headroom=True) and the adversarial run under its allocator cap; "
                             "'fits' stays uncapped (the whole device)")
    parser.add_argument("--out", default=os.environ.get("OUT", "./out"))
    # internal: one phase in a fresh process
    parser.add_argument("--worker", choices=["calibrate", "adversarial", "fits"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device; run with --smoke to check the script on CPU")
    args.max_seq_len = args.max_seq_len or (32 if args.smoke else 2048)
    args.granularity = args.granularity or (8 if args.smoke else 64)
    args.batches = args.batches or (3 if args.smoke else 6)
    if args.worker:
        worker(args)
        return 0

    models = SMOKE_MODEL if args.smoke else MODELS
    if args.models:
        models = {k: models[k] for k in args.models.split(",")}
    began = time.time()
    deadline = began + args.time_limit
    import transformers

    # No CUDA call in this process: its context would take device memory from the phases it measures.
    meta = {"device": "simulated-gpu" if args.smoke else "(from the calibrate phase)", "torch": torch.__version__, "transformers": transformers.__version__,
            "max_seq_len": args.max_seq_len, "smoke": args.smoke, "time_limit": args.time_limit,
            "static_shape": args.static_shape, "enforce_headroom": args.enforce_headroom,
            "allocator_conf": "expandable_segments:True" if args.expandable_segments else allocator_config(),
            "command": "python benchmarks/gpu_calibration.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list = []

    def write():
        meta["seconds"] = time.time() - began
        for row in rows:
            summarise(row)
        (out / "gpu_calibration.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        (out / "gpu_calibration.md").write_text(markdown(rows, meta))

    names = list(models)
    for i, name in enumerate(names):
        share = (deadline - time.time()) / (len(names) - i)  # this model's share of what is left
        model_deadline = time.time() + share
        if share < 60:
            log(f"skipping {name}: {share:.0f}s left of --time-limit")
            continue
        row: dict = {"model": name, "max_seq_len": args.max_seq_len}
        rows.append(row)
        cal = run_phase("calibrate", name, args, min(PHASE_CAP["calibrate"], share - 40))
        row.update({k: v for k, v in cal.items() if k not in ("load_seconds", "seconds", "wall_seconds", "error")})
        meta["device"] = cal.get("device", meta["device"])
        row["phases"] = {"calibrate": {k: cal.get(k) for k in ("load_seconds", "seconds", "wall_seconds", "error")}}
        write()
        budget = cal.get("calibrated")
        if not budget:
            continue
        left = model_deadline - time.time()
        adv = run_phase("adversarial", name, args, min(PHASE_CAP["adversarial"], left - 20), budget)
        row["adversarial"] = adv.get("adversarial", {"error": adv.get("error")})
        row["phases"]["adversarial"] = {k: adv.get(k) for k in ("load_seconds", "seconds", "wall_seconds", "error")}
        write()
        left = model_deadline - time.time()
        if left > 45:
            fit = run_phase("fits", name, args, left, budget)
            row["fits"] = fit.get("fits", {"complete": False})
            row["phases"]["fits"] = {k: fit.get(k) for k in ("load_seconds", "seconds", "wall_seconds", "error")}
        write()
        log(f"{name}: done; {json.dumps({k: row.get(k) for k in ('calibrated', 'calibrated_over_fits')})}")
    write()
    print((out / "gpu_calibration.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
