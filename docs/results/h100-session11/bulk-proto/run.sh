#!/bin/bash
cd "$(dirname "$0")"
export PATH=/usr/local/cuda/bin:$PATH
nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/proto proto.cu 2>&1 | grep -v "declared but never" | head -30 || exit 1
cuobjdump -sass /tmp/proto > $OUT/proto.sass 2>&1
for f in; do
  echo "$f: $(awk "/Function : .*$f/,/EXIT/" $OUT/proto.sass | grep -cE '^\s+/\*[0-9a-f]+\*/')" instrs, HMMA $(awk "/Function : .*$f/,/\.L_x_[0-9]+:\$/" $OUT/proto.sass | grep -c HMMA)
done
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
/tmp/proto 2>&1 | tee $OUT/proto.log
