//! AMDGPU code objects (`.hsaco`): parsing and validation.
//!
//! A code object is an ELF64 little-endian shared object (`ET_DYN`) for `EM_AMDGPU`, with OS ABI
//! `ELFOSABI_AMDGPU_HSA` and an ABI version naming the code object version (v4, v5 or v6). The
//! processor is encoded in `e_flags` (the `EF_AMDGPU_MACH` field, plus the xnack/sramecc feature
//! settings), and a note with owner `"AMDGPU"` and type `NT_AMDGPU_METADATA` carries a MessagePack
//! map describing every kernel (`amdhsa.kernels`) and the target (`amdhsa.target`). Each kernel has a
//! 64-byte kernel descriptor, an `OBJECT` symbol named `<kernel>.kd` in `.rodata`.
//!
//! [`parse`] checks all of that and returns a [`CodeObject`]; it never panics, whatever the input
//! bytes: every problem is a [`CodeObjectError`] naming what is wrong.

use object::elf;
use object::read::elf::{FileHeader, NoteIterator, ProgramHeader, SectionHeader, Sym};
use object::LittleEndian;
use rmpv::Value;
use serde::Serialize;
use thiserror::Error;

/// `ELFOSABI_AMDGPU_HSA`.
pub const ELFOSABI_AMDGPU_HSA: u8 = 64;
/// `NT_AMDGPU_METADATA`: the note type of the MessagePack kernel metadata.
pub const NT_AMDGPU_METADATA: u32 = 32;
/// `EF_AMDGPU_MACH`: the processor field of `e_flags`.
pub const EF_AMDGPU_MACH: u32 = 0xff;
/// Size of an AMDHSA kernel descriptor in bytes.
pub const KERNEL_DESCRIPTOR_SIZE: u64 = 64;

const EF_AMDGPU_FEATURE_XNACK_V4: u32 = 0x300;
const EF_AMDGPU_FEATURE_SRAMECC_V4: u32 = 0xc00;
const TARGET_TRIPLE_PREFIX: &str = "amdgcn-amd-amdhsa--";
/// Nesting depth allowed while decoding the metadata (it is 5 levels deep in practice).
const METADATA_MAX_DEPTH: usize = 32;

/// What is wrong with a code object.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodeObjectError {
    #[error("not an ELF file")]
    NotElf,
    #[error("ELF class {0} is not ELFCLASS64 (2)")]
    NotElf64(u8),
    #[error("ELF data encoding {0} is not little endian (ELFDATA2LSB = 1)")]
    NotLittleEndian(u8),
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("ELF machine {0} is not EM_AMDGPU (224)")]
    WrongMachine(u16),
    #[error("ELF type {0} is not ET_DYN (3, shared object); code objects must be linked with ld.lld -shared")]
    NotSharedObject(u16),
    #[error("ELF OS ABI {0} is not ELFOSABI_AMDGPU_HSA (64)")]
    WrongOsAbi(u8),
    #[error("AMDGPU HSA ABI version {0} is not supported (2 = code object v4, 3 = v5, 4 = v6)")]
    UnsupportedAbiVersion(u8),
    #[error("unknown AMDGPU processor: e_flags mach field is {0:#x}")]
    UnknownMach(u32),
    #[error("no AMDGPU metadata note (owner \"AMDGPU\", type NT_AMDGPU_METADATA = 32)")]
    NoMetadataNote,
    #[error("AMDGPU metadata note is not valid MessagePack: {0}")]
    MetadataDecode(String),
    #[error("invalid AMDGPU metadata: {0}")]
    Metadata(String),
    #[error("metadata target {metadata} does not agree with the ELF header target {elf}")]
    TargetMismatch { metadata: String, elf: String },
    #[error("no .text section")]
    NoText,
    #[error("kernel {kernel} has no kernel descriptor symbol {symbol}")]
    MissingKernelDescriptor { kernel: String, symbol: String },
    #[error("kernel descriptor symbol {symbol} of kernel {kernel} is invalid: {reason}")]
    BadKernelDescriptor {
        kernel: String,
        symbol: String,
        reason: String,
    },
    #[error("code object is for {found}, expected {expected}")]
    ArchMismatch { expected: String, found: String },
}

fn malformed(e: object::read::Error) -> CodeObjectError {
    CodeObjectError::Malformed(e.to_string())
}

/// A feature setting encoded in `e_flags` (code object v4 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSetting {
    /// The processor does not support the feature.
    Unsupported,
    /// Code runs with the feature either on or off.
    Any,
    /// Code requires the feature off (`xnack-`).
    Off,
    /// Code requires the feature on (`xnack+`).
    On,
}

impl FeatureSetting {
    fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            0 => FeatureSetting::Unsupported,
            1 => FeatureSetting::Any,
            2 => FeatureSetting::Off,
            _ => FeatureSetting::On,
        }
    }

    /// The feature as `llvm-readelf` prints it: `xnack` (any), `xnack-`, `xnack+`, or nothing.
    fn describe(self, name: &str) -> Option<String> {
        match self {
            FeatureSetting::Unsupported => None,
            FeatureSetting::Any => Some(name.to_string()),
            FeatureSetting::Off => Some(format!("{name}-")),
            FeatureSetting::On => Some(format!("{name}+")),
        }
    }

    /// The feature as it appears in a target ID (`gfx942:xnack-`): only when on or off.
    fn target_id_suffix(self, name: &str) -> Option<String> {
        match self {
            FeatureSetting::Off => Some(format!("{name}-")),
            FeatureSetting::On => Some(format!("{name}+")),
            FeatureSetting::Unsupported | FeatureSetting::Any => None,
        }
    }
}

/// The kind of an ELF symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolKind {
    NoType,
    Object,
    Func,
    Section,
    File,
    Other(u8),
}

impl SymbolKind {
    fn from_st_type(t: u8) -> Self {
        match t {
            0 => SymbolKind::NoType,
            1 => SymbolKind::Object,
            2 => SymbolKind::Func,
            3 => SymbolKind::Section,
            4 => SymbolKind::File,
            other => SymbolKind::Other(other),
        }
    }
}

/// An ELF symbol (from `.symtab`, or `.dynsym` when the object has no `.symtab`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Symbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    pub kind: SymbolKind,
    /// Name of the section the symbol is defined in; `None` for undefined and absolute symbols.
    pub section: Option<String>,
}

/// One kernel argument (an entry of `.args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgMeta {
    pub name: Option<String>,
    pub offset: u32,
    pub size: u32,
    /// `global_buffer`, `by_value`, `hidden_block_count_x`, ...
    pub value_kind: String,
    /// `global`, `constant`, ... for pointer arguments.
    pub address_space: Option<String>,
}

/// Metadata of one kernel (an entry of `amdhsa.kernels`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelMeta {
    pub name: String,
    /// The kernel descriptor symbol, `<name>.kd`.
    pub symbol: String,
    pub args: Vec<ArgMeta>,
    pub kernarg_segment_size: u32,
    pub kernarg_segment_align: u32,
    /// Static LDS use in bytes.
    pub group_segment_fixed_size: u32,
    /// Scratch use per work-item in bytes.
    pub private_segment_fixed_size: u32,
    pub sgpr_count: u32,
    /// On gfx90a/gfx942 this is the unified count: architectural VGPRs rounded up to 4, plus AGPRs.
    pub vgpr_count: u32,
    /// 0 when the metadata has no `.agpr_count`.
    pub agpr_count: u32,
    pub sgpr_spill_count: u32,
    pub vgpr_spill_count: u32,
    pub wavefront_size: u32,
    pub max_flat_workgroup_size: u32,
    pub uses_dynamic_stack: bool,
}

/// A parsed and validated AMDGPU code object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeObject {
    /// Processor name from `e_flags`, e.g. `"gfx942"`.
    pub arch: String,
    /// Feature settings from `e_flags` as `llvm-readelf` prints them: `xnack` (any), `xnack+`, `sramecc-`, ...
    pub features: Vec<String>,
    pub xnack: FeatureSetting,
    pub sramecc: FeatureSetting,
    /// `EI_ABIVERSION`: 2, 3 or 4.
    pub abi_version: u8,
    /// Code object version: 4, 5 or 6.
    pub code_object_version: u8,
    /// `amdhsa.target`, e.g. `"amdgcn-amd-amdhsa--gfx942"`.
    pub target: String,
    pub kernels: Vec<KernelMeta>,
    /// Bytes of the `.text` section.
    pub text: Vec<u8>,
    /// Virtual address of the start of `.text`.
    pub text_addr: u64,
    pub symbols: Vec<Symbol>,
}

impl CodeObject {
    /// The kernel named `name`.
    pub fn kernel(&self, name: &str) -> Option<&KernelMeta> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// The symbol named `name`.
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// The function symbol holding the machine code of kernel `k` (same name as the kernel).
    pub fn kernel_code(&self, k: &KernelMeta) -> Option<&Symbol> {
        self.symbols
            .iter()
            .find(|s| s.name == k.name && s.kind == SymbolKind::Func)
    }

    /// The target ID, e.g. `gfx942` or `gfx90a:sramecc+:xnack-` (only explicit on/off settings).
    pub fn target_id(&self) -> String {
        target_id(&self.arch, self.sramecc, self.xnack)
    }

    /// Checks that the object is for processor `expected` (e.g. `"gfx942"`).
    pub fn check_arch(&self, expected: &str) -> Result<(), CodeObjectError> {
        if self.arch == expected {
            Ok(())
        } else {
            Err(CodeObjectError::ArchMismatch {
                expected: expected.to_string(),
                found: self.arch.clone(),
            })
        }
    }

    /// Waves per SIMD that kernel `k` can keep resident, launched with its maximum workgroup size;
    /// see [`occupancy_waves_per_simd`]. `None` for processors the model does not cover.
    pub fn occupancy(&self, k: &KernelMeta) -> Option<u32> {
        occupancy_waves_per_simd(
            &self.arch,
            k.vgpr_count,
            k.sgpr_count,
            k.group_segment_fixed_size,
            k.max_flat_workgroup_size,
        )
    }
}

fn target_id(arch: &str, sramecc: FeatureSetting, xnack: FeatureSetting) -> String {
    let mut id = arch.to_string();
    for f in [
        sramecc.target_id_suffix("sramecc"),
        xnack.target_id_suffix("xnack"),
    ]
    .into_iter()
    .flatten()
    {
        id.push(':');
        id.push_str(&f);
    }
    id
}

/// Unified VGPR count on gfx90a/gfx942: architectural VGPRs rounded up to 4, then the AGPRs.
/// This is what the metadata's `.vgpr_count` already holds on those processors.
pub fn unified_vgprs(arch_vgprs: u32, agprs: u32) -> u32 {
    arch_vgprs.saturating_add(3) / 4 * 4 + agprs
}

/// Waves per SIMD a kernel can keep resident on gfx90a / gfx940 / gfx941 / gfx942 / gfx950
/// (`None` for other processors).
///
/// The model (wave64, 4 SIMDs per CU, at most 8 waves per SIMD):
/// - VGPRs: each SIMD lane has a unified file of 512 registers (VGPRs + AGPRs), allocated per wave
///   in granules of 8: `vgpr_waves = 512 / round_up(max(vgprs_unified, 1), 8)`. `vgprs_unified` is
///   the metadata's `.vgpr_count` (see [`unified_vgprs`]).
/// - SGPRs: LLVM's GFX8/GFX9 table: ≤ 80 → 10, ≤ 88 → 9, ≤ 100 → 8, otherwise 7 waves.
/// - `reg_waves = min(8, vgpr_waves, sgpr_waves)`.
/// - Workgroups: a workgroup of `workgroup_size` work-items is `wg_waves = ceil(workgroup_size / 64)`
///   waves, spread over the CU's 4 SIMDs, and must be resident as a whole on one CU. Registers allow
///   `4 * reg_waves / wg_waves` workgroups per CU; LDS (64 KiB per CU, 160 KiB on gfx950) allows
///   `lds_size / lds_bytes` (unlimited when `lds_bytes` is 0).
/// - Result: `min(reg_waves, ceil(workgroups * wg_waves / 4))`: the waves per SIMD on the busiest
///   SIMD. 0 means the kernel cannot launch (too many registers, too much LDS, or a workgroup larger
///   than 1024 work-items).
pub fn occupancy_waves_per_simd(
    arch: &str,
    vgprs_unified: u32,
    sgprs: u32,
    lds_bytes: u32,
    workgroup_size: u32,
) -> Option<u32> {
    const MAX_WAVES_PER_SIMD: u32 = 8;
    const SIMDS_PER_CU: u32 = 4;
    const WAVE_SIZE: u32 = 64;
    const VGPRS_PER_LANE: u32 = 512;
    const VGPR_GRANULE: u32 = 8;
    let lds_per_cu: u32 = match arch {
        "gfx90a" | "gfx940" | "gfx941" | "gfx942" => 64 * 1024,
        "gfx950" => 160 * 1024,
        _ => return None,
    };
    if workgroup_size > 1024 || lds_bytes > lds_per_cu || vgprs_unified > VGPRS_PER_LANE {
        return Some(0);
    }
    // vgprs_unified <= 512 here, so this cannot overflow.
    let vgpr_alloc = vgprs_unified.max(1).div_ceil(VGPR_GRANULE) * VGPR_GRANULE;
    let vgpr_waves = VGPRS_PER_LANE / vgpr_alloc;
    let sgpr_waves = match sgprs {
        0..=80 => 10,
        81..=88 => 9,
        89..=100 => 8,
        _ => 7,
    };
    let reg_waves = MAX_WAVES_PER_SIMD.min(vgpr_waves).min(sgpr_waves);
    let wg_waves = workgroup_size.max(1).div_ceil(WAVE_SIZE);
    let wgs_regs = SIMDS_PER_CU * reg_waves / wg_waves;
    let wgs_lds = lds_per_cu.checked_div(lds_bytes).unwrap_or(u32::MAX);
    let wgs = wgs_regs.min(wgs_lds);
    // wgs <= 32 (4 * 8 / 1), so the product cannot overflow.
    Some(reg_waves.min((wgs * wg_waves).div_ceil(SIMDS_PER_CU)))
}

/// Processor name of an `EF_AMDGPU_MACH` value (GCN processors only).
pub fn mach_name(mach: u32) -> Option<&'static str> {
    Some(match mach {
        0x020 => "gfx600",
        0x021 => "gfx601",
        0x022 => "gfx700",
        0x023 => "gfx701",
        0x024 => "gfx702",
        0x025 => "gfx703",
        0x026 => "gfx704",
        0x028 => "gfx801",
        0x029 => "gfx802",
        0x02a => "gfx803",
        0x02b => "gfx810",
        0x02c => "gfx900",
        0x02d => "gfx902",
        0x02e => "gfx904",
        0x02f => "gfx906",
        0x030 => "gfx908",
        0x031 => "gfx909",
        0x032 => "gfx90c",
        0x033 => "gfx1010",
        0x034 => "gfx1011",
        0x035 => "gfx1012",
        0x036 => "gfx1030",
        0x037 => "gfx1031",
        0x038 => "gfx1032",
        0x039 => "gfx1033",
        0x03a => "gfx602",
        0x03b => "gfx705",
        0x03c => "gfx805",
        0x03d => "gfx1035",
        0x03e => "gfx1034",
        0x03f => "gfx90a",
        0x041 => "gfx1100",
        0x042 => "gfx1013",
        0x043 => "gfx1150",
        0x044 => "gfx1103",
        0x045 => "gfx1036",
        0x046 => "gfx1101",
        0x047 => "gfx1102",
        0x048 => "gfx1200",
        0x049 => "gfx1250",
        0x04a => "gfx1151",
        0x04c => "gfx942",
        0x04e => "gfx1201",
        0x04f => "gfx950",
        0x051 => "gfx9-generic",
        0x052 => "gfx10-1-generic",
        0x053 => "gfx10-3-generic",
        0x054 => "gfx11-generic",
        0x055 => "gfx1152",
        0x058 => "gfx1153",
        0x059 => "gfx12-generic",
        0x05a => "gfx1251",
        0x05f => "gfx9-4-generic",
        _ => return None,
    })
}

type Header = elf::FileHeader64<LittleEndian>;

/// Parses and validates an AMDGPU code object.
pub fn parse(bytes: &[u8]) -> Result<CodeObject, CodeObjectError> {
    // e_ident first, so the common mistakes get precise messages.
    if bytes.get(..4) != Some(&elf::ELFMAG[..]) {
        return Err(CodeObjectError::NotElf);
    }
    let class = bytes.get(4).copied().ok_or(CodeObjectError::NotElf)?;
    if class != elf::ELFCLASS64.0 {
        return Err(CodeObjectError::NotElf64(class));
    }
    let data = bytes.get(5).copied().ok_or(CodeObjectError::NotElf)?;
    if data != elf::ELFDATA2LSB.0 {
        return Err(CodeObjectError::NotLittleEndian(data));
    }
    let header = Header::parse(bytes).map_err(malformed)?;
    let endian = LittleEndian;

    let machine = header.e_machine(endian).0;
    if machine != elf::EM_AMDGPU.0 {
        return Err(CodeObjectError::WrongMachine(machine));
    }
    let e_type = header.e_type(endian).0;
    if e_type != elf::ET_DYN.0 {
        return Err(CodeObjectError::NotSharedObject(e_type));
    }
    let ident = header.e_ident();
    if ident.os_abi.0 != ELFOSABI_AMDGPU_HSA {
        return Err(CodeObjectError::WrongOsAbi(ident.os_abi.0));
    }
    let abi_version = ident.abi_version;
    let code_object_version = match abi_version {
        2 => 4,
        3 => 5,
        4 => 6,
        v => return Err(CodeObjectError::UnsupportedAbiVersion(v)),
    };
    let flags = header.e_flags(endian).0;
    let mach = flags & EF_AMDGPU_MACH;
    let arch = mach_name(mach).ok_or(CodeObjectError::UnknownMach(mach))?;
    let xnack = FeatureSetting::from_bits((flags & EF_AMDGPU_FEATURE_XNACK_V4) >> 8);
    let sramecc = FeatureSetting::from_bits((flags & EF_AMDGPU_FEATURE_SRAMECC_V4) >> 10);
    let features: Vec<String> = [xnack.describe("xnack"), sramecc.describe("sramecc")]
        .into_iter()
        .flatten()
        .collect();

    let sections = header.sections(endian, bytes).map_err(malformed)?;

    // The metadata note: in a note section, or (for objects without section headers) a PT_NOTE segment.
    let mut metadata: Option<&[u8]> = None;
    for section in sections.iter() {
        if let Some(notes) = section.notes(endian, bytes).map_err(malformed)? {
            metadata = find_metadata_note(notes)?;
            if metadata.is_some() {
                break;
            }
        }
    }
    if metadata.is_none() {
        for segment in header.program_headers(endian, bytes).map_err(malformed)? {
            if let Some(notes) = segment.notes(endian, bytes).map_err(malformed)? {
                metadata = find_metadata_note(notes)?;
                if metadata.is_some() {
                    break;
                }
            }
        }
    }
    let metadata = metadata.ok_or(CodeObjectError::NoMetadataNote)?;
    let (target, kernels) = parse_metadata(metadata)?;

    // amdhsa.target must name the same processor and feature settings as e_flags.
    let elf_target = format!("{TARGET_TRIPLE_PREFIX}{}", target_id(arch, sramecc, xnack));
    if !same_target(&target, &elf_target) {
        return Err(CodeObjectError::TargetMismatch {
            metadata: target,
            elf: elf_target,
        });
    }

    let (_, text_section) = sections
        .section_by_name(endian, b".text")
        .ok_or(CodeObjectError::NoText)?;
    let text = text_section
        .data(endian, bytes)
        .map_err(malformed)?
        .to_vec();
    let text_addr = text_section.sh_addr(endian);

    // Symbols: .symtab has everything; .dynsym is the fallback for stripped objects.
    let mut symtab = sections
        .symbols(endian, bytes, elf::SHT_SYMTAB)
        .map_err(malformed)?;
    if symtab.is_empty() {
        symtab = sections
            .symbols(endian, bytes, elf::SHT_DYNSYM)
            .map_err(malformed)?;
    }
    let mut symbols = Vec::with_capacity(symtab.len());
    for (index, sym) in symtab.enumerate() {
        if index.0 == 0 {
            continue; // the null symbol
        }
        let name = symtab.symbol_name(endian, sym).map_err(malformed)?;
        let section = match symtab
            .symbol_section(endian, sym, index)
            .map_err(malformed)?
        {
            Some(si) => {
                let sh = sections.section(si).map_err(malformed)?;
                let name = sections.section_name(endian, sh).map_err(malformed)?;
                Some(String::from_utf8_lossy(name).into_owned())
            }
            None => None,
        };
        symbols.push(Symbol {
            name: String::from_utf8_lossy(name).into_owned(),
            addr: sym.st_value(endian),
            size: sym.st_size(endian),
            kind: SymbolKind::from_st_type(sym.st_type().0),
            section,
        });
    }

    for k in &kernels {
        check_kernel_descriptor(k, &symbols)?;
    }

    Ok(CodeObject {
        arch: arch.to_string(),
        features,
        xnack,
        sramecc,
        abi_version,
        code_object_version,
        target,
        kernels,
        text,
        text_addr,
        symbols,
    })
}

/// Parses `bytes` and checks that the object is for processor `expected_arch`.
pub fn parse_for_arch(bytes: &[u8], expected_arch: &str) -> Result<CodeObject, CodeObjectError> {
    let obj = parse(bytes)?;
    obj.check_arch(expected_arch)?;
    Ok(obj)
}

fn find_metadata_note(
    mut notes: NoteIterator<'_, Header>,
) -> Result<Option<&[u8]>, CodeObjectError> {
    while let Some(note) = notes.next().map_err(malformed)? {
        if note.name() == b"AMDGPU" && note.n_type(LittleEndian).0 == NT_AMDGPU_METADATA {
            return Ok(Some(note.desc()));
        }
    }
    Ok(None)
}

/// Whether two target strings (`amdgcn-amd-amdhsa--gfx942:xnack-`) name the same processor and
/// feature settings; the order of the features does not matter.
fn same_target(a: &str, b: &str) -> bool {
    let split = |t: &str| {
        let mut parts: Vec<String> = t.split(':').map(str::to_string).collect();
        if parts.len() > 1 {
            parts[1..].sort();
        }
        parts
    };
    split(a) == split(b)
}

fn check_kernel_descriptor(k: &KernelMeta, symbols: &[Symbol]) -> Result<(), CodeObjectError> {
    let bad = |reason: String| CodeObjectError::BadKernelDescriptor {
        kernel: k.name.clone(),
        symbol: k.symbol.clone(),
        reason,
    };
    let sym = symbols.iter().find(|s| s.name == k.symbol).ok_or_else(|| {
        CodeObjectError::MissingKernelDescriptor {
            kernel: k.name.clone(),
            symbol: k.symbol.clone(),
        }
    })?;
    if sym.kind != SymbolKind::Object {
        return Err(bad(format!("symbol type is {:?}, not OBJECT", sym.kind)));
    }
    if sym.size != KERNEL_DESCRIPTOR_SIZE {
        return Err(bad(format!(
            "size is {} bytes, not {KERNEL_DESCRIPTOR_SIZE}",
            sym.size
        )));
    }
    if sym.section.as_deref() != Some(".rodata") {
        return Err(bad(format!(
            "it is in section {}, not .rodata",
            sym.section.as_deref().unwrap_or("(none)")
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MessagePack metadata

fn meta_err(msg: impl Into<String>) -> CodeObjectError {
    CodeObjectError::Metadata(msg.into())
}

fn map_get<'v>(map: &'v [(Value, Value)], key: &str) -> Option<&'v Value> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn as_map<'v>(v: &'v Value, what: &str) -> Result<&'v [(Value, Value)], CodeObjectError> {
    v.as_map()
        .map(Vec::as_slice)
        .ok_or_else(|| meta_err(format!("{what} is not a map")))
}

fn get_str(map: &[(Value, Value)], key: &str, what: &str) -> Result<String, CodeObjectError> {
    opt_str(map, key, what)?.ok_or_else(|| meta_err(format!("{what} has no {key}")))
}

fn opt_str(
    map: &[(Value, Value)],
    key: &str,
    what: &str,
) -> Result<Option<String>, CodeObjectError> {
    match map_get(map, key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| meta_err(format!("{what}: {key} is not a string"))),
    }
}

fn get_u32(map: &[(Value, Value)], key: &str, what: &str) -> Result<u32, CodeObjectError> {
    opt_u32(map, key, what)?.ok_or_else(|| meta_err(format!("{what} has no {key}")))
}

fn opt_u32(map: &[(Value, Value)], key: &str, what: &str) -> Result<Option<u32>, CodeObjectError> {
    match map_get(map, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| meta_err(format!("{what}: {key} is not an unsigned 32-bit integer"))),
    }
}

fn opt_bool(
    map: &[(Value, Value)],
    key: &str,
    what: &str,
) -> Result<Option<bool>, CodeObjectError> {
    match map_get(map, key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| meta_err(format!("{what}: {key} is not a boolean"))),
    }
}

/// Decodes the note's MessagePack into (`amdhsa.target`, kernels).
fn parse_metadata(desc: &[u8]) -> Result<(String, Vec<KernelMeta>), CodeObjectError> {
    let mut rd = desc;
    let root = rmpv::decode::read_value_with_max_depth(&mut rd, METADATA_MAX_DEPTH)
        .map_err(|e| CodeObjectError::MetadataDecode(e.to_string()))?;
    let root = as_map(&root, "the metadata root")?;
    let target = get_str(root, "amdhsa.target", "the metadata")?;
    let kernels = map_get(root, "amdhsa.kernels")
        .ok_or_else(|| meta_err("the metadata has no amdhsa.kernels"))?
        .as_array()
        .ok_or_else(|| meta_err("amdhsa.kernels is not an array"))?;
    let kernels = kernels
        .iter()
        .enumerate()
        .map(|(i, k)| parse_kernel(i, k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((target, kernels))
}

fn parse_kernel(index: usize, v: &Value) -> Result<KernelMeta, CodeObjectError> {
    let m = as_map(v, &format!("amdhsa.kernels[{index}]"))?;
    let name = get_str(m, ".name", &format!("amdhsa.kernels[{index}]"))?;
    let what = format!("kernel {name}");
    let w = what.as_str();
    let args = match map_get(m, ".args") {
        None => Vec::new(),
        Some(a) => a
            .as_array()
            .ok_or_else(|| meta_err(format!("{w}: .args is not an array")))?
            .iter()
            .enumerate()
            .map(|(i, a)| parse_arg(w, i, a))
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(KernelMeta {
        symbol: get_str(m, ".symbol", w)?,
        args,
        kernarg_segment_size: get_u32(m, ".kernarg_segment_size", w)?,
        kernarg_segment_align: get_u32(m, ".kernarg_segment_align", w)?,
        group_segment_fixed_size: get_u32(m, ".group_segment_fixed_size", w)?,
        private_segment_fixed_size: get_u32(m, ".private_segment_fixed_size", w)?,
        sgpr_count: get_u32(m, ".sgpr_count", w)?,
        vgpr_count: get_u32(m, ".vgpr_count", w)?,
        agpr_count: opt_u32(m, ".agpr_count", w)?.unwrap_or(0),
        sgpr_spill_count: opt_u32(m, ".sgpr_spill_count", w)?.unwrap_or(0),
        vgpr_spill_count: opt_u32(m, ".vgpr_spill_count", w)?.unwrap_or(0),
        wavefront_size: get_u32(m, ".wavefront_size", w)?,
        max_flat_workgroup_size: get_u32(m, ".max_flat_workgroup_size", w)?,
        uses_dynamic_stack: opt_bool(m, ".uses_dynamic_stack", w)?.unwrap_or(false),
        name,
    })
}

fn parse_arg(kernel: &str, index: usize, v: &Value) -> Result<ArgMeta, CodeObjectError> {
    let what = format!("{kernel} argument {index}");
    let m = as_map(v, &what)?;
    Ok(ArgMeta {
        name: opt_str(m, ".name", &what)?,
        offset: get_u32(m, ".offset", &what)?,
        size: get_u32(m, ".size", &what)?,
        value_kind: get_str(m, ".value_kind", &what)?,
        address_space: opt_str(m, ".address_space", &what)?,
    })
}

/// The bytes of a defined data symbol of a code object (`None` when there is no such symbol), e.g. the
/// `nibble_source_hash` constant nibble embeds so that a code object can be matched with its manifest.
pub fn symbol_bytes(bytes: &[u8], name: &str) -> Result<Option<Vec<u8>>, CodeObjectError> {
    // Validates the whole object first, so the section walk below only sees well-formed ELF.
    parse(bytes)?;
    let endian = LittleEndian;
    let header = Header::parse(bytes).map_err(malformed)?;
    let sections = header.sections(endian, bytes).map_err(malformed)?;
    let symbols = sections
        .symbols(endian, bytes, elf::SHT_SYMTAB)
        .map_err(malformed)?;
    for (i, sym) in symbols.iter().enumerate() {
        if symbols.symbol_name(endian, sym).map_err(malformed)? != name.as_bytes() {
            continue;
        }
        let Some(index) = symbols
            .symbol_section(endian, sym, object::SymbolIndex(i))
            .map_err(malformed)?
        else {
            return Ok(None);
        };
        let section = sections.section(index).map_err(malformed)?;
        let data = section.data(endian, bytes).map_err(malformed)?;
        let start = sym
            .st_value(endian)
            .checked_sub(section.sh_addr(endian))
            .ok_or_else(|| {
                CodeObjectError::Metadata(format!("symbol {name} lies before its section"))
            })?;
        let end = start.saturating_add(sym.st_size(endian));
        return match data.get(start as usize..end as usize) {
            Some(d) => Ok(Some(d.to_vec())),
            None => Err(CodeObjectError::Metadata(format!(
                "symbol {name} lies outside its section"
            ))),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    // Fixtures built by tests-data/regen.sh (llc -O3 + ld.lld -shared, LLVM 22.1.8).
    const GFX942: &[u8] = include_bytes!("../tests-data/mfma_loop_gfx942.hsaco");
    const GFX90A: &[u8] = include_bytes!("../tests-data/straight_gfx90a.hsaco");

    /// Offset of the first occurrence of `needle` at or after `from`.
    fn find(bytes: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        bytes[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    }

    fn patched(bytes: &[u8], at: usize, new: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[at..at + new.len()].copy_from_slice(new);
        b
    }

    // Every value below was cross-checked against LLVM 22's
    // `llvm-readelf -h -S -s --notes tests-data/mfma_loop_gfx942.hsaco`:
    // "Flags: 0x54c, gfx942, xnack, sramecc", "ABI Version: 4", section `.text` at 0x1a00 of size
    // 0x540, `mfma_loop` FUNC at 0x1a00 size 308, `mfma_loop.kd` OBJECT at 0x900 size 64 in .rodata,
    // and the NT_AMDGPU_METADATA note (23 args, LDS 2048, kernarg 288/8, sgpr 18, vgpr 24, agpr 8).
    #[test]
    fn parses_gfx942_fixture() {
        let obj = parse(GFX942).unwrap();
        assert_eq!(obj.arch, "gfx942");
        assert_eq!(obj.features, ["xnack", "sramecc"]);
        assert_eq!(obj.xnack, FeatureSetting::Any);
        assert_eq!(obj.sramecc, FeatureSetting::Any);
        assert_eq!(obj.abi_version, 4);
        assert_eq!(obj.code_object_version, 6);
        assert_eq!(obj.target, "amdgcn-amd-amdhsa--gfx942");
        assert_eq!(obj.target_id(), "gfx942");
        assert_eq!(obj.text_addr, 0x1a00);
        assert_eq!(obj.text.len(), 0x540);
        // First instruction: s_load_dword s6, s[4:5], 0x18 = C0020182 00000018 (llvm-objdump -d).
        assert_eq!(&obj.text[..8], &[0x82, 0x01, 0x02, 0xc0, 0x18, 0, 0, 0]);

        assert_eq!(obj.kernels.len(), 1);
        let k = obj.kernel("mfma_loop").unwrap();
        assert!(obj.kernel("nope").is_none());
        assert_eq!(k.symbol, "mfma_loop.kd");
        assert_eq!(k.args.len(), 23);
        assert_eq!(
            k.args[0],
            ArgMeta {
                name: Some("a".into()),
                offset: 0,
                size: 8,
                value_kind: "global_buffer".into(),
                address_space: Some("global".into()),
            }
        );
        assert_eq!(
            k.args[3],
            ArgMeta {
                name: Some("n".into()),
                offset: 24,
                size: 4,
                value_kind: "by_value".into(),
                address_space: None,
            }
        );
        let last = k.args.last().unwrap();
        assert_eq!((last.offset, last.size), (232, 8));
        assert_eq!(last.value_kind, "hidden_queue_ptr");
        assert_eq!(last.name, None);
        assert_eq!(k.kernarg_segment_size, 288);
        assert_eq!(k.kernarg_segment_align, 8);
        assert_eq!(k.group_segment_fixed_size, 2048);
        assert_eq!(k.private_segment_fixed_size, 0);
        assert_eq!(k.sgpr_count, 18);
        assert_eq!(k.vgpr_count, 24);
        assert_eq!(k.agpr_count, 8);
        assert_eq!(k.sgpr_spill_count, 0);
        assert_eq!(k.vgpr_spill_count, 0);
        assert_eq!(k.wavefront_size, 64);
        assert_eq!(k.max_flat_workgroup_size, 256);
        assert!(!k.uses_dynamic_stack);

        let code = obj.kernel_code(k).unwrap();
        assert_eq!((code.addr, code.size), (0x1a00, 308));
        assert_eq!(code.section.as_deref(), Some(".text"));
        let kd = obj.symbol("mfma_loop.kd").unwrap();
        assert_eq!((kd.addr, kd.size, kd.kind), (0x900, 64, SymbolKind::Object));
        assert_eq!(kd.section.as_deref(), Some(".rodata"));
        // .symtab has 11 symbols besides the null one (mfma_loop.num_vgpr = 14 etc. are ABS).
        assert_eq!(obj.symbols.len(), 11);
        let nv = obj.symbol("mfma_loop.num_vgpr").unwrap();
        assert_eq!((nv.addr, nv.section.as_deref()), (14, None));
        // The metadata's unified count: align4(num_vgpr 14) + num_agpr 8.
        assert_eq!(unified_vgprs(14, 8), k.vgpr_count);

        assert_eq!(obj.occupancy(k), Some(8));
        obj.check_arch("gfx942").unwrap();
    }

    // Cross-checked against `llvm-readelf -h --notes tests-data/straight_gfx90a.hsaco`:
    // "Flags: 0x53f, gfx90a, xnack, sramecc", 22 args, kernarg 280, vgpr 12 (= align4(5) + 4), agpr 4,
    // sgpr 14, no LDS, max workgroup 64.
    #[test]
    fn parses_gfx90a_fixture() {
        let obj = parse(GFX90A).unwrap();
        assert_eq!(obj.arch, "gfx90a");
        assert_eq!(obj.features, ["xnack", "sramecc"]);
        assert_eq!(obj.target, "amdgcn-amd-amdhsa--gfx90a");
        let k = obj.kernel("straight").unwrap();
        assert_eq!(k.args.len(), 22);
        assert_eq!(k.kernarg_segment_size, 280);
        assert_eq!((k.vgpr_count, k.agpr_count, k.sgpr_count), (12, 4, 14));
        assert_eq!(unified_vgprs(5, 4), 12);
        assert_eq!(k.group_segment_fixed_size, 0);
        assert_eq!(k.max_flat_workgroup_size, 64);
        assert_eq!(obj.occupancy(k), Some(8));
    }

    #[test]
    fn gfx90a_object_is_rejected_where_gfx942_is_expected() {
        let err = parse_for_arch(GFX90A, "gfx942").unwrap_err();
        assert_eq!(
            err,
            CodeObjectError::ArchMismatch {
                expected: "gfx942".into(),
                found: "gfx90a".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "code object is for gfx90a, expected gfx942"
        );
        assert!(parse_for_arch(GFX90A, "gfx90a").is_ok());
    }

    #[test]
    fn rejects_non_elf_input() {
        assert_eq!(parse(b"").unwrap_err(), CodeObjectError::NotElf);
        assert_eq!(parse(b"\x7fEL").unwrap_err(), CodeObjectError::NotElf);
        assert_eq!(
            parse(b"hello world, not elf").unwrap_err().to_string(),
            "not an ELF file"
        );
        assert_eq!(parse(b"\x7fELF").unwrap_err(), CodeObjectError::NotElf);
        assert_eq!(
            parse(&patched(GFX942, 4, &[1])).unwrap_err(),
            CodeObjectError::NotElf64(1)
        );
        assert_eq!(
            parse(&patched(GFX942, 5, &[2])).unwrap_err(),
            CodeObjectError::NotLittleEndian(2)
        );
    }

    #[test]
    fn rejects_wrong_header_fields() {
        // e_machine (offset 18) = EM_X86_64.
        let err = parse(&patched(GFX942, 18, &62u16.to_le_bytes())).unwrap_err();
        assert_eq!(err, CodeObjectError::WrongMachine(62));
        assert_eq!(err.to_string(), "ELF machine 62 is not EM_AMDGPU (224)");
        // e_type (offset 16) = ET_REL: an unlinked object.
        assert_eq!(
            parse(&patched(GFX942, 16, &1u16.to_le_bytes())).unwrap_err(),
            CodeObjectError::NotSharedObject(1)
        );
        // EI_OSABI (offset 7) = ELFOSABI_SYSV.
        assert_eq!(
            parse(&patched(GFX942, 7, &[0])).unwrap_err(),
            CodeObjectError::WrongOsAbi(0)
        );
        // EI_ABIVERSION (offset 8) = 1: code object v3.
        assert_eq!(
            parse(&patched(GFX942, 8, &[1])).unwrap_err(),
            CodeObjectError::UnsupportedAbiVersion(1)
        );
        // e_flags (offset 48): mach 0x40 is reserved.
        assert_eq!(
            parse(&patched(GFX942, 48, &0x540u32.to_le_bytes())).unwrap_err(),
            CodeObjectError::UnknownMach(0x40)
        );
    }

    #[test]
    fn rejects_target_disagreeing_with_e_flags() {
        // A gfx942 object whose e_flags claims gfx90a.
        let err = parse(&patched(GFX942, 48, &0x53fu32.to_le_bytes())).unwrap_err();
        assert_eq!(
            err,
            CodeObjectError::TargetMismatch {
                metadata: "amdgcn-amd-amdhsa--gfx942".into(),
                elf: "amdgcn-amd-amdhsa--gfx90a".into()
            }
        );
        // xnack on (0x300) in e_flags but "any" in the metadata target.
        let err = parse(&patched(GFX942, 48, &0x74cu32.to_le_bytes())).unwrap_err();
        assert!(
            matches!(err, CodeObjectError::TargetMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_missing_metadata_note() {
        let at = find(GFX942, b"AMDGPU\0", 0x200).unwrap();
        // Another owner name.
        let err = parse(&patched(GFX942, at, b"AMDGPX")).unwrap_err();
        assert_eq!(err, CodeObjectError::NoMetadataNote);
        assert_eq!(
            err.to_string(),
            "no AMDGPU metadata note (owner \"AMDGPU\", type NT_AMDGPU_METADATA = 32)"
        );
        // Another note type (n_type is the 4 bytes before the name).
        let err = parse(&patched(GFX942, at - 4, &33u32.to_le_bytes())).unwrap_err();
        assert_eq!(err, CodeObjectError::NoMetadataNote);
    }

    #[test]
    fn rejects_missing_kernel_descriptor() {
        // Rename the .kd symbol in .dynstr and .strtab, but not in the metadata note (0x200..0x848).
        let mut b = GFX942.to_vec();
        let mut from = 0x848;
        while let Some(at) = find(&b, b"mfma_loop.kd", from) {
            b[at + 11] = b'x';
            from = at + 1;
        }
        let err = parse(&b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel mfma_loop has no kernel descriptor symbol mfma_loop.kd"
        );
    }

    #[test]
    fn rejects_kernel_descriptor_of_wrong_size() {
        // Patch st_size of mfma_loop.kd in .symtab (the last entry; symtab at 0xfd0, 24-byte entries,
        // entry 11, st_size at +16).
        let at = 0xfd0 + 11 * 24 + 16;
        assert_eq!(&GFX942[at..at + 8], &64u64.to_le_bytes());
        let err = parse(&patched(GFX942, at, &32u64.to_le_bytes())).unwrap_err();
        assert!(
            matches!(&err, CodeObjectError::BadKernelDescriptor { reason, .. } if reason.contains("32 bytes")),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_metadata() {
        // Truncate the MessagePack: change the note's n_descsz to 16.
        let at = find(GFX942, b"AMDGPU\0", 0x200).unwrap();
        let err = parse(&patched(GFX942, at - 8, &16u32.to_le_bytes())).unwrap_err();
        assert!(matches!(err, CodeObjectError::MetadataDecode(_)), "{err}");
        // Rename a required key.
        let key = find(GFX942, b".sgpr_count", 0x200).unwrap();
        let err = parse(&patched(GFX942, key, b".sgpr_cnt__")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid AMDGPU metadata: kernel mfma_loop has no .sgpr_count"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        for len in 0..GFX942.len() {
            assert!(
                parse(&GFX942[..len]).is_err(),
                "truncated to {len} bytes parsed"
            );
        }
    }

    #[test]
    fn flipped_bytes_never_panic() {
        for i in 0..GFX942.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = GFX942.to_vec();
                b[i] ^= mask;
                let _ = parse(&b);
            }
        }
    }

    #[test]
    fn occupancy_model() {
        // Register-limited: 512 / 128 = 4 waves; 512 / 64 = 8; 257 -> 264 -> 1; 512 -> 1.
        assert_eq!(occupancy_waves_per_simd("gfx942", 128, 32, 0, 256), Some(4));
        assert_eq!(occupancy_waves_per_simd("gfx942", 64, 32, 0, 256), Some(8));
        assert_eq!(occupancy_waves_per_simd("gfx942", 257, 32, 0, 256), Some(1));
        assert_eq!(occupancy_waves_per_simd("gfx90a", 512, 32, 0, 256), Some(1));
        assert_eq!(occupancy_waves_per_simd("gfx942", 513, 32, 0, 256), Some(0));
        // Granule of 8: 65 registers allocate 72 -> 7 waves.
        assert_eq!(occupancy_waves_per_simd("gfx942", 65, 32, 0, 256), Some(7));
        // SGPR table: > 100 SGPRs -> 7 waves.
        assert_eq!(occupancy_waves_per_simd("gfx942", 32, 102, 0, 256), Some(7));
        // LDS: 40 KiB per 256-item workgroup -> 1 workgroup per CU -> 1 wave per SIMD.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", 32, 32, 40 * 1024, 256),
            Some(1)
        );
        // 16 KiB -> 4 workgroups of 4 waves -> 4 waves per SIMD.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", 32, 32, 16 * 1024, 256),
            Some(4)
        );
        // 16 KiB with one-wave workgroups: 4 workgroups spread over the 4 SIMDs -> 1 wave each.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", 32, 32, 16 * 1024, 64),
            Some(1)
        );
        // gfx950 has 160 KiB of LDS.
        assert_eq!(
            occupancy_waves_per_simd("gfx950", 32, 32, 40 * 1024, 256),
            Some(4)
        );
        // Too much LDS or too large a workgroup cannot launch.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", 32, 32, 65 * 1024, 256),
            Some(0)
        );
        assert_eq!(occupancy_waves_per_simd("gfx942", 32, 32, 0, 2048), Some(0));
        // 1024-item workgroups (16 waves) with 128 registers: 4 waves per SIMD = one workgroup.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", 128, 32, 0, 1024),
            Some(4)
        );
        // 1024-item workgroups need 4 waves per SIMD; 3 allowed -> none fits.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", 168, 32, 0, 1024),
            Some(0)
        );
        assert_eq!(occupancy_waves_per_simd("gfx1100", 32, 32, 0, 256), None);
        // Extreme inputs do not overflow.
        assert_eq!(
            occupancy_waves_per_simd("gfx942", u32::MAX, u32::MAX, 0, 0),
            Some(0)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_mutations_never_panic(
            edits in prop::collection::vec((0..GFX942.len(), any::<u8>()), 1..16),
            truncate in prop::option::of(0..GFX942.len()),
        ) {
            let mut b = GFX942.to_vec();
            for (i, v) in edits {
                b[i] = v;
            }
            if let Some(len) = truncate {
                b.truncate(len);
            }
            let _ = parse(&b);
        }

        #[test]
        fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&b);
        }
    }
}
