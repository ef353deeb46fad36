#!/bin/bash
# K-tile rotation probe (session 13): base vs smid vs block rotation, and .nc weight loads.
# Bundle (out/krot): k.nib compiled three times with krot.patch applied (NIBBLE_DIAG_KROT unset, =smid, =block:
# base/, smid/, block/) and the .nc weight-load variants of base and smid made by
# docs/results/h100-session10/load-hints/mkvar.py (nc/, ncs/), the manifests' kernel names suffixed per variant.
H=out/krot
R=$H/nibble-rt
$R info
for v in smid block ncs; do for j in $H/$v/*.json; do
  echo "== $v $(basename $j)"; $R run --random 16 $j 2>&1 | tail -2; $R run --random 1 $j 2>&1 | tail -1; done; done 2>&1 | tee $OUT/check.log
for r in 1 2 3; do
  $R bench $H/base/o_ka.sm_90.json $H/smid/o_ka.sm_90.json $H/block/o_ka.sm_90.json $H/nc/o_ka_nc.sm_90.json $H/ncs/o_ka_nc.sm_90.json $H/base/o_kb.sm_90.json $H/smid/o_kb.sm_90.json --m 16,1
  $R bench $H/base/qkv_ka.sm_90.json $H/smid/qkv_ka.sm_90.json $H/block/qkv_ka.sm_90.json $H/nc/qkv_ka_nc.sm_90.json $H/ncs/qkv_ka_nc.sm_90.json --m 16
  $R bench $H/base/o_ka8.sm_90.json $H/smid/o_ka8.sm_90.json $H/base/qkv_ka8.sm_90.json $H/smid/qkv_ka8.sm_90.json --m 1
done 2>&1 | tee $OUT/bench.log
