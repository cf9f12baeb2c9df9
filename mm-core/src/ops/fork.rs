//! fork: `dup_mmap` → `copy_page_range` → `copy_pte_range`, then
//! `flush_tlb_mm(oldmm)` before the parent's mmap_lock is released.
//!
//! Contract: every private writable PTE is write-protected in *both* the
//! parent and the child (copy-on-write); the parent's TLBs are flushed
//! before fork returns, so no CPU of the parent can still write through a
//! stale writable entry to a page the child now shares.  Shared file
//! mappings are not copied: the child faults them in (vma_needs_copy).

use crate::hw::pte::Level;
use crate::kernel::Kernel;
use crate::mm::address_space::IMmapEntry;
use crate::mm::{MmStruct, Vma};
use crate::pgtable;
use crate::sync::{Arc, Ordering};
use crate::types::Pfn;

use super::mmap::MmError;

/// `dup_mmap`: returns the child mm.
pub fn dup_mmap(k: &Kernel, oldmm: &Arc<MmStruct>) -> Result<Arc<MmStruct>, MmError> {
    let old_vmas = oldmm.mmap_lock.write();
    let mm = k.mm_alloc();
    {
        let mut new_vmas = mm.mmap_lock.write();
        for vma in old_vmas.iter() {
            new_vmas.insert(vma.clone());
            if let Some(m) = vma.mapping() {
                m.i_mmap_insert(IMmapEntry {
                    mm: mm.clone(),
                    start: vma.start,
                    end: vma.end,
                    pgoff: vma.pgoff_of(vma.start, k.cfg.geometry.page_shift),
                    flags: vma.flags,
                });
            }
            if vma.is_hugetlb() {
                super::hugetlb::copy_hugetlb_page_range(k, &mm, oldmm, vma)?;
            } else if !vma.is_shared() {
                copy_page_range(k, &mm, oldmm, vma)?;
            }
        }
    }
    // The parent's writable entries were write-protected: flush them.
    crate::tlb::flush_tlb_mm(k, oldmm);
    // copy_page_range's mmu_notifier_invalidate_range_end (pre-6bbd42e2df8f
    // the secondary invalidation of the write-protected parent).
    crate::notifier::mmu_notifier_invalidate_range_end(k, oldmm, 0, crate::tlb::FLUSH_ALL);
    drop(old_vmas);
    Ok(mm)
}

/// `copy_page_range` for one private VMA.
fn copy_page_range(k: &Kernel, dst: &MmStruct, src: &MmStruct, vma: &Vma) -> Result<(), MmError> {
    let mut a = vma.start;
    while a < vma.end {
        let next = pgtable::addr_end(k, Level::Pmd, a, vma.end);
        if let Some(src_table) = pgtable::lookup_table(k, src, a, Level::Pte) {
            let dst_table = pgtable::alloc_table(k, dst, a, Level::Pte).ok_or(MmError::NoMem)?;
            copy_pte_range(k, dst, src, vma, dst_table, src_table, a, next);
        }
        a = next;
    }
    Ok(())
}

/// `copy_pte_range` / `copy_present_ptes`: under both PTLs.
#[allow(clippy::too_many_arguments)]
fn copy_pte_range(
    k: &Kernel,
    dst: &MmStruct,
    _src: &MmStruct,
    vma: &Vma,
    dst_table: Pfn,
    src_table: Pfn,
    addr: u64,
    end: u64,
) {
    let ps = k.cfg.geometry.page_size();
    let _dst_ptl = pgtable::ptl(k, dst_table);
    let _src_ptl = pgtable::ptl(k, src_table);
    let cow = !vma.is_shared() && vma.flags & crate::mm::vm::VM_MAYWRITE != 0;
    let mut a = addr;
    while a < end {
        let pte = pgtable::read(k, src_table, Level::Pte, a);
        if pte.present() {
            let folio = k.mem.page_folio(pte.pfn());
            k.mem.folio_get(folio);
            k.mem.add_rmap_ptes(pte.pfn(), 1);
            let mut child = pte;
            if cow && pte.write() {
                // ptep_set_wrprotect: atomically, keeping the A/D bits the
                // hardware may set concurrently.
                let slot = pgtable::slot(k, src_table, Level::Pte, a);
                let old = crate::hw::pte::Pte(slot.fetch_and(!crate::hw::pte::Pte::RW, Ordering::SeqCst));
                child = old.wrprotect();
            }
            pgtable::write(k, dst_table, Level::Pte, a, child.mkold());
            dst.rss.fetch_add(1, Ordering::SeqCst);
        }
        a += ps;
    }
}
