//! The stale-after-zap check (docs/RACES.md, “Concurrent zaps under a shared lock”): post-syscall coherence.
//!
//! Contract of `sanitize_stale_after_zap`: called by a zapping syscall just
//! before it returns (today `madvise_dontneed`), with `mm`'s mmap_lock held
//! for read; when it returns, no CPU running `mm` (loaded, not lazy) caches
//! a translation of [start, end) whose frame differs from the current PTE
//! (none counts as different) without a `stale-after-zap` violation having
//! been recorded: the next user access would use a page the syscall already
//! threw away.  Each candidate is re-checked under its PTE table's PTL, so a
//! concurrent fault or folio_mkclean (which change the PTE and the TLBs
//! together under that lock) is not mistaken for a stale entry.
//!
//! Cost: always on; one pass over the TLB of each CPU running `mm`, plus a
//! page-table walk and a PTL per cached entry in the range.

use crate::check::sanitizer::{Violation, ViolationKind};
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::pgtable;
use crate::types::CpuId;

/// Sanitizer, at the return of MADV_DONTNEED (see the module doc).
pub fn sanitize_stale_after_zap(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    let shift = k.cfg.geometry.page_shift;
    for c in 0..k.hw.nr_cpus() {
        let cpu = CpuId(c as u32);
        if !k.arch.cpu_mm(k, cpu).runs(mm.id) {
            continue;
        }
        let candidates: Vec<u64> =
            k.hw.tlb(cpu)
                .leaf_entries()
                .filter(|e| e.asid == mm.id && !e.huge && (e.vpn << shift) >= start && (e.vpn << shift) < end)
                .map(|e| e.vpn << shift)
                .collect();
        for va in candidates {
            let table = pgtable::lookup_table(k, mm, va, Level::Pte);
            let _ptl = table.map(|t| pgtable::ptl(k, t));
            let pte = table.map(|t| pgtable::read(k, t, Level::Pte, va)).unwrap_or(Pte::NONE);
            let Some(e) = k.hw.tlb(cpu).lookup(mm.id, va).copied() else { continue };
            if !pte.present() || pte.pfn() != e.pfn {
                k.san.record(Violation {
                    kind: ViolationKind::StaleAfterZap,
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
