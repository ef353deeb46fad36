#!/usr/bin/env bash
# The GPU correctness check for NVIDIA targets: compiles tests/gpu/matrix.nib for sm_90 and runs every kernel on the
# GPU against the CPU reference (random and adversarial data, M in {1, 7, 16, 33, 128}, negative controls).
# Where there is no NVIDIA GPU or driver it prints "skipped: no NVIDIA GPU (...)" and exits 0; pass --require-gpu
# to make that an error. On a GPU machine without LLVM, copy target/release/nibble-rt and out/cuda-check there and
# run `nibble-rt check out/cuda-check --require-gpu` (what bench/run-on-device.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin nibble -p nibble-compiler
cargo build --release --bin nibble-rt -p nibble-runtime
rm -rf out/cuda-check
target/release/nibble compile tests/gpu/matrix.nib -o out/cuda-check
target/release/nibble-rt check out/cuda-check "$@"
