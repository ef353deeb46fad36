//! The pipeline driver: reads top to bottom like the stage list.
//!
//! checked spec -> plan -> linalg module (semantic reference) -> GPU kernel IR -> dequant pass -> cleanup ->
//! rocdl/LLVM -> code object + manifest.

use std::collections::BTreeSet;

use melior::ir::{operation::OperationLike, Module};
use nibble_runtime::manifest::Manifest;
use thiserror::Error;

use crate::arch::Arch;
use crate::codegen::{self, CodegenError};
use crate::ir::IrError;
use crate::plan::{self, Plan, PlanError};
use crate::spec::KernelSpec;
use crate::{dequant, kernel, linalg, manifest};

/// Intermediate stages a user can ask to see (`--emit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Linalg,
    Gpu,
    Dequant,
    Llvm,
    Isa,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Linalg, Stage::Gpu, Stage::Dequant, Stage::Llvm, Stage::Isa];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Linalg => "linalg",
            Stage::Gpu => "gpu",
            Stage::Dequant => "dequant",
            Stage::Llvm => "llvm",
            Stage::Isa => "isa",
        }
    }

    pub fn from_name(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s)
    }

    /// File extension of the dump.
    pub fn extension(self) -> &'static str {
        match self {
            Stage::Linalg | Stage::Gpu | Stage::Dequant => "mlir",
            Stage::Llvm => "ll",
            Stage::Isa => "s",
        }
    }
}

#[derive(Debug, Error)]
pub enum CompileError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("kernel {kernel} for {arch}: {source}")]
    Ir {
        kernel: String,
        arch: String,
        #[source]
        source: IrError,
    },
    #[error("kernel {kernel} for {arch}: {source}")]
    Codegen {
        kernel: String,
        arch: String,
        #[source]
        source: CodegenError,
    },
}

/// Everything compiling one kernel for one arch produced.
pub struct KernelOutput {
    pub plan: Plan,
    pub manifest: Manifest,
    pub hsaco: Vec<u8>,
    /// Requested stage dumps, in stage order.
    pub dumps: Vec<(Stage, String)>,
}

/// Builds the GPU module up to the IR the interpreter executes (after the dequant pass and cleanup).
pub fn gpu_module(plan: &Plan) -> Result<Module<'static>, IrError> {
    let mut module = kernel::build(plan)?;
    dequant::run(&module, plan)?;
    codegen::run_pipeline(&mut module, codegen::CLEANUP).map_err(|e| IrError::Build {
        op: "cleanup".into(),
        message: e.to_string(),
    })?;
    Ok(module)
}

pub fn compile_kernel(spec: &KernelSpec, arch: Arch, emit: &BTreeSet<Stage>) -> Result<KernelOutput, CompileError> {
    let plan = plan::plan(spec, arch)?;
    let ir_err = |source: IrError| CompileError::Ir {
        kernel: spec.name.clone(),
        arch: arch.name().to_string(),
        source,
    };
    let mut dumps = vec![];
    if emit.contains(&Stage::Linalg) {
        let m = linalg::build(&plan).map_err(ir_err)?;
        dumps.push((Stage::Linalg, m.as_operation().to_string()));
    }
    let mut module = kernel::build(&plan).map_err(ir_err)?;
    if emit.contains(&Stage::Gpu) {
        dumps.push((Stage::Gpu, module.as_operation().to_string()));
    }
    dequant::run(&module, &plan).map_err(ir_err)?;
    let cg_err = |source: CodegenError| CompileError::Codegen {
        kernel: spec.name.clone(),
        arch: arch.name().to_string(),
        source,
    };
    codegen::run_pipeline(&mut module, codegen::CLEANUP).map_err(cg_err)?;
    if emit.contains(&Stage::Dequant) {
        dumps.push((Stage::Dequant, module.as_operation().to_string()));
    }
    let art = codegen::compile(&mut module, arch).map_err(cg_err)?;
    if emit.contains(&Stage::Llvm) {
        dumps.push((Stage::Llvm, art.llvm_ir.clone()));
    }
    if emit.contains(&Stage::Isa) {
        dumps.push((Stage::Isa, art.isa.clone()));
    }
    let manifest = manifest::from_plan(&plan);
    Ok(KernelOutput {
        plan,
        manifest,
        hsaco: art.hsaco,
        dumps,
    })
}
