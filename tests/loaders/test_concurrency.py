"""What both loaders' docstrings promise about threads: one pass at a time per object, one thread inside a pass.

(Worker processes: ``test_stream.py`` runs real persistent DataLoader workers over several epochs.)
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from warppack import PackedBatchSampler, PackedIterableDataset
from warppack.loaders.sampler.layout import Layout


def sampler_with(hook, monkeypatch):
    """A sampler whose every batch calls ``hook()`` while it is being handed out."""
    batch = Layout.batch
    monkeypatch.setattr(Layout, "batch", lambda self, step, rank: (hook(), batch(self, step, rank))[1])
    return PackedBatchSampler(np.arange(1, 50), 64, shuffle=False)


def dataset_with(hook, monkeypatch):
    """A dataset whose collator calls ``hook()`` and keeps the example ids."""
    examples = [{"input_ids": np.arange(3) + 10 * i} for i in range(20)]
    return PackedIterableDataset(examples, 8, collator=lambda b: (hook(), [int(e["input_ids"][0]) for e in b])[1])


LOADERS = pytest.mark.parametrize("build,owner", [(sampler_with, "PackedBatchSampler"),
                                                  (dataset_with, "PackedIterableDataset")])


@LOADERS
def test_a_new_pass_makes_the_previous_iterator_stale(build, owner, monkeypatch):
    loader = build(lambda: None, monkeypatch)
    expected = list(loader)
    first = iter(loader)
    next(first)
    second = iter(loader)
    assert next(second) == expected[0]
    with pytest.raises(RuntimeError, match=rf"a newer pass over this {owner} started \(iter\(\) was called again"):
        next(first)
    assert list(second) == expected[1:], "the newer pass goes on undisturbed"


@LOADERS
def test_a_second_thread_inside_a_pass_is_refused_and_takes_nothing(build, owner, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def hook():  # holds the background thread inside next() until the main thread has tried too
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            release.wait(30)

    expected = list(build(lambda: None, monkeypatch))
    it = iter(build(hook, monkeypatch))
    taken = []
    worker = threading.Thread(target=lambda: taken.append(next(it)))
    worker.start()
    assert entered.wait(30)
    with pytest.raises(RuntimeError, match=rf"two threads called next\(\) on one {owner} pass at the same time"):
        next(it)
    release.set()
    worker.join(30)
    assert taken + list(it) == expected, "the refused call took no batch"
