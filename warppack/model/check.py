"""``check_model``: a short probe that packed sequences cannot see each other through this model.

Three short random sequences go through the model once packed (with the keys your batches carry)
and once each alone; if the packed outputs differ, a few variants of the probe find the likely
cause and ``ContaminationError`` names it with the fix. Cost: eight forwards of 3 to 15 tokens.

>>> import transformers, warppack
>>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2)
>>> model = transformers.LlamaForCausalLM(config)
>>> model.set_attn_implementation("warppack")
>>> warppack.check_model(model)["attn_implementation"]
'warppack'
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence

import torch

_last_packed_backend: list[Optional[str]] = [None]  # the kernel of the last packed probe forward
PACKED_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


class ContaminationError(RuntimeError):
    """Packed sequences influenced each other; ``.diagnoses`` lists ``(cause, fix)`` pairs."""

    def __init__(self, message: str, diagnoses):
        super().__init__(message)
        self.diagnoses = list(diagnoses)


def _accepts(model, name: str) -> bool:
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _logits(output) -> torch.Tensor:
    logits = output.logits if hasattr(output, "logits") else output[0] if isinstance(output, tuple) else output
    return logits.float().reshape(-1, logits.shape[-1])


def _probe_error(model, seqs, keys, use_cache) -> float:
    """Max relative difference between the packed forward and each sequence alone."""
    device = seqs[0].device
    lengths = [len(s) for s in seqs]
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    full = {"position_ids": torch.cat([torch.arange(n, device=device) for n in lengths])[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths),
            "max_length_k": max(lengths), "attention_mask": torch.ones(1, sum(lengths), dtype=torch.long,
                                                                       device=device)}
    inputs = {k: v for k, v in full.items() if k in keys and _accepts(model, k)}
    cache = {"use_cache": use_cache} if _accepts(model, "use_cache") else {}
    alone_cache = {"use_cache": False} if cache else {}
    packed = _logits(model(input_ids=torch.cat(seqs)[None], **inputs, **cache))
    from warppack.attention.dispatch import attention_backend

    _last_packed_backend[0] = attention_backend()  # before the one-by-one forwards overwrite it
    worst = 0.0
    for seq, got in zip(seqs, torch.split(packed, lengths)):
        ref = _logits(model(input_ids=seq[None], **alone_cache))
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item())
    return worst


def _static_diagnoses(batch: Mapping[str, Any], label_pad_id: int):
    # An all-ones attention_mask is only a problem if the probe (which carries it) leaks: see _diagnose.
    found = []
    labels, cu = batch.get("labels"), batch.get("cu_seq_lens_q")
    if labels is not None and cu is not None:
        starts = cu[:-1].long()
        starts = starts[starts < labels.shape[-1]]
        if bool((labels.reshape(-1)[starts] != label_pad_id).any()):
            found.append(("the first label of some sequence is not ignored, so its first token is trained "
                          "to be predicted from the previous sequence", f"set it to {label_pad_id} "
                          "(warppack.PackedCollator does)"))
    return found


def check_model(model, *, batch: Optional[Mapping[str, Any]] = None, lengths: Sequence[int] = (7, 3, 5),
                label_pad_id: int = -100, rtol: Optional[float] = None, seed: int = 0) -> dict:
    """Raise ``ContaminationError`` if packed sequences influence each other in ``model``.

    ``batch``: one of your real batches; the probe then carries the same keys (with or without
    ``attention_mask``/``position_ids``/``cu_seq_lens_*``) and its labels are checked too. Without it
    the probe uses ``PackedCollator``'s keys. Both a training-style forward (``use_cache=False``) and
    an eval-style one (the model's default ``use_cache``) are probed. Returns a small report.
    """
    params = list(model.parameters())
    device = params[0].device
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    rtol = rtol if rtol is not None else (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2)
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    vocab = getattr(config, "vocab_size", None) or model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(min(3, vocab - 1), min(vocab, 1000), (n,), generator=gen).to(device) for n in lengths]
    keys = set(PACKED_KEYS) if batch is None else set(batch) & set(PACKED_KEYS + ("attention_mask",))
    found = [] if batch is None else _static_diagnoses(batch, label_pad_id)
    was_training = model.training
    model.eval()  # dropout off; the eval-style probe is exactly where an sdpa cache leaks
    try:
        with torch.no_grad():
            errors = {mode: _probe_error(model, seqs, keys, use_cache) for mode, use_cache in
                      (("train", False), ("eval", getattr(config, "use_cache", None)))}
            worst = max(errors.values())
            if worst > rtol:
                found += _diagnose(model, seqs, keys, errors, rtol, impl)
    finally:
        model.train(was_training)
    report = {"attn_implementation": impl, "max_relative_error": worst, "errors": errors}
    if impl == "warppack":
        report["backend"] = _last_packed_backend[0]
    if found:
        lines = "\n".join(f"  - cause: {cause}\n    fix: {fix}" for cause, fix in found)
        raise ContaminationError(
            f"warppack.check_model: packed sequences influence each other in {type(model).__name__} "
            f"(attn_implementation={impl!r}; relative difference vs each sequence alone: train-style "
            f"{errors['train']:.1e}, eval-style {errors['eval']:.1e}, tolerance {rtol:.0e}).\n{lines}", found)
    return report


def _diagnose(model, seqs, keys, errors, rtol, impl):
    found = []
    if "attention_mask" in keys and _probe_error(model, seqs, keys - {"attention_mask"}, False) <= rtol:
        found.append(("the batch carries a 2-D attention_mask, which makes transformers treat the packed row "
                      "as one sequence", "drop 'attention_mask' from packed batches (PackedCollator never adds one)"))
    if not _accepts(model, "position_ids"):
        found.append((f"{type(model).__name__}.forward takes no position_ids, so positions run on across "
                      "sequences", "use a model whose forward accepts position_ids (all transformers decoders "
                      "do), or add the argument to your model"))
    elif "position_ids" not in keys and _probe_error(model, seqs, keys | {"position_ids"}, False) <= rtol:
        found.append(("the batch has no position_ids, so positions run on across sequences",
                      "keep 'position_ids' in packed batches (PackedCollator writes them)"))
    if not found and errors["train"] <= rtol:
        found.append((f"attn_implementation={impl!r} with a KV cache in eval: transformers only isolates "
                      "packed sequences by position_ids when no cache is used", "pass use_cache=False to eval "
                      "forwards (warppack.evaluate_packed does) or use attn_implementation='warppack'"))
    if not found:
        found.append((f"attn_implementation={impl!r} ignores the sequence boundaries (cu_seq_lens_q/k, "
                      "position_ids)", "load the model with attn_implementation='warppack' (or call "
                      "model.set_attn_implementation('warppack') after import warppack)"))
    return found
