"""lengths_of: token counts per example, without a Python loop per row where the data allows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["lengths_of"]


def _arrow_list_lengths(column: Any) -> np.ndarray:
    """Lengths of an Arrow list column (Array or ChunkedArray) straight from its offsets."""
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    parts = []
    for chunk in chunks:
        if chunk.null_count:
            raise ValueError(
                f"the column has {chunk.null_count} null rows; drop or fill them before packing"
            )
        offsets = np.asarray(chunk.offsets)  # zero-copy view of the Arrow buffer
        parts.append(np.diff(offsets).astype(np.int64, copy=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _is_arrow(obj: Any) -> bool:
    return type(obj).__module__.startswith("pyarrow")


def lengths_of(data: Any, column: str = "input_ids") -> np.ndarray:
    """Token count of every example in ``data``, as an int64 numpy array.

    ``data`` may be a HF ``datasets.Dataset`` (read from its Arrow offsets, no loop over rows;
    ``select``/``shuffle`` views are honoured), a ``pyarrow`` Table or list column, a list of
    examples (mappings holding ``column``), a list of sequences, or an array of lengths.

    >>> lengths_of([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}]).tolist()
    [3, 1]
    """
    # HF datasets.Dataset: Arrow table plus an optional indices mapping.
    if hasattr(data, "_indices") and hasattr(data, "column_names") and hasattr(data, "data"):
        if column not in data.column_names:
            raise KeyError(f"column {column!r} not in the dataset; it has {data.column_names}")
        table = data.data
        lengths = _arrow_list_lengths(table.column(column))
        if data._indices is not None:
            indices = np.asarray(data._indices.column(0).to_numpy(), dtype=np.int64)
            lengths = lengths[indices]
        return lengths
    if _is_arrow(data):
        if hasattr(data, "column_names"):  # a Table or RecordBatch
            if column not in data.column_names:
                raise KeyError(f"column {column!r} not in the table; it has {data.column_names}")
            data = data.column(column)
        return _arrow_list_lengths(data)
    if isinstance(data, np.ndarray) and data.dtype.kind in "iu" and data.ndim == 1:
        return data.astype(np.int64, copy=False)
    if hasattr(data, "detach"):  # torch tensor of lengths
        return lengths_of(data.detach().cpu().numpy(), column)
    if isinstance(data, Mapping) and column in data:  # a dict of columns (tokenizer output)
        data = data[column]
        return np.fromiter((len(row) for row in data), dtype=np.int64, count=len(data))
    lengths = np.empty(len(data), dtype=np.int64)
    for i, row in enumerate(data):
        if isinstance(row, Mapping):
            if column not in row:
                raise KeyError(f"example {i} has no {column!r} field; it has {sorted(row)[:8]}")
            row = row[column]
        elif isinstance(row, (int, np.integer)):
            raise TypeError(
                f"example {i} is the int {row}; pass an int array of lengths (np.asarray) or a list "
                f"of examples"
            )
        lengths[i] = len(row)
    return lengths
