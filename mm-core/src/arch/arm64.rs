//! The arm64 profile: hardware-broadcast TLB invalidation
//! (arch/arm64/include/asm/tlbflush.h).  Moved here from `tlb/mod.rs`.
//!
//! Contract: a flush is TLBI ... IS, which reaches every CPU's TLB through
//! the interconnect: when it returns no CPU can use a translation of the
//! range, and nobody was interrupted — an IRQs-off CPU (a GUP-fast walker)
//! is not waited for beyond the instruction in flight.  That is why arm64
//! needs MMU_GATHER_RCU_TABLE_FREE (or `tlb_remove_table_sync_one`, which
//! still uses IPIs) before a page table may be freed.  Without freed tables
//! only the last level is invalidated (TLBI VALE1IS keeps walk caches).
//!
//! The context switch is the x86 one (`super::x86::switch_mm`: PCID slots,
//! tlb_gen catch-up, lazy TLB), as it has always been here.

use super::{secondary_invalidate, ArchOps, FLUSH_ALL};
use crate::config::{Arch, KernelVersion};
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::pgtable;
use crate::stats::{Stat, TLB_FLUSH_ALL};
use crate::sync::Ordering;
use crate::types::{CpuId, Pfn};

/// The arm64 profile (`Arch::Arm64`).
pub struct Arm64 {
    kernel: KernelVersion,
}

impl Arm64 {
    /// The arm64 profile as of `kernel` (`arch::arch_ops`).
    pub fn new(kernel: KernelVersion) -> Self {
        Arm64 { kernel }
    }
}

impl ArchOps for Arm64 {
    fn arch(&self) -> Arch {
        Arch::Arm64
    }
    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    /// The asm-generic `tlb_flush` (the real arm64 one, which also skips a
    /// fullmm flush without freed tables relying on ASID non-reuse, is not
    /// modelled): `flush_tlb_mm` for fullmm / need_flush_all, else
    /// `flush_tlb_range` on a fake VMA with the gathered VM_HUGETLB, which
    /// invalidates the last level only when no table was freed.
    fn tlb_flush(&self, tlb: &MmuGather<'_>) {
        let (k, mm) = (tlb.kernel(), tlb.mm());
        let cpu = k.this_cpu();
        let (start, end) = tlb.range();
        if tlb.fullmm() || tlb.need_flush_all() {
            k.stats.inc(cpu, Stat::TlbFlushFull);
            self.flush_tlb_mm(k, mm);
        } else if end != 0 {
            let (_, vma_huge, _) = tlb.vma_flags();
            k.stats.inc(cpu, Stat::TlbFlushRanged);
            self.flush_tlb_range(k, mm, start, end, vma_huge, tlb.freed_tables());
        }
    }

    /// The asm-generic one.
    fn tlb_update_vma_flags(&self, tlb: &mut MmuGather<'_>, vma: &Vma) {
        tlb.record_vma_flags(vma);
    }

    /// Not selected.
    fn mmu_gather_merge_vmas(&self) -> bool {
        false
    }

    /// asm-generic's is `true` (every changed PTE is flushed); modelled as:
    /// a permission was removed.
    fn pte_needs_flush(&self, oldpte: Pte, newpte: Pte) -> bool {
        super::pte_permission_removed(oldpte, newpte)
    }

    /// Last level only unless tables were freed.
    fn flush_tlb_mm_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, _stride: u32, freed_tables: bool) {
        arm64_flush_range(k, mm, start, end, !freed_tables);
    }

    /// arm64 `flush_tlb_mm`: TLBI ASIDE1IS.
    fn flush_tlb_mm(&self, k: &Kernel, mm: &MmStruct) {
        arm64_flush_range(k, mm, 0, FLUSH_ALL, false);
    }

    /// `flush_tlb_range`: last level only unless `freed_tables` (the page
    /// size does not change the invalidation).
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, _huge: bool, freed_tables: bool) {
        arm64_flush_range(k, mm, start, end, !freed_tables);
    }

    /// `flush_tlb_page`: TLBI VALE1IS of one page.
    fn flush_tlb_page(&self, k: &Kernel, mm: &MmStruct, addr: u64) {
        let ps = k.cfg.geometry.page_size();
        arm64_flush_range(k, mm, addr & !(ps - 1), (addr & !(ps - 1)) + ps, true);
    }

    /// `flush_pmd_tlb_range`: the range's last level (TLBI VALE1IS).
    fn flush_pmd_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
        arm64_flush_range(k, mm, start, end, true);
    }

    fn switch_mm(&self, k: &Kernel, next: &MmStruct) {
        super::x86::switch_mm(k, next);
    }
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId) {
        super::x86::switch_to_init_mm(k, cpu);
    }
    fn enter_lazy_tlb(&self, k: &Kernel) {
        super::x86::enter_lazy_tlb(k);
    }

    /// No IPI counters: a broadcast TLBI interrupts nobody.
    fn stats(&self) -> &'static [Stat] {
        &[
            Stat::Arm64BroadcastTlbi,
            Stat::TraceLocalMmShootdown,
            Stat::TraceOnTaskSwitch,
            Stat::TlbFlushRanged,
            Stat::TlbFlushFull,
        ]
    }

    /// arch/arm64/mm/fault.c `__ptep_set_access_flags`: the hardware may set
    /// A/D concurrently, so merge with a cmpxchg loop keeping the more
    /// permissive state of both; then `flush_tlb_page` when `dirty` to
    /// invalidate a stale read-only entry (arm64 may cache permission bits).
    fn ptep_set_access_flags(&self, k: &Kernel, mm: &MmStruct, table: Pfn, va: u64, entry: Pte, dirty: bool) -> bool {
        let slot = pgtable::slot(k, table, Level::Pte, va);
        let old = Pte(slot.load(Ordering::SeqCst));
        if old == entry {
            return false;
        }
        let keep = Pte::ACCESSED | Pte::DIRTY | Pte::RW;
        let mut cur = old;
        loop {
            let new = Pte(cur.0 | (entry.0 & keep));
            match slot.compare_exchange(cur.0, new.0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => cur = Pte(now),
            }
        }
        // Invalidate a stale read-only entry.
        if dirty {
            self.flush_tlb_page(k, mm, va);
        }
        true
    }

    /// Empty on arm64.
    fn flush_tlb_fix_spurious_fault(&self, _k: &Kernel, _mm: &MmStruct, _va: u64) {}
}

/// arm64 `__flush_tlb_range` / `flush_tlb_mm`: TLBI ... IS reaches every
/// CPU's TLB through the interconnect.  Modelled honestly: take each CPU's
/// TLB lock and invalidate; nobody is interrupted and IRQs-off CPUs are not
/// waited for beyond the instruction in flight.  `last_level` (TLBI VALE1IS)
/// keeps walk-cache entries.
#[doc(alias = "__flush_tlb_range")]
pub fn arm64_flush_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, last_level: bool) {
    let me = k.this_cpu();
    k.stats.inc(me, Stat::Arm64BroadcastTlbi);
    mm.inc_mm_tlb_gen();
    for c in 0..k.hw.nr_cpus() {
        let mut tlb = k.hw.tlb(CpuId(c as u32));
        if end == FLUSH_ALL {
            tlb.flush_asid(mm.id);
        } else if last_level {
            tlb.flush_range_leaf(mm.id, start, end);
        } else {
            tlb.flush_range(mm.id, start, end);
        }
    }
    let pages = if end == FLUSH_ALL { TLB_FLUSH_ALL } else { (end - start) >> k.cfg.geometry.page_shift };
    k.stats.trace_tlb_flush(me, Stat::TraceLocalMmShootdown, pages);
    secondary_invalidate(k, mm, start, end);
}
