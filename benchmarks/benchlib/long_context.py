"""The long-context benchmark: attention forward+backward alone and whole training steps on packed
batches of sequences of 2k, 8k and 32k tokens and of mixed SFT lengths, one kernel at a time, against
the same sequences in padded batches through SDPA.

Every method sees the same sequences. Packed methods attend through ``warppack.varlen_attention`` /
``attn_implementation="warppack"`` with the kernel forced; ``padded_sdpa`` puts the sequences in
right-padded rows (``benchlib.attention.padded_groups``: rows x longest <= the budget) and runs causal
SDPA with no mask (right padding under a causal mask leaves the real tokens exact), flash or
memory-efficient kernels only. The attention level uses the model's head shapes, so the attention
share of a step is ``layers x attention time / step time``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import warppack

from .attention import padded_groups
from .data import lognormal_sft
from .models import PAD_ID, TRAIN_PRESETS, build_model, make_optimizer
from .runner import free_memory, train_step

PADDED = "padded_sdpa"


@dataclasses.dataclass
class Setup:
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    budget: int = 65536
    preset: str = "0.5b"
    lengths: Sequence[int] = (2048, 8192, 32768)
    sft_max: int = 8192
    warmup: int = 2
    repeats: int = 5
    step_repeats: int = 3

    @classmethod
    def smoke(cls) -> "Setup":
        return cls(device="cpu", dtype=torch.float32, budget=128, preset="tiny", lengths=(16, 32, 64), sft_max=64,
                   warmup=1, repeats=2, step_repeats=1)

    @property
    def arch(self) -> dict:
        return TRAIN_PRESETS[self.preset]

    @property
    def heads(self) -> tuple:
        return self.arch["num_attention_heads"], self.arch["num_key_value_heads"]

    @property
    def head_dim(self) -> int:
        return self.arch["hidden_size"] // self.arch["num_attention_heads"]


def scenarios(setup: Setup, *, seed: int = 0) -> Dict[str, List[int]]:
    """name -> the sequence lengths of one packed batch of at most ``budget`` tokens."""
    out = {(f"{n // 1024}k" if n >= 1024 else str(n)): [n] * (setup.budget // n)
           for n in setup.lengths if n <= setup.budget}
    sft = lognormal_sft(20 * setup.budget // 300, max_len=setup.sft_max, seed=seed)
    plan = warppack.plan(sft, setup.budget)
    out["mixed SFT"] = sorted((sft[b].tolist() for b in plan.bins), key=sum)[-1]  # the fullest bin
    return out


def attention_flops(lengths: Sequence[int], heads_q: int, head_dim: int) -> float:
    """Causal attention forward+backward: 4 flops per query-key pair and dim forward, 2.5x that backward."""
    return 3.5 * 4.0 * sum(n * (n + 1) / 2 for n in lengths) * heads_q * head_dim


def timed(fn: Callable[[], Any], setup: Setup, repeats: int) -> dict:
    """Median seconds of ``fn`` after ``setup.warmup`` calls, and the peak memory of the timed calls."""
    cuda = setup.device.startswith("cuda")
    warmup = []  # the first call includes compiling a JIT kernel (flash-attn-4) for new shapes
    for _ in range(setup.warmup):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        warmup.append(time.perf_counter() - start)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": times, "warmup_s": warmup,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def _leaf(shape: Sequence[int], setup: Setup, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, device=setup.device, generator=gen).to(setup.dtype).requires_grad_()


def _sdpa_backends() -> Any:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])  # never the O(L^2) math path


def attention_level(setup: Setup, lengths: List[int], method: str) -> dict:
    """Forward+backward of one attention call over the batch (``padded_sdpa``: one per padded group)."""
    gen = torch.Generator(device=setup.device).manual_seed(0)
    (hq, hkv), d = setup.heads, setup.head_dim
    if method == PADDED:
        groups = [(len(g), max(g)) for g in padded_groups(lengths, setup.budget)]
        tensors = [[_leaf((b, h, n, d), setup, gen) for h in (hq, hkv, hkv)] for b, n in groups]
        douts = [torch.randn(b, hq, n, d, device=setup.device, generator=gen).to(setup.dtype) for b, n in groups]

        def run() -> None:
            for (q, k, v), dout in zip(tensors, douts):
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(dout)
                q.grad = k.grad = v.grad = None
    else:
        total = sum(lengths)
        q, k, v = (_leaf((total, h, d), setup, gen) for h in (hq, hkv, hkv))
        dout = torch.randn(total, hq, d, device=setup.device, generator=gen).to(setup.dtype)
        cu = torch.tensor([0, *lengths], device=setup.device).cumsum(0).to(torch.int32)

        def run() -> None:
            warppack.varlen_attention(q, k, v, cu, max_seqlen_q=max(lengths), max_seqlen_k=max(lengths)).backward(dout)
            q.grad = k.grad = v.grad = None

    result = _with_kernel(method, lambda: timed(run, setup, setup.repeats), setup)
    result["tflops"] = attention_flops(lengths, hq, d) / result["median_s"] / 1e12
    return result


def _with_kernel(method: str, fn: Callable[[], dict], setup: Setup) -> dict:
    """``fn()`` with ``method``'s kernel forced (padded SDPA: flash / memory-efficient only), and which ran."""
    if method == PADDED:
        with _sdpa_backends() if setup.device.startswith("cuda") else contextlib.nullcontext():
            return {**fn(), "kernel": "sdpa"}
    warppack.set_attention_backend(method)
    try:
        result = fn()
        return {**result, "kernel": warppack.attention_backend()}
    finally:
        warppack.set_attention_backend(None)


class Steps:
    """Whole training steps (forward, backward, AdamW) of one model, one method at a time."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        device = torch.device(setup.device)
        longest = max(max(setup.lengths), setup.sft_max)
        self.model: Any = build_model(setup.arch, device=device, dtype=setup.dtype, max_positions=longest)
        self.opt: Any = make_optimizer(self.model, device)
        self.layers = self.model.config.num_hidden_layers
        self.parameters_billion = sum(p.numel() for p in self.model.parameters()) / 1e9

    def _inputs(self, lengths: List[int], method: str) -> List[dict]:
        rng = np.random.default_rng(1)
        seqs = [torch.from_numpy(rng.integers(3, self.setup.arch["vocab_size"], n)) for n in lengths]
        if method != PADDED:
            batch = warppack.PackedCollator(self.setup.budget)([{"input_ids": s} for s in seqs])
            return [dict(batch.to(self.setup.device))]
        rows, start = [], 0
        for group in padded_groups(lengths, self.setup.budget):
            chunk, start = seqs[start:start + len(group)], start + len(group)
            ids = torch.full((len(chunk), max(group)), PAD_ID, dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = s
            labels = ids.masked_fill(ids == PAD_ID, -100)
            rows.append({"input_ids": ids.to(self.setup.device), "labels": labels.to(self.setup.device)})
        return rows

    def close(self) -> None:
        """Give the model's and the optimizer's memory back (the later phases need the device)."""
        self.model = self.opt = None
        free_memory(torch.device(self.setup.device))

    def run(self, lengths: List[int], method: str) -> dict:
        self.model.set_attn_implementation("sdpa" if method == PADDED else "warppack")
        inputs = self._inputs(lengths, method)

        def step() -> None:
            for x in inputs[:-1]:  # padded groups: gradients accumulate, one optimizer step
                self.model(**x, use_cache=False).loss.backward()
            train_step(self.model, self.opt, inputs[-1])

        try:
            result = _with_kernel(method, lambda: timed(step, self.setup, self.setup.step_repeats), self.setup)
        finally:
            self.opt.zero_grad(set_to_none=True)
            free_memory(torch.device(self.setup.device))
        result["tokens_per_s"] = sum(lengths) / result["median_s"]
        return result


def amdahl(share: float, speedup: float) -> float:
    """The most a step can gain when a part ``share`` of it gets ``speedup`` times faster."""
    return 1.0 / ((1.0 - share) + share / speedup)


def ratio(results: Dict[str, dict], method: str, baseline: str) -> Optional[float]:
    a, b = results.get(method, {}), results.get(baseline, {})
    return b["median_s"] / a["median_s"] if "median_s" in a and "median_s" in b else None
