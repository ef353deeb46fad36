//! The kernel manifest: everything a runtime needs to launch one compiled kernel and to lay out its inputs.
//!
//! Written by the compiler next to each code object as `<kernel>.<arch>.json`. The compiler fills it from the kernel
//! plan, so the manifest, the code object and the weight repacking cannot disagree. The schema is versioned; a reader
//! rejects any version it does not know. See docs/MANIFEST.md for the field-by-field description.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bumped on every incompatible change of this schema.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    /// `nibble <version>` of the compiler that produced the code object.
    pub compiler_version: String,
    /// Hash of the kernel's source text (kernel block and the formats it uses).
    pub source_hash: String,
    /// Kernel name from the DSL.
    pub kernel: String,
    /// Symbol of the kernel in the code object.
    pub symbol: String,
    /// Target arch, e.g. `gfx942`.
    pub arch: String,
    /// File name of the code object, relative to the manifest.
    pub code_object: String,
    /// File name of the kernel's GPU IR after the dequant pass (MLIR text), relative to the manifest: the exact
    /// module codegen lowered, which `nibble run --device interpret` executes.
    pub kernel_ir: String,
    pub shapes: Shapes,
    pub format: Format,
    pub tiling: Tiling,
    pub launch: Launch,
    /// Kernel arguments, in kernarg-buffer order.
    pub args: Vec<KernelArg>,
    /// Size of the kernarg buffer in bytes (arguments only, no hidden arguments).
    pub kernarg_bytes: u32,
    pub weight_layout: WeightLayout,
    pub scale_layout: ScaleLayout,
    /// How `nibble tune` chose this kernel's tiling on a GPU; absent for kernels it did not tune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<Tuned>,
}

/// The measurement behind a tuned kernel (`nibble tune`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuned {
    /// The device measured on, as its driver names it (e.g. `NVIDIA H100 80GB HBM3 (sm_90)`).
    pub device: String,
    /// The M (tokens) measured at.
    pub m: u32,
    /// This kernel's median time there in microseconds (on CUDA each launch after an L2 flush, as `nibble bench`).
    pub median_us: f64,
    /// How many candidates (a tiling with a staging) were measured, this one included.
    pub candidates: u32,
}

/// y[M, N] = x[M, K] * dequant(W[N, K])^T (+ bias). M is dynamic within `m_min..=m_max`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shapes {
    pub n: u32,
    pub k: u32,
    pub m_min: u32,
    /// Largest M the kernel accepts (the grid and 32-bit offsets must not overflow).
    pub m_max: u32,
    /// Activation element type: `bf16` or `f16`.
    pub x_dtype: String,
    /// Output element type: `bf16` or `f16`.
    pub y_dtype: String,
    /// Bias element type, if the kernel takes a bias of length N.
    pub bias_dtype: Option<String>,
}

/// A 4-bit minifloat: sign bit, `exp_bits` exponent bits with `bias`, `man_bits` mantissa bits, no Inf/NaN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Element {
    pub name: String,
    pub exp_bits: u8,
    pub man_bits: u8,
    pub bias: i32,
}

impl Element {
    /// The exact value of a 4-bit code (bit 3 is the sign).
    pub fn value(&self, code: u8) -> f64 {
        minifloat_value(self.man_bits, self.bias, code)
    }
}

/// The exact value of a 4-bit minifloat code: bit 3 the sign, then `3 - man_bits` exponent bits with `bias` and
/// `man_bits` mantissa bits; exponent field 0 is subnormal; no Inf/NaN encodings.
fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

pub fn minifloat_value(man_bits: u8, bias: i32, code: u8) -> f64 {
    let code = code & 0xF;
    let sign = if code & 0x8 != 0 { -1.0 } else { 1.0 };
    let mag = code & 0x7;
    let e = i32::from(mag >> man_bits);
    let m = f64::from(mag & ((1 << man_bits) - 1)) / f64::from(1u32 << man_bits);
    let v = if e == 0 {
        m * 2f64.powi(1 - bias)
    } else {
        (1.0 + m) * 2f64.powi(e - bias)
    };
    sign * v
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    pub name: String,
    pub element: Element,
    /// Checkpoint scale type: `e8m0`, `e4m3`, `f16`, `bf16` or `f32`.
    pub scale: String,
    /// Consecutive K elements sharing one scale.
    pub group: u32,
    /// Whether the format has one f32 per-tensor scale (passed as the `tensor_scale` argument).
    pub tensor_scale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiling {
    pub tile_m: u32,
    pub tile_n: u32,
    pub tile_k: u32,
    pub waves_m: u32,
    pub waves_n: u32,
    /// Waves splitting each K tile (absent in manifests written before it existed: 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub waves_k: u32,
    /// MFMA atom, `16x16x16` or `32x32x8`.
    pub mma: String,
    pub stages: u32,
}

/// One grid dimension as a function of the dynamic M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GridDim {
    /// A fixed number of workgroups.
    Const { value: u32 },
    /// `ceil(M / divisor)` workgroups.
    CeilDivM { divisor: u32 },
}

impl GridDim {
    pub fn eval(self, m: u32) -> u32 {
        match self {
            GridDim::Const { value } => value,
            GridDim::CeilDivM { divisor } => m.div_ceil(divisor),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launch {
    /// Workgroup size in lanes (x, y, z).
    pub block: [u32; 3],
    /// Workgroup count (x, y, z) as functions of M.
    pub grid: [GridDim; 3],
    /// Static LDS bytes per workgroup.
    pub lds_bytes: u32,
    /// Dynamic shared memory bytes per block (NVIDIA, where a kernel needs more than the 48 KiB a block may declare
    /// statically): the runtime opts the function into them and passes them at launch. 0 (absent) otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dynamic_lds_bytes: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Launch {
    pub fn grid_for(&self, m: u32) -> [u32; 3] {
        [
            self.grid[0].eval(m),
            self.grid[1].eval(m),
            self.grid[2].eval(m),
        ]
    }
}

/// What an argument carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgRole {
    /// Activations x[M, K], row-major.
    X,
    /// Repacked weight words (see `WeightLayout`).
    Weight,
    /// Repacked f32 scales (see `ScaleLayout`).
    Scales,
    /// Bias[N].
    Bias,
    /// Output y[M, N], row-major.
    Y,
    /// The dynamic M (i32).
    M,
    /// The f32 per-tensor scale.
    TensorScale,
    /// Split-K partial sums: f32 `[split_k, ceil(M / tile_m) * tile_m, N]`, contents irrelevant at launch.
    Workspace,
    /// Split-K arrival counters: i32 `[N / tile_n * ceil(M / tile_m)]`, zero at launch (the kernel leaves them zero).
    Counters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelArg {
    pub name: String,
    pub role: ArgRole,
    /// `ptr` (global pointer, 8 bytes), `i32` or `f32`.
    pub kind: String,
    /// For pointers: the element type pointed to (`bf16`, `f16`, `u32`, `f32`).
    pub elem: Option<String>,
    /// Byte offset in the kernarg buffer.
    pub offset: u32,
    pub size: u32,
}

/// The repacked weight layout `nibble.mfma_pairs.v1`, fully described by these parameters:
///
/// u32 word index `((nt * (K / kc) + c) * 64 + lane) * words_per_lane + j` holds the 8 elements
/// `W[n = nt*atom_n + lane % atom_n][k = (c*words_per_lane + j) * 2*atom_k + 8*(lane / atom_n) + t]`, t = 0..7,
/// where `kc = words_per_lane * 2 * atom_k`. The word is `A(c0..c3) | T(A(c4..c7))` with
/// `A(a0..a3) = sum_t byte(a_t) << 8t`, `byte(c) = ((c & 8) << 4) | ((c & 7) << mag_shift)`, and `T` the inverse of
/// the kernel's second-half transform (`bitreverse`, or rotate right by 4 for `rotl4`). Codes 0x8 (-0) are stored
/// as 0x0. `word & mask` then reads as four FNUZ bf8 bytes equal to element * 2^(bias - 16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightLayout {
    pub id: String,
    pub atom_n: u32,
    pub atom_k: u32,
    pub words_per_lane: u32,
    pub mag_shift: u32,
    /// `bitreverse` or `rotl4`: how the kernel brings the second four elements into place (`pieces` for
    /// `nibble.mma_sync_a.v1`).
    pub second_half: String,
    pub mask: u32,
    /// `nibble.mma_sync_a.v1` only: how each of the four 32-bit operand registers is cut out of a word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment: Option<FragmentBits>,
}

/// The bit recipe of `nibble.mma_sync_a.v1` (NVIDIA `mma.sync` A fragments, 32 lanes).
///
/// u32 word index `((nb * (K / kc) + c) * 32 + lane) * words_per_lane + j`, with `kc = atom_k * words_per_lane`,
/// holds the 8 A-fragment elements of one m16n8k16 atom for `lane = 4g + t`: element `f = 0..7` is
/// `W[n = nb*16 + g + 8*((f/2) % 2)][k = (c*words_per_lane + j)*16 + 2t + f%2 + 8*(f/4)]`.
/// The kernel forms operand register `r = 0..3` (elements `2r` in the low half, `2r+1` in the high half) as
/// `OR over outputs[r] of ((shift >= 0 ? word << shift : word >> -shift) & mask)`. In half `h` of a register the
/// element's sign lands on bit `16h + 15` and its three low code bits on bits `16h + mag_shift ..= 16h + mag_shift + 2`
/// (`mag_shift` is the operand type's mantissa width minus the element's), so the register reads as two bf16/f16
/// values `element * 2^(element bias - operand bias)`. Every word bit feeds exactly one output bit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmentBits {
    pub outputs: Vec<Vec<BitPiece>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitPiece {
    /// Left shift (negative: logical right shift) applied to the word.
    pub shift: i32,
    /// Output bits this piece provides.
    pub mask: u32,
}

/// The repacked scale layout `nibble.scales_f32.v1`: f32 `[N][K / group]`, row-major, each value the checkpoint's
/// block scale times `2^exp_offset`, exactly. `exp_offset` depends on the arch's conversion route (16 - element bias
/// for the bf8 conversion on gfx942, 15 - element bias for the f16 route on gfx90a): read it, never assume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleLayout {
    pub id: String,
    pub group: u32,
    /// log2 of the factor folded into every scale.
    pub exp_offset: i32,
    /// Element type of the repacked scales: `f32` when absent; `bf16`/`f16` for `nibble.scales_mma_sync_a.v1`; for
    /// `nibble.scales_mma_sync_a_exp.v1` the type whose exponent field each byte is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("manifest {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest {path}: schema version {found} is not supported (this runtime reads version {SCHEMA_VERSION})")]
    Version { path: String, found: u32 },
    #[error("manifest {path}: {what}")]
    Invalid { path: String, what: String },
}

impl Manifest {
    /// Parses and validates a manifest; `path` is only used in error messages.
    pub fn from_json(path: &str, text: &str) -> Result<Manifest, ManifestError> {
        // Read the version first so a future schema gets a version error rather than a field error.
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let v: Version = serde_json::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_string(),
            source,
        })?;
        if v.schema_version != SCHEMA_VERSION {
            return Err(ManifestError::Version {
                path: path.to_string(),
                found: v.schema_version,
            });
        }
        let m: Manifest = serde_json::from_str(text).map_err(|source| ManifestError::Parse {
            path: path.to_string(),
            source,
        })?;
        m.validate().map_err(|what| ManifestError::Invalid {
            path: path.to_string(),
            what,
        })?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data structures cannot fail.
        let mut s = serde_json::to_string_pretty(self).expect("manifest serializes");
        s.push('\n');
        s
    }

    /// Internal consistency checks that a hand-edited or corrupted manifest could break.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.shapes;
        let t = &self.tiling;
        if s.n == 0 || s.k == 0 {
            return Err("shapes.n and shapes.k must be positive".into());
        }
        if t.tile_n == 0
            || t.tile_k == 0
            || t.tile_m == 0
            || !s.n.is_multiple_of(t.tile_n)
            || !s.k.is_multiple_of(t.tile_k)
        {
            return Err(format!(
                "tiling {}x{}x{} does not divide N={} K={}",
                t.tile_m, t.tile_n, t.tile_k, s.n, s.k
            ));
        }
        if self.format.group == 0 || !s.k.is_multiple_of(self.format.group) {
            return Err(format!(
                "group {} does not divide K={}",
                self.format.group, s.k
            ));
        }
        if self.launch.dynamic_lds_bytes > 0 && !self.arch.starts_with("sm_") {
            return Err(format!(
                "launch.dynamic_lds_bytes is a CUDA launch setting; {} kernels take their LDS from lds_bytes",
                self.arch
            ));
        }
        if let Some(t) = &self.tuned {
            if t.m == 0 || t.candidates == 0 || !(t.median_us.is_finite() && t.median_us > 0.0) {
                return Err(format!(
                    "tuned: m = {}, candidates = {}, median_us = {} (each must be positive)",
                    t.m, t.candidates, t.median_us
                ));
            }
        }
        if self.format.element.exp_bits + self.format.element.man_bits != 3 {
            return Err("element must be a 4-bit minifloat (exp_bits + man_bits = 3)".into());
        }
        let wl = &self.weight_layout;
        // K per chunk: `mfma_pairs` words span two MFMA atoms along K, `mma_sync_a` words one.
        let kc = if wl.fragment.is_some() {
            wl.words_per_lane * wl.atom_k
        } else {
            wl.words_per_lane * 2 * wl.atom_k
        };
        if wl.atom_n == 0 || kc == 0 || !s.n.is_multiple_of(wl.atom_n) || !s.k.is_multiple_of(kc) {
            return Err("weight layout does not divide the weight shape".into());
        }
        let threads: u32 = self.launch.block.iter().product();
        if threads == 0 || threads > 1024 {
            return Err(format!("block of {threads} lanes is not launchable"));
        }
        let mut end = 0;
        for a in &self.args {
            if a.offset < end {
                return Err(format!("argument {} overlaps the previous one", a.name));
            }
            end = a.offset + a.size;
        }
        if end > self.kernarg_bytes {
            return Err("arguments exceed kernarg_bytes".into());
        }
        if self
            .launch
            .grid
            .iter()
            .any(|g| matches!(g, GridDim::CeilDivM { divisor: 0 }))
        {
            return Err("grid divisor 0".into());
        }
        Ok(())
    }

    pub fn arg(&self, role: ArgRole) -> Option<&KernelArg> {
        self.args.iter().find(|a| a.role == role)
    }
}

impl Manifest {
    /// Bytes of the split-K workspace and counters for M rows (0 and 0 for kernels without split-K).
    pub fn split_k_bytes(&self, m: u32) -> (u64, u64) {
        if self.arg(ArgRole::Workspace).is_none() {
            return (0, 0);
        }
        let t = &self.tiling;
        let split = u64::from(self.launch.grid[2].eval(m));
        let rows = u64::from(m.div_ceil(t.tile_m.max(1))) * u64::from(t.tile_m);
        let tiles =
            u64::from(self.shapes.n / t.tile_n.max(1)) * u64::from(m.div_ceil(t.tile_m.max(1)));
        (split * rows * u64::from(self.shapes.n) * 4, tiles * 4)
    }
}
