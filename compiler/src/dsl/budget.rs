//! Resource estimates for an explicit tiling: LDS bytes per workgroup and VGPRs per lane.
//!
//! These are the formulas the checker enforces and the planner reuses; docs/DSL.md ("Budgets") explains each term.
//! All arithmetic is saturating `u64`, so hostile tile sizes cannot overflow (they only exceed every budget).

use crate::arch::{ArchInfo, Vendor};
use crate::spec::Tiling;
use nibble_runtime::codeobj::occupancy_waves_per_simd;

/// Extra padding elements per LDS row of the activation tile (breaks bank conflicts), unless [`x_swizzled`].
pub const LDS_PAD_ELEMS: u64 = 8;
/// Bytes per activation element in LDS (bf16 / f16).
pub const LDS_ELEM_BYTES: u64 = 2;
/// VGPRs for addresses, loop counters, lane ids and dequantization temporaries.
pub const VGPR_OVERHEAD: u64 = 24;
/// The weight layout moves K in chunks of this many elements; `tile_k` must be a multiple.
pub const K_CHUNK: u32 = 128;
/// Most lanes (threads) per workgroup on every target.
pub const MAX_LANES: u32 = 1024;
/// Most waves per workgroup where no target is known: 1024 lanes in waves of 64.
pub const MAX_WAVES: u32 = 16;

/// Most waves per workgroup on all of `targets` (1024 lanes: 16 waves of 64 on AMD, 32 warps on NVIDIA).
pub fn max_waves(targets: &[&ArchInfo]) -> u32 {
    targets
        .iter()
        .map(|a| MAX_LANES / a.wave_size.max(1))
        .min()
        .unwrap_or(MAX_WAVES)
}
/// Most pipeline stages.
pub const MAX_STAGES: u32 = 4;

/// The activation ring, `stages * tile_m * (tile_k + pad) * 2` bytes.
fn ring_bytes(t: &Tiling, pad: u64) -> u64 {
    u64::from(t.stages)
        .saturating_mul(u64::from(t.tile_m))
        .saturating_mul(u64::from(t.tile_k) + pad)
        .saturating_mul(LDS_ELEM_BYTES)
}

/// AMD bf16/f16 tiles: whether the activation rows are XOR-swizzled (`Plan::x_chunk`) instead of padded: only
/// where dropping the padding raises the occupancy (waves per SIMD, as `nibble inspect` reports it, from the LDS
/// and the VGPR estimate), e.g. a two-stage 64x128 prefill ring: 34.8 KiB padded, one workgroup per CU; 32 KiB
/// swizzled, two. Padded rows need one LDS offset per M tile for every pair of a K iteration, swizzled rows one
/// per pair class (`8 / chunks per pair` of them), which costs VALU in every iteration.
pub fn x_swizzled(t: &Tiling, group: u32, arch: &ArchInfo) -> bool {
    if arch.vendor != Vendor::Amd {
        return false;
    }
    let lanes = u64::from(t.waves_m)
        .saturating_mul(u64::from(t.waves_n))
        .saturating_mul(u64::from(t.waves_k))
        .saturating_mul(u64::from(arch.wave_size));
    let (Ok(lanes), Ok(vgprs)) = (u32::try_from(lanes), u32::try_from(vgprs(t, group).total()))
    else {
        return false;
    };
    let reduce = reduce_bytes(t);
    let occupancy = |pad: u64| {
        u32::try_from(ring_bytes(t, pad).max(reduce))
            .ok()
            .and_then(|lds| occupancy_waves_per_simd(arch.name, vgprs, 0, lds, lanes))
            .unwrap_or(0)
    };
    occupancy(0) > occupancy(LDS_PAD_ELEMS)
}

/// LDS bytes: `stages * tile_m * (tile_k + pad) * 2` (the x tile, double-buffered `stages` times; `pad` is
/// [`LDS_PAD_ELEMS`] unless the rows are swizzled, [`x_swizzled`]), or the in-workgroup split-K reduction if that is
/// larger (it reuses the same buffer after the K loop).
pub fn lds_bytes(t: &Tiling, group: u32, arch: &ArchInfo) -> u64 {
    let pad = if x_swizzled(t, group, arch) {
        0
    } else {
        LDS_PAD_ELEMS
    };
    ring_bytes(t, pad).max(reduce_bytes(t))
}

/// LDS bytes of the xf32 route (gfx942, `plan::route`): `stages * tile_m * tile_k * 4`, f32 rows swizzled, not
/// padded, or the reduction's. The route is only taken where this leaves two waves per SIMD, so it never exceeds
/// the budget.
pub fn lds_bytes_f32(t: &Tiling) -> u64 {
    u64::from(t.stages)
        .saturating_mul(u64::from(t.tile_m))
        .saturating_mul(u64::from(t.tile_k))
        .saturating_mul(4)
        .max(reduce_bytes(t))
}

/// In-workgroup split-K: every wave group but the first parks its f32 accumulators (the whole tile) in LDS,
/// `(waves_k - 1) * tile_m * tile_n * 4` bytes.
pub fn reduce_bytes(t: &Tiling) -> u64 {
    u64::from(t.waves_k.saturating_sub(1))
        .saturating_mul(u64::from(t.tile_m))
        .saturating_mul(u64::from(t.tile_n))
        .saturating_mul(4)
}

/// K elements one wave covers per K tile: `tile_k / waves_k`.
pub fn k_slice(t: &Tiling) -> u64 {
    u64::from(t.tile_k)
        .checked_div(u64::from(t.waves_k))
        .unwrap_or(0)
}

/// The terms of the VGPR estimate, per lane of one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VgprEstimate {
    /// Accumulators: `tile_m * tile_n / (waves_m * waves_n * 64)` f32 values per lane.
    pub acc: u64,
    /// Packed weight words per lane for one K tile: `(tile_n / waves_n) * (tile_k / waves_k) / 64 / 8` (8 nibbles a
    /// dword).
    pub wwords: u64,
    /// Block scales per lane: `(tile_n / waves_n / atom_n) * max(1, (tile_k / waves_k) / group)`.
    pub scales: u64,
    /// A-operand registers: `4 * (tile_m / waves_m / atom_m)`.
    pub areg: u64,
    /// Fixed overhead, [`VGPR_OVERHEAD`].
    pub overhead: u64,
}

impl VgprEstimate {
    /// `acc + 2 * wwords + scales + areg + overhead` (weights are double-buffered in registers).
    pub fn total(&self) -> u64 {
        self.acc
            .saturating_add(self.wwords.saturating_mul(2))
            .saturating_add(self.scales)
            .saturating_add(self.areg)
            .saturating_add(self.overhead)
    }
}

/// The VGPR estimate for `t` with scale groups of `group` K elements. Zero divisors (rejected earlier by the
/// checker) give zero terms rather than a panic.
pub fn vgprs(t: &Tiling, group: u32) -> VgprEstimate {
    let d = |a: u64, b: u64| a.checked_div(b).unwrap_or(0);
    let (tm, tn, tk) = (u64::from(t.tile_m), u64::from(t.tile_n), k_slice(t));
    let (wm, wn) = (u64::from(t.waves_m), u64::from(t.waves_n));
    let (am, an) = (u64::from(t.mma.m()), u64::from(t.mma.n()));
    // Products of two u32 values fit u64; the rest saturates.
    VgprEstimate {
        acc: d(tm * tn, (wm * wn).saturating_mul(64)),
        wwords: d(d(tn, wn).saturating_mul(tk), 64 * 8),
        scales: d(d(tn, wn), an).saturating_mul(d(tk, u64::from(group)).max(1)),
        areg: d(d(tm, wm), am).saturating_mul(4),
        overhead: VGPR_OVERHEAD,
    }
}

/// Whether the LDS estimate fits `arch`.
pub fn lds_fits(t: &Tiling, group: u32, arch: &ArchInfo) -> bool {
    lds_bytes(t, group, arch) <= u64::from(arch.lds_bytes)
}

/// Whether the VGPR estimate fits `arch`.
pub fn vgprs_fit(t: &Tiling, group: u32, arch: &ArchInfo) -> bool {
    vgprs(t, group).total() <= u64::from(max_vgprs(t, arch))
}

/// Registers a lane may use: the arch's per-lane maximum, and on NVIDIA also the SM's register file shared by the
/// block's threads (a 32-warp block gets 64 per thread; ptxas caps its allocation to what `.maxntid` allows).
pub fn max_vgprs(t: &Tiling, arch: &ArchInfo) -> u32 {
    let waves = t
        .waves_m
        .saturating_mul(t.waves_n)
        .saturating_mul(t.waves_k)
        .max(1);
    if arch.vendor == Vendor::Nvidia {
        arch.max_vgprs.min(
            arch.regs_per_simd_lane
                .saturating_mul(crate::arch::SIMDS_PER_CU)
                / waves,
        )
    } else {
        arch.max_vgprs
    }
}
