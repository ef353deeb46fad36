//! `nibble compile`, `nibble compile-model` and `nibble inspect`: commands that write or read code objects.

use std::io::Write;
use std::path::Path;

use crate::arch::Arch;
use crate::driver::{self, Stage};
use crate::spec::CheckedFile;

pub(super) fn compile_model_cmd(
    dir: &Path,
    targets: &[Arch],
    out_dir: &Path,
    emit_nib: bool,
    jobs: Option<usize>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let ckpt = match nibble_runtime::checkpoint::Checkpoint::open(dir) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return 1;
        }
    };
    let layers: Vec<(String, u32, u32, Option<String>)> = ckpt
        .linear_layers()
        .into_iter()
        .map(|l| {
            let bias = l.has_bias.then(|| {
                ckpt.tensor(&format!("{}.bias", l.prefix))
                    .map_or("bf16", |t| {
                        if t.dtype == safetensors::Dtype::F16 {
                            "f16"
                        } else {
                            "bf16"
                        }
                    })
                    .to_string()
            });
            (l.prefix, l.n as u32, l.k as u32, bias)
        })
        .collect();
    if layers.is_empty() {
        let _ = writeln!(
            stderr,
            "error: {}: no quantized linear layers found",
            dir.display()
        );
        return 1;
    }
    let shapes = crate::model::distinct_shapes(&layers);
    let format = ckpt.format().name();
    let _ = writeln!(
        stdout,
        "{}: {} quantized linear layers ({format}), {} distinct shapes",
        dir.display(),
        layers.len(),
        shapes.len()
    );
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} kernels {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    let result =
        crate::model::compile_model(&shapes, format, targets, out_dir, emit_nib, jobs, &progress);
    bar.finish_and_clear();
    match result {
        Ok(out) => {
            for w in &out.written {
                let _ = writeln!(
                    stdout,
                    "  {:<28} {:<7} {}",
                    w.kernel,
                    w.arch.name(),
                    w.hsaco.display()
                );
            }
            let _ = writeln!(
                stdout,
                "wrote {} kernels{} to {}",
                out.written.len(),
                if emit_nib {
                    format!(" and {} .nib files", out.nib_files.len())
                } else {
                    String::new()
                },
                out_dir.display()
            );
            0
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            1
        }
    }
}

pub(super) fn inspect(
    file: &Path,
    json: bool,
    elements: Option<u32>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot read {}: {e}", file.display());
            return 1;
        }
    };
    if !bytes.starts_with(b"\x7fELF") && bytes.windows(11).any(|w| w == b".target sm_") {
        let _ = writeln!(
            stderr,
            "error: {} is PTX: nibble inspect reads AMDGPU code objects; registers and spills of PTX are decided by \
             the CUDA driver's JIT at load time (docs/PERFORMANCE.md shows ptxas figures)",
            file.display()
        );
        return 1;
    }
    // The manifest next to the code object knows how many weight elements a main-loop iteration dequantizes.
    let elements = elements.or_else(|| {
        let text = std::fs::read_to_string(file.with_extension("json")).ok()?;
        let m = nibble_runtime::manifest::Manifest::from_json("", &text).ok()?;
        Some(m.tiling.tile_n / m.tiling.waves_n * m.tiling.tile_k / 64)
    });
    match crate::inspect::inspect(&bytes, elements) {
        Ok(report) => {
            let _ = if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => writeln!(stdout, "{s}"),
                    Err(e) => writeln!(stderr, "error: {e}"),
                }
            } else {
                write!(stdout, "{}", report.render_text())
            };
            0
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {}: {e}", file.display());
            1
        }
    }
}

pub(super) fn compile(
    checked: &CheckedFile,
    targets: &[Arch],
    out_dir: &Path,
    emit: &[String],
    m_range: Option<(u32, u32)>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    if let Some(e) = super::unlisted_target(checked, targets) {
        let _ = writeln!(stderr, "error: {e}");
        return 1;
    }
    let emit: std::collections::BTreeSet<Stage> =
        emit.iter().filter_map(|s| Stage::from_name(s)).collect();
    match driver::compile_to_dir(&checked.kernels, targets, out_dir, &emit, m_range) {
        Ok(written) => {
            let _ = writeln!(
                stdout,
                "{:<24} {:<7} {:>8} {:>5} {:>4} {:>9} {:>8}  code object",
                "kernel", "arch", "bytes", "vgpr", "occ", "valu/elem", "ms"
            );
            for w in &written {
                // The table reports what the code object says; a failure to inspect it is a compiler bug.
                let (vgpr, occ, valu) = std::fs::read(&w.hsaco)
                    .ok()
                    .and_then(|b| crate::inspect::inspect(&b, Some(w.elements_per_lane_iter)).ok())
                    .and_then(|r| r.kernels.into_iter().next())
                    .map(|k| {
                        (
                            k.vgprs.to_string(),
                            k.occupancy_waves_per_simd
                                .map_or("?".into(), |o| o.to_string()),
                            k.valu_per_weight_element
                                .map_or("-".into(), |v| format!("{v:.3}")),
                        )
                    })
                    .unwrap_or_else(|| ("?".into(), "?".into(), "?".into()));
                let _ = writeln!(
                    stdout,
                    "{:<24} {:<7} {:>8} {:>5} {:>4} {:>9} {:>8.1}  {}",
                    w.kernel,
                    w.arch.name(),
                    w.hsaco_bytes,
                    vgpr,
                    occ,
                    valu,
                    w.compile_seconds * 1e3,
                    w.hsaco.display()
                );
            }
            let _ = writeln!(
                stdout,
                "wrote {} code objects with manifests to {}",
                written.len(),
                out_dir.display()
            );
            0
        }
        Err(e) => {
            // Stage errors carry their causes in their message.
            let _ = writeln!(stderr, "error: {e}");
            1
        }
    }
}
