"""warppack.attention.boundaries: every layer of a packed row finds its boundaries, or fails loudly.

Sources: the batch's cu_seq_lens, restarting position_ids, and the packed-row marker the mask
function hands on for models whose attention never sees position_ids (Persimmon here).
"""

import pytest
import torch

import warppack
from support.models import hand_packed, random_sequences, relative_error, tiny_model
from warppack.attention import boundaries as B
from warppack.attention import exact as E

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, masking_utils  # noqa: E402

from warppack.attention import hf as HF  # noqa: E402

LENGTHS = [5, 1, 9]


def alone_logits(model, seqs):
    with torch.no_grad():
        return torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])


def positions_only(batch):
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}


# ---- the marker -----------------------------------------------------------------------------------------------
def test_mask_function_hands_on_the_boundaries_instead_of_a_mask():
    model = tiny_model("persimmon")
    batch = hand_packed(random_sequences(LENGTHS))
    embeds = torch.zeros(1, sum(LENGTHS), 8)
    kwargs = dict(config=model.config, inputs_embeds=embeds, attention_mask=None)
    marker = masking_utils.create_causal_mask(**kwargs, cache=None, position_ids=batch["position_ids"])
    assert B.is_marker(marker) and marker.cu.tolist() == [0, 5, 6, 15] and marker.cu.dtype == torch.int32
    # With a KV cache transformers does not look for packed sequences; the mask function still does.
    cached = masking_utils.create_causal_mask(**kwargs, cache=DynamicCache(config=model.config),
                                              position_ids=batch["position_ids"])
    assert cached.cu.tolist() == [0, 5, 6, 15]
    plain = torch.arange(sum(LENGTHS))[None]
    assert masking_utils.create_causal_mask(**kwargs, cache=None, position_ids=plain) is None
    windowed = dict(kwargs, config=tiny_model("mistral").config, cache=None)  # sliding_window=4
    sliding = masking_utils.create_sliding_window_causal_mask(**windowed, position_ids=batch["position_ids"])
    assert sliding.cu.tolist() == [0, 5, 6, 15]


def test_marker_is_no_tensor_so_code_that_reads_masks_itself_fails_loudly():
    marker = B.PackedRows(cu=torch.tensor([0, 2, 4], dtype=torch.int32))
    scores = torch.zeros(1, 1, 4, 4)
    with pytest.raises(TypeError):
        scores + marker  # what an eager attention that ignores attn_implementation would do
    with pytest.raises(TypeError):
        marker[:, :, :, :4]


@pytest.mark.parametrize("use_cache", [False, True], ids=["train", "eval-with-cache"])
def test_attention_that_never_sees_position_ids_keeps_sequences_apart(use_cache):
    model = tiny_model("persimmon")
    seqs = random_sequences(LENGTHS)
    batch = hand_packed(seqs)
    with torch.no_grad():
        got = model(**positions_only(batch), use_cache=use_cache).logits[0]
    assert warppack.attention_backend() == "exact_segments"
    assert relative_error(got, alone_logits(model, seqs)) < 1e-5


def test_marker_survives_gradient_checkpointing():
    # The marker travels with the mask into each layer, so a recomputed layer sees it again.
    seqs = random_sequences(LENGTHS, seed=1)
    batch = hand_packed(seqs)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("persimmon").train()
        if checkpointing and hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with HF.recording_callers() as calls:
            model(**positions_only(batch), labels=batch["labels"], use_cache=False).loss.backward()
        assert len(calls) == (2 if checkpointing else 1) * model.config.num_hidden_layers  # recomputed
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    reference = tiny_model("persimmon").train()
    reference(**batch, use_cache=False).loss.backward()
    for name, param in reference.named_parameters():
        if param.grad is not None:
            assert relative_error(grads[0][name], param.grad) < 1e-4, name
            assert relative_error(grads[1][name], param.grad) < 1e-4, name


def test_under_compile_the_marker_becomes_a_block_diagonal_mask():
    model = tiny_model("persimmon")
    seqs = random_sequences(LENGTHS, seed=2)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        got = compiled(**positions_only(hand_packed(seqs)), use_cache=False).logits[0]
    assert relative_error(got, alone_logits(model, seqs)) < 1e-5


def test_unpacked_padded_and_cached_forwards_of_such_a_model_still_match_eager():
    model = tiny_model("persimmon")
    eager = tiny_model("persimmon", attn_implementation="eager")
    seqs = random_sequences([7, 4], seed=3)
    ids, mask = torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, 7 - len(seq):], mask[row, 7 - len(seq):] = seq, 1
    with torch.no_grad():
        one = model(input_ids=seqs[0][None]).logits
        assert warppack.attention_backend() == "exact_dense"
        torch.testing.assert_close(one, eager(input_ids=seqs[0][None]).logits, rtol=1e-5, atol=1e-5)
        padded = model(input_ids=ids, attention_mask=mask).logits
        assert warppack.attention_backend() == "exact_masked"
        real = mask.bool()
        assert relative_error(padded[real], eager(input_ids=ids, attention_mask=mask).logits[real]) < 1e-5
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        assert torch.equal(generated, eager.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5,
                                                     do_sample=False))


# ---- scoping and contiguity -----------------------------------------------------------------------------------
class Layer(torch.nn.Module):
    def __init__(self, is_causal):
        super().__init__()
        self.is_causal = is_causal


def qkv(lengths, heads=2, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, sum(lengths), dim, generator=gen) for _ in range(3)]


def test_text_row_boundaries_are_not_applied_to_a_non_causal_encoder():
    q, k, v = qkv([6])
    text_cu = torch.tensor([0, 7, 11, 17], dtype=torch.int32)  # the text row's, forwarded with the kwargs
    got, _ = HF.warppack_attention_forward(Layer(False), q, k, v, None, cu_seq_lens_q=text_cu,
                                           cu_seq_lens_k=text_cu, position_ids=torch.arange(17)[None])
    expected, _ = HF.warppack_attention_forward(Layer(False), q, k, v, None)
    assert torch.equal(got, expected) and warppack.attention_backend() == "exact_dense"


def test_boundaries_of_another_row_raise_naming_the_layer():
    q, k, v = qkv([6])
    with pytest.raises(ValueError, match=r"Layer received cu_seq_lens_q/k covering 17 query .* has 6"):
        HF.warppack_attention_forward(Layer(True), q, k, v, None,
                                      cu_seq_lens_q=torch.tensor([0, 17], dtype=torch.int32))


@pytest.mark.parametrize("path", ["packed", "dense", "masked"])
def test_attention_output_is_contiguous_on_every_path(path):
    # Models such as JetMoe and AFMoE call .view() on it.
    q, k, v = qkv([3, 4])
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu} if path == "packed" else {}
    mask = torch.ones(1, 1, 7, 7, dtype=torch.bool).tril() if path == "masked" else None
    out, _ = HF.warppack_attention_forward(Layer(True), q, k, v, mask, **kwargs)
    assert out.shape == (1, 7, 2, 8) and out.is_contiguous()
    out.view(1, 7, -1)
    for fn in (E.exact_segments, E.exact_block_diagonal):
        flat = fn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu, causal=True,
                  scale=0.3, window=None, softcap=None, dropout=0.0, sinks=None)
        assert flat.is_contiguous()
