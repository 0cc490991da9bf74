"""Evaluate a causal LM on packed batches: per-example scores in dataset order, every example once.

    python examples/evaluate_packed.py --tiny          # CPU, a few seconds (what CI runs)
    python examples/evaluate_packed.py --model DIR     # a saved causal LM and its tokenizer, GPU if any

Three things a benchmark harness needs, each checked against running the examples one by one:

1. the log-likelihood of every example (perplexity), in the dataset's order;
2. lm-eval style "loglikelihood" requests: score a continuation given a context (the scorer of
   warppack's lm-eval backend: each distinct input row once, logits only where they are read);
3. embeddings pooled per sequence from the packed hidden states.

Without --model the model is a small random Llama config and the tokens are bytes of the Python
standard library's sources, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import re
import sysconfig
import time
from pathlib import Path

import torch

import warppack


def stdlib_texts(max_files: int) -> list:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py"))[:max_files]:
        source = path.read_text(encoding="utf-8", errors="replace")
        texts += [t for t in re.split(r"\n(?=def |class )", source) if t.strip()]
    return texts


def one_by_one_logprob(model, ids, labels, device) -> float:
    """The reference: one unpadded forward per example."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(labels[1:], device=device)
    keep = targets != -100
    return float(logp[keep].gather(-1, targets[keep][:, None]).sum())


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--model", default=None, help="folder of a saved causal LM (and its tokenizer)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per packed batch")
    parser.add_argument("--max-len", type=int, default=None, help="longest example in tokens")
    parser.add_argument("--check", type=int, default=None, help="examples to compare with one-by-one scoring")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    args.max_len = args.max_len or (192 if args.tiny else 1024)
    args.max_tokens = args.max_tokens or (1024 if args.tiny else 32_768)
    args.check = args.check if args.check is not None else (8 if args.tiny else 32)
    device = torch.device("cpu" if args.tiny else args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    texts = stdlib_texts(4 if args.tiny else 100)
    if args.model:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="warppack")
        rows = tokenizer(texts)["input_ids"]
    else:
        torch.manual_seed(0)
        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if args.tiny else dict(
            hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, max_position_embeddings=args.max_len,
                                             num_key_value_heads=2, attn_implementation="warppack", **size))
        rows = [list(t.encode("utf-8")) for t in texts]
    model = model.to(device).eval()
    examples = [{"input_ids": r[: args.max_len]} for r in rows if len(r) >= 2]
    warppack.check_model(model)

    # 1. Per-example log-likelihood, packed; results come back in dataset order, none dropped.
    start = time.perf_counter()
    scores = warppack.evaluate_packed(model, examples, max_tokens=args.max_tokens)
    seconds = time.perf_counter() - start
    total_logprob = sum(s.logprob for s in scores)
    scored = sum(s.num_tokens for s in scores)
    print(f"{len(examples):,} examples scored packed in {seconds:.2f}s; perplexity {math.exp(-total_logprob / scored):.2f} "
          f"over {scored:,} predicted tokens")
    worst = 0.0
    for i in range(min(args.check, len(examples))):
        ids = examples[i]["input_ids"]
        ref = one_by_one_logprob(model, ids, ids, device)
        worst = max(worst, abs(scores[i].logprob - ref) / max(abs(ref), 1e-6))
    print(f"packed vs one by one ({min(args.check, len(examples))} examples): max relative difference {worst:.1e}")

    # 2. lm-eval "loglikelihood" requests: (context ids, continuation ids) -> (logprob, is_greedy).
    requests = [(ex["input_ids"][: len(ex["input_ids"]) // 2], ex["input_ids"][len(ex["input_ids"]) // 2 :]) for ex in examples]
    results = warppack.loglikelihood(model, requests, max_tokens=args.max_tokens)
    context, continuation = requests[0]
    ref = one_by_one_logprob(model, context + continuation, [-100] * len(context) + continuation, device)
    print(f"loglikelihood of the second half given the first, request 0: {results[0][0]:.3f} "
          f"(one by one: {ref:.3f}); greedy: {results[0][1]}")
    worst = max(worst, abs(results[0][0] - ref) / max(abs(ref), 1e-6))

    # 3. Embeddings: mean-pool the last hidden states of each sequence of a packed batch.
    batch = warppack.PackedCollator(args.max_tokens)(examples[:4]).to(device)
    with torch.no_grad():
        hidden = model(**batch.model_inputs(), output_hidden_states=True, use_cache=False).hidden_states[-1]
        embeddings = warppack.pool_sequences(hidden, batch["cu_seq_lens_q"], num_sequences=batch.num_sequences)
        alone = model(input_ids=torch.tensor([examples[0]["input_ids"]], device=device),
                      output_hidden_states=True, use_cache=False).hidden_states[-1][0].mean(0)
    difference = float((embeddings[0] - alone).abs().max() / alone.abs().max())
    print(f"embeddings {tuple(embeddings.shape)}; sequence 0 vs alone: max relative difference {difference:.1e}")

    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
    if max(worst, difference) > tolerance:
        raise SystemExit(f"packed results differ from one-by-one results by {max(worst, difference):.1e} "
                         f"(tolerance {tolerance:.0e}): run warppack.check_model(model) for a diagnosis")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
