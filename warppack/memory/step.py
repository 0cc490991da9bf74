"""One measuring training step on the device: the model, the loss, and a synthetic packed batch.

Kept apart from the search (:mod:`warppack.memory.search`) and from the loop that ties them
together (:mod:`warppack.memory.calibrate`); the OOM guard reuses :func:`default_loss` and
:func:`unwrap_ddp`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from warppack.batch.collator import PackedCollator

__all__ = ["default_loss", "unwrap_ddp", "TrainStep", "make_batch", "vocab_size"]


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


class TrainStep:
    """Forward, backward and optimizer step of one batch, gradients cleared after (as a run's step)."""

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


def make_batch(lengths: Sequence[int], budget: int, collator: Optional[PackedCollator], vocab: int, device):
    """A packed batch of sequences of ``lengths``, laid out as ``collator`` would (padding, caps)."""
    c = collator or PackedCollator()
    make = PackedCollator(budget, pad_token_id=c.pad_token_id, label_pad_id=c.label_pad_id,
                          pad_to_multiple_of=c.pad_to_multiple_of, static_shape=c.static_shape,
                          max_sequences=c.max_sequences, pin_memory=False)
    low = 3 if vocab > 3 else 0  # keep clear of pad/bos/eos ids
    examples = [{"input_ids": (np.arange(n, dtype=np.int64) * 7919 + i) % (vocab - low) + low}
                for i, n in enumerate(lengths)]
    return make(examples).to(device)


def vocab_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    embeddings = getattr(model, "get_input_embeddings", None)
    if vocab is None and callable(embeddings):
        vocab = embeddings().num_embeddings
    return int(vocab or 2)
