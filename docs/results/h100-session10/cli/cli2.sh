# The compiler CLI (`nibble`, carried xz-compressed) on the H100: run, bench and tune with --device cuda.
set -x
H=out/h10
xz -dc $H/nibble.xz > /tmp/nibble && chmod +x /tmp/nibble
N=/tmp/nibble
$N --version
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
# The layer (512x2048 MXFP4 with bias, quantized by `nibble quantize` here) on the GPU and the interpreter.
$N compile $H/layer/l.nib --target sm_90 -o /tmp/lk
$N run /tmp/lk/layer_decode.sm_90.json --device cuda --inputs $H/layer/q_with_x.safetensors --output $OUT/y_cuda.safetensors --reference
python3 $H/ydiff.py $OUT/y_cuda.safetensors $H/layer/y_interp.safetensors
$N run /tmp/lk/layer_decode.sm_90.json --device cuda --random 33
$N bench /tmp/lk/layer_decode.sm_90.json --device cuda --m 1,16,33
# The same four benchmark kernels through both front ends, one after the other.
$N bench $H/k4/*.json --device cuda --m 1,16
$H/nibble-rt bench $H/k4/*.json --m 1,16
for m in 1 16; do
  time $N tune $H/llama70b_auto_nv.nib --device cuda --target sm_90 --m $m -o $OUT/tuned_m$m
  $N bench $OUT/tuned_m$m/*.sm_90.json --device cuda --m $m
done
$N run $OUT/tuned_m16/o.sm_90.json --device cuda --random 16
$N run $OUT/tuned_m1/qkv.sm_90.json --device cuda --random 1
rm -f $OUT/tuned_m*/*.ptx $OUT/tuned_m*/*.mlir
