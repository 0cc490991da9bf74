"""Token streams from the Python standard library's own sources, and the datasets built on them.

The same text is on every machine, so every arm of a benchmark sees the same real-text token ids.
Examples are handed out as Python lists, as a `datasets` Dataset does by default.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import torch

_TOKENIZED: Dict[int, np.ndarray] = {}


def stdlib_files() -> Iterator[Path]:
    """The standard library's ``.py`` files in a fixed order (no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def stdlib_tokens(n_tokens: int, vocab_size: int) -> np.ndarray:
    """Token ids from the standard library's source bytes: each byte pair -> one id in
    [3, vocab_size) (0/1/2 stay pad/bos/eos). Real text statistics, deterministic, on every machine."""
    need = 2 * n_tokens + 2
    chunks, total = [], 0
    for path in stdlib_files():
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= need:
            break
    raw = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    if raw.size < 2:  # no standard library sources on this machine: a fixed random stream instead
        raw = np.random.default_rng(0).integers(32, 127, need).astype(np.uint8)
    pairs = raw[: raw.size // 2 * 2].reshape(-1, 2).astype(np.int64)
    ids = (pairs[:, 0] * 256 + pairs[:, 1]) % (vocab_size - 3) + 3
    if ids.size < n_tokens:
        ids = np.resize(ids, n_tokens)
    return np.ascontiguousarray(ids[:n_tokens])


def tokenized_stdlib(tokenizer: Any, n_tokens: int) -> np.ndarray:
    """The standard library's sources through a real tokenizer, file after file, until ``n_tokens``."""
    have = _TOKENIZED.get(id(tokenizer), np.zeros(0, dtype=np.int64))
    if have.size < n_tokens:
        parts: List[np.ndarray] = []
        total = 0
        batch: List[str] = []
        for path in stdlib_files():
            try:
                batch.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                continue
            if len(batch) == 64:
                ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
                parts.extend(np.asarray(x, dtype=np.int64) for x in ids)
                total += sum(len(x) for x in ids)
                batch = []
                if total >= n_tokens:
                    break
        if batch and total < n_tokens:
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
            parts.extend(np.asarray(x, dtype=np.int64) for x in ids)
        have = _TOKENIZED[id(tokenizer)] = np.concatenate(parts)
    return np.ascontiguousarray(np.resize(have, n_tokens))


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``{'input_ids': list[int]}``: consecutive slices of one token array."""

    def __init__(self, lengths: np.ndarray, tokens: np.ndarray) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        if tokens.size < self.offsets[-1]:
            raise ValueError(f"tokens holds {tokens.size} ids, the lengths need {int(self.offsets[-1])}")
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict:
        start = int(self.offsets[i])
        return {"input_ids": self.tokens[start : start + int(self.lengths[i])].tolist()}


class RowsDataset(torch.utils.data.Dataset):
    """Packed rows as TRL's packed dataset returns them: ``{'input_ids': list, 'seq_lengths': list}``."""

    def __init__(self, values: np.ndarray, row_offsets: np.ndarray, seq_lengths: List[List[int]]) -> None:
        self.values, self.row_offsets, self.seq_lengths = values, row_offsets, seq_lengths

    def __len__(self) -> int:
        return len(self.seq_lengths)

    def __getitem__(self, i: int) -> dict:
        a, b = int(self.row_offsets[i]), int(self.row_offsets[i + 1])
        return {"input_ids": self.values[a:b].tolist(), "seq_lengths": list(self.seq_lengths[i])}
