//! Reports: what a run measured, as a human summary and as JSON.
//!
//! `Report` is the run's description (`Setup`) plus its `Outcome`
//! (crate::outcome), in the shape `--json` prints; the README
//! documents its fields ("JSON report").  The human summary prints the same
//! fields: a /proc/interrupts-style per-CPU table (CAL, and TLB on x86),
//! the arch's counters per CPU (x86: its vmstat), sync-one broadcasts,
//! gather accounting, tlb_flush reasons (x86), violations with details,
//! leaked frames and ops/s.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mm_core::check::Violation;
use mm_core::stats::Stat;
use serde::Serialize;

use crate::error::RunError;
use crate::outcome::Outcome;

/// JSON schema id; bump on incompatible changes.  2: `vmstat`, `per_cpu`,
/// `tlb_flush_reasons`, `interrupts.TLB` and `counters` hold only what the
/// run's arch keeps (x86's NR_TLB_*, TLB row and trace reasons are absent on
/// arm64 and the NO_RANGE profile, not zero); `arch_counters` and
/// `arch_per_cpu` are the arch's own.
pub const SCHEMA: &str = "mmemu-report/2";

/// Violation records printed in the human summary / put in the JSON.
const SHOWN_RECORDS: usize = 10;

/// The vmstat counters reported by name, in /proc/vmstat order.
pub const VMSTAT: [Stat; 4] =
    [Stat::NrTlbRemoteFlush, Stat::NrTlbRemoteFlushReceived, Stat::NrTlbLocalFlushAll, Stat::NrTlbLocalFlushOne];

/// tlb_flush trace reasons (include/linux/mm_types.h `enum tlb_flush_reason`).
/// TLB_REMOTE_WRONG_CPU exists from v6.14 (x86 v6.18 profile only).
pub const REASONS: [Stat; 6] = [
    Stat::TraceOnTaskSwitch,
    Stat::TraceRemoteShootdown,
    Stat::TraceLocalShootdown,
    Stat::TraceLocalMmShootdown,
    Stat::TraceRemoteSendIpi,
    Stat::TraceRemoteWrongCpu,
];

#[derive(Clone, Debug, Serialize)]
pub struct Interrupts {
    /// Function call interrupts handled, per CPU.
    #[serde(rename = "CAL")]
    pub cal: Vec<u64>,
    /// TLB shootdowns handled, per CPU (x86's /proc/interrupts TLB row;
    /// absent on the other profiles, which have none).
    #[serde(rename = "TLB", skip_serializing_if = "Option::is_none")]
    pub tlb: Option<Vec<u64>>,
    /// Cross-call IPIs sent (one per target), per sending CPU.
    pub sent: Vec<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Gather {
    /// tlb_flush_mmu calls that flushed something.
    pub flushes: u64,
    /// Page-sized batches allocated by tlb_next_batch.
    pub batches: u64,
    pub batch_alloc_failures: u64,
    pub pages_freed: u64,
    pub tables_queued: u64,
    pub tables_freed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violations {
    pub count: u64,
    /// Per kind, counted over the kept records (at most 256).
    pub by_kind: BTreeMap<String, u64>,
    /// Race scenarios: 1-based round of the first violation.
    pub first_violation_at: Option<u64>,
    /// Race scenarios: seconds of rounds until the end of that round, from
    /// the start of round 1 (a run in chunks: every earlier machine's
    /// rounds too; boots and teardowns not counted); null without one.
    pub first_violation_s: Option<f64>,
    /// The first few records.
    pub records: Vec<Violation>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Leaked {
    pub anon: i64,
    pub file: i64,
    pub page_table: i64,
    pub kernel: i64,
    pub hugetlb: i64,
    pub total: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceInfo {
    pub file: String,
    pub events: usize,
    pub dropped: u64,
    /// Why the file could not be written (the run's report is still whole;
    /// the command exits 1).
    pub error: Option<String>,
}

/// The run's budget as given (one of the two is set).
#[derive(Clone, Debug, Serialize)]
pub struct BudgetJson {
    pub iterations: Option<u64>,
    pub seconds: Option<f64>,
}

/// What the run's configuration costs: emulated RAM and the host memory
/// estimated for it before booting (`mm_core::kernel::HostMemory`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MemoryJson {
    pub emulated_ram_frames: u64,
    pub emulated_ram_bytes: u64,
    pub host_estimate_bytes: u64,
}

/// One run, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub scenario: String,
    pub arch: &'static str,
    /// The kernel release the arch profile follows (`--kernel`: "6.12", "6.18").
    pub kernel: &'static str,
    pub cpus: usize,
    pub reverted: Vec<&'static str>,
    pub seed: u64,
    pub wait: &'static str,
    pub pin: bool,
    pub budget: BudgetJson,
    pub params: BTreeMap<&'static str, u64>,
    /// The kernel's VM_BUG_ON / VM_WARN_ON checks ran (`--no-debug-vm`: false).
    pub debug_vm: bool,
    /// Emulated RAM and the host memory the configuration may use.
    pub memory: Option<MemoryJson>,
    pub iterations: u64,
    pub ops: u64,
    pub elapsed_s: f64,
    pub ops_per_sec: f64,
    /// `--seconds`: how long after the deadline the last thread stopped.
    pub overshoot_s: Option<f64>,
    /// Exiting every mm, quiescing the machine and the leak check.
    pub teardown_s: f64,
    /// The budget was cut short by SIGINT / SIGTERM: the counters are what
    /// was measured until then (the run still tore down and leak-checked).
    pub interrupted: bool,
    /// Digest of the choices the scenario drew from `seed` ("0x…"): the
    /// same seed gives the same digest; `null` when it draws none.
    pub program_digest: Option<String>,
    pub interrupts: Interrupts,
    /// The four vmstat NR_TLB_* counters, summed over CPUs (x86; empty on
    /// the profiles whose kernels have none).
    pub vmstat: BTreeMap<&'static str, u64>,
    /// The same counters per CPU.
    pub per_cpu: BTreeMap<&'static str, Vec<u64>>,
    /// Every counter the arch profile's flushes and context switches move
    /// (`ArchOps::stats`: arm64's TLBIs by kind, x86's vmstat, IPIs and
    /// trace reasons, ...), summed over CPUs.
    pub arch_counters: BTreeMap<&'static str, u64>,
    /// The same per CPU.
    pub arch_per_cpu: BTreeMap<&'static str, Vec<u64>>,
    /// tlb_remove_table_sync_one broadcasts (empty IPI to every other CPU).
    pub sync_one_broadcasts: u64,
    pub gather: Gather,
    /// tlb_flush trace events by reason (x86's trace; empty elsewhere).
    pub tlb_flush_reasons: BTreeMap<&'static str, u64>,
    /// Every counter mm-core keeps for this arch, summed over CPUs (the
    /// other profiles' own counters are left out).
    pub counters: BTreeMap<&'static str, u64>,
    pub violations: Violations,
    /// `null` when there was no leak check (see `leak_not_checked`).
    pub leaked_frames: Option<Leaked>,
    /// Why there was no leak check: the run ended early, or a race driver
    /// returns with its mm still mapped.
    pub leak_not_checked: Option<String>,
    /// What ended the run early (a machine error names the CPU), if anything.
    pub error: Option<String>,
    /// ok | violations | leak | hang | panic
    pub verdict: &'static str,
    /// Scenario-specific numbers (see `mmemu list`: e.g. fork-exit-hugetlb's
    /// sync broadcasts per exiting child).
    pub metrics: BTreeMap<String, f64>,
    pub trace: Option<TraceInfo>,
}

/// How the run was set up (the non-measured half of a report).
#[derive(Clone, Debug)]
pub struct Setup {
    pub scenario: String,
    pub arch: &'static str,
    /// The kernel release the arch profile follows (`--kernel`: "6.12", "6.18").
    pub kernel: &'static str,
    pub cpus: usize,
    pub reverted: Vec<&'static str>,
    pub seed: u64,
    pub wait: &'static str,
    pub pin: bool,
    pub budget: BudgetJson,
    pub params: BTreeMap<&'static str, u64>,
    pub debug_vm: bool,
    pub memory: Option<MemoryJson>,
    /// The arch profile's counters (`mm_core::arch_counters`).
    pub arch_counters: &'static [Stat],
    /// Every counter the run keeps (`mm_core::counters_kept`).
    pub counters_kept: Vec<Stat>,
}

impl Report {
    pub fn new(s: Setup, o: &Outcome) -> Report {
        let m = &o.measure;
        let secs = o.elapsed.as_secs_f64();
        let mut by_kind = BTreeMap::new();
        for v in &m.records {
            *by_kind.entry(v.kind.name().to_string()).or_insert(0) += 1;
        }
        let vmstat: Vec<Stat> = VMSTAT.into_iter().filter(|v| s.arch_counters.contains(v)).collect();
        let reasons: Vec<Stat> = REASONS.into_iter().filter(|r| s.arch_counters.contains(r)).collect();
        let verdict = if o.error.as_ref().is_some_and(RunError::is_hang) {
            "hang"
        } else if matches!(o.error, Some(RunError::Expectation(_))) {
            "expectation"
        } else if o.error.is_some() {
            "panic"
        } else if m.violations > 0 && !o.violations_expected {
            "violations"
        } else if m.leaked_total().is_some_and(|t| t != 0) {
            "leak"
        } else {
            "ok"
        };
        Report {
            schema: SCHEMA,
            scenario: s.scenario,
            arch: s.arch,
            kernel: s.kernel,
            cpus: s.cpus,
            reverted: s.reverted,
            seed: s.seed,
            wait: s.wait,
            pin: s.pin,
            budget: s.budget,
            params: s.params,
            debug_vm: s.debug_vm,
            memory: s.memory,
            iterations: o.iterations,
            ops: o.ops,
            elapsed_s: secs,
            ops_per_sec: if secs > 0.0 { o.ops as f64 / secs } else { 0.0 },
            overshoot_s: o.overshoot.map(|d| d.as_secs_f64()),
            teardown_s: o.teardown.as_secs_f64(),
            interrupted: o.interrupted,
            program_digest: (o.program_digest != 0).then(|| format!("{:#018x}", o.program_digest)),
            interrupts: Interrupts {
                cal: m.cal.clone(),
                tlb: s.arch_counters.contains(&Stat::IrqTlbCount).then(|| m.cpu(Stat::IrqTlbCount).to_vec()),
                sent: m.ipis_sent.clone(),
            },
            vmstat: vmstat.iter().map(|s| (s.name(), m.total(*s))).collect(),
            per_cpu: vmstat.iter().map(|s| (s.name(), m.cpu(*s).to_vec())).collect(),
            arch_counters: s.arch_counters.iter().map(|s| (s.name(), m.total(*s))).collect(),
            arch_per_cpu: s.arch_counters.iter().map(|s| (s.name(), m.cpu(*s).to_vec())).collect(),
            sync_one_broadcasts: m.total(Stat::TlbRemoveTableSyncOne),
            gather: Gather {
                flushes: m.total(Stat::GatherFlushes),
                batches: m.total(Stat::GatherBatchAlloc),
                batch_alloc_failures: m.total(Stat::GatherBatchAllocFail),
                pages_freed: m.total(Stat::GatherPagesFreed),
                tables_queued: m.total(Stat::TablesQueued),
                tables_freed: m.total(Stat::TablesFreed),
            },
            tlb_flush_reasons: reasons.iter().map(|s| (s.name(), m.total(*s))).collect(),
            counters: s.counters_kept.iter().map(|s| (s.name(), m.total(*s))).collect(),
            violations: Violations {
                count: m.violations,
                by_kind,
                first_violation_at: o.first_violation_at,
                first_violation_s: o.first_violation_after.map(|d| d.as_secs_f64()),
                records: m.records.iter().take(SHOWN_RECORDS).cloned().collect(),
            },
            leaked_frames: m.leaked.map(|l| Leaked {
                anon: l.anon,
                file: l.file,
                page_table: l.page_table,
                kernel: l.kernel,
                hugetlb: l.hugetlb,
                total: l.total(),
            }),
            error: o.error.as_ref().map(RunError::to_string),
            leak_not_checked: o.leak_not_checked.clone(),
            verdict,
            metrics: o.metrics.clone(),
            trace: None,
        }
    }

    /// Did the run fail (exit status 1)?
    pub fn failed(&self) -> bool {
        self.verdict != "ok" || self.trace.as_ref().is_some_and(|t| t.error.is_some())
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let reverted = if self.reverted.is_empty() { "none".to_string() } else { self.reverted.join(",") };
        let _ = writeln!(
            s,
            "mmemu run {}: {} CPUs, arch {}, kernel {}, reverted: {}, seed {}, wait {}, {}",
            self.scenario,
            self.cpus,
            self.arch,
            self.kernel,
            reverted,
            self.seed,
            self.wait,
            if self.pin { "pinned" } else { "not pinned" }
        );
        if !self.params.is_empty() {
            let p: Vec<_> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  params: {}", p.join(" "));
        }
        if !self.debug_vm {
            let _ = writeln!(s, "  debug_vm: off (the kernel's VM_BUG_ON / VM_WARN_ON checks did not run)");
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                s,
                "  emulated RAM: {} ({} frames); host memory: up to {}",
                human_bytes(m.emulated_ram_bytes),
                m.emulated_ram_frames,
                human_bytes(m.host_estimate_bytes)
            );
        }
        let _ = write!(
            s,
            "  {} rounds, {} ops in {:.3} s: {:.0} ops/s",
            self.iterations, self.ops, self.elapsed_s, self.ops_per_sec
        );
        if let (Some(b), Some(o)) = (self.budget.seconds, self.overshoot_s) {
            let _ = write!(s, " (budget {b} s, stopped {:.1} ms after it)", o * 1e3);
        }
        let _ = writeln!(s, "; teardown {:.3} s", self.teardown_s);
        if let Some(d) = &self.program_digest {
            let _ = writeln!(s, "  program: {d} (digest of the seed's choices)");
        }
        if self.interrupted {
            let _ = writeln!(s, "  interrupted: stopped early by a signal; counters are what ran until then");
        }
        // /proc/interrupts style.
        let w = 10;
        let _ = write!(s, "\n  {:<30}", "");
        for c in 0..self.cpus {
            let _ = write!(s, "{:>w$}", format!("CPU{c}"));
        }
        let _ = writeln!(s);
        let row = |s: &mut String, label: &str, v: &[u64], tail: &str| {
            let _ = write!(s, "  {label:<30}");
            for x in v {
                let _ = write!(s, "{x:>w$}");
            }
            let _ = writeln!(s, "   {tail}");
        };
        row(&mut s, "CAL:", &self.interrupts.cal, "Function call interrupts");
        if let Some(tlb) = &self.interrupts.tlb {
            row(&mut s, "TLB:", tlb, "TLB shootdowns");
        }
        row(&mut s, "IPIs sent", &self.interrupts.sent, "cross-call IPIs sent (one per target)");
        // x86: its four vmstat counters; the other profiles: their own.
        let per_cpu = if self.per_cpu.is_empty() { &self.arch_per_cpu } else { &self.per_cpu };
        for (name, v) in per_cpu {
            row(&mut s, name, v, "");
        }
        if self.vmstat.is_empty() {
            let _ = writeln!(s, "\n  {} counters:", self.arch);
            for (name, v) in &self.arch_counters {
                let _ = writeln!(s, "    {name:<32}{v:>12}");
            }
        } else {
            let _ = writeln!(s, "\n  vmstat:");
            for (name, v) in &self.vmstat {
                let _ = writeln!(s, "    {name:<32}{v:>12}");
            }
        }
        let _ = writeln!(s, "    {:<32}{:>12}", "tlb_remove_table_sync_one", self.sync_one_broadcasts);
        let g = &self.gather;
        let _ = writeln!(
            s,
            "  gather: {} flushes, {} batches ({} alloc failures), {} pages freed, {} tables freed ({} queued)",
            g.flushes, g.batches, g.batch_alloc_failures, g.pages_freed, g.tables_freed, g.tables_queued
        );
        if !self.metrics.is_empty() {
            let m: Vec<_> = self.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  {}: {}", self.scenario, m.join(" "));
        }
        if !self.tlb_flush_reasons.is_empty() {
            let r: Vec<_> = self.tlb_flush_reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "  tlb_flush: {}", r.join(" "));
        }
        let _ = write!(s, "  violations: {}", self.violations.count);
        if !self.violations.by_kind.is_empty() {
            let k: Vec<_> = self.violations.by_kind.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(s, " ({})", k.join(" "));
        }
        if let Some(r) = self.violations.first_violation_at {
            let _ = write!(s, ", first in round {r}");
            if let Some(t) = self.violations.first_violation_s {
                let _ = write!(s, " after {:.1} ms of rounds", t * 1e3);
            }
        }
        let _ = writeln!(s);
        // Identical records (the same stale entry used again and again)
        // are printed once with a count.
        let mut shown: Vec<(String, usize)> = Vec::new();
        for v in &self.violations.records {
            let line = v.to_string();
            match shown.last_mut() {
                Some((l, n)) if *l == line => *n += 1,
                _ => shown.push((line, 1)),
            }
        }
        for (line, n) in shown {
            let _ = if n > 1 { writeln!(s, "    {line} (x{n})") } else { writeln!(s, "    {line}") };
        }
        match &self.leaked_frames {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "  leaked frames: {} (anon {}, file {}, page-table {}, kernel {}, hugetlb {})",
                    l.total, l.anon, l.file, l.page_table, l.kernel, l.hugetlb
                );
            }
            None => {
                let why = self.leak_not_checked.as_deref().unwrap_or("the run ended early");
                let _ = writeln!(s, "  leaked frames: not checked ({why})");
            }
        }
        if let Some(t) = &self.trace {
            match &t.error {
                None => {
                    let _ = writeln!(
                        s,
                        "  trace: {} ({} events, {} dropped) — open in ui.perfetto.dev",
                        t.file, t.events, t.dropped
                    );
                }
                Some(e) => {
                    let _ = writeln!(s, "  trace: NOT written: {e}");
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

/// `1.5 GiB`-style sizes for the human report.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use mm_core::check::{Violation, ViolationKind};
    use mm_core::{CpuId, Pfn};
    use serde_json::json;

    /// JSON records: `kind` is the kebab name; a debug-vm-warning also
    /// carries its kernel `check`, other kinds have no such key.
    #[test]
    fn violation_records_name_their_kind_and_a_warnings_check() {
        let v =
            |kind| Violation { kind, cpu: Some(CpuId(2)), mm: 3, va: 0x1000, pfn: Pfn(7), cached_gen: 4, frame_gen: 5 };
        let stale = serde_json::to_value(v(ViolationKind::StaleTlbAccess)).unwrap();
        assert_eq!(
            stale,
            json!({"kind": "stale-tlb-access", "cpu": 2, "mm": 3, "va": 4096, "pfn": 7, "cached_gen": 4, "frame_gen": 5})
        );
        let check = "VM_WARN_ON_ONCE(tlb->fully_unshared_tables) in tlb_finish_mmu";
        let warn = serde_json::to_value(v(ViolationKind::DebugVmWarning(check))).unwrap();
        assert_eq!(warn["kind"], "debug-vm-warning");
        assert_eq!(warn["check"], check);
        assert_eq!(warn["cpu"], 2);
        assert_eq!(ViolationKind::DebugVmWarning(check).name(), "debug-vm-warning");
    }
}
