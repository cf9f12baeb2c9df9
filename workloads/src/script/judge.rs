//! A script's expectations (`expect …` lines) judged against what a run
//! observed.  The emulator (`interp::run`) and the host runner
//! (`crate::host`) observe different things: the emulator sees every
//! counter, violation and leak; the host sees /proc/interrupts, /proc/vmstat
//! and its own counts of rounds, ops and reads.  Both answer through
//! `Observed`, and `judge` compares the same way for both; what one cannot
//! observe is `Judged::NotObservable` with the reason, never a pass.

use super::ast::*;
use super::check::const_eval;
use super::check::Checked;
use crate::error::RunError;
use crate::outcome::Outcome;

/// What a run can answer about itself; `Err(reason)` when it cannot see
/// the value at all.
pub trait Observed {
    /// A counter (`Stat::name`, `irq_tlb_count`, `irq_call_count`) summed
    /// over CPUs, or on one CPU.
    fn counter(&self, name: &str, cpu: Option<usize>) -> Result<f64, String>;
    /// Violations of every kind (None) or of one kind.
    fn violations(&self, kind: Option<&str>) -> Result<f64, String>;
    /// Frames still allocated after every mm exited.
    fn leaked(&self) -> Result<f64, String>;
    /// Rounds run (the denominator of `rate … per round`).
    fn rounds(&self) -> u64;
    /// Syscalls made (`rate … per op`).
    fn ops(&self) -> u64;
    /// `read … expect` / `device … expect` steps that saw another value.
    fn reads_failed(&self) -> u64;
}

/// One expectation's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Judged {
    Held,
    /// `FILE:LINE:COLUMN: expectation failed: …`
    Failed(String),
    /// `FILE:LINE:COLUMN: not checked: …` (the reason)
    NotObservable(String),
}

/// The emulator's observations: its `Outcome` and the reads that failed.
pub struct Emulated<'a> {
    pub outcome: &'a Outcome,
    pub reads_failed: u64,
}

impl Observed for Emulated<'_> {
    fn counter(&self, name: &str, cpu: Option<usize>) -> Result<f64, String> {
        let m = &self.outcome.measure;
        let v: &[u64] = if name == "irq_call_count" { &m.cal } else { m.per_cpu.get(name).map_or(&[], |v| v) };
        Ok(match cpu {
            Some(i) => v.get(i).copied().unwrap_or(0) as f64,
            None => v.iter().sum::<u64>() as f64,
        })
    }
    fn violations(&self, kind: Option<&str>) -> Result<f64, String> {
        let m = &self.outcome.measure;
        Ok(match kind {
            None => m.violations as f64,
            Some(k) => m.records.iter().filter(|r| r.kind.name() == k).count() as f64,
        })
    }
    fn leaked(&self) -> Result<f64, String> {
        let l = self.outcome.measure.leaked.unwrap_or_default();
        Ok((l.anon + l.file + l.page_table + l.kernel + l.hugetlb) as f64)
    }
    fn rounds(&self) -> u64 {
        self.outcome.iterations
    }
    fn ops(&self) -> u64 {
        self.outcome.ops
    }
    fn reads_failed(&self) -> u64 {
        self.reads_failed
    }
}

/// Judge one expectation of the checked script against `obs`.
pub fn judge(file: &str, e: &Expect, obs: &dyn Observed, ncpus: u64, c: &Checked) -> Result<Judged, RunError> {
    let cpu_of = |x: &Option<Expr>| -> Result<Option<usize>, RunError> {
        x.as_ref().map(|x| const_eval(x, c, ncpus, 0).map(|v| v as usize)).transpose()
    };
    let (what, got) = match &e.target {
        Target::Violations(None) => ("violations".to_string(), obs.violations(None)),
        Target::Violations(Some(kind)) => (format!("violations {}", kind.text), obs.violations(Some(&kind.text))),
        Target::Leaked => ("leaked".to_string(), obs.leaked()),
        Target::Counter { name, cpu } => {
            let cpu = cpu_of(cpu)?;
            (format!("counter {}", name.text), obs.counter(&name.text, cpu))
        }
        Target::Interrupts { row, cpu } => {
            let cpu = cpu_of(cpu)?;
            let name = if row.text == "TLB" { "irq_tlb_count" } else { "irq_call_count" };
            (format!("interrupts {}", row.text), obs.counter(name, cpu))
        }
        Target::Rate { counter: n, per_op } => {
            let d = if *per_op { obs.ops() } else { obs.rounds() }.max(1) as f64;
            (format!("rate {}", n.text), obs.counter(&n.text, None).map(|v| v / d))
        }
        Target::ReadsFailed => ("reads failed".to_string(), Ok(obs.reads_failed() as f64)),
    };
    let at = format!("{file}:{}:{}", e.span.line, e.span.col);
    let got = match got {
        Ok(v) => v,
        Err(why) => return Ok(Judged::NotObservable(format!("{at}: not checked: {what}: {why}"))),
    };
    let want = e.cmp.value;
    let ok = match (e.cmp.op, e.cmp.tolerance) {
        (CmpOp::Eq, Some(Tolerance::Abs(t))) => (got - want).abs() <= t,
        (CmpOp::Eq, Some(Tolerance::Percent(p))) => (got - want).abs() <= want.abs() * p / 100.0,
        (CmpOp::Eq, None) => got == want,
        (CmpOp::Ne, _) => got != want,
        (CmpOp::Lt, _) => got < want,
        (CmpOp::Le, _) => got <= want,
        (CmpOp::Gt, _) => got > want,
        (CmpOp::Ge, _) => got >= want,
    };
    Ok(if ok {
        Judged::Held
    } else {
        Judged::Failed(format!("{at}: expectation failed: {what} is {got}; expected {} {want}", e.cmp.op.symbol()))
    })
}
