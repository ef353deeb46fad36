//! The single integration-test binary: one module per area, so MLIR is linked once.

mod dequant;
mod dsl;
mod inspect;
mod interp;
mod pipeline;
mod plan;
