//! The `nibble` command line: argument parsing and dispatch, with one module per group of commands (`build`:
//! compile, compile-model, inspect; `plan`; `device`: bench, tune; `run_kernel`: quantize, run). `main.rs` only
//! forwards to [`run`], so tests drive the CLI in-process with their own output buffers.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::arch::Arch;
use crate::driver::Stage;
use crate::dsl::{self, FrontEndError};
use crate::spec::CheckedFile;
use crate::tensors::QuantFormat;

mod build;
mod device;
mod plan;
mod run_kernel;

use build::{compile, compile_model_cmd, inspect};
use device::{bench_cmd, tune_cmd};
use plan::plan_cmd;
use run_kernel::{quantize, run_kernel, Inputs, RunArgs};

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
    /// Time compiled kernels on a GPU with random inputs: median of warm runs (HIP events; on CUDA each launch after
    /// a 256 MB L2 flush, as `nibble-rt bench`), weight traffic in TB/s, TFLOP/s, and the HBM roofline of the arch.
    Bench {
        /// The kernels' manifests.
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// Where to run: `hip` (gfx kernels) or `cuda` (sm_80/sm_90 kernels; `$NIBBLE_CUDA_DEVICE`, default 0).
        #[arg(long, default_value = "hip", value_name = "DEVICE")]
        device: String,
        /// Rows (tokens), one or more (`--m 1,16`); a kernel is timed at those within its M range.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "16",
            value_name = "M[,M]"
        )]
        m: Vec<u32>,
        /// Untimed launches first.
        #[arg(long, default_value_t = 10)]
        warmup: u32,
        /// Timed launches (on CUDA each after a 256 MB L2 flush, as `nibble-rt bench`).
        #[arg(long, default_value_t = 50)]
        iters: u32,
    },
    /// Measure the cost model's best candidate tilings of each `schedule auto` kernel on a GPU (on NVIDIA each with
    /// both stagings unless the kernel fixes one) and compile the fastest into DIR (its manifest records the chosen
    /// tiling and, under `tuned`, the measurement).
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

/// The error for a `--target` that one of the file's kernels does not list: a kernel's schedule and budgets were
/// checked against its own target list only.
fn unlisted_target(checked: &CheckedFile, targets: &[Arch]) -> Option<String> {
    let (k, t) = checked.kernels.iter().find_map(|k| {
        targets
            .iter()
            .find(|t| !k.targets.contains(t))
            .map(|t| (k, t))
    })?;
    let listed: Vec<&str> = k.targets.iter().map(|a| a.name()).collect();
    Some(format!(
        "kernel `{}` does not list target {} (its targets: {}); add it to the kernel's `target` line",
        k.name,
        t.name(),
        listed.join(", ")
    ))
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
            manifests,
            device,
            m,
            warmup,
            iters,
        } => match bench_cmd(&manifests, &device, &m, warmup, iters, stdout) {
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
            if let Some(e) = unlisted_target(&checked, &target) {
                let _ = writeln!(stderr, "error: {e}");
                return 1;
            }
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
