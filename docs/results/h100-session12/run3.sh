#!/bin/bash
# qkv_ka with exponent-byte scales and `unroll 3` (out/h12/base2: qkv_ka with widened scales and `unroll 2`): the
# full table, then the two qkv_ka builds against each other in one process, three rounds.
H=out/h12
python3 bench/h100.py --nibble-rt $H/nibble-rt --manifests $H/bench-sm90 --out $OUT/bench.md --json $OUT/bench.json > $OUT/h100py.log 2>&1; echo "bench rc=$?"
for r in 1 2 3; do $H/nibble-rt bench $H/base2/qkv_ka.sm_90.json $H/bench-sm90/qkv_ka.sm_90.json --m 1,16; done 2>&1 | sed 's/, [0-9.]* TFLOP.*//' > $OUT/ab.log
cat $OUT/ab.log; grep -E "^- (PASS|FAIL)" $OUT/bench.md | cut -c1-140
