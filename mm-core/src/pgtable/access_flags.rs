//! Arch PTE permission upgrades: `ptep_set_access_flags` and
//! `flush_tlb_fix_spurious_fault` (mm/pgtable-generic.c, arch/x86/mm/pgtable.c,
//! arch/arm64/mm/fault.c).  The per-arch code moved to `arch/x86.rs`,
//! `arch/arm64.rs` and `arch/generic.rs`; these hand over to `Kernel::arch`.
//!
//! Contract: `ptep_set_access_flags(.., entry, dirty)` installs `entry` — the
//! same page with the same or *more* permissions (young, dirty, writable) —
//! under the PTL the caller holds, and returns whether the PTE changed.  What
//! happens to TLB entries caching the old, weaker permissions is the arch's
//! choice:
//! - x86: nothing (a write through a stale read-only entry faults, the CPU
//!   drops the entry and re-walks; `flush_tlb_fix_spurious_fault` is empty).
//! - arm64: `flush_tlb_page` when `dirty` ("invalidate a stale read-only
//!   entry": arm64 may cache permission bits); its
//!   `flush_tlb_fix_spurious_fault` is empty too.
//! - generic: `flush_tlb_fix_spurious_fault` = `flush_tlb_page`.
//!
//! This single-page flush is the one 6bbd42e2df8f is about: before that
//! commit it did not reach secondary TLBs, so an SMMU holding the read-only
//! translation faulted forever.

use crate::hw::pte::Pte;
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::types::Pfn;

/// `ptep_set_access_flags(vma, address, ptep, entry, dirty)`; the caller
/// holds the PTE table's PTL.  Returns true if the PTE changed.
#[inline]
pub fn ptep_set_access_flags(k: &Kernel, mm: &MmStruct, table: Pfn, va: u64, entry: Pte, dirty: bool) -> bool {
    k.arch.ptep_set_access_flags(k, mm, table, va, entry, dirty)
}

/// `flush_tlb_fix_spurious_fault(vma, address, ptep)`: a write fault found
/// the PTE already permitting the write.  Empty on x86 and arm64;
/// `flush_tlb_page` elsewhere.
#[inline]
pub fn flush_tlb_fix_spurious_fault(k: &Kernel, mm: &MmStruct, va: u64) {
    k.arch.flush_tlb_fix_spurious_fault(k, mm, va);
}
