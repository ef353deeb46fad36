//! The `nibble` command line: `check`, `compile` and `inspect`. `main.rs` only forwards to [`run`], so tests drive the CLI
//! in-process with their own output buffers.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::arch::Arch;
use crate::driver::{self, Stage};
use crate::dsl::{self, FrontEndError};
use crate::spec::CheckedFile;

/// Stages `--emit` accepts.
pub const EMIT_STAGES: &[&str] = &["linalg", "dequant", "gpu", "llvm", "isa"];

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
        #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(EMIT_STAGES))]
        emit: Vec<String>,
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
            compile(&all, &target, &out_dir, &emit, stdout, stderr)
        }
        Command::Inspect {
            file,
            json,
            elements_per_iteration,
        } => inspect(&file, json, elements_per_iteration, stdout, stderr),
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
    match driver::compile_to_dir(&checked.kernels, targets, out_dir, &emit) {
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
