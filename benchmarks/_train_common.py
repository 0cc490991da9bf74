"""Shared pieces of the end-to-end benchmarks (bench_train.py, bench_eval.py).

Data: the same token sequences for every arm -- lengths from benchmarks/_data.py (lognormal SFT-like
or the Wikipedia-512 histogram), token ids from the Python standard library's own source bytes (two
bytes per token, mapped into the model's vocabulary), handed out as Python lists like a `datasets`
Dataset does by default. Models: Llama-config causal LMs with random weights (throughput does not
depend on weight values). Arms: how each baseline forms, collates and moves its batches. Runner:
OOM-safe steps, the largest-batch search, and timed windows (CUDA events, no sync inside a window).
"""

from __future__ import annotations

import gc
import importlib.machinery
import json
import math
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _data import DEFAULT_DATA_DIR, expand_histogram, lognormal_sft  # noqa: E402

try:
    import warppack  # noqa: E402  (registers attn_implementation="warppack")
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`: the in-place build
    sys.path.append(str(HERE.parent))
    import warppack  # noqa: E402

PAD_ID = 0


# ---------------------------------------------------------------------------------------------------
# logging and results
# ---------------------------------------------------------------------------------------------------
class Log:
    """print() that also appends to $OUT/bench_log.txt (what comes back even if the run is killed)."""

    def __init__(self, out_dir: Path, name: str = "bench_log.txt"):
        self.path = Path(out_dir) / name
        self.t0 = time.perf_counter()

    def __call__(self, *parts: Any) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] " + " ".join(str(p) for p in parts)
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def write_json(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    return repr(o)


def _version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def env_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "warppack": getattr(warppack, "__version__", None),
        "device": str(device),
    }
    for pkg in ("transformers", "accelerate", "trl", "datasets", "pyarrow", "numpy", "flash-attn"):
        info[pkg] = _version(pkg)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 2)
        info["gpu_sms"] = props.multi_processor_count
        try:
            import subprocess

            info["nvidia_driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:
            pass
    else:
        info["gpu"] = None
    return info


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
def resolve_data_dir(arg: Optional[str]) -> Optional[Path]:
    """--data-dir, else ./.carry/data (what the device call carries), else ../shared/data."""
    candidates = [Path(arg)] if arg else []
    candidates += [HERE.parent / ".carry" / "data", DEFAULT_DATA_DIR]
    for c in candidates:
        if (c / "wikipedia512_hist.txt").exists():
            return c
    return Path(arg) if arg else None


_HIST_CACHE: Dict[tuple, np.ndarray] = {}


def load_lengths(dist: str, n: int, *, data_dir: Optional[Path], max_len: int, seed: int = 0,
                 allow_synthetic: bool = False) -> tuple:
    """(lengths int64[n], max_length, description) for 'sft' or 'wiki'."""
    if dist == "sft":
        lengths = lognormal_sft(n, max_len=max_len, seed=seed)
        return lengths, max_len, f"lognormal SFT-like (median ~300, clipped to {max_len}), n={n}"
    if dist == "wiki":
        path = None if data_dir is None else Path(data_dir) / "wikipedia512_hist.txt"
        if path is not None and path.exists():
            key = (str(path), seed)
            if key not in _HIST_CACHE:
                _HIST_CACHE[key] = expand_histogram(path, seed=seed)
            lengths = _HIST_CACHE[key][:n].copy()
            return np.minimum(lengths, max_len), max_len, f"Wikipedia-512 histogram ({path.name}), n={n}"
        if not allow_synthetic:
            raise FileNotFoundError(
                f"wikipedia512_hist.txt not found (looked in --data-dir, .carry/data, {DEFAULT_DATA_DIR}); "
                "copy ../shared/data into .carry/data and carry it, or pass --data-dir")
        rng = np.random.default_rng(seed)
        lengths = np.where(rng.random(n) < 0.23, max_len, rng.integers(1, max_len, n)).astype(np.int64)
        return lengths, max_len, f"SYNTHETIC wiki-like (histogram file missing; smoke only), n={n}"
    raise ValueError(f"unknown distribution {dist!r}; use sft or wiki")


def _stdlib_files():
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield Path(dirpath) / f


def stdlib_tokens(n_tokens: int, vocab_size: int) -> np.ndarray:
    """Token ids from the Python standard library's source bytes: each byte pair -> one id in
    [3, vocab_size) (0/1/2 stay pad/bos/eos). Real text statistics, deterministic, on every machine."""
    need = 2 * n_tokens + 2
    chunks, total = [], 0
    for path in _stdlib_files():
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= need:
            break
    raw = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    if raw.size < 2:  # no stdlib sources on this machine: fall back to a fixed random stream
        raw = np.random.default_rng(0).integers(32, 127, need).astype(np.uint8)
    pairs = raw[: raw.size // 2 * 2].reshape(-1, 2).astype(np.int64)
    ids = (pairs[:, 0] * 256 + pairs[:, 1]) % (vocab_size - 3) + 3
    if ids.size < n_tokens:
        ids = np.resize(ids, n_tokens)
    return np.ascontiguousarray(ids[:n_tokens])


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset of {'input_ids': list[int]} over one token array (lists, like `datasets`)."""

    def __init__(self, lengths: np.ndarray, tokens: np.ndarray):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        assert tokens.size >= self.offsets[-1]
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        o = int(self.offsets[i])
        return {"input_ids": self.tokens[o : o + int(self.lengths[i])].tolist()}


class RowsDataset(torch.utils.data.Dataset):
    """TRL's packed rows: {'input_ids': list, 'seq_lengths': list} (what TRL's packed dataset returns)."""

    def __init__(self, values: np.ndarray, row_offsets: np.ndarray, seq_lengths: List[List[int]]):
        self.values, self.row_offsets, self.seq_lengths = values, row_offsets, seq_lengths

    def __len__(self) -> int:
        return len(self.seq_lengths)

    def __getitem__(self, i: int) -> dict:
        a, b = int(self.row_offsets[i]), int(self.row_offsets[i + 1])
        return {"input_ids": self.values[a:b].tolist(), "seq_lengths": list(self.seq_lengths[i])}


# ---------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------
TRAIN_PRESETS = {
    # ~0.50B: 16 x 25.2M + 2 x 49.2M (untied embeddings / lm_head), head_dim 128, GQA 12/4
    "0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    # ~1.0B: 16 x 56.6M + 2 x 65.5M, head_dim 128, GQA 16/8 (Llama-3.2-1B-like)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
    # CPU smoke test only
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
}

#: SmolLM2-135M's exact architecture (HuggingFaceTB/SmolLM2-135M config.json).
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)
SMOLLM2_TINY = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                    num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)


def build_model(arch: dict, *, device: torch.device, dtype: torch.dtype, max_positions: int,
                attn: str = "warppack", seed: int = 0):
    """A random-init LlamaForCausalLM built directly on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = dict(arch)
    arch.setdefault("max_position_embeddings", max_positions)
    config = LlamaConfig(pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, hidden_act="silu",
                         initializer_range=0.02, use_cache=False, **arch)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # fp32 init on the device, then cast (no global default dtype)
    model.to(dtype=dtype)
    model.set_attn_implementation(attn)
    return model


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model, device: torch.device):
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, **kw)


# ---------------------------------------------------------------------------------------------------
# TRL (arm 5)
# ---------------------------------------------------------------------------------------------------
def load_trl(log: Callable = print) -> dict:
    """TRL's `_pack_bfd` and padding-free `DataCollatorForLanguageModeling`, as TRL ships them.

    TRL imports `datasets` at module level. If `datasets` cannot be imported (not carried, or it
    breaks against this pyarrow), a minimal stand-in module providing the names TRL imports is put in
    ``sys.modules`` so that TRL's own code still runs (nothing of `datasets` is used on this path:
    `_pack_bfd` works on a pyarrow Table). The mode used is recorded.
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
            "version": _version("trl")}


def _install_datasets_stub() -> None:
    import types

    for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
        del sys.modules[name]
    stub = types.ModuleType("datasets")
    for cls in ("Dataset", "DatasetDict", "IterableDataset", "IterableDatasetDict", "Features", "Value",
                "Sequence", "Image", "List"):
        setattr(stub, cls, type(cls, (), {}))
    stub.__version__ = "0.0.0-stub"
    stub.__path__ = []  # a package, so `import datasets.x` fails cleanly instead of oddly
    stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None, is_package=True)
    sys.modules["datasets"] = stub


def trl_bfd_rows(trl: dict, dataset: TokenDataset, seq_length: int) -> tuple:
    """Pack with TRL's BFD (on a pyarrow Table, as `trl.pack_dataset` does per map batch).

    Returns (RowsDataset, row_lengths int64[R], seconds)."""
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
    seq_lengths = seq.to_pylist()
    rows = RowsDataset(flat, row_offsets, seq_lengths)
    return rows, np.diff(row_offsets), seconds


# ---------------------------------------------------------------------------------------------------
# arms: how each baseline forms batches
# ---------------------------------------------------------------------------------------------------
def _chunks(order: np.ndarray, b: int) -> List[List[int]]:
    return [order[i : i + b].tolist() for i in range(0, len(order), b)]


def _word_tokenizer():
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

    def __init__(self, max_length: Optional[int]):
        from transformers import DataCollatorWithPadding

        self.inner = DataCollatorWithPadding(
            _word_tokenizer(), padding="max_length" if max_length else "longest", max_length=max_length,
            return_tensors="pt")

    def __call__(self, examples):
        batch = self.inner(examples)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


class PlanBatchSampler:
    """Fallback only if warppack.PackedBatchSampler is missing: the bins of warppack.plan (shuffled)."""

    def __init__(self, lengths, max_tokens: int, shuffle: bool = True, seed: int = 0):
        self.lengths, self.max_tokens, self.shuffle, self.seed, self.epoch = lengths, max_tokens, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        p = warppack.plan(self.lengths, self.max_tokens, shuffle=self.shuffle, seed=self.seed + self.epoch)
        for b in p.bins:
            yield b.tolist()

    def __len__(self) -> int:
        return warppack.plan(self.lengths, self.max_tokens).num_bins


def packed_sampler(lengths, max_tokens: int, seed: int = 0):
    """(sampler, description): warppack.PackedBatchSampler, or the plan() fallback if it is not there yet."""
    cls = getattr(warppack, "PackedBatchSampler", None)
    if cls is not None:
        try:
            return cls(lengths, max_tokens=max_tokens, shuffle=True, seed=seed), "warppack.PackedBatchSampler"
        except TypeError:
            return cls(lengths, max_tokens, shuffle=True, seed=seed), "warppack.PackedBatchSampler"
    return PlanBatchSampler(lengths, max_tokens, seed=seed), "FALLBACK warppack.plan bins (no PackedBatchSampler)"


def _as_index_list(batch) -> List[int]:
    return [int(i) for i in (batch.tolist() if hasattr(batch, "tolist") else batch)]


class Arm:
    """One way of batching. ``size`` is a batch size (sequences or rows) or a token budget."""

    def __init__(self, key: str, name: str, desc: str, *, attn: str, size_kind: str, lengths: np.ndarray,
                 max_len: int, dataset, epoch_fn: Callable[[int], List[List[int]]],
                 slot_fn: Callable[[List[int]], int], real_fn: Callable[[List[int]], int],
                 collate_fn: Callable[[int], Callable], pin_memory: bool, budget_arm: bool = False,
                 worst_fn: Optional[Callable[[int], tuple]] = None):
        self.key, self.name, self.desc, self.attn, self.size_kind = key, name, desc, attn, size_kind
        self._worst_fn = worst_fn
        self.lengths, self.max_len, self.dataset = lengths, max_len, dataset
        self._epoch_fn, self.slot, self.real = epoch_fn, slot_fn, real_fn
        self.collate_for, self.pin_memory, self.budget_arm = collate_fn, pin_memory, budget_arm
        self._epochs: Dict[int, List[List[int]]] = {}
        self.notes: List[str] = []

    def epoch(self, size: int) -> List[List[int]]:
        if size not in self._epochs:
            self._epochs[size] = [_as_index_list(b) for b in self._epoch_fn(size)]
        return self._epochs[size]

    def worst(self, size: int) -> tuple:
        """(index of the batch with the most slot tokens, its slot tokens) in the epoch at ``size``."""
        if self._worst_fn is not None:
            return self._worst_fn(size)
        slots = [self.slot(b) for b in self.epoch(size)]
        i = int(np.argmax(slots))
        return i, int(slots[i])

    def size_for_slots(self, target: int, hi: int) -> int:
        """Largest size whose worst batch holds <= target slot tokens (at least the smallest size)."""
        if self.budget_arm:
            return max(int(target), int(self.max_len))
        lo_ok, lo, hi = 1, 1, max(1, int(hi))
        if self.worst(1)[1] > target:
            return 1
        while lo <= hi:  # worst(size) is non-decreasing in size for all count-based arms (up to noise)
            mid = (lo + hi) // 2
            if self.worst(mid)[1] <= target:
                lo_ok, lo = mid, mid + 1
            else:
                hi = mid - 1
        return lo_ok

    def padding_fraction(self, batches: Sequence[List[int]]) -> float:
        slot = sum(self.slot(b) for b in batches)
        real = sum(self.real(b) for b in batches)
        return 0.0 if slot == 0 else 1.0 - real / slot


def chunked_worst(order_fn: Callable[[int], np.ndarray], lengths: np.ndarray, mode: str, max_len: int):
    """Vectorised ``Arm.worst`` for arms whose epoch is ``order_fn(b)`` cut into chunks of ``b``.

    mode: 'pad' (every row padded to max_len), 'longest' (rows padded to the batch's longest), 'sum'
    (no padding: the batch's tokens)."""

    def worst(b: int) -> tuple:
        l = lengths[order_fn(b)]
        nb = -(-len(l) // b)
        short = nb * b - len(l)
        m = np.concatenate([l, np.zeros(short, dtype=l.dtype)]).reshape(nb, b)
        counts = np.full(nb, b, dtype=np.int64)
        counts[-1] -= short
        if mode == "pad":
            slots = counts * max_len
        elif mode == "longest":
            slots = counts * m.max(axis=1)
        else:
            slots = m.sum(axis=1)
        i = int(np.argmax(slots))
        return i, int(slots[i])

    return worst


def build_arms(keys: Sequence[str], *, lengths: np.ndarray, max_len: int, dataset: TokenDataset,
               trl: Optional[dict], seed: int, log: Callable) -> Dict[str, Arm]:
    """The issue's arms 1-7 (7 shares 6's batches)."""
    from transformers import DataCollatorWithFlattening
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    perm = np.random.default_rng(seed).permutation(n)
    real = lambda b: int(lengths[b].sum())  # noqa: E731
    arms: Dict[str, Arm] = {}
    common = dict(lengths=lengths, max_len=max_len, dataset=dataset, real_fn=real)

    if "1" in keys:
        arms["1"] = Arm("1", "pad to max_length", f"DataCollatorWithPadding(padding='max_length', "
                        f"max_length={max_len}), fixed batch size, random order, sdpa + attention_mask",
                        attn="sdpa", size_kind="sequences", epoch_fn=lambda b: _chunks(perm, b),
                        slot_fn=lambda b: len(b) * max_len, collate_fn=lambda s: PaddingCollator(max_len),
                        pin_memory=True, worst_fn=chunked_worst(lambda b: perm, lengths, "pad", max_len), **common)
    if "2" in keys:
        arms["2"] = Arm("2", "dynamic padding", "DataCollatorWithPadding(padding='longest'), fixed batch "
                        "size, random order, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                        epoch_fn=lambda b: _chunks(perm, b), slot_fn=lambda b: len(b) * int(lengths[b].max()),
                        collate_fn=lambda s: PaddingCollator(None), pin_memory=True,
                        worst_fn=chunked_worst(lambda b: perm, lengths, "longest", max_len), **common)
    if "3" in keys:
        grouped_orders: Dict[int, np.ndarray] = {}
        length_list = lengths.tolist()

        def grouped_order(b):
            if b not in grouped_orders:
                g = torch.Generator().manual_seed(seed)
                grouped_orders[b] = np.fromiter(iter(LengthGroupedSampler(b, lengths=length_list, generator=g)),
                                                dtype=np.int64)
            return grouped_orders[b]

        arms["3"] = Arm("3", "group_by_length", "transformers' LengthGroupedSampler (Trainer's group_by_length: "
                        "megabatches of 50 batches sorted by length) + DataCollatorWithPadding('longest'), "
                        "fixed batch size, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                        epoch_fn=lambda b: _chunks(grouped_order(b), b), slot_fn=lambda b: len(b) * int(lengths[b].max()),
                        collate_fn=lambda s: PaddingCollator(None), pin_memory=True,
                        worst_fn=chunked_worst(grouped_order, lengths, "longest", max_len), **common)
    if "4" in keys:
        arms["4"] = Arm("4", "DataCollatorWithFlattening", "transformers' DataCollatorWithFlattening("
                        "return_flash_attn_kwargs=True), fixed number of sequences per batch, random order; "
                        "attn_implementation='warppack' reading its cu_seq_lens (same kernel as warppack)",
                        attn="warppack", size_kind="sequences", epoch_fn=lambda b: _chunks(perm, b),
                        slot_fn=real, collate_fn=lambda s: DataCollatorWithFlattening(return_flash_attn_kwargs=True),
                        pin_memory=True, worst_fn=chunked_worst(lambda b: perm, lengths, "sum", max_len), **common)
    if "5" in keys and trl is not None:
        rows, row_lengths, seconds = trl_bfd_rows(trl, dataset, max_len)
        row_perm = np.random.default_rng(seed).permutation(len(row_lengths))
        log(f"  TRL _pack_bfd: {n} sequences -> {len(row_lengths)} rows of <= {max_len} tokens in {seconds:.2f} s "
            f"(fill {row_lengths.sum() / (len(row_lengths) * max_len):.4f})")
        collator_cls = trl["collator_cls"]
        arm = Arm("5", "TRL BFD + padding-free", f"TRL {trl['version']} _pack_bfd (what pack_dataset(strategy="
                  f"'bfd') runs) into rows of seq_length={max_len}, then DataCollatorForLanguageModeling("
                  "padding_free=True) over a fixed number of rows, random row order; attn_implementation="
                  "'warppack' reading its cu_seq_lens", attn="warppack", size_kind="rows",
                  lengths=row_lengths, max_len=max_len, dataset=rows, epoch_fn=lambda b: _chunks(row_perm, b),
                  slot_fn=lambda b: int(row_lengths[b].sum()), real_fn=lambda b: int(row_lengths[b].sum()),
                  collate_fn=lambda s: collator_cls(pad_token_id=PAD_ID, padding_free=True), pin_memory=True,
                  worst_fn=chunked_worst(lambda b: row_perm, row_lengths, "sum", max_len))
        arm.notes.append(f"TRL mode: {trl['mode']}; BFD planning {seconds:.2f} s for {n} sequences")
        arm.plan_seconds = seconds
        arms["5"] = arm
    if "6" in keys or "7" in keys:
        def packed_epoch(budget):
            sampler, _ = packed_sampler(lengths, budget, seed=seed)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(0)
            return list(iter(sampler))

        def packed_collate(budget):
            return warppack.PackedCollator(budget)

        for key, name, desc in (
            ("6", "warppack", "warppack.PackedBatchSampler(max_tokens=budget, shuffle=True) + PackedCollator"
             "(budget) (one pinned buffer, one non_blocking copy); attn_implementation='warppack'"),
            ("7", "compute-only bound", "arm 6's own packed batches, collated and copied to the GPU before "
             "timing: no data loading inside the timed loop"),
        ):
            if key in keys:
                arms[key] = Arm(key, name, desc, attn="warppack", size_kind="max_tokens", epoch_fn=packed_epoch,
                                slot_fn=real, collate_fn=packed_collate, pin_memory=False, budget_arm=True,
                                **common)
        _, how = packed_sampler(lengths[:2], max(int(lengths[:2].max()), 1))
        for key in ("6", "7"):
            if key in arms:
                arms[key].notes.append(f"sampler: {how}")
    return arms


# ---------------------------------------------------------------------------------------------------
# moving and stepping
# ---------------------------------------------------------------------------------------------------
def to_device(batch, device: torch.device):
    if isinstance(batch, warppack.PackedBatch):
        return batch.to(device, non_blocking=True)
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train_step(model, opt, inputs) -> torch.Tensor:
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss.detach()


def free_memory(device) -> None:
    """Collect garbage and return cached blocks to the device (no-op off CUDA)."""
    if device is not None and device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    if hasattr(torch, "OutOfMemoryError") and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def peak_of(fn: Callable[[], Any], device: torch.device, on_oom: Optional[Callable[[], None]] = None) -> tuple:
    """Run fn once; (ok, peak allocated bytes, seconds). An out-of-memory error gives ok=False."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    ok = True
    try:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001
        if not is_oom(error):
            raise
        ok = False
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    if not ok:  # the traceback (and the tensors its frames held) is gone once we are out of `except`
        if on_oom is not None:
            on_oom()
        free_memory(device)
    return ok, int(peak), seconds


class Timer:
    """Window boundaries: CUDA events on the compute stream (no sync), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: List[Any] = []

    def mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> List[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def sample_positions(num_batches: int, count: int, seed: int, exclude: Sequence[int] = ()) -> List[int]:
    """``count`` batch positions drawn uniformly without replacement (with replacement if too few)."""
    pool = np.setdiff1d(np.arange(num_batches), np.asarray(list(exclude), dtype=np.int64))
    if len(pool) == 0:
        pool = np.arange(num_batches)
    rng = np.random.default_rng(seed)
    return rng.choice(pool, size=count, replace=count > len(pool)).tolist()


def loader_for(arm: Arm, batches: List[List[int]], size: int, *, num_workers: int = 0, device=None,
               batch_sampler=None):
    pin = bool(arm.pin_memory and device is not None and device.type == "cuda")
    if num_workers and arm.key in ("6", "7"):
        pin = device is not None and device.type == "cuda"  # workers hand back pageable buffers: pin once
    kw = dict(num_workers=num_workers, pin_memory=pin)
    if num_workers:
        kw.update(prefetch_factor=4, persistent_workers=False)
    return torch.utils.data.DataLoader(arm.dataset, batch_sampler=batch_sampler or batches,
                                       collate_fn=arm.collate_for(size), **kw)


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64))) if len(xs) else float("nan")


def fmt_gib(x: Optional[float]) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 2**30:.1f}"


def timed_windows(device: torch.device, arm: Arm, size: int, batches: List[List[int]], step_fn: Callable,
                  *, warmup: int, windows: int, per: int, prestage: bool = False) -> dict:
    """Run ``warmup`` steps, then ``windows`` windows of ``per`` steps over ``batches`` (in order).

    Window boundaries are CUDA events on the compute stream, so nothing inside a window waits for the
    GPU: the host runs ahead, and a slow input pipeline shows up as GPU idle time inside the window.
    With ``prestage`` every batch is collated and copied to the device before the clock starts.
    Returns per-window real/slot tokens, seconds and host time spent getting the next batch.
    """
    assert len(batches) >= warmup + windows * per
    if prestage:
        collate = arm.collate_for(size)
        staged = [to_device(collate([arm.dataset[i] for i in b]), device) for b in batches]
        source = iter(staged)
    else:
        source = iter(loader_for(arm, batches, size, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    acc = torch.zeros((), device=device, dtype=torch.float32)
    out = dict(windows=[], oom_timed=0, bad_windows=[])
    step = 0
    for w in range(-1, windows):
        count = warmup if w < 0 else per
        real = slot = 0
        data_s = 0.0
        if w >= 0:
            timer.mark()
        for _ in range(count):
            b = batches[step]
            step += 1
            t = time.perf_counter()
            inputs = next(source)
            if not prestage:
                inputs = to_device(inputs, device)
            data_s += time.perf_counter() - t
            try:
                acc += step_fn(inputs).float()
            except Exception as error:  # noqa: BLE001
                if not is_oom(error):
                    raise
                out["oom_timed"] += 1
                out["bad_windows"].append(w)
            del inputs
            real += arm.real(b)
            slot += arm.slot(b)
        if w >= 0:
            out["windows"].append(dict(real_tokens=real, slot_tokens=slot, data_host_s=data_s, steps=count))
    timer.mark()
    secs = timer.seconds()
    for d, s in zip(out["windows"], secs):
        d["seconds"] = s
        d["real_tokens_per_s"] = d["real_tokens"] / s if s > 0 else float("nan")
    good = [d for i, d in enumerate(out["windows"]) if i not in out["bad_windows"]]
    tps = [d["real_tokens_per_s"] for d in good]
    win = out["windows"]
    out.update(
        steps_per_window=per,
        real_tokens_per_s=median(tps),
        real_tokens_per_s_min=float(min(tps)) if tps else float("nan"),
        real_tokens_per_s_max=float(max(tps)) if tps else float("nan"),
        slot_tokens_per_s=median([d["slot_tokens"] / d["seconds"] for d in good if d["seconds"] > 0]),
        padding_fraction_timed=1 - sum(d["real_tokens"] for d in win) / max(1, sum(d["slot_tokens"] for d in win)),
        data_host_share=sum(d["data_host_s"] for d in win) / max(1e-9, sum(secs)),
        peak_gib_timed=(torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None,
        peak_reserved_gib=(torch.cuda.max_memory_reserved(device) / 2**30) if device.type == "cuda" else None,
        value_mean=float(acc.item()) / max(1, step),
    )
    del source
    if out["oom_timed"]:
        free_memory(device)
    return out
