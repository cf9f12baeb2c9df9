//! The arch profiles, one room each: what `arch/<name>/` of the kernel (its
//! mm/tlb.c, asm/tlb.h, asm/tlbflush.h, asm/mmu_context.h, asm/pgtable.h)
//! provides to the generic mm code, behind one seam.
//!
//! - `x86.rs`: arch/x86/mm/tlb.c (flush_tlb_mm_range, native_flush_tlb_multi,
//!   should_flush_tlb, flush_tlb_func; switch_mm_irqs_off, choose_new_asid,
//!   cpu_tlbstate, lazy TLB), x86's own `tlb_flush`.
//! - `arm64.rs`: hardware-broadcast TLBI (`__flush_tlb_range`,
//!   `__flush_tlb_range_op`, MAX_DVM_OPS / MAX_TLBI_RANGE_PAGES), arm64's
//!   own `tlb_flush` (asm/tlb.h), arm64's `ptep_set_access_flags`.
//! - `generic.rs`: CONFIG_MMU_GATHER_NO_RANGE (alpha, m68k, ...): every flush
//!   is `flush_tlb_mm`, the generic `ptep_set_access_flags`.
//!
//! Contract: the arch is chosen once, when the `Kernel` is built
//! (`arch_ops(&cfg)` → `Kernel::arch`); nothing outside this
//! folder decides policy by looking at `KernelConfig::arch` (a test scans the
//! sources for it).  Generic code calls the kernel's names — `tlb::flush_tlb_*`,
//! `tlb::switch_mm`, `pgtable::ptep_set_access_flags`, `MmuGather::tlb_flush`
//! — and those hand over to `Kernel::arch`: one trait-object call on a flush,
//! a context switch or a fault, never on a user access that hits the TLB.
//! Each profile also carries the kernel release it follows
//! (`KernelVersion`: v6.12 or v6.18; only x86 tells them apart).

pub mod arm64;
pub mod generic;
pub mod x86;

use crate::config::{Arch, Fix, KernelConfig, KernelVersion};
use crate::gather::MmuGather;
use crate::hw::pte::Pte;
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::stats::Stat;
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};
use crate::types::{CpuId, Pfn};

/// `TLB_FLUSH_ALL` as an end address.
pub const FLUSH_ALL: u64 = u64::MAX;

/// What an arch profile provides.  Every method is the kernel function of the
/// same name (or says which one it is); `k` is the kernel that owns `self`.
pub trait ArchOps: Send + Sync {
    /// The profile (`KernelConfig::arch`).
    fn arch(&self) -> Arch;
    /// The kernel release the profile follows (`KernelConfig::kernel`).
    fn kernel(&self) -> KernelVersion;

    // ---- asm/tlb.h: the mmu_gather's arch hooks ----------------------------

    /// `tlb_flush(tlb)`: invalidate what the gather recorded (its range,
    /// levels, `freed_tables`; the whole mm for fullmm / need_flush_all), and
    /// count it (`tlb_flush_ranged` / `tlb_flush_full`).
    fn tlb_flush(&self, tlb: &MmuGather<'_>);
    /// `tlb_update_vma_flags(tlb, vma)`, from `tlb_start_vma` and
    /// `tlb_gather_mmu_vma`.
    fn tlb_update_vma_flags(&self, tlb: &mut MmuGather<'_>, vma: &Vma);
    /// CONFIG_MMU_GATHER_MERGE_VMAS (selected by MMU_GATHER_NO_RANGE):
    /// `tlb_end_vma` does not flush unless the gather's `vma_pfn` is set
    /// (a VM_PFNMAP / VM_MIXEDMAP VMA).
    fn mmu_gather_merge_vmas(&self) -> bool;
    /// `pte_needs_flush(oldpte, newpte)`: must a PTE changed in place by
    /// mprotect (`change_pte_range`) be flushed?
    fn pte_needs_flush(&self, oldpte: Pte, newpte: Pte) -> bool;

    // ---- asm/tlbflush.h ---------------------------------------------------

    /// `flush_tlb_mm(mm)`: the whole address space.
    fn flush_tlb_mm(&self, k: &Kernel, mm: &MmStruct);
    /// `flush_tlb_range(vma, start, end)`: `huge` is the VMA's VM_HUGETLB.
    /// Callers use it also to zap PMDs that point at tables
    /// (`pmdp_collapse_flush`, hugetlb unsharing): x86 passes freed_tables
    /// (3ef938c35035), arm64 drops walk caches, NO_RANGE flushes the mm.
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool);
    /// `flush_tlb_page(vma, addr)`.
    fn flush_tlb_page(&self, k: &Kernel, mm: &MmStruct, addr: u64);
    /// `flush_pmd_tlb_range(vma, addr, end)`: a PMD leaf (THP) was changed
    /// (`pmdp_invalidate`).
    fn flush_pmd_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64);

    // ---- asm/mmu_context.h ------------------------------------------------

    /// `switch_mm(prev, next, tsk)`: run `next` on this CPU.
    fn switch_mm(&self, k: &Kernel, next: &Arc<MmStruct>);
    /// `switch_mm_irqs_off(NULL, &init_mm)` (x86 `leave_mm`): `cpu` stops
    /// using any user mm.
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId);
    /// `enter_lazy_tlb`: this CPU runs a kernel thread / idles, keeping the
    /// mm loaded.
    fn enter_lazy_tlb(&self, k: &Kernel);
    /// The mm `cpu` has loaded and whether it uses it lazily — x86
    /// `cpu_tlbstate.loaded_mm` / `is_lazy`, elsewhere `active_mm` and
    /// "running a kernel thread or idle".  Generic code (the sanitizer's
    /// free-time check, MADV_DONTNEED's return check, `__mmdrop`, GUP-fast's
    /// own assertion) asks this instead of reading an arch's per-CPU state.
    fn cpu_mm(&self, k: &Kernel, cpu: CpuId) -> CpuMm;

    // ---- what can be seen of it -------------------------------------------

    /// The counters and tlb_flush trace reasons (`Stat`) this profile's
    /// flushes, context switches and `tlb_flush` bump: on this arch, no other
    /// counter of a TLB flush moves.
    fn stats(&self) -> &'static [Stat];

    // ---- asm/pgtable.h: permission upgrades (pgtable/access_flags.rs) ------

    /// `ptep_set_access_flags(vma, address, ptep, entry, dirty)`: install
    /// `entry` (the same page, same or more permissions) in `table` at `va`;
    /// the caller holds the PTE table's PTL.  Returns true if the PTE changed.
    fn ptep_set_access_flags(&self, k: &Kernel, mm: &MmStruct, table: Pfn, va: u64, entry: Pte, dirty: bool) -> bool;
    /// `flush_tlb_fix_spurious_fault(vma, address, ptep)`: a write fault found
    /// the PTE already permitting the write.
    fn flush_tlb_fix_spurious_fault(&self, k: &Kernel, mm: &MmStruct, va: u64);
}

/// The arch object of `cfg.arch` following `cfg.kernel` (and, for arm64, its
/// CPU features) on `cfg.nr_cpus` CPUs: the one place that maps
/// `KernelConfig::arch` to code (`Kernel::new` calls it).
pub fn arch_ops(cfg: &KernelConfig) -> Box<dyn ArchOps> {
    let kernel = cfg.kernel;
    match cfg.arch {
        Arch::X86 => Box::new(x86::X86::new(kernel)),
        Arch::Arm64 => Box::new(arm64::Arm64::new(kernel, cfg.arm64, cfg.nr_cpus)),
        Arch::GenericNoRange => Box::new(generic::GenericNoRange::new(kernel, cfg.nr_cpus)),
    }
}

/// The counters the profile of `cfg` moves (`ArchOps::stats`), for reports
/// that show each arch's own.
pub fn arch_counters(cfg: &KernelConfig) -> &'static [Stat] {
    arch_ops(cfg).stats()
}

/// The counters a run of `cfg` keeps: every `Stat` but those that only
/// other profiles move (x86's vmstat NR_TLB_*, irq_tlb_count and tlb_flush
/// trace reasons are not counters an arm64 kernel has, at 0 or otherwise).
pub fn counters_kept(cfg: &KernelConfig) -> Vec<Stat> {
    let own = arch_counters(cfg);
    let others: Vec<&'static [Stat]> = Arch::ALL
        .into_iter()
        .filter(|a| *a != cfg.arch)
        .map(|arch| arch_counters(&KernelConfig { arch, ..cfg.clone() }))
        .collect();
    Stat::ALL.iter().copied().filter(|s| own.contains(s) || !others.iter().any(|o| o.contains(s))).collect()
}

/// What a CPU runs, as its arch keeps it (`ArchOps::cpu_mm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMm {
    /// Id of the loaded (active) mm; 0 = init_mm (no user mm).
    pub mm: u64,
    /// The CPU runs a kernel thread or idles with `mm` still loaded: no
    /// user access of `mm` can happen there until it switches back.
    pub lazy: bool,
}

impl CpuMm {
    /// `cpu` runs user code of `mm` (loaded and not lazy): it may use any
    /// translation of `mm` it caches.
    pub fn runs(self, mm: u64) -> bool {
        self.mm == mm && mm != 0 && !self.lazy
    }
}

/// `current->active_mm` per CPU and whether it is borrowed by a kernel
/// thread (lazy), for the profiles without x86's `cpu_tlbstate`.
pub(crate) struct ActiveMm {
    mm: AtomicU64,
    lazy: AtomicBool,
}

impl ActiveMm {
    pub(crate) fn per_cpu(nr_cpus: usize) -> Box<[ActiveMm]> {
        (0..nr_cpus).map(|_| ActiveMm { mm: AtomicU64::new(0), lazy: AtomicBool::new(false) }).collect()
    }
    pub(crate) fn get(&self) -> CpuMm {
        CpuMm { mm: self.mm.load(Ordering::SeqCst), lazy: self.lazy.load(Ordering::SeqCst) }
    }
    /// `cpu` now runs a task of `mm` (0: init_mm).
    pub(crate) fn set(&self, mm: u64) {
        self.mm.store(mm, Ordering::SeqCst);
        self.lazy.store(false, Ordering::SeqCst);
    }
    /// `enter_lazy_tlb`: the mm stays, unused.
    pub(crate) fn set_lazy(&self) {
        if self.mm.load(Ordering::SeqCst) != 0 {
            self.lazy.store(true, Ordering::SeqCst);
        }
    }
}

/// `mmu_notifier_arch_invalidate_secondary_tlbs(mm, start, end)`: called from
/// inside every arch flush (6bbd42e2df8f).  With `Fix::SecondaryTlbOnFlush`
/// off the arch flush reaches no secondary TLB (pre-6.6: the generic
/// wrappers in `notifier.rs` did it instead).
pub fn secondary_invalidate(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    if k.cfg.fixes.on(Fix::SecondaryTlbOnFlush) {
        crate::notifier::mmu_notifier_arch_invalidate_secondary_tlbs(k, mm, start, end);
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
