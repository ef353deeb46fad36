#!/bin/bash
# `unroll 2` on the four small-layer decode kernels (repository root; out/h12 carried: nibble-rt, the check matrix
# with two unrolled kernels, the benchmark kernels, and base/: the four kernels of e9fa346, without unroll).
H=out/h12
$H/nibble-rt check $H/cuda-check --require-gpu > $OUT/check.log 2>&1; echo "check rc=$?"; tail -1 $OUT/check.log
python3 bench/h100.py --nibble-rt $H/nibble-rt --manifests $H/bench-sm90 --out $OUT/bench.md --json $OUT/bench.json > $OUT/h100py.log 2>&1; echo "bench rc=$?"
for r in 1 2 3; do
  for k in o_ka8 qkv_ka8; do $H/nibble-rt bench $H/base/$k.sm_90.json $H/bench-sm90/$k.sm_90.json --m 1; done
  for k in o_ka qkv_ka; do $H/nibble-rt bench $H/base/$k.sm_90.json $H/bench-sm90/$k.sm_90.json --m 16; done
done 2>&1 | sed 's/, [0-9.]* TFLOP.*//' > $OUT/ab.log
cat $OUT/ab.log
