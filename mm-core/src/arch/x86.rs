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
//! lazy CPU that does get the IPI leaves the mm (switches to init_mm).
//! Who is in mm_cpumask depends on the kernel version (`KernelVersion`):
//! v6.12 clears a CPU in `switch_mm_irqs_off` when it switches away; v6.18
//! (209954cbc7d0, 6db2526c1d69) leaves it set until a flush finds it running
//! another mm (`flush_tlb_func`: TLB_REMOTE_WRONG_CPU), which for flushes
//! without freed tables happens once a second (`should_trim_cpumask`).
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
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::types::{CpuId, CpuMask, Pfn};

/// `TLB_NR_DYN_ASIDS`: address spaces whose translations a CPU keeps
/// across switches (x86 PCID slots).
pub const TLB_NR_DYN_ASIDS: usize = 6;

/// `LOADED_MM_SWITCHING`: `cpu_tlbstate.loaded_mm` while
/// `switch_mm_irqs_off` changes CR3 (v6.18's `should_flush_tlb` IPIs such a
/// CPU: it may hold either mm's entries).
pub const LOADED_MM_SWITCHING: u64 = u64::MAX;

/// `TLB_GENERATION_INVALID`: a flush that brings no generation
/// (`arch_tlbbatch_flush`); `flush_tlb_func` then compares with the mm's.
pub const TLB_GENERATION_INVALID: u64 = 0;

/// A PCID slot no mm owns (`ctx_id` 0 in the kernel; here 0 is init_mm).
const NO_CTX: u64 = u64::MAX - 1;

/// x86 `cpu_tlbstate` + `cpu_tlbstate_shared` for one CPU (`Kernel::cpus`).
pub struct CpuTlbState {
    /// Id of the loaded mm (0 = init_mm; `LOADED_MM_SWITCHING` during a
    /// switch).
    pub loaded_mm: AtomicU64,
    /// `cpu_tlbstate_shared.is_lazy`
    pub is_lazy: AtomicBool,
    /// `ctxs[loaded_mm_asid].tlb_gen`: the loaded mm's generation this CPU
    /// has caught up to.
    pub tlb_gen: AtomicU64,
    /// `cpu_tlbstate.loaded_mm` as a pointer: v6.12's `switch_mm_irqs_off`
    /// clears this CPU from the previous mm's cpumask through it.
    loaded: Mutex<Option<Arc<MmStruct>>>,
    /// `ctxs[]`: (ctx_id = mm id, tlb_gen) of recently run mms, whose
    /// tagged TLB entries survive a switch away and back.  Slot 0 starts as
    /// init_mm's (`initialize_tlbstate_and_flush`), the others empty.
    ctx_id: [AtomicU64; TLB_NR_DYN_ASIDS],
    ctx_gen: [AtomicU64; TLB_NR_DYN_ASIDS],
    /// `cpu_tlbstate.next_asid` (starts at 1: slot 0 is init_mm's).
    next_asid: AtomicU64,
}

impl Default for CpuTlbState {
    fn default() -> Self {
        CpuTlbState {
            loaded_mm: AtomicU64::new(0),
            is_lazy: AtomicBool::new(false),
            tlb_gen: AtomicU64::new(0),
            loaded: Mutex::new(None),
            ctx_id: std::array::from_fn(|i| AtomicU64::new(if i == 0 { 0 } else { NO_CTX })),
            ctx_gen: std::array::from_fn(|_| AtomicU64::new(0)),
            next_asid: AtomicU64::new(1),
        }
    }
}

impl CpuTlbState {
    /// `choose_new_asid`: the slot remembering `mm` and whether its TLB
    /// entries must be flushed (unknown mm, or its tlb_gen moved on).  A
    /// new slot is `next_asid++`, wrapping to 0 (and next_asid to 1) at
    /// TLB_NR_DYN_ASIDS.
    fn choose_new_asid(&self, mm: u64, next_gen: u64) -> (usize, bool) {
        if let Some(i) = (0..TLB_NR_DYN_ASIDS).find(|i| self.ctx_id[*i].load(Ordering::SeqCst) == mm) {
            return (i, self.ctx_gen[i].load(Ordering::SeqCst) < next_gen);
        }
        let mut i = self.next_asid.fetch_add(1, Ordering::SeqCst) as usize;
        if i >= TLB_NR_DYN_ASIDS {
            i = 0;
            self.next_asid.store(1, Ordering::SeqCst);
        }
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
    /// v6.18 `trim_cpumask` (6db2526c1d69): this flush also interrupts CPUs
    /// in the mask that run another mm, so they clear themselves.
    pub trim_cpumask: bool,
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

    /// Selected: arch/x86/Kconfig `select MMU_GATHER_MERGE_VMAS` since
    /// 1e9fdf21a433 (v6.0), which replaced x86's empty `tlb_start_vma` /
    /// `tlb_end_vma`; still there in v6.12 and v6.18.  So `tlb_end_vma`
    /// flushes only a `vma_pfn` VMA, and a munmap flushes once, at
    /// `tlb_finish_mmu` (unless a batch filled up or the VMA was PFN-mapped).
    fn mmu_gather_merge_vmas(&self) -> bool {
        true
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
        ///   flush; the model's one is `_PAGE_SPECIAL` (`_PAGE_SOFTW1`).
        /// - Any other changed bit flushes (the CONFIG_DEBUG_VM branch, which
        ///   also WARNs once).
        fn pte_flags_need_flush(oldflags: u64, newflags: u64, ignore_access: bool) -> bool {
            const FLUSH_ON_CLEAR: u64 = Pte::DIRTY | Pte::PRESENT | Pte::ACCESSED;
            const FLUSH_ON_CHANGE: u64 = Pte::RW | Pte::USER | Pte::HUGE;
            let mut diff = oldflags ^ newflags;
            const SOFTWARE: u64 = Pte::SPECIAL;
            diff &= !SOFTWARE;
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

    /// x86 `flush_tlb_mm`: `flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, 0UL, true)`.
    fn flush_tlb_mm(&self, k: &Kernel, mm: &MmStruct) {
        flush_tlb_mm_range(k, mm, 0, FLUSH_ALL, k.cfg.geometry.page_shift, true);
    }

    /// x86 `flush_tlb_range(vma, start, end)`: `flush_tlb_mm_range` at
    /// `huge_page_shift` for a hugetlb VMA (PMD_SHIFT: the model's hugetlb
    /// pages are PMD-sized), PAGE_SHIFT otherwise, and always with
    /// freed_tables = true (3ef938c35035, in 6.12.y: `pmdp_collapse_flush`
    /// and the hugetlb unshare use it to zap PMDs that point at tables, so
    /// lazy CPUs are interrupted too).
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool) {
        let g = k.cfg.geometry;
        let stride = if huge { g.level_shift(Level::Pmd) } else { g.page_shift };
        flush_tlb_mm_range(k, mm, start, end, stride, true);
    }

    /// x86 `flush_tlb_page`: `flush_tlb_mm_range(mm, a, a + PAGE_SIZE,
    /// PAGE_SHIFT, false)` (not `flush_tlb_range`: no freed tables).
    fn flush_tlb_page(&self, k: &Kernel, mm: &MmStruct, addr: u64) {
        let g = k.cfg.geometry;
        let a = addr & !(g.page_size() - 1);
        flush_tlb_mm_range(k, mm, a, a + g.page_size(), g.page_shift, false);
    }

    /// x86 `flush_pmd_tlb_range`: `flush_tlb_mm_range(mm, addr, end,
    /// PMD_SHIFT, false)`.
    fn flush_pmd_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
        flush_tlb_mm_range(k, mm, start, end, k.cfg.geometry.level_shift(Level::Pmd), false);
    }

    fn switch_mm(&self, k: &Kernel, next: &Arc<MmStruct>) {
        switch_mm(k, next);
    }
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId) {
        switch_to_init_mm(k, cpu);
    }
    fn enter_lazy_tlb(&self, k: &Kernel) {
        enter_lazy_tlb(k);
    }
    /// `cpu_tlbstate.loaded_mm` and `cpu_tlbstate_shared.is_lazy`; the mm
    /// is `LOADED_MM_SWITCHING` (no user mm runs) while a switch is under
    /// way on that CPU.
    fn cpu_mm(&self, k: &Kernel, cpu: CpuId) -> CpuMm {
        let st = &k.cpus[cpu.idx()];
        CpuMm { mm: st.loaded_mm.load(Ordering::SeqCst), lazy: st.is_lazy.load(Ordering::SeqCst) }
    }

    /// v6.12 never clears mm_cpumask in `flush_tlb_func` (its switch does)
    /// and has no TLB_REMOTE_WRONG_CPU; v6.18 does both.  One list: the
    /// v6.18-only counters come last, so v6.12's is a prefix of it.
    fn stats(&self) -> &'static [Stat] {
        const ALL: &[Stat] = &[
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
            Stat::TlbFlushRanged,
            Stat::TlbFlushFull,
            // v6.18 only
            Stat::TraceRemoteWrongCpu,
            Stat::CpumaskTrimmed,
        ];
        match self.kernel {
            KernelVersion::V6_12 => &ALL[..ALL.len() - 2],
            KernelVersion::V6_18 => ALL,
        }
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

/// v6.12 clears a CPU from the previous mm's cpumask when it switches
/// away; from 209954cbc7d0 (v6.14, so v6.18) it stays set until a flush
/// finds it gone (`flush_tlb_func`) or the once-a-second trim.
fn lazy_cpumask(k: &Kernel) -> bool {
    k.arch.kernel().at_least(KernelVersion::V6_18)
}

/// x86 `switch_mm` → `switch_mm_irqs_off(NULL, next)` with IRQs off: run
/// `next` on this CPU.
#[doc(alias = "switch_mm_irqs_off")]
pub fn switch_mm(k: &Kernel, next: &Arc<MmStruct>) {
    let irq = k.local_irq_save();
    switch_mm_irqs_off(k, k.this_cpu(), Some(next));
    drop(irq);
}

/// `switch_mm_irqs_off(NULL, next)` on `cpu` (IRQs off there; `None` is
/// init_mm), as arch/x86/mm/tlb.c has it in v6.12 and v6.18:
///
/// - same mm as loaded: nothing, unless the CPU was lazy and the mm's
///   tlb_gen moved meanwhile — then a full flush of its PCID;
/// - another mm: v6.12 clears this CPU from the previous mm's cpumask
///   (v6.18 leaves it: `lazy_cpumask`), sets it in `next`'s before reading
///   `next`'s tlb_gen, marks `loaded_mm` LOADED_MM_SWITCHING, takes a PCID
///   slot (`choose_new_asid`: a flush if the slot is new or its generation
///   is behind) and loads CR3.  init_mm (`leave_mm`, a lazy CPU's IPI) takes
///   a slot like any mm.
///
/// Every switch that loads CR3 traces TLB_FLUSH_ON_TASK_SWITCH, with
/// TLB_FLUSH_ALL when it flushed and 0 when the PCID was up to date.
pub fn switch_mm_irqs_off(k: &Kernel, cpu: CpuId, next: Option<&Arc<MmStruct>>) {
    let st = &k.cpus[cpu.idx()];
    let prev = st.loaded_mm.load(Ordering::SeqCst);
    let was_lazy = st.is_lazy.load(Ordering::SeqCst);
    if was_lazy {
        st.is_lazy.store(false, Ordering::SeqCst);
    }
    let next_id = next.map_or(0, |m| m.id);
    let gen_of = |m: Option<&Arc<MmStruct>>| m.map_or(0, |m| m.tlb_gen.load(Ordering::SeqCst));
    let (next_gen, need_flush);
    if prev == next_id {
        // A CPU with the mm loaded is in its mask: v6.12 clears the bit
        // only when switching away, v6.18 only on a CPU running another
        // mm.  The kernel re-sets it under CONFIG_DEBUG_VM with a
        // WARN_ON_ONCE; here it is an assertion.
        debug_assert!(next.is_none_or(|n| n.cpumask.test(cpu)), "switch_mm_irqs_off: CPU {cpu:?} not in mm_cpumask");
        if !was_lazy {
            return;
        }
        next_gen = gen_of(next);
        if st.tlb_gen.load(Ordering::SeqCst) == next_gen {
            return;
        }
        need_flush = true;
    } else {
        if prev != 0 {
            st.save_ctx(prev);
        }
        if !lazy_cpumask(k) && prev != 0 {
            // Stop remote flushes for the previous mm (v6.12).
            if let Some(p) = st.loaded.lock().as_ref() {
                p.cpumask.clear(cpu);
            }
        }
        if let Some(n) = next {
            if !n.cpumask.test(cpu) {
                n.cpumask.set(cpu);
            }
        }
        next_gen = gen_of(next);
        need_flush = st.choose_new_asid(next_id, next_gen).1;
        st.loaded_mm.store(LOADED_MM_SWITCHING, Ordering::SeqCst);
    }
    if need_flush {
        if next_id != 0 {
            k.hw.tlb(cpu).flush_asid(next_id);
        }
        k.stats.trace_tlb_flush(cpu, Stat::TraceOnTaskSwitch, TLB_FLUSH_ALL);
    } else {
        k.stats.trace_tlb_flush(cpu, Stat::TraceOnTaskSwitch, 0);
    }
    st.tlb_gen.store(next_gen, Ordering::SeqCst);
    k.hw.load_cr3(cpu, next.map(|m| m.pgd), next_id);
    if prev != next_id {
        *st.loaded.lock() = next.cloned();
    }
    st.loaded_mm.store(next_id, Ordering::SeqCst);
}

/// `switch_mm_irqs_off(NULL, &init_mm)`: leave any user mm (loads the
/// kernel's own tables; user translations can no longer be used).
#[doc(alias = "leave_mm")]
pub fn switch_to_init_mm(k: &Kernel, cpu: CpuId) {
    switch_mm_irqs_off(k, cpu, None);
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
    FlushTlbInfo {
        mm: mm.id,
        start,
        end,
        new_tlb_gen,
        initiating_cpu: k.this_cpu(),
        stride_shift,
        freed_tables,
        trim_cpumask: false,
    }
}

/// `should_trim_cpumask` (v6.18, 6db2526c1d69): at most once a second per
/// mm (`next_trim_cpumask`, on the machine's jiffies) a flush also reaches
/// the CPUs that left the mm.
fn should_trim_cpumask(k: &Kernel, mm: &MmStruct) -> bool {
    let now = k.smp.jiffies();
    if crate::smp::time_after(now, mm.next_trim_cpumask.load(Ordering::SeqCst)) {
        mm.next_trim_cpumask.store(now.wrapping_add(crate::smp::HZ), Ordering::SeqCst);
        return true;
    }
    false
}

/// `flush_tlb_mm_range`: bump the mm's tlb_gen; if another CPU is in
/// mm_cpumask, `flush_tlb_multi` over the mask (v6.18: deciding first
/// whether this flush trims it), else flush locally if this CPU has the mm
/// loaded.
pub fn flush_tlb_mm_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, stride_shift: u32, freed_tables: bool) {
    let cpu = k.this_cpu();
    let new_tlb_gen = mm.inc_mm_tlb_gen();
    let mut info = get_flush_tlb_info(k, mm, start, end, stride_shift, freed_tables, new_tlb_gen);
    let mask = mm.cpumask.snapshot();
    if mask.iter().any(|c| c != cpu) {
        if lazy_cpumask(k) {
            info.trim_cpumask = should_trim_cpumask(k, mm);
        }
        native_flush_tlb_multi(k, mm, &mask, &info);
    } else if k.cpus[cpu.idx()].loaded_mm.load(Ordering::SeqCst) == mm.id {
        let irq = k.local_irq_save();
        flush_tlb_func(k, mm, cpu, &info);
        drop(irq);
    }
    secondary_invalidate(k, mm, start, end);
}

/// v6.12 `tlb_is_not_lazy`: the IPI filter of a flush without freed tables.
fn tlb_is_not_lazy(k: &Kernel, cpu: CpuId) -> bool {
    !k.cpus[cpu.idx()].is_lazy.load(Ordering::SeqCst)
}

/// v6.18 `should_flush_tlb`: skip lazy CPUs; interrupt a CPU that has the
/// mm loaded or is between two mms (LOADED_MM_SWITCHING), and — on a
/// trimming flush — any CPU still in the mask, so it clears itself.
fn should_flush_tlb(k: &Kernel, cpu: CpuId, info: &FlushTlbInfo) -> bool {
    let st = &k.cpus[cpu.idx()];
    let loaded = st.loaded_mm.load(Ordering::SeqCst);
    if st.is_lazy.load(Ordering::SeqCst) {
        return false;
    }
    if info.mm == 0 || loaded == LOADED_MM_SWITCHING || loaded == info.mm {
        return true;
    }
    info.trim_cpumask
}

/// `native_flush_tlb_multi`: count NR_TLB_REMOTE_FLUSH, trace
/// TLB_REMOTE_SEND_IPI, then `on_each_cpu_mask` (freed_tables: every CPU
/// in the mask, lazy or not — unless the lazy-tlb-freed-tables fix is
/// switched off) or `on_each_cpu_cond_mask` with v6.12's `tlb_is_not_lazy`
/// / v6.18's `should_flush_tlb`.  The condition is asked of this CPU too
/// (SCF_RUN_LOCAL runs the local call only if it holds).
fn native_flush_tlb_multi(k: &Kernel, mm: &MmStruct, mask: &CpuMask, info: &FlushTlbInfo) {
    let me = k.this_cpu();
    k.stats.inc(me, Stat::NrTlbRemoteFlush);
    let pages =
        if info.end == FLUSH_ALL { TLB_FLUSH_ALL } else { (info.end - info.start) >> k.cfg.geometry.page_shift };
    k.stats.trace_tlb_flush(me, Stat::TraceRemoteSendIpi, pages);
    let all = info.freed_tables && k.cfg.fixes.on(Fix::LazyTlbFreedTables);
    let v6_18 = lazy_cpumask(k);
    let mut targets = CpuMask::new();
    // for_each_cpu(cpu, mask): mm_cpumask only ever holds CPUs that ran
    // the mm (`switch_mm_irqs_off`), all below nr_cpu_ids.
    for c in mask.iter() {
        let cond = if v6_18 { should_flush_tlb(k, c, info) } else { tlb_is_not_lazy(k, c) };
        if all || cond {
            targets.set(c);
        }
    }
    let remote = targets.iter().filter(|c| *c != me).count() as u64;
    k.stats.add(me, Stat::TlbIpiSent, remote);
    let func = |cpu: CpuId| flush_tlb_func(k, mm, cpu, info);
    crate::smp::on_each_cpu_mask(&*k.smp, &targets, &func);
}

/// `flush_tlb_func`: runs on each target CPU with IRQs off.
///
/// A remote call counts irq_tlb_count and NR_TLB_REMOTE_FLUSH_RECEIVED
/// first.  A CPU whose loaded mm is not the flushed one: v6.12 just returns
/// (remote only; its switch already left the mask), v6.18 clears itself
/// from mm_cpumask and traces (TLB_REMOTE_WRONG_CPU, 0).  A lazy CPU
/// switches to init_mm instead of flushing.  Already caught up to
/// `new_tlb_gen`: nothing, untraced; caught up to the mm's current
/// generation (a concurrent flush did the work — reachable only for a flush
/// without a generation, TLB_GENERATION_INVALID, since a valid
/// `new_tlb_gen` never exceeds the mm's): trace (reason, 0).  Otherwise the
/// partial flush (one INVLPG per stride; NR_TLB_LOCAL_FLUSH_ONE += pages if
/// local) when it brings the CPU exactly from gen-1 to the mm's gen, else a
/// full one (NR_TLB_LOCAL_FLUSH_ALL if local); traced with
/// TLB_REMOTE_SHOOTDOWN or TLB_LOCAL_MM_SHOOTDOWN.
pub fn flush_tlb_func(k: &Kernel, mm: &MmStruct, cpu: CpuId, f: &FlushTlbInfo) {
    let local = cpu == f.initiating_cpu;
    let st = &k.cpus[cpu.idx()];
    let loaded = st.loaded_mm.load(Ordering::SeqCst);
    if !local {
        k.stats.inc(cpu, Stat::IrqTlbCount);
        k.stats.inc(cpu, Stat::NrTlbRemoteFlushReceived);
    }
    if f.mm != 0 && f.mm != loaded {
        if lazy_cpumask(k) {
            // The CPU was left in the mm_cpumask of the target mm: clear it.
            mm.cpumask.clear(cpu);
            k.stats.inc(cpu, Stat::CpumaskTrimmed);
            k.stats.trace_tlb_flush(cpu, Stat::TraceRemoteWrongCpu, 0);
        }
        // v6.12 returns here on a remote CPU only; a local CPU in the mask
        // with another mm loaded cannot happen there (its switch cleared
        // the bit), so returning is the same.
        return;
    }
    if loaded == 0 {
        return;
    }
    if st.is_lazy.load(Ordering::SeqCst) {
        // A lazy CPU does not flush: it leaves the mm entirely (drops the
        // page tables and their walk caches from use).
        switch_mm_irqs_off(k, cpu, None);
        k.stats.inc(cpu, Stat::LazySwitchToInitMm);
        return;
    }
    let local_gen = st.tlb_gen.load(Ordering::SeqCst);
    if f.new_tlb_gen != TLB_GENERATION_INVALID && f.new_tlb_gen <= local_gen {
        return;
    }
    let reason = if local { Stat::TraceLocalMmShootdown } else { Stat::TraceRemoteShootdown };
    let mm_gen = mm.tlb_gen.load(Ordering::SeqCst);
    if local_gen == mm_gen {
        k.stats.trace_tlb_flush(cpu, reason, 0);
        return;
    }
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
