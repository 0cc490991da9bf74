"""Exact attention on any device and dtype: per-segment SDPA, or one block-diagonal call when compiling.

The fallback of ``warppack.attention.dispatch``'s dispatcher (CPU, fp32, softcapping, attention sinks) and
the masked path of the transformers glue. Same arithmetic as transformers' sdpa/eager attention, so
packed rows match each sequence run alone to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from warppack.attention.host import checked_offsets


def repeat_heads(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    # Same expansion as transformers' repeat_kv, so GQA results match the reference bit for bit.
    return x if n == 1 else torch.repeat_interleave(x, n, dim=dim)


def attend(q, k, v, *, mask, causal, scale, window, softcap, dropout, sinks):
    """Dense attention on ``[B, H, Lq, D]``; ``mask`` (bool, True = attend, or additive float) wins."""
    lq, lk = q.shape[-2], k.shape[-2]
    k, v = repeat_heads(k, q.shape[1] // k.shape[1], 1), repeat_heads(v, q.shape[1] // v.shape[1], 1)
    if mask is None and (window is not None or (causal and (lq != lk or softcap or sinks is not None))):
        qpos = torch.arange(lq, device=q.device)[:, None] + (lk - lq)  # bottom-right alignment
        kpos = torch.arange(lk, device=q.device)[None, :]
        mask = kpos <= qpos if causal else torch.ones_like(kpos - qpos, dtype=torch.bool)
        if window is not None:
            mask = mask & (kpos > qpos - window) & (causal or kpos < qpos + window)
    if softcap is None and sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale,
                                              is_causal=bool(mask is None and causal and lq > 1))
    # Softcapping and sinks change the softmax itself: spell it out like transformers' eager path.
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool \
            else scores + mask
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).to(scores.dtype).expand(scores.shape[0], -1, lq, 1)
        both = torch.cat([scores, sink], dim=-1)
        probs = F.softmax(both - both.max(dim=-1, keepdim=True).values, dim=-1, dtype=both.dtype)[..., :-1]
    else:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs.to(v.dtype), v)


def exact_segments(q, k, v, cu_q, cu_k, **kw):
    # cu_seqlens read on the host once per batch (shared with every layer), then SDPA per non-empty segment.
    starts_q, starts_k = checked_offsets(cu_q, cu_k, q.shape[0], k.shape[0])
    outs = []
    for s, e, sk, ek in zip(starts_q[:-1], starts_q[1:], starts_k[:-1], starts_k[1:]):
        if e > s:  # zero-length segments (static-shape tail) have nothing to compute
            one = lambda x, a, b: x[a:b].transpose(0, 1).unsqueeze(0)  # noqa: E731 - [1, H, L, D]
            outs.append(attend(one(q, s, e), one(k, sk, ek), one(v, sk, ek), mask=None, **kw)[0].transpose(0, 1))
    return torch.cat(outs, dim=0)  # [T, H, D], contiguous: callers reshape it freely


def exact_block_diagonal(q, k, v, cu_q, cu_k, *, causal, window, **kw):
    # Static shapes only (no host sync, no data-dependent loop), so torch.compile keeps one graph.
    mask = segment_mask(cu_q.to(q.device), cu_k.to(q.device), q.shape[0], k.shape[0], causal=causal,
                        window=window)
    out = attend(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], mask=mask,
                  causal=causal, window=None, **kw)
    return out[0].transpose(0, 1).contiguous()


def segment_mask(cu_q, cu_k, tq, tk, *, causal=True, window=None):
    """Bool ``[tq, tk]`` mask: same segment, causal (bottom-right per segment), within the window."""
    cu_q, cu_k = cu_q.long(), cu_k.long()
    iq, ik = torch.arange(tq, device=cu_q.device), torch.arange(tk, device=cu_q.device)
    sq = torch.searchsorted(cu_q[1:], iq, right=True).clamp_max(cu_q.numel() - 2)
    sk = torch.searchsorted(cu_k[1:], ik, right=True).clamp_max(cu_k.numel() - 2)
    # Position of each query inside its segment, shifted so the last query meets the last key.
    qpos = iq - cu_q[sq] + ((cu_k[sq + 1] - cu_k[sq]) - (cu_q[sq + 1] - cu_q[sq]))
    kpos = ik - cu_k[sk]
    mask = sq[:, None] == sk[None, :]
    if causal:
        mask = mask & (kpos[None, :] <= qpos[:, None])
    if window is not None:
        dist = qpos[:, None] - kpos[None, :]
        mask = mask & (dist < window) & (causal or dist > -window)
    return mask
