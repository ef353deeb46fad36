//! Target architecture tables. Data, not code: every arch-dependent decision reads these.

use serde::Serialize;

use crate::spec::MmaAtom;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gfx90a,
    Gfx942,
    Sm80,
    Sm90,
    /// sm_90 with its arch-specific instructions (`wgmma`): PTX `.target sm_90a`, runs on compute capability 9.0 only.
    Sm90a,
}

/// GPU vendor family: decides the kernel builder, the dequant route and the codegen backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// CDNA: wave64, MFMA, buffer loads, hsaco through the AMDGPU backend and ld.lld.
    Amd,
    /// Ampere/Hopper: warp32, `mma.sync`, PTX through the NVPTX backend.
    Nvidia,
}

/// SIMDs per CU on the AMD targets, sub-partitions (schedulers) per SM on the NVIDIA ones: four on every target.
pub const SIMDS_PER_CU: u32 = 4;

/// Per-arch facts (../shared/reference/targets.md, mfma-layouts.md).
#[derive(Debug, Clone, Copy)]
pub struct ArchInfo {
    pub arch: Arch,
    pub name: &'static str,
    pub wave_size: u32,
    pub lds_bytes: u32,
    /// VGPR + AGPR per lane of a SIMD.
    pub regs_per_simd_lane: u32,
    /// Most VGPRs (or AGPRs) one wave can address.
    pub max_vgprs: u32,
    pub max_waves_per_simd: u32,
    pub cus: u32,
    pub mfma_atoms: &'static [MmaAtom],
    /// Cycles of one MFMA per atom (16x16x16, 32x32x8); on NVIDIA, of one m16n8k16 `mma.sync` (assumed).
    pub mfma_cycles: [u32; 2],
    pub hbm_tb_s: f64,
    pub bf16_tflops: f64,
    pub clock_ghz: f64,
    pub vendor: Vendor,
    /// Cycles a SIMD (SM sub-partition) spends issuing one wave-wide integer/logic instruction.
    pub valu_issue_cycles: f64,
    /// Last-level cache that re-reads of weights and activations across tiles hit (vendor figures, assumed by the
    /// cost model): capacity in MB and bandwidth in TB/s; 0 where the model does not use it.
    pub llc_mb: f64,
    pub llc_tb_s: f64,
}

const ATOMS: &[MmaAtom] = &[MmaAtom::M16N16K16, MmaAtom::M32N32K8];

impl ArchInfo {
    /// The tokens (rows of x) one MMA atom covers, which a wave's token tile must be a whole number of: the DSL
    /// atom's M on AMD; 8 on NVIDIA, whose m16n8k16 takes the weights as A and 8 tokens as B.
    pub fn token_unit(&self, atom: MmaAtom) -> u32 {
        match self.vendor {
            Vendor::Nvidia => 8,
            Vendor::Amd => atom.m(),
        }
    }
}

/// H100 (sm_90), also the base of sm_90a.
const SM90: ArchInfo = ArchInfo {
    arch: Arch::Sm90,
    name: "sm_90",
    wave_size: 32,
    lds_bytes: 227 * 1024,
    regs_per_simd_lane: 512,
    max_vgprs: 255,
    max_waves_per_simd: 16,
    cus: 132,
    mfma_atoms: ATOMS,
    mfma_cycles: [8, 8],
    hbm_tb_s: 3.35,
    bf16_tflops: 990.0,
    clock_ghz: 1.83,
    vendor: Vendor::Nvidia,
    valu_issue_cycles: 2.0,
    // Not modelled on NVIDIA: its tilings were chosen by measurement on the H100.
    llc_mb: 0.0,
    llc_tb_s: 0.0,
};

pub const ARCHES: &[ArchInfo] = &[
    ArchInfo {
        arch: Arch::Gfx90a,
        name: "gfx90a",
        wave_size: 64,
        lds_bytes: 64 * 1024,
        regs_per_simd_lane: 512,
        max_vgprs: 256,
        max_waves_per_simd: 8,
        cus: 110,
        mfma_atoms: ATOMS,
        mfma_cycles: [32, 64],
        hbm_tb_s: 1.6,
        bf16_tflops: 191.5,
        clock_ghz: 1.7,
        vendor: Vendor::Amd,
        valu_issue_cycles: 4.0,
        // L2 per GCD: 8 MB, 16 channels x 128 bytes per clock.
        llc_mb: 8.0,
        llc_tb_s: 3.5,
    },
    ArchInfo {
        arch: Arch::Gfx942,
        name: "gfx942",
        wave_size: 64,
        lds_bytes: 64 * 1024,
        regs_per_simd_lane: 512,
        max_vgprs: 256,
        max_waves_per_simd: 8,
        cus: 304,
        mfma_atoms: ATOMS,
        mfma_cycles: [16, 32],
        hbm_tb_s: 5.3,
        bf16_tflops: 1307.0,
        clock_ghz: 2.1,
        vendor: Vendor::Amd,
        valu_issue_cycles: 4.0,
        // AMD Infinity Cache (MALL): 256 MB, 17.2 TB/s peak.
        llc_mb: 256.0,
        llc_tb_s: 17.2,
    },
    // NVIDIA: a "SIMD" is an SM sub-partition (4 per SM, 16K 32-bit registers = 512 per lane slot, 16 warps); the
    // DSL's MFMA atoms map to m16n8k16 `mma.sync` (2 or 4 per atom); integer/logic instructions issue at 16 lanes per
    // cycle per sub-partition. `lds_bytes` is the shared memory a block may opt into (227 KiB on sm_90, 163 KiB on
    // sm_80); above 48 KiB it is dynamic shared memory (`Plan::dynamic_lds`).
    ArchInfo {
        arch: Arch::Sm80,
        name: "sm_80",
        wave_size: 32,
        lds_bytes: 163 * 1024,
        regs_per_simd_lane: 512,
        max_vgprs: 255,
        max_waves_per_simd: 16,
        cus: 108,
        mfma_atoms: ATOMS,
        mfma_cycles: [16, 16],
        hbm_tb_s: 2.0,
        bf16_tflops: 312.0,
        clock_ghz: 1.41,
        vendor: Vendor::Nvidia,
        valu_issue_cycles: 2.0,
        // Not modelled on NVIDIA: its tilings were chosen by measurement on the H100.
        llc_mb: 0.0,
        llc_tb_s: 0.0,
    },
    SM90,
    // The same chip with its arch-specific instructions (`wgmma`) enabled.
    ArchInfo {
        arch: Arch::Sm90a,
        name: "sm_90a",
        ..SM90
    },
];

impl Arch {
    pub fn info(self) -> &'static ArchInfo {
        // The table has one entry per variant, in variant order.
        &ARCHES[self as usize]
    }
    pub fn name(self) -> &'static str {
        self.info().name
    }
    pub fn vendor(self) -> Vendor {
        self.info().vendor
    }
    pub fn is_nvidia(self) -> bool {
        self.vendor() == Vendor::Nvidia
    }
    pub fn from_name(name: &str) -> Option<Arch> {
        ARCHES.iter().find(|a| a.name == name).map(|a| a.arch)
    }
    pub fn all_names() -> Vec<&'static str> {
        ARCHES.iter().map(|a| a.name).collect()
    }
}
