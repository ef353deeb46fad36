//! The `.nib` syntax tree. Every node carries the byte span of its source text; nothing here is checked yet
//! (names are unresolved, numbers are only known to fit `u32`).

/// A byte range `start..end` in one source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        // Sources are capped at `MAX_SOURCE_BYTES` (< u32::MAX) before lexing, so offsets fit.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    pub fn text(self, src: &str) -> &str {
        src.get(self.start as usize..self.end as usize)
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A non-negative integer literal that fits `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Num {
    pub value: u32,
    pub span: Span,
}

/// A possibly negative integer literal (element bias).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedNum {
    pub value: i64,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Element(ElementDecl),
    Format(FormatDecl),
    Kernel(KernelDecl),
}

/// `element NAME { exp E; man M; bias B }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDecl {
    pub name: Ident,
    pub fields: Vec<ElementField>,
    /// The whole declaration, `element` to `}`.
    pub span: Span,
    /// A syntax error inside the block was recovered from: some statements may be missing.
    pub recovered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementField {
    /// `exp`, `man` or `bias` (validated by the checker).
    pub key: Ident,
    pub value: SignedNum,
    pub span: Span,
}

/// `format NAME { element E; scale T per G; tensor_scale f32 }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatDecl {
    pub name: Ident,
    pub stmts: Vec<FormatStmt>,
    pub span: Span,
    pub recovered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatStmt {
    pub kind: FormatStmtKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatStmtKind {
    Element(Ident),
    Scale { ty: Ident, group: Num },
    TensorScale(Ident),
}

impl FormatStmtKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            FormatStmtKind::Element(_) => "element",
            FormatStmtKind::Scale { .. } => "scale",
            FormatStmtKind::TensorScale(_) => "tensor_scale",
        }
    }
}

/// `kernel NAME { ... }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDecl {
    pub name: Ident,
    pub stmts: Vec<KernelStmt>,
    pub span: Span,
    pub recovered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelStmt {
    pub kind: KernelStmtKind,
    /// The whole statement, keyword included.
    pub span: Span,
    /// The keyword alone.
    pub keyword: Span,
}

/// Which operand a tensor statement declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    X,
    W,
    Y,
    Bias,
}

impl Operand {
    pub fn name(self) -> &'static str {
        match self {
            Operand::X => "x",
            Operand::W => "w",
            Operand::Y => "y",
            Operand::Bias => "bias",
        }
    }
}

/// One dimension of a tensor shape: a number or a symbol (only `M` is meaningful).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Num(Num),
    Sym(Ident),
}

impl Dim {
    pub fn span(&self) -> Span {
        match self {
            Dim::Num(n) => n.span,
            Dim::Sym(i) => i.span,
        }
    }
}

/// `key=value` in `tile` and `waves`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Ident,
    pub value: Num,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelStmtKind {
    Target(Vec<Ident>),
    Tensor {
        operand: Operand,
        ty: Ident,
        dims: Vec<Dim>,
        /// The `[...]` part.
        shape_span: Span,
    },
    Tile(Vec<KeyValue>),
    Waves(Vec<KeyValue>),
    /// `mma MxNxK`
    Mma {
        m: u32,
        n: u32,
        k: u32,
        span: Span,
    },
    Stages(Num),
    /// `split S` (cross-workgroup split-K, with a manual tiling)
    Split(Num),
    /// `staging async|registers` (NVIDIA targets)
    Staging(Ident),
    /// `unroll U` (NVIDIA targets: the K loop unrolled U times)
    Unroll(Num),
    /// `scales bytes|widened` (NVIDIA targets)
    Scales(Ident),
    /// `schedule auto [m=N]`
    Schedule(Ident, Vec<KeyValue>),
}

impl KernelStmtKind {
    /// The statement keyword, used for duplicate detection and messages.
    pub fn keyword(&self) -> &'static str {
        match self {
            KernelStmtKind::Target(_) => "target",
            KernelStmtKind::Tensor { operand, .. } => operand.name(),
            KernelStmtKind::Tile(_) => "tile",
            KernelStmtKind::Waves(_) => "waves",
            KernelStmtKind::Mma { .. } => "mma",
            KernelStmtKind::Stages(_) => "stages",
            KernelStmtKind::Split(_) => "split",
            KernelStmtKind::Staging(_) => "staging",
            KernelStmtKind::Unroll(_) => "unroll",
            KernelStmtKind::Scales(_) => "scales",
            KernelStmtKind::Schedule(..) => "schedule",
        }
    }
}
