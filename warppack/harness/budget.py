"""The token budget of packed evaluation batches: given, measured on the GPU, or the model's length.

``max_tokens="auto"`` runs ``warppack.calibrate_token_budget`` with an *evaluation* step: a
no-grad forward whose every position goes through the LM head and a log-softmax, as a batch of
rolling-perplexity windows does. No activations are kept for a backward, so the budget is
several times a training budget; the answer is cached on disk like a training calibration.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from warppack.engine.options import check_int32_count
from warppack.memory.calibrate import calibrate_token_budget
from warppack.memory.device import DeviceMemory
from warppack.model.continuations import continuation_logprobs, forward_logits

__all__ = ["evaluation_step", "evaluation_token_budget"]


def evaluation_step(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The calibration probe of packed scoring (a ``loss_fn`` for ``calibrate_token_budget``).

    Returns a zero that needs a gradient, so the calibrator's backward has nothing to do.
    """
    with torch.no_grad():
        logits = forward_logits(model, batch)
        rows = np.arange(logits.shape[0], dtype=np.int64)
        continuation_logprobs(logits, rows, np.zeros_like(rows))
    return torch.zeros((), device=logits.device, requires_grad=True)


def evaluation_token_budget(model: torch.nn.Module, *, max_tokens: Union[int, str, None], max_length: int,
                            device: Union[str, torch.device], memory: Optional[DeviceMemory] = None,
                            cache: bool = True) -> int:
    """``max_tokens`` checked; ``"auto"`` measured (CUDA, or ``memory``); ``None``: ``"auto"`` on CUDA,
    else ``max_length`` (one longest row per batch)."""
    max_length = check_int32_count(max_length, name="max_length")
    if max_tokens is None:
        max_tokens = "auto" if torch.device(device).type == "cuda" or memory is not None else max_length
    if isinstance(max_tokens, str):
        if max_tokens != "auto":
            raise ValueError(f"max_tokens={max_tokens!r}: pass a token count such as max_tokens=16384, or "
                             "max_tokens=auto to measure the largest batch that fits on the GPU")
        return calibrate_token_budget(model, max_seq_len=max_length, loss_fn=evaluation_step, memory=memory,
                                      cache=cache)
    return check_int32_count(max_tokens, name="max_tokens")
