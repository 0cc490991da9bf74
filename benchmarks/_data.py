"""Length data shared by the benchmarks: the real histograms in ../shared/data and a lognormal sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    """name -> {lengths, max_tokens, overlong} for every benchmark data set available."""
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
        lengths = np.load(cpython)
        out["cpython stdlib (1.8k)"] = dict(lengths=lengths[lengths > 0], max_tokens=8192, overlong="truncate")
    out[f"lognormal SFT ({lognormal_n / 1e6:g}M)"] = dict(
        lengths=lognormal_sft(lognormal_n), max_tokens=4096, overlong="error"
    )
    return out
