#!/bin/bash
# carveout / flush shared-memory experiment
cd "$(dirname "$0")"
RT=./nibble-rt
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > $OUT/gpu.txt
run() { # name, env...
  local name=$1; shift
  env "$@" $RT bench k/o_ka8.sm_90.json k/qkv_ka8.sm_90.json --m 1 --json $OUT/$name-m1.json > $OUT/$name-m1.log 2>&1
  env "$@" $RT bench k/o_ka.sm_90.json k/qkv_ka.sm_90.json --m 16 --json $OUT/$name-m16.json > $OUT/$name-m16.log 2>&1
  env "$@" $RT stream --mb 0,36,45 --json $OUT/$name-stream.json > $OUT/$name-stream.log 2>&1
}
for round in 1 2; do
  run base$round X=1
  run fsm16k$round NIBBLE_FLUSH_SMEM=16384
  run fsm100k$round NIBBLE_FLUSH_SMEM=100000
  run kco100$round NIBBLE_CARVEOUT=100
  run kco50$round NIBBLE_CARVEOUT=50
  run fco100$round NIBBLE_FLUSH_CARVEOUT=100
done
python3 - <<'PY'
import json,glob,os
out=os.environ['OUT']
rows=[]
for f in sorted(glob.glob(out+'/*.json')):
    try: d=json.load(open(f))
    except Exception as e: print(f,e); continue
    recs=d if isinstance(d,list) else d.get('records',d.get('results',[d]))
    for r in recs:
        print(os.path.basename(f), r.get('kernel', r.get('mb')), r.get('m'), r.get('median_us'), r.get('min_us'))
PY
