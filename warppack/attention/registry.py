"""Which attention kernels exist, the order warppack tries them in, and what each can compute exactly.

``ORDER`` is the intended order, by the kernels' published results: FlashAttention-4 (the ``flash-attn-4``
package, then the same kernels through torch's own FA4 route), FlashAttention-3 (``flash_attn_interface``),
FlashAttention-2 (``flash-attn``), torch's built-in varlen kernel (``varlen_attn``, then
``aten._flash_attention_forward``), and the exact paths that run anywhere; ``benchmarks/gpu_long_context.py``
measures the kernels found on a machine. Each ``Kernel`` declares the devices, dtypes, compute
capabilities, head dims and layer features (sliding window, softcap, dropout, sinks) it can do; what the
installed version really takes, forward and backward, narrows that further (``warppack.attention.kernels``).
A layer goes to the first kernel that can compute it exactly: ``refusal`` names the first thing a kernel
cannot do, and a kernel is skipped for it, never run approximately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, NamedTuple, Optional, Tuple, Union

import torch

HALF = frozenset({torch.float16, torch.bfloat16})
#: The layer features a kernel may lack, by the names refusals use.
WINDOW, SOFTCAP, DROPOUT, SINKS = "sliding window", "softcap", "dropout", "attention sinks"
ALL_FEATURES: FrozenSet[str] = frozenset({WINDOW, SOFTCAP, DROPOUT, SINKS})


class Layer(NamedTuple):
    """What one attention call asks of a kernel (a tuple: torch.compile traces it like any other)."""

    device: str
    capability: Optional[Tuple[int, int]]  # CUDA compute capability, None off CUDA
    dtype: torch.dtype
    head_dim: int
    head_dim_v: int
    window: Optional[int] = None
    softcap: Optional[float] = None
    dropout: float = 0.0
    sinks: bool = False
    compiling: bool = False
    grad: bool = False  # a backward will follow: grad mode on and q/k/v or the sinks require grad
    sinks_dtype: Optional[torch.dtype] = None

    def features(self) -> Tuple[str, ...]:
        """The optional features this layer uses, by their refusal names."""
        used = ((WINDOW, self.window is not None), (SOFTCAP, self.softcap is not None),
                (DROPOUT, self.dropout != 0.0), (SINKS, self.sinks))
        return tuple(name for name, on in used if on)


def _half_8(limit: int) -> Callable[[int, int, int], bool]:
    # FlashAttention-2/3 and torch's flash kernels: equal q/k and v head dims, multiples of 8 up to `limit`.
    return lambda d, dv, major: d == dv and d % 8 == 0 and 8 <= d <= limit


def _fa4_head_dims(d: int, dv: int, major: int) -> bool:
    # flash-attn-4's own rule: Hopper takes 8..256 (multiples of 8, q/k and v may differ); Blackwell
    # 8..128, or (192, 128), or (256, 256).
    if d % 8 or dv % 8:
        return False
    if major == 9:
        return 8 <= d <= 256 and 8 <= dv <= 256
    return (8 <= d <= 128 and 8 <= dv <= 128) or (d, dv) in ((192, 128), (256, 256))


@dataclass(frozen=True)
class Kernel:
    """One kernel's declared support. ``fused`` kernels need CUDA and half precision."""

    name: str
    source: str  # where it comes from, for messages
    fused: bool = True
    min_capability: Tuple[int, int] = (8, 0)
    majors: Optional[FrozenSet[int]] = None  # when only some GPU generations have it
    head_dims: Callable[[int, int, int], bool] = _half_8(256)
    head_dims_text: str = "multiples of 8 up to 256, the same for values"
    features: FrozenSet[str] = frozenset()
    compiles: bool = True  # torch.compile traces it without a graph break


KERNELS: Dict[str, Kernel] = {k.name: k for k in (
    Kernel("flash_attn_4", "flash-attn-4 (pip install 'warppack[hopper]')", majors=frozenset({9, 10, 11}),
           head_dims=_fa4_head_dims, head_dims_text="8..256 on Hopper, 8..128 / (192, 128) / 256 on Blackwell",
           features=frozenset({WINDOW, SOFTCAP, SINKS}), compiles=False),
    Kernel("torch_fa4", "torch's FA4 route (torch.nn.attention.activate_flash_attention_impl('FA4'), with "
           "flash-attn-4 installed)", majors=frozenset({9, 10}), head_dims=_fa4_head_dims,
           head_dims_text="as flash-attn-4", features=frozenset({WINDOW})),
    Kernel("flash_attn_3", "FlashAttention-3 (flash_attn_interface, built from flash-attention's hopper/)",
           majors=frozenset({9}), features=frozenset({WINDOW, SOFTCAP})),
    Kernel("flash_attn", "flash-attn (pip install 'warppack[flash]')", features=frozenset({WINDOW, SOFTCAP, DROPOUT})),
    Kernel("torch_varlen", "torch.nn.attention.varlen.varlen_attn (torch >= 2.10)", features=frozenset({WINDOW})),
    Kernel("aten_flash", "torch.ops.aten._flash_attention_forward", features=frozenset({WINDOW, DROPOUT})),
    Kernel("exact_segments", "warppack (SDPA per sequence)", fused=False, features=ALL_FEATURES),
    Kernel("exact_block_diagonal", "warppack (one block-diagonal SDPA call)", fused=False, features=ALL_FEATURES),
)}
#: The automatic order: the first kernel that can run a layer exactly runs it.
ORDER: Tuple[str, ...] = tuple(KERNELS)

#: What is installed of a kernel for a layer: the features the installed version takes, or why it cannot
#: run the layer at all.
Installed = Union[FrozenSet[str], str]
InstalledFor = Callable[[str, Layer], Installed]


def refusal(kernel: Kernel, layer: Layer, installed: InstalledFor, *, forced: bool = False) -> Optional[str]:
    """Why ``kernel`` cannot compute ``layer`` exactly (naming the device, dtype, head dim or feature), or None.

    ``installed`` is asked last: looking kernels up imports them, which a CPU layer never needs.
    """
    if kernel.fused:
        if layer.device != "cuda":
            return f"it needs CUDA tensors (this layer's are on {layer.device})"
        if layer.dtype not in HALF:
            return f"dtype {layer.dtype} (it runs float16 and bfloat16)"
        cap = layer.capability or (0, 0)
        if cap < kernel.min_capability or (kernel.majors is not None and cap[0] not in kernel.majors):
            wanted = (f"{'/'.join(f'{m}.x' for m in sorted(kernel.majors))}" if kernel.majors
                      else f">= {kernel.min_capability[0]}.{kernel.min_capability[1]}")
            return f"compute capability {cap[0]}.{cap[1]} (it needs {wanted})"
        if not kernel.head_dims(layer.head_dim, layer.head_dim_v, cap[0]):
            dims = f"{layer.head_dim}" + (f" (values {layer.head_dim_v})" if layer.head_dim_v != layer.head_dim else "")
            return f"head dim {dims} (it takes {kernel.head_dims_text})"
    for feature in layer.features():
        if feature not in kernel.features:
            return feature
    if layer.compiling and not kernel.compiles and not forced:
        return "torch.compile (it would break the graph)"
    takes = installed(kernel.name, layer)
    if isinstance(takes, str):
        return takes
    for feature in layer.features():
        if feature not in takes:
            return f"{feature} (the installed version takes no argument for it)"
    return None


def choose(layer: Layer, forced: Optional[str], installed: InstalledFor) -> str:
    """The kernel for ``layer``: ``forced`` if it can run it exactly (else ValueError naming why), or the first
    kernel of ``ORDER`` that can."""
    if forced is not None:
        why = refusal(KERNELS[forced], layer, installed, forced=True)
        if why is not None:
            raise ValueError(
                f"attention backend {forced!r} (set_attention_backend) cannot run this layer exactly: {why}; "
                "call warppack.set_attention_backend(None) to let warppack choose")
        return forced
    for name in ORDER:
        if refusal(KERNELS[name], layer, installed) is None:
            return name
    raise RuntimeError("no attention kernel accepted the layer")  # unreachable: exact_segments refuses nothing
