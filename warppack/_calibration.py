"""``calibrate_token_budget``: the largest token budget whose training step fits, measured on the device.

A candidate budget ``B`` is tried with real training steps (forward, backward, optimizer step) on
three pessimistic packed batches (:func:`pessimistic_lengths`); it *fits* when none runs out of
memory and the peak stays under ``(1 - headroom)`` of the device. The search (:func:`search_budget`)
extrapolates/interpolates the measured peaks (memory is close to affine in ``B``) and brackets the
answer until the gap is at most ``tolerance``. Every rank takes the same branch (each measurement is
MAX-reduced over ranks), so all ranks return one budget. Model, optimizer, gradients and RNG are
restored exactly afterwards (:class:`~warppack._memory.TrainingSnapshot`, a copy in host memory).

>>> import warppack                                    # doctest: +SKIP
>>> max_tokens = warppack.calibrate_token_budget(model, optimizer=optimizer, max_seq_len=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from warppack._calibration_cache import calibration_key, load_budget, store_budget
from warppack._collator import PackedCollator
from warppack._memory import (DeviceMemory, TrainingSnapshot, all_ranks_max, device_memory, format_bytes,
                              is_oom_error, world_size)
from warppack._planning import check_max_tokens
from warppack._progress import Progress

__all__ = ["calibrate_token_budget", "pessimistic_lengths", "search_budget", "next_budget", "CalibrationReport"]

logger = logging.getLogger("warppack")
_INT32_LIMIT = 2**31 - 1


@dataclass
class CalibrationReport:
    max_tokens: int
    probes: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    device: str = ""
    total_bytes: int = 0
    target_bytes: int = 0


def pessimistic_lengths(budget: int, max_seq_len: int, *, short_len: int = 16,
                        max_sequences: Optional[int] = None) -> List[List[int]]:
    """Sequence lengths of the batches that stress a budget most, most likely to fail first.

    1. as many ``max_seq_len`` sequences as fit, the rest as one more (the largest sum of squared
       lengths: what attention costs when it is not varlen);
    2. many short sequences filling the budget (per-sequence overheads);
    3. the single longest sequence.

    >>> pessimistic_lengths(10, 4, short_len=3)
    [[4, 4, 2], [3, 3, 3, 1], [4]]
    """
    full, rest = divmod(budget, max_seq_len)
    long = [max_seq_len] * full + ([rest] if rest else [])
    short_len = min(short_len, max_seq_len)
    count, rest = divmod(budget, short_len)
    short = [short_len] * count + ([rest] if rest else [])
    if max_sequences is not None and len(short) > max_sequences:
        base, extra = divmod(budget, max_sequences)  # fewest tokens per sequence the cap allows
        short = [min(max_seq_len, base + (i < extra)) for i in range(max_sequences)]
    shapes: List[List[int]] = []
    for lengths in (long, short, [min(max_seq_len, budget)]):
        if lengths not in shapes:
            shapes.append(lengths)
    return shapes


def _linear_guess(points: Sequence[Tuple[int, float]], lo: int, target: float) -> Optional[float]:
    """Budget whose peak would be ``target`` on the line through the two measured points nearest lo."""
    below = sorted(p for p in points if p[0] <= lo)
    above = sorted(p for p in points if p[0] > lo)
    pair = (below[-1], above[0]) if below and above else tuple(below[-2:])
    if len(pair) < 2 or pair[1][0] == pair[0][0]:
        return None
    (b1, p1), (b2, p2) = pair
    slope = (p2 - p1) / (b2 - b1)
    if slope <= 0:
        return None
    return b1 + (target - p1) / slope


def next_budget(lo: int, hi: Optional[int], points: Sequence[Tuple[int, float]], *, target: float,
                tolerance: float, granularity: int = 1, upper: int = _INT32_LIMIT) -> int:
    """The next budget to try: ``lo`` fit, ``hi`` did not (None: nothing failed yet).

    ``points`` are measured ``(budget, peak_bytes)`` pairs (a budget that ran out of memory has
    none). Aims just under the linear prediction of where the peak reaches ``target``, never closer
    to ``lo`` than the tolerance and, once bracketed, never past 3/4 of the gap (so a bad
    prediction still shrinks the bracket like a bisection would).
    """
    guess = _linear_guess(points, lo, target)
    floor = lo * (1 + tolerance)  # if this fails, the bracket is within tolerance
    aim = guess * (1 - tolerance / 5) if guess is not None else None
    if hi is None:
        candidate = lo * 2.0 if aim is None else min(max(aim, floor), lo * 16.0)
    else:
        ceiling = lo + 0.75 * (hi - lo)
        candidate = math.sqrt(lo * hi) if aim is None or aim >= hi else aim
        candidate = min(max(candidate, floor), ceiling)
    candidate = min(candidate, upper)
    budget = int(candidate) // granularity * granularity
    return max(budget, lo + granularity)


def search_budget(probe: Callable[[int], Tuple[bool, Optional[float], Optional[str]]], *, start: int,
                  target: float, tolerance: float = 0.05, granularity: int = 1,
                  upper: int = _INT32_LIMIT, max_probes: int = 30,
                  on_probe: Optional[Callable[[dict], None]] = None) -> Tuple[Optional[int], List[dict]]:
    """Largest budget ``probe`` accepts, to a relative gap ``<= tolerance``; ``(None, history)`` if ``start`` fails.

    ``probe(budget) -> (fits, load or None, error or None)`` must already agree across ranks; ``load``
    (e.g. peak bytes, or a fraction of usable memory) is about affine in the budget and fits up to
    ``target``; None when the step ran out of memory.
    """
    lo: Optional[int] = None
    hi: Optional[int] = None
    points: List[Tuple[int, float]] = []
    history: List[dict] = []
    budget = start
    while True:
        fits, peak, error = probe(budget)
        history.append({"budget": budget, "fits": fits, "load": peak, "error": error})
        if on_probe is not None:
            on_probe(history[-1])
        if peak is not None:
            points.append((budget, float(peak)))
        if fits:
            lo = budget
        else:
            hi = budget
        if lo is None:
            return None, history
        done = (hi is not None and (hi <= lo * (1 + tolerance) or hi - lo <= granularity)) or lo + granularity > upper
        if done or len(history) >= max_probes:
            return lo, history
        budget = next_budget(lo, hi, points, target=target, tolerance=tolerance, granularity=granularity,
                             upper=upper)


# ---- one training step on the device ----------------------------------------------------------------
def default_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """``model(**batch).loss`` (transformers' convention); pass ``loss_fn=`` for anything else."""
    output = model(**batch)
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not torch.is_tensor(loss):
        raise TypeError(f"{type(model).__name__}(**batch) returned no 'loss'; pass loss_fn=lambda model, "
                        f"batch: ... returning the scalar training loss")
    return loss


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel: its forward runs no collective, so one rank failing
    cannot leave the others waiting (DDP broadcasts buffers in forward and reduces in backward)."""
    ddp = torch.nn.parallel.DistributedDataParallel
    return model.module if isinstance(model, ddp) else model


class _TrainStep:
    def __init__(self, model, optimizer, accelerator, loss_fn, accumulate: bool) -> None:
        self.model = unwrap_ddp(model)
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # step the inner one: no sync gating
        self.accelerator = accelerator
        self.loss_fn = loss_fn or default_loss
        self.accumulate = accumulate

    def __call__(self, batch) -> None:
        loss = self.loss_fn(self.model, batch)
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()
        del loss
        if self.optimizer is not None:
            self.optimizer.step()
        self.clear_grads()

    def clear_grads(self) -> None:
        # Under gradient accumulation the next micro-batch runs with gradients alive: keep them.
        for p in self.model.parameters():
            if self.accumulate and p.grad is not None:
                p.grad.zero_()
            else:
                p.grad = None


def _batch(lengths: Sequence[int], budget: int, collator: Optional[PackedCollator], vocab: int, device):
    c = collator or PackedCollator()
    make = PackedCollator(budget, pad_token_id=c.pad_token_id, label_pad_id=c.label_pad_id,
                          pad_to_multiple_of=c.pad_to_multiple_of, static_shape=c.static_shape,
                          max_sequences=c.max_sequences, pin_memory=False)
    low = 3 if vocab > 3 else 0  # keep clear of pad/bos/eos ids
    examples = [{"input_ids": (np.arange(n, dtype=np.int64) * 7919 + i) % (vocab - low) + low}
                for i, n in enumerate(lengths)]
    return make(examples).to(device)


def _vocab_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    embeddings = getattr(model, "get_input_embeddings", None)
    if vocab is None and callable(embeddings):
        vocab = embeddings().num_embeddings
    return int(vocab or 2)


def _check_fraction(value: Any, name: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise ValueError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}; pass e.g. {example}")
    return float(value)


def calibrate_token_budget(model: torch.nn.Module, *, max_seq_len: int, accelerator: Any = None,
                           optimizer: Any = None, collator: Optional[PackedCollator] = None,
                           headroom: float = 0.08, tolerance: float = 0.05, short_len: int = 16,
                           upper_bound: Optional[int] = None, reserve_bytes: int = 0,
                           loss_fn: Optional[Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]] = None,
                           gradient_accumulation_steps: Optional[int] = None, cache: bool = True,
                           cache_dir: Optional[str] = None, progress: Optional[bool] = None,
                           memory: Optional[DeviceMemory] = None) -> int:
    """Measure the largest token budget (``max_tokens``) whose training step fits on this device.

    Runs real training steps of ``model`` (with ``optimizer``, so its state exists; taken from
    ``accelerator`` when not given) on pessimistic packed batches, leaves ``headroom`` of device
    memory free, rounds to ``collator.pad_to_multiple_of``, agrees across ranks (the minimum) and
    caches the answer on disk (``cache=False`` to re-measure). The model, optimizer, gradients and
    RNG states are left exactly as they were. ``memory`` replaces the CUDA probe (simulations, other
    devices). See docs/calibration.md.

    >>> max_tokens = warppack.calibrate_token_budget(model, optimizer=opt, max_seq_len=4096)  # doctest: +SKIP
    >>> loader = DataLoader(ds, batch_sampler=warppack.PackedBatchSampler(lengths, max_tokens),
    ...                     collate_fn=warppack.PackedCollator(max_tokens))               # doctest: +SKIP
    """
    return calibrate(**locals()).max_tokens


def calibrate(model, *, max_seq_len, accelerator=None, optimizer=None, collator=None, headroom=0.08,
              tolerance=0.05, short_len=16, upper_bound=None, reserve_bytes=0, loss_fn=None,
              gradient_accumulation_steps=None, cache=True, cache_dir=None, progress=None,
              memory=None) -> CalibrationReport:
    """:func:`calibrate_token_budget` returning the whole :class:`CalibrationReport` (probes, time)."""
    max_seq_len = check_max_tokens(max_seq_len, name="max_seq_len")
    short_len = check_max_tokens(short_len, name="short_len")
    headroom = _check_fraction(headroom, "headroom", "headroom=0.08 (leave 8% of device memory free)")
    tolerance = _check_fraction(tolerance, "tolerance", "tolerance=0.05 (search to a 5% gap)")
    if optimizer is None and accelerator is not None and getattr(accelerator, "_optimizers", None):
        optimizer = accelerator._optimizers[0]
    if gradient_accumulation_steps is None:
        gradient_accumulation_steps = getattr(accelerator, "gradient_accumulation_steps", 1) or 1
    params = [p for p in unwrap_ddp(model).parameters()]
    if not params:
        raise ValueError("calibrate_token_budget needs a model with parameters")
    memory = memory or device_memory(params[0].device)
    granularity = (collator.pad_to_multiple_of if collator is not None else None) or 1
    start = -(-max_seq_len // granularity) * granularity
    upper = check_max_tokens(upper_bound, name="upper_bound") if upper_bound is not None else _INT32_LIMIT
    upper = max(upper // granularity * granularity, start)
    target = (1 - headroom) * memory.total_bytes - reserve_bytes
    if target <= 0:
        raise ValueError(f"reserve_bytes={reserve_bytes} leaves no memory to train in on {memory.name} "
                         f"({format_bytes(memory.total_bytes)}, headroom={headroom}); lower reserve_bytes")
    settings = {"max_seq_len": max_seq_len, "headroom": headroom, "tolerance": tolerance, "short_len": short_len,
                "upper_bound": upper, "reserve_bytes": int(reserve_bytes), "granularity": granularity,
                "static_shape": bool(collator is not None and collator.static_shape),
                "max_sequences": getattr(collator, "max_sequences", None),
                "gradient_accumulation": gradient_accumulation_steps > 1,
                "loss_fn": None if loss_fn is None else getattr(loss_fn, "__qualname__", repr(loss_fn))}
    ranks = getattr(accelerator, "num_processes", None) or world_size()
    key = calibration_key(unwrap_ddp(model), optimizer=optimizer, device=memory.describe(), world_size=ranks,
                          mixed_precision=getattr(accelerator, "mixed_precision", None), settings=settings)
    report = CalibrationReport(0, device=memory.name, total_bytes=memory.total_bytes, target_bytes=int(target))
    if cache:
        # Every rank looks in its own cache (nodes may not share a disk); use it only if all found it.
        found = load_budget(key, cache_dir)
        missing, neg_budget = all_ranks_max([found is None, -(found or 0)])
        if not missing:
            logger.info("warppack: token budget %d from the calibration cache (%s)", -int(neg_budget), memory.name)
            report.max_tokens, report.cached = -int(neg_budget), True
            return report

    step = _TrainStep(model, optimizer, accelerator, loss_fn, gradient_accumulation_steps > 1)
    vocab, device = _vocab_size(unwrap_ddp(model)), params[0].device

    def probe(budget: int):
        memory.reset_peak()
        error = None
        for lengths in pessimistic_lengths(budget, max_seq_len, short_len=short_len,
                                           max_sequences=settings["max_sequences"]):
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
        peak = memory.peak_bytes()
        peaks.append(peak)
        # Ranks may differ in memory: agree on the worst *fraction of usable memory*, so every rank
        # sees the same numbers and takes the same branch of the search.
        failed, load = all_ranks_max([error is not None, peak / target])
        fits = not failed and load <= 1.0
        return fits, (None if failed else load), error or ("(another rank ran out of memory)" if failed else None)

    peaks: List[int] = []
    began = time.perf_counter()
    with TrainingSnapshot(model, optimizer), Progress(desc="warppack: calibrating token budget", unit="probe",
                                                     enabled=progress) as bar:
        model.train()
        # One small step first: creates optimizer state and lazy buffers, so every probe sees them.
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

        budget, history = search_budget(probe, start=start, target=1.0, tolerance=tolerance,
                                        granularity=granularity, upper=upper, on_probe=on_probe)
    for entry, peak in zip(history, peaks):
        entry["peak_bytes"] = peak  # this rank's own peak (``load`` is the worst rank's fraction of usable)
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
            f"gradient checkpointing (model.gradient_checkpointing_enable()), use a lighter optimizer, or "
            f"lower headroom")
    (neg_budget,) = all_ranks_max([-budget])  # identical by construction; MIN makes it a guarantee
    report.max_tokens = -int(neg_budget)
    if cache:
        store_budget(key, report.max_tokens, cache_dir, probes=history, seconds=report.seconds)
    logger.info("warppack: calibrated token budget %d on %s in %.1fs (%d probes; peak <= %s of %s)",
                report.max_tokens, memory.name, report.seconds, len(history), format_bytes(target),
                format_bytes(memory.total_bytes))
    return report
