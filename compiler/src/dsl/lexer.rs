//! Tokens with byte spans. Newlines are tokens (they separate statements); comments and other whitespace are not.

use crate::dsl::ast::Span;
use crate::dsl::diagnostics::{Error, Loc, SourceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// `[A-Za-z_][A-Za-z0-9_]*`
    Ident(String),
    /// A word starting with a digit, `[0-9][A-Za-z0-9_]*`: a number, or an MFMA shape such as `16x16x16`.
    /// The parser decides which and rejects anything else.
    Number(String),
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Semi,
    Eq,
    Minus,
    Newline,
    Eof,
}

impl TokenKind {
    /// How the token is named in "expected ..., found ..." messages.
    pub fn describe(&self) -> String {
        match self {
            TokenKind::Ident(s) => format!("`{s}`"),
            TokenKind::Number(s) => format!("`{s}`"),
            TokenKind::LBrace => "`{`".into(),
            TokenKind::RBrace => "`}`".into(),
            TokenKind::LBracket => "`[`".into(),
            TokenKind::RBracket => "`]`".into(),
            TokenKind::Comma => "`,`".into(),
            TokenKind::Semi => "`;`".into(),
            TokenKind::Eq => "`=`".into(),
            TokenKind::Minus => "`-`".into(),
            TokenKind::Newline => "end of line".into(),
            TokenKind::Eof => "end of file".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits `src` into tokens (always ending with `Eof`); unexpected characters are reported and skipped.
pub fn lex(src: &str, source: SourceId, errors: &mut Vec<Error>) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let single = |kind| Token {
            kind,
            span: Span::new(start, start + c.len_utf8()),
        };
        match c {
            // Zero-width, so an error "found end of line" points at the end of the line, not across two lines.
            '\n' => tokens.push(Token {
                kind: TokenKind::Newline,
                span: Span::new(start, start),
            }),
            c if c.is_whitespace() => {}
            '#' => {
                while let Some(&(_, c)) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            '{' => tokens.push(single(TokenKind::LBrace)),
            '}' => tokens.push(single(TokenKind::RBrace)),
            '[' => tokens.push(single(TokenKind::LBracket)),
            ']' => tokens.push(single(TokenKind::RBracket)),
            ',' => tokens.push(single(TokenKind::Comma)),
            ';' => tokens.push(single(TokenKind::Semi)),
            '=' => tokens.push(single(TokenKind::Eq)),
            '-' => tokens.push(single(TokenKind::Minus)),
            c if is_word(c) => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if !is_word(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let word = src[start..end].to_string();
                let kind = if c.is_ascii_digit() {
                    TokenKind::Number(word)
                } else {
                    TokenKind::Ident(word)
                };
                tokens.push(Token {
                    kind,
                    span: Span::new(start, end),
                });
            }
            c => {
                let span = Span::new(start, start + c.len_utf8());
                errors.push(
                    Error::new(
                        Loc { source, span },
                        format!("unexpected character `{}`", c.escape_default()),
                        "not part of the language",
                    )
                    .help("names are ASCII letters, digits and `_`; comments start with `#`"),
                );
            }
        }
    }
    tokens.push(Token {
        kind: TokenKind::Eof,
        span: Span::new(src.len(), src.len()),
    });
    tokens
}
