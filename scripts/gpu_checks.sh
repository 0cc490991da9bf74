#!/usr/bin/env bash
# The GPU checks of the model integration, from the repository root of a CUDA machine: builds the
# extension in place, then the model checks (kernels, seven families packed vs alone, torch.compile,
# the attention/model benchmark) and the collator benchmark pinned to one host core. Output under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-./out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/versions.txt"
python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/versions.txt"
python setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
python benchmarks/gpu_model_checks.py --benchmark --out "$OUT" 2>&1 | tee "$OUT/gpu_model_checks.log"
taskset -c 3 python benchmarks/bench_collate.py --repeats 50 2>&1 | tee "$OUT/bench_collate_gpu_host.txt"
