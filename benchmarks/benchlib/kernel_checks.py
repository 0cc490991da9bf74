"""Equivalence checks of each attention kernel found on a machine, forced one at a time.

* ``attention_checks``: one packed call (GQA, lengths 1 to 2048) per layer feature the kernel declares
  (plain, sliding window, softcap, sinks, non-causal, a static-shape tail): packed vs each sequence
  alone through the same kernel (max |diff|, output and gradients), and vs a float32 reference (exact
  SDPA per sequence), beside the default kernel's own error as the yardstick.
* ``family_checks``: the GPU-shaped families of ``benchlib.families``: packed logits vs each sequence
  alone through the same kernel, loss / logits / gradients vs the same weights in float32, and
  ``warppack.check_model`` with the kernel forced.
* ``compile_check``: a training step under ``torch.compile`` (dynamo + AOT autograd) with a kernel
  forced or chosen automatically: graphs, graph breaks, recompiles.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import warppack
from warppack.attention import kernels as found_kernels
from warppack.attention import registry

BF16_EPS = 2.0 ** -7  # bf16 rounding at the top of a tensor's range: "within bf16 rounding"
#: case -> keyword arguments of varlen_attention (sinks: one learned logit per query head)
CASES: Dict[str, Dict[str, Any]] = {"plain": {}, "window": {"sliding_window": 256}, "softcap": {"softcap": 2.0},
                                    "sinks": {"sinks": True}, "non-causal": {"causal": False},
                                    "static-tail": {"tail": 3}}


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a-b| / max|b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def nrel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a-b||_F / ||b||_F."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def layer_of(device: str, capability: Optional[Tuple[int, int]], dtype: torch.dtype, head_dim: int,
             case: Dict[str, Any]) -> registry.Layer:
    return registry.Layer(device, capability, dtype, head_dim, head_dim, case.get("sliding_window"),
                          case.get("softcap"), 0.0, bool(case.get("sinks")), False)


def refusal(name: str, layer: registry.Layer) -> Optional[str]:
    return registry.refusal(registry.KERNELS[name], layer, found_kernels.installed, forced=True)


def _forced(name: str, fn: Callable[[], Any]) -> Any:
    warppack.set_attention_backend(name)
    try:
        return fn()
    finally:
        warppack.set_attention_backend(None)


def _attend(name: str, q, k, v, sinks, lengths: Sequence[int], case: Dict[str, Any], dout) -> List[torch.Tensor]:
    """[out, dq, dk, dv(, dsinks)] of one packed call through kernel ``name`` (leaves cloned here)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    sink = None if sinks is None else sinks.detach().clone().requires_grad_()
    cu = torch.tensor([0, *lengths], device=q.device).cumsum(0).to(torch.int32)
    if case.get("tail"):  # static_shape: empty segments repeating T at the end, the budget as max length
        cu = torch.cat([cu, cu[-1:].repeat(case["tail"])])
    longest = q.shape[0] if case.get("tail") else max(lengths)
    out = _forced(name, lambda: warppack.varlen_attention(
        *leaves, cu, max_seqlen_q=longest, max_seqlen_k=longest, causal=case.get("causal", True),
        sliding_window=case.get("sliding_window"), softcap=case.get("softcap"), sinks=sink))
    (out.float() * dout).sum().backward()
    grads = [t.grad for t in leaves] + ([] if sink is None else [sink.grad])
    return [out.detach()] + [g.detach() for g in grads]


def _alone(name: str, q, k, v, sinks, lengths: Sequence[int], case: Dict[str, Any], dout) -> List[torch.Tensor]:
    parts, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        parts.append(_attend(name, q[sl], k[sl], v[sl], sinks, [n], {**case, "tail": 0}, dout[sl]))
        start += n
    joined = [torch.cat([p[i] for p in parts]) for i in range(4)]
    return joined + ([torch.stack([p[4] for p in parts]).sum(0)] if sinks is not None else [])


def attention_checks(name: str, baseline: Optional[str], *, device: str, dtype: torch.dtype, heads: Tuple[int, int],
                     head_dim: int, lengths: Sequence[int], capability: Optional[Tuple[int, int]],
                     cases: Sequence[str] = tuple(CASES), tol: float = 1e-2) -> Dict[str, Any]:
    """Each of ``cases`` kernel ``name`` can run: packed vs alone, vs float32, and the yardstick's error
    (``baseline`` where it runs the case and is another kernel, else the bf16 exact path)."""
    gen = torch.Generator(device=device).manual_seed(0)
    total, (hq, hkv) = sum(lengths), heads
    q = torch.randn(total, hq, head_dim, device=device, generator=gen).to(dtype)
    k, v = (torch.randn(total, hkv, head_dim, device=device, generator=gen).to(dtype) for _ in range(2))
    dout = torch.randn(total, hq, head_dim, device=device, generator=gen)
    sinks = torch.randn(hq, device=device, generator=gen).to(dtype)
    results: Dict[str, Any] = {}
    for label in cases:
        case = CASES[label]
        why = refusal(name, layer_of(device, capability, dtype, head_dim, case))
        if why is not None:
            results[label] = {"refused": why}
            continue
        s = sinks if case.get("sinks") else None
        packed = _attend(name, q, k, v, s, lengths, case, dout)
        alone = _alone(name, q, k, v, s, lengths, case, dout)
        ref = _attend("exact_segments", q.float(), k.float(), v.float(), None if s is None else s.float(), lengths,
                      case, dout)
        row: Dict[str, Any] = {
            "alone_max_abs": [(a - b).abs().max().item() for a, b in zip(packed, alone)],
            "alone_rel": max(max_rel(a, b) for a, b in zip(packed, alone)),
            "fp32_out": max_rel(packed[0], ref[0]),
            "fp32_grads": max(max_rel(a, b) for a, b in zip(packed[1:], ref[1:]))}
        layer = layer_of(device, capability, dtype, head_dim, case)
        yard = baseline if baseline not in (None, name) and refusal(baseline, layer) is None else "exact_segments"
        base = _attend(yard, q, k, v, s, lengths, case, dout)
        row.update(yardstick=yard, yard_out=max_rel(base[0], ref[0]),
                   yard_grads=max(max_rel(a, b) for a, b in zip(base[1:], ref[1:])))
        row["ok"] = (row["alone_rel"] <= BF16_EPS and row["fp32_out"] <= max(2 * row["yard_out"], tol)
                     and row["fp32_grads"] <= max(2 * row["yard_grads"], 2 * tol))
        results[label] = row
    return results


def family_checks(name: str, family: str, *, device: str, dtype: torch.dtype, tol: float = 1e-2) -> Dict[str, Any]:
    """One family through kernel ``name``: packed vs alone, vs float32 (loss, logits, grads), check_model."""
    from benchlib.families import family_model, random_sequences

    lengths = [1, 37, 300, 686]
    model = family_model(family).to(device, dtype).train()
    ref32 = copy.deepcopy(model).float()  # the same bf16-rounded weights: only the arithmetic differs
    seqs = random_sequences(lengths, seed=3)
    batch = warppack.PackedCollator(1024)([{"input_ids": s} for s in seqs]).to(device)

    def step(m: Any, kernel: str) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        m.zero_grad(set_to_none=True)
        out = _forced(kernel, lambda: m(**batch))
        out.loss.backward()
        grads = {n: p.grad.detach().float() for n, p in m.named_parameters() if p.grad is not None}
        return out.loss.detach().float(), out.logits.detach()[0, : sum(lengths)], grads

    try:
        loss, logits, grads = step(model, name)
    except ValueError as refused:  # a family feature the kernel lacks: skipped, not approximated
        return {"refused": str(refused).split(": ", 1)[-1]}
    loss32, logits32, grads32 = step(ref32, "exact_segments")
    yard_loss, yard_logits, _ = step(model, "exact_segments")  # bf16 SDPA per sequence: the yardstick
    one = warppack.PackedCollator(1024)  # each sequence alone, still through the varlen kernel (cu [0, n])

    def alone_logits(s: torch.Tensor) -> torch.Tensor:
        return model(**one([{"input_ids": s}]).to(device)).logits[0, : len(s)]

    with torch.no_grad():
        alone = torch.cat([_forced(name, functools.partial(alone_logits, s)) for s in seqs])
    row = {"alone_nrel": nrel(logits, alone), "loss_rel": abs(loss.item() - loss32.item()) / abs(loss32.item()),
           "logits_nrel": nrel(logits, logits32), "yard_logits_nrel": nrel(yard_logits, logits32),
           "grad_nrel_max": max(nrel(g, grads32[n]) for n, g in grads.items())}
    report = _forced(name, lambda: warppack.check_model(model))
    row.update(check_model=report.get("backend"), check_model_error=report.get("max_relative_error"))
    row["ok"] = (row["alone_nrel"] <= tol and row["loss_rel"] <= tol and report.get("backend") == name
                 and row["logits_nrel"] <= max(2 * row["yard_logits_nrel"], tol))
    return row


def compile_check(name: Optional[str], *, device: str, dtype: torch.dtype) -> Dict[str, Any]:
    """A static-shape training step of the llama family under torch.compile, ``name`` forced (None: automatic)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    from benchlib.families import family_model, random_sequences

    model = family_model("llama").to(device, dtype).train()
    collate = warppack.PackedCollator(512, static_shape=True, max_sequences=16)
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=counter)
    losses = []
    for lengths in ([5, 90, 3, 300], [512], [1, 2, 3, 4, 5, 6, 7, 8]):
        batch = collate([{"input_ids": s} for s in random_sequences(lengths)]).to(device)
        out = _forced(name, lambda: compiled(**batch)) if name else compiled(**batch)
        out.loss.backward()
        losses.append(out.loss.item())
    def eager() -> Tuple[float, Optional[str]]:
        return model(**batch).loss.item(), warppack.attention_backend()

    eager_loss, eager_kernel = _forced(name, eager) if name else eager()
    return {"graphs": counter.frame_count, "graph_breaks": sum(counters["graph_break"].values()),
            "break_reasons": sorted(str(k)[:160] for k in counters["graph_break"]),
            "recompiles": sum(counters["recompiles"].values()), "eager_kernel": eager_kernel,
            "finite": bool(torch.isfinite(torch.tensor(losses + [eager_loss])).all())}
