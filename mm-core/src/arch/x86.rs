//! The x86 profile: arch/x86/mm/tlb.c (flush_tlb_mm_range,
//! native_flush_tlb_multi, should_flush_tlb, flush_tlb_func;
//! switch_mm_irqs_off, choose_new_asid, enter_lazy_tlb) and the per-CPU
//! `cpu_tlbstate` they share.  Moved here from `tlb/x86.rs` and `tlb/mod.rs`.
//!
//! Contract: when `flush_tlb_mm_range` returns, no CPU that may run the mm
//! can use a translation of the range any more — with the exception that is
//! the point of the lazy-TLB rule: a lazy CPU (running a kernel thread with
//! the mm still loaded) is skipped unless page tables were freed, and
//! catches up through `tlb_gen` when it switches back (`switch_mm`).  A
//! lazy CPU that does get the IPI leaves the mm (switches to init_mm); a CPU
//! that left the mm since it was set in mm_cpumask is trimmed from it.
//! `freed_tables` also drops paging-structure caches.  Ranges above the
//! 33-page `tlb_single_page_flush_ceiling` become full flushes.
//!
//! The context-switch half (`switch_mm`, `switch_to_init_mm`,
//! `enter_lazy_tlb`: PCID slots tagged by mm, tlb_gen catch-up) is x86's
//! alone; `cpu_tlbstate` lives in `Kernel::cpus`.

use super::{secondary_invalidate, ArchOps, CpuMm, FLUSH_ALL};
use crate::config::{Arch, Fix, KernelVersion};
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::pgtable;
use crate::stats::{Stat, TLB_FLUSH_ALL};
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::types::{CpuId, CpuMask, Pfn};

/// `TLB_NR_DYN_ASIDS`: address spaces whose translations a CPU keeps
/// across switches (x86 PCID slots).
pub const TLB_NR_DYN_ASIDS: usize = 6;

/// x86 `cpu_tlbstate` + `cpu_tlbstate_shared` for one CPU (`Kernel::cpus`).
#[derive(Default)]
pub struct CpuTlbState {
    /// Id of the loaded mm (0 = init_mm).
    pub loaded_mm: AtomicU64,
    /// `cpu_tlbstate_shared.is_lazy`
    pub is_lazy: AtomicBool,
    /// `ctxs[loaded_mm_asid].tlb_gen`: the loaded mm's generation this CPU
    /// has caught up to.
    pub tlb_gen: AtomicU64,
    /// `ctxs[]`: (ctx_id = mm id, tlb_gen) of recently run mms, whose
    /// tagged TLB entries survive a switch away and back.
    ctx_id: [AtomicU64; TLB_NR_DYN_ASIDS],
    ctx_gen: [AtomicU64; TLB_NR_DYN_ASIDS],
    next_asid: AtomicU64,
}

impl CpuTlbState {
    /// `choose_new_asid`: the slot remembering `mm` and whether its TLB
    /// entries must be flushed (unknown mm, or its tlb_gen moved on).
    fn choose_new_asid(&self, mm: u64, next_gen: u64) -> (usize, bool) {
        if let Some(i) = (0..TLB_NR_DYN_ASIDS).find(|i| self.ctx_id[*i].load(Ordering::SeqCst) == mm) {
            return (i, self.ctx_gen[i].load(Ordering::SeqCst) < next_gen);
        }
        let i = (self.next_asid.fetch_add(1, Ordering::SeqCst) as usize) % TLB_NR_DYN_ASIDS;
        self.ctx_id[i].store(mm, Ordering::SeqCst);
        (i, true)
    }

    /// Remember the generation the loaded mm's entries are valid for.
    fn save_ctx(&self, mm: u64) {
        if let Some(i) = (0..TLB_NR_DYN_ASIDS).find(|i| self.ctx_id[*i].load(Ordering::SeqCst) == mm) {
            self.ctx_gen[i].store(self.tlb_gen.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }
}

/// `struct flush_tlb_info`
#[derive(Clone, Copy, Debug)]
pub struct FlushTlbInfo {
    /// mm id (0 = a flush of everything, `flush_tlb_all`).
    pub mm: u64,
    /// First byte of the range to flush.
    pub start: u64,
    /// One past the last byte, or `FLUSH_ALL` (a full flush: also set when
    /// the range exceeds `tlb_single_page_flush_ceiling` strides).
    pub end: u64,
    /// The `mm->context.tlb_gen` this flush brings a CPU up to.
    pub new_tlb_gen: u64,
    /// The CPU that asked for the flush (`flush_tlb_func` tells local from
    /// remote by it).
    pub initiating_cpu: CpuId,
    /// log2 of the bytes between INVLPGs (PAGE_SHIFT, or PMD_SHIFT for a
    /// huge-page range).
    pub stride_shift: u32,
    /// Page tables were freed: lazy CPUs must be reached too.
    pub freed_tables: bool,
}

/// The x86 profile (`Arch::X86`).
pub struct X86 {
    kernel: KernelVersion,
}

impl X86 {
    /// The x86 profile as of `kernel` (`arch::arch_ops`).
    pub fn new(kernel: KernelVersion) -> Self {
        X86 { kernel }
    }
}

impl ArchOps for X86 {
    fn arch(&self) -> Arch {
        Arch::X86
    }
    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    /// arch/x86/include/asm/tlb.h `tlb_flush`: `flush_tlb_mm_range` of the
    /// gathered range at the unmap stride, or of everything for fullmm /
    /// need_flush_all.
    fn tlb_flush(&self, tlb: &MmuGather<'_>) {
        let (k, mm) = (tlb.kernel(), tlb.mm());
        let cpu = k.this_cpu();
        let whole = tlb.fullmm() || tlb.need_flush_all();
        let (start, end) = if whole { (0, FLUSH_ALL) } else { tlb.range() };
        k.stats.inc(cpu, if whole { Stat::TlbFlushFull } else { Stat::TlbFlushRanged });
        flush_tlb_mm_range(k, mm, start, end, tlb.tlb_get_unmap_shift(), tlb.freed_tables());
    }

    /// The asm-generic one.
    fn tlb_update_vma_flags(&self, tlb: &mut MmuGather<'_>, vma: &Vma) {
        tlb.record_vma_flags(vma);
    }

    /// Not selected.
    fn mmu_gather_merge_vmas(&self) -> bool {
        false
    }

    /// x86's own `pte_needs_flush` (arch/x86/include/asm/tlbflush.h, read in
    /// a v6.6..v6.12-era copy; unchanged in v6.12): a non-present old entry
    /// never needs a flush, a changed pfn always does, and otherwise the
    /// flags decide (`pte_flags_need_flush` with `ignore_access`): so an
    /// upgrade RO → RW flushes as well as RW → RO.
    fn pte_needs_flush(&self, oldpte: Pte, newpte: Pte) -> bool {
        /// `pte_flags_need_flush(oldflags, newflags, ignore_access)`
        /// (tlbflush.h, v6.12): which flag changes of an entry that stays
        /// present must be flushed.
        /// - Flush when cleared, not when set: `_PAGE_DIRTY`,
        ///   `_PAGE_PRESENT`, `_PAGE_ACCESSED` (setting them never makes a
        ///   cached entry wrong: the hardware sets A/D itself, non-present
        ///   entries are not cached); `_PAGE_ACCESSED` is ignored altogether
        ///   with `ignore_access` (see `ptep_clear_flush_young`).
        /// - Flush on any change: `_PAGE_RW`, `_PAGE_USER`, `_PAGE_PSE` (of
        ///   the modelled bits; the kernel's list also has PWT, PCD, GLOBAL,
        ///   PAT, PAT_LARGE, PKEY0..3 and NX, which model entries never carry).
        /// - Software bits (`_PAGE_SOFTW1..4`, `_PAGE_SAVED_DIRTY`) never
        ///   flush; the model has none.
        /// - Any other changed bit flushes (the CONFIG_DEBUG_VM branch, which
        ///   also WARNs once).
        fn pte_flags_need_flush(oldflags: u64, newflags: u64, ignore_access: bool) -> bool {
            const FLUSH_ON_CLEAR: u64 = Pte::DIRTY | Pte::PRESENT | Pte::ACCESSED;
            const FLUSH_ON_CHANGE: u64 = Pte::RW | Pte::USER | Pte::HUGE;
            let mut diff = oldflags ^ newflags;
            if ignore_access {
                diff &= !Pte::ACCESSED;
            }
            if diff & oldflags & FLUSH_ON_CLEAR != 0 || diff & FLUSH_ON_CHANGE != 0 {
                return true;
            }
            diff & !(FLUSH_ON_CLEAR | FLUSH_ON_CHANGE) != 0
        }
        if !oldpte.present() {
            return false;
        }
        if oldpte.pfn() != newpte.pfn() {
            return true;
        }
        pte_flags_need_flush(oldpte.flags(), newpte.flags(), true)
    }

    fn flush_tlb_mm_range(
        &self,
        k: &Kernel,
        mm: &MmStruct,
        start: u64,
        end: u64,
        stride_shift: u32,
        freed_tables: bool,
    ) {
        flush_tlb_mm_range(k, mm, start, end, stride_shift, freed_tables);
    }

    /// x86 `flush_tlb_mm`: `flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, 0UL, true)`.
    fn flush_tlb_mm(&self, k: &Kernel, mm: &MmStruct) {
        flush_tlb_mm_range(k, mm, 0, FLUSH_ALL, k.cfg.geometry.page_shift, true);
    }

    /// x86 `flush_tlb_range`: the stride from the VMA's page size.
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool, freed_tables: bool) {
        let g = k.cfg.geometry;
        let stride = if huge { g.level_shift(crate::hw::pte::Level::Pmd) } else { g.page_shift };
        flush_tlb_mm_range(k, mm, start, end, stride, freed_tables);
    }

    /// x86 `flush_tlb_page`: `flush_tlb_range` of one page.
    fn flush_tlb_page(&self, k: &Kernel, mm: &MmStruct, addr: u64) {
        let ps = k.cfg.geometry.page_size();
        self.flush_tlb_range(k, mm, addr & !(ps - 1), (addr & !(ps - 1)) + ps, false, false);
    }

    /// x86 `flush_pmd_tlb_range`: `flush_tlb_mm_range(mm, addr, end,
    /// PMD_SHIFT, false)`.
    fn flush_pmd_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
        flush_tlb_mm_range(k, mm, start, end, k.cfg.geometry.level_shift(Level::Pmd), false);
    }

    fn switch_mm(&self, k: &Kernel, next: &MmStruct) {
        switch_mm(k, next);
    }
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId) {
        switch_to_init_mm(k, cpu);
    }
    fn enter_lazy_tlb(&self, k: &Kernel) {
        enter_lazy_tlb(k);
    }
    /// `cpu_tlbstate.loaded_mm` and `cpu_tlbstate_shared.is_lazy`.
    fn cpu_mm(&self, k: &Kernel, cpu: CpuId) -> CpuMm {
        let st = &k.cpus[cpu.idx()];
        CpuMm { mm: st.loaded_mm.load(Ordering::SeqCst), lazy: st.is_lazy.load(Ordering::SeqCst) }
    }

    fn stats(&self) -> &'static [Stat] {
        &[
            Stat::NrTlbRemoteFlush,
            Stat::NrTlbRemoteFlushReceived,
            Stat::NrTlbLocalFlushAll,
            Stat::NrTlbLocalFlushOne,
            Stat::IrqTlbCount,
            Stat::TlbIpiSent,
            Stat::TraceOnTaskSwitch,
            Stat::TraceRemoteShootdown,
            Stat::TraceLocalMmShootdown,
            Stat::TraceRemoteSendIpi,
            Stat::LazySwitchToInitMm,
            Stat::CpumaskTrimmed,
            Stat::TlbFlushRanged,
            Stat::TlbFlushFull,
        ]
    }

    /// arch/x86/mm/pgtable.c: only a write fault changes the PTE; no flush
    /// (a write through a stale read-only entry faults, the CPU drops the
    /// entry and re-walks).
    fn ptep_set_access_flags(&self, k: &Kernel, _mm: &MmStruct, table: Pfn, va: u64, entry: Pte, dirty: bool) -> bool {
        let old = Pte(pgtable::slot(k, table, Level::Pte, va).load(Ordering::SeqCst));
        if old == entry {
            return false;
        }
        if dirty {
            pgtable::write(k, table, Level::Pte, va, entry);
        }
        true
    }

    /// Empty on x86.
    fn flush_tlb_fix_spurious_fault(&self, _k: &Kernel, _mm: &MmStruct, _va: u64) {}
}

/// x86 `switch_mm` → `switch_mm_irqs_off(prev, next)`: run `next` on this
/// CPU.
///
/// Sets this CPU in `mm_cpumask(next)` before reading `next`'s tlb_gen (so
/// a concurrent flusher either sees the bit or we see its generation), then
/// loads CR3.  Returning to the mm left lazily only flushes if the
/// generation moved; switching to a different mm reuses its PCID slot and
/// flushes only if its generation moved since this CPU last ran it (or the
/// slot was recycled).  Reason: TLB_FLUSH_ON_TASK_SWITCH.
#[doc(alias = "switch_mm_irqs_off")]
pub fn switch_mm(k: &Kernel, next: &MmStruct) {
    let cpu = k.this_cpu();
    let irq = k.local_irq_save();
    let st = &k.cpus[cpu.idx()];
    let prev = st.loaded_mm.load(Ordering::SeqCst);
    if prev == next.id {
        st.is_lazy.store(false, Ordering::SeqCst);
        if !next.cpumask.test(cpu) {
            next.cpumask.set(cpu);
        }
        let gen = next.tlb_gen.load(Ordering::SeqCst);
        if st.tlb_gen.load(Ordering::SeqCst) < gen {
            k.hw.tlb(cpu).flush_asid(next.id);
            st.tlb_gen.store(gen, Ordering::SeqCst);
            k.stats.trace_tlb_flush(cpu, Stat::TraceOnTaskSwitch, TLB_FLUSH_ALL);
        }
    } else {
        if prev != 0 {
            st.save_ctx(prev);
        }
        next.cpumask.set(cpu);
        let gen = next.tlb_gen.load(Ordering::SeqCst);
        let (_, need_flush) = st.choose_new_asid(next.id, gen);
        if need_flush {
            k.hw.tlb(cpu).flush_asid(next.id);
            k.stats.trace_tlb_flush(cpu, Stat::TraceOnTaskSwitch, TLB_FLUSH_ALL);
        }
        st.tlb_gen.store(gen, Ordering::SeqCst);
        k.hw.load_cr3(cpu, Some(next.pgd), next.id);
        st.loaded_mm.store(next.id, Ordering::SeqCst);
        st.is_lazy.store(false, Ordering::SeqCst);
    }
    drop(irq);
}

/// `switch_mm_irqs_off(NULL, &init_mm)`: leave any user mm (loads the
/// kernel's own tables; user translations can no longer be used).
#[doc(alias = "leave_mm")]
pub fn switch_to_init_mm(k: &Kernel, cpu: CpuId) {
    let st = &k.cpus[cpu.idx()];
    let prev = st.loaded_mm.load(Ordering::SeqCst);
    if prev != 0 {
        st.save_ctx(prev);
    }
    k.hw.load_cr3(cpu, None, 0);
    st.loaded_mm.store(0, Ordering::SeqCst);
    st.is_lazy.store(false, Ordering::SeqCst);
    st.tlb_gen.store(0, Ordering::SeqCst);
}

/// `enter_lazy_tlb`: this CPU runs a kernel thread / idles, keeping the mm
/// loaded.
pub fn enter_lazy_tlb(k: &Kernel) {
    let st = &k.cpus[k.this_cpu().idx()];
    if st.loaded_mm.load(Ordering::SeqCst) != 0 {
        st.is_lazy.store(true, Ordering::SeqCst);
    }
}

/// `get_flush_tlb_info`: a range above the single-page ceiling becomes a
/// full flush (`tlb_single_page_flush_ceiling`, 33 pages).
fn get_flush_tlb_info(
    k: &Kernel,
    mm: &MmStruct,
    mut start: u64,
    mut end: u64,
    stride_shift: u32,
    freed_tables: bool,
    new_tlb_gen: u64,
) -> FlushTlbInfo {
    if end != FLUSH_ALL && ((end - start) >> stride_shift) > k.cfg.tlb_single_page_flush_ceiling {
        start = 0;
        end = FLUSH_ALL;
    }
    FlushTlbInfo { mm: mm.id, start, end, new_tlb_gen, initiating_cpu: k.this_cpu(), stride_shift, freed_tables }
}

/// `flush_tlb_mm_range`
pub fn flush_tlb_mm_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, stride_shift: u32, freed_tables: bool) {
    let cpu = k.this_cpu();
    let new_tlb_gen = mm.inc_mm_tlb_gen();
    let info = get_flush_tlb_info(k, mm, start, end, stride_shift, freed_tables, new_tlb_gen);
    let mask = mm.cpumask.snapshot();
    if mask.iter().any(|c| c != cpu) {
        native_flush_tlb_multi(k, mm, &mask, &info);
    } else if k.cpus[cpu.idx()].loaded_mm.load(Ordering::SeqCst) == mm.id {
        let irq = k.local_irq_save();
        flush_tlb_func(k, mm, cpu, &info);
        drop(irq);
    }
    secondary_invalidate(k, mm, start, end);
}

/// `should_flush_tlb`: a plain flush skips lazy CPUs and CPUs not running
/// the mm.
fn should_flush_tlb(k: &Kernel, cpu: CpuId, info: &FlushTlbInfo) -> bool {
    let st = &k.cpus[cpu.idx()];
    if st.is_lazy.load(Ordering::SeqCst) {
        return false;
    }
    st.loaded_mm.load(Ordering::SeqCst) == info.mm
}

/// `native_flush_tlb_multi`: IPI the CPUs of `mask` (this one too, directly)
/// and wait.  With freed_tables every CPU in the mask is interrupted, lazy or
/// not — unless the lazy-tlb-freed-tables fix is switched off.
fn native_flush_tlb_multi(k: &Kernel, mm: &MmStruct, mask: &CpuMask, info: &FlushTlbInfo) {
    let me = k.this_cpu();
    k.stats.inc(me, Stat::NrTlbRemoteFlush);
    let pages =
        if info.end == FLUSH_ALL { TLB_FLUSH_ALL } else { (info.end - info.start) >> k.cfg.geometry.page_shift };
    k.stats.trace_tlb_flush(me, Stat::TraceRemoteSendIpi, pages);
    let all = info.freed_tables && k.cfg.fixes.on(Fix::LazyTlbFreedTables);
    let mut targets = CpuMask::new();
    for c in mask.iter().filter(|c| c.idx() < k.hw.nr_cpus()) {
        if all || c == me || should_flush_tlb(k, c, info) {
            targets.set(c);
        }
    }
    let remote = targets.iter().filter(|c| *c != me).count() as u64;
    k.stats.add(me, Stat::TlbIpiSent, remote);
    let func = |cpu: CpuId| flush_tlb_func(k, mm, cpu, info);
    crate::smp::on_each_cpu_mask(&*k.smp, &targets, &func);
}

/// `flush_tlb_func`: runs on each target CPU with IRQs off.
pub fn flush_tlb_func(k: &Kernel, mm: &MmStruct, cpu: CpuId, f: &FlushTlbInfo) {
    let local = cpu == f.initiating_cpu;
    let st = &k.cpus[cpu.idx()];
    let loaded = st.loaded_mm.load(Ordering::SeqCst);
    if !local {
        k.stats.inc(cpu, Stat::IrqTlbCount);
        k.stats.inc(cpu, Stat::NrTlbRemoteFlushReceived);
    }
    if f.mm != 0 && f.mm != loaded {
        // The CPU left the mm since it was set in the mask: trim it lazily.
        mm.cpumask.clear(cpu);
        k.stats.inc(cpu, Stat::CpumaskTrimmed);
        return;
    }
    if loaded == 0 {
        return;
    }
    if st.is_lazy.load(Ordering::SeqCst) {
        // A lazy CPU does not flush: it leaves the mm entirely (drops the
        // page tables and their walk caches from use).
        switch_to_init_mm(k, cpu);
        k.stats.inc(cpu, Stat::LazySwitchToInitMm);
        return;
    }
    let local_gen = st.tlb_gen.load(Ordering::SeqCst);
    let mm_gen = mm.tlb_gen.load(Ordering::SeqCst);
    if f.new_tlb_gen <= local_gen || local_gen == mm_gen {
        return;
    }
    let reason = if local { Stat::TraceLocalMmShootdown } else { Stat::TraceRemoteShootdown };
    let mut tlb = k.hw.tlb(cpu);
    if f.end != FLUSH_ALL && f.new_tlb_gen == local_gen + 1 && f.new_tlb_gen == mm_gen {
        let nr = (f.end - f.start) >> f.stride_shift;
        let mut addr = f.start;
        while addr < f.end {
            tlb.flush_one(mm.id, addr);
            addr += 1 << f.stride_shift;
        }
        drop(tlb);
        if local {
            k.stats.add(cpu, Stat::NrTlbLocalFlushOne, nr);
        }
        k.stats.trace_tlb_flush(cpu, reason, nr);
    } else {
        tlb.flush_asid(mm.id);
        drop(tlb);
        if local {
            k.stats.inc(cpu, Stat::NrTlbLocalFlushAll);
        }
        k.stats.trace_tlb_flush(cpu, reason, TLB_FLUSH_ALL);
    }
    st.tlb_gen.store(mm_gen, Ordering::SeqCst);
}
