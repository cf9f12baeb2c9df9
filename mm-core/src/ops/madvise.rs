//! madvise(MADV_DONTNEED) (mm/madvise.c): `madvise_dontneed_single_vma` →
//! `zap_page_range_single` — its own gather per VMA, mmap_lock held for
//! *read*, page tables kept.  Two of these on overlapping ranges are the
//! nested-gather case of 99baac21e458: the one that finds nothing to zap
//! must still flush if the other has not yet (mm_tlb_flush_nested).

use super::mmap::{check_range, MmError};
use super::zap::unmap_single_vma;
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
    sanitize_stale_after_zap(k, mm, addr, end);
    Ok(())
}

/// Sanitizer (KERNEL-RACES §6 g), at the return of MADV_DONTNEED: no CPU
/// running `mm` (loaded, not lazy) may still cache a translation of
/// [start, end) whose frame differs from the current PTE (none counts as
/// different): the next user access would use a page the syscall already
/// threw away.  A violation is `stale-after-zap`.  Each candidate is
/// re-checked under its PTE table's PTL, so a concurrent fault or
/// folio_mkclean (which change the PTE and the TLBs together under that lock)
/// is not mistaken for a stale entry.
pub fn sanitize_stale_after_zap(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    use crate::hw::pte::Level;
    let shift = k.cfg.geometry.page_shift;
    for c in 0..k.hw.nr_cpus() {
        let st = &k.cpus[c];
        if st.loaded_mm.load(crate::sync::Ordering::SeqCst) != mm.id || st.is_lazy.load(crate::sync::Ordering::SeqCst) {
            continue;
        }
        let cpu = crate::types::CpuId(c as u32);
        let candidates: Vec<u64> =
            k.hw.tlb(cpu)
                .leaf_entries()
                .filter(|e| e.asid == mm.id && !e.huge && (e.vpn << shift) >= start && (e.vpn << shift) < end)
                .map(|e| e.vpn << shift)
                .collect();
        for va in candidates {
            let table = crate::pgtable::lookup_table(k, mm, va, Level::Pte);
            let _ptl = table.map(|t| crate::pgtable::ptl(k, t));
            let pte = table.map(|t| crate::pgtable::read(k, t, Level::Pte, va)).unwrap_or(crate::hw::pte::Pte::NONE);
            let Some(e) = k.hw.tlb(cpu).lookup(mm.id, va).copied() else { continue };
            if !pte.present() || pte.pfn() != e.pfn {
                k.san.record(crate::sanitizer::Violation {
                    kind: crate::sanitizer::ViolationKind::StaleAfterZap,
                    cpu: Some(cpu),
                    mm: mm.id,
                    va,
                    pfn: e.pfn,
                    cached_gen: e.gen,
                    frame_gen: k.hw.ram.gen(e.pfn),
                });
            }
        }
    }
}

/// `zap_page_range_single`
pub fn zap_page_range_single(k: &Kernel, mm: &MmStruct, vma: &crate::mm::Vma, start: u64, end: u64) {
    let mut tlb = MmuGather::tlb_gather_mmu(k, mm);
    unmap_single_vma(&mut tlb, vma, start, end);
    tlb.tlb_finish_mmu();
}
