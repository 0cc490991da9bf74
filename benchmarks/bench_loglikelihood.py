"""Multiple-choice log-likelihoods three ways, side by side: padded batches, one packed row per request, warppack's scorer.

Requests are lm-eval-style multiple choice: ``--contexts`` contexts (lognormal lengths, 40–400
tokens) with ``--choices`` short answers each (1–5 tokens), on a tiny random Llama with SmolLM2's
vocabulary (49,152), so that the LM head and the log-softmax weigh as they do in real evaluation.

- ``padded``: what a padding evaluator does: one row per request, sorted by length, ``--batch-size``
  rows per batch padded to the longest, SDPA attention, full logits.
- ``packed rows``: ``evaluate_packed`` + ``score_sequences``: one packed sequence per request, full logits.
- ``loglikelihood``: ``warppack.loglikelihood``: each distinct input row once, the LM head only at
  the continuation positions.

All three give the same log-likelihoods (the largest difference is printed). Medians of ``--repeats``
alternating runs after one untimed run of each:

    python benchmarks/bench_loglikelihood.py --contexts 64 --choices 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import transformers

import warppack

Request = Tuple[List[int], List[int]]


def make_requests(contexts: int, choices: int, vocab: int, seed: int = 0) -> List[Request]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(140), 0.6, size=contexts), 40, 400).astype(int)
    requests = []
    for length in lengths:
        context = rng.integers(3, vocab, size=length).tolist()
        for _ in range(choices):
            requests.append((context, rng.integers(3, vocab, size=rng.integers(1, 6)).tolist()))
    return requests


def padded(model: torch.nn.Module, requests: Sequence[Request], batch_size: int) -> List[float]:
    """One row per request, longest first, ``batch_size`` rows padded to the longest of each batch."""
    rows = [(context + continuation)[:-1] for context, continuation in requests]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(rows[i]) for i in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, :len(rows[i])] = torch.tensor(rows[i])
                mask[r, :len(rows[i])] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
            for r, i in enumerate(chunk):
                continuation = requests[i][1]
                end = len(rows[i])
                picked = logp[r, end - len(continuation):end].gather(-1, torch.tensor(continuation)[:, None])
                out[i] = float(picked.sum())
    return out


def packed_rows(model: torch.nn.Module, requests: Sequence[Request], max_tokens: int) -> List[float]:
    examples = [warppack.loglikelihood_example(context, continuation) for context, continuation in requests]
    return [score.logprob for score in warppack.evaluate_packed(model, examples, max_tokens=max_tokens)]


def scorer(model: torch.nn.Module, requests: Sequence[Request], max_tokens: int) -> List[float]:
    return [logprob for logprob, _ in warppack.loglikelihood(model, requests, max_tokens=max_tokens)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=64)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="rows per padded batch")
    parser.add_argument("--max-tokens", type=int, default=4096, help="token budget of the packed arms")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = transformers.LlamaForCausalLM(config).eval()
    model.set_attn_implementation("warppack")
    padding_model = transformers.LlamaForCausalLM(config).eval()  # the same weights, attending with SDPA
    padding_model.load_state_dict(model.state_dict())
    padding_model.set_attn_implementation("sdpa")
    requests = make_requests(args.contexts, args.choices, config.vocab_size)
    arms: Dict[str, Callable[[], List[float]]] = {
        "padded": lambda: padded(padding_model, requests, args.batch_size),
        "packed rows": lambda: packed_rows(model, requests, args.max_tokens),
        "loglikelihood": lambda: scorer(model, requests, args.max_tokens),
    }
    seconds: Dict[str, List[float]] = {name: [] for name in arms}
    scores: Dict[str, List[float]] = {}
    for run in arms.values():  # warm-up, not timed
        run()
    for _ in range(args.repeats):
        for name, run in arms.items():  # alternating, so that drift hits every arm alike
            start = time.perf_counter()
            scores[name] = run()
            seconds[name].append(time.perf_counter() - start)
    worst = max(abs(a - b) for name in arms for a, b in zip(scores[name], scores["padded"]))
    base = statistics.median(seconds["padded"])
    print(f"{len(requests)} requests ({args.contexts} contexts x {args.choices} choices), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"{'arm':<14} {'median s':>9} {'min..max s':>14} {'requests/s':>11} {'vs padded':>10}")
    for name in arms:
        median = statistics.median(seconds[name])
        spread = f"{min(seconds[name]):.2f}..{max(seconds[name]):.2f}"
        print(f"{name:<14} {median:>9.3f} {spread:>14} {len(requests) / median:>11.1f} {base / median:>9.2f}x")
    print(f"largest log-likelihood difference from padded: {worst:.2e}")


if __name__ == "__main__":
    main()
