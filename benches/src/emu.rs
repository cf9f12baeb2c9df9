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
            hang_timeout: Duration::from_secs(300),
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
        self.round_timed().wall
    }

    /// `round`, with this thread's CPU time of the munmap as well.
    pub fn round_timed(&self) -> crate::host::Timed {
        let k = &self.k;
        let mm = k.mm_alloc();
        mm_core::tlb::switch_mm(k, &mm);
        let ps = k.cfg.geometry.page_size();
        ops::mmap_anon(k, &mm, MUNMAP_BASE, self.bytes, true).expect("mmap_anon");
        for p in 0..self.pages() {
            k.write_user(&mm, MUNMAP_BASE + p * ps, p).expect("touch");
        }
        let ((), dt) = crate::host::Timed::measure(|| ops::munmap(k, &mm, MUNMAP_BASE, self.bytes).expect("munmap"));
        ops::exit_mm(k, &mm);
        mm_core::tlb::drop_lazy_mm(k);
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

/// Touch + madvise(MADV_DONTNEED) of one page on a 2-CPU `System`, CPU0
/// doing the work; with `sibling`, a thread of the same mm runs on CPU1
/// (not lazy, polling for interrupts like a user thread in a loop), so
/// every zap's flush is a real cross-CPU shootdown through
/// `flush_tlb_mm_range` → `native_flush_tlb_multi` → `flush_tlb_func`.
/// The emulated counterpart of `host::HostDontneed`.
pub struct EmuDontneed {
    sys: emu_cpu::System,
    mm: Arc<mm_core::mm::MmStruct>,
    stop: Arc<mm_core::sync::AtomicBool>,
    sibling: Option<emu_cpu::TaskHandle<()>>,
}

impl EmuDontneed {
    pub fn new(sibling: bool, wait: WaitPolicy) -> Self {
        let kcfg = KernelConfig { nr_cpus: 2, ..KernelConfig::default() };
        let mcfg = MachineConfig {
            pin: true,
            wait,
            watchdog: Duration::from_secs(20),
            hang_timeout: Duration::from_secs(300),
        };
        let sys = emu_cpu::System::new(kcfg, mcfg).expect("boot the System");
        let mm = sys.mm_alloc().expect("mm_alloc");
        let ps = sys.kernel().cfg.geometry.page_size();
        sys.run_user(CpuId(0), &mm, move |k, mm| ops::mmap_anon(k, mm, MUNMAP_BASE, ps, true))
            .expect("mmap task")
            .expect("mmap_anon");
        let stop = Arc::new(mm_core::sync::AtomicBool::new(false));
        let sibling = sibling.then(|| {
            let stop = stop.clone();
            sys.spawn_user(CpuId(1), &mm, move |k, _mm| {
                while !stop.load(mm_core::sync::Ordering::Relaxed) {
                    k.smp.cond_resched();
                    std::hint::spin_loop();
                }
            })
        });
        EmuDontneed { sys, mm, stop, sibling }
    }

    /// Time `iters` (touch, DONTNEED) pairs inside a task on CPU0.
    pub fn time(&self, iters: u64) -> Duration {
        let ps = self.sys.kernel().cfg.geometry.page_size();
        self.sys
            .run_user(CpuId(0), &self.mm, move |k, mm| {
                let t0 = Instant::now();
                for i in 0..iters {
                    k.write_user(mm, MUNMAP_BASE, i).expect("touch");
                    ops::madvise_dontneed(k, mm, MUNMAP_BASE, ps).expect("madvise");
                }
                t0.elapsed()
            })
            .unwrap_or_else(|e| panic!("touch+dontneed task: {e}"))
    }
}

impl Drop for EmuDontneed {
    fn drop(&mut self) {
        self.stop.store(true, mm_core::sync::Ordering::Relaxed);
        if let Some(h) = self.sibling.take() {
            let _ = h.join(Duration::from_secs(10));
        }
        let _ = self.sys.run_user(CpuId(0), &self.mm, |k, mm| ops::exit_mm(k, mm));
        let _ = self.sys.release_lazy_mms(Duration::from_secs(10));
        let v = self.sys.kernel().san.count();
        if v != 0 && !std::thread::panicking() {
            panic!("touch+dontneed bench: {v} sanitizer violations");
        }
    }
}
