"""Where an attention layer finds the boundaries of the sequences packed in its row.

Three sources, in this order:

1. ``cu_seq_lens_q/k`` (and ``max_length_q/k``): the batch's own boundaries, which transformers
   forwards to every attention call as keyword arguments;
2. restarting ``position_ids`` in those keyword arguments (``DataCollatorWithFlattening`` rows);
3. the *packed-row marker* that ``warppack_mask`` returns in place of a mask when the text model's
   position_ids restart. Many models never show their attention the position_ids (Chameleon,
   Persimmon, Kosmos-2.5, ...), but every model asks for its mask once per forward: the marker
   carries the boundaries from there to every layer along with the mask, so it also holds when a
   layer is recomputed under gradient checkpointing. It is a ``PackedRows`` tuple, not a tensor,
   so attention code that reads masks itself (a layer that ignores ``attn_implementation``) fails
   loudly on it instead of adding it to its scores.

The mask function sees the position_ids through transformers (which looks for packed sequences
only without a KV cache) or, when a model does not hand them to ``create_causal_mask``, in the
forward that asked for the mask (``model_position_ids``).

The keyword arguments describe the text row, yet models also forward them to the attention of other
encoders (a vision tower's per-image chunks, an audio encoder). Those layers are not causal, so
sources 1 and 2 apply to causal layers only; a non-causal layer keeps its own semantics (its mask, or
attention over the chunk it was given). Boundaries that do not cover a causal layer's tokens raise,
naming the layer: attending the whole row instead would silently mix the sequences.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch

from warppack.attention.host import TensorCache, compiling, host_offsets

# The cu_seqlens found in position_ids, once per position_ids tensor (every layer of a forward asks).
_posid_cache: TensorCache[Optional[torch.Tensor]] = TensorCache()


class Rows(NamedTuple):
    """Boundaries of one layer call: ``cu`` offsets (eager) or per-token ``starts`` flags (compiling)."""

    cu_q: Optional[torch.Tensor] = None
    cu_k: Optional[torch.Tensor] = None
    max_q: Optional[int] = None
    max_k: Optional[int] = None
    starts: Optional[torch.Tensor] = None  # bool [B, L]: a sequence starts at this token


class PackedRows(NamedTuple):
    """The packed-row marker: int32 ``cu`` over the flattened rows (eager), or under ``torch.compile``
    bool ``starts`` ``[B, L]`` flags "a sequence starts here" (no host sync)."""

    cu: Optional[torch.Tensor] = None
    starts: Optional[torch.Tensor] = None


def is_marker(mask: Any) -> bool:
    """Whether ``mask`` is the packed-row marker of ``warppack_mask`` rather than a mask."""
    return isinstance(mask, PackedRows)


def _packed_cu(starts: torch.Tensor) -> Optional[torch.Tensor]:
    """int32 offsets of the sequences flagged in ``starts`` [B, L], or None when every row holds one.

    Every row starts a sequence at its first token, so a row holds more than one exactly when there are
    more than B starts: the offsets' own length says so, without reading a flag back to the host.
    """
    idx = starts.reshape(-1).nonzero().flatten()
    if idx.numel() <= starts.shape[0]:
        return None
    return torch.cat([idx, idx.new_tensor([starts.numel()])]).to(torch.int32)


def _starts_from_positions(position_ids: torch.Tensor, batch: int) -> torch.Tensor:
    pos = position_ids.expand(batch, -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1  # transformers' own packed-sequence rule
    return starts


def _marker(starts: torch.Tensor) -> Optional[PackedRows]:
    if compiling():
        return PackedRows(starts=starts)
    cu = _packed_cu(starts)
    return None if cu is None else PackedRows(cu=cu)


def packed_marker(mask_function: Callable, batch: int, length: int, device) -> Optional[PackedRows]:
    """The marker for a row whose transformers mask function separates packed sequences, else None.

    A mask function is index based (transformers evaluates it on index tensors), so asking it whether
    each token may see the token just before it finds every sequence start in O(B x L), without the
    O(L^2) mask. Raises ``TypeError``/``IndexError``/``RuntimeError`` for a function that cannot be
    evaluated that way (the caller then builds the exact mask).
    """
    b = torch.arange(batch, device=device)[:, None]
    q = torch.arange(1, length, device=device)[None, :]
    head = torch.zeros((), dtype=torch.long, device=device)  # the functions this sees ignore the head
    sees_previous = torch.as_tensor(mask_function(b, head, q, q - 1), device=device).expand(batch, length - 1)
    starts = torch.ones(batch, length, dtype=torch.bool, device=device)
    starts[:, 1:] = ~sees_previous
    return _marker(starts)


def model_position_ids(batch: int, length: int, *, depth: int = 8) -> Optional[PackedRows]:
    """The marker of the position_ids held by the model forward that is asking for a mask, if they restart.

    Walks up from the mask function: ``create_causal_mask``'s own ``position_ids`` when the model
    passed them (transformers ignores them with a KV cache), else those of the nearest enclosing
    module ``forward``. Only the frames between the mask function and that forward are read, once
    per mask; ``None`` under ``torch.compile`` or when nothing is found.
    """
    if compiling():
        return None
    frame: Optional[FrameType] = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        local = frame.f_locals if "position_ids" in frame.f_code.co_varnames else {}
        pos = local.get("position_ids")
        if isinstance(pos, torch.Tensor):
            if pos.dim() != 2 or pos.shape[-1] != length or pos.shape[0] not in (1, batch):
                return None  # 3-D (multimodal RoPE) or another row's positions: not ours to read
            if ("packed_sequence_mask" in local and local["packed_sequence_mask"] is None
                    and local.get("cache") is None and local.get("attention_mask") is None):
                return None  # create_causal_mask searched these very positions and found no packing
            return _marker(_starts_from_positions(pos, batch))
        if "self" in frame.f_code.co_varnames and isinstance(frame.f_locals.get("self"), torch.nn.Module):
            return None  # reached the model's forward: it holds no position_ids
        frame = frame.f_back
    return None


def _from_position_ids(position_ids: Any, batch: int, length: int) -> Optional[Rows]:
    """Rows where positions restart; None for one sequence per row."""
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[-1] != length:
        return None
    if compiling():
        return Rows(starts=_starts_from_positions(position_ids, batch))
    cu = _posid_cache.get((position_ids,), lambda: _packed_cu(_starts_from_positions(position_ids, batch)), batch)
    return None if cu is None else Rows(cu, cu)


def _from_marker(marker: PackedRows) -> Rows:
    return Rows(starts=marker.starts) if marker.cu is None else Rows(marker.cu, marker.cu)


def _check_covers(module: Any, rows: Rows, tokens_q: int, tokens_k: int, source: str) -> None:
    if compiling() or rows.cu_q is None or rows.cu_k is None:
        return  # compiled graphs cannot read the tensors; the kernels' shapes then catch gross mismatches
    # The whole offsets, not just their end: the layer's attention reads them next from the same cache.
    got_q, got_k = (host_offsets(rows.cu_q) or [0])[-1], (host_offsets(rows.cu_k) or [0])[-1]
    if got_q != tokens_q or got_k != tokens_k:
        raise ValueError(
            f"warppack: {type(module).__name__} received {source} covering {got_q} query and {got_k} key "
            f"tokens, but its packed row has {tokens_q} and {tokens_k}; attending the whole row instead "
            "would mix the sequences. Pass the cu_seq_lens_q/k and position_ids of the same batch as "
            "input_ids (a PackedBatch keeps them together), and no other row's boundaries")


def find_rows(module: Any, batch: int, length_q: int, length_k: int, attention_mask: Any,
              kwargs: Mapping[str, Any], *, causal: bool) -> Optional[Rows]:
    """This layer call's packed-row boundaries, or None when its row holds one sequence (or it is not causal).

    The batch's own keyword arguments come first: a marker only says what the mask function could see
    (with a KV cache transformers does not look at position_ids at all).
    """
    marker = attention_mask if is_marker(attention_mask) else None
    if causal:
        cu_q = kwargs.get("cu_seq_lens_q")
        if cu_q is not None:
            cu_k = kwargs.get("cu_seq_lens_k")
            rows = Rows(cu_q, cu_q if cu_k is None else cu_k, kwargs.get("max_length_q"), kwargs.get("max_length_k"))
            _check_covers(module, rows, batch * length_q, batch * length_k, "cu_seq_lens_q/k")
            return rows
        if (attention_mask is None or marker is not None) and length_q == length_k:
            found = _from_position_ids(kwargs.get("position_ids"), batch, length_q)
            if found is not None:
                return found
    if marker is None:
        return None  # one sequence per row; or a non-causal layer, whose chunk the text row does not describe
    rows = _from_marker(marker)
    _check_covers(module, rows, batch * length_q, batch * length_k, "the packed-row marker of its mask")
    return rows
