//! Page batches of the mmu_gather (`struct mmu_gather_batch`,
//! `struct mmu_table_batch`) and the batch-size constants.
//!
//! Contract:
//! - A batch holds encoded pages that are unhooked (no page-table entry maps
//!   them any more) but possibly still cached in some TLB; each slot owns the
//!   folio references of the PTEs it stands for.  Nothing in a batch is
//!   freed before the gather's TLB flush (`tlb_flush_mmu_tlbonly`).
//! - `free_encoded_pages` (`__tlb_batch_free_encoded_pages`) releases every
//!   slot's references (release_pages semantics: drop nr refs, free the folio
//!   on the last one) in chunks of at most `MAX_NR_FOLIOS_PER_FREE` entries,
//!   extended by one so a count slot never leaves its page; with init_on_free
//!   the cap counts pages.  When it returns the batch is empty.
//! - Only the on-stack `local` batch has no backing page; every other batch
//!   is a page-sized kernel allocation (GFP_NOWAIT: may fail) that stays
//!   linked to the gather until `tlb_batch_list_free`.
//!
//! Sizes are computed the way the kernel computes them, from x86's
//! `PAGE_SIZE` (4096, `GATHER_PAGE_SIZE`) and the header layout, not from
//! the emulated geometry: batch behaviour must not change when a test picks a
//! different geometry, and the kernel numbers (510, 19, 509) are what users
//! compare against.  Under `crate::sync::LOOM` they shrink (bundle 2,
//! batch 4, count 2, table batch 2) so that "batch full", "batch count
//! reached" and "allocation failed" are reached within a few model steps
//! (crossbeam-epoch does the same with its bag sizes).

use super::encoded_page::{encoded_nr_pages, encoded_page_ptr, EncodedPage};
use crate::kernel::Kernel;
use crate::stats::Stat;
use crate::sync::LOOM;
use crate::types::Pfn;
use std::mem::size_of;

/// x86 `PAGE_SIZE`, the size of one batch page (bytes).
pub const GATHER_PAGE_SIZE: usize = 4096;

/// Layout of the kernel's batch header, for the size computation only:
/// `{ struct mmu_gather_batch *next; unsigned int nr; unsigned int max; }`.
#[allow(dead_code)]
#[repr(C)]
struct MmuGatherBatchHeader {
    next: *const u8,
    nr: u32,
    max: u32,
}

/// Layout of `struct mmu_table_batch`'s header: `{ struct rcu_head rcu
/// (two pointers); unsigned int nr; }` (padded to pointer alignment).
#[allow(dead_code)]
#[repr(C)]
struct MmuTableBatchHeader {
    rcu_next: *const u8,
    rcu_func: *const u8,
    nr: u32,
}

/// `MMU_GATHER_BUNDLE`: slots of the on-stack `local` batch.
pub const MMU_GATHER_BUNDLE: usize = if LOOM { 2 } else { 8 };

/// `MAX_GATHER_BATCH`: slots of a page-sized batch
/// ((4096 − 16) / 8 = 510 on 64-bit).
pub const MAX_GATHER_BATCH: usize =
    if LOOM { 4 } else { (GATHER_PAGE_SIZE - size_of::<MmuGatherBatchHeader>()) / size_of::<*const u8>() };

/// `MAX_GATHER_BATCH_COUNT`: page-sized batches one gather may chain
/// (10000 / 510 = 19: about 10k pages may be pending, bounding the latency
/// of the free and the memory held back).
pub const MAX_GATHER_BATCH_COUNT: usize = if LOOM { 2 } else { 10000 / MAX_GATHER_BATCH };

/// `MAX_TABLE_BATCH`: page tables one table batch holds
/// ((4096 − 24) / 8 = 509 on 64-bit).
pub const MAX_TABLE_BATCH: usize =
    if LOOM { 2 } else { (GATHER_PAGE_SIZE - size_of::<MmuTableBatchHeader>()) / size_of::<*const u8>() };

/// `MAX_NR_FOLIOS_PER_FREE`: entries (or pages, with init_on_free) freed
/// per chunk, with a reschedule point between chunks.
pub const MAX_NR_FOLIOS_PER_FREE: usize = 512;

// Every batch must fit a folio fragment (page + count) after the reserve.
const _: () = assert!(MMU_GATHER_BUNDLE >= 2 && MAX_GATHER_BATCH >= 2);
const _: () = assert!(MAX_GATHER_BATCH_COUNT >= 1 && MAX_TABLE_BATCH >= 1);

/// `struct mmu_gather_batch`.  `next` is implicit: batches live in the
/// gather's `Vec` in list order (local first).
#[derive(Debug)]
pub struct MmuGatherBatch {
    /// The page backing this batch (`None` for the on-stack `local`).
    pub(crate) page: Option<Pfn>,
    /// `nr`: slots in use.
    pub(crate) nr: usize,
    /// `max`: capacity in slots.
    pub(crate) max: usize,
    /// `encoded_pages[]` (capacity `max`, length `nr`).
    pub(crate) encoded_pages: Vec<EncodedPage>,
}

impl MmuGatherBatch {
    /// The on-stack `local` batch (`tlb->__pages[MMU_GATHER_BUNDLE]`).
    pub(crate) fn local() -> Self {
        Self { page: None, nr: 0, max: MMU_GATHER_BUNDLE, encoded_pages: Vec::with_capacity(MMU_GATHER_BUNDLE) }
    }

    /// A page-sized batch backed by `page`.
    pub(crate) fn on_page(page: Pfn) -> Self {
        Self { page: Some(page), nr: 0, max: MAX_GATHER_BATCH, encoded_pages: Vec::with_capacity(MAX_GATHER_BATCH) }
    }

    /// `batch->encoded_pages[batch->nr++] = e`
    #[inline]
    pub(crate) fn push(&mut self, e: EncodedPage) {
        assert!(self.nr < self.max, "mmu_gather batch overflow ({} of {})", self.nr, self.max);
        self.encoded_pages.push(e);
        self.nr += 1;
    }

    pub(crate) fn entries(&self) -> &[EncodedPage] {
        &self.encoded_pages[..self.nr]
    }
}

/// Release one chunk of entries (`free_pages_and_swap_cache` →
/// `folios_put_refs`): each page entry drops its nr_pages references of its
/// folio; a folio whose count hits zero is freed.  Returns pages released.
fn free_pages_and_swap_cache(k: &Kernel, entries: &[EncodedPage]) -> u64 {
    let mut released = 0;
    let mut i = 0;
    while i < entries.len() {
        let e = entries[i];
        let mut nr = 1;
        if e.nr_pages_next() {
            i += 1;
            nr = encoded_nr_pages(entries[i]);
        }
        let page = encoded_page_ptr(e);
        if k.mem.page(page).test(crate::page::flags::PG_TABLE) {
            // A page table queued by `tlb_remove_table` without
            // MMU_GATHER_TABLE_FREE (`tlb_remove_page`): its one reference
            // goes, and it is freed as a table (`pagetable_free`).
            crate::pgtable::pagetable_free(k, k.mem.page_ptdesc(page));
            released += nr;
            i += 1;
            continue;
        }
        let folio = k.mem.page_folio(page);
        let refs = i32::try_from(nr).expect("folio fragment larger than i32 pages");
        if k.mem.folio_put_testzero(folio, refs) {
            k.free_folio(folio);
        }
        released += nr;
        i += 1;
    }
    released
}

/// `__tlb_batch_free_encoded_pages`: free every entry of `batch` in chunks;
/// leaves the batch empty.
#[doc(alias = "__tlb_batch_free_encoded_pages")]
pub(crate) fn free_encoded_pages(k: &Kernel, batch: &mut MmuGatherBatch) {
    let pages = std::mem::take(&mut batch.encoded_pages);
    let mut off = 0;
    let total = batch.nr;
    while off < total {
        let rest = &pages[off..total];
        let nr = if !k.cfg.init_on_free {
            let mut nr = MAX_NR_FOLIOS_PER_FREE.min(rest.len());
            // Cover page + nr_pages: never leave a count slot behind.
            if rest[nr - 1].nr_pages_next() {
                nr += 1;
            }
            nr
        } else {
            // init_on_free: freeing time grows with memory size, so cap by
            // pages, not by entries.
            let (mut nr, mut nr_pages) = (0, 0);
            while nr < rest.len() && nr_pages < MAX_NR_FOLIOS_PER_FREE as u64 {
                if rest[nr].nr_pages_next() {
                    nr += 1;
                    nr_pages += encoded_nr_pages(rest[nr]);
                } else {
                    nr_pages += 1;
                }
                nr += 1;
            }
            nr
        };
        let released = free_pages_and_swap_cache(k, &rest[..nr]);
        k.stats.add(k.this_cpu(), Stat::GatherPagesFreed, released);
        off += nr;
        batch.nr -= nr;
        k.smp.cond_resched();
    }
    assert_eq!(batch.nr, 0, "free_encoded_pages left entries in the batch");
    // Keep the storage (capacity `max`) for reuse.
    batch.encoded_pages = pages;
    batch.encoded_pages.clear();
}

/// `struct mmu_table_batch`: page tables waiting for their flush and grace
/// period, in a page-sized kernel allocation.
#[derive(Debug)]
pub struct MmuTableBatch {
    /// The page backing the batch.
    pub(crate) page: Pfn,
    /// `tables[]` (`nr` = len): page-table descriptors.
    pub(crate) tables: Vec<crate::page::Ptdesc>,
}

impl MmuTableBatch {
    pub(crate) fn new(page: Pfn) -> Self {
        Self { page, tables: Vec::with_capacity(MAX_TABLE_BATCH) }
    }
}
