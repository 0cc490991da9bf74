"""lm-eval on one GPU: ``--model warppack`` (packed) vs ``--model hf`` (padded), same model, same tasks.

One process, one model checkpoint, four generated local tasks (``benchlib.lm_eval_tasks``:
benchmark-like and SFT-like multiple choice, rolling perplexity over long documents, greedy
generation). Every backend setting is built the way lm-eval's command line builds it
(``create_from_arg_string`` of the same ``--model_args``), warmed up, then runs each task through
``lm_eval.simple_evaluate``:

  hf batch_size=auto          lm-eval's own largest-batch search (starts at max_batch_size=64)
  warppack max_tokens=N       packed under a fixed token budget (``--max-tokens``)
  warppack max_tokens=auto    packed under the calibrated budget (calibration timed apart)
  hf batch_size=B             each of ``--hf-batch-sizes``; the fastest per task is "best fixed"

Reported per task and setting: the request time (inside the LM's request method, device
synchronised: tokenisation, batching, forwards, scoring), requests/s, the wall time of the whole
``simple_evaluate``, speed-ups over hf auto and hf best fixed, and every request's answer compared
with hf auto's (the bf16 spread between two hf batch sizes is in the same table). Then an exactness
phase in fp32 (``--exact-limit`` documents per task): warppack vs hf, every log-likelihood within
1e-4 (rolling sums also within 1e-5 relative: hf sums a window in the logits' dtype), is_greedy and
generations identical.

The model: ``--model-dir`` (config + tokenizer; default ``.carry/smollm2_tok``, written by
``scripts/smollm2_model_dir.py``) with random-init weights (fixed seed; speed does not depend on
weight values), or ``--gguf FILE`` (trained weights). ``--smoke``: CPU, fp32, a tiny model.

    python benchmarks/gpu_lm_eval.py --out "$OUT" --time-limit 400   # H200: sized to fit 400 s
    python benchmarks/gpu_lm_eval.py --smoke --out /tmp/smoke          # CPU: checks the script itself

Writes ``gpu_lm_eval.json`` and ``gpu_lm_eval.md`` into ``--out`` (default ``$OUT`` or ./out) after
every run, so a stopped run keeps what finished; ``--time-limit`` skips runs that would not fit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from benchlib.lm_eval_model import prepare_checkpoint  # noqa: E402
from benchlib.lm_eval_report import markdown, summary_rows  # noqa: E402
from benchlib.lm_eval_runs import (  # noqa: E402
    RequestTimer, build_lm, checks, compare, quiet, release, run_task, task_folder_manager)
from benchlib.lm_eval_tasks import TASKS, request_lengths, task_texts, write_tasks  # noqa: E402
from benchlib.runner import env_info, write_json  # noqa: E402

import warppack  # noqa: E402
import warppack.harness  # noqa: E402,F401  (registers --model warppack)

STARTED = time.perf_counter()  # --time-limit counts from here (imports included)
REFERENCE = "hf batch_size=auto"
EXACT_TOLERANCE, EXACT_ROLLING_REL = 1e-4, 1e-5


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true",
                   help="CPU, fp32, a tiny random model and tiny tasks (ignores --model-dir and --gguf)")
    p.add_argument("--model-dir", default=".carry/smollm2_tok", help="folder with config.json and a tokenizer")
    p.add_argument("--gguf", default=None, help="a GGUF file with trained weights (instead of --model-dir)")
    p.add_argument("--scale", type=float, default=None, help="documents per task x this (default 1; smoke 0.01)")
    p.add_argument("--max-length", type=int, default=None, help="max_length of both backends (2048; smoke 64)")
    p.add_argument("--hf-batch-sizes", default=None, help="fixed hf batch sizes (64,32,128,16; smoke 4,16)")
    p.add_argument("--max-tokens", type=int, default=None, help="warppack's fixed budget (65536; smoke 512)")
    p.add_argument("--no-auto", action="store_true", help="skip warppack max_tokens=auto")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of the generated tasks")
    p.add_argument("--exact-limit", type=int, default=64, help="documents per task in the fp32 phase (0: skip)")
    p.add_argument("--time-limit", type=float, default=400, help="seconds for the whole run (runs that would "
                   "not fit are skipped and reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.environ.get("OUT", "./out"))
    args = p.parse_args(argv)
    args.scale = args.scale if args.scale is not None else 0.01 if args.smoke else 1.0
    args.max_length = args.max_length or (64 if args.smoke else 2048)
    sizes = args.hf_batch_sizes or ("4,16" if args.smoke else "64,32,128,16")
    if not all(b.strip().isdigit() and int(b) > 0 for b in sizes.split(",")):
        p.error(f"--hf-batch-sizes {sizes!r}: pass positive integers separated by commas, such as 64,32,128,16")
    args.hf_batch_sizes = [int(b) for b in sizes.split(",")]
    args.max_tokens = args.max_tokens or (512 if args.smoke else 65536)
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        p.error(f"--tasks {','.join(unknown)}: unknown; choose from {','.join(TASKS)}")
    return args


class Bench:
    """The results so far, the deadline, and the output files (rewritten after every run)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = STARTED
        self.deadline = self.start + args.time_limit
        self.runs: Dict[str, Dict[str, dict]] = {task: {} for task in args.tasks}  # task -> label -> run
        self.results: Dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}, "env": env_info(device),
                                        "settings": {}, "tasks": {}, "exact": {}, "skipped": []}

    def log(self, message: str) -> None:
        print(f"[gpu_lm_eval {time.perf_counter() - self.start:6.1f}s] {message}", flush=True)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        for task, runs in self.runs.items():
            entry = self.results["tasks"].setdefault(task, {})
            entry["runs"] = {label: {k: v for k, v in run.items() if k != "responses"} for label, run in runs.items()}
            entry["summary"] = summary_rows(runs, REFERENCE)
        write_json(self.out / "gpu_lm_eval.json", self.results)
        (self.out / "gpu_lm_eval.md").write_text(markdown(self.results))

    def estimate(self, task: str, label: str) -> float:
        """Seconds a run will take, from what ran on this task (hf auto and the smaller hf batches scale up)."""
        done = [r["wall_s"] for r in self.runs[task].values() if "wall_s" in r]
        if not done:
            return 5.0 if self.args.smoke else 30.0
        if label.startswith("hf batch_size=") and label[-1].isdigit():
            return max(done) * max(1.0, 64 / int(label.split("=")[1]))
        return max(done)


def settings(args: argparse.Namespace, device: torch.device) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(label, model name, extra arguments) in run order: the headline comparison first."""
    fixed = {"max_tokens": args.max_tokens, "batch_size": "auto"}
    out = [(REFERENCE, "hf", {"batch_size": "auto"}), (f"warppack max_tokens={args.max_tokens}", "warppack", fixed)]
    if not args.no_auto and device.type == "cuda":
        out.append(("warppack max_tokens=auto", "warppack", {"max_tokens": "auto", "batch_size": "auto"}))
    out += [(f"hf batch_size={b}", "hf", {"batch_size": b}) for b in args.hf_batch_sizes]
    return out


def timing_phase(bench: Bench, model_args: str, manager: Any) -> None:
    """Every setting (built once, warmed up) on every task, while the time limit allows."""
    args, device = bench.args, bench.device
    for label, name, extra in settings(args, device):
        if bench.left() < (15 if args.smoke else 45):
            bench.results["skipped"].append(f"{label}: all tasks ({bench.left():.0f}s left)")
            continue
        bench.log(f"building {label}")
        try:
            lm, seconds = build_lm(name, model_args, extra, device)
            timer = RequestTimer(lm, device)
            run_task(lm, timer, args.tasks[0], manager, limit=8)  # warm-up: kernels, allocator, lm-eval caches
        except Exception as error:  # noqa: BLE001 - one setting failing must not lose the others
            traceback.print_exc()
            bench.results["settings"][label] = {"error": f"{type(error).__name__}: {str(error)[:400]}"}
            release(device)
            continue
        info: Dict[str, Any] = {"build_s": round(seconds, 2), "model_args": model_args, **extra}
        if name == "warppack":
            info["max_tokens_resolved"] = int(lm.max_tokens)
        bench.results["settings"][label] = info
        for task in args.tasks:
            need = bench.estimate(task, label)
            if bench.left() - need < (0 if args.exact_limit == 0 else 5 if args.smoke else 35):
                bench.results["skipped"].append(f"{label}: {task} (needs ~{need:.0f}s, {bench.left():.0f}s left)")
                continue
            run = timed_run(bench, lm, timer, task, manager)
            if name == "warppack" and "error" not in run:
                run["attention"] = warppack.attention_backend()  # the kernel warppack's attention ran last
            if name == "hf" and extra["batch_size"] == "auto" and getattr(lm, "batch_sizes", None):
                run["detected_batch_sizes"] = dict(lm.batch_sizes)
            reference = bench.runs[task].get(REFERENCE)
            if reference is not None and "error" not in run and label != REFERENCE:
                run["vs_hf_auto"] = compare(run, reference)
            bench.runs[task][label] = run
            bench.log(f"  {task}: " + (run.get("error") or f"{run['request_s']:.2f}s in requests "
                                       f"({run['requests_per_s']} requests/s), {run['wall_s']:.2f}s wall"))
            bench.save()
        del lm, timer
        release(device)


def timed_run(bench: Bench, lm: Any, timer: RequestTimer, task: str, manager: Any) -> Dict[str, Any]:
    """One task, with the device's peak memory; an error (an OOM at a large batch size) is a result."""
    device = bench.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run = run_task(lm, timer, task, manager)
    except Exception as error:  # noqa: BLE001 - the other tasks and settings still run
        traceback.print_exc()
        release(device)
        return {"error": f"{type(error).__name__}: {str(error)[:400]}"}
    if device.type == "cuda":
        run["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return run


def exact_phase(bench: Bench, model_args: str, manager: Any) -> None:
    """fp32: warppack vs hf on the first ``--exact-limit`` documents of every task."""
    args, device = bench.args, bench.device
    if args.exact_limit <= 0 or bench.left() < (3 if args.smoke else 25):
        bench.results["skipped"].append(f"exactness phase ({bench.left():.0f}s left)")
        return
    fp32 = model_args.replace("dtype=bfloat16", "dtype=float32")
    batch = min(args.hf_batch_sizes)
    bench.results["exact_settings"] = {"dtype": "float32", "documents_per_task": args.exact_limit,
                                       "hf_batch_size": batch, "warppack_max_tokens": args.max_tokens,
                                       "tolerance": EXACT_TOLERANCE, "rolling_rel_tolerance": EXACT_ROLLING_REL}
    found: Dict[str, Dict[str, dict]] = {task: {} for task in args.tasks}
    bench.log("exactness phase (fp32)")
    try:
        for label, extra in (("hf", {"batch_size": batch}),
                             ("warppack", {"batch_size": batch, "max_tokens": args.max_tokens})):
            lm, _ = build_lm(label, fp32, extra, device)
            timer = RequestTimer(lm, device)
            for task in args.tasks:
                found[task][label] = run_task(lm, timer, task, manager, limit=args.exact_limit)
            del lm, timer
            release(device)
    except Exception as error:  # noqa: BLE001 - the timing results above must still be written
        traceback.print_exc()
        bench.results["exact_error"] = f"{type(error).__name__}: {str(error)[:400]}"
        release(device)
    for task, pair in found.items():
        if len(pair) < 2:
            bench.results["exact"][task] = {"result": "FAIL: not run (" + bench.results.get("exact_error", "") + ")"}
            continue
        diff = compare(pair["warppack"], pair["hf"])
        failed = checks(diff, tolerance=EXACT_TOLERANCE, rolling_rel=EXACT_ROLLING_REL)
        bench.results["exact"][task] = {**diff, "result": "FAIL: " + "; ".join(failed) if failed else "PASS"}
        bench.log(f"  exact {task}: {bench.results['exact'][task]['result']} {diff}")
    bench.save()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on the GPU machine, or pass --smoke for the CPU check")
    import lm_eval

    quiet()
    if args.smoke:
        torch.set_num_threads(1)  # the tiny model gains nothing from threads that a shared CPU makes noisy
    bench = Bench(args, device)
    bench.results["env"]["lm_eval"] = lm_eval.__version__
    work = Path(tempfile.mkdtemp(prefix="gpu_lm_eval_"))
    try:
        measure(bench, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the checkpoint is ~0.5 GB
    print((bench.out / "gpu_lm_eval.md").read_text(), flush=True)
    failed = [t for t, e in bench.results["exact"].items() if not e["result"].startswith("PASS")]
    return 1 if failed else 0


def measure(bench: Bench, work: Path) -> None:
    """Tasks and checkpoint under ``work``, then the timing and exactness phases."""
    args, device = bench.args, bench.device
    tasks_dir, checkpoint = work / "tasks", work / "checkpoint"
    bench.results["task_info"] = write_tasks(tasks_dir, scale=args.scale, max_words=40 if args.smoke else 1500)
    bench.log(f"writing the checkpoint into {checkpoint}")
    if args.smoke:
        source: Dict[str, Any] = {"smoke_texts": task_texts(tasks_dir)}
    else:
        source = {"gguf": Path(args.gguf)} if args.gguf else {"model_dir": Path(args.model_dir)}
    bench.results["model"] = prepare_checkpoint(checkpoint, seed=args.seed, **source)
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    for task in args.tasks:
        bench.results["task_info"][task]["requests_tokens"] = request_lengths(
            tasks_dir, task, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
    dtype = "float32" if args.smoke else "bfloat16"
    model_args = f"pretrained={checkpoint},dtype={dtype},max_length={args.max_length}"
    bench.results["command"] = ("python -m warppack.harness run --model {hf|warppack} --model_args "
                                f"{model_args}[,max_tokens=N|auto] --device {device} --batch_size {{B|auto}} "
                                f"--include_path <tasks> --tasks {','.join(args.tasks)}")
    manager = task_folder_manager(tasks_dir)
    bench.save()
    timing_phase(bench, model_args, manager)
    exact_phase(bench, model_args, manager)
    bench.results["seconds"] = round(time.perf_counter() - bench.start, 1)
    bench.save()


if __name__ == "__main__":
    sys.exit(main())
