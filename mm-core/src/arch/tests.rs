//! Tests of the arch seam: each profile is the one asked for, and moves
//! exactly the flush counters it lists (`ArchOps::stats`).

use super::*;
use crate::config::{Arm64Cpu, KernelConfig};
use crate::ops::{dup_mmap, exit_mm, madvise_dontneed, mmap_anon, mprotect, munmap};
use crate::sync::Ordering;
use crate::tlb::{enter_lazy_tlb, switch_mm};
use std::collections::BTreeSet;

const PS: u64 = 4096;
const BASE: u64 = 0x10_0000_0000;

/// Every kind of flush and context switch on 4 CPUs (`SyncSmp`): ranged
/// and full MADV_DONTNEED with a CPU running the mm elsewhere, CPUs that
/// switched to another mm, mprotect, a lazy CPU during a munmap that
/// frees tables, a one-page munmap that frees its PTE table, 300 address
/// spaces run one after the other, fork + child exit, exits.
fn every_kind_of_flush(arch: Arch, arm64: Arm64Cpu, kernel: KernelVersion) -> std::sync::Arc<Kernel> {
    let k = Kernel::new_sync(KernelConfig { arch, arm64, kernel, ..KernelConfig::default() }, 4);
    let (a, b) = (k.mm_alloc(), k.mm_alloc());
    let on = |cpu: u32, mm: &std::sync::Arc<MmStruct>| {
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
    // One page alone in its 2 MiB region: its munmap frees the PTE table
    // with a one-page range (arm64: a single TLBI VAE1IS, not a range).
    let lone = BASE + (64 << 20);
    mmap_anon(&k, &a, lone, PS, true).unwrap();
    k.write_user(&a, lone, 7).unwrap();
    munmap(&k, &a, lone, PS).unwrap();
    k.set_cpu(CpuId(1));
    enter_lazy_tlb(&k);
    on(0, &a);
    munmap(&k, &a, BASE, 512 * PS).unwrap();
    // 300 short-lived address spaces through CPU 2: more than an 8-bit
    // ASID space holds (arm64: a rollover), PCID slot reuse (x86).
    let mut prev: Option<std::sync::Arc<MmStruct>> = None;
    for _ in 0..300 {
        let m = k.mm_alloc();
        on(2, &m);
        if let Some(p) = prev.replace(m) {
            crate::ops::mmdrop(&k, &p);
        }
    }
    on(2, &b);
    crate::ops::mmdrop(&k, &prev.unwrap());
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
    Stat::RcuCallbacks,
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
        // arm64: both CPU generations (range TLBIs, or one TLBI per stride;
        // 8-bit ASIDs on the second, so the 300 mms roll the ASIDs over).
        let mut moved = BTreeSet::new();
        let mut listed = BTreeSet::new();
        for cpu in [Arm64Cpu::V8_4, Arm64Cpu { asid_bits: 8, ..Arm64Cpu::V8_2 }] {
            let k = every_kind_of_flush(arch, cpu, KernelVersion::V6_12);
            moved.extend(
                Stat::ALL.iter().filter(|s| !NOT_THE_ARCH.contains(s) && k.stats.get(**s) != 0).map(|s| s.name()),
            );
            listed.extend(k.arch.stats().iter().map(|s| s.name()));
        }
        assert_eq!(moved, listed, "{arch:?}: the flush counters that moved vs ArchOps::stats");
    }
}

/// x86 v6.18 moves exactly its own list too: TLB_REMOTE_WRONG_CPU and
/// `mm_cpumask_trimmed` (CPUs 2 and 3 left A for B but stayed in its mask
/// until a table-freeing flush reached them), which v6.12 never moves.
#[test]
fn x86_6_18_moves_exactly_the_counters_it_lists() {
    let k = every_kind_of_flush(Arch::X86, Arm64Cpu::default(), KernelVersion::V6_18);
    let moved: BTreeSet<_> =
        Stat::ALL.iter().filter(|s| !NOT_THE_ARCH.contains(s) && k.stats.get(**s) != 0).map(|s| s.name()).collect();
    let listed: BTreeSet<_> = k.arch.stats().iter().map(|s| s.name()).collect();
    assert_eq!(moved, listed);
    assert!(listed.contains("TLB_REMOTE_WRONG_CPU"));
    let k12 = every_kind_of_flush(Arch::X86, Arm64Cpu::default(), KernelVersion::V6_12);
    assert_eq!(k12.stats.get(Stat::TraceRemoteWrongCpu) + k12.stats.get(Stat::CpumaskTrimmed), 0);
}

#[test]
fn the_kernel_is_built_with_the_configured_profile() {
    for arch in Arch::ALL {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 1);
        assert_eq!(k.arch.arch(), arch);
        assert_eq!(k.arch.kernel(), KernelVersion::V6_12);
    }
}

/// `counters_kept`: a profile's own counters and the generic ones, never
/// a counter only other profiles move — x86 keeps TLB_IPI_SENT and
/// tlb_flush_full (NO_RANGE moves them too), arm64 keeps neither the IPI
/// count nor any NR_TLB_* (not counters an arm64 kernel has).
#[test]
fn counters_kept_are_the_profiles_own_and_the_generic_ones() {
    let kept = |arch| counters_kept(&KernelConfig { arch, ..KernelConfig::default() });
    let (x86, arm64, generic) = (kept(Arch::X86), kept(Arch::Arm64), kept(Arch::GenericNoRange));
    for s in [Stat::NrTlbRemoteFlush, Stat::TlbIpiSent, Stat::TlbFlushFull, Stat::TlbFlushRanged, Stat::GatherFlushes] {
        assert!(x86.contains(&s), "x86 keeps {}", s.name());
    }
    for s in [Stat::Arm64TlbiVale1is, Stat::NoRangeFlushTlbMm] {
        assert!(!x86.contains(&s), "x86 drops {}", s.name());
    }
    for s in [Stat::Arm64TlbiVale1is, Stat::TlbFlushFull, Stat::GatherFlushes] {
        assert!(arm64.contains(&s), "arm64 keeps {}", s.name());
    }
    for s in [Stat::NrTlbRemoteFlush, Stat::TlbIpiSent, Stat::NoRangeCpuFlush, Stat::TraceOnTaskSwitch] {
        assert!(!arm64.contains(&s), "arm64 drops {}", s.name());
    }
    assert!(generic.contains(&Stat::NoRangeFlushTlbMm) && generic.contains(&Stat::TlbIpiSent));
    assert!(!generic.contains(&Stat::NrTlbRemoteFlush) && !generic.contains(&Stat::Arm64AsidRollover));
    // Every Stat is kept by some profile, and the non-arch ones by all.
    for s in Stat::ALL {
        assert!(x86.contains(s) || arm64.contains(s) || generic.contains(s), "{}", s.name());
    }
    for s in NOT_THE_ARCH {
        assert!(x86.contains(s) && arm64.contains(s) && generic.contains(s), "{}", s.name());
    }
}

/// `CpuMm::runs`: loaded, a user mm, and not borrowed by a kernel thread.
#[test]
fn cpu_mm_runs_only_its_own_user_mm_and_not_lazily() {
    assert!(CpuMm { mm: 5, lazy: false }.runs(5));
    assert!(!CpuMm { mm: 5, lazy: false }.runs(6));
    assert!(!CpuMm { mm: 5, lazy: true }.runs(5));
    assert!(!CpuMm { mm: 0, lazy: false }.runs(0), "init_mm runs no user code");
}

/// `enter_lazy_tlb` on a CPU that never ran a user mm leaves it not lazy
/// (nothing is borrowed); with a user mm loaded it is lazy until the next
/// switch.
#[test]
fn enter_lazy_tlb_makes_lazy_only_a_cpu_holding_a_user_mm() {
    for arch in Arch::ALL {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 2);
        k.set_cpu(CpuId(1));
        enter_lazy_tlb(&k);
        assert_eq!(k.arch.cpu_mm(&k, CpuId(1)), CpuMm { mm: 0, lazy: false }, "{arch:?}");
        let a = k.mm_alloc();
        switch_mm(&k, &a);
        enter_lazy_tlb(&k);
        assert_eq!(k.arch.cpu_mm(&k, CpuId(1)), CpuMm { mm: a.id, lazy: true }, "{arch:?}");
        switch_mm(&k, &a);
        assert_eq!(k.arch.cpu_mm(&k, CpuId(1)), CpuMm { mm: a.id, lazy: false }, "{arch:?}");
        assert_eq!(k.arch.cpu_mm(&k, CpuId(0)), CpuMm::default(), "{arch:?}");
    }
}

/// `ptep_set_access_flags(vma, addr, ptep, entry, dirty)` of each profile
/// (arch/x86/mm/pgtable.c, arch/arm64/mm/fault.c, mm/pgtable-generic.c,
/// v6.12): returns whether the entry differed; x86 writes only when
/// `dirty` and never flushes; arm64 merges A / D / W into the live entry
/// (never taking a permission away) and flushes the page when `dirty`;
/// generic writes and flushes (`flush_tlb_fix_spurious_fault` =
/// `flush_tlb_page`) whenever it changed.
#[test]
fn ptep_set_access_flags_of_each_profile() {
    use crate::hw::pte::{Level, Pte};
    for arch in Arch::ALL {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 1);
        let a = k.mm_alloc();
        switch_mm(&k, &a);
        mmap_anon(&k, &a, BASE, PS, true).unwrap();
        k.write_user(&a, BASE, 1).unwrap();
        let table = crate::pgtable::lookup_table(&k, &a, BASE, Level::Pte).unwrap();
        let pte = || crate::pgtable::read(&k, table, Level::Pte, BASE);
        let flushes = || match arch {
            Arch::X86 => k.stats.get(Stat::NrTlbLocalFlushOne) + k.stats.get(Stat::NrTlbLocalFlushAll),
            Arch::Arm64 => k.stats.get(Stat::Arm64BroadcastTlbi),
            Arch::GenericNoRange => k.stats.get(Stat::NoRangeFlushTlbMm),
        };
        let full = pte();
        assert!(full.write() && full.0 & Pte::DIRTY != 0 && full.0 & Pte::ACCESSED != 0, "{arch:?}");
        let f0 = flushes();
        // The same entry: unchanged, no flush.
        assert!(!k.arch.ptep_set_access_flags(&k, &a, table, BASE, full, true), "{arch:?}");
        assert_eq!((pte(), flushes()), (full, f0), "{arch:?}");
        // Clean and old (A, D clear): a write fault's young + dirty entry.
        let old = Pte(full.0 & !(Pte::DIRTY | Pte::ACCESSED));
        crate::pgtable::write(&k, table, Level::Pte, BASE, old);
        assert!(k.arch.ptep_set_access_flags(&k, &a, table, BASE, full, true), "{arch:?}");
        let flushed = if arch == Arch::X86 { 0 } else { 1 };
        assert_eq!((pte(), flushes()), (full, f0 + flushed), "{arch:?}");
        // A read fault's young entry (dirty = false): x86 leaves the PTE,
        // arm64 sets A without a flush, generic sets it and flushes.
        crate::pgtable::write(&k, table, Level::Pte, BASE, old);
        let young = Pte(old.0 | Pte::ACCESSED);
        assert!(k.arch.ptep_set_access_flags(&k, &a, table, BASE, young, false), "{arch:?}");
        let (want, more) = match arch {
            Arch::X86 => (old, 0),
            Arch::Arm64 => (young, 0),
            Arch::GenericNoRange => (young, 1),
        };
        assert_eq!((pte(), flushes()), (want, f0 + flushed + more), "{arch:?}");
        if arch == Arch::Arm64 {
            // The merge keeps the live entry's A / D / W and adds the
            // entry's: a read-only young entry on a dirty writable PTE
            // takes nothing away; on a read-only PTE it grants no write.
            crate::pgtable::write(&k, table, Level::Pte, BASE, full);
            let ro_young = Pte(full.0 & !(Pte::RW | Pte::DIRTY));
            assert!(k.arch.ptep_set_access_flags(&k, &a, table, BASE, ro_young, false));
            assert_eq!(pte(), full);
            let ro = Pte(old.0 & !Pte::RW);
            crate::pgtable::write(&k, table, Level::Pte, BASE, ro);
            assert!(k.arch.ptep_set_access_flags(&k, &a, table, BASE, Pte(ro.0 | Pte::ACCESSED), false));
            assert_eq!(pte(), Pte(ro.0 | Pte::ACCESSED));
        }
        crate::pgtable::write(&k, table, Level::Pte, BASE, full);
    }
}

/// NO_RANGE: every flush entry point — of a range, a page, a PMD range —
/// is one `flush_tlb_mm`: an IPI to
/// the other CPU of mm_cpumask, the whole ASID flushed on both, entries
/// outside the range included.
#[test]
fn generic_every_flush_is_flush_tlb_mm() {
    let k = Kernel::new_sync(KernelConfig { arch: Arch::GenericNoRange, ..KernelConfig::default() }, 2);
    let a = k.mm_alloc();
    let pmd = k.cfg.geometry.pmd_size();
    let flushes: [&dyn Fn(); 4] = [
        &|| k.arch.flush_tlb_range(&k, &a, BASE, BASE + PS, false),
        &|| k.arch.flush_tlb_page(&k, &a, BASE),
        &|| k.arch.flush_pmd_tlb_range(&k, &a, BASE, BASE + pmd),
        &|| k.arch.flush_tlb_mm(&k, &a),
    ];
    for c in [1, 0] {
        k.set_cpu(CpuId(c));
        switch_mm(&k, &a);
    }
    mmap_anon(&k, &a, BASE, 16 * PS, true).unwrap();
    for (i, flush) in flushes.iter().enumerate() {
        let n = i as u64;
        for c in [1, 0] {
            k.set_cpu(CpuId(c));
            k.write_user(&a, BASE + 10 * PS, n).unwrap();
        }
        flush();
        assert_eq!(k.stats.get(Stat::NoRangeFlushTlbMm), n + 1, "flush {i}");
        assert_eq!(k.stats.get(Stat::NoRangeCpuFlush), 2 * (n + 1), "flush {i}");
        assert_eq!(k.stats.get(Stat::TlbIpiSent), n + 1, "flush {i}");
        for c in 0..2 {
            assert_eq!(k.hw.tlb(CpuId(c)).leaf_entries_of(a.id).count(), 0, "flush {i}, CPU {c}");
        }
    }
}

/// The NO_RANGE (m68k) context switch: another mm flushes this CPU's user
/// TLB and loads the root pointer; the same mm, nothing; init_mm from a
/// user mm flushes once, from init_mm nothing.
#[test]
fn generic_switches_flush_only_when_the_mm_changes() {
    let k = Kernel::new_sync(KernelConfig { arch: Arch::GenericNoRange, ..KernelConfig::default() }, 2);
    let (a, b) = (k.mm_alloc(), k.mm_alloc());
    let sw = || k.stats.get(Stat::NoRangeSwitchFlush);
    switch_mm(&k, &a);
    assert_eq!(sw(), 1);
    switch_mm(&k, &a);
    assert_eq!(sw(), 1, "same mm");
    mmap_anon(&k, &a, BASE, PS, true).unwrap();
    k.write_user(&a, BASE, 1).unwrap();
    switch_mm(&k, &b);
    assert_eq!(sw(), 2);
    assert_eq!(k.hw.tlb(CpuId(0)).leaf_entries_of(a.id).count(), 0, "pflushan dropped A's entries");
    assert_eq!(a.cpumask.snapshot().iter().map(|c| c.0).collect::<Vec<_>>(), vec![0], "the bit stays behind");
    crate::tlb::switch_to_init_mm(&k, CpuId(0));
    assert_eq!(sw(), 3);
    assert_eq!(k.arch.cpu_mm(&k, CpuId(0)), CpuMm::default());
    crate::tlb::switch_to_init_mm(&k, CpuId(0));
    assert_eq!(sw(), 3, "already on init_mm");
    // CPU 1 never ran anything: nothing to leave.
    crate::tlb::switch_to_init_mm(&k, CpuId(1));
    assert_eq!(sw(), 3);
}

// ---- arm64: __flush_tlb_range, tlb_flush (asm/tlbflush.h, asm/tlb.h, v6.12) ----

mod arm64_flush {
    use super::*;
    use crate::arch::arm64::{self, MAX_TLBI_RANGE_PAGES};
    use crate::gather::MmuGather;
    use crate::hw::pte::Level;

    fn arm64_kernel(cpu: Arm64Cpu) -> (std::sync::Arc<Kernel>, std::sync::Arc<MmStruct>) {
        let k = Kernel::new_sync(KernelConfig { arch: Arch::Arm64, arm64: cpu, ..KernelConfig::default() }, 2);
        let mm = k.mm_alloc();
        switch_mm(&k, &mm);
        (k, mm)
    }

    fn tlbis(k: &Kernel) -> [u64; 6] {
        [
            Stat::Arm64TlbiVale1is,
            Stat::Arm64TlbiVae1is,
            Stat::Arm64TlbiRvale1is,
            Stat::Arm64TlbiRvae1is,
            Stat::Arm64TlbiAside1is,
            Stat::Arm64BroadcastTlbi,
        ]
        .map(|s| k.stats.get(s))
    }

    #[test]
    fn the_constants_are_the_kernels() {
        assert_eq!(MAX_TLBI_RANGE_PAGES, 1 << 21, "__TLBI_RANGE_PAGES(31, 3)");
        assert_eq!(arm64::tlbi_range_pages(0, 0), 2);
        let (k, _) = arm64_kernel(Arm64Cpu::V8_2);
        assert_eq!(arm64::max_dvm_ops(&k), 512, "PTRS_PER_PTE with 4 KiB pages");
    }

    #[test]
    fn without_range_tlbi_one_per_stride_then_the_whole_asid_from_max_dvm_ops() {
        let (k, mm) = arm64_kernel(Arm64Cpu::V8_2);
        // (MAX_DVM_OPS - 1) pages: one TLBI VALE1IS each.
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 511 * PS, PS, true, Some(Level::Pte));
        assert_eq!(tlbis(&k), [511, 0, 0, 0, 0, 1]);
        // MAX_DVM_OPS strides: flush_tlb_mm instead.
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 512 * PS, PS, true, Some(Level::Pte));
        assert_eq!(tlbis(&k), [511, 0, 0, 0, 1, 2]);
        // The stride counts, not the pages: 4 PMD strides are 4 TLBIs.
        let pmd = k.cfg.geometry.pmd_size();
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 4 * pmd, pmd, false, Some(Level::Pmd));
        assert_eq!(tlbis(&k), [511, 4, 0, 0, 1, 3]);
    }

    #[test]
    fn with_range_tlbi_the_kernels_decomposition_and_the_max_tlbi_range_pages_fallback() {
        let (k, mm) = arm64_kernel(Arm64Cpu::V8_4);
        let mut ops = Vec::new();
        arm64::flush_tlb_range_op(&k, BASE, 101, PS, |op| ops.push(op));
        // scale 1: 64 pages, scale 0: 36 pages, the last page by VA.
        assert_eq!(
            ops,
            [
                arm64::Tlbi::Range { start: BASE, pages: 64 },
                arm64::Tlbi::Range { start: BASE + 64 * PS, pages: 36 },
                arm64::Tlbi::Va { addr: BASE + 100 * PS },
            ]
        );
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 101 * PS, PS, true, Some(Level::Pte));
        assert_eq!(tlbis(&k), [1, 0, 2, 0, 0, 1]);
        // MAX_DVM_OPS does not apply with range TLBIs: 512 pages are 1.
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 512 * PS, PS, false, None);
        assert_eq!(tlbis(&k), [1, 0, 2, 1, 0, 2]);
        // More than MAX_TLBI_RANGE_PAGES pages: flush_tlb_mm.
        arm64::__flush_tlb_range(&k, &mm, 0, (MAX_TLBI_RANGE_PAGES + 1) * PS, PS, true, None);
        assert_eq!(tlbis(&k), [1, 0, 2, 1, 1, 3]);
        // Exactly MAX_TLBI_RANGE_PAGES (`pages > MAX_TLBI_RANGE_PAGES`
        // falls back, not `>=`): one range TLBI of scale 3, num 31.
        let mut ops = Vec::new();
        arm64::flush_tlb_range_op(&k, 0, MAX_TLBI_RANGE_PAGES, PS, |op| ops.push(op));
        assert_eq!(ops, [arm64::Tlbi::Range { start: 0, pages: MAX_TLBI_RANGE_PAGES }]);
        arm64::__flush_tlb_range(&k, &mm, 0, MAX_TLBI_RANGE_PAGES * PS, PS, true, None);
        assert_eq!(tlbis(&k), [1, 0, 3, 1, 1, 4]);
    }

    /// arm64 `flush_tlb_page` (v6.12 `__flush_tlb_page_nosync`): one TLBI
    /// VALE1IS of the page holding `uaddr` (rounded down to PAGE_SIZE), no
    /// neighbour, and the secondary TLBs are told exactly that page
    /// (`mmu_notifier_arch_invalidate_secondary_tlbs(mm, addr, addr +
    /// PAGE_SIZE)`).
    #[test]
    fn flush_tlb_page_invalidates_the_page_holding_the_address_and_tells_secondary_tlbs_that_page() {
        struct Record(std::sync::Arc<crate::sync::Mutex<Vec<(u64, u64)>>>);
        impl crate::notifier::MmuNotifierOps for Record {
            fn arch_invalidate_secondary_tlbs(&self, _k: &Kernel, _mm: u64, start: u64, end: u64) {
                self.0.lock().push((start, end));
            }
        }
        let (k, mm) = arm64_kernel(Arm64Cpu::V8_4);
        let seen = std::sync::Arc::new(crate::sync::Mutex::new(Vec::new()));
        crate::notifier::mmu_notifier_register(&mm, Box::new(Record(seen.clone())));
        mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
        for p in 0..3 {
            k.write_user(&mm, BASE + p * PS, p + 1).unwrap();
        }
        let cached = |va: u64| k.hw.tlb(CpuId(0)).lookup(mm.id, va).is_some();
        let before = tlbis(&k);
        arm64::flush_tlb_page(&k, &mm, BASE + PS + 8);
        assert!(!cached(BASE + PS), "the page holding the address");
        assert!(cached(BASE) && cached(BASE + 2 * PS), "its neighbours stay");
        let after = tlbis(&k);
        assert_eq!([after[0] - before[0], after[4] - before[4], after[5] - before[5]], [1, 0, 1], "one VALE1IS");
        assert_eq!(*seen.lock(), [(BASE + PS, BASE + 2 * PS)], "the secondary TLBs: exactly that page");
    }

    #[test]
    fn flush_tlb_range_and_flush_pmd_tlb_range_drop_walk_caches_flush_tlb_page_does_not() {
        for cpu in [Arm64Cpu::V8_4, Arm64Cpu { asid_bits: 8, ..Arm64Cpu::V8_2 }] {
            let (k, mm) = arm64_kernel(cpu);
            let fill = |k: &Kernel| {
                let mut t = k.hw.tlb(CpuId(1));
                t.insert(mm.id, BASE, Pfn(100), true, true, false, 0);
                t.insert_psc(mm.id, Level::Pte, BASE, Pfn(7), 0);
            };
            let walk_cached = |k: &Kernel| k.hw.tlb(CpuId(1)).lookup_psc(mm.id, BASE).is_some();
            fill(&k);
            k.arch.flush_tlb_page(&k, &mm, BASE);
            assert!(k.hw.tlb(CpuId(1)).lookup(mm.id, BASE).is_none(), "{cpu:?}");
            assert!(walk_cached(&k), "{cpu:?}: flush_tlb_page is last-level only");
            k.arch.flush_tlb_range(&k, &mm, BASE, BASE + PS, false);
            assert!(!walk_cached(&k), "{cpu:?}: flush_tlb_range invalidates table entries too");
            // A THP's PMD leaf (its walk cache: the PTE table it replaced).
            k.hw.tlb(CpuId(1)).insert(mm.id, BASE, Pfn(512), true, true, true, 0);
            k.hw.tlb(CpuId(1)).insert_psc(mm.id, Level::Pte, BASE, Pfn(7), 0);
            k.arch.flush_pmd_tlb_range(&k, &mm, BASE, BASE + k.cfg.geometry.pmd_size());
            assert!(k.hw.tlb(CpuId(1)).lookup(mm.id, BASE).is_none());
            // Level 2 hint: the walk-cache entry of the PTE table (read from
            // a level-2 descriptor) is not covered with FEAT_TTL.
            assert_eq!(walk_cached(&k), cpu.feat_ttl, "{cpu:?}");
            // flush_hugetlb_tlb_range (level 2, all levels): the PMD table's
            // walk-cache entry (from the level-1 PUD descriptor) goes.
            k.hw.tlb(CpuId(1)).insert_psc(mm.id, Level::Pmd, BASE, Pfn(8), 0);
            k.arch.flush_tlb_range(&k, &mm, BASE, BASE + k.cfg.geometry.pmd_size(), true);
            let pmd_table_cached = k.hw.tlb(CpuId(1)).psc_entries().any(|(l, e)| l == Level::Pmd && e.table == Pfn(8));
            assert!(!pmd_table_cached, "{cpu:?}: flush_hugetlb_tlb_range drops the PUD-level walk cache");
        }
    }

    /// `__flush_tlb_range_nosync`: `start = round_down(start, stride)`,
    /// `end = round_up(end, stride)` — an unaligned start invalidates the
    /// page holding it, not the one below.
    #[test]
    fn flush_tlb_range_rounds_the_range_to_the_stride() {
        for cpu in [Arm64Cpu::V8_4, Arm64Cpu::V8_2] {
            let (k, mm) = arm64_kernel(cpu);
            for p in 0..3 {
                k.hw.tlb(CpuId(1)).insert(mm.id, BASE + p * PS, Pfn(100 + p), true, true, false, 0);
            }
            arm64::__flush_tlb_range(&k, &mm, BASE + PS + 5, BASE + PS + 6, PS, true, Some(Level::Pte));
            let cached = |va| k.hw.tlb(CpuId(1)).lookup(mm.id, va).is_some();
            assert!(!cached(BASE + PS), "{cpu:?}");
            assert!(cached(BASE) && cached(BASE + 2 * PS), "{cpu:?}");
            assert_eq!(tlbis(&k), [1, 0, 0, 0, 0, 1], "{cpu:?}: one page, one VALE1IS");
        }
    }

    /// FEAT_TTL: range TLBIs carry the level hint (levels 1..3 only:
    /// `__TLBI_VADDR_RANGE` encodes a level-0 hint as unknown) — a level-3
    /// hint spares a PMD leaf in the range, a level-0 hint spares nothing.
    #[test]
    fn range_tlbis_carry_the_level_hint_except_level_0() {
        let (k, mm) = arm64_kernel(Arm64Cpu::V8_4);
        let pmd_leaf = |k: &Kernel| k.hw.tlb(CpuId(1)).leaf_entries_of(mm.id).filter(|e| e.huge).count();
        k.hw.tlb(CpuId(1)).insert(mm.id, BASE, Pfn(512), true, true, true, 0);
        k.hw.tlb(CpuId(1)).insert(mm.id, BASE + PS, Pfn(101), true, true, false, 0);
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 101 * PS, PS, true, Some(Level::Pte));
        let pte_leaves = |k: &Kernel| k.hw.tlb(CpuId(1)).leaf_entries_of(mm.id).filter(|e| !e.huge).count();
        assert_eq!(pte_leaves(&k), 0, "the PTE leaf goes");
        assert_eq!(pmd_leaf(&k), 1, "TTL=3: the PMD leaf is not looked at");
        k.hw.tlb(CpuId(1)).insert(mm.id, BASE + PS, Pfn(101), true, true, false, 0);
        arm64::__flush_tlb_range(&k, &mm, BASE, BASE + 101 * PS, PS, true, Some(Level::Pgd));
        assert_eq!(pmd_leaf(&k), 0, "a level-0 hint becomes TLBI_TTL_UNKNOWN in a range TLBI");
        assert_eq!(pte_leaves(&k), 0);
    }

    /// asm/tlb.h `tlb_get_level`: the one level cleared — PTE 3, PMD 2,
    /// PUD 1, P4D (folded into the PGD) 0 — else TLBI_TTL_UNKNOWN.
    #[test]
    fn tlb_get_level_is_the_only_level_cleared() {
        let (k, mm) = arm64_kernel(Arm64Cpu::V8_4);
        let level = |f: &dyn Fn(&mut MmuGather<'_>)| {
            let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
            f(&mut tlb);
            let l = arm64::tlb_get_level(&tlb);
            tlb.tlb_finish_mmu();
            l
        };
        assert_eq!(level(&|t| t.tlb_flush_pte_range(BASE, PS)), Some(Level::Pte));
        assert_eq!(level(&|t| t.tlb_flush_pmd_range(BASE, PS)), Some(Level::Pmd));
        assert_eq!(level(&|t| t.tlb_flush_pud_range(BASE, PS)), Some(Level::Pud));
        assert_eq!(level(&|t| t.tlb_flush_p4d_range(BASE, PS)), Some(Level::Pgd));
        assert_eq!(
            level(&|t| {
                t.tlb_flush_pte_range(BASE, PS);
                t.tlb_flush_pmd_range(BASE, PS);
            }),
            None
        );
    }

    #[test]
    fn tlb_flush_uses_the_unmap_stride_and_the_level_of_what_was_cleared() {
        let (k, mm) = arm64_kernel(Arm64Cpu::V8_2);
        let pmd = k.cfg.geometry.pmd_size();
        // A THP zapped: PMD leaves only, stride PMD_SIZE, hint level 2.
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_remove_pmd_tlb_entry(BASE);
        tlb.tlb_remove_pmd_tlb_entry(BASE + pmd);
        assert_eq!(arm64::tlb_get_level(&tlb), Some(Level::Pmd));
        tlb.tlb_flush_mmu();
        assert_eq!(tlbis(&k), [2, 0, 0, 0, 0, 1], "one VALE1IS per 2 MiB");
        // PTEs and a freed PTE table: all levels, no hint, the smallest stride.
        tlb.tlb_remove_tlb_entries(BASE, 3);
        let table = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
        tlb.pte_free_tlb(table, BASE);
        assert_eq!(arm64::tlb_get_level(&tlb), None);
        tlb.tlb_finish_mmu();
        assert_eq!(tlbis(&k), [2, 3, 0, 0, 0, 2], "three VAE1IS at PAGE_SIZE stride");
        assert_eq!(k.stats.get(Stat::TlbFlushRanged), 2);
        k.rcu_barrier();
    }
}

// ---- arm64: the context switch (asm/mmu_context.h, mm/context.c, v6.12) ----

mod arm64_switch {
    use super::*;
    use std::sync::Arc;

    fn arm64(nr_cpus: usize, asid_bits: u32) -> Arc<Kernel> {
        let arm64 = Arm64Cpu { asid_bits, ..Arm64Cpu::default() };
        Kernel::new_sync(KernelConfig { arch: Arch::Arm64, arm64, ..KernelConfig::default() }, nr_cpus)
    }

    fn on(k: &Kernel, cpu: u32, mm: &std::sync::Arc<MmStruct>) {
        k.set_cpu(CpuId(cpu));
        switch_mm(k, mm);
    }

    const ASID_MASK: u64 = 0xff;

    #[test]
    fn a_switch_flushes_nothing_and_every_mm_keeps_its_entries() {
        let k = arm64(1, 16);
        let (a, b) = (k.mm_alloc(), k.mm_alloc());
        on(&k, 0, &a);
        mmap_anon(&k, &a, BASE, PS, true).unwrap();
        k.write_user(&a, BASE, 1).unwrap();
        on(&k, 0, &b);
        mmap_anon(&k, &b, BASE, PS, true).unwrap();
        k.write_user(&b, BASE, 2).unwrap();
        // Back to a: its translation is still cached (tagged by its ASID).
        on(&k, 0, &a);
        let walks = k.hw.counters(CpuId(0)).walks;
        assert_eq!(k.read_user(&a, BASE).unwrap(), 1);
        assert_eq!(k.hw.counters(CpuId(0)).walks, walks, "a TLB hit: nothing was flushed on the switches");
        assert_eq!(k.hw.tlb(CpuId(0)).leaf_entries().count(), 2);
        for s in [Stat::TraceOnTaskSwitch, Stat::Arm64TlbiVmalle1, Stat::Arm64AsidRollover, Stat::Arm64BroadcastTlbi] {
            assert_eq!(k.stats.get(s), 0, "{}", s.name());
        }
        // First ASIDs of generation 1 (1 << 16), from #1: a = 1, b = 2.
        assert_eq!(a.context_id.load(Ordering::SeqCst), (1 << 16) | 1);
        assert_eq!(b.context_id.load(Ordering::SeqCst), (1 << 16) | 2);
        assert!(a.cpumask.snapshot().is_empty(), "arm64 keeps no mm_cpumask");
        exit_mm(&k, &b);
        on(&k, 0, &a);
        exit_mm(&k, &a);
        k.rcu_barrier();
        assert_eq!(k.san.count(), 0);
    }

    #[test]
    fn a_rollover_bumps_the_generation_and_each_cpu_flushes_once_at_its_next_switch() {
        // 8-bit ASIDs: 255 allocatable (ASID 0 is init_mm's).
        let k = arm64(2, 8);
        let keep = k.mm_alloc();
        on(&k, 1, &keep);
        mmap_anon(&k, &keep, BASE, PS, true).unwrap();
        k.write_user(&keep, BASE, 7).unwrap();
        assert_eq!(keep.context_id.load(Ordering::SeqCst), (1 << 8) | 1);
        // CPU0 runs 254 more address spaces: ASIDs 2..=255, no rollover.
        let mut mms = Vec::new();
        for _ in 0..254 {
            let m = k.mm_alloc();
            on(&k, 0, &m);
            mms.push(m);
        }
        assert_eq!(mms.last().unwrap().context_id.load(Ordering::SeqCst), (1 << 8) | 255);
        assert_eq!(k.stats.get(Stat::Arm64AsidRollover), 0);
        // The next one finds no free ASID: generation 2, and the ASIDs
        // active on each CPU (1 on CPU1, 255 on CPU0) stay reserved.
        let m = k.mm_alloc();
        on(&k, 0, &m);
        assert_eq!(k.stats.get(Stat::Arm64AsidRollover), 1);
        assert_eq!(m.context_id.load(Ordering::SeqCst), (2 << 8) | 2, "the first free ASID after 1");
        assert_eq!(k.stats.get_cpu(CpuId(0), Stat::Arm64TlbiVmalle1), 1, "the rolling CPU flushed its TLB");
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::Arm64TlbiVmalle1), 0, "CPU1 flushes at its next switch");
        assert_eq!(k.hw.tlb(CpuId(1)).leaf_entries().count(), 1, "CPU1 still caches keep's page");
        // CPU1 switches away and back: one local flush, and keep, whose ASID
        // was reserved on CPU1, keeps ASID 1 in the new generation.
        let other = mms.remove(0);
        on(&k, 1, &other);
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::Arm64TlbiVmalle1), 1);
        assert_eq!(k.hw.tlb(CpuId(1)).leaf_entries().count(), 0);
        assert_eq!(other.context_id.load(Ordering::SeqCst), (2 << 8) | 3, "its old ASID 2 is taken: next free");
        on(&k, 1, &keep);
        assert_eq!(keep.context_id.load(Ordering::SeqCst), (2 << 8) | 1, "check_update_reserved_asid");
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::Arm64TlbiVmalle1), 1, "one flush per rollover");
        // A switch with a current-generation ASID is the fast path: nothing.
        on(&k, 0, &keep);
        on(&k, 0, &m);
        assert_eq!(k.stats.get(Stat::Arm64TlbiVmalle1), 2);
        assert_eq!(keep.context_id.load(Ordering::SeqCst) & ASID_MASK, 1);
        assert_eq!(k.stats.get(Stat::Arm64BroadcastTlbi), 0, "no broadcast TLBI on any switch");
        for mm in mms.iter().chain([&other]) {
            crate::ops::mmdrop(&k, mm);
        }
        on(&k, 1, &keep);
        exit_mm(&k, &keep);
        on(&k, 0, &m);
        exit_mm(&k, &m);
        k.rcu_barrier();
        assert_eq!(k.san.count(), 0);
    }

    /// arch/arm64/mm/context.c (v6.12) after a rollover: a CPU the rollover
    /// caught (its `active_asids` swapped to 0) takes the slow path at its
    /// next switch even to an mm already of the new generation, and does
    /// its pending `local_flush_tlb_all`; `new_context` keeps an mm's old
    /// ASID when it is reserved (it was running) or still free in the new
    /// generation (`!__test_and_set_bit(asid, asid_map)`).
    #[test]
    fn after_a_rollover_each_cpu_flushes_once_and_old_asids_are_kept_where_free_or_reserved() {
        let k = arm64(2, 8);
        let keep = k.mm_alloc();
        on(&k, 1, &keep);
        let mms: Vec<_> = (0..254)
            .map(|_| {
                let m = k.mm_alloc();
                on(&k, 0, &m);
                m
            })
            .collect();
        assert_eq!(mms[10].context_id.load(Ordering::SeqCst), (1 << 8) | 12);
        let m = k.mm_alloc();
        on(&k, 0, &m); // no free ASID: CPU0 rolls over
        assert_eq!(k.stats.get(Stat::Arm64AsidRollover), 1);
        assert_eq!(m.context_id.load(Ordering::SeqCst), (2 << 8) | 2);
        // CPU1 switches to m, already of generation 2: still the slow path.
        on(&k, 1, &m);
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::Arm64TlbiVmalle1), 1, "CPU1's pending flush");
        assert_eq!(m.context_id.load(Ordering::SeqCst), (2 << 8) | 2, "m's context unchanged");
        // ASID 12 is free in generation 2: mms[10] keeps it.
        on(&k, 0, &mms[10]);
        assert_eq!(mms[10].context_id.load(Ordering::SeqCst), (2 << 8) | 12, "old ASID, still free");
        // ASID 255 was running on CPU0 at the rollover: reserved, kept.
        on(&k, 0, &mms[253]);
        assert_eq!(mms[253].context_id.load(Ordering::SeqCst), (2 << 8) | 255, "reserved ASID");
        assert_eq!(k.stats.get(Stat::Arm64TlbiVmalle1), 2, "one local flush per CPU, no more");
        for mm in mms.iter().chain([&keep]) {
            crate::ops::mmdrop(&k, mm);
        }
        on(&k, 1, &m);
        exit_mm(&k, &m);
        k.rcu_barrier();
        assert_eq!(k.san.count(), 0);
    }

    #[test]
    fn exit_frees_pages_before_any_tlbi_and_the_walk_caches_at_free_pgtables() {
        let k = arm64(2, 16);
        let mm = k.mm_alloc();
        on(&k, 1, &mm);
        mmap_anon(&k, &mm, BASE, 32 * PS, true).unwrap();
        for p in 0..32 {
            k.write_user(&mm, BASE + p * PS, p).unwrap();
        }
        // Every gather page batch fails: the 8-slot local batch fills and
        // zap flushes it mid-exit (fullmm, no table freed yet).
        k.inject.faults.fail_page_batch.store(u32::MAX, Ordering::SeqCst);
        exit_mm(&k, &mm);
        assert!(k.stats.get(Stat::GatherFlushes) >= 4, "{}", k.stats.get(Stat::GatherFlushes));
        // Only free_pgtables' flush issued a TLBI: the whole ASID, once.
        assert_eq!(k.stats.get(Stat::Arm64BroadcastTlbi), 1);
        assert_eq!(k.stats.get(Stat::Arm64TlbiAside1is), 1);
        assert_eq!(k.stats.get(Stat::TlbFlushFull), 1);
        assert_eq!(k.stats.get(Stat::TlbFlushRanged), 0);
        // The exiting CPU (lazy) held translations of pages freed before
        // that flush; nobody could use them: no violation.
        k.rcu_barrier();
        assert_eq!(k.san.count(), 0, "{:?}", k.san.violations().first());
    }
}

// ---- arm64: walk caches after hugetlb PMD unsharing (c2ff4764e03e) -------

mod arm64_unshare {
    use super::*;
    use crate::check::ViolationKind;
    use crate::config::Fixes;
    use crate::ops::{mmap_hugetlb, truncate_inode_pages};
    use std::sync::Arc;

    const GIB: u64 = 1 << 30;
    const MIB2: u64 = 2 << 20;
    /// The hugetlb area (PGD-aligned) and an anonymous neighbour in the same
    /// PGD region, so unmapping the area frees no page table at all.
    const HBASE: u64 = 512 * GIB;
    const NEIGHBOUR: u64 = HBASE + 256 * GIB;

    /// What P2 saw reading its (unmapped) first hugetlb word after P1
    /// reused the PMD table they shared.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        read: Option<u64>,
        unshared_walks: usize,
        vae1is: u64,
        vale1is: u64,
    }

    /// P1 maps 1 GiB of a hugetlb file and faults its first huge page; P2
    /// is its fork (sharing P1's PMD table S) and reads that page on CPU0
    /// (its walk cache now holds P2's PUD → S), then munmaps the area:
    /// huge_pmd_unshare, one gather flush.  P1 (CPU1) then reuses S:
    /// munmap of its first 2 MiB, an anonymous mapping there and a write
    /// fault, so S's slot 0 points at P1's PTE table and anon page (0x51).
    /// Finally P2 reads its first hugetlb word again.
    fn unshare_then_reuse(fixes: Fixes, arm64: Arm64Cpu, arch: Arch) -> Outcome {
        let k = Kernel::new_sync(KernelConfig { arch, arm64, fixes, ..KernelConfig::default() }, 2);
        let f = k.new_file(GIB / PS);
        let p1 = k.mm_alloc();
        k.set_cpu(CpuId(1));
        switch_mm(&k, &p1);
        mmap_anon(&k, &p1, NEIGHBOUR, PS, true).unwrap();
        mmap_hugetlb(&k, &p1, HBASE, GIB, true, &f, 0).unwrap();
        k.write_user(&p1, HBASE + 8, 0xf11e).unwrap();
        let p2 = dup_mmap(&k, &p1).unwrap();
        k.set_cpu(CpuId(0));
        switch_mm(&k, &p2);
        assert_eq!(k.read_user(&p2, HBASE + 8).unwrap(), 0xf11e);
        let before = [Stat::Arm64TlbiVae1is, Stat::Arm64TlbiVale1is, Stat::Arm64TlbiRvae1is, Stat::Arm64TlbiRvale1is]
            .map(|s| k.stats.get(s));
        munmap(&k, &p2, HBASE, GIB).unwrap();
        let by = |i: usize, s: Stat| k.stats.get(s) - before[i];
        let vae1is = by(0, Stat::Arm64TlbiVae1is) + by(2, Stat::Arm64TlbiRvae1is);
        let vale1is = by(1, Stat::Arm64TlbiVale1is) + by(3, Stat::Arm64TlbiRvale1is);
        k.set_cpu(CpuId(1));
        switch_mm(&k, &p1);
        munmap(&k, &p1, HBASE, MIB2).unwrap();
        mmap_anon(&k, &p1, HBASE, MIB2, true).unwrap();
        k.write_user(&p1, HBASE + 8, 0x51).unwrap();
        k.set_cpu(CpuId(0));
        switch_mm(&k, &p2);
        let read = k.read_user(&p2, HBASE + 8).ok();
        let unshared_walks = k.san.count_kind(ViolationKind::WalkIntoUnsharedTable);
        assert_eq!(k.san.count() as usize, unshared_walks, "{:?}", k.san.violations());
        exit_mm(&k, &p2);
        k.set_cpu(CpuId(1));
        switch_mm(&k, &p1);
        exit_mm(&k, &p1);
        assert_eq!(truncate_inode_pages(&k, &f, 0), 0);
        crate::ops::test_util::drop_lazy_mms(&k);
        k.rcu_barrier();
        assert_eq!(k.alloc.in_use().total(), 0, "leaked frames");
        Outcome { read, unshared_walks, vae1is, vale1is }
    }

    #[test]
    fn with_the_fix_the_unshare_flush_drops_the_walk_cache_and_the_read_faults() {
        let on = unshare_then_reuse(Fixes::all(), Arm64Cpu::V8_4, Arch::Arm64);
        // The gather's flush of the PUD region at PMD stride: RVAE1IS
        // (range TLBI, TTL=2): P2's PUD-level walk-cache entry goes.
        assert_eq!(on, Outcome { read: None, unshared_walks: 0, vae1is: 1, vale1is: 0 });
    }

    #[test]
    fn without_the_fix_p2_walks_through_the_reused_table_into_p1s_page() {
        let off = unshare_then_reuse(Fixes::all().revert(Fix::Arm64UnshareWalkCache), Arm64Cpu::V8_4, Arch::Arm64);
        // RVALE1IS with TTL=2 dropped the 2 MiB leaf only; P2's next access
        // walked from its cached PUD → S into P1's PTE table and read P1's
        // anonymous page after munmap had returned.
        assert_eq!(off, Outcome { read: Some(0x51), unshared_walks: 1, vae1is: 0, vale1is: 1 });
    }

    #[test]
    fn without_range_tlbi_the_max_dvm_ops_fallback_hides_the_bug() {
        // Armv8.2: a PUD region at PMD stride is MAX_DVM_OPS (512) strides,
        // so __flush_tlb_range falls back to flush_tlb_mm, walk caches and
        // all: the reverted kernel is safe on these CPUs.
        let off = unshare_then_reuse(Fixes::all().revert(Fix::Arm64UnshareWalkCache), Arm64Cpu::V8_2, Arch::Arm64);
        assert_eq!(off, Outcome { read: None, unshared_walks: 0, vae1is: 0, vale1is: 0 });
    }

    #[test]
    fn x86_invlpg_drops_the_walk_caches_anyway() {
        let off = unshare_then_reuse(Fixes::all().revert(Fix::Arm64UnshareWalkCache), Arm64Cpu::V8_4, Arch::X86);
        assert_eq!(off, Outcome { read: None, unshared_walks: 0, vae1is: 0, vale1is: 0 });
    }

    #[test]
    fn a_walk_through_a_table_still_linked_is_no_violation() {
        // P1 keeps S (it never unshared): its walks through S, before and
        // after P2's unshare, are fine; and the ghost state only names P2.
        let k = Kernel::new_sync(
            KernelConfig {
                arch: Arch::Arm64,
                fixes: Fixes::all().revert(Fix::Arm64UnshareWalkCache),
                ..KernelConfig::default()
            },
            2,
        );
        let f = k.new_file(GIB / PS);
        let p1 = k.mm_alloc();
        k.set_cpu(CpuId(1));
        switch_mm(&k, &p1);
        mmap_anon(&k, &p1, NEIGHBOUR, PS, true).unwrap();
        mmap_hugetlb(&k, &p1, HBASE, GIB, true, &f, 0).unwrap();
        k.write_user(&p1, HBASE + 8, 1).unwrap();
        let p2: Arc<MmStruct> = dup_mmap(&k, &p1).unwrap();
        k.set_cpu(CpuId(0));
        switch_mm(&k, &p2);
        k.read_user(&p2, HBASE + 8).unwrap();
        munmap(&k, &p2, HBASE, GIB).unwrap();
        k.set_cpu(CpuId(1));
        // Drop P1's leaf only (a last-level flush): its next access walks
        // from its cached PUD → S, which P1 still links.
        crate::arch::arm64::flush_tlb_page(&k, &p1, HBASE);
        assert_eq!(k.read_user(&p1, HBASE + 8).unwrap(), 1);
        assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
        exit_mm(&k, &p1);
        k.set_cpu(CpuId(0));
        exit_mm(&k, &p2);
        assert_eq!(truncate_inode_pages(&k, &f, 0), 0);
    }
}

// ---- pte_needs_flush (change_pte_range's question) --------------------------

#[test]
fn pte_needs_flush_x86_flag_rules_and_the_generic_default() {
    use crate::hw::pte::Pte;
    use crate::types::Pfn;
    let x86 = Kernel::new_sync(KernelConfig { arch: Arch::X86, ..KernelConfig::default() }, 1);
    let f = |old: u64, new: u64| x86.arch.pte_needs_flush(Pte::new(Pfn(7), old), Pte::new(Pfn(7), new));
    const P: u64 = Pte::PRESENT;
    const U: u64 = Pte::USER;
    const W: u64 = Pte::RW;
    const A: u64 = Pte::ACCESSED;
    const D: u64 = Pte::DIRTY;
    // _PAGE_RW / _PAGE_USER: flush on any change, upgrades included.
    assert!(f(P | U | W, P | U), "RW → RO");
    assert!(f(P | U, P | U | W), "RO → RW");
    assert!(f(P | U | W, P | W), "USER cleared");
    assert!(f(P | W, P | U | W), "USER set");
    assert!(f(P | U, P | U | Pte::HUGE), "_PAGE_PSE changed");
    // Nothing changed: no flush.
    assert!(!f(P | U | W | A | D, P | U | W | A | D));
    // _PAGE_DIRTY flushes when cleared, not when set.
    assert!(f(P | U | W | D, P | U | W), "D cleared");
    assert!(!f(P | U | W, P | U | W | D), "D set");
    // _PAGE_ACCESSED is ignored (ignore_access = true), either way.
    assert!(!f(P | U | A, P | U), "A cleared");
    assert!(!f(P | U, P | U | A), "A set");
    // _PAGE_PRESENT cleared flushes; an old non-present entry never does.
    assert!(f(P | U, U));
    assert!(!f(U | W, P | U | W));
    // A changed pfn always flushes.
    assert!(x86.arch.pte_needs_flush(Pte::new(Pfn(7), P | U), Pte::new(Pfn(8), P | U)));
    // A bit outside the known sets (the CONFIG_DEBUG_VM branch) flushes;
    // a software bit (_PAGE_SPECIAL = _PAGE_SOFTW1, bit 9) never does.
    assert!(f(P | U, P | U | (1 << 8)));
    assert!(!f(P | U, P | U | Pte::SPECIAL), "_PAGE_SPECIAL set");
    assert!(!f(P | U | Pte::SPECIAL, P | U), "_PAGE_SPECIAL cleared");
    // arm64 and the no-range profile: the asm-generic default, always true.
    for arch in [Arch::Arm64, Arch::GenericNoRange] {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 1);
        let same = Pte::new(Pfn(7), P | U | W);
        assert!(k.arch.pte_needs_flush(same, same), "{arch:?}");
        assert!(k.arch.pte_needs_flush(Pte::new(Pfn(7), P | U), Pte::new(Pfn(7), P | U | W)), "{arch:?}");
    }
}

// ---- exit: mm_count, lazy CPUs hold the mm, __mmdrop at the last reference ----
// (kernel/fork.c mmdrop / __mmdrop, kernel/exit.c exit_mm's mmgrab_lazy_tlb,
// kernel/sched/core.c finish_task_switch → mmdrop_lazy_tlb; x86 does not
// select MMU_LAZY_TLB_SHOOTDOWN, and every profile here shares the rule)

#[test]
fn exit_leaves_the_mm_to_lazy_cpus_until_they_switch_away_without_an_ipi() {
    for arch in Arch::ALL {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 3);
        let (a, b) = (k.mm_alloc(), k.mm_alloc());
        assert_eq!(a.mm_count.get(), 1, "{arch:?}: the users' reference");
        for c in [1u32, 0] {
            k.set_cpu(CpuId(c));
            switch_mm(&k, &a);
        }
        assert_eq!(a.mm_count.get(), 3, "{arch:?}: + one per CPU with it as active_mm");
        k.set_cpu(CpuId(1));
        enter_lazy_tlb(&k); // a kernel thread on CPU 1 borrows A
        k.set_cpu(CpuId(0));
        let tables = k.alloc.in_use().page_table;
        let cal: u64 = (0..3).map(|c| k.smp.call_interrupts(CpuId(c))).sum();
        exit_mm(&k, &a); // nothing mapped: exit_mmap flushes nothing
        assert_eq!((0..3).map(|c| k.smp.call_interrupts(CpuId(c))).sum::<u64>(), cal, "{arch:?}: no IPI");
        assert_eq!(a.mm_count.get(), 2, "{arch:?}: CPUs 0 (exiting, now lazy) and 1 hold A");
        assert_eq!(k.arch.cpu_mm(&k, CpuId(1)).mm, a.id, "{arch:?}: CPU 1 still has A loaded");
        assert_eq!(k.alloc.in_use().page_table, tables, "{arch:?}: A's PGD is still there");
        k.set_cpu(CpuId(1));
        switch_mm(&k, &b); // finish_task_switch drops CPU 1's reference
        assert_eq!(a.mm_count.get(), 1, "{arch:?}");
        assert_eq!(k.alloc.in_use().page_table, tables, "{arch:?}");
        k.set_cpu(CpuId(0));
        crate::tlb::drop_lazy_mm(&k); // CPU 0's next switch: the last reference
        assert_eq!(a.mm_count.get(), 0, "{arch:?}");
        assert_eq!(k.alloc.in_use().page_table, tables - 1, "{arch:?}: __mmdrop freed the PGD");
        assert_eq!(k.san.count(), 0, "{arch:?}");
        assert_eq!((0..3).map(|c| k.smp.call_interrupts(CpuId(c))).sum::<u64>(), cal, "{arch:?}: still none");
    }
}

// ---- x86: mm_cpumask, IPI filter and trace reasons, v6.12 vs v6.18 ----------
// (arch/x86/mm/tlb.c: switch_mm_irqs_off, flush_tlb_func,
// native_flush_tlb_multi with tlb_is_not_lazy (v6.12) / should_flush_tlb and
// should_trim_cpumask (v6.18))

mod x86_versions {
    use super::*;
    use crate::arch::x86::{flush_tlb_func, FlushTlbInfo, TLB_GENERATION_INVALID};
    use crate::config::KernelVersion;
    use crate::stats::TLB_FLUSH_ALL;
    use crate::sync::{Arc, Mutex};

    type Events = Arc<Mutex<Vec<(u32, &'static str, u64)>>>;

    fn x86(kernel: KernelVersion, cpus: usize) -> (Arc<Kernel>, Events) {
        let k = Kernel::new_sync(KernelConfig { kernel, ..KernelConfig::default() }, cpus);
        let ev: Events = Arc::new(Mutex::new(Vec::new()));
        let e = ev.clone();
        k.stats.set_trace_hook(Box::new(move |t| e.lock().push((t.cpu.0, t.reason, t.pages))));
        (k, ev)
    }

    fn on(k: &Kernel, cpu: u32, mm: &Arc<MmStruct>) {
        k.set_cpu(CpuId(cpu));
        switch_mm(k, mm);
    }

    fn mask(mm: &MmStruct) -> Vec<u32> {
        mm.cpumask.snapshot().iter().map(|c| c.0).collect()
    }

    fn cpu_stat(k: &Kernel, s: Stat) -> Vec<u64> {
        (0..k.hw.nr_cpus()).map(|c| k.stats.get_cpu(CpuId(c as u32), s)).collect()
    }

    /// The minimal program: threads of mm A on CPUs 0 and 1 (each touched
    /// page 0), a kernel thread on CPU 2 lazily holding A, CPU 3 ran A and
    /// switched to B.
    fn program(kernel: KernelVersion) -> (Arc<Kernel>, Events, Arc<MmStruct>, Arc<MmStruct>) {
        let (k, ev) = x86(kernel, 4);
        let (a, b) = (k.mm_alloc(), k.mm_alloc());
        on(&k, 0, &a);
        mmap_anon(&k, &a, BASE, 1024 * PS, true).unwrap();
        for c in 0..4 {
            on(&k, c, &a);
            k.write_user(&a, BASE, 1).unwrap();
        }
        k.set_cpu(CpuId(2));
        enter_lazy_tlb(&k);
        on(&k, 3, &b);
        on(&k, 0, &a);
        ev.lock().clear();
        (k, ev, a, b)
    }

    #[test]
    fn switch_clears_the_previous_mm_from_cpumask_on_6_12_only() {
        let (k, ev, a, b) = program(KernelVersion::V6_12);
        assert_eq!(mask(&a), vec![0, 1, 2], "v6.12: CPU3's switch to B cleared it from A's mask");
        assert_eq!(mask(&b), vec![3]);
        assert!(ev.lock().is_empty());
        let (k18, _, a18, b18) = program(KernelVersion::V6_18);
        assert_eq!(mask(&a18), vec![0, 1, 2, 3], "v6.18 (209954cbc7d0): CPU3 stays in A's mask");
        assert_eq!(mask(&b18), vec![3]);
        drop((k, k18));
    }

    #[test]
    fn plain_flush_skips_the_lazy_cpu_and_the_cpu_that_left() {
        for kernel in KernelVersion::ALL {
            let (k, ev, a, _b) = program(kernel);
            madvise_dontneed(&k, &a, BASE, PS).unwrap();
            // CPU 0 flushes its one page itself; only CPU 1 is interrupted:
            // CPU 2 is lazy (tlb_is_not_lazy / should_flush_tlb), CPU 3 is
            // out of the mask (v6.12) or runs B without a trim due (v6.18).
            assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush), 1, "{kernel}");
            assert_eq!(cpu_stat(&k, Stat::NrTlbRemoteFlushReceived), vec![0, 1, 0, 0], "{kernel}");
            assert_eq!(cpu_stat(&k, Stat::IrqTlbCount), vec![0, 1, 0, 0], "{kernel}");
            assert_eq!(cpu_stat(&k, Stat::NrTlbLocalFlushOne), vec![1, 0, 0, 0], "{kernel}");
            assert_eq!(k.stats.get(Stat::NrTlbLocalFlushAll), 0, "{kernel}");
            assert_eq!(
                *ev.lock(),
                vec![(0, "TLB_REMOTE_SEND_IPI", 1), (1, "TLB_REMOTE_SHOOTDOWN", 1), (0, "TLB_LOCAL_MM_SHOOTDOWN", 1)],
                "{kernel}"
            );
            assert_eq!(k.cpus[2].loaded_mm.load(Ordering::SeqCst), a.id, "{kernel}: the lazy CPU keeps A");
            assert_eq!(k.san.count(), 0);
        }
    }

    #[test]
    fn once_a_second_the_6_18_flush_trims_cpus_that_left() {
        let (k, ev, a, _b) = program(KernelVersion::V6_18);
        k.smp.as_sync().unwrap().advance_jiffies(crate::smp::HZ + 1);
        madvise_dontneed(&k, &a, BASE, PS).unwrap();
        // should_trim_cpumask: CPU 3 (running B) is interrupted too and
        // clears itself; CPU 2 stays skipped (lazy).
        assert_eq!(cpu_stat(&k, Stat::NrTlbRemoteFlushReceived), vec![0, 1, 0, 1]);
        assert_eq!(cpu_stat(&k, Stat::IrqTlbCount), vec![0, 1, 0, 1]);
        assert_eq!(k.stats.get(Stat::TlbIpiSent), 2);
        assert_eq!(mask(&a), vec![0, 1, 2]);
        assert_eq!(cpu_stat(&k, Stat::CpumaskTrimmed), vec![0, 0, 0, 1]);
        assert!(ev.lock().contains(&(3, "TLB_REMOTE_WRONG_CPU", 0)));
        // The next trim is a second later: a flush now sends one IPI.
        k.write_user(&a, BASE, 2).unwrap();
        madvise_dontneed(&k, &a, BASE, PS).unwrap();
        assert_eq!(k.stats.get(Stat::TlbIpiSent), 3);
        assert_eq!(a.next_trim_cpumask.load(Ordering::SeqCst), 2 * crate::smp::HZ + 1);
        // v6.12 has no trim: CPU 3 left the mask at its switch.
        let (k12, _, a12, _) = program(KernelVersion::V6_12);
        k12.smp.as_sync().unwrap().advance_jiffies(crate::smp::HZ + 1);
        madvise_dontneed(&k12, &a12, BASE, PS).unwrap();
        assert_eq!(cpu_stat(&k12, Stat::NrTlbRemoteFlushReceived), vec![0, 1, 0, 0]);
        assert_eq!(k12.stats.get(Stat::CpumaskTrimmed), 0);
        assert_eq!(k12.stats.get(Stat::TraceRemoteWrongCpu), 0);
    }

    #[test]
    fn freed_tables_reach_every_cpu_in_the_mask() {
        for kernel in KernelVersion::ALL {
            let (k, ev, a, _b) = program(kernel);
            // The whole mapping: x86 selects MMU_GATHER_MERGE_VMAS, so
            // tlb_end_vma does not flush the one page mapped; free_pgtables
            // frees the PTE table and tlb_finish_mmu makes the one flush,
            // with freed_tables.
            munmap(&k, &a, BASE, 1024 * PS).unwrap();
            let v6_18 = kernel == KernelVersion::V6_18;
            // The flush: v6.12 reaches CPUs 1 and 2 (3 left the mask);
            // v6.18 also 3, which finds B loaded and clears itself.
            let received = if v6_18 { vec![0, 1, 1, 1] } else { vec![0, 1, 1, 0] };
            assert_eq!(cpu_stat(&k, Stat::NrTlbRemoteFlushReceived), received, "{kernel}");
            assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush), 1, "{kernel}");
            // One flush, and a full one: pmd_free_tlb / pud_free_tlb widen
            // the range to the PUD-aligned start, past the 33-page ceiling.
            assert_eq!(cpu_stat(&k, Stat::NrTlbLocalFlushOne), vec![0, 0, 0, 0], "{kernel}");
            assert_eq!(cpu_stat(&k, Stat::NrTlbLocalFlushAll), vec![1, 0, 0, 0], "{kernel}");
            // The lazy CPU 2 left A for init_mm: a real switch, into the
            // PCID slot init_mm has held since boot, up to date: traced 0.
            assert_eq!(cpu_stat(&k, Stat::LazySwitchToInitMm), vec![0, 0, 1, 0], "{kernel}");
            assert!(ev.lock().contains(&(2, "TLB_FLUSH_ON_TASK_SWITCH", 0)), "{kernel}: {:?}", ev.lock());
            assert_eq!(k.cpus[2].loaded_mm.load(Ordering::SeqCst), 0);
            // v6.12's switch to init_mm cleared CPU 2; v6.18 leaves it set.
            let left = if v6_18 { vec![0, 1, 2] } else { vec![0, 1] };
            assert_eq!(mask(&a), left, "{kernel}");
            assert_eq!(ev.lock().contains(&(3, "TLB_REMOTE_WRONG_CPU", 0)), v6_18, "{kernel}");
            assert_eq!(k.san.count(), 0);
        }
    }

    #[test]
    fn every_real_switch_traces_on_task_switch() {
        for kernel in KernelVersion::ALL {
            let (k, ev) = x86(kernel, 1);
            let (a, b) = (k.mm_alloc(), k.mm_alloc());
            switch_mm(&k, &a); // new PCID slot: flush
            switch_mm(&k, &a); // same mm, not lazy: no switch at all
            switch_mm(&k, &b); // new slot: flush
            switch_mm(&k, &a); // A's slot, generation unchanged: no flush
            enter_lazy_tlb(&k);
            switch_mm(&k, &a); // back from lazy, up to date: nothing
            mmap_anon(&k, &a, BASE, PS, true).unwrap();
            k.write_user(&a, BASE, 1).unwrap();
            switch_mm(&k, &b);
            madvise_dontneed(&k, &a, BASE, PS).unwrap(); // A's gen moves while B runs
            switch_mm(&k, &a); // A's slot is behind: flush
            let switches: Vec<u64> =
                ev.lock().iter().filter(|e| e.1 == "TLB_FLUSH_ON_TASK_SWITCH").map(|e| e.2).collect();
            assert_eq!(switches, vec![TLB_FLUSH_ALL, TLB_FLUSH_ALL, 0, 0, TLB_FLUSH_ALL], "{kernel}");
            assert_eq!(k.stats.get(Stat::TraceOnTaskSwitch), 5);
        }
    }

    #[test]
    fn a_flush_without_a_generation_on_an_up_to_date_cpu_traces_zero() {
        let (k, ev) = x86(KernelVersion::V6_12, 1);
        let a = k.mm_alloc();
        switch_mm(&k, &a);
        let f = FlushTlbInfo {
            mm: a.id,
            start: BASE,
            end: BASE + PS,
            new_tlb_gen: TLB_GENERATION_INVALID,
            initiating_cpu: CpuId(0),
            stride_shift: 12,
            freed_tables: false,
            trim_cpumask: false,
        };
        let irq = k.local_irq_save();
        flush_tlb_func(&k, &a, CpuId(0), &f);
        drop(irq);
        assert_eq!(ev.lock().last(), Some(&(0, "TLB_LOCAL_MM_SHOOTDOWN", 0)));
        assert_eq!(k.stats.get(Stat::NrTlbLocalFlushAll) + k.stats.get(Stat::NrTlbLocalFlushOne), 0);
        // With a generation it is already caught up to: no trace at all.
        let n = ev.lock().len();
        let irq = k.local_irq_save();
        flush_tlb_func(&k, &a, CpuId(0), &FlushTlbInfo { new_tlb_gen: 1, ..f });
        drop(irq);
        assert_eq!(ev.lock().len(), n);
    }

    /// arch/x86/include/asm/tlbflush.h (6.12.y with 3ef938c35035):
    /// `flush_tlb_range` passes freed_tables = true (a lazy CPU is
    /// interrupted and leaves the mm), at PAGE_SHIFT stride or the hugetlb
    /// page shift; `flush_tlb_page` and `flush_pmd_tlb_range` do not.
    #[test]
    fn flush_tlb_range_always_frees_tables_flush_tlb_page_and_pmd_range_do_not() {
        for kernel in KernelVersion::ALL {
            let (k, ev) = x86(kernel, 2);
            let a = k.mm_alloc();
            on(&k, 1, &a);
            enter_lazy_tlb(&k);
            on(&k, 0, &a);
            let pmd = k.cfg.geometry.pmd_size();
            k.arch.flush_tlb_page(&k, &a, BASE + 5);
            k.arch.flush_pmd_tlb_range(&k, &a, BASE, BASE + pmd);
            assert_eq!(k.smp.call_interrupts(CpuId(1)), 0, "{kernel}: the lazy CPU is skipped");
            assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 2, "{kernel}: one INVLPG each");
            ev.lock().clear();
            k.arch.flush_tlb_range(&k, &a, BASE, BASE + 3 * PS, false);
            assert_eq!(k.smp.call_interrupts(CpuId(1)), 1, "{kernel}: freed_tables reaches the lazy CPU");
            assert_eq!(k.cpus[1].loaded_mm.load(Ordering::SeqCst), 0, "{kernel}: which left for init_mm");
            assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 5, "{kernel}: PAGE_SHIFT stride, 3 pages");
            assert!(ev.lock().contains(&(0, "TLB_LOCAL_MM_SHOOTDOWN", 3)));
            // A hugetlb VMA: huge_page_shift stride, one INVLPG per 2 MiB.
            k.arch.flush_tlb_range(&k, &a, BASE, BASE + 2 * pmd, true);
            assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 7, "{kernel}");
            assert_eq!(k.stats.get(Stat::NrTlbLocalFlushAll), 0);
        }
    }

    // ---- exact results the mutation run (issue 13) found unpinned ----------
    // arch/x86/mm/tlb.c read in a v6.6..v6.12-era torvalds/linux copy
    // (flush_tlb_mm_range with mmu_notifier_arch_invalidate_secondary_tlbs
    // and without should_trim_cpumask), v6.12 semantics.

    fn cached(k: &Kernel, cpu: u32, mm: &MmStruct, va: u64) -> bool {
        k.hw.tlb(CpuId(cpu)).lookup(mm.id, va).is_some()
    }

    /// `flush_tlb_page` invalidates the page that holds `addr` — rounded
    /// down, one INVLPG — and no neighbour.
    #[test]
    fn flush_tlb_page_invalidates_exactly_the_page_holding_addr() {
        let (k, ev) = x86(KernelVersion::V6_12, 1);
        let a = k.mm_alloc();
        switch_mm(&k, &a);
        mmap_anon(&k, &a, BASE, 4 * PS, true).unwrap();
        for p in 0..3 {
            k.write_user(&a, BASE + p * PS, p + 1).unwrap();
        }
        ev.lock().clear();
        k.arch.flush_tlb_page(&k, &a, BASE + PS + 5);
        assert!(!cached(&k, 0, &a, BASE + PS), "the page holding addr");
        assert!(cached(&k, 0, &a, BASE), "the page below stays");
        assert!(cached(&k, 0, &a, BASE + 2 * PS), "the page above stays");
        assert_eq!(*ev.lock(), vec![(0, "TLB_LOCAL_MM_SHOOTDOWN", 1)]);
        assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 1);
    }

    /// `flush_tlb_mm_range`: `cpumask_any_but(mm_cpumask(mm), cpu)` — a
    /// flush from a CPU outside the mask still interrupts the CPUs in it;
    /// a CPU alone in the mask flushes itself without `flush_tlb_multi`.
    #[test]
    fn a_flush_from_outside_the_mask_interrupts_it_a_lone_cpu_flushes_itself() {
        for kernel in KernelVersion::ALL {
            let (k, ev) = x86(kernel, 2);
            let (a, b) = (k.mm_alloc(), k.mm_alloc());
            on(&k, 0, &a);
            mmap_anon(&k, &a, BASE, PS, true).unwrap();
            k.write_user(&a, BASE, 1).unwrap();
            on(&k, 1, &b);
            assert_eq!(mask(&a), vec![0], "{kernel}");
            ev.lock().clear();
            // CPU 1 (running B) flushes a page of A.
            k.arch.flush_tlb_page(&k, &a, BASE);
            assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush), 1, "{kernel}");
            assert_eq!(cpu_stat(&k, Stat::NrTlbRemoteFlushReceived), vec![1, 0], "{kernel}");
            assert_eq!(k.stats.get(Stat::TlbIpiSent), 1, "{kernel}");
            assert_eq!(*ev.lock(), vec![(1, "TLB_REMOTE_SEND_IPI", 1), (0, "TLB_REMOTE_SHOOTDOWN", 1)], "{kernel}");
            assert!(!cached(&k, 0, &a, BASE), "{kernel}");
            // CPU 0, alone in A's mask: a local flush, no IPI.
            k.set_cpu(CpuId(0));
            k.write_user(&a, BASE, 2).unwrap();
            ev.lock().clear();
            k.arch.flush_tlb_page(&k, &a, BASE);
            assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush), 1, "{kernel}");
            assert_eq!(cpu_stat(&k, Stat::NrTlbLocalFlushOne), vec![1, 0], "{kernel}");
            assert_eq!(*ev.lock(), vec![(0, "TLB_LOCAL_MM_SHOOTDOWN", 1)], "{kernel}");
            assert!(!cached(&k, 0, &a, BASE), "{kernel}");
        }
    }

    /// `get_flush_tlb_info` / `flush_tlb_func`: 33 pages
    /// (`tlb_single_page_flush_ceiling`) are 33 INVLPGs of exactly those
    /// pages; 34 pages are one full flush.
    #[test]
    fn thirty_three_pages_are_invlpgs_thirty_four_a_full_flush() {
        let (k, ev) = x86(KernelVersion::V6_12, 1);
        let a = k.mm_alloc();
        switch_mm(&k, &a);
        mmap_anon(&k, &a, BASE, 64 * PS, true).unwrap();
        for p in 0..35 {
            k.write_user(&a, BASE + p * PS, p).unwrap();
        }
        ev.lock().clear();
        crate::arch::x86::flush_tlb_mm_range(&k, &a, BASE, BASE + 33 * PS, 12, false);
        assert!((0..33).all(|p| !cached(&k, 0, &a, BASE + p * PS)), "each of the 33 pages");
        assert!(cached(&k, 0, &a, BASE + 33 * PS), "not the page at end");
        assert_eq!(*ev.lock(), vec![(0, "TLB_LOCAL_MM_SHOOTDOWN", 33)]);
        assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 33);
        ev.lock().clear();
        crate::arch::x86::flush_tlb_mm_range(&k, &a, BASE, BASE + 34 * PS, 12, false);
        assert_eq!(*ev.lock(), vec![(0, "TLB_LOCAL_MM_SHOOTDOWN", TLB_FLUSH_ALL)]);
        assert_eq!(k.stats.get(Stat::NrTlbLocalFlushAll), 1);
        assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 33);
        assert!(!cached(&k, 0, &a, BASE + 34 * PS), "the whole PCID");
    }

    /// `flush_tlb_func`: the partial flush only when it takes the CPU from
    /// exactly gen-1 to the mm's gen; two flushes in flight make the first
    /// IPI a full flush and the second a no-op (untraced), in either order.
    #[test]
    fn a_cpu_two_generations_behind_flushes_everything_once() {
        for late_first in [false, true] {
            let (k, ev) = x86(KernelVersion::V6_12, 2);
            let a = k.mm_alloc();
            switch_mm(&k, &a);
            ev.lock().clear();
            let g = a.tlb_gen.load(Ordering::SeqCst);
            assert_eq!(k.cpus[0].tlb_gen.load(Ordering::SeqCst), g);
            let (g1, g2) = (a.inc_mm_tlb_gen(), a.inc_mm_tlb_gen());
            let f = |gen| FlushTlbInfo {
                mm: a.id,
                start: BASE,
                end: BASE + PS,
                new_tlb_gen: gen,
                initiating_cpu: CpuId(1),
                stride_shift: 12,
                freed_tables: false,
                trim_cpumask: false,
            };
            let order = if late_first { [g2, g1] } else { [g1, g2] };
            for gen in order {
                let irq = k.local_irq_save();
                flush_tlb_func(&k, &a, CpuId(0), &f(gen));
                drop(irq);
            }
            assert_eq!(*ev.lock(), vec![(0, "TLB_REMOTE_SHOOTDOWN", TLB_FLUSH_ALL)], "late first: {late_first}");
            assert_eq!(k.stats.get_cpu(CpuId(0), Stat::IrqTlbCount), 2);
            assert_eq!(k.cpus[0].tlb_gen.load(Ordering::SeqCst), g2);
        }
    }

    /// `choose_new_asid`: TLB_NR_DYN_ASIDS slots handed out from
    /// `next_asid`, wrapping to slot 0; a slot remembers the generation
    /// its mm was left at, so switching back is free until the slot is
    /// taken by another mm or the mm's generation moves (then the switch
    /// flushes the mm's PCID: no stale entry survives it).
    #[test]
    fn pcid_slots_wrap_and_remember_the_generation_each_mm_was_left_at() {
        use crate::arch::x86::TLB_NR_DYN_ASIDS;
        assert_eq!(TLB_NR_DYN_ASIDS, 6);
        for kernel in KernelVersion::ALL {
            let (k, ev) = x86(kernel, 1);
            let mms: Vec<_> = (0..7).map(|_| k.mm_alloc()).collect();
            let a = &mms[0];
            switch_mm(&k, a); // slot 1
            mmap_anon(&k, a, BASE, PS, true).unwrap();
            k.write_user(a, BASE, 1).unwrap();
            // A local flush while A runs: A's slot is up to date at gen 1.
            madvise_dontneed(&k, a, BASE, PS).unwrap();
            assert_eq!(k.cpus[0].tlb_gen.load(Ordering::SeqCst), a.tlb_gen.load(Ordering::SeqCst));
            k.write_user(a, BASE, 2).unwrap();
            let switches = |ev: &Events| -> Vec<u64> {
                let v = ev.lock().iter().filter(|e| e.1 == "TLB_FLUSH_ON_TASK_SWITCH").map(|e| e.2).collect();
                ev.lock().clear();
                v
            };
            switches(&ev);
            for m in &mms[1..5] {
                switch_mm(&k, m); // slots 2..5
            }
            switch_mm(&k, a); // still slot 1, gen 1 remembered
            switch_mm(&k, &mms[5]); // next_asid wrapped: slot 0 (init_mm's)
            switch_mm(&k, a); // still slot 1
            assert_eq!(
                switches(&ev),
                vec![TLB_FLUSH_ALL; 4].into_iter().chain([0, TLB_FLUSH_ALL, 0]).collect::<Vec<_>>(),
                "{kernel}"
            );
            assert_eq!(k.read_user(a, BASE).unwrap(), 2);
            assert!(cached(&k, 0, a, BASE), "{kernel}: A's entries survived the switches");
            switch_mm(&k, &mms[6]); // slot 1: A's
            switch_mm(&k, a); // a new slot: flush
            assert_eq!(switches(&ev), vec![TLB_FLUSH_ALL, TLB_FLUSH_ALL], "{kernel}");
            assert!(!cached(&k, 0, a, BASE), "{kernel}");
            // A's generation moves while B runs (no CPU has A loaded: no
            // flush reaches this one); the switch back flushes A's PCID.
            k.write_user(a, BASE, 3).unwrap();
            switch_mm(&k, &mms[1]);
            madvise_dontneed(&k, a, BASE, PS).unwrap();
            switch_mm(&k, a);
            assert_eq!(switches(&ev).last(), Some(&TLB_FLUSH_ALL), "{kernel}");
            assert!(!cached(&k, 0, a, BASE), "{kernel}: the stale entry is gone");
            assert_eq!(k.read_user(a, BASE).unwrap(), 0, "{kernel}: the shared zero page, not the old 3");
            assert_eq!(k.san.count(), 0);
        }
    }

    /// `switch_mm_irqs_off` to the mm a lazy CPU still holds: if the mm's
    /// tlb_gen moved while it was lazy (a flush skipped it), the switch
    /// flushes the PCID (TLB_FLUSH_ON_TASK_SWITCH, TLB_FLUSH_ALL) and no
    /// stale entry is used; a CPU that was not lazy just returns.
    #[test]
    fn a_lazy_cpu_that_missed_a_flush_catches_up_at_its_switch_back() {
        for kernel in KernelVersion::ALL {
            let (k, ev) = x86(kernel, 2);
            let a = k.mm_alloc();
            on(&k, 0, &a);
            mmap_anon(&k, &a, BASE, PS, true).unwrap();
            on(&k, 1, &a);
            k.write_user(&a, BASE, 5).unwrap();
            enter_lazy_tlb(&k);
            k.set_cpu(CpuId(0));
            madvise_dontneed(&k, &a, BASE, PS).unwrap();
            assert_eq!(cpu_stat(&k, Stat::NrTlbRemoteFlushReceived), vec![0, 0], "{kernel}: the lazy CPU was skipped");
            assert!(cached(&k, 1, &a, BASE), "{kernel}");
            ev.lock().clear();
            on(&k, 1, &a);
            assert_eq!(*ev.lock(), vec![(1, "TLB_FLUSH_ON_TASK_SWITCH", TLB_FLUSH_ALL)], "{kernel}");
            assert!(!cached(&k, 1, &a, BASE), "{kernel}");
            assert_eq!(k.read_user(&a, BASE).unwrap(), 0, "{kernel}: not the stale 5");
            assert_eq!(k.cpus[1].tlb_gen.load(Ordering::SeqCst), a.tlb_gen.load(Ordering::SeqCst));
            // Not lazy: the same mm again is no switch at all.
            ev.lock().clear();
            on(&k, 1, &a);
            assert!(ev.lock().is_empty(), "{kernel}");
            assert_eq!(k.san.count(), 0);
        }
    }

    /// v6.18 `should_flush_tlb`: a CPU in the middle of a switch
    /// (`LOADED_MM_SWITCHING`) is interrupted even without a trim due — it
    /// may hold either mm's entries — and, finding another mm, clears
    /// itself from the mask (TLB_REMOTE_WRONG_CPU).
    #[test]
    fn a_cpu_in_mid_switch_is_interrupted_on_6_18() {
        use crate::arch::x86::LOADED_MM_SWITCHING;
        let (k, ev, a, b) = program(KernelVersion::V6_18);
        k.cpus[3].loaded_mm.store(LOADED_MM_SWITCHING, Ordering::SeqCst);
        madvise_dontneed(&k, &a, BASE, PS).unwrap();
        k.cpus[3].loaded_mm.store(b.id, Ordering::SeqCst);
        assert_eq!(cpu_stat(&k, Stat::NrTlbRemoteFlushReceived), vec![0, 1, 0, 1]);
        assert_eq!(k.stats.get(Stat::TlbIpiSent), 2);
        assert!(ev.lock().contains(&(3, "TLB_REMOTE_WRONG_CPU", 0)));
        assert_eq!(mask(&a), vec![0, 1, 2]);
    }
}
