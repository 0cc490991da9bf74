"""The calibration benchmark's adversarial length streams, and the memory its CPU smoke mode simulates."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

import warppack
from warppack.memory.device import DeviceMemory


def adversarial_batches(budget: int, max_seq_len: int, batches: int, *, seed: int = 0) -> Dict[str, List[List[int]]]:
    """The adversarial length streams packed at ``budget``: ``{name: [lengths of each batch]}``.

    ``all_max_seq_len`` (whole long sequences: bins hold fewer tokens than the budget), ``all_tiny``
    (1-32 tokens: bins full to the budget) and ``bimodal`` (half long, half tiny, shuffled), each
    packed by ``warppack.plan`` and cut to its first ``batches`` bins; run in this order, the token
    total grows from the first stream to the second -- the transition that fragments the allocator.
    """
    rng = np.random.default_rng(seed)
    tokens = budget * batches
    tiny = rng.integers(1, 33, size=tokens // 8 + 8)
    tiny = tiny[: np.searchsorted(np.cumsum(tiny), tokens) + 1]
    long = rng.integers(max(1, max_seq_len // 2), max_seq_len + 1, size=tokens // max(1, max_seq_len // 2) + 2)
    short = rng.integers(1, 33, size=len(long) * max_seq_len // 32 + 2)
    bimodal = rng.permutation(np.concatenate([long[: len(long) // 2], short[: len(short) // 2]]))
    streams = {"all_max_seq_len": np.full(max(1, tokens // max_seq_len), max_seq_len), "all_tiny": tiny,
               "bimodal": bimodal}
    packed = {}
    for name, lengths in streams.items():
        lengths = np.minimum(lengths.astype(np.int64), max(1, min(max_seq_len, budget)))
        plan = warppack.plan(lengths, budget, shuffle=True, seed=1)
        packed[name] = [lengths[b].tolist() for b in list(plan.bins)[:batches]]
    return packed


#: token counts of the CPython standard library's files under the SmolLM2 tokenizer (1,790 files)
REAL_LENGTHS = Path(__file__).resolve().parents[1] / "data" / "cpython_stdlib_smollm2_lengths.npy"


def training_streams(budget: int, max_seq_len: int, batches: int, *, seed: int = 0) -> Dict[str, List[List[int]]]:
    """The adversarial streams, then an SFT-like lognormal mix and the real length distribution.

    Run back to back from a clean state, they are the compositions a training run meets in any
    order: a budget "fits" when all of them run without running out of memory.
    """
    streams = adversarial_batches(budget, max_seq_len, batches, seed=seed)
    rng = np.random.default_rng(seed + 1)
    lognormal = np.clip(rng.lognormal(6.0, 1.0, size=4 * batches * budget // 300 + 8), 16, max_seq_len)
    real = np.load(REAL_LENGTHS)
    real = rng.permutation(real[real > 0])  # empty files have no tokens to train on
    real = np.tile(real, 1 + batches * budget // max(1, int(np.minimum(real, max_seq_len).sum())))
    for name, lengths in (("lognormal", lognormal), ("real", real)):
        lengths = np.minimum(lengths.astype(np.int64), max(1, min(max_seq_len, budget)))
        plan = warppack.plan(lengths, budget, shuffle=True, seed=1)
        streams[name] = [lengths[b].tolist() for b in list(plan.bins)[:batches]]
    return streams


class SimulatedMemory(DeviceMemory):
    """A GPU's memory as a formula, for running the calibration benchmark on CPU (``--smoke``).

    A forward over segments of lengths ``l`` needs ``static + per_token * sum(l) + per_square *
    sum(l**2)`` bytes; above the limit (the device, or a cap) it raises ``torch.OutOfMemoryError``.
    """

    name = "simulated-gpu"

    def __init__(self, *, total_bytes: float, static_bytes: float, per_token: float, per_square: float) -> None:
        self.total_bytes = int(total_bytes)
        self.static, self.per_token, self.per_square = float(static_bytes), float(per_token), float(per_square)
        self.limit = float(total_bytes)
        self._peak = self.static

    def need(self, lengths: List[int]) -> float:
        return self.static + self.per_token * sum(lengths) + self.per_square * sum(n * n for n in lengths)

    def reset_peak(self) -> None:
        self._peak = self.static

    def peak_bytes(self) -> int:
        return int(self._peak)

    def release(self) -> None:
        pass

    def cap(self, max_bytes: int) -> None:
        self.limit = min(float(max_bytes), float(self.total_bytes))

    def uncap(self) -> None:
        self.limit = float(self.total_bytes)

    def attach(self, model: torch.nn.Module) -> None:
        """Account (and fail, above the limit) every forward of ``model``."""

        def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if "cu_seq_lens_q" in kwargs:
                cu = kwargs["cu_seq_lens_q"].tolist()
                lengths = [b - a for a, b in zip(cu, cu[1:]) if b > a]
            else:  # an ordinary [batch, length] forward
                rows, length = kwargs["input_ids"].shape
                lengths = [length] * rows
            need = self.need(lengths)
            if need > self.limit:
                # worded like the CUDA allocator's message, which accelerate's batch-size search matches
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {need - self.limit:.0f} bytes "
                                             f"over the limit of {self.limit:.0f} (simulated)")
            self._peak = max(self._peak, need)

        model.register_forward_pre_hook(pre, with_kwargs=True)
