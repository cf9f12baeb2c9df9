//! Scripts (docs/SCRIPTS.md): users' own programs of threads and
//! syscalls as a `.mmemu` text file.  `parse` reads one into the syntax
//! tree (`ast`), `check` validates it (names, ranges, barriers); both
//! report one `ScriptError` line, `FILE:LINE:COLUMN: found …; allowed …`,
//! and never panic (tests/scripts.rs feeds them random and mutated
//! scripts).

pub mod ast;
pub mod check;
pub mod interp;
pub mod judge;
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

use crate::error::RunError;
use crate::outcome::Outcome;
use crate::scenarios::{ArchReq, Ctx, ParamSpec, Program, Scenario};

/// A script made a scenario (`Program::Script`).
#[derive(Debug)]
pub struct Loaded {
    pub file: String,
    pub script: ast::Script,
    /// Checked with the parameters' defaults (a run re-checks with
    /// `--param`).
    pub checked: Checked,
}

/// Read, parse and check the script at `path` and make it a scenario
/// (name, about, params and arch from its header; its program the
/// script).  The error is the script's one line.
pub fn load(path: &str) -> Result<&'static Scenario, String> {
    let src =
        std::fs::read(path).map_err(|e| format!("cannot read script '{path}': {e}; allowed a readable .mmemu file"))?;
    let src = String::from_utf8(src)
        .map_err(|_| format!("script '{path}' is not UTF-8 text; allowed a UTF-8 .mmemu file"))?;
    load_source(path, &src)
}

/// `load` of a source already in memory (a shipped script), named `path`
/// in errors and the report.  Scenarios live as long as the process: each
/// load is leaked once (a run loads one script; `scenarios::all` the
/// shipped ones, once).
pub fn load_source(path: &str, src: &str) -> Result<&'static Scenario, String> {
    let script = parse(path, src).map_err(|e| e.to_string())?;
    let checked = check(path, &script, &[]).map_err(|e| e.to_string())?;
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
    let (name, about, arch) = (leak(&checked.name), leak(script.header.about.as_deref().unwrap_or("")), checked.arch);
    let loaded: &'static Loaded = Box::leak(Box::new(Loaded { file: path.to_string(), script, checked }));
    Ok(Box::leak(Box::new(Scenario {
        name,
        about,
        params: Box::leak(params.into_boxed_slice()),
        exposes: &[],
        arch: ArchReq::Default(arch),
        min_cpus: 1,
        default_iterations,
        program: Program::Script(loaded),
    })))
}

/// The script's check with the run's parameters.
fn checked_for(l: &Loaded, ctx: &Ctx) -> Result<Checked, RunError> {
    let params: Vec<(String, u64)> = ctx.params.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    check(&l.file, &l.script, &params).map_err(|e| RunError::Config(e.to_string()))
}

/// `Scenario::frames` of a script: what its threads map, with the run's
/// parameters and CPUs.
pub fn frames(l: &Loaded, ctx: &Ctx) -> Result<usize, RunError> {
    Ok(interp::ram_frames(&l.script, &checked_for(l, ctx)?, ctx.nr_cpus() as u64))
}

/// `Scenario::run` of a script: re-check with the run's parameters,
/// interpret, and make the first failed expectation (or bad read) the
/// run's error, so the report fails and the exit status is 1.
pub fn run_loaded(l: &Loaded, ctx: &Ctx) -> Result<Outcome, RunError> {
    let checked = checked_for(l, ctx)?;
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
