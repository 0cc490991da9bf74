"""PackedBatch: the packed tensors as views of one contiguous buffer, and ``unpack``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Dict, List, Optional, Union

import torch

__all__ = ["BufferLayout", "MODEL_KEYS", "PackedBatch", "TENSOR_KEYS", "unpack"]

#: Keys holding tensors, in buffer order; the int keys follow.
TENSOR_KEYS = ("input_ids", "labels", "position_ids", "seq_idx", "cu_seq_lens_q", "cu_seq_lens_k")
_INT_KEYS = ("max_length_q", "max_length_k")
_KEYS = (*TENSOR_KEYS, *_INT_KEYS)
#: The keys a model's forward reads: all but ``labels`` (the loss's) and ``seq_idx`` (per-sequence bookkeeping).
MODEL_KEYS = tuple(key for key in _KEYS if key not in ("labels", "seq_idx"))


class BufferLayout:
    """Byte offsets of the five arrays inside one packed buffer (int64 arrays first for alignment)."""

    __slots__ = ("total_tokens", "num_cu", "nbytes", "offsets")

    def __init__(self, total_tokens: int, num_cu: int) -> None:
        t = total_tokens
        self.total_tokens = t
        self.num_cu = num_cu
        # input_ids, labels, position_ids (int64), seq_idx (int32), cu_seqlens (int32)
        # The C++ writer (write_layout_buffer in cpp/layout.cpp) uses the same offsets.
        self.offsets = (0, 8 * t, 16 * t, 24 * t, 28 * t)
        # A multiple of 8, so that the whole buffer can be viewed as int64 (see views).
        self.nbytes = (28 * t + 4 * num_cu + 7) // 8 * 8

    def views(self, buffer: torch.Tensor) -> tuple:
        """Typed views of ``buffer``, a uint8 tensor of exactly ``nbytes`` (``PackedBatch`` keeps
        that slice of its pooled buffer, so it is not sliced again here).

        ``input_ids``, ``labels`` and ``position_ids`` as ``[1, T]``, ``seq_idx`` as ``[1, T]`` and
        ``cu_seqlens`` as ``[K]``. Two dtype views and five ``as_strided`` calls: a torch op costs
        microseconds, and slicing then re-typing then reshaping each array took three each.
        """
        t = self.total_tokens
        b64 = buffer.view(torch.int64)
        b32 = b64.view(torch.int32)
        at = b64.storage_offset()  # as_strided offsets count from the storage's start
        return (
            b64.as_strided((1, t), (t, 1), at),
            b64.as_strided((1, t), (t, 1), at + t),
            b64.as_strided((1, t), (t, 1), at + 2 * t),
            b32.as_strided((1, t), (t, 1), 2 * at + 6 * t),
            b32.as_strided((self.num_cu,), (1,), 2 * at + 7 * t),
        )


class PackedBatch(Mapping):
    """A packed batch: a read-only mapping of the model inputs, like transformers' ``BatchEncoding``.

    Built by :class:`~warppack.PackedCollator`, every tensor is a view of one contiguous host buffer,
    so :meth:`to` and :meth:`pin_memory` each move it in one copy. Keys: ``input_ids``, ``labels``,
    ``position_ids``, ``seq_idx`` (``[1, T]``), ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32),
    ``max_length_q``/``max_length_k`` (ints). Padding tokens, if any, come last, as one segment (or,
    under ``static_shape``, pieces of at most 512 tokens) whose ``seq_idx`` is -1 and whose labels
    are all ignored.

    A plain mapping of those keys is accepted too (``PackedBatch(dict(batch))``), which is what
    libraries that rebuild mappings key by key (HF Trainer's input preparation) do.

    Threads may read one batch (keys, statistics, ``to``) at the same time; setting or deleting a key
    while another thread uses the batch is not safe. Its buffer is never reused while the batch,
    or any tensor taken from it, is alive.
    """

    # A batch made from a buffer creates its tensor views on first access: the usual first call is
    # ``.to(device)``, which copies the buffer and never needs the host views (five torch ops, about
    # a quarter of collating an 8k-token batch), and a batch from a worker pickles one tensor.
    _data: Optional[Dict[str, Any]]

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        num_sequences: Optional[int] = None,
        num_padding: Optional[int] = None,
        _buffer: Optional[torch.Tensor] = None,
        _layout: Optional[BufferLayout] = None,
        _on_copy: Any = None,
    ) -> None:
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise KeyError(
                f"a PackedBatch needs the keys {list(_KEYS)}; missing {missing}. "
                f"Build batches with warppack.PackedCollator"
            )
        self._data = dict(data)
        self._max_length = self._data["max_length_q"]
        self._num_sequences = num_sequences
        self._num_padding = num_padding
        self._buffer = _buffer
        self._layout = _layout
        self._on_copy = _on_copy

    @classmethod
    def _from_buffer(
        cls,
        buffer: torch.Tensor,
        layout: BufferLayout,
        *,
        max_length: int,
        num_sequences: int,
        num_padding: int,
        on_copy: Any = None,
    ) -> "PackedBatch":
        # Every key is there by construction: skip __init__'s check and copy (once per batch).
        batch = cls.__new__(cls)
        batch._data = None  # views made on first access (see _items)
        batch._max_length, batch._num_sequences, batch._num_padding = max_length, num_sequences, num_padding
        # ``buffer`` is exactly layout.nbytes and the batch's own tensor (the pool hands out views,
        # never its own tensors): that reference to the storage is how the pool knows the buffer is
        # in use before any key has been read.
        batch._buffer, batch._layout, batch._on_copy = buffer, layout, on_copy
        return batch

    def __getstate__(self) -> Dict[str, Any]:
        # The copy notifier belongs to this process's buffer pool; a copy elsewhere needs none.
        return {**self.__dict__, "_on_copy": None}

    def _items(self) -> Dict[str, Any]:
        data = self._data
        if data is None:
            assert self._buffer is not None and self._layout is not None  # set together in _from_buffer
            ids, labels, positions, seq_idx, cu = self._layout.views(self._buffer)
            data = self._data = {
                "input_ids": ids,
                "labels": labels,
                "position_ids": positions,
                "seq_idx": seq_idx,
                "cu_seq_lens_q": cu,
                "cu_seq_lens_k": cu,
                "max_length_q": self._max_length,
                "max_length_k": self._max_length,
            }
        return data

    # -- Mapping -----------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS if self._data is None else self._data)

    def __len__(self) -> int:
        return len(_KEYS) if self._data is None else len(self._data)

    def __setitem__(self, key: str, value: Any) -> None:
        # Trainers add flags such as ``use_cache=False`` before the forward (TRL's SFTTrainer does).
        # Replacing one of the packed tensors detaches the batch from its single buffer, so later
        # moves copy tensor by tensor instead of copying a buffer that no longer matches.
        data = self._items()
        if key in TENSOR_KEYS:
            self._buffer = None
            self._layout = None
        data[key] = value

    def __delitem__(self, key: str) -> None:
        if key in TENSOR_KEYS or key in _INT_KEYS:
            raise KeyError(f"{key!r} is part of the packed layout and cannot be removed")
        del self._items()[key]

    def __getattr__(self, name: str) -> Any:
        # Attribute access to keys (batch.input_ids), as BatchEncoding allows.
        state = self.__dict__
        if "_data" in state and (name in _KEYS or (state["_data"] is not None and name in state["_data"])):
            return self._items()[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def model_inputs(self) -> Dict[str, Any]:
        """What ``model(**...)`` takes: the ``MODEL_KEYS`` and any key set on the batch (``use_cache``)."""
        return {key: value for key, value in self._items().items() if key in MODEL_KEYS or key not in _KEYS}

    # -- statistics --------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return self._total_tokens() - self.num_padding

    @property
    def num_padding(self) -> int:
        """Padding tokens added for ``pad_to_multiple_of`` or ``static_shape``."""
        if self._num_padding is None:
            self._num_padding = int((self._items()["seq_idx"] < 0).sum())
        return self._num_padding

    @property
    def num_sequences(self) -> int:
        """Real sequences in the batch (padding segments and empty tail segments excluded)."""
        if self._num_sequences is None:
            cu = self._items()["cu_seq_lens_q"]
            starts = cu[:-1]
            real = (cu[1:] > starts) & (starts < self._total_tokens() - self.num_padding)
            self._num_sequences = int(real.sum())
        return self._num_sequences

    @property
    def device(self) -> torch.device:
        if self._buffer is not None:
            return self._buffer.device
        return self._items()["input_ids"].device

    def _total_tokens(self) -> int:
        if self._layout is not None:
            return self._layout.total_tokens
        return int(self._items()["input_ids"].shape[-1])

    # -- movement ----------------------------------------------------------------------------
    def _with_buffer(self, buffer: torch.Tensor, layout: BufferLayout) -> "PackedBatch":
        return PackedBatch._from_buffer(
            buffer,
            layout,
            max_length=self._max_length if self._data is None else self._data["max_length_q"],
            num_sequences=self.num_sequences,
            num_padding=self.num_padding,
        )

    def to(self, device: Union[str, torch.device, int], *, non_blocking: bool = False, **kwargs: Any) -> "PackedBatch":
        """Move the batch to ``device`` in one copy of its buffer (views are re-sliced there)."""
        if isinstance(device, torch.dtype):
            raise TypeError(
                f"PackedBatch.to({device}) would cast token ids; a packed batch keeps its integer "
                f"dtypes. Pass a device, e.g. batch.to('cuda')"
            )
        device = torch.device(device) if not isinstance(device, torch.device) else device
        if self._buffer is None or self._layout is None:  # set and cleared together
            moved = {
                k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
                for k, v in self._items().items()
            }
            return PackedBatch(moved, num_sequences=self._num_sequences, num_padding=self._num_padding)
        if self._buffer.device == device:
            return self
        buffer = self._buffer.to(device, non_blocking=non_blocking)
        if self._on_copy is not None:
            # Lets the pinned pool know when an async copy out of its buffer has finished.
            self._on_copy(self._buffer, device)
        return self._with_buffer(buffer, self._layout)

    def cuda(self, device: Any = None, *, non_blocking: bool = False) -> "PackedBatch":
        return self.to(torch.device("cuda", device) if isinstance(device, int) else (device or "cuda"), non_blocking=non_blocking)

    def cpu(self) -> "PackedBatch":
        return self.to("cpu")

    def pin_memory(self, device: Any = None) -> "PackedBatch":
        """Return the batch with its buffer in pinned memory (one copy); used by ``DataLoader(pin_memory=True)``."""
        if self._buffer is None or self._layout is None:
            pinned = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in self._items().items()}
            return PackedBatch(pinned, num_sequences=self._num_sequences, num_padding=self._num_padding)
        if self._buffer.is_pinned():
            return self
        return self._with_buffer(self._buffer.pin_memory(), self._layout)

    def storage_ptr(self) -> Optional[int]:
        """Data pointer of the one buffer behind every tensor (None for a batch rebuilt from a dict)."""
        return None if self._buffer is None else self._buffer.data_ptr()

    def __repr__(self) -> str:
        t = self._total_tokens()
        return (
            f"PackedBatch(num_sequences={self.num_sequences}, num_tokens={self.num_tokens}, "
            f"num_padding={self.num_padding}, total={t}, max_length={self['max_length_q']}, "
            f"device={self.device})"
        )


def unpack(
    x: torch.Tensor,
    cu_seqlens: Union[torch.Tensor, PackedBatch, Any],
    *,
    num_sequences: Optional[int] = None,
) -> List[torch.Tensor]:
    """Split a packed tensor back into per-sequence views.

    ``x`` is ``[1, T, ...]`` or ``[T, ...]`` (logits, hidden states, per-token losses, ids).
    Pass the batch itself as ``cu_seqlens`` to get exactly its real sequences (padding dropped);
    with a raw ``cu_seqlens`` tensor every segment is returned unless ``num_sequences`` is given.

    >>> import torch
    >>> unpack(torch.arange(5), torch.tensor([0, 2, 5]))
    [tensor([0, 1]), tensor([2, 3, 4])]
    """
    if isinstance(cu_seqlens, PackedBatch):
        if num_sequences is None:
            num_sequences = cu_seqlens.num_sequences
        cu_seqlens = cu_seqlens["cu_seq_lens_q"]
    if torch.is_tensor(cu_seqlens):
        bounds = cu_seqlens.detach().to("cpu", torch.int64).tolist()
    else:
        bounds = [int(b) for b in cu_seqlens]
    if x.dim() >= 2 and x.shape[0] == 1 and x.shape[1] == (bounds[-1] if bounds else 0):
        x = x[0]
    total = x.shape[0]
    if not bounds or bounds[0] != 0 or bounds[-1] > total or any(b > a for a, b in zip(bounds[1:], bounds)):
        raise ValueError(
            f"cu_seqlens must start at 0, never decrease and end at most at the packed length {total}; "
            f"got {bounds[:8]}{'...' if len(bounds) > 8 else ''}"
        )
    count = len(bounds) - 1 if num_sequences is None else num_sequences
    if not 0 <= count <= len(bounds) - 1:
        raise ValueError(f"num_sequences={count} but cu_seqlens describes {len(bounds) - 1} segments")
    return [x[bounds[i] : bounds[i + 1]] for i in range(count)]
