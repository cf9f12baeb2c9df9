//! The kernel's TLB flush code, per arch profile (arch/x86/mm/tlb.c and the
//! arm64 / generic equivalents), on top of the `Smp` seam.
//!
//! Contract: when `flush_tlb_mm_range` (or `flush_tlb_mm`) returns, no CPU
//! that may run the mm can use a translation of the range any more — with
//! one arch-specific exception that is the point of the x86 lazy-TLB rule:
//! a lazy CPU (running a kernel thread with the mm still loaded) is skipped
//! unless page tables were freed, and catches up through `tlb_gen` when it
//! switches back.  `freed_tables` also drops paging-structure caches.
//!
//! - x86 (`x86.rs`): tlb_gen, 33-page ceiling, IPIs to mm_cpumask, lazy
//!   CPUs skipped unless freed_tables, lazy CPUs switch to init_mm, CPUs
//!   that left the mm are trimmed from mm_cpumask.
//! - arm64: broadcast TLBI — every CPU's TLB is invalidated directly (under
//!   its TLB lock), without an interrupt and without waiting for IRQs-off
//!   CPUs.  Last-level-only invalidation unless tables were freed.
//! - generic (MMU_GATHER_NO_RANGE): every flush is a whole-mm IPI flush.

pub mod x86;

use crate::config::Arch;
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::stats::{Stat, TLB_FLUSH_ALL};
use crate::sync::{AtomicBool, AtomicU64, Ordering};
use crate::types::CpuId;

/// `TLB_FLUSH_ALL` as an end address.
pub const FLUSH_ALL: u64 = u64::MAX;

/// `TLB_NR_DYN_ASIDS`: address spaces whose translations a CPU keeps
/// across switches (x86 PCID slots).
pub const TLB_NR_DYN_ASIDS: usize = 6;

/// x86 `cpu_tlbstate` + `cpu_tlbstate_shared` for one CPU.
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
    pub start: u64,
    pub end: u64,
    pub new_tlb_gen: u64,
    pub initiating_cpu: CpuId,
    pub stride_shift: u32,
    pub freed_tables: bool,
}

/// `switch_mm_irqs_off(prev, next)`: run `next` on this CPU.
///
/// Sets this CPU in `mm_cpumask(next)` before reading `next`'s tlb_gen (so
/// a concurrent flusher either sees the bit or we see its generation), then
/// loads CR3.  Returning to the mm left lazily only flushes if the
/// generation moved; switching to a different mm reuses its PCID slot and
/// flushes only if its generation moved since this CPU last ran it (or the
/// slot was recycled).  Reason: TLB_FLUSH_ON_TASK_SWITCH.
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

/// `flush_tlb_mm_range(mm, start, end, stride_shift, freed_tables)` for the
/// configured arch.
pub fn flush_tlb_mm_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, stride_shift: u32, freed_tables: bool) {
    match k.cfg.arch {
        Arch::X86 => x86::flush_tlb_mm_range(k, mm, start, end, stride_shift, freed_tables),
        Arch::Arm64 => arm64_flush_range(k, mm, start, end, !freed_tables),
        Arch::GenericNoRange => generic_flush_tlb_mm(k, mm),
    }
}

/// `flush_tlb_mm(mm)`: the whole address space (x86 passes freed_tables).
pub fn flush_tlb_mm(k: &Kernel, mm: &MmStruct) {
    match k.cfg.arch {
        Arch::X86 => x86::flush_tlb_mm_range(k, mm, 0, FLUSH_ALL, k.cfg.geometry.page_shift, true),
        Arch::Arm64 => arm64_flush_range(k, mm, 0, FLUSH_ALL, false),
        Arch::GenericNoRange => generic_flush_tlb_mm(k, mm),
    }
}

/// `flush_tlb_range(vma, start, end)` (x86: stride from the VMA's page size;
/// `freed_tables` per 3ef938c35035 when a table is being removed).
pub fn flush_tlb_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool, freed_tables: bool) {
    let g = k.cfg.geometry;
    let stride = if huge { g.level_shift(crate::hw::pte::Level::Pmd) } else { g.page_shift };
    flush_tlb_mm_range(k, mm, start, end, stride, freed_tables);
}

/// `flush_tlb_page(vma, addr)`
pub fn flush_tlb_page(k: &Kernel, mm: &MmStruct, addr: u64) {
    let ps = k.cfg.geometry.page_size();
    flush_tlb_range(k, mm, addr & !(ps - 1), (addr & !(ps - 1)) + ps, false, false);
}

/// arm64 `__flush_tlb_range` / `flush_tlb_mm`: TLBI ... IS reaches every
/// CPU's TLB through the interconnect.  Modelled honestly: take each CPU's
/// TLB lock and invalidate; nobody is interrupted and IRQs-off CPUs are not
/// waited for beyond the instruction in flight.  `last_level` (TLBI VALE1IS)
/// keeps walk-cache entries.
fn arm64_flush_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64, last_level: bool) {
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
    crate::tlb::secondary_invalidate(k, mm, start, end);
}

/// MMU_GATHER_NO_RANGE architectures: flush_tlb_mm by IPI to every CPU of
/// mm_cpumask (and this CPU), whole address space.
fn generic_flush_tlb_mm(k: &Kernel, mm: &MmStruct) {
    let me = k.this_cpu();
    mm.inc_mm_tlb_gen();
    let mask = mm.cpumask.snapshot();
    let mut others = mask;
    others.clear(me);
    if !others.is_empty() {
        k.stats.inc(me, Stat::NrTlbRemoteFlush);
        k.stats.add(me, Stat::TlbIpiSent, others.iter().filter(|c| c.idx() < k.hw.nr_cpus()).count() as u64);
        k.stats.trace_tlb_flush(me, Stat::TraceRemoteSendIpi, TLB_FLUSH_ALL);
    }
    let func = |cpu: CpuId| {
        let local = cpu == me;
        if !local {
            k.stats.inc(cpu, Stat::IrqTlbCount);
            k.stats.inc(cpu, Stat::NrTlbRemoteFlushReceived);
        } else {
            k.stats.inc(cpu, Stat::NrTlbLocalFlushAll);
        }
        k.hw.tlb(cpu).flush_asid(mm.id);
        k.stats.trace_tlb_flush(
            cpu,
            if local { Stat::TraceLocalMmShootdown } else { Stat::TraceRemoteShootdown },
            TLB_FLUSH_ALL,
        );
    };
    crate::smp::on_each_cpu_mask(&*k.smp, &mask, &func);
    secondary_invalidate(k, mm, 0, FLUSH_ALL);
}

/// `mmu_notifier_arch_invalidate_secondary_tlbs(mm, start, end)`: called from
/// inside the arch flush (6bbd42e2df8f).  With `Fix::SecondaryTlbOnFlush`
/// off the arch flush reaches no secondary TLB (pre-6.6: the generic
/// wrappers in `notifier.rs` did it instead).
pub fn secondary_invalidate(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    if k.cfg.fixes.on(crate::config::Fix::SecondaryTlbOnFlush) {
        crate::notifier::mmu_notifier_arch_invalidate_secondary_tlbs(k, mm, start, end);
    }
}

/// `flush_tlb_all`-style whole-TLB flush of one CPU (reason TLB_LOCAL_SHOOTDOWN).
pub fn flush_tlb_local_all(k: &Kernel, cpu: CpuId) {
    k.hw.tlb(cpu).flush_all();
    k.stats.inc(cpu, Stat::NrTlbLocalFlushAll);
    k.stats.trace_tlb_flush(cpu, Stat::TraceLocalShootdown, TLB_FLUSH_ALL);
}
