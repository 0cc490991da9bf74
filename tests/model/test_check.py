"""warppack.check_model: passes for exact setups, names the cause for each contaminating one."""

import pytest
import torch

import warppack
from support.models import tiny_model

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
