#!/usr/bin/env bash
# Measures MLIR's generic FP4 expansion on the same kernel, for docs/PERFORMANCE.md: the GPU stage of an example
# (dequantization still as the reference function over f4E2M1FN) is inlined, expanded by
# `arith-expand{include-f4e2m1 include-f8e8m0}` instead of nibble's dequant pass, and compiled for gfx942;
# the main loop's VALU instructions per weight element are counted as `nibble inspect` counts them.
# Usage: scripts/baseline-arith-expand.sh [example] (default llama70b_qkv); needs a release build of nibble.
set -euo pipefail
cd "$(dirname "$0")/.."
ex="${1:-llama70b_qkv}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
./target/release/nibble compile "dsl-examples/$ex.nib" --target gfx942 -o "$tmp" --emit gpu >/dev/null
elems=$(python3 -c "import json;m=json.load(open('$tmp/$ex.gfx942.json'));t=m['tiling'];print(t['tile_n']//t['waves_n']*t['tile_k']//64)")
/usr/lib/llvm-22/bin/mlir-opt "$tmp/$ex.gfx942.gpu.mlir" --pass-pipeline='builtin.module(gpu.module(inline,canonicalize,arith-expand{include-f4e2m1=true include-f8e8m0=true},convert-scf-to-cf,convert-gpu-to-rocdl{chipset=gfx942 index-bitwidth=32 use-bare-ptr-memref-call-conv=true}),rocdl-attach-target{chip=gfx942 O=3},gpu-module-to-binary{format=isa})' -o "$tmp/expand.mlir"
python3 - "$tmp/expand.mlir" "$elems" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
asm = re.sub(r'\\([0-9A-F]{2})', lambda m: chr(int(m.group(1), 16)), re.search(r'assembly = "(.*?)">', s, re.S).group(1))
lines = [l.strip() for l in asm.split('\n')]
# The main loop: the backward branch with the most MFMAs.
best = None
for i, l in enumerate(lines):
    m = re.match(r's_c?branch\w*\s+(\.LBB\d+_\d+)$', l)
    if m and (m.group(1) + ':') in lines[:i]:
        body = lines[lines.index(m.group(1) + ':'):i + 1]
        n = sum(b.startswith('v_mfma') for b in body)
        if best is None or n > best[0]:
            best = (n, body)
mfma, body = best
valu = sum(b.startswith('v_') and not b.startswith(('v_mfma', 'v_accvgpr')) for b in body)
print(f"arith-expand baseline: main loop {valu} VALU, {mfma} MFMA, {valu / int(sys.argv[2]):.2f} VALU per weight element")
PY
