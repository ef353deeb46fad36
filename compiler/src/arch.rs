//! Target architecture tables. Data, not code: every arch-dependent decision reads these.

use serde::Serialize;

use crate::spec::MmaAtom;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gfx90a,
    Gfx942,
}

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
    /// Cycles of one MFMA per atom (16x16x16, 32x32x8).
    pub mfma_cycles: [u32; 2],
    pub hbm_tb_s: f64,
    pub bf16_tflops: f64,
    pub clock_ghz: f64,
}

const ATOMS: &[MmaAtom] = &[MmaAtom::M16N16K16, MmaAtom::M32N32K8];

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
    pub fn from_name(name: &str) -> Option<Arch> {
        ARCHES.iter().find(|a| a.name == name).map(|a| a.arch)
    }
    pub fn all_names() -> Vec<&'static str> {
        ARCHES.iter().map(|a| a.name).collect()
    }
}
