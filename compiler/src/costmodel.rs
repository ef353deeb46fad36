//! The cost model behind `schedule auto` and `nibble plan --explain`: predicts a kernel's time for a shape, arch and
//! M from memory traffic, VALU and MFMA issue cycles, occupancy and wave quantization over the CUs.
//!
//! It is a planning tool, not evidence. Inputs and their status:
//! - measured when `measure` is on (each candidate is compiled and its code object inspected): VALU instructions per
//!   weight element in the main loop, VGPRs (hence occupancy together with LDS); otherwise estimated from the
//!   dequantization recipe (15 instructions per 8 weights on gfx942, 23 on gfx90a, plus rounding work, plus about 8
//!   per loop iteration) and the DSL's
//!   register budget formula;
//! - exact: bytes moved (weights, scales, activations, outputs), MFMA counts, LDS bytes, workgroup counts;
//! - assumed (arch tables, not measured here): HBM bandwidth, clock, CU count, MFMA cycles (xf32 at half the bf16
//!   rate), last-level cache size and bandwidth; that VALU and MFMA of different waves overlap on a SIMD; that when
//!   the weights fit the last-level cache (gfx942's 256 MB Infinity Cache) HBM sees every byte once and the
//!   re-reads across tiles (weights per M tile, activations per N tile) come from that cache, and otherwise weights
//!   are read from HBM once per M tile and activations hit in L2; split-K partials cost one f32 write and one read
//!   per split (from the last-level cache whenever they fit it, even beside weights too large for it).

use serde::Serialize;

use crate::arch::Arch;
use crate::dsl::budget;
use crate::plan::{self, Bf8Convert, Plan};
use crate::spec::{DType, KernelSpec, MmaAtom, Schedule, Tiling};

/// Launch and epilogue overhead that no tiling avoids (assumed).
const FIXED_US: f64 = 4.0;

#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub tiling: Tiling,
    pub workgroups: u64,
    /// Cross-workgroup split-K of the plan (1: none), whether the tiling gave it or the planner's rule chose it.
    pub split_k: u32,
    /// Waves per SIMD the kernel can keep resident (registers and LDS).
    pub occupancy: u32,
    /// Rounds of workgroups over the CUs (wave quantization).
    pub rounds: u64,
    pub bytes: f64,
    pub memory_us: f64,
    pub valu_us: f64,
    /// All waves' VALU time spread evenly over the SIMDs: the dequantization work itself, without the wave
    /// quantization that `valu_us` includes.
    pub valu_work_us: f64,
    pub mfma_us: f64,
    pub predicted_us: f64,
    pub valu_per_element: f64,
    /// Whether VALU/element and registers came from compiling the candidate.
    pub measured: bool,
    /// The MMA operand route the plan takes: `xf32` (gfx942), the activation type (`bf16`, `f16`) on the other
    /// AMD routes, `mma.sync` on NVIDIA.
    pub route: &'static str,
    /// Ranked first because it is the NVIDIA decode tiling measured fastest (`plan::nvidia_decode_rule`), not by
    /// its prediction.
    pub rule: bool,
}

/// Roofline times for reference: the HBM time of the FP4 kernel's bytes and of bf16 weights (4x the weight bytes).
pub fn rooflines(spec: &KernelSpec, arch: Arch, m: u32) -> (f64, f64) {
    let info = arch.info();
    let (n, k) = (f64::from(spec.n), f64::from(spec.k));
    let act = f64::from(m) * (k + n) * 2.0;
    let fp4 = n * k * (0.5 + spec.format.scale.bytes() as f64 / f64::from(spec.format.group)) + act;
    let bf16 = n * k * 2.0 + act;
    let us = |bytes: f64| bytes / (info.hbm_tb_s * 1e12) * 1e6;
    (us(fp4), us(bf16))
}

/// Estimated main-loop VALU instructions per weight element of a plan (see the module doc).
pub fn estimated_valu_per_element(p: &Plan) -> f64 {
    if p.dequant.xf32 {
        // 3 to line up the bytes, 4 conversions, the group FMAs; per K iteration the f32 activation staging (one
        // instruction per element) and about 8 for addresses and the loop counter.
        let per_word = 7.0 + 2.0 * (2.0 * f64::from(p.atom.k())) / f64::from(p.format.group);
        let staging = f64::from(p.tiling.tile_m * p.tiling.tile_k) / f64::from(p.threads.max(1));
        return per_word / 8.0 + (8.0 + staging) / f64::from(p.elements_per_lane_iter.max(1));
    }
    let per_word = match (p.dequant.convert, &p.fragment) {
        // The piece table's masks and shifts (9 for e2m1 into bf16) and 4 packed multiplies.
        (_, Some(f)) => crate::dequant::fragment_logic_ops(&f.outputs) as f64 + 4.0,
        (Bf8Convert::Hardware, None) => 15.0,
        (Bf8Convert::ViaF16, None) => 23.0,
        (Bf8Convert::Direct, None) => 15.0,
    };
    // Per-group accumulation drops the 4 packed scale multiplies of a word for 2 packed FMAs per scale group.
    let per_word = if p.dequant.group_accumulate {
        per_word - 4.0 + 2.0 * (2.0 * f64::from(p.atom.k())) / f64::from(p.format.group)
    } else {
        per_word
    };
    let rounding = if p.dequant.exact_pack || p.fragment.is_some() {
        0.0
    } else if p.x == DType::Bf16 {
        16.0
    } else {
        8.0
    };
    // Per K iteration the loop also spends about 8 VALU instructions on LDS addresses and the loop counter
    // (measured on the examples), shared by the lane's elements of the iteration.
    (per_word + rounding) / 8.0 + 8.0 / f64::from(p.elements_per_lane_iter.max(1))
}

/// Predicts one tiling. `measured`: (VALU per element, VGPRs) from an inspected code object.
pub fn predict(
    spec: &KernelSpec,
    arch: Arch,
    m: u32,
    t: Tiling,
    measured: Option<(f64, u32)>,
) -> Option<Prediction> {
    let mut s = spec.clone();
    s.schedule = Schedule::Manual(t);
    let p = plan::plan(&s, arch).ok()?;
    let info = arch.info();
    if !budget::lds_fits(&t, spec.format.group, info)
        || !budget::vgprs_fit(&t, spec.format.group, info)
    {
        return None;
    }
    let waves_per_wg = t.waves_m * t.waves_n * t.waves_k;
    let vgprs = measured.map_or(
        budget::vgprs(&t, spec.format.group).total() as u32,
        |(_, v)| v,
    );
    let by_regs =
        (info.regs_per_simd_lane / vgprs.next_multiple_of(8).max(8)).min(info.max_waves_per_simd);
    let wgs_by_lds = (info.lds_bytes / p.lds_bytes.max(1)).max(1);
    let by_lds = (wgs_by_lds * waves_per_wg / 4).max(1);
    let occupancy = by_regs.min(by_lds).max(1);
    let m_tiles = u64::from(m.div_ceil(t.tile_m));
    // Split-K multiplies the workgroups; each then covers K / split_k.
    let workgroups = u64::from(spec.n / t.tile_n) * m_tiles * u64::from(p.split_k);
    let wgs_per_cu = u64::from((occupancy * 4 / waves_per_wg).max(1));
    let rounds = workgroups.div_ceil(u64::from(info.cus) * wgs_per_cu);

    let (n, k) = (f64::from(spec.n), f64::from(spec.k));
    let scale_bytes = 4.0 / f64::from(spec.format.group);
    // Split-K partials are written once and read back once (f32, whole M tiles).
    let split_bytes = if p.split_k > 1 {
        2.0 * f64::from(p.split_k) * m_tiles as f64 * f64::from(t.tile_m) * n * 4.0
    } else {
        0.0
    };
    let weight_bytes = n * k * (0.5 + scale_bytes);
    let x_bytes = f64::from(m) * k * 2.0;
    let y_bytes = f64::from(m) * n * 2.0;
    // Weights are re-read once per M tile and activations once per N tile. Where the re-read data fits the
    // last-level cache (AMD's Infinity Cache), HBM sees each byte once and the re-reads come from the cache;
    // elsewhere the weights come from HBM once per M tile and the activations are assumed to hit in L2.
    let n_tiles = f64::from(spec.n / t.tile_n);
    // The re-read data is the weights (per M tile) and a band of activation rows (per N tile): the model asks that
    // the weights fit; the band of rows the resident workgroups share is small next to them.
    let fits_llc = info.llc_tb_s > 0.0 && weight_bytes <= info.llc_mb * 1e6;
    let (mut bytes, mut llc_bytes) = if fits_llc {
        (
            weight_bytes + x_bytes + y_bytes,
            (m_tiles as f64 - 1.0) * weight_bytes + (n_tiles - 1.0) * x_bytes,
        )
    } else {
        (m_tiles as f64 * weight_bytes + x_bytes + y_bytes, 0.0)
    };
    // Split-K partials are read back by the same kernel within a round or two of workgroups, microseconds after
    // they are written: where they fit the last-level cache they are assumed to stay there, even while weights
    // too large for it stream past.
    if info.llc_tb_s > 0.0 && split_bytes <= info.llc_mb * 1e6 {
        llc_bytes += split_bytes;
    } else {
        bytes += split_bytes;
    }
    // A CU streams about 1/CUs of the HBM bandwidth: with fewer workgroups in flight than CUs, only that fraction
    // of the bandwidth is drawn (which split-K is there to avoid).
    let concurrent = workgroups.min(u64::from(info.cus) * wgs_per_cu);
    let fraction = (concurrent as f64 / f64::from(info.cus)).min(1.0);
    let hbm_us = bytes / (info.hbm_tb_s * 1e12 * fraction) * 1e6;
    let llc_us = if llc_bytes > 0.0 {
        llc_bytes / (info.llc_tb_s * 1e12 * fraction) * 1e6
    } else {
        0.0
    };
    let memory_us = hbm_us.max(llc_us);

    let valu_per_element = measured.map_or_else(|| estimated_valu_per_element(&p), |(v, _)| v);
    // Per wave and K step of the whole problem: wave_n * K weight elements over the wave's lanes; a wave64 VALU op
    // issues in 4 cycles on a 16-wide SIMD, a warp's integer op in 2 on an SM sub-partition. Waves along K split
    // each workgroup's K range.
    let k_per_wg = k / f64::from(p.split_k) / f64::from(t.waves_k);
    let lanes = f64::from(info.wave_size);
    let valu_cycles_per_wave =
        valu_per_element * f64::from(p.wave_n) * k_per_wg / lanes * info.valu_issue_cycles;
    // NVIDIA plans count m16n8k16 `mma.sync` tiles (`mfma_cycles[0]` each) over 16-K steps whatever the DSL atom.
    let (atom_cycles, atom_k) = if p.fragment.is_some() {
        (f64::from(info.mfma_cycles[0]), f64::from(plan::NV_ATOM_K))
    } else {
        let c = match t.mma {
            MmaAtom::M16N16K16 => info.mfma_cycles[0],
            MmaAtom::M32N32K8 => info.mfma_cycles[1],
        };
        // xf32 16x16x8 takes as long as bf16 16x16x16 for half the K (xf32 peak is half the bf16 peak).
        let k = if p.dequant.xf32 {
            f64::from(t.mma.k()) / 2.0
        } else {
            f64::from(t.mma.k())
        };
        (f64::from(c), k)
    };
    let mfma_cycles_per_wave = f64::from(p.m_tiles * p.n_tiles) * (k_per_wg / atom_k) * atom_cycles;
    let waves = workgroups as f64 * f64::from(waves_per_wg);
    let simds = f64::from(info.cus) * 4.0;
    // Wave quantization: a round occupies every SIMD for as long as its busiest SIMD.
    let per_simd_waves = (waves / simds).ceil().max(rounds as f64);
    let hz = info.clock_ghz * 1e9;
    let valu_us = per_simd_waves * valu_cycles_per_wave / hz * 1e6;
    let valu_work_us = waves / simds * valu_cycles_per_wave / hz * 1e6;
    let mfma_us = per_simd_waves * mfma_cycles_per_wave / hz * 1e6;
    let predicted_us = memory_us.max(valu_us.max(mfma_us)) + FIXED_US;
    Some(Prediction {
        tiling: t,
        workgroups,
        split_k: p.split_k,
        occupancy,
        rounds,
        bytes,
        memory_us,
        valu_us,
        valu_work_us,
        mfma_us,
        predicted_us,
        valu_per_element,
        measured: measured.is_some(),
        route: if p.fragment.is_some() {
            "mma.sync"
        } else if p.dequant.xf32 {
            "xf32"
        } else {
            p.x.name()
        },
        rule: false,
    })
}

/// Weight words (8 elements) one lane dequantizes per K iteration, at most, in `schedule auto`'s candidates.
pub const MAX_WORDS_PER_LANE_ITER: u32 = 32;

/// `schedule auto`'s candidate tile n, smallest first: N must be a multiple of the first.
pub const AUTO_TILE_N: [u32; 4] = [32, 64, 128, 256];

/// The tilings `schedule auto` considers for a shape.
pub fn candidates(spec: &KernelSpec, arch: Arch) -> Vec<Tiling> {
    let mut out = vec![];
    for mma in arch.info().mfma_atoms.iter().copied() {
        for tile_m in [16u32, 32, 64] {
            for tile_n in AUTO_TILE_N {
                for tile_k in [128u32, 256] {
                    for (waves_m, waves_n) in [(1u32, 1u32), (1, 2), (1, 4), (2, 2), (4, 1)] {
                        // Measured on the H100 (docs/PERFORMANCE.md): NVIDIA blocks under 4 warps were about 30%
                        // slower at decode sizes than 4-warp blocks of the same per-warp tile, which this model
                        // does not see (it has no per-block latency term).
                        if arch.is_nvidia() && waves_m * waves_n < 4 {
                            continue;
                        }
                        if !spec.n.is_multiple_of(tile_n)
                            || !spec.k.is_multiple_of(tile_k)
                            || !tile_m.is_multiple_of(waves_m * mma.m())
                            || !tile_n.is_multiple_of(waves_n * mma.n())
                        {
                            continue;
                        }
                        // At most MAX_WORDS_PER_LANE_ITER weight words per lane and iteration: the loop body grows
                        // with them (512 elements per lane made a 27 KB code object that took a second to
                        // compile), and the instruction cache is shared by two CUs.
                        let words = tile_n / waves_n * tile_k / (arch.info().wave_size * 8);
                        if words > MAX_WORDS_PER_LANE_ITER {
                            continue;
                        }
                        let base = Tiling {
                            tile_m,
                            tile_n,
                            tile_k,
                            waves_m,
                            waves_n,
                            waves_k: 1,
                            mma,
                            stages: 2,
                            split_k: None,
                        };
                        out.extend(
                            split_choices(spec, arch, &base)
                                .into_iter()
                                .map(|split_k| Tiling { split_k, ..base }),
                        );
                    }
                }
            }
        }
    }
    out
}

/// Cross-workgroup splits `schedule auto` weighs for a candidate tiling. On AMD decode tiles (tile m <= 32, the
/// tiles the planner's rule splits) every split in {1, 2, 4, 8, 16} and the rule's own choice that divides the K
/// iterations and leaves each workgroup at least two of them (so the ring has a tile to overlap); the model then
/// compares wave quantization, partial-sum traffic and VALU time across them. Elsewhere the planner's rule (on
/// NVIDIA it was measured: `plan::choose_split_k`).
fn split_choices(spec: &KernelSpec, arch: Arch, t: &Tiling) -> Vec<Option<u32>> {
    if arch.is_nvidia() || t.tile_m > 32 {
        return vec![None];
    }
    let k_iters = spec.k / t.tile_k;
    let rule = plan::choose_split_k(spec.n / t.tile_n, k_iters, t.tile_m, t.waves_k, arch);
    let mut splits: Vec<u32> = [1, 2, 4, 8, 16, rule]
        .into_iter()
        .filter(|&s| k_iters.is_multiple_of(s) && (s == 1 || k_iters / s >= 2))
        .collect();
    splits.sort_unstable();
    splits.dedup();
    splits.into_iter().map(Some).collect()
}

/// All feasible candidates' predictions for M, best first (ties broken by fewer padded rows of M, less VALU work,
/// lower VALU cost per element, higher occupancy,
/// then more waves per workgroup and larger tiles, which hide latency in ways the model does not see; the order is
/// deterministic). `measure` compiles each candidate (slower) to use measured VALU and registers.
pub fn rank(spec: &KernelSpec, arch: Arch, m: u32, measure: bool) -> Vec<Prediction> {
    let mut out: Vec<Prediction> = candidates(spec, arch)
        .into_iter()
        .filter(|t| {
            budget::lds_fits(t, spec.format.group, arch.info())
                && budget::vgprs_fit(t, spec.format.group, arch.info())
        })
        .filter_map(|t| {
            let measured = if measure {
                measure_tiling(spec, arch, t)
            } else {
                None
            };
            predict(spec, arch, m, t, measured)
        })
        .collect();
    let padding = |t: &Tiling| m.div_ceil(t.tile_m) * t.tile_m - m;
    // The prediction assumes memory, VALU and MFMA overlap perfectly; real overlap is partial, so among equal
    // predictions the plan that does the least VALU work (the dequantization, which competes with address and
    // loop work on the same SIMD) is safer. Work, not VALU per element: more M tiles per wave share each
    // dequantized element, and waves along M dequantize the same weights twice. Work, not the busiest SIMD's
    // time: at equal predicted time wave quantization only says how the same work lands on the SIMDs.
    out.sort_by(|a, b| {
        a.predicted_us
            .total_cmp(&b.predicted_us)
            .then(padding(&a.tiling).cmp(&padding(&b.tiling)))
            .then(a.valu_work_us.total_cmp(&b.valu_work_us))
            .then(a.valu_per_element.total_cmp(&b.valu_per_element))
            .then(b.occupancy.cmp(&a.occupancy))
            .then(key(&b.tiling).cmp(&key(&a.tiling)))
    });
    // NVIDIA decode: the tiling measured fastest on the H100 goes first whatever its prediction, since the model
    // sees neither warps along K, nor cp.async staging, nor 8-token atoms.
    if let Some((t, _)) = plan::nvidia_decode_rule(spec.n, spec.k, m, arch) {
        let measured = if measure {
            measure_tiling(spec, arch, t)
        } else {
            None
        };
        if let Some(mut p) = predict(spec, arch, m, t, measured) {
            p.rule = true;
            out.retain(|q| q.tiling != t);
            out.insert(0, p);
        }
    }
    out
}

/// Larger is preferred on ties; last, fewer cross-workgroup splits (less partial-sum traffic and epilogue work).
fn key(t: &Tiling) -> (u32, u32, u32, u32, bool, u32) {
    (
        t.waves_m * t.waves_n,
        t.tile_n,
        t.tile_k,
        u32::MAX - t.tile_m,
        t.mma == MmaAtom::M16N16K16,
        u32::MAX - t.split_k.unwrap_or(0),
    )
}

/// Compiles `spec` with tiling `t` and inspects it: (VALU per weight element, VGPRs), or `None` if it does not
/// compile.
pub fn measure_tiling(spec: &KernelSpec, arch: Arch, t: Tiling) -> Option<(f64, u32)> {
    let mut s = spec.clone();
    s.schedule = Schedule::Manual(t);
    let out = crate::driver::compile_kernel(&s, arch, &Default::default()).ok()?;
    let report = crate::inspect::inspect(&out.hsaco, Some(out.plan.elements_per_lane_iter)).ok()?;
    let k = report.kernels.first()?;
    Some((k.valu_per_weight_element?, k.vgprs))
}

/// The M `schedule auto` optimizes for when nothing else says: one decode step of a 16-token batch.
pub const AUTO_M: u32 = 16;
