"""Running and timing steps: logging, results files, OOM-safe probes and timed windows.

Window boundaries are CUDA events on the compute stream, so nothing inside a window waits for the
GPU: the host runs ahead, and a slow input pipeline shows up as GPU idle time inside the window.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

import warppack
from warppack.memory.device import is_oom_error

from .peers import package_version


class Log:
    """print() that also appends to ``bench_log.txt`` in the output folder (kept if the run is killed)."""

    def __init__(self, out_dir: Path, name: str = "bench_log.txt") -> None:
        self.path = Path(out_dir) / name
        self.t0 = time.perf_counter()

    def __call__(self, *parts: Any) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON through a temporary file (a reader never sees half a file)."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    return repr(o)


def env_info(device: torch.device) -> dict:
    """Versions, machine and GPU, for the results' header."""
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "warppack": warppack.__version__,
        "device": str(device),
    }
    for pkg in ("transformers", "accelerate", "trl", "datasets", "pyarrow", "numpy", "flash-attn"):
        info[pkg] = package_version(pkg)
    info["gpu"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 2)
        info["gpu_sms"] = props.multi_processor_count
        try:
            info["nvidia_driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, warppack.PackedBatch):
        return batch.to(device, non_blocking=True)
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train_step(model: Any, opt: torch.optim.Optimizer, inputs: Any) -> torch.Tensor:
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.detach()


def free_memory(device: Optional[torch.device]) -> None:
    """Collect garbage and return cached blocks to the device (no-op off CUDA)."""
    if device is not None and device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def peak_of(fn: Callable[[], Any], device: torch.device,
            on_oom: Optional[Callable[[], None]] = None) -> Tuple[bool, int, float]:
    """Run fn once; (ok, peak allocated bytes, seconds). An out-of-memory error gives ok=False."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    ok = True
    try:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001
        if not is_oom_error(error):
            raise
        ok = False
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if not ok:  # the traceback (and the tensors its frames held) is gone once we are out of `except`
        if on_oom is not None:
            on_oom()
        free_memory(device)
    return ok, int(peak), seconds


def reset_attention_record() -> None:
    """Forget the last kernel warppack's attention ran, so ``attention_backend()`` names the next one."""
    warppack.set_attention_backend(warppack.attention.dispatch.forced_attention_backend())


class Timer:
    """Window boundaries: CUDA events on the compute stream (no sync), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: List[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> List[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def sample_positions(num_batches: int, count: int, seed: int, exclude: Sequence[int] = ()) -> List[int]:
    """``count`` batch positions drawn uniformly without replacement (with replacement if too few)."""
    pool = np.setdiff1d(np.arange(num_batches), np.asarray(list(exclude), dtype=np.int64))
    if len(pool) == 0:
        pool = np.arange(num_batches)
    rng = np.random.default_rng(seed)
    return rng.choice(pool, size=count, replace=count > len(pool)).tolist()


def loader_for(arm: Any, batches: List[List[int]], size: int, *, device: Optional[torch.device] = None
               ) -> torch.utils.data.DataLoader:
    pin = bool(arm.pin_memory and device is not None and device.type == "cuda")
    return torch.utils.data.DataLoader(arm.dataset, batch_sampler=batches, collate_fn=arm.collate_for(size),
                                       pin_memory=pin)


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64))) if len(xs) else float("nan")


def fmt(x: Any, spec: str = ",.0f") -> str:
    """``x`` formatted, '' for None or a non-finite number."""
    try:
        if x is None or not math.isfinite(x):
            return ""
    except TypeError:
        return str(x)
    return format(x, spec)


def timed_windows(device: torch.device, arm: Any, size: int, batches: List[List[int]], step_fn: Callable,
                  *, warmup: int, windows: int, per: int, prestage: bool = False) -> dict:
    """Run ``warmup`` steps, then ``windows`` windows of ``per`` steps over ``batches`` (in order).

    With ``prestage`` every batch is collated and copied to the device before the clock starts.
    Returns per-window real/slot tokens, seconds and host time spent getting the next batch.
    """
    if len(batches) < warmup + windows * per:
        raise ValueError(f"{len(batches)} batches for {warmup} warm-up + {windows} x {per} timed steps")
    if prestage:
        collate = arm.collate_for(size)
        source = iter([to_device(collate([arm.dataset[i] for i in b]), device) for b in batches])
    else:
        source = iter(loader_for(arm, batches, size, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    acc = torch.zeros((), device=device, dtype=torch.float32)
    out: dict = dict(windows=[], oom_timed=0, bad_windows=[])
    step = 0
    for w in range(-1, windows):
        count = warmup if w < 0 else per
        real = slot = 0
        data_s = 0.0
        if w >= 0:
            timer.mark()
        for _ in range(count):
            b = batches[step]
            step += 1
            t = time.perf_counter()
            inputs = next(source)
            if not prestage:
                inputs = to_device(inputs, device)
            data_s += time.perf_counter() - t
            try:
                acc += step_fn(inputs).float()
            except Exception as error:  # noqa: BLE001
                if not is_oom_error(error):
                    raise
                out["oom_timed"] += 1
                out["bad_windows"].append(w)
            del inputs
            real += arm.real(b)
            slot += arm.slot(b)
        if w >= 0:
            out["windows"].append(dict(real_tokens=real, slot_tokens=slot, data_host_s=data_s, steps=count))
    timer.mark()
    secs = timer.seconds()
    for d, s in zip(out["windows"], secs):
        d["seconds"] = s
        d["real_tokens_per_s"] = d["real_tokens"] / s if s > 0 else float("nan")
    good = [d for i, d in enumerate(out["windows"]) if i not in out["bad_windows"]]
    tps = [d["real_tokens_per_s"] for d in good]
    win = out["windows"]
    out.update(
        steps_per_window=per,
        real_tokens_per_s=median(tps),
        real_tokens_per_s_min=float(min(tps)) if tps else float("nan"),
        real_tokens_per_s_max=float(max(tps)) if tps else float("nan"),
        slot_tokens_per_s=median([d["slot_tokens"] / d["seconds"] for d in good if d["seconds"] > 0]),
        padding_fraction_timed=1 - sum(d["real_tokens"] for d in win) / max(1, sum(d["slot_tokens"] for d in win)),
        data_host_share=sum(d["data_host_s"] for d in win) / max(1e-9, sum(secs)),
        peak_gib_timed=(torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
        peak_reserved_gib=(torch.cuda.max_memory_reserved(device) / 2**30) if device.type == "cuda" else None,
        value_mean=float(acc.item()) / max(1, step),
    )
    del source
    if out["oom_timed"]:
        free_memory(device)
    return out
