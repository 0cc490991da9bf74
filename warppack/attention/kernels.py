"""The fused varlen kernels: how each is found (by what its signature takes, never by version number
alone) and how each is called with the same meaning: causal, window ``(sliding_window - 1, 0)``
(transformers counts the token itself), the layer's own ``scale``, key/value heads unexpanded where the
kernel takes GQA.

``found()`` looks every kernel up once; ``installed(name)`` says what a kernel can do right now (the
features its installed version takes, or why it cannot run); ``run(name, ...)`` calls it. Torch's own
flash kernels can be swapped process-wide (``torch.nn.attention.activate_flash_attention_impl("FA4")``):
while they are, ``torch_varlen`` and ``aten_flash`` run that implementation, so they are refused under
their own names and ``torch_fa4`` names the route.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from warppack.attention.exact import repeat_heads
from warppack.attention.registry import ALL_FEATURES, DROPOUT, KERNELS, SINKS, SOFTCAP, WINDOW, Installed


# ---- discovery ---------------------------------------------------------------------------------------------
def describe_flash(fn: Callable) -> Tuple[Callable, bool, bool]:
    """``(fn, takes softcap, takes window_size)`` of a FlashAttention-2/3 ``flash_attn_varlen_func``."""
    params = inspect.signature(fn).parameters  # flash-attn: softcap >= 2.6, window_size >= 2.3
    return fn, "softcap" in params, "window_size" in params


def describe_fa4(fn: Callable) -> Tuple[Callable, frozenset]:
    """``(fn, features)`` of flash-attn-4's ``flash_attn.cute.flash_attn_varlen_func``."""
    params = inspect.signature(fn).parameters
    takes = ((WINDOW, "window_size"), (SOFTCAP, "softcap"), (SINKS, "learnable_sink"))
    return fn, frozenset(feature for feature, arg in takes if arg in params)


def describe_torch_varlen(fn: Callable) -> Tuple[Callable, bool, bool, bool]:
    """``(fn, takes window_size, takes enable_gqa, takes scale)`` of ``varlen_attn`` (2.10: is_causal only)."""
    params = inspect.signature(fn).parameters
    return fn, "window_size" in params, "enable_gqa" in params, "scale" in params


def _import(module: str, attribute: str) -> Optional[Callable]:
    try:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return None
        return getattr(importlib.import_module(module), attribute)
    except Exception:  # not installed, or built for another CUDA/torch: treat as absent
        return None


def _find_flash_attn_3() -> Optional[Tuple[Callable, bool, bool]]:
    for module in ("flash_attn_interface", "flash_attn_3.flash_attn_interface"):
        fn = _import(module, "flash_attn_varlen_func")
        if fn is not None:
            return describe_flash(fn)
    return None


def _find_torch_fa4() -> Optional[Tuple[bool]]:
    """``(windows safe)`` when this torch can route its flash attention to FA4, else None.

    Early routes computed the backward of a windowed layer without the window: windows count only
    where the route's backward takes them.
    """
    listed = getattr(torch.nn.attention, "list_flash_attention_impls", None)
    try:
        if listed is None or "FA4" not in listed():
            return None
        backward = importlib.import_module("torch.nn.attention._fa4")._fa4_run_backward
    except (ImportError, AttributeError):
        return None
    return ("window_size_left" in inspect.signature(backward).parameters,)


def _find_aten_flash() -> Optional[Tuple[Any, bool]]:
    try:
        op = torch.ops.aten._flash_attention_forward
    except (AttributeError, RuntimeError):
        return None
    return op, "window_size_left" in {a.name for a in op.default._schema.arguments}


def _find_flash_attn_4() -> Optional[Tuple[Callable, frozenset]]:
    fn = _import("flash_attn.cute", "flash_attn_varlen_func")
    if fn is None:
        return None
    # flash-attn-4 compiles its kernels with the CuTe DSL in Python, which dynamo cannot trace: a forced
    # call inside a compiled region breaks the graph here, on purpose, instead of failing in dynamo.
    return torch.compiler.disable(fn), describe_fa4(fn)[1]


def _find_all() -> Dict[str, Any]:
    fa2 = _import("flash_attn", "flash_attn_varlen_func")
    varlen = _import("torch.nn.attention.varlen", "varlen_attn")
    return {"flash_attn_4": _find_flash_attn_4(), "torch_fa4": _find_torch_fa4(),
            "flash_attn_3": _find_flash_attn_3(), "flash_attn": None if fa2 is None else describe_flash(fa2),
            "torch_varlen": None if varlen is None else describe_torch_varlen(varlen),
            "aten_flash": _find_aten_flash()}


_FOUND: Optional[Dict[str, Any]] = None


def found() -> Dict[str, Any]:
    """The fused kernels found, looked up once (each entry None when absent).

    Not at ``import warppack``: ``torch.nn.attention.varlen`` pulls in torch._dynamo and flash-attn-4 the
    CuTe DSL (seconds). It runs when transformers registers warppack or on the first call; inside a
    torch.compile graph the result is then a plain constant (nothing to trace, no graph break).
    """
    global _FOUND
    if _FOUND is None:
        _FOUND = _find_all()
    return _FOUND


def route() -> Optional[str]:
    """The implementation torch's flash attention is routed to (``"FA4"``), None for torch's own."""
    current = getattr(torch.nn.attention, "current_flash_attention_impl", None)
    return None if current is None else current()


def installed(name: str) -> Installed:
    """What kernel ``name`` can do now: the features its installed version takes, or why it cannot run."""
    kernel = KERNELS[name]
    if not kernel.fused:
        return ALL_FEATURES
    table, active = found(), route()
    if name == "torch_fa4":
        if table["torch_fa4"] is None or table["torch_varlen"] is None:
            return "this torch cannot route varlen_attn to FA4"
        if active != "FA4":
            return ("torch's FA4 route is off (torch.nn.attention.activate_flash_attention_impl('FA4') "
                    "turns it on, for every flash attention call of the process)")
        return frozenset({WINDOW}) if table["torch_fa4"][0] and table["torch_varlen"][1] else frozenset()
    entry = table[name]
    if entry is None:
        return f"it is not installed (it comes from {kernel.source})"
    if name in ("torch_varlen", "aten_flash") and active is not None:
        return (f"torch's flash attention is routed to {active} (activate_flash_attention_impl)"
                + ("; torch_fa4 names that route" if active == "FA4" else ""))
    if name == "flash_attn_4":
        return entry[1]
    if name in ("flash_attn", "flash_attn_3"):  # (fn, takes softcap, takes window_size)
        takes = {SOFTCAP: entry[1], WINDOW: entry[2], DROPOUT: name == "flash_attn"}
    else:  # torch_varlen (fn, takes window_size, ...), aten_flash (op, takes window_size_left)
        takes = {WINDOW: entry[1], DROPOUT: name == "aten_flash"}
    return frozenset(feature for feature, yes in takes.items() if yes)


# ---- calls -------------------------------------------------------------------------------------------------
def torch_varlen_mode(has_window_size: bool, *, causal: bool, window: Optional[int]) -> Optional[dict]:
    """Keyword arguments that make ``varlen_attn`` causal/windowed, or None if this torch cannot.

    torch 2.10 takes ``is_causal=``; 2.11+ takes ``window_size=(left, right)`` and tests it with
    ``== (-1, 0)``: it must be a *tuple*, a list silently runs non-causal attention.
    """
    if has_window_size:
        left = -1 if window is None else window - 1
        right = 0 if causal else (-1 if window is None else window - 1)
        return {"window_size": (int(left), int(right))}
    if window is not None:
        return None
    return {"is_causal": causal}


def _flash_window(window: Optional[int], causal: bool) -> Tuple[int, int]:
    left = -1 if window is None else window - 1
    return left, 0 if causal else left


def _first(out: Any) -> torch.Tensor:
    # flash-attn-4 returns (out, lse); FlashAttention-3 did until it grew return_attn_probs.
    return out[0] if isinstance(out, tuple) else out


def run(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
        max_q: int, max_k: int, *, causal: bool, scale: float, window: Optional[int], softcap: Optional[float],
        dropout: float, sinks: Optional[torch.Tensor]) -> torch.Tensor:
    """Call fused kernel ``name`` (already chosen for these features) on ``[T, H, D]`` tensors."""
    entry = found()["torch_varlen" if name == "torch_fa4" else name]
    if name == "flash_attn_4":
        pair = (None, None) if window is None else _flash_window(window, causal)
        extra: Dict[str, Any] = {"learnable_sink": sinks} if sinks is not None else {}
        return _first(entry[0](q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                               max_seqlen_k=max_k, softmax_scale=scale, causal=causal, window_size=pair,
                               softcap=float(softcap or 0.0), **extra))
    if name in ("flash_attn", "flash_attn_3"):  # GQA native: key/value keep their fewer heads
        fn, _, has_window = entry
        extra = {"softcap": softcap} if softcap is not None else {}
        if has_window:  # absent before flash-attn 2.3 (then windowed layers were refused)
            extra["window_size"] = _flash_window(window, causal)
        if name == "flash_attn":
            extra["dropout_p"] = dropout
        return _first(fn(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal, **extra))
    groups = q.shape[1] // k.shape[1]
    if name in ("torch_varlen", "torch_fa4"):
        fn, has_window, has_gqa, has_scale = entry
        if groups > 1 and not has_gqa:
            k, v = repeat_heads(k, groups, 1), repeat_heads(v, groups, 1)
        extra = torch_varlen_mode(has_window, causal=causal, window=window) or {}  # None: refused earlier
        if groups > 1 and has_gqa:
            extra["enable_gqa"] = True
        if has_scale:
            extra["scale"] = scale
        elif scale != q.shape[-1] ** -0.5:  # no scale argument (2.10): fold it into the queries
            q = q * (scale * q.shape[-1] ** 0.5)
        return fn(q, k, v, cu_q, cu_k, max_q, max_k, **extra)
    op, _ = entry  # aten_flash: no GQA in this op
    k, v = repeat_heads(k, groups, 1), repeat_heads(v, groups, 1)
    win = {} if window is None else dict(zip(("window_size_left", "window_size_right"), _flash_window(window, causal)))
    return op(q, k, v, cu_q, cu_k, max_q, max_k, dropout, causal, False, scale=scale, **win)[0]
