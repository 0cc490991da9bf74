"""``check_model``: a short probe that packed sequences cannot see each other through this model.

Three short random sequences go through the model as one packed row in every form users feed
(``PackedCollator``'s keys, including ``seq_idx``; ``position_ids`` alone, as transformers'
``DataCollatorWithFlattening`` gives them), in a training-style (``use_cache=False``) and an
eval-style forward (the model's default ``use_cache``), and once each alone. If the form of
``PackedCollator`` (or of the batch you pass) leaks, ``ContaminationError`` names the cause and a fix
that holds, or says why warppack cannot pack the model (state carried along the row, attention that
ignores the implementation, a layer that needs a mask); another form that leaks gets a warning.
Cost: about ten forwards of 3 to 15 tokens.

>>> import transformers, warppack
>>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2)
>>> model = transformers.LlamaForCausalLM(config)
>>> model.set_attn_implementation("warppack")
>>> warppack.check_model(model)["attn_implementation"]
'warppack'
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

import torch

from warppack.attention.dispatch import attention_backend
from warppack.engine.options import check_int, check_seed
from warppack.model.diagnose import Diagnoses, Probe, diagnose_failure, diagnose_leak, static_diagnoses
from warppack.model.probe import PACKED_KEYS, accepts, alone_logits, packed_logits, relative_difference


class ContaminationError(RuntimeError):
    """Packed sequences influenced each other (or the model cannot run packed rows); ``.diagnoses``
    lists ``(cause, fix)`` pairs."""

    def __init__(self, message: str, diagnoses: Diagnoses):
        super().__init__(message)
        self.diagnoses = list(diagnoses)


def _check_arguments(model: Any, batch: Any, lengths: Any, label_pad_id: Any, rtol: Any, seed: Any) -> Tuple[int, ...]:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (the language model you pack for), got {model!r} of type "
                        f"{type(model).__name__}; pass e.g. AutoModelForCausalLM.from_pretrained(name)")
    if not any(p.is_floating_point() for p in model.parameters()):
        raise ValueError(f"model={type(model).__name__} has no floating-point parameters: check_model probes a "
                         "language model that takes input_ids and returns logits (e.g. a transformers *ForCausalLM)")
    if batch is not None and not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a mapping of batch keys (one of your packed batches) or None, got "
                        f"{type(batch).__name__}; pass e.g. batch=next(iter(loader))")
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence):
        raise TypeError(f"lengths must be a sequence of ints, got {lengths!r}; pass e.g. lengths=(7, 3, 5)")
    if len(lengths) < 2:
        raise ValueError(f"lengths={tuple(lengths)!r} needs at least two sequences to pack side by side; pass "
                         "e.g. lengths=(7, 3, 5)")
    checked = tuple(check_int(n, name=f"lengths[{i}]", minimum=1, example=5) for i, n in enumerate(lengths))
    check_int(label_pad_id, name="label_pad_id", example=-100)
    check_seed(seed)
    if rtol is not None and (not isinstance(rtol, numbers.Real) or isinstance(rtol, bool)
                             or not math.isfinite(rtol) or rtol <= 0):
        raise ValueError(f"rtol must be a positive finite relative tolerance or None (1e-4 in fp32, 3e-2 in half "
                         f"precision), got {rtol!r}; pass e.g. rtol=1e-4")
    return checked


def _token_ids(model: torch.nn.Module, lengths: Sequence[int], seed: int, device) -> List[torch.Tensor]:
    """Random ids that avoid every special id the config names (pad, image and audio placeholders, ...)."""
    config: Any = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
    if not vocab:
        get_embeddings: Any = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if callable(get_embeddings) else None
        if embeddings is None:
            raise ValueError(f"model={type(model).__name__} has no config.vocab_size and no input embeddings: "
                             "check_model probes a language model that takes input_ids (e.g. a transformers "
                             "*ForCausalLM)")
        vocab = embeddings.num_embeddings
    special = {v for cfg in (config, text) if cfg is not None for k, v in vars(cfg).items()
               if k.endswith(("token_id", "token_index")) and isinstance(v, int)}
    allowed = torch.tensor([i for i in range(min(3, vocab - 1), min(vocab, 1000)) if i not in special] or [0])
    gen = torch.Generator().manual_seed(seed % 2**63)
    return [allowed[torch.randint(len(allowed), (n,), generator=gen)].to(device) for n in lengths]


def _probes(model: torch.nn.Module, batch: Optional[Mapping[str, Any]]) -> List[Probe]:
    """The packed input forms and cache modes to try: the batch's own keys, or every form users feed.

    Only the batch's form, or without a batch ``PackedCollator``'s, decides: another form that leaks
    is reported (a warning and ``report["other_forms"]``), since the model is safe with the first.
    """
    config = getattr(model, "config", None)
    eval_cache = getattr(config, "use_cache", None)
    if batch is not None:
        forms = [("your batch's keys", tuple(k for k in batch if k in PACKED_KEYS + ("attention_mask",)), True)]
    else:
        forms = [("cu_seq_lens", PACKED_KEYS, True), ("position_ids only", ("position_ids",), False)]
    modes = [("train", False)] + ([("eval", eval_cache)] if eval_cache and accepts(model, "use_cache") else [])
    return [Probe(form, keys, mode, cache, decisive) for form, keys, decisive in forms for mode, cache in modes]


def check_model(model: torch.nn.Module, *, batch: Optional[Mapping[str, Any]] = None,
                lengths: Sequence[int] = (7, 3, 5), label_pad_id: int = -100, rtol: Optional[float] = None,
                seed: int = 0) -> Dict[str, Any]:
    """Raise ``ContaminationError`` if packed sequences influence each other in ``model``.

    ``batch``: one of your real batches; the probe then carries the same keys (with or without
    ``attention_mask``/``position_ids``/``cu_seq_lens_*``) and its labels are checked too. Without it
    ``PackedCollator``'s keys decide, and ``position_ids`` alone (``DataCollatorWithFlattening``) is
    probed too: if only that form leaks, a ``UserWarning`` names the cause and the report lists it
    under ``other_forms``. ``rtol``: the relative tolerance (default 1e-4 in fp32, 3e-2 in half
    precision). Returns a small report: ``attn_implementation``, ``backend`` (the kernel that ran),
    ``max_relative_error`` and ``errors`` per probe.
    """
    lengths = _check_arguments(model, batch, lengths, label_pad_id, rtol, seed)
    params = [p for p in model.parameters() if p.is_floating_point()]
    device, dtype = params[0].device, params[0].dtype
    rtol = rtol if rtol is not None else (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2)
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    seqs = _token_ids(model, lengths, seed, device)
    found = [] if batch is None else static_diagnoses(batch, label_pad_id)
    probes = _probes(model, batch)
    errors: Dict[str, float] = {}
    other: Dict[str, Diagnoses] = {}
    backend = None
    was_training = model.training
    model.eval()  # dropout off; the eval-style probe is exactly where an sdpa cache leaks
    try:
        with torch.no_grad():
            try:
                alone = alone_logits(model, seqs)
            except Exception as error:  # the model cannot run even one sequence: say where and why
                _raise(model, impl, errors, rtol, found + diagnose_failure(model, error, "each sequence alone", impl),
                       failed=True)
            for probe in probes:
                try:
                    packed, callers = packed_logits(model, seqs, probe.keys, probe.use_cache)
                except Exception as error:
                    failure = diagnose_failure(model, error, f"packed row, {probe.label}", impl)
                    if probe.decisive:
                        _raise(model, impl, errors, rtol, found + failure, failed=True)
                    other.setdefault(probe.form, failure)
                    continue
                backend = backend or (attention_backend() if callers else None)
                errors[probe.label] = relative_difference(packed, alone)
            leaking = [p for p in probes if errors.get(p.label, 0.0) > rtol]
            if any(p.decisive for p in leaking):
                found += diagnose_leak(model, seqs, alone, [p for p in leaking if p.decisive], probes, errors, rtol,
                                      impl)
            for form in dict.fromkeys(p.form for p in leaking if not p.decisive):
                other[form] = diagnose_leak(model, seqs, alone, [p for p in leaking if p.form == form], probes, errors,
                                            rtol, impl)
    finally:
        model.train(was_training)
    if found:
        _raise(model, impl, errors, rtol, found)
    for form, diagnoses in other.items():
        lines = "; ".join(f"{cause} (fix: {fix})" for cause, fix in diagnoses)
        warnings.warn(f"warppack.check_model: {type(model).__name__} keeps packed sequences apart with "
                      f"PackedCollator's keys, but not when batches carry {form}: {lines}", UserWarning, stacklevel=2)
    decided = [errors[p.label] for p in probes if p.decisive and p.label in errors]
    report: Dict[str, Any] = {"attn_implementation": impl, "max_relative_error": max(decided, default=0.0),
                              "errors": errors, "other_forms": other}
    if impl == "warppack":
        report["backend"] = backend
    return report


def _raise(model: torch.nn.Module, impl: Optional[str], errors: Mapping[str, float], rtol: float,
           found: Diagnoses, *, failed: bool = False) -> NoReturn:
    lines = "\n".join(f"  - cause: {cause}\n    fix: {fix}" for cause, fix in found)
    name = type(model).__name__
    if failed:
        head = f"{name} fails on the probe (attn_implementation={impl!r})"
    elif any(err > rtol for err in errors.values()):
        measured = ", ".join(f"{label} {err:.1e}" for label, err in errors.items())
        head = (f"packed sequences influence each other in {name} (attn_implementation={impl!r}; relative "
                f"difference vs each sequence alone: {measured}; tolerance {rtol:.0e})")
    else:
        head = f"the batch trains {name} across sequence boundaries"
    raise ContaminationError(f"warppack.check_model: {head}.\n{lines}", found)
