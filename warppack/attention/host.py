"""What attention reads on the host: nothing inside a ``torch.compile`` graph, each cu_seqlens tensor once.

Every layer of a forward gets the same boundaries tensor (the batch's ``cu_seq_lens_q/k``, or the one
built from its position_ids or packed-row marker), so ``host_offsets`` reads it once and the boundary
check (``warppack.attention.boundaries``), the per-segment loop (``exact``) and the fused kernels'
trimmed offsets (``dispatch``) all share that one list. Caches here hold a tensor by a weak reference
and its version counter: a new batch, or the same tensor changed in place, is computed afresh, and a
batch's buffer is freed and reused as if nothing held it. An inference tensor has no version counter,
so nothing is kept for it (each call reads it again).
"""

from __future__ import annotations

import weakref
from typing import Callable, Generic, Hashable, List, Optional, Tuple, TypeVar

import torch

V = TypeVar("V")


def compiling() -> bool:
    """Whether this runs inside a ``torch.compile`` graph (no host reads, no data-dependent Python)."""
    fn = getattr(torch.compiler, "is_compiling", None) or getattr(torch._dynamo, "is_compiling", None)
    return bool(fn and fn())


def _version(t: torch.Tensor) -> Optional[int]:
    return None if t.is_inference() else t._version


class TensorCache(Generic[V]):
    """Values computed from tensors, reused while those very tensors live unchanged (identity and version).

    Holds the last ``size`` values: the distinct boundaries of one forward (the batch's, one per mask
    type) alternate between layers without evicting each other.
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._entries: List[Tuple[Tuple[weakref.ref, ...], Tuple[Optional[int], ...], Hashable, V]] = []

    def get(self, tensors: Tuple[torch.Tensor, ...], compute: Callable[[], V], extra: Hashable = None) -> V:
        """The value for ``tensors`` (and ``extra``), from ``compute()`` when none is held."""
        versions = tuple(_version(t) for t in tensors)
        for refs, held, held_extra, value in self._entries:
            if held == versions and held_extra == extra and all(r() is t for r, t in zip(refs, tensors)):
                return value
        value = compute()
        if None not in versions:
            live = [e for e in self._entries if all(r() is not None for r in e[0])]
            self._entries = [(tuple(weakref.ref(t) for t in tensors), versions, extra, value), *live][: self._size]
        return value


_offsets: TensorCache[List[int]] = TensorCache()


def host_offsets(cu: torch.Tensor) -> List[int]:
    """``cu`` as a list of ints: read from the device once per tensor (and version), then shared."""
    return _offsets.get((cu,), lambda: [int(x) for x in cu.reshape(-1).tolist()])


def checked_offsets(cu_q: torch.Tensor, cu_k: torch.Tensor, tokens_q: int,
                    tokens_k: int) -> Tuple[List[int], List[int]]:
    """The host offsets of ``cu_q`` and ``cu_k``; ValueError unless both run from 0 to their token count
    over the same number of segments."""
    hq = host_offsets(cu_q)
    hk = hq if cu_k is cu_q else host_offsets(cu_k)
    if hq[:1] != [0] or hk[:1] != [0] or hq[-1] != tokens_q or hk[-1] != tokens_k or len(hq) != len(hk):
        raise ValueError(
            f"cu_seqlens must run from 0 to the token count: got {_span(hq)} for {tokens_q} query tokens and "
            f"{_span(hk)} for {tokens_k} key tokens ({max(len(hq) - 1, 0)} and {max(len(hk) - 1, 0)} "
            "segments); pass the cu_seq_lens_q/k of the same PackedBatch as input_ids")
    return hq, hk


def _span(offsets: List[int]) -> str:
    return f"{offsets[0]}..{offsets[-1]}" if offsets else "no offsets"
