"""Padding-free attention: one dispatcher over varlen kernels, and ``attn_implementation="warppack"``.

``varlen_attention`` runs causal attention over sequences laid end to end (``cu_seqlens``) with the
fastest kernel that can do *exactly* what the layer asks (GQA, sliding window, softcapping, dropout,
attention sinks); a kernel lacking a feature is skipped, never used approximately. Order:
flash-attn → ``torch.nn.attention.varlen.varlen_attn`` → ``aten._flash_attention_forward`` → exact
SDPA per segment (block-diagonal under ``torch.compile``). ``attention_backend()`` names the last one.

>>> import torch, warppack
>>> q = k = v = torch.randn(5, 2, 8)                  # 5 tokens = sequences of 3 and 2, 2 heads
>>> out = warppack.varlen_attention(q, k, v, torch.tensor([0, 3, 5], dtype=torch.int32))
>>> out.shape, warppack.attention_backend()
(torch.Size([5, 2, 8]), 'exact_segments')
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import sys
import weakref

import torch
import torch.nn.functional as F

KERNELS = ("flash_attn", "torch_varlen", "aten_flash", "exact_segments", "exact_block_diagonal")
BACKENDS = KERNELS + ("exact_masked", "exact_dense")
_state = {"last": None, "forced": None}
_HALF = (torch.float16, torch.bfloat16)


def attention_backend() -> str | None:
    """Name of the kernel the last warppack attention call ran (``None`` before the first call).

    Not updated inside ``torch.compile`` graphs (a Python side effect); run one eager step to look.
    """
    return _state["last"]


def set_attention_backend(name: str | None) -> None:
    """Force one of ``warppack._attention.KERNELS`` for packed batches (``None``: choose automatically).

    A forced kernel that cannot run a layer's features exactly raises instead of approximating.
    """
    if name is not None and name not in KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {KERNELS} or None (automatic)")
    _state["forced"] = name


def _compiling() -> bool:
    fn = getattr(torch.compiler, "is_compiling", None) or getattr(torch._dynamo, "is_compiling", None)
    return bool(fn and fn())


def _record(name: str) -> None:
    if not _compiling():
        _state["last"] = name


# ---- kernel discovery: by feature (signature / schema), never by version number alone ----------------
def _find_flash_attn():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # not installed, or built for another CUDA/torch: treat as absent
        return None
    return flash_attn_varlen_func, "softcap" in inspect.signature(flash_attn_varlen_func).parameters


def _find_torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return _describe_torch_varlen(varlen_attn)


def _describe_torch_varlen(fn):
    params = inspect.signature(fn).parameters  # 2.10: (..., is_causal, return_aux) only
    return fn, "window_size" in params, "enable_gqa" in params, "scale" in params


def _find_aten_flash():
    try:
        op = torch.ops.aten._flash_attention_forward
    except (AttributeError, RuntimeError):
        return None
    names = {a.name for a in op.default._schema.arguments}
    return op, "window_size_left" in names


_FOUND = None


def _kernels() -> dict:
    """Kernels found, looked up once. Not at ``import warppack``: ``torch.nn.attention.varlen`` pulls in
    torch._dynamo (seconds). It runs when transformers registers us or on the first call; inside a
    torch.compile graph the result is then a plain constant (nothing to trace, no graph break)."""
    global _FOUND
    if _FOUND is None:
        _FOUND = {"flash_attn": _find_flash_attn(), "torch_varlen": _find_torch_varlen(),
                  "aten_flash": _find_aten_flash()}
    return _FOUND


def _torch_varlen_mode(has_window_size: bool, *, causal: bool, window: int | None) -> dict | None:
    """Keyword arguments that make ``varlen_attn`` causal/windowed, or None if this torch cannot.

    torch 2.10 takes ``is_causal=``; 2.11+ takes ``window_size=(left, right)`` and tests it with
    ``== (-1, 0)``: it must be a *tuple*, a list silently runs non-causal attention.
    """
    if has_window_size:
        left = -1 if window is None else window - 1  # transformers' window counts the token itself
        right = 0 if causal else (-1 if window is None else window - 1)
        return {"window_size": (int(left), int(right))}
    if window is not None:
        return None
    return {"is_causal": causal}


def _fused_ok(q) -> bool:
    # What every FlashAttention-2 build needs: CUDA, half precision, head_dim a multiple of 8 up to 256.
    return q.is_cuda and q.dtype in _HALF and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256


def _can_run(name, q, k, *, window, softcap, dropout, sinks) -> bool:
    if name in ("exact_segments", "exact_block_diagonal"):
        return True
    if not _fused_ok(q) or sinks is not None:
        return False
    if name == "flash_attn":
        found = _kernels()["flash_attn"]
        return found is not None and (softcap is None or found[1])
    if softcap is not None:
        return False
    if name == "torch_varlen":
        found = _kernels()["torch_varlen"]
        return found is not None and dropout == 0.0 and (window is None or found[1])
    found = _kernels()["aten_flash"]
    return found is not None and (window is None or found[1])


def _repeat_heads(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    # Same expansion as transformers' repeat_kv, so GQA results match the reference bit for bit.
    return x if n == 1 else torch.repeat_interleave(x, n, dim=dim)


def varlen_attention(query, key, value, cu_seqlens_q, cu_seqlens_k=None, max_seqlen_q=None,
                     max_seqlen_k=None, *, causal=True, scale=None, sliding_window=None, softcap=None,
                     dropout=0.0, sinks=None):
    """Attention of ``query [Tq, Hq, D]`` over ``key/value [Tk, Hkv, D]`` within each cu_seqlens segment.

    ``cu_seqlens_*`` are int32 ``[n+1]`` offsets (zero-length segments allowed, e.g. a static-shape tail
    repeating T). ``max_seqlen_*`` may be any upper bound (default: T, which needs no device sync).
    Causal alignment is bottom-right, window semantics are transformers' (``sliding_window`` keys, self
    included). Returns ``[Tq, Hq, D]``.
    """
    cu_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
    feats = dict(window=sliding_window, softcap=softcap, dropout=dropout, sinks=sinks)
    forced = _state["forced"]
    names = (forced,) if forced else KERNELS
    name = next((n for n in names if _can_run(n, query, key, **feats)), None)
    if name is None:
        wanted = {k: v for k, v in feats.items() if v not in (None, 0.0)}
        raise ValueError(
            f"attention backend {forced!r} (set_attention_backend) cannot run this layer exactly "
            f"(device={query.device.type}, dtype={query.dtype}, features={sorted(wanted)}); "
            "call warppack.set_attention_backend(None) to let warppack choose")
    if name == "exact_segments" and _compiling():
        name = "exact_block_diagonal"  # host-side segment loop would specialise the graph on lengths
    _record(name)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if name.startswith("exact"):
        fn = _exact_block_diagonal if name == "exact_block_diagonal" else _exact_segments
        return fn(query, key, value, cu_seqlens_q, cu_k, causal=causal, scale=scale, window=sliding_window,
                  softcap=softcap, dropout=dropout, sinks=sinks)
    if _compiling():  # static shapes: no host sync, the caller's bound (static_shape: the budget) stays
        cu_q = cu_seqlens_q.to(device=query.device, dtype=torch.int32)
        cu_k = cu_q if cu_k is cu_seqlens_q else cu_k.to(device=query.device, dtype=torch.int32)
        max_q = int(query.shape[0] if max_seqlen_q is None else max_seqlen_q)
        max_k = int(key.shape[0] if max_seqlen_k is None else max_seqlen_k)
    else:  # eager: empty segments dropped, real longest segment; once per cu tensor, not per layer
        cu_q, cu_k, max_q, max_k = _tight.get(cu_seqlens_q, cu_k, query, key)
    if name == "flash_attn":
        fn = _kernels()["flash_attn"][0]
        left = -1 if sliding_window is None else sliding_window - 1
        extra = {"softcap": softcap} if softcap is not None else {}
        return fn(query, key, value, cu_q, cu_k, max_q, max_k, dropout_p=dropout, softmax_scale=scale,
                  causal=causal, window_size=(left, 0 if causal else left), **extra)
    groups = query.shape[1] // key.shape[1]
    if name == "torch_varlen":
        fn, has_window, has_gqa, has_scale = _kernels()["torch_varlen"]
        if groups > 1 and not has_gqa:
            key, value = _repeat_heads(key, groups, 1), _repeat_heads(value, groups, 1)
        extra = _torch_varlen_mode(has_window, causal=causal, window=sliding_window)
        if groups > 1 and has_gqa:
            extra["enable_gqa"] = True
        if has_scale:
            extra["scale"] = scale
        elif scale != query.shape[-1] ** -0.5:  # no scale argument (2.10): fold it into the queries
            query = query * (scale * query.shape[-1] ** 0.5)
        return fn(query, key, value, cu_q, cu_k, max_q, max_k, **extra)
    op, _ = _kernels()["aten_flash"]
    key, value = _repeat_heads(key, groups, 1), _repeat_heads(value, groups, 1)
    win = {}
    if sliding_window is not None:
        win = {"window_size_left": sliding_window - 1, "window_size_right": 0 if causal else sliding_window - 1}
    return op(query, key, value, cu_q, cu_k, max_q, max_k, dropout, causal, False, scale=scale, **win)[0]


# ---- exact paths (any device, any dtype) ----------------------------------------------------------------
def _attend(q, k, v, *, mask, causal, scale, window, softcap, dropout, sinks):
    """Dense attention on ``[B, H, Lq, D]``; ``mask`` (bool, True = attend, or additive float) wins."""
    lq, lk = q.shape[-2], k.shape[-2]
    k, v = _repeat_heads(k, q.shape[1] // k.shape[1], 1), _repeat_heads(v, q.shape[1] // v.shape[1], 1)
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


class _HostCache:
    """cu_seqlens as a Python list, computed once per tensor (every layer passes the same object)."""

    def __init__(self):
        self._ref, self._version, self._value = None, None, None

    def get(self, t: torch.Tensor, fn):
        if self._ref is not None and self._ref() is t and self._version == t._version:
            return self._value
        value = fn(t)
        self._ref, self._version, self._value = weakref.ref(t), t._version, value
        return value


_cu_host, _cu_host_k, _posid_cache = _HostCache(), _HostCache(), _HostCache()


class _TightSegments:
    """Eager fused path: cu_seqlens without empty segments and the real longest segment, per (cu_q, cu_k).

    The fused kernels launch ``segments x ceil(max_seqlen / block) x heads`` blocks (and size backward
    buffers by them): a static_shape batch (max_length = the whole budget, hundreds of empty tail
    segments) launched ~1000x more blocks than needed, in every layer, forward and backward. One host
    read of cu_seqlens per batch (every layer passes the same tensors; cached on their identity and
    version) gives the tight values; the kernels' autograd saves them, so backward needs nothing more.
    """

    def __init__(self):
        self._refs, self._versions, self._value = None, None, None

    def get(self, cu_q, cu_k, query, key):
        if (self._refs is not None and self._refs[0]() is cu_q and self._refs[1]() is cu_k
                and self._versions == (cu_q._version, cu_k._version)
                and self._value[0].device == query.device):
            return self._value
        both = cu_q if cu_k is cu_q else torch.stack([cu_q.reshape(-1), cu_k.reshape(-1).to(cu_q.dtype)])
        host = both.tolist()  # the one device->host read per batch
        hq, hk = (host, host) if cu_k is cu_q else host
        if hq[0] != 0 or hk[0] != 0 or hq[-1] != query.shape[0] or hk[-1] != key.shape[0] or len(hq) != len(hk):
            raise ValueError(
                f"cu_seqlens must run from 0 to the token count: got {hq[0]}..{hq[-1]} for {query.shape[0]} "
                f"query tokens and {hk[0]}..{hk[-1]} for {key.shape[0]} key tokens; pass the "
                "cu_seq_lens_q/k of the same PackedBatch as input_ids")
        keep = [0] + [i for i in range(1, len(hq)) if hq[i] != hq[i - 1] or hk[i] != hk[i - 1]]
        if len(keep) == 1:
            keep.append(len(hq) - 1)  # no tokens at all: one empty segment keeps the kernels' shapes valid
        tq, tk = [hq[i] for i in keep], [hk[i] for i in keep]
        max_q = max(max(b - a for a, b in zip(tq[:-1], tq[1:])), 1)
        max_k = max(max(b - a for a, b in zip(tk[:-1], tk[1:])), 1)
        dev = query.device
        if len(keep) == len(hq) and cu_q.device == dev and cu_q.dtype == torch.int32:
            new_q = cu_q  # nothing dropped: no copy
        else:
            new_q = torch.tensor(tq, dtype=torch.int32, device=dev)
        if cu_k is cu_q or tk == tq:
            new_k = new_q
        elif len(keep) == len(hk) and cu_k.device == dev and cu_k.dtype == torch.int32:
            new_k = cu_k
        else:
            new_k = torch.tensor(tk, dtype=torch.int32, device=dev)
        self._refs, self._versions = (weakref.ref(cu_q), weakref.ref(cu_k)), (cu_q._version, cu_k._version)
        self._value = (new_q, new_k, max_q, max_k)
        return self._value


_tight = _TightSegments()


def _exact_segments(q, k, v, cu_q, cu_k, **kw):
    starts_q = _cu_host.get(cu_q, lambda t: [int(x) for x in t.tolist()])
    starts_k = starts_q if cu_k is cu_q else _cu_host_k.get(cu_k, lambda t: [int(x) for x in t.tolist()])
    if starts_q[0] != 0 or starts_q[-1] != q.shape[0] or starts_k[-1] != k.shape[0]:
        raise ValueError(
            f"cu_seqlens must run from 0 to the token count: got {starts_q[0]}..{starts_q[-1]} for "
            f"{q.shape[0]} query tokens and ..{starts_k[-1]} for {k.shape[0]} key tokens; pass the "
            "cu_seq_lens_q/k of the same PackedBatch as input_ids")
    outs = []
    for s, e, sk, ek in zip(starts_q[:-1], starts_q[1:], starts_k[:-1], starts_k[1:]):
        if e > s:  # zero-length segments (static-shape tail) have nothing to compute
            one = lambda x, a, b: x[a:b].transpose(0, 1).unsqueeze(0)  # noqa: E731 - [1, H, L, D]
            outs.append(_attend(one(q, s, e), one(k, sk, ek), one(v, sk, ek), mask=None, **kw)[0])
    return torch.cat(outs, dim=1).transpose(0, 1)


def _exact_block_diagonal(q, k, v, cu_q, cu_k, *, causal, window, **kw):
    # Static shapes only (no host sync, no data-dependent loop), so torch.compile keeps one graph.
    mask = segment_mask(cu_q.to(q.device), cu_k.to(q.device), q.shape[0], k.shape[0], causal=causal,
                        window=window)
    out = _attend(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], mask=mask,
                  causal=causal, window=None, **kw)
    return out[0].transpose(0, 1)


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


# ---- transformers integration -----------------------------------------------------------------------------
def _seg_ids(cu: torch.Tensor, n: int) -> torch.Tensor:
    return torch.searchsorted(cu.long()[1:], torch.arange(n, device=cu.device), right=True)


def _packed_from_position_ids(position_ids, batch: int, length: int):
    """cu_seqlens over the flattened rows where positions restart; None for one sequence per row.

    Under torch.compile this returns a bool ``[B, L]`` "new sequence starts here" instead (no host sync).
    """
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != length:
        return None
    pos = position_ids.expand(batch, -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1  # transformers' own packed-sequence rule
    if _compiling():
        return starts

    def host(_):
        if not bool(starts[:, 1:].any()):
            return None
        idx = starts.reshape(-1).nonzero().flatten()
        return torch.cat([idx, idx.new_tensor([starts.numel()])]).to(torch.int32)

    return _posid_cache.get(position_ids, host)


def _row_mask(seg: torch.Tensor, causal: bool, window) -> torch.Tensor:
    """[B, 1, L, L] bool from per-row segment ids: same segment, causal, within the window."""
    i = torch.arange(seg.shape[-1], device=seg.device)
    dist = i[:, None] - i[None, :]
    mask = seg[:, :, None] == seg[:, None, :]
    if causal:
        mask = mask & (dist >= 0)
    if window is not None:
        mask = mask & (dist < window) & (causal or dist > -window)
    return mask[:, None]


def warppack_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                               sliding_window=None, softcap=None, is_causal=None, s_aux=None, **kwargs):
    """transformers ``AttentionInterface`` function: ``[B, H, L, D]`` in, ``([B, L, H, D], None)`` out.

    Packed rows (``cu_seq_lens_q/k`` in the kwargs, or restarting ``position_ids``) go through
    ``varlen_attention``; a 4-D mask (padding, KV cache, custom patterns) takes the exact masked path.
    """
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    b, hq, lq, _ = query.shape
    lk = key.shape[2]
    feats = dict(scale=scaling if scaling is not None else query.shape[-1] ** -0.5, softcap=softcap,
                 dropout=dropout, sinks=s_aux)
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and attention_mask is None and lq == lk:
        found = _packed_from_position_ids(kwargs.get("position_ids"), b, lq)
        if found is not None and found.dtype == torch.bool:  # compiling: block-diagonal rows instead
            attention_mask = _row_mask(found.cumsum(-1), causal, sliding_window)
        elif found is not None:
            cu_q = cu_k = found
    if cu_q is not None and attention_mask is None:
        flat = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[-1])  # noqa: E731
        out = varlen_attention(flat(query), flat(key), flat(value), cu_q, cu_q if cu_k is None else cu_k,
                               kwargs.get("max_length_q"), kwargs.get("max_length_k"), causal=causal,
                               sliding_window=sliding_window, **feats)
        return out.view(b, lq, hq, -1), None
    if attention_mask is not None:
        if cu_q is not None and lq == lk and attention_mask.dtype == torch.bool:
            # Padded *and* packed rows: the padding mask alone would let sequences see each other.
            attention_mask = attention_mask & _row_mask(_seg_ids(cu_q, b * lq).view(b, lq), causal, None)
        _record("exact_masked")
        out = _attend(query, key, value, mask=attention_mask, causal=causal, window=None, **feats)
    else:
        _record("exact_dense")
        out = _attend(query, key, value, mask=None, causal=causal, window=sliding_window, **feats)
    return out.transpose(1, 2).contiguous(), None


def warppack_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                  attention_mask=None, **kwargs):
    """transformers ``AttentionMaskInterface`` function: no mask at all unless one is really needed.

    Packed or unpadded rows without a cache get ``None`` (the attention reads cu_seqlens instead of an
    O(T^2) mask). Padding, a KV cache, chunked or custom patterns get transformers' exact boolean mask.
    """
    mu = _MASKING_UTILS or importlib.import_module("transformers.masking_utils")
    mask_function = mu.causal_mask_function if mask_function is None else mask_function
    config = kwargs.get("config")
    plain = (not kwargs.get("use_vmap", False) and mask_function is not getattr(mu, "bidirectional_mask_function", None)
             and getattr(config, "is_causal", True) and getattr(config, "attention_chunk_size", None) is None
             and isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == kv_offset == 0
             and q_length == kv_length)
    if plain and (attention_mask is None or (attention_mask.dim() == 2 and attention_mask.shape[-1] == kv_length
                                             and bool(attention_mask.all()))):
        return None
    kwargs = {k: v for k, v in kwargs.items() if k not in ("allow_is_causal_skip", "allow_is_bidirectional_skip")}
    return mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                        allow_is_causal_skip=False, allow_is_bidirectional_skip=False, **kwargs)


def _register_function(module) -> None:
    module.AttentionInterface.register("warppack", warppack_attention_forward)
    _kernels()  # transformers already imported torch._dynamo: cheap now, and settled before any compile


_MASKING_UTILS = None  # set at registration: an import inside warppack_mask breaks torch.compile graphs
# (transformers' _LazyModule: "Bad import result", seen as 3 graphs instead of 1 on GPU)


def _register_mask(module) -> None:
    global _MASKING_UTILS
    _MASKING_UTILS = module
    module.AttentionMaskInterface.register("warppack", warppack_mask)


def register_attention() -> None:
    """Make ``attn_implementation="warppack"`` available to transformers (idempotent; ``import warppack``
    already does this when transformers is installed).

    >>> import warppack; warppack.register_attention()
    """
    from transformers import masking_utils, modeling_utils

    _register_function(modeling_utils)
    _register_mask(masking_utils)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after a named module finishes importing, then steps aside.

    Importing transformers' modeling utilities costs seconds, so ``import warppack`` does not do it:
    the registration happens when the user's own code imports them.
    """

    def __init__(self, callbacks):
        self.callbacks = callbacks

    def find_spec(self, name, path, target=None):
        callback = self.callbacks.pop(name, None)
        if callback is None:
            return None
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the real finders (this one no longer matches the name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _ThenCall(spec.loader, callback)
        return spec


class _ThenCall(importlib.abc.Loader):
    def __init__(self, loader, callback):
        self.loader, self.callback = loader, callback

    def __getattr__(self, name):  # get_source, get_filename, ... for inspect and linecache
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.callback(module)


def _register_on_import() -> None:
    """Called by ``import warppack``: register now, or as soon as transformers is imported."""
    if importlib.util.find_spec("transformers") is None:
        return
    pending = {}
    for name, callback in (("transformers.modeling_utils", _register_function),
                           ("transformers.masking_utils", _register_mask)):
        if name in sys.modules:
            callback(sys.modules[name])
        else:
            pending[name] = callback
    if pending:
        sys.meta_path.insert(0, _AfterImport(pending))
