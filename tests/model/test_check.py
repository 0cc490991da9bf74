"""warppack.check_model: passes for exact setups, names the cause for each contaminating one."""

import pytest
import torch

import warppack
from support.models import QWEN2_VL, tiny_model

transformers = pytest.importorskip("transformers")


def diagnosis(model, **kwargs) -> str:
    with pytest.raises(warppack.ContaminationError) as info:
        warppack.check_model(model, **kwargs)
    assert info.value.diagnoses
    return str(info.value)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_warppack_attention_passes_in_train_and_eval(family):
    model = tiny_model(family).train()
    report = warppack.check_model(model)
    assert report["attn_implementation"] == "warppack" and report["backend"] == "exact_segments"
    assert report["max_relative_error"] < 1e-5
    assert model.training  # mode restored


def test_sdpa_with_cache_in_eval_is_diagnosed():
    model = tiny_model("llama", attn_implementation="sdpa")
    message = diagnosis(model)
    assert "KV cache in eval" in message and "use_cache=False" in message
    model.config.use_cache = False
    warppack.check_model(model)  # transformers isolates packed position_ids without a cache


def test_all_ones_attention_mask_is_diagnosed():
    model = tiny_model("llama", attn_implementation="sdpa", use_cache=False)
    batch = dict(warppack.PackedCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}]))
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    assert "2-D attention_mask" in diagnosis(model, batch=batch)
    # warppack attention ignores an all-ones mask, so the same batch is harmless there.
    warppack.check_model(tiny_model("llama"), batch=batch)


def test_attention_ignoring_boundaries_is_diagnosed():
    from transformers import AttentionInterface

    def leaky(module, query, key, value, attention_mask, scaling=None, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
        return out.transpose(1, 2), None

    AttentionInterface.register("leaky_for_test", leaky)
    message = diagnosis(tiny_model("llama", attn_implementation="leaky_for_test"))
    assert "ignores the sequence boundaries" in message and "attn_implementation='warppack'" in message


class NoPositions(torch.nn.Module):
    """A model whose forward takes no position_ids (learned absolute positions inside)."""

    def __init__(self):
        super().__init__()
        config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)
        self.inner = transformers.GPT2LMHeadModel(config)
        self.inner.set_attn_implementation("warppack")
        self.config = self.inner.config

    def forward(self, input_ids, cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None):
        return self.inner(input_ids=input_ids, cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k,
                          max_length_q=max_length_q, max_length_k=max_length_k, use_cache=False)


def test_model_without_position_ids_is_diagnosed():
    torch.manual_seed(0)
    assert "takes no position_ids" in diagnosis(NoPositions())


def test_batch_missing_position_ids_is_diagnosed():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    model.set_attn_implementation("warppack")
    batch = dict(warppack.PackedCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}]))
    del batch["position_ids"]
    assert "no position_ids" in diagnosis(model, batch=batch)


def test_unignored_first_label_is_diagnosed():
    batch = dict(warppack.PackedCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}]))
    batch["labels"] = batch["input_ids"].clone()
    assert "first label" in diagnosis(tiny_model("llama"), batch=batch)


# ---- careless input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, kwargs, error, match", [
    (None, {}, TypeError, r"model must be a torch.nn.Module .* got None"),
    (torch.nn.Identity(), {}, ValueError, r"model=Identity has no floating-point parameters"),
    ("llama", {"lengths": ()}, ValueError, r"lengths=\(\) needs at least two sequences"),
    ("llama", {"lengths": (4,)}, ValueError, r"at least two sequences"),
    ("llama", {"lengths": (4, 0)}, ValueError, r"lengths\[1\] must be an int >= 1, got 0"),
    ("llama", {"lengths": "abc"}, TypeError, r"lengths must be a sequence of ints"),
    ("llama", {"rtol": -1}, ValueError, r"rtol must be a positive finite relative tolerance .* got -1"),
    ("llama", {"rtol": float("nan")}, ValueError, r"rtol must be a positive"),
    ("llama", {"batch": [1, 2]}, TypeError, r"batch must be a mapping"),
    ("llama", {"seed": 1.5}, TypeError, r"seed must be an int"),
])
def test_careless_arguments_get_clear_errors(model, kwargs, error, match):
    model = tiny_model(model) if model == "llama" else model
    with pytest.raises(error, match=match):
        warppack.check_model(model, **kwargs)


# ---- every input form, and true fixes -------------------------------------------------------------------------------
def _qwen2_vl():
    """Multimodal RoPE: 2-D position_ids alone cannot reach the text attention (transformers expects [4, B, T])."""
    config = transformers.Qwen2VLConfig(**QWEN2_VL, attn_implementation="warppack")
    torch.manual_seed(0)
    return transformers.Qwen2VLForConditionalGeneration(config).eval()


def test_a_form_that_leaks_while_packed_collator_batches_do_not_is_reported_not_refused():
    with pytest.warns(UserWarning, match=r"not when batches carry position_ids only: position_ids alone do not reach"):
        report = warppack.check_model(_qwen2_vl())
    assert report["max_relative_error"] < 1e-5 and set(report["other_forms"]) == {"position_ids only"}
    assert report["errors"]["position_ids only, train"] > 1e-2
    cause, fix = report["other_forms"]["position_ids only"][0]
    assert "Qwen2VLAttention" in cause and "cu_seq_lens_q/k" in fix


def test_probe_carries_seq_idx_and_the_reference_passes_position_ids():
    seen = []
    model = tiny_model("llama")
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    warppack.check_model(model)
    packed = [kw for kw in seen if "cu_seq_lens_q" in kw]
    assert packed and all("seq_idx" in kw and kw["seq_idx"].dtype == torch.int32 for kw in packed)
    assert any(set(kw) >= {"input_ids", "position_ids"} and "cu_seq_lens_q" not in kw for kw in seen)
    alone = [kw for kw in seen if kw["input_ids"].shape[1] in (7, 3, 5)]
    assert alone and all(torch.equal(kw["position_ids"][0], torch.arange(kw["input_ids"].shape[1])) for kw in alone)


def test_state_carried_along_the_row_is_refused_naming_the_module():
    config = transformers.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(config)
    message = diagnosis(model)
    assert "MambaMixer ('backbone.layers.0.mixer') mixes the packed sequences" in message
    assert "none in warppack" in message and "load the model with attn_implementation" not in message
