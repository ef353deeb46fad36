#!/usr/bin/env python3
"""The Llama-3-70B table of docs/PERFORMANCE.md: for each layer shape, arch and M, the plan `schedule auto` picks
(`nibble plan --m M`), the cost model's predicted time and rooflines, and the chosen plan compiled at full size and
measured with `nibble inspect` (VALU per weight element, VGPRs, occupancy, scratch and spills).

    cargo build --release --bin nibble && python3 scripts/llama70b-table.py [--nibble target/release/nibble]
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {"qkv": (10240, 8192), "o": (8192, 8192), "gate_up": (57344, 8192), "down": (8192, 28672)}
ROW = re.compile(
    r"^\s+(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*w(\d+)x(\d+)\s+(\d+x\d+x\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+"
    r"([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)
HEAD = re.compile(r"^kernel (\S+) on (\S+) at M=(\d+): HBM roofline ([\d.]+) us \(bf16 weights: ([\d.]+) us\)")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nibble", default="target/release/nibble")
    ap.add_argument("--nib", default="docs/llama70b_auto.nib")
    a = ap.parse_args()
    rows = []
    for m in (1, 16, 256, 4096):
        out = run([a.nibble, "plan", a.nib, "--m", str(m)])
        head = None
        for line in out.splitlines():
            h = HEAD.match(line)
            if h:
                head = h.groups()
                continue
            r = ROW.match(line)
            if r and head:
                rows.append((head, r.groups()))
                head = None
    print("| (N, K) | M | arch | chosen plan | route | predicted us | HBM roofline us | bf16-weight roofline us "
          "| VALU/elem | VGPRs | occ | scratch/spills |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for (name, arch, m, hbm, bf16), g in rows:
            tm, tn, tk, wm, wn, atom, split = g[:7]
            n, k = SHAPES[name]
            src = (f"kernel {name} {{ target {arch}; x bf16[M, {k}]; w mxfp4[{n}, {k}]; y bf16[M, {n}]; "
                   f"tile m={tm} n={tn} k={tk}; waves m={wm} n={wn}; mma {atom}; stages 2; split {split} }}\n")
            nib = Path(tmp) / f"{name}_{arch}_{m}.nib"
            nib.write_text(src)
            od = Path(tmp) / f"o_{name}_{arch}_{m}"
            run([a.nibble, "compile", str(nib), "-o", str(od)])
            man = json.loads((od / f"{name}.{arch}.json").read_text())
            ins = json.loads(run([a.nibble, "inspect", "--json", str(od / f"{name}.{arch}.hsaco")]))
            kr = ins["kernels"][0]
            split = man["launch"]["grid"][2].get("value", 1)  # the plan's split, as launched
            route = "xf32" if "reducePrecision" in (od / man["kernel_ir"]).read_text() else "bf16"
            plan = f"{tm}x{tn}x{tk} w{wm}x{wn} {atom}" + (f" split {split}" if split and split > 1 else "")
            valu = kr["valu_per_weight_element"]
            print(f"| {n}x{k} | {m} | {arch} | {plan} | {route} | {g[13]} | {hbm} | {bf16} | "
                  f"{valu:.3f} | {kr['vgprs']} | {kr['occupancy_waves_per_simd']} | "
                  f"{kr['scratch_bytes']}/{kr['vgpr_spills']} |")


if __name__ == "__main__":
    main()
