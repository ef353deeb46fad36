//! Manifest stage: the plan, written down for the runtime (`nibble_runtime::manifest`).

use nibble_runtime::manifest::{self as m, Manifest};

use crate::plan::Plan;

pub fn compiler_version() -> String {
    format!("nibble {}", env!("CARGO_PKG_VERSION"))
}

/// File stem of a kernel's outputs: `<kernel>.<arch>`.
pub fn stem(plan: &Plan) -> String {
    format!("{}.{}", plan.kernel, plan.arch.name())
}

/// File extension of the code object: an AMDGPU ELF code object, or PTX text for NVIDIA targets.
pub fn code_object_extension(arch: crate::arch::Arch) -> &'static str {
    if arch.is_nvidia() {
        "ptx"
    } else {
        "hsaco"
    }
}

pub fn from_plan(p: &Plan) -> Manifest {
    let t = &p.tiling;
    let e = &p.format.element;
    Manifest {
        schema_version: m::SCHEMA_VERSION,
        compiler_version: compiler_version(),
        source_hash: p.source_hash.clone(),
        kernel: p.kernel.clone(),
        symbol: p.symbol.clone(),
        arch: p.arch.name().to_string(),
        code_object: format!("{}.{}", stem(p), code_object_extension(p.arch)),
        kernel_ir: format!("{}.kernel.mlir", stem(p)),
        shapes: m::Shapes {
            n: p.n,
            k: p.k,
            m_min: 1,
            m_max: p.m_max,
            x_dtype: p.x.name().to_string(),
            y_dtype: p.y.name().to_string(),
            bias_dtype: p.bias.map(|b| b.name().to_string()),
        },
        format: m::Format {
            name: p.format.name.clone(),
            element: m::Element {
                name: e.name.clone(),
                exp_bits: e.exp_bits,
                man_bits: e.man_bits,
                bias: e.bias,
            },
            scale: p.format.scale.name().to_string(),
            group: p.format.group,
            tensor_scale: p.format.tensor_scale,
        },
        tiling: m::Tiling {
            tile_m: t.tile_m,
            tile_n: t.tile_n,
            tile_k: t.tile_k,
            waves_m: t.waves_m,
            waves_n: t.waves_n,
            waves_k: t.waves_k,
            mma: t.mma.name().to_string(),
            stages: t.stages,
        },
        launch: m::Launch {
            block: [p.threads, 1, 1],
            grid: p.grid,
            lds_bytes: if p.dynamic_lds { 0 } else { p.lds_bytes },
            dynamic_lds_bytes: if p.dynamic_lds { p.lds_bytes } else { 0 },
        },
        args: p.args.clone(),
        kernarg_bytes: p.kernarg_bytes,
        weight_layout: p.weight_layout.clone(),
        scale_layout: p.scale_layout.clone(),
        tuned: None,
    }
}
