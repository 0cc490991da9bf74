"""The GPU lm-eval benchmark's summary (speed-ups per task) and its markdown report."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

__all__ = ["markdown", "summary_rows"]


def _best_fixed(runs: Dict[str, dict]) -> Optional[str]:
    fixed = {label: run["request_s"] for label, run in runs.items()
             if label.startswith("hf batch_size=") and label[-1].isdigit() and run.get("request_s")}
    return min(fixed, key=lambda label: fixed[label]) if fixed else None


def _ratio(base: Optional[dict], run: dict, key: str) -> Optional[float]:
    if not base or not base.get(key) or not run.get(key):
        return None
    return round(base[key] / run[key], 2)


def summary_rows(runs: Dict[str, dict], reference: str) -> Dict[str, Any]:
    """Per setting: times, requests/s and speed-ups (request time and wall) over hf auto and hf best fixed."""
    best = _best_fixed(runs)
    rows: List[dict] = []
    for label, run in runs.items():
        if "error" in run:
            rows.append({"setting": label, "error": run["error"]})
            continue
        rows.append({"setting": label, "request_s": run["request_s"], "tokenize_s": run.get("tokenize_s"),
                     "requests_per_s": run["requests_per_s"],
                     "wall_s": run["wall_s"], "requests": run["requests"],
                     "x_hf_auto": _ratio(runs.get(reference), run, "request_s"),
                     "x_hf_best_fixed": _ratio(runs.get(best) if best else None, run, "request_s"),
                     "wall_x_hf_auto": _ratio(runs.get(reference), run, "wall_s"),
                     "wall_x_hf_best_fixed": _ratio(runs.get(best) if best else None, run, "wall_s")})
    return {"best_hf_fixed": best, "rows": rows}


def _num(value: Any, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def _diff(run: Dict[str, Any]) -> str:
    diff = run.get("vs_hf_auto")
    if not diff:
        return "reference" if "request_s" in run else ""
    parts = []
    if "max_abs_logprob_diff" in diff:
        parts.append(f"max abs {diff['max_abs_logprob_diff']:.2g}")
    if "max_rel_logprob_diff" in diff:
        parts.append(f"rel {diff['max_rel_logprob_diff']:.1g}")
    if "is_greedy_mismatches" in diff:
        parts.append(f"is_greedy differ {diff['is_greedy_mismatches']}")
    if "generations_identical" in diff:
        parts.append(f"same text {diff['generations_identical']}/{diff['requests']}")
    parts.append(f"metrics rel {diff['max_rel_metric_diff']:.1g}")
    return "; ".join(parts)


def markdown(results: Dict[str, Any]) -> str:
    """The report: setup, one table per task (every setting), the exactness phase, what was skipped."""
    env, model = results.get("env", {}), results.get("model", {})
    lines = ["# lm-eval: --model warppack vs --model hf", "",
             f"{env.get('gpu') or env.get('device')}, torch {env.get('torch')}, transformers "
             f"{env.get('transformers')}, lm-eval {env.get('lm_eval')}, warppack {env.get('warppack')}. Model: "
             f"{model.get('architecture')} "
             f"{model.get('parameters', 0):,} parameters ({model.get('weights')}).", "",
             f"Each setting is `{results.get('command')}`. *request s*: time inside the LM's request method "
             "(tokenisation, batching, forwards, scoring; device synchronised), *of which tokenising* its part in "
             "HFLM's tokenizer calls, the same code in both backends; *wall s*: the whole "
             "`simple_evaluate` (lm-eval's request building and metrics too). Speed-ups are request-time ratios "
             "(wall-time ratios in parentheses). Answers are compared with hf batch_size=auto's.", ""]
    for task, entry in results.get("tasks", {}).items():
        info = results.get("task_info", {}).get(task, {})
        tokens = info.get("requests_tokens", {})
        summary = entry.get("summary", {})
        lines += [f"## {task} ({info.get('kind')}): {info.get('about', '')}", "",
                  f"{info.get('docs')} documents; request rows of median {tokens.get('median')}, p90 "
                  f"{tokens.get('p90')}, max {tokens.get('max')} tokens ({tokens.get('total', 0):,} in all, before "
                  f"truncation). hf best fixed: {summary.get('best_hf_fixed')}.", "",
                  "| setting | requests | request s | of which tokenising | requests/s | wall s | x hf auto | "
                  "x hf best fixed | answers vs hf auto |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        runs = entry.get("runs", {})
        for row in summary.get("rows", []):
            if "error" in row:
                lines.append(f"| {row['setting']} | | | | | | | | {row['error'][:120]} |")
                continue
            lines.append(
                f"| {row['setting']} | {row['requests']:,} | {_num(row['request_s'])} | {_num(row['tokenize_s'])} | "
                f"{_num(row['requests_per_s'], ',.0f')} | {_num(row['wall_s'])} | {_num(row['x_hf_auto'])} "
                f"({_num(row['wall_x_hf_auto'])}) | {_num(row['x_hf_best_fixed'])} "
                f"({_num(row['wall_x_hf_best_fixed'])}) | {_diff(runs[row['setting']])} |")
        lines.append("")
    settings = results.get("settings", {})
    if settings:
        lines += ["## Settings", "", "*build s*: loading the checkpoint onto the device, and for warppack "
                  "`check_model` and, with `max_tokens=auto`, the calibration (cached on disk for later runs).", "",
                  "| setting | build s | note |", "|---|---:|---|"]
        for label, info in settings.items():
            note = info.get("error") or (f"max_tokens resolved to {info['max_tokens_resolved']:,}"
                                         if "max_tokens_resolved" in info else "")
            lines.append(f"| {label} | {_num(info.get('build_s'))} | {note} |")
        lines.append("")
    exact = results.get("exact", {})
    if exact:
        es = results.get("exact_settings", {})
        lines += [f"## Same scores (fp32, first {es.get('documents_per_task')} documents per task, warppack "
                  f"max_tokens={es.get('warppack_max_tokens')} vs hf batch_size={es.get('hf_batch_size')})", "",
                  "| task | requests | max abs logprob diff | max rel (rolling) | is_greedy differ | same text | "
                  "metrics rel diff | result |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for task, d in exact.items():
            lines.append(f"| {task} | {d.get('requests')} | {_num(d.get('max_abs_logprob_diff'), '.2g')} | "
                         f"{_num(d.get('max_rel_logprob_diff'), '.2g')} | {_num(d.get('is_greedy_mismatches'), 'd')} | "
                         f"{_num(d.get('generations_identical'), 'd')} | {_num(d.get('max_rel_metric_diff'), '.2g')} | "
                         f"{d.get('result')} |")
        lines.append("")
    if results.get("skipped"):
        lines += ["Skipped (time limit): " + "; ".join(results["skipped"]), ""]
    return "\n".join(lines)
