#!/bin/bash
# The decode kernels of the table with their K loop unrolled by two (a throwaway NIBBLE_DIAG_UNROLL=2 switch that
# puts llvm.loop.unroll.count on the K loop) against the same build without: out/u2/{base,u2}, three rounds.
H=out/u2
for r in 1 2 3; do
  for k in o_ka8 qkv_ka8 down_ka8 gate_up_t8; do for v in base u2; do
    $H/nibble-rt bench $H/$v/$k.sm_90.json --m 1 2>&1 | sed "s/^/$v /; s/, [0-9.]* TFLOP.*//"; done; done
  for k in o_ka qkv_ka down_ka gate_up_t; do for v in base u2; do
    $H/nibble-rt bench $H/$v/$k.sm_90.json --m 16 2>&1 | sed "s/^/$v /; s/, [0-9.]* TFLOP.*//"; done; done
done | tee $OUT/unroll.log
