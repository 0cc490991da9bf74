"""Padding-free attention: one dispatcher over the varlen kernels, and which one ran.

``varlen_attention`` runs causal attention over sequences laid end to end (``cu_seqlens``) with the
fastest kernel that can do *exactly* what the layer asks (GQA, sliding window, softcapping, dropout,
attention sinks); a kernel lacking a feature is skipped, never used approximately. Order:
flash-attn → ``torch.nn.attention.varlen.varlen_attn`` → ``aten._flash_attention_forward`` → exact
SDPA per segment (block-diagonal under ``torch.compile``). ``attention_backend()`` names the last one.
The exact paths live in ``warppack.attention.exact``, ``attn_implementation="warppack"`` in
``warppack.attention.hf`` (and where its layers find their boundaries in ``warppack.attention.boundaries``).

>>> import torch, warppack
>>> q = k = v = torch.randn(5, 2, 8)                  # 5 tokens = sequences of 3 and 2, 2 heads
>>> out = warppack.varlen_attention(q, k, v, torch.tensor([0, 3, 5], dtype=torch.int32))
>>> out.shape, warppack.attention_backend()
(torch.Size([5, 2, 8]), 'exact_segments')
"""

from __future__ import annotations

import importlib.util
import inspect
import weakref
from typing import Any, Optional

import torch

from warppack.attention.exact import (
    exact_block_diagonal,
    exact_segments,
    repeat_heads,
)

KERNELS = ("flash_attn", "torch_varlen", "aten_flash", "exact_segments", "exact_block_diagonal")
_state: dict[str, Optional[str]] = {"last": None, "forced": None}
_HALF = (torch.float16, torch.bfloat16)


def attention_backend() -> Optional[str]:
    """Name of the kernel the last warppack attention call ran (``None`` before the first call).

    Not updated inside ``torch.compile`` graphs (a Python side effect); run one eager step to look.
    """
    return _state["last"]


def forced_attention_backend() -> Optional[str]:
    """The kernel forced by ``set_attention_backend`` (``None``: chosen automatically)."""
    return _state["forced"]


def set_attention_backend(name: Optional[str]) -> None:
    """Force one of ``warppack.attention.dispatch.KERNELS`` for packed batches (``None``: choose automatically).

    A forced kernel that cannot run a layer's features exactly raises instead of approximating.
    """
    if name is not None and name not in KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {KERNELS} or None (automatic)")
    _state["forced"] = name


def compiling() -> bool:
    fn = getattr(torch.compiler, "is_compiling", None) or getattr(torch._dynamo, "is_compiling", None)
    return bool(fn and fn())


def _record(name: str) -> None:
    if not compiling():
        _state["last"] = name


# ---- kernel discovery: by feature (signature / schema), never by version number alone ----------------
def _find_flash_attn():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # not installed, or built for another CUDA/torch: treat as absent
        return None
    return _describe_flash_attn(flash_attn_varlen_func)


def _describe_flash_attn(fn):
    params = inspect.signature(fn).parameters  # softcap: flash-attn >= 2.6; window_size: >= 2.3
    return fn, "softcap" in params, "window_size" in params


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


_FOUND: Optional[dict] = None


def _kernels() -> dict:
    """Kernels found, looked up once. Not at ``import warppack``: ``torch.nn.attention.varlen`` pulls in
    torch._dynamo (seconds). It runs when transformers registers us or on the first call; inside a
    torch.compile graph the result is then a plain constant (nothing to trace, no graph break)."""
    global _FOUND
    if _FOUND is None:
        _FOUND = {"flash_attn": _find_flash_attn(), "torch_varlen": _find_torch_varlen(),
                  "aten_flash": _find_aten_flash()}
    return _FOUND


def _torch_varlen_mode(has_window_size: bool, *, causal: bool, window: Optional[int]) -> Optional[dict]:
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
        return found is not None and (softcap is None or found[1]) and (window is None or found[2])
    if softcap is not None:
        return False
    if name == "torch_varlen":
        found = _kernels()["torch_varlen"]
        return found is not None and dropout == 0.0 and (window is None or found[1])
    found = _kernels()["aten_flash"]
    return found is not None and (window is None or found[1])


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: Optional[torch.Tensor] = None, max_seqlen_q: Optional[int] = None,
                     max_seqlen_k: Optional[int] = None, *, causal: bool = True, scale: Optional[float] = None,
                     sliding_window: Optional[int] = None, softcap: Optional[float] = None, dropout: float = 0.0,
                     sinks: Optional[torch.Tensor] = None) -> torch.Tensor:
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
    if name == "exact_segments" and compiling():
        name = "exact_block_diagonal"  # host-side segment loop would specialise the graph on lengths
    _record(name)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if name.startswith("exact"):
        fn = exact_block_diagonal if name == "exact_block_diagonal" else exact_segments
        return fn(query, key, value, cu_seqlens_q, cu_k, causal=causal, scale=scale, window=sliding_window,
                  softcap=softcap, dropout=dropout, sinks=sinks)
    if compiling():  # static shapes: no host sync, the caller's bound (static_shape: the budget) stays
        cu_q = cu_seqlens_q.to(device=query.device, dtype=torch.int32)
        cu_k = cu_q if cu_k is cu_seqlens_q else cu_k.to(device=query.device, dtype=torch.int32)
        max_q = int(query.shape[0] if max_seqlen_q is None else max_seqlen_q)
        max_k = int(key.shape[0] if max_seqlen_k is None else max_seqlen_k)
    else:  # eager: empty segments dropped, real longest segment; once per cu tensor, not per layer
        cu_q, cu_k, max_q, max_k = _tight.get(cu_seqlens_q, cu_k, query, key)
    if name == "flash_attn":  # GQA native: key/value keep their fewer heads
        fn, _, has_window = _kernels()["flash_attn"]
        extra: dict[str, Any] = {"softcap": softcap} if softcap is not None else {}
        if has_window:  # absent before flash-attn 2.3 (then _can_run refused windowed layers)
            left = -1 if sliding_window is None else sliding_window - 1
            extra["window_size"] = (left, 0 if causal else left)
        return fn(query, key, value, cu_q, cu_k, max_q, max_k, dropout_p=dropout, softmax_scale=scale,
                  causal=causal, **extra)
    groups = query.shape[1] // key.shape[1]
    if name == "torch_varlen":
        fn, has_window, has_gqa, has_scale = _kernels()["torch_varlen"]
        if groups > 1 and not has_gqa:
            key, value = repeat_heads(key, groups, 1), repeat_heads(value, groups, 1)
        extra = _torch_varlen_mode(has_window, causal=causal, window=sliding_window) or {}  # None: refused earlier
        if groups > 1 and has_gqa:
            extra["enable_gqa"] = True
        if has_scale:
            extra["scale"] = scale
        elif scale != query.shape[-1] ** -0.5:  # no scale argument (2.10): fold it into the queries
            query = query * (scale * query.shape[-1] ** 0.5)
        return fn(query, key, value, cu_q, cu_k, max_q, max_k, **extra)
    op, _ = _kernels()["aten_flash"]
    key, value = repeat_heads(key, groups, 1), repeat_heads(value, groups, 1)
    win = {}
    if sliding_window is not None:
        win = {"window_size_left": sliding_window - 1, "window_size_right": 0 if causal else sliding_window - 1}
    return op(query, key, value, cu_q, cu_k, max_q, max_k, dropout, causal, False, scale=scale, **win)[0]


class _TightSegments:
    """Eager fused path: cu_seqlens without empty segments and the real longest segment, per (cu_q, cu_k).

    The fused kernels launch ``segments x ceil(max_seqlen / block) x heads`` blocks (and size backward
    buffers by them): a static_shape batch (max_length = the whole budget, hundreds of empty tail
    segments) launched ~1000x more blocks than needed, in every layer, forward and backward. One host
    read of cu_seqlens per batch (every layer passes the same tensors; cached on their identity and
    version) gives the tight values; the kernels' autograd saves them, so backward needs nothing more.
    """

    def __init__(self) -> None:
        self._refs: Optional[tuple] = None
        self._versions: Optional[tuple] = None
        self._value: Any = None

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

