set -x
H=out/h10t
xz -dc $H/nibble.xz > /tmp/nibble && chmod +x /tmp/nibble
N=/tmp/nibble
for m in 16 1; do
  time $N tune $H/llama70b_auto_nv.nib --device cuda --target sm_90 --m $m -o $OUT/tuned_m$m
done
$N bench $OUT/tuned_m16/*.sm_90.json $OUT/tuned_m1/*.sm_90.json --device cuda --m 1,16
$N run $OUT/tuned_m16/gate_up.sm_90.json --device cuda --random 16
$N run $OUT/tuned_m16/o.sm_90.json --device cuda --random 9
rm -f $OUT/tuned_m*/*.ptx $OUT/tuned_m*/*.mlir
