"""The arms of the end-to-end benchmark: how each baseline forms, collates and sizes its batches.

1. pad to max_length, 2. dynamic padding, 3. group_by_length, 4. DataCollatorWithFlattening,
5. TRL BFD + padding-free, 6. warppack, 7. the compute-only bound (arm 6's batches, pre-staged).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

import warppack

from .models import PAD_ID
from .peers import PaddingCollator, trl_bfd_rows
from .tokens import TokenDataset


def chunks(order: np.ndarray, b: int) -> List[List[int]]:
    """``order`` cut into batches of ``b`` indices (the last one shorter)."""
    return [order[i : i + b].tolist() for i in range(0, len(order), b)]


def as_index_list(batch: Any) -> List[int]:
    return [int(i) for i in (batch.tolist() if hasattr(batch, "tolist") else batch)]


def packed_sampler(lengths: np.ndarray, max_tokens: int, seed: int = 0) -> warppack.PackedBatchSampler:
    """warppack's shuffled sampler over ``lengths`` at ``max_tokens``."""
    return warppack.PackedBatchSampler(lengths, max_tokens=max_tokens, shuffle=True, seed=seed)


class Arm:
    """One way of batching. ``size`` is a batch size (sequences or rows) or a token budget."""

    def __init__(self, key: str, name: str, desc: str, *, attn: str, size_kind: str, lengths: np.ndarray,
                 max_len: int, dataset: Any, epoch_fn: Callable[[int], Iterable[Any]],
                 slot_fn: Callable[[List[int]], int],
                 real_fn: Callable[[List[int]], int], collate_fn: Callable[[int], Callable], pin_memory: bool,
                 budget_arm: bool = False, worst_fn: Optional[Callable[[int], Tuple[int, int]]] = None) -> None:
        self.key, self.name, self.desc, self.attn, self.size_kind = key, name, desc, attn, size_kind
        self._worst_fn = worst_fn
        self.lengths, self.max_len, self.dataset = lengths, max_len, dataset
        self._epoch_fn, self.slot, self.real = epoch_fn, slot_fn, real_fn
        self.collate_for, self.pin_memory, self.budget_arm = collate_fn, pin_memory, budget_arm
        self._epochs: Dict[int, List[List[int]]] = {}
        self.notes: List[str] = []
        self.plan_seconds: Optional[float] = None

    def epoch(self, size: int) -> List[List[int]]:
        if size not in self._epochs:
            self._epochs[size] = [as_index_list(b) for b in self._epoch_fn(size)]
        return self._epochs[size]

    def worst(self, size: int) -> Tuple[int, int]:
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


def chunked_worst(order_fn: Callable[[int], np.ndarray], lengths: np.ndarray, mode: str,
                  max_len: int) -> Callable[[int], Tuple[int, int]]:
    """Vectorised ``Arm.worst`` for arms whose epoch is ``order_fn(b)`` cut into chunks of ``b``.

    mode: 'pad' (every row padded to max_len), 'longest' (rows padded to the batch's longest), 'sum'
    (no padding: the batch's tokens)."""

    def worst(b: int) -> Tuple[int, int]:
        ls = lengths[order_fn(b)]
        nb = -(-len(ls) // b)
        short = nb * b - len(ls)
        m = np.concatenate([ls, np.zeros(short, dtype=ls.dtype)]).reshape(nb, b)
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
               trl: Optional[dict], seed: int, log: Callable[..., None]) -> Dict[str, Arm]:
    """Arms ``keys`` of 1-7 over ``dataset`` (7 shares 6's batches); 5 needs ``trl`` (peers.load_trl)."""
    from transformers import DataCollatorWithFlattening
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    perm = np.random.default_rng(seed).permutation(n)

    def real(b: List[int]) -> int:
        return int(lengths[b].sum())

    arms: Dict[str, Arm] = {}
    common: Dict[str, Any] = dict(lengths=lengths, max_len=max_len, dataset=dataset, real_fn=real)

    if "1" in keys:
        arms["1"] = Arm("1", "pad to max_length", f"DataCollatorWithPadding(padding='max_length', "
                        f"max_length={max_len}), fixed batch size, random order, sdpa + attention_mask",
                        attn="sdpa", size_kind="sequences", epoch_fn=lambda b: chunks(perm, b),
                        slot_fn=lambda b: len(b) * max_len, collate_fn=lambda s: PaddingCollator(max_len),
                        pin_memory=True, worst_fn=chunked_worst(lambda b: perm, lengths, "pad", max_len), **common)
    if "2" in keys:
        arms["2"] = Arm("2", "dynamic padding", "DataCollatorWithPadding(padding='longest'), fixed batch "
                        "size, random order, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                        epoch_fn=lambda b: chunks(perm, b), slot_fn=lambda b: len(b) * int(lengths[b].max()),
                        collate_fn=lambda s: PaddingCollator(None), pin_memory=True,
                        worst_fn=chunked_worst(lambda b: perm, lengths, "longest", max_len), **common)
    if "3" in keys:
        grouped_orders: Dict[int, np.ndarray] = {}
        length_list = lengths.tolist()

        def grouped_order(b: int) -> np.ndarray:
            if b not in grouped_orders:
                g = torch.Generator().manual_seed(seed)
                grouped_orders[b] = np.fromiter(iter(LengthGroupedSampler(b, lengths=length_list, generator=g)),
                                                dtype=np.int64)
            return grouped_orders[b]

        arms["3"] = Arm("3", "group_by_length", "transformers' LengthGroupedSampler (Trainer's group_by_length: "
                        "megabatches of 50 batches sorted by length) + DataCollatorWithPadding('longest'), "
                        "fixed batch size, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                        epoch_fn=lambda b: chunks(grouped_order(b), b),
                        slot_fn=lambda b: len(b) * int(lengths[b].max()),
                        collate_fn=lambda s: PaddingCollator(None), pin_memory=True,
                        worst_fn=chunked_worst(grouped_order, lengths, "longest", max_len), **common)
    if "4" in keys:
        arms["4"] = Arm("4", "DataCollatorWithFlattening", "transformers' DataCollatorWithFlattening("
                        "return_flash_attn_kwargs=True), fixed number of sequences per batch, random order; "
                        "attn_implementation='warppack' reading its cu_seq_lens (same kernel as warppack)",
                        attn="warppack", size_kind="sequences", epoch_fn=lambda b: chunks(perm, b),
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
                  lengths=row_lengths, max_len=max_len, dataset=rows, epoch_fn=lambda b: chunks(row_perm, b),
                  slot_fn=lambda b: int(row_lengths[b].sum()), real_fn=lambda b: int(row_lengths[b].sum()),
                  collate_fn=lambda s: collator_cls(pad_token_id=PAD_ID, padding_free=True), pin_memory=True,
                  worst_fn=chunked_worst(lambda b: row_perm, row_lengths, "sum", max_len))
        arm.notes.append(f"TRL mode: {trl['mode']}; BFD planning {seconds:.2f} s for {n} sequences")
        arm.plan_seconds = seconds
        arms["5"] = arm
    for key, name, desc in (
        ("6", "warppack", "warppack.PackedBatchSampler(max_tokens=budget, shuffle=True) + PackedCollator"
         "(budget) (one pinned buffer, one non_blocking copy); attn_implementation='warppack'"),
        ("7", "compute-only bound", "arm 6's own packed batches, collated and copied to the GPU before "
         "timing: no data loading inside the timed loop"),
    ):
        if key in keys:
            arms[key] = Arm(key, name, desc, attn="warppack", size_kind="max_tokens",
                            epoch_fn=lambda budget: packed_sampler(lengths, budget, seed=seed), slot_fn=real,
                            collate_fn=warppack.PackedCollator, pin_memory=False, budget_arm=True, **common)
    return arms
