//! What mmemu writes: every report goes to stdout through `emit` (a write
//! error is returned, never a panic), error lines to stderr; `list` and
//! the `reproduce` table.

use serde::Serialize;

use mm_core::config::Fix;

use crate::report::Report;
use crate::scenarios::{self, ArchReq, Scenario};

/// Why a command did not produce a verdict.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage: exit 2.
    Usage(String),
    /// Could not complete (cannot write the trace file, ...): exit 1.
    Failed(String),
    /// Writing to stdout failed: exit 3 (silent for EPIPE).
    Stdout(std::io::Error),
}

/// Exit status when stdout could not be written (see the module comment).
pub const EXIT_STDOUT: i32 = 3;

/// Write `s` to stdout and flush; a write error (EPIPE, ENOSPC, ...) is
/// returned, never a panic.
pub(super) fn emit(s: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes()).and_then(|()| out.flush()).map_err(CliError::Stdout)
}

pub(super) fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    emit(&format!("{}\n", serde_json::to_string_pretty(v).expect("reports serialize")))
}

/// `error: MSG` on stderr (`eprintln!` would panic if stderr fails too).
pub(super) fn error_line(msg: &str) {
    error_line_raw(&format!("error: {msg}"));
}

/// One line on stderr, ignoring write errors.
pub(super) fn error_line_raw(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The exit status and stderr line for a failed write to stdout.
pub(super) fn stdout_failed(e: &std::io::Error) -> i32 {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        error_line(&format!("cannot write the report to stdout: {e}"));
    }
    EXIT_STDOUT
}

#[derive(Serialize)]
struct ParamJson {
    key: &'static str,
    default: u64,
    min: u64,
    max: u64,
    help: &'static str,
}

#[derive(Serialize)]
struct ScenarioJson {
    name: &'static str,
    about: &'static str,
    arch: &'static str,
    arch_required: bool,
    min_cpus: usize,
    default_iterations: u64,
    exposes: Vec<&'static str>,
    params: Vec<ParamJson>,
    /// The shipped script it runs (null: Rust code).
    script: Option<&'static str>,
}

#[derive(Serialize)]
struct SwitchJson {
    name: &'static str,
    commit: &'static str,
    off_means: &'static str,
    scenario: &'static str,
    arch: &'static str,
}

fn exposed_by(s: &Scenario) -> Vec<&'static str> {
    let mut v: Vec<_> = s.exposes.iter().map(|f| f.name()).collect();
    for e in scenarios::EXPOSERS.iter().filter(|e| e.scenario == s.name) {
        if !v.contains(&e.fix.name()) {
            v.push(e.fix.name());
        }
    }
    v
}

pub(super) fn list(json: bool) -> Result<i32, CliError> {
    if json {
        let sc: Vec<_> = scenarios::all()
            .iter()
            .map(|s| ScenarioJson {
                name: s.name,
                about: s.about,
                arch: s.arch.arch().name(),
                arch_required: matches!(s.arch, ArchReq::Requires(_)),
                min_cpus: s.min_cpus,
                default_iterations: s.default_iterations,
                exposes: exposed_by(s),
                params: s
                    .params
                    .iter()
                    .map(|p| ParamJson { key: p.key, default: p.default, min: p.min, max: p.max, help: p.help })
                    .collect(),
                script: s.script().map(|l| l.file.as_str()),
            })
            .collect();
        let sw: Vec<_> = scenarios::EXPOSERS
            .iter()
            .map(|e| SwitchJson {
                name: e.fix.name(),
                commit: e.fix.commit(),
                off_means: e.fix.off_means(),
                scenario: e.scenario,
                arch: e.arch.name(),
            })
            .collect();
        let scripts: Vec<serde_json::Value> = shipped_rows()
            .into_iter()
            .map(|r| {
                serde_json::json!({"name": r.name, "file": r.file, "about": r.about, "arch": r.arch,
                                   "cpus": r.cpus})
            })
            .collect();
        let kernels: Vec<_> = mm_core::KernelVersion::ALL.iter().map(|v| v.name()).collect();
        print_json(
            &serde_json::json!({"scenarios": sc, "switches": sw, "scripts": scripts, "kernels": kernels, "default_kernel": "6.12"}),
        )?;
        return Ok(0);
    }
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Scenarios (mmemu run NAME [--param KEY=VALUE]...):");
    for s in scenarios::all() {
        let _ = writeln!(out, "  {:<22}{}", s.name, s.about);
        let arch = match s.arch {
            ArchReq::Default(a) => format!("arch {} (default)", a.name()),
            ArchReq::Requires(a) => format!("arch {} (required)", a.name()),
        };
        let ex = exposed_by(s);
        let mut ex = if ex.is_empty() { String::new() } else { format!(", exposes {}", ex.join(", ")) };
        if let Some(l) = s.script() {
            ex.push_str(&format!(", script {}", l.file));
        }
        let _ =
            writeln!(out, "  {:<22}{arch}, {}+ CPUs, {} rounds by default{ex}", "", s.min_cpus, s.default_iterations);
        for p in s.params {
            let _ = writeln!(out, "  {:<24}{}={} ({}..={}): {}", "", p.key, p.default, p.min, p.max, p.help);
        }
    }
    let _ = writeln!(out, "\nKernels (run / reproduce / stress --kernel VERSION):");
    let _ = writeln!(out, "  {:<26}v6.12.y, the reference (default)", "6.12");
    let _ = writeln!(
        out,
        "  {:<26}v6.18.y, this machine's host kernel (x86: lazy mm_cpumask, once-a-second trim, TLB_REMOTE_WRONG_CPU)",
        "6.18"
    );
    let _ = writeln!(out, "\nSwitches (mmemu run --revert SWITCH, mmemu reproduce SWITCH):");
    for e in scenarios::EXPOSERS {
        let _ = writeln!(out, "  {:<26}{}  off: {}", e.fix.name(), e.fix.commit(), e.fix.off_means());
        let _ = writeln!(out, "  {:<26}reproduce: {} on {}", "", e.scenario, e.arch.name());
    }
    let _ = writeln!(
        out,
        "\nScripts (docs/SCRIPTS.md; mmemu run NAME when no scenario has the name, or mmemu run examples/scripts/FILE):"
    );
    for r in shipped_rows() {
        let _ = writeln!(out, "  {:<26}{}", r.name, r.about);
        let _ = writeln!(out, "  {:<26}{}, arch {}, {} CPUs", "", r.file, r.arch, r.cpus);
    }
    emit(&out)?;
    Ok(0)
}

/// One shipped script, as `list` shows it.
struct ShippedRow {
    name: String,
    file: String,
    about: String,
    arch: &'static str,
    cpus: u64,
}

fn shipped_rows() -> Vec<ShippedRow> {
    crate::script::shipped::SHIPPED
        .iter()
        .filter_map(|(file, src)| {
            let path = format!("examples/scripts/{file}");
            let s = crate::script::parse(&path, src).ok()?;
            let c = crate::script::check(&path, &s, &[]).ok()?;
            Some(ShippedRow {
                name: c.name.clone(),
                file: path,
                about: s.header.about.clone().unwrap_or_default(),
                arch: c.arch.name(),
                cpus: c.cpus,
            })
        })
        .collect()
}

/// The `reproduce` table.
pub fn side_by_side(fix: Fix, e: &scenarios::Exposer, off: &Report, on: &Report, reproduced: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mmemu reproduce {} (commit {}): scenario {} on {}, {} CPUs",
        fix.name(),
        fix.commit(),
        e.scenario,
        e.arch.name(),
        off.cpus
    );
    let _ = writeln!(s, "  fix off means: {}", fix.off_means());
    let _ = writeln!(s, "\n  {:<34}{:>14}{:>14}", "", "fix off", "fix on");
    let mut row = |label: &str, a: String, b: String| {
        let _ = writeln!(s, "  {label:<34}{a:>14}{b:>14}");
    };
    row("violations", off.violations.count.to_string(), on.violations.count.to_string());
    let kinds: std::collections::BTreeSet<_> =
        off.violations.by_kind.keys().chain(on.violations.by_kind.keys()).cloned().collect();
    for k in kinds {
        let g = |r: &Report| r.violations.by_kind.get(&k).copied().unwrap_or(0).to_string();
        row(&format!("  {k}"), g(off), g(on));
    }
    let kept = |r: &Report| r.violations.by_kind.values().sum::<u64>();
    if off.violations.count > kept(off) || on.violations.count > kept(on) {
        row("  (kinds: of the records kept)", kept(off).to_string(), kept(on).to_string());
    }
    let fv = |r: &Report| r.violations.first_violation_at.map_or("-".to_string(), |x| x.to_string());
    row("first violation in round", fv(off), fv(on));
    let ft = |r: &Report| r.violations.first_violation_s.map_or("-".to_string(), |t| format!("{:.1}", t * 1e3));
    row("first violation after (ms)", ft(off), ft(on));
    row("rounds", off.iterations.to_string(), on.iterations.to_string());
    let sum = |v: &[u64]| v.iter().sum::<u64>().to_string();
    row("IPIs sent", sum(&off.interrupts.sent), sum(&on.interrupts.sent));
    row("IPIs handled (CAL)", sum(&off.interrupts.cal), sum(&on.interrupts.cal));
    if let (Some(a), Some(b)) = (&off.interrupts.tlb, &on.interrupts.tlb) {
        row("TLB shootdowns (TLB)", sum(a), sum(b));
    }
    // The arch's own counters (x86: vmstat NR_TLB_*, IPIs, trace reasons;
    // arm64: TLBIs by kind; both runs are on the same arch).
    for (name, v) in &off.arch_counters {
        row(name, v.to_string(), on.arch_counters.get(name).copied().unwrap_or(0).to_string());
    }
    row("sync-one broadcasts", off.sync_one_broadcasts.to_string(), on.sync_one_broadcasts.to_string());
    row("gather flushes", off.gather.flushes.to_string(), on.gather.flushes.to_string());
    row("gather batches", off.gather.batches.to_string(), on.gather.batches.to_string());
    row("pages freed", off.gather.pages_freed.to_string(), on.gather.pages_freed.to_string());
    row("tables freed", off.gather.tables_freed.to_string(), on.gather.tables_freed.to_string());
    let metrics: std::collections::BTreeSet<_> = off.metrics.keys().chain(on.metrics.keys()).cloned().collect();
    for m in metrics {
        let g = |r: &Report| r.metrics.get(&m).map_or("-".to_string(), |v| v.to_string());
        row(&m, g(off), g(on));
    }
    let leak = |r: &Report| r.leaked_frames.as_ref().map_or("-".to_string(), |l| l.total.to_string());
    row("leaked frames", leak(off), leak(on));
    row("verdict", off.verdict.to_string(), on.verdict.to_string());
    for (name, r) in [("fix off", off), ("fix on", on)] {
        if let Some(v) = r.violations.records.first() {
            let _ = writeln!(s, "  {name}: first {v}");
        }
        if let Some(err) = &r.error {
            let _ = writeln!(s, "  {name}: error: {err}");
        }
    }
    let verdict = match (e.correctness, reproduced) {
        (true, true) => format!("reproduced: {} violations with the fix off, none with it on", off.violations.count),
        (true, false) => "NOT reproduced: expected violations with the fix off and none with it on".to_string(),
        (false, true) => "compared: the switch changes counts, not correctness (see the rows above)".to_string(),
        (false, false) => "FAILED: a run ended with a violation, leak, hang or panic".to_string(),
    };
    let _ = writeln!(s, "\n  {verdict}");
    s
}
