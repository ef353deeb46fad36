//! nibble's runtime: manifests, code-object inspection, reference numerics and (later) HIP execution.
//! Architecture invariant: this crate never depends on MLIR or LLVM.

pub mod bundle;
pub mod checkpoint;
pub mod codeobj;
pub mod cuda;
pub mod hip;
pub mod launch;
pub mod linear;
pub mod linear_cuda;
pub mod linear_hip;
pub mod manifest;
pub mod numerics;
pub mod ptx;
