"""Tiny random-init transformers models for tests (CPU, fp32, a second or less each).

``tiny_model("gemma2")`` builds one family with every attention feature it has switched on at toy
size: GQA, sliding windows shorter than the test sequences, RoPE variants, logit softcapping, sinks.
Other test modules may import these factories.
"""

from __future__ import annotations

import torch

try:
    import transformers
except ImportError:  # test modules importorskip("transformers") before using the factories
    transformers = None

_COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_TWO = ["sliding_attention", "full_attention"]

#: family -> (config class name, model class name, overrides). Each covers at least one feature.
FAMILIES = {
    # GQA + llama3 RoPE scaling
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8})),
    # sliding window on every layer
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),
    # MQA (one KV head), qkv bias, sliding window on one layer of two
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        num_key_value_heads=1, use_sliding_window=True, sliding_window=3, max_window_layers=1,
        layer_types=["full_attention", "sliding_attention"])),
    # q/k norms, explicit head_dim != hidden/heads, YaRN RoPE
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "original_max_position_embeddings": 32})),
    # attention-logit softcapping, alternating sliding window, query_pre_attn_scalar scaling
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=8, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=30.0,
        query_pre_attn_scalar=12, layer_types=_TWO)),
    # per-layer-type RoPE bases, q/k norms, sliding window
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=8, num_key_value_heads=1, sliding_window=4, layer_types=_TWO, query_pre_attn_scalar=8)),
    # fused qkv, partial rotary, sliding window
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=5, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    # attention that never sees position_ids (boundaries reach it with the mask), partial rotary, q/k layernorm
    "persimmon": ("PersimmonConfig", "PersimmonForCausalLM", dict(qk_layernorm=True, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    # learned attention sinks (s_aux), MoE, sliding window
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(
        head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4, layer_types=_TWO,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 2.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 32})),
}


#: Qwen2-VL at toy size: multimodal RoPE (``mrope_section``) text, a one-block vision tower, its special tokens.
#: ``MROPE_TEXT`` and ``VL_TOKEN_IDS`` serve its relatives (Qwen2.5-VL, the Omni thinkers) too.
MROPE_TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
VL_TOKEN_IDS = dict(image_token_id=97, video_token_id=96, vision_start_token_id=95)
QWEN2_VL = dict(text_config=MROPE_TEXT, vision_config=dict(
    depth=1, embed_dim=32, hidden_size=32, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
    in_channels=3, mlp_ratio=2), **VL_TOKEN_IDS)


def tiny_model(family: str, *, attn_implementation: str = "warppack", seed: int = 0, **overrides):
    """A random-init fp32 model of ``family`` in eval mode with ``attn_implementation`` set."""
    import warppack  # noqa: F401  (registers attn_implementation="warppack")

    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**_COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).float().eval()
    model.set_attn_implementation(attn_implementation)
    return model


def random_sequences(lengths, *, vocab_size: int = 96, seed: int = 0):
    """Token id tensors (ids 3.. so that pad/bos/eos never appear) of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=gen) for n in lengths]


def hand_packed(seqs):
    """The PackedCollator batch keys built by hand with torch.cat/cumsum (no native engine needed)."""
    lengths = torch.tensor([len(s) for s in seqs])
    cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
    labels = torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in seqs])
    return {
        "input_ids": torch.cat(seqs)[None],
        "labels": labels[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": int(lengths.max()),
        "max_length_k": int(lengths.max()),
    }


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 for two zero tensors)."""
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale or 1.0)
