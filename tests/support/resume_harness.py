"""The one resume harness both loaders' tests use: resume at every batch boundary replays the exact tail.

A *session* is a freshly built loader plus the way its position is saved and restored (the sampler's
own ``state_dict``, torchdata's ``StatefulDataLoader``, ...). ``check_resume`` runs an uninterrupted
reference over several epochs, saving the state after every batch (through ``torch.save`` /
``torch.load(weights_only=True)``, as a checkpoint would), then for every boundary builds a new
session, loads that state and checks that what follows is bit for bit the reference's tail — through
the end of the epoch and the next epochs. A few resumes are chained (resume, run a little, save,
resume again).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Callable, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import warppack

try:
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # optional: the cases that need it skip
    StatefulDataLoader = None

BATCH_KEYS = ("input_ids", "labels", "position_ids", "seq_idx", "cu_seq_lens_q")


# -- data ------------------------------------------------------------------------------------
def make_examples(n: int, *, seed: int = 0, max_len: int = 60, long_every: int = 0, long_len: int = 0):
    """``n`` examples with random tokens (distinct per example) and labels; every ``long_every``-th is long."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    if long_every:
        lengths[::long_every] = rng.integers(long_len // 2, long_len + 1, size=len(lengths[::long_every]))
    examples = []
    for i, length in enumerate(lengths.tolist()):
        ids = rng.integers(3, 50_000, size=length).astype(np.int64)
        ids[0] = 100_000 + i  # the example's id, readable back from a batch
        labels = ids.copy()
        labels[rng.random(length) < 0.2] = -100
        examples.append({"input_ids": ids, "labels": labels})
    return examples, lengths.astype(np.int64)


class ListDataset(Dataset):
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]


def fingerprint(batch) -> str:
    """Digest of every tensor of a packed batch: equal digests mean bit-for-bit equal batches."""
    digest = hashlib.blake2b(digest_size=16)
    for key in BATCH_KEYS:
        tensor = batch[key]
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def example_ids(batch) -> List[int]:
    """Ids of the examples (first piece of each) in a batch built from ``make_examples`` data."""
    ids = batch["input_ids"][0]
    cu = batch["cu_seq_lens_q"].tolist()
    return [int(ids[a]) - 100_000 for a, b in zip(cu[:-1], cu[1:]) if b > a and int(ids[a]) >= 100_000]


def checkpoint_roundtrip(state: Any) -> Any:
    """What a checkpoint does to a state: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# -- sessions --------------------------------------------------------------------------------
class Session:
    """A loader built from scratch; subclasses say how its position is saved and restored."""

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError

    def batches(self) -> Iterable:
        """One pass (the rest of the current epoch)."""
        raise NotImplementedError

    def state(self) -> Any:
        raise NotImplementedError

    def load(self, state: Any) -> None:
        raise NotImplementedError


class SamplerSession(Session):
    """Map-style: ``DataLoader(batch_sampler=PackedBatchSampler)``; the sampler holds the position.

    With workers a plain DataLoader prefetches, so the state is taken with ``consumed=`` (the batches
    this pass has handed to the loop).
    """

    def __init__(self, examples, lengths, *, max_tokens, num_workers=0, **sampler_kwargs):
        self.sampler = warppack.PackedBatchSampler(lengths, max_tokens, **sampler_kwargs)
        collate = warppack.PackedCollator(max_tokens, overlong=sampler_kwargs.get("overlong", "error"),
                                          allow_empty=True)  # ranks past the last sequence get [] (equal steps)
        self.loader = DataLoader(ListDataset(examples), batch_sampler=self.sampler, collate_fn=collate,
                                 num_workers=num_workers)
        self.num_workers = num_workers
        self.taken = 0

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def batches(self):
        self.taken = 0
        for batch in self.loader:
            self.taken += 1
            yield batch

    def state(self):
        return self.sampler.state_dict(consumed=self.taken if self.num_workers else None)

    def load(self, state):
        self.sampler.load_state_dict(state)


class StatefulSession(Session):
    """Either loader inside torchdata's ``StatefulDataLoader`` (snapshot every batch)."""

    def __init__(self, dataset, *, set_epoch: Callable[[int], None], **loader_kwargs):
        self.loader = StatefulDataLoader(dataset, snapshot_every_n_steps=1, **loader_kwargs)
        self._set_epoch = set_epoch

    def set_epoch(self, epoch):
        self._set_epoch(epoch)

    def batches(self):
        return iter(self.loader)

    def state(self):
        return self.loader.state_dict()

    def load(self, state):
        self.loader.load_state_dict(state)


class IterableSession(Session):
    """``PackedIterableDataset`` in a plain single-process DataLoader; the dataset holds the position."""

    def __init__(self, examples, *, max_tokens, **dataset_kwargs):
        self.dataset = warppack.PackedIterableDataset(examples, max_tokens, **dataset_kwargs)
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=0)

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)

    def batches(self):
        return iter(self.loader)

    def state(self):
        return self.dataset.state_dict()

    def load(self, state):
        self.dataset.load_state_dict(state)


def sampler_stateful_session(examples, lengths, *, max_tokens, num_workers=2, **sampler_kwargs):
    sampler = warppack.PackedBatchSampler(lengths, max_tokens, **sampler_kwargs)
    collate = warppack.PackedCollator(max_tokens, overlong=sampler_kwargs.get("overlong", "error"), allow_empty=True)
    return StatefulSession(ListDataset(examples), set_epoch=sampler.set_epoch, batch_sampler=sampler,
                           collate_fn=collate, num_workers=num_workers)


def iterable_stateful_session(examples, *, max_tokens, num_workers=2, persistent_workers=False, **dataset_kwargs):
    """``persistent_workers=True``: the workers outlive each epoch, so ``set_epoch`` must reach them."""
    dataset = warppack.PackedIterableDataset(examples, max_tokens, num_workers=num_workers, **dataset_kwargs)
    return StatefulSession(dataset, set_epoch=dataset.set_epoch, batch_size=None, num_workers=num_workers,
                           persistent_workers=persistent_workers)


# -- the check -------------------------------------------------------------------------------
def _run(session: Session, first_epoch: int, epochs: int, *, save_after: Optional[int] = None):
    """Fingerprints of the batches from ``first_epoch`` on; with ``save_after``, also the state then."""
    out: List[str] = []
    saved = None
    for epoch in range(first_epoch, epochs):
        session.set_epoch(epoch)
        for batch in session.batches():
            out.append(fingerprint(batch))
            if save_after is not None and len(out) == save_after:
                saved = (checkpoint_roundtrip(session.state()), epoch)
    return out, saved


def check_resume(make_session: Callable[[], Session], *, epochs: int = 2, boundaries: Optional[Sequence[int]] = None,
                 chain_every: int = 5, epochs_differ: bool = False) -> int:
    """Resume at every boundary (or at ``boundaries``); returns how many batches the reference has.

    Every ``chain_every``-th resume is chained: run 1-3 batches after resuming, save, resume again.
    ``epochs_differ`` (shuffled loaders): the reference's epochs must not repeat one another, so a
    ``set_epoch`` that never reached the loader (and a resume that agrees with it) cannot pass.
    Raises ``AssertionError`` naming the first boundary whose resumed stream differs.
    """
    reference = make_session()
    states: List[Any] = [checkpoint_roundtrip(reference.state())]
    epoch_of: List[int] = [0]
    expected: List[str] = []
    for epoch in range(epochs):
        reference.set_epoch(epoch)
        for batch in reference.batches():
            expected.append(fingerprint(batch))
            states.append(checkpoint_roundtrip(reference.state()))
            epoch_of.append(epoch)
    total = len(expected)
    assert total > 0, "the reference run produced no batch"
    if epochs_differ:
        per_epoch = [tuple(f for f, e in zip(expected, epoch_of[1:]) if e == epoch) for epoch in range(epochs)]
        assert len(set(per_epoch)) == epochs, "the reference repeats an epoch: set_epoch did not reach the loader"
    for g in range(total + 1) if boundaries is None else boundaries:
        hop = 1 + g % 3 if chain_every and g % chain_every == 0 and g + 1 < total else None
        session = make_session()
        session.load(states[g])
        got, saved = _run(session, epoch_of[g], epochs, save_after=hop)
        assert got == expected[g:], (
            f"resume after batch {g} of {total} (epoch {epoch_of[g]}): got {len(got)} batches, expected "
            f"{total - g}; first difference at {_first_diff(got, expected[g:])}"
        )
        if saved is not None:
            again = make_session()
            again.load(saved[0])
            tail, _ = _run(again, saved[1], epochs)
            assert tail == expected[g + hop:], (
                f"chained resume {g} -> {g + hop} diverged at {_first_diff(tail, expected[g + hop:])}"
            )
    return total


def _first_diff(a: Sequence[str], b: Sequence[str]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_skip_first_batches(make_loader: Callable[[], Any], *, set_epoch: Callable[[Any, int], None],
                             epoch: int = 1, points: Sequence[int] = (0, 1, 2, 5)) -> None:
    """Accelerate's resume path (HF Trainer's too): ``skip_first_batches`` yields the epoch's exact tail."""
    from accelerate import skip_first_batches

    loader = make_loader()
    set_epoch(loader, epoch)
    expected = [fingerprint(b) for b in loader]
    for k in points:
        if k > len(expected):
            continue
        loader = make_loader()
        set_epoch(loader, epoch)
        got = [fingerprint(b) for b in skip_first_batches(loader, k)]
        assert got == expected[k:], f"skip_first_batches({k}) diverged at {_first_diff(got, expected[k:])}"
