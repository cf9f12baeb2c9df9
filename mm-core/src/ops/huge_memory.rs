//! Anonymous THPs mapped by a PMD (mm/huge_memory.c, mm/pgtable-generic.c):
//! the deposited page table, `zap_huge_pmd`, `__split_huge_pmd` and
//! `pmdp_collapse_flush`.
//!
//! Contract:
//! - A huge PMD of an anonymous THP always has one PTE table *deposited*
//!   under it (`pgtable_trans_huge_deposit`), so a later split never needs
//!   to allocate.  The deposited table still counts in `mm.nr_ptes`.
//! - `zap_huge_pmd` clears the PMD under the PMD lock, records a PMD-level
//!   flush in the gather, drops the rmap, withdraws the deposited table and
//!   frees it at once (`zap_deposited_table` → `pte_free`: no RCU, no
//!   gather — nothing can have linked into a deposited table, only a
//!   lockless walker that was inside *before* khugepaged deposited it, which
//!   is what khugepaged's `tlb_remove_table_sync_one` is for), and hands the
//!   folio to the gather (freed after the flush).
//! - `__split_huge_pmd` (anon): invalidate the PMD (clear + flush), refill
//!   the withdrawn table with one PTE per subpage (each holding a folio
//!   reference and a mapcount, as every PTE in this model), then populate.
//! - `pmdp_collapse_flush`: clear the PMD and flush the PMD range with the
//!   walk caches (the PTE table is being removed: x86 passes freed_tables
//!   per 3ef938c35035, arm64's flush_tlb_range is not last-level).
//!
//! Not modelled: the huge zero page, file THPs mapped by PMD, fork of a huge
//! PMD (`copy_huge_pmd`), mprotect of a huge PMD (`change_huge_pmd`).

use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::page::flags;
use crate::pgtable;
use crate::sync::Ordering;
use crate::types::Pfn;

/// `pgtable_trans_huge_deposit(mm, pmdp, pgtable)`
pub fn pgtable_trans_huge_deposit(mm: &MmStruct, haddr: u64, pgtable: Pfn) {
    let old = mm.pmd_huge_pte.lock().insert(haddr, pgtable);
    assert!(old.is_none(), "mm {}: a table is already deposited at {haddr:#x}", mm.id);
}

/// `pgtable_trans_huge_withdraw(mm, pmdp)`
pub fn pgtable_trans_huge_withdraw(mm: &MmStruct, haddr: u64) -> Pfn {
    mm.pmd_huge_pte
        .lock()
        .remove(&haddr)
        .unwrap_or_else(|| panic!("mm {}: no table deposited under the huge PMD at {haddr:#x}", mm.id))
}

/// `pte_free(mm, pgtable)`: free a PTE table at once (no RCU, no gather):
/// `pagetable_free(page_ptdesc(pte_page))`.
pub fn pte_free(k: &Kernel, table: Pfn) {
    pgtable::pagetable_free(k, k.mem.page_ptdesc(table));
}

/// `pte_free_defer(mm, pgtable)`: free a PTE table after an RCU grace
/// period (v6.6+, for tables retracted without mmap_lock held for write):
/// `call_rcu(&ptdesc->pt_rcu_head, pte_free_now)`.
pub fn pte_free_defer(k: &Kernel, table: Pfn) {
    let pt = k.mem.page_ptdesc(table);
    k.rcu.call_rcu(k.this_cpu(), crate::rcu::RcuCallback::PteFreeNow(pt));
}

/// `zap_deposited_table(mm, pmd)`: withdraw and free the deposited table.
pub fn zap_deposited_table(k: &Kernel, mm: &MmStruct, haddr: u64) {
    let pgtable = pgtable_trans_huge_withdraw(mm, haddr);
    pte_free(k, pgtable);
    mm.nr_ptes.fetch_sub(1, Ordering::SeqCst);
}

/// `zap_huge_pmd(tlb, vma, pmd, addr)`: unmap a whole PMD-mapped THP.
/// Returns false if the PMD was no longer huge (the caller walks PTEs).
pub fn zap_huge_pmd(tlb: &mut MmuGather<'_>, _vma: &Vma, pmd_table: Pfn, addr: u64) -> bool {
    let k = tlb.kernel();
    let mm = tlb.mm();
    let hpn = k.cfg.geometry.hpage_pmd_nr();
    tlb.tlb_change_page_size(k.cfg.geometry.pmd_size());
    // __pmd_trans_huge_lock
    let ptl = pgtable::ptl(k, pmd_table);
    if !pgtable::read(k, pmd_table, Level::Pmd, addr).huge() {
        return false;
    }
    // pmdp_huge_get_and_clear_full
    let orig = pgtable::get_and_clear(k, pmd_table, Level::Pmd, addr);
    tlb.tlb_remove_pmd_tlb_entry(addr);
    let folio = k.mem.page_folio(orig.pfn());
    k.mem.remove_rmap_pmd(folio);
    if k.mem.folio(folio).test(flags::PG_ANON) {
        zap_deposited_table(k, mm, addr);
    }
    mm.rss.fetch_sub(hpn, Ordering::SeqCst);
    drop(ptl);
    tlb.tlb_remove_page_size(folio.pfn(), k.cfg.geometry.pmd_size());
    true
}

/// `__split_huge_pmd(vma, pmd, address, ...)` for an anonymous THP: the
/// PMD becomes a PTE table (the deposited one) mapping every subpage.
pub fn __split_huge_pmd(k: &Kernel, mm: &MmStruct, _vma: &Vma, pmd_table: Pfn, address: u64) {
    let g = k.cfg.geometry;
    let haddr = address & !(g.pmd_size() - 1);
    let hpn = g.hpage_pmd_nr();
    let ptl = pgtable::ptl(k, pmd_table);
    let pmd = pgtable::read(k, pmd_table, Level::Pmd, haddr);
    if !pmd.present() || !pmd.huge() {
        return;
    }
    // pmdp_invalidate: the huge entry must be gone from every TLB before
    // the PTEs that replace it become visible.
    let old = pgtable::get_and_clear(k, pmd_table, Level::Pmd, haddr);
    crate::tlb::flush_pmd_tlb_range(k, mm, haddr, haddr + g.pmd_size());
    let folio = k.mem.page_folio(old.pfn());
    let pgtable = pgtable_trans_huge_withdraw(mm, haddr);
    // Each PTE holds a reference: the PMD's one plus HPAGE_PMD_NR - 1.
    k.mem.folio_ref_add(folio, hpn as i32 - 1);
    k.mem.add_rmap_ptes(folio.pfn(), hpn);
    k.mem.remove_rmap_pmd(folio);
    let keep = old.flags() & (Pte::PRESENT | Pte::RW | Pte::USER | Pte::ACCESSED | Pte::DIRTY);
    for i in 0..hpn {
        pgtable::write(k, pgtable, Level::Pte, haddr + (i << g.page_shift), Pte::new(old.pfn().add(i), keep));
    }
    // smp_wmb() then pmd_populate
    pgtable::write(k, pmd_table, Level::Pmd, haddr, Pte::table(pgtable));
    drop(ptl);
}

/// `pmdp_collapse_flush(vma, address, pmdp)`: clear a PMD that points at a
/// PTE table and flush its range, walk caches included.  Returns the old
/// PMD.  Call with the PMD lock held.
pub fn pmdp_collapse_flush(k: &Kernel, mm: &MmStruct, pmd_table: Pfn, haddr: u64) -> Pte {
    let pmd = pgtable::get_and_clear(k, pmd_table, Level::Pmd, haddr);
    crate::tlb::flush_tlb_range(k, mm, haddr, haddr + k.cfg.geometry.pmd_size(), false);
    pmd
}
