"""A simulated accelerator for CPU tests of the calibrator and the OOM guard.

Memory use of a forward over a packed batch follows a known formula of its segment lengths::

    bytes = static + per_token * T + per_square * sum(len**2) + per_sequence * n

and the REAL ``torch.OutOfMemoryError`` is raised when it exceeds ``total_bytes`` -- in the forward
(default) or part-way through the backward, after some gradients were already accumulated. It is a
``warppack._memory.DeviceMemory``, so ``calibrate_token_budget(..., memory=device)`` runs the real
search code. ``ToyLM`` is a model cheap enough to run hundreds of probe steps.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from warppack._memory import DeviceMemory


class SimulatedDevice(DeviceMemory):
    def __init__(self, *, total_bytes: float, static_bytes: float = 0.0, per_token: float = 1.0,
                 per_square: float = 0.0, per_sequence: float = 0.0, name: str = "simulated-gpu") -> None:
        self.name, self.total_bytes = name, int(total_bytes)
        self.static, self.per_token = float(static_bytes), float(per_token)
        self.per_square, self.per_sequence = float(per_square), float(per_sequence)
        self._peak = self.static
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

    # -- DeviceMemory -----------------------------------------------------------------------------
    def reset_peak(self) -> None:
        self.resets += 1
        self._peak = self.static

    def peak_bytes(self) -> int:
        return int(self._peak)

    def release(self) -> None:
        pass

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
            need = state["need"] = self.need(lengths)
            self._peak = max(self._peak, min(need, self.total_bytes))
            if need > self.total_bytes and phase == "forward":
                raise self._oom(need)
            if need <= self.total_bytes:
                self.seen.append(lengths)

        def arm(module, args, output):
            tensor = output if torch.is_tensor(output) else output[0]
            if state["need"] > self.total_bytes and tensor.requires_grad:
                need = state["need"]

                def explode(grad):
                    raise self._oom(need)

                tensor.register_hook(explode)

        model.register_forward_pre_hook(pre, with_kwargs=True)
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
