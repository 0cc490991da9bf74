"""Losses over packed rows: the token-weighted mean, and per-sequence weighting when wanted.

A packed row holds several sequences, so "the mean loss" has to say what it averages. The default,
here and in transformers' causal-LM loss, is the **token-weighted mean**: every label token counts
once, whichever sequence it sits in. That is exactly the mean over the same tokens unpacked, so
packing changes nothing about the objective; long sequences weigh more than short ones, as they do
in any padded batch with a token-mean loss. ``PackedCollator`` ignores the first label of every
sequence, so no token is trained to predict across a boundary.

Under gradient accumulation pass ``num_items_in_batch`` (label tokens of *all* micro-batches of the
step; transformers' Trainer computes and passes it) so the step's loss stays the token mean over
the step instead of a mean of micro-batch means. Because the first label of every packed row is
already ignored, counting ``labels != -100`` with or without the causal shift gives the same number.

>>> import torch, warppack
>>> batch = warppack.PackedCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
>>> logits = torch.zeros(1, 5, 10)                         # a uniform model over 10 tokens
>>> round(float(warppack.causal_lm_loss(logits, batch["labels"])), 4)  # = log(10)
2.3026
>>> warppack.sequence_losses(logits, batch["labels"], batch["cu_seq_lens_q"])[1].tolist()
[2.0, 1.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _shifted(logits: torch.Tensor, labels: torch.Tensor):
    # Row layout [1, T, V] / [1, T] (or unbatched); logits at t predict the label at t + 1.
    if logits.dim() == 3:
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits cover {logits.shape[0]} tokens but labels {labels.shape[0]}; pass the "
                         "logits of the same packed batch (shape [1, T, vocab]) and its labels [1, T]")
    return logits[:-1].float(), labels[1:]


def causal_lm_loss(logits, labels, *, num_items_in_batch=None, ignore_index: int = -100) -> torch.Tensor:
    """Token-weighted mean cross-entropy of a packed row (what transformers' ``ForCausalLMLoss`` computes).

    ``num_items_in_batch``: label tokens of the whole accumulation step; the loss is then the sum over
    this micro-batch divided by it, so summing the micro-batch losses gives the step's token mean.
    """
    flat_logits, targets = _shifted(logits, labels)
    total = F.cross_entropy(flat_logits, targets.to(flat_logits.device), ignore_index=ignore_index,
                            reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def sequence_losses(logits, labels, cu_seqlens, *, ignore_index: int = -100):
    """Per-segment ``(loss_sum, num_label_tokens)``, two float tensors of shape ``[len(cu_seqlens) - 1]``.

    Padding and empty static-shape segments come out as ``(0, 0)``. No host sync, no Python loop over
    sequences (safe under ``torch.compile``).
    """
    flat_logits, targets = _shifted(logits, labels)
    targets = targets.to(flat_logits.device)
    token_loss = F.cross_entropy(flat_logits, targets, ignore_index=ignore_index, reduction="none")
    cu = cu_seqlens.to(flat_logits.device).long()
    # Target t + 1 belongs to the segment whose range holds position t + 1.
    seg = torch.searchsorted(cu[1:], torch.arange(1, targets.shape[0] + 1, device=cu.device), right=True)
    seg = seg.clamp_max(cu.numel() - 2)
    n = cu.numel() - 1
    sums = torch.zeros(n, device=cu.device, dtype=token_loss.dtype).index_add(0, seg, token_loss)
    counts = torch.zeros(n, device=cu.device, dtype=token_loss.dtype).index_add(
        0, seg, (targets != ignore_index).to(token_loss.dtype))
    return sums, counts


def sequence_weighted_loss(logits, labels, cu_seqlens, *, weights=None, num_sequences_in_batch=None,
                           ignore_index: int = -100) -> torch.Tensor:
    """Mean over sequences of each sequence's mean token loss: every sequence counts equally.

    ``weights`` (``[len(cu_seqlens) - 1]``) weighs sequences instead; segments without label tokens
    (padding, empty tail) never count. Under gradient accumulation pass ``num_sequences_in_batch``
    (the summed weights of the whole step) as the denominator.
    """
    sums, counts = sequence_losses(logits, labels, cu_seqlens, ignore_index=ignore_index)
    present = (counts > 0).to(sums.dtype)
    w = present if weights is None else torch.as_tensor(weights, dtype=sums.dtype, device=sums.device) * present
    per_sequence = sums / counts.clamp_min(1)
    denominator = w.sum() if num_sequences_in_batch is None else num_sequences_in_batch
    return (per_sequence * w).sum() / denominator
