"""Triton MXFP4 weight-only GEMM, the peer that bench/h100.py times against nibble.

y[M, N] = x[M, K] @ dequant(W)^T with x bf16 row-major, W as a checkpoint stores it (fp4-formats.md):
uint8 [N, K/2], byte = e2m1(k = 2j) | e2m1(k = 2j + 1) << 4, and one E8M0 scale byte per 32 K, uint8 [N, K/32].
The product is `tl.dot_scaled(x, None, "bf16", w_tile, scale_tile, "e2m1")` (Triton 3.6 signature:
dot_scaled(lhs, lhs_scale, lhs_format, rhs, rhs_scale, rhs_format, acc=None, fast_math=False, lhs_k_pack=True,
rhs_k_pack=True, out_dtype=float32)). The rhs operand is a [BLOCK_K / 2, BLOCK_N] uint8 tile packed along K
(rhs_k_pack=True, the low nibble is the even K element, as in the checkpoint), read straight out of the [N, K/2]
array through strides (1 along packed K, K/2 along N); its scale is a [BLOCK_N, BLOCK_K / 32] uint8 tile, i.e. the
checkpoint's [N, K/32] layout. The lhs (bf16) takes no scale. On sm_90 Triton has no native MX datapath and
decomposes the scaled dot into an e2m1 -> bf16 upcast times 2^(scale - 127) followed by a bf16 wgmma/mma.

Importing this module needs triton (not torch); `launch` needs torch tensors on a CUDA device.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8

    @property
    def name(self) -> str:
        return (f"BM{self.block_m}_BN{self.block_n}_BK{self.block_k}"
                f"_w{self.num_warps}_s{self.num_stages}")


# The tuning space: BLOCK_M in {16, 64, 128}, BLOCK_N in {64, 128, 256}, BLOCK_K in {128, 256}.
# The first four are decode-shaped (one 16-row MMA tile), the last four prefill-shaped.
CONFIGS = (
    Config(16, 64, 256, 4, 4),
    Config(16, 128, 128, 4, 4),
    Config(16, 128, 256, 4, 3),
    Config(16, 256, 128, 8, 3),
    Config(64, 128, 128, 4, 4),
    Config(64, 256, 128, 8, 3),
    Config(128, 128, 128, 8, 3),
    Config(128, 256, 128, 8, 3),
)


def configs_for(m: int, n: int, k: int, prune: bool = True) -> list[Config]:
    """The configs worth timing for one problem: those that tile N and K exactly, and (with `prune`) only
    16-row tiles for decode sizes and at least 64-row tiles once M is large enough that a 16-row tile would
    re-read the weights M/16 times."""
    out = []
    for c in CONFIGS:
        if n % c.block_n or k % c.block_k:
            continue
        if prune and m <= 16 and c.block_m > 16:
            continue
        if prune and m > 256 and c.block_m < 64:
            continue
        out.append(c)
    return out


@triton.jit(do_not_specialize=["M"])
def mxfp4_gemm_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_sn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Tile order: groups of GROUP_M row tiles sweep all column tiles together, so the weight tiles a group
    # reads stay in L2 across its row tiles (matters for prefill; decode has a single row tile).
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = N // BLOCK_N
    per_group = GROUP_M * tiles_n
    group = pid // per_group
    m_first = group * GROUP_M
    rows_in_group = tl.minimum(tiles_m - m_first, GROUP_M)
    within = pid % per_group
    tile_m = m_first + within % rows_in_group
    tile_n = within // rows_in_group

    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M

    k_elems = tl.arange(0, BLOCK_K)             # bf16 activations, K contiguous
    k_bytes = tl.arange(0, BLOCK_K // 2)        # packed fp4 pairs, K contiguous within a weight row
    k_groups = tl.arange(0, BLOCK_K // 32)      # one E8M0 byte per 32 K

    x_tile_ptr = x_ptr + rows[:, None] * stride_xm + k_elems[None, :]
    w_tile_ptr = w_ptr + cols[None, :] * stride_wn + k_bytes[:, None]   # [BLOCK_K/2, BLOCK_N]
    s_tile_ptr = s_ptr + cols[:, None] * stride_sn + k_groups[None, :]  # [BLOCK_N, BLOCK_K/32]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K // BLOCK_K):
        x = tl.load(x_tile_ptr, mask=row_ok[:, None], other=0.0)
        w = tl.load(w_tile_ptr)
        s = tl.load(s_tile_ptr)
        acc = tl.dot_scaled(x, None, "bf16", w, s, "e2m1", acc=acc)
        x_tile_ptr += BLOCK_K
        w_tile_ptr += BLOCK_K // 2
        s_tile_ptr += BLOCK_K // 32

    y_tile_ptr = y_ptr + rows[:, None] * stride_ym + cols[None, :]
    tl.store(y_tile_ptr, acc.to(tl.bfloat16), mask=row_ok[:, None])


def launch(cfg: Config, x, w_packed, scales, y) -> None:
    """y = x @ dequant(w_packed, scales)^T. x bf16 [M, K], w_packed uint8 [N, K/2], scales uint8 [N, K/32],
    y bf16 [M, N], all contiguous on one CUDA device."""
    m, k = x.shape
    n = w_packed.shape[0]
    assert w_packed.shape == (n, k // 2) and scales.shape == (n, k // 32) and y.shape == (m, n)
    assert n % cfg.block_n == 0 and k % cfg.block_k == 0, "the kernel tiles N and K exactly"
    # 32-bit element offsets inside the kernel.
    assert max(m * k, n * k // 2, m * n) < 2**31
    grid = (triton.cdiv(m, cfg.block_m) * (n // cfg.block_n),)
    mxfp4_gemm_kernel[grid](
        x, w_packed, scales, y,
        m, n, k,
        x.stride(0), w_packed.stride(0), scales.stride(0), y.stride(0),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
