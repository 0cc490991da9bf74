"""Padding-free attention: one dispatcher over the varlen kernels, and which one ran.

``varlen_attention`` runs attention over sequences laid end to end (``cu_seqlens``) with the first kernel
of the intended order that can do *exactly* what the layer asks (GQA, sliding window, softcapping, dropout, attention
sinks, head dim, dtype, GPU generation); a kernel lacking one is skipped, never used approximately. The
order and what each kernel declares live in ``warppack.attention.registry`` (flash-attn-4 → torch's FA4
route → FlashAttention-3 → flash-attn → ``varlen_attn`` → ``aten._flash_attention_forward`` → exact SDPA
per segment, block-diagonal under ``torch.compile``), how each is found and called in
``warppack.attention.kernels``. ``attention_backend()`` names the one that ran last. The exact paths live in
``warppack.attention.exact``, ``attn_implementation="warppack"`` in ``warppack.attention.hf`` (and where its
layers find their boundaries in ``warppack.attention.boundaries``).

>>> import torch, warppack
>>> q = k = v = torch.randn(5, 2, 8)                  # 5 tokens = sequences of 3 and 2, 2 heads
>>> out = warppack.varlen_attention(q, k, v, torch.tensor([0, 3, 5], dtype=torch.int32))
>>> out.shape, warppack.attention_backend()
(torch.Size([5, 2, 8]), 'exact_segments')
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from warppack.attention import kernels
from warppack.attention.exact import exact_block_diagonal, exact_segments
from warppack.attention.host import TensorCache, checked_offsets, compiling
from warppack.attention.registry import ORDER, Layer, choose

#: Every kernel name, in the automatic order (``set_attention_backend`` takes these).
KERNELS = ORDER
_state: Dict[str, Optional[str]] = {"last": None, "forced": None}


def attention_backend() -> Optional[str]:
    """Name of the kernel the last warppack attention call ran since the last ``set_attention_backend``
    (``None`` before any call; ``forced_attention_backend()`` names a forced kernel).

    Not updated inside ``torch.compile`` graphs (a Python side effect); run one eager step to look.
    """
    return _state["last"]


def forced_attention_backend() -> Optional[str]:
    """The kernel forced by ``set_attention_backend`` (``None``: chosen automatically)."""
    return _state["forced"]


def set_attention_backend(name: Optional[str]) -> None:
    """Force one of ``warppack.attention.dispatch.KERNELS`` for packed batches (``None``: choose automatically).

    A forced kernel that cannot run a layer exactly (not installed, wrong device or dtype, a feature it
    lacks) raises a ValueError naming why at the call, instead of approximating.
    """
    if name is not None and name not in KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(KERNELS)}, or None "
                         "to let warppack choose")
    _state["forced"] = name
    _state["last"] = None


def _record(name: str) -> None:
    if not compiling():
        _state["last"] = name


_CAPABILITY: Dict[int, Tuple[int, int]] = {}


def _device(query: torch.Tensor) -> Tuple[str, Optional[Tuple[int, int]]]:
    """The layer's device type and CUDA compute capability (looked up once per GPU)."""
    if not query.is_cuda:
        return query.device.type, None
    if compiling():  # dynamo folds the properties to constants
        props = torch.cuda.get_device_properties(query.device)
        return "cuda", (props.major, props.minor)
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return "cuda", _CAPABILITY[index]


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
    in_graph = compiling()
    device, capability = _device(query)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (query, key, value, sinks))
    layer = Layer(device, capability, query.dtype, int(query.shape[-1]), int(value.shape[-1]), sliding_window,
                  softcap, dropout, sinks is not None, in_graph, grad, None if sinks is None else sinks.dtype)
    name = choose(layer, _state["forced"], kernels.installed)
    if name == "exact_segments" and in_graph:
        name = "exact_block_diagonal"  # host-side segment loop would specialise the graph on lengths
    _record(name)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if name.startswith("exact"):
        fn = exact_block_diagonal if name == "exact_block_diagonal" else exact_segments
        return fn(query, key, value, cu_seqlens_q, cu_k, causal=causal, scale=scale, window=sliding_window,
                  softcap=softcap, dropout=dropout, sinks=sinks)
    if in_graph:  # static shapes: no host sync, the caller's bound (static_shape: the budget) stays
        cu_q = cu_seqlens_q.to(device=query.device, dtype=torch.int32)
        cu_k = cu_q if cu_k is cu_seqlens_q else cu_k.to(device=query.device, dtype=torch.int32)
        max_q = int(query.shape[0] if max_seqlen_q is None else max_seqlen_q)
        max_k = int(key.shape[0] if max_seqlen_k is None else max_seqlen_k)
    else:  # eager: empty segments dropped, real longest segment; once per cu tensor, not per layer
        cu_q, cu_k, max_q, max_k = _tight_segments(cu_seqlens_q, cu_k, query, key)
    return kernels.run(name, query, key, value, cu_q, cu_k, max_q, max_k, causal=causal, scale=scale,
                       window=sliding_window, softcap=softcap, dropout=dropout, sinks=sinks)


#: (cu_q, cu_k, k is q, max_q, max_k) trimmed; None stands for the input tensor itself, so that the
#: cache never keeps a batch's buffer alive.
_Tight = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], bool, int, int]
_tight: TensorCache[_Tight] = TensorCache()


def _tight_segments(cu_q: torch.Tensor, cu_k: torch.Tensor, query: torch.Tensor,
                    key: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """Eager fused path: cu_seqlens without empty segments and the real longest segment, per (cu_q, cu_k).

    The fused kernels launch ``segments x ceil(max_seqlen / block) x heads`` blocks (and size backward
    buffers by them): a static_shape batch (max_length = the whole budget, hundreds of empty tail
    segments) launched ~1000x more blocks than needed, in every layer, forward and backward. The
    offsets every layer shares (``host_offsets``, one read per batch) give the tight values, computed
    once per batch too; the kernels' autograd saves them, so backward needs nothing more.
    """
    new_q, new_k, same, max_q, max_k = _tight.get((cu_q, cu_k), lambda: _trim(cu_q, cu_k, query, key),
                                                  query.device)
    tight_q = cu_q if new_q is None else new_q
    tight_k = tight_q if same else (cu_k if new_k is None else new_k)
    return tight_q, tight_k, max_q, max_k


def _trim(cu_q: torch.Tensor, cu_k: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> _Tight:
    hq, hk = checked_offsets(cu_q, cu_k, query.shape[0], key.shape[0])
    keep = [0] + [i for i in range(1, len(hq)) if hq[i] != hq[i - 1] or hk[i] != hk[i - 1]]
    if len(keep) == 1:
        keep.append(len(hq) - 1)  # no tokens at all: one empty segment keeps the kernels' shapes valid
    tq, tk = [hq[i] for i in keep], [hk[i] for i in keep]
    max_q = max(max(b - a for a, b in zip(tq[:-1], tq[1:])), 1)
    max_k = max(max(b - a for a, b in zip(tk[:-1], tk[1:])), 1)

    def trimmed(cu: torch.Tensor, offsets: List[int]) -> Optional[torch.Tensor]:
        if len(keep) == len(hq) and cu.device == query.device and cu.dtype == torch.int32:
            return None  # nothing dropped: no copy
        return torch.tensor(offsets, dtype=torch.int32, device=query.device)

    if cu_k is cu_q or tk == tq:
        return trimmed(cu_q, tq), None, True, max_q, max_k
    return trimmed(cu_q, tq), trimmed(cu_k, tk), False, max_q, max_k
