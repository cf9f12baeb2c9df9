//! Stress driver for docs/RACES.md, “Delayed rmap removal”: delayed rmap removal vs writeback
//! (5df397dec7c4, switch `delay-rmap`).
//!
//! Actors, one round each (Nadav Amit's PoC, scaled down):
//! - A (CPU0, a thread of the mm): loops over `STORES` distinct words of
//!   file page 0: store through its cached writable+dirty TLB entry (recorded
//!   in the lost-dirty-data oracle once it completed), then msync(MS_SYNC) of
//!   the page (`filemap_fdatawrite_range` → `folio_clear_dirty_for_io` →
//!   `folio_mkclean`), then POSIX_FADV_DONTNEED (`invalidate_mapping_pages`).
//!   (The PoC ran msync + fadvise in a child process; doing it from the
//!   writer keeps the race to two host threads, which a small, loaded host
//!   can actually run in parallel.)
//! - Z (CPU1, another thread of the mm): MADV_DONTNEED over the whole shared
//!   mapping of `PAGES` dirty file pages, page 0 first, so with the fix
//!   reverted page 0's rmap is gone while Z still walks the other PTEs under
//!   the PTL and has not flushed.
//!
//! The bad round: msync finds no mapping (`folio_mapped` is false), cleans
//! and writes the page; A's next store goes through the stale entry; Z
//! flushes and drops its reference; fadvise evicts the clean page; A's next
//! store faults the page back in from disk — the store in between is gone.
//! The oracle checks every recorded store after each round.  With the fix,
//! msync's rmap walk finds Z's mapping and waits on Z's PTL until the flush.
//! Z is a *stalled* zapper: after its PTE loop, still holding the PTL and
//! before its flush (the window of 5df397dec7c4), it takes a long interrupt
//! — it waits (serving IPIs) until A has done two more store/msync/fadvise
//! steps, or `STALL` at most.  That is a hypervisor preemption or an IRQ
//! storm on a real machine; here it makes the window wide enough that a
//! debug build on a loaded 2-core host hits it in a few rounds.  With the
//! fix A's msync waits for Z's PTL, so the stall just times out.
//! Needs 2 CPUs; any arch (arm64 broadcast makes Z's flush independent of
//! A's interrupt points).

use super::{harness, wait_for, RaceOutcome, RaceParams};
use crate::error::RunError;
use mm_core::check::DirtyDataOracle;
use mm_core::ops::writeback::{filemap_fdatawrite_range, invalidate_mapping_pages};
use mm_core::ops::{madvise_dontneed, mmap_file, writeback_mapping};
use mm_core::sync::{Arc, AtomicU64, Ordering};
use mm_core::CpuId;

const BASE: u64 = 0x4000_0000;
/// Dirty pages Z zaps per round (one PTE table; page 0 is the contended one).
pub const PAGES: u64 = 512;
/// Stores A makes per round (distinct words of page 0, fewer than a page holds).
pub const STORES: u64 = 256;
/// Interrupt points A passes between msync and fadvise.
pub const PAUSE: u32 = 512;
/// Longest stall of the zapper inside its window.
pub const STALL: std::time::Duration = std::time::Duration::from_millis(2);

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    if p.kcfg.nr_cpus < 2 {
        return Err(RunError::Config(format!("writeback_race needs 2 CPUs (writer, zapper); got {}", p.kcfg.nr_cpus)));
    }
    harness::run(p, p.kcfg.clone(), |h| {
        let k = h.k.clone();
        let ps = k.cfg.geometry.page_size();
        let words = k.hw.ram.words_per_frame() as u64;
        let pages = PAGES.min(k.cfg.geometry.hpage_pmd_nr());
        if STORES >= words {
            return Err(RunError::Config(format!("a page holds only {words} words; the driver stores {STORES}")));
        }
        let file = h.file(pages);
        let oracle = Arc::new(DirtyDataOracle::new(&file));
        let mm = h.mm()?;
        {
            let file = file.clone();
            h.sys
                .run_user(CpuId(0), &mm, move |k, mm| mmap_file(k, mm, BASE, pages * ps, true, true, &file, 0))?
                .map_err(|e| RunError::Model(format!("mmap: {e:?}")))?;
        }
        // The stalled zapper: armed once per round, fires on CPU1 only.
        let armed = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(AtomicU64::new(0));
        {
            let (armed, progress) = (armed.clone(), progress.clone());
            let hook = move |k: &mm_core::Kernel| {
                if k.this_cpu() != CpuId(1) || armed.swap(0, Ordering::SeqCst) == 0 {
                    return;
                }
                let target = progress.load(Ordering::SeqCst) + 2;
                let t0 = std::time::Instant::now();
                while progress.load(Ordering::SeqCst) < target && t0.elapsed() < STALL {
                    k.smp.cpu_relax();
                    mm_core::sync::spin_loop();
                }
            };
            if k.inject.hooks.zap_pte_range_locked.set(Box::new(hook)).is_err() {
                return Err(RunError::Driver("writeback_race: the zap hook is already taken".into()));
            }
        }
        h.rounds(|h, round| {
            armed.store(1, Ordering::SeqCst);
            // Setup: every page dirty in the mapping, page 0 cached dirty on CPU0.
            let o = oracle.clone();
            h.sys.run_user(CpuId(0), &mm, move |k, mm| {
                for pg in (0..pages).rev() {
                    let v = (round << 32) | pg;
                    k.write_user(mm, BASE + pg * ps + 8 * (words - 1), v).expect("setup store");
                    o.record_store(pg, (words - 1) as usize, v);
                }
            })?;
            let go = Arc::new(AtomicU64::new(0));
            let a = {
                let (go, o, file, progress) = (go.clone(), oracle.clone(), file.clone(), progress.clone());
                h.sys.spawn_user(CpuId(0), &mm, move |k, mm| {
                    go.fetch_add(1, Ordering::SeqCst);
                    wait_for(&go, 2, k);
                    // Line A up with Z: start storing once Z's gather exists.
                    let mut spins = 0u32;
                    while !mm.mm_tlb_flush_pending() && spins < 1 << 20 {
                        mm_core::sync::spin_loop();
                        spins += 1;
                    }
                    for i in 0..STORES {
                        let v = (round << 32) | (1 << 20) | i;
                        k.write_user(mm, BASE + 8 * i, v).expect("A's store");
                        o.record_store(0, i as usize, v);
                        filemap_fdatawrite_range(k, &file, 0, 1);
                        // The PoC's read-back between msync and fadvise.
                        for _ in 0..PAUSE {
                            k.smp.cpu_relax();
                        }
                        invalidate_mapping_pages(k, &file, 0, 1);
                        progress.fetch_add(1, Ordering::SeqCst);
                        k.smp.cond_resched();
                    }
                })
            };
            let z = {
                let go = go.clone();
                h.sys.spawn_user(CpuId(1), &mm, move |k, mm| {
                    go.fetch_add(1, Ordering::SeqCst);
                    wait_for(&go, 2, k);
                    madvise_dontneed(k, mm, BASE, pages * ps).expect("madvise");
                })
            };
            h.sys.join_all(vec![a, z])?;
            // A is done: whatever it stored must be on disk or in a dirty page;
            // and the accounting (mapcount, refcount, rss) must be consistent.
            let (o, m, f) = (oracle.clone(), mm.clone(), file.clone());
            let (lost, acct) = h
                .sys
                .run_kthread(CpuId(1), move |k| (o.check(k), mm_core::check::check_consistency(k, &[&m], &[&f])))?;
            acct.map_err(|e| RunError::Model(format!("accounting: {e}")).in_round(round))?;
            Ok(lost > 0)
        })?;
        // Final: everything written back; the oracle must still agree.
        let (o, f) = (oracle.clone(), file.clone());
        h.sys.run_kthread(CpuId(1), move |k| {
            writeback_mapping(k, &f);
            o.check(k)
        })?;
        h.late_violations();
        Ok(())
    })
}
