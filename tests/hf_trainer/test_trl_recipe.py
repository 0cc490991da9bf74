"""The TRL ``SFTTrainer`` recipe of docs/quickstart.md, run as written on a tiny CPU model.

The docs promise: TRL tokenizes the text, ``warppack.pack_trainer(trainer)`` alone makes it train
on packed batches (one packed row with ``cu_seqlens`` and no padding per step), the budget follows
``SFTConfig.max_length``, and ``len(train_dataloader)`` is exact, so the Trainer runs exactly that
many steps. The recipe's lines are checked against the docs (``recipes.RECIPE_LINES``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

import torch  # noqa: E402

import warppack  # noqa: E402

from support.recipes import (  # noqa: E402
    RECIPE_LINES,
    WORDS,
    docs_block,
    tiny_llama,
    trl_recipe,
    word_tokenizer,
)

MAX_TOKENS = 256
# Short and quiet on a CPU; one sequence per padded batch, so the CPU budget is 1 x max_length.
CPU_RUN = dict(num_train_epochs=1, use_cpu=True, bf16=False, learning_rate=1e-2, logging_steps=1, save_strategy="no",
               report_to="none", disable_tqdm=True, seed=0, per_device_train_batch_size=1)


def _dataset():
    """A text column of 16 documents of 5 to 60 words: uneven lengths, so packing has work to do."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(n))) for n in rng.integers(5, 60, 16)]
    return Dataset.from_dict({"text": texts})


@pytest.mark.parametrize("heading", sorted(RECIPE_LINES))
def test_the_docs_show_this_recipe(heading):
    """The calls the recipes make are the ones the quickstart shows."""
    block = docs_block(heading)
    for line in RECIPE_LINES[heading]:
        assert line in block, f"docs/quickstart.md's {heading!r} recipe no longer has {line!r}; update recipes.py too"
    assert "PackedCollator(" not in block and "WarpPackCallback(" not in block, "pack_trainer alone is the recipe"


def _recipe(model, tokenizer, dataset, output_dir):
    return trl_recipe(model, tokenizer, dataset, output_dir, max_length=MAX_TOKENS, **CPU_RUN)


def test_sft_trainer_recipe_trains_on_packed_batches(tmp_path):
    tokenizer = word_tokenizer()
    model = tiny_llama(len(tokenizer), MAX_TOKENS)
    max_tokens = MAX_TOKENS
    seen = []  # what the model's forward received on every training step

    def record(module, args, kwargs):
        if module.training:
            seen.append({k: v for k, v in kwargs.items() if k != "labels"})

    model.register_forward_pre_hook(record, with_kwargs=True)
    before = [p.detach().clone() for p in model.parameters()]

    trainer = _recipe(model, tokenizer, _dataset(), tmp_path)
    steps_per_epoch = len(trainer.get_train_dataloader())
    result = trainer.train()

    # The step count is known up front and exact: the bins of TRL's tokenized lengths under the budget.
    lengths = warppack.lengths_of(trainer.train_dataset)
    assert steps_per_epoch == warppack.plan(lengths, max_tokens).num_bins
    assert 2 <= steps_per_epoch <= 3, f"the data should make 2-3 packed batches, got {steps_per_epoch}"
    assert result.global_step == steps_per_epoch == len(seen)

    # Every step was one packed row: cu_seqlens, restarted positions, no attention mask, no padding.
    assert sum(b["input_ids"].shape[1] for b in seen) == int(np.sum(lengths))
    for batch in seen:
        assert "attention_mask" not in batch or batch["attention_mask"] is None
        ids, cu = batch["input_ids"], batch["cu_seq_lens_q"]
        assert ids.shape[0] == 1 and ids.shape[1] <= max_tokens
        assert cu[0] == 0 and cu[-1] == ids.shape[1] and len(cu) >= 3, "at least two sequences share a row"
        starts = cu[:-1].long()
        assert (batch["position_ids"][0, starts] == 0).all()
        assert (ids != tokenizer.pad_token_id).all(), "a packed row holds no pad tokens"

    # It really trained: finite losses logged every step, and every weight moved.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps_per_epoch and all(math.isfinite(v) for v in losses)
    assert math.isfinite(result.training_loss)
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    packing = [entry for entry in trainer.state.log_history if "packing_efficiency" in entry]
    assert packing and packing[-1]["token_budget"] == max_tokens


def test_completion_only_labels_survive_packing(tmp_path):
    """Prompt-completion data: TRL's labels are -100 over the prompt, and the packed batch keeps that."""
    from datasets import Dataset

    tokenizer = word_tokenizer()
    rng = np.random.default_rng(1)
    rows = [(" ".join(rng.choice(WORDS, int(p))), " ".join(rng.choice(WORDS, int(c))))
            for p, c in rng.integers(3, 20, (8, 2))]
    dataset = Dataset.from_dict({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})
    trainer = _recipe(tiny_llama(len(tokenizer), MAX_TOKENS), tokenizer, dataset, tmp_path)

    prepared = trainer.train_dataset
    assert "labels" in prepared.column_names, "TRL no longer builds labels: the quickstart must say how to"
    loader = trainer.get_train_dataloader()
    batch = next(iter(loader))
    cu = batch["cu_seq_lens_q"].tolist()
    row = batch["labels"][0]
    by_ids = {tuple(ex["input_ids"]): ex["labels"] for ex in prepared}
    for start, end in zip(cu[:-1], cu[1:]):
        expected = list(by_ids[tuple(batch["input_ids"][0, start:end].tolist())])
        expected[0] = -100  # the collator: no sequence's first token is predicted from its neighbour
        assert row[start:end].tolist() == expected
    assert (row == -100).sum() > len(cu) - 1, "prompt tokens are masked, not only the first of each sequence"
