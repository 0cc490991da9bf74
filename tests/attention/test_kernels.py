"""Which kernel runs a layer (warppack.attention.registry) and how each fused kernel is called
(warppack.attention.kernels): the documented order, refusals that name what a kernel lacks, forcing,
and every kernel's call contract, through fakes that record their calls (attention_fakes.py)."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from attention_fakes import (
    ALL,
    CALLS,
    aten_flash_attention_forward,
    FA4_EARLY,
    cu_of,
    early_flash_attn_4_varlen_func,
    flash_attn_3_varlen_func,
    flash_attn_varlen_func,
    install,
    qkv,
    reference,
    varlen_attn_210,
    varlen_attn_211,
)

import warppack
from warppack.attention import capabilities, dispatch, kernels, registry
from warppack.attention.registry import Layer

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [3, 1, 6]
FUSED = [name for name in registry.ORDER if registry.KERNELS[name].fused]


@pytest.fixture(autouse=True)
def automatic():
    yield
    warppack.set_attention_backend(None)


def attend(**features):
    """One packed call (GQA 4/2 heads, head dim 8, scale 0.3): ``(output, float64 reference)``."""
    q, k, v = qkv(sum(LENGTHS))
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0]) if features.pop("sinks", False) else None
    causal, window = features.pop("causal", True), features.pop("window", None)
    out = warppack.varlen_attention(q, k, v, cu_of(LENGTHS).long(), scale=0.3, causal=causal, sliding_window=window,
                                    sinks=sinks, **features)
    expected = reference(q, k, v, LENGTHS, causal=causal, window=window, softcap=features.get("softcap"),
                         sinks=sinks, scale=0.3)
    return out, expected


def layer(**kw):
    base = dict(device="cuda", capability=(9, 0), dtype=torch.bfloat16, head_dim=128, head_dim_v=128)
    return Layer(**{**base, **kw})


def why(name, lay, installed=kernels.installed, **kw):
    return registry.refusal(registry.KERNELS[name], lay, installed, **kw)


# ---- the order -----------------------------------------------------------------------------------------------
def test_the_order_matches_the_documented_kernel_table():
    assert registry.ORDER == ("flash_attn_4", "torch_fa4", "flash_attn_3", "flash_attn", "torch_varlen", "aten_flash",
                              "exact_segments", "exact_block_diagonal")
    assert dispatch.KERNELS == registry.ORDER
    page = (REPO / "docs" / "model-integration.md").read_text()
    table = re.findall(r"^\| `(\w+)` \|", page[page.index("| kernel (`attention_backend()`)"):], flags=re.M)
    assert table[: len(registry.ORDER)] == list(registry.ORDER)


def test_automatic_choice_walks_the_order_and_calls_only_the_chosen_kernel(monkeypatch):
    present = [name for name in ALL if name != "torch_fa4"]
    for want in ("flash_attn_4", "flash_attn_3", "flash_attn", "torch_varlen", "aten_flash", "exact_segments"):
        install(monkeypatch, *present)
        out, expected = attend()
        assert warppack.attention_backend() == want
        assert [call["kernel"] for call in CALLS] == ([] if want == "exact_segments" else [want])
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        present = present[1:]


@pytest.mark.parametrize("features, with_all, without_fa4", [
    (dict(), "flash_attn_4", "flash_attn_3"),
    (dict(window=3), "flash_attn_4", "flash_attn_3"),
    (dict(softcap=2.0), "flash_attn_4", "flash_attn_3"),
    (dict(sinks=True), "flash_attn_4", "exact_segments"),  # only FA4 and the exact path have sinks
    (dict(dropout=0.1), "flash_attn", "flash_attn"),  # FA4/FA3 have no dropout
    (dict(window=3, softcap=2.0, causal=False), "flash_attn_4", "flash_attn_3"),
], ids=["plain", "window", "softcap", "sinks", "dropout", "noncausal-window-softcap"])
def test_a_layer_goes_to_the_first_kernel_that_does_all_its_features(monkeypatch, features, with_all, without_fa4):
    for names, want in ((list(ALL), with_all), ([n for n in ALL if n != "flash_attn_4"], without_fa4)):
        install(monkeypatch, *names)
        out, expected = attend(**features)
        assert warppack.attention_backend() == want
        if "dropout" not in features:  # dropout: a random mask, only the call is checked
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# ---- refusals name what a kernel lacks -----------------------------------------------------------------------
def test_refusals_name_the_feature_device_dtype_capability_and_head_dim(monkeypatch):
    install(monkeypatch, *ALL, route="FA4")
    monkeypatch.setattr(registry, "HALF", frozenset({torch.float16, torch.bfloat16}))
    assert why("flash_attn_4", layer(dropout=0.1)) == "dropout"
    assert why("torch_fa4", layer(softcap=30.0)) == "softcap"
    assert why("flash_attn_3", layer(sinks=True)) == "attention sinks"
    assert why("flash_attn", layer(device="cpu")) == "it needs CUDA tensors (this layer's are on cpu)"
    assert why("flash_attn", layer(dtype=torch.float32)).startswith("dtype torch.float32")
    assert why("flash_attn_4", layer(capability=(8, 0))) == "compute capability 8.0 (it needs 9.x/10.x/11.x)"
    assert why("flash_attn_3", layer(capability=(10, 0))).startswith("compute capability 10.0")
    assert why("flash_attn", layer(capability=(7, 5))) == "compute capability 7.5 (it needs >= 8.0)"
    assert why("flash_attn", layer(head_dim=512, head_dim_v=512)).startswith("head dim 512 (it takes multiples of 8")
    assert why("flash_attn", layer(head_dim=12, head_dim_v=12)).startswith("head dim 12")
    assert why("flash_attn", layer(head_dim=192, head_dim_v=128)).startswith("head dim 192 (values 128)")
    assert why("flash_attn_4", layer(head_dim=192, head_dim_v=128)) is None  # Hopper: 8..256 each
    assert why("flash_attn_4", layer(head_dim=192, head_dim_v=128, capability=(10, 0))) is None  # DeepSeek shape
    assert why("flash_attn_4", layer(head_dim=160, head_dim_v=160, capability=(10, 0))).startswith("head dim 160")
    assert why("flash_attn_4", layer(head_dim=256, head_dim_v=256, capability=(10, 0))) is None


def test_an_installed_version_without_the_argument_is_refused_that_feature(monkeypatch):
    def flash_2_2(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                  softmax_scale=None, causal=False, return_attn_probs=False):
        return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                      dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal)

    install(monkeypatch, flash_attn=capabilities.describe_flash(flash_2_2),
            torch_varlen=capabilities.describe_torch_varlen(varlen_attn_210))
    absent = "(the installed version takes no argument for it)"
    assert why("flash_attn", layer(softcap=2.0)) == f"softcap {absent}"
    assert why("flash_attn", layer(window=4)) == f"sliding window {absent}"
    assert why("torch_varlen", layer(window=4)) == f"sliding window {absent}"  # torch 2.10: causal only
    out, expected = attend()
    assert warppack.attention_backend() == "flash_attn"
    assert CALLS[-1]["window_size"] == (-1, -1) and CALLS[-1]["softcap"] == 0.0  # the defaults: not passed
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    attend(window=3, softcap=2.0)
    assert warppack.attention_backend() == "exact_segments"


def test_a_kernel_that_is_not_installed_says_where_it_comes_from(monkeypatch):
    install(monkeypatch)
    source = "flash-attn-4 (pip install 'warppack[hopper]')"
    assert why("flash_attn_4", layer()) == f"it is not installed (it comes from {source})"
    assert "flash_attn_interface" in why("flash_attn_3", layer())
    assert why("exact_segments", layer(device="cpu", sinks=True, softcap=1.0, dropout=0.5)) is None


def test_under_torch_compile_a_kernel_that_breaks_the_graph_is_skipped_unless_forced(monkeypatch):
    install(monkeypatch, *ALL)
    compiled = layer(compiling=True)
    assert why("flash_attn_4", compiled) == "torch.compile (it would break the graph)"
    assert why("flash_attn_4", compiled, forced=True) is None
    assert registry.choose(compiled, None, kernels.installed) == "flash_attn_3"
    assert registry.choose(compiled, "flash_attn_4", kernels.installed) == "flash_attn_4"


# ---- flash-attn-4 in training -------------------------------------------------------------------------------
EARLY_FA4 = capabilities.describe_fa4(early_flash_attn_4_varlen_func, FA4_EARLY)


def test_a_flash_attn_4_without_those_gradients_refuses_softcap_windows_and_sinks_in_training(monkeypatch):
    install(monkeypatch, flash_attn_4=EARLY_FA4)
    assert EARLY_FA4.features == {registry.WINDOW, registry.SOFTCAP, registry.SINKS} and EARLY_FA4.trains == set()
    bf16_sinks = dict(sinks=True, sinks_dtype=torch.bfloat16)
    assert why("flash_attn_4", layer(softcap=30.0, grad=True)) == \
        "softcap in training (the installed flash-attn-4's backward has no softcap)"
    assert why("flash_attn_4", layer(grad=True, **bf16_sinks)) == \
        "attention sinks in training (the installed flash-attn-4's backward has no gradient for the sinks)"
    assert why("flash_attn_4", layer(window=4, grad=True)).startswith("sliding window in training")
    assert why("flash_attn_4", layer(grad=True)) is None
    for inference in (layer(softcap=30.0), layer(window=4, **bf16_sinks)):
        assert why("flash_attn_4", inference) is None
    assert why("flash_attn_4", layer(sinks=True, sinks_dtype=torch.float16)) == \
        "attention sinks in torch.float16 (the installed flash-attn-4 takes bfloat16 sinks)"


def test_flash_attn_4_b36_trains_them_except_softcap_at_head_dim_256_on_blackwell(monkeypatch):
    install(monkeypatch, "flash_attn_4")
    fa4 = ALL["flash_attn_4"]()
    assert fa4.trains == fa4.features and fa4.no_softcap_backward_256
    training = dict(grad=True, window=4, softcap=30.0, sinks=True, sinks_dtype=torch.float16)
    assert why("flash_attn_4", layer(**training)) is None
    assert why("flash_attn_4", layer(**training, head_dim=256, head_dim_v=256)) is None  # Hopper
    blackwell = layer(**training, head_dim=256, head_dim_v=256, capability=(10, 0))
    assert why("flash_attn_4", blackwell).startswith("softcap in training with head dim 256 on Blackwell")
    assert why("flash_attn_4", blackwell._replace(grad=False)) is None


def test_a_layer_needs_a_gradient_when_grad_is_on_and_an_input_requires_it(monkeypatch):
    install(monkeypatch, "flash_attn", flash_attn_4=EARLY_FA4)
    q, k, v = qkv(sum(LENGTHS))
    sinks = torch.zeros(4, requires_grad=True)
    run = lambda *t: warppack.varlen_attention(*t, cu_of(LENGTHS), softcap=2.0)  # noqa: E731
    run(q, k, v)
    assert warppack.attention_backend() == "flash_attn_4"  # nothing requires grad: no backward follows
    run(q.requires_grad_(), k, v).sum().backward()
    assert warppack.attention_backend() == "flash_attn"
    with torch.no_grad():
        run(q, k, v)
    assert warppack.attention_backend() == "flash_attn_4"
    q.requires_grad_(False)
    warppack.varlen_attention(q, k, v, cu_of(LENGTHS), sinks=sinks.bfloat16())
    assert warppack.attention_backend() == "exact_segments"  # the sinks require grad; flash_attn has none


def test_a_forced_flash_attn_4_refuses_softcap_in_training_before_its_backward_would_fail(monkeypatch):
    install(monkeypatch, flash_attn_4=EARLY_FA4)
    warppack.set_attention_backend("flash_attn_4")
    q, k, v = (t.requires_grad_() for t in qkv(sum(LENGTHS)))
    with pytest.raises(ValueError, match=r"'flash_attn_4' .*: softcap in training \(the installed flash-attn-4's"):
        warppack.varlen_attention(q, k, v, cu_of(LENGTHS), softcap=2.0)
    assert CALLS == []
    out = EARLY_FA4.fn(q, k, v, cu_seqlens_q=cu_of(LENGTHS), cu_seqlens_k=cu_of(LENGTHS), max_seqlen_q=6,
                       max_seqlen_k=6, softmax_scale=0.3, causal=True, softcap=2.0)[0]
    with pytest.raises(AssertionError):  # what the refusal spares: the release's own backward
        out.sum().backward()


# ---- torch's FA4 route ---------------------------------------------------------------------------------------
def test_torch_fa4_names_torch_varlen_while_torch_routes_it_to_fa4(monkeypatch):
    install(monkeypatch, "torch_fa4", "torch_varlen", "aten_flash")
    assert "activate_flash_attention_impl('FA4')" in why("torch_fa4", layer())
    assert attend() and warppack.attention_backend() == "torch_varlen"
    install(monkeypatch, "torch_fa4", "torch_varlen", "aten_flash", route="FA4")
    assert why("torch_varlen", layer()).endswith("torch_fa4 names that route")
    assert why("aten_flash", layer(dropout=0.1)).startswith("torch's flash attention is routed to FA4")
    out, expected = attend(window=3)
    assert warppack.attention_backend() == "torch_fa4" and CALLS[-1]["kernel"] == "torch_varlen"
    assert CALLS[-1]["window_size"] == (2, 0) and CALLS[-1]["enable_gqa"] is True
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    attend(dropout=0.1)  # the route has no dropout, and aten_flash would run the route too
    assert warppack.attention_backend() == "exact_segments"


def test_torch_fa4_refuses_windows_where_the_route_drops_them_in_backward(monkeypatch):
    install(monkeypatch, "torch_varlen", torch_fa4=(False, None), route="FA4")
    assert why("torch_fa4", layer(window=4)) == "sliding window (the installed version takes no argument for it)"
    assert why("torch_fa4", layer()) is None


def test_torch_fa4_is_refused_where_torch_unpacks_fewer_values_than_flash_attn_4_returns(monkeypatch):
    adapter = "def fwd(module, q):\n    out, lse = module._flash_attn_fwd(q)\n    return out, lse\n"
    b36 = "def _flash_attn_fwd(q):\n    if q:\n        return q, q, None, None, None\n    return q, q, 1, 2, 3\n"
    broken = capabilities.route_mismatch(adapter, b36)
    assert broken == ("torch's FA4 route unpacks 2 values from flash-attn-4's _flash_attn_fwd, which returns 5 in "
                      "the installed flash-attn-4: the route would fail at its first call "
                      '("too many values to unpack")')
    assert capabilities.route_mismatch(adapter, "def _flash_attn_fwd(q):\n    return q, q\n") is None
    assert capabilities.route_mismatch(adapter.replace("out, lse", "out, lse, *_"), b36) is None  # unpacks any number
    install(monkeypatch, "torch_varlen", "aten_flash", torch_fa4=(True, broken), route="FA4")
    assert why("torch_fa4", layer()) == broken
    assert registry.choose(layer(compiling=True), None, kernels.installed) == "exact_segments"  # all run the route


def test_under_compile_torch_fa4_keeps_fa4_in_the_graph(monkeypatch):
    install(monkeypatch, *ALL, route="FA4")
    assert registry.choose(layer(), None, kernels.installed) == "flash_attn_4"
    assert registry.choose(layer(compiling=True), None, kernels.installed) == "torch_fa4"


# ---- forcing -------------------------------------------------------------------------------------------------
def test_set_attention_backend_rejects_unknown_names_listing_the_known_ones():
    for bad in ("flash", "FA4", 3):
        with pytest.raises(ValueError) as raised:
            warppack.set_attention_backend(bad)
        message = str(raised.value)
        assert repr(bad) in message and all(name in message for name in registry.ORDER) and "None" in message


@pytest.mark.parametrize("forced, features, named", [
    ("torch_varlen", dict(softcap=2.0), "softcap"),
    ("flash_attn_3", dict(sinks=True), "attention sinks"),
    ("flash_attn_4", dict(dropout=0.1), "dropout"),
    ("aten_flash", dict(sinks=True), "attention sinks"),
])
def test_a_forced_kernel_that_cannot_run_the_layer_raises_naming_the_feature(monkeypatch, forced, features, named):
    install(monkeypatch, *ALL)
    warppack.set_attention_backend(forced)
    with pytest.raises(ValueError, match=rf"{forced!r} .*: {named}.*set_attention_backend\(None\)"):
        attend(**features)
    assert CALLS == []


def test_attention_backend_names_what_ran_and_forced_attention_backend_what_is_forced(monkeypatch):
    install(monkeypatch, *ALL)
    warppack.set_attention_backend("flash_attn")
    assert warppack.attention_backend() is None  # nothing ran since
    assert dispatch.forced_attention_backend() == "flash_attn"
    out, expected = attend(window=3)
    assert warppack.attention_backend() == "flash_attn" and [c["kernel"] for c in CALLS] == ["flash_attn"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    warppack.set_attention_backend(None)
    assert warppack.attention_backend() is None and dispatch.forced_attention_backend() is None
    attend()
    assert warppack.attention_backend() == "flash_attn_4"


def test_forcing_on_this_machine_reports_the_missing_kernel_or_device():
    q, k, v = qkv(4)
    for name in FUSED:
        warppack.set_attention_backend(name)
        with pytest.raises(ValueError, match=rf"{name!r} .*(CUDA|not installed|route)"):
            warppack.varlen_attention(q, k, v, cu_of([4]))
    warppack.set_attention_backend("exact_block_diagonal")
    warppack.varlen_attention(q, k, v, cu_of([4]))
    assert warppack.attention_backend() == "exact_block_diagonal"


# ---- each kernel's call --------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel", ["flash_attn_4", "flash_attn_3", "flash_attn"])
def test_flash_kernels_get_the_layer_in_their_own_argument_names(monkeypatch, kernel, causal):
    install(monkeypatch, kernel)
    for window, softcap in ((None, None), (3, None), (3, 2.0), (None, 2.0)):
        out, expected = attend(causal=causal, window=window, softcap=softcap)
        assert warppack.attention_backend() == kernel
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        call = CALLS[-1]
        assert call["softmax_scale"] == 0.3 and call["causal"] is causal and call["softcap"] == (softcap or 0.0)
        assert (call["hq"], call["hkv"]) == (4, 2)  # GQA: key/value heads not expanded
        left = None if window is None else window - 1
        if kernel == "flash_attn_4":
            assert call["window_size"] == ((None, None) if window is None else (left, 0 if causal else left))
        else:
            left = -1 if left is None else left
            assert call["window_size"] == (left, 0 if causal else left)


def test_flash_attn_4_gets_the_sinks_tensor_itself(monkeypatch):
    install(monkeypatch, "flash_attn_4")
    out, expected = attend(sinks=True, window=4, softcap=1.5)
    assert warppack.attention_backend() == "flash_attn_4"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(CALLS[-1]["sinks"], torch.tensor([0.5, -1.0, 2.0, 0.0]))


def test_a_flash_attention_3_that_returns_the_lse_too(monkeypatch):
    def older(*args, **kwargs):  # FlashAttention-3 betas returned (out, softmax_lse)
        return flash_attn_3_varlen_func(*args, **kwargs), torch.zeros(1)

    older.__signature__ = inspect.signature(flash_attn_3_varlen_func)
    install(monkeypatch, flash_attn_3=capabilities.describe_flash(older))
    out, expected = attend(window=3)
    assert warppack.attention_backend() == "flash_attn_3"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_flash_attn_gets_dropout_and_trimmed_static_shape_segments(monkeypatch):
    install(monkeypatch, "flash_attn")
    q, k, v = qkv(10)
    static = torch.tensor([0, 3, 4, 10, 10, 10], dtype=torch.int32)  # static_shape tail, max_length = budget
    out = warppack.varlen_attention(q, k, v, static, max_seqlen_q=10, max_seqlen_k=10, dropout=0.1)
    assert CALLS[-1]["dropout_p"] == 0.1 and out.shape == q.shape
    # the empty tail segments are dropped and the longest real segment is passed, not the budget
    assert CALLS[-1]["cu_seqlens_q"] == [0, 3, 4, 10] and CALLS[-1]["max_seqlen_q"] == 6


def test_torch_varlen_causal_flag_is_a_tuple_or_is_causal_by_signature():
    mode = kernels.torch_varlen_mode
    assert mode(True, causal=True, window=None) == {"window_size": (-1, 0)}
    assert type(mode(True, causal=True, window=None)["window_size"]) is tuple
    assert mode(True, causal=True, window=4) == {"window_size": (3, 0)}
    assert mode(True, causal=False, window=None) == {"window_size": (-1, -1)}
    assert mode(False, causal=True, window=None) == {"is_causal": True}
    assert mode(False, causal=True, window=4) is None  # torch 2.10: no windows


@pytest.mark.parametrize("fake", [varlen_attn_211, varlen_attn_210], ids=["torch2.11", "torch2.10"])
def test_torch_varlen_call_is_built_from_its_signature(monkeypatch, fake):
    install(monkeypatch, torch_varlen=capabilities.describe_torch_varlen(fake))
    for window in (None, 3) if fake is varlen_attn_211 else (None,):
        out, expected = attend(window=window)
        assert warppack.attention_backend() == "torch_varlen"
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_aten_flash_call_is_built_right(monkeypatch):
    install(monkeypatch, aten_flash=(aten_flash_attention_forward, True))
    for window in (None, 3):
        out, expected = attend(window=window)
        assert warppack.attention_backend() == "aten_flash"
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert CALLS[-1]["window_size_left"] == 2 and CALLS[-1]["window_size_right"] == 0


def test_descriptions_read_the_real_signatures():
    assert capabilities.describe_flash(flash_attn_varlen_func)[1:] == (True, True)
    assert capabilities.describe_flash(flash_attn_3_varlen_func)[1:] == (True, True)
    fa4 = ALL["flash_attn_4"]()[1]
    assert fa4 == {registry.WINDOW, registry.SOFTCAP, registry.SINKS}
    assert capabilities.describe_torch_varlen(varlen_attn_211)[1:] == (True, True, True)
    assert capabilities.describe_torch_varlen(varlen_attn_210)[1:] == (False, False, False)


# ---- models through flash-attn-4 -----------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_models_reach_flash_attn_4_with_softcap_windows_and_sinks(monkeypatch, family):
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model(family)
    batch = hand_packed(random_sequences([5, 1, 9]))
    with torch.no_grad():
        exact = model(**batch).logits
    install(monkeypatch, "flash_attn_4")
    with torch.no_grad():
        got = model(**batch).logits
    assert warppack.attention_backend() == "flash_attn_4" and len(CALLS) == model.config.num_hidden_layers
    for call, decoder in zip(CALLS, model.model.layers):
        attn = decoder.self_attn
        window = getattr(attn, "sliding_window", None)
        assert call["window_size"] == ((None, None) if window is None else (window - 1, 0))
        assert call["softcap"] == float(getattr(attn, "attn_logit_softcapping", None) or 0.0)
        sinks = getattr(attn, "sinks", None)
        assert (call["sinks"] is None) if sinks is None else torch.equal(call["sinks"], sinks)
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
@pytest.mark.parametrize("release", ["4.0.0b36", "early"])
def test_models_train_through_flash_attn_4_only_where_its_backward_computes_the_layer(monkeypatch, family, release):
    from support.models import hand_packed, random_sequences, tiny_model

    model = tiny_model(family)
    batch = hand_packed(random_sequences([5, 1, 9]))
    model(**batch).loss.backward()
    exact = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    install(monkeypatch, "flash_attn_4") if release == "4.0.0b36" else install(monkeypatch, flash_attn_4=EARLY_FA4)
    model(**batch).loss.backward()
    # Without flash-attn, the next kernel that computes softcap (Gemma-2) or sinks (GPT-OSS) is the exact one.
    want = "flash_attn_4" if release == "4.0.0b36" else "exact_segments"
    assert warppack.attention_backend() == want and len(CALLS) == (0 if release == "early" else
                                                                   model.config.num_hidden_layers)
    for name, p in model.named_parameters():
        if name in exact:
            torch.testing.assert_close(p.grad, exact[name], rtol=1e-4, atol=1e-6, msg=name)


# ---- no new hard dependency ----------------------------------------------------------------------------------
def test_warppack_imports_and_attends_without_any_kernel_package():
    code = (
        "import importlib.abc, sys\n"
        "BLOCKED = ('flash_attn', 'flash_attn_interface', 'flash_attn_3', 'cutlass', 'quack', 'tvm_ffi')\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, warppack\n"
        "from warppack.attention import kernels\n"
        "assert 'torch.nn.attention.varlen' not in sys.modules  # found lazily, not at import\n"
        "q = torch.randn(5, 2, 8)\n"
        "out = warppack.varlen_attention(q, q, q, torch.tensor([0, 3, 5], dtype=torch.int32))\n"
        "assert warppack.attention_backend() == 'exact_segments'\n"
        "found = kernels.found()\n"
        "assert 'flash_attn_4' not in found  # a CPU layer never looks flash-attn-4 up\n"
        "assert kernels.entry('flash_attn_4') is found['flash_attn_3'] is found['flash_attn'] is None, found\n"
        "assert not any(m.split('.')[0] in BLOCKED for m in sys.modules)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_hopper_extra_installs_the_wheels_and_nothing_requires_them():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    hopper = project["optional-dependencies"]["hopper"]
    assert "flash-attn-4==4.0.0b36" in hopper and "nvidia-cutlass-dsl[cu13]==4.8.1" in hopper
    assert not any(dep.split("=")[0].split(">")[0] in {"flash-attn-4", "nvidia-cutlass-dsl"}
                   for dep in project["dependencies"])
