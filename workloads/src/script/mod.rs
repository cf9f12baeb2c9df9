//! Scripts (docs/SCRIPTS.md): users' own programs of threads and
//! syscalls as a `.mmemu` text file.  `parse` reads one into the syntax
//! tree (`ast`), `check` validates it (names, ranges, barriers); both
//! report one `ScriptError` line, `FILE:LINE:COLUMN: found …; allowed …`,
//! and never panic (tests/scripts.rs feeds them random and mutated
//! scripts).

pub mod ast;
pub mod check;
pub mod interp;
mod lex;
mod parse;

pub use check::{check, Checked};
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

/// Parse and check the script `src` read from `file`.
pub fn check_source(file: &str, src: &str, params: &[(String, u64)]) -> Result<Checked, ScriptError> {
    let s = parse(file, src)?;
    check(file, &s, params)
}
