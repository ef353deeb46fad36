//! The one front-end error type, and its rendering through codespan-reporting.
//!
//! Every error carries a primary span in one source (the user's file or the built-in prelude), a short label for
//! the caret, optional secondary labels ("first defined here") and an optional help line. [`Diagnostics`] owns the
//! sources so it can render itself without the caller keeping anything alive.

use std::ops::Range;

use codespan_reporting::diagnostic::{Diagnostic, Label};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, termcolor::NoColor, Chars};
use thiserror::Error;

use crate::dsl::ast::Span;

/// Which text a span points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceId {
    /// The file being checked.
    User,
    /// The built-in prelude (`prelude.nib`).
    Prelude,
}

/// A span in a particular source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub source: SourceId,
    pub span: Span,
}

impl Loc {
    pub fn user(span: Span) -> Loc {
        Loc {
            source: SourceId::User,
            span,
        }
    }
}

/// One front-end error: what went wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct Error {
    pub message: String,
    pub at: Loc,
    /// Text next to the caret.
    pub label: String,
    /// Secondary locations, e.g. the first definition of a duplicate name.
    pub related: Vec<(Loc, String)>,
    /// A suggestion, rendered as `= help: ...`.
    pub help: Option<String>,
}

impl Error {
    pub fn new(at: Loc, message: impl Into<String>, label: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            at,
            label: label.into(),
            related: vec![],
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Error {
        self.help = Some(help.into());
        self
    }

    pub fn related(mut self, at: Loc, label: impl Into<String>) -> Error {
        self.related.push((at, label.into()));
        self
    }
}

/// All errors found in one file, with the sources needed to render them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} error(s) in {path}", self.len())]
pub struct Diagnostics {
    path: String,
    text: String,
    prelude: &'static str,
    errors: Vec<Error>,
    /// Errors past [`crate::dsl::MAX_ERRORS`], counted but not kept.
    omitted: usize,
}

/// Name under which prelude spans are shown.
pub const PRELUDE_PATH: &str = "<prelude>";

impl Diagnostics {
    pub(crate) fn new(
        path: &str,
        source: &str,
        prelude: &'static str,
        mut errors: Vec<Error>,
    ) -> Diagnostics {
        let omitted = errors.len().saturating_sub(crate::dsl::MAX_ERRORS);
        errors.truncate(crate::dsl::MAX_ERRORS);
        Diagnostics {
            path: path.to_string(),
            text: source.to_string(),
            prelude,
            errors,
            omitted,
        }
    }

    /// Number of errors found (including any not kept).
    pub fn len(&self) -> usize {
        self.errors.len() + self.omitted
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn errors(&self) -> &[Error] {
        &self.errors
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Renders every error as `error: ...`, `--> file:line:col`, the source line with carets and the help line.
    /// Plain text (no colour), deterministic.
    pub fn render(&self) -> String {
        let mut files = SimpleFiles::new();
        let user = files.add(self.path.as_str(), self.text.as_str());
        let prelude = files.add(PRELUDE_PATH, self.prelude);
        let file_of = |id: SourceId| match id {
            SourceId::User => user,
            SourceId::Prelude => prelude,
        };
        let len_of = |id: SourceId| match id {
            SourceId::User => self.text.len(),
            SourceId::Prelude => self.prelude.len(),
        };
        // Spans come from our own lexer, so they lie on char boundaries within the text; clamp anyway so a
        // rendering bug can never panic inside codespan.
        let range = |loc: &Loc| -> Range<usize> {
            let len = len_of(loc.source);
            let start = (loc.span.start as usize).min(len);
            let end = (loc.span.end as usize).clamp(start, len);
            start..end
        };
        let mut config = term::Config {
            chars: Chars::ascii(),
            ..term::Config::default()
        };
        config.start_context_lines = 1;
        config.end_context_lines = 1;
        let mut out = NoColor::new(Vec::new());
        for e in &self.errors {
            let mut labels =
                vec![Label::primary(file_of(e.at.source), range(&e.at))
                    .with_message(e.label.clone())];
            for (loc, msg) in &e.related {
                labels.push(
                    Label::secondary(file_of(loc.source), range(loc)).with_message(msg.clone()),
                );
            }
            let mut d = Diagnostic::error()
                .with_message(e.message.clone())
                .with_labels(labels);
            if let Some(h) = &e.help {
                d = d.with_notes(vec![format!("help: {h}")]);
            }
            if term::emit(&mut out, &config, &files, &d).is_err() {
                // Only reachable through a span bug; fall back to a one-line form rather than losing the error.
                let line = format!("error: {} ({}:{})\n", e.message, self.path, e.at.span.start);
                out.get_mut().extend_from_slice(line.as_bytes());
            }
        }
        if self.omitted > 0 {
            let line = format!("error: {} more errors not shown\n", self.omitted);
            out.get_mut().extend_from_slice(line.as_bytes());
        }
        String::from_utf8_lossy(&out.into_inner()).into_owned()
    }
}
