"""warppack.attention.exact (the exact paths), the public entry ``varlen_attention``, and .hf (the transformers glue).

Which kernel the dispatcher picks, and how it calls each, is tested in test_kernels.py."""

import inspect
import subprocess
import sys

import pytest
import torch
from attention_fakes import CALLS, cu_of, install, qkv, reference

import warppack
from warppack.attention import exact as E
from warppack.attention import kernels

FEATURES = [
    dict(),
    dict(window=3),
    dict(softcap=2.0),
    dict(causal=False),
    dict(causal=False, window=2),
    dict(window=4, softcap=1.5),
    dict(sinks=torch.tensor([0.5, -1.0, 2.0, 0.0])),
]


@pytest.mark.parametrize("features", FEATURES, ids=lambda f: "-".join(f) or "plain")
@pytest.mark.parametrize("path", ["exact_segments", "exact_block_diagonal"])
def test_exact_paths_match_each_sequence_alone(features, path):
    lengths = [1, 6, 9, 1, 3]
    q, k, v = qkv(sum(lengths))
    kw = dict(causal=features.get("causal", True), window=features.get("window"),
              softcap=features.get("softcap"), sinks=features.get("sinks"))
    fn = E.exact_segments if path == "exact_segments" else E.exact_block_diagonal
    cu = cu_of(lengths)
    got = fn(q, k, v, cu, cu, scale=8 ** -0.5, dropout=0.0, **kw)
    torch.testing.assert_close(got, reference(q, k, v, lengths, **kw), rtol=1e-5, atol=1e-6)


def test_varlen_attention_public_entry_and_backend_name():
    lengths = [4, 1, 5]
    q, k, v = qkv(10, hq=6, hkv=3)
    out = warppack.varlen_attention(q, k, v, cu_of(lengths), sliding_window=2)
    assert warppack.attention_backend() == "exact_segments"
    torch.testing.assert_close(out, reference(q, k, v, lengths, window=2), rtol=1e-5, atol=1e-6)


def test_empty_tail_segments_static_shape():
    # static_shape batches repeat T at the end of cu_seqlens (and may hold a padding segment).
    lengths = [3, 5, 2]
    q, k, v = qkv(10)
    cu = torch.tensor([0, 3, 8, 10, 10, 10, 10], dtype=torch.int32)
    for fn in (E.exact_segments, E.exact_block_diagonal):
        got = fn(q, k, v, cu, cu, causal=True, scale=8 ** -0.5, window=None, softcap=None, dropout=0.0, sinks=None)
        torch.testing.assert_close(got, reference(q, k, v, lengths), rtol=1e-5, atol=1e-6)


def test_segment_mask_aligns_causal_bottom_right_when_keys_are_longer():
    # Two sequences with 2 and 1 new queries over 3 and 2 keys (a cache-like prefix).
    mask = E.segment_mask(torch.tensor([0, 2, 3]), torch.tensor([0, 3, 5]), 3, 5)
    expected = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_bad_cu_seqlens_name_the_values_and_fix():
    q, k, v = qkv(6)
    with pytest.raises(ValueError, match=r"0\.\.5 for 6 query tokens"):
        warppack.varlen_attention(q, k, v, torch.tensor([0, 2, 5], dtype=torch.int32))


# ---- transformers glue -----------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
from warppack.attention import hf as HF  # noqa: E402


def test_mask_function_builds_no_mask_for_packed_rows_and_exact_masks_otherwise():
    from transformers import masking_utils as mu

    assert HF.warppack_mask(1, 50, 50) is None
    assert HF.warppack_mask(1, 5, 5, attention_mask=torch.ones(1, 5, dtype=torch.bool)) is None
    padded = torch.tensor([[False, True, True, True, True]])
    expected = mu.sdpa_mask(batch_size=1, q_length=5, kv_length=5, attention_mask=padded, allow_is_causal_skip=False)
    assert torch.equal(HF.warppack_mask(1, 5, 5, attention_mask=padded), expected)
    decode = HF.warppack_mask(1, 1, 6, q_offset=5)  # one new token over a 6-token cache
    assert decode.shape == (1, 1, 1, 6) and bool(decode.all())


def test_import_registers_lazily_without_importing_transformers():
    code = ("import sys, warppack\n"
            "assert 'transformers.modeling_utils' not in sys.modules\n"
            "from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS\n"
            "from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS\n"
            "assert 'warppack' in ALL_ATTENTION_FUNCTIONS and 'warppack' in ALL_MASK_ATTENTION_FUNCTIONS\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(kernels.__file__).rsplit("/warppack/", 1)[0])


def test_position_ids_only_packing_matches_cu_seqlens():
    # transformers' DataCollatorWithFlattening style: packed position_ids, no cu_seq_lens keys.
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model("mistral")
    batch = hand_packed(random_sequences([5, 1, 9]))
    with torch.no_grad():
        by_cu = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      cu_seq_lens_q=batch["cu_seq_lens_q"], cu_seq_lens_k=batch["cu_seq_lens_k"]).logits
        by_positions = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert warppack.attention_backend() == "exact_segments"
    torch.testing.assert_close(by_positions, by_cu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gemma2", "qwen2"])
def test_models_through_flash_attn_pass_the_layer_features(monkeypatch, family):
    # What transformers hands the attention (scaling, softcap, sliding_window, GQA heads) reaches
    # flash_attn_varlen_func in its own argument names, and the logits equal the exact path's.
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model(family)
    batch = hand_packed(random_sequences([5, 1, 9]))
    install(monkeypatch, "flash_attn")
    with torch.no_grad():
        got = model(**batch).logits
    assert warppack.attention_backend() == "flash_attn"
    layers = model.model.layers
    assert len(CALLS) == len(layers)
    for call, layer in zip(CALLS, layers):
        attn = layer.self_attn
        window = getattr(attn, "sliding_window", None)
        assert call["softmax_scale"] == attn.scaling and call["causal"] is True and call["dropout_p"] == 0.0
        assert call["window_size"] == (-1 if window is None else window - 1, 0)
        assert call["softcap"] == float(getattr(attn, "attn_logit_softcapping", None) or 0.0)
        assert call["hkv"] == model.config.num_key_value_heads < call["hq"]  # GQA: heads not expanded
    kernels.found()["flash_attn"] = None
    with torch.no_grad():
        exact = model(**batch).logits
    assert warppack.attention_backend() == "exact_segments"
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)


def test_training_forward_passes_the_attention_dropout_to_flash_attn(monkeypatch):
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model("llama", attention_dropout=0.25).train()
    install(monkeypatch, "flash_attn")
    model(**hand_packed(random_sequences([5, 1, 9]))).loss.backward()
    assert [c["dropout_p"] for c in CALLS] == [0.25] * model.config.num_hidden_layers


def test_register_attention_is_explicit_and_idempotent(monkeypatch):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    # Importing transformers already registered warppack; take it out so the call has work to do.
    monkeypatch.delitem(AttentionInterface._global_mapping, "warppack")
    monkeypatch.delitem(AttentionMaskInterface._global_mapping, "warppack")
    assert "warppack" not in ALL_ATTENTION_FUNCTIONS and "warppack" not in ALL_MASK_ATTENTION_FUNCTIONS
    warppack.register_attention()
    warppack.register_attention()
    assert ALL_ATTENTION_FUNCTIONS["warppack"] is HF.warppack_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS["warppack"] is HF.warppack_mask


def test_batch_keys_are_the_ones_transformers_flash_attention_2_reads():
    # With flash-attn installed, attn_implementation="flash_attention_2" takes the same batch: its
    # varlen path reads these keyword arguments, with int32 boundaries and int lengths.
    from transformers import modeling_flash_attention_utils as fa

    read = set(inspect.signature(fa._flash_attention_forward).parameters)
    keys = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids"}
    assert keys <= read
    batch = warppack.PackedCollator()([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert keys <= set(batch)
    assert batch["cu_seq_lens_q"].dtype == batch["cu_seq_lens_k"].dtype == torch.int32
    assert isinstance(batch["max_length_q"], int) and isinstance(batch["max_length_k"], int)


def test_unpacked_batches_use_the_dense_exact_path_and_match_eager():
    from support.models import tiny_model

    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(0))
    ours, eager = tiny_model("llama"), tiny_model("llama", attn_implementation="eager")
    with torch.no_grad():
        got = ours(input_ids=ids).logits
        assert warppack.attention_backend() == "exact_dense"
        torch.testing.assert_close(got, eager(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
