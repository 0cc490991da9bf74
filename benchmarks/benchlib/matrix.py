"""The calibration matrix: model configurations chosen to vary what changes training memory.

Vocabulary (32k, 128k, 151k: logits and loss per token), width and depth (activations per token),
GQA ratio (K/V size), tied or untied embeddings (weights, gradients, optimizer state), gradient
checkpointing (activations kept only at layer boundaries), a LoRA fine-tune (frozen base, optimizer
state of the adapters alone), a model above 3B parameters, and three families (Llama, Qwen2/Qwen3,
Gemma2). Every entry is built random-init in bf16 with ``attn_implementation="warppack"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch

import warppack  # noqa: F401  (registers attn_implementation="warppack")


@dataclass(frozen=True)
class Configuration:
    family: str  # transformers' config class prefix: Llama, Qwen2, Qwen3, Gemma2
    config: Dict[str, Any]
    checkpointing: bool = False
    lora: bool = False
    tags: Tuple[str, ...] = field(default=())

    def describe(self) -> str:
        c = self.config
        gqa = c["num_attention_heads"] // c.get("num_key_value_heads", c["num_attention_heads"])
        parts = [self.family, f"vocab {c['vocab_size'] // 1000}k", f"hidden {c['hidden_size']}",
                 f"{c['num_hidden_layers']} layers", f"GQA {gqa}",
                 "tied" if c.get("tie_word_embeddings") else "untied"]
        if self.checkpointing:
            parts.append("checkpointing")
        if self.lora:
            parts.append("LoRA r16 all-linear")
        return ", ".join(parts)


_LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                 num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)

MATRIX: Dict[str, Configuration] = {
    "llama-1280x20": Configuration("Llama", dict(
        vocab_size=32000, hidden_size=1280, intermediate_size=5120, num_hidden_layers=20, num_attention_heads=20,
        num_key_value_heads=4, tie_word_embeddings=False)),
    "qwen2-0.5b": Configuration("Qwen2", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-1b-128k": Configuration("Llama", dict(_LLAMA_1B)),
    "llama-1b-lora": Configuration("Llama", dict(_LLAMA_1B), lora=True),
    "gemma2-1b-mha": Configuration("Gemma2", dict(
        vocab_size=32000, hidden_size=1536, intermediate_size=6144, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=12, head_dim=128, tie_word_embeddings=True)),
    "llama-36l-mha-ckpt": Configuration("Llama", dict(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=16, tie_word_embeddings=False), checkpointing=True),
    "qwen3-1.7b-ckpt": Configuration("Qwen3", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True), checkpointing=True),
    "llama-2.3b-gqa8": Configuration("Llama", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=12, num_attention_heads=32,
        num_key_value_heads=4, tie_word_embeddings=False)),
    "llama-3.2b-ckpt": Configuration("Llama", dict(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, tie_word_embeddings=True), checkpointing=True),
}

#: the same kinds at a width the CPU smoke run (simulated memory) gets through in seconds
SMOKE: Dict[str, Configuration] = {
    "tiny-llama": Configuration("Llama", dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=1)),
    "tiny-qwen2-tied-ckpt": Configuration("Qwen2", dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True), checkpointing=True),
    "tiny-llama-lora": Configuration("Llama", dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
                                     lora=True),
}


def build(spec: Configuration, *, device: torch.device, dtype: torch.dtype, max_positions: int) -> Any:
    """The model of ``spec`` on ``device`` in training mode (a peft model for LoRA entries)."""
    import transformers

    config = getattr(transformers, f"{spec.family}Config")(max_position_embeddings=max_positions, use_cache=False,
                                                            **spec.config)
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = getattr(transformers, f"{spec.family}ForCausalLM")(config)
    model.to(dtype=dtype)
    model.set_attn_implementation("warppack")
    if spec.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.lora:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                           task_type="CAUSAL_LM"))
    model.train()
    return model


def trainable(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def state_fingerprint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """What calibration must leave as it found: weights (bitwise, via integer sums), flags, optimizer, RNG."""
    sums = []
    with torch.no_grad():
        for p in model.parameters():
            bits = p.detach().reshape(-1).view(torch.int16 if p.element_size() == 2 else torch.int32).to(torch.int64)
            sums.append(torch.stack([bits.sum(), (bits * bits).sum()]))
    weights = torch.stack(sums).tolist() if sums else []
    cuda_rng = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    optimizer_state = optimizer.state_dict()
    return {
        "weights": weights,
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "optimizer_state": len(optimizer_state["state"]),
        "optimizer_groups": repr(optimizer_state["param_groups"]),
        "cpu_rng": torch.get_rng_state().tolist(),
        "cuda_rng": cuda_rng,
    }


def changed(before: Dict[str, Any], after: Dict[str, Any]) -> List[str]:
    """The fingerprint fields that differ (empty: the state was left exactly as it was)."""
    return [key for key in before if before[key] != after[key]]
