//! Tests of the arch seam: each profile is the one asked for, and moves
//! exactly the flush counters it lists (`ArchOps::stats`).

use super::*;
use crate::config::KernelConfig;
use crate::ops::{dup_mmap, exit_mm, madvise_dontneed, mmap_anon, mprotect, munmap};
use crate::tlb::{enter_lazy_tlb, switch_mm};
use std::collections::BTreeSet;

const PS: u64 = 4096;
const BASE: u64 = 0x10_0000_0000;

/// Every kind of flush and context switch on 4 CPUs (`SyncSmp`): ranged
/// and full MADV_DONTNEED with a CPU running the mm elsewhere, CPUs that
/// switched to another mm, mprotect, a lazy CPU during a munmap that
/// frees tables, fork + child exit, exits.
fn every_kind_of_flush(arch: Arch) -> std::sync::Arc<Kernel> {
    let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 4);
    let (a, b) = (k.mm_alloc(), k.mm_alloc());
    let on = |cpu: u32, mm: &MmStruct| {
        k.set_cpu(CpuId(cpu));
        switch_mm(&k, mm);
    };
    let pages = 512 + 64;
    on(0, &a);
    mmap_anon(&k, &a, BASE, pages * PS, true).unwrap();
    for c in 0..4u32 {
        on(c, &a);
        for p in (u64::from(c)..pages).step_by(4) {
            k.write_user(&a, BASE + p * PS, p).unwrap();
        }
    }
    on(2, &b);
    mmap_anon(&k, &b, BASE, 16 * PS, true).unwrap();
    k.write_user(&b, BASE, 1).unwrap();
    on(3, &b);
    k.write_user(&b, BASE + PS, 2).unwrap();
    // CPU 1 still runs a: the flushes below reach it.
    on(0, &a);
    madvise_dontneed(&k, &a, BASE + PS, PS).unwrap();
    madvise_dontneed(&k, &a, BASE, 100 * PS).unwrap();
    mprotect(&k, &a, BASE + 200 * PS, 8 * PS, true, false).unwrap();
    k.set_cpu(CpuId(1));
    enter_lazy_tlb(&k);
    on(0, &a);
    munmap(&k, &a, BASE, 512 * PS).unwrap();
    on(3, &a);
    let child = dup_mmap(&k, &a).unwrap();
    switch_mm(&k, &child);
    k.write_user(&child, BASE + 520 * PS, 9).unwrap();
    exit_mm(&k, &child);
    on(2, &b);
    exit_mm(&k, &b);
    on(1, &a);
    exit_mm(&k, &a);
    k.rcu_barrier();
    assert_eq!(k.san.count(), 0, "{arch:?}");
    k
}

/// Counters no profile's code bumps: the gather's and the table
/// freeing's own, RCU, faults, THP, the notifier.  Every other `Stat` is
/// a flush counter that some profile must list, or that must stay 0.
const NOT_THE_ARCH: &[Stat] = &[
    Stat::TlbRemoveTableSyncOne,
    Stat::GatherBatchAlloc,
    Stat::GatherBatchAllocFail,
    Stat::GatherPagesFreed,
    Stat::GatherFlushes,
    Stat::DelayedRmaps,
    Stat::TablesQueued,
    Stat::TablesFreed,
    Stat::TableBatchAllocFail,
    Stat::NestedFlushForced,
    Stat::SecondaryTlbInvalidations,
    Stat::IommuPageFaults,
    Stat::ThpCollapseAlloc,
    Stat::ThpCollapseAllocFailed,
    Stat::ThpCollapsed,
    Stat::ThpTablesRetracted,
    Stat::PageFaults,
    Stat::CowFaults,
];

#[test]
fn each_profile_moves_exactly_the_counters_it_lists() {
    for arch in Arch::ALL {
        let k = every_kind_of_flush(arch);
        let moved: BTreeSet<&str> =
            Stat::ALL.iter().filter(|s| !NOT_THE_ARCH.contains(s) && k.stats.get(**s) != 0).map(|s| s.name()).collect();
        let listed: BTreeSet<&str> = k.arch.stats().iter().map(|s| s.name()).collect();
        assert_eq!(moved, listed, "{arch:?}: the flush counters that moved vs ArchOps::stats");
    }
}

#[test]
fn the_kernel_is_built_with_the_configured_profile() {
    for arch in Arch::ALL {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 1);
        assert_eq!(k.arch.arch(), arch);
        assert_eq!(k.arch.kernel(), KernelVersion::V6_12);
    }
}
