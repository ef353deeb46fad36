#!/bin/bash
# The session-12 run on the H100 (repository root; out/h12 carried: nibble-rt, cuda_forward, the GPU check matrix,
# the benchmark kernels, and the four small-layer kernels of the previous commit under old/).
H=out/h12
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
$H/nibble-rt check $H/cuda-check --require-gpu > $OUT/check.log 2>&1; echo "check rc=$?"; tail -2 $OUT/check.log
NIBBLE_REQUIRE_GPU=1 NIBBLE_FIXTURES=runtime/tests/fixtures $H/cuda_forward > $OUT/cuda_forward.log 2>&1; echo "cuda_forward rc=$?"; grep "test result" $OUT/cuda_forward.log
python3 bench/h100.py --nibble-rt $H/nibble-rt --manifests $H/bench-sm90 --out $OUT/bench.md --json $OUT/bench.json > $OUT/h100py.log 2>&1; echo "bench rc=$?"
# A/B in one process each: the previous commit's kernel (first) against this one's (second), three rounds.
for r in 1 2 3; do
  for k in o_ka8 qkv_ka8; do $H/nibble-rt bench $H/old/$k.sm_90.json $H/bench-sm90/$k.sm_90.json --m 1; done
  for k in o_ka qkv_ka; do $H/nibble-rt bench $H/old/$k.sm_90.json $H/bench-sm90/$k.sm_90.json --m 16; done
done 2>&1 | sed 's/, [0-9.]* TFLOP.*//' > $OUT/ab.log
cat $OUT/ab.log
