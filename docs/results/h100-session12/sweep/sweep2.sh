#!/bin/bash
# Around the best of sweep.sh (qkv_ka's tiling with exponent-byte scales and unroll 2): unroll 1-4, three stages;
# o_ka with unroll 3 and three stages (sw2.nib; out/sw carried), three rounds, M = 16.
H=out/sw
for r in 1 2 3; do for k in q_g q_g1 q_g2 q_g3 q_g4 q_a o_a o_g o_h; do
  $H/nibble-rt bench $H/$k.sm_90.json --m 16 2>&1 | sed 's/, [0-9.]* TFLOP.*//'
done; done > $OUT/sweep2.log
python3 - "$OUT/sweep2.log" <<'PY'
import re,sys,collections
d=collections.defaultdict(list)
for l in open(sys.argv[1]):
    m=re.match(r'(\w+) N=\d+ K=\d+ M=(\d+): flushed median ([\d.]+)',l)
    if m: d[m.group(1)].append(float(m.group(3)))
for k in d: print(k, d[k])
PY
