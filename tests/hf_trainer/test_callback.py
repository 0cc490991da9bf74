"""HF Trainer on packed batches: three lines, exact step counts, logs, eval_loss, checkpoints, OOM guard."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import warppack  # noqa: E402

from support.simulated_device import SimulatedDevice

BUDGET = 64


def _model(attn="warppack", seed=0):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.set_attn_implementation(attn)
    return model


def _dataset(n, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 21, (n,), generator=gen).tolist()
    return [{"input_ids": torch.randint(3, 64, (k,), generator=gen).tolist()} for k in lengths]


TRAIN, VAL = _dataset(40, 1), _dataset(15, 2)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
                learning_rate=1e-3, per_device_train_batch_size=4, per_device_eval_batch_size=4, seed=0,
                disable_tqdm=True, num_train_epochs=1)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _packed_trainer(tmp_path, model=None, callback=None, **kw):
    trainer = transformers.Trainer(model=model or _model(), args=_args(tmp_path, **kw), train_dataset=TRAIN,
                                   eval_dataset=VAL, data_collator=warppack.PackedCollator(),          # line 1
                                   callbacks=[callback or warppack.WarpPackCallback(max_tokens=BUDGET)])  # line 2
    warppack.pack_trainer(trainer)                                                                      # line 3
    return trainer


def test_three_lines_train_with_exact_steps_epochs_and_packing_logs(tmp_path):
    trainer = _packed_trainer(tmp_path, num_train_epochs=2, gradient_accumulation_steps=2)
    loader = trainer.get_train_dataloader()
    lengths = [len(e["input_ids"]) for e in TRAIN]
    batches = list(loader)
    assert len(loader) == len(batches) == len(warppack.PackedBatchSampler(lengths, BUDGET, interleaved=True))
    assert all(isinstance(b, warppack.PackedBatch) and b.num_tokens <= BUDGET for b in batches)
    assert sum(b.num_sequences for b in batches) == len(TRAIN)  # every example once per epoch
    trainer.train()
    expected = 2 * -(-len(batches) // 2)
    assert trainer.state.max_steps == trainer.state.global_step == expected
    sampler = trainer.callback_handler.train_dataloader.batch_sampler
    assert sampler.epoch == 1  # the second epoch re-planned its batches
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == expected
    for entry in logs:
        assert 0 < entry["packing_efficiency"] <= 1 and entry["padding_fraction"] == 0
        assert entry["sequences_per_batch"] >= 1 and entry["real_tokens_per_second"] > 0
        assert entry["token_budget"] == BUDGET


def _padded_collate(examples):
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[row, : len(e["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class _SameBatchesPadded(transformers.Trainer):
    """Padded evaluation whose batches hold the same sequences as the packed ones."""

    def get_eval_dataloader(self, eval_dataset=None):
        sampler = warppack.PackedBatchSampler([len(e["input_ids"]) for e in VAL], BUDGET, shuffle=False)
        return torch.utils.data.DataLoader(VAL, batch_sampler=sampler, collate_fn=_padded_collate)


def test_packed_eval_loss_equals_padded_eval_loss_over_the_same_batches(tmp_path):
    packed = _packed_trainer(tmp_path).evaluate()["eval_loss"]
    padded_trainer = _SameBatchesPadded(model=_model(attn="sdpa"), args=_args(tmp_path), eval_dataset=VAL)
    padded = padded_trainer.evaluate()["eval_loss"]
    assert packed == pytest.approx(padded, rel=1e-5)


def test_callback_state_is_checkpointed_and_a_resume_keeps_its_budget(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="warppack"):
        first = _packed_trainer(tmp_path, callback=warppack.WarpPackCallback(), max_steps=3, save_steps=3,
                                save_strategy="steps")
        first.train()
    # No CUDA: per_device_train_batch_size x the 99% quantile of the lengths, rounded up to a multiple of 64.
    budget = -(-4 * int(np.quantile([len(e["input_ids"]) for e in TRAIN], 0.99, method="lower")) // 64) * 64
    assert first._warppack().max_tokens == budget
    assert "no CUDA device" in caplog.text or "sees no GPU" in caplog.text or "CPU-only" in caplog.text
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["WarpPackCallback"]
    assert saved["attributes"]["max_tokens"] == budget and saved["args"]["check"] is True

    second = _packed_trainer(tmp_path, callback=warppack.WarpPackCallback(), max_steps=5,
                             per_device_train_batch_size=2)  # alone it would pick another budget
    second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert second._warppack().max_tokens == budget and second._warppack().budget_source == "the resumed checkpoint"
    assert second.state.global_step == 5


def test_calibrates_at_train_start_on_a_simulated_device_and_leaves_the_model_alone(tmp_path):
    device = SimulatedDevice(total_bytes=2e4, static_bytes=1e3, per_token=100)
    model = _model()
    device.attach(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = warppack.WarpPackCallback(calibrate={"memory": device, "cache": False})
    trainer = _packed_trainer(tmp_path, model=model, callback=callback, max_steps=2)
    trainer.get_train_dataloader()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    best = device.best_budget(max(len(e["input_ids"]) for e in TRAIN), headroom=0.08)
    assert best / 1.05 <= callback.max_tokens <= best and callback.budget_source.startswith("calibrated")
    assert callback.state()["args"]["calibrate"] == {"cache": False}  # the device object is not saved
    trainer.train()
    assert trainer.state.global_step == 2


def test_oom_guard_in_the_trainer_loses_nothing(tmp_path):
    reference = _packed_trainer(tmp_path, max_steps=4)
    reference.train()
    model = _model()
    device = SimulatedDevice(total_bytes=40).attach(model)  # batches over 40 tokens run out of memory
    guarded = _packed_trainer(tmp_path, model=model, max_steps=4,
                              callback=warppack.WarpPackCallback(max_tokens=BUDGET, oom_guard=True))
    guarded.train()
    guard = guarded._warppack()._guard
    assert device.ooms >= 1 and guard.ooms == device.ooms and guard.max_tokens < BUDGET
    assert guarded.state.global_step == 4
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(guarded) == pytest.approx(losses(reference), rel=1e-5)
    for a, b in zip(guarded.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert guarded._warppack().state()["attributes"]["guard_state"]["ooms"] == guard.ooms


def test_a_model_that_leaks_across_sequences_is_stopped_at_train_start(tmp_path):
    trainer = transformers.Trainer(model=_model(attn="sdpa"), args=_args(tmp_path, max_steps=1),
                                   train_dataset=TRAIN, data_collator=warppack.PackedCollator(),
                                   callbacks=[warppack.WarpPackCallback(max_tokens=BUDGET)])
    trainer.model.config.use_cache = True
    warppack.pack_trainer(trainer, set_attention=False)
    with pytest.raises(warppack.ContaminationError):
        trainer.train()


def test_pack_trainer_replaces_default_collator_and_refuses_others(tmp_path):
    trainer = transformers.Trainer(model=_model(attn="sdpa"), args=_args(tmp_path), train_dataset=TRAIN)
    callback = warppack.pack_trainer(trainer)
    assert isinstance(trainer.data_collator, warppack.PackedCollator) and callback in trainer.callback_handler.callbacks
    assert trainer.model.config._attn_implementation == "warppack" and type(trainer).__name__ == "PackedTrainer"
    other = transformers.Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN,
                                 data_collator=lambda examples: examples)
    with pytest.raises(TypeError, match="needs a warppack.PackedCollator"):
        warppack.pack_trainer(other)


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    path = Path(warppack.__file__).parent / "hf_trainer" / "callback.py"
    spec = importlib.util.spec_from_file_location("warppack_callback_without_hf", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ImportError, match=r"pip install 'warppack\[hf\]'"):
        module.WarpPackCallback()
