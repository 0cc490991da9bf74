"""The fused varlen kernels: how each is found (by what its signature and source take, never by version
number alone) and how each is called with the same meaning: causal, window ``(sliding_window - 1, 0)``
(transformers counts the token itself), the layer's own ``scale``, key/value heads unexpanded where the
kernel takes GQA.

What each installed kernel can do is read by :mod:`warppack.attention.capabilities`. ``found()`` looks
the kernels up once, flash-attn-4 apart: importing it loads the CuTe DSL (seconds), so
``entry("flash_attn_4")`` looks it up only when a CUDA layer on a GPU it runs on first asks.
``installed(name, layer)`` says what a kernel can do for a layer right now (the features its installed
version takes, forward and, when a gradient is needed, backward; or why it cannot run); ``run(name, ...)``
calls it. Torch's own flash kernels can be swapped process-wide
(``torch.nn.attention.activate_flash_attention_impl("FA4")``): while they are, ``torch_varlen`` and
``aten_flash`` run that implementation, so they are refused under their own names and ``torch_fa4`` names
the route.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from warppack.attention.capabilities import (
    FlashAttn4,
    describe_fa4,
    describe_flash,
    describe_torch_varlen,
    route_mismatch,
)
from warppack.attention.exact import repeat_heads
from warppack.attention.host import compiling
from warppack.attention.registry import (
    ALL_FEATURES,
    DROPOUT,
    KERNELS,
    SINKS,
    SOFTCAP,
    WINDOW,
    Installed,
    Layer,
)


# ---- discovery ---------------------------------------------------------------------------------------------
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


def _route_source_mismatch(adapter: Any) -> Optional[str]:
    try:
        spec = importlib.util.find_spec("flash_attn")  # the top-level package: found, not imported
        roots = [] if spec is None else list(spec.submodule_search_locations or [])
        interface = next((Path(r) / "cute" / "interface.py" for r in roots
                          if (Path(r) / "cute" / "interface.py").is_file()), None)
        if interface is None:
            return None
        return route_mismatch(inspect.getsource(adapter), interface.read_text(encoding="utf-8"))
    except (ImportError, OSError, SyntaxError, TypeError, ValueError):  # unreadable: left to the route's own errors
        return None


def _find_torch_fa4() -> Optional[Tuple[bool, Optional[str]]]:
    """``(windows safe, why the route fails or None)`` when this torch can route its flash attention to FA4.

    Early routes computed the backward of a windowed layer without the window: windows count only
    where the route's backward takes them.
    """
    listed = getattr(torch.nn.attention, "list_flash_attention_impls", None)
    try:
        if listed is None or "FA4" not in listed():
            return None
        adapter = importlib.import_module("torch.nn.attention._fa4")
        backward = adapter._fa4_run_backward
    except (ImportError, AttributeError):
        return None
    return "window_size_left" in inspect.signature(backward).parameters, _route_source_mismatch(adapter)


def _find_aten_flash() -> Optional[Tuple[Any, bool]]:
    try:
        op = torch.ops.aten._flash_attention_forward
    except (AttributeError, RuntimeError):
        return None
    return op, "window_size_left" in {a.name for a in op.default._schema.arguments}


def _find_flash_attn_4() -> Optional[FlashAttn4]:
    fn = _import("flash_attn.cute", "flash_attn_varlen_func")
    if fn is None:
        return None
    # flash-attn-4 compiles its kernels with the CuTe DSL in Python, which dynamo cannot trace: a forced
    # call inside a compiled region breaks the graph here, on purpose, instead of failing in dynamo.
    return describe_fa4(fn)._replace(fn=torch.compiler.disable(fn))


def _find_all() -> Dict[str, Any]:
    fa2 = _import("flash_attn", "flash_attn_varlen_func")
    varlen = _import("torch.nn.attention.varlen", "varlen_attn")
    return {"torch_fa4": _find_torch_fa4(),
            "flash_attn_3": _find_flash_attn_3(), "flash_attn": None if fa2 is None else describe_flash(fa2),
            "torch_varlen": None if varlen is None else describe_torch_varlen(varlen),
            "aten_flash": _find_aten_flash()}


_FOUND: Optional[Dict[str, Any]] = None


def found() -> Dict[str, Any]:
    """The fused kernels found, looked up once (each entry None when absent); flash-attn-4 only once
    ``entry("flash_attn_4")`` has looked it up.

    Not at ``import warppack``: ``torch.nn.attention.varlen`` pulls in torch._dynamo. It runs when
    transformers registers warppack or on the first call; inside a torch.compile graph the result is then a
    plain constant (nothing to trace, no graph break).
    """
    global _FOUND
    if _FOUND is None:
        _FOUND = _find_all()
    return _FOUND


def entry(name: str) -> Any:
    """What was found of fused kernel ``name`` (None when absent), looking flash-attn-4 up on first use."""
    table = found()
    if name not in table:  # flash_attn_4: its import loads the CuTe DSL, seconds
        table[name] = (torch.compiler.disable(_find_flash_attn_4) if compiling() else _find_flash_attn_4)()
    return table[name]


def route() -> Optional[str]:
    """The implementation torch's flash attention is routed to (``"FA4"``), None for torch's own."""
    current = getattr(torch.nn.attention, "current_flash_attention_impl", None)
    return None if current is None else current()


def _flash_attn_4(fa4: FlashAttn4, layer: Layer) -> Installed:
    if layer.sinks and layer.sinks_dtype is not None and layer.sinks_dtype not in fa4.sink_dtypes:
        names = "/".join(sorted(str(d).replace("torch.", "") for d in fa4.sink_dtypes))
        return f"attention sinks in {layer.sinks_dtype} (the installed flash-attn-4 takes {names} sinks)"
    if layer.grad:
        for feature in layer.features():
            if feature in fa4.features and feature not in fa4.trains:
                lacks = "no gradient for the sinks" if feature == SINKS else f"no {feature}"
                return f"{feature} in training (the installed flash-attn-4's backward has {lacks})"
        if (layer.softcap is not None and fa4.no_softcap_backward_256 and (layer.capability or (0, 0))[0] in (10, 11)
                and (layer.head_dim, layer.head_dim_v) == (256, 256)):
            return "softcap in training with head dim 256 on Blackwell (flash-attn-4's backward there has no softcap)"
    return fa4.features


def installed(name: str, layer: Layer) -> Installed:
    """What kernel ``name`` can do for ``layer`` now: the features its installed version takes, or why it
    cannot run the layer."""
    kernel = KERNELS[name]
    if not kernel.fused:
        return ALL_FEATURES
    if name == "flash_attn_4":
        fa4 = entry(name)
        return f"it is not installed (it comes from {kernel.source})" if fa4 is None else _flash_attn_4(fa4, layer)
    table, active = found(), route()
    if name == "torch_fa4":
        if table["torch_fa4"] is None or table["torch_varlen"] is None:
            return "this torch cannot route varlen_attn to FA4"
        if active != "FA4":
            return ("torch's FA4 route is off (torch.nn.attention.activate_flash_attention_impl('FA4') "
                    "turns it on, for every flash attention call of the process)")
        windows, broken = table["torch_fa4"]
        if broken is not None:
            return broken
        return frozenset({WINDOW}) if windows and table["torch_varlen"][1] else frozenset()
    found_entry = table[name]
    if found_entry is None:
        return f"it is not installed (it comes from {kernel.source})"
    if name in ("torch_varlen", "aten_flash") and active is not None:
        return (f"torch's flash attention is routed to {active} (activate_flash_attention_impl)"
                + ("; torch_fa4 names that route" if active == "FA4" else ""))
    if name in ("flash_attn", "flash_attn_3"):  # (fn, takes softcap, takes window_size)
        takes = {SOFTCAP: found_entry[1], WINDOW: found_entry[2], DROPOUT: name == "flash_attn"}
    else:  # torch_varlen (fn, takes window_size, ...), aten_flash (op, takes window_size_left)
        takes = {WINDOW: found_entry[1], DROPOUT: name == "aten_flash"}
    return frozenset(feature for feature, yes in takes.items() if yes)


# ---- calls -------------------------------------------------------------------------------------------------
def torch_varlen_mode(has_window_size: bool, *, causal: bool, window: Optional[int]) -> Optional[dict]:
    """Keyword arguments that make ``varlen_attn`` causal/windowed, or None if this torch cannot.

    torch 2.10 takes ``is_causal=``; 2.11+ takes ``window_size=(left, right)`` and tests it with
    ``== (-1, 0)``: it must be a *tuple*, a list silently runs non-causal attention.
    """
    if has_window_size:
        return {"window_size": tuple(map(int, _flash_window(window, causal)))}
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
    spec = entry("torch_varlen" if name == "torch_fa4" else name)
    if name == "flash_attn_4":
        pair = (None, None) if window is None else _flash_window(window, causal)
        extra: Dict[str, Any] = {"learnable_sink": sinks} if sinks is not None else {}
        return _first(spec.fn(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                               max_seqlen_k=max_k, softmax_scale=scale, causal=causal, window_size=pair,
                               softcap=float(softcap or 0.0), **extra))
    if name in ("flash_attn", "flash_attn_3"):  # GQA native: key/value keep their fewer heads
        fn, _, has_window = spec
        extra = {"softcap": softcap} if softcap is not None else {}
        if has_window:  # absent before flash-attn 2.3 (then windowed layers were refused)
            extra["window_size"] = _flash_window(window, causal)
        if name == "flash_attn":
            extra["dropout_p"] = dropout
        return _first(fn(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal, **extra))
    groups = q.shape[1] // k.shape[1]
    if name in ("torch_varlen", "torch_fa4"):
        fn, has_window, has_gqa, has_scale = spec
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
    op, _ = spec  # aten_flash: no GQA in this op
    k, v = repeat_heads(k, groups, 1), repeat_heads(v, groups, 1)
    win = {} if window is None else dict(zip(("window_size_left", "window_size_right"), _flash_window(window, causal)))
    return op(q, k, v, cu_q, cu_k, max_q, max_k, dropout, causal, False, scale=scale, **win)[0]
