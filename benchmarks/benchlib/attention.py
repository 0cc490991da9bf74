"""The attention benchmark: warppack varlen vs padded SDPA vs transformers sdpa (packed position_ids)
vs flex attention, on the same packed sequences; attention alone and a whole Llama model fwd+bwd.

``run(Setup())`` measures and returns the results with a markdown table; ``bench_attention.py`` and
``gpu_model_checks.py --benchmark`` print it.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import warppack

METHODS = ("warppack", "padded_sdpa", "sdpa_packed", "flex")


@dataclasses.dataclass
class Setup:
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    budget: int = 8192
    num_batches: int = 4
    warmup: int = 2
    repeats: int = 6
    min_len: int = 32
    max_len: int = 2048
    backward_flex: bool = True
    # Llama-3.2-1B shapes with a 32k vocabulary: 1.03B parameters.
    model: dict = dataclasses.field(default_factory=lambda: dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, tie_word_embeddings=True))

    @classmethod
    def smoke(cls) -> "Setup":
        return cls(device="cpu", dtype=torch.float32, budget=128, num_batches=2, warmup=1, repeats=2,
                   min_len=1, max_len=64, backward_flex=False,  # flex attention has no CPU backward
                   model=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))


def packed_lengths(setup: Setup, *, seed: int = 0) -> list:
    """``num_batches`` bins of lognormal lengths (the fullest ones), packed by warppack.plan."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(np.log(setup.max_len / 6), 0.9, 40 * setup.num_batches)
    lengths = np.clip(raw, setup.min_len, setup.max_len).astype(np.int64)
    plan = warppack.plan(lengths, setup.budget)
    bins = sorted((lengths[b].tolist() for b in plan.bins), key=sum, reverse=True)
    return bins[: setup.num_batches]


def padded_groups(lengths: list, budget: int) -> list:
    """The same sequences in data order as padded batches with batch * longest <= budget."""
    groups: List[List[int]] = []
    current: List[int] = []
    for n in lengths:
        if current and (len(current) + 1) * max(current + [n]) > budget:
            groups.append(current)
            current = []
        current.append(n)
    return groups + [current] if current else groups


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(step: Callable[[Any], int], batches: Sequence[Any], setup: Setup) -> dict:
    """Median real tokens/s over ``repeats`` steps (after ``warmup``) and peak memory; step(b) -> tokens."""
    for i in range(setup.warmup):
        step(batches[i % len(batches)])
    _sync(setup.device)
    if setup.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rates, times = [], []
    for i in range(setup.repeats):
        start = time.perf_counter()
        tokens = step(batches[i % len(batches)])
        _sync(setup.device)
        times.append(time.perf_counter() - start)
        rates.append(tokens / times[-1])
    peak = torch.cuda.max_memory_allocated() / 2**30 if setup.device.startswith("cuda") else None
    return {"tokens_per_s": statistics.median(rates), "median_step_s": statistics.median(times), "peak_gib": peak}


def _doc_mask_mod(doc):
    def mask_mod(b, h, q, kv):
        return (doc[q] == doc[kv]) & (q >= kv)
    return mask_mod


# ---- attention only --------------------------------------------------------------------------------------
def attention_only(setup: Setup, bins: list) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cfg = setup.model
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg["hidden_size"] // hq
    flex = torch.compile(flex_attention, dynamic=False) if setup.device.startswith("cuda") else flex_attention
    dev, dt = setup.device, setup.dtype

    def tensors(total, heads):
        return torch.randn(total, heads, d, device=dev, dtype=dt, requires_grad=True)

    def static(lengths):
        # Packed rows are padded to the budget (one padding segment), like static_shape batches, so
        # compiled flex attention sees one shape; only the real tokens are counted.
        pad = setup.budget - sum(lengths)
        return lengths + [pad] if pad else list(lengths)

    def run_warppack(lengths):
        row = static(lengths)
        t = setup.budget
        cu = torch.tensor([0] + row, device=dev).cumsum(0).to(torch.int32)
        q, k, v = tensors(t, hq), tensors(t, hkv), tensors(t, hkv)
        warppack.varlen_attention(q, k, v, cu, max_seqlen_q=max(row), max_seqlen_k=max(row)).sum().backward()
        return sum(lengths)

    def run_padded(lengths):
        for group in padded_groups(lengths, setup.budget):
            b, n = len(group), max(group)
            q = torch.randn(b, hq, n, d, device=dev, dtype=dt, requires_grad=True)
            k, v = (torch.randn(b, hkv, n, d, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()
        return sum(lengths)

    def run_sdpa_packed(lengths):
        t = setup.budget
        cu = torch.tensor([0] + static(lengths), device=dev).cumsum(0)
        mask = warppack.attention.exact.segment_mask(cu, cu, t, t)[None, None]  # what transformers builds
        q = torch.randn(1, hq, t, d, device=dev, dtype=dt, requires_grad=True)
        k, v = (torch.randn(1, hkv, t, d, device=dev, dtype=dt, requires_grad=True) for _ in range(2))
        rep = hq // hkv  # transformers' sdpa repeats kv heads whenever a mask is present
        F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                       attn_mask=mask).sum().backward()
        return sum(lengths)

    def run_flex(lengths):
        t, row = setup.budget, static(lengths)
        doc = torch.repeat_interleave(torch.arange(len(row), device=dev), torch.tensor(row, device=dev))
        block = create_block_mask(_doc_mask_mod(doc), None, None, t, t, device=dev)
        grad = setup.backward_flex
        q = torch.randn(1, hq, t, d, device=dev, dtype=dt, requires_grad=grad)
        k, v = (torch.randn(1, hkv, t, d, device=dev, dtype=dt, requires_grad=grad) for _ in range(2))
        out = flex(q, k, v, block_mask=block, enable_gqa=True)
        if grad:
            out.sum().backward()
        return sum(lengths)

    runs = {"warppack": run_warppack, "padded_sdpa": run_padded, "sdpa_packed": run_sdpa_packed, "flex": run_flex}
    results = {}
    for name in METHODS:
        results[name] = _guarded(lambda: measure(runs[name], bins, setup))
        if name == "warppack":
            results[name]["backend"] = warppack.attention_backend()
        _report_line("attention", name, results[name])
    return results


# ---- full model ------------------------------------------------------------------------------------------
def full_model(setup: Setup, bins: list) -> dict:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**setup.model)
    with torch.device(setup.device):
        model: Any = transformers.LlamaForCausalLM(config)
    model.to(setup.dtype)
    model.train()
    params = sum(p.numel() for p in model.parameters()) / 1e9
    collate = warppack.PackedCollator(setup.budget, static_shape=True, max_sequences=512, pin_memory=False)
    rng = torch.Generator().manual_seed(1)
    seqs = [[torch.randint(3, config.vocab_size, (n,), generator=rng) for n in lengths] for lengths in bins]
    packed = [collate([{"input_ids": s} for s in batch]).to(setup.device) for batch in seqs]

    def step(inputs_list, tokens):
        for inputs in inputs_list:
            model(**inputs).loss.backward()
        model.zero_grad(set_to_none=True)
        return tokens

    def as_row(batch, keys):
        return {k: batch[k] for k in keys} | {"use_cache": False}

    def padded(batch):
        out, start = [], 0
        for group in padded_groups([len(s) for s in batch], setup.budget):
            chunk, start = batch[start : start + len(group)], start + len(group)
            n = max(group)
            ids = torch.zeros(len(chunk), n, dtype=torch.long)
            mask = torch.zeros(len(chunk), n, dtype=torch.long)
            for row, s in enumerate(chunk):
                ids[row, : len(s)], mask[row, : len(s)] = s, 1
            labels = ids.masked_fill(mask == 0, -100)
            out.append({"input_ids": ids.to(setup.device), "attention_mask": mask.to(setup.device),
                        "labels": labels.to(setup.device), "use_cache": False})
        return out

    row_keys = ("input_ids", "labels", "position_ids")
    inputs = {
        "warppack": [[dict(b)] for b in packed],
        "padded_sdpa": [padded(list(batch)) for batch in seqs],
        "sdpa_packed": [[as_row(b, row_keys)] for b in packed],
        "flex": [[as_row(b, row_keys)] for b in packed],
    }
    impl = {"warppack": "warppack", "padded_sdpa": "sdpa", "sdpa_packed": "sdpa", "flex": "flex_attention"}
    tokens = [sum(len(s) for s in batch) for batch in seqs]
    results = {"_parameters_billion": params}
    for name in METHODS:
        model.set_attn_implementation(impl[name])
        work = list(zip(inputs[name], tokens))
        if name == "flex" and not setup.backward_flex:
            def run(item):
                with torch.no_grad():
                    for x in item[0]:
                        model(**x)
                return item[1]
        else:
            def run(item):
                return step(*item)
        results[name] = _guarded(lambda: measure(run, work, setup))
        if name == "warppack":
            results[name]["backend"] = warppack.attention_backend()
        _report_line("model", name, results[name])
    return results


def _guarded(fn) -> dict:
    """One method failing (OOM, missing kernel) must not lose the other measurements."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - recorded in the results, shown in the table
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}


def _report_line(level, name, result):
    if "error" in result:
        print(f"  {level:9s} {name:12s} FAILED {result['error']}", flush=True)
        return
    peak = "-" if result["peak_gib"] is None else f"{result['peak_gib']:.2f} GiB"
    print(f"  {level:9s} {name:12s} {result['tokens_per_s']:>12,.0f} tok/s  {result['median_step_s'] * 1e3:8.2f} ms  "
          f"{peak}", flush=True)


def markdown(results: dict, setup: Setup, bins: list) -> str:
    real = [sum(b) for b in bins]
    lines = [f"Budget T={setup.budget} tokens, {len(bins)} packed batches of {min(map(len, bins))}-"
             f"{max(map(len, bins))} sequences ({min(real)}-{max(real)} real tokens), {setup.dtype}, "
             f"median of {setup.repeats} steps after {setup.warmup} warm-up."
             + (f" Model level: Llama config, {params:.2f}B parameters, forward + backward."
                if (params := results.get("model", {}).get("_parameters_billion")) else ""), "",
             "| level | method | real tokens/s | median step | peak memory | vs warppack |",
             "|---|---|---|---|---|---|"]
    for level in ("attention", "model"):
        base = results.get(level, {}).get("warppack", {}).get("tokens_per_s")
        for name in METHODS:
            r = results.get(level, {}).get(name)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {level} | {name} | failed: {r['error']} | | | |")
                continue
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f} GiB"
            ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {level} | {name} | {r['tokens_per_s']:,.0f} | {r['median_step_s'] * 1e3:.1f} ms | {peak} "
                         f"| {ratio} |")
    return "\n".join(lines) + "\n"


def run(setup: Setup, *, levels: Sequence[str] = ("attention", "model")) -> dict:
    bins = packed_lengths(setup)
    print(f"benchmark: {len(bins)} batches, real tokens {[sum(b) for b in bins]}, device {setup.device}", flush=True)
    results: Dict[str, Any] = {"bins": bins}
    if "attention" in levels:
        results["attention"] = attention_only(setup, bins)
    if "model" in levels:
        results["model"] = full_model(setup, bins)
    results["markdown"] = markdown(results, setup, bins)
    return results
