"""lengths_of: token counts per example, without a Python loop per row where the data allows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from warppack.engine.options import index_past_int64, is_int

__all__ = ["MissingColumnError", "column_lengths", "lengths_of"]

_COLUMN_HINT = "lengths_of(data, column=...)"
_SEQUENCE_TYPES = (list, tuple)


class MissingColumnError(KeyError, ValueError):
    """A column or field that is not there: a KeyError like any lookup, and a ValueError (a bad argument)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        return f"a {type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    shown = repr(value)
    return f"{shown[:40]}{'...' if len(shown) > 40 else ''} ({type(value).__name__})"


def _bad_row(row: Any, where: str) -> TypeError:
    if isinstance(row, (str, bytes)):
        fix = "tokenize first (e.g. datasets' map with your tokenizer), then count the token ids"
    elif is_int(row):
        fix = "pass an int array of lengths (np.asarray) or a list of examples"
    else:
        fix = "each example must be one 1-D sequence of integer token ids (unbatched: ids[0], not ids)"
    return TypeError(f"{where} is {_describe(row)}, not a sequence of token ids; {fix}")


def _row_length(row: Any, where: str) -> int:
    """Tokens of one example; checks its container and first item (the collator checks every token)."""
    if isinstance(row, _SEQUENCE_TYPES):
        if row and not is_int(row[0]):
            fix = "tokenize first" if isinstance(row[0], str) else "pass one 1-D sequence of token ids per example"
            raise TypeError(f"{where} holds {_describe(row[0])} at position 0, not an integer token id; {fix}")
        return len(row)
    if hasattr(row, "detach"):  # a torch tensor
        row = row.detach().cpu().numpy()
    if isinstance(row, np.ndarray) and row.ndim == 1 and (row.dtype.kind in "iu" or row.size == 0):
        return int(row.shape[0])
    raise _bad_row(row, where)


def _rows_lengths(rows: Any, column: str, name: str) -> np.ndarray:
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__len__") or not hasattr(rows, "__iter__"):
        raise TypeError(
            f"{name} must be a dataset, a list of examples or sequences, or an array of lengths, got "
            f"{_describe(rows)}" + ("; pass list(...) of it" if hasattr(rows, "__iter__") else "")
        )
    lengths = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        field = None
        if isinstance(row, Mapping):
            if column not in row:
                raise MissingColumnError(
                    f"example {i} has no {column!r} field; it has {sorted(map(str, row))[:8]}; pass "
                    f"lengths_of(data, column=...) naming the field of token ids"
                )
            row, field = row[column], column
        # Lists of ints, the usual rows, pass the first test: this loop runs once per example.
        if type(row) is list and (not row or type(row[0]) is int):
            lengths[i] = len(row)
        else:
            lengths[i] = _row_length(row, f"{name}[{i}]" if field is None else f"example {i}: {field!r}")
    return lengths


def _array_lengths(array: np.ndarray, name: str) -> np.ndarray:
    """An array given as the lengths themselves: 1-D, integers, each in 0..2**63-1."""
    if array.ndim != 1:
        raise ValueError(
            f"{name} has shape {array.shape}; lengths_of reads a 1-D integer array as the lengths. For "
            f"padded token ids pass the attention mask's row sums, or a list of unpadded sequences"
        )
    if array.dtype.kind not in "iu" and array.size:
        raise TypeError(
            f"{name} has dtype {array.dtype}; lengths_of reads a 1-D integer array as the lengths "
            f"(token counts); pass integers, e.g. np.asarray(lengths, dtype=np.int64)"
        )
    if array.size and array.dtype.kind == "i" and array.min() < 0:
        low = int(np.argmin(array))
        raise ValueError(f"{name}[{low}] = {int(array[low])} is negative; lengths are token counts >= 0")
    high = index_past_int64(array)
    if high is not None:
        raise ValueError(
            f"{name}[{high}] = {int(array[high])} overflows int64; token counts must be below 2**63"
        )
    return array.astype(np.int64, copy=False)


def _is_arrow(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyarrow")


def _arrow_lengths(column: Any, name: str, column_hint: str = _COLUMN_HINT) -> np.ndarray:
    """Lengths of an Arrow column (Array or ChunkedArray): list offsets, or integers as lengths."""
    import pyarrow as pa

    kind = column.type
    if column.null_count and not pa.types.is_null(kind):
        raise ValueError(f"{name} has {column.null_count} null rows; drop or fill them before packing")
    if pa.types.is_null(kind):  # what an empty list column (or one of only nulls) infers
        if len(column):
            raise ValueError(
                f"{name} holds only nulls ({len(column)} rows); drop or fill them before packing"
            )
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_integer(kind):
        return _array_lengths(np.asarray(column), name)
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not (pa.types.is_integer(kind.value_type) or pa.types.is_null(kind.value_type)):
        other = f"pass the column of token ids ({column_hint})"
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            raise TypeError(f"{name} holds text ({kind}), not lists of integer token ids (nor integer lengths); "
                            f"tokenize the text first (e.g. datasets' map with your tokenizer), or {other}")
        raise TypeError(f"{name} holds {kind}, not lists of integer token ids (nor integer lengths); {other}")
    if pa.types.is_fixed_size_list(kind):
        return np.full(len(column), kind.list_size, dtype=np.int64)
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    # Zero-copy views of the offsets buffers: no loop over rows.
    parts = [np.diff(np.asarray(chunk.offsets)).astype(np.int64, copy=False) for chunk in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _is_dataset(data: Any) -> bool:
    """A HF ``datasets.Dataset``: an Arrow table plus an optional indices mapping."""
    return hasattr(data, "_indices") and hasattr(data, "column_names") and hasattr(data, "data")


def column_lengths(data: Any, column: str, *, column_hint: str = _COLUMN_HINT) -> np.ndarray:
    """Token counts of ``column`` of a HF ``datasets.Dataset`` or a ``pyarrow`` Table or RecordBatch.

    Read from the column's Arrow list offsets (no loop over rows; a dataset's ``select``/``shuffle``
    view is honoured); an integer column is taken as the lengths themselves. A column that is
    missing or holds no token ids raises a KeyError/TypeError/ValueError naming it, whose fix names
    another column the way ``column_hint`` says (a CLI passes its flag).
    """
    dataset = _is_dataset(data)
    if column not in data.column_names:
        raise _missing(column, "the dataset" if dataset else "the table", data.column_names, column_hint)
    table = data.data if dataset else data
    lengths = _arrow_lengths(table.column(column), f"column {column!r}", column_hint)
    if dataset and data._indices is not None:
        lengths = lengths[np.asarray(data._indices.column(0).to_numpy(), dtype=np.int64)]
    return lengths


def _missing(column: str, where: str, names: Any, column_hint: str = _COLUMN_HINT) -> MissingColumnError:
    return MissingColumnError(f"column {column!r} not in {where}; it has {list(names)}; pass {column_hint}")


def lengths_of(data: Any, column: str = "input_ids") -> np.ndarray:
    """Token count of every example in ``data``, as an int64 numpy array.

    ``data`` may be a HF ``datasets.Dataset`` (read from its Arrow offsets, no loop over rows;
    ``select``/``shuffle`` views are honoured), a ``pyarrow`` Table or list column, a dict of columns
    (tokenizer output), a list of examples (mappings holding ``column``), a list of sequences of token
    ids, or a 1-D integer array of lengths. An integer column is taken as the lengths themselves.
    Anything else (text, floats, nested or 0-D rows, a missing column) raises a TypeError or
    ValueError naming the example or column; rows are checked by container and first item, the
    collator checks every token.

    >>> lengths_of([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]).tolist()
    [3, 1]
    """
    if not isinstance(column, str):
        raise TypeError(f"column must be the name of the field of token ids, got {column!r}; pass e.g. "
                        f"column='input_ids'")
    if _is_dataset(data) or (_is_arrow(data) and hasattr(data, "column_names")):  # or a Table or RecordBatch
        return column_lengths(data, column)
    if _is_arrow(data) and hasattr(data, "type") and hasattr(data, "null_count"):  # an Array or ChunkedArray
        return _arrow_lengths(data, "data")
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor of lengths
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray) and (data.dtype != object or data.ndim != 1):
        return _array_lengths(data, "data")
    if isinstance(data, Mapping):  # a dict of columns (tokenizer output)
        if column not in data:
            raise _missing(column, "data", data.keys())
        return _rows_lengths(data[column], column, f"data[{column!r}]")
    return _rows_lengths(data, column, "data")
