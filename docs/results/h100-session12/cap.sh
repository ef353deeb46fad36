#!/bin/bash
# Register caps (`.maxnreg`, the one-wave rule nv_max_regs) against the same kernels without: out/h12cap/{nocap,cap}.
H=out/h12cap
for r in 1 2; do
  for k in gate_up_t gate_up_t8 qkv_ka qkv_ka8 qkv_k qkv_d1 qkv_d2 qkv_d3 o_d1 o_d2 down_d1 down_d2 gate_up_d1 gate_up_d2; do
    for v in nocap cap; do
      $H/nibble-rt bench $H/$v/$k.sm_90.json --m 1,16 2>&1 | sed "s/^/$v /; s/, [0-9.]* TFLOP.*//"
    done
  done
done | tee $OUT/cap.log
