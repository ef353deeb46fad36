//! Codegen stage: the dequantized GPU module is lowered to the rocdl/LLVM dialects, translated to LLVM IR,
//! optimized and compiled by LLVM's AMDGPU backend (through inkwell) and linked by `ld.lld` into a code object.
//! No ROCm installation is involved: the only external program is `ld.lld` from the LLVM 22 toolchain.

use std::path::PathBuf;
use std::process::Command;

use inkwell::{
    context::Context as LlvmContext,
    module::Module as LlvmModule,
    passes::PassBuilderOptions,
    targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetTriple},
    OptimizationLevel,
};
use melior::{
    ir::{operation::OperationLike, BlockLike, Module},
    pass::PassManager,
    utility::parse_pass_pipeline,
};
use thiserror::Error;

use crate::arch::Arch;
use crate::ir;

#[derive(Debug, Error)]
pub enum CodegenError {
    #[error("MLIR pass pipeline `{pipeline}` failed: {message}")]
    Pipeline { pipeline: String, message: String },
    #[error("the module has no gpu.module to translate")]
    NoGpuModule,
    #[error("translation of the GPU module to LLVM IR failed")]
    Translate,
    #[error("LLVM: {0}")]
    Llvm(String),
    #[error("linker: {0}")]
    Link(String),
}

/// What codegen produces for one arch.
pub struct Artifacts {
    /// The linked code object (ELF shared object for amdgcn-amd-amdhsa).
    pub hsaco: Vec<u8>,
    /// Optimized LLVM IR, for `--emit llvm`.
    pub llvm_ir: String,
    /// The backend's assembly, for `--emit isa`.
    pub isa: String,
}

/// Runs a textual pass pipeline on the module (pipeline strings are the one place MLIR text is used).
pub fn run_pipeline(module: &mut Module<'static>, pipeline: &str) -> Result<(), CodegenError> {
    let ctx = ir::context();
    let pm = PassManager::new(ctx);
    let err = |message: String| CodegenError::Pipeline {
        pipeline: pipeline.to_string(),
        message,
    };
    parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline)
        .map_err(|e| err(e.to_string()))?;
    pm.run(module).map_err(|e| err(e.to_string()))
}

/// Canonical cleanup run on the GPU module after the dequant pass; the interpreter runs the IR at this point.
pub const CLEANUP: &str = "builtin.module(gpu.module(canonicalize,cse))";

pub fn lowering_pipeline(arch: Arch) -> String {
    if arch.is_nvidia() {
        return "builtin.module(gpu.module(convert-scf-to-cf,convert-gpu-to-nvvm{index-bitwidth=32 \
                use-bare-ptr-memref-call-conv=true}),reconcile-unrealized-casts)"
            .to_string();
    }
    format!(
        "builtin.module(gpu.module(convert-scf-to-cf,convert-gpu-to-rocdl{{chipset={} index-bitwidth=32 \
         use-bare-ptr-memref-call-conv=true}}),reconcile-unrealized-casts)",
        arch.name()
    )
}

/// Lowers the cleaned-up GPU module to the LLVM dialect and compiles it.
pub fn compile(module: &mut Module<'static>, arch: Arch) -> Result<Artifacts, CodegenError> {
    run_pipeline(module, &lowering_pipeline(arch))?;
    let gpu = find_gpu_module(module).ok_or(CodegenError::NoGpuModule)?;

    if arch.is_nvidia() {
        Target::initialize_nvptx(&InitializationConfig::default());
    } else {
        Target::initialize_amd_gpu(&InitializationConfig::default());
    }
    let llvm = LlvmContext::create();
    // SAFETY: `gpu` is a live op of `module`; the returned module belongs to `llvm`, which outlives it here.
    let raw = unsafe {
        mlir_sys::mlirTranslateModuleToLLVMIR(gpu, llvm.raw() as mlir_sys::LLVMContextRef)
    };
    if raw.is_null() {
        return Err(CodegenError::Translate);
    }
    // SAFETY: a non-null module created in `llvm`'s context; inkwell takes ownership.
    let lm: LlvmModule =
        unsafe { LlvmModule::new(raw as inkwell::llvm_sys::prelude::LLVMModuleRef) };

    let (triple, features) = if arch.is_nvidia() {
        // PTX 8.0 is the first ISA version with sm_90; it also covers sm_80.
        (TargetTriple::create("nvptx64-nvidia-cuda"), "+ptx80")
    } else {
        (TargetTriple::create("amdgcn-amd-amdhsa"), "")
    };
    let target = Target::from_triple(&triple).map_err(|e| CodegenError::Llvm(e.to_string()))?;
    let tm = target
        .create_target_machine(
            &triple,
            arch.name(),
            features,
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| CodegenError::Llvm(format!("no target machine for {}", arch.name())))?;
    // MLIR lowers `gpu.dynamic_shared_memory` to an internal zero-length shared array, which NVPTX emits as a
    // one-byte static variable; CUDA's dynamic shared memory is an `.extern .shared` array of unknown size.
    let mut g = lm.get_first_global();
    while let Some(global) = g {
        if global
            .get_name()
            .to_bytes()
            .starts_with(b"__dynamic_shmem__")
        {
            global.set_linkage(inkwell::module::Linkage::External);
            // SAFETY: a global of `lm`; a null initializer turns the definition into a declaration.
            unsafe {
                inkwell::llvm_sys::core::LLVMSetInitializer(
                    inkwell::values::AsValueRef::as_value_ref(&global),
                    std::ptr::null_mut(),
                );
            }
        }
        g = global.get_next_global();
    }
    lm.set_triple(&triple);
    lm.set_data_layout(&tm.get_target_data().get_data_layout());
    lm.verify().map_err(|e| CodegenError::Llvm(e.to_string()))?;
    lm.run_passes("default<O3>", &tm, PassBuilderOptions::create())
        .map_err(|e| CodegenError::Llvm(e.to_string()))?;
    let llvm_ir = lm.print_to_string().to_string();
    // Code generation rewrites the IR it runs on (control-flow annotation inserts amdgcn.if/else intrinsics), so
    // the assembly listing is produced from a copy and the object from the original.
    let listing = lm.clone();
    let isa = tm
        .write_to_memory_buffer(&listing, FileType::Assembly)
        .map_err(|e| CodegenError::Llvm(e.to_string()))?;
    let isa = String::from_utf8_lossy(isa.as_slice()).into_owned();
    if arch.is_nvidia() {
        // The code object is the PTX text itself: the CUDA driver JIT-compiles it for the device at load time.
        return Ok(Artifacts {
            hsaco: isa.clone().into_bytes(),
            llvm_ir,
            isa,
        });
    }
    let obj = tm
        .write_to_memory_buffer(&lm, FileType::Object)
        .map_err(|e| CodegenError::Llvm(e.to_string()))?;
    let hsaco = link(obj.as_slice())?;
    Ok(Artifacts {
        hsaco,
        llvm_ir,
        isa,
    })
}

fn find_gpu_module(module: &Module<'static>) -> Option<mlir_sys::MlirOperation> {
    let mut op = module.body().first_operation();
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok("gpu.module") {
            return Some(o.to_raw());
        }
        op = o.next_in_block();
    }
    None
}

/// `ld.lld` from the LLVM 22 toolchain: `$NIBBLE_LLD`, else `$LLVM_SYS_221_PREFIX/bin/ld.lld`, else the Debian path,
/// else `ld.lld` on PATH.
pub fn lld_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NIBBLE_LLD") {
        return PathBuf::from(p);
    }
    let mut candidates = vec![];
    if let Some(prefix) = option_env!("LLVM_SYS_221_PREFIX") {
        candidates.push(PathBuf::from(prefix).join("bin/ld.lld"));
    }
    candidates.push(PathBuf::from("/usr/lib/llvm-22/bin/ld.lld"));
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("ld.lld"))
}

fn link(object: &[u8]) -> Result<Vec<u8>, CodegenError> {
    let dir =
        tempfile::tempdir().map_err(|e| CodegenError::Link(format!("temporary directory: {e}")))?;
    let obj = dir.path().join("kernel.o");
    let out = dir.path().join("kernel.hsaco");
    std::fs::write(&obj, object)
        .map_err(|e| CodegenError::Link(format!("writing {}: {e}", obj.display())))?;
    let lld = lld_path();
    let output = Command::new(&lld)
        .arg("-shared")
        .arg("--build-id=none")
        .arg(&obj)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| {
            CodegenError::Link(format!(
                "cannot run {}: {e} (AMD code objects are linked with it: install lld-22 or set NIBBLE_LLD; sm_* targets need no linker, e.g. --target sm_90)",
                lld.display()
            ))
        })?;
    if !output.status.success() {
        return Err(CodegenError::Link(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    std::fs::read(&out).map_err(|e| CodegenError::Link(format!("reading {}: {e}", out.display())))
}
