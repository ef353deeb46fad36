//! `nibble bench` and `nibble tune`: commands that time kernels on a GPU.

use std::io::Write;
use std::path::Path;

use crate::arch::Arch;
use crate::driver::{self};
use crate::spec::{CheckedFile, Staging};

pub(super) fn bench_cmd(
    manifests: &[std::path::PathBuf],
    device: &str,
    ms: &[u32],
    warmup: u32,
    iters: u32,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    if device != "hip" && device != "cuda" {
        return Err(format!(
            "nibble bench times kernels on a GPU: --device hip or --device cuda (got `{device}`)"
        ));
    }
    if let Some(bad) = ms.iter().find(|&&m| m == 0) {
        return Err(format!("--m {bad}: M is at least 1"));
    }
    // Every manifest and code object is read before the device is opened.
    let mut kernels = vec![];
    for manifest in manifests {
        let bundle = crate::run::Bundle::load_manifest(manifest).map_err(|e| e.to_string())?;
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let path = dir.join(&bundle.manifest.code_object);
        let code = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        kernels.push((bundle, code));
    }
    for (bundle, code) in &kernels {
        let man = &bundle.manifest;
        let rows: Vec<u32> = ms
            .iter()
            .copied()
            .filter(|&m| (man.shapes.m_min..=man.shapes.m_max).contains(&m))
            .collect();
        let Some(&max_rows) = rows.iter().max() else {
            let _ = writeln!(
                stdout,
                "{}: no M of --m within its range {}..={}, not timed",
                man.kernel, man.shapes.m_min, man.shapes.m_max
            );
            continue;
        };
        if device == "cuda" {
            // One upload at the largest M; the smaller ones launch on the same buffers.
            let inputs = crate::run::timing_inputs(man, max_rows).map_err(|e| e.to_string())?;
            let t =
                crate::run::time_cuda(bundle, code, &inputs, cuda_device()?, &rows, warmup, iters)
                    .map_err(|e| e.to_string())?;
            for (&m, times) in rows.iter().zip(&t.times) {
                let detail = format!(
                    "flushed median {:.2} us (min {:.2}) of {} runs",
                    times.median_us,
                    times.min_us,
                    iters.max(1)
                );
                report(stdout, man, m, times.median_us, &detail, &t.device);
            }
        } else {
            for &m in &rows {
                let inputs = crate::run::timing_inputs(man, m).map_err(|e| e.to_string())?;
                let out =
                    crate::run::run_hip(bundle, code, &inputs, 0, warmup as usize, iters as usize)
                        .map_err(|e| e.to_string())?;
                let median_us = median_us(&out.times_ms);
                let detail = format!("median {median_us:.2} us of {} runs", out.times_ms.len());
                report(stdout, man, m, median_us, &detail, &out.device_arch);
            }
        }
    }
    Ok(())
}

/// The median of event times in milliseconds, in microseconds (HIP runs; CUDA timings come as microseconds).
fn median_us(times_ms: &[f32]) -> f64 {
    let mut us: Vec<f64> = times_ms.iter().map(|&v| f64::from(v) * 1e3).collect();
    nibble_runtime::numerics::median(&mut us)
}

/// One `nibble bench` line: the time, weight traffic, throughput and the arch's HBM roofline.
fn report(
    stdout: &mut dyn Write,
    man: &nibble_runtime::manifest::Manifest,
    m: u32,
    median_us: f64,
    detail: &str,
    device_name: &str,
) {
    let (n, k) = (f64::from(man.shapes.n), f64::from(man.shapes.k));
    let weight_bytes = n * k / 2.0 + n * k / f64::from(man.format.group) * 4.0;
    let flops = 2.0 * f64::from(m) * n * k;
    let arch = Arch::from_name(&man.arch).map(|a| a.info());
    let _ = writeln!(
        stdout,
        "{} on {device_name} (M={m} N={n} K={k}): {detail}, weights {:.2} TB/s, {:.1} TFLOP/s{}",
        man.kernel,
        weight_bytes / (median_us * 1e-6) / 1e12,
        flops / (median_us * 1e-6) / 1e12,
        arch.map_or(String::new(), |a| format!(
            "; HBM roofline {:.1} us at {} TB/s",
            weight_bytes / (a.hbm_tb_s * 1e12) * 1e6,
            a.hbm_tb_s
        ))
    );
}

/// The CUDA device index: `$NIBBLE_CUDA_DEVICE`, default 0.
pub(super) fn cuda_device() -> Result<usize, String> {
    nibble_runtime::cuda::default_index().map_err(|e| e.to_string())
}

/// Launches per candidate in `nibble tune`: as many as `nibble bench`'s defaults, so that a tuned choice is measured
/// like the benchmark (on CUDA each timed launch after the L2 flush).
const TUNE_WARMUP: u32 = 10;
const TUNE_ITERS: u32 = 50;

/// `nibble tune`: the device is opened first, so a machine without a GPU fails before any compilation.
pub(super) fn tune_cmd(
    checked: &CheckedFile,
    device: &str,
    arch: Arch,
    m_arg: Option<u32>,
    top: usize,
    out_dir: &Path,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    use crate::spec::Schedule;
    let cuda = match device {
        "hip" => false,
        "cuda" => true,
        _ => {
            return Err(format!(
                "nibble tune measures on a GPU: --device hip or --device cuda (got `{device}`)"
            ))
        }
    };
    let device_label = if cuda {
        let index = cuda_device()?;
        let dev = nibble_runtime::cuda::Device::open(index).map_err(|e| e.to_string())?;
        let i = dev.info();
        let device_arch = format!("sm_{}{}", i.major, i.minor);
        if device_arch != arch.name() {
            return Err(format!(
                "the CUDA device {index} ({}) is {device_arch} but --target is {}: tune on a device of the target arch",
                i.name,
                arch.name()
            ));
        }
        crate::run::device_name(&dev)
    } else {
        let dev = nibble_runtime::hip::Device::open(0).map_err(|e| e.to_string())?;
        let device_arch = nibble_runtime::hip::arch_base(dev.arch());
        if device_arch != arch.name() {
            return Err(format!(
                "the HIP device is {} but --target is {}: tune on a device of the target arch",
                dev.arch(),
                arch.name()
            ));
        }
        format!("HIP device 0 ({})", dev.arch())
    };
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for k in &checked.kernels {
        let m = m_arg.unwrap_or_else(|| k.auto_m()).max(1);
        if !matches!(k.schedule, Schedule::Auto { .. }) {
            let _ = writeln!(stdout, "{}: has an explicit tiling, not tuned", k.name);
            continue;
        }
        let mut best: Option<(f64, crate::spec::Tiling, Option<Staging>)> = None;
        let mut measured = 0u32;
        for p in crate::costmodel::rank(k, arch, m, false)
            .into_iter()
            .take(top)
        {
            // The cost model does not see the staging, so on NVIDIA both are measured (the decode rule's own
            // first), unless the kernel fixes it; AMD kernels take the plan's.
            let stagings: Vec<Option<Staging>> = if k.staging.is_some() {
                vec![k.staging]
            } else if arch.is_nvidia() && p.tiling.stages >= 2 {
                let first = crate::plan::nvidia_decode_rule(k.n, k.k, m, arch)
                    .filter(|_| p.rule)
                    .map_or(Staging::Registers, |(_, st)| st);
                let second = if first == Staging::Async {
                    Staging::Registers
                } else {
                    Staging::Async
                };
                vec![Some(first), Some(second)]
            } else {
                vec![None]
            };
            for staging in stagings {
                let mut spec = k.clone();
                spec.schedule = Schedule::Manual(p.tiling);
                spec.staging = staging;
                let label = format!(
                    "{}: {}x{}x{} waves {} {}{}",
                    k.name,
                    p.tiling.tile_m,
                    p.tiling.tile_n,
                    p.tiling.tile_k,
                    p.tiling.waves_name(),
                    p.tiling.mma.name(),
                    match staging {
                        Some(Staging::Async) => " staging async",
                        Some(Staging::Registers) => " staging registers",
                        None => "",
                    }
                );
                let us = match time_candidate(&spec, arch, m, cuda)? {
                    Candidate::Measured(us) => us,
                    Candidate::NotCompiled(e) => {
                        let _ = writeln!(stdout, "{label}: not compiled: {e}");
                        continue;
                    }
                };
                measured += 1;
                let _ = writeln!(
                    stdout,
                    "{label}: predicted {:.1} us, measured {us:.1} us",
                    p.predicted_us
                );
                if best.is_none_or(|(b, _, _)| us < b) {
                    best = Some((us, p.tiling, staging));
                }
            }
        }
        let Some((us, tiling, staging)) = best else {
            return Err(format!("{}: no candidate tiling could be measured", k.name));
        };
        let mut spec = k.clone();
        spec.schedule = Schedule::Manual(tiling);
        spec.staging = staging;
        let tuned = nibble_runtime::manifest::Tuned {
            device: device_label.clone(),
            m,
            median_us: us,
            candidates: measured,
        };
        let w = driver::compile_one_to_dir(
            &spec,
            arch,
            out_dir,
            &Default::default(),
            None,
            Some(tuned),
        )
        .map_err(|e| e.to_string())?;
        let _ = writeln!(
            stdout,
            "{}: fastest {us:.1} us, written to {}",
            k.name,
            w.hsaco.display()
        );
    }
    Ok(())
}

/// A `nibble tune` candidate: its median time, or why the compiler refused it (a variant such as a staging ring
/// that does not fit is reported and skipped; a device error ends the tuning).
enum Candidate {
    Measured(f64),
    NotCompiled(String),
}

/// Compiles `spec` for `arch` and times it on the device with the benchmark's method (median microseconds).
fn time_candidate(
    spec: &crate::spec::KernelSpec,
    arch: Arch,
    m: u32,
    cuda: bool,
) -> Result<Candidate, String> {
    let out = match driver::compile_kernel(spec, arch, &Default::default()) {
        Ok(out) => out,
        Err(e) => return Ok(Candidate::NotCompiled(e.to_string())),
    };
    let bundle = crate::run::Bundle {
        manifest_path: "tune".into(),
        manifest: out.manifest,
        kernel_ir: Some(out.kernel_ir),
    };
    let inputs = crate::run::timing_inputs(&bundle.manifest, m).map_err(|e| e.to_string())?;
    let us = if cuda {
        crate::run::time_cuda(
            &bundle,
            &out.hsaco,
            &inputs,
            cuda_device()?,
            &[m],
            TUNE_WARMUP,
            TUNE_ITERS,
        )
        .map_err(|e| e.to_string())?
        .times[0]
            .median_us
    } else {
        let out = crate::run::run_hip(
            &bundle,
            &out.hsaco,
            &inputs,
            0,
            TUNE_WARMUP as usize,
            TUNE_ITERS as usize,
        )
        .map_err(|e| e.to_string())?;
        median_us(&out.times_ms)
    };
    Ok(Candidate::Measured(us))
}
