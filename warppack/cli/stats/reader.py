"""Token lengths of every example of a data set on disk, for ``warppack stats``.

Reads a HF ``datasets`` folder saved with ``save_to_disk``, a parquet, Arrow (IPC file or stream)
or JSON Lines file, or a ``.npy`` array of lengths. The lengths come from the column's Arrow
offsets (no loop over rows); a column of integers is taken as the lengths themselves. Every
failure is a ``CliError`` carrying the exit code a script can test (bad path, bad column, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from warppack.cli.errors import (
    EXIT_BAD_COLUMN,
    EXIT_BAD_PATH,
    EXIT_MISSING_DEPENDENCY,
    EXIT_USAGE,
    CliError,
)
from warppack.engine.lengths import column_lengths
from warppack.progress import Progress

__all__ = ["LoadedLengths", "load_lengths"]

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")


@dataclass
class LoadedLengths:
    """Token counts of every example of DATA, and how they were read."""

    lengths: np.ndarray
    source: str  # the path as given
    kind: str  # "datasets", "parquet", "arrow", "jsonl" or "npy"
    column: Optional[str]  # None for .npy
    notes: List[str] = field(default_factory=list)


def _require_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as error:  # pragma: no cover - pyarrow comes with datasets
        raise CliError(
            f"reading this file needs pyarrow, which is not installed ({error}); pip install pyarrow",
            EXIT_MISSING_DEPENDENCY,
        ) from None
    return pyarrow


def _column_lengths(data: Any, schema: Any, column: str, source: str) -> Tuple[np.ndarray, List[str]]:
    """Lengths of ``column`` of a Table or a Dataset (whose Arrow ``schema`` is given), read by the engine."""
    if column not in data.column_names:
        raise _missing_column(column, source, list(data.column_names))
    try:
        lengths = column_lengths(data, column, column_hint="--column NAME")
    except (TypeError, ValueError) as error:
        raise CliError(f"{source}: {error}", EXIT_BAD_COLUMN) from None
    notes = []
    if _require_pyarrow().types.is_integer(schema.field(column).type):
        notes.append(f"column {column!r} holds integers: taken as the lengths of the examples")
    return lengths, notes


def _missing_column(column: str, source: str, names: List[str]) -> CliError:
    return CliError(
        f"column {column!r} not in {source}; it has {names}; pass --column NAME", EXIT_BAD_COLUMN
    )


def _load_datasets_folder(path: Path, column: str, split: Optional[str]) -> LoadedLengths:
    try:
        import datasets
    except ImportError:
        raise CliError(
            f"{path} is a HF datasets folder; reading it needs the datasets package: pip install datasets",
            EXIT_MISSING_DEPENDENCY,
        ) from None
    try:
        with Progress(desc="reading dataset", unit="step") as bar:
            loaded = datasets.load_from_disk(str(path))
            bar.update()
    except Exception as error:  # corrupt or partial folders raise many kinds of errors
        raise CliError(f"cannot read {path} with datasets.load_from_disk: {error}", EXIT_BAD_PATH) from None
    notes: List[str] = []
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded.keys())
        if split is None:
            if "train" in loaded:
                split = "train"
            elif len(splits) == 1:
                split = splits[0]
            else:
                raise CliError(f"{path} holds the splits {splits}; choose one with --split", EXIT_USAGE)
        if split not in loaded:
            raise CliError(f"split {split!r} not in {path}; it has {splits}", EXIT_USAGE)
        dataset = loaded[split]
        notes.append(f"split {split!r} of {splits}")
    else:
        if split is not None:
            notes.append(f"--split {split!r} ignored: {path} holds a single Dataset")
        dataset = loaded
    source = f"{path}" + (f" [{split}]" if isinstance(loaded, datasets.DatasetDict) else "")
    lengths, column_notes = _column_lengths(dataset, dataset.data.schema, column, source)
    return LoadedLengths(lengths, str(path), "datasets", column, notes + column_notes)


def _load_parquet(path: Path, column: str) -> LoadedLengths:
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(str(path))
    except (OSError, pa.ArrowException) as error:
        raise CliError(f"cannot read {path} as parquet: {error}", EXIT_BAD_PATH) from None
    names = list(parquet.schema_arrow.names)
    if column not in names:
        raise _missing_column(column, str(path), names)
    tables = []
    with Progress(parquet.num_row_groups, desc="reading parquet", unit="row group") as bar:
        for group in range(parquet.num_row_groups):
            tables.append(parquet.read_row_group(group, columns=[column]))
            bar.update()
    table = pa.concat_tables(tables) if tables else parquet.schema_arrow.empty_table().select([column])
    lengths, notes = _column_lengths(table, table.schema, column, str(path))
    return LoadedLengths(lengths, str(path), "parquet", column, notes)


def _load_arrow(path: Path, column: str) -> LoadedLengths:
    pa = _require_pyarrow()
    try:
        source = pa.memory_map(str(path), "r")
    except (OSError, pa.ArrowException) as error:
        raise CliError(f"cannot open {path}: {error}", EXIT_BAD_PATH) from None
    table = None
    errors = []
    for opener in (pa.ipc.open_file, pa.ipc.open_stream):
        try:
            source.seek(0)
            table = opener(source).read_all()
            break
        except (OSError, pa.ArrowException) as error:
            errors.append(str(error))
    if table is None:
        raise CliError(
            f"cannot read {path} as an Arrow IPC file or stream: {errors[-1]}", EXIT_BAD_PATH
        )
    lengths, notes = _column_lengths(table, table.schema, column, str(path))
    return LoadedLengths(lengths, str(path), "arrow", column, notes)


def _load_jsonl(path: Path, column: str) -> LoadedLengths:
    pa = _require_pyarrow()
    import pyarrow.json as pajson

    batches = []
    try:
        stream = pa.input_stream(str(path), compression="detect")
        # blocks of 64 MiB: a row must fit in one block, and token lists of long documents are large
        reader = pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=1 << 26))
        if column not in reader.schema.names:
            raise _missing_column(column, str(path), list(reader.schema.names))
        with Progress(desc="reading JSON Lines", unit="rows") as bar:
            for batch in reader:
                batches.append(batch.select([column]))
                bar.update(batch.num_rows)
        schema = reader.schema
    except (OSError, pa.ArrowException) as error:
        raise CliError(
            f"cannot read {path} as JSON Lines (one JSON object per line): {' '.join(str(error).split())}",
            EXIT_BAD_PATH,
        ) from None
    table = pa.Table.from_batches(batches, schema=pa.schema([schema.field(column)]))
    lengths, notes = _column_lengths(table, table.schema, column, str(path))
    return LoadedLengths(lengths, str(path), "jsonl", column, notes)


def _load_npy(path: Path) -> LoadedLengths:
    try:
        array = np.load(str(path), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read {path} as a .npy array: {error}", EXIT_BAD_PATH) from None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise CliError(
            f"{path} holds a {array.ndim}-D {array.dtype} array; a .npy must be a 1-D integer array of "
            f"lengths (one token count per example)",
            EXIT_BAD_COLUMN,
        )
    return LoadedLengths(np.asarray(array, dtype=np.int64), str(path), "npy", None)


def _strip_compression(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".zst", ".lz4"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def load_lengths(data: str, column: str = "input_ids", split: Optional[str] = None) -> LoadedLengths:
    """Read the token count of every example of ``data`` (see the module docstring for formats)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise CliError(f"no such file or folder: {data}", EXIT_BAD_PATH)
    if not os.access(path, os.R_OK):
        raise CliError(f"cannot read {data}: permission denied", EXIT_BAD_PATH)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _load_datasets_folder(path, column, split)
        raise CliError(
            f"{data} is a folder but not a HF dataset saved with save_to_disk (no state.json or "
            f"dataset_dict.json); pass that folder, or a parquet/arrow/jsonl/.npy file",
            EXIT_BAD_PATH,
        )
    suffix = _strip_compression(path)
    if suffix == ".npy":
        return _load_npy(path)
    if suffix in PARQUET_SUFFIXES:
        return _load_parquet(path, column)
    if suffix in ARROW_SUFFIXES:
        return _load_arrow(path, column)
    if suffix in JSON_SUFFIXES:
        return _load_jsonl(path, column)
    raise CliError(
        f"cannot tell the format of {data} from its name; warppack stats reads a datasets folder, "
        f".parquet, .arrow, .jsonl or .npy",
        EXIT_BAD_PATH,
    )
