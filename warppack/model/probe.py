"""The forwards behind ``check_model``: one packed row, each sequence alone, and who mixes them.

``packed_logits`` runs the sequences as one row with the keys of one input form; ``alone_logits``
runs each sequence by itself the way the packed row presents it (``position_ids`` from 0, as the
packed row restarts them, whatever default the model would pick). When the two differ,
``mixing_modules`` hooks every submodule and names the deepest ones whose inputs still hold each
sequence unmixed but whose output mixes them; ``raising_module`` finds the module an exception came
from.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from warppack.attention.hf import recording_callers

#: Every key a ``PackedBatch`` hands the model besides ``input_ids``/``labels``.
PACKED_KEYS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes ``name`` (by name, or through ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def names_parameter(model: torch.nn.Module, name: str) -> bool:
    """Whether ``model.forward`` names ``name`` itself (``**kwargs`` alone does not read it)."""
    return name in inspect.signature(model.forward).parameters


def _logits(output: Any) -> torch.Tensor:
    if hasattr(output, "logits"):
        logits = output.logits
    elif isinstance(output, (tuple, list)):
        logits = output[0]
    else:
        logits = output
    return logits.float().reshape(-1, logits.shape[-1])


def packed_inputs(seqs: Sequence[torch.Tensor], keys: Sequence[str]) -> Dict[str, Any]:
    """The packed row of ``seqs`` with the ``keys`` of one input form (``PackedBatch`` conventions)."""
    seqs = list(seqs)
    device = seqs[0].device
    lengths = [len(s) for s in seqs]
    cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
    full = {
        "input_ids": torch.cat(seqs)[None],
        "position_ids": torch.cat([torch.arange(n, device=device) for n in lengths])[None],
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths),
        "seq_idx": torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32, device=device),
                                           torch.tensor(lengths, device=device))[None],
        "attention_mask": torch.ones(1, sum(lengths), dtype=torch.long, device=device),
    }
    return {k: v for k, v in full.items() if k == "input_ids" or k in keys}


def _cache_kwargs(model: torch.nn.Module, use_cache: Optional[bool]) -> Dict[str, Any]:
    return {"use_cache": use_cache} if accepts(model, "use_cache") else {}


def packed_logits(model: torch.nn.Module, seqs: Sequence[torch.Tensor], keys: Sequence[str],
                  use_cache: Optional[bool]) -> Tuple[torch.Tensor, List[Any]]:
    """``[T, V]`` logits of the packed row, and the modules that called warppack attention."""
    inputs = {k: v for k, v in packed_inputs(seqs, keys).items() if k == "input_ids" or accepts(model, k)}
    with recording_callers() as callers:
        out = model(**inputs, **_cache_kwargs(model, use_cache))
    return _logits(out), callers


def alone_inputs(model: torch.nn.Module, seq: torch.Tensor) -> Dict[str, Any]:
    inputs: Dict[str, Any] = {"input_ids": seq[None]}
    if accepts(model, "position_ids"):
        inputs["position_ids"] = torch.arange(len(seq), device=seq.device)[None]
    return {**inputs, **_cache_kwargs(model, False)}


def _alone_forward(model: torch.nn.Module, seq: torch.Tensor) -> Any:
    return model(**alone_inputs(model, seq))


def alone_logits(model: torch.nn.Module, seqs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[n, V]`` logits of each sequence run by itself."""
    return [_logits(_alone_forward(model, seq)) for seq in seqs]


def relative_difference(packed: torch.Tensor, alone: Sequence[torch.Tensor]) -> float:
    """max over sequences of max|packed - alone| / max|alone| (masked-out logits, -inf in both, agree)."""
    worst = 0.0
    for got, ref in zip(torch.split(packed, [len(r) for r in alone]), alone):
        both_inf = torch.isinf(got) & torch.isinf(ref) & (torch.sign(got) == torch.sign(ref))
        diff = torch.where(both_inf, torch.zeros_like(got), got - ref).abs()
        scale = torch.where(torch.isinf(ref), torch.zeros_like(ref), ref).abs().max().clamp_min(1e-6)
        worst = max(worst, float(diff.max() / scale))
    return worst


# ---- which module mixes the sequences -------------------------------------------------------------------
def _tensors(value: Any, path: str = "") -> Dict[str, torch.Tensor]:
    """The tensors inside ``value`` (tensors, tuples, lists, mappings, model outputs) by their path."""
    if isinstance(value, torch.Tensor):
        return {path: value.detach()}
    items: Sequence[Tuple[Any, Any]] = ()
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    found: Dict[str, torch.Tensor] = {}
    for key, item in items:
        found.update(_tensors(item, f"{path}/{key}"))
    return found


Calls = Dict[str, List[Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]]]


def _record(model: torch.nn.Module, run: Callable[[], Any]) -> Calls:
    """Per module name, the (input tensors, output tensors) of each call during ``run()``."""
    calls: Calls = {}

    def hook(name):
        def record(module, args, kwargs, output):
            calls.setdefault(name, []).append((_tensors({**dict(enumerate(args)), **kwargs}), _tensors(output)))
        return record

    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in model.named_modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _token_dim(packed: torch.Tensor, alone: Sequence[torch.Tensor], lengths: Sequence[int]) -> Optional[int]:
    for dim in range(packed.dim()):
        if packed.shape[dim] != sum(lengths):
            continue
        if all(a.dim() == packed.dim() and a.shape[dim] == n
               and all(a.shape[d] == packed.shape[d] for d in range(packed.dim()) if d != dim)
               for a, n in zip(alone, lengths)):
            return dim
    return None


def _mixed(packed: torch.Tensor, alone: Sequence[torch.Tensor], lengths: Sequence[int], rtol: float) -> Optional[bool]:
    """Whether ``packed`` differs from the sequences' own tensors (None: not a per-token tensor)."""
    dim = _token_dim(packed, alone, lengths)
    if dim is None:
        return None
    for got, ref in zip(torch.split(packed, list(lengths), dim=dim), alone):
        if not got.is_floating_point():
            if not torch.equal(got, ref):
                return True
            continue
        scale = float(ref.float().abs().max()) or 1.0
        if float((got.float() - ref.float()).abs().max()) / scale > rtol:
            return True
    return False


def _any_mixed(packed: Dict[str, torch.Tensor], alone: Sequence[Dict[str, torch.Tensor]], lengths: Sequence[int],
               rtol: float) -> bool:
    return any(_mixed(t, [a[path] for a in alone], lengths, rtol)
               for path, t in packed.items() if all(path in a for a in alone))


def mixing_modules(model: torch.nn.Module, seqs: Sequence[torch.Tensor], keys: Sequence[str],
                   use_cache: Optional[bool], rtol: float) -> List[Tuple[str, torch.nn.Module]]:
    """The deepest modules whose inputs hold each sequence unmixed and whose output mixes them."""
    lengths = [len(s) for s in seqs]
    packed = _record(model, lambda: packed_logits(model, seqs, keys, use_cache))
    alone = [_record(model, functools.partial(_alone_forward, model, s)) for s in seqs]
    culprits = []
    for name, calls in packed.items():  # hooks fire as calls end: inner modules come first
        refs = [a.get(name, []) for a in alone]
        for k, (inputs, outputs) in enumerate(calls[:min(len(r) for r in refs)]):
            if (_any_mixed(outputs, [r[k][1] for r in refs], lengths, rtol)
                    and not _any_mixed(inputs, [r[k][0] for r in refs], lengths, rtol)):
                culprits.append(name)
                break
    modules = dict(model.named_modules())
    return [(n, modules[n]) for n in culprits if not any(o != n and inside(o, n) for o in culprits)]


def inside(inner: str, outer: str) -> bool:
    """Module path ``inner`` lies within ``outer`` (every path lies within the root, ``""``)."""
    return outer == "" or inner.startswith(outer + ".")


def raising_module(model: torch.nn.Module,
                   error: BaseException) -> Optional[Tuple[str, torch.nn.Module, Dict[str, Any]]]:
    """The innermost module of ``model`` whose forward the traceback of ``error`` passes through."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    tb = error.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names and isinstance(owner, torch.nn.Module):
            found = (names[id(owner)], owner, dict(tb.tb_frame.f_locals))
        tb = tb.tb_next
    return found
