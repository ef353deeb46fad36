//! The checked kernel specification: what the DSL front end hands to the planner.
//!
//! Everything here has been validated against the language rules and the target tables (`arch.rs`);
//! later stages may rely on the invariants documented on each field without re-checking them.

use serde::Serialize;

use crate::arch::Arch;

/// A 4-bit (sign + E + M = 4) minifloat element type, e.g. E2M1.
/// Invariant: `exp_bits + man_bits == 3`, `exp_bits >= 1`, `man_bits <= 2`.
/// No Inf/NaN encodings ("FN" semantics); exponent field 0 is subnormal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MiniFloat {
    /// Name as written in the DSL (e.g. `e2m1`).
    pub name: String,
    pub exp_bits: u8,
    pub man_bits: u8,
    /// Exponent bias (default `2^(exp_bits-1) - 1`).
    pub bias: i32,
}

impl MiniFloat {
    /// The value of a 4-bit code (bit 3 = sign), computed from the definition.
    pub fn value(&self, code: u8) -> f64 {
        nibble_runtime::manifest::minifloat_value(self.man_bits, self.bias, code)
    }
}

/// Type of the per-group block scale (shared with the runtime, which decodes and repacks it).
pub use nibble_runtime::numerics::ScaleType;

/// A quantized weight format: element type, one scale per `group` consecutive K elements, optional f32 tensor scale.
/// Invariant: `group` is one of 16, 32, 64, 128.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormatSpec {
    pub name: String,
    pub element: MiniFloat,
    pub scale: ScaleType,
    pub group: u32,
    pub tensor_scale: bool,
}

/// Activation / output element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Bf16,
    F16,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// MFMA atom (M x N x K of one instruction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum MmaAtom {
    #[serde(rename = "16x16x16")]
    M16N16K16,
    #[serde(rename = "32x32x8")]
    M32N32K8,
}

impl MmaAtom {
    pub fn m(self) -> u32 {
        match self {
            MmaAtom::M16N16K16 => 16,
            MmaAtom::M32N32K8 => 32,
        }
    }
    pub fn n(self) -> u32 {
        self.m()
    }
    pub fn k(self) -> u32 {
        match self {
            MmaAtom::M16N16K16 => 16,
            MmaAtom::M32N32K8 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MmaAtom::M16N16K16 => "16x16x16",
            MmaAtom::M32N32K8 => "32x32x8",
        }
    }
}

/// An explicit tiling, as written with `tile`/`waves`/`mma`/`stages`.
/// Invariants (checked): tile_m % (waves_m * mma.m) == 0, tile_n % (waves_n * mma.n) == 0, tile_k % 128 == 0 (so
/// every group size divides it), tile_k % (waves_k * 128) == 0, N % tile_n == 0, K % tile_k == 0, LDS and register
/// estimates within the arch budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tiling {
    pub tile_m: u32,
    pub tile_n: u32,
    pub tile_k: u32,
    pub waves_m: u32,
    pub waves_n: u32,
    /// Waves splitting each K tile (in-workgroup split-K): wave group `kw` takes K slice `kw` of every tile, and
    /// the groups' accumulators are summed through LDS before the epilogue.
    pub waves_k: u32,
    pub mma: MmaAtom,
    pub stages: u32,
    /// `split S`: cross-workgroup split-K over S workgroups along grid z, each taking K / tile_k / S of the K
    /// iterations (S = 1: none). None: the planner's rule (`plan::choose_split_k`).
    pub split_k: Option<u32>,
}

impl Tiling {
    /// The wave grid as the CLI prints it: `MxN`, or `MxNxK` with waves along K.
    pub fn waves_name(&self) -> String {
        if self.waves_k == 1 {
            format!("{}x{}", self.waves_m, self.waves_n)
        } else {
            format!("{}x{}x{}", self.waves_m, self.waves_n, self.waves_k)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// The compiler picks the tiling for the shape and arch: the cost model's best candidate at M = `m`
    /// (`schedule auto m=N`; `costmodel::AUTO_M`, one 16-token decode step, when not given).
    Auto {
        m: u32,
    },
    Manual(Tiling),
}

/// How an NVIDIA kernel moves each activation tile into its shared-memory ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Staging {
    /// 16-byte loads into registers, stored after the tile's MMAs (two barriers per K step with wgmma).
    Registers,
    /// `cp.async` straight into shared memory, `stages - 1` tiles ahead, one barrier per K step.
    Async,
}

impl Staging {
    /// The DSL word.
    pub fn name(self) -> &'static str {
        match self {
            Staging::Registers => "registers",
            Staging::Async => "async",
        }
    }
}

/// How an NVIDIA kernel's E8M0 scales are stored for it (`scales bytes|widened`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleStorage {
    /// One exponent byte per scale, as in the checkpoint (`nibble.scales_mma_sync_a_exp.v1`).
    Bytes,
    /// Widened offline to the 16-bit operand type (`nibble.scales_mma_sync_a.v1`): twice the scale bytes, no
    /// widening in the kernel.
    Widened,
}

impl ScaleStorage {
    /// The DSL word.
    pub fn name(self) -> &'static str {
        match self {
            ScaleStorage::Bytes => "bytes",
            ScaleStorage::Widened => "widened",
        }
    }
}

/// One checked kernel: y[M, N] = x[M, K] * dequant(W[N, K])^T (+ bias), M dynamic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelSpec {
    pub name: String,
    /// Non-empty, no duplicates, in source order.
    pub targets: Vec<Arch>,
    pub x: DType,
    pub y: DType,
    pub n: u32,
    pub k: u32,
    pub format: FormatSpec,
    /// Element type of the bias, if the kernel has one (its length is N).
    pub bias: Option<DType>,
    pub schedule: Schedule,
    /// `staging async|registers`: how NVIDIA kernels fill the activation ring (None: the planner's default,
    /// `Plan::async_x`). AMD targets always stage through registers.
    pub staging: Option<Staging>,
    /// `scales bytes|widened`: how NVIDIA kernels read E8M0 scales (None: bytes wherever the layout applies, E8M0
    /// scales with bf16 activations). AMD targets read f32 scales either way.
    pub scales: Option<ScaleStorage>,
    /// `unroll U`: NVIDIA kernels' K loop unrolled U times (None: left to LLVM, which keeps the loop). AMD targets
    /// never unroll it.
    pub unroll: Option<u32>,
    /// Hex SHA-256 (or other stable hash) of the kernel's source text including the formats it uses.
    pub source_hash: String,
}

impl KernelSpec {
    /// The M the cost model ranks tilings for by default: `schedule auto`'s, or one 16-token decode step.
    pub fn auto_m(&self) -> u32 {
        match self.schedule {
            Schedule::Auto { m } => m,
            Schedule::Manual(_) => crate::costmodel::AUTO_M,
        }
    }
}

/// A checked `.nib` file: its kernels in source order, and the formats it declared (prelude excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckedFile {
    pub formats: Vec<FormatSpec>,
    pub kernels: Vec<KernelSpec>,
}
