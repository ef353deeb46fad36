//! "Virtual CDNA": an interpreter that executes nibble's GPU kernel IR on the CPU with the semantics of a wave64
//! AMD CDNA GPU, so kernels can be checked bit for bit without a GPU.
//!
//! The module is first translated into a compact instruction list (`compile`), then executed (`exec`). Entry points:
//!
//! - [`call`]: one lane runs a `func.func` (for unit tests of single ops and of `@nibble_dequant`);
//! - [`launch`]: a `gpu.func` runs over a grid of workgroups; inside a workgroup all threads run in lockstep, in
//!   waves of 64 lanes, with per-lane execution masks for `scf.if`.
//!
//! Semantics worth knowing:
//! - `index` is 32 bits (the GPU lowering uses index-bitwidth=32); integer ops wrap at their width; division by
//!   zero and shifts by at least the bit width (poison in MLIR) are errors; overflow flags are ignored (wrap).
//! - f32 `addf` / `mulf` are IEEE f32 with subnormals; bf16 / f16 arithmetic is computed exactly-or-in-f64 and
//!   rounded once to nearest even; `truncf` rounds to nearest even; `extf` is exact.
//! - Memory (see [`launch`]): fat raw buffer views are bounds-checked per dword against `validBytes`; plain memrefs
//!   and LDS accesses out of bounds are errors; LDS accesses are race-checked between barriers.
//! - `amdgpu.mfma` (16x16x16 and 32x32x8, bf16 / f16): layouts of `shared/reference/mfma-layouts.md`, f32
//!   accumulation in the order k = 0..K-1 with a rounding after each multiply and add; gfx90a's flush of denormal
//!   inputs and results is modelled when `LaunchOptions::mfma_flushes_denormals` is set (the runner sets it from the
//!   kernel's arch).

mod compile;
mod exec;
mod types;

use std::collections::BTreeMap;

use melior::ir::Module;
use thiserror::Error;

pub use types::{ElemType, Ty};

use compile::Program;
use exec::{Flow, Lds, Machine, Mem};
use types::Space;

/// Which pair of accesses raced on an LDS byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaceKind {
    ReadAfterWrite,
    WriteAfterWrite,
    WriteAfterRead,
}

impl std::fmt::Display for RaceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RaceKind::ReadAfterWrite => "reads a byte written by",
            RaceKind::WriteAfterWrite => "writes a byte written by",
            RaceKind::WriteAfterRead => "writes a byte read by",
        })
    }
}

#[derive(Debug, Clone, Error, PartialEq)]
pub enum InterpError {
    #[error("unsupported type {0}")]
    UnsupportedType(String),
    #[error("{op}: unsupported by the interpreter: {reason}")]
    Unsupported { op: String, reason: String },
    #[error("{op}: malformed IR: {reason}")]
    Malformed { op: String, reason: String },
    #[error("no function @{0} in the module")]
    UnknownFunction(String),
    #[error("@{func} argument {index}: expected {expected}, got {got}")]
    Argument {
        func: String,
        index: usize,
        expected: String,
        got: String,
    },
    #[error("{op}: out-of-bounds {space} access by workgroup {wg:?} thread {thread}: bytes {byte}..{end} of {size}")]
    OutOfBounds {
        op: String,
        space: String,
        wg: [u32; 3],
        thread: u32,
        byte: u64,
        end: u64,
        size: u64,
    },
    /// `other` is `u32::MAX` when several threads read the byte.
    #[error("{op}: LDS race on byte {byte}: workgroup {wg:?} thread {thread} {kind} thread {other} since the last barrier")]
    Race {
        op: String,
        wg: [u32; 3],
        thread: u32,
        other: u32,
        byte: u64,
        kind: RaceKind,
    },
    #[error("{op}: workgroup {wg:?} thread {thread}: {reason}")]
    Runtime {
        op: String,
        wg: [u32; 3],
        thread: u32,
        reason: String,
    },
    #[error("{op}: workgroup {wg:?}: {reason}")]
    Divergence {
        op: String,
        wg: [u32; 3],
        reason: String,
    },
    #[error("launch: {0}")]
    Launch(String),
}

/// A typed value passed to or returned from [`call`]. Floats narrower than f32 and vectors are raw bit patterns.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    I1(bool),
    I8(u8),
    I16(u16),
    I32(u32),
    I64(u64),
    Index(u32),
    Bf16(u16),
    F16(u16),
    F32(f32),
    F64(f64),
    /// Any other scalar (i4, f8, f4 ...) as its bits.
    Bits(ElemType, u64),
    /// A 1-D vector: the bits of each element, zero-extended.
    Vec(ElemType, Vec<u64>),
}

impl Scalar {
    /// `vector<Nxf32>` from values.
    pub fn f32s(v: &[f32]) -> Scalar {
        Scalar::Vec(
            ElemType::F32,
            v.iter().map(|x| u64::from(x.to_bits())).collect(),
        )
    }

    /// `vector<Nxi32>` from values.
    pub fn i32s(v: &[u32]) -> Scalar {
        Scalar::Vec(ElemType::Int(32), v.iter().map(|x| u64::from(*x)).collect())
    }

    /// The element bits of a vector (a scalar gives one element).
    pub fn bits(&self) -> Vec<u64> {
        match self {
            Scalar::Vec(_, v) => v.clone(),
            s => s.to_words().map(|(_, w)| vec![w]).unwrap_or_default(),
        }
    }

    /// Vector elements as f32 values (for f32 / bf16 / f16 / fp8 vectors) or a scalar float.
    pub fn f32_values(&self) -> Vec<f32> {
        match self {
            Scalar::Vec(e, v) => v
                .iter()
                .map(|w| types::float_value(*e, *w) as f32)
                .collect(),
            s => match s.to_words() {
                Some((Ty::Scalar(e), w)) => vec![types::float_value(e, w) as f32],
                _ => vec![],
            },
        }
    }

    fn to_words(&self) -> Option<(Ty, u64)> {
        let s = |e: ElemType, w: u64| Some((Ty::Scalar(e), w));
        match self {
            Scalar::I1(b) => s(ElemType::Int(1), u64::from(*b)),
            Scalar::I8(v) => s(ElemType::Int(8), u64::from(*v)),
            Scalar::I16(v) => s(ElemType::Int(16), u64::from(*v)),
            Scalar::I32(v) => s(ElemType::Int(32), u64::from(*v)),
            Scalar::I64(v) => s(ElemType::Int(64), *v),
            Scalar::Index(v) => s(ElemType::Index, u64::from(*v)),
            Scalar::Bf16(v) => s(ElemType::Bf16, u64::from(*v)),
            Scalar::F16(v) => s(ElemType::F16, u64::from(*v)),
            Scalar::F32(v) => s(ElemType::F32, u64::from(v.to_bits())),
            Scalar::F64(v) => s(ElemType::F64, v.to_bits()),
            Scalar::Bits(e, w) => s(*e, *w & e.mask()),
            Scalar::Vec(..) => None,
        }
    }

    fn ty(&self) -> Ty {
        match self {
            Scalar::Vec(e, v) => Ty::Vector(*e, v.len() as u32),
            s => s
                .to_words()
                .map_or(Ty::Scalar(ElemType::Int(1)), |(t, _)| t),
        }
    }

    fn from_words(ty: Ty, w: &[u64]) -> Scalar {
        match ty {
            Ty::Vector(e, _) => Scalar::Vec(e, w.to_vec()),
            Ty::Scalar(e) => {
                let v = w.first().copied().unwrap_or(0);
                match e {
                    ElemType::Int(1) => Scalar::I1(v & 1 == 1),
                    ElemType::Int(8) => Scalar::I8(v as u8),
                    ElemType::Int(16) => Scalar::I16(v as u16),
                    ElemType::Int(32) => Scalar::I32(v as u32),
                    ElemType::Int(64) => Scalar::I64(v),
                    ElemType::Index => Scalar::Index(v as u32),
                    ElemType::Bf16 => Scalar::Bf16(v as u16),
                    ElemType::F16 => Scalar::F16(v as u16),
                    ElemType::F32 => Scalar::F32(f32::from_bits(v as u32)),
                    ElemType::F64 => Scalar::F64(f64::from_bits(v)),
                    e => Scalar::Bits(e, v),
                }
            }
            // Functions returning memrefs are rejected before execution.
            Ty::MemRef(_) => Scalar::Bits(ElemType::Int(64), 0),
        }
    }
}

/// Executes `func` (a `func.func` anywhere in the module, including inside a `gpu.module`) on one lane, following
/// `func.call`s, and returns the values of its `func.return`.
pub fn call(module: &Module, func: &str, args: &[Scalar]) -> Result<Vec<Scalar>, InterpError> {
    let prog = compile::compile(module, func)?;
    let f = &prog.funcs[0];
    if f.kernel.is_some() {
        return Err(InterpError::Launch(format!(
            "@{func} is a gpu.func: use launch"
        )));
    }
    if args.len() != f.params.len() {
        return Err(InterpError::Argument {
            func: func.into(),
            index: args.len().min(f.params.len()),
            expected: format!("{} arguments", f.params.len()),
            got: format!("{} arguments", args.len()),
        });
    }
    if let Some(t) = f.results.iter().find(|t| matches!(t, Ty::MemRef(_))) {
        return Err(InterpError::Argument {
            func: func.into(),
            index: 0,
            expected: "scalar or vector results".into(),
            got: t.name(),
        });
    }
    let mut regs = vec![0u64; f.words];
    for (i, (p, a)) in f.params.iter().zip(args).enumerate() {
        let si = f.slots[*p as usize];
        if si.ty != a.ty() {
            return Err(InterpError::Argument {
                func: func.into(),
                index: i,
                expected: si.ty.name(),
                got: a.ty().name(),
            });
        }
        let words = a.bits();
        regs[si.base..si.base + words.len()].copy_from_slice(&words);
    }
    let mut m = Machine::new(&prog, vec![], [1; 3], [1; 3], 1);
    match m.run(f, &mut regs, &f.body, &[0])? {
        Flow::Return(vals) => Ok(vals
            .iter()
            .map(|v| {
                let si = f.slots[*v as usize];
                Scalar::from_words(si.ty, &regs[si.base..si.base + si.width as usize])
            })
            .collect()),
        Flow::Normal => Err(InterpError::Malformed {
            op: func.into(),
            reason: "no return".into(),
        }),
    }
}

/// One `gpu.func` argument, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelArg {
    /// A memref argument: its bytes (little-endian elements). May be shorter than the memref's static size.
    Buffer(Vec<u8>),
    I32(i32),
    F32(f32),
}

/// Options of [`launch_with`].
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Byte LDS is filled with at the start of each workgroup. The default 0xFF makes any read of never-written
    /// LDS show up as NaN in bf16 / f16 / f32 results.
    pub lds_fill: u8,
    /// Fault injection for negative-control tests: gather MFMA B operands with the lane groups along K swapped
    /// (lane `l` supplies `B[kl * ((l / n) ^ 1) + e]` instead of `B[kl * (l / n) + e]`). Never set otherwise.
    pub fault_mfma_b_layout: bool,
    /// The gfx90a MFMA units flush bf16/f16 inputs and f32 results below 2^-126 to zero (mfma-layouts.md); gfx942
    /// keeps them. Set from the kernel's arch.
    pub mfma_flushes_denormals: bool,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            lds_fill: 0xFF,
            fault_mfma_b_layout: false,
            mfma_flushes_denormals: false,
        }
    }
}

/// What a launch executed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchStats {
    /// Dynamic executions per op name, counted once per wave with at least one active lane (like instructions).
    pub ops: BTreeMap<String, u64>,
    /// Dynamic op executions summed over active lanes.
    pub lane_ops: u64,
    pub workgroups: u64,
    pub barriers: u64,
    /// Wave-level MFMA instructions.
    pub mfma: u64,
    pub lds_bytes_read: u64,
    pub lds_bytes_written: u64,
    pub global_bytes_read: u64,
    pub global_bytes_written: u64,
    /// Per LDS load/store op (described as in errors): wave-level executions and bank-conflict cycles, under the
    /// model of [`lds_conflict_cycles`].
    pub lds_ops: BTreeMap<String, LdsOpStats>,
}

/// Bank-conflict statistics of one LDS op.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LdsOpStats {
    pub executions: u64,
    pub conflict_cycles: u64,
}

/// LDS bank-conflict model (CDNA: 32 banks of 4 bytes, 128 bytes per cycle): the lanes of a wave are served in
/// groups of consecutive lanes that move 128 bytes together (32 lanes for accesses of up to 4 bytes, 16 for 8-byte
/// and 8 for 16-byte accesses). In a group, every dword a lane touches goes to bank `dword % 32`; lanes reading the
/// same dword share it (broadcast). A group takes as many cycles as its busiest bank has distinct dwords; the
/// conflict cycles are those beyond one per group. `accesses` holds (lane within the wave, byte address, bytes).
pub fn lds_conflict_cycles(accesses: &[(u32, u64, u64)]) -> u64 {
    let Some(len) = accesses.first().map(|a| a.2) else {
        return 0;
    };
    let group = (128 / len.clamp(4, 128)) as u32;
    let mut cycles = 0;
    let mut dwords: Vec<(u32, u64)> = vec![];
    let mut g = 0;
    while g < 64 {
        dwords.clear();
        for &(_, addr, len) in accesses.iter().filter(|a| a.0 >= g && a.0 < g + group) {
            for d in addr / 4..(addr + len).div_ceil(4) {
                dwords.push(((d % 32) as u32, d));
            }
        }
        dwords.sort_unstable();
        dwords.dedup();
        let mut busiest = 0u64;
        let mut i = 0;
        while i < dwords.len() {
            let bank = dwords[i].0;
            let mut j = i;
            while j < dwords.len() && dwords[j].0 == bank {
                j += 1;
            }
            busiest = busiest.max((j - i) as u64);
            i = j;
        }
        cycles += busiest.saturating_sub(1);
        g += group;
    }
    cycles
}

/// Runs `kernel` over `grid` workgroups of `block` threads with [`LaunchOptions::default`].
///
/// Memory model:
/// - a `Buffer` argument binds a memref argument; the memref's static size is only a bound for plain (non-fat)
///   accesses, which must also stay inside the host buffer;
/// - `amdgpu.fat_raw_buffer_cast` views carry `validBytes` (counted from the view's element 0 with `resetOffset`).
///   An access is split into components of one dword (4 bytes; the whole access if smaller); a component whose
///   bytes do not all lie below `validBytes` reads as zero and its store is dropped, like the buffer hardware's
///   range check. In-range components beyond the host buffer are errors (they would touch foreign memory);
/// - the workgroup attribution (LDS) is allocated per workgroup, filled with `lds_fill`; accesses outside it are
///   errors, and so is a read of a byte another thread wrote since the last barrier, a write of a byte another
///   thread wrote or read since the last barrier;
/// - workgroups run one after another; the threads of a workgroup run in lockstep, op by op.
pub fn launch(
    module: &Module,
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    args: &mut [KernelArg],
) -> Result<LaunchStats, InterpError> {
    launch_with(module, kernel, grid, block, args, &LaunchOptions::default())
}

pub fn launch_with(
    module: &Module,
    kernel: &str,
    grid: [u32; 3],
    block: [u32; 3],
    args: &mut [KernelArg],
    options: &LaunchOptions,
) -> Result<LaunchStats, InterpError> {
    let prog: Program = compile::compile(module, kernel)?;
    let f = &prog.funcs[0];
    let info = f
        .kernel
        .as_ref()
        .ok_or_else(|| InterpError::Launch(format!("@{kernel} is not a gpu.func")))?;
    let threads = u64::from(block[0]) * u64::from(block[1]) * u64::from(block[2]);
    if threads == 0 || threads > 1024 {
        return Err(InterpError::Launch(format!(
            "block {block:?} has {threads} threads (1..=1024)"
        )));
    }
    if grid.contains(&0) {
        return Err(InterpError::Launch(format!("empty grid {grid:?}")));
    }
    if let Some(kb) = info.known_block {
        if kb != block {
            return Err(InterpError::Launch(format!(
                "block {block:?} differs from the kernel's known_block_size {kb:?}"
            )));
        }
    }
    if args.len() != info.inputs {
        return Err(InterpError::Launch(format!(
            "@{kernel} takes {} arguments, {} given",
            info.inputs,
            args.len()
        )));
    }
    let nl = threads as usize;
    // Argument views and scalars, checked against the parameter types.
    let mut init: Vec<(usize, Vec<u64>)> = vec![];
    let mut mems: Vec<Mem> = vec![];
    for (i, (p, a)) in f.params.iter().zip(args.iter_mut()).enumerate() {
        let si = f.slots[*p as usize];
        let bad = |got: &str| InterpError::Argument {
            func: kernel.into(),
            index: i,
            expected: si.ty.name(),
            got: got.into(),
        };
        let global = matches!(si.ty, Ty::MemRef(mt) if mt.space == Space::Global);
        match a {
            KernelArg::Buffer(buf) if global => {
                init.push((*p as usize, vec![i as u64, 0, u64::MAX]));
                mems.push(Mem::Host(buf));
            }
            KernelArg::I32(v)
                if matches!(si.ty, Ty::Scalar(ElemType::Int(32) | ElemType::Index)) =>
            {
                init.push((*p as usize, vec![u64::from(*v as u32)]));
                mems.push(Mem::None);
            }
            KernelArg::F32(v) if si.ty == Ty::Scalar(ElemType::F32) => {
                init.push((*p as usize, vec![u64::from(v.to_bits())]));
                mems.push(Mem::None);
            }
            KernelArg::Buffer(_) => return Err(bad("a buffer")),
            KernelArg::I32(_) => return Err(bad("i32")),
            KernelArg::F32(_) => return Err(bad("f32")),
        }
    }
    for (s, mt) in &info.workgroup {
        let bytes = mt
            .len
            .unwrap_or(0)
            .saturating_mul(u64::from(mt.elem.bits() / 8));
        if bytes > 64 * 1024 {
            return Err(InterpError::Launch(format!(
                "{bytes} bytes of LDS exceed 64 KiB"
            )));
        }
        init.push((*s as usize, vec![mems.len() as u64, 0, u64::MAX]));
        mems.push(Mem::Lds(Lds::new(bytes as usize, options.lds_fill)));
    }
    let mut m = Machine::new(&prog, mems, grid, block, nl);
    m.fault_mfma_b_layout = options.fault_mfma_b_layout;
    m.mfma_flushes_denormals = options.mfma_flushes_denormals;
    let lanes: Vec<u32> = (0..nl as u32).collect();
    let mut regs = vec![0u64; f.words * nl];
    for z in 0..grid[2] {
        for y in 0..grid[1] {
            for x in 0..grid[0] {
                m.wg = [x, y, z];
                m.epoch = 1;
                for mem in m.mems.iter_mut() {
                    if let Mem::Lds(l) = mem {
                        l.reset(options.lds_fill);
                    }
                }
                for (s, words) in &init {
                    let si = f.slots[*s];
                    for l in 0..nl {
                        let o = si.base * nl + l * si.width as usize;
                        regs[o..o + words.len()].copy_from_slice(words);
                    }
                }
                m.run(f, &mut regs, &f.body, &lanes)?;
                m.stats.workgroups += 1;
            }
        }
    }
    let mut stats = std::mem::take(&mut m.stats);
    for (i, n) in m.op_waves.iter().enumerate() {
        if *n > 0 {
            stats.ops.insert(prog.op_names[i].clone(), *n);
        }
    }
    Ok(stats)
}
