//! arch/x86/mm/tlb.c: flush_tlb_mm_range, native_flush_tlb_multi,
//! should_flush_tlb and flush_tlb_func.

use super::{switch_to_init_mm, FlushTlbInfo, FLUSH_ALL};
use crate::config::Fix;
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::stats::{Stat, TLB_FLUSH_ALL};
use crate::sync::Ordering;
use crate::types::{CpuId, CpuMask};

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
    super::secondary_invalidate(k, mm, start, end);
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
