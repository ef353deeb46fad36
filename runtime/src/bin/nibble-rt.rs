//! `nibble-rt`: runs nibble's sm_80/sm_90 kernels on an NVIDIA GPU without MLIR/LLVM (the runtime crate only; the
//! CUDA driver is loaded at run time). Subcommands: `info`, `run`, `check` (the GPU correctness matrix with
//! negative controls) and `bench`. See docs/RUNTIME.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use nibble_runtime::bundle::KernelBundle;
use nibble_runtime::cuda::timing::{FlushedTimes, Timer};
use nibble_runtime::cuda::{self, CudaKernel, Device};
use nibble_runtime::launch::LaunchError;
use nibble_runtime::linear_cuda::KernelCase;
use nibble_runtime::manifest::Manifest;
use nibble_runtime::numerics::compare::{compare, decode, Comparison};
use nibble_runtime::numerics::inputs::{
    adversarial_inputs, random_inputs, timing_inputs, HostInputs,
};
use nibble_runtime::numerics::reference::dequant_weight;
use nibble_runtime::numerics::repack::{repack_scales_for, repack_weight, RepackedScales};
use nibble_runtime::numerics::repack_mma::FragmentCodec;
use nibble_runtime::numerics::DType;

#[derive(Parser)]
#[command(
    name = "nibble-rt",
    about = "Run and check nibble sm_80/sm_90 kernels on an NVIDIA GPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Device name, compute capability, driver version, memory.
    Info,
    /// Runs one kernel on a random quantized layer and compares with the CPU reference.
    Run {
        manifest: PathBuf,
        #[arg(long)]
        random: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The GPU correctness matrix over every sm_* kernel of a directory.
    Check {
        dir: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,7,16,33,128")]
        m: Vec<u32>,
        /// Exit 2 instead of 0 when there is no NVIDIA GPU.
        #[arg(long)]
        require_gpu: bool,
    },
    /// Times kernels with CUDA events.
    Bench {
        manifests: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "1,16,128,4096")]
        m: Vec<u32>,
        #[command(flatten)]
        timing: Timing,
    },
    /// The floor a kernel of a given size meets under `bench`'s method: times a plain streaming read (16-byte loads,
    /// 8 blocks of 256 threads per SM, grid-stride) of each size with the same L2 flush and CUDA events.
    Stream {
        /// Sizes in MB (10^6 bytes) to read; 0 launches the read kernel on one 16-byte vector (the launch floor).
        #[arg(long, value_delimiter = ',', default_value = "0,1,8,36,45,120,240")]
        mb: Vec<f64>,
        #[command(flatten)]
        timing: Timing,
    },
}

/// How `bench` and `stream` time: warmup launches, timed launches (median reported), optional JSON output.
#[derive(Args)]
struct Timing {
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    #[arg(long, default_value_t = 50)]
    iters: u32,
    #[arg(long)]
    json: Option<PathBuf>,
}

type Res<T> = Result<T, String>;

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn dtype(s: &str) -> Res<DType> {
    DType::parse(s).ok_or_else(|| format!("dtype {s:?} is not bf16 or f16"))
}

/// Random (`adversarial = false`) or adversarial inputs: the runtime's shared generator.
fn inputs(m: &Manifest, rows: u32, seed: u64, adversarial: bool) -> Res<HostInputs> {
    if adversarial {
        adversarial_inputs(m, rows, seed).map_err(s)
    } else {
        random_inputs(m, rows, seed).map_err(s)
    }
}

/// Deliberate corruptions for negative controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Fragment rows g and g+8 swapped in every word (a wrong row mapping).
    SwapRows,
    /// Every word rotated by 4 bits (pieces reading the wrong bits: a changed shift).
    RotateWords,
    /// Every nonzero repacked scale doubled (exponent + 1).
    ScaleExpPlus1,
}

struct Prepared {
    words: Vec<u32>,
    scales: RepackedScales,
}

fn prepare(m: &Manifest, inp: &HostInputs, fault: Fault) -> Res<Prepared> {
    let (n, k) = (m.shapes.n as usize, m.shapes.k as usize);
    let mut words =
        repack_weight(&m.weight_layout, &m.format.element, &inp.weight, n, k).map_err(s)?;
    let mut scales = repack_scales_for(
        &m.weight_layout,
        &m.scale_layout,
        &m.format,
        &inp.scales,
        n,
        k,
    )
    .map_err(s)?;
    if matches!(scales, RepackedScales::F32(_)) {
        return Err(format!(
            "{}: scale layout {} is not an sm_80/sm_90 layout",
            m.kernel, m.scale_layout.id
        ));
    }
    match fault {
        Fault::None => {}
        Fault::SwapRows => {
            let codec = FragmentCodec::new(&m.weight_layout, &m.format.element).map_err(s)?;
            for w in &mut words {
                let c = codec.unpack(*w);
                *w = codec.pack([c[2], c[3], c[0], c[1], c[6], c[7], c[4], c[5]]);
            }
        }
        Fault::RotateWords => words.iter_mut().for_each(|w| *w = w.rotate_left(4)),
        Fault::ScaleExpPlus1 => match &mut scales {
            RepackedScales::Half16 { dtype, bits } => {
                let one = if *dtype == DType::Bf16 { 0x80 } else { 0x400 };
                bits.iter_mut()
                    .filter(|b| **b & 0x7FFF != 0)
                    .for_each(|b| *b = b.wrapping_add(one));
            }
            RepackedScales::Exp8 { bytes, .. } => bytes
                .iter_mut()
                .filter(|b| **b != 0)
                .for_each(|b| *b = b.wrapping_add(1)),
            RepackedScales::F32(_) => {}
        },
    }
    Ok(Prepared { words, scales })
}

/// Uploads one (kernel, M) case: the library's [`KernelCase`], shared with `QuantLinear<CudaBackend>` and `nibble`.
fn upload(dev: &Device, m: &Manifest, inp: &HostInputs, p: &Prepared) -> Res<KernelCase> {
    KernelCase::upload(
        dev,
        m,
        inp.rows,
        &inp.x,
        &p.words,
        &p.scales,
        inp.bias.as_ref().map(|(_, b)| b.as_slice()),
        inp.tensor_scale,
    )
    .map_err(s)
}

/// Runs one case on the GPU and compares with the CPU reference.
fn run_case(dev: &Device, kernel: &CudaKernel, inp: &HostInputs, fault: Fault) -> Res<Comparison> {
    let m = kernel.manifest();
    let (n, k) = (m.shapes.n as usize, m.shapes.k as usize);
    let p = prepare(m, inp, fault)?;
    let c = upload(dev, m, inp, &p)?;
    let stream = dev.stream().map_err(s)?;
    c.launch(kernel, &stream).map_err(s)?;
    stream.synchronize().map_err(s)?;
    let y = c.read_y().map_err(s)?;
    let xd = inp.x_dtype;
    let w = dequant_weight(
        &m.format,
        &inp.weight,
        &inp.scales,
        inp.tensor_scale,
        n,
        k,
        xd,
    )
    .map_err(s)?;
    let x: Vec<f32> = inp.x.iter().map(|&b| decode(b, xd)).collect();
    let bias: Option<Vec<f32>> = inp
        .bias
        .as_ref()
        .map(|(d, b)| b.iter().map(|&v| decode(v, *d)).collect());
    compare(
        &y,
        dtype(&m.shapes.y_dtype)?,
        &x,
        &w,
        inp.rows as usize,
        n,
        k,
        inp.tensor_scale,
        bias.as_deref(),
    )
    .map_err(s)
}

fn open() -> Res<Device> {
    Device::open(cuda::default_index().map_err(s)?).map_err(s)
}

/// A manifest and its PTX, read and checked against each other before any device is opened.
fn read_kernel(path: &Path) -> Res<(Manifest, Vec<u8>)> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m = Manifest::from_json(&path.display().to_string(), &text).map_err(s)?;
    let co = path.parent().unwrap_or(Path::new(".")).join(&m.code_object);
    let ptx = std::fs::read(&co).map_err(|e| format!("{}: {e}", co.display()))?;
    nibble_runtime::ptx::check_against_manifest(&ptx, &m)
        .map_err(|e| format!("{}: {e}", co.display()))?;
    Ok((m, ptx))
}

fn load(dev: &Device, (m, ptx): &(Manifest, Vec<u8>)) -> Res<CudaKernel> {
    CudaKernel::load(dev, m, ptx).map_err(s)
}

fn info() -> Res<()> {
    let d = open()?;
    let i = d.info();
    println!("device {}: {}", i.index, i.name);
    println!(
        "compute capability {}.{} (sm_{}{}), {} SMs, L2 {} MiB",
        i.major,
        i.minor,
        i.major,
        i.minor,
        i.sm_count,
        i.l2_bytes >> 20
    );
    println!(
        "memory {:.1} GiB, shared memory per block {} bytes ({} opt-in)",
        i.total_mem_bytes as f64 / (1u64 << 30) as f64,
        i.max_shared_per_block,
        i.max_shared_per_block_optin
    );
    println!(
        "driver {}.{} ({})",
        i.driver_version / 1000,
        (i.driver_version % 1000) / 10,
        i.library
    );
    Ok(())
}

fn check(dir: &Path, ms: &[u32], require_gpu: bool) -> ExitCode {
    let dev = match open() {
        Ok(d) => d,
        Err(e) => {
            println!("skipped: no NVIDIA GPU ({e})");
            return if require_gpu {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let bundle = match KernelBundle::load(dir) {
        Ok(b) => b,
        Err(e) => {
            println!("FAIL bundle {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    let (pass, fail) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let report = |ok: bool, line: String| {
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
        let n = if ok { &pass } else { &fail };
        n.set(n.get() + 1);
    };
    let kernels: Vec<_> = bundle
        .kernels()
        .filter(|k| k.manifest.arch.starts_with("sm_"))
        .collect();
    // Reports a failed call; true when it was a kernel fault. A fault leaves the context unusable: every later call
    // would fail with the same error and be reported against cases and kernels that never ran, so the check stops
    // at the first one.
    let failed_stops = |line: String, at: &str, left: usize| {
        report(false, line);
        let Some(e) = dev.sticky_fault() else {
            return false;
        };
        report(
            false,
            format!(
                "the CUDA context is unusable after a kernel fault in {at} ({e}): the check stops; {left} later \
                 kernel(s) not run"
            ),
        );
        true
    };
    'kernels: for (i, bk) in kernels.iter().enumerate() {
        let left = kernels.len() - i - 1;
        let m = &bk.manifest;
        let name = bk.manifest_path.display().to_string();
        let kernel = match bk
            .code_object()
            .map_err(s)
            .and_then(|ptx| CudaKernel::load(&dev, m, &ptx).map_err(s))
        {
            Ok(k) => k,
            Err(e) => {
                if failed_stops(format!("{name}: load: {e}"), &m.kernel, left) {
                    break 'kernels;
                }
                continue;
            }
        };
        let rows: Vec<u32> = ms
            .iter()
            .copied()
            .filter(|&r| r >= m.shapes.m_min && r <= m.shapes.m_max)
            .collect();
        for &r in &rows {
            for (what, adv) in [("random", false), ("adversarial", true)] {
                let res = inputs(m, r, 1000 + u64::from(r), adv)
                    .and_then(|inp| run_case(&dev, &kernel, &inp, Fault::None));
                match res {
                    Ok(c) => report(c.passes(), format!("{} M={r} {what}: {c}", m.kernel)),
                    Err(e) => {
                        let line = format!("{} M={r} {what}: {e}", m.kernel);
                        if failed_stops(line, &m.kernel, left) {
                            break 'kernels;
                        }
                    }
                }
            }
        }
        let Some(&r) = rows.first() else {
            report(
                false,
                format!(
                    "{}: no M of the sweep is in {}..={}",
                    m.kernel, m.shapes.m_min, m.shapes.m_max
                ),
            );
            continue;
        };
        for fault in [Fault::SwapRows, Fault::RotateWords, Fault::ScaleExpPlus1] {
            let res = inputs(m, r, 77, false).and_then(|inp| run_case(&dev, &kernel, &inp, fault));
            match res {
                Ok(c) => report(
                    !c.passes(),
                    format!(
                        "{} M={r} negative control {fault:?}: {}",
                        m.kernel,
                        if c.passes() {
                            "NOT detected".to_string()
                        } else {
                            format!("detected ({} elements outside the bound)", c.violations)
                        }
                    ),
                ),
                Err(e) => {
                    let line = format!("{} M={r} negative control {fault:?}: {e}", m.kernel);
                    if failed_stops(line, &m.kernel, left) {
                        break 'kernels;
                    }
                }
            }
        }
    }
    let (pass, fail) = (pass.get(), fail.get());
    println!("summary: {pass} passed, {fail} failed");
    if fail == 0 && pass > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes `rows` as pretty JSON to `json`, if given.
fn write_json(json: Option<&Path>, rows: &[serde_json::Value]) -> Res<()> {
    if let Some(j) = json {
        std::fs::write(j, serde_json::to_string_pretty(rows).map_err(s)?)
            .map_err(|e| format!("{}: {e}", j.display()))?;
    }
    Ok(())
}

fn bench(paths: &[PathBuf], ms: &[u32], timing: &Timing) -> Res<()> {
    let Timing {
        warmup,
        iters,
        ref json,
    } = *timing;
    let read = paths
        .iter()
        .map(|p| read_kernel(p))
        .collect::<Res<Vec<_>>>()?;
    let dev = open()?;
    let timer = Timer::new(&dev).map_err(s)?;
    let mut rows_out = vec![];
    for k in &read {
        let kernel = load(&dev, k)?;
        let m = kernel.manifest().clone();
        let (n, k) = (u64::from(m.shapes.n), u64::from(m.shapes.k));
        let rows: Vec<u32> = ms
            .iter()
            .copied()
            .filter(|&r| r >= m.shapes.m_min && r <= m.shapes.m_max)
            .collect();
        let Some(&max_rows) = rows.iter().max() else {
            continue;
        };
        // One set of inputs per kernel, at the largest M: smaller M launch on the same buffers.
        let inp = timing_inputs(&m, max_rows, 7).map_err(s)?;
        let pr = prepare(&m, &inp, Fault::None)?;
        let c = upload(&dev, &m, &inp, &pr)?;
        for r in rows {
            let launch = |st: &cuda::Stream| c.args().launch(&kernel, st, r);
            timer.warm_up(warmup, &launch).map_err(s)?;
            // (a) back-to-back: warm L2 when the weights fit it; (b) the flushed time (the module doc of
            // `nibble_runtime::cuda::timing`), the one reported.
            let loop_us = timer.back_to_back(iters, &launch).map_err(s)?;
            let FlushedTimes {
                median_us: med,
                min_us,
            } = timer.flushed(iters, &launch).map_err(s)?;
            let bytes =
                (pr.words.len() * 4 + pr.scales.size_bytes()) as u64 + u64::from(r) * (k + n) * 2;
            let nominal = n * k / 2 + n * k / 32;
            let tb = |b: u64, us: f64| b as f64 / (us * 1e-6) / 1e12;
            let tflops = 2.0 * f64::from(r) * (n * k) as f64 / (med * 1e-6) / 1e12;
            println!(
                "{} N={n} K={k} M={r}: flushed median {med:.2} us (min {min_us:.2}), {:.2} TB/s read ({:.2} TB/s nominal MXFP4), {tflops:.1} TFLOP/s; back-to-back {loop_us:.2} us",
                m.kernel, tb(bytes, med), tb(nominal, med)
            );
            rows_out.push(serde_json::json!({
                "kernel": m.kernel, "n": n, "k": k, "m": r, "median_us": med, "min_us": min_us,
                "tb_s": tb(bytes, med), "nominal_tb_s": tb(nominal, med), "tflops": tflops,
                "back_to_back_us": loop_us,
            }));
        }
    }
    write_json(json.as_deref(), &rows_out)
}

fn stream(sizes: &[f64], timing: &Timing) -> Res<()> {
    let Timing {
        warmup,
        iters,
        ref json,
    } = *timing;
    if let Some(bad) = sizes
        .iter()
        .find(|mb| !mb.is_finite() || **mb < 0.0 || **mb > 16_000.0)
    {
        return Err(format!("--mb {bad}: sizes are MB from 0 to 16000"));
    }
    let dev = open()?;
    let timer = Timer::new(&dev).map_err(s)?;
    let mut rows_out = vec![];
    for &mb in sizes {
        let bytes = ((mb * 1e6) as usize / 16 * 16).max(16);
        let read = cuda::L2Flush::new(&dev, bytes).map_err(s)?;
        let launch = |st: &cuda::Stream| read.run(st).map_err(LaunchError::from);
        timer.warm_up(warmup, &launch).map_err(s)?;
        let FlushedTimes {
            median_us: med,
            min_us,
        } = timer.flushed(iters, &launch).map_err(s)?;
        let tb_s = bytes as f64 / (med * 1e-6) / 1e12;
        println!("read {mb} MB ({bytes} bytes): flushed median {med:.2} us (min {min_us:.2}), {tb_s:.2} TB/s");
        rows_out.push(serde_json::json!({
            "mb": mb, "bytes": bytes, "median_us": med, "min_us": min_us, "tb_s": tb_s,
        }));
    }
    write_json(json.as_deref(), &rows_out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Info => info(),
        Cmd::Check {
            dir,
            m,
            require_gpu,
        } => return check(&dir, &m, require_gpu),
        Cmd::Run {
            manifest,
            random,
            seed,
        } => read_kernel(&manifest).and_then(|k| {
            let dev = open()?;
            let kernel = load(&dev, &k)?;
            let inp = inputs(kernel.manifest(), random, seed, false)?;
            let c = run_case(&dev, &kernel, &inp, Fault::None)?;
            println!("{} M={random}: {c}", kernel.manifest().kernel);
            if c.passes() {
                Ok(())
            } else {
                Err("outside the error bound".into())
            }
        }),
        Cmd::Bench {
            manifests,
            m,
            timing,
        } => bench(&manifests, &m, &timing),
        Cmd::Stream { mb, timing } => stream(&mb, &timing),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nibble-rt: {e}");
            ExitCode::FAILURE
        }
    }
}
