"""transformers glue: ``attn_implementation="warppack"`` and the registration that makes it exist.

``warppack_attention_forward`` (an ``AttentionInterface`` function) reads ``cu_seq_lens_q/k`` and
``max_length_q/k`` from the forward kwargs, or finds the boundaries in restarting ``position_ids``,
and sends packed rows to ``warppack.varlen_attention``; padded rows, KV caches and custom masks take
the exact masked path. ``warppack_mask`` (an ``AttentionMaskInterface`` function) builds no mask
for packed rows. ``import warppack`` registers both once transformers is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

import torch

from warppack.attention import (
    dispatch as _attention,  # _attention._record looked up per call: benchmarks wrap it to see kernels
)
from warppack.attention.dispatch import compiling, varlen_attention
from warppack.attention.exact import HostCache, attend

_posid_cache = HostCache()  # cu_seqlens found in position_ids, once per forward (every layer asks)


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
    if compiling():
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
        _attention._record("exact_masked")
        out = attend(query, key, value, mask=attention_mask, causal=causal, window=None, **feats)
    else:
        _attention._record("exact_dense")
        out = attend(query, key, value, mask=None, causal=causal, window=sliding_window, **feats)
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
    _attention._kernels()  # transformers already imported torch._dynamo: cheap now, and settled before any compile


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
    """Register now, or as soon as transformers is imported (never imports it itself)."""
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


# Importing warppack makes attn_implementation="warppack" available wherever transformers is used.
_register_on_import()
