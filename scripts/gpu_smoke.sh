#!/usr/bin/env bash
# A first look at a CUDA machine, from the repository root: builds the extension in place, then runs
# `warppack demo` and the collator benchmark. Output under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-./out}; mkdir -p "$OUT"
python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee "$OUT/versions.txt"
python setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python -m warppack demo --steps 20 2>&1 | tee "$OUT/demo.txt"
python benchmarks/bench_collate.py --repeats 30 2>&1 | tee "$OUT/bench_collate_gpu_host.txt"
