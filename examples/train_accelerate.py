"""Train a causal LM on packed batches with Hugging Face Accelerate (one GPU, DDP or FSDP).

    python examples/train_accelerate.py --tiny                         # CPU, a few seconds (CI)
    accelerate launch examples/train_accelerate.py                     # every GPU of the machine
    accelerate launch examples/train_accelerate.py --model DIR --grad-accum 4

Each rank draws its own share of the packed batches from PackedBatchSampler (exactly once over all
ranks, the same number of steps on every rank), so the DataLoader is not handed to
``accelerator.prepare``; batches move to the device with one copy each.

The loss is normalised by the number of label tokens of the whole optimizer step — all micro-batches
of the accumulation window on all ranks — so the update equals one big token-weighted batch, however
the tokens were split into packed batches.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import re
import sysconfig
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import warppack


def stdlib_examples(max_files: int, max_len: int, tokenizer=None) -> list:
    """{"input_ids"} examples from the standard library's sources: bytes, or a tokenizer's ids."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py"))[:max_files]:
        source = path.read_text(encoding="utf-8", errors="replace")
        texts += [t for t in re.split(r"\n(?=def |class )", source) if t.strip()]
    if tokenizer is None:
        rows = [list(t.encode("utf-8"))[:max_len] for t in texts]
    else:
        rows = [r[:max_len] for r in tokenizer(texts)["input_ids"]]
    return [{"input_ids": r} for r in rows if len(r) >= 2]


def windows(iterable, size: int):
    """Consecutive lists of ``size`` items (the last may be shorter): one optimizer step each."""
    iterator = iter(iterable)
    while window := list(itertools.islice(iterator, size)):
        yield window


def main(argv=None) -> int:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps on the CPU")
    parser.add_argument("--model", default=None, help="folder of a saved causal LM (and its tokenizer)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per micro-batch")
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.max_len = args.max_len or (256 if args.tiny else 1024)
    args.max_tokens = args.max_tokens or (768 if args.tiny else 16_384)
    args.grad_accum = args.grad_accum or (2 if args.tiny else 1)
    args.max_steps = args.max_steps or (3 if args.tiny else None)

    accelerator = Accelerator(cpu=args.tiny, mixed_precision=args.mixed_precision)
    tokenizer = AutoTokenizer.from_pretrained(args.model) if args.model else None
    examples = stdlib_examples(8 if args.tiny else 200, args.max_len, tokenizer)

    sampler = warppack.PackedBatchSampler(
        warppack.lengths_of(examples), args.max_tokens, shuffle=True, seed=args.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index,
    )
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=warppack.PackedCollator(
        args.max_tokens, pad_token_id=pad_id, allow_empty=True))  # a rank without data takes a zero-loss step

    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="warppack")
    else:
        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if args.tiny else dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8)
        torch.manual_seed(args.seed)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, max_position_embeddings=args.max_len,
                                             num_key_value_heads=2, attn_implementation="warppack", **size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    report = warppack.check_model(accelerator.unwrap_model(model))  # once, before training
    accelerator.print(f"{accelerator.num_processes} process(es), {len(sampler)} batches per epoch per rank; "
                      f"check_model: max relative error {report['max_relative_error']:.1e}")

    model.train()
    step, tokens, start, loss_sum = 0, 0, time.perf_counter(), float("nan")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for window in windows(loader, args.grad_accum):
            window = [batch.to(accelerator.device, non_blocking=True) for batch in window]
            # label tokens of this optimizer step: all micro-batches, summed over every rank
            num_items = max(int(warppack.global_num_label_tokens(window)), 1)
            loss_sum = 0.0
            for i, batch in enumerate(window):
                last = i == len(window) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    out = model(**batch, num_items_in_batch=num_items)  # sum of token losses / num_items
                    # DDP averages gradients over ranks: scale back up so the result is the global sum / num_items
                    accelerator.backward(out.loss * accelerator.num_processes)
                loss_sum += out.loss.item()
                tokens += batch.num_tokens
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            accelerator.print(f"epoch {epoch} step {step}: loss {loss_sum:.3f} over {num_items:,} label tokens "
                              f"in {len(window)} micro-batches")
            if args.max_steps and step >= args.max_steps:
                break
        if args.max_steps and step >= args.max_steps:
            break
    seconds = time.perf_counter() - start
    if not math.isfinite(loss_sum):
        raise SystemExit(f"training diverged: loss {loss_sum}")
    accelerator.print(f"done: {step} optimizer steps, {tokens:,} real tokens on rank 0 in {seconds:.1f}s "
                      f"({tokens / seconds:,.0f} tokens/s per rank)")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
