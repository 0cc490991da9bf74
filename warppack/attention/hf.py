"""transformers glue: ``attn_implementation="warppack"`` and the registration that makes it exist.

``warppack_attention_forward`` (an ``AttentionInterface`` function) finds each packed row's boundaries
(``warppack.attention.boundaries``) and sends the row to ``warppack.varlen_attention``; padded rows,
KV caches and custom masks take the exact masked path. ``warppack_mask`` (an ``AttentionMaskInterface``
function) builds no O(L^2) mask for packed rows: it hands the boundaries on instead. ``import warppack``
registers both once transformers is imported.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Any, Iterator, List, cast

import torch

from warppack.attention import (
    dispatch as _attention,  # _attention._record looked up per call: benchmarks wrap it to see kernels
)
from warppack.attention import kernels
from warppack.attention.boundaries import find_rows, is_marker, model_position_ids, packed_marker
from warppack.attention.dispatch import varlen_attention
from warppack.attention.exact import attend
from warppack.attention.host import compiling
from warppack.import_hooks import call_after_import

_recorders: List[List[Any]] = []


@contextlib.contextmanager
def recording_callers() -> Iterator[List[Any]]:
    """A list that collects the modules calling warppack attention inside the block (``check_model``)."""
    seen: List[Any] = []
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def _seg_ids(cu: torch.Tensor, n: int) -> torch.Tensor:
    return torch.searchsorted(cu.long()[1:], torch.arange(n, device=cu.device), right=True)


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
    """transformers ``AttentionInterface`` function: ``[B, H, L, D]`` in, contiguous ``([B, L, H, D], None)`` out.

    Packed rows (boundaries found by ``warppack.attention.boundaries.find_rows``) go through
    ``varlen_attention``; a 4-D mask (padding, KV cache, custom patterns) takes the exact masked path.
    """
    if _recorders and not compiling():
        for seen in _recorders:
            seen.append(module)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    b, hq, lq, _ = query.shape
    lk = key.shape[2]
    feats = dict(scale=scaling if scaling is not None else query.shape[-1] ** -0.5, softcap=softcap,
                 dropout=dropout, sinks=s_aux)
    rows = find_rows(module, b, lq, lk, attention_mask, kwargs, causal=causal)
    if is_marker(attention_mask):
        attention_mask = None  # the marker carried boundaries, not a mask
    if rows is not None and rows.starts is not None:  # compiling: block-diagonal rows, no host sync
        if attention_mask is None:
            attention_mask = _row_mask(rows.starts.cumsum(-1), causal, sliding_window)
        rows = None
    if rows is not None and attention_mask is None:
        flat = lambda x: x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[-1])  # noqa: E731
        cu_q = cast(torch.Tensor, rows.cu_q)  # eager rows carry cu offsets (compiling ones, starts, were handled above)
        out = varlen_attention(flat(query), flat(key), flat(value), cu_q, rows.cu_k, rows.max_q, rows.max_k,
                               causal=causal, sliding_window=sliding_window, **feats)
        return out.reshape(b, lq, hq, -1).contiguous(), None
    if attention_mask is not None:
        if rows is not None and rows.cu_q is not None and lq == lk and attention_mask.dtype == torch.bool:
            # Padded *and* packed rows: the padding mask alone would let sequences see each other.
            attention_mask = attention_mask & _row_mask(_seg_ids(rows.cu_q, b * lq).view(b, lq), causal, None)
        _attention._record("exact_masked")
        out = attend(query, key, value, mask=attention_mask, causal=causal, window=None, **feats)
    else:
        _attention._record("exact_dense")
        out = attend(query, key, value, mask=None, causal=causal, window=sliding_window, **feats)
    return out.transpose(1, 2).contiguous(), None


def warppack_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                  attention_mask=None, **kwargs):
    """transformers ``AttentionMaskInterface`` function: no O(L^2) mask unless one is really needed.

    Unpadded rows without a cache get ``None``; rows in which transformers found packed sequences
    (restarting ``position_ids``) get the packed-row marker (their boundaries, see
    ``warppack.attention.boundaries``), so layers that never see position_ids still keep the
    sequences apart. Padding, a KV cache, chunked or custom patterns get transformers' exact boolean mask.
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
        found = _packed_rows(mu, mask_function, batch_size, q_length, kwargs.get("device"))
        if found is not _EXACT_MASK:
            return found
    kwargs = {k: v for k, v in kwargs.items() if k not in ("allow_is_causal_skip", "allow_is_bidirectional_skip")}
    return mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                        kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                        allow_is_causal_skip=False, allow_is_bidirectional_skip=False, **kwargs)


def _packed_rows(mu, mask_function, batch: int, length: int, device):
    """The marker of a plain causal row, None for one sequence per row, ``_EXACT_MASK`` when only the
    exact mask will do (a mask function that cannot be evaluated on index tensors)."""
    if length < 2:
        return None
    if mask_function is not mu.causal_mask_function:
        try:
            marker = packed_marker(mask_function, batch, length, device)
        except (TypeError, IndexError, RuntimeError):
            return _EXACT_MASK
        if marker is not None:
            return marker
    # No packing in the mask function: transformers found none, or did not look (a KV cache, or no
    # position_ids handed to create_causal_mask). The model's forward may still hold them.
    return model_position_ids(batch, length)


def _register_function(module) -> None:
    module.AttentionInterface.register("warppack", warppack_attention_forward)
    # Settled before any compile; transformers already imported torch._dynamo, which the lookup needs.
    # flash-attn-4 (seconds: the CuTe DSL) waits for the first CUDA layer on a GPU it runs on.
    kernels.found()


_EXACT_MASK = object()
# Set at registration: an import inside warppack_mask would split torch.compile's graph (transformers'
# lazy modules fail inside dynamo with "Bad import result").
_MASKING_UTILS = None


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


def _register_on_import() -> None:
    """Register now, or as soon as transformers is imported (never imports it itself)."""
    if importlib.util.find_spec("transformers") is None:
        return
    call_after_import("transformers.modeling_utils", _register_function)
    call_after_import("transformers.masking_utils", _register_mask)


# Importing warppack makes attn_implementation="warppack" available wherever transformers is used.
_register_on_import()
