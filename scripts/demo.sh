#!/usr/bin/env bash
# The main job on the examples: the README's first command.
# Installs the toolchain if missing, builds nibble in release mode, compiles every kernel in dsl-examples/ for gfx942
# into out/ (printing code objects, resource usage and the main loop's VALU cost), then runs the Llama-3-70B QKV
# kernel on the virtual CDNA interpreter with random data (one decode token) and prints its largest error against the
# error bound of docs/NUMERICS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin nibble
out="${NIBBLE_OUT:-out}"
./target/release/nibble compile dsl-examples --target "${NIBBLE_TARGET:-gfx942}" -o "$out"
./target/release/nibble run "$out/llama70b_qkv.${NIBBLE_TARGET:-gfx942}.json" --device interpret --random 1 --seed 1
