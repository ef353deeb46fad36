//! The `nibble` command line: `check` and `compile`. `main.rs` only forwards to [`run`], so tests drive the CLI
//! in-process with their own output buffers.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::arch::Arch;
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
    /// Compile every kernel of a .nib file to code objects and manifests.
    Compile {
        /// The .nib file.
        file: PathBuf,
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
            file,
            target,
            out_dir,
            emit,
        } => {
            let Some(checked) = front_end(&file, stderr) else {
                return 1;
            };
            compile(&checked, &target, &out_dir, &emit, stderr)
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
    _out_dir: &Path,
    _emit: &[String],
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
    // TODO(driver): call `crate::driver::compile(checked, targets, out_dir, emit)` and report what was written.
    let _ = writeln!(stderr, "compile: code generation not wired yet");
    1
}
