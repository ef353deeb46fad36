#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, with target/release/nibble-rt and out/bench-sm90/ (compiled
# nibble kernels) carried over: nibble-rt info, the GPU correctness check (if out/cuda-check exists), then the
# benchmark. Every step runs even if an earlier one failed; the exit status is nonzero if any step failed.
# Results go to $OUT (default ./out/bench-results). Extra arguments are passed to bench/h100.py (e.g. --quick).
set -u

OUT="${OUT:-./out/bench-results}"
NIBBLE_RT="${NIBBLE_RT:-target/release/nibble-rt}"
MANIFESTS="${MANIFESTS:-out/bench-sm90}"
mkdir -p "$OUT"
failed=()

step() {
    local name="$1"; shift
    echo
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    if [ "$rc" -ne 0 ]; then failed+=("$name (exit $rc)"); fi
    return 0
}

step nvidia-smi nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
if [ -x "$NIBBLE_RT" ]; then
    step nibble-rt-info "$NIBBLE_RT" info
    if [ -d out/cuda-check ]; then
        step nibble-rt-check timeout "${CHECK_TIMEOUT:-240}" "$NIBBLE_RT" check out/cuda-check --require-gpu
    else
        echo; echo "=== nibble-rt-check: skipped (no out/cuda-check)"
    fi
else
    echo; echo "=== $NIBBLE_RT missing or not executable: nibble columns will be empty"
    failed+=("nibble-rt missing")
fi
# Real-shape spot checks of benchmark kernels against the CPU reference (split-K decode, long K, prefill).
for spot in o_d1:16 down_d1:1 qkv_p1:128; do
    k="${spot%%:*}"; m="${spot##*:}"
    if [ -f "$MANIFESTS/$k.sm_90.json" ] && [ -x "$NIBBLE_RT" ]; then
        step "spot-$k-M$m" timeout 120 "$NIBBLE_RT" run "$MANIFESTS/$k.sm_90.json" --random "$m"
    fi
done
[ -d "$MANIFESTS" ] || { echo "=== $MANIFESTS missing: no nibble kernels to time"; failed+=("$MANIFESTS missing"); }

step bench timeout "${BENCH_TIMEOUT:-420}" python3 bench/h100.py --nibble-rt "$NIBBLE_RT" --manifests "$MANIFESTS" \
    --out "$OUT/bench.md" --json "$OUT/bench.json" "$@"

echo
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED steps: ${failed[*]}"
    exit 1
fi
echo "all steps succeeded; report in $OUT/bench.md"
