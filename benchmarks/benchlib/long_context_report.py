"""The long-context run's targets and its markdown: kernels found, checks, attention and step tables."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from .long_context import amdahl, ratio

#: (what, scenario, level, the least speed-up over the default kernel that passes)
TARGETS = (("attention fwd+bwd", "8k", "attention", 1.5), ("attention fwd+bwd", "32k", "attention", 1.5),
           ("training step", "32k", "steps", 1.2), ("training step (no slower; 2% timing noise)", "mixed SFT",
                                                    "steps", 0.98))


def targets(results: Dict[str, Any]) -> List[dict]:
    """Each target for each faster kernel: the measured ratio, PASS/FAIL, and for a step target the
    attention share of the default kernel's step and the most the step could gain (Amdahl)."""
    base, rows = results.get("baseline"), []
    layers = results.get("steps", {}).get("_layers")
    for kernel in results.get("faster", []):
        for what, scenario, level, least in TARGETS:
            level_results = results.get(level, {}).get(scenario, {})
            got = ratio(level_results, kernel, base) if base else None
            verdict = "n/a" if got is None else ("PASS" if got >= least else "FAIL")
            row: Dict[str, Any] = {"target": f"{what} >= {least}x {base} at {scenario}", "kernel": kernel,
                                   "ratio": got, "result": verdict}
            attention = results.get("attention", {}).get(scenario, {})
            if level == "steps" and layers and base and "median_s" in attention.get(base, {}) \
                    and "median_s" in level_results.get(base, {}):
                share = min(layers * attention[base]["median_s"] / level_results[base]["median_s"], 1.0)
                speed = ratio(attention, kernel, base)
                row.update(attention_share=share, bound=None if speed is None else amdahl(share, speed))
            rows.append(row)
    return rows


def _why(r: Dict[str, Any]) -> str:
    """Why a unit has no numbers: refused (a feature the kernel lacks), failed, or skipped for time."""
    if "refused" in r:
        return f"refused: {r['refused']}"
    return f"failed: {r['error']}" if "error" in r else f"skipped ({r.get('skipped', '?')})"


def _per_kernel(groups: Dict[str, Dict[str, dict]], key: str, width: int, cells: Callable[[dict], str]) -> List[str]:
    """``| kernel | label | cells | pass |`` rows of a ``{kernel: {label: result}}`` section; a result without
    ``key`` (refused, failed, skipped) says why in its first cell."""
    rows = []
    for kernel, items in groups.items():
        for label, r in items.items():
            if key in r:
                rows.append(f"| `{kernel}` | {label} | {cells(r)} | {'ok' if r['ok'] else 'FAIL'} |")
            else:
                verdict = "FAIL" if "error" in r else "-"
                rows.append(f"| `{kernel}` | {label} | {_why(r)} |{' |' * (width - 1)} {verdict} |")
    return rows


def _f(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _level_table(results: Dict[str, Any], level: str) -> List[str]:
    base, layers = results.get("baseline"), results.get("steps", {}).get("_layers")
    head = ("| batch | method | kernel ran | median | TFLOP/s | vs default | peak |" if level == "attention" else
            "| batch | method | kernel ran | median step | tokens/s | vs default | attention share | peak |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for scenario, methods in results.get(level, {}).items():
        if scenario.startswith("_"):
            continue
        for method, r in methods.items():
            if "median_s" not in r:
                lines.append(f"| {scenario} | {method} | {_why(r)} |" + " |" * (head.count("|") - 4))
                continue
            vs = ratio(methods, method, base) if base else None
            peak = _f(r.get("peak_gib"), ".1f", " GiB")
            if level == "attention":
                lines.append(f"| {scenario} | {method} | {r.get('kernel')} | {r['median_s'] * 1e3:.2f} ms | "
                             f"{r['tflops']:.0f} | {_f(vs, '.2f', 'x')} | {peak} |")
            else:
                att = results.get("attention", {}).get(scenario, {}).get(method, {})
                share = (layers * att["median_s"] / r["median_s"]) if layers and "median_s" in att else None
                lines.append(f"| {scenario} | {method} | {r.get('kernel')} | {r['median_s'] * 1e3:.0f} ms | "
                             f"{r['tokens_per_s']:,.0f} | {_f(vs, '.2f', 'x')} | "
                             f"{_f(share and 100 * share, '.0f', '%')} | {peak} |")
    return lines


def markdown(results: Dict[str, Any]) -> str:
    env, setup = results.get("environment", {}), results.get("setup", {})
    lines = [f"# Long-context attention kernels ({env.get('gpu') or env.get('device', '?')})", "",
             f"torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, "
             f"flash-attn-4 {env.get('flash-attn-4')}, warppack {env.get('warppack')}; "
             f"{'FAILED: ' + '; '.join(results['failures']) if results.get('failures') else 'all checks passed'}; "
             f"{results.get('wall_s', 0):.0f} s" + (f"; skipped for time: {', '.join(results['skipped'])}"
                                                    if results.get("skipped") else ""), "",
             f"Default kernel: `{results.get('baseline')}`; faster kernels here: "
             f"{', '.join(f'`{k}`' for k in results.get('faster', [])) or 'none'}. Batches of at most "
             f"{setup.get('budget')} tokens, {setup.get('dtype')}, heads (q, kv) {setup.get('heads')} of "
             f"{setup.get('head_dim')}.", "",
             "## Kernels", "", "| kernel | here |", "|---|---|"]
    lines += [f"| `{name}` | {why} |" for name, why in results.get("kernels", {}).items()]
    lines += ["", "## Checks", "",
              "One packed call per feature, forced kernel. `alone`: max |packed - each sequence alone| through the "
              "same kernel (output, dq, dk, dv[, dsinks]); pass: relative <= 2^-7 (bf16 rounding). `vs fp32`: "
              "max-relative error against exact SDPA per sequence in float32, output / gradients, beside the "
              "yardstick kernel's own (pass: <= 2x the yardstick's, or <= 1e-2 / 2e-2).", "",
              "| kernel | case | alone max abs (out, dq, dk, dv) | vs fp32 out / grads | yardstick "
              "| yardstick out / grads | pass |",
              "|---|---|---|---|---|---|---|"]
    lines += _per_kernel(results.get("checks", {}), "alone_max_abs", 4, lambda r: (
        f"{', '.join(f'{d:.1e}' for d in r['alone_max_abs'][:4])} | {r['fp32_out']:.1e} / {r['fp32_grads']:.1e} | "
        f"`{r['yardstick']}` | {r['yard_out']:.1e} / {r['yard_grads']:.1e}"))
    steps = results.get("steps", {})
    lines += ["", "## Attention forward+backward", "", *_level_table(results, "attention"), "",
              f"## Training steps ({_f(steps.get('_parameters_billion'), '.2f')}B Llama, forward + backward + AdamW)",
              "", "Attention share: layers x the attention level's time for the same batch / step time.", "",
              *_level_table(results, "steps"), "", "## Targets", "",
              "| target | kernel | measured | result | attention share (default) | most a step can gain |",
              "|---|---|---|---|---|---|"]
    for t in results.get("targets", []):
        share = t.get("attention_share")
        lines.append(f"| {t['target']} | `{t['kernel']}` | {_f(t['ratio'], '.2f', 'x')} | {t['result']} | "
                     f"{_f(share and 100 * share, '.0f', '%')} | {_f(t.get('bound'), '.2f', 'x')} |")
    lines += ["", "## Model families and check_model", "",
              "Packed logits vs each sequence alone through the same kernel (||diff||/||ref||), loss / logits / worst "
              "parameter gradient vs the same weights in float32, the bf16 exact path's logits error as the yardstick, "
              "and `check_model` with the kernel forced.", "",
              "| kernel | family | packed vs alone | loss vs fp32 | logits vs fp32 (yardstick) | worst grad "
              "| check_model | pass |",
              "|---|---|---|---|---|---|---|---|"]
    lines += _per_kernel(results.get("families", {}), "alone_nrel", 5, lambda r: (
        f"{r['alone_nrel']:.1e} | {r['loss_rel']:.1e} | {r['logits_nrel']:.1e} ({r['yard_logits_nrel']:.1e}) | "
        f"{r['grad_nrel_max']:.1e} | {r['check_model']}"))
    lines += ["", "## torch.compile (dynamo + AOT autograd, three static-shape batch compositions)", "",
              "| forced | graphs | graph breaks | recompiles | eager kernel | finite |", "|---|---|---|---|---|---|"]
    for forced, r in results.get("compile", {}).items():
        if "graphs" not in r:
            lines.append(f"| {forced} | {_why(r)} | | | | |")
            continue
        lines.append(f"| {forced} | {r['graphs']} | {r['graph_breaks']} | {r['recompiles']} | {r['eager_kernel']} | "
                     f"{r['finite']} |")
    route = results.get("torch_fa4_route")
    if route:
        lines += ["", "## torch's FA4 route", "", f"{route.get('status')}", ""]
    return "\n".join(lines) + "\n"
