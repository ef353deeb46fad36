"""Compile every Triton MXFP4 config in bench/mxfp4_triton.py for sm_90 without a GPU (needs only `pip install
triton`; the wheel ships ptxas). Catches Triton front-end errors, dot_scaled shape/format mistakes and shared memory
over the sm_90 limit before device time is spent. Usage: python3 bench/compile_check.py [--arch 90] [--ptx-grep]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

import mxfp4_triton as mt  # noqa: E402

SM90_SMEM_BYTES = 227 * 1024  # opt-in dynamic shared memory per block on H100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()

    kernel = mt.mxfp4_gemm_kernel
    target = GPUTarget("cuda", args.arch, 32)
    backend = triton.compiler.make_backend(target)
    failed = 0
    for cfg in mt.CONFIGS:
        signature = {
            "x_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*u8", "y_ptr": "*bf16",
            "M": "i32", "N": "i32", "K": "i32",
            "stride_xm": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_ym": "i32",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr",
        }
        constexprs = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                      "GROUP_M": cfg.group_m}
        # What the launcher's specialisation gives on the benchmark shapes: 16-byte aligned pointers and every
        # int but M divisible by 16 (M is marked do_not_specialize).
        div16 = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
        attrs = {(i,): [["tt.divisibility", 16]] for i in div16}
        src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        options = backend.parse_options({"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        t0 = time.time()
        try:
            ck = triton.compile(src, target=target, options=options.__dict__)
        except Exception as e:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"{cfg.name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        smem = ck.metadata.shared
        ptx = ck.asm.get("ptx", "")
        mma = sorted(set(re.findall(r"(wgmma\.mma_async[.\w]*|mma\.sync[.\w]*)", ptx)))
        status = "ok" if smem <= SM90_SMEM_BYTES else "TOO MUCH SHARED MEMORY"
        if smem > SM90_SMEM_BYTES:
            failed += 1
        print(f"{cfg.name}: {status}; shared {smem} B, {ck.metadata.num_warps} warps, "
              f"compile {time.time() - t0:.1f}s; mma: {', '.join(mma) or 'none found'}")
    print(f"{len(mt.CONFIGS) - failed}/{len(mt.CONFIGS)} configs compile for sm_{args.arch}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
