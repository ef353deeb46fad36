#!/usr/bin/env bash
# Regenerates the committed .hsaco test fixtures from the .ll sources in this directory.
# The outputs are checked in so the runtime tests (and CI) need no LLVM; rerun this only when a .ll changes.
# Requires LLVM 22 (llc, ld.lld); override the location with LLVM_BIN.
set -euo pipefail
cd "$(dirname "$0")"
LLVM_BIN="${LLVM_BIN:-/usr/lib/llvm-22/bin}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

build() { # build <source.ll> <mcpu> <output.hsaco>
  "$LLVM_BIN/llc" -mtriple=amdgcn-amd-amdhsa -mcpu="$2" -O3 -filetype=obj "$1" -o "$tmp/$3.o"
  "$LLVM_BIN/ld.lld" -shared "$tmp/$3.o" -o "$3"
}

build mfma_loop_gfx942.ll gfx942 mfma_loop_gfx942.hsaco
build straight_gfx90a.ll gfx90a straight_gfx90a.hsaco
ls -l ./*.hsaco
