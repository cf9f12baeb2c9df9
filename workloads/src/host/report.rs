//! A host run's report: the emulator's JSON shape (`report::Report`,
//! schema mmemu-report/2, every key in place) with what the host cannot
//! give set to null and its reason in `not_observable`, plus a `host`
//! object (the counters before and after, page faults, each thread's time
//! on its CPU and the trust verdict) and the expectations one by one.
//!
//! Trust, per CPU: a thread that the host scheduler keeps off its CPU
//! while it is runnable (another task has the CPU) is not in its mm
//! there, so the flushes skip that CPU and its row comes out low: wrong,
//! not noisy.  For every thread but `first` ones, from the start gate's
//! opening to its end, the share of the run it was not waiting on a run
//! queue (1 - run_delay / wall time, /proc/thread-self/schedstat) must be
//! at least `TRUST_SHARE`, and a spinning thread must also have been on
//! its CPU (CLOCK_THREAD_CPUTIME_ID / wall time) for that share.  CPU n's
//! rows are trusted when every judged thread pinned to CPU n passes
//! (`trusted_cpus`); the run is `trusted` when every CPU is.  Time a
//! thread blocks by itself (mmap_lock, a futex, waitpid) does not count
//! against it, and a sender kept off its CPU only sends later: it does
//! not make the other CPUs' rows wrong.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Measured, NOT_OBSERVABLE};
use crate::budget::Budget;
use crate::report::{BudgetJson, SCHEMA};
use crate::script::check::Checked;
use crate::script::judge::Judged;

/// Every thread must have had its CPU for at least this share of the run
/// (not waiting on a run queue) for the run's rows to be trusted.
pub const TRUST_SHARE: f64 = 0.95;

/// One thread's time on its CPU.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadRecord {
    pub name: String,
    pub cpu: u64,
    /// It reached `spin`.
    pub spun: bool,
    pub spin_run_ns: u64,
    pub spin_wall_ns: u64,
    pub run_ns: u64,
    pub wall_ns: u64,
    /// Involuntary / voluntary context switches (getrusage RUSAGE_THREAD).
    pub nivcsw: u64,
    pub nvcsw: u64,
    /// ns runnable but waiting for its CPU (schedstat run_delay); None
    /// when the kernel keeps no schedstat.
    pub delay_ns: Option<u64>,
    /// A `first` thread (runs alone; not judged for trust).
    pub first: bool,
}

impl ThreadRecord {
    /// The share of the run it had its CPU when it wanted it (1 - the
    /// share it waited on a run queue).
    pub fn runnable_share(&self) -> Option<f64> {
        let d = self.delay_ns?;
        (self.wall_ns > 0).then(|| (1.0 - d as f64 / self.wall_ns as f64).clamp(0.0, 1.0))
    }

    /// What trust judges: the lower of `runnable_share` and, for a
    /// spinning thread, `spin_share`.
    pub fn trust_share(&self) -> Option<f64> {
        match (self.runnable_share(), self.spin_share()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A spinning thread's share of the run (from the gate's opening to
    /// the end of its spin) it was on its CPU: while it waits at barriers
    /// it spins too, so every moment off its CPU is the scheduler's.
    pub fn spin_share(&self) -> Option<f64> {
        if self.spun {
            self.share()
        } else {
            None
        }
    }
    pub fn share(&self) -> Option<f64> {
        (self.wall_ns > 0).then(|| (self.run_ns as f64 / self.wall_ns as f64).min(1.0))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Rows {
    #[serde(rename = "CAL")]
    pub cal: Vec<u64>,
    #[serde(rename = "TLB")]
    pub tlb: Vec<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InterruptsJson {
    #[serde(rename = "CAL")]
    pub cal: Vec<u64>,
    #[serde(rename = "TLB")]
    pub tlb: Vec<u64>,
    /// IPIs sent per CPU: not counted by the host.
    pub sent: Option<Vec<u64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ThreadJson {
    #[serde(flatten)]
    pub record: ThreadRecord,
    pub on_cpu_share: Option<f64>,
    pub spin_on_cpu_share: Option<f64>,
    /// 1 - run_delay / wall: the share of the run it was not kept waiting.
    pub runnable_share: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PageFaults {
    pub minor: u64,
    pub major: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostJson {
    /// `uname -r` of the host.
    pub kernel_release: String,
    /// The script's `kernel` line (the emulator's profile; the host runs its own).
    pub script_kernel: &'static str,
    pub interrupts_before: Rows,
    pub interrupts_after: Rows,
    /// Of the script's processes and their children (getrusage RUSAGE_CHILDREN).
    pub page_faults: PageFaults,
    /// Every CPU's rows are trusted.
    pub trusted: bool,
    /// Per CPU: every judged thread pinned there had its CPU for >=
    /// `trust_share` of the run.
    pub trusted_cpus: Vec<bool>,
    pub trust_share: f64,
    /// The lowest share measured (None: nothing measured).
    pub min_share: Option<f64>,
    /// One sentence per untrusted CPU, naming its worst thread.
    pub untrusted_reason: Option<String>,
    pub threads: Vec<ThreadJson>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExpectJson {
    pub line: u32,
    /// held | failed | not-observable
    pub result: &'static str,
    pub message: Option<String>,
}

/// A host run, as `mmemu host --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    pub schema: &'static str,
    /// "host" (the emulator's reports have no `mode`).
    pub mode: &'static str,
    pub scenario: String,
    pub arch: &'static str,
    pub kernel: String,
    pub cpus: usize,
    pub reverted: Vec<&'static str>,
    pub seed: u64,
    pub wait: Option<&'static str>,
    pub pin: bool,
    pub budget: BudgetJson,
    pub params: BTreeMap<String, u64>,
    pub debug_vm: Option<bool>,
    pub memory: Option<()>,
    pub iterations: u64,
    pub ops: u64,
    pub elapsed_s: f64,
    pub ops_per_sec: f64,
    pub overshoot_s: Option<f64>,
    pub teardown_s: Option<f64>,
    pub interrupted: bool,
    pub program_digest: Option<String>,
    pub interrupts: InterruptsJson,
    /// /proc/vmstat's nr_tlb_* deltas; null when the kernel keeps none.
    pub vmstat: Option<BTreeMap<String, u64>>,
    pub per_cpu: Option<()>,
    pub arch_counters: Option<()>,
    pub arch_per_cpu: Option<()>,
    pub sync_one_broadcasts: Option<u64>,
    pub gather: Option<()>,
    pub tlb_flush_reasons: Option<()>,
    pub counters: Option<()>,
    pub violations: Option<()>,
    pub leaked_frames: Option<()>,
    pub leak_not_checked: Option<String>,
    pub error: Option<String>,
    /// ok | expectation | panic (a step failed or a process died)
    pub verdict: &'static str,
    pub metrics: BTreeMap<String, f64>,
    pub trace: Option<()>,
    /// Why each null field above is null.
    pub not_observable: BTreeMap<&'static str, String>,
    pub host: HostJson,
    pub expectations: Vec<ExpectJson>,
}

impl HostReport {
    pub fn new(
        c: &Checked,
        budget: Budget,
        seed: u64,
        m: &Measured,
        expectations: Vec<(u32, Judged)>,
        failed: Vec<String>,
    ) -> HostReport {
        let secs = m.elapsed.as_secs_f64();
        let mut not = BTreeMap::new();
        let emu = |what: &str| format!("{NOT_OBSERVABLE}: {what}");
        not.insert("wait", emu("the host's scheduler and idle loop wait, not an emulated policy"));
        not.insert("debug_vm", emu("the host kernel's CONFIG_DEBUG_VM is its own"));
        not.insert("memory", emu("no emulated RAM"));
        not.insert("overshoot_s", emu("not measured"));
        not.insert("teardown_s", emu("process exit is inside elapsed_s"));
        not.insert("interrupts.sent", emu("the kernel counts IPIs received, not sent"));
        not.insert("per_cpu", emu("the emulator's per-CPU counters"));
        not.insert("arch_counters", emu("the emulator's arch counters"));
        not.insert("arch_per_cpu", emu("the emulator's arch counters"));
        not.insert("sync_one_broadcasts", emu("tlb_remove_table_sync_one is not counted by the kernel"));
        not.insert("gather", emu("mmu_gather is not counted by the kernel"));
        not.insert("tlb_flush_reasons", emu("needs the tlb_flush tracepoint (tracefs, root)"));
        not.insert("counters", emu("the emulator's counters"));
        not.insert("violations", emu("no sanitizer watches the real TLB"));
        not.insert("leaked_frames", emu("the host's page allocator is not audited"));
        not.insert("trace", emu("no trace of the host run is recorded"));
        let vm = m.vmstat();
        if vm.is_empty() {
            not.insert("vmstat", emu("/proc/vmstat has no nr_tlb_* (CONFIG_DEBUG_TLBFLUSH is off)"));
        }
        let threads: Vec<ThreadJson> = m
            .threads
            .iter()
            .map(|t| ThreadJson {
                record: t.clone(),
                on_cpu_share: t.share(),
                spin_on_cpu_share: t.spin_share(),
                runnable_share: t.runnable_share(),
            })
            .collect();
        let judged = |t: &&ThreadJson| !t.record.first;
        let min_share = threads.iter().filter(judged).filter_map(|t| t.record.trust_share()).min_by(f64::total_cmp);
        let ncpus = m.after.tlb.len().max(c.cpus as usize);
        let mut trusted_cpus = vec![true; ncpus];
        let mut why = Vec::new();
        for (cpu, ok) in trusted_cpus.iter_mut().enumerate() {
            let worst = threads
                .iter()
                .filter(judged)
                .filter(|t| t.record.cpu as usize == cpu)
                .filter_map(|t| t.record.trust_share().map(|s| (s, t)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            if let Some((s, t)) = worst.filter(|(s, _)| *s < TRUST_SHARE) {
                *ok = false;
                let how = if t.record.runnable_share() == Some(s) {
                    "had its CPU when it wanted it"
                } else {
                    "spun on its CPU"
                };
                why.push(format!(
                    "CPU{cpu}: thread {} {how} for {:.1}% of the run (< {:.0}%; another task had the CPU)",
                    t.record.name,
                    s * 100.0,
                    TRUST_SHARE * 100.0
                ));
            }
        }
        let untrusted =
            (!why.is_empty()).then(|| format!("{}: the host was too loaded to trust those CPUs' rows", why.join("; ")));
        let verdict = if m.error.is_some() {
            "panic"
        } else if !failed.is_empty() {
            "expectation"
        } else {
            "ok"
        };
        let error = m.error.clone().or_else(|| {
            failed.first().map(|f| match failed.len() {
                1 => f.clone(),
                n => format!("{f} (and {} more expectations)", n - 1),
            })
        });
        let expectations = expectations
            .into_iter()
            .map(|(line, j)| match j {
                Judged::Held => ExpectJson { line, result: "held", message: None },
                Judged::Failed(msg) => ExpectJson { line, result: "failed", message: Some(msg) },
                Judged::NotObservable(msg) => ExpectJson { line, result: "not-observable", message: Some(msg) },
            })
            .collect();
        HostReport {
            schema: SCHEMA,
            mode: "host",
            scenario: c.name.clone(),
            arch: c.arch.name(),
            kernel: super::counters::kernel_release(),
            cpus: c.cpus as usize,
            reverted: Vec::new(),
            seed,
            wait: None,
            pin: true,
            budget: match budget {
                Budget::Iterations(n) => BudgetJson { iterations: Some(n), seconds: None },
                Budget::Seconds(x) => BudgetJson { iterations: None, seconds: Some(x) },
            },
            params: c.params.clone(),
            debug_vm: None,
            memory: None,
            iterations: m.rounds,
            ops: m.ops,
            elapsed_s: secs,
            ops_per_sec: if secs > 0.0 { m.ops as f64 / secs } else { 0.0 },
            overshoot_s: None,
            teardown_s: None,
            interrupted: m.interrupted,
            program_digest: (m.digest != 0).then(|| format!("{:#018x}", m.digest)),
            interrupts: InterruptsJson { cal: m.cal(), tlb: m.tlb(), sent: None },
            vmstat: (!vm.is_empty()).then_some(vm),
            per_cpu: None,
            arch_counters: None,
            arch_per_cpu: None,
            sync_one_broadcasts: None,
            gather: None,
            tlb_flush_reasons: None,
            counters: None,
            violations: None,
            leaked_frames: None,
            leak_not_checked: Some(emu("the host's page allocator is not audited")),
            error,
            verdict,
            metrics: BTreeMap::new(),
            trace: None,
            not_observable: not,
            host: HostJson {
                kernel_release: super::counters::kernel_release(),
                script_kernel: c.kernel,
                interrupts_before: Rows { cal: m.before.cal.clone(), tlb: m.before.tlb.clone() },
                interrupts_after: Rows { cal: m.after.cal.clone(), tlb: m.after.tlb.clone() },
                page_faults: PageFaults { minor: m.minor_faults, major: m.major_faults },
                trusted: trusted_cpus.iter().all(|x| *x),
                trusted_cpus,
                trust_share: TRUST_SHARE,
                min_share,
                untrusted_reason: untrusted,
                threads,
            },
            expectations,
        }
    }

    /// Exit status 1?
    pub fn failed(&self) -> bool {
        self.verdict != "ok"
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mmemu host {}: {} CPUs, host arch {}, kernel {} (the script's profile: {}), seed {}, pinned",
            self.scenario, self.cpus, self.arch, self.kernel, self.host.script_kernel, self.seed
        );
        if !self.params.is_empty() {
            let p: Vec<_> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  params: {}", p.join(" "));
        }
        let _ = writeln!(
            s,
            "  {} rounds, {} ops in {:.3} s: {:.0} ops/s",
            self.iterations, self.ops, self.elapsed_s, self.ops_per_sec
        );
        if self.interrupted {
            let _ = writeln!(s, "  interrupted: stopped early by a signal; counters are what ran until then");
        }
        let w = 10;
        let _ = write!(s, "\n  {:<30}", "");
        for c in 0..self.interrupts.tlb.len() {
            let _ = write!(s, "{:>w$}", format!("CPU{c}"));
        }
        let _ = writeln!(s);
        let row = |s: &mut String, label: &str, v: &[String], tail: &str| {
            let _ = write!(s, "  {label:<30}");
            for x in v {
                let _ = write!(s, "{x:>w$}");
            }
            let _ = writeln!(s, "   {tail}");
        };
        let show = |v: &[u64]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let per = |v: &[u64]| {
            v.iter().map(|x| format!("{:.3}", *x as f64 / self.iterations.max(1) as f64)).collect::<Vec<_>>()
        };
        row(&mut s, "CAL:", &show(&self.interrupts.cal), "Function call interrupts (after - before)");
        row(&mut s, "TLB:", &show(&self.interrupts.tlb), "TLB shootdowns (after - before)");
        row(&mut s, "TLB per round", &per(&self.interrupts.tlb), "");
        row(&mut s, "CAL per round", &per(&self.interrupts.cal), "");
        match &self.vmstat {
            Some(v) => {
                let _ = writeln!(s, "\n  vmstat:");
                for (name, x) in v {
                    let _ = writeln!(s, "    {name:<32}{x:>12}");
                }
            }
            None => {
                let _ = writeln!(s, "\n  vmstat: no nr_tlb_* counters (the host kernel has CONFIG_DEBUG_TLBFLUSH off)");
            }
        }
        let f = &self.host.page_faults;
        let _ = writeln!(s, "  page faults: {} minor, {} major (the script's processes)", f.minor, f.major);
        for t in &self.host.threads {
            let r = &t.record;
            let spin = if r.spun {
                format!(" (the last {:.1} ms spinning)", r.spin_wall_ns as f64 / 1e6)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  thread {} (CPU{}): {:.1} ms{spin}, running {}, kept waiting {}; {} involuntary, {} voluntary switches",
                r.name,
                r.cpu,
                r.wall_ns as f64 / 1e6,
                t.on_cpu_share.map_or("?".to_string(), |x| format!("{:.1}%", x * 100.0)),
                t.runnable_share.map_or("?".to_string(), |x| format!("{:.1}%", (1.0 - x) * 100.0)),
                r.nivcsw,
                r.nvcsw
            );
        }
        match (&self.host.untrusted_reason, self.host.min_share) {
            (Some(why), _) => {
                let _ = writeln!(s, "  trusted: NO: {why}");
            }
            (None, Some(x)) => {
                let _ = writeln!(
                    s,
                    "  trusted: yes (every thread had its CPU >= {:.0}% of the run; lowest {:.1}%)",
                    self.host.trust_share * 100.0,
                    x * 100.0
                );
            }
            (None, None) => {
                let _ = writeln!(s, "  trusted: yes (nothing measured: no schedstat and no thread spun)");
            }
        }
        let _ = writeln!(s, "  violations, leaked frames, gather, emulator counters: {NOT_OBSERVABLE}");
        let count = |r: &str| self.expectations.iter().filter(|e| e.result == r).count();
        if !self.expectations.is_empty() {
            let _ = writeln!(
                s,
                "  expectations: {} held, {} failed, {} not observable",
                count("held"),
                count("failed"),
                count("not-observable")
            );
            for e in self.expectations.iter().filter(|e| e.result != "held") {
                if let Some(m) = &e.message {
                    let _ = writeln!(s, "    {m}");
                }
            }
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  error: {e}");
        }
        let _ = writeln!(s, "  verdict: {}", self.verdict);
        s
    }
}
