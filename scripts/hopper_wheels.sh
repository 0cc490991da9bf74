#!/usr/bin/env bash
# The [hopper] extra's wheels (flash-attn-4 on NVIDIA's CuTe DSL) for a GPU machine that reaches no
# package index, when what one transfer may carry is limited: the CUDA 13 library wheel alone is
# ~92 MB, so the wheels travel in two parts of under 55 MB each. From the repository root:
#
#   here:                 bash scripts/hopper_wheels.sh prepare       # download into .whl/, split into .whl/parts/p1, p2
#   there, with part p1:  bash scripts/hopper_wheels.sh stash         # kept in /tmp/hopper_parts
#   there, with part p2:  bash scripts/hopper_wheels.sh install DIR   # rejoin, verify, pip install --target DIR
#
# then PYTHONPATH=DIR:DIR/nvidia_cutlass_dsl/dsl_packages (a --target folder's .pth files are not read).
# Not carried: what the GPU image already has (torch, einops, typing-extensions, cuda-bindings, protobuf).
set -euo pipefail
WHEELS=(flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
        nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5
        apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5)
PART_BYTES=45000000
STASH=${HOPPER_STASH:-/tmp/hopper_parts}

prepare() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${WHEELS[@]}"
  rm -rf .whl/parts && mkdir -p .whl/parts/p1 .whl/parts/p2
  (cd .whl && sha256sum ./*.whl > parts/p2/SHA256SUMS)
  big=$(cd .whl && ls nvidia_cutlass_dsl_libs_cu13-*.whl)
  split -b "$PART_BYTES" -a 2 ".whl/$big" ".whl/parts/$big.part-"
  mv ".whl/parts/$big.part-aa" .whl/parts/p1/ && mv .whl/parts/"$big".part-* .whl/parts/p2/
  for w in .whl/*.whl; do
    case "$w" in
      *libs_cu13*) ;;
      *apache_tvm_ffi*|*libs_base*|*libs_core*) cp "$w" .whl/parts/p1/ ;;
      *) cp "$w" .whl/parts/p2/ ;;
    esac
  done
  du -b .whl/*.whl .whl/parts/p1/* .whl/parts/p2/* | sort -k2
  du -sb .whl/parts/p1 .whl/parts/p2
}

stash() {
  mkdir -p "$STASH" && cp .whl/parts/p1/* "$STASH"/
  ls -l "$STASH"
}

install() {
  local target=${1:?install needs the target folder}
  mkdir -p "$STASH"
  for half in .whl/parts/p1 .whl/parts/p2; do  # p1 is still in the tree if the machine kept it
    if [ -d "$half" ]; then cp "$half"/* "$STASH"/; fi
  done
  cd "$STASH"
  for first in ./*.part-aa; do
    [ -e "$first" ] || { echo "no .part-aa here: run 'stash' with .whl/parts/p1 first" >&2; exit 1; }
    cat "${first%.part-aa}".part-* > "${first%.part-aa}"
  done
  sha256sum -c SHA256SUMS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" ./*.whl
  echo "installed into $target: PYTHONPATH=$target:$target/nvidia_cutlass_dsl/dsl_packages"
}

case "${1:-}" in
  prepare) prepare ;;
  stash) stash ;;
  install) install "${2:-}" ;;
  *) echo "usage: $0 prepare | stash | install DIR" >&2; exit 2 ;;
esac
