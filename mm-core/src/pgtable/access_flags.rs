//! Arch PTE permission upgrades: `ptep_set_access_flags` and
//! `flush_tlb_fix_spurious_fault` (mm/pgtable-generic.c, arch/x86/mm/pgtable.c,
//! arch/arm64/mm/fault.c).
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

use crate::config::Arch;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::pgtable;
use crate::types::Pfn;

/// `ptep_set_access_flags(vma, address, ptep, entry, dirty)`; the caller
/// holds the PTE table's PTL.  Returns true if the PTE changed.
pub fn ptep_set_access_flags(k: &Kernel, mm: &MmStruct, table: Pfn, va: u64, entry: Pte, dirty: bool) -> bool {
    let slot = pgtable::slot(k, table, Level::Pte, va);
    let old = Pte(slot.load(crate::sync::Ordering::SeqCst));
    if old == entry {
        return false;
    }
    match k.cfg.arch {
        Arch::X86 => {
            // Only a write fault changes it; no flush (x86 re-walks on fault).
            if !dirty {
                return true;
            }
            pgtable::write(k, table, Level::Pte, va, entry);
        }
        Arch::Arm64 => {
            // The hardware may set A/D concurrently: merge with a cmpxchg loop,
            // keeping the more permissive state of both.
            let keep = Pte::ACCESSED | Pte::DIRTY | Pte::RW;
            let mut cur = old;
            loop {
                let new = Pte(cur.0 | (entry.0 & keep));
                match slot.compare_exchange(cur.0, new.0, crate::sync::Ordering::SeqCst, crate::sync::Ordering::SeqCst)
                {
                    Ok(_) => break,
                    Err(now) => cur = Pte(now),
                }
            }
            // Invalidate a stale read-only entry.
            if dirty {
                crate::tlb::flush_tlb_page(k, mm, va);
            }
        }
        Arch::GenericNoRange => {
            pgtable::write(k, table, Level::Pte, va, entry);
            flush_tlb_fix_spurious_fault(k, mm, va);
        }
    }
    true
}

/// `flush_tlb_fix_spurious_fault(vma, address, ptep)`: a write fault found
/// the PTE already permitting the write.  Empty on x86 and arm64;
/// `flush_tlb_page` elsewhere.
pub fn flush_tlb_fix_spurious_fault(k: &Kernel, mm: &MmStruct, va: u64) {
    match k.cfg.arch {
        Arch::X86 | Arch::Arm64 => {}
        Arch::GenericNoRange => crate::tlb::flush_tlb_page(k, mm, va),
    }
}
