#!/usr/bin/env bash
# The long-context attention kernels on a CUDA machine, in one call from the repository root: installs
# the [hopper] wheels (scripts/hopper_wheels.sh; the first part stashed before),
# builds the extension in place, then checks and benchmarks every kernel found
# (benchmarks/gpu_long_context.py). Without the wheels it still measures the kernels torch has. Output under $OUT. Extra arguments go to the script.
set -uo pipefail
# flash-attn-4 compiles its kernels on first use: keep them on disk, so a second run on the same
# machine, e.g. with --skip checks attention steps, does not compile them again
export PYTHONUNBUFFERED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4_cache
OUT=${OUT:-./out}; mkdir -p "$OUT"
SITE=/tmp/hopper_site
if bash scripts/hopper_wheels.sh install "$SITE" > "$OUT/install.log" 2>&1; then
  # a --target folder's .pth files are not read: the CuTe DSL's own path goes on PYTHONPATH by hand
  export PYTHONPATH=$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  tail -5 "$OUT/install.log"; echo "the [hopper] wheels are not installed: measuring the kernels torch has"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "import flash_attn.cute as f; print('flash-attn-4 imports from', f.__file__)" 2>&1 | tail -1
} | tee "$OUT/versions.txt"
python3 setup.py build_ext --inplace -q > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
limit=$(( 540 - SECONDS )); (( limit > 420 )) && limit=420
python3 benchmarks/gpu_long_context.py --out "$OUT" --time-limit "$limit" "$@" 2>&1 | tee "$OUT/gpu_long_context.log"
