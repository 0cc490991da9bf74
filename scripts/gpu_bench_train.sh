#!/usr/bin/env bash
# The end-to-end benchmark's device command (issue 6): joins the GGUF halves that two calls carried
# (scripts/carry_smollm2.sh), checks the SHA-256, installs the carried wheels, builds the extension
# and runs bench_train.py. Without the first half (the machine went cold between the calls) the
# evaluation falls back to random weights, and the report says so. Extra arguments go to bench_train.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-./out}; mkdir -p "$OUT"
gguf=.carry/smollm2/$(cat .carry/gguf_b/NAME 2>/dev/null || echo SmolLM2-135M-Instruct.Q4_1.gguf)
mkdir -p .carry/smollm2
if [ ! -f "$gguf" ] && [ -f .carry/gguf_a/part ]; then
  cat .carry/gguf_a/part .carry/gguf_b/part > "$gguf"
fi
if [ -f "$gguf" ] && ! echo "$(cat .carry/gguf_b/SHA256)  $gguf" | sha256sum -c; then
  rm -f "$gguf"
fi
[ -f "$gguf" ] || echo "no SmolLM2 GGUF on this machine: evaluation uses random weights"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 setup.py build_ext --inplace -q > /tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
python3 benchmarks/bench_train.py --out "$OUT" --data-dir .carry/data --smollm2-gguf "$gguf" "$@" 2>&1 \
  | grep -v 'de-quantizing GGUF'
