"""Train a causal LM on packed batches with a plain PyTorch loop.

    python examples/train_pytorch.py --tiny           # CPU, a few seconds (what CI runs)
    python examples/train_pytorch.py                  # a small Llama-config LM, GPU when there is one
    python examples/train_pytorch.py --model DIR      # fine-tune a saved causal LM with its tokenizer

The text is the Python standard library's own source (every Python install has it), one example
per top-level definition. Without --model the tokens are bytes (vocabulary 256) and the model is a
randomly initialised Llama config, so nothing is downloaded.

What warppack adds to an ordinary loop: a token-budget batch sampler, the packed collator, the
"warppack" attention implementation, and a one-time check that packed sequences stay separate.
"""

from __future__ import annotations

import argparse
import math
import re
import sysconfig
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import warppack


def stdlib_texts(max_files: int) -> list:
    """One text per top-level definition of the standard library's modules (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py"))[:max_files]:
        source = path.read_text(encoding="utf-8", errors="replace")
        texts += [t for t in re.split(r"\n(?=def |class )", source) if t.strip()]
    return texts


def tokenize(texts, tokenizer, max_len: int) -> list:
    """Examples {"input_ids": [...]} of 2..max_len tokens (bytes when there is no tokenizer)."""
    if tokenizer is None:
        ids = [list(t.encode("utf-8"))[:max_len] for t in texts]
    else:
        ids = [row[:max_len] for row in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    return [{"input_ids": row} for row in ids if len(row) >= 2]


def build_model(args, device):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="warppack").to(device)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if args.tiny else dict(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8)
    config = LlamaConfig(vocab_size=256, max_position_embeddings=args.max_len, num_key_value_heads=2,
                         attn_implementation="warppack", **size)
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config).to(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few steps on the CPU")
    parser.add_argument("--model", default=None, help="folder of a saved causal LM (and its tokenizer)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per batch")
    parser.add_argument("--max-len", type=int, default=None, help="longest example in tokens")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    args.max_len = args.max_len or (256 if args.tiny else 1024)
    args.max_tokens = args.max_tokens or (1024 if args.tiny else 16_384)
    args.max_steps = args.max_steps or (4 if args.tiny else None)
    device = torch.device("cpu" if args.tiny else args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    tokenizer = None
    if args.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples = tokenize(stdlib_texts(8 if args.tiny else 200), tokenizer, args.max_len)

    # 1. Batches by token budget: lengths come from the examples, the plan from the C++ engine.
    sampler = warppack.PackedBatchSampler(warppack.lengths_of(examples), args.max_tokens, shuffle=True, seed=args.seed)
    # 2. The collator writes each batch into one buffer (pinned when CUDA is there).
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    collator = warppack.PackedCollator(args.max_tokens, pad_token_id=pad_id)
    loader = DataLoader(examples, batch_sampler=sampler, collate_fn=collator, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda" and args.num_workers > 0)
    # 3. Attention that follows the sequence boundaries, proven once before training.
    model = build_model(args, device)
    report = warppack.check_model(model)
    print(f"{len(examples):,} examples, {len(sampler)} batches per epoch of <= {args.max_tokens:,} tokens; "
          f"check_model: max relative error {report['max_relative_error']:.1e}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    model.train()
    step, tokens, slots, start, loss = 0, 0, 0, time.perf_counter(), float("nan")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new, deterministic plan every epoch
        for batch in loader:
            batch = batch.to(device, non_blocking=True)  # one host-to-device copy
            out = model(**batch)  # loss: mean over this batch's label tokens
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = out.loss.item()
            step, tokens, slots = step + 1, tokens + batch.num_tokens, slots + batch["input_ids"].shape[1]
            if step % 10 == 0 or args.tiny:
                print(f"epoch {epoch} step {step}: loss {loss:.3f}, {batch.num_sequences} sequences, "
                      f"{batch.num_tokens:,} tokens")
            if args.max_steps and step >= args.max_steps:
                break
        if args.max_steps and step >= args.max_steps:
            break
    seconds = time.perf_counter() - start
    if not math.isfinite(loss):
        raise SystemExit(f"training diverged: loss {loss}")
    print(f"done: {step} steps, {tokens:,} real tokens in {seconds:.1f}s ({tokens / seconds:,.0f} tokens/s), "
          f"padding {1 - tokens / max(slots, 1):.1%}, final loss {loss:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
