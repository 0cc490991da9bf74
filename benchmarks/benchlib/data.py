"""Length data: the real histograms of the shared data folder and a lognormal SFT-like sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

#: the shared data folder beside the checkout (length histograms of Wikipedia-512, SQuAD-384 and
#: the CPython standard library under the SmolLM2 tokenizer)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"

_HISTOGRAMS: Dict[Tuple[str, int], np.ndarray] = {}


def expand_histogram(path: Path, *, seed: int = 0) -> np.ndarray:
    """Histogram file (line k = count of length k) to a shuffled array of lengths."""
    counts = np.loadtxt(path, comments="#", dtype=np.int64)
    lengths = np.repeat(np.arange(1, len(counts) + 1, dtype=np.int64), counts)
    np.random.default_rng(seed).shuffle(lengths)
    return lengths


def lognormal_sft(n: int, *, max_len: int = 4096, seed: int = 0) -> np.ndarray:
    """SFT-like long-tailed lengths: lognormal, median ~300 tokens, clipped to [1, max_len]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=5.7, sigma=1.0, size=n), 1, max_len).astype(np.int64)


def datasets(data_dir: Optional[Path] = None, *, lognormal_n: int = 1_000_000) -> Dict[str, dict]:
    """name -> {lengths, max_tokens, overlong} for every data set found (``lognormal_n=0``: no lognormal)."""
    data_dir = Path(data_dir or DEFAULT_DATA_DIR)
    out: Dict[str, dict] = {}
    wiki = data_dir / "wikipedia512_hist.txt"
    if wiki.exists():
        out["wikipedia512 (16.3M)"] = dict(lengths=expand_histogram(wiki), max_tokens=2048, overlong="error")
    squad = data_dir / "squad384_hist.txt"
    if squad.exists():
        out["squad384 (88.6k)"] = dict(lengths=expand_histogram(squad), max_tokens=1536, overlong="error")
    cpython = data_dir / "cpython_stdlib_smollm2_lengths.npy"
    if cpython.exists():
        lengths = np.load(cpython).astype(np.int64)
        out["cpython stdlib (1.8k)"] = dict(lengths=lengths[lengths > 0], max_tokens=8192, overlong="truncate")
    if lognormal_n:
        out[f"lognormal SFT ({lognormal_n / 1e6:g}M)"] = dict(
            lengths=lognormal_sft(lognormal_n), max_tokens=4096, overlong="error")
    return out


def resolve_data_dir(arg: Optional[str]) -> Optional[Path]:
    """``--data-dir`` if given, else the shared data folder when it holds the Wikipedia-512 histogram."""
    if arg:
        return Path(arg)
    return DEFAULT_DATA_DIR if (DEFAULT_DATA_DIR / "wikipedia512_hist.txt").exists() else None


def load_lengths(dist: str, n: int, *, data_dir: Optional[Path], max_len: int, seed: int = 0,
                 allow_synthetic: bool = False) -> Tuple[np.ndarray, int, str]:
    """(lengths int64[n], max_length, description) for ``dist`` 'sft' or 'wiki'.

    'wiki' needs ``wikipedia512_hist.txt`` in ``data_dir``; ``allow_synthetic`` (smoke runs) puts a
    wiki-like stand-in in its place when the file is not there, and says so in the description.
    """
    if dist == "sft":
        lengths = lognormal_sft(n, max_len=max_len, seed=seed)
        return lengths, max_len, f"lognormal SFT-like (median ~300, clipped to {max_len}), n={n}"
    if dist == "wiki":
        path = None if data_dir is None else Path(data_dir) / "wikipedia512_hist.txt"
        if path is not None and path.exists():
            key = (str(path), seed)
            if key not in _HISTOGRAMS:  # 16.3M lengths: expanded once per run
                _HISTOGRAMS[key] = expand_histogram(path, seed=seed)
            lengths = _HISTOGRAMS[key][:n]
            return np.minimum(lengths, max_len), max_len, f"Wikipedia-512 histogram ({path.name}), n={n}"
        if not allow_synthetic:
            raise FileNotFoundError(
                f"wikipedia512_hist.txt not found in --data-dir {data_dir} (default {DEFAULT_DATA_DIR}); "
                "pass --data-dir with the folder that holds it, or --distribution sft")
        rng = np.random.default_rng(seed)
        lengths = np.where(rng.random(n) < 0.23, max_len, rng.integers(1, max_len, n)).astype(np.int64)
        return lengths, max_len, f"SYNTHETIC wiki-like (histogram file missing; smoke only), n={n}"
    raise ValueError(f"unknown distribution {dist!r}; use sft or wiki")
