"""warppack.attention.dispatch (the varlen dispatcher), .exact (its exact paths), .hf (the transformers glue)."""

import inspect
import subprocess
import sys
import types

import pytest
import torch

import warppack
from warppack.attention import dispatch as A
from warppack.attention import exact as E


def reference(q, k, v, lengths, *, causal=True, window=None, softcap=None, sinks=None, scale=None):
    """Per-sequence attention in float64, written out independently of warppack."""
    outs, start = [], 0
    groups = q.shape[1] // k.shape[1]
    for n in lengths:
        if n == 0:
            continue
        qs, ks, vs = (x[start:start + n].double().transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        scores = qs @ ks.transpose(-1, -2) * (scale or q.shape[-1] ** -0.5)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool)
        if window is not None:
            allowed &= (i - j).abs() < window
        scores = scores.masked_fill(~allowed, float("-inf"))
        if sinks is not None:
            scores = torch.cat([scores, sinks.double()[:, None, None].expand(-1, n, 1)], -1)
        probs = scores.softmax(-1)[..., :n]
        outs.append((probs @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs).float()


def qkv(total, hq=4, hkv=2, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(total, h, d, generator=gen) for h in (hq, hkv, hkv)]


def cu_of(lengths):
    return torch.tensor([0] + list(lengths)).cumsum(0).to(torch.int32)


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


# ---- dispatch: which kernel may run which features (checked without a GPU) ----------------------------------
def test_torch_varlen_causal_flag_is_a_tuple_or_is_causal_by_signature():
    assert A._torch_varlen_mode(True, causal=True, window=None) == {"window_size": (-1, 0)}
    assert type(A._torch_varlen_mode(True, causal=True, window=None)["window_size"]) is tuple
    assert A._torch_varlen_mode(True, causal=True, window=4) == {"window_size": (3, 0)}
    assert A._torch_varlen_mode(True, causal=False, window=None) == {"window_size": (-1, -1)}
    assert A._torch_varlen_mode(False, causal=True, window=None) == {"is_causal": True}
    assert A._torch_varlen_mode(False, causal=True, window=4) is None  # torch 2.10: no windows


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend kernels are installed; ``fake(dtype)`` is a query the fused kernels would accept."""
    def install(flash=None, varlen=None, aten=None):
        monkeypatch.setattr(A, "_FOUND", {"flash_attn": flash, "torch_varlen": varlen, "aten_flash": aten})
    q = types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(8, 4, 64))
    return install, q


def choose(q, **features):
    feats = {**dict(window=None, softcap=None, dropout=0.0, sinks=None), **features}
    return next(n for n in A.KERNELS if A._can_run(n, q, q, **feats))


def test_dispatch_prefers_flash_attn_then_torch_varlen_then_aten(fake_cuda):
    install, q = fake_cuda
    install(flash=(object(), True, True), varlen=(object(), True, True, True), aten=(object(), True))
    assert choose(q) == "flash_attn"
    assert choose(q, window=4, softcap=30.0, dropout=0.1) == "flash_attn"  # it has every feature but sinks
    install(varlen=(object(), True, True, True), aten=(object(), True))
    assert choose(q) == "torch_varlen"
    install(aten=(object(), True))
    assert choose(q) == "aten_flash"
    install()
    assert choose(q) == "exact_segments"


def test_dispatch_never_picks_a_kernel_lacking_a_feature(fake_cuda):
    install, q = fake_cuda
    install(flash=(object(), False, True), varlen=(object(), False, False, False), aten=(object(), True))
    assert choose(q, softcap=30.0) == "exact_segments"  # flash-attn < 2.6: no softcap argument
    install(flash=(object(), False, False), varlen=(object(), False, False, False), aten=(object(), True))
    assert choose(q, window=4) == "aten_flash"  # flash-attn < 2.3: no window_size argument
    assert choose(q) == "flash_attn"
    install(varlen=(object(), False, False, False), aten=(object(), True))
    assert choose(q, window=4) == "aten_flash"  # torch 2.10 varlen: causal only
    assert choose(q) == "torch_varlen"
    install(varlen=(object(), True, True, True), aten=(object(), True))
    assert choose(q, dropout=0.1) == "aten_flash"  # varlen_attn has no dropout
    assert choose(q, sinks=torch.zeros(4)) == "exact_segments"
    assert choose(types.SimpleNamespace(is_cuda=True, dtype=torch.float32, shape=(8, 4, 64))) == "exact_segments"
    assert choose(types.SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(8, 4, 12))) == "exact_segments"


def fake_varlen_211(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                    enable_gqa=False):
    """torch >= 2.11 semantics on CPU: a *list* window_size would silently be non-causal."""
    assert type(window_size) is tuple and cu_q.dtype == torch.int32
    assert enable_gqa or query.shape[1] == key.shape[1]
    lengths = (cu_q[1:] - cu_q[:-1]).tolist()
    left, right = window_size
    return reference(query, key, value, lengths, causal=right == 0, window=None if left < 0 else left + 1, scale=scale)


def fake_varlen_210(query, key, value, cu_q, cu_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10 semantics: is_causal, no window, no GQA, no scale argument."""
    assert query.shape[1] == key.shape[1]
    return reference(query, key, value, (cu_q[1:] - cu_q[:-1]).tolist(), causal=is_causal)


@pytest.mark.parametrize("fake", [fake_varlen_211, fake_varlen_210], ids=["torch2.11", "torch2.10"])
def test_torch_varlen_call_is_built_from_its_signature(monkeypatch, fake):
    monkeypatch.setattr(A, "_fused_ok", lambda q: True)
    monkeypatch.setattr(A, "_FOUND", {"flash_attn": None, "torch_varlen": A._describe_torch_varlen(fake),
                                      "aten_flash": None})
    lengths = [3, 1, 6]
    q, k, v = qkv(10, hq=4, hkv=2)
    for window in (None, 3) if fake is fake_varlen_211 else (None,):
        out = warppack.varlen_attention(q, k, v, cu_of(lengths).long(), scale=0.3, sliding_window=window)
        assert warppack.attention_backend() == "torch_varlen"
        torch.testing.assert_close(out, reference(q, k, v, lengths, window=window, scale=0.3), rtol=1e-5, atol=1e-6)


def fake_aten(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *, scale=None,
              window_size_left=None, window_size_right=None):
    assert q.shape[1] == k.shape[1] and dropout_p == 0.0  # no GQA in this op: heads must be expanded
    window = None if window_size_left is None else window_size_left + 1
    out = reference(q, k, v, (cu_q[1:] - cu_q[:-1]).tolist(), causal=is_causal, window=window, scale=scale)
    return out, None, None, None, None


def test_aten_flash_call_is_built_right(monkeypatch):
    monkeypatch.setattr(A, "_fused_ok", lambda q: True)
    monkeypatch.setattr(A, "_FOUND", {"flash_attn": None, "torch_varlen": None, "aten_flash": (fake_aten, True)})
    lengths = [3, 1, 6]
    q, k, v = qkv(10, hq=4, hkv=2)
    for window in (None, 3):
        out = warppack.varlen_attention(q, k, v, cu_of(lengths), scale=0.3, sliding_window=window)
        assert warppack.attention_backend() == "aten_flash"
        torch.testing.assert_close(out, reference(q, k, v, lengths, window=window, scale=0.3), rtol=1e-5, atol=1e-6)


# ---- flash-attn: cannot be installed here (CUDA-only sdist), so the call contract is pinned by a fake ----
def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn 2.6-2.8's signature, checking what its CUDA op and torch.library schema demand."""
    CALLS.append(dict(dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal, window_size=window_size,
                      softcap=softcap, hq=q.shape[1], hkv=k.shape[1]))
    assert q.dim() == k.dim() == v.dim() == 3 and q.shape[0] == cu_seqlens_q[-1] and k.shape[0] == cu_seqlens_k[-1]
    assert q.shape[1] % k.shape[1] == 0 and k.shape == v.shape and q.dtype == k.dtype == v.dtype
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    for cu, t, longest in ((cu_seqlens_q, q, max_seqlen_q), (cu_seqlens_k, k, max_seqlen_k)):
        assert cu.dtype == torch.int32 and cu.dim() == 1 and cu.device == t.device and cu.is_contiguous()
        assert int(cu[0]) == 0 and bool((cu[1:] >= cu[:-1]).all())
        assert type(longest) is int and longest >= int((cu[1:] - cu[:-1]).max())  # schema: int, not a tensor
    assert type(dropout_p) is float and type(softmax_scale) is float and type(causal) is bool
    assert type(window_size) is tuple and len(window_size) == 2 and all(type(w) is int for w in window_size)
    assert type(softcap) is float and softcap >= 0.0  # 0.0 = off
    assert alibi_slopes is None and not deterministic and not return_attn_probs and block_table is None
    left, right = window_size
    assert window_size == (-1, -1) or right == (0 if causal else left)  # (-1, -1): the default, unwindowed
    return reference(q, k, v, (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist(), causal=causal,
                     window=None if left < 0 else left + 1, softcap=softcap or None, scale=softmax_scale)


CALLS: list = []


@pytest.fixture
def fake_flash(monkeypatch):
    """flash-attn "installed" for CPU tensors; ``CALLS`` holds the arguments of each call."""
    monkeypatch.setattr(A, "_fused_ok", lambda q: True)
    monkeypatch.setattr(A, "_FOUND", {"flash_attn": A._describe_flash_attn(flash_attn_varlen_func),
                                      "torch_varlen": None, "aten_flash": None})
    CALLS.clear()
    return CALLS


@pytest.mark.parametrize("causal", [True, False])
def test_flash_attn_call_contract(fake_flash, causal):
    lengths = [3, 1, 6]
    q, k, v = qkv(10, hq=4, hkv=2)
    for window, softcap in ((None, None), (3, None), (3, 2.0), (None, 2.0)):
        out = warppack.varlen_attention(q, k, v, cu_of(lengths).long(), scale=0.3, sliding_window=window,
                                        softcap=softcap, causal=causal)
        assert warppack.attention_backend() == "flash_attn"
        expected = reference(q, k, v, lengths, causal=causal, window=window, softcap=softcap, scale=0.3)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        left = -1 if window is None else window - 1
        assert fake_flash[-1] == dict(dropout_p=0.0, softmax_scale=0.3, causal=causal, hq=4, hkv=2,
                                      window_size=(left, 0 if causal else left), softcap=softcap or 0.0)


def test_flash_attn_gets_dropout_and_trimmed_static_shape_segments(fake_flash):
    q, k, v = qkv(10, hq=4, hkv=2)
    static = torch.tensor([0, 3, 4, 10, 10, 10], dtype=torch.int32)  # static_shape tail, max_length = budget
    out = warppack.varlen_attention(q, k, v, static, max_seqlen_q=10, max_seqlen_k=10, dropout=0.1)
    assert fake_flash[-1]["dropout_p"] == 0.1 and out.shape == q.shape


def test_flash_attn_before_softcap_and_window_size_arguments(fake_flash, monkeypatch):
    def flash_2_2(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                  softmax_scale=None, causal=False, return_attn_probs=False):
        return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                      dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal)

    assert A._describe_flash_attn(flash_2_2)[1:] == (False, False)
    monkeypatch.setitem(A._FOUND, "flash_attn", A._describe_flash_attn(flash_2_2))
    lengths = [3, 1, 6]
    q, k, v = qkv(10, hq=4, hkv=2)
    out = warppack.varlen_attention(q, k, v, cu_of(lengths), scale=0.3)  # no window_size= passed
    assert warppack.attention_backend() == "flash_attn"
    torch.testing.assert_close(out, reference(q, k, v, lengths, scale=0.3), rtol=1e-5, atol=1e-6)
    warppack.varlen_attention(q, k, v, cu_of(lengths), sliding_window=3, softcap=2.0)
    assert warppack.attention_backend() == "exact_segments"


def test_describe_flash_attn_reads_the_real_signature():
    assert A._describe_flash_attn(flash_attn_varlen_func)[1:] == (True, True)
    assert list(inspect.signature(flash_attn_varlen_func).parameters)[:7] == [
        "q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"]


def test_forced_backend_raises_instead_of_approximating():
    q, k, v = qkv(4)
    with pytest.raises(ValueError, match="unknown attention backend"):
        warppack.set_attention_backend("flash")
    warppack.set_attention_backend("torch_varlen")
    try:
        with pytest.raises(ValueError, match=r"set_attention_backend\(None\)"):
            warppack.varlen_attention(q, k, v, cu_of([4]))
    finally:
        warppack.set_attention_backend(None)
    warppack.set_attention_backend("exact_block_diagonal")
    try:
        warppack.varlen_attention(q, k, v, cu_of([4]))
        assert warppack.attention_backend() == "exact_block_diagonal"
    finally:
        warppack.set_attention_backend(None)


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
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(A.__file__).rsplit("/warppack/", 1)[0])


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
def test_models_through_flash_attn_pass_the_layer_features(fake_flash, family):
    # What transformers hands the attention (scaling, softcap, sliding_window, GQA heads) reaches
    # flash_attn_varlen_func in its own argument names, and the logits equal the exact path's.
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model(family)
    batch = hand_packed(random_sequences([5, 1, 9]))
    with torch.no_grad():
        got = model(**batch).logits
    assert warppack.attention_backend() == "flash_attn"
    layers = model.model.layers
    assert len(fake_flash) == len(layers)
    for call, layer in zip(fake_flash, layers):
        attn = layer.self_attn
        window = getattr(attn, "sliding_window", None)
        assert call["softmax_scale"] == attn.scaling and call["causal"] is True and call["dropout_p"] == 0.0
        assert call["window_size"] == (-1 if window is None else window - 1, 0)
        assert call["softcap"] == float(getattr(attn, "attn_logit_softcapping", None) or 0.0)
        assert call["hkv"] == model.config.num_key_value_heads < call["hq"]  # GQA: heads not expanded
    A._FOUND["flash_attn"] = None
    with torch.no_grad():
        exact = model(**batch).logits
    assert warppack.attention_backend() == "exact_segments"
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)


def test_training_forward_passes_the_attention_dropout_to_flash_attn(fake_flash):
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model("llama", attention_dropout=0.25).train()
    model(**hand_packed(random_sequences([5, 1, 9]))).loss.backward()
    assert [c["dropout_p"] for c in fake_flash] == [0.25] * model.config.num_hidden_layers


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
