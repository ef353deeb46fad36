//! MLIR plumbing shared by the IR-building stages: one context per thread and a small typed op emitter.
//!
//! Every op is created through melior's `OperationBuilder`, so a malformed op is a Rust error where it is built
//! (`IrError::Build`) and the finished module is verified before it leaves a stage.

pub mod emit;

pub use emit::{Emitter, IrError};

use melior::{
    dialect::DialectRegistry,
    utility::{register_all_dialects, register_all_llvm_translations, register_all_passes},
    Context,
};

thread_local! {
    // One context per thread, created on first use and kept for the thread's lifetime: building a context registers
    // every dialect and translation, which costs far more than the kernels we build in it.
    static CONTEXT: &'static Context = {
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new();
        context.append_dialect_registry(&registry);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        register_all_passes();
        // Compilation of one kernel is sequential; MLIR's own thread pool would only add overhead and nondeterminism.
        context.enable_multi_threading(false);
        Box::leak(Box::new(context))
    };
}

/// The calling thread's MLIR context.
pub fn context() -> &'static Context {
    CONTEXT.with(|c| *c)
}

/// A string attribute in the thread's context (for comparing symbol names).
pub fn context_string(s: &str) -> melior::ir::Attribute<'static> {
    melior::ir::attribute::StringAttribute::new(context(), s).into()
}
