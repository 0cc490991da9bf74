"""``calibrate_token_budget``: the largest token budget whose training step fits, measured on the device.

A candidate budget ``B`` is tried with real training steps (forward, backward, optimizer step) on
the pessimistic packed batches of :func:`~warppack.memory.search.probe_schedule`, in an order
whose token totals change from step to step, starting each probe from the optimizer state the run
will start from and an emptied allocator cache -- so the caching allocator fragments during the
probe as it will during training. ``B`` *fits* when nothing runs out of memory and the peak
*reserved* memory (plus what is held outside PyTorch: CUDA context, NCCL) stays at or under
``(1 - headroom)`` of the device; the peak *allocated* is recorded too (the difference is
fragmentation). The search (:func:`search_budget`) interpolates the measured peaks and brackets
the answer until the gap is at most ``tolerance``. Every rank takes the same branch (each
measurement is MAX-reduced over ranks), so all ranks return one budget. Model, optimizer,
gradients and RNG are restored exactly afterwards (:class:`~warppack.memory.device.TrainingSnapshot`, a
copy in host memory) and the allocator cache is emptied, so training starts as a fresh process would.

>>> import warppack                                    # doctest: +SKIP
>>> max_tokens = warppack.calibrate_token_budget(model, optimizer=optimizer, max_seq_len=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch

from warppack.batch.collator import PackedCollator
from warppack.engine.options import check_flag, check_fraction, check_int, check_int32_count
from warppack.memory.arguments import LossFn, check_objects, same_arguments
from warppack.memory.cache import CacheDir, calibration_key, load_budget, store_budget
from warppack.memory.device import (
    CudaMemory,
    DeviceMemory,
    TrainingSnapshot,
    all_ranks_max,
    device_memory,
    expandable_segments,
    format_bytes,
    gathers_parameters,
    is_oom_error,
    world_size,
)
from warppack.memory.search import INT32_LIMIT as _INT32_LIMIT
from warppack.memory.search import (
    next_budget,
    pessimistic_lengths,
    probe_schedule,
    search_budget,
)
from warppack.memory.step import TrainStep as _TrainStep
from warppack.memory.step import default_loss, unwrap_ddp
from warppack.memory.step import make_batch as _batch
from warppack.memory.step import vocab_size as _vocab_size
from warppack.progress import Progress

__all__ = ["CalibrationReport", "calibrate", "calibrate_token_budget", "default_loss", "next_budget",
           "pessimistic_lengths", "probe_schedule", "search_budget", "unwrap_ddp"]

logger = logging.getLogger("warppack")
# In the cache key: entries of an older probe design measured less.
_PROBE_KIND = "fresh-optimizer-state, varying-totals, reserved-peak, static-longest-padding"


@dataclass
class CalibrationReport:
    max_tokens: int
    probes: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    device: str = ""
    total_bytes: int = 0
    target_bytes: int = 0
    expandable_segments: bool = False


def calibrate(model: torch.nn.Module, *, max_seq_len: int, accelerator: Any = None, optimizer: Any = None,
              collator: Optional[PackedCollator] = None, headroom: float = 0.08, tolerance: float = 0.05,
              short_len: int = 16, upper_bound: Optional[int] = None, reserve_bytes: int = 0,
              loss_fn: Optional[LossFn] = None, gradient_accumulation_steps: Optional[int] = None,
              enforce_headroom: bool = False, cache: bool = True, cache_dir: CacheDir = None,
              progress: Optional[bool] = None, memory: Optional[DeviceMemory] = None) -> CalibrationReport:
    """:func:`calibrate_token_budget` returning the whole :class:`CalibrationReport` (probes, time).

    The one signature of both: :func:`calibrate_token_budget` takes exactly these arguments.
    """
    check_objects(model=model, optimizer=optimizer, collator=collator, loss_fn=loss_fn, cache_dir=cache_dir,
                   memory=memory)
    max_seq_len = check_int32_count(max_seq_len, name="max_seq_len")
    short_len = check_int32_count(short_len, name="short_len")
    headroom = check_fraction(headroom, name="headroom", example="headroom=0.08 (leave 8% of device memory free)")
    tolerance = check_fraction(tolerance, name="tolerance", example="tolerance=0.05 (search to a 5% gap)")
    # A negative reserve would silently add memory on top of the headroom.
    reserve_bytes = check_int(reserve_bytes, name="reserve_bytes", minimum=0)
    enforce_headroom = check_flag(enforce_headroom, name="enforce_headroom")
    cache = check_flag(cache, name="cache")
    if progress is not None:
        progress = check_flag(progress, name="progress")
    if gradient_accumulation_steps is not None:
        gradient_accumulation_steps = check_int(gradient_accumulation_steps, name="gradient_accumulation_steps",
                                                minimum=1)
    upper = check_int32_count(upper_bound, name="upper_bound") if upper_bound is not None else _INT32_LIMIT
    if optimizer is None and accelerator is not None and getattr(accelerator, "_optimizers", None):
        optimizer = accelerator._optimizers[0]
    if gradient_accumulation_steps is None:
        gradient_accumulation_steps = getattr(accelerator, "gradient_accumulation_steps", 1) or 1
    params = [p for p in unwrap_ddp(model).parameters()]
    if not params:
        raise ValueError(f"model ({type(model).__name__}) has no parameters: calibration measures its training "
                         f"steps; pass the model you will train")
    memory = memory or device_memory(params[0].device)
    granularity = (collator.pad_to_multiple_of if collator is not None else None) or 1
    start = -(-max_seq_len // granularity) * granularity
    upper = max(upper // granularity * granularity, start)
    target = (1 - headroom) * memory.total_bytes - reserve_bytes
    if target <= 0:
        raise ValueError(f"reserve_bytes={reserve_bytes} leaves no memory to train in on {memory.name} "
                         f"({format_bytes(memory.total_bytes)}, headroom={headroom}); lower reserve_bytes")
    static_shape = bool(collator is not None and collator.static_shape)
    max_sequences: Optional[int] = getattr(collator, "max_sequences", None)
    settings = {"max_seq_len": max_seq_len, "headroom": headroom, "tolerance": tolerance, "short_len": short_len,
                "upper_bound": upper, "reserve_bytes": reserve_bytes, "granularity": granularity,
                "static_shape": static_shape, "max_sequences": max_sequences,
                "gradient_accumulation": gradient_accumulation_steps > 1,
                "enforce_headroom": enforce_headroom,
                "loss_fn": None if loss_fn is None else getattr(loss_fn, "__qualname__", repr(loss_fn)),
                "probe": _PROBE_KIND}
    ranks = getattr(accelerator, "num_processes", None) or world_size()
    key = calibration_key(unwrap_ddp(model), optimizer=optimizer, device=memory.describe(), world_size=ranks,
                          mixed_precision=getattr(accelerator, "mixed_precision", None), settings=settings)
    report = CalibrationReport(0, device=memory.name, total_bytes=memory.total_bytes, target_bytes=int(target))
    if enforce_headroom:  # before the cache lookup: a cached budget was measured under this cap too
        if ranks > 1 and gathers_parameters(model):
            raise ValueError(
                "enforce_headroom=True turns every failed probe into an out-of-memory error, and under FSDP or "
                "DeepSpeed one rank failing part-way through a forward leaves the others in an all-gather; "
                "calibrate this model with enforce_headroom=False")
        # The line itself, not target: reserve_bytes is room for what is allocated later (DDP's
        # gradient buckets), which must still fit under the cap.
        memory.cap(int((1 - headroom) * memory.total_bytes))
    if cache:
        # Every rank looks in its own cache (nodes may not share a disk); use it only if all found it.
        found = load_budget(key, cache_dir, minimum=start, maximum=upper, multiple=granularity)
        missing, neg_budget = all_ranks_max([found is None, -(found or 0)])
        if not missing:
            logger.info("warppack: token budget %d from the calibration cache (%s)", -int(neg_budget), memory.name)
            report.max_tokens, report.cached = -int(neg_budget), True
            return report

    step = _TrainStep(model, optimizer, accelerator, loss_fn, gradient_accumulation_steps > 1)
    vocab, device = _vocab_size(unwrap_ddp(model)), params[0].device
    report.expandable_segments = isinstance(memory, CudaMemory) and expandable_segments()
    if isinstance(memory, CudaMemory) and not report.expandable_segments:
        logger.info("warppack: PYTORCH_CUDA_ALLOC_CONF has no expandable_segments:True; the budget leaves room for "
                    "the caching allocator's fragmentation. Setting it (before CUDA starts) usually lets a larger "
                    "budget fit; recalibrate after changing it (see docs/calibration.md)")
    measured: List[dict] = []  # this rank's own peaks, per probe

    def probe(budget: int):
        # Start where a training run starts: the optimizer state it was given (created afresh at the
        # first step, carved out of whatever the allocator has cached then), no gradients, no cache.
        snapshot.restore_optimizer()
        step.clear_grads()
        memory.reset_peak()
        error, began_probe = None, time.perf_counter()
        for lengths in probe_schedule(budget, max_seq_len, short_len=short_len,
                                      max_sequences=max_sequences, static_shape=static_shape):
            try:
                step(_batch(lengths, budget, collator, vocab, device))
            except Exception as exc:  # noqa: BLE001 - only OOM is swallowed, below
                if not is_oom_error(exc):
                    raise
                error = str(exc).strip().splitlines()[0][:300]
            if error is not None:  # outside the except block: its traceback holds the activations
                step.clear_grads()
                memory.release()
            if all_ranks_max([error is not None])[0]:
                break  # some rank failed: all stop here, in lockstep
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the probe's queued kernels belong to its own time
        peak, allocated = memory.peak_bytes(), memory.peak_allocated_bytes()
        measured.append({"peak_bytes": peak, "peak_allocated_bytes": allocated,
                         "fragmentation_bytes": max(0, peak - allocated),
                         "seconds": time.perf_counter() - began_probe})
        # The headroom bounds the *reserved* peak: cached blocks too small for the next batch are
        # not free memory. Ranks may differ in memory: agree on the worst fraction of usable memory,
        # so every rank sees the same numbers and takes the same branch of the search.
        # Under the cap the allocator frees cached blocks before it grows past the line, so what
        # must fit is what the tensors hold (the reserved peak is at the cap by construction).
        failed, load = all_ranks_max([error is not None, (allocated if enforce_headroom else peak) / target])
        fits = not failed and load <= 1.0
        return fits, (None if failed else load), error or ("(another rank ran out of memory)" if failed else None)

    began = time.perf_counter()
    with TrainingSnapshot(model, optimizer) as snapshot, Progress(desc="warppack: calibrating token budget",
                                                                   unit="probe", enabled=progress) as bar:
        model.train()
        # One small step first: creates lazy buffers (and checks that weights + optimizer state fit).
        warmup = min(short_len, max_seq_len)
        error = None
        try:
            step(_batch([warmup], start, collator, vocab, device))
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, below
            if not is_oom_error(exc):
                raise
            error = str(exc).strip().splitlines()[0][:300]
        if all_ranks_max([error is not None])[0]:  # every rank raises, none is left waiting
            raise RuntimeError(
                f"calibrate_token_budget: a training step on {warmup} tokens already runs out of memory on "
                f"{memory.name} ({error or 'on another rank'}): the weights, gradients and optimizer state "
                f"alone do not fit. Use a lighter optimizer, lower precision, or shard the model")

        def on_probe(entry: dict) -> None:
            bar.update(1)
            bar.set_description(f"warppack: calibrating, {entry['budget']} tokens "
                                f"{'fit' if entry['fits'] else 'too big'}")

        # How far under the predicted crossing the last probes aim. Static shapes: every step
        # allocates the same tensors, so a probe's peak is the run's and only page rounding is left.
        # Changing shapes fragment differently from run to run: keep 1% (at the default tolerance).
        margin = tolerance / 20 if static_shape else tolerance / 5
        budget, history = search_budget(probe, start=start, target=1.0, tolerance=tolerance, margin=margin,
                                        granularity=granularity, upper=upper, on_probe=on_probe)
    memory.release()  # the probes' cached blocks: training starts from the allocator state a fresh process has
    for entry, peaks in zip(history, measured):
        entry.update(peaks)  # this rank's own peaks (``load`` is the worst rank's fraction of usable)
    report.probes, report.seconds = history, time.perf_counter() - began
    if budget is None:
        first = history[0]
        needed = (f"needed {format_bytes(first['peak_bytes'])}" if first["error"] is None
                  else f"ran out of memory ({first['error']})")
        raise RuntimeError(
            f"calibrate_token_budget: {type(unwrap_ddp(model)).__name__} does not fit one max_seq_len={max_seq_len} "
            f"sequence on {memory.name}: a training step on {start} tokens {needed}, more than the "
            f"{format_bytes(target)} usable of {format_bytes(memory.total_bytes)} with headroom={headroom}"
            f"{f' and reserve_bytes={reserve_bytes}' if reserve_bytes else ''}. Lower max_seq_len, enable "
            f"activation checkpointing (model.activation_checkpointing_enable(), gradient_checkpointing_enable() "
            f"in older transformers), use a lighter optimizer, or "
            f"lower headroom")
    (neg_budget,) = all_ranks_max([-budget])  # identical by construction; MIN makes it a guarantee
    report.max_tokens = -int(neg_budget)
    if cache:
        store_budget(key, report.max_tokens, cache_dir, probes=history, seconds=report.seconds)
    logger.info("warppack: calibrated token budget %d on %s in %.1fs (%d probes; peak reserved <= %s of %s)",
                report.max_tokens, memory.name, report.seconds, len(history), format_bytes(target),
                format_bytes(memory.total_bytes))
    return report


@same_arguments(calibrate)
def calibrate_token_budget(model: torch.nn.Module, **arguments: Any) -> int:
    """Measure the largest token budget (``max_tokens``) whose training step fits on this device.

    Runs real training steps of ``model`` (with ``optimizer``, so its state exists; taken from
    ``accelerator`` when not given) on pessimistic packed batches, leaves ``headroom`` of device
    memory free (and ``reserve_bytes`` more, for what is allocated after calibration), rounds to
    ``collator.pad_to_multiple_of``, agrees across ranks (the minimum) and caches the answer on disk
    (``cache=False`` to re-measure; ``cache_dir`` for another folder). ``collator`` is the run's layout
    (padding, ``static_shape``, ``max_sequences``; its ``max_tokens`` is ignored): with
    ``static_shape=True`` every step allocates the same tensors, so the budget comes closer to the
    headroom line. ``enforce_headroom=True`` caps this process's allocator at the headroom line
    (``torch.cuda.set_per_process_memory_fraction``, left in place for the training that follows):
    the allocator then hands cached blocks back instead of growing past it, so the budget is chosen
    from the *allocated* peak and the reserved peak stays under the line (not for sharded models:
    FSDP/DeepSpeed cannot survive one rank's out-of-memory error mid-forward). The model, optimizer,
    gradients and RNG states are left exactly as they were.
    ``memory`` replaces the CUDA probe (simulations, other devices). See docs/calibration.md.

    The keyword-only arguments are those of :func:`calibrate` (``help()`` and ``inspect.signature``
    show them); a wrong type or value of any of them is a TypeError/ValueError naming it.

    >>> max_tokens = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=4096)  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_sampler=warppack.PackedBatchSampler(lengths, max_tokens),
    ...                     collate_fn=warppack.PackedCollator(max_tokens))               # doctest: +SKIP
    """
    return calibrate(model, **arguments).max_tokens

