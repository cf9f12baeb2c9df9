//! Stress driver for docs/RACES.md, “x86 lazy TLB and freed page tables”: x86 lazy TLB and freed page tables
//! (the freed_tables rule, 016c4d92cd16; switch `lazy-tlb-freed-tables`).
//!
//! Every round CPU1 runs a thread of the mm that touches the first page of
//! a fresh PTE table's worth of mapping (its paging-structure cache now
//! points at that table), then a kernel thread on CPU1 — lazy, the mm still
//! loaded — performs speculative hardware walks of the next page (never
//! faulted, so no leaf TLB entry: every walk starts from the cached
//! paging-structure entry), each with IRQs off, interrupt points between.
//! Meanwhile CPU0 unmaps the whole table's range (free_pgtables queues the
//! table for RCU), waits for the grace period to end (`rcu_barrier`: the
//! table is freed) and reuses the freed frames; the walker keeps walking
//! until CPU0 is done, so its last walks always come after the free.
//! (Without the `rcu_barrier` whether the RCU callback had freed the table
//! before the walker's last walk was up to the host scheduler: in two
//! batches of 10 seeded `mmemu reproduce lazy-tlb-freed-tables` runs, 2
//! and 8 found nothing in 60 rounds; docs/PERFORMANCE.md, "Time to find
//! each reverted fix".)
//!
//! With the rule, the flush IPIs the lazy CPU (tables were freed) and it
//! switches to init_mm before the table can be freed: its later walks find
//! no page tables at all.  Reverted, the lazy CPU is skipped and a walk
//! lands in the freed frame: `walk-into-freed-table`.  x86 only (arm64's
//! broadcast invalidation reaches every CPU's walk cache).

use super::{harness, RaceOutcome, RaceParams};
use crate::error::RunError;
use mm_core::config::Arch;
use mm_core::hw::mmu::Access;
use mm_core::ops::{mmap_anon, munmap};
use mm_core::page::alloc::PageKind;
use mm_core::page::Folio;
use mm_core::sync::{Arc, AtomicBool, Ordering};
use mm_core::CpuId;
use std::time::{Duration, Instant};

const BASE: u64 = 0x4000_0000;
/// How long the walker walks at most when CPU0 never says it is done (a
/// bound, not a pause: it stops two walks after CPU0 is done).
const WALK_BOUND: Duration = Duration::from_secs(1);

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    if p.kcfg.nr_cpus < 2 {
        return Err(RunError::Config(format!("lazy_tlb needs 2 CPUs; got {}", p.kcfg.nr_cpus)));
    }
    if p.kcfg.arch != Arch::X86 {
        return Err(RunError::Config(format!(
            "lazy_tlb is an x86 race (lazy CPUs skipped by flush IPIs); got arch {:?}",
            p.kcfg.arch
        )));
    }
    harness::run(p, p.kcfg.clone(), |h| {
        let g = h.k.cfg.geometry;
        let (ps, pmd) = (g.page_size(), g.pmd_size());
        let mm = h.mm()?;
        h.rounds(|h, round| {
            h.sys.run_user(CpuId(1), &mm, move |k, mm| {
                mmap_anon(k, mm, BASE, pmd, true).expect("mmap");
                k.write_user(mm, BASE, round).expect("touch");
            })?;
            let done = Arc::new(AtomicBool::new(false));
            let d = done.clone();
            let walker = h.sys.spawn_kthread(CpuId(1), move |k| {
                // Walk while CPU0 unmaps and waits for the free, and twice
                // more after it is done: a lazy CPU may walk speculatively
                // at any later time.
                let t0 = Instant::now();
                let mut after = 0;
                while after < 2 && t0.elapsed() < WALK_BOUND {
                    if d.load(Ordering::SeqCst) {
                        after += 1;
                    }
                    let irq = k.local_irq_save();
                    let _ = k.hw.access(CpuId(1), BASE + ps, Access::Read, &k.san);
                    drop(irq); // interrupt point: a pending flush IPI lands here
                }
            });
            let d = done.clone();
            let freer = h.sys.spawn_user(CpuId(0), &mm, move |k, mm| {
                munmap(k, mm, BASE, pmd).expect("munmap");
                // The grace period ends and the RCU callback frees the
                // table (CPU1's walks are short IRQs-off sections, so they
                // do not hold it up); with the rule, CPU1 left the mm at
                // the munmap's flush IPI, before the table was queued.
                k.rcu_barrier();
                // Reuse what was freed (the table frames among them).
                let pages: Vec<_> = (0..4).filter_map(|_| k.alloc_pages(0, PageKind::Kernel)).collect();
                for p in pages {
                    k.folio_put(Folio(p));
                }
                d.store(true, Ordering::SeqCst);
            });
            h.sys.join_all(vec![walker, freer])?;
            Ok(h.violated())
        })
    })
}
