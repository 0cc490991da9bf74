"""Long-context attention on one GPU, in one run: every kernel found is checked, then benchmarked.

Phases, each written to --out as it ends (a run cut short by --time-limit keeps what it measured; a unit
of work that would not fit in the time left is skipped and named):

1. environment: versions, the GPU, every kernel of warppack's order and whether it runs here (or why not).
2. checks: each kernel that runs here, forced, on the benchmark's layer shape (causal, GQA, plus a
   static-shape tail): packed vs each sequence alone through the same kernel (max |diff|), and vs
   float32, forward and gradients, beside torch's default kernel's error.
3. attention: forward+backward of one attention call (the ~0.5B model's heads) on packed batches of
   8k, 32k, mixed SFT and 2k-token sequences (64k-token budget): torch's default varlen kernel vs each
   faster kernel vs the same sequences in padded batches through SDPA.
4. steps: whole training steps (forward, backward, AdamW) of a ~0.5B Llama in bf16 on the same batches.
5. features: the checks of phase 2 for every other layer feature a kernel declares (window, softcap,
   sinks, non-causal); each compiles more flash-attn-4 kernels, hence after the measurements.
6. families: the GPU-shaped model families per faster kernel (packed vs alone, vs float32, check_model),
   and check_model with the default kernel.
7. compile: a training step under torch.compile, automatic choice and each faster kernel forced.
8. torch's FA4 route (activate_flash_attention_impl("FA4"), process-wide, hence last): the checks
   through it.

Installs nothing: the kernels are whatever this Python imports (``scripts/gpu_long_context.sh`` installs
the carried ``[hopper]`` wheels first)::

    python benchmarks/gpu_long_context.py --out out/long                 # CUDA; < 8 min on an H200
    python benchmarks/gpu_long_context.py --smoke --out /tmp/long-smoke  # CPU, fp32, tiny: the logic only

Writes ``gpu_long_context.json`` and ``gpu_long_context.md``; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from benchlib import kernel_checks
from benchlib.families import FAMILIES
from benchlib.long_context import PADDED, Setup, Steps, attention_level, scenarios
from benchlib.long_context_report import markdown, targets
from benchlib.peers import package_version
from benchlib.runner import env_info, free_memory, write_json

from warppack.attention import kernels, registry

#: kernel checks: lengths 1 to 2048 (3072 tokens), and the families checked first when time is short
CHECK_LENGTHS = [1, 77, 300, 512, 2048, 134]
FAMILY_ORDER = ["llama", "gemma2", "gpt_oss", "mistral", "qwen2", "qwen3", "phi3"]
BENCHMARKED = ("plain", "static-tail")  # the benchmark's own layer shape (causal, GQA, no window)
FEATURES = tuple(case for case in kernel_checks.CASES if case not in BENCHMARKED)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke, self.out = args.smoke, args.out
        self.setup = Setup.smoke() if args.smoke else Setup(budget=args.budget)
        self.device = self.setup.device
        self.start = time.monotonic()
        self.deadline = self.start + args.time_limit
        self.capability = torch.cuda.get_device_capability() if not self.smoke and torch.cuda.is_available() else None
        self.results: Dict[str, Any] = {"failures": [], "skipped": [], "phase_s": {},
                                        "setup": {"budget": self.setup.budget, "dtype": str(self.setup.dtype),
                                                  "heads": list(self.setup.heads), "head_dim": self.setup.head_dim,
                                                  "preset": self.setup.preset}}

    def unit(self, label: str, need_s: float, fn: Callable[[], Any]) -> Any:
        """``fn()`` if ``need_s`` seconds are left, else skipped; an exception is recorded, not raised."""
        if self.deadline - time.monotonic() < need_s:
            self.results["skipped"].append(label)
            print(f"  skipped (time): {label}", flush=True)
            return {"skipped": "time limit"}
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - one kernel failing must not lose the rest
            traceback.print_exc()
            free_memory(torch.device(self.device))
            return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:240] if str(error) else ''}"}

    def phase(self, name: str, fn: Callable[[], None]) -> None:
        print(f"\n== {name} ({time.monotonic() - self.start:.0f} s)", flush=True)
        start = time.monotonic()
        try:
            fn()
        except Exception as error:  # noqa: BLE001
            traceback.print_exc()
            self.fail(f"{name}: {type(error).__name__}: {str(error)[:240]}")
        self.results["phase_s"][name] = round(time.monotonic() - start, 1)
        self.write()

    def fail(self, what: str) -> None:
        print(f"  [FAIL] {what}", flush=True)
        self.results["failures"].append(what)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["wall_s"] = time.monotonic() - self.start
        self.results["targets"] = targets(self.results)
        write_json(self.out / "gpu_long_context.json", self.results)
        (self.out / "gpu_long_context.md").write_text(markdown(self.results))


def environment(run: Run) -> None:
    env = env_info(torch.device(run.device))
    env["flash-attn-4"] = package_version("flash-attn-4")
    env["nvidia-cutlass-dsl"] = package_version("nvidia-cutlass-dsl")
    listed = getattr(torch.nn.attention, "list_flash_attention_impls", None)
    env["torch_flash_impls"] = listed() if listed else None
    run.results["environment"] = env
    layer = registry.Layer(run.device, run.capability, run.setup.dtype, run.setup.head_dim, run.setup.head_dim)
    table = {name: registry.refusal(registry.KERNELS[name], layer, kernels.installed) or "runs"
             for name in registry.ORDER}
    run.results["kernels"] = table
    runs = [name for name in registry.ORDER if table[name] == "runs" and registry.KERNELS[name].fused]
    if run.smoke:  # no fused kernel on a CPU: the two exact paths stand in for "default" and "faster"
        base, faster = "exact_segments", ["exact_block_diagonal"]
    else:
        base = next((n for n in ("torch_varlen", "aten_flash") if n in runs), "exact_segments")
        faster = [n for n in runs if registry.ORDER.index(n) < registry.ORDER.index(base)]
        if not torch.cuda.is_available():
            run.fail("CUDA is not available")
    run.results.update(baseline=base, faster=faster)
    for name, why in table.items():
        print(f"  {name:22s} {why}", flush=True)


def checks(run: Run, cases: Sequence[str]) -> None:
    out = run.results.setdefault("checks", {})
    for name in [run.results["baseline"], *run.results["faster"]]:
        lengths = [min(n, 48) for n in CHECK_LENGTHS] if run.smoke else CHECK_LENGTHS
        rows = run.unit(f"checks {name} {'/'.join(cases)}", 45, lambda: kernel_checks.attention_checks(
            name, run.results["baseline"], device=run.device, dtype=run.setup.dtype, heads=run.setup.heads,
            head_dim=run.setup.head_dim, lengths=lengths, capability=run.capability, cases=cases,
            tol=1e-4 if run.smoke else 1e-2))
        _verdicts(run, f"checks {name}", rows)
        out.setdefault(name, {}).update(rows if "error" not in rows and "skipped" not in rows
                                        else {case: rows for case in cases})
        run.write()


def _verdicts(run: Run, label: str, rows: Dict[str, Any]) -> None:
    if "error" in rows or "skipped" in rows:
        if "error" in rows:
            run.fail(f"{label}: {rows['error']}")
        return
    for case, row in rows.items():
        if "refused" in row:
            print(f"  [--] {label} {case}: refused: {row['refused']}", flush=True)
        elif not row["ok"]:
            run.fail(f"{label} {case}: {row}")
        else:
            print(f"  [ok] {label} {case}: alone {row['alone_rel']:.1e}, fp32 {row['fp32_out']:.1e} / "
                  f"{row['fp32_grads']:.1e} (yardstick {row['yard_out']:.1e} / {row['yard_grads']:.1e})", flush=True)


def methods(run: Run) -> List[str]:
    return [run.results["baseline"], *run.results["faster"], PADDED]


def attention(run: Run, batches: Dict[str, List[int]]) -> None:
    out = run.results.setdefault("attention", {})
    for scenario, lengths in batches.items():
        for method in methods(run):
            r = run.unit(f"attention {scenario} {method}", 15, lambda: attention_level(run.setup, lengths, method))
            out.setdefault(scenario, {})[method] = r
            print(f"  {scenario:10s} {method:22s} {_brief(r)}", flush=True)
        run.write()


def steps(run: Run, batches: Dict[str, List[int]]) -> None:
    out = run.results.setdefault("steps", {})
    bench = run.unit("steps: model", 60, lambda: Steps(run.setup))
    if not isinstance(bench, Steps):
        if "error" in bench:
            run.fail(f"steps: the model could not be built: {bench['error']}")
        return
    out.update(_layers=bench.layers, _parameters_billion=bench.parameters_billion)
    for scenario, lengths in batches.items():
        for method in methods(run):
            r = run.unit(f"steps {scenario} {method}", 30, lambda: bench.run(lengths, method))
            out.setdefault(scenario, {})[method] = r
            print(f"  {scenario:10s} {method:22s} {_brief(r)}", flush=True)
        run.write()
    bench.close()


def _brief(r: Dict[str, Any]) -> str:
    if "median_s" not in r:
        return str(r.get("error") or r.get("skipped"))
    rate = f"{r['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in r else f"{r.get('tflops', 0):.0f} TFLOP/s"
    return f"{r['median_s'] * 1e3:9.2f} ms  {rate}  ran {r.get('kernel')}"


def families(run: Run) -> None:
    out = run.results.setdefault("families", {})
    dtype = run.setup.dtype
    names = [n for n in FAMILY_ORDER if n in FAMILIES][: 2 if run.smoke else None]
    plan = [(k, f) for k in run.results["faster"] for f in names] + [(run.results["baseline"], "llama")]
    for kernel, family in plan:
        r = run.unit(f"family {kernel} {family}", 25, lambda: kernel_checks.family_checks(
            kernel, family, device=run.device, dtype=dtype, tol=1e-4 if run.smoke else 1e-2))
        out.setdefault(kernel, {})[family] = r
        if r.get("ok") is False or "error" in r:
            run.fail(f"family {kernel} {family}: {r}")
        run.write()


def compile_phase(run: Run) -> None:
    out = run.results.setdefault("compile", {})
    for forced in [None, *run.results["faster"]]:
        label = forced or "automatic"
        r = run.unit(f"compile {label}", 60, lambda: kernel_checks.compile_check(forced, device=run.device,
                                                                                  dtype=run.setup.dtype))
        out[label] = r
        print(f"  {label}: {r}", flush=True)
        if "error" in r or (forced is None and (r.get("graph_breaks") or r.get("recompiles"))):
            run.fail(f"compile {label}: {r}")
        run.write()


def torch_fa4_route(run: Run) -> None:
    attention = torch.nn.attention
    activate = getattr(attention, "activate_flash_attention_impl", None)
    listed = getattr(attention, "list_flash_attention_impls", None)
    if run.smoke or activate is None or listed is None or "FA4" not in listed():
        run.results["torch_fa4_route"] = {"status": f"not available in torch {torch.__version__}" if not run.smoke
                                          else "not run (smoke)"}
        return
    try:
        activate("FA4")
    except Exception as error:  # noqa: BLE001 - the route's own import of flash_attn.cute
        run.results["torch_fa4_route"] = {"status": f"activate_flash_attention_impl('FA4') failed: {error!r}"}
        return
    try:
        rows = run.unit("checks torch_fa4", 45, lambda: kernel_checks.attention_checks(
            "torch_fa4", None, device=run.device, dtype=run.setup.dtype, heads=run.setup.heads,
            head_dim=run.setup.head_dim, lengths=CHECK_LENGTHS, capability=run.capability))
        run.results.setdefault("checks", {})["torch_fa4"] = rows
        plain = rows.get("plain", {})
        run.results["torch_fa4_route"] = {"status": f"torch_fa4 through torch {torch.__version__}'s route: "
                                          + ("checks passed" if plain.get("ok") else f"{rows.get('error') or plain}")}
    finally:
        restore = getattr(attention, "restore_flash_attention_impl", None)
        if restore is not None:
            restore()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out"),
                        help="folder for gpu_long_context.json and .md (default: $OUT or ./out)")
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny shapes: the script's logic only")
    parser.add_argument("--time-limit", type=float, default=420.0,
                        help="seconds; work that would not fit in what is left is skipped (default 420)")
    parser.add_argument("--budget", type=int, default=65536, help="tokens per packed batch (default 65536)")
    parser.add_argument("--skip", nargs="*", default=[], help="phases to leave out", choices=[
        "checks", "attention", "steps", "features", "families", "compile", "route"])
    args = parser.parse_args(argv)
    if args.budget < 32768 and not args.smoke:
        parser.error(f"--budget {args.budget} holds no 32k-token sequence; use 65536 to 131072")
    run = Run(args)
    run.phase("environment", lambda: environment(run))
    batches = scenarios(run.setup)
    run.results["batches"] = {name: {"sequences": len(v), "tokens": sum(v), "longest": max(v)}
                              for name, v in batches.items()}
    order = ["8k", "32k", "mixed SFT", "2k"] if not run.smoke else list(batches)
    batches = {name: batches[name] for name in order if name in batches}
    # The shapes the benchmark runs are checked first; each further layer feature compiles more
    # flash-attn-4 kernels, so those checks come after the measurements.
    for name, fn in (("checks", lambda: checks(run, BENCHMARKED)), ("attention", lambda: attention(run, batches)),
                     ("steps", lambda: steps(run, batches)), ("features", lambda: checks(run, FEATURES)),
                     ("families", lambda: families(run)), ("compile", lambda: compile_phase(run)),
                     ("route", lambda: torch_fa4_route(run))):
        if name not in args.skip:
            run.phase(name, fn)
    print("\n" + markdown(run.results), flush=True)
    return 1 if run.results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
