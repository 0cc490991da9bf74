"""What an installed fused kernel can do, read from its signature and source (never by version number
alone, never by running it): the arguments a FlashAttention-2/3 or torch ``varlen_attn`` takes, the
features flash-attn-4's forward and backward compute, and whether torch's FA4 route agrees with the
installed flash-attn-4.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any, Callable, FrozenSet, NamedTuple, Optional, Tuple

import torch

from warppack.attention.registry import SINKS, SOFTCAP, WINDOW

__all__ = ["FlashAttn4", "describe_fa4", "describe_flash", "describe_torch_varlen", "route_mismatch"]


def describe_flash(fn: Callable) -> Tuple[Callable, bool, bool]:
    """``(fn, takes softcap, takes window_size)`` of a FlashAttention-2/3 ``flash_attn_varlen_func``."""
    params = inspect.signature(fn).parameters  # flash-attn: softcap >= 2.6, window_size >= 2.3
    return fn, "softcap" in params, "window_size" in params


class FlashAttn4(NamedTuple):
    """What the installed flash-attn-4 does: forward features, the features its backward computes, the sink
    dtypes it takes, and whether its Blackwell head-dim-256 backward lacks softcap."""

    fn: Callable
    features: FrozenSet[str]
    trains: FrozenSet[str]
    sink_dtypes: FrozenSet[torch.dtype]
    no_softcap_backward_256: bool


def describe_fa4(fn: Callable, interface: Any = None) -> FlashAttn4:
    """flash-attn-4's ``flash_attn_varlen_func``, read from its signature and its module's source
    (``interface``, default the module defining ``fn``): releases whose backward asserts ``softcap == 0``,
    returns no sink gradient or drops the window compute those forward only."""
    interface = inspect.getmodule(fn) if interface is None else interface
    params = inspect.signature(fn).parameters
    takes = frozenset(f for f, arg in ((WINDOW, "window_size"), (SOFTCAP, "softcap"), (SINKS, "learnable_sink"))
                      if arg in params)
    try:
        backward = inspect.getsource(interface.FlashAttnVarlenFunc.backward)
        bwd = inspect.getsource(interface._flash_attn_bwd)
    except (AttributeError, OSError, TypeError):  # no source to read: nothing counts as trainable
        backward = bwd = ""
    trains = {WINDOW: "window_size" in backward,
              SOFTCAP: bool(backward) and re.search(r"assert\s+ctx\.softcap\s*==\s*0", backward) is None,
              SINKS: "dsink" in backward}
    sinks = getattr(interface, "_LEARNABLE_SINK_DTYPES", (torch.bfloat16,))
    return FlashAttn4(fn, takes, frozenset(f for f, yes in trains.items() if yes and f in takes),
                      frozenset(sinks), "head_dim=256 does not support softcap" in bwd)


def describe_torch_varlen(fn: Callable) -> Tuple[Callable, bool, bool, bool]:
    """``(fn, takes window_size, takes enable_gqa, takes scale)`` of ``varlen_attn`` (2.10: is_causal only)."""
    params = inspect.signature(fn).parameters
    return fn, "window_size" in params, "enable_gqa" in params, "scale" in params


def _tuple_sizes(source: str, function: str) -> Tuple[FrozenSet[int], FrozenSet[int]]:
    """In ``source``: the sizes of the tuples ``function`` returns (where it is defined) and of the tuples its
    result is unpacked into (where it is called), read without importing or running anything."""
    returned, unpacked = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            returned |= {len(r.value.elts) for r in ast.walk(node)
                         if isinstance(r, ast.Return) and isinstance(r.value, ast.Tuple)}
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == function):
            unpacked |= {len(t.elts) for t in node.targets  # a starred target takes any number
                         if isinstance(t, ast.Tuple) and not any(isinstance(e, ast.Starred) for e in t.elts)}
    return frozenset(returned), frozenset(unpacked)


def route_mismatch(torch_adapter: str, fa4_interface: str) -> Optional[str]:
    """Why torch's FA4 route fails with the installed flash-attn-4 (sources of ``torch.nn.attention._fa4`` and
    ``flash_attn/cute/interface.py``), or None: torch's adapter unpacks ``_flash_attn_fwd``'s result into a
    fixed number of values, which some flash-attn-4 releases changed."""
    unpacked = _tuple_sizes(torch_adapter, "_flash_attn_fwd")[1]
    returned = _tuple_sizes(fa4_interface, "_flash_attn_fwd")[0]
    if not unpacked or not returned or returned <= unpacked:
        return None
    return (f"torch's FA4 route unpacks {'/'.join(map(str, sorted(unpacked)))} values from flash-attn-4's "
            f"_flash_attn_fwd, which returns {'/'.join(map(str, sorted(returned)))} in the installed "
            "flash-attn-4: the route would fail at its first call (\"too many values to unpack\")")
