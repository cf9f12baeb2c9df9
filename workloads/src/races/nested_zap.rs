//! Stress driver for docs/RACES.md, “Concurrent zaps under a shared lock”: two MADV_DONTNEEDs of one mm under
//! mmap_lock read (99baac21e458, switch `nested-flush-detect`).
//!
//! Layout: a small range S (`SMALL` pages at the start of PTE table A) and a
//! big range B (`BIG_TABLES` full PTE tables right after A).  Every round
//! both CPUs touch S (so both TLBs cache it) and CPU0 touches B.  Then:
//! - T1 (CPU0): MADV_DONTNEED of S ∪ B — it clears S's PTEs, drops A's PTL,
//!   walks all of B, and only then flushes (`tlb_end_vma`);
//! - T2 (CPU1): once T1's gather exists (`tlb_flush_pending`, polled by the
//!   driver to line the two up) and after a random delay, MADV_DONTNEED of
//!   S — if it runs while T1 is in B it finds every PTE of S already none,
//!   gathers nothing and returns.
//!
//! With the fix reverted T2's `tlb_finish_mmu` trusts its empty range, so
//! when madvise returns CPU0 and CPU1 still cache S: the sanitizer's
//! return-time check reports `stale-after-zap`.  With the fix T2 sees
//! `mm_tlb_flush_nested` and flushes the whole mm.
//! Needs 2 CPUs; any arch (arm64's broadcast keeps T1 from having to wait
//! for interrupt points).

use super::{harness, wait_for, RaceOutcome, RaceParams};
use crate::error::RunError;
use mm_core::ops::{madvise_dontneed, mmap_anon};
use mm_core::sync::{Arc, AtomicU64, Ordering};
use mm_core::CpuId;

const BASE: u64 = 0x4000_0000;
pub const SMALL: u64 = 8;
/// PTE tables of B: T1's walk over them is the window.
pub const BIG_TABLES: u64 = 4;

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    if p.kcfg.nr_cpus < 2 {
        return Err(RunError::Config(format!("nested_zap needs 2 CPUs; got {}", p.kcfg.nr_cpus)));
    }
    harness::run(p, p.kcfg.clone(), |h| {
        let ps = h.k.cfg.geometry.page_size();
        let pmd = h.k.cfg.geometry.pmd_size();
        let big = h.k.cfg.geometry.hpage_pmd_nr() * BIG_TABLES;
        let mm = h.mm()?;
        h.sys
            .run_user(CpuId(0), &mm, move |k, mm| mmap_anon(k, mm, BASE, (1 + BIG_TABLES) * pmd, true))?
            .map_err(|e| RunError::Model(format!("mmap: {e:?}")))?;
        h.rounds(|h, round| {
            h.sys.run_user(CpuId(0), &mm, move |k, mm| {
                for i in 0..SMALL {
                    k.write_user(mm, BASE + i * ps, round).expect("touch S");
                }
                for i in 0..big {
                    k.write_user(mm, BASE + pmd + i * ps, round).expect("touch B");
                }
            })?;
            h.sys.run_user(CpuId(1), &mm, move |k, mm| {
                for i in 0..SMALL {
                    k.read_user(mm, BASE + i * ps).expect("touch S");
                }
            })?;
            let go = Arc::new(AtomicU64::new(0));
            let delay = (h.p.seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 7) % 4096;
            let t1 = {
                let go = go.clone();
                h.sys.spawn_user(CpuId(0), &mm, move |k, mm| {
                    go.fetch_add(1, Ordering::SeqCst);
                    wait_for(&go, 2, k);
                    madvise_dontneed(k, mm, BASE, pmd + big * ps).expect("T1 madvise");
                    k.smp.cond_resched();
                })
            };
            let t2 = {
                let go = go.clone();
                h.sys.spawn_user(CpuId(1), &mm, move |k, mm| {
                    go.fetch_add(1, Ordering::SeqCst);
                    wait_for(&go, 2, k);
                    let mut spins = 0u32;
                    while !mm.mm_tlb_flush_pending() && spins < 1 << 20 {
                        mm_core::sync::spin_loop();
                        spins += 1;
                    }
                    for _ in 0..delay {
                        mm_core::sync::spin_loop();
                    }
                    madvise_dontneed(k, mm, BASE, SMALL * ps).expect("T2 madvise");
                })
            };
            h.sys.join_all(vec![t1, t2])?;
            Ok(h.violated())
        })
    })
}
