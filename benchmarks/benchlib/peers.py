"""The baselines' own pieces, used as their packages ship them: transformers' padding collator and
TRL's BFD packer and padding-free collator."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import time
import types
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .models import PAD_ID
from .tokens import RowsDataset, TokenDataset


def package_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name``, None if it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def word_tokenizer() -> Any:
    """The smallest fast tokenizer transformers' padding collators accept (pad id 0)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[PAD]": PAD_ID, "[UNK]": 1}, unk_token="[UNK]")),
        pad_token="[PAD]")


class PaddingCollator:
    """transformers' DataCollatorWithPadding (to max_length or the longest), labels = ids with pads ignored.

    DataCollatorWithPadding pads only tokenizer keys, so causal-LM labels are made the way
    DataCollatorForLanguageModeling(mlm=False) makes them: input_ids with padding set to -100.
    """

    def __init__(self, max_length: Optional[int]) -> None:
        from transformers import DataCollatorWithPadding

        self.inner = DataCollatorWithPadding(
            word_tokenizer(), padding="max_length" if max_length else "longest", max_length=max_length,
            return_tensors="pt")

    def __call__(self, examples: list) -> Any:
        batch = self.inner(examples)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


def load_trl(log: Callable[..., None] = print) -> dict:
    """TRL's ``_pack_bfd`` and padding-free ``DataCollatorForLanguageModeling``, as TRL ships them.

    TRL imports ``datasets`` at module level. If ``datasets`` cannot be imported (not installed, or
    broken against this pyarrow), a minimal stand-in module providing the names TRL imports is put
    in ``sys.modules`` so that TRL's own code still runs (nothing of ``datasets`` is used on this
    path: ``_pack_bfd`` works on a pyarrow Table). The mode used is recorded.
    """
    mode = "trl + datasets (real)"
    if os.environ.get("BENCH_FORCE_DATASETS_STUB") == "1":
        _install_datasets_stub()
        mode = "trl with a stand-in `datasets` module (forced)"
    else:
        try:
            import datasets  # noqa: F401  (TRL imports it at module level)
        except Exception as error:  # noqa: BLE001
            log(f"datasets not importable ({type(error).__name__}: {error}); using a stand-in module for TRL")
            _install_datasets_stub()
            mode = f"trl with a stand-in `datasets` module ({type(error).__name__})"
    try:
        from trl.data_utils import _pack_bfd
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    except Exception as error:  # noqa: BLE001
        # TRL imports peft when it is installed; a peft that does not match this transformers would
        # break the import although packing and collation never touch it: retry without it.
        import transformers.utils

        log(f"TRL import failed ({type(error).__name__}: {str(error)[:200]}); retrying with peft hidden from TRL")
        for name in [m for m in sys.modules if m == "trl" or m.startswith("trl.")]:
            del sys.modules[name]
        transformers.utils.is_peft_available = lambda: False
        from trl.data_utils import _pack_bfd
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        mode += f"; peft hidden from TRL after: {type(error).__name__}: {str(error)[:120]}"
    return {"pack_bfd": _pack_bfd, "collator_cls": DataCollatorForLanguageModeling, "mode": mode,
            "version": package_version("trl")}


def _install_datasets_stub() -> None:
    for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
        del sys.modules[name]
    stub = types.ModuleType("datasets")
    for cls in ("Dataset", "DatasetDict", "IterableDataset", "IterableDatasetDict", "Features", "Value",
                "Sequence", "Image", "List"):
        setattr(stub, cls, type(cls, (), {}))
    setattr(stub, "__version__", "0.0.0-stub")
    stub.__path__ = []  # a package, so `import datasets.x` fails cleanly instead of oddly
    stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None, is_package=True)
    sys.modules["datasets"] = stub


def trl_bfd_rows(trl: dict, dataset: TokenDataset, seq_length: int) -> Tuple[RowsDataset, np.ndarray, float]:
    """Pack with TRL's BFD (on a pyarrow Table, as ``trl.pack_dataset`` does per map batch).

    Returns (rows, row lengths int64[R], seconds)."""
    import pyarrow as pa

    offsets = dataset.offsets.astype(np.int64)
    values = dataset.tokens[: offsets[-1]]
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    table = pa.table({"input_ids": column})
    start = time.perf_counter()
    packed = trl["pack_bfd"](table, seq_length)
    seconds = time.perf_counter() - start
    ids = packed["input_ids"].combine_chunks()
    seq = packed["seq_lengths"].combine_chunks()
    row_offsets = np.asarray(ids.offsets.to_numpy(), dtype=np.int64)
    row_offsets = row_offsets - row_offsets[0]
    flat = np.asarray(ids.flatten().to_numpy(), dtype=np.int64)
    rows = RowsDataset(flat, row_offsets, seq.to_pylist())
    return rows, np.diff(row_offsets), seconds
