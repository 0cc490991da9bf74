"""``warppack stats DATA --max-tokens N``: what packing does for a data set, before any training.

DATA is a HF ``datasets`` folder saved with ``save_to_disk``, a parquet, Arrow (IPC file or
stream) or JSON Lines file, or a ``.npy`` array of lengths. The lengths come from the column's
Arrow offsets (no loop over rows); a column of integers is taken as the lengths themselves.

For every strategy (bfd, ffd, online) the report gives the number of batches, how close that is to
the lower bound, the packing efficiency, the padding avoided against padding every example to the
longest one and against dynamic padding (random batches padded to their longest), and the
speed-up limit those imply (padded token slots / packed token slots). It ends with a recommended
budget and writes a PNG of the length histogram (budget marked) and of the fill of the batches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from warppack._cli import (
    EXIT_BAD_COLUMN,
    EXIT_BAD_PATH,
    EXIT_MISSING_DEPENDENCY,
    EXIT_NOTHING_TO_PACK,
    EXIT_USAGE,
    CliError,
)
from warppack._progress import Progress

__all__ = [
    "add_arguments",
    "run",
    "load_lengths",
    "compute_stats",
    "dynamic_padding_slots",
    "recommend_budget",
    "LoadedLengths",
    "StrategyStats",
    "Stats",
]

STRATEGIES = ("bfd", "ffd", "online")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
ROUND_TO = 64  # recommended budgets are multiples of this (tensor-core friendly)
SWEEP_FACTORS = (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16)
SWEEP_SAMPLE = 1_000_000  # the budget sweep plans at most this many lengths (a fixed random sample)


# -- reading lengths ---------------------------------------------------------------------------


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


def _describe_type(arrow_type: Any) -> str:
    return str(arrow_type).replace("item: ", "")


def _column_lengths(
    column_type: Any, get_lengths: Any, get_values: Any, column: str, source: str, rows: int
) -> Tuple[np.ndarray, List[str]]:
    """Lengths of one Arrow column after checking that it holds token ids (or lengths)."""
    pa = _require_pyarrow()
    types = pa.types
    notes: List[str] = []
    if types.is_list(column_type) or types.is_large_list(column_type) or types.is_fixed_size_list(column_type):
        value_type = column_type.value_type
        if not (types.is_integer(value_type) or types.is_null(value_type)):  # null: only empty lists seen
            raise CliError(
                f"column {column!r} of {source} holds {_describe_type(column_type)}, not lists of token "
                f"ids; pass --column with the token ids (e.g. input_ids)",
                EXIT_BAD_COLUMN,
            )
        if types.is_fixed_size_list(column_type):
            return np.full(rows, column_type.list_size, dtype=np.int64), notes
        try:
            return np.asarray(get_lengths(), dtype=np.int64), notes
        except ValueError as error:  # null rows
            raise CliError(f"column {column!r} of {source}: {error}", EXIT_BAD_COLUMN) from None
    if types.is_integer(column_type):
        values = get_values()
        if values.null_count:
            raise CliError(
                f"column {column!r} of {source} has {values.null_count} null rows; fill or drop them",
                EXIT_BAD_COLUMN,
            )
        notes.append(f"column {column!r} holds integers: taken as the lengths of the examples")
        return np.asarray(values.to_numpy(), dtype=np.int64), notes
    if types.is_string(column_type) or types.is_large_string(column_type):
        raise CliError(
            f"column {column!r} of {source} holds text, not token ids; tokenize first (datasets' map "
            f"with your tokenizer) or pass --column with token ids or a column of lengths",
            EXIT_BAD_COLUMN,
        )
    raise CliError(
        f"column {column!r} of {source} holds {_describe_type(column_type)}, not token ids; pass "
        f"--column with lists of token ids or integer lengths",
        EXIT_BAD_COLUMN,
    )


def _missing_column(column: str, source: str, names: List[str]) -> CliError:
    return CliError(
        f"column {column!r} not in {source}; it has {names}; pass --column NAME", EXIT_BAD_COLUMN
    )


def _from_table(table: Any, column: str, source: str) -> Tuple[np.ndarray, List[str]]:
    from warppack import lengths_of

    if column not in table.column_names:
        raise _missing_column(column, source, list(table.column_names))
    chunked = table.column(column)
    return _column_lengths(
        table.schema.field(column).type,
        lambda: lengths_of(chunked),
        lambda: chunked,
        column,
        source,
        table.num_rows,
    )


def _load_datasets_folder(path: Path, column: str, split: Optional[str]) -> LoadedLengths:
    try:
        import datasets
    except ImportError:
        raise CliError(
            f"{path} is a HF datasets folder; reading it needs the datasets package: pip install datasets",
            EXIT_MISSING_DEPENDENCY,
        ) from None
    from warppack import lengths_of

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
    if column not in dataset.column_names:
        raise _missing_column(column, source, list(dataset.column_names))
    column_type = dataset.data.schema.field(column).type
    if getattr(dataset, "_indices", None) is not None:
        def values() -> Any:
            return dataset.data.column(column).take(dataset._indices.column(0))
    else:
        def values() -> Any:
            return dataset.data.column(column)
    lengths, column_notes = _column_lengths(
        column_type, lambda: lengths_of(dataset, column), values, column, source, len(dataset)
    )
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
    lengths, notes = _from_table(table, column, str(path))
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
    lengths, notes = _from_table(table, column, str(path))
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
    lengths, notes = _from_table(table, column, str(path))
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


# -- the numbers ------------------------------------------------------------------------------


@dataclass
class StrategyStats:
    strategy: str
    bins: int
    lower_bound: int
    efficiency: float
    padding_fraction: float
    padding_tokens: int
    avoided_vs_pad_to_max: Optional[float]  # fraction of that baseline's padding removed; None if it has none
    avoided_vs_dynamic: Optional[float]
    speedup_limit_vs_pad_to_max: float  # baseline token slots / packed token slots
    speedup_limit_vs_dynamic: float
    seconds: float
    bin_fill: np.ndarray = field(repr=False)  # real tokens / budget, one per bin


@dataclass
class Stats:
    examples: int
    empty: int
    tokens: int
    max_tokens: int
    overlong: str
    longer_than_budget: int
    tokens_cut: int  # tokens dropped by overlong="truncate"
    pieces: int  # sequences after overlong="split"
    longest: int
    pad_to_max_length: int
    pad_to_max_slots: int
    dynamic_batch_size: int
    dynamic_batch_size_assumed: bool
    dynamic_slots: int
    strategies: List[StrategyStats]
    recommended: Optional[Dict[str, Any]] = None

    @property
    def pad_to_max_padding(self) -> float:
        return 1 - self.tokens / self.pad_to_max_slots if self.pad_to_max_slots else 0.0

    @property
    def dynamic_padding(self) -> float:
        return 1 - self.tokens / self.dynamic_slots if self.dynamic_slots else 0.0

    def to_json(self) -> Dict[str, Any]:
        return {
            "examples": self.examples,
            "empty_examples_ignored": self.empty,
            "tokens": self.tokens,
            "max_tokens": self.max_tokens,
            "overlong": self.overlong,
            "longer_than_budget": self.longer_than_budget,
            "tokens_cut": self.tokens_cut,
            "sequences": self.pieces,
            "longest": self.longest,
            "pad_to_max": {
                "length": self.pad_to_max_length,
                "slots": self.pad_to_max_slots,
                "padding_fraction": self.pad_to_max_padding,
            },
            "dynamic_padding": {
                "batch_size": self.dynamic_batch_size,
                "batch_size_assumed": self.dynamic_batch_size_assumed,
                "slots": self.dynamic_slots,
                "padding_fraction": self.dynamic_padding,
            },
            "strategies": {
                s.strategy: {
                    "bins": s.bins,
                    "lower_bound": s.lower_bound,
                    "efficiency": s.efficiency,
                    "padding_fraction": s.padding_fraction,
                    "padding_tokens": s.padding_tokens,
                    "padding_avoided_vs_pad_to_max": s.avoided_vs_pad_to_max,
                    "padding_avoided_vs_dynamic": s.avoided_vs_dynamic,
                    "speedup_limit_vs_pad_to_max": s.speedup_limit_vs_pad_to_max,
                    "speedup_limit_vs_dynamic": s.speedup_limit_vs_dynamic,
                    "seconds": s.seconds,
                }
                for s in self.strategies
            },
            "recommended": self.recommended,
        }


def dynamic_padding_slots(lengths: np.ndarray, batch_size: int, *, seed: int = 0) -> int:
    """Token slots of random batches of ``batch_size`` each padded to its longest (DataLoader shuffle)."""
    n = len(lengths)
    if n == 0:
        return 0
    shuffled = np.asarray(lengths, dtype=np.int64)[np.random.default_rng(seed).permutation(n)]
    full = n - n % batch_size
    slots = int(shuffled[:full].reshape(-1, batch_size).max(axis=1).sum()) * batch_size
    if full < n:
        slots += int(shuffled[full:].max()) * (n - full)
    return slots


def _avoided(baseline_slots: int, packed_slots: int, tokens: int) -> Optional[float]:
    baseline_padding = baseline_slots - tokens
    if baseline_padding <= 0:
        return None
    return 1 - (packed_slots - tokens) / baseline_padding


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def recommend_budget(
    lengths: np.ndarray,
    *,
    target_efficiency: float = 0.99,
    given: Optional[int] = None,
    seed: int = 0,
    bar: Optional[Progress] = None,
) -> Dict[str, Any]:
    """The smallest budget (a multiple of 64 holding the longest example) that bfd packs this well.

    Larger budgets pack at least about as well; GPU memory is the upper limit (``warppack calibrate``).
    """
    import warppack

    longest = int(lengths.max())
    base = _round_up(longest, ROUND_TO)
    candidates = sorted({_round_up(base * f, ROUND_TO) for f in SWEEP_FACTORS} | ({given} if given and given >= longest else set()))
    sample = lengths
    if len(lengths) > SWEEP_SAMPLE:
        sample = lengths[np.random.default_rng(seed).choice(len(lengths), SWEEP_SAMPLE, replace=False)]
    sweep = []
    for budget in candidates:
        efficiency = warppack.plan(sample, budget).efficiency
        sweep.append((budget, efficiency))
        if bar is not None:
            bar.update()
        if efficiency >= target_efficiency:
            break
    reached = [b for b, e in sweep if e >= target_efficiency]
    if reached:
        budget = reached[0]
        efficiency = dict(sweep)[budget]
        reason = (
            f"the smallest multiple of {ROUND_TO} that holds the longest example ({longest:,} tokens) "
            f"and packs at least {target_efficiency:.0%} efficient with bfd"
        )
    else:
        best = max(e for _, e in sweep)
        budget, efficiency = next((b, e) for b, e in sweep if e >= best - 0.005)
        reason = (
            f"no budget from {candidates[0]:,} to {candidates[-1]:,} tokens packs {target_efficiency:.0%} "
            f"efficient (too few examples to fill bins that large); this is the smallest within half a "
            f"point of the best ({best:.2%})"
        )
    result: Dict[str, Any] = {
        "max_tokens": int(budget),
        "efficiency": float(efficiency),
        "reason": reason,
        "target_efficiency": target_efficiency,
        "sampled": int(len(sample)),
        "sweep": [{"max_tokens": int(b), "efficiency": float(e)} for b, e in sweep],
        "longest": longest,
        "split_alternative": None,
    }
    if given is not None and given < longest:
        # a budget that holds the longest example may not fit in memory: keep the given one, split the rest
        split = warppack.plan(sample, given, overlong="split")
        result["split_alternative"] = {
            "max_tokens": int(given),
            "efficiency": float(split.efficiency),
            "examples_split": int((sample > given).sum()),
        }
        if bar is not None:
            bar.update()
    return result


def _pieces(lengths: np.ndarray, max_tokens: int, overlong: str) -> np.ndarray:
    """Sequence lengths after the overlong policy: the sequences every batching scheme must hold."""
    if overlong == "truncate":
        return np.minimum(lengths, max_tokens)
    if overlong == "split":
        over = lengths > max_tokens
        if not over.any():
            return lengths
        full, rest = np.divmod(lengths[over], max_tokens)
        chunks = [lengths[~over], np.full(int(full.sum()), max_tokens, dtype=np.int64), rest[rest > 0]]
        return np.concatenate(chunks)
    return lengths


def compute_stats(
    lengths: np.ndarray,
    max_tokens: int,
    *,
    overlong: str = "truncate",
    batch_size: Optional[int] = None,
    max_length: Optional[int] = None,
    buffer_size: int = 1024,
    strategies: Tuple[str, ...] = STRATEGIES,
    recommend: bool = True,
    target_efficiency: float = 0.99,
    seed: int = 0,
) -> Stats:
    """Plan ``lengths`` with every strategy and compare with padding (see the module docstring)."""
    import warppack

    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 0).any():
        index = int(np.argmax(lengths < 0))
        raise CliError(f"example {index} has a negative length ({int(lengths[index])})", EXIT_BAD_COLUMN)
    empty = int((lengths == 0).sum())
    nonempty = lengths[lengths > 0] if empty else lengths
    if len(nonempty) == 0:
        what = "there are no examples" if len(lengths) == 0 else f"all {len(lengths):,} examples are empty"
        raise CliError(f"nothing to pack: {what}", EXIT_NOTHING_TO_PACK)
    longer = int((nonempty > max_tokens).sum())
    if longer and overlong == "error":
        index = int(np.argmax(lengths > max_tokens))
        raise CliError(
            f"{longer:,} examples are longer than --max-tokens {max_tokens:,} (the first is example "
            f"{index}, {int(lengths[index]):,} tokens); raise --max-tokens or pass --overlong truncate/split",
            EXIT_USAGE,
        )
    pieces = _pieces(nonempty, max_tokens, overlong)
    tokens = int(pieces.sum())
    tokens_cut = int(nonempty.sum()) - tokens
    longest_piece = int(pieces.max())
    pad_length = max(longest_piece, int(max_length or 0))
    pad_slots = len(pieces) * pad_length
    assumed = batch_size is None
    batch = 8 if batch_size is None else int(batch_size)
    dyn_slots = dynamic_padding_slots(pieces, batch, seed=seed)

    steps = len(strategies) + (len(SWEEP_FACTORS) + 1 if recommend else 0)
    results = []
    recommended = None
    with Progress(steps, desc=f"planning {len(nonempty):,} lengths", unit="plan") as bar:
        for strategy in strategies:
            bar.set_description(f"planning {len(nonempty):,} lengths ({strategy})")
            start = time.perf_counter()
            p = warppack.plan(
                nonempty, max_tokens, strategy=strategy, overlong=overlong, buffer_size=buffer_size
            )
            seconds = time.perf_counter() - start
            bar.update()
            slots = p.num_bins * max_tokens
            fill = p.bin_tokens() / max_tokens
            results.append(
                StrategyStats(
                    strategy=strategy,
                    bins=p.num_bins,
                    lower_bound=p.lower_bound,
                    efficiency=p.efficiency,
                    padding_fraction=1 - p.efficiency,
                    padding_tokens=slots - tokens,
                    avoided_vs_pad_to_max=_avoided(pad_slots, slots, tokens),
                    avoided_vs_dynamic=_avoided(dyn_slots, slots, tokens),
                    speedup_limit_vs_pad_to_max=pad_slots / slots,
                    speedup_limit_vs_dynamic=dyn_slots / slots,
                    seconds=seconds,
                    bin_fill=fill,
                )
            )
        if recommend:
            bar.set_description("sweeping budgets (bfd)")
            recommended = recommend_budget(
                nonempty, target_efficiency=target_efficiency, given=max_tokens, seed=seed, bar=bar
            )
    return Stats(
        examples=len(lengths),
        empty=empty,
        tokens=tokens,
        max_tokens=max_tokens,
        overlong=overlong,
        longer_than_budget=longer,
        tokens_cut=tokens_cut,
        pieces=len(pieces),
        longest=int(nonempty.max()),
        pad_to_max_length=pad_length,
        pad_to_max_slots=pad_slots,
        dynamic_batch_size=batch,
        dynamic_batch_size_assumed=assumed,
        dynamic_slots=dyn_slots,
        strategies=results,
        recommended=recommended,
    )


# -- the report -------------------------------------------------------------------------------


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    def line(cells: List[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def format_report(loaded: LoadedLengths, stats: Stats) -> str:
    lengths = loaded.lengths[loaded.lengths > 0]
    what = f"column {loaded.column!r}" if loaded.column else "lengths"
    out = [
        f"data: {loaded.source} ({loaded.kind}, {what}): {stats.examples:,} examples, "
        f"{int(lengths.sum()):,} tokens",
    ]
    out += [f"  note: {note}" for note in loaded.notes]
    if stats.empty:
        out.append(f"  note: {stats.empty:,} empty examples ignored (nothing to pack in them)")
    q = np.percentile(lengths, [50, 99]).astype(int)
    out.append(
        f"lengths: min {int(lengths.min()):,}, median {q[0]:,}, mean {lengths.mean():,.1f}, "
        f"p99 {q[1]:,}, max {int(lengths.max()):,}"
    )
    out.append(f"budget: {stats.max_tokens:,} tokens per batch (--max-tokens)")
    if stats.longer_than_budget:
        if stats.overlong == "truncate":
            effect = f"truncated to the budget, {stats.tokens_cut:,} tokens ({stats.tokens_cut / (stats.tokens + stats.tokens_cut):.2%}) cut"
        else:
            effect = f"split into chunks of at most the budget ({stats.pieces:,} sequences in all)"
        out.append(
            f"  warning: {stats.longer_than_budget:,} examples are longer than the budget: {effect} "
            f"(--overlong {stats.overlong})"
        )
    batch_note = "assumed; set it with --batch-size" if stats.dynamic_batch_size_assumed else "--batch-size"
    out += [
        "",
        "padded baselines (same tokens):",
        f"  pad to max ({stats.pad_to_max_length:,} tokens per example): "
        f"{stats.pad_to_max_slots:,} slots, {stats.pad_to_max_padding:.1%} padding",
        f"  dynamic padding (random batches of {stats.dynamic_batch_size}, {batch_note}; each padded to "
        f"its longest): {stats.dynamic_slots:,} slots, {stats.dynamic_padding:.1%} padding",
        "",
        "packed:",
    ]
    headers = [
        "strategy",
        "batches",
        "lower bound",
        "efficiency",
        "padding",
        "pad avoided vs max",
        "vs dynamic",
        "speed-up limit vs max",
        "vs dynamic",
    ]
    rows = [
        [
            s.strategy,
            f"{s.bins:,}",
            f"{s.lower_bound:,}",
            f"{s.efficiency:.2%}",
            f"{s.padding_fraction:.2%}",
            _pct(s.avoided_vs_pad_to_max),
            _pct(s.avoided_vs_dynamic),
            f"{s.speedup_limit_vs_pad_to_max:.2f}x",
            f"{s.speedup_limit_vs_dynamic:.2f}x",
        ]
        for s in stats.strategies
    ]
    out.append(_table(headers, rows))
    out.append(
        "  speed-up limit = padded token slots / packed token slots: the most that removing padding "
        "can give (attention's per-sequence cost aside)"
    )
    rec = stats.recommended
    if rec:
        sampled = f", on a random sample of {rec['sampled']:,}" if rec["sampled"] < len(lengths) else ""
        out += [
            "",
            f"recommended budget: --max-tokens {rec['max_tokens']:,} (bfd {rec['efficiency']:.2%} "
            f"efficient{sampled}): {rec['reason']}.",
            ("  Larger budgets pack about as well; " if rec["efficiency"] >= rec["target_efficiency"] else "  ")
            + "GPU memory sets the upper limit: `warppack calibrate MODEL_DIR` measures it.",
        ]
        alt = rec.get("split_alternative")
        if alt:
            out.append(
                f"  or, if {rec['max_tokens']:,} tokens do not fit in memory: keep --max-tokens "
                f"{alt['max_tokens']:,} with --overlong split: no token lost, bfd {alt['efficiency']:.2%} "
                f"efficient ({alt['examples_split']:,} examples split into chunks{sampled})."
            )
    return "\n".join(out)


# -- the command ------------------------------------------------------------------------------


def _default_plot_path(data: str) -> Tuple[Path, str]:
    path = Path(data).expanduser().resolve()
    name = f"{path.name}-warppack-stats.png"
    parent = path.parent
    if os.access(parent, os.W_OK):
        return parent / name, "next to the data"
    return Path.cwd() / name, "in the current folder (the data's folder is not writable)"


def _positive(name: str, value: Optional[int]) -> None:
    if value is not None and value <= 0:
        raise CliError(f"{name} must be a positive number of tokens, got {value}", EXIT_USAGE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        metavar="DATA",
        help="a HF datasets folder (save_to_disk), a .parquet/.arrow/.jsonl file, or a .npy of lengths",
    )
    parser.add_argument("--max-tokens", type=int, required=True, metavar="N", help="token budget per batch")
    parser.add_argument(
        "--column", default="input_ids", help="column of token ids, or of integer lengths (default input_ids)"
    )
    parser.add_argument("--split", default=None, help="split of a DatasetDict folder (default: train, or the only one)")
    parser.add_argument(
        "--overlong",
        choices=("truncate", "split", "error"),
        default="truncate",
        help="examples longer than the budget: counted truncated (default), split into chunks, or an error",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="examples per batch of the dynamic-padding baseline (default: 8, assumed)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="L",
        help="length the pad-to-max baseline pads to (default: the longest example)",
    )
    parser.add_argument(
        "--buffer-size", type=int, default=1024, help="look-ahead window of the online strategy (default 1024)"
    )
    parser.add_argument(
        "--target-efficiency",
        type=float,
        default=0.99,
        help="efficiency the recommended budget must reach with bfd (default 0.99)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batches and samples (default 0)")
    plot = parser.add_mutually_exclusive_group()
    plot.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="where to write the PNG (default: DATA-warppack-stats.png next to the data, else in the current folder)",
    )
    plot.add_argument("--no-plot", action="store_true", help="write no PNG")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    _positive("--max-tokens", args.max_tokens)
    _positive("--batch-size", args.batch_size)
    _positive("--max-length", args.max_length)
    _positive("--buffer-size", args.buffer_size)
    if not 0 < args.target_efficiency <= 1:
        raise CliError(f"--target-efficiency must be in (0, 1], got {args.target_efficiency}", EXIT_USAGE)
    if args.max_tokens >= 2**31:
        raise CliError(f"--max-tokens {args.max_tokens} exceeds the int32 range of cu_seqlens", EXIT_USAGE)
    loaded = load_lengths(args.data, args.column, args.split)
    stats = compute_stats(
        loaded.lengths,
        args.max_tokens,
        overlong=args.overlong,
        batch_size=args.batch_size,
        max_length=args.max_length,
        buffer_size=args.buffer_size,
        target_efficiency=args.target_efficiency,
        seed=args.seed,
    )
    plot_path: Optional[Path] = None
    plot_note = ""
    if not args.no_plot:
        from warppack import _plots

        if args.plot is not None:
            plot_path, where = Path(args.plot).expanduser(), "--plot"
        else:
            plot_path, where = _default_plot_path(args.data)
        try:
            _plots.stats_figure(loaded.lengths[loaded.lengths > 0], stats, plot_path, title=loaded.source)
            plot_note = (
                f"plot: {plot_path} ({where}): length histogram with the budget marked, and the fill "
                f"of the batches; --plot PATH to choose, --no-plot to skip"
            )
        except _plots.MatplotlibMissing as error:
            if args.plot is not None:
                raise CliError(str(error), EXIT_MISSING_DEPENDENCY) from None
            plot_path = None
            plot_note = f"no plot: {error}"
        except OSError as error:
            raise CliError(f"cannot write the plot to {plot_path}: {error.strerror or error}", EXIT_BAD_PATH) from None
    if args.json:
        payload = stats.to_json()
        payload.update(
            data=loaded.source,
            format=loaded.kind,
            column=loaded.column,
            notes=loaded.notes,
            plot=str(plot_path) if plot_path else None,
        )
        print(json.dumps(payload, indent=2))
        if plot_note and plot_path is None:
            print(plot_note, file=sys.stderr)
    else:
        print(format_report(loaded, stats))
        if plot_note:
            print()
            print(plot_note)
    return 0
