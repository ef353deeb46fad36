#!/bin/bash
cd "$(dirname "$0")"
export PATH=/usr/local/cuda/bin:$PATH
nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/geom geom.cu || exit 1
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
/tmp/geom 2>&1 | tee $OUT/geom.log
