//! Page-table pages: allocation, population, lookup and the split PTL.
//!
//! Tables are RAM frames whose words are entries (`hw::pte::Pte`).  Each is
//! a `Ptdesc` (`page::ptdesc`): allocated by `pagetable_alloc`, freed by
//! `pagetable_free` (one allocation and one free function, bf2d4334f72e),
//! its split PTL and share count held in the descriptor.
//! Upper levels are populated under `mm.page_table_lock`
//! (`__pte_alloc`/`__pmd_alloc` with the recheck-under-lock pattern); PTE
//! entries are changed under the PTE table's split lock.

pub(crate) mod access_flags;

pub(crate) use access_flags::{flush_tlb_fix_spurious_fault, ptep_set_access_flags};

use crate::debug_vm::vm_bug_on;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::page::alloc::PageKind;
use crate::page::{ptdesc_address, ptdesc_page, Folio, Ptdesc};
use crate::stats::Stat;
use crate::sync::{AtomicU64, MutexGuard, Ordering};
use crate::types::Pfn;

/// `pagetable_alloc(GFP_PGTABLE_USER, order)` + the ctor: a zeroed
/// page-table page of `order` (compound when order > 0: `__GFP_COMP`),
/// PG_table set; `None` on out-of-memory.
pub fn pagetable_alloc(k: &Kernel, order: u32) -> Option<Ptdesc> {
    let pfn = k.alloc_zeroed(order, PageKind::PageTable)?;
    Some(k.mem.page_ptdesc(pfn))
}

/// `pagetable_free` (after the dtor): free every page of the descriptor's
/// compound allocation.  Its refcount is the allocator's single reference.
pub fn pagetable_free(k: &Kernel, pt: Ptdesc) {
    let pfn = ptdesc_page(pt);
    vm_bug_on!(
        k,
        !k.mem.page(pfn).test(crate::page::flags::PG_TABLE),
        "VM_BUG_ON_FOLIO(!folio_test_pgtable(folio)) in pagetable_dtor",
        "freeing a non-table {pfn:?} as a table"
    );
    k.stats.inc(k.this_cpu(), Stat::TablesFreed);
    k.folio_put(Folio(pfn));
}

/// Free the table at `table` at once: `pagetable_free(virt_to_ptdesc(..))`,
/// the form of `pgd_free` / `pte_free` (callers that hold a table address).
pub(crate) fn free_table_frame(k: &Kernel, table: Pfn) {
    pagetable_free(k, k.mem.virt_to_ptdesc(table));
}

/// Index of `va` in a table whose entries are at `level`.
#[inline]
pub(crate) fn index(k: &Kernel, level: Level, va: u64) -> usize {
    let g = k.cfg.geometry;
    ((va >> g.level_shift(level)) as usize) & (g.ptrs_per_table() - 1)
}

/// The entry slot for `va` in `table` (entries at `level`).
#[inline]
pub(crate) fn slot(k: &Kernel, table: Pfn, level: Level, va: u64) -> &AtomicU64 {
    k.hw.ram.word(table, index(k, level, va))
}

/// `READ_ONCE(*entry)`
#[inline]
pub fn read(k: &Kernel, table: Pfn, level: Level, va: u64) -> Pte {
    Pte(slot(k, table, level, va).load(Ordering::SeqCst))
}

/// `set_pte` / `set_pmd` / ... (`WRITE_ONCE`)
#[inline]
pub fn write(k: &Kernel, table: Pfn, level: Level, va: u64, e: Pte) {
    let s = slot(k, table, level, va);
    if k.gup_oracle.enabled() {
        k.gup_oracle.update(&k.hw, &k.san, table, level, va, || (Pte(s.swap(e.0, Ordering::SeqCst)), e));
        return;
    }
    s.store(e.0, Ordering::SeqCst);
}

/// `ptep_get_and_clear` & co: atomically clear, returning the old entry
/// (with whatever A/D bits the hardware set until now).
#[inline]
pub(crate) fn get_and_clear(k: &Kernel, table: Pfn, level: Level, va: u64) -> Pte {
    exchange(k, table, level, va, Pte::NONE)
}

/// Atomically replace an entry, returning the old one (A/D preserved in the
/// return value: `ptep_modify_prot_start`/`commit`).
#[inline]
pub(crate) fn exchange(k: &Kernel, table: Pfn, level: Level, va: u64, e: Pte) -> Pte {
    let s = slot(k, table, level, va);
    if k.gup_oracle.enabled() {
        return k.gup_oracle.update(&k.hw, &k.san, table, level, va, || (Pte(s.swap(e.0, Ordering::SeqCst)), e));
    }
    Pte(s.swap(e.0, Ordering::SeqCst))
}

/// The split PTL of a PTE (or PMD) table, taken: `pte_lockptr` /
/// `pmd_lockptr` = `ptlock_ptr(virt_to_ptdesc(table))`.
pub(crate) fn ptl(k: &Kernel, table: Pfn) -> MutexGuard<'_, ()> {
    k.mem.ptlock_ptr(k.mem.virt_to_ptdesc(table)).lock()
}

/// Descend from the PGD to the table whose entries are at `level`, without
/// allocating.  None if a level above is not present, or is a huge leaf.
pub fn lookup_table(k: &Kernel, mm: &MmStruct, va: u64, level: Level) -> Option<Pfn> {
    let mut table = mm.pgd;
    let mut l = Level::Pgd;
    while l != level {
        let e = read(k, table, l, va);
        if !e.present() || e.huge() {
            return None;
        }
        table = e.pfn();
        l = l.below().expect("level above PTE");
    }
    Some(table)
}

/// Descend to the table at `level`, allocating missing tables
/// (`__pud_alloc`, `__pmd_alloc`, `__pte_alloc`).  Populates under
/// `page_table_lock`, re-checking after allocation like the kernel.
/// None on out-of-memory or when a huge leaf sits in the way.
pub(crate) fn alloc_table(k: &Kernel, mm: &MmStruct, va: u64, level: Level) -> Option<Pfn> {
    let mut table = mm.pgd;
    let mut l = Level::Pgd;
    while l != level {
        let mut e = read(k, table, l, va);
        if !e.present() {
            let new = ptdesc_address(pagetable_alloc(k, 0)?);
            let lock = mm.page_table_lock.lock();
            e = read(k, table, l, va);
            if e.present() {
                drop(lock);
                free_table_frame(k, new);
            } else {
                // smp_wmb() in pmd_install: the zeroed table is visible
                // before the entry that points at it (SeqCst stores).
                e = Pte::table(new);
                write(k, table, l, va, e);
                mm.nr_ptes.fetch_add(1, Ordering::SeqCst);
                drop(lock);
            }
        }
        if e.huge() {
            return None;
        }
        table = e.pfn();
        l = l.below().expect("level above PTE");
    }
    Some(table)
}

/// Number of entries per table.
pub(crate) fn ptrs(k: &Kernel) -> u64 {
    k.cfg.geometry.ptrs_per_table() as u64
}

/// Address range one entry at `level` covers (`PAGE_SIZE`, `PMD_SIZE`, ...).
pub(crate) fn level_size(k: &Kernel, level: Level) -> u64 {
    1u64 << k.cfg.geometry.level_shift(level)
}

/// `pXd_addr_end(addr, end)`: the end of the entry at `level` containing
/// `addr`, clamped to `end`.
pub(crate) fn addr_end(k: &Kernel, level: Level, addr: u64, end: u64) -> u64 {
    let size = level_size(k, level);
    let boundary = (addr & !(size - 1)).wrapping_add(size);
    if boundary.wrapping_sub(1) < end.wrapping_sub(1) {
        boundary
    } else {
        end
    }
}
