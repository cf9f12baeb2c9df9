//! docs/RACES.md, “GUP-fast versus page-table freeing”: GUP-fast versus page-table freeing (munmap →
//! free_pgtables), the general contract.
//!
//! Actors, each round:
//! - W (CPU1, a thread of the mm): GUP-fast over the region again and again
//!   (pin, unpin).  Inside the walk, right after it read a PMD, it stalls
//!   for a pseudo-random time with IRQs off (an NMI, a preempted vCPU).
//! - F (CPU0, another thread of the mm): map the region, fault it in,
//!   munmap it (zap + free_pgtables: the PTE, PMD and PUD tables go), then
//!   map and fault a second region so freed frames are reused.
//!
//! Expected, per docs/RACES.md, “GUP-fast versus page-table freeing”:
//! - arm64 (broadcast TLBI) with `rcu_table_free = false`: the table is
//!   freed while W still walks it → `gup-fast-freed-table` (and possibly
//!   `gup-oracle`).
//! - x86 (IPI flush) with `rcu_table_free = false`: the flush IPI waits for
//!   W's IRQs-off section, so the free cannot overtake it → none.
//! - any arch with `rcu_table_free = true`: the grace period waits for W
//!   (IRQs off is an RCU read-side section) → none.
//!
//! The driver switches the GUP oracle on (`kcfg.gup_oracle`), needs at
//! least 2 CPUs, and uses CPU0 and CPU1.

use std::time::{Duration, Instant};

use mm_core::inject::GupFastPoint;
use mm_core::mm::MmStruct;
use mm_core::ops::gup::{gup_fast, unpin_user_pages, Foll};
use mm_core::ops::{mmap_anon, munmap};
use mm_core::sync::{Arc, AtomicBool, AtomicU64, Ordering};
use mm_core::{CpuId, Kernel, KernelConfig};

use super::harness::{self, Rig};
use super::{RaceOutcome, RaceParams};
use crate::error::RunError;

/// Start of the raced region (1 GiB aligned: its PUD/PMD/PTE tables are
/// all freed by the munmap).
pub const BASE: u64 = 0x4000_0000;
/// Pages the walker pins per call.
pub const NR_PAGES: u64 = 4;
/// Passes of the other actor per round (one round = one walker task).
pub const CYCLES: u64 = 4;

/// Clock reads between two host yields of a stalled walker.
const STALL_YIELD_EVERY: u32 = 16;

/// A pseudo-random stall inside `gup_fast` at `point`: up to `max` long,
/// busy-waiting with IRQs off.  The stalled CPU takes no IPI and makes no
/// progress until the time is up, but its host thread yields its core now
/// and then: emulated CPUs that share that core (more emulated CPUs than
/// host cores) run meanwhile, as other CPUs of a real machine would, instead
/// of waiting for the host scheduler to preempt the spinning one.
pub(crate) fn install_stall(k: &Kernel, point: GupFastPoint, max: Duration, seed: u64) {
    install_stall_until(k, point, max, seed, None);
}

/// `install_stall`, and with `event` the stall also ends as soon as
/// `event` moved on from its value at the stall's start (another CPU
/// reached the point of its own path the race is about: e.g. khugepaged's
/// `CollapsePoint::AfterIsolate`).
pub(crate) fn install_stall_until(
    k: &Kernel,
    point: GupFastPoint,
    max: Duration,
    seed: u64,
    event: Option<Arc<AtomicU64>>,
) {
    let state = AtomicU64::new(seed | 1);
    let max_ns = max.as_nanos().max(1) as u64;
    k.inject.race.set_gup_fast(move |_k, p, _va| {
        if p != point {
            return;
        }
        // xorshift64
        let mut x = state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.store(x, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_nanos(x % max_ns);
        let seen = event.as_ref().map(|e| e.load(Ordering::SeqCst));
        let mut spins = 0u32;
        while Instant::now() < until && event.as_ref().map(|e| e.load(Ordering::SeqCst)) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(STALL_YIELD_EVERY) {
                mm_core::sync::yield_now();
            }
        }
    });
}

/// One round: W looping GUP-fast over `w_range` on CPU1 while `actor` runs
/// `CYCLES` times on CPU0 (both as threads of `mm`).  Returns whether the
/// sanitizer has seen a violation.
pub(crate) fn gup_round<F>(
    h: &Rig,
    mm: &Arc<MmStruct>,
    w_range: (u64, u64),
    actor: &F,
    round: u64,
) -> Result<bool, RunError>
where
    F: Fn(&Arc<Kernel>, &Arc<MmStruct>, u64) + Send + Sync + Clone + 'static,
{
    let done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (d, st) = (done.clone(), started.clone());
    let (start, n) = w_range;
    let w = h.sys.spawn_user(CpuId(1), mm, move |k, mm| {
        st.store(true, Ordering::SeqCst);
        let mut calls = 0u64;
        while !d.load(Ordering::SeqCst) || calls == 0 {
            let pages = gup_fast(k, mm, start, n, Foll::PIN);
            unpin_user_pages(k, &pages);
            calls += 1;
        }
        calls
    });
    let a = actor.clone();
    let (d, st) = (done.clone(), started.clone());
    let f = h.sys.spawn_user(CpuId(0), mm, move |k, mm| {
        // Race only against a walker that is running (task wake-up
        // latency is longer than one pass of the actor).
        let t0 = Instant::now();
        while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_millis(200) {
            k.smp.cpu_relax();
            std::hint::spin_loop();
        }
        for _ in 0..CYCLES {
            a(k, mm, round);
        }
        d.store(true, Ordering::SeqCst);
    });
    let r = h.sys.join_all(vec![f]);
    done.store(true, Ordering::SeqCst);
    h.sys.join_all(vec![w])?;
    r?;
    Ok(h.violated())
}

/// The kernel config of a GUP race driver (oracle on, ≥ 2 CPUs).
pub(crate) fn gup_kcfg(p: &RaceParams) -> Result<KernelConfig, RunError> {
    if p.kcfg.nr_cpus < 2 {
        return Err(RunError::Config(format!("this race needs at least 2 CPUs (kcfg.nr_cpus = {})", p.kcfg.nr_cpus)));
    }
    Ok(KernelConfig { gup_oracle: true, ..p.kcfg.clone() })
}

/// The RACES.md “GUP-fast versus page-table freeing” driver (see the module comment).
pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    harness::run(p, gup_kcfg(p)?, |h| {
        install_stall(&h.k, GupFastPoint::PmdRead, Duration::from_micros(200), h.p.seed);
        let mm = h.mm()?;
        let ps = h.k.cfg.geometry.page_size();
        let reuse = BASE + (1 << 30);
        let actor = move |k: &Arc<Kernel>, mm: &Arc<MmStruct>, _round: u64| {
            mmap_anon(k, mm, BASE, NR_PAGES * ps, true).expect("mmap");
            for i in 0..NR_PAGES {
                k.write_user(mm, BASE + i * ps, i).expect("fault in");
            }
            munmap(k, mm, BASE, NR_PAGES * ps).expect("munmap");
            // Reuse freed frames (as tables and as data) elsewhere.
            mmap_anon(k, mm, reuse, NR_PAGES * ps, true).expect("mmap");
            for i in 0..NR_PAGES {
                k.write_user(mm, reuse + i * ps, 0xdead_beef).expect("fault in");
            }
            munmap(k, mm, reuse, NR_PAGES * ps).expect("munmap");
        };
        h.rounds(|h, round| gup_round(h, &mm, (BASE, NR_PAGES), &actor, round))
    })
}
