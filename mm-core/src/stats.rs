//! Counters with the kernel's names (vmstat items, /proc/interrupts rows,
//! tlb_flush trace reasons) plus the gather's own accounting, kept per CPU.
//!
//! `Stats::inc(cpu, item)` is cheap (one relaxed add on the CPU's own line);
//! `snapshot()` sums them.  An optional trace hook receives every tlb_flush
//! trace event (emu-cpu / the CLI use it for Perfetto traces).

use crate::sync::{HookCell, Ordering, StatCounter};
use crate::types::CpuId;
use serde::Serialize;

macro_rules! stat_items {
    ($($item:ident => $name:literal, $doc:literal;)*) => {
        /// One counter.  Names are the kernel's where the kernel has one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum Stat { $(#[doc = $doc] $item,)* }
        impl Stat {
            /// Every counter, in declaration (report) order; `s as usize`
            /// indexes it.
            pub const ALL: &'static [Stat] = &[$(Stat::$item,)*];
            /// The kernel's name (vmstat item, trace reason) or, where the
            /// kernel has none, the model's snake_case one.
            pub fn name(self) -> &'static str { match self { $(Stat::$item => $name,)* } }
        }
    };
}

stat_items! {
    NrTlbRemoteFlush => "nr_tlb_remote_flush", "vmstat NR_TLB_REMOTE_FLUSH: flush_tlb_multi calls (sender side)";
    NrTlbRemoteFlushReceived => "nr_tlb_remote_flush_received", "vmstat NR_TLB_REMOTE_FLUSH_RECEIVED: flush_tlb_func run for a remote sender";
    NrTlbLocalFlushAll => "nr_tlb_local_flush_all", "vmstat NR_TLB_LOCAL_FLUSH_ALL";
    NrTlbLocalFlushOne => "nr_tlb_local_flush_one", "vmstat NR_TLB_LOCAL_FLUSH_ONE (per page)";
    IrqTlbCount => "irq_tlb_count", "/proc/interrupts TLB row: TLB shootdown interrupts handled";
    TlbIpiSent => "tlb_ipi_sent", "TLB shootdown IPIs sent, one per target CPU (x86: the sender side of irq_tlb_count)";
    TraceOnTaskSwitch => "TLB_FLUSH_ON_TASK_SWITCH", "tlb_flush trace reason";
    TraceRemoteShootdown => "TLB_REMOTE_SHOOTDOWN", "tlb_flush trace reason";
    TraceLocalShootdown => "TLB_LOCAL_SHOOTDOWN", "tlb_flush trace reason";
    TraceLocalMmShootdown => "TLB_LOCAL_MM_SHOOTDOWN", "tlb_flush trace reason";
    TraceRemoteSendIpi => "TLB_REMOTE_SEND_IPI", "tlb_flush trace reason";
    TraceRemoteWrongCpu => "TLB_REMOTE_WRONG_CPU", "tlb_flush trace reason (v6.18: flush_tlb_func on a CPU that left the mm clears it from mm_cpumask)";
    TlbRemoveTableSyncOne => "tlb_remove_table_sync_one", "empty-IPI broadcasts to every other CPU";
    Arm64BroadcastTlbi => "arm64_tlbi_broadcast", "arm64: broadcast invalidation sequences completed (DSB ISH), one per flush_tlb_mm / __flush_tlb_range / flush_tlb_page";
    Arm64TlbiVale1is => "arm64_tlbi_vale1is", "arm64: TLBI VALE1IS issued (by VA, last level only)";
    Arm64TlbiVae1is => "arm64_tlbi_vae1is", "arm64: TLBI VAE1IS issued (by VA, all levels: walk caches too)";
    Arm64TlbiRvale1is => "arm64_tlbi_rvale1is", "arm64: TLBI RVALE1IS issued (FEAT_TLBIRANGE, by VA range, last level only)";
    Arm64TlbiRvae1is => "arm64_tlbi_rvae1is", "arm64: TLBI RVAE1IS issued (FEAT_TLBIRANGE, by VA range, all levels)";
    Arm64TlbiAside1is => "arm64_tlbi_aside1is", "arm64: TLBI ASIDE1IS issued (flush_tlb_mm: the whole ASID)";
    Arm64TlbiVmalle1 => "arm64_tlbi_vmalle1", "arm64: TLBI VMALLE1 on this CPU only (local_flush_tlb_all after an ASID rollover)";
    Arm64AsidRollover => "arm64_asid_rollover", "arm64: ASID generation bumps (new_context found no free ASID: flush_context)";
    NoRangeFlushTlbMm => "norange_flush_tlb_mm", "MMU_GATHER_NO_RANGE profile: flush_tlb_mm calls (sender side)";
    NoRangeCpuFlush => "norange_cpu_flush", "MMU_GATHER_NO_RANGE profile: CPUs that dropped an mm's TLB entries for flush_tlb_mm (the sender and each IPI target)";
    NoRangeSwitchFlush => "norange_switch_mm_flush", "MMU_GATHER_NO_RANGE profile: switch_mm to another mm flushed the user TLB (m68k pflushan)";
    LazySwitchToInitMm => "lazy_switch_to_init_mm", "lazy CPUs that left the mm on a flush IPI";
    CpumaskTrimmed => "mm_cpumask_trimmed", "CPUs dropped from mm_cpumask by flush_tlb_func (x86 v6.18; v6.12 clears it in switch_mm_irqs_off)";
    TlbFlushRanged => "tlb_flush_ranged", "arch tlb_flush of a range (mmu_gather)";
    TlbFlushFull => "tlb_flush_full", "arch tlb_flush of the whole mm (mmu_gather)";
    GatherBatchAlloc => "gather_batch_alloc", "tlb_next_batch allocated a page-sized batch";
    GatherBatchAllocFail => "gather_batch_alloc_fail", "tlb_next_batch allocation failed";
    GatherPagesFreed => "gather_pages_freed", "pages freed by tlb_batch_pages_flush";
    GatherFlushes => "gather_flushes", "tlb_flush_mmu calls that flushed something";
    DelayedRmaps => "delayed_rmaps", "rmaps removed by tlb_flush_rmaps after the flush";
    TablesQueued => "tables_queued", "page tables handed to tlb_remove_table";
    TablesFreed => "tables_freed", "page tables freed (after RCU or sync)";
    TableBatchAllocFail => "table_batch_alloc_fail", "table batch allocation failed: tlb_remove_table_one path";
    RcuCallbacks => "rcu_callbacks", "RCU callbacks run after their grace period (tlb_remove_table_rcu, pte_free_now), counted on the CPU that queued them";
    NestedFlushForced => "nested_flush_forced", "tlb_finish_mmu forced a full flush (mm_tlb_flush_nested)";
    SecondaryTlbInvalidations => "secondary_tlb_invalidations", "mmu_notifier secondary-TLB invalidations (one per subscriber)";
    IommuPageFaults => "iommu_page_faults", "device faults handled by iommu_sva_handle_iopf";
    ThpCollapseAlloc => "thp_collapse_alloc", "vmstat THP_COLLAPSE_ALLOC: huge pages allocated by khugepaged collapse";
    ThpCollapseAllocFailed => "thp_collapse_alloc_failed", "vmstat THP_COLLAPSE_ALLOC_FAILED";
    ThpCollapsed => "pages_collapsed", "khugepaged pages_collapsed: PMD ranges collapsed into a THP";
    ThpTablesRetracted => "thp_tables_retracted", "retract_page_tables: empty file PTE tables removed";
    PageFaults => "pgfault", "page faults handled";
    CowFaults => "cow_faults", "copy-on-write faults";
}

/// Per-CPU counters.
pub struct Stats {
    per_cpu: Box<[Box<[StatCounter]>]>,
    trace: HookCell<Box<dyn Fn(TraceEvent) + Send + Sync>>,
}

/// A tlb_flush trace event (include/trace/events/tlb.h): reason and pages
/// (TLB_FLUSH_ALL = u64::MAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// The CPU whose TLB was flushed (or that sent the IPI, for
    /// `TLB_REMOTE_SEND_IPI`).
    pub cpu: CpuId,
    /// The trace reason's kernel name, e.g. `TLB_REMOTE_SHOOTDOWN`.
    pub reason: &'static str,
    /// The same reason as a `Stat` (one byte: what a trace recorder keeps,
    /// naming it only when it writes the trace).
    #[serde(skip)]
    pub stat: Stat,
    /// Pages flushed, or `TLB_FLUSH_ALL`.
    pub pages: u64,
}

/// `TLB_FLUSH_ALL` in trace events.
pub const TLB_FLUSH_ALL: u64 = u64::MAX;

/// Summed counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// (counter name, sum over CPUs), in `Stat::ALL` order, then the
    /// kernel's extra rows (`irq_call_count`).
    pub totals: Vec<(&'static str, u64)>,
    /// (counter name, per-CPU values) for the per-CPU table.
    pub per_cpu: Vec<(&'static str, Vec<u64>)>,
}

impl StatsSnapshot {
    /// The total of the counter named `name` (0 if there is none).
    pub fn get(&self, name: &str) -> u64 {
        self.totals.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }
}

impl Stats {
    /// All counters zero for `nr_cpus` CPUs; no trace hook.
    pub fn new(nr_cpus: usize) -> Self {
        Self {
            per_cpu: (0..nr_cpus).map(|_| (0..Stat::ALL.len()).map(|_| StatCounter::new(0)).collect()).collect(),
            trace: HookCell::new(),
        }
    }

    /// `count_vm_events(s, n)` on `cpu` (one relaxed add).
    #[inline]
    pub fn add(&self, cpu: CpuId, s: Stat, n: u64) {
        self.per_cpu[cpu.idx()][s as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// `count_vm_event(s)` on `cpu`.
    #[inline]
    pub fn inc(&self, cpu: CpuId, s: Stat) {
        self.add(cpu, s, 1);
    }

    /// The sum over every CPU (relaxed loads: exact once the run is quiet).
    pub fn get(&self, s: Stat) -> u64 {
        self.per_cpu.iter().map(|c| c[s as usize].load(Ordering::Relaxed)).sum()
    }

    /// One CPU's value.
    pub fn get_cpu(&self, cpu: CpuId, s: Stat) -> u64 {
        self.per_cpu[cpu.idx()][s as usize].load(Ordering::Relaxed)
    }

    /// `trace_tlb_flush(reason, pages)`: count it and pass it to the hook.
    pub fn trace_tlb_flush(&self, cpu: CpuId, reason: Stat, pages: u64) {
        self.inc(cpu, reason);
        if let Some(hook) = self.trace.get() {
            hook(TraceEvent { cpu, reason: reason.name(), stat: reason, pages });
        }
    }

    /// Install the trace hook (once; later calls are ignored and return false).
    pub fn set_trace_hook(&self, hook: Box<dyn Fn(TraceEvent) + Send + Sync>) -> bool {
        self.trace.set(hook).is_ok()
    }

    /// Every counter, totals and per CPU (without the `Smp`'s rows: see
    /// `Kernel::stats_snapshot`).
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            totals: Stat::ALL.iter().map(|s| (s.name(), self.get(*s))).collect(),
            per_cpu: Stat::ALL
                .iter()
                .map(|s| (s.name(), self.per_cpu.iter().map(|c| c[*s as usize].load(Ordering::Relaxed)).collect()))
                .collect(),
        }
    }
}
