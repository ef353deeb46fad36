set -x
H=out/h10t
xz -dc $H/nibble.xz > /tmp/nibble && chmod +x /tmp/nibble
N=/tmp/nibble
$N compile $H/layer/l.nib --target sm_90 -o /tmp/lk
$N bench /tmp/lk/layer_decode.sm_90.json --device cuda --m 1,16,33
head -2 $H/llama70b_auto_nv.nib | tail -1 > /tmp/o.nib
$N tune /tmp/o.nib --device cuda --target sm_90 --m 16 --top 1 -o /tmp/t
$N bench /tmp/t/o.sm_90.json --device cuda --m 1,16
$H/nibble-rt bench /tmp/t/o.sm_90.json --m 1,16
