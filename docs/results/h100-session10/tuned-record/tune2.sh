set -x
H=out/h10t
xz -dc $H/nibble.xz > /tmp/nibble && chmod +x /tmp/nibble
N=/tmp/nibble
head -2 $H/llama70b_auto_nv.nib | tail -1 > /tmp/o.nib
$N tune /tmp/o.nib --device cuda --target sm_90 --m 1 --top 2 -o $OUT/tuned
python3 -c "import json; print(json.load(open('$OUT/tuned/o.sm_90.json'))['tuned'])"
$H/nibble-rt run $OUT/tuned/o.sm_90.json --random 1
$N bench $OUT/tuned/o.sm_90.json --device cuda --m 1
rm -f $OUT/tuned/*.ptx $OUT/tuned/*.mlir
