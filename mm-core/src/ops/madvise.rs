//! madvise(MADV_DONTNEED) (mm/madvise.c): `madvise_dontneed_single_vma` →
//! `zap_page_range_single` — its own gather per VMA, mmap_lock held for
//! *read*, page tables kept.  Two of these on overlapping ranges are the
//! nested-gather case of 99baac21e458: the one that finds nothing to zap
//! must still flush if the other has not yet (mm_tlb_flush_nested).

use super::mmap::{check_range, MmError};
use super::zap::zap_page_range_single;
use crate::check::stale_after_zap::sanitize_stale_after_zap;
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
        // madvise_dontneed_single_vma: v6.12 passes no details (zap all).
        zap_page_range_single(k, mm, vma, addr.max(vma.start), end.min(vma.end), None);
    }
    // Post-syscall coherence: no CPU running mm may still reach a page
    // this call threw away (`stale-after-zap`).
    sanitize_stale_after_zap(k, mm, addr, end);
    Ok(())
}
