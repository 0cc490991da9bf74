"""``warppack demo``: packed vs padded training of a small causal LM on real text, no download.

The text is the Python standard library's own source (every Python install has it), tokenized by a
byte-level BPE trained on the spot; the model is a small Llama-config LM with random weights. Each
phase prints a line first; progress bars show on a terminal.
"""

from __future__ import annotations

import argparse
import re
import sysconfig
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from warppack.cli.errors import EXIT_NO_DEVICE, EXIT_NOTHING_TO_PACK, EXIT_USAGE, CliError
from warppack.cli.options import check_count, check_seed
from warppack.progress import Progress

__all__ = ["add_arguments", "run", "stdlib_sequences"]

_TOP_LEVEL_DEF = re.compile(r"\n(?=(?:def |class |@|if __name__))")
_ENCODE_CHUNK = 128  # pieces per encode call: the step of the tokenizing bar
# tokens per training step at most: the logits alone are tokens x vocabulary floats, with gradients
MAX_STEP_TOKENS = 65_536
Batches = Iterator[Tuple[Any, int, int]]  # (batch, real tokens, token slots)


def _stdlib_texts(max_bytes: int) -> List[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, used = [], 0
    for path in sorted(root.glob("*.py")):  # top-level modules: deterministic on every install
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        used += len(text)
        if used >= max_bytes:
            break
    if not texts:
        raise RuntimeError(f"found no Python sources under {root}; the demo needs the standard library")
    return texts


def stdlib_sequences(
    *, vocab_size: int = 2048, max_len: int = 512, max_bytes: int = 3_000_000
) -> Tuple[List[np.ndarray], Any]:
    """Token sequences (one per top-level definition of the stdlib sources) and the tokenizer."""
    from tokenizers import ByteLevelBPETokenizer  # ships with transformers

    texts = _stdlib_texts(max_bytes)
    pieces = [p for text in texts for p in _TOP_LEVEL_DEF.split(text) if p.strip()]
    chunks = [pieces[i : i + _ENCODE_CHUNK] for i in range(0, len(pieces), _ENCODE_CHUNK)]
    tokenizer = ByteLevelBPETokenizer()
    encoded = []
    # the tokenizers package's own bar would write blank lines into a pipe even when forced on
    with Progress(1 + len(chunks), desc="training the tokenizer", unit="step") as bar:
        tokenizer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False)
        bar.update()
        bar.set_description(f"tokenizing {len(pieces):,} definitions")
        for chunk in chunks:
            encoded.extend(tokenizer.encode_batch(chunk))
            bar.update()
    sequences = [np.asarray(e.ids[:max_len], dtype=np.int64) for e in encoded if len(e.ids) >= 2]
    return sequences, tokenizer


def _model(vocab_size: int, max_len: int, device: torch.device, attn: str) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    width = 256 if device.type == "cuda" else 128  # a CPU run stays a couple of minutes
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=width * 8 // 3,
        num_hidden_layers=4 if device.type == "cuda" else 2,
        num_attention_heads=8 if device.type == "cuda" else 4,
        num_key_value_heads=4 if device.type == "cuda" else 2,
        max_position_embeddings=max_len,
    )
    torch.manual_seed(0)
    # from_config is the public way to choose the attention of a config-built model (and checks the
    # name); building under the device context puts the weights there without a CPU copy first.
    with device:
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def _padded_batches(sequences: Sequence[np.ndarray], batch_size: int, seed: int) -> Batches:
    order = np.random.default_rng(seed).permutation(len(sequences))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chosen = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(s) for s in chosen)
        ids = torch.zeros(len(chosen), width, dtype=torch.long)
        mask = torch.zeros(len(chosen), width, dtype=torch.long)
        for row, seq in enumerate(chosen):
            ids[row, : len(seq)] = torch.from_numpy(seq)
            mask[row, : len(seq)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum()), ids.numel()


def _packed_batches(sequences: Sequence[np.ndarray], max_tokens: int, seed: int) -> Batches:
    from warppack.batch.collator import PackedCollator
    from warppack.loaders.sampler.sampler import PackedBatchSampler

    sampler = PackedBatchSampler([len(s) for s in sequences], max_tokens, shuffle=True, seed=seed)
    collate = PackedCollator(max_tokens)
    for indices in sampler:
        batch = collate([{"input_ids": sequences[i]} for i in indices])
        yield batch, batch.num_tokens, max_tokens


def _train(model: Any, batches: Batches, steps: int, device: torch.device, *, desc: str) -> Dict[str, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    real = slots = done = 0
    loss = float("nan")
    start: Optional[float] = None  # set after the first (warm-up) step
    with Progress(steps + 1, desc=desc, unit="step") as bar:
        for batch, batch_real, batch_slots in batches:
            if done == 1:  # the first step warms up kernels and allocators; time the rest
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start, real, slots = time.perf_counter(), 0, 0
            batch = batch.to(device, non_blocking=True) if hasattr(batch, "num_tokens") else {
                k: v.to(device, non_blocking=True) for k, v in batch.items()
            }
            out = model(**batch)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(out.loss.detach())
            real, slots, done = real + batch_real, slots + batch_slots, done + 1
            bar.update()
            if done > steps:
                break
    if start is None:  # the data ran out before a step could be timed
        raise CliError(
            f"the data gave only {done} batch(es); the demo needs 2 (one warm-up, one timed): "
            f"lower --batch-size or --max-len",
            EXIT_NOTHING_TO_PACK,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"steps": done - 1, "real": real, "slots": slots, "seconds": elapsed, "loss": loss}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per mode (default 12)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help=f"padded batch size (default 8); packed batches hold --batch-size x --max-len tokens, at most "
        f"{MAX_STEP_TOKENS:,}",
    )
    parser.add_argument("--max-len", type=int, default=512, help="longest sequence in tokens (default 512)")
    parser.add_argument(
        "--source-bytes",
        type=int,
        default=3_000_000,
        metavar="N",
        help="bytes of standard-library source to tokenize and train on (default 3,000,000)",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0; both modes start from the same weights)")


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {name!r} is not a torch device; pass cuda, cuda:1 or cpu", EXIT_USAGE) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(
            f"--device {name}: torch {torch.__version__} sees no CUDA device; pass --device cpu", EXIT_NO_DEVICE
        )
    return device


def _check_options(args: argparse.Namespace) -> None:
    check_count(args.steps, flag="--steps", example=12, maximum=100_000)
    check_count(args.batch_size, flag="--batch-size", example=8, maximum=MAX_STEP_TOKENS)
    check_count(args.max_len, flag="--max-len", example=512, maximum=MAX_STEP_TOKENS)
    check_count(args.source_bytes, flag="--source-bytes", example=3_000_000, maximum=1 << 30)
    check_seed(args.seed)
    if args.batch_size * args.max_len > MAX_STEP_TOKENS:
        raise CliError(
            f"--batch-size {args.batch_size} x --max-len {args.max_len} = {args.batch_size * args.max_len:,} "
            f"tokens per step, more than the demo's {MAX_STEP_TOKENS:,}; lower either",
            EXIT_USAGE,
        )


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    device = _device(args.device)
    from warppack._version import __version__

    attn = "warppack"
    print(f"warppack {__version__} demo on {device} (attention: {attn})")
    print(f"tokenizing {args.source_bytes:,} bytes of the standard library's sources (a byte-level BPE trained here)",
          flush=True)
    sequences, tokenizer = stdlib_sequences(max_len=args.max_len, max_bytes=args.source_bytes)
    if not sequences:
        raise CliError("the sources gave no sequence of 2 tokens or more; raise --source-bytes", EXIT_NOTHING_TO_PACK)
    lengths = np.array([len(s) for s in sequences])
    print(
        f"{len(sequences)} sequences from the standard library's sources; tokens per sequence: "
        f"median {int(np.median(lengths))}, max {lengths.max()}, mean {lengths.mean():.0f}",
        flush=True,
    )
    budget = args.batch_size * args.max_len  # the same slots per step as a full padded batch
    arms = (
        ("padded", f"{args.batch_size} sequences per batch, padded to the longest (sdpa attention)",
         _padded_batches(sequences, args.batch_size, args.seed)),
        ("packed", f"up to {budget:,} tokens per batch, no padding ({attn} attention)",
         _packed_batches(sequences, budget, args.seed)),
    )
    results = {}
    for mode, what, batches in arms:
        print(f"training {mode}: 1 warm-up + {args.steps} timed steps, {what}", flush=True)
        model = _model(tokenizer.get_vocab_size(), args.max_len, device, attn if mode == "packed" else "sdpa")
        results[mode] = _train(model, batches, args.steps, device, desc=f"training {mode}")

    header = f"{'mode':<8}{'steps':>6}{'real tokens':>13}{'padding':>10}{'efficiency':>12}{'tokens/s':>12}{'loss':>8}"
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        padding = 1 - r["real"] / r["slots"]
        print(
            f"{mode:<8}{r['steps']:>6}{r['real']:>13,}{padding:>10.1%}{r['real'] / r['slots']:>12.1%}"
            f"{r['real'] / r['seconds']:>12,.0f}{r['loss']:>8.3f}"
        )
    speedup = (results["packed"]["real"] / results["packed"]["seconds"]) / (
        results["padded"]["real"] / results["padded"]["seconds"]
    )
    print(f"packed trains {speedup:.2f}x the real tokens per second of padded batches")
    return 0
