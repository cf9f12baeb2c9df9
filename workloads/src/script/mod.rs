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
pub mod shipped;

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

// ---- `mmemu run FILE`: a script where a scenario name goes ----

use std::sync::OnceLock;

use crate::error::RunError;
use crate::outcome::Outcome;
use crate::scenarios::{ArchReq, Ctx, ParamSpec, Scenario};

/// The script `mmemu run FILE` loaded (one per process).
#[derive(Debug)]
pub struct Loaded {
    pub file: String,
    pub script: ast::Script,
    /// Checked with the parameters' defaults (the run re-checks with
    /// `--param`).
    pub checked: Checked,
    pub scenario: &'static Scenario,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// Read, parse and check the script at `path` and make it a scenario
/// (name, about, params and arch from its header; `run` interprets it).
/// The error is the script's one line.
pub fn load(path: &str) -> Result<&'static Scenario, String> {
    if let Some(l) = LOADED.get() {
        return if l.file == path {
            Ok(l.scenario)
        } else {
            Err(format!("a second script '{path}'; allowed one per run"))
        };
    }
    let src =
        std::fs::read(path).map_err(|e| format!("cannot read script '{path}': {e}; allowed a readable .mmemu file"))?;
    let src = String::from_utf8(src)
        .map_err(|_| format!("script '{path}' is not UTF-8 text; allowed a UTF-8 .mmemu file"))?;
    load_source(path, &src)
}

/// `load` of a source already in memory (a shipped script), named `path`
/// in errors and the report.
pub fn load_source(path: &str, src: &str) -> Result<&'static Scenario, String> {
    if let Some(l) = LOADED.get() {
        return if l.file == path {
            Ok(l.scenario)
        } else {
            Err(format!("a second script '{path}'; allowed one per run"))
        };
    }
    let script = parse(path, src).map_err(|e| e.to_string())?;
    let checked = check(path, &script, &[]).map_err(|e| e.to_string())?;
    if let Some(e) = interp::unsupported(path, &script) {
        return Err(e.to_string());
    }
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let params: Vec<ParamSpec> = script
        .params
        .iter()
        .map(|p| ParamSpec {
            key: leak(&p.name.text),
            default: p.default,
            min: p.min,
            max: p.max,
            help: leak(p.help.as_deref().unwrap_or("")),
        })
        .collect();
    let default_iterations = match checked.budget {
        check::BudgetSpec::Rounds(n) => n,
        check::BudgetSpec::Millis(_) => check::DEFAULT_ROUNDS,
    };
    let scenario: &'static Scenario = Box::leak(Box::new(Scenario {
        name: leak(&checked.name),
        about: leak(script.header.about.as_deref().unwrap_or("")),
        params: Box::leak(params.into_boxed_slice()),
        exposes: &[],
        arch: ArchReq::Default(checked.arch),
        min_cpus: 1,
        default_iterations,
        frames: crate::scenarios::config_frames,
        run: run_loaded,
    }));
    let _ = LOADED.set(Loaded { file: path.to_string(), script, checked, scenario });
    Ok(scenario)
}

/// The loaded script, if `s` is its scenario.
pub fn loaded(s: &Scenario) -> Option<&'static Loaded> {
    LOADED.get().filter(|l| std::ptr::eq(l.scenario, s))
}

/// `Scenario::run` of a loaded script: re-check with the run's
/// parameters, interpret, and make the first failed expectation (or bad
/// read) the run's error, so the report fails and the exit status is 1.
fn run_loaded(ctx: &Ctx) -> Result<Outcome, RunError> {
    let l = LOADED.get().ok_or_else(|| RunError::Config("no script loaded".into()))?;
    let params: Vec<(String, u64)> = ctx.params.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let checked = check(&l.file, &l.script, &params).map_err(|e| RunError::Config(e.to_string()))?;
    let r = interp::run(&l.file, &l.script, &checked, ctx)?;
    let mut outcome = r.outcome;
    outcome.violations_expected =
        r.failed.is_empty() && l.script.expects.iter().any(|e| matches!(e.target, ast::Target::Violations(_)));
    if let Some(first) = r.failed.first() {
        let more = match r.failed.len() {
            1 => String::new(),
            n => format!(" (and {} more expectations)", n - 1),
        };
        outcome.error.get_or_insert(RunError::Expectation(format!("{first}{more}")));
    }
    Ok(outcome)
}
