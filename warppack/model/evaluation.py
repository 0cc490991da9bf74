"""Packed evaluation: per-example results in dataset order, every example exactly once.

``evaluate_packed`` plans bins with ``warppack.plan`` (no ``drop_last``, no truncation), runs the
model over each packed batch, splits the outputs per sequence and puts every result back at its
example's index. ``score_sequences`` is its default per-sequence scorer (summed log-likelihood of the
label tokens and whether each was the argmax); ``pool_sequences`` pools embeddings through the same
loop. lm-eval's "loglikelihood" requests (context + continuation, score only the continuation) are
one call to ``loglikelihood``, which scores them with ``score_continuations`` (continuations.py):
each distinct input row once, the LM head only where a continuation is read:

>>> import torch, transformers, warppack
>>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2)
>>> model = transformers.LlamaForCausalLM(config).eval()
>>> model.set_attn_implementation("warppack")
>>> scores = warppack.loglikelihood(model, [([5, 6, 7], [8]), ([9], [10, 11])], max_tokens=16)
>>> [round(logprob, 1) <= 0 for logprob, is_greedy in scores]
[True, True]
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from warppack.batch.collator import PackedCollator
from warppack.batch.packed import PackedBatch
from warppack.engine.options import check_int32_count
from warppack.engine.plan import plan
from warppack.model.continuations import score_continuations

_MISSING = object()


class SequenceScore(NamedTuple):
    """Score of one sequence: summed log-probability of its label tokens, their count, all-argmax."""

    logprob: float
    num_tokens: int
    is_greedy: bool


def _segments(cu: torch.Tensor, count: int, device) -> torch.Tensor:
    # Segment of each *target* position 1..T (logits at t - 1 predict it).
    cu = cu.to(device).long()
    return torch.searchsorted(cu[1:], torch.arange(1, count + 1, device=device), right=True).clamp_max(cu.numel() - 2)


def score_sequences(logits, labels, cu_seqlens, *, num_sequences: Optional[int] = None,
                    ignore_index: int = -100) -> List[SequenceScore]:
    """One ``SequenceScore`` per segment of a packed row (the first ``num_sequences``; default all).

    Only tokens whose label is not ``ignore_index`` are scored, so a label row of
    ``[-100] * len(context) + continuation`` scores the continuation given the context.
    """
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device)
    targets, valid = labels[1:], labels[1:] != ignore_index
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    safe = targets.clamp_min(0)
    token_logp = logp.gather(-1, safe[:, None])[:, 0] * valid
    wrong = (logp.argmax(-1) != safe) & valid
    seg = _segments(cu_seqlens, targets.shape[0], logits.device)
    n = cu_seqlens.numel() - 1
    zeros = torch.zeros(n, dtype=torch.float64, device=logits.device)
    sums = zeros.index_add(0, seg, token_logp.double())
    counts = zeros.index_add(0, seg, valid.double())
    misses = zeros.index_add(0, seg, wrong.double())
    n = n if num_sequences is None else num_sequences
    rows = torch.stack([sums, counts, misses]).cpu().tolist()  # one device sync for the whole batch
    return [SequenceScore(rows[0][i], int(rows[1][i]), rows[2][i] == 0) for i in range(n)]


def pool_sequences(hidden, cu_seqlens, *, mode: str = "mean", num_sequences: Optional[int] = None):
    """``[n, H]`` embeddings from packed hidden states ``[1, T, H]``: ``"mean"``, ``"first"`` or ``"last"`` token.

    >>> import torch
    >>> pool_sequences(torch.arange(5.0)[None, :, None], torch.tensor([0, 2, 5]))[:, 0].tolist()
    [0.5, 3.0]
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    cu = cu_seqlens.to(hidden.device).long()
    n = cu.numel() - 1 if num_sequences is None else num_sequences
    if mode == "first":
        return hidden[cu[:n]]
    if mode == "last":
        return hidden[(cu[1:n + 1] - 1).clamp_min(0)]
    if mode != "mean":
        raise ValueError(f"mode={mode!r}: pool with 'mean', 'first' or 'last'")
    seg = torch.searchsorted(cu[1:], torch.arange(hidden.shape[0], device=hidden.device), right=True)
    seg = seg.clamp_max(cu.numel() - 2)
    sums = torch.zeros(cu.numel() - 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    sums = sums.index_add(0, seg, hidden)
    return (sums / (cu[1:] - cu[:-1]).clamp_min(1)[:, None].to(hidden.dtype))[:n]


def _default_score(outputs, batch) -> List[SequenceScore]:
    return score_sequences(outputs.logits, batch["labels"], batch["cu_seq_lens_q"],
                           num_sequences=batch.num_sequences)


def evaluate_packed(model, examples: Sequence[Any], *, max_tokens: int,
                    score_fn: Optional[Callable[[Any, Any], Sequence[Any]]] = None,
                    collator: Optional[Callable[[List[Any]], PackedBatch]] = None,
                    forward_kwargs: Optional[dict] = None, device=None, strategy: str = "bfd") -> list:
    """Run ``model`` over ``examples`` packed under ``max_tokens``; one result per example, in order.

    ``score_fn(outputs, batch)`` returns one result per real sequence of the batch, in batch order
    (default: ``score_sequences`` of the logits). Raises if any example would be dropped, truncated
    or scored twice. ``forward_kwargs`` go to every forward (e.g. ``output_hidden_states=True``).
    """
    lengths = [len(example["input_ids"]) for example in examples]
    for index, length in enumerate(lengths):
        if not 0 < length <= max_tokens:
            raise ValueError(
                f"example {index} has {length} tokens; evaluation scores whole examples of 1..max_tokens "
                f"tokens (max_tokens={max_tokens}): raise max_tokens or drop/shorten that example yourself")
    collator = collator or PackedCollator(max_tokens)
    score_fn = score_fn or _default_score
    device = device or next(model.parameters()).device
    forward_kwargs = {"use_cache": False, **(forward_kwargs or {})}
    results: list = [_MISSING] * len(examples)
    with torch.no_grad():
        for bin_ in plan(lengths, max_tokens, strategy=strategy).bins:
            indices = bin_.tolist()
            batch = collator([examples[i] for i in indices]).to(device)
            scores = list(score_fn(model(**batch.model_inputs(), **forward_kwargs), batch))
            if len(scores) != len(indices):
                raise RuntimeError(f"score_fn returned {len(scores)} results for a batch of {len(indices)} "
                                   "sequences; return one per real sequence (use batch.num_sequences)")
            for index, score in zip(indices, scores):
                if results[index] is not _MISSING:
                    raise RuntimeError(f"example {index} was planned twice; this is a warppack bug, please report it")
                results[index] = score
    missing = [i for i, r in enumerate(results) if r is _MISSING]
    if missing:
        raise RuntimeError(f"examples {missing[:10]} were never evaluated; this is a warppack bug, please report it")
    return results


def _request_tokens(context: Sequence[int], continuation: Sequence[int], *,
                    where: str = "") -> Tuple[List[int], List[int]]:
    try:
        if isinstance(context, (str, bytes)) or isinstance(continuation, (str, bytes)):
            raise TypeError
        context, continuation = [int(t) for t in context], [int(t) for t in continuation]
    except (TypeError, ValueError):
        raise TypeError(f"{where}context and continuation must be sequences of token ids, got {context!r:.60} and "
                        f"{continuation!r:.60}; tokenize the text first (tokenizer(text)['input_ids'])") from None
    if not context or not continuation:
        raise ValueError(
            f"{where}a loglikelihood request needs a non-empty context and continuation (got {len(context)} and "
            f"{len(continuation)} tokens); as lm-eval does, use [eot_token_id] as the context of an empty one")
    return context, continuation


def loglikelihood_example(context: Sequence[int], continuation: Sequence[int]) -> dict:
    """One example scoring ``continuation`` given ``context`` (lm-eval's "loglikelihood" request)."""
    context, continuation = _request_tokens(context, continuation)
    return {"input_ids": context + continuation, "labels": [-100] * len(context) + continuation}


def loglikelihood(model: torch.nn.Module, requests: Sequence[Tuple[Sequence[int], Sequence[int]]], *,
                  max_tokens: int, device: Union[str, torch.device, None] = None,
                  softmax_dtype: Optional[torch.dtype] = torch.float32,
                  progress: Optional[Callable[[int], Any]] = None) -> List[Tuple[float, bool]]:
    """``[(logprob, is_greedy)]`` for ``(context_ids, continuation_ids)`` requests, in request order.

    Scored by ``score_continuations`` on the input rows ``(context + continuation)[:-1]``: requests
    with the same row share one sequence of a batch, the LM head runs only at continuation
    positions, and the log-softmax is taken in ``softmax_dtype`` (``None``: the logits' dtype). A
    request of more than ``max_tokens`` tokens (context + continuation) raises. ``progress(n)`` is
    called after each batch with the number of requests it answered.
    """
    max_tokens = check_int32_count(max_tokens)
    inputs: List[List[int]] = []
    continuations: List[List[int]] = []
    for index, request in enumerate(requests):
        try:
            context, continuation = request
        except (TypeError, ValueError):
            raise TypeError(f"request {index} is {request!r:.80}; pass each request as a (context_ids, "
                            "continuation_ids) pair") from None
        context, continuation = _request_tokens(context, continuation, where=f"request {index}: ")
        if len(context) + len(continuation) > max_tokens:
            raise ValueError(
                f"request {index} has {len(context)} context and {len(continuation)} continuation tokens, more than "
                f"max_tokens={max_tokens}; requests are scored whole: raise max_tokens or cut the context from the "
                "left yourself (as lm-eval does at the model's max_length)")
        inputs.append((context + continuation)[:-1])
        continuations.append(continuation)
    return score_continuations(model, inputs, continuations, max_tokens=max_tokens, device=device,
                               softmax_dtype=softmax_dtype, progress=progress)
