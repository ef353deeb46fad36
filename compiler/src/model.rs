//! `compile-model`: from a checkpoint's distinct quantized linear shapes to a directory of compiled kernels, one
//! decode-shaped and one prefill-shaped kernel per shape and vendor (sm_90a gets its own prefill kernel, on the wgmma
//! route), written as `.nib` text and compiled through the same front
//! end and pipeline as user files (so generated kernels obey every check), in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use thiserror::Error;

use crate::arch::Arch;
use crate::driver::{self, CompileError, OutputError, Stage};
use crate::plan;
use crate::spec::{KernelSpec, Staging};

/// The largest M a decode-shaped kernel serves; prefill-shaped kernels take larger M.
pub const DECODE_MAX_M: u32 = 32;

/// One distinct linear-layer shape of a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LayerShape {
    pub n: u32,
    pub k: u32,
    /// The bias element type (`bf16` or `f16`), if the layers have a bias.
    pub bias: Option<String>,
    /// Names of the layers with this shape (for the generated file's comment).
    pub layers: Vec<String>,
}

/// Groups layers `(name, n, k, bias dtype)` by shape, in a deterministic order.
pub fn distinct_shapes(layers: &[(String, u32, u32, Option<String>)]) -> Vec<LayerShape> {
    let mut by: BTreeMap<(u32, u32, Option<String>), Vec<String>> = BTreeMap::new();
    for (name, n, k, b) in layers {
        by.entry((*n, *k, b.clone()))
            .or_default()
            .push(name.clone());
    }
    by.into_iter()
        .map(|((n, k, bias), mut layers)| {
            layers.sort();
            LayerShape { n, k, bias, layers }
        })
        .collect()
}

/// A generated kernel: its name, `.nib` source and the M range it serves.
#[derive(Debug, Clone)]
pub struct GeneratedKernel {
    pub name: String,
    pub source: String,
    pub m_range: (u32, u32),
}

/// The largest M the 8-token NVIDIA decode kernel serves.
pub const DECODE8_MAX_M: u32 = 8;

/// The `.nib` lines of the NVIDIA decode tiling for M tokens (`plan::nvidia_decode_rule`, which depends on the SM
/// count): where the targets' rules differ, the one with the shorter K tile (the one that leaves no half-empty wave).
fn nvidia_decode_text(n: u32, k: u32, m: u32, targets: &[Arch]) -> Option<String> {
    let (t, staging) = targets
        .iter()
        .filter_map(|a| plan::nvidia_decode_rule(n, k, m, *a))
        .min_by_key(|(t, _)| t.tile_k)?;
    let waves_k = if t.waves_k > 1 {
        format!(" k={}", t.waves_k)
    } else {
        String::new()
    };
    let staging = if staging == Staging::Async {
        "  staging async\n"
    } else {
        ""
    };
    Some(format!(
        "  tile   m={} n={} k={}\n  waves  m={} n={}{waves_k}\n  mma    {}\n  stages {}\n{staging}",
        t.tile_m,
        t.tile_n,
        t.tile_k,
        t.waves_m,
        t.waves_n,
        t.mma.name(),
        t.stages
    ))
}

fn largest_dividing(n: u32, candidates: &[u32]) -> Option<u32> {
    candidates.iter().copied().find(|c| n.is_multiple_of(*c))
}

/// The decode and prefill kernels for one shape, or the reason the shape cannot be compiled.
pub fn kernels_for(
    shape: &LayerShape,
    format: &str,
    targets: &[Arch],
) -> Result<Vec<GeneratedKernel>, String> {
    let (n, k) = (shape.n, shape.k);
    if !k.is_multiple_of(128) {
        return Err(format!("K = {k} is not a multiple of 128"));
    }
    let base = format!("l{n}x{k}{}", if shape.bias.is_some() { "_b" } else { "" });
    let tensors = format!(
        "  x      bf16[M, {k}]\n  w      {format}[{n}, {k}]\n  y      bf16[M, {n}]\n{}",
        shape
            .bias
            .as_ref()
            .map_or(String::new(), |b| format!("  bias   {b}[{n}]\n"))
    );
    let header = format!(
        "# {} ({format}, N = {n}, K = {k})\n",
        shape.layers.join(", ")
    );
    let mut out = vec![];
    // Decode: AMD targets take `schedule auto` (the cost model's tiling and split for each arch, which on gfx942
    // meets the VALU target of the Llama-3-70B layers, docs/PERFORMANCE.md); NVIDIA the tilings measured on the H100
    // (`plan::nvidia_decode_rule`, which `schedule auto` takes too), with 8 tokens per block for M <= 8 besides the
    // 16-token kernel.
    if !n.is_multiple_of(32) {
        return Err(format!("N = {n} is not a multiple of 32"));
    }
    // Prefill differs by vendor: AMD takes 64-row tiles on the 32x32x8 atom over a 2x2 wave grid; NVIDIA one warp
    // along M with 80 tokens each (a 2x2 grid dequantizes every weight word twice: 25% slower on the H100).
    let amd: Vec<&str> = targets
        .iter()
        .filter(|a| !a.is_nvidia())
        .map(|a| a.name())
        .collect();
    let nv_archs: Vec<Arch> = targets.iter().copied().filter(|a| a.is_nvidia()).collect();
    let nv: Vec<&str> = nv_archs.iter().map(|a| a.name()).collect();
    for (archs, suffix, nvidia) in [
        (&amd, "", false),
        (&nv, if amd.is_empty() { "" } else { "_nv" }, true),
    ] {
        if archs.is_empty() {
            continue;
        }
        let targets = archs.join(", ");
        let decode = format!("{base}_decode{suffix}");
        let nv_tiling = |m: u32| {
            nvidia_decode_text(n, k, m, &nv_archs)
                .ok_or_else(|| format!("no NVIDIA decode tiling for N = {n}, K = {k}"))
        };
        if nvidia {
            // The bundle picks the kernel with the smallest token tile whose M range holds M.
            let decode8 = format!("{base}_decode8{suffix}");
            let tiling = nv_tiling(DECODE8_MAX_M)?;
            out.push(GeneratedKernel {
                name: decode8.clone(),
                source: format!(
                    "{header}kernel {decode8} {{\n  target {targets}\n{tensors}{tiling}}}\n"
                ),
                m_range: (1, DECODE8_MAX_M),
            });
        }
        let schedule = if nvidia {
            nv_tiling(DECODE_MAX_M)?
        } else {
            "  schedule auto\n".to_string()
        };
        out.push(GeneratedKernel {
            name: decode.clone(),
            source: format!(
                "{header}kernel {decode} {{\n  target {targets}\n{tensors}{schedule}}}\n"
            ),
            m_range: (1, DECODE_MAX_M),
        });
        // sm_90a takes the wgmma route for prefill (16-row warps in warpgroups, 96 tokens, a three-stage ring filled
        // by cp.async: the fastest prefill tiling measured on the H100, docs/PERFORMANCE.md); its other NVIDIA
        // siblings keep mma.sync.
        let wg_n = largest_dividing(n, &[256, 128, 64]);
        let wgmma_arch = Arch::Sm90a.name();
        let (archs, wg_archs): (Vec<&str>, Vec<&str>) = if nvidia && wg_n.is_some() {
            archs.iter().partition(|a| **a != wgmma_arch)
        } else {
            (archs.to_vec(), vec![])
        };
        if let (Some(pn), false) = (wg_n, wg_archs.is_empty()) {
            let name = if archs.is_empty() {
                format!("{base}_prefill{suffix}")
            } else {
                format!("{base}_prefill_wg{suffix}")
            };
            out.push(GeneratedKernel {
                name: name.clone(),
                source: format!(
                    "{header}kernel {name} {{\n  target {}\n{tensors}  tile   m=96 n={pn} k=128\n  waves  m=1 n={}\n  mma    16x16x16\n  stages 3\n}}\n",
                    wg_archs.join(", "),
                    pn / 16
                ),
                m_range: (DECODE_MAX_M + 1, u32::MAX),
            });
        }
        if archs.is_empty() {
            continue;
        }
        let targets = archs.join(", ");
        let prefill = format!("{base}_prefill{suffix}");
        let tiling = match (nvidia, largest_dividing(n, &[128, 64])) {
            (false, Some(pn)) => Some(format!(
                "  tile   m=64 n={pn} k=128\n  waves  m=2 n=2\n  mma    32x32x8\n  stages 2\n"
            )),
            (true, Some(pn)) => Some(format!(
                "  tile   m=80 n={pn} k=128\n  waves  m=1 n={}\n  mma    16x16x16\n  stages 2\n",
                pn / 32
            )),
            (_, None) => None,
        };
        if let Some(tiling) = tiling {
            out.push(GeneratedKernel {
                name: prefill.clone(),
                source: format!(
                    "{header}kernel {prefill} {{\n  target {targets}\n{tensors}{tiling}}}\n"
                ),
                m_range: (DECODE_MAX_M + 1, u32::MAX),
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("layer shape {n}x{k}: {message}")]
    Shape { n: u32, k: u32, message: String },
    #[error("generated kernel {name} does not check (a nibble bug):\n{diagnostics}")]
    Generated { name: String, diagnostics: String },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// What compiling a model wrote.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    pub written: Vec<driver::Written>,
    pub nib_files: Vec<PathBuf>,
}

/// Generates, checks and compiles every kernel for `shapes` into `out_dir`, `jobs` at a time. `progress` is called
/// after each finished kernel with (done, total, kernel name).
pub fn compile_model(
    shapes: &[LayerShape],
    format: &str,
    targets: &[Arch],
    out_dir: &Path,
    emit_nib: bool,
    jobs: usize,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Result<ModelOutput, ModelError> {
    let mut specs: Vec<(KernelSpec, (u32, u32))> = vec![];
    let mut nib_files = vec![];
    std::fs::create_dir_all(out_dir).map_err(|source| OutputError::Io {
        path: out_dir.display().to_string(),
        source,
    })?;
    for shape in shapes {
        let kernels = kernels_for(shape, format, targets).map_err(|message| ModelError::Shape {
            n: shape.n,
            k: shape.k,
            message,
        })?;
        for g in kernels {
            let path = format!("{}.nib", g.name);
            let checked =
                crate::dsl::check_source(&path, &g.source).map_err(|d| ModelError::Generated {
                    name: g.name.clone(),
                    diagnostics: d.render(),
                })?;
            if emit_nib {
                let p = out_dir.join(&path);
                driver::write_atomically(&p, g.source.as_bytes())?;
                nib_files.push(p);
            }
            specs.extend(checked.kernels.into_iter().map(|k| (k, g.m_range)));
        }
    }
    let jobs_list: Vec<(&KernelSpec, Arch, (u32, u32))> = specs
        .iter()
        .flat_map(|(s, r)| targets.iter().map(move |a| (s, *a, *r)))
        .collect();
    let total = jobs_list.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<driver::Written, OutputError>>> = Mutex::new(vec![]);
    // Each worker thread builds IR in its own MLIR context (one per thread, see ir::context).
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(total.max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((spec, arch, range)) = jobs_list.get(i) else {
                    break;
                };
                let r = driver::compile_one_to_dir(
                    spec,
                    *arch,
                    out_dir,
                    &BTreeSet::<Stage>::new(),
                    Some(*range),
                    None,
                );
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(d, total, &spec.name);
                // A poisoned lock means another worker panicked; its panic is propagated by the scope.
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
            });
        }
    });
    let mut written = vec![];
    for r in results.into_inner().unwrap_or_default() {
        written.push(r?);
    }
    written.sort_by(|a, b| (&a.kernel, a.arch).cmp(&(&b.kernel, b.arch)));
    if written.len() != total {
        return Err(ModelError::Output(OutputError::Compile(
            CompileError::Plan(crate::plan::PlanError::Unsupported {
                kernel: "compile-model".into(),
                message: format!("{} of {total} kernels were compiled", written.len()),
            }),
        )));
    }
    Ok(ModelOutput { written, nib_files })
}
