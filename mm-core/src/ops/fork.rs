//! fork: `dup_mmap` → `copy_page_range` → `copy_pte_range`, then
//! `flush_tlb_mm(oldmm)` before the parent's mmap_lock is released.
//!
//! Contract: every private writable PTE is write-protected in *both* the
//! parent and the child (copy-on-write); the parent's TLBs are flushed
//! before fork returns, so no CPU of the parent can still write through a
//! stale writable entry to a page the child now shares.  A VMA whose page
//! tables a fault can rebuild is not copied at all (`vma_needs_copy`): a
//! shared file mapping — hugetlb included — gets no PTEs in the child, which
//! faults them in (for hugetlb: `hugetlb_fault` → `huge_pmd_share` makes the
//! child a sharer of the parent's PMD table on its first fault in each PUD
//! region, not at fork).

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
            // copy_page_range: nothing to do unless vma_needs_copy.
            if !vma_needs_copy(vma) {
                continue;
            }
            // Every hugetlb VMA is MAP_SHARED (`mmap_hugetlb`; private
            // hugetlb mappings, whose fork is `copy_hugetlb_page_range`, are
            // not modelled), so it never needs a copy.
            assert!(!vma.is_hugetlb(), "a hugetlb VMA that vma_needs_copy: MAP_PRIVATE hugetlb is not modelled");
            copy_page_range(k, &mm, oldmm, vma)?;
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

/// `vma_needs_copy(dst_vma, src_vma)` (mm/memory.c, v6.12): copy the page
/// tables at fork only when a fault could not rebuild them — VM_PFNMAP
/// (VM_MIXEDMAP and uffd-wp are not modelled) or an anon_vma.  The model
/// keeps no anon_vma: a private VMA is taken to have one (it does once
/// anything was faulted into it; a private file mapping that was only read
/// has none and the kernel would not copy it), a shared one never has one
/// (shared file and hugetlb mappings: the child faults them in).
fn vma_needs_copy(vma: &Vma) -> bool {
    if vma.flags & crate::mm::vm::VM_PFNMAP != 0 {
        return true;
    }
    !vma.is_shared()
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
        if pte.present() && super::pfnmap::vm_normal_page(vma, pte).is_none() {
            // copy_present_ptes without a page (the shared zero page):
            // __copy_present_ptes copies the entry as is (old; it is never
            // writable, so nothing to write-protect): no reference, no
            // rmap, no rss.
            pgtable::write(k, dst_table, Level::Pte, a, pte.mkold());
        } else if pte.present() {
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
