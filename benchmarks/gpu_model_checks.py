"""GPU checks of the model integration in one run (about 1.5 min on an H200; the benchmark is opt-in).

1. kernels: ``varlen_attention`` in bf16 vs a float64 per-sequence reference (GQA, sliding window,
   empty static-shape tail), automatic choice (must be ``torch_varlen`` without flash-attn), forced
   ``aten_flash`` and ``exact_segments``, dropout through ``aten_flash``.
2. models: tiny-but-GPU-shaped transformers families in bf16, packed vs each sequence alone
   (logits within 1e-2 relative), asserting which kernels ran; ``check_model``.
3. torch.compile (inductor): static_shape batches of changing composition keep one graph (dynamo's
   counters: no recompile, no graph break); compiled and eager bf16 logits each measured against an
   fp32 eager forward (compiled must be no further than 1.5x eager's error, or within 1e-2); packed
   vs each sequence alone through the same compiled graph within 1e-2; which attention op is in the
   graph. Then a diagnosis: compiled vs eager again with Inductor's ``emulate_precision_casts``.
4. ``--benchmark``: the attention benchmark (``bench_attention.py``): attention alone and ~1B Llama
   fwd+bwd, four methods.

Run it where warppack is installed (``pip install -e .``)::

    python benchmarks/gpu_model_checks.py --out out/gpu
    python benchmarks/gpu_model_checks.py --smoke --out /tmp/smoke   # CPU, fp32: checks the script itself

Writes ``gpu_model_checks.json`` and ``gpu_model_checks.md`` into ``--out`` (default ``$OUT`` or
./out); exits 1 if any check failed (every section still runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import torch
from benchlib import attention as attention_benchmark
from benchlib.families import FAMILIES, SHAPE, family_model, random_sequences
from benchlib.kernel_checks import max_rel, nrel

import warppack
from warppack.attention import dispatch, kernels, registry

EXACT_ONLY = {"gemma2": registry.SOFTCAP, "gpt_oss": registry.SINKS}  # exact unless the fused kernel has it
COMPILE_FACTOR = 1.5  # compiled bf16 may be this much further from fp32 than eager bf16 (or within tol)


class Run:
    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.dtype = torch.float32 if smoke else torch.bfloat16
        self.tol = 1e-4 if smoke else 1e-2
        # What the automatic choice must be: the first fused kernel of the order installed there.
        self.fused = "exact_segments" if smoke else next(
            name for name in ("flash_attn_4", "flash_attn_3", "flash_attn", "torch_varlen") if kernels.entry(name))
        self.results: Dict[str, Any] = {}
        self.failures: List[str] = []
        self.seconds: Dict[str, float] = {}
        self.start = time.time()

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        print(f"\n== {name} ({time.time() - self.start:.0f}s)", flush=True)
        start = time.time()
        try:
            self.results[name] = fn()
        except Exception as error:  # noqa: BLE001 - keep going: the other sections still count
            traceback.print_exc()
            self.results[name] = {"error": f"{type(error).__name__}: {error}"}
            self.failures.append(f"{name}: {type(error).__name__}: {str(error)[:300]}")
        self.seconds[name] = round(time.time() - start, 1)

    def expect(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)


class Backends:
    """Collects every kernel name warppack records during a block (a model runs many layers)."""

    def __enter__(self) -> "Backends":
        self.names: Set[str] = set()
        self._orig = dispatch._record

        def record(name: str) -> None:
            self.names.add(name)
            self._orig(name)

        dispatch._record = record
        return self

    def __exit__(self, *exc: object) -> None:
        dispatch._record = self._orig


def seq_errors(packed: torch.Tensor, alone: torch.Tensor, lengths: Sequence[int]) -> dict:
    """||diff||/||ref|| over all real tokens (the criterion), the worst single sequence's (a 1-token
    sequence is one bf16 logit vector: a few ulps, or a flipped MoE route, decide it), max-relative and
    mean |diff|."""
    per, start = [], 0
    for n in lengths:
        per.append(nrel(packed[start:start + n], alone[start:start + n]))
        start += n
    return {"rel_error": nrel(packed, alone), "worst_sequence_rel_error": max(per), "max_rel_error": max_rel(packed, alone),
            "mean_abs_error": (packed.float() - alone.float()).abs().mean().item()}


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Sequence[int],
              window: Optional[int] = None) -> torch.Tensor:
    """Per-sequence causal attention in float64 (kv heads repeated)."""
    outs, start, groups = [], 0, q.shape[1] // k.shape[1]
    for n in lengths:
        qs, ks, vs = (x[start:start + n].double().transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        i, j = torch.arange(n, device=q.device)[:, None], torch.arange(n, device=q.device)[None, :]
        allowed = (j <= i) & ((i - j < window) if window else True)
        scores = (qs @ ks.transpose(-1, -2) * q.shape[-1] ** -0.5).masked_fill(~allowed, float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        start += n
    return torch.cat(outs)


def kernel_checks(run: Run) -> dict:
    out, lengths = {}, [1, 77, 300, 512, 134]  # 1024 tokens; 1 and a long one
    total = sum(lengths)
    cu = torch.tensor([0] + lengths, device=run.device).cumsum(0).to(torch.int32)
    tail = torch.cat([cu, cu.new_full((5,), total)])  # static_shape: empty segments at the end
    gen = torch.Generator(device=run.device).manual_seed(0)
    q = torch.randn(total, 8, 64, device=run.device, generator=gen).to(run.dtype)
    k, v = (torch.randn(total, 2, 64, device=run.device, generator=gen).to(run.dtype) for _ in range(2))
    cases = [("auto", None, None, cu), ("auto-window", None, 64, cu), ("auto-empty-tail", None, None, tail),
             ("aten_flash", "aten_flash", None, cu), ("aten_flash-window", "aten_flash", 64, cu),
             ("exact_segments", "exact_segments", 64, cu)]
    for name, forced, window, cus in cases:
        if run.smoke and forced == "aten_flash":
            continue
        warppack.set_attention_backend(forced)
        try:
            qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
            got = warppack.varlen_attention(qq, kk, vv, cus, max_seqlen_q=512, max_seqlen_k=512, sliding_window=window)
            backend = warppack.attention_backend()
            got.float().square().sum().backward()
        finally:
            warppack.set_attention_backend(None)
        rq, rk, rv = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = reference(rq, rk, rv, lengths, window)
        ref.square().sum().backward()
        err = max_rel(got, ref)
        grad_err = max(max_rel(a.grad, b.grad) for a, b in ((qq, rq), (kk, rk), (vv, rv))
                       if a.grad is not None and b.grad is not None)
        out[name] = {"backend": backend, "rel_error": err, "grad_rel_error": grad_err}
        want = forced or run.fused
        run.expect(backend == want and err <= run.tol,
                   f"kernel {name}: backend {backend} (want {want}), rel error {err:.1e}, grads {grad_err:.1e}")
    if not run.smoke:  # dropout: only aten_flash (or flash-attn) can; must run fwd+bwd and stay finite
        qq = q.detach().requires_grad_()
        got = warppack.varlen_attention(qq, k, v, cu, dropout=0.1)
        got.float().sum().backward()
        out["dropout"] = {"backend": warppack.attention_backend()}
        finite = qq.grad is not None and bool(torch.isfinite(qq.grad).all())
        run.expect(warppack.attention_backend() == "aten_flash" and finite,
                   f"dropout 0.1 ran through {warppack.attention_backend()}, finite grads")
    return out


def model_checks(run: Run) -> dict:
    budget = 1024
    out: Dict[str, Any] = {}
    batches = [([1, 37, 300, 686], False), ([budget], False), ([1, 37, 300], True)]  # last: static tail
    for family in FAMILIES:
        model = family_model(family).to(run.device, run.dtype)
        row: Dict[str, Any] = {}
        for lengths, static in batches:
            collate = warppack.PackedCollator(budget, static_shape=static, max_sequences=8)
            seqs = [s.to(run.device) for s in random_sequences(lengths, seed=len(lengths))]
            batch = collate([{"input_ids": s.cpu()} for s in seqs]).to(run.device)
            with torch.no_grad(), Backends() as used:
                packed = model(**batch).logits[0, : sum(lengths)]
            # Reference 1 (the criterion): each sequence alone through the SAME kernel (cu_seqlens [0, n]),
            # so only packing differs. Reference 2 (reported): each sequence alone through eager attention.
            with torch.no_grad(), Backends() as used_alone:
                same = torch.cat([model(input_ids=s[None], position_ids=torch.arange(len(s), device=run.device)[None],
                                        cu_seq_lens_q=cu1, cu_seq_lens_k=cu1, max_length_q=len(s), max_length_k=len(s),
                                        use_cache=False).logits[0]
                                  for s in seqs
                                  for cu1 in [torch.tensor([0, len(s)], dtype=torch.int32, device=run.device)]])
            model.set_attn_implementation("eager")
            with torch.no_grad():
                alone = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
            model.set_attn_implementation("warppack")
            key = f"{lengths}{' static' if static else ''}"
            row[key] = {**seq_errors(packed, same, lengths), "backends": sorted(used.names),
                        "alone_backends": sorted(used_alone.names),
                        "vs_eager": seq_errors(packed, alone, lengths)}
            needs = EXACT_ONLY.get(family)
            want = "exact_segments" if needs and needs not in registry.KERNELS[run.fused].features else run.fused
            r = row[key]
            run.expect(used.names == {want} and used_alone.names == {want} and r["rel_error"] <= run.tol,
                       f"{family} {key}: kernels {sorted(used.names)} (want {want}), ||diff||/||ref|| "
                       f"{r['rel_error']:.1e} (worst sequence {r['worst_sequence_rel_error']:.1e}, max-rel {r['max_rel_error']:.1e}, mean|diff| {r['mean_abs_error']:.1e}); "
                       f"vs eager alone {r['vs_eager']['rel_error']:.1e} (max-rel {r['vs_eager']['max_rel_error']:.1e})")
        # one fwd+bwd: loss and grads vs the token-weighted per-sequence reference (reported)
        seqs = random_sequences([5, 200, 700], seed=9)
        batch = warppack.PackedCollator(budget)([{"input_ids": s} for s in seqs]).to(run.device)
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        model.set_attn_implementation("eager")
        count = sum(len(s) - 1 for s in seqs)
        ref = sum(model(input_ids=s[None].to(run.device), labels=s[None].to(run.device)).loss * (len(s) - 1) / count
                  for s in seqs)
        ref.backward()
        model.set_attn_implementation("warppack")
        row["loss_rel_error"] = abs(loss.item() - ref.item()) / abs(ref.item())
        row["grad_rel_error_max"] = max(max_rel(p.grad, grads[n]) for n, p in model.named_parameters()
                                        if n in grads and p.grad is not None)
        print(f"  {family}: loss rel error {row['loss_rel_error']:.1e}, worst parameter grad {row['grad_rel_error_max']:.1e}")
        run.expect(row["loss_rel_error"] <= run.tol, f"{family}: packed loss within {run.tol:g} of the token-weighted mean")
        out[family] = row
    # Ordinary batches still work: left padding + 2-D mask, then KV-cache generation past the window.
    model = family_model("mistral").to(run.device, run.dtype)
    seqs = random_sequences([40, 9], seed=5)
    ids = torch.zeros(2, 40, dtype=torch.long)
    mask = torch.zeros(2, 40, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, 40 - len(s):], mask[i, 40 - len(s):] = s, 1
    ids, mask = ids.to(run.device), mask.to(run.device)
    with torch.no_grad(), Backends() as used:
        got = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    refs = {}
    for impl in ("sdpa", "eager"):  # sdpa: the same masked SDPA kernel (the criterion); eager: reported
        model.set_attn_implementation(impl)
        with torch.no_grad():
            refs[impl] = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    model.set_attn_implementation("warppack")
    expected = refs["sdpa"]
    out["padded_and_generate"] = {"rel_error": nrel(got, expected), "max_rel_error": max_rel(got, expected),
                                  "vs_eager": nrel(got, refs["eager"]),
                                  "backends": sorted(used.names), "generated_shape": list(generated.shape)}
    run.expect(used.names == {"exact_masked"} and nrel(got, expected) <= run.tol and generated.shape[1] == 48,
               f"padded batch + generate: kernels {sorted(used.names)}, ||diff||/||ref|| vs sdpa {nrel(got, expected):.1e} "
               f"(max-rel {max_rel(got, expected):.1e}; vs eager {nrel(got, refs['eager']):.1e})")
    report = warppack.check_model(family_model("llama").to(run.device, run.dtype))
    out["check_model"] = report
    run.expect(report.get("backend") == run.fused, f"check_model passes (backend {report.get('backend')})")
    return out


COMPOSITIONS = ([5, 90, 3, 300], [512], [1, 2, 3, 4, 5, 6, 7, 8], [400, 1], [64] * 8)


def ratio(row: dict) -> str:
    return "-" if row["ratio"] is None else f"{row['ratio']:.2f}"


def graph_kernels(graphs: Sequence[Any]) -> list:
    """Attention ops inside dynamo's graphs (warppack's Python side effects do not run in them)."""
    names = {"_varlen_attn": "torch_varlen", "_flash_attention_forward": "aten_flash", "flash_attn": "flash_attn",
             "scaled_dot_product_attention": "sdpa (exact_block_diagonal)"}
    found: Set[str] = set()
    for graph in graphs:
        for node in graph.graph.nodes:
            target = str(node.target) if node.op == "call_function" else ""
            found.update(kernel for key, kernel in names.items() if key in target)
    return sorted(found)


def compile_check(run: Run) -> dict:
    """Inductor vs eager, both measured against fp32: in bf16 they round differently, so the question is
    whether compiled is *further from the truth* than eager, not whether the two agree."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    ref32 = family_model("llama").to(run.device)  # fp32, warppack attention (exact_segments in fp32)
    model = copy.deepcopy(ref32).to(run.dtype).train()
    ref32.load_state_dict(model.state_dict())  # the same bf16-rounded weights: only the arithmetic differs
    collate = warppack.PackedCollator(512, static_shape=True, max_sequences=16)
    counter = CompileCounterWithBackend("aot_eager" if run.smoke else "inductor")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=counter)
    rows, steps = [], []
    for lengths in COMPOSITIONS:
        seqs = random_sequences(lengths)
        batch = collate([{"input_ids": s} for s in seqs]).to(run.device)
        start = time.time()
        out = compiled(**batch)  # a training step: grad enabled, so every call below reuses this graph
        out.loss.backward()
        if run.device == "cuda":
            torch.cuda.synchronize()
        steps.append(time.time() - start)
        real = sum(lengths)
        got = out.logits[0, :real].detach()
        # Each sequence alone through the same compiled graph (a static_shape batch of one sequence).
        alone = torch.cat([compiled(**collate([{"input_ids": s}]).to(run.device)).logits[0, :len(s)].detach()
                           for s in seqs])
        with torch.no_grad():
            with Backends() as used:
                eager = model(**batch).logits[0, :real]
            fp32 = ref32(**batch).logits[0, :real]
        compiled_err, eager_err = nrel(got, fp32), nrel(eager, fp32)
        rows.append({"lengths": lengths, "compiled_vs_fp32": compiled_err, "eager_vs_fp32": eager_err,
                     "ratio": compiled_err / eager_err if eager_err else None, "compiled_vs_eager": nrel(got, eager),
                     "packed_vs_alone_compiled": seq_errors(got, alone, lengths)["rel_error"],
                     "eager_backends": sorted(used.names)})
    model.zero_grad(set_to_none=True)
    breaks = {str(k)[:300]: v for k, v in counters["graph_break"].items()}
    recompiles = {str(k)[:300]: v for k, v in counters["recompiles"].items()}
    for reason, n in breaks.items():
        print(f"  graph break x{n}: {reason}")
    in_graph = graph_kernels(counter.graphs)
    targets = sorted({str(n.target) for g in counter.graphs for n in g.graph.nodes
                      if n.op == "call_function" and "att" in str(n.target).lower()})
    result = {"graphs": counter.frame_count, "compositions": len(COMPOSITIONS), "rows": rows, "step_s": steps,
              "graph_kernels": in_graph, "graph_attention_targets": targets, "graph_breaks": breaks, "recompiles": recompiles,
              "unique_graphs": counters["stats"].get("unique_graphs")}
    run.expect(counter.frame_count == 1 and not recompiles and not breaks,
               f"compile: {counter.frame_count} graph(s), {len(recompiles)} recompile reason(s), {len(breaks)} graph "
               f"break(s) for {len(COMPOSITIONS)} compositions + {sum(map(len, COMPOSITIONS))} single sequences "
               f"(first step {steps[0]:.1f}s incl. compile, then {sum(steps[1:]) / (len(steps) - 1) * 1e3:.0f} ms)")
    # In the graph: the custom op torch's varlen_attn wraps (its name, not warppack's, is what dynamo keeps;
    # a fused kernel of any name passes, a dense SDPA over the packed row would not).
    fused_graph = bool(in_graph) and "sdpa (exact_block_diagonal)" not in in_graph
    eager_used = set().union(*(r["eager_backends"] for r in rows))
    run.expect((in_graph == ["sdpa (exact_block_diagonal)"] if run.smoke else fused_graph) and eager_used == {run.fused},
               f"compile: attention ops in the graph {in_graph} ({targets}), eager steps ran {sorted(eager_used)} "
               f"(want {run.fused})")
    for r in rows:
        ok = r["compiled_vs_fp32"] <= max(COMPILE_FACTOR * r["eager_vs_fp32"], run.tol)
        run.expect(ok and r["packed_vs_alone_compiled"] <= run.tol,
                   f"compile {r['lengths']}: vs fp32 compiled {r['compiled_vs_fp32']:.1e}, eager {r['eager_vs_fp32']:.1e} "
                   f"(ratio {ratio(r)}, pass <= {COMPILE_FACTOR}x or <= {run.tol:g}); compiled vs eager "
                   f"{r['compiled_vs_eager']:.1e} (informational); packed vs alone compiled {r['packed_vs_alone_compiled']:.1e}")
    if not run.smoke:
        result["emulate_precision_casts"] = emulated_compile(run, model, collate)
    return result


def emulated_compile(run: Run, model: Any, collate: warppack.PackedCollator) -> dict:
    """Diagnosis, not a check: Inductor with ``emulate_precision_casts`` rounds fused intermediates to bf16
    like eager does. If compiled then matches eager closely, the compiled-vs-eager gap is fusion rounding."""
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "emulate_precision_casts"):
        return {"skipped": f"torch {torch.__version__} has no inductor emulate_precision_casts"}
    torch._dynamo.reset()
    batch = collate([{"input_ids": s} for s in random_sequences(COMPOSITIONS[0])]).to(run.device)
    real = sum(COMPOSITIONS[0])
    with torch.no_grad(), inductor_config.patch(emulate_precision_casts=True):
        got = torch.compile(model)(**batch).logits[0, :real]
        eager = model(**batch).logits[0, :real]
    torch._dynamo.reset()
    out = {"lengths": COMPOSITIONS[0], "compiled_vs_eager": nrel(got, eager)}
    print(f"  diagnosis: with emulate_precision_casts, compiled vs eager {out['compiled_vs_eager']:.1e}", flush=True)
    return out


def environment(run: Run) -> dict:
    import transformers

    found = kernels.found()
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "smoke": run.smoke,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "flash_attn": found["flash_attn"] is not None,
           "torch_varlen": None if found["torch_varlen"] is None else
           dict(zip(("window_size", "enable_gqa", "scale"), found["torch_varlen"][1:])),
           "aten_flash_window": None if found["aten_flash"] is None else found["aten_flash"][1]}
    print(json.dumps(env, indent=1))
    if not run.smoke:
        run.expect(torch.cuda.is_available(), "CUDA is available")
    return env


def write(run: Run, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run.results["failures"] = run.failures
    run.results["wall_s"] = time.time() - run.start
    run.results["section_s"] = run.seconds
    (out_dir / "gpu_model_checks.json").write_text(json.dumps(run.results, indent=2, default=str))
    lines = [f"# warppack GPU model checks ({run.results.get('environment', {}).get('device', '?')})", "",
             f"torch {torch.__version__}; {'FAILED: ' + '; '.join(run.failures) if run.failures else 'all checks passed'}; "
             f"{run.results['wall_s']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in run.seconds.items())})", "",
             "## Packed vs each sequence alone", "",
             "Logits of the packed batch vs each sequence run alone through the same kernel (cu_seqlens [0, n]). "
             f"Pass: ||diff||_F/||ref||_F over all real tokens <= {run.tol:g}. Also shown: the worst sequence's, max|diff|/max|ref|, mean|diff| "
             "(same kernel), and ||diff||/||ref|| (max-rel) vs each sequence alone through eager attention (a "
             "different kernel: bf16 rounding differences, amplified through random-init layers; informational).", "",
             "| model | batch | kernels | rel error (pass) | worst sequence | max-rel | mean abs | vs eager: rel (max-rel) |",
             "|---|---|---|---|---|---|---|---|"]
    for family, rows in run.results.get("models", {}).items():
        for key, row in rows.items() if isinstance(rows, dict) and family != "check_model" else ():
            if isinstance(row, dict) and "rel_error" in row:
                ve = row.get("vs_eager", {})
                lines.append(f"| {family} | {key} | {', '.join(row.get('backends', []))} | {row['rel_error']:.1e} | "
                             f"{row.get('worst_sequence_rel_error', float('nan')):.1e} | "
                             f"{row.get('max_rel_error', float('nan')):.1e} | {row.get('mean_abs_error', float('nan')):.1e} | "
                             f"{ve.get('rel_error', float('nan')):.1e} ({ve.get('max_rel_error', float('nan')):.1e}) |")
    for name, row in run.results.get("kernels", {}).items():
        if isinstance(row, dict) and "rel_error" in row:
            lines.append(f"| attention only | {name} | {row['backend']} | {row['rel_error']:.1e} (grads {row['grad_rel_error']:.1e}) | | max-rel vs float64 | | |")
    lines += compile_markdown(run)
    bench = run.results.get("benchmark", {})
    if "markdown" in bench:
        lines += ["", "## Benchmark", "", bench["markdown"]]
    (out_dir / "gpu_model_checks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def compile_markdown(run: Run) -> list:
    result = run.results.get("compile")
    if not isinstance(result, dict) or "rows" not in result:
        return []
    steps = result["step_s"]
    lines = ["", "## torch.compile", "",
             f"Llama {SHAPE}, {run.dtype}, static_shape batches of 512 tokens, one training step (fwd+bwd) per "
             f"composition: {result['graphs']} graph(s), recompiles {result['recompiles'] or 'none'}, graph breaks "
             f"{result['graph_breaks'] or 'none'}; attention ops in the graph: {', '.join(result['graph_kernels']) or 'none'}. "
             f"First step {steps[0]:.1f} s (compile), then {sum(steps[1:]) / max(len(steps) - 1, 1) * 1e3:.0f} ms.", "",
             "Errors are ||diff||_F/||ref||_F over the real tokens' logits against an fp32 eager forward of the same "
             "weights and batch. Pass: compiled <= "
             f"{COMPILE_FACTOR}x eager's error or <= {run.tol:g}, and the packed compiled logits within {run.tol:g} of each "
             "sequence alone through the same compiled graph.", "",
             "| batch | compiled vs fp32 | eager vs fp32 | ratio | compiled vs eager | packed vs alone (compiled) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['lengths']} | {r['compiled_vs_fp32']:.1e} | {r['eager_vs_fp32']:.1e} | {ratio(r)} | "
                     f"{r['compiled_vs_eager']:.1e} | {r['packed_vs_alone_compiled']:.1e} |")
    emulated = result.get("emulate_precision_casts")
    if isinstance(emulated, dict) and "compiled_vs_eager" in emulated:
        lines += ["", f"Diagnosis: with `torch._inductor.config.emulate_precision_casts=True` (fused intermediates "
                  f"rounded to bf16 as in eager), compiled vs eager on {emulated['lengths']}: "
                  f"{emulated['compiled_vs_eager']:.1e}."]
    elif isinstance(emulated, dict):
        lines += ["", f"Diagnosis: {emulated}"]
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out"),
                        help="folder for gpu_model_checks.json and gpu_model_checks.md (default: $OUT or ./out)")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny sizes: test the script itself")
    parser.add_argument("--benchmark", action="store_true",
                        help="also run bench_attention.py (~1B Llama, four methods; about 40 s more on an H200)")
    parser.add_argument("--skip-compile", action="store_true", help="skip the torch.compile check (slowest check)")
    args = parser.parse_args(argv)
    run = Run(args.smoke)
    run.section("environment", lambda: environment(run))
    run.section("kernels", lambda: kernel_checks(run))
    run.section("models", lambda: model_checks(run))
    if not args.skip_compile:
        run.section("compile", lambda: compile_check(run))
    if args.benchmark:
        setup = attention_benchmark.Setup.smoke() if args.smoke else attention_benchmark.Setup()
        run.section("benchmark", lambda: attention_benchmark.run(setup))
    write(run, args.out)
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
