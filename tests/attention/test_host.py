"""warppack.attention.host: a packed forward reads its boundaries to the host once, whatever its depth,
and a new batch (or the same tensors refilled in place) is never given the previous batch's boundaries."""

import contextlib
import gc
import sys
import weakref
from pathlib import Path

import pytest
import torch
from attention_fakes import CALLS, cu_of, install, qkv, reference

import warppack
from support.models import hand_packed, random_sequences, relative_error, tiny_model
from warppack.attention import host

transformers = pytest.importorskip("transformers")

ATTENTION = Path(host.__file__).resolve().parent
#: Every way a tensor's values reach Python.
CONVERSIONS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
CU_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
POSITION_KEYS = ("input_ids", "position_ids")


@contextlib.contextmanager
def host_reads(monkeypatch):
    """A list of the tensor-to-Python conversions warppack's attention code makes inside the block."""
    seen = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def conversion(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if Path(caller.co_filename).resolve().parent == ATTENTION:
                seen.append(f"{name} in {Path(caller.co_filename).name}:{caller.co_name}")
            return original(self, *args, **kwargs)
        return conversion

    with monkeypatch.context() as patch:
        for name in CONVERSIONS:
            patch.setattr(torch.Tensor, name, counting(name))
        yield seen


def alone_logits(model, seqs):
    with torch.no_grad():
        return torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])


def forward(model, batch, keys):
    with torch.no_grad():
        return model(**{key: batch[key] for key in keys}, use_cache=False).logits[0]


# ---- one read per batch ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, keys", [("llama", CU_KEYS), ("llama", POSITION_KEYS), ("persimmon", POSITION_KEYS),
                                          ("gemma2", CU_KEYS)],
                         ids=["cu_seq_lens", "position_ids", "marker", "two-mask-types"])
def test_a_forward_reads_its_boundaries_once_whatever_the_number_of_layers(monkeypatch, family, keys):
    reads = {}
    for layers in (1, 4):
        types = {"layer_types": ["sliding_attention", "full_attention"] * (layers // 2) or ["full_attention"]}
        model = tiny_model(family, num_hidden_layers=layers, **(types if family == "gemma2" else {}))
        for seed in range(2):  # a second batch (new tensors) is read again, once
            batch = hand_packed(random_sequences([5, 1, 9], seed=seed))
            with host_reads(monkeypatch) as seen:
                forward(model, batch, keys)
            assert warppack.attention_backend() == "exact_segments"
            reads.setdefault(layers, []).append(seen)
    assert reads[1] == reads[4] == [["tolist in host.py:<lambda>"]] * 2


def test_the_fused_path_and_its_boundary_check_share_the_one_read(monkeypatch):
    install(monkeypatch, "flash_attn")
    model = tiny_model("llama", num_hidden_layers=4)
    seqs = random_sequences([5, 1, 9], seed=4)
    with host_reads(monkeypatch) as seen:
        got = forward(model, hand_packed(seqs), CU_KEYS)
    assert seen == ["tolist in host.py:<lambda>"]
    assert [call["kernel"] for call in CALLS] == ["flash_attn"] * 4
    assert relative_error(got, alone_logits(model, seqs)) < 1e-5


# ---- never stale ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, keys", [("llama", CU_KEYS), ("llama", POSITION_KEYS), ("persimmon", POSITION_KEYS)],
                         ids=["cu_seq_lens", "position_ids", "marker"])
def test_consecutive_batches_with_different_boundaries_each_keep_their_own_sequences_apart(family, keys):
    model = tiny_model(family, num_hidden_layers=4)
    first, second = random_sequences([5, 1, 9], seed=5), random_sequences([7, 2, 6], seed=6)  # both 15 tokens
    for seqs in (first, second, first):
        assert relative_error(forward(model, hand_packed(seqs), keys), alone_logits(model, seqs)) < 1e-5
    # The very same tensors refilled in place (a reused buffer): their version changed, so they are read again.
    batch = hand_packed(first)
    forward(model, batch, keys)
    refill = hand_packed(second)
    for key in keys:
        if torch.is_tensor(batch[key]):
            batch[key].copy_(refill[key])
    assert relative_error(forward(model, batch, keys), alone_logits(model, second)) < 1e-5


def test_the_fused_path_trims_each_batch_by_its_own_offsets(monkeypatch):
    install(monkeypatch, "flash_attn")
    q, k, v = qkv(10)
    cu = torch.tensor([0, 3, 4, 10, 10], dtype=torch.int32)
    warppack.varlen_attention(q, k, v, cu)
    assert CALLS[-1]["cu_seqlens_q"] == [0, 3, 4, 10] and CALLS[-1]["max_seqlen_q"] == 6
    cu.copy_(torch.tensor([0, 2, 2, 9, 10]))
    out = warppack.varlen_attention(q, k, v, cu)
    assert CALLS[-1]["cu_seqlens_q"] == [0, 2, 9, 10] and CALLS[-1]["max_seqlen_q"] == 7
    torch.testing.assert_close(out, reference(q, k, v, [2, 7, 1]), rtol=1e-5, atol=1e-6)


def test_nothing_held_keeps_a_batch_alive(monkeypatch):
    # The collator reuses a buffer only once no tensor of its batch is alive.
    for fused in (False, True):
        if fused:
            install(monkeypatch, "flash_attn")
        q, k, v = qkv(10)
        cu = cu_of([4, 6])
        warppack.varlen_attention(q, k, v, cu)
        gone = weakref.ref(cu)
        del cu
        gc.collect()
        assert gone() is None


def test_a_packed_forward_under_inference_mode_reads_tensors_without_a_version_counter():
    model = tiny_model("persimmon")
    seqs = random_sequences([5, 1, 9], seed=7)
    expected = alone_logits(model, seqs)
    for keys in (POSITION_KEYS, CU_KEYS):
        with torch.inference_mode():
            batch = {key: torch.clone(value) if torch.is_tensor(value) else value
                     for key, value in hand_packed(seqs).items()}
            got = model(**{key: batch[key] for key in keys}, use_cache=False).logits[0]
        assert relative_error(got, expected) < 1e-5


def test_offsets_of_queries_and_keys_with_different_segment_counts_raise():
    q, k, v = qkv(6)
    with pytest.raises(ValueError, match=r"0\.\.6 for 6 query tokens and 0\.\.6 for 6 key tokens \(2 and 1 segments\)"):
        warppack.varlen_attention(q, k, v, cu_of([2, 4]), cu_of([6]))


def test_one_compiling_check_serves_the_whole_attention_layer():
    sources = {path.name: path.read_text() for path in ATTENTION.glob("*.py")}
    assert [name for name, text in sources.items() if "is_compiling" in text] == ["host.py"]
