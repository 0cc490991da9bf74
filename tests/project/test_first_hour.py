"""A new user's first hour, checked: the README's quickstart and the documented Trainer and TRL recipes.

Each runs end to end, as documented and with no warppack option added, on the CPU, on a small
long-tailed real data set: 200 of the Python standard library's files as the SmolLM2 tokenizer
counts them (the shared length data; evenly spaced order statistics, so the median, the 99th
percentile and the single longest file are all in), with token ids drawn to those lengths. The
lengths are divided by 64 so that a CPU trains an epoch in seconds; the tail keeps its shape (the
longest is about 90 times the median), and that shape is what the default budget must survive.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
datasets = pytest.importorskip("datasets")

import torch  # noqa: E402

import warppack  # noqa: E402

from support.recipes import WORDS, tiny_llama, trainer_recipe, trl_recipe, word_tokenizer  # noqa: E402
from support.paths import REPO  # noqa: E402

EXAMPLES = 200
SCALE = 64
VOCAB = 256
# Observability only (a log line per step, no progress bars); no packing option.
QUIET = dict(logging_steps=1, disable_tqdm=True)


@pytest.fixture(scope="module")
def lengths() -> np.ndarray:
    # Shipped with the tests (tests/support/stdlib_smollm2_lengths_200.txt), so CI checks the first
    # hour on every run; drawn from the shared length data as the module docstring says.
    subset = np.loadtxt(REPO / "tests" / "support" / "stdlib_smollm2_lengths_200.txt", dtype=np.int64)
    assert len(subset) == EXAMPLES
    scaled = np.maximum(subset // SCALE, 1)
    return scaled[np.random.default_rng(0).permutation(EXAMPLES)]


@pytest.fixture(scope="module")
def rows(lengths) -> list:
    rng = np.random.default_rng(1)
    return [rng.integers(3, VOCAB, int(n)).tolist() for n in lengths]


def _blocks(heading: str) -> list:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _fallback(lengths: np.ndarray, per_device: int) -> int:
    """The documented CPU budget: per_device x the 99% quantile, rounded up to a multiple of 64."""
    return -(-per_device * int(np.quantile(lengths, 0.99, method="lower")) // 64) * 64


def _record_batches(model) -> list:
    seen = []

    def record(module, args, kwargs):
        if module.training:
            seen.append((kwargs["input_ids"].shape[1], len(kwargs["cu_seq_lens_q"]) - 1))

    model.register_forward_pre_hook(record, with_kwargs=True)
    return seen


def test_the_data_is_long_tailed(lengths):
    assert lengths.max() > 50 * np.median(lengths) and lengths.max() > 2 * np.quantile(lengths, 0.99)


def test_readme_quickstart(rows, tmp_path, monkeypatch):
    """The README's quickstart blocks, run in order in one namespace ("cuda" read as "cpu")."""
    monkeypatch.chdir(tmp_path)
    dataset = datasets.Dataset.from_dict({"input_ids": rows})
    model = tiny_llama(VOCAB, 4096)
    model.set_attn_implementation("warppack")  # as the README says: attn_implementation="warppack"
    warppack.check_model(model)
    namespace = {"dataset": dataset, "model": model}
    blocks = _blocks("## Quickstart")
    assert len(blocks) == 3, "the README's quickstart: a collator, a sampler with a PackingConfig, the Trainer"
    for block in blocks:
        exec(compile(block.replace('"cuda"', '"cpu"'), "README.md", "exec"), namespace)  # noqa: S102
    assert math.isfinite(namespace["loss"].item())
    sampler, packing = namespace["sampler"], namespace["packing"]
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(EXAMPLES)), "every example once per epoch"
    assert namespace["loader"].collate_fn.packing == sampler.packing == packing
    trainer = namespace["trainer"]  # TrainingArguments' defaults: 3 epochs
    assert trainer.state.global_step == int(trainer.args.num_train_epochs) * len(trainer.get_train_dataloader()) > 0


def test_trainer_recipe(lengths, rows, tmp_path, caplog):
    train = datasets.Dataset.from_dict({"input_ids": rows[20:]})
    evaluation = datasets.Dataset.from_dict({"input_ids": rows[:20]})
    model = tiny_llama(VOCAB, 4096)
    seen = _record_batches(model)
    with caplog.at_level(logging.WARNING, logger="warppack"):
        trainer = trainer_recipe(model, train, evaluation, tmp_path / "out", **QUIET)
        steps = len(trainer.get_train_dataloader())
        result = trainer.train()
    metrics = trainer.evaluate()

    # pack_trainer said once what it changed; the budget came from the lengths, not the longest one.
    changed = [r.getMessage() for r in caplog.records if "pack_trainer changed" in r.getMessage()]
    assert len(changed) == 1
    for what in ("data_collator", "WarpPackCallback", "attn_implementation", "PackedTrainer", "token budget"):
        assert what in changed[0], f"pack_trainer's log does not say what it did to {what}"
    budget = trainer._warppack().max_tokens
    assert budget == _fallback(lengths[20:], 8) < 8 * int(lengths[20:].max())
    assert any("99% quantile" in r.getMessage() and f"{budget}" in r.getMessage() for r in caplog.records)

    # Every example trained whole, once, in exactly the steps announced; the loss is finite.
    assert result.global_step == steps == len(seen)
    assert sum(tokens for tokens, _ in seen) == int(lengths[20:].sum())
    assert sum(sequences for _, sequences in seen) == len(train)
    assert all(tokens <= budget for tokens, _ in seen)
    assert math.isfinite(result.training_loss) and math.isfinite(metrics["eval_loss"])
    logged = [h for h in trainer.state.log_history if "packing_efficiency" in h]
    assert logged and all(h["token_budget"] == budget for h in logged)


def test_trl_recipe(lengths, tmp_path, caplog):
    pytest.importorskip("trl")
    tokenizer = word_tokenizer()
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice(WORDS, int(n))) for n in lengths]
    model = tiny_llama(len(tokenizer), 4096)
    seen = _record_batches(model)
    with caplog.at_level(logging.WARNING, logger="warppack"):
        # bf16=False: TRL turns bf16 on by default and refuses it on a CPU.
        trainer = trl_recipe(model, tokenizer, datasets.Dataset.from_dict({"text": texts}), tmp_path / "out",
                             bf16=False, **QUIET)
        steps = len(trainer.get_train_dataloader())
        result = trainer.train()

    # SFTConfig.max_length, set once, sets the budget: 8 sequences of max_length, as TRL's own batches.
    max_length = trainer.args.max_length
    budget = trainer._warppack().max_tokens
    assert budget == 8 * max_length
    assert any("SFTConfig.max_length" in r.getMessage() for r in caplog.records)
    prepared = warppack.lengths_of(trainer.train_dataset)
    assert prepared.max() == max_length < lengths.max() + 1, "TRL truncated the longest example to max_length"
    epochs = int(trainer.args.num_train_epochs)  # TRL's default: 3
    assert result.global_step == epochs * steps == len(seen)
    assert sum(tokens for tokens, _ in seen) == epochs * int(prepared.sum())
    assert math.isfinite(result.training_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
