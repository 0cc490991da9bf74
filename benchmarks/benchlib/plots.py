"""PNG plots of bench_train.py's results.json (matplotlib, no display needed).

``train_throughput.png`` (real tokens/s per arm and distribution, ratio to the compute-only bound on
each bar), ``train_memory.png`` (peak memory and padding fraction per arm) and
``eval_throughput.png`` (forward-only scoring, with the padding-removal limit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

SHORT = {"1": "pad to\nmax_length", "2": "dynamic\npadding", "3": "group_by\n_length", "4": "Flattening\ncollator",
         "5": "TRL BFD\npadding-free", "6": "warppack", "7": "compute-only\nbound"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(meta: dict) -> str:
    gpu = meta.get("gpu") or "CPU (smoke)"
    return f"{gpu} · torch {meta.get('torch')} · transformers {meta.get('transformers')}"


def plot(results_path: Path, out_dir: Path) -> List[Path]:
    results = json.loads(Path(results_path).read_text())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    made: List[Path] = []
    meta = results.get("meta", {})
    train = {k: v for k, v in results.get("train", {}).items() if v.get("arms")}

    if train:
        fig, axes = plt.subplots(1, len(train), figsize=(6.5 * len(train), 4.8), squeeze=False)
        for ax, (dist, d) in zip(axes[0], train.items()):
            keys = sorted(k for k, a in d["arms"].items() if a.get("real_tokens_per_s"))
            vals = [d["arms"][k]["real_tokens_per_s"] for k in keys]
            lo = [v - d["arms"][k].get("real_tokens_per_s_min", v) for k, v in zip(keys, vals)]
            hi = [d["arms"][k].get("real_tokens_per_s_max", v) - v for k, v in zip(keys, vals)]
            colors = ["#d62728" if k == "6" else "#7f7f7f" if k == "7" else "#1f77b4" for k in keys]
            bars = ax.bar(keys, vals, color=colors, yerr=[lo, hi], capsize=3)
            t7 = d["arms"].get("7", {}).get("real_tokens_per_s")
            for bar, v in zip(bars, vals):
                label = f"{v / 1e3:,.0f}k" + (f"\n{v / t7:.2f}×(7)" if t7 else "")
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([f"{k}\n{SHORT.get(k, k)}" for k in keys], fontsize=7)
            ax.set_ylabel("real (non-padding) tokens/s, median")
            ax.set_title(f"training: {dist} (max_length {d.get('max_length')})", fontsize=10)
            ax.margins(y=0.18)
        fig.suptitle("End-to-end training throughput, each arm at its largest batch\n" + _title(meta), fontsize=10)
        fig.tight_layout()
        path = out_dir / "train_throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

        fig, axes = plt.subplots(1, len(train), figsize=(6.5 * len(train), 4.2), squeeze=False)
        for ax, (dist, d) in zip(axes[0], train.items()):
            keys = sorted(k for k, a in d["arms"].items() if a.get("real_tokens_per_s"))
            peaks = [max(d["arms"][k].get("peak_gib_timed") or 0, (d["arms"][k].get("worst_batch") or {}).get(
                "peak_gib") or 0) for k in keys]
            pads = [100 * d["arms"][k]["epoch"]["padding_fraction"] for k in keys]
            ax.bar([i - 0.2 for i in range(len(keys))], peaks, width=0.4, label="peak GiB (worst batch / timed)")
            ax2 = ax.twinx()
            ax2.bar([i + 0.2 for i in range(len(keys))], pads, width=0.4, color="#ff7f0e", label="padding %")
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([f"{k}\n{SHORT.get(k, k)}" for k in keys], fontsize=7)
            ax.set_ylabel("peak allocated GiB")
            ax2.set_ylabel("padding % of processed tokens")
            ax2.set_ylim(0, 100)
            ax.set_title(f"memory and padding: {dist}", fontsize=10)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
        fig.suptitle(_title(meta), fontsize=10)
        fig.tight_layout()
        path = out_dir / "train_memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    ev = {k: v for k, v in results.get("eval", {}).items() if isinstance(v, dict) and v.get("arms")}
    if ev:
        fig, axes = plt.subplots(1, len(ev), figsize=(5.5 * len(ev), 4.2), squeeze=False)
        for ax, (dist, d) in zip(axes[0], ev.items()):
            names = [n for n, a in d["arms"].items() if a.get("real_tokens_per_s")]
            vals = [d["arms"][n]["real_tokens_per_s"] for n in names]
            ax.bar(names, vals, color=["#d62728" if n == "packed" else "#1f77b4" for n in names])
            pad = d["arms"].get("padded", {}).get("real_tokens_per_s")
            if pad and d.get("padding_removal_limit"):
                ax.axhline(pad * d["padding_removal_limit"], ls="--", color="k", lw=1,
                           label=f"padded × limit ({d['padding_removal_limit']:.2f}×)")
                ax.legend(fontsize=7)
            for i, v in enumerate(vals):
                ax.annotate(f"{v / 1e3:,.0f}k" + (f"\n{v / pad:.2f}×" if pad else ""), (i, v), ha="center",
                            va="bottom", fontsize=8)
            ax.set_ylabel("real tokens/s, median")
            ax.set_title(f"eval (forward-only): {dist}", fontsize=10)
            ax.margins(y=0.18)
        model = results["eval"].get("model", {}).get("architecture", "SmolLM2-135M")
        fig.suptitle(f"Scoring throughput, {model}\n" + _title(meta), fontsize=10)
        fig.tight_layout()
        path = out_dir / "eval_throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made
