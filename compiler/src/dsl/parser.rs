//! Hand-written recursive-descent parser: tokens to [`ast::File`].
//!
//! Errors are collected, not returned: a broken statement is skipped up to the next newline, `;` or `}` and a
//! broken item up to the next item, so one run reports every syntax error it can. The grammar nests one level
//! (an item's `{ }`, a shape's `[ ]`); the parser never recurses on input nesting (skipping is iterative), and
//! [`MAX_DEPTH`] guards block entry so that no future nested construct can overflow the stack.

use crate::dsl::ast::*;
use crate::dsl::diagnostics::{Error, Loc, SourceId};
use crate::dsl::lexer::{Token, TokenKind};

/// Deepest block nesting the parser accepts.
pub const MAX_DEPTH: usize = 16;

/// Statement keywords of a kernel block, for messages.
pub const KERNEL_STATEMENTS: &[&str] = &[
    "target", "x", "w", "y", "bias", "tile", "waves", "mma", "stages", "split", "staging",
    "unroll", "scales", "schedule",
];
const FORMAT_STATEMENTS: &[&str] = &["element", "scale", "tensor_scale"];
const ELEMENT_FIELDS: &[&str] = &["exp", "man", "bias"];
const ITEM_KEYWORDS: &[&str] = &["element", "format", "kernel"];

type PResult<T> = Result<T, Error>;

/// Parses a token stream (ending in `Eof`), appending syntax errors to `errors`.
pub fn parse(tokens: &[Token], source: SourceId, errors: &mut Vec<Error>) -> File {
    let mut p = Parser {
        tokens,
        pos: 0,
        source,
        errors,
        depth: 0,
        prev_end: 0,
    };
    p.file()
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    source: SourceId,
    errors: &'a mut Vec<Error>,
    depth: usize,
    /// End offset of the last consumed token (statement spans end here).
    prev_end: u32,
}

impl Parser<'_> {
    // ---- token access -------------------------------------------------------------------------------------------

    fn nth(&self, n: usize) -> &Token {
        // `lex` always ends the stream with `Eof` and `bump` never moves past it, so the last index is valid.
        let last = self.tokens.len().saturating_sub(1);
        &self.tokens[(self.pos + n).min(last)]
    }

    fn peek(&self) -> &TokenKind {
        &self.nth(0).kind
    }

    fn bump(&mut self) -> Token {
        let t = self.nth(0).clone();
        if t.kind != TokenKind::Eof {
            self.pos += 1;
            self.prev_end = t.span.end;
        }
        t
    }

    fn loc(&self, span: Span) -> Loc {
        Loc {
            source: self.source,
            span,
        }
    }

    fn is_ident(&self, n: usize, word: &str) -> bool {
        matches!(&self.nth(n).kind, TokenKind::Ident(s) if s == word)
    }

    /// `element|format|kernel NAME {`: the start of a top-level item.
    fn at_item_start(&self) -> bool {
        ITEM_KEYWORDS.iter().any(|k| self.is_ident(0, k))
            && matches!(self.nth(1).kind, TokenKind::Ident(_))
            && self.nth(2).kind == TokenKind::LBrace
    }

    fn expected(&self, what: &str) -> Error {
        let t = self.nth(0);
        Error::new(
            self.loc(t.span),
            format!("expected {what}, found {}", t.kind.describe()),
            format!("expected {what}"),
        )
    }

    fn skip_newlines(&mut self) {
        while *self.peek() == TokenKind::Newline {
            self.bump();
        }
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), TokenKind::Newline | TokenKind::Semi) {
            self.bump();
        }
    }

    fn expect(&mut self, kind: TokenKind, what: &str) -> PResult<Token> {
        if *self.peek() == kind {
            Ok(self.bump())
        } else {
            Err(self.expected(what))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Ident> {
        match self.peek().clone() {
            TokenKind::Ident(name) => {
                let t = self.bump();
                Ok(Ident { name, span: t.span })
            }
            _ => Err(self.expected(what)),
        }
    }

    fn num(&mut self, what: &str) -> PResult<Num> {
        match self.peek().clone() {
            TokenKind::Number(text) => {
                let t = self.bump();
                let value = self.number_value(&text, t.span)?;
                Ok(Num {
                    value,
                    span: t.span,
                })
            }
            _ => Err(self.expected(what)),
        }
    }

    fn number_value(&self, text: &str, span: Span) -> PResult<u32> {
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::new(
                self.loc(span),
                format!("invalid number `{text}`"),
                "not a decimal integer",
            )
            .help(
                "numbers are plain decimal integers such as 8192 (no suffixes, separators or hex)",
            ));
        }
        text.parse::<u32>().map_err(|_| {
            Error::new(
                self.loc(span),
                format!("number `{text}` is too large"),
                "does not fit in 32 bits",
            )
            .help(format!("numbers must be at most {}", u32::MAX))
        })
    }

    fn enter(&mut self, open: Span) -> PResult<()> {
        if self.depth >= MAX_DEPTH {
            return Err(
                Error::new(self.loc(open), "blocks are nested too deeply", "too deep")
                    .help(format!("at most {MAX_DEPTH} levels of nesting")),
            );
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // ---- recovery -----------------------------------------------------------------------------------------------

    /// Skips the rest of a broken statement: up to and including the next newline or `;`, or up to (not
    /// including) the `}` closing the block. Nested brackets are skipped whole, iteratively.
    fn recover_stmt(&mut self) {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                TokenKind::Eof => return,
                TokenKind::Newline | TokenKind::Semi if depth == 0 => {
                    self.bump();
                    return;
                }
                TokenKind::RBrace if depth == 0 => return,
                _ if depth == 0 && self.at_item_start() => return,
                TokenKind::LBrace | TokenKind::LBracket => depth += 1,
                TokenKind::RBrace | TokenKind::RBracket => depth = depth.saturating_sub(1),
                _ => {}
            }
            self.bump();
        }
    }

    /// Skips a broken item: up to the next item start at brace depth 0, or past the `}` that closes it.
    fn recover_item(&mut self) {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                TokenKind::Eof => return,
                _ if depth == 0 && self.at_item_start() => return,
                TokenKind::LBrace => depth += 1,
                TokenKind::RBrace => {
                    if depth <= 1 {
                        self.bump();
                        return;
                    }
                    depth -= 1;
                }
                _ => {}
            }
            self.bump();
        }
    }

    // ---- items --------------------------------------------------------------------------------------------------

    fn file(&mut self) -> File {
        let mut items = Vec::new();
        loop {
            self.skip_separators();
            let result = match self.peek() {
                TokenKind::Eof => break,
                TokenKind::Ident(k) if k == "element" => self.element().map(Item::Element),
                TokenKind::Ident(k) if k == "format" => self.format().map(Item::Format),
                TokenKind::Ident(k) if k == "kernel" => self.kernel().map(Item::Kernel),
                _ => Err(self
                    .expected("`element`, `format` or `kernel`")
                    .help("a file is a list of `element`, `format` and `kernel` declarations")),
            };
            match result {
                Ok(item) => items.push(item),
                Err(e) => {
                    self.errors.push(e);
                    // Always make progress, even if recovery stops right here.
                    let before = self.pos;
                    self.recover_item();
                    if self.pos == before {
                        self.bump();
                    }
                }
            }
        }
        File { items }
    }

    /// Parses `KEYWORD NAME {`, returning the keyword token, the name and the `{` token.
    fn item_header(&mut self, what: &str) -> PResult<(Token, Ident, Token)> {
        let kw = self.bump();
        let name = self.ident(&format!("a {what} name"))?;
        let open = self.expect(TokenKind::LBrace, &format!("`{{` to open the {what} body"))?;
        self.enter(open.span)?;
        Ok((kw, name, open))
    }

    /// Runs `stmt` for each statement of a block until its `}`; returns the block end and whether it recovered.
    fn block<S>(
        &mut self,
        what: &str,
        open: &Token,
        out: &mut Vec<S>,
        mut stmt: impl FnMut(&mut Self) -> PResult<S>,
    ) -> (u32, bool) {
        let mut recovered = false;
        loop {
            self.skip_separators();
            match self.peek() {
                TokenKind::RBrace => {
                    let close = self.bump();
                    self.leave();
                    return (close.span.end, recovered);
                }
                TokenKind::Eof => {
                    self.errors.push(
                        Error::new(
                            self.loc(open.span),
                            format!("unclosed {what} body"),
                            "this `{` is never closed",
                        )
                        .help("add a `}` at the end of the block"),
                    );
                    self.leave();
                    return (self.prev_end, true);
                }
                _ if self.at_item_start() => {
                    self.errors.push(
                        Error::new(
                            self.loc(open.span),
                            format!("unclosed {what} body"),
                            "this `{` is never closed",
                        )
                        .related(
                            self.loc(self.nth(0).span),
                            "the next declaration starts here",
                        )
                        .help("add a `}` before the next declaration"),
                    );
                    self.leave();
                    return (self.prev_end, true);
                }
                _ => {
                    let before = self.pos;
                    match stmt(self) {
                        Ok(s) => out.push(s),
                        Err(e) => {
                            self.errors.push(e);
                            recovered = true;
                            self.recover_stmt();
                            if self.pos == before && *self.peek() != TokenKind::RBrace {
                                self.bump();
                            }
                        }
                    }
                }
            }
        }
    }

    fn element(&mut self) -> PResult<ElementDecl> {
        let (kw, name, open) = self.item_header("element")?;
        let mut fields = Vec::new();
        let (end, recovered) = self.block("element", &open, &mut fields, |p| {
            let key = p.ident("an element field (`exp`, `man` or `bias`)")?;
            if !ELEMENT_FIELDS.contains(&key.name.as_str()) {
                return Err(Error::new(
                    p.loc(key.span),
                    format!("unknown element field `{}`", key.name),
                    "not an element field",
                )
                .help(
                    "element fields: exp, man, bias (e.g. `element e1m2 { exp 1; man 2; bias 1 }`)",
                ));
            }
            let value = p.signed(&format!("a number after `{}`", key.name))?;
            Ok(ElementField {
                span: key.span.to(value.span),
                key,
                value,
            })
        });
        Ok(ElementDecl {
            name,
            fields,
            span: Span::new(kw.span.start as usize, end as usize),
            recovered,
        })
    }

    fn signed(&mut self, what: &str) -> PResult<SignedNum> {
        let minus = if *self.peek() == TokenKind::Minus {
            Some(self.bump())
        } else {
            None
        };
        let n = self.num(what)?;
        Ok(match minus {
            Some(m) => SignedNum {
                value: -i64::from(n.value),
                span: m.span.to(n.span),
            },
            None => SignedNum {
                value: i64::from(n.value),
                span: n.span,
            },
        })
    }

    fn format(&mut self) -> PResult<FormatDecl> {
        let (kw, name, open) = self.item_header("format")?;
        let mut stmts = Vec::new();
        let (end, recovered) = self.block("format", &open, &mut stmts, Self::format_stmt);
        Ok(FormatDecl {
            name,
            stmts,
            span: Span::new(kw.span.start as usize, end as usize),
            recovered,
        })
    }

    fn format_stmt(&mut self) -> PResult<FormatStmt> {
        let key = self.ident("a format statement (`element`, `scale` or `tensor_scale`)")?;
        let kind = match key.name.as_str() {
            "element" => {
                FormatStmtKind::Element(self.ident("an element type name such as `e2m1`")?)
            }
            "scale" => {
                let ty = self.ident("a scale type (e8m0, e4m3, f16, bf16 or f32)")?;
                if !self.is_ident(0, "per") {
                    return Err(self
                        .expected("`per` and the group size")
                        .help("write e.g. `scale e8m0 per 32`"));
                }
                self.bump();
                let group = self.num("a group size (16, 32, 64 or 128)")?;
                FormatStmtKind::Scale { ty, group }
            }
            "tensor_scale" => {
                FormatStmtKind::TensorScale(self.ident("the tensor scale type `f32`")?)
            }
            other => {
                return Err(Error::new(
                    self.loc(key.span),
                    format!("unknown format statement `{other}`"),
                    "not a format statement",
                )
                .help(format!(
                    "format statements: {}",
                    FORMAT_STATEMENTS.join(", ")
                )))
            }
        };
        Ok(FormatStmt {
            kind,
            span: Span::new(key.span.start as usize, self.prev_end as usize),
        })
    }

    fn kernel(&mut self) -> PResult<KernelDecl> {
        let (kw, name, open) = self.item_header("kernel")?;
        let mut stmts = Vec::new();
        let (end, recovered) = self.block("kernel", &open, &mut stmts, Self::kernel_stmt);
        Ok(KernelDecl {
            name,
            stmts,
            span: Span::new(kw.span.start as usize, end as usize),
            recovered,
        })
    }

    fn kernel_stmt(&mut self) -> PResult<KernelStmt> {
        let key = self.ident("a kernel statement")?;
        let kind = match key.name.as_str() {
            "target" => {
                let mut archs = vec![self.ident("a target arch such as `gfx942`")?];
                while *self.peek() == TokenKind::Comma {
                    self.bump();
                    self.skip_newlines();
                    archs.push(self.ident("a target arch after `,`")?);
                }
                KernelStmtKind::Target(archs)
            }
            "x" => self.tensor(Operand::X)?,
            "w" => self.tensor(Operand::W)?,
            "y" => self.tensor(Operand::Y)?,
            "bias" => self.tensor(Operand::Bias)?,
            "tile" => KernelStmtKind::Tile(self.key_values("tile", "`m=16 n=128 k=256`")?),
            "waves" => KernelStmtKind::Waves(self.key_values("waves", "`m=1 n=4`")?),
            "mma" => self.mma()?,
            "stages" => KernelStmtKind::Stages(self.num("the number of pipeline stages")?),
            "split" => KernelStmtKind::Split(self.num("the number of workgroups splitting K")?),
            "staging" => KernelStmtKind::Staging(self.ident("`async` or `registers`")?),
            "unroll" => {
                KernelStmtKind::Unroll(self.num("how many K steps one loop iteration takes")?)
            }
            "scales" => KernelStmtKind::Scales(self.ident("`bytes` or `widened`")?),
            "schedule" => {
                let name = self.ident("`auto`")?;
                // `schedule auto m=4096`: the M the cost model optimizes for.
                let kv = if matches!(self.peek(), TokenKind::Ident(_))
                    && self.nth(1).kind == TokenKind::Eq
                {
                    self.key_values("schedule auto", "m=4096")?
                } else {
                    vec![]
                };
                KernelStmtKind::Schedule(name, kv)
            }
            other => {
                return Err(Error::new(
                    self.loc(key.span),
                    format!("unknown kernel statement `{other}`"),
                    "not a kernel statement",
                )
                .help(format!(
                    "kernel statements: {}",
                    KERNEL_STATEMENTS.join(", ")
                )))
            }
        };
        Ok(KernelStmt {
            kind,
            span: Span::new(key.span.start as usize, self.prev_end as usize),
            keyword: key.span,
        })
    }

    /// `TYPE[dim, dim, ...]`
    fn tensor(&mut self, operand: Operand) -> PResult<KernelStmtKind> {
        let ty = self.ident(&format!(
            "the type of `{}` (e.g. `bf16[M, 4096]`)",
            operand.name()
        ))?;
        let open = self.expect(TokenKind::LBracket, "`[` and the shape")?;
        self.enter(open.span)?;
        let shape = self.shape();
        self.leave();
        let (dims, close) = shape?;
        Ok(KernelStmtKind::Tensor {
            operand,
            ty,
            dims,
            shape_span: open.span.to(close.span),
        })
    }

    /// The dimensions after `[`, through the closing `]`.
    fn shape(&mut self) -> PResult<(Vec<Dim>, Token)> {
        let mut dims = Vec::new();
        loop {
            self.skip_newlines();
            let dim = match self.peek().clone() {
                TokenKind::Number(_) => Dim::Num(self.num("a dimension")?),
                TokenKind::Ident(_) => Dim::Sym(self.ident("a dimension")?),
                _ => return Err(self.expected("a dimension (a number or `M`)")),
            };
            dims.push(dim);
            match self.peek() {
                TokenKind::Comma => {
                    self.bump();
                }
                TokenKind::RBracket => return Ok((dims, self.bump())),
                _ => return Err(self.expected("`,` or `]`")),
            }
        }
    }

    /// One or more `key=value` pairs.
    fn key_values(&mut self, stmt: &str, example: &str) -> PResult<Vec<KeyValue>> {
        let mut out = Vec::new();
        while matches!(self.peek(), TokenKind::Ident(_)) && self.nth(1).kind == TokenKind::Eq {
            let key = self.ident("a key")?;
            self.bump();
            let value = self.num(&format!("a number after `{}=`", key.name))?;
            out.push(KeyValue { key, value });
        }
        if out.is_empty() {
            return Err(self
                .expected(&format!("`key=value` pairs after `{stmt}`"))
                .help(format!("e.g. `{stmt} {example}`")));
        }
        Ok(out)
    }

    /// `MxNxK`, lexed as one word starting with a digit.
    fn mma(&mut self) -> PResult<KernelStmtKind> {
        let TokenKind::Number(text) = self.peek().clone() else {
            return Err(self.expected("an MFMA shape such as `16x16x16`"));
        };
        let t = self.bump();
        let parts: Vec<&str> = text.split('x').collect();
        let bad = || {
            Error::new(
                self.loc(t.span),
                format!("invalid MFMA shape `{text}`"),
                "expected MxNxK",
            )
            .help("supported shapes: 16x16x16, 32x32x8")
        };
        if parts.len() != 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        let mut v = [0u32; 3];
        for (slot, p) in v.iter_mut().zip(&parts) {
            *slot = p.parse().map_err(|_| bad())?;
        }
        let [m, n, k] = v;
        Ok(KernelStmtKind::Mma {
            m,
            n,
            k,
            span: t.span,
        })
    }
}
