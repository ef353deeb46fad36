//! nibble: an ahead-of-time compiler for FP4 weight-only-quantized GEMM kernels on AMD GPUs.
pub mod arch;
pub mod cli;
pub mod codegen;
pub mod dequant;
pub mod driver;
pub mod dsl;
pub mod inspect;
pub mod interp;
pub mod ir;
pub mod kernel;
pub mod linalg;
pub mod manifest;
pub mod model;
pub mod plan;
pub mod run;
pub mod spec;
pub mod tensors;
