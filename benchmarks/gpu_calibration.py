"""Calibrated token budget vs the largest budget that really fits, over a matrix of models, on one GPU.

For every configuration of :data:`benchlib.matrix.MATRIX` (vocabularies 32k/128k/151k, hidden 896 to
4096, depth 12 to 36, GQA 1 to 8, tied and untied embeddings, gradient checkpointing, a LoRA
fine-tune, a 3B model; Llama, Qwen2, Qwen3 and Gemma2), trained with fused AdamW in bf16, each step
in a FRESH process (what a user's run sees: no cached blocks or optimizer state left by another):

1. ``calibrate`` -- ``calibrate(model, optimizer=..., max_seq_len=...)`` with every other argument at
   its default: the budget, its time (target <= 30 s), and whether model, optimizer and RNG state
   were left exactly as they were (``--accelerate`` adds accelerate's ``find_executable_batch_size``);
2. ``adversarial`` -- the training streams (all max_seq_len, all tiny, bimodal, SFT-like lognormal,
   the real CPython-stdlib lengths; back to back) at the calibrated budget: out-of-memory count
   (target 0) and peak reserved memory (target <= 1 - headroom of the device);
3. ``fits`` -- the largest budget that really fits: the same streams without OOM and with peak
   reserved under the headroom line, one fresh process per candidate; the first candidate is
   calibrated / 0.9 (if it fails, calibrated / fits >= 90% is shown), then bisection while time is left.

    python benchmarks/gpu_calibration.py --out out/calib --time-limit 540 --models qwen2-0.5b,llama-1b-lora
    python benchmarks/gpu_calibration.py --smoke                     # CPU: tiny models, simulated memory

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
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch
from benchlib.calibration import SimulatedMemory, training_streams
from benchlib.matrix import MATRIX, SMOKE, Configuration, build as build_model, changed, state_fingerprint, trainable

import warppack  # registers attn_implementation="warppack"
from warppack.memory.calibrate import calibrate
from warppack.memory.device import CudaMemory, allocator_config, is_oom_error
from warppack.memory.step import TrainStep, make_batch

HEADROOM = inspect.signature(calibrate).parameters["headroom"].default  # the cap calibrate() leaves
PHASE_CAP = {"calibrate": 150.0, "adversarial": 100.0, "probe": 100.0}  # seconds, startup included


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


def build(spec: Configuration, device: Device, max_seq_len: int) -> Tuple[Any, torch.optim.Optimizer, torch.dtype]:
    dtype = torch.float32 if device.smoke else torch.bfloat16
    model = build_model(spec, device=device.torch_device, dtype=dtype, max_positions=max(4096, max_seq_len))
    if isinstance(device.memory, SimulatedMemory):
        device.memory.attach(model)
    device.release()  # the fp32 copy made at construction
    optimizer = torch.optim.AdamW(trainable(model), lr=1e-5, fused=not device.smoke)
    return model, optimizer, dtype


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
    """The training streams back to back from a clean state; OOMs, steps and peaks."""
    device.clean(model, optimizer)
    step = TrainStep(model, optimizer, None, None, accumulate=False)
    ooms, steps, began = 0, 0, time.perf_counter()
    per_stream = {}
    for name, batches in training_streams(budget, args.max_seq_len, args.batches).items():
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
    spec = (SMOKE if args.smoke else MATRIX)[args.model]
    began = time.perf_counter()
    model, optimizer, dtype = build(spec, device, args.max_seq_len)
    # The layout template the probes and streams copy (make_batch sets each batch's budget); under
    # --static-shape every batch is padded to its budget, so every step allocates the same tensors.
    collator = warppack.PackedCollator(args.granularity if args.static_shape else None,
                                       pad_to_multiple_of=args.granularity, static_shape=args.static_shape)
    out: dict = {"load_seconds": time.perf_counter() - began}

    def save():
        result.write_text(json.dumps(out, default=str))

    if args.worker == "calibrate":
        out.update(parameters=sum(p.numel() for p in model.parameters()),
                   trainable=sum(p.numel() for p in trainable(model)), describe=spec.describe(),
                   dtype=str(dtype).replace("torch.", ""), device=device.memory.name, total_bytes=device.total,
                   allocator_conf=allocator_config())
        before = state_fingerprint(model, optimizer)
        report = calibrate(model, optimizer=optimizer, max_seq_len=args.max_seq_len, collator=collator, cache=False,
                           progress=False, memory=device.memory, enforce_headroom=args.enforce_headroom)
        out.update(calibrated=report.max_tokens, calibration_seconds=report.seconds, probes=report.probes,
                   target_bytes=report.target_bytes, attention_backend=warppack.attention_backend(),
                   state_changed=changed(before, state_fingerprint(model, optimizer)))
        save()
        log(f"{args.model}: calibrated {report.max_tokens} tokens in {report.seconds:.1f}s "
            f"({len(report.probes)} probes); state changed: {out['state_changed'] or 'nothing'}")
        if args.accelerate:
            if args.enforce_headroom:  # accelerate's search gets the whole device, as it would without warppack
                device.uncap()
            out["accelerate"] = accelerate_search(model, optimizer, args.max_seq_len, device, args.accelerate_start)
            log(f"{args.model}: accelerate find_executable_batch_size -> {out['accelerate']['batch_size']} rows")
    else:  # adversarial, or one candidate of the fits search: the same streams at --budget
        if args.enforce_headroom and args.worker == "adversarial":  # the cap calibrate(enforce_headroom=True) leaves
            device.memory.cap(int((1 - HEADROOM) * device.total))
        run = adversarial_pass(model, optimizer, args.budget, args, collator, device)
        out[args.worker] = run
        log(f"{args.model}: {args.worker} at {args.budget}: {run['ooms']}/{run['steps']} OOM, peak reserved "
            f"{run['peak_reserved_fraction']:.1%}")
    out["seconds"] = time.perf_counter() - began
    save()


def fits(run: dict) -> bool:
    """No OOM, and the headroom kept (peak reserved at most 1 - headroom of the device)."""
    return run.get("ooms") == 0 and run.get("peak_reserved_fraction", 2.0) <= 1 - HEADROOM


# ---- the parent: one fresh process per phase -------------------------------------------------------
PHASE_RESULTS = Path(tempfile.gettempdir()) / f"gpu_calibration.{os.getpid()}"


def run_phase(phase: str, name: str, args: argparse.Namespace, seconds: float, budget: Optional[int] = None) -> dict:
    result = PHASE_RESULTS / f"{name}.{phase}.json"  # beside --out, which holds only the report
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", phase, "--model", name,
               "--result", str(result), "--max-seq-len", str(args.max_seq_len), "--granularity", str(args.granularity),
               "--batches", str(args.batches), "--accelerate-start", str(args.accelerate_start)]
    if budget is not None:
        command += ["--budget", str(budget)]
    if args.smoke:
        command.append("--smoke")
    if args.static_shape:
        command.append("--static-shape")
    if args.enforce_headroom:
        command.append("--enforce-headroom")
    if args.accelerate:
        command.append("--accelerate")
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


def search_fits(name: str, args: argparse.Namespace, calibrated: int, adversarial: dict, deadline: float) -> dict:
    """Bracket the largest fitting budget, one fresh process per candidate, calibrated / 0.9 first."""
    g = args.granularity
    trials: list = []
    lo = calibrated if fits(adversarial) else None
    hi = None
    budget = -(-int(calibrated / 0.9) // g) * g
    while time.time() + 30 < deadline:
        if lo is not None and hi is not None:
            if hi - lo <= max(g, int(0.02 * lo)):
                break
            budget = (lo + hi) // 2 // g * g
        run = run_phase("probe", name, args, min(PHASE_CAP["probe"], deadline - time.time()), budget)
        if "error" in run and "probe" not in run:
            break
        trial = run["probe"]
        trials.append({k: trial.get(k) for k in ("budget", "ooms", "steps", "peak_reserved_fraction", "seconds")})
        if fits(trial):
            lo = budget
            if hi is None:
                budget = -(-int(budget * 1.15) // g) * g
        else:
            hi = budget
            if lo is None:
                budget = max(g, int(budget * 0.85) // g * g)
    return {"trials": trials, "largest_fitting": lo, "first_failing": hi}


def summarise(row: dict) -> None:
    fits_ = row.get("fits", {})
    cal, lo, hi = row.get("calibrated"), fits_.get("largest_fitting"), fits_.get("first_failing")
    if cal and lo:
        row["calibrated_over_fits"] = cal / lo  # an upper bound while the bracket is open above
    if cal and hi:
        row["calibrated_over_first_failing"] = cal / hi  # a lower bound of calibrated / largest fitting


def markdown(rows: List[dict], meta: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    lines = [f"# Token budget calibration ({meta['device']}, torch {meta['torch']}, transformers {meta['transformers']})",
             "", f"max_seq_len {meta['max_seq_len']}, {'AdamW, fp32' if meta['smoke'] else 'fused AdamW, bf16'}, "
             f"{'static_shape batches (padded to the budget)' if meta.get('static_shape') else 'dynamic batch shapes'}"
             f"{', allocator capped at the headroom line (enforce_headroom)' if meta.get('enforce_headroom') else ''}, "
             f"allocator conf {meta['allocator_conf'] or '(default)'}; command: `{meta['command']}`", "",
             "| config | what varies | params (trainable) | calibrated | largest fitting | first failing | "
             "calibrated / largest | calibration s | state left as found | adversarial OOMs | peak reserved |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        adv, fits_ = r.get("adversarial", {}), r.get("fits", {})
        low, high = r.get("calibrated_over_first_failing"), r.get("calibrated_over_fits")
        ratio = (f"{pct(low)} - {pct(high)}" if low and high else f">= {pct(low)}" if low else
                 f"<= {pct(high)}" if high else "-")
        state = r.get("state_changed")
        lines.append(
            f"| {r['model']} | {r.get('describe', '')} | {r.get('parameters', 0) / 1e9:.2f}B "
            f"({r.get('trainable', 0) / 1e9:.3f}B) | {r.get('calibrated', '-')} | "
            f"{fits_.get('largest_fitting') or '-'} | {fits_.get('first_failing') or '-'} | {ratio} | "
            f"{r.get('calibration_seconds', float('nan')):.1f} | "
            f"{'-' if state is None else 'yes' if not state else 'NO: ' + ', '.join(state)} | "
            f"{adv.get('ooms', '-')}/{adv.get('steps', '-')} | {pct(adv.get('peak_reserved_fraction'))} |")
    lines += ["", f"Targets: calibrated / largest fitting >= 90%, calibration <= 30 s, state left as found, 0 OOM "
              f"and peak reserved <= {1 - HEADROOM:.0%} on the training streams at the calibrated budget. A budget "
              "*fits* when the training streams (all max_seq_len, all tiny, bimodal, lognormal, real; back to "
              "back from a fresh process) run without OOM and with peak reserved under that line. Calibrated / "
              "largest is bracketed by calibrated / first failing and calibrated / largest fitting."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny models on the simulated device")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {list(MATRIX)}")
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--granularity", type=int, default=None, help="pad_to_multiple_of (default 64; smoke 8)")
    parser.add_argument("--batches", type=int, default=None, help="batches per training stream (default 2)")
    parser.add_argument("--accelerate", action="store_true", help="also run accelerate's find_executable_batch_size")
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
    parser.add_argument("--worker", choices=["calibrate", "adversarial", "probe"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device; run with --smoke to check the script on CPU")
    args.max_seq_len = args.max_seq_len or (32 if args.smoke else 2048)
    args.granularity = args.granularity or (8 if args.smoke else 64)
    args.batches = args.batches or 2
    if args.worker:
        worker(args)
        return 0

    models = SMOKE if args.smoke else MATRIX
    names = args.models.split(",") if args.models else list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        parser.error(f"--models {','.join(unknown)}: not in {list(models)}")
    began = time.time()
    deadline = began + args.time_limit
    import transformers

    # No CUDA call in this process: its context would take device memory from the phases it measures.
    meta = {"device": "simulated-gpu" if args.smoke else "(from the calibrate phase)", "torch": torch.__version__,
            "transformers": transformers.__version__, "max_seq_len": args.max_seq_len, "smoke": args.smoke,
            "time_limit": args.time_limit, "static_shape": args.static_shape,
            "enforce_headroom": args.enforce_headroom,
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

    for i, name in enumerate(names):
        share = (deadline - time.time()) / (len(names) - i)  # this model's share of what is left
        model_deadline = time.time() + share
        if share < 60:
            log(f"skipping {name}: {share:.0f}s left of --time-limit")
            continue
        row: dict = {"model": name, "max_seq_len": args.max_seq_len}
        rows.append(row)
        cal = run_phase("calibrate", name, args, min(PHASE_CAP["calibrate"], share - 20))
        row.update({k: v for k, v in cal.items() if k not in ("load_seconds", "seconds", "wall_seconds", "error")})
        meta["device"] = cal.get("device", meta["device"])
        row["phases"] = {"calibrate": {k: cal.get(k) for k in ("load_seconds", "seconds", "wall_seconds", "error")}}
        write()
        budget = cal.get("calibrated")
        if not budget:
            continue
        adv = run_phase("adversarial", name, args, min(PHASE_CAP["adversarial"], model_deadline - time.time()), budget)
        row["adversarial"] = adv.get("adversarial", {"error": adv.get("error")})
        row["phases"]["adversarial"] = {k: adv.get(k) for k in ("load_seconds", "seconds", "wall_seconds", "error")}
        write()
        row["fits"] = search_fits(name, args, budget, row["adversarial"], model_deadline)
        write()
        log(f"{name}: done; {json.dumps({k: row.get(k) for k in ('calibrated', 'fits')}, default=str)}")
    write()
    print((out / "gpu_calibration.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
