//! The pipeline driver: reads top to bottom like the stage list.
//!
//! checked spec -> plan -> linalg module (semantic reference) -> GPU kernel IR -> dequant pass -> cleanup ->
//! rocdl/LLVM -> code object + manifest.

use std::collections::BTreeSet;

use melior::ir::Module;

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
    pub const ALL: [Stage; 5] = [
        Stage::Linalg,
        Stage::Gpu,
        Stage::Dequant,
        Stage::Llvm,
        Stage::Isa,
    ];

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
    /// The GPU module after the dequant pass and cleanup, as MLIR text (the interpreter's input).
    pub kernel_ir: String,
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

pub fn compile_kernel(
    spec: &KernelSpec,
    arch: Arch,
    emit: &BTreeSet<Stage>,
) -> Result<KernelOutput, CompileError> {
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
    let kernel_ir = module.as_operation().to_string();
    if emit.contains(&Stage::Dequant) {
        dumps.push((Stage::Dequant, kernel_ir.clone()));
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
        kernel_ir,
        dumps,
    })
}

/// One kernel compiled for one arch and written to disk.
#[derive(Debug, Clone)]
pub struct Written {
    pub kernel: String,
    pub arch: Arch,
    pub hsaco: std::path::PathBuf,
    pub manifest: std::path::PathBuf,
    pub dumps: Vec<std::path::PathBuf>,
    pub hsaco_bytes: usize,
    pub elements_per_lane_iter: u32,
    pub compile_seconds: f64,
}

#[derive(Debug, Error)]
pub enum OutputError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("output directory {0} exists and is not a directory")]
    NotADirectory(String),
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so an interrupted or failed run never
/// leaves a truncated code object or manifest behind.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), OutputError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| OutputError::Io {
        path: path.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

/// Compiles every kernel of `kernels` for each of `targets` (or the kernel's own targets when `targets` is empty)
/// into `out_dir` as `<kernel>.<arch>.hsaco` + `<kernel>.<arch>.json` (+ `<kernel>.<arch>.<stage>.<ext>` dumps).
pub fn compile_to_dir(
    kernels: &[KernelSpec],
    targets: &[Arch],
    out_dir: &std::path::Path,
    emit: &BTreeSet<Stage>,
    m_range: Option<(u32, u32)>,
) -> Result<Vec<Written>, OutputError> {
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(OutputError::NotADirectory(out_dir.display().to_string()));
    }
    // Plan everything first: a kernel that cannot target an arch is reported before any file is written.
    let mut jobs = vec![];
    for spec in kernels {
        let archs: Vec<Arch> = if targets.is_empty() {
            spec.targets.clone()
        } else {
            targets.to_vec()
        };
        for arch in archs {
            plan::plan(spec, arch).map_err(CompileError::from)?;
            jobs.push((spec, arch));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let mut written = vec![];
    for (spec, arch) in jobs {
        written.push(compile_one_to_dir(
            spec, arch, out_dir, emit, m_range, None,
        )?);
    }
    Ok(written)
}

/// Compiles one kernel for one arch into `out_dir` (which must exist). `m_range` narrows the M range the manifest
/// declares (a kernel bundle with several kernels per shape selects among them by M); it is clamped to what the
/// plan allows. `tuned` is the measurement `nibble tune` chose the tiling by, recorded in the manifest.
pub fn compile_one_to_dir(
    spec: &KernelSpec,
    arch: Arch,
    out_dir: &std::path::Path,
    emit: &BTreeSet<Stage>,
    m_range: Option<(u32, u32)>,
    tuned: Option<nibble_runtime::manifest::Tuned>,
) -> Result<Written, OutputError> {
    let start = std::time::Instant::now();
    let mut out = compile_kernel(spec, arch, emit)?;
    out.manifest.tuned = tuned;
    if let Some((lo, hi)) = m_range {
        let s = &mut out.manifest.shapes;
        s.m_min = lo.max(s.m_min);
        s.m_max = hi.min(s.m_max);
    }
    let compile_seconds = start.elapsed().as_secs_f64();
    let stem = manifest::stem(&out.plan);
    let hsaco = out_dir.join(&out.manifest.code_object);
    let json = out_dir.join(format!("{stem}.json"));
    write_atomically(&hsaco, &out.hsaco)?;
    write_atomically(
        &out_dir.join(&out.manifest.kernel_ir),
        out.kernel_ir.as_bytes(),
    )?;
    // The manifest is written last: a complete manifest means the files it names are complete too.
    write_atomically(&json, out.manifest.to_json().as_bytes())?;
    let mut dumps = vec![];
    for (stage, text) in &out.dumps {
        let path = out_dir.join(format!("{stem}.{}.{}", stage.name(), stage.extension()));
        write_atomically(&path, text.as_bytes())?;
        dumps.push(path);
    }
    Ok(Written {
        kernel: spec.name.clone(),
        arch,
        hsaco,
        manifest: json,
        dumps,
        hsaco_bytes: out.hsaco.len(),
        elements_per_lane_iter: out.plan.elements_per_lane_iter,
        compile_seconds,
    })
}
