//! mprotect (mm/mprotect.c): `do_mprotect_pkey` → `mprotect_fixup` →
//! `change_protection` → `change_protection_range` → `change_pte_range`,
//! with one gather for the call (hugetlb VMAs: `hugetlb_change_protection`
//! and the split's `hugetlb_unshare_pmds`, each with its own gather nested
//! inside it).
//!
//! Contract: every PTE `change_pte_range` rewrites is recorded in the
//! gather (`tlb_flush_pte_range`) and flushed before mprotect returns when
//! the arch's `pte_needs_flush(oldpte, newpte)` says so (mm/mprotect.c,
//! v6.12).  That is *not* "only when a permission is taken away": x86's
//! `pte_flags_need_flush` flushes any change of `_PAGE_RW` or `_PAGE_USER`,
//! upgrades included (RO → RW flushes too; an unchanged protection does
//! not), and the asm-generic default that arm64 and the no-range profile
//! use flushes every rewritten PTE, changed or not.  PROT_NONE is modelled
//! by clearing the user bit while keeping the page mapped (x86 uses
//! _PAGE_PROTNONE the same way).

use super::mmap::{check_range, MmError};
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{vm, MmStruct, Vma};
use crate::page::flags;
use crate::pgtable;
use crate::sync::{Arc, Ordering};

/// `mprotect(addr, len, prot)` with PROT_READ / PROT_WRITE as booleans.
pub fn mprotect(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64, read: bool, write: bool) -> Result<(), MmError> {
    let end = check_range(k, addr, len)?;
    let mut vmas = mm.mmap_lock.write();
    // Every page of the range must be mapped (ENOMEM otherwise).
    let mut covered = addr;
    for v in vmas.overlapping(addr, end) {
        if v.start > covered {
            break;
        }
        covered = v.end;
    }
    if covered < end {
        return Err(MmError::NoMem);
    }
    if write && vmas.overlapping(addr, end).any(|v| v.flags & vm::VM_MAYWRITE == 0) {
        return Err(MmError::Inval("PROT_WRITE on a mapping without VM_MAYWRITE".into()));
    }
    // do_mprotect_pkey gathers before the VMA loop: the splits of
    // mprotect_fixup (hugetlb_split → hugetlb_unshare_pmds) and
    // hugetlb_change_protection run their own gathers nested inside this one.
    let mut tlb = MmuGather::tlb_gather_mmu(k, mm);
    if let Err(e) = super::hugetlb::hugetlb_split_range(k, mm, &vmas, addr, end) {
        tlb.tlb_finish_mmu();
        return Err(e);
    }
    let pieces = vmas.change_flags(addr, end, k.cfg.geometry.page_shift, |f| {
        let mut f = f & !(vm::VM_READ | vm::VM_WRITE);
        if read || write {
            f |= vm::VM_READ;
        }
        if write {
            f |= vm::VM_WRITE;
        }
        f
    });
    super::hugetlb::hugetlb_update_i_mmap_flags(k, mm, &pieces);
    for vma in &pieces {
        change_protection(k, &mut tlb, mm, vma);
    }
    tlb.tlb_finish_mmu();
    Ok(())
}

/// `change_protection` over one VMA: a hugetlb VMA goes to
/// `hugetlb_change_protection` (which gathers by itself, not into `tlb`),
/// any other to `change_protection_range`.
fn change_protection(k: &Kernel, tlb: &mut MmuGather<'_>, mm: &MmStruct, vma: &Vma) {
    if vma.is_hugetlb() {
        super::hugetlb::hugetlb_change_protection(k, mm, vma);
    } else {
        change_protection_range(k, tlb, mm, vma);
    }
}

/// `change_protection_range`: the page-table walk between `tlb_start_vma`
/// and `tlb_end_vma`.
fn change_protection_range(k: &Kernel, tlb: &mut MmuGather<'_>, mm: &MmStruct, vma: &Vma) {
    tlb.tlb_start_vma(vma);
    let mut a = vma.start;
    while a < vma.end {
        let next = pgtable::addr_end(k, Level::Pmd, a, vma.end);
        if let Some(table) = pgtable::lookup_table(k, mm, a, Level::Pte) {
            change_pte_range(k, tlb, vma, table, a, next);
        }
        a = next;
    }
    // change_pmd_range's range_end (its ->invalidate_range before 6bbd42e2df8f).
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, vma.start, vma.end);
    tlb.tlb_end_vma(vma);
}

/// `can_change_pte_writable`: an exclusive anon page, or a dirty shared page.
/// Never the shared zero page (`vm_normal_page` is NULL for it: "page &&
/// PageAnon(page) && PageAnonExclusive(page)").
fn can_change_pte_writable(k: &Kernel, vma: &Vma, pte: Pte) -> bool {
    if vma.is_shared() {
        return pte.dirty();
    }
    let Some(page) = super::pfnmap::vm_normal_page(vma, pte) else {
        return false;
    };
    let folio = k.mem.page_folio(page);
    let page = k.mem.folio(folio);
    page.test(flags::PG_ANON) && k.mem.folio_mapcount(folio) == 1 && page.refcount() == 1
}

/// `change_pte_range`: under the PTL, rewrite each present PTE's permission
/// bits atomically (ptep_modify_prot_start/commit keep the A/D bits).
fn change_pte_range(k: &Kernel, tlb: &mut MmuGather<'_>, vma: &Vma, table: crate::types::Pfn, addr: u64, end: u64) {
    let ps = k.cfg.geometry.page_size();
    tlb.tlb_change_page_size(ps);
    let _ptl = pgtable::ptl(k, table);
    let user = vma.flags & vm::VM_READ != 0;
    let mut a = addr;
    while a < end {
        let slot = pgtable::slot(k, table, Level::Pte, a);
        let mut cur = Pte(slot.load(Ordering::SeqCst));
        while cur.present() {
            let mut new = Pte(cur.0 & !(Pte::RW | Pte::USER));
            if user {
                new = Pte(new.0 | Pte::USER);
            }
            if vma.writable() && user && (cur.write() || can_change_pte_writable(k, vma, cur)) {
                new = new.mkwrite();
            }
            match slot.compare_exchange(cur.0, new.0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    if k.arch.pte_needs_flush(cur, new) {
                        tlb.tlb_flush_pte_range(a, ps);
                    }
                    break;
                }
                Err(now) => cur = Pte(now),
            }
        }
        a += ps;
    }
}
