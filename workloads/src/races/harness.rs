//! The one race harness: every driver boots, runs its rounds and tears down
//! through `run` and `Rig`.
//!
//! - `run(p, kcfg, body)` boots a `System` from `kcfg` (the driver's copy of
//!   `p.kcfg`, with what it forces: the GUP oracle, an arch, more RAM) and
//!   `p.machine`, and calls `body(&mut Rig)`: the driver's setup, its
//!   `Rig::rounds`, and what it checks after them.
//! - `Rig::rounds` runs rounds 1..=`p.iterations`: before each it asks
//!   `p.stop.expired()` (the run's time is up, or it was interrupted); after
//!   each it keeps the first round that showed the race
//!   (`first_violation_at`, and `first_violation_after`: the time from the
//!   start of round 1 to the end of that round) and, with
//!   `p.stop_on_violation`, stops there.  The time spent in rounds is
//!   `rounds_time` (the driver's setup before them and the teardown after
//!   them are not in it).
//! - The teardown runs after `body` whether it succeeded or not: every mm
//!   the rig made or adopted and did not exit yet exits (last thread, on
//!   CPU0), every file it made and did not truncate yet is truncated, and
//!   the machine drains its queues and RCU callbacks; then the leak check
//!   (`RaceOutcome::leaked`: frames still allocated).  After a failure the
//!   teardown stops at its first error and the first failure is the one
//!   returned.  A hang is the one failure it does not follow: no CPU of a
//!   hung machine makes progress, so every teardown step would only wait out
//!   the hang timeout again; dropping the `System` detaches its CPUs.

use std::time::{Duration, Instant};

use emu_cpu::System;
use mm_core::mm::{AddressSpace, MmStruct};
use mm_core::sync::Arc;
use mm_core::{CpuId, Kernel, KernelConfig};

use super::{RaceOutcome, RaceParams, RoundTiming};
use crate::error::RunError;

/// How long the teardown waits for the machine to drain.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// A booted machine, what the driver made on it, and its rounds so far.
pub struct Rig<'p> {
    pub p: &'p RaceParams,
    pub sys: System,
    pub k: Arc<Kernel>,
    /// Mms and files the teardown still has to exit / truncate.
    mms: Vec<Arc<MmStruct>>,
    files: Vec<Arc<AddressSpace>>,
    rounds: u64,
    first: Option<u64>,
    /// When round 1 started, and how long the rounds took (both set by
    /// `rounds`).
    rounds_started: Option<Instant>,
    rounds_time: Duration,
    /// From the start of round 1 to the end of the first round that
    /// showed the race.
    first_after: Option<Duration>,
}

/// Boot, run `body`, tear down (see the module comment).  `body`'s value
/// is the outcome's `details` (a driver's own numbers; `()` for most).
pub fn run<'p, X>(
    p: &'p RaceParams,
    kcfg: KernelConfig,
    body: impl FnOnce(&mut Rig<'p>) -> Result<X, RunError>,
) -> Result<RaceOutcome<X>, RunError> {
    let sys = System::new(kcfg, p.machine).map_err(RunError::Config)?;
    let k = sys.kernel().clone();
    crate::inject::attach(&k);
    let mut rig = Rig {
        p,
        sys,
        k,
        mms: Vec::new(),
        files: Vec::new(),
        rounds: 0,
        first: None,
        rounds_started: None,
        rounds_time: Duration::ZERO,
        first_after: None,
    };
    let details = match body(&mut rig) {
        Ok(x) => x,
        Err(e) if e.is_hang() => return Err(e),
        Err(e) => {
            let _ = rig.teardown();
            return Err(e);
        }
    };
    rig.teardown()?;
    let leaked = (rig.k.rcu.pending() == 0).then(|| rig.k.alloc.in_use());
    let timing = RoundTiming { rounds: rig.rounds_time, first_violation_after: rig.first_after };
    Ok(RaceOutcome::new(rig.k, rig.rounds, rig.first, timing, leaked, details))
}

impl Rig<'_> {
    /// A new mm (allocated on CPU0); the teardown exits it unless
    /// `exit_mm` did.
    pub fn mm(&mut self) -> Result<Arc<MmStruct>, RunError> {
        let mm = self.sys.mm_alloc()?;
        self.mms.push(mm.clone());
        Ok(mm)
    }

    /// An mm made on the machine (a fork): the teardown exits it unless
    /// `exit_mm` did.
    pub fn adopt(&mut self, mm: &Arc<MmStruct>) {
        self.mms.push(mm.clone());
    }

    /// A new file of `pages` pages; the teardown truncates it unless
    /// `truncate` did.
    pub fn file(&mut self, pages: u64) -> Arc<AddressSpace> {
        let f = self.k.new_file(pages);
        self.files.push(f.clone());
        f
    }

    /// Exit `mm` now, its last thread on `cpu`.
    pub fn exit_mm(&mut self, cpu: CpuId, mm: &Arc<MmStruct>) -> Result<(), RunError> {
        self.mms.retain(|m| !Arc::ptr_eq(m, mm));
        self.sys.run_user(cpu, mm, |k, mm| mm_core::ops::exit_mm(k, mm))?;
        Ok(())
    }

    /// Truncate `file`'s page cache now, on `cpu` (`truncate_inode_pages`
    /// from 0); returns the folios that were still mapped — which it
    /// unmapped, as the kernel's does (0 once every mm mapping it exited).
    pub fn truncate(&mut self, cpu: CpuId, file: &Arc<AddressSpace>) -> Result<usize, RunError> {
        self.files.retain(|f| !Arc::ptr_eq(f, file));
        let f = file.clone();
        Ok(self.sys.run_kthread(cpu, move |k| mm_core::ops::truncate_inode_pages(k, &f, 0))?)
    }

    /// Rounds 1..=`p.iterations` of `round(rig, n)`, which returns whether
    /// round `n` showed the race (usually `Rig::violated`).  Before each
    /// round: stop if `p.stop.expired()`.  After one that showed it: the
    /// first such is `first_violation_at`, and the time from the start of
    /// round 1 to its end `first_violation_after`; with
    /// `p.stop_on_violation` the rounds end there.  A round's error ends
    /// them (the teardown follows).
    pub fn rounds(&mut self, mut round: impl FnMut(&mut Self, u64) -> Result<bool, RunError>) -> Result<(), RunError> {
        let t0 = *self.rounds_started.get_or_insert_with(Instant::now);
        let r = self.rounds_from(t0, &mut round);
        self.rounds_time = t0.elapsed();
        r
    }

    fn rounds_from(
        &mut self,
        t0: Instant,
        round: &mut impl FnMut(&mut Self, u64) -> Result<bool, RunError>,
    ) -> Result<(), RunError> {
        for n in 1..=self.p.iterations {
            if self.p.stop.expired() {
                break;
            }
            self.rounds = n;
            self.injection_point(n)?;
            if round(self, n)? && self.first.is_none() {
                self.first = Some(n);
                self.first_after = Some(t0.elapsed());
            }
            if self.first.is_some() && self.p.stop_on_violation {
                break;
            }
        }
        Ok(())
    }

    /// Has the sanitizer recorded anything on this machine (this round or
    /// before)?
    pub fn violated(&self) -> bool {
        self.k.san.count() > 0
    }

    /// A check after the rounds found records and no round showed one: they
    /// count against the last round run.
    pub fn late_violations(&mut self) {
        if self.first.is_none() && self.violated() {
            self.first = Some(self.rounds);
            self.first_after = self.rounds_started.map(|t0| t0.elapsed());
        }
    }

    /// `--inject-panic CPU`: while armed for one of this machine's CPUs,
    /// each round starts with a task there that is an injection point.
    fn injection_point(&self, round: u64) -> Result<(), RunError> {
        if let Some(cpu) = self.k.inject.panic.armed() {
            self.sys.run_kthread(cpu, move |k| crate::inject::point(k, cpu, &format!("race round {round}")))?;
        }
        Ok(())
    }

    /// Exit every mm left, truncate every file left, drain the machine.
    fn teardown(&mut self) -> Result<(), RunError> {
        for mm in std::mem::take(&mut self.mms) {
            self.exit_mm(CpuId(0), &mm)?;
        }
        for f in std::mem::take(&mut self.files) {
            let still = self.truncate(CpuId(0), &f)?;
            if still != 0 {
                return Err(RunError::Driver(format!(
                    "teardown: {still} page-cache folios still mapped after every mm exited"
                )));
            }
        }
        self.sys.release_lazy_mms(TEARDOWN_TIMEOUT)?;
        Ok(())
    }
}
