#!/bin/bash
# Small-layer decode tilings at M = 16 with this session's recipe and `unroll` (sw.nib; out/sw carried), two rounds.
H=out/sw
for r in 1 2; do for k in q_a q_b q_c q_d q_e q_g q_h o_a o_b o_c o_d o_e o_f; do
  $H/nibble-rt bench $H/$k.sm_90.json --m 16 2>&1 | sed 's/, [0-9.]* TFLOP.*//'
done; done | tee $OUT/sweep.log
