//! madvise(MADV_DONTNEED) (mm/madvise.c): `madvise_dontneed_single_vma` →
//! `zap_page_range_single` — its own gather per VMA, mmap_lock held for
//! *read*, page tables kept.  Two of these on overlapping ranges are the
//! nested-gather case of 99baac21e458: the one that finds nothing to zap
//! must still flush if the other has not yet (mm_tlb_flush_nested).

use super::mmap::{check_range, MmError};
use super::zap::unmap_single_vma;
use crate::check::stale_after_zap::sanitize_stale_after_zap;
use crate::gather::MmuGather;
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::sync::Arc;

/// `madvise(addr, len, MADV_DONTNEED)`
pub fn madvise_dontneed(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64) -> Result<(), MmError> {
    let end = check_range(k, addr, len)?;
    let vmas = mm.mmap_lock.read();
    let hit: Vec<_> = vmas.overlapping(addr, end).cloned().collect();
    if hit.is_empty() {
        return Err(MmError::NoMem);
    }
    for vma in &hit {
        if vma.is_hugetlb() {
            return Err(MmError::Inval("MADV_DONTNEED on hugetlb is handled by the hugetlb code".into()));
        }
        zap_page_range_single(k, mm, vma, addr.max(vma.start), end.min(vma.end));
    }
    // Post-syscall coherence: no CPU running mm may still reach a page
    // this call threw away (`stale-after-zap`).
    sanitize_stale_after_zap(k, mm, addr, end);
    Ok(())
}

/// `zap_page_range_single`
pub fn zap_page_range_single(k: &Kernel, mm: &MmStruct, vma: &crate::mm::Vma, start: u64, end: u64) {
    let mut tlb = MmuGather::tlb_gather_mmu(k, mm);
    unmap_single_vma(&mut tlb, vma, start, end);
    // Pre-6bbd42e2df8f: ->invalidate_range at the range_end (after the
    // gather's own mmu_notifier_invalidate_range in tlb_flush_mmu_tlbonly).
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, start, end);
    tlb.tlb_finish_mmu();
}
