//! Emulated counterparts of the host anchors, shaped so the bench harness
//! and the interleaved ratio step share one implementation.
//!
//! - `EmuIpi`: a `Machine` of N CPU threads (pinned round-robin) and timed
//!   loops of `smp_call_function_many` issued by a task on CPU0, either to
//!   CPU1 alone (IPI round trip) or to every other CPU (shootdown
//!   broadcast).  The handler is empty, like membarrier's `ipi_mb` (one
//!   barrier), so both sides measure the delivery mechanism.
//! - `EmuMunmap`: a one-CPU kernel on the synchronous reference `Smp`
//!   (no other CPU runs the mm, so every flush is local) with RAM for the
//!   region; each round maps the region, touches every page (not timed)
//!   and times one `munmap` of all of it.

use std::time::{Duration, Instant};

use emu_cpu::{Machine, MachineConfig, WaitPolicy};
use mm_core::ops;
use mm_core::smp::Smp;
use mm_core::sync::Arc;
use mm_core::types::CpuMask;
use mm_core::{CpuId, Kernel, KernelConfig};

/// Which CPUs an emulated cross call targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    /// CPU1 only: one IPI round trip.
    One,
    /// Every CPU but the sender (CPU0).
    All,
}

/// Name of a wait policy as the CLI spells it.
pub fn policy_name(p: WaitPolicy) -> &'static str {
    match p {
        WaitPolicy::Spin => "spin",
        WaitPolicy::Park => "park",
        WaitPolicy::Adaptive => "adaptive",
    }
}

/// A machine to time cross calls on.
pub struct EmuIpi {
    machine: Machine,
}

impl EmuIpi {
    /// `n` CPUs (≥ 2), pinned, with `wait`.  Generous timeouts: with many
    /// spinning CPUs on few host cores one call can take milliseconds.
    pub fn new(n: usize, wait: WaitPolicy) -> Self {
        assert!(n >= 2, "an IPI bench needs at least 2 CPUs");
        let cfg = MachineConfig {
            pin: true,
            wait,
            watchdog: Duration::from_secs(20),
            task_timeout: Duration::from_secs(300),
        };
        EmuIpi { machine: Machine::new(n, cfg) }
    }

    pub fn nr_cpus(&self) -> usize {
        self.machine.nr_cpus()
    }

    /// Time `iters` `smp_call_function_many` calls (empty handler) from a
    /// task on CPU0, measured inside the task.
    pub fn time(&self, iters: u64, targets: Targets) -> Duration {
        let smp = self.machine.smp();
        let mut mask = match targets {
            Targets::One => {
                let mut m = CpuMask::new();
                m.set(CpuId(1));
                m
            }
            Targets::All => CpuMask::first_n(self.nr_cpus()),
        };
        mask.clear(CpuId(0));
        self.machine
            .run_on(CpuId(0), move || {
                let f = |_: CpuId| {};
                let t0 = Instant::now();
                for _ in 0..iters {
                    smp.smp_call_function_many(&mask, &f);
                }
                t0.elapsed()
            })
            .unwrap_or_else(|e| panic!("IPI bench task: {e}"))
    }
}

/// Where the munmap benches map their region (away from 0, PUD-aligned).
pub const MUNMAP_BASE: u64 = 0x10_0000_0000;

/// A one-CPU kernel sized for a region of `bytes`.
pub struct EmuMunmap {
    pub k: Arc<Kernel>,
    pub bytes: u64,
}

impl EmuMunmap {
    /// `cfg` with RAM for the region (+ tables and batches) and one CPU.
    pub fn new(mut cfg: KernelConfig, bytes: u64) -> Self {
        let pages = bytes / cfg.geometry.page_size();
        cfg.ram_frames = (pages as usize + pages as usize / 256 + 8192).next_power_of_two();
        let k = Kernel::new_sync(cfg, 1);
        EmuMunmap { k, bytes }
    }

    pub fn pages(&self) -> u64 {
        self.bytes / self.k.cfg.geometry.page_size()
    }

    /// One round: a fresh mm, mmap + touch every page (not timed), then the
    /// timed munmap of the whole region.  The mm then exits; the check that
    /// nothing leaked and no violation happened is not timed either.
    pub fn round(&self) -> Duration {
        let k = &self.k;
        let mm = k.mm_alloc();
        mm_core::tlb::switch_mm(k, &mm);
        let ps = k.cfg.geometry.page_size();
        ops::mmap_anon(k, &mm, MUNMAP_BASE, self.bytes, true).expect("mmap_anon");
        for p in 0..self.pages() {
            k.write_user(&mm, MUNMAP_BASE + p * ps, p).expect("touch");
        }
        let t0 = Instant::now();
        ops::munmap(k, &mm, MUNMAP_BASE, self.bytes).expect("munmap");
        let dt = t0.elapsed();
        ops::exit_mm(k, &mm);
        k.rcu_barrier();
        assert_eq!(k.san.count(), 0, "sanitizer violations in the munmap bench");
        assert_eq!(k.alloc.in_use().total(), 0, "munmap bench leaked frames: {:?}", k.alloc.in_use());
        dt
    }

    /// ns per page of one round.
    pub fn ns_per_page(&self) -> f64 {
        self.round().as_nanos() as f64 / self.pages() as f64
    }
}

/// Median of a sample (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty(), "median of nothing");
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
