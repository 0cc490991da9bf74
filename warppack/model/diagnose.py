"""Why a model failed ``check_model``, and a fix that holds: every diagnosis is a ``(cause, fix)`` pair.

A leak is narrowed down by re-running the probe with one thing changed (no attention_mask, with
position_ids, without a cache) and, when none of those explains it, by finding the module that
mixes the sequences. Only a module that attends through ``attn_implementation`` can be fixed by
choosing the implementation; anything else (state carried along the row, attention that ignores the
setting, a layer that needs a mask) is reported as beyond what warppack can do, never as a switch
to an implementation that is already set.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from warppack.attention.boundaries import is_marker
from warppack.model.probe import (
    accepts,
    alone_logits,
    inside,
    mixing_modules,
    names_parameter,
    packed_logits,
    raising_module,
    relative_difference,
)

Diagnoses = List[Tuple[str, str]]
UNPACKED = "train {name} on padded batches (attn_implementation 'sdpa' or 'eager'); warppack cannot pack it exactly"


class Probe(NamedTuple):
    """One packed forward of the check: an input form (its keys) in a cache mode."""

    form: str
    keys: Tuple[str, ...]
    mode: str
    use_cache: Optional[bool]
    decisive: bool = True  # a leak here fails the check (else it is reported as a warning)

    @property
    def label(self) -> str:
        return f"{self.form}, {self.mode}"


def static_diagnoses(batch: Mapping[str, Any], label_pad_id: int) -> Diagnoses:
    """Problems visible in the batch itself, without any forward."""
    found = []
    labels, cu = batch.get("labels"), batch.get("cu_seq_lens_q")
    if isinstance(labels, torch.Tensor) and isinstance(cu, torch.Tensor):
        starts = cu[:-1].long()
        starts = starts[starts < labels.shape[-1]]
        if bool((labels.reshape(-1)[starts] != label_pad_id).any()):
            found.append(("the first label of some sequence is not ignored, so its first token is trained "
                          "to be predicted from the previous sequence", f"set it to {label_pad_id} "
                          "(warppack.PackedCollator does)"))
    return found


def can_switch(model: torch.nn.Module) -> bool:
    """Whether ``set_attn_implementation`` can change this model's attention (transformers' own test)."""
    test = getattr(type(model), "_can_set_attn_implementation", None)
    return bool(test()) if callable(test) else True


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def diagnose_failure(model: torch.nn.Module, error: BaseException, stage: str, impl: Optional[str]) -> Diagnoses:
    """The model raised during the probe (``stage``: which forward): where, and whether a mask was missing."""
    name = type(model).__name__
    where = raising_module(model, error)
    if where is None:
        return [(f"{name} raised {_short(error)} ({stage})", UNPACKED.format(name=name))]
    path, module, local = where
    kind = type(module).__name__
    masks = [local[k] for k in ("attention_mask", "causal_mask", "mask") if k in local]
    if any(is_marker(m) for m in masks):
        return [(f"{kind} ('{path}') reads the attention mask itself instead of calling attn_implementation="
                 f"'warppack', so it cannot take the packed row's boundaries ({stage}: {_short(error)})",
                 f"none in warppack: {UNPACKED.format(name=name)}")]
    used_missing_mask = isinstance(error, (TypeError, AttributeError, IndexError)) and "NoneType" in str(error)
    if impl == "warppack" and used_missing_mask and any(m is None for m in masks):
        return [(f"{kind} ('{path}') needs an attention mask, but attn_implementation='warppack' hands unpadded "
                 f"and packed rows none ({stage}: {_short(error)})",
                 f"{name} cannot use attn_implementation='warppack'; " + UNPACKED.format(name=name))]
    return [(f"{name} raised {_short(error)} in {kind} ('{path}') ({stage})",
             "follow the error's own advice if it gives one; otherwise " + UNPACKED.format(name=name))]


def diagnose_leak(model: torch.nn.Module, seqs: Sequence[torch.Tensor], alone: Sequence[torch.Tensor],
                  leaking: Sequence[Probe], probes: Sequence[Probe], errors: Mapping[str, float], rtol: float,
                  impl: Optional[str]) -> Diagnoses:
    """Causes for the probes in ``leaking`` (those whose packed output differed beyond ``rtol`` from
    ``alone``, the logits of each sequence run alone)."""
    name = type(model).__name__

    def passes(keys, use_cache) -> bool:
        return relative_difference(packed_logits(model, seqs, keys, use_cache)[0], alone) <= rtol

    found: Diagnoses = []
    first = leaking[0]
    if "attention_mask" in first.keys and passes(tuple(k for k in first.keys if k != "attention_mask"), False):
        found.append(("the batch carries a 2-D attention_mask, which makes transformers treat the packed row "
                      "as one sequence", "drop 'attention_mask' from packed batches (PackedCollator never adds one)"))
    if not accepts(model, "position_ids"):
        found.append((f"{name}.forward takes no position_ids, so positions run on across sequences",
                      "use a model whose forward accepts position_ids (all transformers decoders do), or add the "
                      "argument to your model"))
    elif "position_ids" not in first.keys and passes(first.keys + ("position_ids",), False):
        found.append(("the batch has no position_ids, so positions run on across sequences",
                      "keep 'position_ids' in packed batches (PackedCollator writes them)"))
    if found:
        return found
    train_leaks = [p for p in leaking if p.mode == "train"]
    if not train_leaks:
        return [_cache_diagnosis(model, seqs, leaking, probes, errors, rtol, impl)]
    if impl == "warppack":
        return _module_diagnoses(model, seqs, train_leaks[0], probes, errors, rtol)
    if not can_switch(model):
        return [(f"{name}'s attention does not go through transformers' AttentionInterface, so "
                 f"set_attn_implementation('warppack') leaves it on {impl!r}, which lets packed sequences see "
                 "each other", f"none in warppack: {UNPACKED.format(name=name)}")]
    if getattr(model, "set_attn_implementation", None) is None or impl is None:
        return [(f"{name}'s attention ignores the sequence boundaries (cu_seq_lens_q/k, position_ids)",
                 "make its attention read cu_seq_lens_q/k (warppack.varlen_attention does)")]
    with _switched_to_warppack(model, impl):
        if _all_pass(model, seqs, train_leaks, rtol):
            return [(f"attn_implementation={impl!r} ignores the sequence boundaries (cu_seq_lens_q/k, position_ids)",
                     "load the model with attn_implementation='warppack' (or call "
                     "model.set_attn_implementation('warppack') after import warppack)")]
        return _module_diagnoses(model, seqs, train_leaks[0], probes, errors, rtol)


@contextlib.contextmanager
def _switched_to_warppack(model: torch.nn.Module, impl: str) -> Iterator[None]:
    """The model on attn_implementation='warppack' inside the block, back on ``impl`` after it."""
    model.set_attn_implementation("warppack")  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_attn_implementation(impl)  # type: ignore[operator]


def _all_pass(model, seqs, probes, rtol) -> bool:
    alone = alone_logits(model, seqs)
    return all(relative_difference(packed_logits(model, seqs, p.keys, p.use_cache)[0], alone) <= rtol for p in probes)


def _cache_diagnosis(model, seqs, leaking, probes, errors, rtol, impl) -> Tuple[str, str]:
    name = type(model).__name__
    if impl == "warppack":
        cu_ok = any(p.mode == "eval" and "cu_seq_lens_q" in p.keys and errors[p.label] <= rtol for p in probes)
        return (f"with a KV cache (eval-style forward, use_cache=True) transformers does not look for packed "
                f"sequences in position_ids, and {name}'s attention does not see position_ids itself",
                "pass use_cache=False to eval forwards (warppack.evaluate_packed does)"
                + (" or feed cu_seq_lens_q/k (PackedCollator writes them)" if cu_ok else ""))
    switchable = can_switch(model) and getattr(model, "set_attn_implementation", None) is not None and impl
    if switchable:
        with _switched_to_warppack(model, impl):
            switchable = _all_pass(model, seqs, leaking, rtol)
    stuck = "" if can_switch(model) else (f" ({name}'s attention does not go through transformers' "
                                          f"AttentionInterface, so set_attn_implementation('warppack') leaves it "
                                          f"on {impl!r})")
    return (f"attn_implementation={impl!r} with a KV cache in eval: transformers only isolates packed sequences "
            f"by position_ids when no cache is used{stuck}",
            "pass use_cache=False to eval forwards (warppack.evaluate_packed does)"
            + (" or use attn_implementation='warppack'" if switchable else ""))


def _module_diagnoses(model, seqs, probe, probes, errors, rtol) -> Diagnoses:
    """The model is on attn_implementation='warppack' and ``probe`` leaks: name the module that mixes."""
    name = type(model).__name__
    _, callers = packed_logits(model, seqs, probe.keys, probe.use_cache)
    names = {id(m): n for n, m in model.named_modules()}
    called = {names.get(id(m), "?") for m in callers}
    culprits = mixing_modules(model, seqs, probe.keys, probe.use_cache, max(rtol, 1e-5))
    found: Diagnoses = []
    for path, module in culprits[:1]:  # later ones only see what the first one mixed
        kind = type(module).__name__
        if not callers:
            found.append((f"{name} never calls attn_implementation='warppack': {kind} ('{path}') mixes the packed "
                          "sequences on its own (attention that ignores the setting, or a recurrent or convolution "
                          "layer carrying state along the row)", f"none in warppack: {UNPACKED.format(name=name)}"))
        elif any(c == path or inside(c, path) for c in called):
            cu_ok = any("cu_seq_lens_q" in p.keys and p.mode == probe.mode and errors[p.label] <= rtol for p in probes)
            if "cu_seq_lens_q" not in probe.keys and cu_ok:
                found.append((f"position_ids alone do not reach {kind} ('{path}'): {name} neither passes them to its "
                              "attention nor builds its mask from them",
                              "feed cu_seq_lens_q/k with every packed batch (warppack.PackedCollator writes them; "
                              "DataCollatorWithFlattening(return_flash_attn_kwargs=True) too)"))
            else:
                found.append((f"{kind} ('{path}') attends across sequences: {name} passes neither the batch's "
                              "cu_seq_lens_q/k nor a mask built from position_ids to its attention",
                              f"none in warppack: {UNPACKED.format(name=name)}"))
        else:
            seq_idx = (" It takes seq_idx, which the probe passed, and still mixed them (its per-sequence path "
                       "may need fused kernels)." if names_parameter(model, "seq_idx") else "")
            found.append((f"{kind} ('{path}') carries state along the packed row outside attention (a recurrent, "
                          "convolution or linear-attention layer, or attention that ignores attn_implementation), "
                          f"so attention boundaries cannot isolate the sequences.{seq_idx}",
                          f"none in warppack: {UNPACKED.format(name=name)}"))
    return found or [(f"{name} mixes the packed sequences outside any submodule (in its own forward)",
                      f"none in warppack: {UNPACKED.format(name=name)}")]
