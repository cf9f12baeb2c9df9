//! Single-address-space operations through the gather, on the synchronous
//! reference Smp: faults, munmap, exit, fork/COW, madvise, mprotect,
//! writeback, multi-CPU flushes, and the sanitizer firing when a flush is
//! skipped on purpose.

use super::*;
use crate::check;
use crate::check::sanitizer::ViolationKind;
use crate::config::{Arch, KernelConfig};
use crate::hw::pte::Level;
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::page::Folio;
use crate::stats::Stat;
use crate::sync::Arc;
use crate::tlb::{enter_lazy_tlb, switch_mm};
use crate::types::CpuId;

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn kernel(cpus: usize) -> Arc<Kernel> {
    Kernel::new_sync(KernelConfig::default(), cpus)
}

#[test]
fn anon_fault_zero_fill_and_write() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 16 * PS, true).unwrap();
    assert_eq!(k.read_user(&mm, BASE + 8).unwrap(), 0, "anonymous memory reads zero");
    k.write_user(&mm, BASE + 8, 42).unwrap();
    assert_eq!(k.read_user(&mm, BASE + 8).unwrap(), 42);
    assert!(k.read_user(&mm, BASE + 16 * PS).is_err(), "outside any VMA: SIGSEGV");
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

#[test]
fn munmap_frees_pages_and_tables() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    let n = 3 * 512; // spans several PTE tables
    mmap_anon(&k, &mm, BASE, n * PS, true).unwrap();
    for i in 0..n {
        k.write_user(&mm, BASE + i * PS, i).unwrap();
    }
    assert_eq!(k.alloc.in_use().anon, n as i64);
    munmap(&k, &mm, BASE, n * PS).unwrap();
    k.rcu_barrier();
    assert_eq!(k.alloc.in_use().anon, 0);
    assert_eq!(k.alloc.in_use().page_table, 1, "only the PGD is left");
    assert!(k.stats.get(Stat::TablesFreed) >= 5, "3 PTE tables + PMD + PUD table freed");
    assert!(k.read_user(&mm, BASE).is_err());
    assert_eq!(k.san.count(), 0);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}

#[test]
fn partial_munmap_keeps_tables_shared_with_neighbours() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 8 * PS, true).unwrap();
    for i in 0..8 {
        k.write_user(&mm, BASE + i * PS, 100 + i).unwrap();
    }
    munmap(&k, &mm, BASE + 2 * PS, 2 * PS).unwrap();
    k.rcu_barrier();
    assert_eq!(k.read_user(&mm, BASE + PS).unwrap(), 101);
    assert_eq!(k.read_user(&mm, BASE + 5 * PS).unwrap(), 105);
    assert!(k.read_user(&mm, BASE + 2 * PS).is_err());
    assert_eq!(k.stats.get(Stat::TablesFreed), 0, "the PTE table still maps neighbours");
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

#[test]
fn fork_cow_separates_parent_and_child() {
    let k = kernel(2);
    let parent = k.mm_alloc();
    run_on(&k, 0, &parent);
    mmap_anon(&k, &parent, BASE, 4 * PS, true).unwrap();
    k.write_user(&parent, BASE, 7).unwrap();
    let child = dup_mmap(&k, &parent).unwrap();
    check::check_consistency(&k, &[&parent, &child], &[]).unwrap();
    // The parent's cached writable+dirty entry was flushed by fork: this
    // write must COW instead of scribbling on the shared page.
    k.write_user(&parent, BASE, 8).unwrap();
    run_on(&k, 1, &child);
    assert_eq!(k.read_user(&child, BASE).unwrap(), 7, "child sees the pre-fork value");
    k.write_user(&child, BASE, 9).unwrap();
    run_on(&k, 0, &parent);
    assert_eq!(k.read_user(&parent, BASE).unwrap(), 8);
    assert!(k.stats.get(Stat::CowFaults) >= 1);
    check::check_consistency(&k, &[&parent, &child], &[]).unwrap();
    k.set_cpu(CpuId(1));
    exit_mm(&k, &child);
    k.set_cpu(CpuId(0));
    exit_mm(&k, &parent);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

#[test]
fn madvise_dontneed_drops_pages_keeps_tables() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 5).unwrap();
    madvise_dontneed(&k, &mm, BASE, 4 * PS).unwrap();
    assert_eq!(k.alloc.in_use().anon, 0);
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0, "after DONTNEED the shared zero page");
    assert_eq!(k.san.count(), 0);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}

#[test]
fn mprotect_read_only_then_back() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    mprotect(&k, &mm, BASE, 2 * PS, true, false).unwrap();
    assert!(k.write_user(&mm, BASE, 2).is_err(), "the writable TLB entry was flushed");
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 1);
    k.write_user(&mm, BASE + 2 * PS, 3).expect("outside the range still writable");
    mprotect(&k, &mm, BASE, 2 * PS, false, false).unwrap();
    assert!(k.read_user(&mm, BASE).is_err(), "PROT_NONE");
    mprotect(&k, &mm, BASE, 2 * PS, true, true).unwrap();
    k.write_user(&mm, BASE, 4).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 4);
    assert_eq!(mm.mmap_lock.read().len(), 2, "split into two VMAs");
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    assert!(matches!(mprotect(&k, &mm, BASE + 8 * PS, PS, true, true), Err(MmError::NoMem)));
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

#[test]
fn shared_file_write_writeback_and_redirty() {
    let k = kernel(1);
    let file = k.new_file(8);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 8 * PS, true, true, &file, 0).unwrap();
    k.write_user(&mm, BASE + PS, 77).unwrap();
    assert_eq!(writeback_mapping(&k, &file), 1);
    assert_eq!(file.disk.lock().get(&1).unwrap()[0], 77);
    assert_eq!(writeback_mapping(&k, &file), 0, "clean after writeback");
    // The mapping was write-protected and flushed: the next write faults
    // and re-dirties the page.
    k.write_user(&mm, BASE + PS, 78).unwrap();
    assert_eq!(writeback_mapping(&k, &file), 1);
    assert_eq!(file.disk.lock().get(&1).unwrap()[0], 78);
    // A private mapping of the same file sees the file data, COWs on write.
    let mm2 = k.mm_alloc();
    run_on(&k, 0, &mm2);
    mmap_file(&k, &mm2, BASE, 8 * PS, true, false, &file, 0).unwrap();
    assert_eq!(k.read_user(&mm2, BASE + PS).unwrap(), 78);
    k.write_user(&mm2, BASE + PS, 1).unwrap();
    check::check_consistency(&k, &[&mm, &mm2], &[&file]).unwrap();
    exit_mm(&k, &mm2);
    run_on(&k, 0, &mm);
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

#[test]
fn zap_of_dirty_file_page_delays_rmap_and_keeps_data() {
    let k = kernel(1);
    let file = k.new_file(4);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 4 * PS, true, true, &file, 0).unwrap();
    k.write_user(&mm, BASE + 2 * PS, 55).unwrap();
    munmap(&k, &mm, BASE, 4 * PS).unwrap();
    assert_eq!(k.stats.get(Stat::DelayedRmaps), 1, "the dirty file PTE's rmap went after the flush");
    let folio = *file.i_pages.lock().get(&2).unwrap();
    assert!(k.mem.folio(folio).test(crate::page::flags::PG_DIRTY), "zap moved the PTE dirty bit to the folio");
    assert_eq!(writeback_mapping(&k, &file), 1);
    assert_eq!(file.disk.lock().get(&2).unwrap()[0], 55);
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

#[test]
fn x86_remote_flush_reaches_running_cpu() {
    let k = kernel(2);
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    run_on(&k, 0, &mm);
    madvise_dontneed(&k, &mm, BASE, PS).unwrap();
    assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush), 1);
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::NrTlbRemoteFlushReceived), 1);
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 1);
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 1);
    k.set_cpu(CpuId(1));
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0, "CPU1 does not see the freed page");
    assert_eq!(k.san.count(), 0);
}

#[test]
fn x86_lazy_cpu_skipped_unless_tables_freed() {
    for kernel in crate::config::KernelVersion::ALL {
        let k = Kernel::new_sync(KernelConfig { kernel, ..KernelConfig::default() }, 2);
        let mm = k.mm_alloc();
        run_on(&k, 1, &mm);
        mmap_anon(&k, &mm, BASE, 2048 * PS, true).unwrap();
        for t in 0..4 {
            k.write_user(&mm, BASE + t * 512 * PS, 1).unwrap();
        }
        enter_lazy_tlb(&k); // CPU1 now runs a kernel thread, mm still loaded
        run_on(&k, 0, &mm);
        k.write_user(&mm, BASE + PS, 1).unwrap();
        madvise_dontneed(&k, &mm, BASE, PS).unwrap();
        assert_eq!(k.smp.call_interrupts(CpuId(1)), 0, "plain flush skips the lazy CPU");
        assert_eq!(k.cpus[1].loaded_mm.load(crate::sync::Ordering::SeqCst), mm.id);
        // munmap of a whole PTE table frees it: lazy CPUs must be IPI'd.
        munmap(&k, &mm, BASE + 512 * PS, 512 * PS).unwrap();
        assert!(k.stats.get(Stat::TablesQueued) >= 1);
        assert_eq!(k.smp.call_interrupts(CpuId(1)), 1, "freed_tables reaches the lazy CPU");
        assert_eq!(k.cpus[1].loaded_mm.load(crate::sync::Ordering::SeqCst), 0, "lazy CPU switched to init_mm");
        assert_eq!(k.stats.get(Stat::LazySwitchToInitMm), 1);
        munmap(&k, &mm, BASE + 1024 * PS, 512 * PS).unwrap();
        match kernel {
            // v6.12: the switch to init_mm cleared CPU1 from mm_cpumask at
            // once; no later flush interrupts it.
            crate::config::KernelVersion::V6_12 => {
                assert_eq!(k.smp.call_interrupts(CpuId(1)), 1);
                assert_eq!(k.stats.get(Stat::CpumaskTrimmed), 0);
            }
            // v6.18: CPU1 stayed in the mask; the next table-freeing flush
            // interrupts it and it clears itself (TLB_REMOTE_WRONG_CPU).
            crate::config::KernelVersion::V6_18 => {
                assert_eq!(k.smp.call_interrupts(CpuId(1)), 2);
                assert_eq!(k.stats.get(Stat::CpumaskTrimmed), 1);
                assert_eq!(k.stats.get(Stat::TraceRemoteWrongCpu), 1);
            }
        }
        assert!(!mm.cpumask.test(CpuId(1)));
        let ipis = k.smp.call_interrupts(CpuId(1));
        munmap(&k, &mm, BASE + 1536 * PS, 512 * PS).unwrap();
        assert_eq!(k.smp.call_interrupts(CpuId(1)), ipis);
        assert_eq!(k.san.count(), 0);
    }
}

#[test]
fn x86_ceiling_turns_big_ranges_into_full_flushes() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 64 * PS, true).unwrap();
    for i in 0..64 {
        k.write_user(&mm, BASE + i * PS, 1).unwrap();
    }
    madvise_dontneed(&k, &mm, BASE, 33 * PS).unwrap();
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 33, "33 pages: page by page");
    madvise_dontneed(&k, &mm, BASE + 33 * PS, 31 * PS).unwrap();
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 64);
    for i in 0..64 {
        k.write_user(&mm, BASE + i * PS, 1).unwrap();
    }
    madvise_dontneed(&k, &mm, BASE, 34 * PS).unwrap();
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushAll), 1, "34 pages: above the ceiling");
}

#[test]
fn arm64_broadcast_invalidates_cpu_with_irqs_off() {
    let cfg = KernelConfig { arch: Arch::Arm64, ..KernelConfig::default() };
    let k = Kernel::new_sync(cfg, 2);
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    let irq = k.local_irq_save(); // CPU1 sits with IRQs off
    k.set_cpu(CpuId(0));
    switch_mm(&k, &mm);
    madvise_dontneed(&k, &mm, BASE, PS).unwrap(); // would hang with an IPI
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 0);
    assert!(k.hw.tlb(CpuId(1)).lookup(mm.id, BASE).is_none(), "broadcast TLBI reached CPU1");
    k.set_cpu(CpuId(1));
    drop(irq);
    assert_eq!(k.san.count(), 0);
}

/// A flush skipped on purpose: the sanitizer reports the stale access.
#[test]
fn skipped_flush_is_a_stale_tlb_access() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    // Unhook and free without the flush in between.
    let table = crate::pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
    let pte = crate::pgtable::get_and_clear(&k, table, Level::Pte, BASE);
    k.mem.remove_rmap_ptes(pte.pfn(), 1);
    k.folio_put(Folio(pte.pfn()));
    assert_eq!(k.san.count_kind(ViolationKind::FreedBeforeFlush), 1, "caught at free time");
    // The CPU still uses the old translation.
    let _ = k.read_user(&mm, BASE).unwrap();
    assert_eq!(k.san.count_kind(ViolationKind::StaleTlbAccess), 1);
    let v = &k.san.violations()[1];
    assert_eq!((v.cpu, v.va, v.pfn), (Some(CpuId(0)), BASE, pte.pfn()));
    assert!(v.frame_gen > v.cached_gen);
}

/// A table freed without flushing the walk cache: the next walk from the
/// paging-structure cache lands in a freed table.
#[test]
fn skipped_table_flush_is_a_walk_into_freed_table() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    let pmd = crate::pgtable::lookup_table(&k, &mm, BASE, Level::Pmd).unwrap();
    let pte_table = crate::pgtable::get_and_clear(&k, pmd, Level::Pmd, BASE).pfn();
    crate::pgtable::free_table_frame(&k, pte_table);
    assert_eq!(k.san.count_kind(ViolationKind::TableFreedBeforeFlush), 1);
    // BASE + PS was never accessed: TLB miss, walk starts at the cached PMD entry.
    let _ = k.read_user(&mm, BASE + PS);
    assert!(k.san.count_kind(ViolationKind::WalkIntoFreedTable) >= 1);
}

#[test]
fn correct_code_has_no_violations_across_cpus() {
    let k = kernel(4);
    let mm = k.mm_alloc();
    for c in 0..4 {
        run_on(&k, c, &mm);
        if c == 0 {
            mmap_anon(&k, &mm, BASE, 256 * PS, true).unwrap();
        }
        for i in 0..64 {
            k.write_user(&mm, BASE + i * PS, i).unwrap();
        }
    }
    k.set_cpu(CpuId(2));
    mprotect(&k, &mm, BASE, 16 * PS, true, false).unwrap();
    madvise_dontneed(&k, &mm, BASE + 16 * PS, 16 * PS).unwrap();
    let child = dup_mmap(&k, &mm).unwrap();
    munmap(&k, &mm, BASE + 32 * PS, 224 * PS).unwrap();
    for c in 0..4 {
        k.set_cpu(CpuId(c));
        assert!(k.read_user(&mm, BASE + 40 * PS).is_err());
        assert_eq!(k.read_user(&mm, BASE + 3 * PS).unwrap(), 3);
    }
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    k.set_cpu(CpuId(3));
    switch_mm(&k, &child);
    exit_mm(&k, &child);
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}

mod prop {
    use super::*;
    use crate::check;
    use proptest::prelude::*;

    /// Pages in the region the random programs play in (3 PTE tables).
    const REGION: u64 = 3 * 512;

    #[derive(Clone, Debug)]
    pub(super) enum Op {
        Mmap { page: u64, n: u64, write: bool },
        Touch { page: u64, write: bool },
        Munmap { page: u64, n: u64 },
        Madvise { page: u64, n: u64 },
        Mprotect { page: u64, n: u64, write: bool },
        Fork,
        ExitChild,
        ChildTouch { page: u64 },
        ChildRead { page: u64 },
        Cpu(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let page = 0..REGION;
        // Accesses mostly hit a few hot pages, so fork/COW/zap interact.
        let hot = prop_oneof![3 => 0u64..4, 1 => 0..REGION];
        let n = 1u64..600;
        prop_oneof![
            1 => (page.clone(), n.clone(), any::<bool>()).prop_map(|(page, n, write)| Op::Mmap { page, n, write }),
            4 => (hot.clone(), any::<bool>()).prop_map(|(page, write)| Op::Touch { page, write }),
            1 => (page.clone(), n.clone()).prop_map(|(page, n)| Op::Munmap { page, n }),
            1 => (page.clone(), n.clone()).prop_map(|(page, n)| Op::Madvise { page, n }),
            1 => (page.clone(), n, any::<bool>()).prop_map(|(page, n, write)| Op::Mprotect { page, n, write }),
            2 => Just(Op::Fork),
            1 => Just(Op::ExitChild),
            1 => hot.clone().prop_map(|page| Op::ChildTouch { page }),
            3 => hot.prop_map(|page| Op::ChildRead { page }),
            1 => (0u32..2).prop_map(Op::Cpu),
        ]
    }

    /// What user space should observe: page → (writable, value of word 0).
    type Model = std::collections::BTreeMap<u64, (bool, u64)>;

    fn pages(page: u64, n: u64) -> std::ops::Range<u64> {
        page..page + n.min(REGION - page)
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let k = kernel(2);
        let mm = k.mm_alloc();
        let mut cpu = 0;
        run_on(&k, cpu, &mm);
        mmap_anon(&k, &mm, BASE, 512 * PS, true).unwrap();
        let mut children: Vec<Arc<MmStruct>> = Vec::new();
        let mut model: Model = (0..512).map(|p| (p, (true, 0))).collect();
        let mut child_models: Vec<Model> = Vec::new();
        let clamp = |page: u64, n: u64| (BASE + page * PS, n.min(REGION - page) * PS);
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Mmap { page, n, write } => {
                    let (a, l) = clamp(page, n);
                    let ok = mmap_anon(&k, &mm, a, l, write).is_ok();
                    let free = pages(page, n).all(|p| !model.contains_key(&p));
                    prop_assert_eq!(ok, free, "step {}: mmap result", step);
                    if ok {
                        model.extend(pages(page, n).map(|p| (p, (write, 0))));
                    }
                }
                Op::Touch { page, write } => {
                    let a = BASE + page * PS;
                    let want = model.get(&page).copied();
                    if write {
                        let r = k.write_user(&mm, a, step as u64);
                        prop_assert_eq!(r.is_ok(), want.is_some_and(|(w, _)| w), "step {}: write {:#x}", step, a);
                        if r.is_ok() {
                            model.insert(page, (true, step as u64));
                        }
                    } else {
                        let r = k.read_user(&mm, a).ok();
                        prop_assert_eq!(r, want.map(|(_, v)| v), "step {}: read {:#x}", step, a);
                    }
                }
                Op::Munmap { page, n } => {
                    let (a, l) = clamp(page, n);
                    munmap(&k, &mm, a, l).unwrap();
                    for p in pages(page, n) {
                        model.remove(&p);
                    }
                }
                Op::Madvise { page, n } => {
                    let (a, l) = clamp(page, n);
                    if madvise_dontneed(&k, &mm, a, l).is_ok() {
                        for p in pages(page, n) {
                            if let Some(e) = model.get_mut(&p) {
                                e.1 = 0;
                            }
                        }
                    }
                }
                Op::Mprotect { page, n, write } => {
                    let (a, l) = clamp(page, n);
                    let ok = mprotect(&k, &mm, a, l, true, write).is_ok();
                    prop_assert_eq!(ok, pages(page, n).all(|p| model.contains_key(&p)), "step {}: mprotect", step);
                    if ok {
                        for p in pages(page, n) {
                            model.get_mut(&p).unwrap().0 = write;
                        }
                    }
                }
                Op::Fork => {
                    if children.len() < 3 {
                        children.push(dup_mmap(&k, &mm).unwrap());
                        child_models.push(model.clone());
                    }
                }
                Op::ExitChild => {
                    if let Some(c) = children.pop() {
                        child_models.pop();
                        switch_mm(&k, &c);
                        exit_mm(&k, &c);
                        switch_mm(&k, &mm);
                    }
                }
                Op::ChildTouch { page } => {
                    if let (Some(c), Some(cm)) = (children.last(), child_models.last_mut()) {
                        switch_mm(&k, c);
                        let r = k.write_user(c, BASE + page * PS, 1000 + step as u64);
                        switch_mm(&k, &mm);
                        prop_assert_eq!(
                            r.is_ok(),
                            cm.get(&page).is_some_and(|(w, _)| *w),
                            "step {}: child write",
                            step
                        );
                        if r.is_ok() {
                            cm.insert(page, (true, 1000 + step as u64));
                        }
                    }
                }
                Op::ChildRead { page } => {
                    if let (Some(c), Some(cm)) = (children.last(), child_models.last()) {
                        switch_mm(&k, c);
                        let r = k.read_user(c, BASE + page * PS).ok();
                        switch_mm(&k, &mm);
                        prop_assert_eq!(r, cm.get(&page).map(|(_, v)| *v), "step {}: child read", step);
                    }
                }
                Op::Cpu(c) => {
                    cpu = c;
                    run_on(&k, cpu, &mm);
                }
            }
            prop_assert_eq!(k.san.count(), 0, "step {}: {:?}", step, k.san.violations());
            let mut all: Vec<&Arc<MmStruct>> = children.iter().collect();
            all.push(&mm);
            if let Err(e) = check::check_consistency(&k, &all, &[]) {
                return Err(TestCaseError::fail(format!("step {step}: {e}")));
            }
        }
        for c in children.drain(..) {
            switch_mm(&k, &c);
            exit_mm(&k, &c);
        }
        switch_mm(&k, &mm);
        exit_mm(&k, &mm);
        crate::ops::test_util::drop_lazy_mms(&k);
        k.rcu_barrier();
        prop_assert_eq!(k.alloc.in_use().total(), 0, "leaked: {:?}", k.alloc.in_use());
        prop_assert_eq!(k.san.count(), 0);
        Ok(())
    }

    #[test]
    fn fork_then_stale_write_sequence() {
        run(vec![
            Op::Touch { page: 1, write: true },
            Op::Fork,
            Op::Touch { page: 1, write: true },
            Op::ChildRead { page: 1 },
        ])
        .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        /// Random fault / munmap / fork / exit / madvise / mprotect programs
        /// on one mm (and its children), two CPUs: every read returns what the
        /// program last wrote (or zero), no violations, consistent
        /// refcounts/mapcounts/rss after every step, no leaked frame at exit.
        #[test]
        fn random_programs_keep_invariants(ops in proptest::collection::vec(op(), 1..60)) {
            run(ops)?;
        }
    }
}

// ---- mprotect: pte_needs_flush per arch (issue 13) ---------------------------

/// mprotect-pingpong's round on a minimal program: CPU0 mprotects one
/// written anon page read-only and back while a sibling thread of the same
/// mm runs on CPU1, `rounds` times, then mprotects it RW again (no change).
/// Returns the counters after the rounds and after the unchanged call:
/// [tlb_ipi_sent, irq_tlb_count, arm64_tlbi_broadcast, norange_flush_tlb_mm,
/// TLB_LOCAL_MM_SHOOTDOWN on CPU0, TLB_REMOTE_SEND_IPI on CPU0,
/// TLB_REMOTE_SHOOTDOWN on CPU1].
fn mprotect_pingpong(arch: Arch, rounds: u64) -> ([u64; 7], [u64; 7]) {
    let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 2);
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    let snap = |k: &Kernel| {
        let all = [Stat::TlbIpiSent, Stat::IrqTlbCount, Stat::Arm64BroadcastTlbi, Stat::NoRangeFlushTlbMm];
        let per_cpu =
            [(0, Stat::TraceLocalMmShootdown), (0, Stat::TraceRemoteSendIpi), (1, Stat::TraceRemoteShootdown)];
        let mut v = [0; 7];
        for (i, s) in all.iter().enumerate() {
            v[i] = k.stats.get(*s);
        }
        for (i, (cpu, s)) in per_cpu.iter().enumerate() {
            v[4 + i] = k.stats.get_cpu(CpuId(*cpu), *s);
        }
        v
    };
    let before = snap(&k);
    for r in 0..rounds {
        k.set_cpu(CpuId(1));
        assert_eq!(k.read_user(&mm, BASE).unwrap(), 1 + r, "the sibling caches the page");
        k.set_cpu(CpuId(0));
        mprotect(&k, &mm, BASE, PS, true, false).unwrap();
        assert!(k.write_user(&mm, BASE, 9).is_err(), "{arch:?}: read-only now");
        mprotect(&k, &mm, BASE, PS, true, true).unwrap();
        k.write_user(&mm, BASE, 2 + r).unwrap();
    }
    let sub = |a: [u64; 7], b: [u64; 7]| std::array::from_fn(|i| a[i] - b[i]);
    let after_rounds = sub(snap(&k), before);
    let mid = snap(&k);
    mprotect(&k, &mm, BASE, PS, true, true).unwrap();
    let unchanged = sub(snap(&k), mid);
    assert_eq!(k.san.count(), 0, "{arch:?}: {:?}", k.san.violations());
    exit_mm(&k, &mm);
    k.set_cpu(CpuId(1));
    crate::tlb::switch_to_init_mm(&k, CpuId(1));
    assert_no_leaks(&k);
    (after_rounds, unchanged)
}

#[test]
fn mprotect_flushes_by_pte_needs_flush_of_each_arch() {
    const R: u64 = 3;
    // x86 pte_flags_need_flush: RW is flush-on-change, so RO → RW flushes
    // too: two shootdown IPIs to CPU1 per round (one per mprotect), each
    // taken there (irq_tlb_count, TLB_REMOTE_SHOOTDOWN), each mprotect a
    // local flush and a send (TLB_LOCAL_MM_SHOOTDOWN, TLB_REMOTE_SEND_IPI);
    // an mprotect that changes nothing flushes nothing.
    let (rounds, unchanged) = mprotect_pingpong(Arch::X86, R);
    assert_eq!(rounds, [2 * R, 2 * R, 0, 0, 2 * R, 2 * R, 2 * R], "x86");
    assert_eq!(unchanged, [0; 7], "x86: RW → RW needs no flush");
    // arm64: the asm-generic pte_needs_flush is always true: one broadcast
    // TLBI sequence per mprotect, the unchanged one included; no IPIs, no
    // x86 trace events.
    let (rounds, unchanged) = mprotect_pingpong(Arch::Arm64, R);
    assert_eq!(rounds, [0, 0, 2 * R, 0, 0, 0, 0], "arm64");
    assert_eq!(unchanged, [0, 0, 1, 0, 0, 0, 0], "arm64: every rewritten PTE is flushed");
    // The no-range profile: one flush_tlb_mm (one IPI to CPU1) per mprotect.
    let (rounds, unchanged) = mprotect_pingpong(Arch::GenericNoRange, R);
    assert_eq!(rounds, [2 * R, 0, 0, 2 * R, 0, 0, 0], "generic");
    assert_eq!(unchanged, [1, 0, 0, 1, 0, 0, 0], "generic: every rewritten PTE is flushed");
}

// ---- PFN mappings on MMU_GATHER_NO_RANGE (b67fbebd4cf9, 7fb5e5083190) ----

/// munmap of a 4-page `remap_pfn_range` mapping on the NO_RANGE profile
/// while CPU1 (running the mm) caches every page; the "driver" frees its
/// frames in the window after `free_pgtables` (the VMA is out of i_mmap, so
/// its `unmap_mapping_range` would find nothing) and before
/// `tlb_finish_mmu`.  Returns the kernel and whether CPU1 still cached the
/// first page when the driver freed it.
fn no_range_pfnmap_munmap(fix: bool) -> (Arc<Kernel>, bool) {
    use crate::config::Fix;
    use crate::page::alloc::PageKind;
    let mut cfg = KernelConfig { arch: Arch::GenericNoRange, ..KernelConfig::default() };
    cfg.fixes.set(Fix::NoRangeVmaPfn, fix);
    let k = Kernel::new_sync(cfg, 2);
    let mm = k.mm_alloc();
    let frames: Vec<_> = (0..4).map(|_| k.alloc_pages(0, PageKind::Kernel).unwrap()).collect();
    run_on(&k, 0, &mm);
    pfnmap::mmap_pfnmap(&k, &mm, BASE, &frames).unwrap();
    assert_eq!(k.mem.page(frames[0]).refcount(), 1, "only the driver holds the frame");
    assert_eq!(k.mem.page(frames[0]).mapcount(), 0, "remap_pfn_range maps no struct page");
    run_on(&k, 1, &mm);
    for i in 0..4 {
        k.write_user(&mm, BASE + i * PS, 7 + i).unwrap();
    }
    run_on(&k, 0, &mm);
    let seen = Arc::new(crate::sync::Mutex::new(None));
    let (seen2, id) = (seen.clone(), mm.id);
    assert!(k.inject.race.set_after_free_pgtables(move |k| {
        // The driver: unmap_mapping_range finds no VMA; free the frames.
        *seen2.lock() = Some(k.hw.tlb(CpuId(1)).lookup(id, BASE).is_some());
        for f in &frames {
            k.folio_put(Folio(*f));
        }
    }));
    munmap(&k, &mm, BASE, 4 * PS).unwrap();
    assert!(k.read_user(&mm, BASE).is_err(), "unmapped");
    let cached = seen.lock().expect("the driver ran");
    k.rcu_barrier();
    (k, cached)
}

/// v6.12 (fix on): `tlb_end_vma` sees `vma_pfn` and flushes before
/// `free_pgtables`: two `flush_tlb_mm` (that one, and the finish's for the
/// freed PTE table), each an IPI to CPU1; the driver frees frames no CPU
/// caches.  Reverted (NO_RANGE up to v5.18: no VMA flags, `tlb_end_vma`
/// never flushes): one `flush_tlb_mm`, at `tlb_finish_mmu`, after the
/// driver freed four frames CPU1 still caches (`freed-before-flush`, once
/// per frame).
#[test]
fn no_range_tlb_end_vma_force_flushes_a_pfnmap_vma() {
    let (k, cached) = no_range_pfnmap_munmap(true);
    assert!(!cached, "flushed at tlb_end_vma");
    assert_eq!(k.stats.get(Stat::NoRangeFlushTlbMm), 2);
    assert_eq!(k.stats.get(Stat::NoRangeCpuFlush), 4, "CPU0 and CPU1, twice");
    assert_eq!(k.stats.get(Stat::TlbIpiSent), 2);
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), 0, "nothing of a PFN mapping is gathered");
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());

    let (k, cached) = no_range_pfnmap_munmap(false);
    assert!(cached, "no flush before the driver's free");
    assert_eq!(k.stats.get(Stat::NoRangeFlushTlbMm), 1);
    assert_eq!(k.stats.get(Stat::NoRangeCpuFlush), 2);
    assert_eq!(k.stats.get(Stat::TlbIpiSent), 1);
    let v = k.san.violations();
    assert_eq!(v.len(), 4, "{v:?}");
    assert!(v.iter().all(|v| v.kind == ViolationKind::FreedBeforeFlush && v.cpu == Some(CpuId(1))), "{v:?}");
}

/// MMU_GATHER_MERGE_VMAS (NO_RANGE selects it, 1e9fdf21a433): munmap of two
/// anonymous VMAs flushes once, at `tlb_finish_mmu`, not at each
/// `tlb_end_vma` — both ways of the switch (it only adds PFN VMAs).
#[test]
fn no_range_merges_the_flushes_of_ordinary_vmas() {
    use crate::config::Fix;
    for fix in [true, false] {
        let mut cfg = KernelConfig { arch: Arch::GenericNoRange, ..KernelConfig::default() };
        cfg.fixes.set(Fix::NoRangeVmaPfn, fix);
        let k = Kernel::new_sync(cfg, 1);
        let mm = k.mm_alloc();
        run_on(&k, 0, &mm);
        mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
        mmap_anon(&k, &mm, BASE + 4 * PS, 4 * PS, false).unwrap();
        for i in 0..8 {
            k.read_user(&mm, BASE + i * PS).unwrap();
        }
        let before = k.stats.get(Stat::NoRangeFlushTlbMm);
        munmap(&k, &mm, BASE, 8 * PS).unwrap();
        assert_eq!(k.stats.get(Stat::NoRangeFlushTlbMm) - before, 1, "fix {fix}: one flush for both VMAs");
        assert_eq!(k.stats.get(Stat::GatherFlushes), 1);
        exit_mm(&k, &mm);
        k.rcu_barrier();
        assert_no_leaks(&k);
        assert_eq!(k.san.count(), 0);
    }
}

/// x86 selects MMU_GATHER_MERGE_VMAS too (arch/x86/Kconfig since
/// 1e9fdf21a433): a munmap of two anonymous VMAs makes one flush, at
/// `tlb_finish_mmu`, one IPI to the other CPU running the mm; arm64 does not
/// select it and flushes at each `tlb_end_vma`.
#[test]
fn x86_merges_the_flushes_of_ordinary_vmas_arm64_does_not() {
    for (arch, flushes) in [(Arch::X86, 1), (Arch::Arm64, 2)] {
        let k = Kernel::new_sync(KernelConfig { arch, ..KernelConfig::default() }, 2);
        let mm = k.mm_alloc();
        run_on(&k, 1, &mm);
        run_on(&k, 0, &mm);
        mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
        mmap_anon(&k, &mm, BASE + 4 * PS, 4 * PS, false).unwrap();
        mmap_anon(&k, &mm, BASE + 8 * PS, PS, false).unwrap(); // keeps the PTE table
        for i in 0..9 {
            k.read_user(&mm, BASE + i * PS).unwrap();
        }
        let tlb_flushes = |k: &Kernel| k.stats.get(Stat::TlbFlushRanged) + k.stats.get(Stat::TlbFlushFull);
        let (f0, i0) = (tlb_flushes(&k), k.stats.get(Stat::TlbIpiSent));
        munmap(&k, &mm, BASE, 8 * PS).unwrap();
        assert_eq!(tlb_flushes(&k) - f0, flushes, "{arch:?}: tlb_flush calls");
        let ipis = if arch == Arch::X86 { 1 } else { 0 };
        assert_eq!(k.stats.get(Stat::TlbIpiSent) - i0, ipis, "{arch:?}");
        assert_eq!(k.san.count(), 0, "{arch:?}: {:?}", k.san.violations());
        exit_mm(&k, &mm);
        k.set_cpu(CpuId(1));
        crate::tlb::switch_to_init_mm(&k, CpuId(1));
        assert_no_leaks(&k);
    }
}
