//! The kernel plan: every tiling, layout and launch decision, resolved once from a checked spec and an arch.
//!
//! Architecture invariant: the IR builders, the manifest and the runtime's repacking all read these fields; none of
//! them recomputes a layout decision on its own.

use nibble_runtime::manifest::{
    ArgRole, BitPiece, FragmentBits, GridDim, KernelArg, ScaleLayout, WeightLayout,
};
use nibble_runtime::numerics::repack::{MMA_SCALE_EXP_LAYOUT_ID, MMA_SCALE_LAYOUT_ID};
use serde::Serialize;
use thiserror::Error;

use crate::arch::Arch;
use crate::spec::{
    DType, FormatSpec, KernelSpec, MmaAtom, ScaleStorage, ScaleType, Schedule, Staging, Tiling,
};

/// Each lane loads its weight words 16 bytes at a time: 4 words = 4 MFMA pairs.
pub const WORDS_PER_LANE: u32 = 4;
/// bf16 elements of padding per LDS row of the activation tile, so rows do not start on the same bank (unless the
/// rows are swizzled instead: `Plan::x_swizzle`).
pub const LDS_ROW_PAD: u32 = 8;
/// FNUZ bf8 exponent bias: `word & mask` bytes read as element * 2^(bias - BF8_BIAS).
pub const BF8_BIAS: i32 = 16;
/// Buffer offsets are 32-bit signed in the generated code.
const MAX_BUFFER_BYTES: u64 = (1 << 31) - 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("kernel {kernel}: {arch} is not among the kernel's targets")]
    NotATarget { kernel: String, arch: String },
    #[error("kernel {kernel}: {message}")]
    Unsupported { kernel: String, message: String },
}

/// How the kernel brings the second four elements of a weight word under the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecondHalf {
    /// `llvm.bitreverse` (one `v_bfrev_b32`): for elements with 2 exponent bits.
    Bitreverse,
    /// Rotate left by 4 (one `v_alignbit_b32`): for elements with 1 exponent bit.
    Rotl4,
}

impl SecondHalf {
    pub fn name(self) -> &'static str {
        match self {
            SecondHalf::Bitreverse => "bitreverse",
            SecondHalf::Rotl4 => "rotl4",
        }
    }
}

/// How bf8 bytes become f32 on this arch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bf8Convert {
    /// `v_cvt_pk_f32_bf8` (gfx940+): two bytes per instruction.
    Hardware,
    /// gfx90a has no fp8 conversions, but FNUZ bf8 (E5M2, bias 16) is the top byte of an f16 (E5M10, bias 15):
    /// byte permutes place the bytes as f16 high bytes, `v_cvt_f32_f16` widens them, and the value is
    /// element * 2^(bias - 15), so the repacked scales carry 2^(15 - bias) on this path.
    ViaF16,
    /// NVIDIA: no byte format in between. Shifts and masks place each element's bits straight into a bf16/f16 half
    /// of an `mma.sync` operand register (see `FragmentPlan`), and one packed 16-bit multiply applies the scale.
    Direct,
}

/// The NVIDIA dequantization recipe: how the four operand registers of an m16n8k16 A fragment are cut out of one
/// weight word, and the power of two the epilogue restores.
#[derive(Debug, Clone, Serialize)]
pub struct FragmentPlan {
    /// Bit of a 16-bit half where the element's three low code bits start (operand mantissa width - element's).
    pub mag_low: u32,
    /// Per operand register, the `(shift, mask)` pieces whose OR forms it (`nibble_runtime::numerics::repack_mma::fragment_pieces`).
    pub outputs: Vec<Vec<BitPiece>>,
    /// The MMA operand is element * scale * 2^-epilogue_exp (so every scale the layout accepts stays inside the
    /// operand type's range); the epilogue multiplies the accumulators by 2^epilogue_exp.
    pub epilogue_exp: i32,
    /// Exponent bias of the operand type (127 for bf16, 15 for f16).
    pub operand_bias: i32,
}

/// The dequantization recipe the dequant pass emits.
#[derive(Debug, Clone, Serialize)]
pub struct DequantPlan {
    pub mask: u32,
    pub mag_shift: u32,
    pub second_half: SecondHalf,
    pub convert: Bf8Convert,
    /// Whether element * scale is exact in the operand type, so packing may truncate f32 to its high half.
    pub exact_pack: bool,
    /// Operand element type of the MFMA (the activation type).
    pub operand: DType,
    /// log2 of the factor folded into every repacked scale (16 - element bias).
    pub exp_offset: i32,
    /// Per-group partial accumulation (AMD): MFMAs multiply the unscaled elements into a temporary accumulator and
    /// each scale group adds `temporary * scale` to the real one (two packed FMAs per lane and group), instead of a
    /// packed multiply per two elements. Chosen where that is cheaper and exact (see `plan`).
    pub group_accumulate: bool,
    /// gfx942 with per-group accumulation: the unscaled f32 elements feed `v_mfma_f32_16x16x8_xf32` directly (no
    /// packing to bf16), and the activation tile is staged in LDS as f32 (converted once per workgroup, rows
    /// XOR-swizzled instead of padded). Exact: bf16 activations and unscaled elements have at most 8 significant
    /// bits, xf32 keeps 11. Chosen where the f32 tile still leaves two waves per SIMD (see `plan`).
    pub xf32: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub kernel: String,
    pub symbol: String,
    pub arch: Arch,
    pub n: u32,
    pub k: u32,
    /// Largest M whose buffers stay within 32-bit offsets.
    pub m_max: u32,
    pub x: DType,
    pub y: DType,
    pub bias: Option<DType>,
    pub format: FormatSpec,
    pub tiling: Tiling,
    pub atom: MmaAtom,
    /// Rows / columns of the workgroup tile one wave computes.
    pub wave_m: u32,
    pub wave_n: u32,
    /// MFMA tiles per wave along M and N.
    pub m_tiles: u32,
    pub n_tiles: u32,
    /// MFMA pairs (2 * atom.k of K) one wave runs per K iteration (over its K slice); each pair consumes one weight
    /// word per lane and n-tile.
    pub pairs_per_iter: u32,
    /// 16-byte weight loads per lane and n-tile per K iteration.
    pub wchunks_per_iter: u32,
    /// K elements of each K tile one wave covers: `tile_k / waves_k`. Wave group `kw` (wave / (waves_m * waves_n))
    /// takes K `kw * k_slice ..` of every tile; the groups' accumulators are summed in LDS before the epilogue.
    pub k_slice: u32,
    pub k_iters: u32,
    /// Cross-workgroup split-K: `split_k` workgroups along grid z each take `iters_per_split` K iterations and the
    /// last to finish a tile reduces the partial sums (1: no split).
    pub split_k: u32,
    pub iters_per_split: u32,
    pub threads: u32,
    /// Activation rows in LDS are `lds_row` elements apart: `tile_k + LDS_ROW_PAD` (bf16/f16), `tile_k` (xf32 f32
    /// tile, swizzled bf16/f16 tile, wgmma core matrices).
    pub lds_row: u32,
    /// AMD bf16/f16 tile: 16-byte chunks XOR-swizzled by `Plan::x_chunk` instead of padded rows, where dropping
    /// the padding raises the occupancy (`budget::x_swizzled`).
    pub x_swizzle: bool,
    pub lds_stage_elems: u32,
    /// Elements of the workgroup buffer: the ring, or the in-workgroup split-K reduction if larger.
    pub lds_elems: u32,
    pub lds_bytes: u32,
    /// 16-byte activation vectors each thread moves into LDS per K iteration (some threads idle on the last one).
    pub x_vecs_per_thread: u32,
    /// Scales each lane loads per K iteration and n-tile (for its K slice).
    pub scales_per_iter: u32,
    pub dequant: DequantPlan,
    /// NVIDIA targets: the fragment bit recipe (None on AMD).
    pub fragment: Option<FragmentPlan>,
    /// sm_90a: each group of 4 warps (16 weight rows each, one warpgroup = 64 rows) issues one asynchronous
    /// `wgmma.mma_async.m64n{tile_m}k16` per 16-K step, A (the dequantized weights) from registers in the
    /// `mma.sync` fragment layout, B (the activation tile) from shared memory in the K-major core-matrix layout
    /// (`Plan::wgmma_x_offset`); the accumulators are laid out as the `mma.sync` path's with one n-tile.
    pub wgmma: bool,
    /// NVIDIA plans with two or more stages whose kernel says `staging async`, or (by default) that take the wgmma
    /// route, fill the ring with `cp.async` (global to shared memory without registers), `stages - 1` tiles
    /// ahead, with one barrier per K step (`kernel_nv`). Register staging loads a tile and stores it within one K
    /// step; measured on the H100 (docs/PERFORMANCE.md) it is 4-13% slower on the wgmma route at M = 4096, while
    /// on mma.sync it is faster for some tilings and slower for others, hence the per-route default.
    pub async_x: bool,
    /// `async_x` on `mma.sync` with waves along K: each K slice's warps stage that slice's columns of the
    /// activation tile themselves (no other warp reads them) and meet at a named barrier of their own at every K
    /// step, instead of the whole block meeting at one. Measured on the H100: 2-5% faster for o_ka and qkv_ka,
    /// where `ncu` had counted a fifth of the stall cycles at the block barrier (docs/PERFORMANCE.md).
    pub slice_sync: bool,
    /// NVIDIA: the workgroup buffer is dynamic shared memory (`lds_bytes` above the 48 KiB a block may declare
    /// statically); the manifest's `launch.dynamic_lds_bytes` tells the runtime to opt in and pass it at launch.
    pub dynamic_lds: bool,
    /// NVIDIA: K steps per iteration of the K loop (`unroll U`; 1 on AMD, whose K loop is never unrolled).
    pub unroll: u32,
    /// NVIDIA decode plans: the registers per thread that let the grid run in one wave, the kernel's cap on
    /// ptxas (`.maxnreg`), see `nv_max_regs`.
    pub max_regs: Option<u32>,
    pub weight_layout: WeightLayout,
    pub scale_layout: ScaleLayout,
    pub grid: [GridDim; 3],
    pub args: Vec<KernelArg>,
    pub kernarg_bytes: u32,
    /// Weight elements one lane dequantizes per K iteration (denominator of the VALU-per-element figure).
    pub elements_per_lane_iter: u32,
    pub source_hash: String,
}

/// The largest M the measured NVIDIA decode tilings (`nvidia_decode_rule`) are for.
pub const NV_DECODE_MAX_M: u32 = 32;

/// The NVIDIA decode tiling measured fastest on the H100 for N x K at M <= 32 tokens, with its activation staging
/// (docs/results/h100-session9/): blocks of 8 tokens up to M = 8 (the m16n8k16 atom's; 16 above), 32 weight rows over
/// 2 x 8 warps (8 along a 1024-K tile) with L1-cached `cp.async` staging, so the blocks an SM holds share the
/// activation rows. Those 512-thread blocks fit two to an SM, so a grid of N / 32 blocks between two and four per SM
/// (Llama-3-70B's QKV, 320 blocks on 132 SMs) would run a half-empty second wave: there 2 x 4 warps along a 512-K
/// tile (QKV at M = 1 21.1 against 26.5 us, at M = 16 22.5 against 24.4). At M = 1 the 2 x 8 tiling measured O
/// 17.1, gate/up 90.6, down 47.2 us against 17.9, 95.7, 52.7 for 2 x 4. For K above 8192 without a 1024-K tile, 2 x 4
/// warps measured slower (session 7: 55.8/70.5 against 52.8/56.9 us at M = 1/16 on the down projection), so a tile
/// of up to 128 rows over warps along N with register staging. Where 64-row blocks are many (at least four per SM:
/// Llama-3-70B's gate/up, 896 on 132 SMs), 64 rows over four warps along a 256-K tile, also with `cp.async` staging
/// (docs/results/h100-session10/, found by `nibble tune`: gate/up 91.3 against 100.8-101.3 us at M = 16, 89.4
/// against 92.4 at M = 8, 89.0 against 89.5 at M = 1; the same tiling takes the down projection's 128 such blocks
/// to 54.5 against 51.3 us at M = 16). None for AMD targets, larger M, or N not a multiple of 32: the cost model
/// decides there. The cost model ranks this tiling first (`costmodel::rank`), since it does not model warps along
/// K, `cp.async` staging or 8-token atoms.
pub fn nvidia_decode_rule(n: u32, k: u32, m: u32, arch: Arch) -> Option<(Tiling, Staging)> {
    if !arch.is_nvidia()
        || m == 0
        || m > NV_DECODE_MAX_M
        || !n.is_multiple_of(32)
        || !k.is_multiple_of(128)
    {
        return None;
    }
    let tokens = if m <= NV_ATOM_TOKENS {
        NV_ATOM_TOKENS
    } else {
        16
    };
    let tiling = |tile_n: u32, tile_k: u32, waves_n: u32, waves_k: u32| Tiling {
        tile_m: tokens,
        tile_n,
        tile_k,
        waves_m: 1,
        waves_n,
        waves_k,
        mma: MmaAtom::M16N16K16,
        stages: 2,
        split_k: None,
    };
    let sms = arch.info().cus;
    if n.is_multiple_of(64) && k.is_multiple_of(256) && n / 64 >= 4 * sms {
        return Some((tiling(64, 256, 4, 1), Staging::Async));
    }
    let blocks = n / 32;
    let tail = 2 * sms < blocks && blocks <= 4 * sms;
    if k.is_multiple_of(1024) && !tail {
        return Some((tiling(32, 1024, 2, 8), Staging::Async));
    }
    if k.is_multiple_of(512) && k <= 8192 {
        return Some((tiling(32, 512, 2, 4), Staging::Async));
    }
    let tile_n = [128, 64, 32].into_iter().find(|c| n.is_multiple_of(*c))?;
    let tile_k = if k.is_multiple_of(256) { 256 } else { 128 };
    Some((
        tiling(tile_n, tile_k, (tile_n / 32).clamp(1, 4), 1),
        Staging::Registers,
    ))
}

/// The tiling `schedule auto` picks: the cost model's first candidate at the schedule's M (`schedule auto m=N`,
/// `costmodel::AUTO_M` otherwise), which on NVIDIA decode shapes is `nvidia_decode_rule`'s tiling; from estimates
/// only (compiling every candidate is `nibble plan --explain --measure`). None when no candidate fits the shape
/// and the budgets ([`no_auto_tiling`] says why).
pub fn auto_tiling(spec: &KernelSpec, arch: Arch) -> Option<Tiling> {
    crate::costmodel::rank(spec, arch, spec.auto_m(), false)
        .first()
        .map(|p| p.tiling)
}

/// What keeps `schedule auto` from tiling a kernel: N or K outside every candidate's multiples, or the budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoBlocker {
    N,
    K,
    Budgets,
}

/// Why `schedule auto` has no tiling for `spec` on `arch`: which dimension, and an actionable sentence.
pub fn no_auto_tiling(spec: &KernelSpec, arch: Arch) -> (AutoBlocker, String) {
    let (n, k) = (spec.n, spec.k);
    let tiles_n = crate::costmodel::AUTO_TILE_N;
    let min_n = tiles_n[0];
    let min_k = crate::dsl::budget::K_CHUNK;
    let pad = |v: u32, to: u32| u64::from(v).div_ceil(u64::from(to)) * u64::from(to);
    if !n.is_multiple_of(min_n) {
        let (last, rest) = tiles_n.split_last().unwrap_or((&min_n, &[]));
        let rest: Vec<String> = rest.iter().map(u32::to_string).collect();
        let message = format!(
            "schedule auto has no tiling for N = {n} on {}: its tiles are {} or {last} rows of the weight, so N \
             must be a multiple of {min_n}; pad N to {} or write a manual tiling",
            arch.name(),
            rest.join(", "),
            pad(n, min_n)
        );
        (AutoBlocker::N, message)
    } else if !k.is_multiple_of(min_k) {
        let message = format!(
            "schedule auto has no tiling for K = {k} on {}: K tiles are multiples of {min_k}; pad K to {}",
            arch.name(),
            pad(k, min_k)
        );
        (AutoBlocker::K, message)
    } else {
        let message = format!(
            "schedule auto has no tiling for N = {n}, K = {k} on {} within its LDS and register budgets; write a \
             manual tiling (`nibble check` reports its budget)",
            arch.name()
        );
        (AutoBlocker::Budgets, message)
    }
}

pub fn plan(spec: &KernelSpec, arch: Arch) -> Result<Plan, PlanError> {
    if !spec.targets.contains(&arch) {
        return Err(PlanError::NotATarget {
            kernel: spec.name.clone(),
            arch: arch.name().to_string(),
        });
    }
    let unsupported = |message: String| PlanError::Unsupported {
        kernel: spec.name.clone(),
        message,
    };
    let t = match &spec.schedule {
        Schedule::Manual(t) => *t,
        Schedule::Auto { .. } => {
            auto_tiling(spec, arch).ok_or_else(|| unsupported(no_auto_tiling(spec, arch).1))?
        }
    };
    let atom = t.mma;
    let fmt = &spec.format;
    let elem = &fmt.element;
    // The checker guarantees these; the plan re-asserts the ones its arithmetic depends on so a misuse of the API
    // is an error rather than a wrong kernel.
    if !t.tile_k.is_multiple_of(128)
        || !spec.k.is_multiple_of(t.tile_k)
        || !spec.n.is_multiple_of(t.tile_n)
    {
        return Err(unsupported(format!(
            "tile {}x{}x{} does not fit N={} K={} (tile n must divide N, tile k must divide K and be a multiple of \
             128)",
            t.tile_m, t.tile_n, t.tile_k, spec.n, spec.k
        )));
    }
    if !t
        .tile_m
        .is_multiple_of(t.waves_m * arch.info().token_unit(atom))
        || !t.tile_n.is_multiple_of(t.waves_n * atom.n())
        || t.waves_k == 0
        || !t.tile_k.is_multiple_of(t.waves_k * 128)
    {
        return Err(unsupported(
            "waves and MFMA atom do not divide the tile".into(),
        ));
    }
    let second_half = match (elem.exp_bits, elem.man_bits) {
        (2, 1) => SecondHalf::Bitreverse,
        (1, 2) => SecondHalf::Rotl4,
        _ => {
            return Err(unsupported(format!(
                "element {} (e{}m{}) has no fast bit layout",
                elem.name, elem.exp_bits, elem.man_bits
            )))
        }
    };
    let mag_shift = 2 - u32::from(elem.man_bits);
    let mask = 0x8080_8080u32 | (0x0707_0707u32 << mag_shift);
    let convert = match arch {
        Arch::Gfx942 => Bf8Convert::Hardware,
        Arch::Gfx90a => Bf8Convert::ViaF16,
        Arch::Sm80 | Arch::Sm90 | Arch::Sm90a => Bf8Convert::Direct,
    };
    let fragment = if convert == Bf8Convert::Direct {
        Some(fragment_plan(spec).map_err(unsupported)?)
    } else {
        None
    };
    let exp_offset = match (&fragment, convert) {
        (Some(f), _) => f.operand_bias - elem.bias - f.epilogue_exp,
        (None, Bf8Convert::ViaF16) => BF8_BIAS - 1 - elem.bias,
        (None, _) => BF8_BIAS - elem.bias,
    };
    let Route {
        exact_pack,
        group_accumulate,
        xf32,
    } = route(spec, &t, arch);

    let waves = t.waves_m * t.waves_n * t.waves_k;
    let lanes = arch.info().wave_size;
    // K elements of each K tile one wave takes (waves along K split every tile).
    let k_slice = t.tile_k / t.waves_k;
    let threads = waves * lanes;
    let wave_m = t.tile_m / t.waves_m;
    let wave_n = t.tile_n / t.waves_n;
    let nvidia = fragment.is_some();
    // AMD: MFMA pairs (2 * atom.k of K, one word per lane); NVIDIA: m16n8k16 steps (16 of K, one word per lane).
    let pairs_per_iter = if nvidia {
        k_slice / NV_ATOM_K
    } else {
        k_slice / (2 * atom.k())
    };
    let wchunks_per_iter = pairs_per_iter / WORDS_PER_LANE;
    // NVIDIA: weight rows are the MMA's M (16 per atom), tokens its N (8 per atom).
    let (m_tiles, n_tiles) = if nvidia {
        (wave_m.div_ceil(NV_ATOM_TOKENS), wave_n / NV_ATOM_ROWS)
    } else {
        (wave_m / atom.m(), wave_n / atom.n())
    };
    let wgmma = wgmma_route(spec, &t, arch);
    // The f32 tile's rows are XOR-swizzled (`Plan::xf32_chunk`), the bf16 tile's padded unless swizzling them
    // (`Plan::x_chunk`) raises the occupancy (`budget::x_swizzled`); wgmma's core matrices need no padding.
    let x_swizzle = !xf32 && crate::dsl::budget::x_swizzled(&t, spec.format.group, arch.info());
    let lds_row = if xf32 || wgmma || x_swizzle {
        t.tile_k
    } else {
        t.tile_k + LDS_ROW_PAD
    };
    let lds_stage_elems = t.tile_m * lds_row;
    let lds_elem_bytes = if xf32 { 4 } else { 2 };
    // The in-workgroup split-K reduction reuses the buffer after the K loop: (waves_k - 1) f32 tiles.
    let reduce_elems = (t.waves_k - 1) * t.tile_m * t.tile_n * 4 / lds_elem_bytes;
    let lds_elems = (t.stages * lds_stage_elems).max(reduce_elems);
    let lds_bytes = lds_elems * lds_elem_bytes;
    let x_vecs = t.tile_m * t.tile_k / 8;
    let x_vecs_per_thread = x_vecs.div_ceil(threads);
    let scales_per_iter = if nvidia {
        // Per chunk of 64 K: one scale per group slot for rows g and g + 8.
        wchunks_per_iter * nv_group_slots(fmt.group) * 2
    } else {
        (k_slice / fmt.group).max(1)
    };
    if !nvidia && lds_bytes > arch.info().lds_bytes {
        // The checker rejects such tilings in the DSL; an API caller gets the same verdict instead of LLVM's abort.
        return Err(unsupported(format!(
            "the workgroup buffer needs {lds_bytes} bytes of LDS, more than {}'s {}",
            arch.name(),
            arch.info().lds_bytes
        )));
    }
    if nvidia && (lds_bytes > arch.info().lds_bytes || !wave_n.is_multiple_of(NV_ATOM_ROWS)) {
        return Err(unsupported(format!(
            "on {} a wave's {} weight rows must be a multiple of 16 and the x tile must fit the {} bytes of shared \
             memory a block may use (it needs {lds_bytes} bytes)",
            arch.name(),
            wave_n,
            arch.info().lds_bytes
        )));
    }
    // CUDA gives a block 48 KiB of static shared memory; more is dynamic, opted into at load time.
    let dynamic_lds = nvidia && lds_bytes > NV_STATIC_SMEM_BYTES;

    // `schedule auto` on an NVIDIA decode shape takes the measured tiling with its staging.
    let rule_async = matches!(spec.schedule, Schedule::Auto { .. })
        && nvidia_decode_rule(spec.n, spec.k, spec.auto_m(), arch)
            .is_some_and(|(rt, st)| rt == t && st == Staging::Async);
    let async_x = nvidia
        && t.stages >= 2
        && spec
            .staging
            .map_or(wgmma || rule_async, |s| s == Staging::Async);

    let k_iters = spec.k / t.tile_k;
    let split_k = match t.split_k {
        Some(s) if s >= 1 && k_iters.is_multiple_of(s) => s,
        Some(s) => {
            return Err(unsupported(format!(
                "split {s} does not divide the {k_iters} K iterations"
            )))
        }
        None => choose_split_k(spec.n / t.tile_n, k_iters, t.tile_m, t.waves_k, arch),
    };
    let xb = 2u64;
    // Rows of x, of y, and (with split-K) of every split's f32 partials must stay within 32-bit offsets.
    let row_bytes = (u64::from(spec.k) * xb)
        .max(u64::from(spec.n) * 2)
        .max(u64::from(split_k) * u64::from(spec.n) * 4);
    let m_max = (MAX_BUFFER_BYTES / row_bytes).min(u64::from(u32::MAX)) as u32;
    // The split-K workspace holds whole M tiles.
    let m_max = if split_k > 1 {
        m_max - m_max % t.tile_m
    } else {
        m_max
    };
    if m_max < 1 {
        return Err(unsupported(
            "rows are too long for 32-bit buffer offsets".into(),
        ));
    }
    if u64::from(spec.n) * u64::from(spec.k) / 2 > MAX_BUFFER_BYTES {
        return Err(unsupported(
            "the weight exceeds 2 GiB, beyond 32-bit buffer offsets".into(),
        ));
    }

    let mut args = Vec::new();
    let mut offset = 0u32;
    let mut push = |name: &str, role: ArgRole, kind: &str, elem: Option<&str>, size: u32| {
        offset = offset.next_multiple_of(size);
        args.push(KernelArg {
            name: name.to_string(),
            role,
            kind: kind.to_string(),
            elem: elem.map(str::to_string),
            offset,
            size,
        });
        offset += size;
    };
    push("x", ArgRole::X, "ptr", Some(spec.x.name()), 8);
    push("w", ArgRole::Weight, "ptr", Some("u32"), 8);
    // Power-of-two scales travel as one exponent byte when the operand type has E8M0's exponent range (bf16), unless
    // the kernel says `scales widened`; f16 operands keep 16-bit values, whose subnormals extend the range of scales
    // applied exactly.
    let exp_scales = nvidia
        && fmt.scale == ScaleType::E8m0
        && spec.x == DType::Bf16
        && spec.scales != Some(ScaleStorage::Widened);
    let scale_elem = match (nvidia, exp_scales) {
        (true, true) => "u8",
        (true, false) => spec.x.name(),
        (false, _) => "f32",
    };
    push("scales", ArgRole::Scales, "ptr", Some(scale_elem), 8);
    if let Some(b) = spec.bias {
        push("bias", ArgRole::Bias, "ptr", Some(b.name()), 8);
    }
    push("y", ArgRole::Y, "ptr", Some(spec.y.name()), 8);
    if split_k > 1 {
        push("workspace", ArgRole::Workspace, "ptr", Some("f32"), 8);
        push("counters", ArgRole::Counters, "ptr", Some("i32"), 8);
    }
    push("m", ArgRole::M, "i32", None, 4);
    if fmt.tensor_scale {
        push("tensor_scale", ArgRole::TensorScale, "f32", None, 4);
    }
    let kernarg_bytes = offset;

    Ok(Plan {
        kernel: spec.name.clone(),
        symbol: spec.name.clone(),
        arch,
        n: spec.n,
        k: spec.k,
        m_max,
        x: spec.x,
        y: spec.y,
        bias: spec.bias,
        format: fmt.clone(),
        tiling: t,
        atom,
        wave_m,
        wave_n,
        m_tiles,
        n_tiles,
        pairs_per_iter,
        wchunks_per_iter,
        k_iters,
        split_k,
        iters_per_split: k_iters / split_k,
        threads,
        lds_row,
        x_swizzle,
        lds_stage_elems,
        lds_elems,
        lds_bytes,
        x_vecs_per_thread,
        scales_per_iter,
        dequant: DequantPlan {
            mask,
            mag_shift,
            second_half,
            convert,
            exact_pack,
            operand: spec.x,
            exp_offset,
            group_accumulate,
            xf32,
        },
        weight_layout: match &fragment {
            None => WeightLayout {
                id: "nibble.mfma_pairs.v1".into(),
                atom_n: atom.n(),
                atom_k: atom.k(),
                words_per_lane: WORDS_PER_LANE,
                mag_shift,
                second_half: second_half.name().into(),
                mask,
                fragment: None,
            },
            Some(f) => WeightLayout {
                id: "nibble.mma_sync_a.v1".into(),
                atom_n: NV_ATOM_ROWS,
                atom_k: NV_ATOM_K,
                words_per_lane: WORDS_PER_LANE,
                mag_shift: f.mag_low,
                second_half: "pieces".into(),
                mask: f.outputs[0].iter().fold(0, |m, p| m | p.mask),
                fragment: Some(FragmentBits {
                    outputs: f.outputs.clone(),
                }),
            },
        },
        scale_layout: ScaleLayout {
            id: if exp_scales {
                MMA_SCALE_EXP_LAYOUT_ID.into()
            } else if nvidia {
                MMA_SCALE_LAYOUT_ID.into()
            } else {
                "nibble.scales_f32.v1".into()
            },
            group: fmt.group,
            exp_offset,
            dtype: nvidia.then(|| spec.x.name().to_string()),
        },
        fragment,
        wgmma,
        async_x,
        // (The wgmma route has no waves along K: it reads the whole tile in every warpgroup.)
        slice_sync: async_x && !wgmma && t.waves_k > 1,
        dynamic_lds,
        unroll: if arch.is_nvidia() {
            spec.unroll.unwrap_or(1)
        } else {
            1
        },
        max_regs: nv_max_regs(
            arch,
            t.tile_m,
            (spec.n / t.tile_n) * split_k,
            threads,
            lds_bytes,
        ),
        grid: [
            GridDim::Const {
                value: spec.n / t.tile_n,
            },
            GridDim::CeilDivM { divisor: t.tile_m },
            GridDim::Const { value: split_k },
        ],
        args,
        kernarg_bytes,
        k_slice,
        elements_per_lane_iter: wave_n * k_slice / lanes,
        source_hash: spec.source_hash.clone(),
    })
}

/// How the dequantized elements reach the MMA, decided from the spec, tiling and arch alone (so the DSL checker's
/// budget report and the plan agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub exact_pack: bool,
    pub group_accumulate: bool,
    pub xf32: bool,
}

/// Whether a tiling takes the sm_90a wgmma route (`Plan::wgmma`): bf16 activations, warps of 16 weight rows in
/// whole warpgroups (`waves m=1 n=4j`, none along K), and a token tile that is a wgmma N.
pub fn wgmma_route(spec: &KernelSpec, t: &Tiling, arch: Arch) -> bool {
    arch == Arch::Sm90a
        && spec.x == DType::Bf16
        && t.waves_m == 1
        && t.waves_k == 1
        && t.tile_n == NV_ATOM_ROWS * t.waves_n
        && t.waves_n.is_multiple_of(4)
        && t.tile_m.is_multiple_of(NV_ATOM_TOKENS)
        && t.tile_m <= WGMMA_MAX_N
}

pub fn route(spec: &KernelSpec, t: &Tiling, arch: Arch) -> Route {
    let fmt = &spec.format;
    let atom = t.mma;
    // element * scale is exact in a 16-bit float when the significands fit: elements carry at most 3 significant
    // bits, e8m0 scales 1 and e4m3 scales 4; bf16 holds 8 and f16 11. Other scales go through a rounding convert.
    let elem_bits = 1 + u32::from(fmt.element.man_bits);
    let scale_bits = match fmt.scale {
        ScaleType::E8m0 => 1,
        ScaleType::E4m3 => 4,
        ScaleType::F16 => 11,
        ScaleType::Bf16 => 8,
        ScaleType::F32 => 24,
    };
    let operand_bits = match spec.x {
        DType::Bf16 => 8,
        DType::F16 => 11,
    };
    // f16 has a narrow exponent range, so products may round even when significands fit: always convert properly.
    let exact_pack = spec.x == DType::Bf16 && elem_bits + scale_bits <= operand_bits;
    // Per-group accumulation pays when a wave has one MFMA tile along M (one accumulator to scale per group) on the
    // 16x16x16 atom (a word's pair of MFMAs spans 32 K, inside one group of 32 or more). It is exact where the
    // per-element products are (bf16 activations, e8m0/e4m3 scales): the MFMA then sees the same values, scaled
    // later by a power of two or a 4-bit significand.
    let waves_m = t.waves_m.max(1);
    let group_accumulate = !arch.is_nvidia()
        && exact_pack
        && atom == MmaAtom::M16N16K16
        && t.tile_m / waves_m == atom.m()
        && fmt.group >= 2 * atom.k();
    // xf32 on gfx942: the f32 activation tile must still let two waves per SIMD reside (64 KiB of LDS per CU
    // shared by ceil(8 / waves) workgroups), or the occupancy lost costs more than the packs saved.
    let f32_tile_bytes = crate::dsl::budget::lds_bytes_f32(t);
    let waves = u64::from((t.waves_m * t.waves_n * t.waves_k).max(1));
    let wgs_for_two_waves = (2 * u64::from(crate::arch::SIMDS_PER_CU)).div_ceil(waves);
    let xf32 = arch == Arch::Gfx942
        && group_accumulate
        && f32_tile_bytes * wgs_for_two_waves <= u64::from(arch.info().lds_bytes);
    Route {
        exact_pack,
        group_accumulate,
        xf32,
    }
}

/// NVIDIA m16n8k16: weight rows per A atom, tokens per B atom, K per step.
pub const NV_ATOM_ROWS: u32 = 16;
/// Static shared memory a CUDA block may declare.
pub const NV_STATIC_SMEM_BYTES: u32 = 48 * 1024;
/// Largest N (tokens) of one `wgmma.mma_async.m64nNk16`.
pub const WGMMA_MAX_N: u32 = 256;
pub const NV_ATOM_TOKENS: u32 = 8;
pub const NV_ATOM_K: u32 = 16;
/// K covered by one 16-byte weight load of a lane on NVIDIA (4 words, one per m16n8k16 step).
pub const NV_CHUNK_K: u32 = NV_ATOM_K * WORDS_PER_LANE;

/// Registers per thread below which `nv_max_regs` sets no cap (the decode kernels use 48-80).
pub const NV_MIN_REGS_FOR_OCCUPANCY: u32 = 72;

/// NVIDIA decode plans (a token tile of at most 16): the most registers per thread that still let the grid of one
/// token tile (`blocks`: N / tile_n x split_k) run in a single wave, which the kernel sets as ptxas's cap
/// (`.maxnreg`) so that its register allocation cannot push the grid into a second wave. Measured on the H100
/// (docs/PERFORMANCE.md): `gate_up_t`'s 896 blocks of 128 threads need 7 per SM, 72 registers; an allocation of 80
/// left room for 6 and took 109.7 us at M = 16 against 91.2. ptxas takes the cap as its budget, so kernels that
/// used fewer registers may grow into it: of the 14 benchmark decode kernels it changed, 10 were faster or equal
/// and `gate_up_d2` 20% slower (docs/results/h100-session12/cap.log). None where one block per SM suffices, where
/// the SM's threads or shared memory cannot hold the blocks (the grid takes several waves anyway), or where the cap
/// would be under `NV_MIN_REGS_FOR_OCCUPANCY` (a kernel of the decode family would spill).
pub fn nv_max_regs(
    arch: Arch,
    tile_m: u32,
    blocks: u32,
    threads: u32,
    lds_bytes: u32,
) -> Option<u32> {
    if !arch.is_nvidia() || tile_m > 16 || threads == 0 {
        return None;
    }
    let info = arch.info();
    let per_sm = blocks.div_ceil(info.cus);
    let sm_threads = info.max_waves_per_simd * crate::arch::SIMDS_PER_CU * info.wave_size;
    let sm_regs = info.regs_per_simd_lane * crate::arch::SIMDS_PER_CU * info.wave_size;
    // Each resident block also holds 1 KiB of shared memory for the system.
    let smem_fits = u64::from(per_sm) * (u64::from(lds_bytes) + 1024) <= NV_SM_SMEM_BYTES;
    // Registers are allocated to warps in units of 8 per thread.
    let regs = (sm_regs / (per_sm.max(1) * threads) / 8 * 8).min(info.max_vgprs);
    (per_sm >= 2
        && per_sm * threads <= sm_threads
        && smem_fits
        && regs >= NV_MIN_REGS_FOR_OCCUPANCY)
        .then_some(regs)
}

/// Shared memory of one H100 SM (the 228 KiB configuration), of which a block may take 227 KiB.
pub const NV_SM_SMEM_BYTES: u64 = 228 * 1024;

/// Resident blocks per SM that NVIDIA decode plans aim at through split-K.
pub const NV_BLOCKS_PER_SM: u32 = 4;

/// Scale slots per row and 64-K chunk in `nibble.scales_mma_sync_a.v1`.
pub fn nv_group_slots(group: u32) -> u32 {
    (NV_CHUNK_K / group).max(1)
}

/// Word bit that feeds output bit `bit` of register `reg`, per the pieces (None if no piece provides it).
pub fn fragment_source_bit(outputs: &[Vec<BitPiece>], reg: usize, bit: u32) -> Option<u32> {
    let piece = outputs.get(reg)?.iter().find(|p| p.mask >> bit & 1 == 1)?;
    u32::try_from(i64::from(bit) - i64::from(piece.shift))
        .ok()
        .filter(|b| *b < 32)
}

fn fragment_plan(spec: &KernelSpec) -> Result<FragmentPlan, String> {
    let elem = &spec.format.element;
    let (operand_man, operand_bias, operand_bits) = match spec.x {
        DType::Bf16 => (7u32, 127, 8u32),
        DType::F16 => (10, 15, 11),
    };
    let mag_low = operand_man - u32::from(elem.man_bits);
    let outputs =
        nibble_runtime::numerics::repack_mma::fragment_pieces(mag_low).ok_or_else(|| {
            format!(
                "element {} (e{}m{}) has no {} fragment bit recipe",
                elem.name,
                elem.exp_bits,
                elem.man_bits,
                spec.x.name()
            )
        })?;
    // The scale is applied by one packed multiply in the operand type, so it must convert exactly.
    let scale_bits = match spec.format.scale {
        ScaleType::E8m0 => 1,
        ScaleType::E4m3 => 4,
        ScaleType::Bf16 => 8,
        ScaleType::F16 => 11,
        ScaleType::F32 => 24,
    };
    if scale_bits > operand_bits {
        return Err(format!(
            "{} scales cannot be applied exactly in a {} multiply on NVIDIA targets; use e8m0, e4m3{} scales",
            spec.format.scale.name(),
            spec.x.name(),
            if spec.x == DType::F16 { ", bf16 or f16" } else { " or bf16" }
        ));
    }
    // The operand is element * scale * 2^-epilogue_exp: chosen so the formats' scales keep the operand (and the
    // repacked scale, scale * 2^(operand bias - element bias - epilogue_exp)) in range. bf16: e8m0 exponents up to
    // 2^6 and down to 2^-127 (products exact down to bf16's smallest subnormal); e4m3 (at most 448) needs 2^7.
    // f16: no offset for e8m0/f16/bf16, so small products round exactly like the reference; e4m3 needs 2^7.
    let epilogue_exp = match (spec.x, spec.format.scale) {
        (_, ScaleType::E4m3) => 7,
        (DType::Bf16, _) => 5,
        (DType::F16, _) => 0,
    };
    Ok(FragmentPlan {
        mag_low,
        outputs,
        epilogue_exp,
        operand_bias,
    })
}

/// Cross-workgroup split-K for decode-shaped tiles: when the N tiles alone (the workgroups at M <= tile_m) would
/// leave more than half of the CUs idle, K is split over `s` workgroups, `s` the largest divisor of the K iterations
/// not above the split that fills the CUs. Larger tiles (prefill) have enough workgroups from M.
pub fn choose_split_k(n_tiles: u32, k_iters: u32, tile_m: u32, waves_k: u32, arch: Arch) -> u32 {
    let cus = arch.info().cus;
    if arch.is_nvidia() {
        // An SM needs several resident blocks (warps waiting on loads while others compute) to keep enough bytes
        // in flight: aim at NV_BLOCKS_PER_SM blocks per SM for decode tiles, fewer when warps along K already
        // split each block's K range `waves_k` ways.
        let target = (cus * NV_BLOCKS_PER_SM / waves_k.max(1)).max(cus);
        if tile_m > 32 || n_tiles == 0 || k_iters < 2 || n_tiles >= target {
            return 1;
        }
        let want = target.div_ceil(n_tiles).min(k_iters);
        return (1..=want)
            .rev()
            .find(|d| k_iters.is_multiple_of(*d))
            .unwrap_or(1);
    }
    if tile_m > 32 || n_tiles == 0 || n_tiles >= cus / 2 || k_iters < 4 {
        return 1;
    }
    // At least two K iterations per split, so the ring still overlaps the next tile's loads with the MFMAs.
    let want = cus.div_ceil(n_tiles).min(k_iters / 2);
    (1..=want)
        .rev()
        .find(|d| k_iters.is_multiple_of(*d))
        .unwrap_or(1)
}

impl Plan {
    /// Whether the scales are exponent bytes (`nibble.scales_mma_sync_a_exp.v1`) rather than values.
    pub fn scale_exp_bytes(&self) -> bool {
        self.scale_layout.id == MMA_SCALE_EXP_LAYOUT_ID
    }

    /// wgmma: element offset of (token row `row`, K element `k`) in one stage of the activation tile. B is K-major
    /// in core matrices of 8 tokens x 8 K (128 contiguous bytes, a token's 8 K elements in 16 bytes); the core
    /// matrices of one 8-token group follow each other along K (128 bytes apart: the descriptor's leading byte
    /// offset), and 8-token groups are `tile_k * 16` bytes apart (its stride byte offset).
    pub fn wgmma_x_offset(&self, row: u32, k: u32) -> u32 {
        (row / 8) * self.tiling.tile_k * 8 + (k / 8) * 64 + (row % 8) * 8 + k % 8
    }

    /// Index of the scale that MFMA pair `pair` of a K iteration uses, relative to the lane's first scale of the
    /// iteration (see `lane_scale_offset`). Pairs span `2 * atom.k` of K; a lane's 8 elements of a pair are K offsets
    /// `8q .. 8q+7` (q = lane / atom_n), which never straddle a group because groups are multiples of 8.
    pub fn scale_slot(&self, pair: u32) -> u32 {
        pair * 2 * self.atom.k() / self.format.group
    }

    /// xf32 route: physical 16-byte chunk (4 f32) of logical chunk `chunk` in row `row` of the f32 activation tile.
    /// Bits 0-2 of the chunk are XORed with the row's low 3 bits and with bit 3 of the chunk, so that the 16-byte
    /// reads of 8 consecutive lanes (8 rows, one chunk) and the staging stores of 8 consecutive lanes (one row,
    /// chunks 2j or 2j + 1 for 8 consecutive j) each cover all 32 banks once. Stays inside the aligned 8-chunk block.
    pub fn xf32_chunk(row: u32, chunk: u32) -> u32 {
        chunk ^ ((row % 8) ^ ((chunk / 8) % 2))
    }

    /// AMD bf16/f16 activation tile: physical 16-byte chunk (8 elements) of logical chunk `chunk` in row `row`.
    /// Bits 0-2 of the chunk are XORed with the row's low 3 bits, so the 16-byte operand reads of 8 consecutive
    /// lanes (8 consecutive rows, one chunk) and the staging stores of 8 consecutive lanes (one row, 8 consecutive
    /// chunks) each cover all 32 banks once without padding. Stays inside the aligned 8-chunk block, so K slices
    /// (multiples of 128 elements) keep their place.
    pub fn x_chunk(row: u32, chunk: u32) -> u32 {
        chunk ^ (row % 8)
    }

    /// Offset in groups of lane group `q`'s first scale: nonzero only when groups are finer than an MFMA pair.
    pub fn lane_scale_offset(&self, q: u32) -> u32 {
        8 * q / self.format.group
    }
}
