"""One PackingConfig for the collator, the loaders and the Trainer: they cannot disagree, nothing is cut silently.

The config itself and what a budget cuts (``count_overlong``, against a pure-Python reference),
the loaders' ``packing=``, and ``pack_trainer``: one config merged from its sources (a value set
twice must agree), the budget from the lengths on a CPU (never the single longest), truncation by
default in the Trainer with a warning per epoch and metrics in the logs, and a log of what it changed.
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import warppack  # noqa: E402
from warppack import PackingConfig  # noqa: E402
from warppack.engine.config import count_overlong  # noqa: E402
from warppack.hf_trainer.budget import sft_max_length  # noqa: E402

from support.recipes import tiny_llama  # noqa: E402


def _rows(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 64, (int(n),), generator=gen).tolist()} for n in lengths]


LONG_TAIL = [3 + (i * 7) % 18 for i in range(39)] + [300]  # one example 15x the others
ROWS = _rows(LONG_TAIL)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
                learning_rate=1e-3, per_device_train_batch_size=4, seed=0, disable_tqdm=True, num_train_epochs=1)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _trainer(tmp_path, *, collator=None, callbacks=None, **kw):
    return transformers.Trainer(model=tiny_llama(64, 512), args=_args(tmp_path, **kw), train_dataset=ROWS,
                                data_collator=collator, callbacks=callbacks)


# -- the config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("max_tokens", 0, "max_tokens must be > 0"), ("max_tokens", "8k", "max_tokens must be a positive int"),
    ("overlong", "drop", "overlong='drop' is not one of"), ("strategy", "best", "strategy='best' is not one of"),
    ("pad_to_multiple_of", -8, "pad_to_multiple_of must be > 0"), ("static_shape", "yes", "static_shape must be"),
    ("max_sequences", 2**31, "max_sequences=2147483648 exceeds"),
])
def test_the_config_refuses_bad_values_naming_the_field(field, value, message):
    with pytest.raises((TypeError, ValueError), match=message):
        PackingConfig(**{field: value})


def test_the_config_is_frozen_and_shows_what_was_set():
    config = PackingConfig(4096, overlong="truncate", pad_to_multiple_of=64)
    assert repr(config) == "PackingConfig(max_tokens=4096, overlong='truncate', pad_to_multiple_of=64)"
    with pytest.raises(AttributeError):
        config.max_tokens = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="not a multiple of pad_to_multiple_of=64"):
        config.replace(max_tokens=4000)
    assert config.replace(max_tokens=8192) == PackingConfig(8192, overlong="truncate", pad_to_multiple_of=64)


def _reference_counts(lengths, budget, policy):
    longer = [n for n in lengths if n > budget]
    if policy not in ("truncate", "split") or not longer:
        return None
    if policy == "truncate":
        return len(longer), sum(n - budget for n in longer), len(longer)
    return len(longer), sum(longer), sum((n + budget - 1) // budget for n in longer)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 500), max_size=60), budget=st.integers(1, 300),
       policy=st.sampled_from(["error", "truncate", "split"]))
def test_count_overlong_matches_a_pure_python_count(lengths, budget, policy):
    counts = count_overlong(np.asarray(lengths, dtype=np.int64), budget, policy)
    expected = _reference_counts(lengths, budget, policy)
    if expected is None:
        assert counts is None
        return
    assert (counts.examples, counts.tokens, counts.pieces) == expected
    assert counts.total_tokens == sum(lengths) and counts.fraction == pytest.approx(counts.tokens / sum(lengths))


# -- the loaders ---------------------------------------------------------------------------------
def test_loaders_take_the_config_and_refuse_a_disagreeing_argument():
    config = PackingConfig(32, overlong="truncate", strategy="ffd", max_sequences=4)
    sampler = warppack.PackedBatchSampler(LONG_TAIL, packing=config, shuffle=False)
    assert (sampler.max_tokens, sampler.overlong, sampler.strategy, sampler.max_seqs_per_bin) == (32, "truncate",
                                                                                                    "ffd", 4)
    assert sampler.packing == config
    assert warppack.PackedBatchSampler(LONG_TAIL, 32, packing=PackingConfig(overlong="truncate")).max_tokens == 32
    with pytest.raises(ValueError, match=r"max_seqs_per_bin=8 but packing has max_sequences=4"):
        warppack.PackedBatchSampler(LONG_TAIL, packing=config, max_seqs_per_bin=8)
    with pytest.raises(ValueError, match=r"max_tokens=64 but packing has max_tokens=32"):
        warppack.PackedIterableDataset(ROWS, 64, packing=config)
    with pytest.raises(TypeError, match="needs a token budget"):
        warppack.PackedBatchSampler(LONG_TAIL, packing=PackingConfig(overlong="truncate"))
    with pytest.raises(TypeError, match="packing must be a warppack.PackingConfig"):
        warppack.PackedBatchSampler(LONG_TAIL, 32, packing={"max_tokens": 32})
    stream = warppack.PackedIterableDataset(ROWS, packing=config, lengths=LONG_TAIL)
    assert stream.collator.max_tokens == 32 and stream.collator.max_sequences == 4
    with pytest.raises(ValueError, match="its collator has max_tokens=16"):
        warppack.PackedIterableDataset(ROWS, packing=config, collator=warppack.PackedCollator(16))


def test_truncating_and_splitting_warn_once_per_epoch_with_counts():
    sampler = warppack.PackedBatchSampler(LONG_TAIL, 32, overlong="truncate", seed=0)
    cut = 300 - 32
    with pytest.warns(UserWarning, match=rf"epoch 0: 1 of 40 examples \(2.5%\) .* {cut} of {sum(LONG_TAIL)} tokens"):
        list(sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(sampler)  # the same epoch again: already said
    sampler.set_epoch(1)
    with pytest.warns(UserWarning, match="PackedBatchSampler, epoch 1"):
        list(sampler)
    stream = warppack.PackedIterableDataset(ROWS, 32, overlong="split", lengths=LONG_TAIL)
    with pytest.warns(UserWarning, match=r"epoch 0: 1 of 40 examples .* split into 10 pieces"):
        batches = list(stream)
    assert sum(b.num_tokens for b in batches) == sum(LONG_TAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(warppack.PackedBatchSampler(LONG_TAIL, 300))  # nothing longer than the budget: nothing said


# -- pack_trainer --------------------------------------------------------------------------------
def test_pack_trainer_builds_the_collator_and_the_sampler_from_one_config(tmp_path):
    trainer = _trainer(tmp_path)
    config = PackingConfig(64, overlong="truncate", strategy="ffd", max_sequences=6, pad_to_multiple_of=16)
    warppack.pack_trainer(trainer, packing=config)
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler
    while not isinstance(sampler, warppack.PackedBatchSampler):
        sampler = sampler.batch_sampler
    collator = trainer.data_collator
    assert sampler.packing == config
    assert not sampler.warn_empty, "its collator takes [], so the sampler need not warn about empty batches"
    assert (collator.max_tokens, collator.overlong, collator.max_sequences, collator.pad_to_multiple_of) == (
        64, "truncate", 6, 16)
    batches = list(loader)
    assert all(b.num_tokens + b.num_padding <= 64 and b.num_sequences <= 6 for b in batches)
    assert sum(b.num_tokens for b in batches) == sum(min(n, 64) for n in LONG_TAIL)


def test_the_packed_trainers_collator_runs_the_empty_steps_of_ranks_without_data(tmp_path):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import DataLoader

    replaced = _trainer(tmp_path)
    warppack.pack_trainer(replaced)
    assert replaced.data_collator.allow_empty, "the collator pack_trainer puts in takes []"
    given = warppack.PackedCollator(64, overlong="truncate")  # agrees with the config, but refuses []
    trainer = _trainer(tmp_path, collator=given)
    warppack.pack_trainer(trainer, packing=PackingConfig(64, overlong="truncate"))
    trainer.get_train_dataloader()
    collator = trainer.data_collator
    assert collator.allow_empty and not given.allow_empty, "a copy, the user's collator unchanged"
    assert (collator.max_tokens, collator.overlong) == (64, "truncate")
    # The packed Trainer's loader on 4 ranks over 2 examples: accelerate deals the interleaved batches.
    rows = ROWS[:2]
    glob = warppack.PackedBatchSampler([len(r["input_ids"]) for r in rows], packing=collator.packing, num_replicas=4,
                                       rank=0, interleaved=True)
    steps = []
    for rank in range(4):
        loader = DataLoader(rows, batch_sampler=BatchSamplerShard(glob, num_processes=4, process_index=rank),
                            collate_fn=collator, num_workers=2)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"PackedBatchSampler, epoch 0: 2 empty batches")
            steps.append([(b.num_sequences, int((b["labels"] != -100).sum())) for b in loader])
    assert [len(s) for s in steps] == [1] * 4, "equal steps"
    assert sorted(n for s in steps for n, _ in s) == [0, 0, 1, 1]
    assert all(labels == 0 for s in steps for n, labels in s if n == 0), "empty steps add no label token"


def test_pack_trainer_refuses_sources_that_disagree(tmp_path):
    collator = warppack.PackedCollator(64)
    trainer = _trainer(tmp_path, collator=collator)
    with pytest.raises(ValueError, match=r"PackedCollator got max_tokens=64 but .* has max_tokens=128"):
        warppack.pack_trainer(trainer, packing=PackingConfig(128))
    assert type(trainer) is transformers.Trainer and trainer.data_collator is collator, "a refusal changes nothing"
    assert not any(isinstance(c, warppack.WarpPackCallback) for c in trainer.callback_handler.callbacks)
    trainer = _trainer(tmp_path, collator=warppack.PackedCollator(64),
                       callbacks=[warppack.WarpPackCallback(max_tokens=32)])
    with pytest.raises(ValueError, match=r"max_tokens=64 but .* has max_tokens=32"):
        warppack.pack_trainer(trainer)
    with pytest.raises(ValueError, match="overlong='split' cannot be used by the Trainer"):
        warppack.pack_trainer(_trainer(tmp_path), packing=PackingConfig(64, overlong="split"))
    agreeing = _trainer(tmp_path, collator=warppack.PackedCollator(64))
    assert warppack.pack_trainer(agreeing, packing=PackingConfig(64, overlong="truncate")).max_tokens == 64


def test_pack_trainer_logs_what_it_changed_once(tmp_path, caplog):
    trainer = _trainer(tmp_path)
    with caplog.at_level(logging.INFO, logger="warppack"):
        warppack.pack_trainer(trainer)
        warppack.pack_trainer(trainer)
    first, second = [r for r in caplog.records if "pack_trainer changed" in r.getMessage()]
    assert first.levelno == logging.WARNING and second.levelno == logging.INFO
    text = first.getMessage()
    for change in ("callbacks: + WarpPackCallback", "data_collator: default_data_collator -> PackedCollator",
                   "attn_implementation: 'sdpa' -> 'warppack'", "class: Trainer -> PackedTrainer",
                   "token budget: decided when the first loader is built", "truncated, as TRL does"):
        assert change in text


def test_on_a_cpu_the_budget_is_a_quantile_and_longer_examples_are_truncated_and_logged(tmp_path, caplog):
    trainer = _trainer(tmp_path, num_train_epochs=2)
    warppack.pack_trainer(trainer)
    with caplog.at_level(logging.WARNING, logger="warppack"), pytest.warns(UserWarning) as said:
        trainer.train()
    budget = trainer._warppack().max_tokens
    quantile = int(np.quantile(LONG_TAIL, 0.99, method="lower"))  # the second longest: 20
    assert budget == -(-4 * quantile // 64) * 64 == 128 and budget < 4 * max(LONG_TAIL)
    assert any("99% quantile" in r.getMessage() and "4 x 20" in r.getMessage() for r in caplog.records)
    epochs = [str(w.message) for w in said if "are truncated to it" in str(w.message)]
    assert len(epochs) == 2 and "epoch 0" in epochs[0] and "epoch 1" in epochs[1]
    assert f"{300 - budget} of {sum(LONG_TAIL)} tokens" in epochs[0]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["truncated_examples"] == 1 and h["truncated_tokens"] == 300 - budget for h in logs)
    assert logs[0]["truncated_token_fraction"] == pytest.approx((300 - budget) / sum(LONG_TAIL))
    saved = trainer._warppack().state()
    assert json.loads(json.dumps(saved))["attributes"]["overlong_metrics"]["truncated_examples"] == 1


def test_overlong_error_refuses_a_longer_example_at_the_first_loader(tmp_path):
    trainer = _trainer(tmp_path)
    warppack.pack_trainer(trainer, packing=PackingConfig(64, overlong="error"))
    with pytest.raises(ValueError, match="example 39 has 300 tokens, more than max_tokens=64"):
        trainer.get_train_dataloader()


def test_the_callback_state_rebuilds_the_same_config():
    callback = warppack.WarpPackCallback(packing=PackingConfig(96, overlong="error", strategy="ffd"))
    state = json.loads(json.dumps(callback.state()))
    rebuilt = warppack.WarpPackCallback(**state["args"])
    assert rebuilt.packing == callback.packing and rebuilt.max_tokens == 96
    with pytest.raises(ValueError, match="WarpPackCallback got max_tokens=64 but packing has max_tokens=96"):
        warppack.WarpPackCallback(64, packing=PackingConfig(96))


def test_sft_max_length_is_read_from_trl_configs_only():
    class SFTConfig:  # the shape of TRL's: only its module says where it comes from
        __module__ = "trl.trainer.sft_config"
        max_length = None
        max_seq_length = 512

    assert sft_max_length(SFTConfig()) == ("max_seq_length", 512)
    assert sft_max_length(_args_like(max_length=512)) is None  # a plain TrainingArguments field is not TRL's


def _args_like(**fields):
    return type("TrainingArguments", (), {"__module__": "transformers.training_args", **fields})()
