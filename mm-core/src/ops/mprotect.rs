//! mprotect (mm/mprotect.c): `do_mprotect_pkey` → `mprotect_fixup` →
//! `change_protection` → `change_pte_range`, with one gather for the call.
//!
//! Contract: a PTE that loses a permission is recorded in the gather
//! (`tlb_flush_pte_range`) and flushed before mprotect returns; adding a
//! permission needs no flush (a stale, weaker entry just faults and the MMU
//! re-walks).  The arch decides (`pte_needs_flush`, `arch/`); every profile
//! follows that rule today.  PROT_NONE is modelled by clearing the user bit while keeping
//! the page mapped (x86 uses _PAGE_PROTNONE the same way).

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
    super::hugetlb::hugetlb_split_range(k, mm, &vmas, addr, end)?;
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
    let mut tlb = MmuGather::tlb_gather_mmu(k, mm);
    for vma in &pieces {
        tlb.tlb_start_vma(vma);
        if vma.is_hugetlb() {
            super::hugetlb::hugetlb_change_protection(&mut tlb, vma);
        } else {
            change_protection(k, &mut tlb, mm, vma);
        }
        tlb.tlb_end_vma(vma);
    }
    tlb.tlb_finish_mmu();
    Ok(())
}

/// `change_protection` over one VMA.
fn change_protection(k: &Kernel, tlb: &mut MmuGather<'_>, mm: &MmStruct, vma: &Vma) {
    let mut a = vma.start;
    while a < vma.end {
        let next = pgtable::addr_end(k, Level::Pmd, a, vma.end);
        if let Some(table) = pgtable::lookup_table(k, mm, a, Level::Pte) {
            change_pte_range(k, tlb, vma, table, a, next);
        }
        a = next;
    }
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, vma.start, vma.end);
    // pre-6bbd42e2df8f change_pmd_range
}

/// `can_change_pte_writable`: an exclusive anon page, or a dirty shared page.
fn can_change_pte_writable(k: &Kernel, vma: &Vma, pte: Pte) -> bool {
    if vma.is_shared() {
        return pte.dirty();
    }
    let folio = k.mem.page_folio(pte.pfn());
    let page = k.mem.folio(folio);
    page.test(flags::PG_ANON) && k.mem.folio_mapcount(folio) == 1 && page.refcount() == 1
}

/// `change_pte_range`: under the PTL, rewrite each present PTE's permission
/// bits atomically (ptep_modify_prot_start/commit keep the A/D bits).
fn change_pte_range(k: &Kernel, tlb: &mut MmuGather<'_>, vma: &Vma, table: crate::types::Pfn, addr: u64, end: u64) {
    let ps = k.cfg.geometry.page_size();
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
