//! Race stress drivers (KERNEL-RACES.md), one module per race.
//!
//! Contract of every driver `run(p: &RaceParams) -> Result<RaceOutcome, String>`:
//! - boots its own `emu_cpu::System` from `p.kcfg` / `p.machine` (the
//!   driver may require an arch profile or CPU count and says so in its
//!   `Err`), runs up to `p.iterations` rounds of the race, and stops early
//!   at the first violation when `p.stop_on_violation`, and before a round
//!   when `p.stop.expired()` (the run's time is up or it was interrupted);
//! - never hangs (all waits go through the machine's timeouts) and turns a
//!   machine error into `Err` naming the CPU;
//! - before returning `Ok`, exits every mm it created, truncates every file
//!   it created and quiesces the machine (`teardown`), so frames still in
//!   use afterwards are leaks;
//! - returns the kernel so the caller can read counters and violations.

pub mod fork_exit_hugetlb;
pub mod gup_table_free;
pub mod hugetlb_unshare_gup;
pub mod khugepaged_gup;

use emu_cpu::{MachineConfig, System};
use mm_core::check::ViolationKind;
use mm_core::mm::{AddressSpace, MmStruct};
use mm_core::sync::Arc;
use mm_core::CpuId;
use mm_core::{Kernel, KernelConfig};

use crate::budget::Until;

/// What a driver is asked to do.
#[derive(Clone, Debug)]
pub struct RaceParams {
    pub kcfg: KernelConfig,
    pub machine: MachineConfig,
    /// Upper bound on rounds of the race.
    pub iterations: u64,
    pub seed: u64,
    /// Stop at the first round that produced a violation.
    pub stop_on_violation: bool,
    /// The run's deadline and the interrupt request: a driver asks
    /// `p.stop.expired()` before each round and ends early when it says so
    /// (tearing down as usual).
    pub stop: Until,
}

/// What a driver found.
pub struct RaceOutcome {
    /// Rounds actually run.
    pub iterations: u64,
    /// 1-based round in which the first violation appeared.
    pub first_violation_at: Option<u64>,
    /// Every kind of violation recorded, in order of first appearance.
    pub kinds: Vec<ViolationKind>,
    /// The kernel after the run (counters, sanitizer records).
    pub kernel: Arc<Kernel>,
}

impl std::fmt::Debug for RaceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaceOutcome")
            .field("iterations", &self.iterations)
            .field("first_violation_at", &self.first_violation_at)
            .field("kinds", &self.kinds)
            .field("violations", &self.kernel.san.count())
            .finish()
    }
}

impl RaceOutcome {
    /// Build from a finished run: kinds are read from the sanitizer.
    pub fn new(kernel: Arc<Kernel>, iterations: u64, first_violation_at: Option<u64>) -> Self {
        let mut kinds = Vec::new();
        for v in kernel.san.violations() {
            if !kinds.contains(&v.kind) {
                kinds.push(v.kind);
            }
        }
        RaceOutcome { iterations, first_violation_at, kinds, kernel }
    }
}

pub mod iommu_sva;
pub mod large_folio_zap;
pub mod lazy_tlb;
pub mod nested_zap;
pub mod writeback_race;

/// How long `teardown` waits for the machine to drain.
const TEARDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// End of a driver: every mm exits (last thread, on CPU0), every file's
/// page cache is truncated, the machine drains its queues and RCU
/// callbacks.  Anything still allocated after this is a leak.
pub fn teardown(sys: &System, mms: &[Arc<MmStruct>], files: &[Arc<AddressSpace>]) -> Result<(), String> {
    for mm in mms {
        sys.run_user(CpuId(0), mm, |k, mm| mm_core::ops::exit_mm(k, mm)).map_err(|e| e.to_string())?;
    }
    for f in files {
        let f = f.clone();
        let still = sys
            .run_kthread(CpuId(0), move |k| mm_core::ops::writeback::truncate_inode_pages(k, &f))
            .map_err(|e| e.to_string())?;
        if still != 0 {
            return Err(format!("teardown: {still} page-cache folios still mapped after every mm exited"));
        }
    }
    sys.quiesce(TEARDOWN_TIMEOUT).map_err(|e| e.to_string())
}

/// Spin (an interrupt point each time round: pending IPIs are served) until
/// `flag >= at_least`; drivers line their racing threads up with it.
pub fn wait_for(flag: &mm_core::sync::AtomicU64, at_least: u64, k: &Kernel) {
    let mut spins = 0u32;
    while flag.load(mm_core::sync::Ordering::SeqCst) < at_least {
        k.smp.cpu_relax();
        spins += 1;
        if spins.is_multiple_of(32) {
            mm_core::sync::yield_now();
        } else {
            mm_core::sync::spin_loop();
        }
    }
}

/// End of round `round`: remember the first round whose run left a
/// sanitizer record; true when the driver should stop (`stop_on_violation`).
pub fn violation_seen(k: &Kernel, round: u64, first: &mut Option<u64>, p: &RaceParams) -> bool {
    if first.is_none() && k.san.count() > 0 {
        *first = Some(round);
    }
    first.is_some() && p.stop_on_violation
}
