//! The `.nib` front end: source text to a checked [`CheckedFile`], or every error found, with spans.
//!
//! Stages: [`lexer`] (tokens with byte spans) -> [`parser`] (recursive descent to the span-carrying [`ast`], with
//! error recovery) -> [`check`] (names, types, shapes, tiling rules, [`budget`]s) -> [`spec::CheckedFile`]. The
//! built-in element and formats live in `prelude.nib`, which goes through the same stages. All errors are one
//! type, [`Error`], collected into [`Diagnostics`] and rendered by codespan-reporting (see `docs/DSL.md`).
//!
//! Architecture invariant: no input makes the front end panic; every problem is a [`Diagnostics`] entry.
//!
//! [`spec::CheckedFile`]: crate::spec::CheckedFile

pub mod ast;
pub mod budget;
pub mod check;
pub mod diagnostics;
pub mod lexer;
pub mod parser;

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use thiserror::Error as ThisError;

pub use diagnostics::{Diagnostics, Error};

use crate::spec::{CheckedFile, FormatSpec, KernelSpec, Schedule};
use diagnostics::SourceId;

/// The built-in declarations (`e2m1`, `mxfp4`, `nvfp4`), in the DSL itself.
pub const PRELUDE: &str = include_str!("prelude.nib");
/// Largest source file accepted.
pub const MAX_SOURCE_BYTES: usize = 4 << 20;
/// Most errors kept for one file; the rest are counted.
pub const MAX_ERRORS: usize = 100;

/// Checks `src` (shown as `path` in diagnostics) against the language rules and the target tables.
pub fn check_source(path: &str, src: &str) -> Result<CheckedFile, Diagnostics> {
    if src.len() > MAX_SOURCE_BYTES {
        let e = Error::new(
            diagnostics::Loc::user(ast::Span::new(0, 0)),
            format!(
                "file is too large ({} bytes; the limit is {MAX_SOURCE_BYTES})",
                src.len()
            ),
            "file starts here",
        );
        return Err(Diagnostics::new(path, "", PRELUDE, vec![e]));
    }
    let mut errors = vec![];
    let prelude_tokens = lexer::lex(PRELUDE, SourceId::Prelude, &mut errors);
    let prelude = parser::parse(&prelude_tokens, SourceId::Prelude, &mut errors);
    let tokens = lexer::lex(src, SourceId::User, &mut errors);
    let file = parser::parse(&tokens, SourceId::User, &mut errors);
    let checked = check::check(
        &check::Unit {
            id: SourceId::Prelude,
            text: PRELUDE,
            file: &prelude,
        },
        &check::Unit {
            id: SourceId::User,
            text: src,
            file: &file,
        },
        &mut errors,
    );
    if errors.is_empty() {
        return Ok(checked);
    }
    // Source order reads best; the sort is stable, so errors at one place keep their discovery order.
    errors.sort_by_key(|e| (e.at.source != SourceId::Prelude, e.at.span.start));
    Err(Diagnostics::new(path, src, PRELUDE, errors))
}

/// Why [`check_file`] failed.
#[derive(Debug, ThisError)]
pub enum FrontEndError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: larger than {MAX_SOURCE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("cannot read {path}: not valid UTF-8 (at byte {offset})")]
    NotUtf8 { path: String, offset: usize },
    #[error(transparent)]
    Diagnostics(#[from] Diagnostics),
}

/// Reads and checks a file; diagnostics name it as `path` is written.
pub fn check_file(path: &Path) -> Result<CheckedFile, FrontEndError> {
    let shown = path.display().to_string();
    let io = |source| FrontEndError::Io {
        path: shown.clone(),
        source,
    };
    let mut bytes = vec![];
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SOURCE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(FrontEndError::TooLarge { path: shown });
    }
    let src = String::from_utf8(bytes).map_err(|e| FrontEndError::NotUtf8 {
        path: shown.clone(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    Ok(check_source(&shown, &src)?)
}

/// One line describing a format: `mxfp4: element e2m1 (exp 2, man 1, bias 1), scale e8m0 per 32, ...`.
pub fn describe_format(f: &FormatSpec) -> String {
    let e = &f.element;
    format!(
        "{}: element {} (exp {}, man {}, bias {}), scale {} per {}, {}",
        f.name,
        e.name,
        e.exp_bits,
        e.man_bits,
        e.bias,
        f.scale.name(),
        f.group,
        if f.tensor_scale {
            "tensor scale f32"
        } else {
            "no tensor scale"
        }
    )
}

/// The resolved kernel, one fact per line (what `nibble check` prints).
pub fn describe_kernel(k: &KernelSpec) -> String {
    let mut s = String::new();
    let targets: Vec<&str> = k.targets.iter().map(|a| a.name()).collect();
    // Writing to a String cannot fail.
    let _ = writeln!(s, "kernel {}", k.name);
    let _ = writeln!(s, "  targets   {}", targets.join(", "));
    let _ = writeln!(s, "  x         {}[M, {}]", k.x.name(), k.k);
    let _ = writeln!(s, "  w         {}[{}, {}]", k.format.name, k.n, k.k);
    let _ = writeln!(s, "  y         {}[M, {}]", k.y.name(), k.n);
    if let Some(b) = k.bias {
        let _ = writeln!(s, "  bias      {}[{}]", b.name(), k.n);
    }
    let _ = writeln!(s, "  format    {}", describe_format(&k.format));
    // (These statements only matter to the NVIDIA targets.)
    let unroll = k.unroll.map(|u| format!("{u} K steps per loop iteration"));
    let nv_lines = [
        ("staging", k.staging.map(|st| st.name().to_string())),
        ("scales", k.scales.map(|sc| sc.name().to_string())),
        ("unroll", unroll),
    ];
    for (key, value) in nv_lines {
        if let Some(v) = value {
            let _ = writeln!(s, "  {key:<9} {v} (NVIDIA targets)");
        }
    }
    match &k.schedule {
        Schedule::Auto { m } => {
            let _ = writeln!(s, "  schedule  auto (tiling for M = {m})");
        }
        Schedule::Manual(t) => {
            let _ = writeln!(
                s,
                "  schedule  tile m={} n={} k={}, waves m={} n={}{}, mma {}, stages {}{}",
                t.tile_m,
                t.tile_n,
                t.tile_k,
                t.waves_m,
                t.waves_n,
                if t.waves_k > 1 {
                    format!(" k={}", t.waves_k)
                } else {
                    String::new()
                },
                t.mma.name(),
                t.stages,
                t.split_k
                    .map(|s| format!(", split {s}"))
                    .unwrap_or_default()
            );
            let v = budget::vgprs(t, k.format.group);
            for a in &k.targets {
                let info = a.info();
                // The plan's workgroup buffer, whose layout depends on the route (f32 rows on gfx942's xf32 route,
                // unpadded core matrices on wgmma, unpadded swizzled rows where they buy occupancy); the checker's
                // bf16 estimate where the kernel does not plan.
                let (lds, route) = match crate::plan::plan(k, *a) {
                    Ok(p) if p.dequant.xf32 => (u64::from(p.lds_bytes), ", xf32 route"),
                    Ok(p) if p.wgmma => (u64::from(p.lds_bytes), ", wgmma route"),
                    Ok(p) if p.x_swizzle => (u64::from(p.lds_bytes), ", swizzled rows"),
                    Ok(p) => (u64::from(p.lds_bytes), ""),
                    Err(_) => (budget::lds_bytes(t, k.format.group, info), ""),
                };
                let _ = writeln!(
                    s,
                    "  budget    {}: LDS {lds}/{} bytes{route}, VGPRs {}/{} (acc {} + 2x{} weights + {} scales + {} A + {})",
                    info.name,
                    info.lds_bytes,
                    v.total(),
                    budget::max_vgprs(t, info),
                    v.acc,
                    v.wwords,
                    v.scales,
                    v.areg,
                    v.overhead
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "  hash      {}",
        k.source_hash.get(..16).unwrap_or(&k.source_hash)
    );
    s
}

/// The whole checked file: declared formats, then kernels.
pub fn describe(file: &CheckedFile) -> String {
    let mut s = String::new();
    for f in &file.formats {
        let _ = writeln!(s, "format {}", describe_format(f));
    }
    for k in &file.kernels {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(&describe_kernel(k));
    }
    s
}
