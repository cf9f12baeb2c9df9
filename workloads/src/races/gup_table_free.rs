//! KERNEL-RACES §1: GUP-fast versus page-table freeing (munmap →
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
//! Expected, per KERNEL-RACES §1(f):
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

use emu_cpu::System;
use mm_core::inject::GupFastPoint;
use mm_core::mm::MmStruct;
use mm_core::ops::gup::{gup_fast, unpin_user_pages, Foll};
use mm_core::ops::{exit_mm, mmap_anon, munmap};
use mm_core::sync::{Arc, AtomicBool, AtomicU64, Ordering};
use mm_core::{CpuId, Kernel};

use super::{RaceOutcome, RaceParams};

/// Start of the raced region (1 GiB aligned: its PUD/PMD/PTE tables are
/// all freed by the munmap).
pub const BASE: u64 = 0x4000_0000;
/// Pages the walker pins per call.
pub const NR_PAGES: u64 = 4;
/// Passes of the other actor per round (one round = one walker task).
pub const CYCLES: u64 = 4;

/// A pseudo-random stall inside `gup_fast` at `point`: up to `max` long,
/// busy-waiting with IRQs off.
pub(crate) fn install_stall(k: &Kernel, point: GupFastPoint, max: Duration, seed: u64) {
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
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    });
}

/// Run `rounds` of: W looping GUP-fast on `w_cpu` while `actor` runs once on
/// `k_cpu` (both as threads of `mm`).  Returns (rounds run, first round
/// with a violation).
pub(crate) fn run_rounds<F>(
    s: &System,
    p: &RaceParams,
    mm: &Arc<MmStruct>,
    w_range: (u64, u64),
    actor: F,
) -> Result<(u64, Option<u64>), String>
where
    F: Fn(&Arc<Kernel>, &Arc<MmStruct>, u64) + Send + Sync + Clone + 'static,
{
    let k = s.kernel().clone();
    let mut first = None;
    let mut rounds = 0;
    for round in 1..=p.iterations {
        if p.stop.expired() {
            break;
        }
        rounds = round;
        let done = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let (d, st) = (done.clone(), started.clone());
        let (start, n) = w_range;
        let w = s.spawn_user(CpuId(1), mm, move |k, mm| {
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
        let f = s.spawn_user(CpuId(0), mm, move |k, mm| {
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
        let r = s.join_all(vec![f]).map_err(|e| e.to_string());
        done.store(true, Ordering::SeqCst);
        s.join_all(vec![w]).map_err(|e| e.to_string())?;
        r?;
        if first.is_none() && k.san.count() > 0 {
            first = Some(round);
            if p.stop_on_violation {
                break;
            }
        }
    }
    Ok((rounds, first))
}

/// Boot a `System` for a GUP race driver (oracle on, ≥ 2 CPUs).
pub(crate) fn boot(p: &RaceParams) -> Result<System, String> {
    if p.kcfg.nr_cpus < 2 {
        return Err(format!("this race needs at least 2 CPUs (kcfg.nr_cpus = {})", p.kcfg.nr_cpus));
    }
    let mut kcfg = p.kcfg.clone();
    kcfg.gup_oracle = true;
    System::new(kcfg, p.machine)
}

/// Tear the mm down and wait until RCU-freed tables are back.
pub(crate) fn finish(s: &System, mm: &Arc<MmStruct>) -> Result<(), String> {
    s.run_user(CpuId(0), mm, |k, mm| exit_mm(k, mm)).map_err(|e| e.to_string())?;
    s.quiesce(Duration::from_secs(10)).map_err(|e| e.to_string())
}

/// The §1 driver (see the module comment).
pub fn run(p: &RaceParams) -> Result<RaceOutcome, String> {
    let s = boot(p)?;
    let k = s.kernel().clone();
    install_stall(&k, GupFastPoint::PmdRead, Duration::from_micros(200), p.seed);
    let mm = s.mm_alloc().map_err(|e| e.to_string())?;
    let ps = k.cfg.geometry.page_size();
    let reuse = BASE + (1 << 30);
    let (rounds, first) = run_rounds(&s, p, &mm, (BASE, NR_PAGES), move |k, mm, _round| {
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
    })?;
    finish(&s, &mm)?;
    Ok(RaceOutcome::new(k, rounds, first))
}
