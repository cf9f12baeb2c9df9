//! Count driver for folio-pages-batching (d7f861b9c43a): not a race, a cost.
//!
//! Each round a user thread maps `FOLIOS` PTE-mapped 2 MiB anonymous folios
//! (mTHP `do_anonymous_page`) and MADV_DONTNEEDs them all.  With batching a
//! folio takes two gather slots (encoded page + nr_pages); without, one slot
//! per page, so the gather fills and the zap force-flushes in the middle.
//! The outcome's kernel carries the counters (`tlb_flush_ranged`,
//! `gather_flushes`, `gather_batch_alloc`, `gather_pages_freed`); no
//! violation is expected either way.

use super::{harness, RaceOutcome, RaceParams};
use crate::error::RunError;
use mm_core::ops::fault::do_anonymous_page_mthp;
use mm_core::ops::{madvise_dontneed, mmap_anon};
use mm_core::CpuId;

const BASE: u64 = 0x4000_0000;
/// 2 MiB folios per round: 24 × 512 = 12288 pages, more than one gather holds
/// page by page (MMU_GATHER_BUNDLE - 1 + 19 × 509 slots with 4 KiB pages).
pub const FOLIOS: u64 = 24;

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    let mut kcfg = p.kcfg.clone();
    let g = kcfg.geometry;
    let need = (FOLIOS * g.hpage_pmd_nr()) as usize * 2;
    if kcfg.ram_frames < need {
        kcfg.ram_frames = need.next_power_of_two();
    }
    harness::run(p, kcfg, |h| {
        let pmd = g.pmd_size();
        let mm = h.mm()?;
        h.sys
            .run_user(CpuId(0), &mm, move |k, mm| mmap_anon(k, mm, BASE, FOLIOS * pmd, true))?
            .map_err(|e| RunError::Model(format!("mmap: {e:?}")))?;
        h.rounds(|h, round| {
            let cpu = CpuId((round % h.p.kcfg.nr_cpus as u64) as u32);
            h.sys.run_user(cpu, &mm, move |k, mm| {
                for i in 0..FOLIOS {
                    do_anonymous_page_mthp(k, mm, BASE + i * pmd, g.hpage_pmd_order()).expect("mTHP fault");
                    k.write_user(mm, BASE + i * pmd + 8, round).expect("touch");
                }
                madvise_dontneed(k, mm, BASE, FOLIOS * pmd).expect("madvise");
            })?;
            Ok(h.violated())
        })
    })
}
