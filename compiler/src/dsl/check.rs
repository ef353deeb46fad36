//! Name resolution and semantic validation: AST (prelude + user file) to [`spec::CheckedFile`].
//!
//! Every check reports a precise error at the offending token with a hint and then carries on, so one run lists
//! every problem. A declaration that had errors is kept in the name tables as "invalid": references to it are not
//! reported again as unknown names.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::arch::{Arch, Vendor};
use crate::dsl::ast::{
    self, Dim, FormatStmtKind, Ident, KernelStmt, KernelStmtKind, KeyValue, Operand, Span,
};
use crate::dsl::budget;
use crate::dsl::diagnostics::{Error, Loc, SourceId};
use crate::spec::{
    CheckedFile, DType, FormatSpec, KernelSpec, MiniFloat, MmaAtom, ScaleStorage, ScaleType,
    Schedule, Staging, Tiling,
};

/// One parsed source: the prelude or the user's file.
pub struct Unit<'a> {
    pub id: SourceId,
    pub text: &'a str,
    pub file: &'a ast::File,
}

/// Allowed group sizes (`scale ... per G`).
pub const GROUPS: &[u32] = &[16, 32, 64, 128];
/// Allowed scale types, by DSL name.
pub const SCALE_TYPES: &[(&str, ScaleType)] = &[
    ("e8m0", ScaleType::E8m0),
    ("e4m3", ScaleType::E4m3),
    ("f16", ScaleType::F16),
    ("bf16", ScaleType::Bf16),
    ("f32", ScaleType::F32),
];
/// Activation / output / bias types.
pub const DTYPES: &[(&str, DType)] = &[("bf16", DType::Bf16), ("f16", DType::F16)];
/// Supported MFMA atoms by their written shape.
pub const ATOMS: &[((u32, u32, u32), MmaAtom)] = &[
    ((16, 16, 16), MmaAtom::M16N16K16),
    ((32, 32, 8), MmaAtom::M32N32K8),
];
/// Smallest and largest accepted element exponent bias.
pub const BIAS_RANGE: (i64, i64) = (-128, 127);
/// The name of the dynamic token dimension.
pub const DYNAMIC_DIM: &str = "M";
/// Largest `unroll` factor.
pub const MAX_UNROLL: u32 = 4;

const TILING_KEYWORDS: &[&str] = &["tile", "waves", "mma", "stages"];

struct Entry<T> {
    name: String,
    /// The declaration's name token.
    at: Loc,
    /// The declaration's exact source text (hashed into kernels that use it).
    text: String,
    /// `None` when the declaration had errors.
    value: Option<T>,
}

/// Names in declaration order, with a lookup table.
struct Table<T> {
    entries: Vec<Entry<T>>,
    index: HashMap<String, usize>,
}

impl<T> Table<T> {
    fn new() -> Self {
        Table {
            entries: vec![],
            index: HashMap::new(),
        }
    }
    fn get(&self, name: &str) -> Option<&Entry<T>> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
    fn names(&self) -> String {
        self.entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Checker<'e> {
    errors: &'e mut Vec<Error>,
    elements: Table<MiniFloat>,
    formats: Table<FormatSpec>,
}

/// Checks the prelude and the user's file together; errors are appended to `errors`.
pub fn check(prelude: &Unit, user: &Unit, errors: &mut Vec<Error>) -> CheckedFile {
    let mut c = Checker {
        errors,
        elements: Table::new(),
        formats: Table::new(),
    };
    let units = [prelude, user];
    for unit in units {
        for item in &unit.file.items {
            if let ast::Item::Element(d) = item {
                c.element(unit, d);
            }
        }
    }
    let mut formats = vec![];
    for unit in units {
        for item in &unit.file.items {
            if let ast::Item::Format(d) = item {
                if let Some(f) = c.format(unit, d) {
                    if unit.id == SourceId::User {
                        formats.push(f);
                    }
                }
            }
        }
    }
    let mut kernels = vec![];
    let mut kernel_names: HashMap<String, Loc> = HashMap::new();
    for unit in units {
        for item in &unit.file.items {
            if let ast::Item::Kernel(d) = item {
                let at = Loc {
                    source: unit.id,
                    span: d.name.span,
                };
                if let Some(first) = kernel_names.get(&d.name.name) {
                    c.errors.push(
                        Error::new(
                            at,
                            format!("kernel `{}` is defined twice", d.name.name),
                            "second definition",
                        )
                        .related(*first, "first defined here")
                        .help("kernel names must be unique within a file; rename one of them"),
                    );
                    // Still check its body, so its own errors are reported too.
                    let _ = c.kernel(unit, d);
                    continue;
                }
                kernel_names.insert(d.name.name.clone(), at);
                if let Some(k) = c.kernel(unit, d) {
                    kernels.push(k);
                }
            }
        }
    }
    CheckedFile { formats, kernels }
}

fn loc(unit: &Unit, span: Span) -> Loc {
    Loc {
        source: unit.id,
        span,
    }
}

/// Largest M `schedule auto m=` accepts (a bound on the tokens one launch serves, far above any batch).
const MAX_AUTO_M: u32 = 1 << 20;

/// "`a`", "`a` or `b`", "`a`, `b` or `c`" (with `conj` for "or").
fn list(items: &[&str], conj: &str) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} {conj} {last}", rest.join(", ")),
    }
}

/// `e3m0`-style name for an exponent/mantissa split.
fn family_name(exp: i64, man: i64) -> String {
    format!("e{exp}m{man}")
}

fn no_layout_message(name: &str) -> String {
    format!(
        "4-bit elements need 1 or 2 exponent bits (e2m1 or e1m2 families); the fast dequantization has no bit \
         layout for {name}"
    )
}

impl Checker<'_> {
    fn err(&mut self, e: Error) {
        self.errors.push(e);
    }

    /// Reports a redefinition; returns true when `name` is already taken in `table`.
    fn duplicate<T>(&mut self, table: &Table<T>, what: &str, name: &Ident, at: Loc) -> bool {
        let Some(first) = table.get(&name.name) else {
            return false;
        };
        let e = if first.at.source == SourceId::Prelude {
            Error::new(
                at,
                format!(
                    "`{}` is a built-in {what} and cannot be redefined",
                    name.name
                ),
                "redefined here",
            )
            .related(first.at, "built-in definition")
            .help(format!("choose another name for this {what}"))
        } else {
            Error::new(
                at,
                format!("{what} `{}` is defined twice", name.name),
                "second definition",
            )
            .related(first.at, "first defined here")
            .help(format!(
                "{what} names must be unique; rename or remove one of them"
            ))
        };
        self.err(e);
        true
    }

    fn insert<T>(table: &mut Table<T>, entry: Entry<T>) {
        table.index.insert(entry.name.clone(), table.entries.len());
        table.entries.push(entry);
    }

    // ---- elements -----------------------------------------------------------------------------------------------

    fn element(&mut self, unit: &Unit, d: &ast::ElementDecl) {
        let at = loc(unit, d.name.span);
        // Take the table out to appease the borrow checker; put it back below.
        let table = std::mem::replace(&mut self.elements, Table::new());
        let dup = self.duplicate(&table, "element", &d.name, at);
        self.elements = table;
        if dup {
            return;
        }
        let before = self.errors.len();
        let value = self.element_value(unit, d);
        let value = value.filter(|_| self.errors.len() == before && !d.recovered);
        Self::insert(
            &mut self.elements,
            Entry {
                name: d.name.name.clone(),
                at,
                text: d.span.text(unit.text).to_string(),
                value,
            },
        );
    }

    fn element_value(&mut self, unit: &Unit, d: &ast::ElementDecl) -> Option<MiniFloat> {
        let mut seen: HashMap<&str, &ast::ElementField> = HashMap::new();
        for f in &d.fields {
            if let Some(first) = seen.get(f.key.name.as_str()) {
                self.err(
                    Error::new(
                        loc(unit, f.key.span),
                        format!("duplicate `{}` field", f.key.name),
                        "given again here",
                    )
                    .related(loc(unit, first.key.span), "first given here")
                    .help("give each of exp, man and bias at most once"),
                );
                continue;
            }
            seen.insert(f.key.name.as_str(), f);
        }
        let mut missing = vec![];
        for key in ["exp", "man"] {
            if !seen.contains_key(key) {
                missing.push(key);
            }
        }
        if !missing.is_empty() {
            if !d.recovered {
                self.err(
                    Error::new(
                        loc(unit, d.name.span),
                        format!("element `{}` does not give {}", d.name.name, list(&missing, "or")),
                        "incomplete element",
                    )
                    .help("an element needs its exponent and mantissa widths, e.g. `element e1m2 { exp 1; man 2 }`"),
                );
            }
            return None;
        }
        // Both keys are present: `missing` was empty.
        let (exp_f, man_f) = (seen["exp"], seen["man"]);
        let (exp, man) = (exp_f.value.value, man_f.value.value);
        for f in [exp_f, man_f] {
            if f.value.value < 0 {
                self.err(Error::new(
                    loc(unit, f.value.span),
                    format!("`{}` must not be negative", f.key.name),
                    "negative width",
                ));
                return None;
            }
        }
        if exp + man != 3 {
            self.err(
                Error::new(
                    loc(unit, exp_f.span.to(man_f.span)),
                    format!("a 4-bit element has 1 sign bit, so exp + man must be 3 (found {exp} + {man} = {})", exp + man),
                    "these widths do not add up to 3",
                )
                .help("E2M1 family: `exp 2; man 1`; E1M2 family: `exp 1; man 2`"),
            );
            return None;
        }
        if !(1..=2).contains(&exp) {
            self.err(
                Error::new(loc(unit, exp_f.span), no_layout_message(&family_name(exp, man)), "unsupported split")
                    .help("use `exp 2; man 1` (E2M1 family) or `exp 1; man 2` (E1M2 family), with any bias"),
            );
            return None;
        }
        let bias = match seen.get("bias") {
            None => (1i64 << (exp - 1)) - 1,
            Some(f) => {
                let b = f.value.value;
                if !(BIAS_RANGE.0..=BIAS_RANGE.1).contains(&b) {
                    self.err(
                        Error::new(
                            loc(unit, f.value.span),
                            format!("bias {b} is out of range"),
                            "out of range",
                        )
                        .help(format!(
                            "the bias must lie in {}..={}",
                            BIAS_RANGE.0, BIAS_RANGE.1
                        )),
                    );
                    return None;
                }
                b
            }
        };
        // exp, man in 0..=3 and bias in BIAS_RANGE were checked above, so the narrowing casts are exact.
        Some(MiniFloat {
            name: d.name.name.clone(),
            exp_bits: exp as u8,
            man_bits: man as u8,
            bias: bias as i32,
        })
    }

    // ---- formats ------------------------------------------------------------------------------------------------

    fn format(&mut self, unit: &Unit, d: &ast::FormatDecl) -> Option<FormatSpec> {
        let at = loc(unit, d.name.span);
        let table = std::mem::replace(&mut self.formats, Table::new());
        let dup = self.duplicate(&table, "format", &d.name, at);
        self.formats = table;
        if dup {
            return None;
        }
        let before = self.errors.len();
        let (value, element_text) = match self.format_value(unit, d) {
            Some((v, t)) if self.errors.len() == before && !d.recovered => (Some(v), t),
            _ => (None, String::new()),
        };
        Self::insert(
            &mut self.formats,
            Entry {
                name: d.name.name.clone(),
                at,
                // The format's text plus its element's, so kernels hash both.
                text: format!("{}\n{}", d.span.text(unit.text), element_text),
                value: value.clone(),
            },
        );
        value
    }

    fn format_value(&mut self, unit: &Unit, d: &ast::FormatDecl) -> Option<(FormatSpec, String)> {
        if DTYPES.iter().any(|(n, _)| *n == d.name.name) {
            self.err(
                Error::new(
                    loc(unit, d.name.span),
                    format!(
                        "`{}` is an activation type name and cannot name a format",
                        d.name.name
                    ),
                    "reserved name",
                )
                .help("choose another format name"),
            );
        }
        let mut seen: HashMap<&str, &ast::FormatStmt> = HashMap::new();
        for s in &d.stmts {
            let kw = s.kind.keyword();
            if let Some(first) = seen.get(kw) {
                self.err(
                    Error::new(
                        loc(unit, s.span),
                        format!("duplicate `{kw}` statement in format `{}`", d.name.name),
                        "given again here",
                    )
                    .related(loc(unit, first.span), "first given here")
                    .help(format!("give `{kw}` once")),
                );
                continue;
            }
            seen.insert(kw, s);
        }
        let mut element = None;
        let mut scale = None;
        let mut tensor_scale = false;
        let mut ok = true;
        for s in seen.values() {
            match &s.kind {
                FormatStmtKind::Element(name) => match self.elements.get(&name.name) {
                    Some(e) => {
                        ok &= e.value.is_some();
                        element = e.value.clone().map(|v| (v, e.text.clone()));
                    }
                    None => {
                        let e = self.unknown_element(loc(unit, name.span), &name.name);
                        self.err(e);
                        ok = false;
                    }
                },
                FormatStmtKind::Scale { ty, group } => {
                    let t = SCALE_TYPES
                        .iter()
                        .find(|(n, _)| *n == ty.name)
                        .map(|(_, t)| *t);
                    if t.is_none() {
                        self.err(
                            Error::new(
                                loc(unit, ty.span),
                                format!("unknown scale type `{}`", ty.name),
                                "not a scale type",
                            )
                            .help(format!(
                                "scale types: {}",
                                SCALE_TYPES
                                    .iter()
                                    .map(|(n, _)| *n)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        );
                    }
                    if !GROUPS.contains(&group.value) {
                        self.err(
                            Error::new(
                                loc(unit, group.span),
                                format!("unsupported group size {}", group.value),
                                "not a supported group size",
                            )
                            .help("one scale covers 16, 32, 64 or 128 consecutive K elements"),
                        );
                    } else if let Some(t) = t {
                        scale = Some((t, group.value));
                    }
                }
                FormatStmtKind::TensorScale(ty) => {
                    if ty.name == "f32" {
                        tensor_scale = true;
                    } else {
                        self.err(
                            Error::new(
                                loc(unit, ty.span),
                                format!("unsupported tensor scale type `{}`", ty.name),
                                "expected `f32`",
                            )
                            .help("the per-tensor scale is always `tensor_scale f32`"),
                        );
                    }
                }
            }
        }
        if !d.recovered {
            let missing: Vec<&str> = ["element", "scale"]
                .into_iter()
                .filter(|k| !seen.contains_key(k))
                .collect();
            if !missing.is_empty() {
                self.err(
                    Error::new(
                        loc(unit, d.name.span),
                        format!("format `{}` does not give {}", d.name.name, list(&missing, "or")),
                        "incomplete format",
                    )
                    .help("a format needs an element and a scale, e.g. `format f { element e2m1; scale e8m0 per 32 }`"),
                );
            }
        }
        let ((element, element_text), (scale, group)) = (element?, scale?);
        ok.then(|| {
            (
                FormatSpec {
                    name: d.name.name.clone(),
                    element,
                    scale,
                    group,
                    tensor_scale,
                },
                element_text,
            )
        })
    }

    fn unknown_element(&self, at: Loc, name: &str) -> Error {
        // Recognise `eXmY` so the hint can say how to declare it, or why it cannot exist.
        let digits = name
            .strip_prefix('e')
            .and_then(|r| r.split_once('m'))
            .and_then(|(e, m)| Some((e.parse::<i64>().ok()?, m.parse::<i64>().ok()?)));
        match digits {
            Some((e, m)) if e + m == 3 && !(1..=2).contains(&e) => {
                Error::new(at, no_layout_message(name), "unsupported element")
                    .help(format!("known elements: {}", self.elements.names()))
            }
            Some((e, m)) if e + m == 3 => Error::new(at, format!("unknown element `{name}`"), "not declared")
                .help(format!(
                    "declare it first: `element {name} {{ exp {e}; man {m}; bias {} }}` (known elements: {})",
                    (1i64 << (e - 1)) - 1,
                    self.elements.names()
                )),
            _ => Error::new(at, format!("unknown element `{name}`"), "not declared")
                .help(format!("known elements: {}", self.elements.names())),
        }
    }

    // ---- kernels ------------------------------------------------------------------------------------------------

    fn kernel(&mut self, unit: &Unit, d: &ast::KernelDecl) -> Option<KernelSpec> {
        let before = self.errors.len();
        let kname = &d.name.name;
        let mut seen: HashMap<&str, &KernelStmt> = HashMap::new();
        for s in &d.stmts {
            let kw = s.kind.keyword();
            if let Some(first) = seen.get(kw) {
                self.err(
                    Error::new(
                        loc(unit, s.keyword),
                        format!("duplicate `{kw}` statement in kernel `{kname}`"),
                        "given again here",
                    )
                    .related(loc(unit, first.keyword), "first given here")
                    .help(format!("give `{kw}` once")),
                );
                continue;
            }
            seen.insert(kw, s);
        }

        let targets = self.targets(unit, seen.get("target").copied());
        let x = self.tensor(unit, seen.get("x").copied());
        let w = self.tensor(unit, seen.get("w").copied());
        let y = self.tensor(unit, seen.get("y").copied());
        let bias = self.tensor(unit, seen.get("bias").copied());

        if !d.recovered {
            let missing: Vec<&str> = ["target", "x", "w", "y"]
                .into_iter()
                .filter(|k| !seen.contains_key(k))
                .collect();
            if !missing.is_empty() {
                let example = |k: &str| match k {
                    "target" => "target gfx942",
                    "x" => "x bf16[M, K]",
                    "w" => "w mxfp4[N, K]",
                    _ => "y bf16[M, N]",
                };
                self.err(
                    Error::new(
                        loc(unit, d.name.span),
                        format!("kernel `{kname}` has no {} statement", list(&missing, "or")),
                        "incomplete kernel",
                    )
                    .help(format!(
                        "add {}",
                        missing
                            .iter()
                            .map(|k| format!("`{}`", example(k)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
        }

        // Types.
        let x_ty = x.as_ref().and_then(|t| self.dtype(unit, t));
        let y_ty = y.as_ref().and_then(|t| self.dtype(unit, t));
        let bias_ty = bias.as_ref().and_then(|t| self.dtype(unit, t));
        let format = w.as_ref().and_then(|t| self.weight_format(unit, t));

        // Shapes: w gives N and K; the others must agree.
        let x_dims = x
            .as_ref()
            .and_then(|t| self.dims(unit, t, 2, "[M, K]", true));
        let w_dims = w
            .as_ref()
            .and_then(|t| self.dims(unit, t, 2, "[N, K]", false));
        let y_dims = y
            .as_ref()
            .and_then(|t| self.dims(unit, t, 2, "[M, N]", true));
        let bias_dims = bias
            .as_ref()
            .and_then(|t| self.dims(unit, t, 1, "[N]", false));
        // `dims` returns exactly `rank` entries, so the indexing below is in bounds.
        let (mut n, mut k) = (None, None);
        if let Some(wd) = &w_dims {
            let (wn, wk) = (wd[0], wd[1]);
            n = wn.0.map(|v| (v, wn.1));
            k = wk.0.map(|v| (v, wk.1));
        }
        if let (Some(xd), Some((kv, kspan))) = (&x_dims, k) {
            self.agree(unit, "x", "K", xd[1], kv, kspan);
        }
        if let (Some(yd), Some((nv, nspan))) = (&y_dims, n) {
            self.agree(unit, "y", "N", yd[1], nv, nspan);
        }
        if let (Some(bd), Some((nv, nspan))) = (&bias_dims, n) {
            self.agree(unit, "bias", "N", bd[0], nv, nspan);
        }
        if let (Some((kv, kspan)), Some((f, _))) = (k, &format) {
            if kv % f.group != 0 {
                self.err(
                    Error::new(
                        loc(unit, kspan),
                        format!(
                            "K = {kv} is not a multiple of the {} group size {}",
                            f.name, f.group
                        ),
                        format!("K must be a multiple of {}", f.group),
                    )
                    .help(format!(
                        "every {} consecutive K elements share one scale; pad K to {}",
                        f.group,
                        u64::from(kv).div_ceil(u64::from(f.group)) * u64::from(f.group)
                    )),
                );
            }
        }

        let schedule = self.schedule(
            unit,
            d,
            &seen,
            &targets,
            n,
            k,
            format.as_ref().map(|(f, _)| f.group),
        );

        let schedule = match seen.get("split") {
            Some(st) => schedule.and_then(|sch| self.split(unit, st, sch, k)),
            None => schedule,
        };
        let staging = self.staging(unit, seen.get("staging").copied(), schedule.as_ref());
        let unroll = self.unroll(unit, seen.get("unroll").copied(), targets.as_deref());
        let scales = self.scales(
            unit,
            seen.get("scales").copied(),
            format.as_ref().map(|(f, _)| f),
            x_ty,
        );

        if self.errors.len() != before || d.recovered {
            return None;
        }
        let (format, format_text) = format?;
        let mut hasher = Sha256::new();
        hasher.update(d.span.text(unit.text).as_bytes());
        hasher.update(b"\n");
        hasher.update(format_text.as_bytes());
        let source_hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let spec = KernelSpec {
            name: kname.clone(),
            targets: targets?,
            x: x_ty?,
            y: y_ty?,
            n: n?.0,
            k: k?.0,
            format,
            bias: if bias.is_some() { Some(bias_ty?) } else { None },
            schedule: schedule?,
            staging: staging?,
            scales: scales?,
            unroll: unroll?,
            source_hash,
        };
        // `schedule auto` must find a tiling on every target, or compile would be the first to say so.
        if matches!(spec.schedule, Schedule::Auto { .. }) {
            let stuck: Vec<Arch> = spec
                .targets
                .iter()
                .copied()
                .filter(|a| crate::plan::auto_tiling(&spec, *a).is_none())
                .collect();
            if let Some(&first) = stuck.first() {
                let (blocker, why) = crate::plan::no_auto_tiling(&spec, first);
                let span = match blocker {
                    crate::plan::AutoBlocker::N => n?.1,
                    crate::plan::AutoBlocker::K => k?.1,
                    crate::plan::AutoBlocker::Budgets => d.name.span,
                };
                let names: Vec<&str> = stuck.iter().map(|a| a.name()).collect();
                self.err(
                    Error::new(
                        loc(unit, span),
                        format!("schedule auto finds no tiling on {}", names.join(", ")),
                        "no tiling fits this",
                    )
                    .help(why),
                );
                return None;
            }
        }
        Some(spec)
    }

    /// `split S`: sets the manual tiling's cross-workgroup split-K; None after an error.
    fn split(
        &mut self,
        unit: &Unit,
        s: &KernelStmt,
        schedule: Schedule,
        k: Option<(u32, Span)>,
    ) -> Option<Schedule> {
        let KernelStmtKind::Split(num) = &s.kind else {
            return None;
        };
        let Schedule::Manual(mut t) = schedule else {
            self.err(
                Error::new(
                    loc(unit, s.span),
                    "`split` needs a manual tiling",
                    "sets the split-K of a tiling",
                )
                .help(
                    "`schedule auto` chooses the split with the tiling; give tile, waves, mma and stages too, or \
                     remove `split`",
                ),
            );
            return None;
        };
        // Without K (or with a tile k that does not divide it) the other checks have reported the error.
        let (kv, _) = k?;
        if t.tile_k == 0 || !kv.is_multiple_of(t.tile_k) {
            return None;
        }
        let iters = kv / t.tile_k;
        if num.value == 0 || !iters.is_multiple_of(num.value) {
            let divisors: Vec<String> = (1..=iters)
                .filter(|d| iters.is_multiple_of(*d))
                .map(|d| d.to_string())
                .collect();
            self.err(
                Error::new(
                    loc(unit, num.span),
                    format!(
                        "split {} does not divide the {iters} K iterations of this tiling",
                        num.value
                    ),
                    "not a divisor of the K iterations",
                )
                .help(format!(
                    "each of the split's workgroups takes whole K tiles (K / tile k = {iters}); use one of {}",
                    list(&divisors.iter().map(String::as_str).collect::<Vec<_>>(), "or")
                )),
            );
            return None;
        }
        t.split_k = Some(num.value);
        Some(Schedule::Manual(t))
    }

    /// The value a statement's word names among `options`; None after reporting an unknown word.
    fn keyword<T: Copy, const N: usize>(
        &mut self,
        unit: &Unit,
        id: &Ident,
        what: &str,
        options: [(&str, T); N],
        help: &str,
    ) -> Option<T> {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == id.name) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            Error::new(
                loc(unit, id.span),
                format!("unknown {what} `{}`", id.name),
                format!("expected {}", list(&names, "or")),
            )
            .help(help),
        );
        None
    }

    /// `staging async|registers`: Some(None) when absent (the planner's default), None after an error.
    fn staging(
        &mut self,
        unit: &Unit,
        s: Option<&KernelStmt>,
        schedule: Option<&Schedule>,
    ) -> Option<Option<Staging>> {
        let Some(s) = s else { return Some(None) };
        let KernelStmtKind::Staging(id) = &s.kind else {
            return None;
        };
        let staging = self.keyword(
            unit,
            id,
            "staging",
            [("async", Staging::Async), ("registers", Staging::Registers)],
            "`staging async` fills the ring with cp.async, `staging registers` through 16-byte loads",
        )?;
        if let (Staging::Async, Some(Schedule::Manual(t))) = (staging, schedule) {
            if t.stages < 2 {
                self.err(
                    Error::new(
                        loc(unit, id.span),
                        "cp.async staging needs a ring of at least two stages",
                        format!("with stages {}", t.stages),
                    )
                    .help("use `stages 2` or more, or `staging registers`"),
                );
                return None;
            }
        }
        Some(Some(staging))
    }

    /// `unroll U` (1 to `MAX_UNROLL`, a kernel with an NVIDIA target): Some(None) when absent, None after an error.
    fn unroll(
        &mut self,
        unit: &Unit,
        s: Option<&KernelStmt>,
        targets: Option<&[Arch]>,
    ) -> Option<Option<u32>> {
        let Some(s) = s else { return Some(None) };
        let KernelStmtKind::Unroll(num) = &s.kind else {
            return None;
        };
        if !(1..=MAX_UNROLL).contains(&num.value) {
            self.err(
                Error::new(
                    loc(unit, num.span),
                    format!("unroll {} is out of range", num.value),
                    format!("expected 1 to {MAX_UNROLL}"),
                )
                .help(
                    "`unroll U` has one K loop iteration take U K steps (1 leaves the loop as it is); each step \
                     repeats the loop body, so larger factors mostly grow the registers",
                ),
            );
            return None;
        }
        // Without targets the other checks have reported the error.
        if !targets?.iter().any(|a| a.is_nvidia()) {
            self.err(
                Error::new(
                    loc(unit, s.span),
                    "`unroll` applies to NVIDIA targets only",
                    "no target of this kernel unrolls its K loop",
                )
                .help(
                    "AMD kernels keep one K step per loop iteration; add an NVIDIA target such as `sm_90`, or \
                     remove `unroll`",
                ),
            );
            return None;
        }
        Some(Some(num.value))
    }

    /// `scales bytes|widened`: Some(None) when absent (the planner's default), None after an error. One-byte scales
    /// are E8M0 exponents applied to bf16 operands, so `bytes` needs both.
    fn scales(
        &mut self,
        unit: &Unit,
        s: Option<&KernelStmt>,
        format: Option<&FormatSpec>,
        x: Option<DType>,
    ) -> Option<Option<ScaleStorage>> {
        let Some(s) = s else { return Some(None) };
        let KernelStmtKind::Scales(id) = &s.kind else {
            return None;
        };
        let storage = self.keyword(
            unit,
            id,
            "scale storage",
            [("bytes", ScaleStorage::Bytes), ("widened", ScaleStorage::Widened)],
            "`scales bytes` reads E8M0 scales as their exponent bytes, `scales widened` as 16-bit values of the \
             activation type",
        )?;
        if storage == ScaleStorage::Bytes {
            // Without the format or the activation type the other checks have reported the error.
            let (format, x) = (format?, x?);
            if format.scale != ScaleType::E8m0 || x != DType::Bf16 {
                self.err(
                    Error::new(
                        loc(unit, id.span),
                        format!(
                            "one-byte scales need E8M0 scales and bf16 activations, not {} scales with {} \
                             activations",
                            format.scale.name(),
                            x.name()
                        ),
                        "not applicable to this kernel",
                    )
                    .help(
                        "an exponent byte is exact only for power-of-two scales applied to bf16 operands; use \
                         `scales widened` or remove the line",
                    ),
                );
                return None;
            }
        }
        Some(Some(storage))
    }

    fn targets(&mut self, unit: &Unit, s: Option<&KernelStmt>) -> Option<Vec<Arch>> {
        let KernelStmtKind::Target(idents) = &s?.kind else {
            return None;
        };
        let mut out: Vec<(Arch, Span)> = vec![];
        let mut ok = true;
        for id in idents {
            match Arch::from_name(&id.name) {
                None => {
                    ok = false;
                    self.err(
                        Error::new(
                            loc(unit, id.span),
                            format!("unknown target arch `{}`", id.name),
                            "not a known arch",
                        )
                        .help(format!("known targets: {}", Arch::all_names().join(", "))),
                    );
                }
                Some(a) => {
                    if let Some((_, first)) = out.iter().find(|(b, _)| *b == a) {
                        ok = false;
                        self.err(
                            Error::new(
                                loc(unit, id.span),
                                format!("duplicate target `{}`", id.name),
                                "listed again here",
                            )
                            .related(loc(unit, *first), "first listed here")
                            .help("list each target once"),
                        );
                    } else {
                        out.push((a, id.span));
                    }
                }
            }
        }
        ok.then(|| out.into_iter().map(|(a, _)| a).collect())
    }

    fn tensor<'a>(&self, _unit: &Unit, s: Option<&'a KernelStmt>) -> Option<Tensor<'a>> {
        match &s?.kind {
            KernelStmtKind::Tensor {
                operand,
                ty,
                dims,
                shape_span,
            } => Some(Tensor {
                operand: *operand,
                ty,
                dims,
                shape_span: *shape_span,
            }),
            _ => None,
        }
    }

    fn dtype(&mut self, unit: &Unit, t: &Tensor) -> Option<DType> {
        if let Some((_, d)) = DTYPES.iter().find(|(n, _)| *n == t.ty.name) {
            return Some(*d);
        }
        let op = t.operand.name();
        let e = if self.formats.get(&t.ty.name).is_some() {
            Error::new(
                loc(unit, t.ty.span),
                format!(
                    "`{op}` must be bf16 or f16, but `{}` is a weight format",
                    t.ty.name
                ),
                "a weight format",
            )
            .help("only `w` is quantized; activations, outputs and bias are bf16 or f16")
        } else {
            Error::new(
                loc(unit, t.ty.span),
                format!("unknown type `{}` for `{op}`", t.ty.name),
                "not a known type",
            )
            .help("`x`, `y` and `bias` take bf16 or f16")
        };
        self.err(e);
        None
    }

    /// The format of `w`, with the text to hash.
    fn weight_format(&mut self, unit: &Unit, t: &Tensor) -> Option<(FormatSpec, String)> {
        match self.formats.get(&t.ty.name) {
            Some(f) => f.value.clone().map(|v| (v, f.text.clone())),
            None => {
                let msg = if DTYPES.iter().any(|(n, _)| *n == t.ty.name) {
                    format!("`w` must be a quantized weight format, not `{}`", t.ty.name)
                } else {
                    format!("unknown format `{}`", t.ty.name)
                };
                let e = Error::new(loc(unit, t.ty.span), msg, "not a known format")
                    .help(format!("known formats: {}", self.formats.names()));
                self.err(e);
                None
            }
        }
    }

    /// Checks rank and dimension kinds. Returns one `(value, span)` per dimension: `None` for the dynamic `M`
    /// (dimension 0 when `dynamic`) and for a bad dimension.
    #[allow(clippy::type_complexity)]
    fn dims(
        &mut self,
        unit: &Unit,
        t: &Tensor,
        rank: usize,
        form: &str,
        dynamic: bool,
    ) -> Option<Vec<(Option<u32>, Span)>> {
        let op = t.operand.name();
        if t.dims.len() != rank {
            self.err(
                Error::new(
                    loc(unit, t.shape_span),
                    format!(
                        "`{op}` must have {rank} dimension{} {form}, found {}",
                        if rank == 1 { "" } else { "s" },
                        t.dims.len()
                    ),
                    format!("expected {form}"),
                )
                .help("x is [M, K], w is [N, K], y is [M, N] and bias is [N]"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(rank);
        for (i, dim) in t.dims.iter().enumerate() {
            if dynamic && i == 0 {
                match dim {
                    Dim::Sym(id) if id.name == DYNAMIC_DIM => {}
                    _ => self.err(
                        Error::new(
                            loc(unit, dim.span()),
                            format!("the first dimension of `{op}` must be the dynamic token dimension `M`"),
                            "expected `M`",
                        )
                        .help(format!("write `{op} {}[M, ...]`: M, the number of tokens, is chosen at run time", t.ty.name)),
                    ),
                }
                out.push((None, dim.span()));
                continue;
            }
            match dim {
                Dim::Num(n) if n.value == 0 => {
                    self.err(Error::new(
                        loc(unit, n.span),
                        "dimensions must be positive",
                        "zero-sized dimension",
                    ));
                    out.push((None, n.span));
                }
                Dim::Num(n) => out.push((Some(n.value), n.span)),
                Dim::Sym(id) => {
                    self.err(
                        Error::new(
                            loc(unit, id.span),
                            format!("dimension `{}` of `{op}` must be a number", id.name),
                            "expected a number",
                        )
                        .help("only the first dimension of x and y is dynamic (`M`); N and K are fixed at compile time"),
                    );
                    out.push((None, id.span));
                }
            }
        }
        Some(out)
    }

    /// Reports `op`'s dim `name` disagreeing with the value `w` gives.
    fn agree(
        &mut self,
        unit: &Unit,
        op: &str,
        name: &str,
        got: (Option<u32>, Span),
        want: u32,
        want_span: Span,
    ) {
        if let (Some(v), span) = got {
            if v != want {
                self.err(
                    Error::new(
                        loc(unit, span),
                        format!(
                            "shape mismatch: `{op}` has {name} = {v} but `w` has {name} = {want}"
                        ),
                        format!("expected {want}"),
                    )
                    .related(loc(unit, want_span), format!("{name} of `w`"))
                    .help("x is [M, K], w is [N, K], y is [M, N] and bias is [N]"),
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn schedule(
        &mut self,
        unit: &Unit,
        d: &ast::KernelDecl,
        seen: &HashMap<&str, &KernelStmt>,
        targets: &Option<Vec<Arch>>,
        n: Option<(u32, Span)>,
        k: Option<(u32, Span)>,
        group: Option<u32>,
    ) -> Option<Schedule> {
        let present: Vec<&KernelStmt> = TILING_KEYWORDS
            .iter()
            .filter_map(|kw| seen.get(kw).copied())
            .collect();
        if let Some(s) = seen.get("schedule") {
            let KernelStmtKind::Schedule(id, kv) = &s.kind else {
                return None;
            };
            if id.name != "auto" {
                self.err(
                    Error::new(loc(unit, id.span), format!("unknown schedule `{}`", id.name), "expected `auto`")
                        .help("the only named schedule is `auto`; for a manual one write tile, waves, mma and stages"),
                );
                return None;
            }
            if let Some(first) = present.first() {
                self.err(
                    Error::new(
                        loc(unit, s.span),
                        "`schedule auto` together with an explicit tiling",
                        "asks for an automatic schedule",
                    )
                    .related(loc(unit, first.keyword), "but this gives a manual tiling")
                    .help(
                        "remove `schedule auto`, or remove the tile, waves, mma and stages lines",
                    ),
                );
                return None;
            }
            let m = if kv.is_empty() {
                crate::costmodel::AUTO_M
            } else {
                let (m, span) = self.keys(unit, "schedule auto", kv, &["m"], 1, s)?[0];
                if m > MAX_AUTO_M {
                    self.err(
                        Error::new(
                            loc(unit, span),
                            format!("schedule auto m={m} is larger than {MAX_AUTO_M}"),
                            "too large",
                        )
                        .help("m is the number of tokens (rows of x) the cost model optimizes the tiling for"),
                    );
                    return None;
                }
                m
            };
            return Some(Schedule::Auto { m });
        }
        if present.is_empty() {
            return Some(Schedule::Auto {
                m: crate::costmodel::AUTO_M,
            });
        }
        if present.len() < TILING_KEYWORDS.len() {
            if d.recovered {
                return None;
            }
            let missing: Vec<&str> = TILING_KEYWORDS
                .iter()
                .copied()
                .filter(|kw| !seen.contains_key(kw))
                .collect();
            self.err(
                Error::new(
                    loc(unit, present[0].keyword),
                    format!("incomplete tiling: missing {}", list(&missing, "and")),
                    "a manual tiling starts here",
                )
                .help("give all of tile, waves, mma and stages, or none of them (the same as `schedule auto`)"),
            );
            return None;
        }
        // All four tiling statements are present (`present` has every keyword).
        let stmt = |kw: &str| seen[kw];
        let tile_s = stmt("tile");
        let waves_s = stmt("waves");
        let mma_s = stmt("mma");
        let stages_s = stmt("stages");
        let tile = match &tile_s.kind {
            KernelStmtKind::Tile(kv) => self.keys(unit, "tile", kv, &["m", "n", "k"], 3, tile_s),
            _ => None,
        };
        let waves = match &waves_s.kind {
            // `k=` (waves splitting each K tile, reduced through LDS) is optional and defaults to 1.
            KernelStmtKind::Waves(kv) => self.keys(unit, "waves", kv, &["m", "n", "k"], 2, waves_s),
            _ => None,
        };
        let mma = match &mma_s.kind {
            KernelStmtKind::Mma { m, n, k, span } => {
                let atom = ATOMS
                    .iter()
                    .find(|(shape, _)| *shape == (*m, *n, *k))
                    .map(|(_, a)| *a);
                if atom.is_none() {
                    self.err(
                        Error::new(
                            loc(unit, *span),
                            format!("unsupported MFMA atom {m}x{n}x{k}"),
                            "not a supported atom",
                        )
                        .help("supported atoms: 16x16x16, 32x32x8"),
                    );
                }
                atom
            }
            _ => None,
        };
        let stages = match &stages_s.kind {
            KernelStmtKind::Stages(s) => {
                if (1..=budget::MAX_STAGES).contains(&s.value) {
                    Some(s.value)
                } else {
                    self.err(
                        Error::new(
                            loc(unit, s.span),
                            format!("{} pipeline stages are not supported", s.value),
                            "out of range",
                        )
                        .help(format!("stages must be 1 to {}", budget::MAX_STAGES)),
                    );
                    None
                }
            }
            _ => None,
        };
        // `keys` returns one value per requested key, in order.
        let (tile, waves, mma, stages) = (tile?, waves?, mma?, stages?);
        let t = Tiling {
            tile_m: tile[0].0,
            tile_n: tile[1].0,
            tile_k: tile[2].0,
            waves_m: waves[0].0,
            waves_n: waves[1].0,
            waves_k: waves[2].0,
            mma,
            stages,
            split_k: None,
        };
        let (tm_span, tn_span, tk_span) = (tile[0].1, tile[1].1, tile[2].1);
        let before = self.errors.len();

        if !t.tile_k.is_multiple_of(budget::K_CHUNK) {
            self.err(
                Error::new(
                    loc(unit, tk_span),
                    format!(
                        "tile k={} is not a multiple of {}",
                        t.tile_k,
                        budget::K_CHUNK
                    ),
                    format!("must be a multiple of {}", budget::K_CHUNK),
                )
                .help(format!(
                    "the weight layout loads K in chunks of {}; try k={}",
                    budget::K_CHUNK,
                    u64::from(t.tile_k)
                        .div_ceil(u64::from(budget::K_CHUNK))
                        .max(1)
                        * u64::from(budget::K_CHUNK)
                )),
            );
        } else if !u64::from(t.tile_k)
            .is_multiple_of(u64::from(t.waves_k) * u64::from(budget::K_CHUNK))
        {
            let most = t.tile_k / budget::K_CHUNK;
            self.err(
                Error::new(
                    loc(unit, waves_s.span),
                    format!(
                        "waves k={} cannot split tile k={} into slices of whole {}-element chunks",
                        t.waves_k,
                        t.tile_k,
                        budget::K_CHUNK
                    ),
                    "K slices too small",
                )
                .related(loc(unit, tk_span), "tile k")
                .help(format!(
                    "each wave along K takes tile_k / waves_k of every K tile, a multiple of {}: use a waves k that \
                     divides {most}, or raise tile k to {}",
                    budget::K_CHUNK,
                    u64::from(t.waves_k) * u64::from(budget::K_CHUNK)
                )),
            );
        } else if let Some((kv, kspan)) = k {
            if kv % t.tile_k != 0 {
                let hint = suggest_divisor(kv, t.tile_k, budget::K_CHUNK)
                    .map(|s| format!("try k={s}, which divides K = {kv}"))
                    .unwrap_or_else(|| {
                        format!(
                            "K = {kv} has no divisor that is a multiple of {}",
                            budget::K_CHUNK
                        )
                    });
                self.err(
                    Error::new(
                        loc(unit, tk_span),
                        format!("K = {kv} is not divisible by tile k={}", t.tile_k),
                        "does not divide K",
                    )
                    .related(loc(unit, kspan), "K of `w`")
                    .help(hint),
                );
            }
        }
        let waves_total = u64::from(t.waves_m) * u64::from(t.waves_n) * u64::from(t.waves_k);
        let infos: Vec<_> = targets.iter().flatten().map(|a| a.info()).collect();
        let max_waves = budget::max_waves(&infos);
        if !(1..=u64::from(max_waves)).contains(&waves_total) {
            let nvidia = infos.iter().filter(|i| i.vendor == Vendor::Nvidia).count();
            let help = if nvidia == 0 {
                format!(
                    "a workgroup has 1 to {max_waves} waves of 64 lanes (at most {} lanes)",
                    budget::MAX_LANES
                )
            } else if nvidia == infos.len() {
                format!(
                    "a block has 1 to {max_waves} warps (at most {} threads)",
                    budget::MAX_LANES
                )
            } else {
                format!(
                    "a workgroup has 1 to {max_waves} waves: the AMD targets' waves have 64 lanes (at most {} lanes); \
                     blocks of up to 32 warps need NVIDIA-only targets",
                    budget::MAX_LANES
                )
            };
            self.err(
                Error::new(
                    loc(unit, waves_s.span),
                    format!(
                        "{} = {waves_total} waves per workgroup is out of range",
                        t.waves_name().replace('x', " x ")
                    ),
                    "too many waves",
                )
                .help(help),
            );
        }
        // A kernel for NVIDIA targets only may tile M in 8s (`ArchInfo::token_unit`); any AMD target asks for 16.
        let atom_m = infos
            .iter()
            .map(|i| i.token_unit(mma))
            .max()
            .unwrap_or(mma.m());
        let unit_m = u64::from(t.waves_m) * u64::from(atom_m);
        let unit_n = u64::from(t.waves_n) * u64::from(mma.n());
        let mut atoms_ok = true;
        for (dim, tv, span, wv, av, unit_v) in [
            ("m", t.tile_m, tm_span, t.waves_m, atom_m, unit_m),
            ("n", t.tile_n, tn_span, t.waves_n, mma.n(), unit_n),
        ] {
            if u64::from(tv) % unit_v != 0 {
                atoms_ok = false;
                self.err(
                    Error::new(
                        loc(unit, span),
                        format!(
                            "tile {dim}={tv} is not a multiple of waves {dim} ({wv}) x MFMA {dim} ({av}) = {unit_v}"
                        ),
                        format!("must be a multiple of {unit_v}"),
                    )
                    .related(loc(unit, waves_s.span), "waves")
                    .help(format!(
                        "each of the {wv} waves along {} covers whole {av}-wide MFMA atoms; try {dim}={}",
                        dim.to_uppercase(),
                        (u64::from(tv).div_ceil(unit_v).max(1)) * unit_v
                    )),
                );
            }
        }
        if atoms_ok {
            if let Some((nv, nspan)) = n {
                if nv % t.tile_n != 0 {
                    let hint = u32::try_from(unit_n).ok().and_then(|u| suggest_divisor(nv, t.tile_n, u))
                        .map(|s| format!("try n={s}, which divides N = {nv}"))
                        .unwrap_or_else(|| {
                            format!(
                                "no multiple of {unit_n} (waves n x MFMA n) divides N = {nv}; pad N to {}",
                                u64::from(nv).div_ceil(u64::from(t.tile_n)) * u64::from(t.tile_n)
                            )
                        });
                    self.err(
                        Error::new(
                            loc(unit, tn_span),
                            format!("N = {nv} is not divisible by tile n={}", t.tile_n),
                            "does not divide N",
                        )
                        .related(loc(unit, nspan), "N of `w`")
                        .help(hint),
                    );
                }
            }
        }
        if let Some(targets) = targets {
            let missing: Vec<&str> = targets
                .iter()
                .filter(|a| !a.info().mfma_atoms.contains(&mma))
                .map(|a| a.name())
                .collect();
            if !missing.is_empty() {
                self.err(
                    Error::new(
                        loc(unit, mma_s.span),
                        format!(
                            "MFMA atom {} is not available on {}",
                            mma.name(),
                            missing.join(", ")
                        ),
                        "unavailable atom",
                    )
                    .help("choose an atom every target supports, or drop that target"),
                );
            }
        }
        // Budgets only make sense for a tiling that is otherwise well-formed.
        if self.errors.len() == before {
            if let (Some(targets), Some(group)) = (targets, group) {
                self.budgets(unit, tile_s, &t, group, targets);
            }
        }
        (self.errors.len() == before).then_some(Schedule::Manual(t))
    }

    /// Resolves `key=value` pairs against `keys` (in order); values must be positive.
    fn keys(
        &mut self,
        unit: &Unit,
        stmt: &str,
        kv: &[KeyValue],
        keys: &[&str],
        required: usize,
        s: &KernelStmt,
    ) -> Option<Vec<(u32, Span)>> {
        let mut out: Vec<Option<(u32, Span)>> = vec![None; keys.len()];
        let mut ok = true;
        for pair in kv {
            let Some(i) = keys.iter().position(|k| *k == pair.key.name) else {
                ok = false;
                self.err(
                    Error::new(
                        loc(unit, pair.key.span),
                        format!("unknown `{stmt}` key `{}`", pair.key.name),
                        "unknown key",
                    )
                    .help(format!(
                        "`{stmt}` takes {}",
                        keys.iter()
                            .map(|k| format!("{k}="))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
                continue;
            };
            if let Some((_, first)) = out[i] {
                ok = false;
                self.err(
                    Error::new(
                        loc(unit, pair.key.span),
                        format!("duplicate `{stmt}` key `{}`", pair.key.name),
                        "given again here",
                    )
                    .related(loc(unit, first), "first given here"),
                );
                continue;
            }
            if pair.value.value == 0 {
                ok = false;
                self.err(Error::new(
                    loc(unit, pair.value.span),
                    format!("`{stmt} {}=` must be positive", pair.key.name),
                    "zero",
                ));
            }
            out[i] = Some((pair.value.value, pair.value.span));
        }
        let missing: Vec<&str> = keys
            .iter()
            .zip(&out)
            .take(required)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() && ok {
            self.err(
                Error::new(
                    loc(unit, s.span),
                    format!(
                        "`{stmt}` does not give {}",
                        missing
                            .iter()
                            .map(|k| format!("`{k}=`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "incomplete",
                )
                .help(format!(
                    "write `{stmt} {}`",
                    keys.iter()
                        .take(required)
                        .map(|k| format!("{k}=..."))
                        .collect::<Vec<_>>()
                        .join(" ")
                )),
            );
            return None;
        }
        if !ok {
            return None;
        }
        // Optional keys left out are 1 (at the statement's span).
        Some(out.into_iter().map(|v| v.unwrap_or((1, s.span))).collect())
    }

    fn budgets(
        &mut self,
        unit: &Unit,
        tile_s: &KernelStmt,
        t: &Tiling,
        group: u32,
        targets: &[Arch],
    ) {
        let v = budget::vgprs(t, group);
        // One error per distinct limit (and, for LDS, per distinct need and row layout), naming every target that has it.
        let mut lds_over: Vec<(LdsOver, Vec<&str>)> = vec![];
        let mut vgpr_over: Vec<(u32, Vec<&str>)> = vec![];
        for a in targets {
            let info = a.info();
            let need = budget::lds_bytes(t, group, info);
            if need > u64::from(info.lds_bytes) {
                let over = LdsOver {
                    limit: info.lds_bytes,
                    need,
                    swizzled: budget::x_swizzled(t, group, info),
                };
                push_grouped(&mut lds_over, over, info.name);
            }
            if !budget::vgprs_fit(t, group, info) {
                push_grouped(&mut vgpr_over, budget::max_vgprs(t, info), info.name);
            }
        }
        for (
            LdsOver {
                limit,
                need: lds,
                swizzled,
            },
            archs,
        ) in lds_over
        {
            let pad = if swizzled { 0 } else { budget::LDS_PAD_ELEMS };
            self.err(
                Error::new(
                    loc(unit, tile_s.span),
                    format!("LDS estimate {lds} bytes exceeds the {limit}-byte budget of {}", archs.join(", ")),
                    format!("needs {lds} bytes of LDS"),
                )
                .help(if budget::reduce_bytes(t) == lds {
                    format!(
                        "the reduction of the waves along K takes (waves k {} - 1) x tile m {} x tile n {} x 4 bytes; \
                         use fewer waves along K or a smaller tile m or n",
                        t.waves_k, t.tile_m, t.tile_n
                    )
                } else {
                    let row = if pad > 0 {
                        format!("(tile k {} + {pad} padding)", t.tile_k)
                    } else {
                        format!("tile k {}", t.tile_k)
                    };
                    format!(
                        "lds = stages {} x tile m {} x {row} x {} bytes; use fewer stages or a smaller tile m or k",
                        t.stages,
                        t.tile_m,
                        budget::LDS_ELEM_BYTES
                    )
                }),
            );
        }
        for (limit, archs) in vgpr_over {
            let suggestion = smaller_tile(t, group, u64::from(limit))
                .map(|(m, n)| format!("; e.g. tile m={m} n={n} k={} fits", t.tile_k))
                .unwrap_or_default();
            self.err(
                Error::new(
                    loc(unit, tile_s.span),
                    format!("register estimate {} VGPRs exceeds the {limit} available on {}", v.total(), archs.join(", ")),
                    format!("needs about {} VGPRs per lane", v.total()),
                )
                .help(format!(
                    "vgprs = acc {} + 2 x weights {} + scales {} + A operand {} + overhead {}; use a smaller tile or more \
                     waves{suggestion}",
                    v.acc, v.wwords, v.scales, v.areg, v.overhead
                )),
            );
        }
    }
}

/// An LDS budget error shared by the targets with the same limit, need and row layout.
#[derive(PartialEq)]
struct LdsOver {
    limit: u32,
    need: u64,
    swizzled: bool,
}

fn push_grouped<'a, K: PartialEq>(groups: &mut Vec<(K, Vec<&'a str>)>, limit: K, arch: &'a str) {
    match groups.iter_mut().find(|(l, _)| *l == limit) {
        Some((_, archs)) => archs.push(arch),
        None => groups.push((limit, vec![arch])),
    }
}

/// The multiple of `step` dividing `total` closest to `want` (ties to the smaller), if any. Trial division up to
/// the square root keeps this cheap for any `u32`.
fn suggest_divisor(total: u32, want: u32, step: u32) -> Option<u32> {
    if step == 0 || total == 0 {
        return None;
    }
    let mut best: Option<u32> = None;
    let mut consider = |c: u32| {
        if c.is_multiple_of(step)
            && best.is_none_or(|b| (c.abs_diff(want), c) < (b.abs_diff(want), b))
        {
            best = Some(c);
        }
    };
    let mut i = 1u32;
    while u64::from(i) * u64::from(i) <= u64::from(total) {
        if total.is_multiple_of(i) {
            consider(i);
            consider(total / i);
        }
        i += 1;
    }
    best
}

/// Halves tile n (then tile m) while the register estimate is over `limit`, keeping whole atoms per wave.
fn smaller_tile(t: &Tiling, group: u32, limit: u64) -> Option<(u32, u32)> {
    let mut c = *t;
    let unit_m = c.waves_m.saturating_mul(c.mma.m());
    let unit_n = c.waves_n.saturating_mul(c.mma.n());
    for _ in 0..32 {
        if budget::vgprs(&c, group).total() <= limit {
            return Some((c.tile_m, c.tile_n));
        }
        if c.tile_n >= c.tile_m && c.tile_n / 2 >= unit_n && (c.tile_n / 2).is_multiple_of(unit_n) {
            c.tile_n /= 2;
        } else if c.tile_m / 2 >= unit_m && (c.tile_m / 2).is_multiple_of(unit_m) {
            c.tile_m /= 2;
        } else if c.tile_n / 2 >= unit_n && (c.tile_n / 2).is_multiple_of(unit_n) {
            c.tile_n /= 2;
        } else {
            return None;
        }
    }
    None
}

/// A tensor statement, unpacked.
struct Tensor<'a> {
    operand: Operand,
    ty: &'a Ident,
    dims: &'a [Dim],
    shape_span: Span,
}
