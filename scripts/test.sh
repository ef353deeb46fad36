#!/usr/bin/env bash
# The project's test command: the README's second command, and exactly what CI runs (.ci/run).
# Installs the toolchain if missing, then checks formatting, lints, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
