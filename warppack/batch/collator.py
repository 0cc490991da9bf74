"""PackedCollator: a drop-in ``collate_fn`` that packs a list of examples into one PackedBatch."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from operator import is_, is_not, itemgetter
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from warppack import _packer
from warppack.batch.packed import BufferLayout, PackedBatch
from warppack.batch.pool import BufferPool
from warppack.engine.config import PackingConfig, merge_packing
from warppack.engine.options import INT64_MAX, check_flag, check_int, check_optional_count, index_past_int64

__all__ = ["PackedCollator", "as_token_array", "empty_step"]

# The layout writer reads these in place (and widens while copying); others are converted once.
_ENGINE_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_DICT = {dict}
_NDARRAY = {np.ndarray}
_NDARRAY_OR_NONE = {np.ndarray, type(None)}
_INPUT_IDS = itemgetter("input_ids")
_ENGINE_SEQUENCE = re.compile(r"^sequence (\d+) has token id")


def _where(index: int, field: str) -> str:
    # The position in the list the collator got: examples carry no dataset index.
    return f"example {index} of this batch: {field!r}"


def as_token_array(value: Any, *, index: int, field: str) -> np.ndarray:
    """Return ``value`` as a contiguous 1-D int32/int64 array, or raise naming the example and field."""
    if torch.is_tensor(value):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{_where(index, field)} has dtype {value.dtype}; token ids must be integers "
                f"(cast with .long(), or check the tokenizer output)"
            )
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):  # ragged nesting, as numpy's "inhomogeneous shape"
        raise ValueError(
            f"{_where(index, field)} holds nested sequences of different lengths ({repr(value)[:40]}); each "
            f"example must be one 1-D sequence of token ids"
        ) from None
    if array.dtype == object or array.dtype.kind not in "iu":
        if array.size == 0:
            array = array.astype(np.int64)
        else:
            sample = array.reshape(-1)[:3].tolist()
            if array.dtype == object and all(isinstance(v, int) and not isinstance(v, bool) for v in sample):
                raise ValueError(
                    f"{_where(index, field)} holds {sample}, past the int64 range of the output; token ids "
                    f"must be in 0..2**63-1"
                )
            raise TypeError(
                f"{_where(index, field)} has dtype {array.dtype}; token ids must be integers "
                f"(got e.g. {sample}); tokenize to ints before collating"
            )
    if array.ndim != 1:
        raise ValueError(
            f"{_where(index, field)} has shape {array.shape}; each example must be one 1-D "
            f"sequence. Pass unbatched examples (e.g. ids[0] or tokenizer(..., return_tensors=None))"
        )
    high = index_past_int64(array)
    if high is not None:
        raise ValueError(
            f"{_where(index, field)} holds {int(array[high])}, which overflows the int64 output; "
            f"token ids must be below 2**63"
        )
    if array.dtype not in _ENGINE_DTYPES or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=np.int64)
    return array


def _check_mask(mask: Any, length: int, index: int) -> None:
    array = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if array.dtype.kind not in "biu" and array.size:
        raise TypeError(
            f"{_where(index, 'attention_mask')} has dtype {array.dtype}; pass the tokenizer's mask of 0/1 "
            f"ints, or leave it out"
        )
    if array.shape != (length,):
        raise ValueError(
            f"{_where(index, 'attention_mask')} has shape {array.shape} but 'input_ids' has {length} "
            f"tokens; pass the mask of this example (or leave it out)"
        )
    if length and not bool(array.all()):
        raise ValueError(
            f"{_where(index, 'attention_mask')} contains zeros, i.e. the example is padded; "
            f"warppack packs unpadded examples: tokenize with padding=False"
        )


def _masks_all_ones(masks: List[Any], lengths: List[int]) -> bool:
    """True when every mask given is a 1-D numpy 0/1 array of its example's length with no zeros."""
    given_at = list(map(is_not, masks, repeat(None)))
    given = list(compress(masks, given_at))
    if set(map(type, given)) - _NDARRAY or set(map(np.ndim, given)) - {1}:
        return False
    if list(map(len, given)) != list(compress(lengths, given_at)):
        return False
    joined = np.concatenate(given)  # one pass over the batch's mask tokens, not one call per example
    return joined.dtype.kind in "biu" and bool(joined.all())


_SPLIT_REFUSED = ("overlong={overlong!r}: a collator can 'error' or 'truncate' an example longer than max_tokens; "
                  "to split long documents use warppack.plan(..., overlong='split') or "
                  "warppack.PackedIterableDataset(..., overlong='split')")


class PackedCollator:
    """Pack a list of examples into one :class:`~warppack.PackedBatch` (use as ``collate_fn``).

    Each example is a mapping with ``input_ids`` and optionally ``labels`` (lists, numpy arrays
    or tensors). Sequences are concatenated into one row with ``position_ids`` restarting at 0,
    ``cu_seq_lens_q/k`` marking the boundaries and the first label of every sequence ignored, so
    no token is trained to predict across a boundary.

    ``max_tokens`` is the token budget a batch may not exceed, padding included (use
    :class:`PackedBatchSampler` to form batches that fit). ``pad_to_multiple_of`` pads the total
    length; with a budget too, the budget must be a multiple of it. ``static_shape=True`` pads every
    batch to exactly ``max_tokens`` tokens and ``max_sequences + 1`` boundaries, so
    ``torch.compile`` and CUDA graphs see one shape (the padding is laid out in segments of at most
    512 tokens as far as spare boundaries allow, so attention over it stays cheap).
    ``pin_memory="auto"`` writes into a reusable pinned buffer when CUDA is available and the
    collator runs in the main process. ``overlong="truncate"`` keeps the first ``max_tokens`` tokens
    of a longer example (the sampler counts them and warns).

    ``packing``: a :class:`~warppack.PackingConfig` giving ``max_tokens``, ``overlong``,
    ``pad_to_multiple_of``, ``static_shape`` and ``max_sequences``; arguments left at their defaults
    take its values, and one that disagrees with it is an error. ``.packing`` is the config this
    collator implies (``overlong`` None when none was chosen): build the sampler from it, and the two
    agree on the budget and the policy.

    :meth:`empty_batch` is the zero-loss step (one padding token, or the static shape, every label
    ignored) that a rank without data runs to keep step counts equal. An empty list is refused
    unless ``allow_empty=True``, which makes it that step: a ``DataLoader`` over a
    :class:`PackedBatchSampler` passes ``[]`` where a rank has no sequences left (fewer sequences
    than ``steps × num_replicas``). Errors name the example by its position in the list
    (``example 2 of this batch``) and the field, value and fix. One collator may be shared by
    threads: its buffer pool never hands one buffer to two batches.

    >>> collate = PackedCollator()
    >>> batch = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    >>> batch["position_ids"].tolist(), batch["cu_seq_lens_q"].tolist()
    ([[0, 1, 2, 0, 1]], [0, 3, 5])
    >>> batch["labels"].tolist()
    [[-100, 6, 7, -100, 9]]
    """

    packing: PackingConfig
    max_tokens: Optional[int]
    pad_token_id: int
    label_pad_id: int
    pad_to_multiple_of: Optional[int]
    static_shape: bool
    max_sequences: Optional[int]
    pin_memory: Union[bool, str]
    overlong: str
    skip_empty: bool
    allow_empty: bool
    _pools: Dict[bool, BufferPool]

    def __init__(
        self,
        max_tokens: Optional[int] = None,
        *,
        packing: Optional[PackingConfig] = None,
        pad_token_id: int = 0,
        label_pad_id: int = -100,
        pad_to_multiple_of: Optional[int] = None,
        static_shape: bool = False,
        max_sequences: Optional[int] = None,
        pin_memory: Union[bool, str] = "auto",
        overlong: str = "error",
        skip_empty: bool = False,
        allow_empty: bool = False,
    ) -> None:
        max_tokens = check_optional_count(max_tokens, name="max_tokens")
        # The layout writer stores ids as int64: a larger id would fail at every batch instead of here.
        self.pad_token_id = check_int(pad_token_id, name="pad_token_id", minimum=0, maximum=INT64_MAX)
        self.label_pad_id = check_int(label_pad_id, name="label_pad_id", minimum=-INT64_MAX - 1, maximum=INT64_MAX,
                                      example=-100)
        pad_to_multiple_of = check_optional_count(pad_to_multiple_of, name="pad_to_multiple_of")
        static_shape = check_flag(static_shape, name="static_shape")
        max_sequences = check_optional_count(max_sequences, name="max_sequences")
        if pin_memory not in ("auto", True, False):
            raise ValueError(f"pin_memory must be 'auto', True or False, got {pin_memory!r}")
        if pin_memory is True and not torch.cuda.is_available():
            raise ValueError("pin_memory=True needs CUDA, which is not available; use pin_memory='auto'")
        self.pin_memory = pin_memory
        if overlong not in ("error", "truncate"):
            raise ValueError(_SPLIT_REFUSED.format(overlong=overlong))
        # Arguments at their defaults take the config's values ("error" included: it means none was chosen).
        self.packing = merge_packing(
            packing, {"max_tokens": max_tokens, "pad_to_multiple_of": pad_to_multiple_of,
                      "static_shape": static_shape or None, "max_sequences": max_sequences,
                      "overlong": None if overlong == "error" else overlong}, owner="PackedCollator")
        self.max_tokens, self.pad_to_multiple_of = self.packing.max_tokens, self.packing.pad_to_multiple_of
        self.static_shape, self.max_sequences = self.packing.static_shape, self.packing.max_sequences
        self.overlong = self.packing.overlong or "error"
        if self.overlong not in ("error", "truncate"):
            raise ValueError(_SPLIT_REFUSED.format(overlong=self.overlong))
        if self.static_shape and self.max_tokens is None:
            raise ValueError("static_shape=True pads every batch to max_tokens; pass max_tokens=... too")
        if self.overlong == "truncate" and self.max_tokens is None:
            raise ValueError("overlong='truncate' truncates to max_tokens; pass max_tokens=... too")
        self.skip_empty = check_flag(skip_empty, name="skip_empty")
        self.allow_empty = check_flag(allow_empty, name="allow_empty")
        self._pools = {}

    def __getstate__(self) -> Dict[str, Any]:
        # Buffers stay with this process; a copy (e.g. in a DataLoader worker) starts without any.
        state = dict(self.__dict__)
        del state["_pools"]
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pools = {}

    # -- examples -> arrays ------------------------------------------------------------------
    def _fast_arrays(self, examples: Sequence[Any]) -> Optional[Tuple[List[Any], Optional[List[Any]], List[int]]]:
        """The common batch (dicts of non-empty int32/int64 arrays within budget), checked in bulk.

        Returns None whenever anything is unusual; the per-example path then converts what it can
        and names the example, field and value of anything it cannot. Widths, dimensions and
        layouts are checked again when the engine takes the buffers (TypeError: per-example path).
        """
        # Whole-list builtins (map, set, all) rather than a Python loop: this runs once per batch
        # and is most of the collator's Python time.
        if set(map(type, examples)) - _DICT:
            return None
        try:
            ids_list = list(map(_INPUT_IDS, examples))
        except KeyError:
            return None
        if set(map(type, ids_list)) - _NDARRAY:
            return None
        try:
            lengths = list(map(len, ids_list))
        except TypeError:  # a 0-D array
            return None
        if lengths and (min(lengths) == 0 or (self.max_tokens is not None and max(lengths) > self.max_tokens)):
            return None
        labels = list(map(dict.get, examples, repeat("labels")))
        labels_list: Optional[List[Any]] = labels
        if all(map(is_, labels, repeat(None))):  # not list.count: that compares arrays with ==
            labels_list = None
        elif set(map(type, labels)) - _NDARRAY_OR_NONE:
            return None
        masks = list(map(dict.get, examples, repeat("attention_mask")))
        if not all(map(is_, masks, repeat(None))) and not _masks_all_ones(masks, lengths):
            return None
        return ids_list, labels_list, lengths

    def _arrays(self, examples: Sequence[Any]) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]], List[int]]:
        ids_list: List[np.ndarray] = []
        labels_list: List[Optional[np.ndarray]] = []
        kept: List[int] = []
        for index, example in enumerate(examples):
            if not isinstance(example, Mapping) or "input_ids" not in example:
                got = repr(example)[:40]
                if isinstance(example, Mapping):
                    got = f"the keys {sorted(map(str, example))[:6]}"
                raise TypeError(
                    f"example {index} of this batch: expected a mapping with 'input_ids' (and optional "
                    f"'labels'), got {got}"
                )
            ids = as_token_array(example["input_ids"], index=index, field="input_ids")
            labels = example.get("labels")
            if labels is not None:
                labels = as_token_array(labels, index=index, field="labels")
                if len(labels) != len(ids):
                    raise ValueError(
                        f"{_where(index, 'labels')} has {len(labels)} tokens but 'input_ids' has "
                        f"{len(ids)}; they must align (warppack shifts nothing: labels[t] is the target "
                        f"at position t, as in transformers)"
                    )
            mask = example.get("attention_mask")
            if mask is not None:
                _check_mask(mask, len(ids), index)
            if len(ids) == 0:
                if self.skip_empty:
                    continue
                raise ValueError(
                    f"{_where(index, 'input_ids')} is empty; filter empty examples out or pass "
                    f"PackedCollator(skip_empty=True)"
                )
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                if self.overlong == "truncate":
                    ids = ids[: self.max_tokens]
                    labels = None if labels is None else labels[: self.max_tokens]
                else:
                    raise ValueError(
                        f"{_where(index, 'input_ids')} has {len(ids)} tokens, more than "
                        f"max_tokens={self.max_tokens}; raise max_tokens, filter long examples, or pass "
                        f"PackedCollator(overlong='truncate')"
                    )
            ids_list.append(ids)
            labels_list.append(labels)
            kept.append(index)
        return ids_list, labels_list, kept

    # -- sizes ------------------------------------------------------------------------------
    def _shape(self, real_tokens: int, num_sequences: int) -> Tuple[int, int, bool]:
        if self.max_tokens is not None and real_tokens > self.max_tokens:
            raise ValueError(
                f"the {num_sequences} examples of this batch hold {real_tokens} tokens, more than "
                f"max_tokens={self.max_tokens}; form batches with warppack.PackedBatchSampler (or "
                f"PackedIterableDataset), or raise max_tokens"
            )
        if self.static_shape and self.max_tokens is not None:  # __init__ ensures it is set
            total = self.max_tokens
        else:
            total = max(real_tokens, 1)  # an empty batch is one padding token: a zero-loss step
            if self.pad_to_multiple_of:
                total = -(-total // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if total >= 2**31:
            raise ValueError(
                f"this batch holds {total} tokens, past the int32 range of cu_seqlens; lower max_tokens"
            )
        has_padding = total > real_tokens
        segments = num_sequences + has_padding
        if self.static_shape:
            limit = self.max_sequences or total
            if num_sequences > limit:
                raise ValueError(
                    f"this batch has {num_sequences} sequences, more than max_sequences={limit}; raise "
                    f"max_sequences or cap the sampler with max_seqs_per_bin={limit}"
                )
            num_cu = limit + 2  # one shape always; the entries left spare let the writer split the padding
        else:
            if self.max_sequences is not None and num_sequences > self.max_sequences:
                raise ValueError(
                    f"this batch has {num_sequences} sequences, more than max_sequences="
                    f"{self.max_sequences}; raise it or cap the sampler with max_seqs_per_bin"
                )
            num_cu = segments + 1
        return total, num_cu, has_padding

    def _buffer(self, nbytes: int) -> Tuple[torch.Tensor, Optional[BufferPool]]:
        """Exactly ``nbytes`` bytes that no other batch uses, and the pool they came from."""
        in_worker = torch.utils.data.get_worker_info() is not None
        pinned = self.pin_memory is True or (
            self.pin_memory == "auto" and not in_worker and torch.cuda.is_available()
        )
        if in_worker:
            # Workers hand batches to another process; a pooled buffer would be shared memory
            # that the main process keeps, so allocate fresh (the loader pins once if asked).
            return torch.empty(nbytes, dtype=torch.uint8), None
        pool = self._pools.get(pinned)
        if pool is None:  # setdefault is atomic: threads making their first batch together share one pool
            pool = self._pools.setdefault(pinned, BufferPool(pinned=pinned))
        return pool.acquire(nbytes), pool

    # -- public ------------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Any]) -> PackedBatch:
        if type(examples) is not list and (
            isinstance(examples, (Mapping, str, bytes)) or not isinstance(examples, Sequence)
        ):
            fix = "wrap it in a list" if isinstance(examples, Mapping) else "pass list(examples)"
            raise TypeError(
                f"examples must be a list of examples (what a DataLoader passes to collate_fn), got "
                f"{type(examples).__name__}; {fix}"
            )
        if not len(examples):
            if self.allow_empty:
                return self.empty_batch()
            raise ValueError(
                f"examples={examples!r} holds no example, and a batch needs at least one. If the batch came "
                f"from PackedBatchSampler's equal-steps padding (fewer sequences than steps × num_replicas), "
                f"build the collator with PackedCollator(..., allow_empty=True) to run it as a zero-loss step; "
                f"for such a step in your own loop call collator.empty_batch()"
            )
        fast = self._fast_arrays(examples)
        if fast is not None:
            try:
                return self._pack(*fast)
            except (TypeError, ValueError):
                pass  # the per-example path below converts the input or says what is wrong with it
        ids_list, labels_list, kept = self._arrays(examples)
        try:
            return self._pack(ids_list, labels_list, [len(ids) for ids in ids_list])
        except ValueError as error:
            raise ValueError(_name_example(str(error), kept)) from None

    def empty_batch(self) -> PackedBatch:
        """The zero-loss step: one padding token (or the static shape), every label ignored, no sequence.

        A rank without data runs it to keep step counts equal: forward, backward and every collective
        happen as on any other step, and its loss and gradients are zero.
        """
        return self._pack([], None, [])

    def _pack(self, ids_list: List[Any], labels_list: Optional[List[Any]], lengths: List[int]) -> PackedBatch:
        real_tokens = sum(lengths)
        total, num_cu, has_padding = self._shape(real_tokens, len(ids_list))
        layout = BufferLayout(total, num_cu)
        buffer, pool = self._buffer(layout.nbytes)
        host = buffer.numpy()
        _packer.write_layout_into(
            ids_list, labels_list, total, num_cu, self.pad_token_id, self.label_pad_id, host
        )
        padding = total - real_tokens
        max_length = total if self.static_shape else max(max(lengths, default=0), padding)
        return PackedBatch._from_buffer(
            buffer,
            layout,
            max_length=max_length,
            num_sequences=len(ids_list),
            num_padding=padding,
            on_copy=None if pool is None else pool.note_copy,
        )

    def __repr__(self) -> str:
        return (
            f"PackedCollator(max_tokens={self.max_tokens}, pad_token_id={self.pad_token_id}, "
            f"label_pad_id={self.label_pad_id}, pad_to_multiple_of={self.pad_to_multiple_of}, "
            f"static_shape={self.static_shape}, pin_memory={self.pin_memory!r}, "
            f"allow_empty={self.allow_empty})"
        )


def empty_step(collate: Callable[[List[Any]], Any]) -> Any:
    """The zero-loss step of ``collate``: ``empty_batch()`` of a PackedCollator; any other function gets ``[]``."""
    if isinstance(collate, PackedCollator):
        return collate.empty_batch()
    return collate([])


def _name_example(message: str, kept: List[int]) -> str:
    """An engine error names sequence i of the packed row; users know example kept[i]."""
    match = _ENGINE_SEQUENCE.match(message)
    if match is not None and int(match.group(1)) < len(kept):
        index = kept[int(match.group(1))]
        message = f"{_where(index, 'input_ids')} has token id{message[match.end():]} (check the tokenizer)"
    return f"{message} (in a batch of {len(kept)} examples)"
