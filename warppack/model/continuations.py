"""Packed scoring of continuations: every distinct input row once, one forward per packed batch.

A request is an *input row* (the tokens the model reads) and the *continuation* its last positions
predict: lm-eval's ``(context + continuation)[:-1]`` and ``continuation``; ``warppack.loglikelihood``
and the lm-eval backend (``--model warppack``) both score here. Requests with the same input row
share one sequence of a batch (lm-eval's Hugging Face backend shares them the same way, as its
logits cache), the rows are packed under a token budget by ``warppack.plan``, and only the
positions that predict a continuation token go through the LM head (``logits_to_keep``). Index
bookkeeping is numpy over whole batches; the log-softmax runs over row chunks so that a batch of
long documents never holds two copies of its ``[tokens, vocab]`` logits.

>>> import torch, transformers, warppack
>>> from warppack.model.continuations import score_continuations
>>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2)
>>> model = transformers.LlamaForCausalLM(config).eval()
>>> model.set_attn_implementation("warppack")
>>> scores = score_continuations(model, [[5, 6, 7], [5, 6, 7], [9]], [[8], [7, 8], [10]], max_tokens=16)
>>> [(round(logprob, 1) <= 0, type(greedy).__name__) for logprob, greedy in scores]
[(True, 'bool'), (True, 'bool'), (True, 'bool')]
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from warppack.batch.collator import PackedCollator
from warppack.batch.packed import MODEL_KEYS
from warppack.engine.options import check_int32_count
from warppack.engine.plan import plan
from warppack.model.probe import accepts

__all__ = ["continuation_logprobs", "forward_logits", "score_continuations"]

_CHUNK_ELEMENTS = 2**26  # logits entries per log-softmax chunk (256 MiB in fp32)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without a Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    total = int(ends[-1]) if len(ends) else 0
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - counts), counts) + np.arange(total)


def forward_logits(model: torch.nn.Module, batch: Mapping[str, Any],
                   positions: Optional[torch.Tensor] = None, *, keeps_logits: Optional[bool] = None) -> torch.Tensor:
    """``[K, vocab]`` logits of a packed batch at ``positions`` (all ``T`` positions when ``None``).

    The LM head only runs at ``positions`` when the model's forward takes ``logits_to_keep`` (every
    transformers causal LM does); otherwise the full logits are computed and indexed. ``keeps_logits``
    says so when the caller knows (a loop over batches asks once), else the signature is read.
    """
    inputs = {key: batch[key] for key in MODEL_KEYS}
    if keeps_logits is None:
        keeps_logits = accepts(model, "logits_to_keep")
    keep = {"logits_to_keep": positions} if positions is not None and keeps_logits else {}
    logits = model(**inputs, use_cache=False, **keep).logits
    logits = logits.reshape(-1, logits.shape[-1])
    if positions is not None and logits.shape[0] != positions.numel():  # the head ran everywhere
        logits = logits[positions]
    return logits


def continuation_logprobs(logits: torch.Tensor, rows: np.ndarray, targets: np.ndarray, *,
                          softmax_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of ``targets[i]`` at logits row ``rows[i]``, and whether it is that row's argmax.

    Like lm-eval's HF backend: ``log_softmax(logits, dtype=softmax_dtype)`` (``None``: the logits'
    dtype) and the argmax taken over the log-probabilities.
    """
    device, (count, vocab) = logits.device, logits.shape
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(0, count + step, step))
    rows_t = torch.from_numpy(rows).to(device)
    targets_t = torch.from_numpy(targets).to(device)
    logprob = torch.empty(len(rows), dtype=softmax_dtype or logits.dtype, device=device)
    best = torch.empty(count, dtype=torch.long, device=device)
    for chunk, start in enumerate(range(0, count, step)):
        logp = torch.log_softmax(logits[start:start + step], dim=-1, dtype=softmax_dtype)
        best[start:start + step] = logp.argmax(-1)
        if bounds[chunk + 1] > bounds[chunk]:
            picked = torch.from_numpy(order[bounds[chunk]:bounds[chunk + 1]]).to(device)
            logprob[picked] = logp[rows_t[picked] - start, targets_t[picked]]
    return logprob, best[rows_t] == targets_t


def _distinct(inputs: Sequence[Sequence[int]]) -> Tuple[List[np.ndarray], np.ndarray]:
    """The distinct input rows (as int64 arrays, first-seen order) and each request's row index."""
    index: Dict[tuple, int] = {}
    rows: List[np.ndarray] = []
    of = np.empty(len(inputs), dtype=np.int64)
    for i, tokens in enumerate(inputs):
        key = tuple(tokens)
        found = index.setdefault(key, len(rows))
        if found == len(rows):
            rows.append(np.asarray(key, dtype=np.int64))
        of[i] = found
    return rows, of


def _bins(lengths: np.ndarray, max_tokens: int) -> Iterator[np.ndarray]:
    """Row indices of each batch: packed under ``max_tokens``; a longer row is a batch of its own."""
    fits = np.flatnonzero(lengths <= max_tokens)
    for bin_ in plan(lengths[fits], max_tokens).bins:
        yield fits[bin_]
    for row in np.flatnonzero(lengths > max_tokens):
        yield np.array([row])


def score_continuations(model: torch.nn.Module, inputs: Sequence[Sequence[int]],
                        continuations: Sequence[Sequence[int]], *, max_tokens: int,
                        device: Union[str, torch.device, None] = None, softmax_dtype: Optional[torch.dtype] = None,
                        progress: Optional[Callable[[int], Any]] = None) -> List[Tuple[float, bool]]:
    """``[(logprob, is_greedy)]`` of each continuation given its input row, in request order.

    ``continuations[i]`` is predicted by the last ``len(continuations[i])`` positions of
    ``inputs[i]``. Rows longer than ``max_tokens`` run alone. ``progress(n)`` is called after each
    batch with the number of requests it answered.
    """
    max_tokens = check_int32_count(max_tokens)
    if len(inputs) != len(continuations):
        raise ValueError(f"got {len(inputs)} inputs but {len(continuations)} continuations; pass one "
                         "continuation per input row")
    rows, row_of = _distinct(inputs)
    row_len = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    cont_len = np.fromiter((len(c) for c in continuations), dtype=np.int64, count=len(continuations))
    bad = np.flatnonzero((cont_len < 1) | (cont_len > row_len[row_of]))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"request {i}: a continuation of {cont_len[i]} tokens cannot be predicted by an input "
                         f"row of {len(inputs[i])}; pass 1..len(input) continuation tokens (the row is context + "
                         "continuation without its last token)")
    keep = np.zeros(len(rows), dtype=np.int64)
    np.maximum.at(keep, row_of, cont_len)
    cont_start = np.cumsum(cont_len) - cont_len
    flat = np.fromiter(itertools.chain.from_iterable(continuations), dtype=np.int64, count=int(cont_len.sum()))
    by_row = np.argsort(row_of, kind="stable")
    per_row = np.bincount(row_of, minlength=len(rows))
    first = np.cumsum(per_row) - per_row
    device = torch.device(device) if device is not None else next(model.parameters()).device
    collator = PackedCollator()
    keeps_logits = accepts(model, "logits_to_keep")
    logprob = np.zeros(len(inputs), dtype=np.float64)
    greedy = np.zeros(len(inputs), dtype=bool)
    for batch_rows in _bins(row_len, max_tokens):
        requests = by_row[_ranges(first[batch_rows], per_row[batch_rows])]
        local = np.repeat(np.arange(len(batch_rows)), per_row[batch_rows])  # batch slot of each request
        kept = keep[batch_rows]
        # The last `kept` positions of each row go through the LM head; a request reads the last
        # len(continuation) of its row's kept logits.
        positions = _ranges(np.cumsum(row_len[batch_rows]) - kept, kept)
        request_rows = _ranges(np.cumsum(kept)[local] - cont_len[requests], cont_len[requests])
        targets = flat[_ranges(cont_start[requests], cont_len[requests])]
        batch = collator([{"input_ids": rows[r]} for r in batch_rows.tolist()]).to(device)
        with torch.no_grad():
            every = len(positions) == int(row_len[batch_rows].sum())  # rolling windows: no gather needed
            logits = forward_logits(model, batch, None if every else torch.from_numpy(positions).to(device),
                                    keeps_logits=keeps_logits)
            token_logprob, token_greedy = continuation_logprobs(logits, request_rows, targets,
                                                                softmax_dtype=softmax_dtype)
            # One device sync per batch; the per-request sums run on the host in float64.
            host = torch.stack([token_logprob, (~token_greedy).to(token_logprob.dtype)]).cpu().double().numpy()
        owner = np.repeat(np.arange(len(requests)), cont_len[requests])
        logprob[requests] = np.bincount(owner, weights=host[0], minlength=len(requests))
        greedy[requests] = np.bincount(owner, weights=host[1], minlength=len(requests)) == 0
        if progress is not None:
            progress(len(requests))
    return list(zip(logprob.tolist(), greedy.tolist()))
