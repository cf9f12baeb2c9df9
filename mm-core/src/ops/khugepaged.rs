//! khugepaged: collapse 512 small pages into one PMD-mapped THP
//! (mm/khugepaged.c), and the file path's page-table retraction.
//!
//! # Anon: `collapse_huge_page`, and what GUP-fast relies on
//!
//! With `mmap_lock` held for write (which excludes faults and the slow GUP
//! path, never GUP-fast):
//! 1. `pmdp_collapse_flush` under the PMD lock: the PMD is cleared and its
//!    range flushed (walk caches too).  New GUP-fast walkers now see none.
//! 2. `tlb_remove_table_sync_one` (2ba99c5e0881, switch
//!    `khugepaged-gup-fast-ipi`): every CPU takes an interrupt, so every
//!    GUP-fast walker that read the old PMD (IRQs off since before step 1)
//!    has finished.  Without it, on a broadcast-TLBI arch such a walker can
//!    still be reading the PTE table when it is reused as the deposited
//!    table and freed by a later `zap_huge_pmd` (docs/RACES.md, “The PTE table freed under the walker”).
//! 3. `__collapse_huge_page_isolate` under the PTE lock: every mapped page
//!    must be an anon small folio whose refcount equals its mapcount
//!    (`is_refcount_suitable`): a GUP pin aborts the collapse and the PTE
//!    table is put back.  Clear-then-check here against GUP-fast's
//!    grab-then-recheck-PMD (70cbc3cc78a9) is what keeps a pinned page from
//!    being copied and discarded (RACES.md “Stale pin of a collapsed page”).
//! 4. `__collapse_huge_page_copy`: copy (zero-fill holes), clear the PTEs,
//!    drop the small pages.
//! 5. Under the PMD lock: rmap the THP, deposit the (now empty) PTE table,
//!    install the huge PMD.
//!
//! # File: `retract_page_tables`
//!
//! After `collapse_file` has replaced a file range's small pages in the
//! page cache (and unmapped them everywhere), the now empty PTE tables of
//! every mapper are retracted: PMD lock, `pmdp_collapse_flush`, then the
//! table is freed — v6.6+ with `pte_free_defer` (RCU: GUP-fast walkers are
//! RCU readers), or (config `pte_free_defer` off) as the 2022-era
//! `collapse_and_free_pmd` did: `tlb_remove_table_sync_one` (switch
//! `khugepaged-gup-fast-ipi`) then an immediate `pte_free`.
//!
//! Not modelled: khugepaged's scan loop and mm_slots (callers name the
//! range), swap-in, anon_vma locking (no anon rmap walkers exist in the
//! model; mmap_lock held for write excludes everything else that matters),
//! large folios inside the range (the collapse gives up on them),
//! `collapse_file` itself and `collapse_pte_mapped_thp` (need PMD-sized
//! page-cache folios).

use super::huge_memory::{pgtable_trans_huge_deposit, pmdp_collapse_flush, pte_free, pte_free_defer};
use crate::config::Fix;
use crate::gather::tlb_remove_table_sync_one;
use crate::hw::pte::{Level, Pte};
use crate::inject::CollapsePoint;
use crate::kernel::Kernel;
use crate::mm::{AddressSpace, MmStruct};
use crate::page::alloc::PageKind;
use crate::page::{flags, Folio};
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::{Arc, Ordering};
use crate::types::Pfn;

/// `enum scan_result` (the subset the model can produce).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanResult {
    /// `SCAN_SUCCEED`: the range was collapsed (or retracted).
    Succeed,

    /// No suitable VMA covers the PMD range (`SCAN_VMA_CHECK`).
    VmaCheck,
    /// No PTE table under the PMD (`SCAN_PMD_NULL`).
    PmdNull,
    /// Already a huge PMD (`SCAN_PMD_MAPPED`).
    PmdMapped,
    /// More empty PTEs than `max_ptes_none` (`SCAN_EXCEED_NONE_PTE`).
    ExceedNonePte,
    /// A page that is not anonymous (`SCAN_PAGE_ANON`).
    PageAnon,
    /// A large folio inside the range (`SCAN_PAGE_COMPOUND`).
    PageCompound,
    /// A page with references beyond its mappings, e.g. a GUP pin
    /// (`SCAN_PAGE_COUNT`).
    PageCount,
    /// No memory for the huge page (`SCAN_ALLOC_HUGE_PAGE_FAIL`).
    AllocHugePageFail,
}

/// `khugepaged_max_ptes_none` default: HPAGE_PMD_NR - 1.
pub(crate) fn max_ptes_none(k: &Kernel) -> u64 {
    k.cfg.geometry.hpage_pmd_nr() - 1
}

/// `__collapse_huge_page_isolate`: with the PTE lock of `pte_table` held,
/// check every entry of the range.
fn __collapse_huge_page_isolate(k: &Kernel, pte_table: Pfn, haddr: u64) -> ScanResult {
    let g = k.cfg.geometry;
    let mut none = 0;
    for i in 0..g.hpage_pmd_nr() {
        let pte = pgtable::read(k, pte_table, Level::Pte, haddr + (i << g.page_shift));
        // A zero-page PTE counts like pte_none toward max_ptes_none
        // (`none_or_zero`).
        if pte.is_none() || (pte.present() && crate::page::is_zero_pfn(pte.pfn())) {
            none += 1;
            if none > max_ptes_none(k) {
                return ScanResult::ExceedNonePte;
            }
            continue;
        }
        let folio = k.mem.page_folio(pte.pfn());
        let page = k.mem.folio(folio);
        if !page.test(flags::PG_ANON) {
            return ScanResult::PageAnon;
        }
        if k.mem.folio_nr_pages(folio) > 1 {
            return ScanResult::PageCompound;
        }
        // is_refcount_suitable: "Check if the page has any GUP (or other
        // external) pins."
        if page.refcount() != k.mem.folio_mapcount(folio) {
            return ScanResult::PageCount;
        }
    }
    ScanResult::Succeed
}

/// `__collapse_huge_page_copy` + `__collapse_huge_page_copy_succeeded`:
/// copy every page into `hpage` (zero-fill holes and zero-page PTEs), clear
/// the PTEs and drop the small pages.  Returns the number of holes and
/// zero-page PTEs (they add to rss).
fn __collapse_huge_page_copy(k: &Kernel, pte_table: Pfn, haddr: u64, hpage: Pfn) -> u64 {
    let g = k.cfg.geometry;
    let mut holes = 0;
    for i in 0..g.hpage_pmd_nr() {
        let pte = pgtable::read(k, pte_table, Level::Pte, haddr + (i << g.page_shift));
        if pte.is_none() || crate::page::is_zero_pfn(pte.pfn()) {
            // clear_user_highpage
            k.hw.ram.clear_frame(hpage.add(i));
        } else {
            k.hw.ram.copy_frame(hpage.add(i), pte.pfn());
        }
    }
    for i in 0..g.hpage_pmd_nr() {
        let va = haddr + (i << g.page_shift);
        let ptl = pgtable::ptl(k, pte_table);
        let pte = pgtable::get_and_clear(k, pte_table, Level::Pte, va);
        // __collapse_huge_page_copy_succeeded: a hole or a zero-page PTE
        // (ptep_clear; no rmap, no reference) adds one to MM_ANONPAGES.
        if pte.is_none() || crate::page::is_zero_pfn(pte.pfn()) {
            holes += 1;
            continue;
        }
        k.mem.remove_rmap_ptes(pte.pfn(), 1);
        drop(ptl);
        // free_page_and_swap_cache
        k.folio_put(k.mem.page_folio(pte.pfn()));
    }
    holes
}

/// `collapse_huge_page(mm, address, ...)`: replace the PTE-mapped small
/// pages of the PMD range around `address` by one PMD-mapped THP.
pub fn collapse_huge_page(k: &Kernel, mm: &Arc<MmStruct>, address: u64) -> ScanResult {
    let g = k.cfg.geometry;
    let haddr = address & !(g.pmd_size() - 1);
    // hpage_collapse_scan_pmd (mmap_lock read): find_pmd_or_thp_or_none
    // before anything is allocated.
    {
        let _vmas = mm.mmap_lock.read();
        match pgtable::lookup_table(k, mm, haddr, Level::Pmd).map(|t| pgtable::read(k, t, Level::Pmd, haddr)) {
            None => return ScanResult::PmdNull,
            Some(pmd) if !pmd.present() => return ScanResult::PmdNull,
            Some(pmd) if pmd.huge() => return ScanResult::PmdMapped,
            Some(_) => {}
        }
    }
    // alloc_charge_folio (with mmap_lock dropped, as in the kernel).
    let Some(hpage) = k.alloc_pages(g.hpage_pmd_order(), PageKind::Anon) else {
        k.stats.inc(k.this_cpu(), Stat::ThpCollapseAllocFailed);
        return ScanResult::AllocHugePageFail;
    };
    k.stats.inc(k.this_cpu(), Stat::ThpCollapseAlloc);
    let put_hpage = || k.folio_put(Folio(hpage));
    let vmas = mm.mmap_lock.write();
    // hugepage_vma_revalidate
    let vma = match vmas.find(haddr) {
        Some(v) if v.is_anon() && !v.is_hugetlb() && v.start <= haddr && haddr + g.pmd_size() <= v.end => v,
        _ => {
            put_hpage();
            return ScanResult::VmaCheck;
        }
    };
    // find_pmd_or_thp_or_none
    let Some(pmd_table) = pgtable::lookup_table(k, mm, haddr, Level::Pmd) else {
        put_hpage();
        return ScanResult::PmdNull;
    };
    let pmd = pgtable::read(k, pmd_table, Level::Pmd, haddr);
    if !pmd.present() {
        put_hpage();
        return ScanResult::PmdNull;
    }
    if pmd.huge() {
        put_hpage();
        return ScanResult::PmdMapped;
    }
    // (anon_vma_lock_write: see the module comment.)
    let pml = pgtable::ptl(k, pmd_table);
    let old_pmd = pmdp_collapse_flush(k, mm, pmd_table, haddr);
    drop(pml);
    // mmu_notifier_invalidate_range_end (pre-6bbd42e2df8f: ->invalidate_range).
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, haddr, haddr + k.cfg.geometry.pmd_size());
    if k.cfg.fixes.on(Fix::KhugepagedGupFastIpi) {
        tlb_remove_table_sync_one(k);
    }
    k.inject.race.collapse(k, CollapsePoint::AfterCollapseFlush, haddr);
    // pte_offset_map_lock(mm, &_pmd, ...): the table the old PMD named.
    let pte_table = old_pmd.pfn();
    let pte_ptl = pgtable::ptl(k, pte_table);
    let result = __collapse_huge_page_isolate(k, pte_table, haddr);
    drop(pte_ptl);
    if result != ScanResult::Succeed {
        // Put the PTE table back.
        let _pml = pgtable::ptl(k, pmd_table);
        assert!(pgtable::read(k, pmd_table, Level::Pmd, haddr).is_none(), "PMD repopulated under mmap_lock");
        pgtable::write(k, pmd_table, Level::Pmd, haddr, old_pmd);
        drop(_pml);
        drop(vmas);
        put_hpage();
        return result;
    }
    k.inject.race.collapse(k, CollapsePoint::AfterIsolate, haddr);
    let holes = __collapse_huge_page_copy(k, pte_table, haddr, hpage);
    let page = k.mem.page(hpage);
    page.mapping.store(mm.id, Ordering::SeqCst);
    page.index.store(haddr >> g.page_shift, Ordering::SeqCst);
    page.set(flags::PG_UPTODATE);
    let mut f = Pte::PRESENT | Pte::USER | Pte::ACCESSED | Pte::HUGE | Pte::DIRTY;
    if vma.writable() {
        f |= Pte::RW;
    }
    let huge = Pte::new(hpage, f);
    let pml = pgtable::ptl(k, pmd_table);
    assert!(pgtable::read(k, pmd_table, Level::Pmd, haddr).is_none(), "PMD repopulated under mmap_lock");
    k.mem.add_rmap_pmd(Folio(hpage));
    pgtable_trans_huge_deposit(mm, haddr, pte_table);
    pgtable::write(k, pmd_table, Level::Pmd, haddr, huge);
    drop(pml);
    mm.rss.fetch_add(holes, Ordering::SeqCst);
    drop(vmas);
    k.stats.inc(k.this_cpu(), Stat::ThpCollapsed);
    ScanResult::Succeed
}

/// `retract_page_tables(mapping, pgoff)`: in every mm mapping file page
/// `pgoff` at a PMD-aligned address with the whole PMD range inside the
/// VMA, remove the (empty) PTE table: `pmdp_collapse_flush`, then free it
/// per `KernelConfig::pte_free_defer` (see the module comment).  Tables
/// that still map pages are left alone (the kernel knows them empty here;
/// the model checks).  Returns the number of tables retracted.
pub fn retract_page_tables(k: &Kernel, mapping: &AddressSpace, pgoff: u64) -> usize {
    let g = k.cfg.geometry;
    let mut retracted = 0;
    let i_mmap = mapping.i_mmap.read();
    for e in crate::mm::vma_interval_tree_foreach(&i_mmap, pgoff, pgoff, g.page_shift) {
        let addr = e.address_of(pgoff, g.page_shift);
        if addr & (g.pmd_size() - 1) != 0 || e.end < addr + g.pmd_size() {
            continue;
        }
        let mm = &e.mm;
        let Some(pmd_table) = pgtable::lookup_table(k, mm, addr, Level::Pmd) else { continue };
        let pml = pgtable::ptl(k, pmd_table);
        let pmd = pgtable::read(k, pmd_table, Level::Pmd, addr);
        if !pmd.present() || pmd.huge() {
            continue;
        }
        let ptl = pgtable::ptl(k, pmd.pfn());
        let empty = (0..g.hpage_pmd_nr())
            .all(|i| pgtable::read(k, pmd.pfn(), Level::Pte, addr + (i << g.page_shift)).is_none());
        if !empty {
            continue;
        }
        let old = pmdp_collapse_flush(k, mm, pmd_table, addr);
        drop(ptl);
        drop(pml);
        mm.nr_ptes.fetch_sub(1, Ordering::SeqCst);
        k.stats.inc(k.this_cpu(), Stat::ThpTablesRetracted);
        retracted += 1;
        if k.cfg.pte_free_defer {
            // v6.6+: pmdp_get_lockless_sync() is a no-op on 64-bit.
            pte_free_defer(k, old.pfn());
        } else {
            // collapse_and_free_pmd (2022): the sync (2ba99c5e0881), then
            // the table goes at once.
            if k.cfg.fixes.on(Fix::KhugepagedGupFastIpi) {
                tlb_remove_table_sync_one(k);
            }
            pte_free(k, old.pfn());
        }
    }
    retracted
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
