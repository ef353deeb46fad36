//! Code-object inspection: disassembles a kernel's `.text` with LLVM's disassembler and summarizes
//! register use, occupancy and the instruction mix of the main (MFMA) loop.
//!
//! Loops are found as backward branches: `s_branch` / `s_cbranch_*` carry a signed 16-bit offset in
//! dwords relative to the next instruction, which LLVM prints as an unsigned decimal (`s_cbranch_scc1
//! 65508` jumps back 28 dwords), so `target = addr + size + 4 * (simm16 as i16)`. A loop is the
//! address range `[target, branch]`; the main loop is the one holding the most MFMA instructions
//! (ties: the larger range, then the lower start address).

use std::ffi::{c_char, CString};
use std::fmt::Write as _;
use std::sync::Once;

use inkwell::llvm_sys::disassembler::{
    LLVMCreateDisasmCPU, LLVMDisasmContextRef, LLVMDisasmDispose, LLVMDisasmInstruction,
};
use inkwell::llvm_sys::target::{LLVMInitializeAMDGPUTargetInfo, LLVMInitializeAMDGPUTargetMC};
use nibble_runtime::codeobj::{self, CodeObject, CodeObjectError};
use serde::Serialize;
use thiserror::Error;

extern "C" {
    // Part of LLVM's C API (llvm-c/Target.h, generated per target) but not declared by llvm-sys.
    fn LLVMInitializeAMDGPUDisassembler();
}

const TRIPLE: &str = "amdgcn-amd-amdhsa";

/// Why a code object could not be inspected.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error(transparent)]
    CodeObject(#[from] CodeObjectError),
    #[error("LLVM has no AMDGPU disassembler for processor {0}")]
    NoDisassembler(String),
    #[error("processor name {0:?} contains a NUL byte")]
    BadArch(String),
}

/// One disassembled instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inst {
    pub addr: u64,
    /// Encoded size in bytes (4 or 8; 4 for undecodable words).
    pub size: u32,
    /// Assembly as LLVM prints it, without leading whitespace, e.g.
    /// `v_mfma_f32_16x16x16_bf16 a[0:3], v[10:11], v[12:13], a[0:3]`. Undecodable words are `.long 0x...`.
    pub text: String,
}

impl Inst {
    /// The mnemonic: the text up to the first whitespace.
    pub fn mnemonic(&self) -> &str {
        self.text.split_whitespace().next().unwrap_or("")
    }

    /// The target address of a branch (`s_branch` / `s_cbranch_*` with a 16-bit offset operand).
    pub fn branch_target(&self) -> Option<u64> {
        let mut words = self.text.split_whitespace();
        let m = words.next()?;
        if m != "s_branch" && !m.starts_with("s_cbranch_") {
            return None;
        }
        let operand = words.next()?;
        if words.next().is_some() {
            return None;
        }
        let raw = if let Some(hex) = operand.strip_prefix("0x") {
            i64::from_str_radix(hex, 16).ok()?
        } else {
            operand.parse::<i64>().ok()?
        };
        // The 16-bit field is printed unsigned (65508) or, by some printers, signed (-28).
        if !(-32768..=65535).contains(&raw) {
            return None;
        }
        let simm16 = i64::from((raw & 0xffff) as u16 as i16);
        let next = i64::try_from(self.addr.checked_add(u64::from(self.size))?).ok()?;
        u64::try_from(next.checked_add(4 * simm16)?).ok()
    }
}

/// Instruction classes counted by the inspector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstClass {
    /// `v_mfma*` and the sparse `v_smfmac*`.
    Mfma,
    /// `v_accvgpr_read/write/mov`: AGPR moves, neither MFMA nor VALU work.
    AccVgpr,
    /// Other `v_*` instructions.
    Valu,
    /// `s_*`: every scalar instruction, including scalar loads, `s_waitcnt`, `s_nop` and branches.
    Salu,
    /// `buffer_*`, `global_*`, `flat_*`, `scratch_*`.
    Vmem,
    /// `ds_*`.
    Lds,
    Other,
}

/// Class of an instruction mnemonic.
pub fn classify(mnemonic: &str) -> InstClass {
    if mnemonic.starts_with("v_mfma") || mnemonic.starts_with("v_smfmac") {
        InstClass::Mfma
    } else if mnemonic.starts_with("v_accvgpr") {
        InstClass::AccVgpr
    } else if mnemonic.starts_with("v_") {
        InstClass::Valu
    } else if mnemonic.starts_with("s_") {
        InstClass::Salu
    } else if ["buffer_", "global_", "flat_", "scratch_"]
        .iter()
        .any(|p| mnemonic.starts_with(p))
    {
        InstClass::Vmem
    } else if mnemonic.starts_with("ds_") {
        InstClass::Lds
    } else {
        InstClass::Other
    }
}

/// Instruction mix of a loop, `[start, end]` by address (`end` is the address of the backward branch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoopStats {
    pub start: u64,
    pub end: u64,
    pub instructions: u32,
    pub valu: u32,
    pub mfma: u32,
    pub salu: u32,
    pub vmem: u32,
    pub lds: u32,
}

/// Inspection of one kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelReport {
    pub name: String,
    /// Unified VGPR count from the metadata (on gfx90a/gfx942: arch VGPRs rounded up to 4, plus AGPRs).
    pub vgprs: u32,
    pub agprs: u32,
    pub sgprs: u32,
    pub lds_bytes: u32,
    pub scratch_bytes: u32,
    pub vgpr_spills: u32,
    pub sgpr_spills: u32,
    /// See [`codeobj::occupancy_waves_per_simd`]; `None` for processors the model does not cover.
    pub occupancy_waves_per_simd: Option<u32>,
    /// MFMA instructions in the whole kernel.
    pub mfma_total: u32,
    pub main_loop: Option<LoopStats>,
    /// Main-loop VALU instructions per weight element processed by one iteration.
    pub valu_per_weight_element: Option<f64>,
}

/// Inspection of a code object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    pub arch: String,
    pub kernels: Vec<KernelReport>,
}

/// Releases an LLVM disassembler context.
struct Disasm(LLVMDisasmContextRef);

impl Drop for Disasm {
    fn drop(&mut self) {
        // SAFETY: the context was created by LLVMCreateDisasmCPU, is non-null and is disposed once.
        unsafe { LLVMDisasmDispose(self.0) }
    }
}

fn init_llvm_amdgpu() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: LLVM's target initializers have no preconditions; `Once` runs them once.
        unsafe {
            LLVMInitializeAMDGPUTargetInfo();
            LLVMInitializeAMDGPUTargetMC();
            LLVMInitializeAMDGPUDisassembler();
        }
    });
}

/// Disassembles the whole `.text` section of `obj` for its processor. Deterministic: the same bytes
/// give the same instructions. Words LLVM cannot decode become 4-byte `.long 0x........` entries.
pub fn disassemble(obj: &CodeObject) -> Result<Vec<Inst>, InspectError> {
    disassemble_bytes(&obj.arch, &obj.text, obj.text_addr)
}

/// Disassembles `code`, whose first byte is at address `addr`, for processor `arch`.
pub fn disassemble_bytes(arch: &str, code: &[u8], addr: u64) -> Result<Vec<Inst>, InspectError> {
    init_llvm_amdgpu();
    let triple = CString::new(TRIPLE).map_err(|_| InspectError::BadArch(TRIPLE.into()))?;
    let cpu = CString::new(arch).map_err(|_| InspectError::BadArch(arch.into()))?;
    // SAFETY: both strings are valid NUL-terminated C strings that outlive the call; no callbacks.
    let dc = unsafe {
        LLVMCreateDisasmCPU(
            triple.as_ptr(),
            cpu.as_ptr(),
            std::ptr::null_mut(),
            0,
            None,
            None,
        )
    };
    if dc.is_null() {
        return Err(InspectError::NoDisassembler(arch.into()));
    }
    let dc = Disasm(dc);
    // LLVMDisasmInstruction takes a mutable pointer but does not write through it; use a copy anyway.
    let mut bytes = code.to_vec();
    let mut out = vec![0 as c_char; 512];
    let mut insts = Vec::new();
    let mut off = 0usize;
    while off < bytes.len() {
        let pc = addr.wrapping_add(off as u64);
        let rest = &mut bytes[off..];
        // SAFETY: `rest` is valid for `rest.len()` bytes and `out` for `out.len()` characters; LLVM
        // writes a NUL-terminated string of at most `out.len()` bytes into `out`.
        let n = unsafe {
            LLVMDisasmInstruction(
                dc.0,
                rest.as_mut_ptr(),
                rest.len() as u64,
                pc,
                out.as_mut_ptr(),
                out.len(),
            )
        };
        let (size, text) = if n == 0 || n > rest.len() {
            let word = rest.get(..4.min(rest.len())).unwrap_or_default();
            let mut le = [0u8; 4];
            le[..word.len()].copy_from_slice(word);
            (
                word.len().max(1),
                format!(".long {:#010x}", u32::from_le_bytes(le)),
            )
        } else {
            let len = out.iter().position(|&c| c == 0).unwrap_or(out.len());
            let raw: Vec<u8> = out[..len].iter().map(|&c| c as u8).collect();
            let text = String::from_utf8_lossy(&raw);
            (n, text.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        insts.push(Inst {
            addr: pc,
            size: size as u32,
            text,
        });
        off += size;
    }
    Ok(insts)
}

/// All loops (backward branches) among `insts`, as `(start, end)` address pairs.
pub fn find_loops(insts: &[Inst]) -> Vec<(u64, u64)> {
    let Some(first) = insts.first() else {
        return Vec::new();
    };
    insts
        .iter()
        .filter_map(|i| {
            let target = i.branch_target()?;
            (target <= i.addr && target >= first.addr).then_some((target, i.addr))
        })
        .collect()
}

/// Counts the instruction mix of `insts` within `[start, end]`.
pub fn loop_stats(insts: &[Inst], start: u64, end: u64) -> LoopStats {
    let mut s = LoopStats {
        start,
        end,
        instructions: 0,
        valu: 0,
        mfma: 0,
        salu: 0,
        vmem: 0,
        lds: 0,
    };
    for i in insts.iter().filter(|i| i.addr >= start && i.addr <= end) {
        s.instructions += 1;
        match classify(i.mnemonic()) {
            InstClass::Mfma => s.mfma += 1,
            InstClass::Valu => s.valu += 1,
            InstClass::Salu => s.salu += 1,
            InstClass::Vmem => s.vmem += 1,
            InstClass::Lds => s.lds += 1,
            InstClass::AccVgpr | InstClass::Other => {}
        }
    }
    s
}

/// The main loop among `insts`: the loop with the most MFMA instructions (ties: the larger address
/// range, then the lower start). `None` when there is no backward branch.
pub fn main_loop(insts: &[Inst]) -> Option<LoopStats> {
    find_loops(insts)
        .into_iter()
        .map(|(start, end)| loop_stats(insts, start, end))
        .max_by(|a, b| {
            (a.mfma, a.end - a.start, std::cmp::Reverse(a.start)).cmp(&(
                b.mfma,
                b.end - b.start,
                std::cmp::Reverse(b.start),
            ))
        })
}

/// The instructions of `lp`, one per line without addresses (stable across code layout changes).
pub fn loop_listing(insts: &[Inst], lp: &LoopStats) -> String {
    let mut s = String::new();
    for i in insts
        .iter()
        .filter(|i| i.addr >= lp.start && i.addr <= lp.end)
    {
        s.push_str(&i.text);
        s.push('\n');
    }
    s
}

/// The instructions of kernel `k`: those inside its function symbol, or all of `.text` if the object
/// has no sized function symbol for it.
pub fn kernel_insts<'a>(
    obj: &CodeObject,
    k: &codeobj::KernelMeta,
    insts: &'a [Inst],
) -> &'a [Inst] {
    let Some(sym) = obj.kernel_code(k).filter(|s| s.size > 0) else {
        return insts;
    };
    let end = sym.addr.saturating_add(sym.size);
    let lo = insts.partition_point(|i| i.addr < sym.addr);
    let hi = insts.partition_point(|i| i.addr < end);
    insts.get(lo..hi.max(lo)).unwrap_or_default()
}

/// Inspects a code object. `elements_per_iteration` is the number of weight elements one main-loop
/// iteration processes (known from the kernel plan); it gives `valu_per_weight_element`.
pub fn inspect(
    bytes: &[u8],
    elements_per_iteration: Option<u32>,
) -> Result<InspectReport, InspectError> {
    let obj = codeobj::parse(bytes)?;
    inspect_object(&obj, elements_per_iteration)
}

/// [`inspect`] for an already parsed code object.
pub fn inspect_object(
    obj: &CodeObject,
    elements_per_iteration: Option<u32>,
) -> Result<InspectReport, InspectError> {
    let insts = disassemble(obj)?;
    let kernels = obj
        .kernels
        .iter()
        .map(|k| {
            let ki = kernel_insts(obj, k, &insts);
            let mfma_total = ki
                .iter()
                .filter(|i| classify(i.mnemonic()) == InstClass::Mfma)
                .count() as u32;
            let main_loop = main_loop(ki);
            let valu_per_weight_element = match (&main_loop, elements_per_iteration) {
                (Some(lp), Some(e)) if e > 0 => Some(f64::from(lp.valu) / f64::from(e)),
                _ => None,
            };
            KernelReport {
                name: k.name.clone(),
                vgprs: k.vgpr_count,
                agprs: k.agpr_count,
                sgprs: k.sgpr_count,
                lds_bytes: k.group_segment_fixed_size,
                scratch_bytes: k.private_segment_fixed_size,
                vgpr_spills: k.vgpr_spill_count,
                sgpr_spills: k.sgpr_spill_count,
                occupancy_waves_per_simd: obj.occupancy(k),
                mfma_total,
                main_loop,
                valu_per_weight_element,
            }
        })
        .collect();
    Ok(InspectReport {
        arch: obj.arch.clone(),
        kernels,
    })
}

impl InspectReport {
    /// A readable table: one row per kernel, then its main-loop instruction mix.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(s, "arch: {}", self.arch);
        let _ = writeln!(
            s,
            "{:<32} {:>5} {:>5} {:>5} {:>7} {:>7} {:>9} {:>4} {:>5}",
            "kernel", "vgpr", "agpr", "sgpr", "lds", "scratch", "spill v/s", "occ", "mfma"
        );
        for k in &self.kernels {
            let occ = k
                .occupancy_waves_per_simd
                .map_or_else(|| "-".to_string(), |o| o.to_string());
            let _ = writeln!(
                s,
                "{:<32} {:>5} {:>5} {:>5} {:>7} {:>7} {:>9} {:>4} {:>5}",
                k.name,
                k.vgprs,
                k.agprs,
                k.sgprs,
                k.lds_bytes,
                k.scratch_bytes,
                format!("{}/{}", k.vgpr_spills, k.sgpr_spills),
                occ,
                k.mfma_total
            );
            match &k.main_loop {
                None => {
                    let _ = writeln!(s, "  main loop: none");
                }
                Some(lp) => {
                    let _ = writeln!(
                        s,
                        "  main loop {:#x}..={:#x}: {} instructions: mfma {}, valu {}, salu {}, vmem {}, lds {}",
                        lp.start, lp.end, lp.instructions, lp.mfma, lp.valu, lp.salu, lp.vmem, lp.lds
                    );
                }
            }
            if let Some(v) = k.valu_per_weight_element {
                let _ = writeln!(s, "  valu per weight element: {v:.3}");
            }
        }
        s
    }
}
