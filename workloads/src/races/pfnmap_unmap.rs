//! Stress driver for docs/RACES.md, “munmap of a PFN mapping versus the
//! driver's free” (b67fbebd4cf9, CVE-2022-39188; on MMU_GATHER_NO_RANGE
//! 7fb5e5083190, switch `no-range-vma-pfn`).
//!
//! Every round a "driver" hands CPU0's mm four frames of its own through a
//! `remap_pfn_range` mmap (`mm_core::ops::mmap_pfnmap`: VM_PFNMAP, nothing
//! refcounted).  A thread of the mm on CPU1 loads from all four (its TLB
//! caches them) and keeps loading, with interrupt points between loads,
//! until CPU0's munmap of the mapping returns.  The driver frees its frames
//! in the window the kernel leaves it: after `free_pgtables` took the VMA
//! out of i_mmap (its `unmap_mapping_range` would find nothing) and before
//! `tlb_finish_mmu` (the `after_free_pgtables` race hook).
//!
//! With the fix, `tlb_end_vma` saw `vma_pfn` and flushed (an IPI to CPU1)
//! before `free_pgtables`: the frames are freed uncached.  Reverted (the
//! NO_RANGE gather keeps no VMA flags and, under MERGE_VMAS, never flushes
//! at `tlb_end_vma`), CPU1 still translates to the frames when they go back
//! to the allocator: `freed-before-flush`, and its next loads read freed
//! memory (`stale-tlb-access`).  The loads are the MMU's (`Hw::access`): a
//! load that misses after the flush would fault, and the fault path's
//! mmap_lock is held by the munmap.  NO_RANGE only: x86 and arm64 flush at
//! every `tlb_end_vma` in this model.

use super::{harness, wait_for, RaceOutcome, RaceParams};
use crate::error::RunError;
use mm_core::config::Arch;
use mm_core::hw::mmu::Access;
use mm_core::ops::{mmap_pfnmap, munmap};
use mm_core::page::alloc::PageKind;
use mm_core::page::Folio;
use mm_core::sync::{Arc, AtomicU64, Mutex, Ordering};
use mm_core::{CpuId, Pfn};

const BASE: u64 = 0x4000_0000;
/// Frames of the driver's buffer.
pub const PAGES: u64 = 4;

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    if p.kcfg.nr_cpus < 2 {
        return Err(RunError::Config(format!("pfnmap_unmap needs 2 CPUs; got {}", p.kcfg.nr_cpus)));
    }
    if p.kcfg.arch != Arch::GenericNoRange {
        return Err(RunError::Config(format!(
            "pfnmap_unmap is a MMU_GATHER_NO_RANGE race (tlb_end_vma under MERGE_VMAS); got arch {:?}",
            p.kcfg.arch
        )));
    }
    harness::run(p, p.kcfg.clone(), |h| {
        let ps = h.k.cfg.geometry.page_size();
        let mm = h.mm()?;
        // The driver's buffer: what it frees once its mappings are gone.
        let buffer: Arc<Mutex<Vec<Pfn>>> = Arc::new(Mutex::new(Vec::new()));
        let b = buffer.clone();
        let installed = h.k.inject.race.set_after_free_pgtables(move |k| {
            // unmap_mapping_range: the VMA is out of i_mmap, nothing to zap.
            for f in b.lock().drain(..) {
                k.folio_put(Folio(f));
            }
        });
        if !installed {
            return Err(RunError::Driver("after_free_pgtables hook already installed".into()));
        }
        h.rounds(|h, _round| {
            let frames: Vec<Pfn> = h.sys.run_kthread(CpuId(0), |k| {
                (0..PAGES).map(|_| k.alloc_pages(0, PageKind::Kernel).expect("driver buffer")).collect()
            })?;
            buffer.lock().extend(frames.iter().copied());
            h.sys
                .run_user(CpuId(0), &mm, move |k, mm| mmap_pfnmap(k, mm, BASE, &frames))?
                .map_err(|e| RunError::Model(format!("mmap_pfnmap: {e:?}")))?;
            let stage = Arc::new(AtomicU64::new(0));
            let s = stage.clone();
            let reader = h.sys.spawn_user(CpuId(1), &mm, move |k, _mm| {
                loop {
                    for i in 0..PAGES {
                        let irq = k.local_irq_save();
                        let _ = k.hw.access(CpuId(1), BASE + i * ps, Access::Read, &k.san);
                        drop(irq); // interrupt point: a flush IPI lands here
                    }
                    if s.load(Ordering::SeqCst) == 0 {
                        s.store(1, Ordering::SeqCst);
                    } else if s.load(Ordering::SeqCst) >= 2 {
                        break;
                    }
                    k.smp.cpu_relax();
                }
            });
            let s = stage.clone();
            let unmapper = h.sys.spawn_user(CpuId(0), &mm, move |k, mm| {
                wait_for(&s, 1, k);
                munmap(k, mm, BASE, PAGES * ps).expect("munmap");
                s.store(2, Ordering::SeqCst);
            });
            h.sys.join_all(vec![reader, unmapper])?;
            Ok(h.violated())
        })
    })
}
