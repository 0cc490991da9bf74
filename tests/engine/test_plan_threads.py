"""plan() while another thread writes the lengths: the engine runs without the GIL.

Every plan must be a valid plan of some snapshot of the array, or the error about one of the entries
being written: never a crash, an out-of-bounds read (scripts/asan.sh runs this file under
AddressSanitizer) or a lost or repeated example. An entry caught mid-write may read as neither of
the values the writer stores (numpy's copies do not write each int64 in one store), e.g. 0.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager

import numpy as np
import pytest

import warppack

N, BUDGET, HOT = 200_000, 4096, 1000
SMALL = 7


def _base() -> np.ndarray:
    lengths = np.random.default_rng(0).integers(1, BUDGET + 1, N).astype(np.int64)
    lengths[:HOT] = SMALL
    return lengths


@contextmanager
def _writer(lengths: np.ndarray, big: int):
    """A thread flipping lengths[:HOT] between ``big`` and SMALL until the block ends (SMALL then)."""
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            lengths[:HOT] = big
            lengths[:HOT] = SMALL

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        lengths[:HOT] = SMALL


def _check(p: warppack.Plan, base: np.ndarray, overlong: str) -> None:
    """``p`` is a valid plan of lengths equal to ``base`` but for the hot entries."""
    items, starts, sizes, offsets = p.items, p.starts, p.sizes, p.bin_offsets
    assert offsets[0] == 0 and offsets[-1] == len(items) and np.all(np.diff(offsets) > 0)
    assert np.add.reduceat(sizes, offsets[:-1]).max() <= BUDGET
    assert sizes.min() >= 1 and p.num_tokens == int(sizes.sum())
    # Every example exactly once (split: its pieces tile it from 0 without gaps or overlaps).
    order = np.lexsort((starts, items))
    items, starts, sizes = items[order], starts[order], sizes[order]
    first = np.r_[True, items[1:] != items[:-1]]
    assert np.array_equal(items[first], np.arange(N)), "an example was lost or repeated"
    assert np.all(starts[first] == 0)
    follows = ~first
    assert np.array_equal(starts[follows], (starts + sizes)[np.flatnonzero(follows) - 1])
    totals = np.bincount(items, weights=sizes, minlength=N).astype(np.int64)
    assert np.array_equal(totals[HOT:], base[HOT:])
    assert totals[:HOT].min() >= 1
    if overlong == "error":
        assert totals[:HOT].max() <= BUDGET


@pytest.mark.parametrize(
    "strategy, overlong, big",
    [
        ("bfd", "error", 10**9),
        ("ffd", "error", 10**9),
        ("online", "error", 10**9),
        ("bfd", "truncate", 10**9),
        ("ffd", "truncate", 10**9),
        ("online", "truncate", 10**9),
        # Split into BUDGET-token chunks, 10**9 tokens would be 244 million pieces per plan.
        ("bfd", "split", 50 * BUDGET + 3),
        ("online", "split", 50 * BUDGET + 3),
    ],
)
def test_plan_while_another_thread_writes_the_lengths(strategy, overlong, big):
    lengths, base = _base(), _base()
    outcomes = {"planned": 0, "refused": 0}
    for _ in range(6):
        plans = []
        with _writer(lengths, big):
            for _ in range(4):
                try:
                    plans.append(warppack.plan(lengths, BUDGET, strategy=strategy, overlong=overlong,
                                               buffer_size=64))
                except ValueError as error:  # about an entry being written: too long (or torn to 0)
                    about = re.match(r"example (\d+) has (\d+ tokens, more than max_tokens|length 0)", str(error))
                    assert about is not None and int(about.group(1)) < HOT, error
                    outcomes["refused"] += 1
        # Checked once the writer has stopped and restored SMALL: a whole plan reads its sizes
        # from the array when first asked, and it was planned from hot entries of at most BUDGET
        # tokens, which only SMALL is (any value torn from SMALL and ``big`` with a byte of ``big``
        # is larger).
        for p in plans:
            _check(p, base, overlong)
        outcomes["planned"] += len(plans)
    if overlong != "error":  # a length being written is taken as it is read, not refused: plans were checked
        assert outcomes["planned"] > 0, outcomes
