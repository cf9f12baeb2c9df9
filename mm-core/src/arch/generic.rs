//! The generic profile: CONFIG_MMU_GATHER_NO_RANGE architectures (alpha,
//! m68k, microblaze, nios2, openrisc), which lack an efficient
//! `flush_tlb_range`.  Moved here from `tlb/mod.rs`.
//!
//! Contract: every flush — of a range, a page or the whole mm — is
//! `flush_tlb_mm`: an IPI to every other CPU of mm_cpumask plus this one,
//! each flushing the mm's whole ASID, waited for.  Lazy CPUs are not
//! special: whoever is in the mask is interrupted.
//!
//! The context switch is m68k's (Motorola MMU, 68040/060: `pflushan` and a
//! new root pointer on every switch to another mm; no ASIDs).  m68k is
//! uniprocessor: the IPI to mm_cpumask in `flush_tlb_mm` is the model's
//! SMP extension (alpha, the SMP NO_RANGE arch, IPIs every online CPU and
//! lets ASNs defer the rest).

use super::{secondary_invalidate, ActiveMm, ArchOps, CpuMm, FLUSH_ALL};
use crate::config::{Arch, Fix, KernelVersion};
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::Ordering;
use crate::types::{CpuId, Pfn};

/// The MMU_GATHER_NO_RANGE profile (`Arch::GenericNoRange`).
pub struct GenericNoRange {
    kernel: KernelVersion,
    /// `current->active_mm` per CPU (and whether a kernel thread borrows it).
    active: Box<[ActiveMm]>,
}

impl GenericNoRange {
    /// The MMU_GATHER_NO_RANGE profile as of `kernel` on `nr_cpus` CPUs
    /// (`arch::arch_ops`).
    pub fn new(kernel: KernelVersion, nr_cpus: usize) -> Self {
        GenericNoRange { kernel, active: ActiveMm::per_cpu(nr_cpus) }
    }

    /// m68k `switch_mm_0460` (`CONFIG_MMU_MOTOROLA`, v6.12): `pflushan`
    /// drops every user (non-global) ATC entry of this CPU, then the new
    /// root pointer is loaded.  `next` is `None` for init_mm.
    fn switch_and_flush(&self, k: &Kernel, cpu: CpuId, next: Option<&MmStruct>) {
        k.hw.tlb(cpu).flush_all();
        k.stats.inc(cpu, Stat::NoRangeSwitchFlush);
        match next {
            Some(mm) => {
                mm.cpumask.set(cpu);
                k.hw.load_cr3(cpu, Some(mm.pgd), mm.id);
                self.active[cpu.idx()].set(mm.id);
            }
            None => {
                k.hw.load_cr3(cpu, None, 0);
                self.active[cpu.idx()].set(0);
            }
        }
    }
}

impl ArchOps for GenericNoRange {
    fn arch(&self) -> Arch {
        Arch::GenericNoRange
    }
    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    /// The asm-generic MMU_GATHER_NO_RANGE `tlb_flush`: `flush_tlb_mm` for
    /// any non-empty range, fullmm or not.
    fn tlb_flush(&self, tlb: &MmuGather<'_>) {
        let (k, mm) = (tlb.kernel(), tlb.mm());
        if tlb.range().1 != 0 {
            k.stats.inc(k.this_cpu(), Stat::TlbFlushFull);
            self.flush_tlb_mm(k, mm);
        }
    }

    /// v6.12: the asm-generic body, as on every arch (7fb5e5083190 removed
    /// the MMU_GATHER_NO_RANGE stub, so `vma_pfn` is tracked here too).
    /// `Fix::NoRangeVmaPfn` off: the stub — nothing recorded, as NO_RANGE
    /// kernels up to v5.18 had it.
    fn tlb_update_vma_flags(&self, tlb: &mut MmuGather<'_>, vma: &Vma) {
        if tlb.kernel().cfg.fixes.on(Fix::NoRangeVmaPfn) {
            tlb.record_vma_flags(vma);
        }
    }

    /// Selected: `config MMU_GATHER_NO_RANGE` selects MMU_GATHER_MERGE_VMAS
    /// (1e9fdf21a433, v6.0; before it NO_RANGE's `tlb_end_vma` was empty,
    /// the same thing), so `tlb_end_vma` flushes only a `vma_pfn` VMA.
    fn mmu_gather_merge_vmas(&self) -> bool {
        true
    }

    /// The asm-generic default (include/asm-generic/tlb.h, v6.12; no
    /// override here): every PTE `change_pte_range` rewrote is flushed,
    /// whatever changed — upgrades and unchanged protections too.
    fn pte_needs_flush(&self, _oldpte: Pte, _newpte: Pte) -> bool {
        true
    }

    fn flush_tlb_mm(&self, k: &Kernel, mm: &MmStruct) {
        generic_flush_tlb_mm(k, mm);
    }
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, _start: u64, _end: u64, _huge: bool) {
        generic_flush_tlb_mm(k, mm);
    }
    fn flush_tlb_page(&self, k: &Kernel, mm: &MmStruct, _addr: u64) {
        generic_flush_tlb_mm(k, mm);
    }

    fn flush_pmd_tlb_range(&self, k: &Kernel, mm: &MmStruct, _start: u64, _end: u64) {
        generic_flush_tlb_mm(k, mm);
    }

    /// m68k `switch_mm` (arch/m68k/include/asm/mmu_context.h, v6.12): for
    /// another mm flush this CPU's user TLB and load the root pointer; for
    /// the same mm nothing.  No ASIDs, no lazy-TLB state: the TLB only ever
    /// holds the running (or lazily kept) mm's entries.  This CPU joins
    /// `mm_cpumask(next)`, the target set of `generic_flush_tlb_mm`; a bit
    /// left behind by a CPU that switched away only costs an IPI.
    fn switch_mm(&self, k: &Kernel, next: &crate::sync::Arc<MmStruct>) {
        let cpu = k.this_cpu();
        let irq = k.local_irq_save();
        if self.active[cpu.idx()].get().mm != next.id {
            self.switch_and_flush(k, cpu, Some(next));
        } else {
            self.active[cpu.idx()].set(next.id);
        }
        drop(irq);
    }
    /// `switch_mm(.., &init_mm, ..)`: the same flush, no user tables.
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId) {
        if self.active[cpu.idx()].get().mm != 0 {
            self.switch_and_flush(k, cpu, None);
        }
    }
    /// asm-generic `enter_lazy_tlb`: nothing; the mm stays loaded.
    fn enter_lazy_tlb(&self, k: &Kernel) {
        self.active[k.this_cpu().idx()].set_lazy();
    }
    /// `active_mm` of `cpu`, and whether a kernel thread borrows it.
    fn cpu_mm(&self, _k: &Kernel, cpu: CpuId) -> CpuMm {
        self.active[cpu.idx()].get()
    }

    /// Every `tlb_flush` is a full one; no x86 vmstat, interrupt row or
    /// trace reason.
    fn stats(&self) -> &'static [Stat] {
        &[
            Stat::NoRangeFlushTlbMm,
            Stat::NoRangeCpuFlush,
            Stat::NoRangeSwitchFlush,
            Stat::TlbIpiSent,
            Stat::TlbFlushFull,
        ]
    }

    /// mm/pgtable-generic.c: write the PTE if it changed, then
    /// `flush_tlb_fix_spurious_fault`.
    fn ptep_set_access_flags(&self, k: &Kernel, mm: &MmStruct, table: Pfn, va: u64, entry: Pte, _dirty: bool) -> bool {
        let old = Pte(pgtable::slot(k, table, Level::Pte, va).load(Ordering::SeqCst));
        if old == entry {
            return false;
        }
        pgtable::write(k, table, Level::Pte, va, entry);
        self.flush_tlb_fix_spurious_fault(k, mm, va);
        true
    }

    /// The generic one: `flush_tlb_page`.
    fn flush_tlb_fix_spurious_fault(&self, k: &Kernel, mm: &MmStruct, va: u64) {
        self.flush_tlb_page(k, mm, va);
    }
}

/// MMU_GATHER_NO_RANGE architectures: flush_tlb_mm by IPI to every CPU of
/// mm_cpumask (and this CPU), whole address space, waited for.  Counted
/// with the profile's own counters: these arches keep no NR_TLB_* vmstat,
/// no /proc/interrupts TLB row and no tlb:tlb_flush trace (all x86); the
/// IPIs are the CAL row's function calls.
#[doc(alias = "flush_tlb_mm")]
pub fn generic_flush_tlb_mm(k: &Kernel, mm: &MmStruct) {
    let me = k.this_cpu();
    k.stats.inc(me, Stat::NoRangeFlushTlbMm);
    let mask = mm.cpumask.snapshot();
    let mut others = mask;
    others.clear(me);
    // mm_cpumask only ever holds CPUs that ran the mm (< nr_cpus).
    k.stats.add(me, Stat::TlbIpiSent, others.iter().count() as u64);
    let func = |cpu: CpuId| {
        k.hw.tlb(cpu).flush_asid(mm.id);
        k.stats.inc(cpu, Stat::NoRangeCpuFlush);
    };
    crate::smp::on_each_cpu_mask(&*k.smp, &mask, &func);
    secondary_invalidate(k, mm, 0, FLUSH_ALL);
}
