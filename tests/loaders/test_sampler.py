"""PackedBatchSampler: exactly once, equal steps, balance, determinism, resume, resharding, misuse."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import warppack
from warppack import PackedBatchSampler

from support.resume_harness import (ListDataset, SamplerSession, StatefulDataLoader, check_resume, check_skip_first_batches,
                            example_ids, make_examples, sampler_stateful_session)

WORLDS = (1, 2, 3, 7, 8)


def rank_batches(lengths, max_tokens, world, epoch=0, **kwargs):
    """Every rank's batches of one epoch, simulated in-process."""
    out = []
    for rank in range(world):
        sampler = PackedBatchSampler(lengths, max_tokens, num_replicas=world, rank=rank, **kwargs)
        sampler.set_epoch(epoch)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"PackedBatchSampler, epoch \d+: \d+ empty batch")  # tested below
            batches = list(sampler)
        assert len(batches) == len(sampler), "len() must be exact before iteration"
        out.append(batches)
    return out


def check_guarantees(lengths, max_tokens, per_rank, *, truncate=False):
    lengths = np.asarray(lengths)
    steps = {len(b) for b in per_rank}
    assert len(steps) == 1, f"unequal steps across ranks: {[len(b) for b in per_rank]}"
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(seen) == list(range(len(lengths))), "every example exactly once across ranks"
    budget = [sum(min(int(lengths[i]), max_tokens) if truncate else int(lengths[i]) for i in b)
              for batches in per_rank for b in batches]
    assert max(budget, default=0) <= max_tokens
    empties = sum(1 for batches in per_rank for b in batches if not b)
    if empties:  # only when there were fewer sequences than slots: then every batch holds one example
        assert all(len(b) <= 1 for batches in per_rank for b in batches)
    return steps.pop()


length_lists = st.one_of(
    st.lists(st.integers(1, 64), max_size=120),                       # uniform
    st.lists(st.sampled_from([1, 2, 63, 64]), max_size=120),          # extremes, many ties
    st.lists(st.integers(1, 8), max_size=30),                         # tiny examples, few of them
    st.builds(lambda n, s: np.clip(np.random.default_rng(s).lognormal(2.5, 1.0, n), 1, 64).astype(int).tolist(),
              st.integers(0, 300), st.integers(0, 1000)),              # long-tailed
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=length_lists, world=st.sampled_from(WORLDS), shuffle=st.booleans(),
       strategy=st.sampled_from(["bfd", "ffd", "online"]), seed=st.integers(0, 2**40), epoch=st.integers(0, 3),
       max_seqs=st.sampled_from([None, 1, 3]))
def test_exactly_once_equal_steps_budget(lengths, world, shuffle, strategy, seed, epoch, max_seqs):
    per_rank = rank_batches(lengths, 64, world, epoch=epoch, shuffle=shuffle, strategy=strategy, seed=seed,
                            max_seqs_per_bin=max_seqs)
    steps = check_guarantees(lengths, 64, per_rank)
    if max_seqs:
        assert all(len(b) <= max_seqs for batches in per_rank for b in batches)
    if not shuffle:  # the fewest steps that hold the plan: ceil(bins / world); splitting never adds one
        bins = warppack.plan(lengths, 64, strategy=strategy, max_seqs_per_bin=max_seqs).num_bins
        assert steps == -(-bins // world)


class _Ids(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _ids_collate(batch):
    return list(batch)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(1, 32), max_size=40), world=st.sampled_from(WORLDS),
       workers=st.sampled_from([1, 3]))
def test_exactly_once_through_dataloader_workers(lengths, world, workers):
    per_rank = []
    for rank in range(world):
        sampler = PackedBatchSampler(lengths, 32, num_replicas=world, rank=rank, seed=3)
        loader = DataLoader(_Ids(len(lengths)), batch_sampler=sampler, collate_fn=_ids_collate, num_workers=workers)
        per_rank.append(list(loader))
        assert len(per_rank[-1]) == len(loader) == len(sampler)
    check_guarantees(lengths, 32, per_rank)


def test_truncate_counts_budget_tokens_and_split_is_refused():
    lengths = [100, 5, 40, 3, 70]
    per_rank = rank_batches(lengths, 50, 2, overlong="truncate")
    check_guarantees(lengths, 50, per_rank, truncate=True)
    with pytest.raises(ValueError, match="overlong='truncate'.*PackedIterableDataset"):
        PackedBatchSampler(lengths, 50, overlong="split")
    with pytest.raises(ValueError, match="example 0 has 100 tokens, more than max_tokens=50"):
        PackedBatchSampler(lengths, 50)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 0"):
        PackedBatchSampler([3, 0, 2], 50)


def test_fewer_examples_than_ranks_gives_explicit_empty_batches():
    per_rank = rank_batches([7, 9, 4], 64, 8, shuffle=False)
    assert [len(b) for b in per_rank] == [1] * 8
    assert sorted(i for b in per_rank for batch in b for i in batch) == [0, 1, 2]
    assert sum(1 for b in per_rank if b == [[]]) == 5
    # A collator built for it turns [] into a zero-loss step: one padding token, every label ignored.
    empty = warppack.PackedCollator(64, allow_empty=True)([])
    assert empty.num_sequences == 0 and bool((empty["labels"] == -100).all())
    assert rank_batches([], 64, 3) == [[], [], []]


def test_empty_steps_through_real_dataloader_workers_need_allow_empty():
    # 2 examples on 4 ranks: two ranks get [] for the one step, through 2 worker processes.
    examples, lengths = make_examples(2, seed=4)
    ids, empty_ranks = [], []
    for rank in range(4):
        sampler = PackedBatchSampler(lengths, 128, num_replicas=4, rank=rank, seed=1)
        loader = DataLoader(ListDataset(examples), batch_sampler=sampler, num_workers=2,
                            collate_fn=warppack.PackedCollator(128, allow_empty=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(loader)
        assert len(batches) == 1, "equal steps: one step on every rank"
        batch = batches[0]
        ids += example_ids(batch)
        said = [str(w.message) for w in caught if "empty batch" in str(w.message)]
        if batch.num_sequences:
            assert not said, "a rank with data is not warned"
            continue
        empty_ranks.append(rank)
        assert batch["input_ids"].shape == (1, 1) and bool((batch["labels"] == -100).all())
        assert int(warppack.global_num_label_tokens(batch)) == 0
        assert said == [f"PackedBatchSampler, epoch 0: 1 empty batch ([]) for rank {rank} of 4, as there are fewer "
                        f"sequences than the 1 step × 4 ranks of the epoch (equal steps). A DataLoader passes each "
                        f"to collate_fn as []: build the collator with PackedCollator(..., allow_empty=True) to run "
                        f"it as a zero-loss step (a PackedCollator without allow_empty=True raises ValueError)"]
        # Without allow_empty the worker's collator refuses the [] and the loader re-raises it, message intact.
        refused = DataLoader(ListDataset(examples), batch_sampler=sampler, num_workers=2,
                             collate_fn=warppack.PackedCollator(128))
        with pytest.raises(ValueError, match=r"examples=\[\] holds no example.*PackedBatchSampler's equal-steps "
                                             r"padding.*allow_empty=True"):
            list(refused)
    assert sorted(ids) == [0, 1] and len(empty_ranks) == 2


def test_empty_batches_are_reported_once_per_epoch_for_the_ranks_that_get_them():
    sampler = PackedBatchSampler([5, 7, 9], 64, num_replicas=8, rank=0, interleaved=True, shuffle=False)
    with pytest.warns(UserWarning, match=r"epoch 0: 5 empty batches \(\[\]\) for ranks (\d, ){4}\d of 8.*1 step × 8 ranks"):
        assert sum(batch == [] for batch in sampler) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(sampler)  # a second pass of the same epoch: already said
        list(PackedBatchSampler([5, 7, 9], 64, num_replicas=2, rank=1))  # no empty batch: nothing to say
    sampler.set_epoch(1)
    with pytest.warns(UserWarning, match="epoch 1: 5 empty batches"):
        list(sampler)
    quiet = PackedBatchSampler([5, 7, 9], 64, num_replicas=8, rank=0, interleaved=True, warn_empty=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a collator that accepts [] was said to be there
        assert sum(batch == [] for batch in quiet) == 5
    with pytest.raises(TypeError, match="warn_empty"):
        PackedBatchSampler([5], 64, warn_empty="no")


def test_bins_are_split_rather_than_leaving_a_rank_idle():
    # 5 near-full bins on 4 ranks: 8 slots, filled by splitting 3 bins; no empty batch.
    lengths = [30, 30] * 5
    per_rank = rank_batches(lengths, 64, 4, shuffle=False)
    steps = check_guarantees(lengths, 64, per_rank)
    assert steps == 2 and all(batch for batches in per_rank for batch in batches)


def test_drop_last_drops_the_least_filled_bins_instead_of_splitting():
    lengths = [40] * 5 + [10]  # bins: 40+10 and four 40s; 5 bins on 4 ranks: one 40 is dropped
    per_rank = rank_batches(lengths, 64, 4, shuffle=False, drop_last=True)
    assert [len(b) for b in per_rank] == [1] * 4 and all(b[0] for b in per_rank)
    seen = sorted(i for b in per_rank for batch in b for i in batch)
    assert len(seen) == len(set(seen)) == 5 and 5 in seen


def test_determinism_and_epochs():
    lengths = np.random.default_rng(0).integers(1, 200, size=500)
    a = rank_batches(lengths, 512, 3, epoch=2, seed=11)
    assert a == rank_batches(lengths, 512, 3, epoch=2, seed=11)
    assert a != rank_batches(lengths, 512, 3, epoch=3, seed=11)
    assert a != rank_batches(lengths, 512, 3, epoch=2, seed=12)
    # Shuffling re-draws the bins themselves, not only their order.
    def contents(per_rank):
        return sorted(tuple(sorted(b)) for r in per_rank for b in r)

    assert contents(a) != contents(rank_batches(lengths, 512, 3, epoch=3, seed=11))
    fixed = rank_batches(lengths, 512, 3, shuffle=False)
    assert fixed == rank_batches(lengths, 512, 3, shuffle=False, epoch=5)


def real_length_sets(data_dir):
    """name -> (lengths, max_tokens, overlong): SQuAD-384 and a 1M draw of Wikipedia-512 (histograms), CPython."""
    rng = np.random.default_rng(0)
    out = {}
    for name, budget, size in (("squad384_hist.txt", 1536, None), ("wikipedia512_hist.txt", 2048, 1_000_000)):
        counts = np.loadtxt(data_dir / name, comments="#", dtype=np.int64)
        lengths = np.repeat(np.arange(1, len(counts) + 1), counts)
        if size is not None:
            lengths = rng.choice(lengths, size=size, replace=False)
        out[name] = (rng.permutation(lengths), budget, "error")
    cpython = np.load(data_dir / "cpython_stdlib_smollm2_lengths.npy")
    out["cpython"] = (cpython[cpython > 0].astype(np.int64), 8192, "truncate")
    return out


def _imbalance(lengths, max_tokens, world, **kwargs):
    """Σ_step max_rank tokens / Σ_step mean_rank tokens, from the sampler's own layout."""
    sampler = PackedBatchSampler(lengths, max_tokens, num_replicas=world, rank=0, **kwargs)
    layout = sampler._layout(0, [])
    tokens = np.where(layout.grid >= 0, layout.bins.tokens[np.maximum(layout.grid, 0)], 0)
    sumsq = np.where(layout.grid >= 0, layout.bins.sumsq[np.maximum(layout.grid, 0)], 0)
    return tokens.max(1).sum() / tokens.mean(1).sum(), sumsq.max(1).sum() / sumsq.mean(1).sum()


@pytest.mark.parametrize("world", [8, 64])
def test_token_balance_on_real_length_data(shared_data, world):
    for name, (lengths, max_tokens, overlong) in real_length_sets(shared_data).items():
        tokens, sumsq = _imbalance(lengths, max_tokens, world, overlong=overlong, seed=1)
        assert tokens <= 1.02, f"{name} on {world} ranks: token imbalance {tokens:.4f}"
        assert sumsq <= 1.25, f"{name} on {world} ranks: Σlen² imbalance {sumsq:.4f}"


# -- state -----------------------------------------------------------------------------------
def test_state_dict_round_trip_mid_epoch_and_same_on_every_rank():
    lengths = np.random.default_rng(1).integers(1, 100, size=300)
    full = [list(PackedBatchSampler(lengths, 256, num_replicas=3, rank=r, seed=4)) for r in range(3)]
    sampler = PackedBatchSampler(lengths, 256, num_replicas=3, rank=1, seed=4)
    it = iter(sampler)
    for _ in range(5):
        next(it)
    state = sampler.state_dict()
    assert state["step"] == 5 and state["epoch"] == 0 and state["num_replicas"] == 3
    for rank in range(3):  # any rank's state resumes any rank
        other = PackedBatchSampler(lengths, 256, num_replicas=3, rank=rank, seed=4)
        other.load_state_dict(state)
        assert list(other) == full[rank][5:]
        assert list(other) == full[rank], "a second pass starts the epoch again"


def test_state_is_refused_for_other_data_budget_or_seed():
    lengths = np.arange(1, 101)
    state = PackedBatchSampler(lengths, 256, seed=4).state_dict()
    with pytest.raises(ValueError, match=r"max_tokens: saved 256, this sampler 128.*seed: saved 4, this sampler 5"):
        PackedBatchSampler(lengths, 128, seed=5).load_state_dict(state)
    changed = lengths.copy()
    changed[7] += 1
    with pytest.raises(ValueError, match="lengths_fingerprint"):
        PackedBatchSampler(changed, 256, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples: saved 100, this sampler 99"):
        PackedBatchSampler(lengths[:-1], 256, seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="not a PackedBatchSampler state"):
        PackedBatchSampler(lengths, 256).load_state_dict({"epoch": 0})


@pytest.mark.parametrize("worlds", [(3, 2), (2, 5), (4, 3, 7), (8, 1)])
def test_resume_on_another_world_size_keeps_exactly_once(worlds):
    """Run some steps on worlds[0] ranks, resume on worlds[1] (and again on worlds[2]): each example once."""
    lengths = np.random.default_rng(len(worlds)).integers(1, 120, size=400)
    kwargs = dict(seed=9)
    seen = []
    state = None
    total_steps = []
    for segment, world in enumerate(worlds):
        samplers = [PackedBatchSampler(lengths, 256, num_replicas=world, rank=r, **kwargs) for r in range(world)]
        for s in samplers:
            s.set_epoch(2)
            if state is not None:
                s.load_state_dict(state)
        lens = {len(s) for s in samplers}
        assert len(lens) == 1, "equal steps after resharding too"
        iters = [iter(s) for s in samplers]
        last = segment == len(worlds) - 1
        steps = None if last else 3 + segment
        count = 0
        while steps is None or count < steps:
            batches = [next(it, None) for it in iters]
            if batches[0] is None:
                assert all(b is None for b in batches)
                break
            seen += [i for b in batches for i in b]
            count += 1
        total_steps.append(count)
        state = samplers[-1].state_dict()
    assert sorted(seen) == list(range(len(lengths)))
    assert len(samplers[0]) == sum(total_steps)


REFUSED = "This state was not saved by this sampler"


@pytest.mark.parametrize("change,match", [
    ({"history": [[3, 99]]}, r"field history\[0\] = \[3, 99\]: epoch 0 has only \d+ steps on 3 ranks"),
    ({"step": 99}, r"field step = 99: epoch 0 has only \d+ steps on 2 ranks"),
    ({"num_replicas": 3, "step": 99}, r"field step = 99: epoch 0 has only \d+ steps on 3 ranks"),
    ({"epoch": "1"}, r"field epoch = '1': expected an int, got str"),
    ({"epoch": -1}, r"field epoch = -1: out of range \(expected an int from 0 to"),
    ({"step": 2.0}, r"field step = 2.0: expected an int, got float"),
    ({"num_replicas": 0}, r"field num_replicas = 0: out of range"),
    ({"num_replicas": 2**40}, r"field num_replicas = 1099511627776: out of range"),
    ({"rank": 5}, r"field rank = 5: out of range \(expected an int from 0 to 1\)"),
    ({"history": "[]"}, r"field history = '\[\]': expected a list, got str"),
    ({"history": [[2]]}, r"field history\[0\] = \[2\]: expected 2 entries, got 1"),
    ({"history": [[3, 0]]}, r"field history\[0\]\[1\] \(steps\) = 0: out of range"),
    ({"history": [[None, 2]]}, r"field history\[0\]\[0\] \(num_replicas\) = None: expected an int"),
])
def test_saved_state_fields_are_checked_before_use(change, match):
    """A saved state is untrusted input: every field is type- and range-checked against this plan."""
    lengths = np.random.default_rng(3).integers(1, 64, size=200)
    sampler = PackedBatchSampler(lengths, 128, num_replicas=2, rank=0, seed=1)
    state = sampler.state_dict()
    before = list(PackedBatchSampler(lengths, 128, num_replicas=2, rank=0, seed=1))
    with pytest.raises(ValueError, match=match) as info:
        sampler.load_state_dict({**state, **change})
    assert REFUSED in str(info.value)
    assert list(sampler) == before and len(sampler) == len(before), "a refused state changes nothing"


@pytest.mark.parametrize("field", ["epoch", "step", "history", "num_replicas", "rank", "seed", "drop_last"])
def test_saved_state_missing_a_field_is_named(field):
    sampler = PackedBatchSampler(np.arange(1, 40), 64)
    state = sampler.state_dict()
    del state[field]
    with pytest.raises(ValueError, match=rf"'{field}' is missing|Mismatched fields: {field}: saved \(missing\)"):
        sampler.load_state_dict(state)


def test_saved_options_must_have_the_type_this_sampler_writes():
    sampler = PackedBatchSampler(np.arange(1, 40), 64, shuffle=False)
    with pytest.raises(ValueError, match="Mismatched fields: max_tokens: saved 64.0, this sampler 64"):
        sampler.load_state_dict({**sampler.state_dict(), "max_tokens": 64.0})


def test_finished_epoch_state_resumes_to_nothing_then_next_epoch():
    lengths = np.arange(1, 60)
    sampler = PackedBatchSampler(lengths, 128, seed=2)
    first = list(sampler)
    state = sampler.state_dict()
    assert state["step"] == len(first)
    fresh = PackedBatchSampler(lengths, 128, seed=2)
    fresh.load_state_dict(state)
    fresh.set_epoch(0)  # the same epoch: keeps the loaded position (HF Trainer calls this)
    assert list(fresh) == []
    fresh.set_epoch(1)
    reference = PackedBatchSampler(lengths, 128, seed=2)
    reference.set_epoch(1)
    assert list(fresh) == list(reference)


def test_consumed_counts_what_the_loop_took():
    lengths = np.arange(1, 80)
    sampler = PackedBatchSampler(lengths, 128, seed=2)
    full = list(PackedBatchSampler(lengths, 128, seed=2))
    it = iter(sampler)
    for _ in range(6):  # e.g. a loader that prefetched 6 while the loop consumed 4
        next(it)
    state = sampler.state_dict(consumed=4)
    assert state["step"] == 4
    with pytest.raises(ValueError, match="consumed=7 is more than the 6 batches"):
        sampler.state_dict(consumed=7)
    other = PackedBatchSampler(lengths, 128, seed=2)
    other.load_state_dict(state)
    assert list(other) == full[4:]


def test_reconfiguring_mid_iteration_is_a_clear_error():
    sampler = PackedBatchSampler(np.arange(1, 50), 64)
    it = iter(sampler)
    next(it)
    sampler.set_epoch(1)
    with pytest.raises(RuntimeError, match=r"reconfigured \(set_epoch\(1\) after epoch 0\) while this iteration"):
        next(it)
    it = iter(sampler)
    next(it)
    sampler.load_state_dict(sampler.state_dict())
    with pytest.raises(RuntimeError, match="load_state_dict"):
        next(it)
    with pytest.raises(AttributeError, match="max_tokens is fixed at construction"):
        sampler.max_tokens = 32
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        sampler.set_epoch(-1)


def test_rank_defaults_and_validation():
    with pytest.raises(ValueError, match=r"num_replicas=4\) needs rank= too"):
        PackedBatchSampler([1, 2], 8, num_replicas=4)
    with pytest.raises(ValueError, match="rank=4 is out of range for num_replicas=4"):
        PackedBatchSampler([1, 2], 8, num_replicas=4, rank=4)
    s = PackedBatchSampler([1, 2], 8)
    assert (s.num_replicas, s.rank) == (1, 0)


# -- wrappers that deal batches themselves (Accelerate / HF Trainer) --------------------------
@pytest.mark.parametrize("world", [1, 3, 4])
def test_interleaved_under_accelerate_batch_sampler_shard(world):
    from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler

    lengths = np.random.default_rng(5).integers(1, 100, size=257)
    direct = [list(PackedBatchSampler(lengths, 200, num_replicas=world, rank=r, seed=1)) for r in range(world)]
    glob = PackedBatchSampler(lengths, 200, num_replicas=world, rank=0, seed=1, interleaved=True)
    assert len(glob) == world * len(direct[0])
    for r in range(world):
        shard = BatchSamplerShard(glob, num_processes=world, process_index=r)
        assert len(shard) == len(direct[r])
        assert list(shard) == direct[r]
        assert list(SkipBatchSampler(shard, 3)) == direct[r][3:]  # the Trainer's resume path
    # The interleaved state counts whole steps: a step is done when every rank's batch is out.
    it = iter(glob)
    for _ in range(3 * world - 1):
        next(it)
    assert glob.state_dict()["step"] == 2


def test_accelerate_prepare_and_set_epoch_reach_the_sampler():
    from accelerate import Accelerator

    examples, lengths = make_examples(60, seed=2)
    sampler = PackedBatchSampler(lengths, 256, seed=3, interleaved=True)
    loader = DataLoader(ListDataset(examples), batch_sampler=sampler, collate_fn=warppack.PackedCollator(256))
    prepared = Accelerator(cpu=True).prepare(loader)
    prepared.set_epoch(4)
    assert sampler.epoch == 4
    reference = PackedBatchSampler(lengths, 256, seed=3)
    reference.set_epoch(4)
    assert sum(b.num_sequences for b in prepared) == 60 and len(prepared) == len(reference)


def test_accelerate_multi_process_preparation_forwards_set_epoch():
    from accelerate.data_loader import prepare_data_loader

    lengths = np.random.default_rng(6).integers(1, 100, size=300)
    glob = PackedBatchSampler(lengths, 256, num_replicas=3, rank=0, interleaved=True)
    loader = DataLoader(_Ids(300), batch_sampler=glob, collate_fn=_ids_collate)
    for rank in range(3):
        prepared = prepare_data_loader(loader, num_processes=3, process_index=rank)  # BatchSamplerShard inside
        prepared.set_epoch(2)  # what HF Trainer calls every epoch: must reach the sampler through the wrapper
        assert glob.epoch == 2
        direct = PackedBatchSampler(lengths, 256, num_replicas=3, rank=rank)
        direct.set_epoch(2)
        assert list(prepared) == list(direct)


def test_skip_first_batches_resume_path():
    examples, lengths = make_examples(120, seed=3)

    def make():
        sampler = PackedBatchSampler(lengths, 300, seed=3)
        return DataLoader(ListDataset(examples), batch_sampler=sampler, collate_fn=warppack.PackedCollator(300))

    check_skip_first_batches(make, set_epoch=lambda loader, e: loader.batch_sampler.set_epoch(e))


# -- resume at every batch boundary (the shared harness) ---------------------------------------
CASES = [(1, 64), (37, 128), (1000, 2048)]


@pytest.mark.parametrize("n,max_tokens", CASES)
def test_resume_every_boundary_single_process(n, max_tokens):
    examples, lengths = make_examples(n, seed=n)
    # rank 2 of 3, so splits and (for n=1) empty batches are on the resumed path too
    check_resume(lambda: SamplerSession(examples, lengths, max_tokens=max_tokens, num_replicas=3, rank=2, seed=7),
                 epochs=3)
    check_resume(lambda: SamplerSession(examples, lengths, max_tokens=max_tokens, shuffle=False), epochs=2)


@pytest.mark.slow
@pytest.mark.parametrize("n,max_tokens", CASES)
def test_resume_every_boundary_stateful_dataloader_two_workers(n, max_tokens):
    if StatefulDataLoader is None:
        pytest.skip("torchdata is not installed (pip install torchdata)")
    examples, lengths = make_examples(n, seed=n)
    check_resume(lambda: sampler_stateful_session(examples, lengths, max_tokens=max_tokens, num_workers=2, seed=7),
                 epochs=2)


@pytest.mark.slow
def test_resume_plain_dataloader_two_workers_with_consumed():
    examples, lengths = make_examples(200, seed=1)
    total = check_resume(lambda: SamplerSession(examples, lengths, max_tokens=1024, num_workers=2, seed=7),
                         epochs=2, boundaries=[0, 1, 2, 5, 9], chain_every=0)
    assert total > 9
