//! The `nibble` command line: `check`, `compile`, `inspect`, `quantize` and `run`. `main.rs` only forwards to [`run`], so tests drive the CLI
//! in-process with their own output buffers.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::arch::Arch;
use crate::driver::{self, Stage};
use crate::dsl::{self, FrontEndError};
use crate::spec::CheckedFile;
use crate::tensors::{self, QuantFormat, TensorFile};

/// Ahead-of-time compiler for FP4 weight-only-quantized GEMM kernels on AMD GPUs.
#[derive(Debug, Parser)]
#[command(name = "nibble", version, about, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a .nib file and print the resolved kernels.
    Check {
        /// The .nib file.
        file: PathBuf,
    },
    /// Compile every kernel of .nib files (or of every .nib file in a directory) to code objects and manifests.
    Compile {
        /// .nib files or directories of .nib files.
        #[arg(required = true, value_name = "FILE_OR_DIR")]
        files: Vec<PathBuf>,
        /// Target archs, comma separated (default: each kernel's own `target` list).
        #[arg(long, value_delimiter = ',', value_parser = parse_arch, value_name = "ARCH[,ARCH]")]
        target: Vec<Arch>,
        /// Output directory.
        #[arg(short = 'o', long = "out-dir", value_name = "DIR")]
        out_dir: PathBuf,
        /// Intermediate stages to write next to the code object, comma separated.
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(Stage::ALL.map(Stage::name)))]
        emit: Vec<String>,
        /// Narrow the M range the manifests declare, `LO..HI` (a bundle with several kernels per shape selects among
        /// them by M).
        #[arg(long = "m-range", value_parser = parse_m_range, value_name = "LO..HI")]
        m_range: Option<(u32, u32)>,
    },
    /// Compile kernels for every distinct quantized linear shape of a checkpoint (a decode- and a prefill-shaped
    /// kernel each), in parallel.
    CompileModel {
        /// Checkpoint directory (safetensors + config.json; Quark MXFP4 or ModelOpt NVFP4).
        checkpoint: PathBuf,
        /// Target archs, comma separated.
        #[arg(long, required = true, value_delimiter = ',', value_parser = parse_arch, value_name = "ARCH[,ARCH]")]
        target: Vec<Arch>,
        /// Output directory (a kernel bundle).
        #[arg(short = 'o', long = "out-dir", value_name = "DIR")]
        out_dir: PathBuf,
        /// Also write the generated .nib files into the output directory.
        #[arg(long)]
        emit_nib: bool,
        /// Parallel compile jobs (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Time a compiled kernel on a GPU with random inputs: median of warm runs (HIP or CUDA events), weight traffic
    /// in TB/s, TFLOP/s, and the HBM roofline of the arch.
    Bench {
        /// The kernel's manifest.
        manifest: PathBuf,
        /// Where to run: `hip` (gfx kernels) or `cuda` (sm_80/sm_90 kernels; `$NIBBLE_CUDA_DEVICE`, default 0).
        #[arg(long, default_value = "hip", value_name = "DEVICE")]
        device: String,
        /// Rows (tokens).
        #[arg(long, default_value_t = 16)]
        m: u32,
        /// Untimed launches first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Timed launches.
        #[arg(long, default_value_t = 20)]
        iters: usize,
    },
    /// Measure the cost model's best candidate tilings of each `schedule auto` kernel on a GPU and compile the
    /// fastest into DIR (its manifest records the chosen tiling).
    Tune {
        /// The .nib file.
        file: PathBuf,
        /// Where to measure: `hip` (gfx targets) or `cuda` (sm_80/sm_90 targets).
        #[arg(long, default_value = "hip", value_name = "DEVICE")]
        device: String,
        /// Target arch (must be the device's).
        #[arg(long, value_parser = parse_arch, value_name = "ARCH")]
        target: Arch,
        /// The M (tokens) to tune for (default: each kernel's `schedule auto m=`, or 16).
        #[arg(long)]
        m: Option<u32>,
        /// How many of the cost model's best candidates to measure.
        #[arg(long, default_value_t = 6)]
        top: usize,
        /// Output directory.
        #[arg(short = 'o', long = "out-dir", value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Predict kernel time with the cost model; with --explain, list the candidate tilings `schedule auto` weighs.
    Plan {
        /// The .nib file.
        file: PathBuf,
        /// Target archs (default: each kernel's own).
        #[arg(long, value_delimiter = ',', value_parser = parse_arch, value_name = "ARCH[,ARCH]")]
        target: Vec<Arch>,
        /// The M (tokens) to predict for (default: each kernel's `schedule auto m=`, or 16).
        #[arg(long)]
        m: Option<u32>,
        /// List the candidates with their predicted times and why the winner won.
        #[arg(long)]
        explain: bool,
        /// Compile each candidate and use its measured VALU cost and registers (slower).
        #[arg(long)]
        measure: bool,
    },
    /// Measure a code object: registers, LDS, scratch, spills, occupancy, MFMAs and the main loop's VALU cost.
    Inspect {
        /// The .hsaco file. Its manifest (same name, .json) supplies the weight elements per loop iteration.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Weight elements one lane dequantizes per main-loop iteration (overrides the manifest).
        #[arg(long, value_name = "N")]
        elements_per_iteration: Option<u32>,
    },
    /// Quantize a float weight [N, K] of a safetensors file to a checkpoint-layout MXFP4 or NVFP4 safetensors file.
    Quantize {
        /// Target format.
        #[arg(long, value_enum)]
        format: QuantFormat,
        /// Input safetensors file with a BF16/F16/F32 weight.
        input: PathBuf,
        /// Output safetensors file (`weight`, `weight_scale`, NVFP4's `weight_scale_2`, and `bias` if the input has
        /// one).
        output: PathBuf,
        /// The weight tensor (default: `weight`, else the only 2-D float tensor).
        #[arg(long, value_name = "NAME")]
        tensor: Option<String>,
    },
    /// Run a compiled kernel on one layer's inputs from a safetensors file and write `y` to another.
    Run {
        /// The kernel's manifest (`<kernel>.<arch>.json`, written by `compile`).
        manifest: PathBuf,
        /// Where to run: `interpret` (the virtual CDNA interpreter), `hip` (gfx kernels on an AMD GPU) or `cuda`
        /// (sm_80/sm_90 kernels on an NVIDIA GPU; `$NIBBLE_CUDA_DEVICE`, default 0).
        #[arg(long, default_value = "interpret", value_name = "DEVICE")]
        device: String,
        /// safetensors file with `x`, `weight`, `weight_scale` (`weight_scale_2`, `bias` as the kernel needs).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "random",
            conflicts_with = "random"
        )]
        inputs: Option<PathBuf>,
        /// Instead of `--inputs`: random inputs with M rows (normal activations, weights quantized as real
        /// checkpoints are); implies `--reference`.
        #[arg(long, value_name = "M")]
        random: Option<u32>,
        /// Seed of `--random`.
        #[arg(long, default_value_t = 1, requires = "random")]
        seed: u64,
        /// safetensors file to write `y` [M, N] to (required with `--inputs`).
        #[arg(long, value_name = "FILE", required_unless_present = "random")]
        output: Option<PathBuf>,
        /// Also compute the independent reference and check every output against the error bound of
        /// docs/NUMERICS.md (exit code 1 if any output exceeds it; `y` is written either way).
        #[arg(long)]
        reference: bool,
        /// Print per LDS load/store op its executions and bank-conflict cycles (docs/PERFORMANCE.md states the model).
        #[arg(long)]
        profile: bool,
    },
}

fn parse_m_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not an M range: write LO..HI with 1 <= LO <= HI, e.g. 1..16");
    let (lo, hi) = s.split_once("..").ok_or_else(bad)?;
    let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::from_name(s).ok_or_else(|| {
        format!(
            "unknown target `{s}` (known targets: {})",
            Arch::all_names().join(", ")
        )
    })
}

/// Runs the CLI on `args` (program name first); returns the process exit code: 0 success, 1 an error in the
/// input or the compilation, 2 a usage error (reported by clap).
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with code 0; usage errors to stderr with code 2.
            let out: &mut dyn Write = if e.use_stderr() { stderr } else { stdout };
            let _ = write!(out, "{}", e.render());
            return e.exit_code();
        }
    };
    // Output errors (e.g. a closed pipe) are ignored: the exit code still tells the outcome.
    match cli.command {
        Command::Check { file } => match front_end(&file, stderr) {
            Some(checked) => {
                let text = dsl::describe(&checked);
                let _ = if text.is_empty() {
                    writeln!(stdout, "{}: no kernels", file.display())
                } else {
                    write!(stdout, "{text}")
                };
                0
            }
            None => 1,
        },
        Command::Compile {
            files,
            target,
            out_dir,
            emit,
            m_range,
        } => {
            let Some(files) = expand_inputs(&files, stderr) else {
                return 1;
            };
            // Every file is checked before anything is compiled or written.
            let mut checked = vec![];
            for f in &files {
                match front_end(f, stderr) {
                    Some(c) => checked.push(c),
                    None => return 1,
                }
            }
            let all = CheckedFile {
                formats: checked.iter().flat_map(|c| c.formats.clone()).collect(),
                kernels: checked.into_iter().flat_map(|c| c.kernels).collect(),
            };
            compile(&all, &target, &out_dir, &emit, m_range, stdout, stderr)
        }
        Command::Inspect {
            file,
            json,
            elements_per_iteration,
        } => inspect(&file, json, elements_per_iteration, stdout, stderr),
        Command::Bench {
            manifest,
            device,
            m,
            warmup,
            iters,
        } => match bench_cmd(&manifest, &device, m, warmup, iters, stdout) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(stderr, "error: {e}");
                1
            }
        },
        Command::Tune {
            file,
            device,
            target,
            m,
            top,
            out_dir,
        } => {
            let Some(checked) = front_end(&file, stderr) else {
                return 1;
            };
            match tune_cmd(&checked, &device, target, m, top.max(1), &out_dir, stdout) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(stderr, "error: {e}");
                    1
                }
            }
        }
        Command::CompileModel {
            checkpoint,
            target,
            out_dir,
            emit_nib,
            jobs,
        } => compile_model_cmd(
            &checkpoint,
            &target,
            &out_dir,
            emit_nib,
            jobs,
            stdout,
            stderr,
        ),
        Command::Plan {
            file,
            target,
            m,
            explain,
            measure,
        } => {
            let Some(checked) = front_end(&file, stderr) else {
                return 1;
            };
            plan_cmd(&checked, &target, m, explain, measure, stdout)
        }
        Command::Quantize {
            format,
            input,
            output,
            tensor,
        } => quantize(&input, &output, format, tensor.as_deref(), stdout, stderr),
        Command::Run {
            manifest,
            device,
            inputs,
            random,
            seed,
            output,
            reference,
            profile,
        } => run_kernel(
            &RunArgs {
                manifest: &manifest,
                device: &device,
                inputs: match (&inputs, random) {
                    (Some(path), _) => Inputs::File(path),
                    (None, Some(rows)) => Inputs::Random { rows, seed },
                    // clap requires one of the two.
                    (None, None) => Inputs::Random { rows: 1, seed },
                },
                output: output.as_deref(),
                reference: reference || random.is_some(),
                profile,
            },
            stdout,
            stderr,
        ),
    }
}

fn bench_cmd(
    manifest: &Path,
    device: &str,
    m: u32,
    warmup: usize,
    iters: usize,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    if device != "hip" && device != "cuda" {
        return Err(format!(
            "nibble bench times kernels on a GPU: --device hip or --device cuda (got `{device}`)"
        ));
    }
    let bundle = crate::run::Bundle::load(manifest).map_err(|e| e.to_string())?;
    let man = &bundle.manifest;
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let code = std::fs::read(dir.join(&man.code_object))
        .map_err(|e| format!("{}: {e}", dir.join(&man.code_object).display()))?;
    let inputs = crate::run::random_inputs(man, m, 1).map_err(|e| e.to_string())?;
    let (mut t, device_name) = if device == "cuda" {
        let out = crate::run::run_cuda(&bundle, &code, &inputs, cuda_device()?, warmup, iters)
            .map_err(|e| e.to_string())?;
        (out.times_ms, out.device)
    } else {
        let out = crate::run::run_hip(&bundle, &code, &inputs, 0, warmup, iters)
            .map_err(|e| e.to_string())?;
        (out.times_ms, out.device_arch)
    };
    t.sort_by(f32::total_cmp);
    let median_us = t
        .get(t.len() / 2)
        .map(|&v| f64::from(v) * 1e3)
        .ok_or("no timed runs")?;
    let (n, k) = (f64::from(man.shapes.n), f64::from(man.shapes.k));
    let weight_bytes = n * k / 2.0 + n * k / f64::from(man.format.group) * 4.0;
    let flops = 2.0 * f64::from(m) * n * k;
    let arch = Arch::from_name(&man.arch).map(|a| a.info());
    let _ = writeln!(
        stdout,
        "{} on {} (M={m} N={n} K={k}): median {median_us:.1} us of {} runs, weights {:.2} TB/s, {:.1} TFLOP/s{}",
        man.kernel,
        device_name,
        t.len(),
        weight_bytes / (median_us * 1e-6) / 1e12,
        flops / (median_us * 1e-6) / 1e12,
        arch.map_or(String::new(), |a| format!(
            "; HBM roofline {:.1} us at {} TB/s",
            weight_bytes / (a.hbm_tb_s * 1e12) * 1e6,
            a.hbm_tb_s
        ))
    );
    Ok(())
}

/// The CUDA device index: `$NIBBLE_CUDA_DEVICE`, default 0.
fn cuda_device() -> Result<usize, String> {
    nibble_runtime::cuda::default_index().map_err(|e| e.to_string())
}

/// `nibble tune`: the device is opened first, so a machine without a GPU fails before any compilation.
fn tune_cmd(
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
    if cuda {
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
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for k in &checked.kernels {
        let m = m_arg.unwrap_or_else(|| k.auto_m()).max(1);
        if !matches!(k.schedule, Schedule::Auto { .. }) {
            let _ = writeln!(stdout, "{}: has an explicit tiling, not tuned", k.name);
            continue;
        }
        let mut best: Option<(f64, crate::spec::Tiling)> = None;
        for p in crate::costmodel::rank(k, arch, m, false)
            .into_iter()
            .take(top)
        {
            let mut spec = k.clone();
            spec.schedule = Schedule::Manual(p.tiling);
            let out = driver::compile_kernel(&spec, arch, &Default::default())
                .map_err(|e| e.to_string())?;
            let bundle = crate::run::Bundle {
                manifest_path: "tune".into(),
                manifest: out.manifest,
                kernel_ir: out.kernel_ir,
            };
            let inputs =
                crate::run::random_inputs(&bundle.manifest, m, 1).map_err(|e| e.to_string())?;
            let mut t = if cuda {
                crate::run::run_cuda(&bundle, &out.hsaco, &inputs, cuda_device()?, 3, 10)
                    .map_err(|e| e.to_string())?
                    .times_ms
            } else {
                crate::run::run_hip(&bundle, &out.hsaco, &inputs, 0, 3, 10)
                    .map_err(|e| e.to_string())?
                    .times_ms
            };
            t.sort_by(f32::total_cmp);
            let us = t
                .get(t.len() / 2)
                .map(|&v| f64::from(v) * 1e3)
                .ok_or("no timed runs")?;
            let _ = writeln!(
                stdout,
                "{}: {}x{}x{} waves {} {}: predicted {:.1} us, measured {us:.1} us",
                k.name,
                p.tiling.tile_m,
                p.tiling.tile_n,
                p.tiling.tile_k,
                p.tiling.waves_name(),
                p.tiling.mma.name(),
                p.predicted_us
            );
            if best.is_none_or(|(b, _)| us < b) {
                best = Some((us, p.tiling));
            }
        }
        let Some((us, tiling)) = best else {
            continue;
        };
        let mut spec = k.clone();
        spec.schedule = Schedule::Manual(tiling);
        let w = driver::compile_one_to_dir(&spec, arch, out_dir, &Default::default(), None)
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

fn compile_model_cmd(
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

fn plan_cmd(
    checked: &CheckedFile,
    targets: &[Arch],
    m_arg: Option<u32>,
    explain: bool,
    measure: bool,
    out: &mut dyn Write,
) -> i32 {
    use crate::costmodel;
    use crate::spec::Schedule;
    let row = |p: &costmodel::Prediction| {
        let t = &p.tiling;
        format!(
            "{:>3}x{:<3}x{:<3} w{} {:<8} {:>5} {:>6} {:>4} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>6.3}  {:<8}{}",
            t.tile_m,
            t.tile_n,
            t.tile_k,
            t.waves_name(),
            t.mma.name(),
            p.split_k,
            p.workgroups,
            p.occupancy,
            p.rounds,
            p.memory_us,
            p.valu_us,
            p.mfma_us,
            p.predicted_us,
            p.valu_per_element,
            p.route,
            if p.measured { " measured" } else { "" }
        )
        .trim_end()
        .to_string()
    };
    let header = "tile         waves mma     split    wgs  occ rounds    mem us   valu us   mfma us  predict us   valu/e  route";
    for k in &checked.kernels {
        let m = m_arg.unwrap_or_else(|| k.auto_m()).max(1);
        let archs = if targets.is_empty() {
            k.targets.clone()
        } else {
            targets.to_vec()
        };
        for arch in archs {
            let (fp4, bf16) = costmodel::rooflines(k, arch, m);
            let _ = writeln!(
                out,
                "kernel {} on {} at M={m}: HBM roofline {fp4:.1} us (bf16 weights: {bf16:.1} us)",
                k.name,
                arch.name()
            );
            let ranked = match &k.schedule {
                Schedule::Auto { .. } => costmodel::rank(k, arch, m, measure),
                Schedule::Manual(t) => {
                    let measured = if measure {
                        costmodel::measure_tiling(k, arch, *t)
                    } else {
                        None
                    };
                    costmodel::predict(k, arch, m, *t, measured)
                        .into_iter()
                        .collect()
                }
            };
            let Some(best) = ranked.first() else {
                let _ = writeln!(out, "  no feasible tiling");
                continue;
            };
            let _ = writeln!(out, "  {header}");
            let shown = if explain { ranked.len().min(12) } else { 1 };
            for p in &ranked[..shown] {
                let _ = writeln!(out, "  {}", row(p));
            }
            if explain && ranked.len() > 1 {
                let bound = if best.memory_us >= best.valu_us.max(best.mfma_us) {
                    "memory"
                } else if best.valu_us >= best.mfma_us {
                    "VALU"
                } else {
                    "MFMA"
                };
                let _ = writeln!(
                    out,
                    "  chosen: the first row, {bound}-bound; {} candidates considered ({} shown); ties go to less VALU work (all waves' VALU time spread over the SIMDs), then lower VALU cost per element, then more waves and larger tiles",
                    ranked.len(),
                    shown
                );
            }
        }
    }
    0
}

/// Files named on the command line, with directories replaced by their `.nib` files (sorted, not recursive).
fn expand_inputs(inputs: &[PathBuf], stderr: &mut dyn Write) -> Option<Vec<PathBuf>> {
    let mut out = vec![];
    for p in inputs {
        if p.is_dir() {
            let entries = match std::fs::read_dir(p) {
                Ok(e) => e,
                Err(e) => {
                    let _ = writeln!(stderr, "error: cannot read directory {}: {e}", p.display());
                    return None;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "nib"))
                .collect();
            files.sort();
            if files.is_empty() {
                let _ = writeln!(stderr, "error: no .nib files in {}", p.display());
                return None;
            }
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Some(out)
}

fn inspect(
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

/// Runs the front end, printing diagnostics or the read error to `stderr`.
fn front_end(file: &Path, stderr: &mut dyn Write) -> Option<CheckedFile> {
    match dsl::check_file(file) {
        Ok(checked) => Some(checked),
        Err(FrontEndError::Diagnostics(d)) => {
            let n = d.len();
            let _ = write!(stderr, "{}", d.render());
            let _ = writeln!(
                stderr,
                "error: could not check {} due to {n} error{}",
                file.display(),
                if n == 1 { "" } else { "s" }
            );
            None
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            None
        }
    }
}

fn compile(
    checked: &CheckedFile,
    targets: &[Arch],
    out_dir: &Path,
    emit: &[String],
    m_range: Option<(u32, u32)>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    // A kernel's schedule was checked against its own target list only.
    for k in &checked.kernels {
        for t in targets {
            if !k.targets.contains(t) {
                let listed: Vec<&str> = k.targets.iter().map(|a| a.name()).collect();
                let _ = writeln!(
                    stderr,
                    "error: kernel `{}` does not list target {} (its targets: {}); add it to the kernel's `target` line",
                    k.name,
                    t.name(),
                    listed.join(", ")
                );
                return 1;
            }
        }
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

fn quantize(
    input: &Path,
    output: &Path,
    format: QuantFormat,
    tensor: Option<&str>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    match tensors::quantize_file(input, output, format, tensor) {
        Ok(q) => {
            let group = format.group();
            let scale_dtype = match format {
                QuantFormat::Mxfp4 => "U8 (E8M0)",
                QuantFormat::Nvfp4 => "F8_E4M3",
            };
            let _ = write!(
                stdout,
                "quantized `{}` {} [{}, {}] to {format}: weight U8 [{}, {}], weight_scale {scale_dtype} [{}, {}]",
                q.source,
                q.source_dtype,
                q.n,
                q.k,
                q.n,
                q.k / 2,
                q.n,
                q.k / group
            );
            if let Some(t) = q.tensor_scale {
                let _ = write!(stdout, ", weight_scale_2 F32 [] = {t:e}");
            }
            if let Some(b) = &q.bias {
                let _ = write!(stdout, ", bias (copied from `{b}`)");
            }
            let _ = writeln!(stdout, " -> {}", output.display());
            0
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {}", e.in_file(input));
            1
        }
    }
}

/// Arguments of `nibble run`.
struct RunArgs<'a> {
    manifest: &'a Path,
    device: &'a str,
    inputs: Inputs<'a>,
    output: Option<&'a Path>,
    reference: bool,
    profile: bool,
}

enum Inputs<'a> {
    File(&'a Path),
    Random { rows: u32, seed: u64 },
}

/// Devices `nibble run` knows.
const DEVICES: &[&str] = &["interpret", "hip", "cuda"];

fn run_kernel(args: &RunArgs<'_>, stdout: &mut dyn Write, stderr: &mut dyn Write) -> i32 {
    match run_kernel_inner(args, stdout) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(stderr, "error: {message}");
            1
        }
    }
}

/// Runs `nibble run`; `Err` is the one-line error to print. Everything is checked before the kernel runs, and `y`
/// is written (atomically) before the reference comparison is reported.
fn run_kernel_inner(args: &RunArgs<'_>, stdout: &mut dyn Write) -> Result<i32, String> {
    use nibble_runtime::numerics::reference::dequant_weight;
    use nibble_runtime::numerics::DType;

    match args.device {
        "interpret" | "hip" | "cuda" => {}
        "rocm" | "gpu" => {
            return Err(format!(
                "device {} is not available in this build (devices: {})",
                args.device,
                DEVICES.join(", ")
            ))
        }
        other => {
            return Err(format!(
                "unknown device `{other}` (devices: {})",
                DEVICES.join(", ")
            ))
        }
    }
    if let Some(output) = args.output {
        if let Inputs::File(inputs) = args.inputs {
            if tensors::same_file(inputs, output) {
                return Err(format!(
                    "refusing to write {}: it is the inputs file",
                    output.display()
                ));
            }
        }
        if tensors::same_file(args.manifest, output) {
            return Err(format!(
                "refusing to write {}: it is the manifest",
                output.display()
            ));
        }
        let out_dir = match output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !out_dir.is_dir() {
            return Err(format!(
                "cannot write {}: directory {} does not exist",
                output.display(),
                out_dir.display()
            ));
        }
    }
    let bundle = crate::run::Bundle::load(args.manifest).map_err(|e| e.to_string())?;
    let m = &bundle.manifest;
    if args.device == "cuda" && nibble_runtime::ptx::parse_sm(&m.arch).is_none() {
        return Err(crate::run::CudaRunError::NotCuda {
            manifest: args.manifest.display().to_string(),
            arch: m.arch.clone(),
        }
        .to_string());
    }
    if args.device != "cuda" && nibble_runtime::ptx::parse_sm(&m.arch).is_some() {
        return Err(format!(
            "{} is compiled for {}: the interpreter and HIP run AMD (gfx) kernels; use --device cuda on a machine \
             with an NVIDIA GPU (or nibble-rt there)",
            args.manifest.display(),
            m.arch
        ));
    }
    let dir = args.manifest.parent().unwrap_or(Path::new("."));
    if let Some(output) = args.output {
        for (file, what) in [(&m.kernel_ir, "kernel IR"), (&m.code_object, "code object")] {
            if tensors::same_file(&dir.join(file), output) {
                return Err(format!(
                    "refusing to write {}: it is the kernel's {what}",
                    output.display()
                ));
            }
        }
    }
    let y_dtype = DType::parse(&m.shapes.y_dtype).ok_or_else(|| {
        format!(
            "{}: y dtype {:?} is not bf16 or f16",
            args.manifest.display(),
            m.shapes.y_dtype
        )
    })?;
    let x_dtype = DType::parse(&m.shapes.x_dtype).ok_or_else(|| {
        format!(
            "{}: x dtype {:?} is not bf16 or f16",
            args.manifest.display(),
            m.shapes.x_dtype
        )
    })?;
    let inputs = match args.inputs {
        Inputs::File(path) => {
            let file = TensorFile::open(path).map_err(|e| e.to_string())?;
            let inputs = tensors::load_layer_inputs(&file, m).map_err(|e| e.in_file(path))?;
            crate::run::validate(m, &inputs).map_err(|e| format!("{}: {e}", path.display()))?;
            inputs
        }
        Inputs::Random { rows, seed } => {
            let inputs = crate::run::random_inputs(m, rows, seed).map_err(|e| e.to_string())?;
            crate::run::validate(m, &inputs).map_err(|e| e.to_string())?;
            inputs
        }
    };
    let (rows, n, k) = (inputs.m as usize, m.shapes.n as usize, m.shapes.k as usize);
    // The reference's dequantization also checks the scales; do it before the (slower) kernel run.
    let w_deq = if args.reference {
        Some(
            dequant_weight(
                &m.format,
                &inputs.weight,
                &inputs.scales,
                inputs.tensor_scale,
                n,
                k,
                x_dtype,
            )
            .map_err(|e| format!("reference: {e}"))?,
        )
    } else {
        None
    };
    if args.device == "hip" || args.device == "cuda" {
        // The GPU paths: the same validation and the manifest's layouts, then the code object on the first HIP
        // device, or the PTX on the CUDA device (`$NIBBLE_CUDA_DEVICE`).
        let code = std::fs::read(dir.join(&m.code_object))
            .map_err(|e| format!("{}: {e}", dir.join(&m.code_object).display()))?;
        let (y, times_ms, vendor, device) = if args.device == "cuda" {
            let out = crate::run::run_cuda(&bundle, &code, &inputs, cuda_device()?, 1, 1)
                .map_err(|e| e.to_string())?;
            (out.y, out.times_ms, "CUDA", out.device)
        } else {
            let out =
                crate::run::run_hip(&bundle, &code, &inputs, 0, 1, 1).map_err(|e| e.to_string())?;
            (out.y, out.times_ms, "HIP", out.device_arch)
        };
        let _ = writeln!(
            stdout,
            "ran {} ({}) on {vendor} device {device}: M={rows} N={n} K={k}, {:.1} us",
            m.kernel,
            m.arch,
            times_ms.first().copied().unwrap_or(0.0) * 1e3
        );
        return finish_run(
            args, stdout, &y, rows, n, k, y_dtype, x_dtype, m, &inputs, w_deq,
        );
    }
    let start = std::time::Instant::now();
    let out = crate::run::run_interpreted(&bundle, &inputs, &Default::default())
        .map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let _ = writeln!(
        stdout,
        "ran {} ({}) on the interpreter: M={rows} N={n} K={k}, {} workgroups, {} MFMAs, {seconds:.2} s",
        m.kernel, m.arch, out.stats.workgroups, out.stats.mfma
    );
    if args.profile {
        let _ = writeln!(
            stdout,
            "LDS bank conflicts (32 banks x 4 bytes, 128 bytes per cycle):"
        );
        for (op, st) in &out.stats.lds_ops {
            let _ = writeln!(
                stdout,
                "  {op}: {} wave executions, {} conflict cycles ({:.3} per execution)",
                st.executions,
                st.conflict_cycles,
                st.conflict_cycles as f64 / st.executions.max(1) as f64
            );
        }
    }
    finish_run(
        args, stdout, &out.y, rows, n, k, y_dtype, x_dtype, m, &inputs, w_deq,
    )
}

/// Writes `y` (if asked) and checks it against the reference (if computed): the part of `nibble run` shared by
/// every device.
#[allow(clippy::too_many_arguments)]
fn finish_run(
    args: &RunArgs<'_>,
    stdout: &mut dyn Write,
    y: &[u16],
    rows: usize,
    n: usize,
    k: usize,
    y_dtype: nibble_runtime::numerics::DType,
    x_dtype: nibble_runtime::numerics::DType,
    m: &nibble_runtime::manifest::Manifest,
    inputs: &crate::run::LayerInputs,
    w_deq: Option<Vec<f32>>,
) -> Result<i32, String> {
    use nibble_runtime::numerics::compare::{compare, decode};
    use nibble_runtime::numerics::DType;
    if let Some(output) = args.output {
        let y_st = tensors::half_dtype(y_dtype.name()).ok_or("y dtype is not bf16 or f16")?;
        tensors::write_atomic(
            output,
            &[(
                "y".to_string(),
                tensors::OwnedTensor::u16s(y_st, vec![rows, n], y),
            )],
        )
        .map_err(|e| e.to_string())?;
        let _ = writeln!(
            stdout,
            "wrote y {} [{rows}, {n}] to {}",
            y_dtype.name(),
            output.display()
        );
    }
    let Some(w_deq) = w_deq else {
        return Ok(0);
    };
    let x: Vec<f32> = inputs.x.bits.iter().map(|&b| decode(b, x_dtype)).collect();
    let bias: Option<Vec<f32>> = match (&inputs.bias, &m.shapes.bias_dtype) {
        (Some(b), Some(dt)) => {
            let dt = DType::parse(dt).ok_or("bias dtype is not bf16 or f16")?;
            Some(b.bits.iter().map(|&v| decode(v, dt)).collect())
        }
        _ => None,
    };
    let c = compare(
        y,
        y_dtype,
        &x,
        &w_deq,
        rows,
        n,
        k,
        inputs.tensor_scale,
        bias.as_deref(),
    )
    .map_err(|e| format!("reference: {e}"))?;
    let _ = writeln!(stdout, "reference: {c}");
    if c.passes() {
        Ok(0)
    } else {
        Err(format!(
            "{} of {} outputs exceed the error bound of docs/NUMERICS.md (max error/bound {:.4} at [{}, {}])",
            c.violations, c.elements, c.max_ratio, c.worst.0, c.worst.1
        ))
    }
}
