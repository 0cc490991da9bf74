"""transformers' padding-free test, run with attn_implementation="warppack" over decoder families.

The logic of ``attention_mask_padding_matches_padding_free_with_position_ids`` (transformers'
tests/generation/test_utils.py) and its ``_and_fa_kwargs`` variant, rewritten: left-padded rows with
an attention mask, then the same sequences flattened into one row with packed ``position_ids`` (or
with ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``'s keys), and the logits of the
real tokens compared. fp32 on CPU, so the tolerance is tight (1e-5) rather than bf16's eps.

Every family is either exact (both variants, and ``check_model`` passes) or refused by
``check_model`` with the stated reason. docs/model-integration.md lists the same table.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict, NamedTuple, Optional

import pytest
import torch

import warppack
from support.models import MROPE_TEXT, QWEN2_VL, VL_TOKEN_IDS

transformers = pytest.importorskip("transformers")
from transformers import CONFIG_MAPPING, DataCollatorWithFlattening  # noqa: E402

TOL = 1e-5
LENGTHS = [7, 4, 6]
GENERIC = dict(vocab_size=99, hidden_size=32, n_embd=32, d_model=32, intermediate_size=37, n_inner=37, ffn_dim=37,
               num_hidden_layers=2, n_layer=2, num_layers=2, num_attention_heads=4, n_head=4, num_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, n_positions=64, pad_token_id=0, bos_token_id=1,
               eos_token_id=2, is_decoder=True)

# Refusal reasons (regular expressions over the ContaminationError message).
STATE = "carries state along the packed row"
NEVER = "never calls attn_implementation='warppack'"
STUCK = "does not go through transformers' AttentionInterface"
NEEDS_MASK = "needs an attention mask"
READS_MASK = "reads the attention mask itself"
CONV = r"can't keep packed sequences apart without `causal_conv1d`"


class Family(NamedTuple):
    config: str  # model_type (a CONFIG_MAPPING key), or the config class name
    model: str  # class name in transformers
    overrides: Dict[str, Any] = {}
    refused: Optional[str] = None  # None: exact; else what check_model's refusal must say
    mrope: bool = False  # multimodal RoPE: packed position_ids are [4, 1, T], the text row first


_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
_MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=4)
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, v_head_dim=8,
            qk_nope_head_dim=8, head_dim=8, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
            moe_intermediate_size=16, index_topk=4, index_head_dim=16, index_n_heads=2, first_k_dense_replace=1)
_OMNI_VISION = dict(depth=1, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0], window_size=28)
_AUDIO = dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=4, encoder_ffn_dim=37, d_model=32,
              output_dim=32, n_window=4)

FAMILIES: Dict[str, Family] = {
    # ---- exact ------------------------------------------------------------------------------------------
    "llama": Family("llama", "LlamaForCausalLM"),
    "mistral": Family("mistral", "MistralForCausalLM", dict(sliding_window=4)),
    "ministral3": Family("ministral3", "Ministral3ForCausalLM", dict(sliding_window=4)),
    "qwen2": Family("qwen2", "Qwen2ForCausalLM"),
    "qwen3": Family("qwen3", "Qwen3ForCausalLM", dict(head_dim=8)),
    "gemma": Family("gemma", "GemmaForCausalLM", dict(head_dim=8)),
    "gemma2": Family("gemma2", "Gemma2ForCausalLM", dict(head_dim=8, sliding_window=4)),
    "phi3": Family("phi3", "Phi3ForCausalLM"),
    "olmo2": Family("olmo2", "Olmo2ForCausalLM"),
    "granite": Family("granite", "GraniteForCausalLM"),
    "starcoder2": Family("starcoder2", "Starcoder2ForCausalLM"),
    "smollm3": Family("smollm3", "SmolLM3ForCausalLM"),
    "cohere": Family("cohere", "CohereForCausalLM"),
    "gpt_neox": Family("gpt_neox", "GPTNeoXForCausalLM"),
    "gpt2": Family("gpt2", "GPT2LMHeadModel"),
    "gptj": Family("gptj", "GPTJForCausalLM", dict(rotary_dim=4)),
    "codegen": Family("codegen", "CodeGenForCausalLM", dict(rotary_dim=4)),
    "opt": Family("opt", "OPTForCausalLM", dict(word_embed_proj_dim=32)),
    "biogpt": Family("biogpt", "BioGptForCausalLM"),
    "roberta": Family("roberta", "RobertaForCausalLM"),
    "xlm_roberta": Family("xlm-roberta", "XLMRobertaForCausalLM"),
    "camembert": Family("camembert", "CamembertForCausalLM"),
    "jetmoe": Family("jetmoe", "JetMoeForCausalLM"),
    "afmoe": Family("afmoe", "AfmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                       num_dense_layers=1)),
    # attention that never sees position_ids: boundaries reach it through the mask
    "chameleon": Family("chameleon", "ChameleonForConditionalGeneration", dict(
        vocabulary_map={"<image>": 4}, vq_config=dict(embed_dim=8, num_embeddings=8, base_channels=32,
                                                       channel_multiplier=[1], num_res_blocks=1, latent_channels=8,
                                                       resolution=8, attn_resolutions=[]))),
    "persimmon": Family("persimmon", "PersimmonForCausalLM"),
    "fuyu": Family("fuyu", "FuyuForCausalLM", dict(
        text_config=dict(model_type="persimmon", vocab_size=99, hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, pad_token_id=0),
        image_token_id=98, patch_size=4, num_channels=3)),
    "kosmos2_5": Family("kosmos-2.5", "Kosmos2_5ForConditionalGeneration", dict(
        text_config=dict(vocab_size=99, embed_dim=32, ffn_dim=37, layers=2, attention_heads=4, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           head_dim=8), latent_query_num=4)),
    "qwen2_vl": Family("qwen2_vl", "Qwen2VLForConditionalGeneration", QWEN2_VL, mrope=True),
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", dict(
        text_config=MROPE_TEXT, vision_config=dict(depth=1, hidden_size=32, intermediate_size=37, num_heads=4,
                                                   out_hidden_size=32, patch_size=14, spatial_merge_size=2,
                                                   temporal_patch_size=2, window_size=28, fullatt_block_indexes=[0]),
        **VL_TOKEN_IDS), mrope=True),
    "cohere_compass": Family("cohere_compass", "CohereCompassForConditionalGeneration", dict(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, layer_types=["sliding_attention", "full_attention"], sliding_window=4,
                         rope_parameters={"full_attention": None,
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32),
        image_token_id=97, video_token_id=96)),
    "video_llama_3": Family("video_llama_3", "VideoLlama3ForConditionalGeneration", dict(
        text_config=dict(model_type="qwen2", vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           patch_size=14), image_token_id=97)),
    "qwen2_5_omni": Family("qwen2_5_omni_thinker", "Qwen2_5OmniThinkerForConditionalGeneration", dict(
        text_config=MROPE_TEXT, vision_config=_OMNI_VISION, audio_config=_AUDIO, image_token_index=97,
        video_token_index=96, audio_token_index=95, vision_start_token_id=94, audio_start_token_id=93), mrope=True),
    "qwen3_omni_moe": Family("qwen3_omni_moe_thinker", "Qwen3OmniMoeThinkerForConditionalGeneration", dict(
        text_config=dict(MROPE_TEXT, head_dim=8, **_MOE),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, deepstack_visual_indexes=[0]),
        audio_config=dict(_AUDIO, downsample_hidden_size=8, n_window=50, n_window_infer=100), image_token_id=97,
        video_token_id=96, audio_token_id=95, vision_start_token_id=94, audio_start_token_id=93), mrope=True),
    # ---- refused: attention that cannot be switched, or ignores the setting ---------------------------------
    "falcon": Family("falcon", "FalconForCausalLM", refused=STUCK),
    "gpt_neo": Family("gpt_neo", "GPTNeoForCausalLM", dict(attention_types=[[["global", "local"], 1]], window_size=4),
                      refused=STUCK),
    "bloom": Family("bloom", "BloomForCausalLM", refused=NEVER),
    "xglm": Family("xglm", "XGLMForCausalLM", refused=READS_MASK),
    "mpt": Family("mpt", "MptForCausalLM", refused=NEEDS_MASK),
    "git": Family("git", "GitForCausalLM", dict(vision_config=dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=8, patch_size=4)),
        refused=READS_MASK),
    "bark": Family("BarkSemanticConfig", "BarkSemanticModel", dict(
        input_vocab_size=99, output_vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, block_size=64),
        refused=STUCK),
    # ---- refused: DSA indexers need a mask --------------------------------------------------------------------
    "deepseek_v32": Family("deepseek_v32", "DeepseekV32ForCausalLM", _MLA, refused=NEEDS_MASK),
    "glm_moe_dsa": Family("glm_moe_dsa", "GlmMoeDsaForCausalLM", _MLA, refused=NEEDS_MASK),
    # ---- refused: state carried along the row (SSM, convolution, linear attention, recurrence) --------------------
    "mamba": Family("mamba", "MambaForCausalLM", refused=NEVER),
    "jamba": Family("jamba", "JambaForCausalLM", dict(
        intermediate_size=64, num_experts=2, num_experts_per_tok=1, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=4, use_mamba_kernels=False),
        refused=STATE),
    "recurrent_gemma": Family("recurrent_gemma", "RecurrentGemmaForCausalLM", dict(
        lru_width=32, attention_window_size=16, block_types=["recurrent", "attention"]), refused=STATE),
    "minimax": Family("minimax", "MiniMaxForCausalLM", dict(
        intermediate_size=64, head_dim=8, num_local_experts=2, num_experts_per_tok=1,
        layer_types=["linear_attention", "full_attention"], block_size=4), refused=STATE),
    "lfm2": Family("lfm2", "Lfm2ForCausalLM", dict(layer_types=["conv", "full_attention"]), refused=CONV),
    "lfm2_moe": Family("lfm2_moe", "Lfm2MoeForCausalLM", dict(
        layer_types=["conv", "full_attention"], num_dense_layers=1, **_MOE), refused=CONV),
    "bamba": Family("bamba", "BambaForCausalLM", dict(attn_layer_indices=[1], **_MAMBA2), refused=CONV),
    "granitemoehybrid": Family("granitemoehybrid", "GraniteMoeHybridForCausalLM", dict(
        intermediate_size=64, layer_types=["mamba", "attention"], num_local_experts=4, num_experts_per_tok=2,
        **_MAMBA2), refused=CONV),
    "falcon_h1": Family("falcon_h1", "FalconH1ForCausalLM", dict(
        mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=4),
        refused=CONV),
    "nemotron_h": Family("nemotron_h", "NemotronHForCausalLM", dict(
        mamba_num_heads=4, mamba_head_dim=16, n_groups=1, ssm_state_size=8, chunk_size=4,
        hybrid_override_pattern="M*"), refused=CONV),
    "zamba": Family("zamba", "ZambaForCausalLM", dict(
        num_hidden_layers=3, layers_block_type=["hybrid", "linear_attention", "hybrid"], attn_layer_period=2,
        attn_layer_offset=1, mamba_d_state=8, mamba_dt_rank=4, n_mamba_heads=2, attention_head_dim=16,
        use_mamba_kernels=False), refused=CONV),
    "qwen3_next": Family("qwen3_next", "Qwen3NextForCausalLM", dict(
        head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        layer_types=["linear_attention", "full_attention"]), refused=r"flash-linear-attention|causal_conv1d"),
}


def config_of(name: str, **extra):
    family = FAMILIES[name]
    config_class = getattr(transformers, family.config) if family.config[0].isupper() else CONFIG_MAPPING[family.config]
    params = inspect.signature(config_class.__init__).parameters
    return config_class(**{**{k: v for k, v in GENERIC.items() if k in params}, **family.overrides, **extra})


def build(name: str) -> torch.nn.Module:
    """The family's tiny fp32 model with attn_implementation="warppack" asked for the way users ask.

    Models with an attention table of their own refuse the name in their constructor
    (``KeyError: 'warppack'``): those get it through ``set_attn_implementation``, which cannot switch
    the attention they already built.
    """
    model_class = getattr(transformers, FAMILIES[name].model)
    torch.manual_seed(0)
    try:
        model = model_class(config_of(name, attn_implementation="warppack"))
    except KeyError:
        torch.manual_seed(0)
        model = model_class(config_of(name))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.set_attn_implementation("warppack")
    return model.float().eval()


@pytest.mark.parametrize("name", ["falcon", "gpt_neo", "bark", "git"])
def test_models_with_attention_tables_of_their_own_reject_the_name(name):
    with pytest.raises(KeyError, match="warppack"):
        getattr(transformers, FAMILIES[name].model)(config_of(name, attn_implementation="warppack"))


def padded_and_packed(model: torch.nn.Module, family: Family, fa_kwargs: bool):
    """The logits of the real tokens: left-padded rows with a mask, and the same sequences packed."""
    text = model.config.get_text_config()
    pad = getattr(text, "pad_token_id", None) or 0
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 90, (n,), generator=gen) for n in LENGTHS]
    width = max(LENGTHS)
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):], mask[row, width - len(seq):] = seq, 1
    positions = (mask.cumsum(1) - 1).clamp_min(0)  # as transformers' tests of position-embedding models do
    if fa_kwargs:
        flat = DataCollatorWithFlattening(return_tensors="pt", return_flash_attn_kwargs=True)(
            [{"input_ids": s.tolist()} for s in seqs])
        packed = {k: v for k, v in flat.items() if k != "labels"}
    else:
        packed = {"input_ids": torch.cat(seqs)[None],
                  "position_ids": torch.cat([torch.arange(n) for n in LENGTHS])[None]}
    if family.mrope:  # text-only rows: the three RoPE axes follow the text positions
        positions = positions[None].expand(3, -1, -1)
        packed["position_ids"] = packed["position_ids"][None].expand(4, -1, -1)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        free = model(**packed, use_cache=False).logits
    return padded[mask.bool()], free[0]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_padding_free_matches_padded_or_check_model_refuses(name):
    family = FAMILIES[name]
    model = build(name)
    if family.refused is not None:
        with pytest.raises(warppack.ContaminationError, match=family.refused) as info:
            warppack.check_model(model)
        assert all(fix for _, fix in info.value.diagnoses)
        assert "load the model with attn_implementation='warppack'" not in str(info.value)
        return
    assert model.config._attn_implementation == "warppack"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrope families warn: 2-D position_ids alone cannot reach them
        report = warppack.check_model(model)
    assert report["max_relative_error"] < 1e-5 and report["backend"] == "exact_segments"
    for fa_kwargs in (False, True):
        padded, free = padded_and_packed(model, family, fa_kwargs)
        torch.testing.assert_close(free, padded, rtol=TOL, atol=TOL, msg=lambda m: f"{name} fa={fa_kwargs}: {m}")


# ---- other encoders keep their own attention ------------------------------------------------------------------
TEXT_ROW = dict(cu_seq_lens_q=torch.tensor([0, 7, 11, 17], dtype=torch.int32), max_length_q=7, max_length_k=7)
TEXT_ROW["cu_seq_lens_k"] = TEXT_ROW["cu_seq_lens_q"]


def encoder_calls(name: str, model: torch.nn.Module):
    """The model's vision (and audio) feature calls, which forward the text row's keyword arguments."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.tensor([[1, 2, 4]])  # one image of 2 x 4 patches
    if name == "video_llama_3":
        pixels = torch.randn(8, 3 * 14 * 14, generator=gen)
        calls = {"vision": lambda **kw: model.get_image_features(pixels, grid, image_merge_sizes=torch.tensor([2]),
                                                                 **kw)}
    else:
        pixels = torch.randn(8, 3 * 2 * 14 * 14, generator=gen)
        calls = {"vision": lambda **kw: model.get_image_features(pixels, grid, **kw)}
    if "omni" in name:
        features, frames = torch.randn(1, 16, 200, generator=gen), torch.ones(1, 200, dtype=torch.long)
        calls["audio"] = lambda **kw: model.get_audio_features(features, feature_attention_mask=frames, **kw)
    return calls


def _features(output) -> torch.Tensor:
    pooled = getattr(output, "pooler_output", None)
    pooled = output.last_hidden_state if pooled is None else pooled
    return torch.cat(list(pooled)) if isinstance(pooled, (list, tuple)) else pooled


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "video_llama_3", "qwen2_5_omni", "qwen3_omni_moe"])
def test_text_row_boundaries_do_not_reach_other_encoders(name):
    """A vision/audio encoder attends per chunk, non-causally: the text row's cu_seq_lens that reach it
    with the other keyword arguments are not its boundaries and change nothing."""
    model = build(name)
    for modality, call in encoder_calls(name, model).items():
        with torch.no_grad():
            alone = _features(call())
            with_text_row = _features(call(**TEXT_ROW))
            assert warppack.attention_backend() == "exact_dense", modality
            model.set_attn_implementation("eager")
            eager = _features(call())
            model.set_attn_implementation("warppack")
        assert torch.equal(with_text_row, alone), f"{name} {modality}"
        torch.testing.assert_close(alone, eager, rtol=1e-5, atol=1e-6)
