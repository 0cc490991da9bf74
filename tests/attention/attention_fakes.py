"""Stand-ins for the fused varlen kernels, so the dispatcher's choices and calls are checked on CPU.

Each fake has its real counterpart's signature, checks what the real kernel demands of its arguments
(int32 cu_seqlens, int lengths, tuple windows, ...), records the call in ``CALLS`` and returns an
independent float64 reference, so a wrong argument shows up as a wrong result too. ``install`` puts a
chosen set of them in place of what ``warppack.attention.kernels`` found and makes CPU tensors count as
CUDA ones of a given compute capability.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import torch

from warppack.attention import capabilities, dispatch, kernels, registry

CALLS: List[Dict[str, Any]] = []


def reference(q, k, v, lengths, *, causal=True, window=None, softcap=None, sinks=None, scale=None):
    """Per-sequence attention in float64, written out independently of warppack."""
    outs, start = [], 0
    groups = q.shape[1] // k.shape[1]
    for n in lengths:
        if n == 0:
            continue
        qs, ks, vs = (x[start:start + n].double().transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        scores = qs @ ks.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool)
        if window is not None:
            allowed &= (i - j).abs() < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            scores = torch.cat([scores, sinks.double()[:, None, None].expand(-1, n, 1)], -1)
        probs = scores.softmax(-1)[..., :n]
        outs.append((probs @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs).float()


def qkv(total, hq=4, hkv=2, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(total, h, d, generator=gen) for h in (hq, hkv, hkv)]


def cu_of(lengths):
    return torch.tensor([0] + list(lengths)).cumsum(0).to(torch.int32)


def _check_varlen(q, k, v, cu_q, cu_k, max_q, max_k) -> List[int]:
    """What every flash kernel demands of a varlen call; returns the query lengths."""
    assert q.dim() == k.dim() == v.dim() == 3 and q.shape[0] == cu_q[-1] and k.shape[0] == cu_k[-1]
    assert q.shape[1] % k.shape[1] == 0 and k.shape[:2] == v.shape[:2] and q.dtype == k.dtype == v.dtype
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    for cu, t, longest in ((cu_q, q, max_q), (cu_k, k, max_k)):
        assert cu.dtype == torch.int32 and cu.dim() == 1 and cu.device == t.device and cu.is_contiguous()
        assert int(cu[0]) == 0 and bool((cu[1:] >= cu[:-1]).all())
        assert type(longest) is int and longest >= int((cu[1:] - cu[:-1]).max())  # schemas: int, not a tensor
    return (cu_q[1:] - cu_q[:-1]).tolist()


def _window_of(pair: Tuple[Any, Any], causal: bool) -> Optional[int]:
    """transformers' window from a (left, right) flash pair; checks the pair is what the layer means."""
    left, right = pair
    assert type(pair) is tuple and len(pair) == 2
    if left is None or left < 0:
        assert right in ((0, None, -1) if causal else (None, -1))
        return None
    assert type(left) is int and right == (0 if causal else left)
    return left + 1


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn 2.6-2.8 (FlashAttention-2)."""
    lengths = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    assert type(dropout_p) is float and type(softmax_scale) is float and type(causal) is bool
    assert type(softcap) is float and softcap >= 0.0 and alibi_slopes is None and block_table is None
    assert not deterministic and not return_attn_probs
    window = _window_of(window_size, causal)
    CALLS.append(dict(kernel="flash_attn", dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                      window_size=window_size, softcap=softcap, hq=q.shape[1], hkv=k.shape[1],
                      cu_seqlens_q=cu_seqlens_q.tolist(), max_seqlen_q=max_seqlen_q))
    return reference(q, k, v, lengths, causal=causal, window=window, softcap=softcap or None, scale=softmax_scale)


def flash_attn_3_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                             seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                             v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                             pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    """FlashAttention-3's ``flash_attn_interface.flash_attn_varlen_func`` (no dropout, no sinks)."""
    lengths = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    assert type(softmax_scale) is float and type(causal) is bool and type(softcap) is float
    assert seqused_q is seqused_k is qv is None and attention_chunk == 0 and not return_attn_probs
    window = _window_of(window_size, causal)
    CALLS.append(dict(kernel="flash_attn_3", softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                      softcap=softcap, hq=q.shape[1], hkv=k.shape[1]))
    return reference(q, k, v, lengths, causal=causal, window=window, softcap=softcap or None, scale=softmax_scale)


def _grads(ctx, dout, *, window, with_sink):
    """The reference's gradients for a fake's backward (float64 autograd through ``reference``)."""
    q, k, v, sink = ctx.saved_tensors
    lengths, causal, _, softcap, scale = ctx.args
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        sinks = None if sink is None else sink.detach().requires_grad_()
        out = reference(*inputs, lengths, causal=causal, window=window, softcap=softcap or None, sinks=sinks,
                        scale=scale)
        wrt = inputs + ([sinks] if with_sink and sinks is not None else [])
        return torch.autograd.grad(out, wrt, dout)


class FlashAttnVarlenFunc(torch.autograd.Function):
    """flash-attn-4 4.0.0b36's autograd function: its backward takes the window, softcap and sinks."""

    @staticmethod
    def forward(ctx, q, k, v, learnable_sink, lengths, causal, window, softcap, scale):
        ctx.save_for_backward(q, k, v, learnable_sink)
        ctx.args, ctx.window_size, ctx.softcap = (lengths, causal, window, softcap, scale), window, softcap
        return reference(q, k, v, lengths, causal=causal, window=window, softcap=softcap or None,
                         sinks=learnable_sink, scale=scale)

    @staticmethod
    def backward(ctx, dout):
        dq, dk, dv, *dsink = _grads(ctx, dout, window=ctx.window_size, with_sink=True)
        return dq, dk, dv, (dsink or [None])[0], None, None, None, None, None


class EarlyFlashAttnVarlenFunc(FlashAttnVarlenFunc):
    """flash-attn-4 releases before 4.0.0b36, as upstream's ``flash_attn/cute/interface.py`` read: the
    backward asserts softcap is 0, passes no window and returns no gradient for the sinks."""

    @staticmethod
    def backward(ctx, dout, *args):
        assert ctx.softcap == 0.0
        dq, dk, dv = _grads(ctx, dout, window=None, with_sink=False)  # the window dropped, as those did
        return dq, dk, dv, *((None,) * 6)


def _flash_attn_bwd_b36(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0,
                        window_size_left=None, window_size_right=None, learnable_sink=None):
    """4.0.0b36's ``_flash_attn_bwd``: its dedicated Blackwell head-dim-256 path refuses softcap."""
    assert softcap == 0.0, "SM100 backward with head_dim=256 does not support softcap"


def _flash_attn_bwd_early(q, k, v, out, dout, lse, softmax_scale=None, causal=False, softcap=0.0):
    """Early ``_flash_attn_bwd``."""


#: The ``flash_attn.cute.interface`` modules ``describe_fa4`` reads: 4.0.0b36 and an earlier release.
FA4_B36 = SimpleNamespace(FlashAttnVarlenFunc=FlashAttnVarlenFunc, _flash_attn_bwd=_flash_attn_bwd_b36,
                          _LEARNABLE_SINK_DTYPES=(torch.float16, torch.bfloat16, torch.float32))
FA4_EARLY = SimpleNamespace(FlashAttnVarlenFunc=EarlyFlashAttnVarlenFunc, _flash_attn_bwd=_flash_attn_bwd_early)


def _fa4_varlen(interface, q, k, v, qv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, min_seqlen_k,
                seqused_q, seqused_k, gather_kv_indices, page_table, softmax_scale, causal, window_size,
                learnable_sink, softcap, num_splits, pack_gqa, deterministic, score_mod, return_lse):
    lengths = _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    assert type(softmax_scale) is float and type(causal) is bool and type(softcap) is float
    assert qv is None and page_table is None and score_mod is None and seqused_k is None
    if learnable_sink is not None:
        assert learnable_sink.shape == (q.shape[1],)
        assert learnable_sink.dtype in getattr(interface, "_LEARNABLE_SINK_DTYPES", (torch.bfloat16,))
    window = _window_of(window_size, causal)
    CALLS.append(dict(kernel="flash_attn_4", softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                      softcap=softcap, sinks=learnable_sink, hq=q.shape[1], hkv=k.shape[1]))
    out = interface.FlashAttnVarlenFunc.apply(q, k, v, learnable_sink, lengths, causal, window, softcap,
                                              softmax_scale)
    return out, torch.zeros(q.shape[1], q.shape[0])


def flash_attn_4_varlen_func(q, k, v, qv=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                             max_seqlen_k=None, min_seqlen_k=None, seqused_q=None, seqused_k=None,
                             gather_kv_indices=None, page_table=None, softmax_scale=None, causal=False,
                             window_size=(None, None), learnable_sink=None, softcap=0.0, num_splits=1,
                             pack_gqa=None, deterministic=False, score_mod=None, return_lse=False):
    """flash-attn-4 4.0.0b36's ``flash_attn.cute.flash_attn_varlen_func``: returns ``(out, lse)``."""
    return _fa4_varlen(FA4_B36, **locals())


def early_flash_attn_4_varlen_func(*args, **kwargs):
    """An earlier release's ``flash_attn_varlen_func``: the same arguments, ``FA4_EARLY``'s backward."""
    bound = inspect.signature(flash_attn_4_varlen_func).bind(*args, **kwargs)
    bound.apply_defaults()
    return _fa4_varlen(FA4_EARLY, **bound.arguments)


early_flash_attn_4_varlen_func.__signature__ = inspect.signature(flash_attn_4_varlen_func)  # type: ignore


def varlen_attn_211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1), enable_gqa=False):
    """torch >= 2.11's ``varlen_attn``: a *list* window_size would silently be non-causal."""
    lengths = _check_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)
    assert enable_gqa or query.shape[1] == key.shape[1]
    left, right = window_size
    CALLS.append(dict(kernel="torch_varlen", scale=scale, window_size=window_size, enable_gqa=enable_gqa))
    assert type(window_size) is tuple
    return reference(query, key, value, lengths, causal=right == 0, window=None if left < 0 else left + 1,
                     scale=scale)


def varlen_attn_210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10's ``varlen_attn``: is_causal, no window, no GQA, no scale argument."""
    lengths = _check_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)
    assert query.shape[1] == key.shape[1]
    CALLS.append(dict(kernel="torch_varlen", is_causal=is_causal))
    return reference(query, key, value, lengths, causal=is_causal)


def aten_flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *,
                                 scale=None, window_size_left=None, window_size_right=None):
    """``aten._flash_attention_forward``: no GQA (heads must be expanded), dropout taken."""
    lengths = _check_varlen(q, k, v, cu_q, cu_k, max_q, max_k)
    assert q.shape[1] == k.shape[1] and not return_debug_mask
    CALLS.append(dict(kernel="aten_flash", dropout_p=dropout_p, window_size_left=window_size_left,
                      window_size_right=window_size_right))
    window = None if window_size_left is None else window_size_left + 1
    out = reference(q, k, v, lengths, causal=is_causal, window=window, scale=scale)
    return out, None, None, None, None


#: Every fake, as ``warppack.attention.kernels.found()`` describes the real kernels.
ALL = {
    "flash_attn_4": lambda: capabilities.describe_fa4(flash_attn_4_varlen_func, FA4_B36),
    "torch_fa4": lambda: (True, None),
    "flash_attn_3": lambda: capabilities.describe_flash(flash_attn_3_varlen_func),
    "flash_attn": lambda: capabilities.describe_flash(flash_attn_varlen_func),
    "torch_varlen": lambda: capabilities.describe_torch_varlen(varlen_attn_211),
    "aten_flash": lambda: (aten_flash_attention_forward, True),
}


def install(monkeypatch, *names: str, capability=(9, 0), route: Optional[str] = None, **entries: Any) -> None:
    """Make ``names`` (fakes) and ``entries`` (name -> found entry) the installed kernels; CPU tensors count as
    CUDA of ``capability`` and float32 as half precision (the fakes compute in float64 anyway); torch's
    flash attention is routed to ``route``."""
    found = {name: None for name in ALL}
    found.update({name: ALL[name]() for name in names})
    found.update(entries)
    monkeypatch.setattr(kernels, "_FOUND", found)
    monkeypatch.setattr(kernels, "route", lambda: route)
    monkeypatch.setattr(dispatch, "_device", lambda q: ("cuda", capability))
    monkeypatch.setattr(registry, "HALF", registry.HALF | {torch.float32})
    CALLS.clear()
