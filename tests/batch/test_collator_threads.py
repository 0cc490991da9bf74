"""One PackedCollator shared by threads: every batch keeps its own buffer."""

from __future__ import annotations

import pickle
import sys
import threading

import numpy as np
import pytest
import torch

from warppack import PackedCollator
from warppack.batch.pool import BufferPool


@pytest.fixture
def tiny_switch_interval():
    # Thread switches every microsecond: the pool's check-then-take window gets hit often.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_a_buffer_handed_out_is_not_handed_out_again_while_held():
    pool = BufferPool(pinned=False)
    first = pool.acquire(1000)
    second = pool.acquire(1000)  # nothing made from ``first`` yet: the view itself holds it
    assert first.numel() == second.numel() == 1000
    assert first.data_ptr() != second.data_ptr()
    ptr = first.data_ptr()
    del first
    assert pool.acquire(1000).data_ptr() == ptr and pool.allocations == 2


def test_threads_sharing_a_collator_never_see_each_others_ids(tiny_switch_interval):
    collate = PackedCollator()
    threads, per_thread = 4, 1500
    wrong = []
    kept = {}

    def work(token: int) -> None:
        examples = [{"input_ids": np.full(5000, token)}]
        held = []
        for step in range(per_thread):
            batch = collate(examples)
            if not bool((batch["input_ids"] == token).all()):
                wrong.append((token, step))
            held.append(batch)
            if len(held) > 3:  # some batches stay alive while others are made and dropped
                held.pop(0)
        kept[token] = held

    workers = [threading.Thread(target=work, args=(t,)) for t in range(1, threads + 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert wrong == []
    for token, batches in kept.items():  # the batches still held were not overwritten later
        assert all(bool((b["input_ids"] == token).all()) for b in batches)
    assert len({b.storage_ptr() for batches in kept.values() for b in batches}) == 3 * threads


def test_a_collator_pickles_without_its_buffers():
    collate = PackedCollator(64, pad_to_multiple_of=8)
    batch = collate([{"input_ids": [1, 2, 3]}])
    copy = pickle.loads(pickle.dumps(collate))
    assert copy._pools == {} and copy.max_tokens == 64 and copy.pad_to_multiple_of == 8
    assert torch.equal(copy([{"input_ids": [1, 2, 3]}])["input_ids"], batch["input_ids"])
    clone = pickle.loads(pickle.dumps(batch))  # a batch pickles without the pool's copy notifier
    assert clone["input_ids"].tolist() == [[1, 2, 3, 0, 0, 0, 0, 0]]
