//! The mmu_gather port (include/asm-generic/tlb.h, mm/mmu_gather.c, v6.12.y
//! with 8ce720d5bd91's hugetlb unshare batching).
//!
//! # The ordering it guarantees
//!
//! **unhook → invalidate → free.**  A caller clears page-table entries under
//! the page-table lock and records what it cleared in the gather (range,
//! level, pages, tables).  Nothing it hands over is freed until a TLB flush
//! covering the recorded range (and, when tables were freed, the walk caches)
//! has completed on every CPU that may cache it; page tables additionally wait
//! for an RCU grace period (or a synchronous IPI) so lockless walkers
//! (GUP-fast, IRQs off) are done with them.
//!
//! # Phases, and what each guarantees when it returns
//!
//! - `tlb_gather_mmu{,_fullmm,_vma}`: the gather exists and
//!   `mm->tlb_flush_pending` is raised, so a parallel gather of the same mm
//!   can see it (`mm_tlb_flush_nested`).
//! - gathering (`tlb_flush_*_range`, `tlb_remove_tlb_entr{y,ies}`,
//!   `__tlb_remove_folio_pages`, `pte_free_tlb`, ...): the range and level are
//!   recorded and the page / table is held.  A `true` return from a `__`
//!   page function means "full": the caller must flush before gathering more
//!   (`tlb_flush_mmu_tlbonly` + `tlb_flush_rmaps` under the PTL, then
//!   `tlb_flush_mmu`).
//! - `tlb_flush_mmu_tlbonly`: no CPU can use a translation of the gathered
//!   range any more; pages are still held; delayed rmaps may now be removed
//!   (`tlb_flush_rmaps`).
//! - `tlb_flush_mmu`: the above, then tables are queued for RCU (or freed
//!   after a sync) and pages are freed.
//! - `tlb_finish_mmu`: everything is flushed and freed (a nested gather of the
//!   same mm forces a full flush with freed_tables), batch pages are returned,
//!   and `tlb_flush_pending` is dropped.  A gather must be finished: it is
//!   `#[must_use]`, and dropping one unfinished panics.
//!
//! # Options
//!
//! - Arch (`Kernel::arch`, `arch/`): `tlb_flush`, `tlb_update_vma_flags` and
//!   whether MMU_GATHER_MERGE_VMAS is selected are the profile's.  x86
//!   `tlb_flush` → `flush_tlb_mm_range` (whole mm when fullmm /
//!   need_flush_all); arm64 has its own (asm/tlb.h): `__flush_tlb_range` at
//!   `tlb_get_unmap_size` with the `tlb_get_level` hint, last level only
//!   unless tables were freed, and for fullmm nothing unless tables were
//!   freed (then `flush_tlb_mm`: the ASID is not reused before a rollover
//!   flushed every TLB); GenericNoRange (MMU_GATHER_NO_RANGE) →
//!   `flush_tlb_mm` for any non-empty gather, and keeps no VMA flags.
//! - `rcu_table_free`: tables go through `call_rcu`; off: freed right after
//!   the invalidating flush, and `tlb_remove_table_sync_one` is a no-op.
//! - `init_on_free`: the free chunk cap counts pages, not entries.
//! - Fixes: `DelayRmap` (`tlb_delay_rmap`), `FolioPagesBatching` (off: a
//!   folio fragment takes one slot per page and a batch is full at
//!   nr == max, the pre-d7f861b9c43a `__tlb_remove_page_size`; on: full at
//!   nr >= max - 1, room for page + nr_pages), `NestedFlushDetect` (off:
//!   `tlb_finish_mmu` trusts its own range).
//! - `MMU_GATHER_MERGE_VMAS` is selected by MMU_GATHER_NO_RANGE (the
//!   generic profile; s390 selects it too, 1e9fdf21a433): there
//!   `tlb_end_vma` flushes only a `vma_pfn` VMA (VM_PFNMAP / VM_MIXEDMAP,
//!   b67fbebd4cf9), which NO_RANGE tracks since 7fb5e5083190 removed its
//!   `tlb_update_vma_flags` stub (`Fix::NoRangeVmaPfn`).  arm64 does not
//!   select it: `tlb_end_vma` always flushes.  x86 selects it as well
//!   (1e9fdf21a433 replaced x86's empty `tlb_end_vma` with it; v6.12 and
//!   v6.18 keep it): an x86 munmap flushes once, at `tlb_finish_mmu`.

pub(crate) mod batch;
pub(crate) mod encoded_page;
pub(crate) mod table_free;

pub use batch::{
    MmuGatherBatch, MmuTableBatch, GATHER_PAGE_SIZE, MAX_GATHER_BATCH, MAX_GATHER_BATCH_COUNT, MAX_NR_FOLIOS_PER_FREE,
    MAX_TABLE_BATCH, MMU_GATHER_BUNDLE,
};
pub use encoded_page::{
    encode_nr_pages, encode_page, encoded_nr_pages, encoded_page_flags, encoded_page_ptr, nr_pages_encodable,
    EncodedPage, ENCODED_PAGE_BITS, ENCODED_PAGE_BIT_DELAY_RMAP, ENCODED_PAGE_BIT_NR_PAGES_NEXT,
};
pub use table_free::tlb_remove_table_sync_one;

use crate::config::Fix;
use crate::debug_vm::{vm_bug_on, vm_warn_on};
use crate::hw::pte::Level;
use crate::kernel::Kernel;
use crate::mm::{vm, MmStruct, Vma};
use crate::page::alloc::PageKind;
use crate::stats::Stat;
use crate::types::Pfn;

/// Index of the on-stack `local` batch in `MmuGather::batches`.
const LOCAL: usize = 0;

/// `struct mmu_gather`.
#[must_use = "a gather must be finished with tlb_finish_mmu (pages and the flush are pending)"]
pub struct MmuGather<'a> {
    k: &'a Kernel,
    mm: &'a MmStruct,
    /// The whole address space is going away (exit).
    fullmm: bool,
    /// Flush the whole mm whatever the range (arch page-table code sets it).
    need_flush_all: bool,
    /// Range to flush: [start, end).
    start: u64,
    end: u64,
    /// A page-table page was freed: walk caches must be invalidated too.
    freed_tables: bool,
    /// Levels whose entries were cleared (flush stride).
    cleared_ptes: bool,
    cleared_pmds: bool,
    cleared_puds: bool,
    cleared_p4ds: bool,
    /// VMA flags of the range (`tlb_update_vma_flags`).
    vma_exec: bool,
    vma_huge: bool,
    vma_pfn: bool,
    /// Some gathered page carries ENCODED_PAGE_BIT_DELAY_RMAP.
    delayed_rmap: bool,
    /// A PUD pointing at a shared hugetlb PMD table was cleared (reset with the range).
    unshared_tables: bool,
    /// An unshared table became exclusive (NOT reset with the range).
    fully_unshared_tables: bool,
    /// The sanitizer's (not the kernel's): the tables unshared since the
    /// last TLB flush, with their generations; once a flush covered them
    /// their unlinking is reported (`Sanitizer::table_unlinked`).
    unshared_pending: Vec<(Pfn, u64)>,
    /// `local` (index 0, MMU_GATHER_BUNDLE slots, no page) followed by the
    /// page-sized batches in list order (`next`).
    batches: Vec<MmuGatherBatch>,
    /// Index of `active` in `batches`.
    active: usize,
    /// Page-sized batches allocated (`batch_count`).
    batch_count: usize,
    /// `page_size` (MMU_GATHER_PAGE_SIZE architectures; recorded only).
    page_size: u64,
    /// Table batch (`tlb->batch`).
    batch: Option<MmuTableBatch>,
    finished: bool,
}

impl<'a> MmuGather<'a> {
    /// `__tlb_gather_mmu`
    fn __tlb_gather_mmu(k: &'a Kernel, mm: &'a MmStruct, fullmm: bool) -> Self {
        let mut tlb = MmuGather {
            k,
            mm,
            fullmm,
            need_flush_all: false,
            start: 0,
            end: 0,
            freed_tables: false,
            cleared_ptes: false,
            cleared_pmds: false,
            cleared_puds: false,
            cleared_p4ds: false,
            vma_exec: false,
            vma_huge: false,
            vma_pfn: false,
            delayed_rmap: false,
            unshared_tables: false,
            fully_unshared_tables: false,
            unshared_pending: Vec::new(),
            batches: vec![MmuGatherBatch::local()],
            active: LOCAL,
            batch_count: 0,
            page_size: 0,
            batch: None,
            finished: false,
        };
        tlb.__tlb_reset_range();
        mm.inc_tlb_flush_pending();
        tlb
    }

    /// `tlb_gather_mmu`: a gather for tearing down part of `mm`.
    pub fn tlb_gather_mmu(k: &'a Kernel, mm: &'a MmStruct) -> Self {
        Self::__tlb_gather_mmu(k, mm, false)
    }

    /// `tlb_gather_mmu_fullmm`: `mm` has no users and goes away entirely.
    pub fn tlb_gather_mmu_fullmm(k: &'a Kernel, mm: &'a MmStruct) -> Self {
        Self::__tlb_gather_mmu(k, mm, true)
    }

    /// `tlb_gather_mmu_vma`: a gather for one VMA outside the usual
    /// tlb_start_vma/tlb_end_vma bracket (hugetlb unsharing): VMA flags set,
    /// and for hugetlb the huge page size.
    pub fn tlb_gather_mmu_vma(k: &'a Kernel, mm: &'a MmStruct, vma: &Vma) -> Self {
        let mut tlb = Self::tlb_gather_mmu(k, mm);
        tlb.tlb_update_vma_flags(vma);
        if vma.is_hugetlb() {
            // All entries have the same size.
            tlb.tlb_change_page_size(k.cfg.geometry.pmd_size());
        }
        tlb
    }

    // ---- accessors ----------------------------------------------------

    /// The kernel the gather runs in (the arch profile's `tlb_flush` needs it).
    pub fn kernel(&self) -> &'a Kernel {
        self.k
    }
    /// `tlb->mm`
    pub fn mm(&self) -> &'a MmStruct {
        self.mm
    }
    /// `tlb->fullmm`: the whole address space is going away (exit).
    pub fn fullmm(&self) -> bool {
        self.fullmm
    }
    /// `tlb->need_flush_all`: flush the whole mm whatever the range.
    pub fn need_flush_all(&self) -> bool {
        self.need_flush_all
    }
    /// Set `need_flush_all` (arch page-table code does this when a change
    /// cannot be expressed as a range).
    pub fn set_need_flush_all(&mut self) {
        self.need_flush_all = true;
    }
    /// `tlb->freed_tables`: a page table was unhooked, so the flush must
    /// invalidate walk caches (and, on x86, reach lazy CPUs).
    pub fn freed_tables(&self) -> bool {
        self.freed_tables
    }
    /// (start, end) of the pending range.
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }
    /// (cleared_ptes, cleared_pmds, cleared_puds, cleared_p4ds)
    pub fn cleared_levels(&self) -> (bool, bool, bool, bool) {
        (self.cleared_ptes, self.cleared_pmds, self.cleared_puds, self.cleared_p4ds)
    }
    /// (vma_exec, vma_huge, vma_pfn)
    pub fn vma_flags(&self) -> (bool, bool, bool) {
        (self.vma_exec, self.vma_huge, self.vma_pfn)
    }
    /// `tlb->delayed_rmap`: some gathered page waits for `tlb_flush_rmaps`
    /// (ENCODED_PAGE_BIT_DELAY_RMAP).
    pub fn delayed_rmap(&self) -> bool {
        self.delayed_rmap
    }
    /// `tlb->unshared_tables`: a PUD pointing at a shared hugetlb PMD table
    /// was cleared (reset with the range).
    pub fn unshared_tables(&self) -> bool {
        self.unshared_tables
    }
    /// `tlb->fully_unshared_tables`: an unshared table became exclusive, so
    /// a `tlb_remove_table_sync_one` is owed before i_mmap_rwsem is dropped
    /// (not reset with the range; `tlb_finish_mmu` warns if still set).
    pub fn fully_unshared_tables(&self) -> bool {
        self.fully_unshared_tables
    }

    /// Slots pending in all batches (page and count slots).
    pub fn nr_gathered(&self) -> usize {
        self.batches.iter().map(|b| b.nr).sum()
    }
    /// Page-sized batches allocated so far.
    pub fn batch_count(&self) -> usize {
        self.batch_count
    }
    /// True while `active` is the on-stack `local` batch.
    pub fn active_is_local(&self) -> bool {
        self.active == LOCAL
    }
    /// The active batch's slots (tests, diagnostics).
    pub fn active_entries(&self) -> &[EncodedPage] {
        self.batches[self.active].entries()
    }
    /// The `local` batch's slots.
    pub fn local_entries(&self) -> &[EncodedPage] {
        self.batches[LOCAL].entries()
    }
    /// (nr, max) of the active batch.
    pub fn active_fill(&self) -> (usize, usize) {
        let b = &self.batches[self.active];
        (b.nr, b.max)
    }
    /// Tables waiting in the table batch.
    pub fn nr_tables_queued(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.tables.len())
    }
    /// `page_size` as recorded by `tlb_change_page_size` (0 = not set).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    // ---- range ----------------------------------------------------------

    /// `__tlb_reset_range`.  The vma_* bits are kept: an intermediate flush
    /// does not call tlb_start_vma again.  `fully_unshared_tables` is kept too.
    pub fn __tlb_reset_range(&mut self) {
        if self.fullmm {
            self.start = u64::MAX;
            self.end = u64::MAX;
        } else {
            self.start = self.k.cfg.geometry.task_size();
            self.end = 0;
        }
        self.freed_tables = false;
        self.cleared_ptes = false;
        self.cleared_pmds = false;
        self.cleared_puds = false;
        self.cleared_p4ds = false;
        self.unshared_tables = false;
    }

    /// `__tlb_adjust_range`: widen the range to cover [addr, addr + size).
    pub fn __tlb_adjust_range(&mut self, addr: u64, size: u64) {
        self.start = self.start.min(addr);
        self.end = self.end.max(addr.saturating_add(size));
    }

    /// `tlb_flush_pte_range`
    pub fn tlb_flush_pte_range(&mut self, addr: u64, size: u64) {
        self.__tlb_adjust_range(addr, size);
        self.cleared_ptes = true;
    }

    /// `tlb_flush_pmd_range`
    pub fn tlb_flush_pmd_range(&mut self, addr: u64, size: u64) {
        self.__tlb_adjust_range(addr, size);
        self.cleared_pmds = true;
    }

    /// `tlb_flush_pud_range`
    pub fn tlb_flush_pud_range(&mut self, addr: u64, size: u64) {
        self.__tlb_adjust_range(addr, size);
        self.cleared_puds = true;
    }

    /// `tlb_flush_p4d_range`
    pub fn tlb_flush_p4d_range(&mut self, addr: u64, size: u64) {
        self.__tlb_adjust_range(addr, size);
        self.cleared_p4ds = true;
    }

    /// `tlb_remove_tlb_entry`: one PTE at `addr` was cleared.
    pub fn tlb_remove_tlb_entry(&mut self, addr: u64) {
        self.tlb_flush_pte_range(addr, self.k.cfg.geometry.page_size());
    }

    /// `tlb_remove_tlb_entries`: `nr` consecutive PTEs from `addr` were cleared.
    pub fn tlb_remove_tlb_entries(&mut self, addr: u64, nr: u64) {
        self.tlb_flush_pte_range(addr, self.k.cfg.geometry.page_size() * nr);
    }

    /// `tlb_remove_pmd_tlb_entry`: a PMD leaf at `addr` was cleared.
    pub fn tlb_remove_pmd_tlb_entry(&mut self, addr: u64) {
        self.tlb_flush_pmd_range(addr, self.k.cfg.geometry.pmd_size());
    }

    /// `tlb_get_unmap_shift`: the flush stride, from the lowest cleared level.
    pub fn tlb_get_unmap_shift(&self) -> u32 {
        let g = self.k.cfg.geometry;
        if self.cleared_ptes {
            g.page_shift
        } else if self.cleared_pmds {
            g.level_shift(Level::Pmd)
        } else if self.cleared_puds {
            g.level_shift(Level::Pud)
        } else if self.cleared_p4ds {
            // P4D is folded into the PGD: P4D_SHIFT = PGDIR_SHIFT.
            g.level_shift(Level::Pgd)
        } else {
            g.page_shift
        }
    }

    /// `tlb_get_unmap_size`
    pub fn tlb_get_unmap_size(&self) -> u64 {
        1 << self.tlb_get_unmap_shift()
    }

    // ---- VMAs -----------------------------------------------------------

    /// `tlb_update_vma_flags`: the arch's (`ArchOps::tlb_update_vma_flags`:
    /// `record_vma_flags`, or nothing on MMU_GATHER_NO_RANGE).
    fn tlb_update_vma_flags(&mut self, vma: &Vma) {
        let k = self.k;
        k.arch.tlb_update_vma_flags(self, vma);
    }

    /// The asm-generic `tlb_update_vma_flags` body (v6.12): remember the
    /// VMA's VM_HUGETLB, VM_EXEC and VM_PFNMAP | VM_MIXEDMAP (`vma_pfn`,
    /// b67fbebd4cf9) for `tlb_flush` and `tlb_end_vma`.
    pub(crate) fn record_vma_flags(&mut self, vma: &Vma) {
        self.vma_huge = vma.is_hugetlb();
        self.vma_exec = vma.flags & vm::VM_EXEC != 0;
        self.vma_pfn = vma.flags & (vm::VM_PFNMAP | vm::VM_MIXEDMAP) != 0;
    }

    /// `tlb_start_vma`
    pub fn tlb_start_vma(&mut self, vma: &Vma) {
        if self.fullmm {
            return;
        }
        self.tlb_update_vma_flags(vma);
    }

    /// `tlb_end_vma`: flush at the VMA boundary (so the range does not grow
    /// over the gap to the next VMA) unless MMU_GATHER_MERGE_VMAS
    /// (`ArchOps::mmu_gather_merge_vmas`: the x86 and NO_RANGE profiles); `vma_pfn`
    /// (VM_PFNMAP / VM_MIXEDMAP) forces it even then (b67fbebd4cf9): no
    /// refcount keeps those frames until the flush, and once the VMA left
    /// i_mmap the driver's `unmap_mapping_range` cannot see it.
    pub fn tlb_end_vma(&mut self, _vma: &Vma) {
        if self.fullmm {
            return;
        }
        if self.vma_pfn || !self.k.arch.mmu_gather_merge_vmas() {
            self.tlb_flush_mmu_tlbonly();
        }
    }

    /// `tlb_change_page_size`: records the page size.  Only
    /// MMU_GATHER_PAGE_SIZE architectures (powerpc) flush on a change; none
    /// of the modelled ones does.
    pub fn tlb_change_page_size(&mut self, page_size: u64) {
        self.page_size = page_size;
    }

    // ---- pages ----------------------------------------------------------

    /// `tlb_delay_rmap`: may zap delay the rmap removal of a dirty page until
    /// after the TLB flush?  Like the kernel's macro, a `true` answer also
    /// marks the gather (`delayed_rmap = 1`).  Off with `Fix::DelayRmap`
    /// reverted (pre-5df397dec7c4: rmap removed before the flush).
    pub fn tlb_delay_rmap(&mut self) -> bool {
        if self.k.cfg.fixes.on(Fix::DelayRmap) {
            self.delayed_rmap = true;
            true
        } else {
            false
        }
    }

    /// `tlb_next_batch`: make room by moving to (or allocating) the next
    /// batch.  Refuses while delayed rmaps are pending outside `local`, at
    /// MAX_GATHER_BATCH_COUNT, and when the GFP_NOWAIT allocation fails.
    pub fn tlb_next_batch(&mut self) -> bool {
        // Limit batching while delayed rmaps are pending: tlb_flush_rmaps
        // only walks local and active.
        if self.delayed_rmap && self.active != LOCAL {
            return false;
        }
        if self.active + 1 < self.batches.len() {
            self.active += 1;
            return true;
        }
        if self.batch_count == MAX_GATHER_BATCH_COUNT {
            return false;
        }
        let cpu = self.k.this_cpu();
        let page = if crate::inject::FaultInject::take(&self.k.inject.faults.fail_page_batch) {
            None
        } else {
            self.k.alloc_pages(0, PageKind::Kernel)
        };
        let Some(page) = page else {
            self.k.stats.inc(cpu, Stat::GatherBatchAllocFail);
            return false;
        };
        self.k.stats.inc(cpu, Stat::GatherBatchAlloc);
        self.batch_count += 1;
        self.batches.push(MmuGatherBatch::on_page(page));
        self.active = self.batches.len() - 1;
        true
    }

    /// Store one entry (or page + count) in the active batch; returns
    /// "full" after trying to move on to the next batch.
    fn store_fragment(&mut self, page: Pfn, nr_pages: u64, flags: u64) -> bool {
        if flags & ENCODED_PAGE_BIT_DELAY_RMAP != 0 {
            // (The kernel sets this in tlb_delay_rmap; setting it here too
            // keeps the flag and the entries consistent for every caller.)
            self.delayed_rmap = true;
        }
        // encode_nr_pages' check; 1 always passes it, so it is not guarded
        // by nr_pages != 1 (a guard no test could tell from its absence).
        vm_warn_on!(
            self.k,
            !nr_pages_encodable(nr_pages),
            "VM_WARN_ON_ONCE((nr << 2) >> 2 != nr) in encode_nr_pages",
            self.mm.id,
            0,
            page
        );
        let batch = &mut self.batches[self.active];
        if nr_pages == 1 {
            batch.push(encode_page(page, flags));
        } else {
            batch.push(encode_page(page, flags | ENCODED_PAGE_BIT_NR_PAGES_NEXT));
            batch.push(encode_nr_pages(nr_pages));
        }
        if !self.k.cfg.fixes.on(Fix::FolioPagesBatching) {
            // Pre-d7f861b9c43a `__tlb_remove_page_size`: one slot per page,
            // full when the batch is (nr == max).
            if batch.nr == batch.max && !self.tlb_next_batch() {
                return true;
            }
            vm_bug_on!(
                self.k,
                {
                    let b = &self.batches[self.active];
                    b.nr > b.max
                },
                "VM_BUG_ON_PAGE(batch->nr > batch->max, page) in __tlb_remove_page_size",
                "{page:?}"
            );
            return false;
        }
        // Make sure another page + nr_pages (two slots) always fits.
        if batch.nr >= batch.max - 1 && !self.tlb_next_batch() {
            return true;
        }
        vm_bug_on!(
            self.k,
            {
                let b = &self.batches[self.active];
                b.nr > b.max - 1
            },
            "VM_BUG_ON_PAGE(batch->nr > batch->max - 1, page) in __tlb_remove_folio_pages_size",
            "{page:?}"
        );
        false
    }

    /// `__tlb_remove_folio_pages_size`: gather `nr_pages` consecutive pages
    /// of one folio starting at `page` (their PTEs already cleared and the
    /// range recorded), owning one folio reference per page.  Returns true
    /// when the gather is full: the caller must flush now.
    pub fn __tlb_remove_folio_pages_size(
        &mut self,
        page: Pfn,
        nr_pages: u64,
        delay_rmap: bool,
        page_size: u64,
    ) -> bool {
        vm_bug_on!(
            self.k,
            self.end == 0,
            "VM_BUG_ON(!tlb->end) in __tlb_remove_folio_pages_size",
            "{page:?} gathered before its range was recorded"
        );
        // The emulator's own: a fragment has pages (one compare per call).
        assert!(nr_pages >= 1, "__tlb_remove_folio_pages_size of 0 pages at {page:?}");
        // (The kernel checks the next two under CONFIG_MMU_GATHER_PAGE_SIZE;
        // page_size 0 here means the caller never set one.)
        vm_warn_on!(
            self.k,
            self.page_size != 0 && self.page_size != page_size,
            "VM_WARN_ON(tlb->page_size != page_size) in __tlb_remove_folio_pages_size",
            self.mm.id,
            0,
            page
        );
        vm_warn_on!(
            self.k,
            self.k.mem.page_folio(page) != self.k.mem.page_folio(page.add(nr_pages - 1)),
            "VM_WARN_ON_ONCE(page_folio(page) != page_folio(page + nr_pages - 1)) in __tlb_remove_folio_pages_size",
            self.mm.id,
            0,
            page
        );
        let flags = if delay_rmap { ENCODED_PAGE_BIT_DELAY_RMAP } else { 0 };
        if nr_pages == 1 || self.k.cfg.fixes.on(Fix::FolioPagesBatching) {
            return self.store_fragment(page, nr_pages, flags);
        }
        // Pre-d7f861b9c43a: one slot per page.  The old per-PTE loop would
        // have stopped at a full batch and flushed before clearing the next
        // PTE; our caller already cleared all nr_pages PTEs, so when the
        // gather fills in the middle we do that force-flush here, in the
        // same order (TLB, then delayed rmaps, then free), and go on.
        for i in 0..nr_pages {
            let full = self.store_fragment(page.add(i), 1, flags);
            if full {
                if i + 1 == nr_pages {
                    return true;
                }
                self.tlb_flush_mmu_tlbonly();
                self.flush_rmaps_inner();
                self.tlb_flush_mmu_free();
                self.k.stats.inc(self.k.this_cpu(), Stat::GatherFlushes);
            }
        }
        false
    }

    /// `__tlb_remove_folio_pages` (PAGE_SIZE pages).
    pub fn __tlb_remove_folio_pages(&mut self, page: Pfn, nr_pages: u64, delay_rmap: bool) -> bool {
        let ps = self.k.cfg.geometry.page_size();
        self.__tlb_remove_folio_pages_size(page, nr_pages, delay_rmap, ps)
    }

    /// `__tlb_remove_page_size`
    pub fn __tlb_remove_page_size(&mut self, page: Pfn, delay_rmap: bool, page_size: u64) -> bool {
        self.__tlb_remove_folio_pages_size(page, 1, delay_rmap, page_size)
    }

    /// `__tlb_remove_page`
    pub fn __tlb_remove_page(&mut self, page: Pfn, delay_rmap: bool) -> bool {
        let ps = self.k.cfg.geometry.page_size();
        self.__tlb_remove_page_size(page, delay_rmap, ps)
    }

    /// `tlb_remove_page_size`: gather and flush by itself when full.
    pub fn tlb_remove_page_size(&mut self, page: Pfn, page_size: u64) {
        if self.__tlb_remove_page_size(page, false, page_size) {
            self.tlb_flush_mmu();
        }
    }

    /// `tlb_remove_page`
    pub fn tlb_remove_page(&mut self, page: Pfn) {
        let ps = self.k.cfg.geometry.page_size();
        self.tlb_remove_page_size(page, ps);
    }

    /// `tlb_flush_rmap_batch`: remove the rmap of every DELAY_RMAP entry of
    /// one batch.  Like the kernel's loop, a non-delayed fragment's count
    /// slot is visited as an entry: `encode_nr_pages` is `nr << 2`, so it
    /// never carries ENCODED_PAGE_BIT_DELAY_RMAP.
    fn tlb_flush_rmap_batch(&self, idx: usize) {
        let pages = self.batches[idx].entries();
        let mut i = 0;
        let mut n = 0;
        while i < pages.len() {
            let e = pages[i];
            if e.delay_rmap() {
                let mut nr = 1;
                if e.nr_pages_next() {
                    i += 1;
                    nr = encoded_nr_pages(pages[i]);
                }
                self.k.mem.remove_rmap_ptes(encoded_page_ptr(e), nr);
                n += 1;
            }
            i += 1;
        }
        self.k.stats.add(self.k.this_cpu(), Stat::DelayedRmaps, n);
    }

    fn flush_rmaps_inner(&mut self) {
        if !self.delayed_rmap {
            return;
        }
        self.tlb_flush_rmap_batch(LOCAL);
        if self.active != LOCAL {
            self.tlb_flush_rmap_batch(self.active);
        }
        self.delayed_rmap = false;
    }

    /// `tlb_flush_rmaps`: after the TLB flush and before dropping the PTL,
    /// remove the rmaps that were delayed.  Because `tlb_next_batch` never
    /// starts a second batch with delayed rmaps pending, only `local` and
    /// `active` can hold them.
    pub fn tlb_flush_rmaps(&mut self, _vma: &Vma) {
        self.flush_rmaps_inner();
    }

    // ---- flushing -------------------------------------------------------

    /// `tlb_flush`: the arch's (`ArchOps::tlb_flush`, docs/KERNEL-MAP.md, “Arch profiles”) —
    /// x86's own, arm64's own, or the MMU_GATHER_NO_RANGE one.
    fn tlb_flush(&mut self) {
        self.k.arch.tlb_flush(self);
    }

    fn needs_tlb_flush(&self) -> bool {
        self.freed_tables
            || self.cleared_ptes
            || self.cleared_pmds
            || self.cleared_puds
            || self.cleared_p4ds
            || self.unshared_tables
    }

    /// `tlb_flush_mmu_tlbonly`: flush the TLBs for the gathered range (if
    /// anything was recorded) and reset the range.  When it returns no CPU
    /// can use a translation of the range; pages are still held.
    pub fn tlb_flush_mmu_tlbonly(&mut self) {
        // Anything calling __tlb_adjust_range also sets one of these bits.
        if !self.needs_tlb_flush() {
            return;
        }
        self.tlb_flush();
        // The unshared tables' range was part of that flush: from here on no
        // CPU may walk this mm through them (the sanitizer's bookkeeping).
        for (pt, gen) in self.unshared_pending.drain(..) {
            self.k.san.table_unlinked(self.mm.id, pt, gen);
        }
        // Pre-6bbd42e2df8f the secondary TLBs were invalidated here, right
        // after the arch flush, for tlb->start..tlb->end as they stand (for
        // fullmm: end ~0); a no-op with the fix on: the flush did it.
        crate::notifier::mmu_notifier_invalidate_range(self.k, self.mm, self.start, self.end);
        self.__tlb_reset_range();
    }

    /// `tlb_batch_pages_flush`: free every gathered page (chunked), then
    /// `active = &local`.  Must only run after the TLB flush and after
    /// `tlb_flush_rmaps`.
    pub fn tlb_batch_pages_flush(&mut self) {
        // The emulator's own ordering check (the kernel has none here; it
        // would report "Bad page state" later, freeing a mapped page).
        assert!(
            !self.delayed_rmap,
            "freeing gathered pages with delayed rmaps pending: tlb_flush_rmaps must run first"
        );
        for b in self.batches.iter_mut() {
            if b.nr == 0 {
                break;
            }
            batch::free_encoded_pages(self.k, b);
        }
        self.active = LOCAL;
    }

    /// `tlb_batch_list_free`: return the page-sized batches.
    pub fn tlb_batch_list_free(&mut self) {
        assert!(self.batches.iter().all(|b| b.nr == 0), "batch list freed with pages pending");
        for b in self.batches.drain(LOCAL + 1..) {
            let page = b.page.expect("page-sized batch has its page");
            self.k.folio_put(crate::page::Folio(page));
        }
        self.active = LOCAL;
    }

    /// `tlb_flush_mmu_free`: tables, then pages.
    pub fn tlb_flush_mmu_free(&mut self) {
        self.tlb_table_flush();
        self.tlb_batch_pages_flush();
    }

    /// `tlb_flush_mmu`: `tlb_flush_mmu_tlbonly` + `tlb_flush_mmu_free`.
    /// When it returns, everything gathered so far is flushed and freed
    /// (tables: queued for RCU).
    pub fn tlb_flush_mmu(&mut self) {
        let did = self.needs_tlb_flush() || self.nr_gathered() > 0 || self.batch.is_some();
        self.tlb_flush_mmu_tlbonly();
        self.tlb_flush_mmu_free();
        if did {
            self.k.stats.inc(self.k.this_cpu(), Stat::GatherFlushes);
        }
    }

    // ---- hugetlb PMD unsharing (8ce720d5bd91) ---------------------------

    /// `tlb_unshare_pmd_ptdesc`: the PUD entry at `addr` pointing at the
    /// shared PMD table `pt` was cleared.  Drops one share, records a
    /// PMD-level flush of the PUD-sized region, and notes whether the table
    /// became exclusive (then it may be reused once
    /// `tlb_flush_unshared_tables` ran).
    pub fn tlb_unshare_pmd_ptdesc(&mut self, pt: Pfn, addr: u64) {
        let share = self.k.mem.pt_share_count(self.k.mem.virt_to_ptdesc(pt));
        let old = share.fetch_sub(1, crate::sync::Ordering::SeqCst);
        vm_warn_on!(
            self.k,
            old <= 0,
            "VM_WARN_ON_ONCE(!ptdesc_pmd_is_shared(pt)) in tlb_unshare_pmd_ptdesc",
            self.mm.id,
            addr,
            pt
        );
        let pud = self.k.cfg.geometry.pud_size();
        // Clearing a PUD pointing at a PMD table with PMD leaves.
        self.tlb_flush_pmd_range(addr & !(pud - 1), pud);
        if old == 1 {
            self.fully_unshared_tables = true;
        }
        self.unshared_tables = true;
        self.unshared_pending.push((pt, self.k.hw.ram.gen(pt)));
    }

    /// `tlb_flush_unshared_tables`: before the caller drops the locks that
    /// keep unshared tables from being reused: flush the TLB if anything was
    /// unshared, and if some table became exclusive, one
    /// `tlb_remove_table_sync_one` so no GUP-fast still walks it.
    pub fn tlb_flush_unshared_tables(&mut self) {
        if self.unshared_tables {
            self.tlb_flush_mmu_tlbonly();
        }
        if self.fully_unshared_tables {
            tlb_remove_table_sync_one(self.k);
            self.fully_unshared_tables = false;
        }
    }

    // ---- finish ---------------------------------------------------------

    /// `tlb_finish_mmu`: flush and free everything, return the batch pages,
    /// drop `tlb_flush_pending`.
    pub fn tlb_finish_mmu(mut self) {
        // huge_pmd_unshare_flush must have sorted this out already — unless
        // the test knob moved the sync here, after i_mmap_rwsem was dropped
        // (the broken placement; see `inject::Knobs::hugetlb_unshare_sync_after_unlock`).
        if self.k.inject.knobs.hugetlb_unshare_sync_after_unlock.get() && self.fully_unshared_tables {
            self.tlb_flush_unshared_tables();
        }
        // (tlb_flush_unshared_tables was not called: no sync IPI is sent.)
        vm_warn_on!(
            self.k,
            self.fully_unshared_tables,
            "VM_WARN_ON_ONCE(tlb->fully_unshared_tables) in tlb_finish_mmu",
            self.mm.id,
            0,
            Pfn(0)
        );
        // A parallel gather of this mm (e.g. MADV_DONTNEED under mmap_lock
        // read) may have cleared PTEs we skipped and not flushed yet: flush
        // everything, tables included (7a30df49f63a form).
        if self.k.cfg.fixes.on(Fix::NestedFlushDetect) && self.mm.mm_tlb_flush_nested() {
            self.fullmm = true;
            self.__tlb_reset_range();
            self.freed_tables = true;
            self.k.stats.inc(self.k.this_cpu(), Stat::NestedFlushForced);
        }
        self.tlb_flush_mmu();
        self.tlb_batch_list_free();
        self.mm.dec_tlb_flush_pending();
        self.finished = true;
    }
}

impl Drop for MmuGather<'_> {
    fn drop(&mut self) {
        // The emulator's own (a C gather has no destructor): always checked.
        if !self.finished && !std::thread::panicking() {
            panic!("mmu_gather of mm {} dropped without tlb_finish_mmu", self.mm.id);
        }
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
