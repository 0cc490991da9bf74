"""A simulated accelerator for CPU tests of the calibrator and the OOM guard.

Memory use of a forward over a packed batch follows a known formula of its segment lengths::

    bytes = static + per_token * T + per_square * sum(len**2) + per_sequence * n

and the REAL ``torch.OutOfMemoryError`` is raised when it exceeds ``total_bytes`` -- in the forward
(default) or part-way through the backward, after some gradients were already accumulated. It is a
``warppack.memory.device.DeviceMemory``, so ``calibrate_token_budget(..., memory=device)`` runs the real
search code. ``ToyLM`` is a model cheap enough to run hundreds of probe steps.

``fragmentation=f`` models PyTorch's caching allocator: when a batch holds more tokens than the one
before, ``f`` of the previous batch's per-token memory stays reserved (cached blocks too small for
the new tensors, pinned by tensors carved out of them) until ``release()`` empties the cache. The
*reserved* peak is then ``need + stranded`` (what ``peak_bytes`` reports, and what must fit in
``total_bytes``); the *allocated* peak is ``need`` alone (``peak_allocated_bytes``). Batches of one
constant size never fragment -- which is why a calibrator must vary them. ``cap(bytes)`` models
``torch.cuda.set_per_process_memory_fraction``: past the cap the stranded blocks are released first
(what the real allocator does before it raises), and only ``need`` itself above the cap runs out.
Uncapped, stranded blocks do run out (the default allocator cannot release partly used segments).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from warppack.memory.device import DeviceMemory

from support.paths import benchlib


class SimulatedDevice(DeviceMemory):
    def __init__(self, *, total_bytes: float, static_bytes: float = 0.0, per_token: float = 1.0,
                 per_square: float = 0.0, per_sequence: float = 0.0, fragmentation: float = 0.0,
                 name: str = "simulated-gpu") -> None:
        self.name, self.total_bytes = name, int(total_bytes)
        self.static, self.per_token = float(static_bytes), float(per_token)
        self.per_square, self.per_sequence = float(per_square), float(per_sequence)
        self.fragmentation = float(fragmentation)
        self.limit = float(self.total_bytes)  # what may be reserved: the device, or a cap
        self._peak = self._peak_allocated = self.static
        self._stranded = 0.0       # reserved bytes no later batch can use (fragmentation), until release()
        self._last_tokens: Optional[float] = None  # per-token bytes of the previous batch
        self.forwards = 0          # forwards seen (all attempts)
        self.ooms = 0              # out-of-memory errors raised
        self.resets = 0            # reset_peak calls (one per calibration probe)
        self.seen: List[List[int]] = []  # lengths of every forward that did not run out of memory

    # -- the formula ----------------------------------------------------------------------------
    def need(self, lengths: Sequence[int]) -> float:
        return (self.static + self.per_token * sum(lengths) + self.per_square * sum(n * n for n in lengths)
                + self.per_sequence * len(lengths))

    def need_at_budget(self, budget: int, max_seq_len: int, *, short_len: int = 16) -> float:
        """The worst ``need`` over the calibrator's pessimistic batches, in closed form (fast for huge budgets)."""
        def shape(size: int) -> float:
            count, rest = divmod(budget, size)
            return self.static + self.per_token * budget + self.per_square * (count * size * size + rest * rest) \
                + self.per_sequence * (count + (rest > 0))
        single = self.need([min(max_seq_len, budget)])
        return max(shape(max_seq_len), shape(min(short_len, max_seq_len)), single)

    def fits(self, lengths: Sequence[int], limit: Optional[float] = None) -> bool:
        return self.need(lengths) <= (self.total_bytes if limit is None else limit)

    def _oom(self, need: float) -> torch.OutOfMemoryError:
        self.ooms += 1
        return torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {(need - self.total_bytes) / 2**20:.2f} MiB. GPU 0 has a "
            f"total capacity of {self.total_bytes / 2**30:.2f} GiB (simulated)")

    def account(self, lengths: Sequence[int]) -> float:
        """Register one batch as the allocator would see it; its *reserved* need (OOM above total_bytes)."""
        need = self.need(lengths)
        tokens = need - self.static
        if self.fragmentation and self._last_tokens is not None and tokens > self._last_tokens:
            self._stranded = max(self._stranded, self.fragmentation * self._last_tokens)
        self._last_tokens = tokens
        reserved = need + self._stranded
        if reserved > self.limit < self.total_bytes:  # capped: the cache is emptied before it gives up
            self._stranded, reserved = 0.0, need
        self._peak = max(self._peak, min(reserved, self.total_bytes))
        self._peak_allocated = max(self._peak_allocated, min(need, self.total_bytes))
        return reserved

    def replay(self, batches: Sequence[Sequence[int]]) -> tuple:
        """``(ooms, peak reserved)`` of training on ``batches`` from a fresh process, without a model."""
        self.reset_peak()
        ooms = sum(self.account(lengths) > self.limit for lengths in batches)
        return ooms, self.peak_bytes()

    # -- DeviceMemory -----------------------------------------------------------------------------
    def reset_peak(self) -> None:  # like CudaMemory: empties the cache, then starts a new peak
        self.resets += 1
        self.release()
        self._peak = self._peak_allocated = self.static

    def peak_bytes(self) -> int:
        return int(self._peak)

    def peak_allocated_bytes(self) -> int:
        return int(self._peak_allocated)

    def release(self) -> None:
        self._stranded, self._last_tokens = 0.0, None  # torch.cuda.empty_cache()

    def cap(self, max_bytes: int) -> None:
        self.limit = min(float(max_bytes), float(self.total_bytes))

    # -- hooking a model ------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module, *, phase: str = "forward",
               trigger: Optional[torch.nn.Module] = None) -> "SimulatedDevice":
        """Account every forward of ``model``; ``phase="backward"`` raises during the backward instead,
        from the gradient of ``trigger``'s output (default: ``model``'s first child)."""
        state = {"need": 0.0}

        def pre(module, args, kwargs):
            self.forwards += 1
            if "cu_seq_lens_q" in kwargs:
                cu = kwargs["cu_seq_lens_q"].tolist()
                lengths = [b - a for a, b in zip(cu, cu[1:]) if b > a]
            else:  # an ordinary [batch, length] forward (check_model's probes)
                rows, length = kwargs["input_ids"].shape
                lengths = [length] * rows
            need = state["need"] = self.account(lengths)
            if need > self.limit and phase == "forward":
                raise self._oom(need)
            if need <= self.limit:
                self.seen.append(lengths)

        def arm(module, args, output):
            tensor = output if torch.is_tensor(output) else output[0]
            if state["need"] > self.limit and tensor.requires_grad:
                need = state["need"]

                def explode(grad):
                    raise self._oom(need)

                tensor.register_hook(explode)

        # prepend: the need is counted before FSDP's all-gather hook runs. A simulated OOM on one
        # rank of a sharded model still strands the others in that all-gather, as a real one does
        # (docs/calibration.md), so the FSDP test keeps every failed probe a measured overshoot.
        model.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
        if phase == "backward":
            (trigger or next(model.children())).register_forward_hook(arm)
        return self

    # -- the answer a perfect calibrator would give ---------------------------------------------
    def best_budget(self, max_seq_len: int, *, headroom: float, short_len: int = 16, granularity: int = 1) -> int:
        """Largest multiple of ``granularity`` whose pessimistic batches all stay under the headroom."""
        limit = (1 - headroom) * self.total_bytes

        def ok(budget: int) -> bool:
            return self.need_at_budget(budget, max_seq_len, short_len=short_len) <= limit

        lo, hi = 0, 1
        while ok(hi * granularity):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid * granularity) else (lo, mid)
        return lo * granularity


class ToyLM(torch.nn.Module):
    """Embedding -> MLP -> logits with transformers' shifted token-mean loss; ignores packing keys
    (it has no attention, so packed and split batches give each token the same loss)."""

    def __init__(self, vocab_size: int = 64, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = None
        self.embed = torch.nn.Embedding(vocab_size, hidden)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Dropout(dropout))
        self.head = torch.nn.Linear(hidden, vocab_size)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed

    def forward(self, input_ids, labels=None, **packing):
        logits = self.head(self.mlp(self.embed(input_ids)))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return out


# The adversarial streams are the benchmarks' definition (benchmarks/benchlib/calibration.py).
adversarial_batches = benchlib("calibration").adversarial_batches
