"""The Trainer and TRL recipes of docs/quickstart.md, as functions the tests run on any data.

``RECIPE_LINES`` holds the lines each recipe's block in the quickstart must show, so that what the
tests run and what the docs say cannot drift apart. The extra ``TrainingArguments``/``SFTConfig``
fields the tests pass only keep a CPU run short and quiet; no warppack option is added.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import warppack

from support.paths import REPO

QUICKSTART = REPO / "docs" / "quickstart.md"
WORDS = [f"w{i}" for i in range(60)]
SFT_MAX_LENGTH = 2048  # the max_length of the documented TRL recipe

RECIPE_LINES = {
    "## Hugging Face `Trainer`": (
        'args=TrainingArguments(output_dir="out", num_train_epochs=1, learning_rate=2e-5)',
        "train_dataset=train_dataset,",
        "warppack.pack_trainer(trainer)",
        "trainer.train()",
    ),
    "## TRL's `SFTTrainer`": (
        f'args=SFTConfig(output_dir="out", max_length={SFT_MAX_LENGTH})',
        "processing_class=tokenizer,",
        "warppack.pack_trainer(trainer)",
        "trainer.train()",
    ),
}


def docs_block(heading: str, path: Path = QUICKSTART) -> str:
    """The first ```python block under ``heading`` of a markdown page."""
    text = path.read_text(encoding="utf-8")
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def word_tokenizer():
    """A word-level tokenizer built on the spot (nothing downloaded), with the eos and pad TRL needs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_llama(vocab_size: int, max_positions: int = 256):
    """A tiny random Llama with transformers' default attention: pack_trainer switches it."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def trainer_recipe(model, train_dataset, eval_dataset, output_dir, **fields):
    """docs/quickstart.md's Trainer recipe: a plain Trainer, then ``warppack.pack_trainer(trainer)``."""
    from transformers import Trainer, TrainingArguments

    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(output_dir), num_train_epochs=1, learning_rate=2e-5, **fields),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )
    warppack.pack_trainer(trainer)
    return trainer


def trl_recipe(model, tokenizer, dataset, output_dir, **fields):
    """docs/quickstart.md's TRL recipe: an SFTTrainer with ``max_length``, then ``warppack.pack_trainer(trainer)``."""
    from trl import SFTConfig, SFTTrainer

    max_length = fields.pop("max_length", SFT_MAX_LENGTH)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(output_dir), max_length=max_length, **fields),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    warppack.pack_trainer(trainer)
    return trainer
