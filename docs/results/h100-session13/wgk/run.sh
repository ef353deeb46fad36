#!/bin/bash
# wgmma decode with warpgroups along K (session 13 probe).
H=out/wgk
R=$H/nibble-rt
for j in $H/k/*.json; do echo "== $(basename $j)"; $R run --random 16 $j 2>&1 | tail -1; $R run --random 1 $j 2>&1 | tail -1; done 2>&1 | tee $OUT/check.log
for r in 1 2; do
  $R bench $H/base/o_ka.sm_90.json $H/k/o_wgk.sm_90a.json $H/k/o_wgk2.sm_90a.json $H/k/o_wgk3.sm_90a.json $H/k/o_wgk4.sm_90a.json $H/k/o_wgk5.sm_90a.json --m 16,1
  $R bench $H/base/qkv_ka.sm_90.json $H/k/qkv_wgk.sm_90a.json $H/k/qkv_wgk2.sm_90a.json --m 16
done 2>&1 | grep -v "^$" | sed 's/, [0-9.]* TFLOP.*back/ back/' | tee $OUT/bench.log
