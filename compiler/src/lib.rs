//! nibble: an ahead-of-time compiler for FP4 weight-only-quantized GEMM kernels on AMD GPUs.
pub mod arch;
pub mod dsl;
pub mod spec;
