//! The single integration-test binary: one module per area, so MLIR is linked once.

mod cli_run;
mod dequant;
mod dequant_nv;
mod dsl;
mod fixtures;
mod inspect;
mod interp;
mod model;
mod numerics;
mod pipeline;
mod pipeline_nv;
mod plan;
