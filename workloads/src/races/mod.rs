//! Race stress drivers (docs/RACES.md), one module per race.
//!
//! Contract of every driver `run(p: &RaceParams) -> Result<RaceOutcome<X>, RunError>`
//! (`X = ()` but for fork_exit_hugetlb's per-child numbers):
//! - it checks what it needs of `p.kcfg` (an arch profile, a CPU count, a
//!   geometry) and refuses anything else with `RunError::Config`;
//! - it goes through the one harness (`harness::run`, `Rig`): boot from
//!   `p.kcfg` / `p.machine`, up to `p.iterations` rounds of the race, ending
//!   early before a round when `p.stop.expired()` (the run's time is up or
//!   it was interrupted) and at the first round with a violation when
//!   `p.stop_on_violation`, and a teardown that always runs (every mm
//!   exited, every file truncated, the machine quiesced, the leak check);
//! - it never hangs (all waits go through the machine's timeouts) and
//!   turns a machine error into `RunError::Machine`, which names the CPU;
//! - it returns the kernel so the caller can read counters and violations.

pub mod fork_exit_hugetlb;
pub mod gup_table_free;
pub mod harness;
pub mod hugetlb_unshare_gup;
pub mod hugetlb_unshare_walk;
pub mod iommu_sva;
pub mod khugepaged_gup;
pub mod large_folio_zap;
pub mod lazy_tlb;
pub mod nested_zap;
pub mod pfnmap_unmap;
pub mod writeback_race;

use std::collections::BTreeMap;

use emu_cpu::MachineConfig;
use mm_core::check::ViolationKind;
use mm_core::page::alloc::InUse;
use mm_core::sync::Arc;
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
    /// The run's deadline and the interrupt request: the harness asks
    /// `p.stop.expired()` before each round and ends early when it says so
    /// (tearing down as usual).
    pub stop: Until,
    /// The scenario's `--param` values, for drivers that take any
    /// (fork_exit_hugetlb: `tables`, `children`, `touch`); empty otherwise.
    pub params: BTreeMap<&'static str, u64>,
}

impl RaceParams {
    /// A run of up to `iterations` rounds on `kcfg` as the race tests drive
    /// it: adaptive waits, a 5 s watchdog, the default 20 s hang timeout,
    /// seed 0x5eed, stopping at the first violating round, no deadline.
    pub fn until_violation(kcfg: KernelConfig, iterations: u64) -> Self {
        RaceParams {
            kcfg,
            machine: MachineConfig {
                wait: emu_cpu::WaitPolicy::Adaptive,
                watchdog: std::time::Duration::from_secs(5),
                hang_timeout: emu_cpu::DEFAULT_HANG_TIMEOUT,
                ..MachineConfig::default()
            },
            iterations,
            seed: 0x5eed,
            stop_on_violation: true,
            stop: Until::forever(),
            params: BTreeMap::new(),
        }
    }
}

/// Wall-clock time of a driver's rounds (`harness::Rig::rounds`): its
/// setup before round 1 and the teardown are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundTiming {
    /// From the start of round 1 to the end of the last round run.
    pub rounds: std::time::Duration,
    /// From the start of round 1 to the end of the round that showed the
    /// first violation (`first_violation_at`).
    pub first_violation_after: Option<std::time::Duration>,
}

/// What a driver found.
pub struct RaceOutcome<X = ()> {
    /// Rounds actually run.
    pub iterations: u64,
    /// 1-based round in which the first violation appeared.
    pub first_violation_at: Option<u64>,
    /// How long the rounds took, and how long from the start of round 1
    /// to the end of that round (`None` with no violation).
    pub timing: RoundTiming,
    /// Every kind of violation recorded, in order of first appearance.
    pub kinds: Vec<ViolationKind>,
    /// The kernel after the run (counters, sanitizer records).
    pub kernel: Arc<Kernel>,
    /// Frames still allocated after the teardown: leaks (`None`: RCU
    /// callbacks were still pending, so no leak check).
    pub leaked: Option<InUse>,
    /// The driver's own numbers (fork_exit_hugetlb: per-child exits).
    pub details: X,
}

impl<X: std::fmt::Debug> std::fmt::Debug for RaceOutcome<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaceOutcome")
            .field("iterations", &self.iterations)
            .field("first_violation_at", &self.first_violation_at)
            .field("timing", &self.timing)
            .field("kinds", &self.kinds)
            .field("violations", &self.kernel.san.count())
            .field("details", &self.details)
            .finish()
    }
}

impl<X> RaceOutcome<X> {
    /// Build from a finished run: kinds are read from the sanitizer.
    pub fn new(
        kernel: Arc<Kernel>,
        iterations: u64,
        first_violation_at: Option<u64>,
        timing: RoundTiming,
        leaked: Option<InUse>,
        details: X,
    ) -> Self {
        let mut kinds = Vec::new();
        for v in kernel.san.violations() {
            if !kinds.contains(&v.kind) {
                kinds.push(v.kind);
            }
        }
        RaceOutcome { iterations, first_violation_at, timing, kinds, kernel, leaked, details }
    }

    /// The same outcome without the driver's own numbers.
    pub fn plain(self) -> RaceOutcome {
        let RaceOutcome { iterations, first_violation_at, timing, kinds, kernel, leaked, .. } = self;
        RaceOutcome { iterations, first_violation_at, timing, kinds, kernel, leaked, details: () }
    }
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
