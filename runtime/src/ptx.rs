//! PTX code objects (the sm_80/sm_90 target): a small reader of the module-level facts the runtime checks against
//! the manifest before anything is loaded.
//!
//! Read from the PTX text (comments stripped): `.target sm_XY`, every `.entry <name>(<params>)` with the byte size of
//! each `.param` (`.u64/.b64/.s64/.f64` 8, `.u32/.b32/.s32/.f32` 4, `.u16/.b16/.s16/.f16/.bf16` 2, `.u8/.b8/.s8` 1,
//! arrays `[n]` multiply), the static `.shared` bytes (all `.shared` declarations of the module, including those
//! inside the entry), and the source hash nibble embeds as `.global .align 1 .b8 nibble_source_hash[64] = {...};`.
//! [`check_against_manifest`] compares these with a manifest.

use thiserror::Error;

use crate::bundle::SOURCE_HASH_SYMBOL;
use crate::manifest::Manifest;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PtxError {
    #[error("PTX is not UTF-8 text (invalid byte at offset {0})")]
    NotText(usize),
    #[error("PTX has no `.target` directive")]
    NoTarget,
    #[error("PTX: {0}")]
    Malformed(String),
    #[error("PTX targets {ptx}, the manifest says {manifest}")]
    TargetMismatch { ptx: String, manifest: String },
    #[error("PTX has no `.entry {symbol}` (entries: {entries})")]
    NoEntry { symbol: String, entries: String },
    #[error("PTX entry {symbol}: {what}")]
    Params { symbol: String, what: String },
    #[error(
        "PTX declares {ptx} bytes of static shared memory, the manifest's lds_bytes is {manifest}"
    )]
    Shared { ptx: u64, manifest: u32 },
    #[error(
        "PTX {} dynamic shared memory, the manifest's dynamic_lds_bytes is {manifest}",
        if *ptx { "declares" } else { "declares no" }
    )]
    DynamicShared { ptx: bool, manifest: u32 },
    #[error("PTX has no `{SOURCE_HASH_SYMBOL}` byte array (nibble embeds the kernel's source hash in every code object)")]
    NoSourceHash,
    #[error("the PTX was compiled from another source (source hash {ptx}) than the manifest says ({manifest})")]
    SourceHash { ptx: String, manifest: String },
}

/// One `.entry` of a PTX module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxEntry {
    pub name: String,
    /// `(name, bytes)` of each `.param`, in order.
    pub params: Vec<(String, u64)>,
}

/// What the runtime reads from a PTX module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxInfo {
    /// `sm_90`, `sm_80`, `sm_90a`, ...
    pub target: String,
    pub entries: Vec<PtxEntry>,
    /// Total static `.shared` bytes.
    pub shared_bytes: u64,
    /// Whether the module declares dynamic shared memory (`.extern .shared ... name[]`).
    pub dynamic_shared: bool,
    /// The bytes of `nibble_source_hash`, if declared with an initializer.
    pub source_hash: Option<Vec<u8>>,
}

/// Removes `// ...` and `/* ... */` comments.
fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let (l, b) = (rest.find("//"), rest.find("/*"));
        let line_first = match (l, b) {
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(l), Some(b)) => l < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if let (true, Some(l)) = (line_first, l) {
            out.push_str(&rest[..l]);
            rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
        } else if let Some(b) = b {
            out.push_str(&rest[..b]);
            out.push(' ');
            rest = rest[b + 2..]
                .find("*/")
                .map_or("", |e| &rest[b + 2 + e + 2..]);
        }
    }
}

fn type_bytes(t: &str) -> Option<u64> {
    Some(match t {
        ".u64" | ".b64" | ".s64" | ".f64" => 8,
        ".u32" | ".b32" | ".s32" | ".f32" => 4,
        ".u16" | ".b16" | ".s16" | ".f16" | ".bf16" => 2,
        ".u8" | ".b8" | ".s8" => 1,
        _ => return None,
    })
}

/// Bytes of a declaration `... .type name[n][m]` (tokens after the state space).
fn decl_bytes(decl: &str) -> Result<(String, u64), String> {
    let toks: Vec<&str> = decl.split_whitespace().collect();
    let ty = toks
        .iter()
        .find_map(|t| type_bytes(t))
        .ok_or_else(|| format!("no element type in `{}`", decl.trim()))?;
    let last = toks.last().ok_or_else(|| "empty declaration".to_string())?;
    let (name, dims) = match last.find('[') {
        Some(i) => (&last[..i], &last[i..]),
        None => (*last, ""),
    };
    let mut count = 1u64;
    for d in dims.split('[').skip(1) {
        let n = d
            .strip_suffix(']')
            .and_then(|x| x.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("bad array size in `{}`", decl.trim()))?;
        count = count
            .checked_mul(n)
            .ok_or_else(|| format!("array size overflows in `{}`", decl.trim()))?;
    }
    Ok((name.to_string(), ty * count))
}

/// Parses the facts of the module doc from PTX bytes.
pub fn parse(bytes: &[u8]) -> Result<PtxInfo, PtxError> {
    let text = std::str::from_utf8(bytes).map_err(|e| PtxError::NotText(e.valid_up_to()))?;
    let text = strip_comments(text.trim_end_matches('\0'));
    let target = text
        .split(".target")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| c == ',' || c.is_whitespace())
                .find(|t| !t.is_empty())
        })
        .map(str::to_string)
        .ok_or(PtxError::NoTarget)?;
    let mut entries = vec![];
    let mut rest = text.as_str();
    while let Some(i) = rest.find(".entry") {
        let after = &rest[i + ".entry".len()..];
        let open = after
            .find('(')
            .ok_or_else(|| PtxError::Malformed("`.entry` without a parameter list".into()))?;
        let name = after[..open].trim().to_string();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(PtxError::Malformed(format!("bad entry name `{name}`")));
        }
        let close = after[open..].find(')').ok_or_else(|| {
            PtxError::Malformed(format!("entry {name}: unterminated parameter list"))
        })?;
        let list = &after[open + 1..open + close];
        let mut params = vec![];
        for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !p.starts_with(".param") {
                return Err(PtxError::Malformed(format!(
                    "entry {name}: `{p}` is not a .param"
                )));
            }
            params.push(
                decl_bytes(p).map_err(|w| PtxError::Malformed(format!("entry {name}: {w}")))?,
            );
        }
        entries.push(PtxEntry { name, params });
        rest = &after[open + close..];
    }
    let mut shared_bytes = 0u64;
    let mut dynamic_shared = false;
    for (i, _) in text.match_indices(".shared") {
        // A declaration has `.shared` as its own token (`ld.shared.u32`, `cvta.shared` are instructions).
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| !c.is_whitespace()) {
            continue;
        }
        let after = &text[i + ".shared".len()..];
        if !after.starts_with(char::is_whitespace) {
            continue;
        }
        let decl = after.split(';').next().unwrap_or("");
        let is_extern = text[..i].trim_end().ends_with(".extern");
        match decl_bytes(decl) {
            Ok((_, b)) if !is_extern => shared_bytes = shared_bytes.saturating_add(b),
            // Dynamic shared memory (`.extern .shared ... name[]`) has no static size.
            _ if is_extern => dynamic_shared = true,
            Ok(_) => {}
            Err(w) => return Err(PtxError::Malformed(format!(".shared declaration: {w}"))),
        }
    }
    let source_hash = parse_source_hash(&text)?;
    Ok(PtxInfo {
        target,
        entries,
        shared_bytes,
        dynamic_shared,
        source_hash,
    })
}

/// The bytes of `... nibble_source_hash[n] = {b0, b1, ...};`, if present.
fn parse_source_hash(text: &str) -> Result<Option<Vec<u8>>, PtxError> {
    let Some(i) = text.find(&format!("{SOURCE_HASH_SYMBOL}[")) else {
        return Ok(None);
    };
    let rest = &text[i..];
    let bad = || {
        PtxError::Malformed(format!(
            "`{SOURCE_HASH_SYMBOL}` has no byte-array initializer"
        ))
    };
    let open = rest.find('{').ok_or_else(bad)?;
    let close = rest.find('}').ok_or_else(bad)?;
    if close < open || rest[..open].contains(';') {
        return Err(bad());
    }
    rest[open + 1..close]
        .split(',')
        .map(|t| {
            let t = t.trim();
            let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                u8::from_str_radix(h, 16).ok()
            } else {
                t.parse::<u8>().ok()
            };
            v.ok_or_else(|| PtxError::Malformed(format!("`{SOURCE_HASH_SYMBOL}` byte `{t}`")))
        })
        .collect::<Result<Vec<u8>, _>>()
        .map(Some)
}

/// `(major, minor, arch-specific)` of `sm_XY[a]`.
pub fn parse_sm(arch: &str) -> Option<(u32, u32, bool)> {
    let d = arch.strip_prefix("sm_")?;
    let (d, specific) = match d.strip_suffix('a') {
        Some(x) => (x, true),
        None => (d, false),
    };
    if d.len() < 2 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = d.parse().ok()?;
    Some((v / 10, v % 10, specific))
}

/// Checks a PTX code object against its manifest: target, entry parameters (count and byte sizes, against the
/// manifest's arguments), static shared memory within `lds_bytes`, and the embedded source hash.
pub fn check_against_manifest(bytes: &[u8], m: &Manifest) -> Result<PtxInfo, PtxError> {
    let info = parse(bytes)?;
    if info.target != m.arch {
        return Err(PtxError::TargetMismatch {
            ptx: info.target.clone(),
            manifest: m.arch.clone(),
        });
    }
    let e = info
        .entries
        .iter()
        .find(|e| e.name == m.symbol)
        .ok_or_else(|| PtxError::NoEntry {
            symbol: m.symbol.clone(),
            entries: info
                .entries
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let perr = |what: String| PtxError::Params {
        symbol: m.symbol.clone(),
        what,
    };
    if e.params.len() != m.args.len() {
        return Err(perr(format!(
            "{} .param(s), the manifest lists {} arguments",
            e.params.len(),
            m.args.len()
        )));
    }
    for (i, ((pname, pbytes), a)) in e.params.iter().zip(&m.args).enumerate() {
        if *pbytes != u64::from(a.size) {
            return Err(perr(format!(
                "parameter {i} ({pname}) is {pbytes} bytes, the manifest's argument {} is {}",
                a.name, a.size
            )));
        }
    }
    if info.shared_bytes > u64::from(m.launch.lds_bytes) {
        return Err(PtxError::Shared {
            ptx: info.shared_bytes,
            manifest: m.launch.lds_bytes,
        });
    }
    if info.dynamic_shared != (m.launch.dynamic_lds_bytes > 0) {
        return Err(PtxError::DynamicShared {
            ptx: info.dynamic_shared,
            manifest: m.launch.dynamic_lds_bytes,
        });
    }
    match &info.source_hash {
        None => return Err(PtxError::NoSourceHash),
        Some(h) => {
            // The array may carry a trailing NUL.
            let h = h.strip_suffix(&[0]).unwrap_or(h);
            if h != m.source_hash.as_bytes() {
                return Err(PtxError::SourceHash {
                    ptx: String::from_utf8_lossy(h).into_owned(),
                    manifest: m.source_hash.clone(),
                });
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PTX module like the compiler's, for `args` byte sizes, `shared` bytes and `hash`.
    pub fn sample_ptx(
        target: &str,
        symbol: &str,
        params: &[u32],
        shared: u32,
        hash: &str,
    ) -> String {
        let ps: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let t = if s == 8 { ".u64" } else { ".u32" };
                format!("\t.param {t} {symbol}_param_{i}")
            })
            .collect();
        let hb: Vec<String> = hash.bytes().map(|b| b.to_string()).collect();
        format!(
            "//\n// Generated by LLVM NVPTX Back-End\n//\n\n.version 8.0\n.target {target}\n.address_size 64\n\n\
             .global .align 1 .b8 {SOURCE_HASH_SYMBOL}[{}] = {{{}}};\n\
             // .entry fake(.param .u32 x) in a comment\n\
             .visible .entry {symbol}(\n{}\n)\n.maxntid 128, 1, 1\n{{\n\t.reg .b32 %r<4>;\n\
             \t.shared .align 16 .b8 tile_a[{shared}];\n\tld.shared.u32 %r1, [tile_a];\n\tret;\n}}\n",
            hash.len(),
            hb.join(", "),
            ps.join(",\n")
        )
    }

    #[test]
    fn parses_the_sample() {
        let p = sample_ptx("sm_90", "k", &[8, 8, 8, 8, 4], 4096, "abc");
        let info = parse(p.as_bytes()).expect("parses");
        assert_eq!(info.target, "sm_90");
        assert_eq!(info.entries.len(), 1);
        assert_eq!(info.entries[0].name, "k");
        assert_eq!(
            info.entries[0]
                .params
                .iter()
                .map(|p| p.1)
                .collect::<Vec<_>>(),
            vec![8, 8, 8, 8, 4]
        );
        assert_eq!(info.shared_bytes, 4096);
        assert!(!info.dynamic_shared);
        let dynamic = parse(b".target sm_90a\n.extern .shared .align 16 .b8 dyn[];\n.entry k(.param .u64 a)\n{ret;}")
            .expect("parses");
        assert!(dynamic.dynamic_shared);
        assert_eq!(dynamic.shared_bytes, 0);
        assert_eq!(info.source_hash.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn malformed_ptx_is_rejected() {
        assert!(matches!(
            parse(&[0x2e, 0xff, 0xfe]),
            Err(PtxError::NotText(1))
        ));
        assert_eq!(parse(b".version 8.0\n"), Err(PtxError::NoTarget));
        let e = parse(b".target sm_90\n.entry k(.param .u64 a, .param .u32 b\n{ret;}")
            .expect_err("open");
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = parse(b".target sm_90\n.entry k(.param .u128 a)\n{}").expect_err("type");
        assert!(e.to_string().contains("element type"), "{e}");
        let e = parse(b".target sm_90\n.entry k(.reg .u32 a)\n{}").expect_err("not param");
        assert!(e.to_string().contains("not a .param"), "{e}");
        let e = parse(b".target sm_90\n.global .b8 nibble_source_hash[2];\n").expect_err("no init");
        assert!(e.to_string().contains("initializer"), "{e}");
        let e = parse(b".target sm_90\n.global .b8 nibble_source_hash[2] = {1, 300};\n")
            .expect_err("byte");
        assert!(e.to_string().contains("300"), "{e}");
        // Comments do not count.
        let info =
            parse(b".target sm_80 /* .target sm_90 */\n// .entry x(.param .u32 a)\n").expect("ok");
        assert_eq!((info.target.as_str(), info.entries.len()), ("sm_80", 0));
    }

    #[test]
    fn sm_names() {
        assert_eq!(parse_sm("sm_90"), Some((9, 0, false)));
        assert_eq!(parse_sm("sm_90a"), Some((9, 0, true)));
        assert_eq!(parse_sm("sm_80"), Some((8, 0, false)));
        assert_eq!(parse_sm("sm_120"), Some((12, 0, false)));
        assert_eq!(parse_sm("gfx942"), None);
        assert_eq!(parse_sm("sm_9"), None);
        assert_eq!(parse_sm("sm_x0"), None);
    }
}
