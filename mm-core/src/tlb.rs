//! The kernel's TLB flush and context-switch API as generic mm code calls it
//! (asm/tlbflush.h, asm/mmu_context.h).  Each function hands over to the
//! arch profile the `Kernel` was built with (`Kernel::arch`); the arch code
//! itself moved to `arch/`: `arch/x86.rs` (flush_tlb_mm_range,
//! native_flush_tlb_multi, should_flush_tlb, flush_tlb_func, switch_mm,
//! cpu_tlbstate), `arch/arm64.rs` (broadcast TLBI), `arch/generic.rs`
//! (MMU_GATHER_NO_RANGE flush_tlb_mm).
//!
//! Contract: when a flush (`flush_tlb_range`, `flush_tlb_mm`, x86's `flush_tlb_mm_range`) returns, no CPU
//! that may run the mm can use a translation of the range any more — with
//! one arch-specific exception that is the point of the x86 lazy-TLB rule:
//! a lazy CPU (running a kernel thread with the mm still loaded) is skipped
//! unless page tables were freed, and catches up through `tlb_gen` when it
//! switches back.  `freed_tables` also drops paging-structure caches.
//!
//! - x86: tlb_gen, 33-page ceiling, IPIs to mm_cpumask, lazy CPUs skipped
//!   unless freed_tables, lazy CPUs switch to init_mm; CPUs that left the mm
//!   leave mm_cpumask at the switch (v6.12) or at a flush that finds them
//!   gone (v6.18, with the once-a-second trim).
//! - arm64: broadcast TLBI — every CPU's TLB is invalidated directly (under
//!   its TLB lock), without an interrupt and without waiting for IRQs-off
//!   CPUs.  `flush_tlb_range`, `flush_pmd_tlb_range` and the hugetlb range
//!   flush invalidate walk caches too; only `flush_tlb_page` and the
//!   gather's `tlb_flush` without freed tables are last-level only.
//! - generic (MMU_GATHER_NO_RANGE): every flush is a whole-mm IPI flush.

pub use crate::arch::FLUSH_ALL;
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::stats::{Stat, TLB_FLUSH_ALL};
use crate::types::CpuId;

/// `context_switch` to a task of `next` on this CPU: take an `mm_count`
/// reference for `active_mm`, the arch's `switch_mm(prev, next, tsk)`, then
/// drop the previous active mm's reference (`finish_task_switch` →
/// `mmdrop_lazy_tlb`; the last one frees it, `__mmdrop`).
pub fn switch_mm(k: &Kernel, next: &crate::sync::Arc<MmStruct>) {
    let cpu = k.this_cpu();
    let prev = {
        let mut slot = k.active_mm[cpu.idx()].lock();
        if slot.as_ref().is_some_and(|p| crate::sync::Arc::ptr_eq(p, next)) {
            None
        } else {
            next.mm_count.mmgrab();
            Some(slot.replace(next.clone()))
        }
    };
    k.arch.switch_mm(k, next);
    if let Some(Some(prev)) = prev {
        crate::ops::mmdrop(k, &prev);
    }
}

/// What this CPU's next switch to a user task does to the mm it holds
/// lazily (`finish_task_switch` → `mmdrop_lazy_tlb`), without a next task:
/// switch to init_mm and drop the `active_mm` reference.  A run's teardown
/// calls it on every CPU, so the last exited mm's root table is freed (an
/// idle CPU in the kernel keeps it until it next runs a user task).
pub fn drop_lazy_mm(k: &Kernel) {
    let cpu = k.this_cpu();
    let Some(prev) = k.active_mm[cpu.idx()].lock().take() else {
        return;
    };
    let irq = k.local_irq_save();
    if k.arch.cpu_mm(k, cpu).mm == prev.id {
        switch_to_init_mm(k, cpu);
    }
    drop(irq);
    crate::ops::mmdrop(k, &prev);
}

/// `switch_mm_irqs_off(NULL, &init_mm)`: `cpu` leaves any user mm.
#[inline]
pub(crate) fn switch_to_init_mm(k: &Kernel, cpu: CpuId) {
    k.arch.switch_to_init_mm(k, cpu);
}

/// `enter_lazy_tlb`: this CPU runs a kernel thread / idles, keeping the mm
/// loaded.
#[inline]
pub fn enter_lazy_tlb(k: &Kernel) {
    k.arch.enter_lazy_tlb(k);
}

/// `flush_tlb_mm(mm)`: the whole address space (x86 passes freed_tables).
#[inline]
pub(crate) fn flush_tlb_mm(k: &Kernel, mm: &MmStruct) {
    k.arch.flush_tlb_mm(k, mm);
}

/// `flush_tlb_range(vma, start, end)` (x86: stride from the VMA's page size,
/// always freed_tables: 3ef938c35035).
#[inline]
pub(crate) fn flush_tlb_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool) {
    k.arch.flush_tlb_range(k, mm, start, end, huge);
}

/// `flush_tlb_page(vma, addr)`
#[inline]
pub(crate) fn flush_tlb_page(k: &Kernel, mm: &MmStruct, addr: u64) {
    k.arch.flush_tlb_page(k, mm, addr);
}

/// `flush_pmd_tlb_range(vma, addr, end)`: a PMD leaf was changed.
#[inline]
pub(crate) fn flush_pmd_tlb_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    k.arch.flush_pmd_tlb_range(k, mm, start, end);
}

/// `flush_tlb_all`-style whole-TLB flush of one CPU (reason TLB_LOCAL_SHOOTDOWN).
pub fn flush_tlb_local_all(k: &Kernel, cpu: CpuId) {
    k.hw.tlb(cpu).flush_all();
    k.stats.inc(cpu, Stat::NrTlbLocalFlushAll);
    k.stats.trace_tlb_flush(cpu, Stat::TraceLocalShootdown, TLB_FLUSH_ALL);
}
