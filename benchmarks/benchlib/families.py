"""GPU-shaped random-init transformers families for the model checks, every attention feature on.

Each family switches on the attention features it has (GQA/MQA, sliding windows shorter than the
checked sequences, RoPE scaling variants, q/k norms, logit softcapping, attention sinks, MoE) at a
width a GPU kernel runs for real: hidden 256, 4 heads of 64, 2 layers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

import warppack  # noqa: F401  (registers attn_implementation="warppack")

#: the width every family is built at
SHAPE: Dict[str, int] = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, head_dim=64)
_CONFIG: Dict[str, Any] = dict(vocab_size=96, num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=64,
               initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2, **SHAPE)
_ALTERNATING = ["sliding_attention", "full_attention"]
_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 32}

#: family -> (config class name, model class name, the features it switches on)
FAMILIES: Dict[str, Tuple[str, str, Dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters={  # GQA + llama3 RoPE scaling
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),  # every layer windowed
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(  # MQA, qkv bias, one windowed layer of two
        num_key_value_heads=1, use_sliding_window=True, sliding_window=3, max_window_layers=1,
        layer_types=["full_attention", "sliding_attention"])),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(rope_parameters=_YARN)),  # q/k norms, YaRN RoPE
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=5, rope_parameters={  # fused qkv, partial rotary
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(  # logit softcapping, alternating windows
        sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=30.0, query_pre_attn_scalar=12,
        layer_types=_ALTERNATING)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(  # learned sinks, MoE, alternating windows
        num_local_experts=4, num_experts_per_tok=2, sliding_window=4, layer_types=_ALTERNATING,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 2.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32})),
}


def family_model(family: str, *, seed: int = 0) -> Any:
    """A random-init fp32 model of ``family`` in eval mode with ``attn_implementation="warppack"``."""
    import transformers

    config_name, model_name, features = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**_CONFIG, **features})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).float().eval()
    model.set_attn_implementation("warppack")
    return model


def random_sequences(lengths: Sequence[int], *, seed: int = 0) -> List[torch.Tensor]:
    """Token id tensors of the given lengths (ids 3.. so that pad/bos/eos never appear)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, _CONFIG["vocab_size"], (n,), generator=gen) for n in lengths]
