//! What a run produced: `Outcome` (rounds, time, the measure, the error
//! that ended it early) and `Measure` (counters per CPU, violations,
//! leaks), read from a kernel after the run and summed over the machines
//! of a race scenario run in chunks.  Scenarios produce it; `report` turns
//! it into the human summary and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use mm_core::check::Violation;
use mm_core::page::alloc::InUse;
use mm_core::stats::Stat;
use mm_core::{CpuId, Kernel};
use serde::Serialize;

use crate::error::RunError;

/// Violation records kept per measure (the count keeps going).
const MAX_RECORDS: usize = 256;

/// What a scenario run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Rounds run (summed over threads for native scenarios).
    pub iterations: u64,
    /// Syscalls made (race scenarios: rounds).
    pub ops: u64,
    /// From boot to the end of the budget (every thread stopped).
    pub elapsed: Duration,
    /// `--seconds`: how far past the deadline the last thread stopped.
    pub overshoot: Option<Duration>,
    /// Exiting every mm, quiescing and the leak check.
    pub teardown: Duration,
    /// The budget ended early on SIGINT / SIGTERM (`budget::request_stop`).
    pub interrupted: bool,
    /// Digest of the choices the scenario drew from the seed (0: none).
    pub program_digest: u64,
    pub measure: Measure,
    /// What ended the run early: a machine error (a panic on a CPU, a
    /// CSD-lock timeout, a hang; names the CPU) or a race driver's failure.
    pub error: Option<RunError>,
    /// Race scenarios: 1-based round of the first violation.
    pub first_violation_at: Option<u64>,
    /// Race scenarios: wall-clock time of the rounds until the end of the
    /// round that showed the first violation — from the start of round 1
    /// on the machine that found it, plus every earlier machine's rounds
    /// (a chunked run; boots, drivers' setups and teardowns not counted).
    pub first_violation_after: Option<Duration>,
    /// Scenario-specific numbers (e.g. sync broadcasts per exiting child),
    /// reported as `metrics`.
    pub metrics: BTreeMap<String, f64>,
    /// Why there was no leak check (`measure.leaked` is `None`).
    pub leak_not_checked: Option<String>,
    /// A script's `expect violations …` lines held (docs/SCRIPTS.md): the
    /// violations it found are the result it asked for, not a failure.
    pub violations_expected: bool,
}

/// Counters, violations and leaks of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Measure {
    /// /proc/interrupts CAL row: function-call IPIs handled, per CPU.
    pub cal: Vec<u64>,
    /// Cross-call IPIs sent, one per target, per sending CPU.
    pub ipis_sent: Vec<u64>,
    /// Every mm-core counter (kernel name) per CPU.
    pub per_cpu: BTreeMap<&'static str, Vec<u64>>,
    pub violations: u64,
    pub records: Vec<Violation>,
    /// Frames still allocated after every mm exited and the machine went
    /// quiet, by kind; `None` when the run ended early (no leak check).
    pub leaked: Option<InUse>,
}

impl Measure {
    pub fn empty(nr_cpus: usize) -> Measure {
        Measure {
            cal: vec![0; nr_cpus],
            ipis_sent: vec![0; nr_cpus],
            per_cpu: Stat::ALL.iter().map(|s| (s.name(), vec![0; nr_cpus])).collect(),
            violations: 0,
            records: Vec::new(),
            leaked: Some(InUse::default()),
        }
    }

    pub fn from_kernel(k: &Kernel, leaked: Option<InUse>) -> Measure {
        let n = k.cfg.nr_cpus;
        Measure {
            cal: (0..n).map(|c| k.smp.call_interrupts(CpuId(c as u32))).collect(),
            ipis_sent: (0..n).map(|c| k.smp.ipis_sent(CpuId(c as u32))).collect(),
            per_cpu: k.stats.snapshot().per_cpu.into_iter().collect(),
            violations: k.san.count(),
            records: k.san.violations(),
            leaked,
        }
    }

    /// Sum `o` into `self` (race scenarios run on several machines).
    pub fn add(&mut self, o: &Measure) {
        fn addv(a: &mut Vec<u64>, b: &[u64]) {
            if a.len() < b.len() {
                a.resize(b.len(), 0);
            }
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        addv(&mut self.cal, &o.cal);
        addv(&mut self.ipis_sent, &o.ipis_sent);
        for (name, v) in &o.per_cpu {
            addv(self.per_cpu.entry(name).or_default(), v);
        }
        self.violations += o.violations;
        let room = MAX_RECORDS.saturating_sub(self.records.len());
        self.records.extend(o.records.iter().take(room).cloned());
        self.leaked = match (self.leaked, o.leaked) {
            (Some(a), Some(b)) => Some(InUse {
                anon: a.anon + b.anon,
                file: a.file + b.file,
                page_table: a.page_table + b.page_table,
                kernel: a.kernel + b.kernel,
                hugetlb: a.hugetlb + b.hugetlb,
            }),
            _ => None,
        };
    }

    pub fn cpu(&self, s: Stat) -> &[u64] {
        self.per_cpu.get(s.name()).map_or(&[], |v| v.as_slice())
    }

    pub fn total(&self, s: Stat) -> u64 {
        self.cpu(s).iter().sum()
    }

    pub fn leaked_total(&self) -> Option<i64> {
        self.leaked.map(|l| l.total())
    }
}
