"""Attention benchmark: warppack varlen vs padded SDPA vs transformers sdpa (packed position_ids) vs flex.

All four methods see the same sequences (seeded lognormal lengths, 32..2048 tokens, packed under a
budget of T tokens by ``warppack.plan``):

* ``warppack``     packed row, ``attn_implementation="warppack"`` (varlen kernel over cu_seqlens)
* ``padded_sdpa``  the same sequences in padded batches of at most T tokens *including padding*
                   (so memory is comparable), causal SDPA; padding is wasted work
* ``sdpa_packed``  packed row, transformers' ``sdpa`` with packed ``position_ids``: a [T, T] block mask
* ``flex``         packed row, flex attention with a document-causal ``BlockMask``

Two levels: attention alone (fwd+bwd of one attention call, 1B-model head shapes) and the full
forward+backward of a ~1B-parameter Llama-config model. Reported: median real (non-padding) tokens/s
over the timed steps and peak memory.

    python benchmarks/bench_attention.py            # CUDA, bf16, ~1B Llama config (H200: ~1 min)
    python benchmarks/bench_attention.py --smoke    # CPU, fp32, tiny model: checks the code paths only
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from benchlib.attention import Setup, run


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, fp32, tiny model (code paths only)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = run(Setup.smoke() if args.smoke else Setup())
    print(results["markdown"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
