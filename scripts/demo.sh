#!/usr/bin/env bash
# The main job on the examples: the README's first command.
# Installs the toolchain if missing, builds nibble in release mode, compiles every kernel in dsl-examples/ for gfx942
# into out/, and prints what was produced (code objects, manifests, resource usage and the main loop's VALU cost).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin nibble
./target/release/nibble compile dsl-examples --target "${NIBBLE_TARGET:-gfx942}" -o "${NIBBLE_OUT:-out}"
