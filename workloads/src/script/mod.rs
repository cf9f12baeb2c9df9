//! Scripts (docs/SCRIPTS.md): users' own programs of threads and
//! syscalls as a `.mmemu` text file.  `parse` reads one into the syntax
//! tree (`ast`); it reports one `ScriptError` line, `FILE:LINE:COLUMN: found …; allowed …`,
//! and never panic (tests/scripts.rs feeds them random and mutated
//! scripts).

pub mod ast;
mod lex;
mod parse;

pub use parse::parse;

use ast::Span;

/// One parse or check error: where, and the message (what was found;
/// what is allowed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{}:{}: {msg}", span.line, span.col)]
pub struct ScriptError {
    pub file: String,
    pub span: Span,
    pub msg: String,
}

impl ScriptError {
    pub fn new(file: &str, span: Span, msg: impl Into<String>) -> ScriptError {
        // One line, whatever a name in it held.
        let msg = msg.into().replace(['\n', '\r'], " ");
        ScriptError { file: file.to_string(), span, msg }
    }
}
