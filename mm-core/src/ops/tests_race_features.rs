//! Deterministic tests (synchronous Smp) of the race-feature switches:
//! delay-rmap (5df397dec7c4), secondary-tlb-on-flush (6bbd42e2df8f),
//! folio-pages-batching (d7f861b9c43a), nested-flush-detect (99baac21e458).
//! Each race is forced into its bad interleaving; with the switch off the
//! matching violation appears, with it on none does.

use super::*;
use crate::check::sanitizer::ViolationKind;
use crate::check::DirtyDataOracle;
use crate::config::{Arch, Fix, KernelConfig};
use crate::gather::{encode_nr_pages, encode_page, MmuGather, ENCODED_PAGE_BIT_NR_PAGES_NEXT, MMU_GATHER_BUNDLE};
use crate::hw::pte::Level;
use crate::iommu::{incoherent_entries, iommu_sva_bind_device, DmaError};
use crate::kernel::Kernel;
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::page::Folio;
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::{Arc, Mutex, Ordering};
use crate::types::CpuId;

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn kernel_with(cpus: usize, arch: Arch, f: impl FnOnce(&mut KernelConfig)) -> Arc<Kernel> {
    let mut cfg = KernelConfig { arch, ..KernelConfig::default() };
    f(&mut cfg);
    Kernel::new_sync(cfg, cpus)
}

// ---- delay-rmap: writeback vs zap vs a writer with a dirty TLB entry ----------

/// docs/RACES.md, “Delayed rmap removal”, forced: Z (CPU1) runs MADV_DONTNEED over a dirty
/// shared file page that A (CPU0) has cached writable+dirty.  Inside Z's PTL
/// section, before its flush, W (CPU2) writes the page back — if it can: with
/// the rmap still there `folio_mkclean` must take Z's PTL, so W runs after Z
/// unlocks — and then A stores through its stale entry.  Returns the kernel
/// and the number of lost words.
fn writeback_race(delay_rmap: bool) -> (Arc<Kernel>, usize, bool) {
    let k = kernel_with(3, Arch::X86, |c| c.fixes.set(Fix::DelayRmap, delay_rmap));
    let file = k.new_file(4);
    let oracle = Arc::new(DirtyDataOracle::new(&file));
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 4 * PS, true, true, &file, 0).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    oracle.record_store(0, 0, 1);
    assert!(k.hw.tlb(CpuId(0)).lookup(mm.id, BASE).is_some_and(|e| e.dirty && e.writable));

    let deferred = Arc::new(Mutex::new(None::<bool>));
    {
        let (file, mm, oracle, deferred) = (file.clone(), mm.clone(), oracle.clone(), deferred.clone());
        let hook = move |k: &Kernel| {
            let mut d = deferred.lock();
            if d.is_some() {
                return;
            }
            let folio = *file.i_pages.lock().get(&0).unwrap();
            let me = k.this_cpu();
            // W on CPU2: folio_mkclean takes the PTL of every mapping it finds
            // through the rmap; Z holds that PTL now, so W can only run now if
            // the rmap is already gone.
            k.set_cpu(CpuId(2));
            let must_wait = k.mem.folio_mapped(folio);
            if !must_wait {
                assert_eq!(writeback_mapping(k, &file), 1, "W cleaned and wrote the page");
            }
            *d = Some(must_wait);
            // A on CPU0 stores through its cached dirty entry: no fault.
            k.set_cpu(CpuId(0));
            let faults = k.stats.get(Stat::PageFaults);
            k.write_user(&mm, BASE + 8, 2).unwrap();
            assert_eq!(k.stats.get(Stat::PageFaults), faults, "the store went through the stale TLB entry");
            oracle.record_store(0, 1, 2);
            k.set_cpu(me);
        };
        assert!(k.inject.hooks.zap_pte_range_locked.set(Box::new(hook)).is_ok());
    }
    k.set_cpu(CpuId(1));
    madvise_dontneed(&k, &mm, BASE, PS).unwrap();
    let waited = deferred.lock().expect("the hook ran");
    if waited {
        k.set_cpu(CpuId(2));
        assert_eq!(writeback_mapping(&k, &file), 1);
    }
    // End of the story: nothing is dirty any more; what was written must be
    // on disk (or the page would be dropped clean and the data gone).
    k.set_cpu(CpuId(2));
    writeback_mapping(&k, &file);
    let lost = oracle.check(&k);
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    k.set_cpu(CpuId(1));
    crate::tlb::switch_to_init_mm(&k, CpuId(1));
    truncate_inode_pages(&k, &file, 0);
    assert_no_leaks(&k);
    (k, lost, waited)
}

#[test]
fn delay_rmap_off_loses_dirty_data() {
    let (k, lost, waited) = writeback_race(false);
    assert!(!waited, "pre-5df397dec7c4 the rmap is gone before the flush: writeback does not wait");
    assert_eq!(lost, 1, "A's store through the stale entry is lost");
    assert_eq!(k.san.count_kind(ViolationKind::LostDirtyData), 1);
    assert_eq!(k.stats.get(Stat::DelayedRmaps), 0);
}

#[test]
fn delay_rmap_on_keeps_dirty_data() {
    let (k, lost, waited) = writeback_race(true);
    assert!(waited, "the rmap is still there: folio_mkclean must take the zap's PTL");
    assert_eq!(lost, 0);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    assert_eq!(k.stats.get(Stat::DelayedRmaps), 1);
}

#[test]
fn folio_mkclean_skips_unmapped_folio() {
    let k = kernel_with(1, Arch::X86, |_| {});
    let file = k.new_file(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, PS, true, true, &file, 0).unwrap();
    k.write_user(&mm, BASE, 3).unwrap();
    let folio = *file.i_pages.lock().get(&0).unwrap();
    assert_eq!(folio_mkclean(&k, &file, folio), 1);
    k.write_user(&mm, BASE, 4).unwrap();
    // Drop only the rmap (what a pre-fix zap did before its flush): the walk
    // no longer finds the dirty, writable PTE.
    k.mem.remove_rmap_ptes(folio.pfn(), 1);
    assert_eq!(folio_mkclean(&k, &file, folio), 0, "folio_mapped() == false: nothing to clean");
    k.mem.add_rmap_ptes(folio.pfn(), 1);
    assert_eq!(folio_mkclean(&k, &file, folio), 1);
    exit_mm(&k, &mm);
    truncate_inode_pages(&k, &file, 0);
    assert_no_leaks(&k);
}

#[test]
fn dirty_oracle_flags_clean_page_with_unwritten_data() {
    let k = kernel_with(1, Arch::X86, |_| {});
    let file = k.new_file(2);
    let oracle = DirtyDataOracle::new(&file);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 2 * PS, true, true, &file, 0).unwrap();
    k.write_user(&mm, BASE + PS, 9).unwrap();
    oracle.record_store(1, 0, 9);
    assert_eq!(oracle.check(&k), 0, "dirty PTE: still dirty");
    munmap(&k, &mm, BASE, 2 * PS).unwrap();
    assert_eq!(oracle.check(&k), 0, "PG_dirty after the zap");
    let folio = *file.i_pages.lock().get(&1).unwrap();
    // Clear PG_dirty without writing: the data exists only in a clean page.
    assert!(k.mem.folio(folio).test_and_clear(crate::page::flags::PG_DIRTY));
    assert_eq!(oracle.check(&k), 1);
    assert_eq!(k.san.count_kind(ViolationKind::LostDirtyData), 1);
    exit_mm(&k, &mm);
    truncate_inode_pages(&k, &file, 0);
    assert_no_leaks(&k);
}

/// A write fault on a write-protected shared file PTE (`wp_page_shared`)
/// marks the folio dirty under the folio lock (`fault_dirty_shared_page`):
/// while writeback holds the lock between `folio_mkclean` and its PG_dirty
/// test-and-clear, the writer cannot return to user space and store through
/// its new writable entry (the loom model `delayed_rmap_fixed` found the
/// lost store when the fault path did not take the lock).
#[test]
fn shared_write_fault_waits_for_the_folio_lock() {
    use std::sync::atomic::AtomicBool as StdBool;
    let k = kernel_with(1, Arch::Arm64, |_| {});
    let file = k.new_file(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, PS, true, true, &file, 0).unwrap();
    k.read_user(&mm, BASE).unwrap();
    let folio = *file.i_pages.lock().get(&0).unwrap();
    assert!(!k.mem.folio(folio).test(crate::page::flags::PG_DIRTY));
    k.folio_lock(folio); // writeback in progress
    let done = Arc::new(StdBool::new(false));
    let writer = {
        let (k, mm, done) = (k.clone(), mm.clone(), done.clone());
        std::thread::spawn(move || {
            k.write_user(&mm, BASE, 7).unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!done.load(Ordering::SeqCst), "the write fault returned while writeback held the folio lock");
    assert!(!k.mem.folio(folio).test(crate::page::flags::PG_DIRTY));
    k.folio_unlock(folio);
    writer.join().unwrap();
    assert!(k.mem.folio(folio).test(crate::page::flags::PG_DIRTY));
    assert!(!k.mem.folio(folio).test(crate::page::flags::PG_LOCKED));
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 7);
    exit_mm(&k, &mm);
    truncate_inode_pages(&k, &file, 0);
    assert_no_leaks(&k);
}

// ---- nested-flush-detect: two MADV_DONTNEEDs under mmap_lock read --------------

/// docs/RACES.md, “Concurrent zaps under a shared lock”, forced: T1 (CPU0) has cleared the PTEs of the range
/// and dropped the PTL but not flushed yet; T2 (CPU1) zaps the same range,
/// finds nothing and returns.  Returns the kernel and whether CPU1's next
/// read still saw the old data through its stale entry.
fn nested_zap(arch: Arch, detect: bool) -> (Arc<Kernel>, bool) {
    let k = kernel_with(2, arch, |c| c.fixes.set(Fix::NestedFlushDetect, detect));
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    for i in 0..4 {
        k.write_user(&mm, BASE + i * PS, 100 + i).unwrap();
    }
    run_on(&k, 1, &mm);
    for i in 0..4 {
        assert_eq!(k.read_user(&mm, BASE + i * PS).unwrap(), 100 + i);
    }
    // T1: zap_page_range_single up to (not including) tlb_end_vma's flush.
    k.set_cpu(CpuId(0));
    let lock = mm.mmap_lock.read();
    let vma = lock.find(BASE).cloned().unwrap();
    let mut t1 = MmuGather::tlb_gather_mmu(&k, &mm);
    t1.tlb_start_vma(&vma);
    let table = pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
    assert_eq!(zap::zap_pte_range(&mut t1, &vma, table, BASE, BASE + 4 * PS, None), BASE + 4 * PS);
    // T2 on CPU1: the whole madvise, then the application reads.
    k.set_cpu(CpuId(1));
    madvise_dontneed(&k, &mm, BASE, 4 * PS).unwrap();
    let stale_read = k.read_user(&mm, BASE).unwrap() == 100;
    // T1 finishes.
    k.set_cpu(CpuId(0));
    t1.tlb_end_vma(&vma);
    t1.tlb_finish_mmu();
    drop(lock);
    exit_mm(&k, &mm);
    k.set_cpu(CpuId(1));
    crate::tlb::switch_to_init_mm(&k, CpuId(1));
    assert_no_leaks(&k);
    (k, stale_read)
}

#[test]
fn nested_flush_detect_off_leaves_stale_entries_after_zap() {
    for arch in [Arch::X86, Arch::Arm64] {
        let (k, stale_read) = nested_zap(arch, false);
        assert!(k.san.count_kind(ViolationKind::StaleAfterZap) >= 4, "{arch:?}: {:?}", k.san.violations());
        assert!(stale_read, "{arch:?}: MADV_DONTNEED returned, yet the old data is still readable");
        assert_eq!(k.stats.get(Stat::NestedFlushForced), 0);
    }
}

#[test]
fn nested_flush_detect_on_flushes_for_the_other_zapper() {
    for arch in [Arch::X86, Arch::Arm64] {
        let (k, stale_read) = nested_zap(arch, true);
        assert_eq!(k.san.count(), 0, "{arch:?}: {:?}", k.san.violations());
        assert!(!stale_read, "{arch:?}: the read faulted in the shared zero page");
        assert_eq!(k.stats.get(Stat::NestedFlushForced), 1, "{arch:?}: T2 saw T1's gather; T1 then finished alone");
    }
}

// ---- secondary-tlb-on-flush: the SMMU permission-upgrade livelock -----------------

/// docs/RACES.md, “Secondary-TLB (IOMMU) invalidation”: the device caches a read-only translation, the CPU
/// upgrades the PTE in place (wp_page_shared → ptep_set_access_flags → arm64
/// flush_tlb_page), then the device writes.
fn permission_upgrade(on: bool) -> (Arc<Kernel>, Result<u64, DmaError>, usize) {
    let k = kernel_with(2, Arch::Arm64, |c| c.fixes.set(Fix::SecondaryTlbOnFlush, on));
    let file = k.new_file(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, PS, true, true, &file, 0).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0, "read fault: read-only, clean PTE");
    let dev = iommu_sva_bind_device(&k, &mm, 3);
    k.set_cpu(CpuId(1)); // the device's fault handler runs here
    assert_eq!(dev.dma_read(&k, BASE), Ok(0));
    assert!(dev.cached(BASE).is_some_and(|e| !e.writable));
    k.set_cpu(CpuId(0));
    k.write_user(&mm, BASE, 5).unwrap();
    let incoherent = incoherent_entries(&k, &dev, BASE, BASE + PS).len();
    k.set_cpu(CpuId(1));
    let r = dev.dma_write(&k, BASE, 7);
    dev.iommu_sva_unbind_device();
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    truncate_inode_pages(&k, &file, 0);
    assert_no_leaks(&k);
    (k, r, incoherent)
}

#[test]
fn secondary_tlb_on_flush_off_livelocks_the_device() {
    let (k, r, incoherent) = permission_upgrade(false);
    assert_eq!(incoherent, 1, "after flush_tlb_page the device still says read-only");
    assert_eq!(r, Err(DmaError::Livelock));
    assert_eq!(k.san.count_kind(ViolationKind::SecondaryLivelock), 1);
    assert_eq!(k.stats.get(Stat::IommuPageFaults), 3, "every retry faulted on the same stale entry");
}

#[test]
fn secondary_tlb_on_flush_on_device_sees_the_upgrade() {
    let (k, r, incoherent) = permission_upgrade(true);
    assert_eq!(incoherent, 0);
    assert_eq!(r, Ok(5), "the device wrote over the CPU's value");
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    assert_eq!(k.stats.get(Stat::IommuPageFaults), 0);
    assert!(k.stats.get(Stat::SecondaryTlbInvalidations) >= 1);
}

#[test]
fn device_fault_is_resolved_by_handle_mm_fault() {
    let k = kernel_with(1, Arch::Arm64, |_| {});
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    let dev = iommu_sva_bind_device(&k, &mm, 2);
    assert_eq!(dev.dma_write(&k, BASE + PS, 11), Ok(0));
    assert_eq!(k.stats.get(Stat::IommuPageFaults), 1);
    assert_eq!(k.read_user(&mm, BASE + PS).unwrap(), 11, "CPU and device share the page");
    assert_eq!(dev.dma_read(&k, BASE + 8 * PS), Err(DmaError::Fault), "no VMA: the IOPF fails");
    exit_mm(&k, &mm);
    assert_eq!(dev.dma_read(&k, BASE + PS), Err(DmaError::Released), "mmu_notifier_release");
    assert_no_leaks(&k);
}

/// What 6bbd42e2df8f buys: code that unhooks a page with a plain arch flush
/// (`ptep_clear_flush`, the post-6.6 idiom) and frees it is correct for the
/// device only if the arch flush reaches the secondary TLB.
#[test]
fn arch_flush_alone_invalidates_the_secondary_tlb_only_with_the_fix() {
    for arch in [Arch::X86, Arch::Arm64] {
        for on in [false, true] {
            let k = kernel_with(1, arch, |c| c.fixes.set(Fix::SecondaryTlbOnFlush, on));
            let mm = k.mm_alloc();
            run_on(&k, 0, &mm);
            mmap_anon(&k, &mm, BASE, PS, true).unwrap();
            k.write_user(&mm, BASE, 42).unwrap();
            let dev = iommu_sva_bind_device(&k, &mm, 2);
            assert_eq!(dev.dma_read(&k, BASE), Ok(42));
            let table = pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
            let ptl = pgtable::ptl(&k, table);
            let old = pgtable::get_and_clear(&k, table, Level::Pte, BASE);
            crate::tlb::flush_tlb_page(&k, &mm, BASE);
            drop(ptl);
            k.mem.remove_rmap_ptes(old.pfn(), 1);
            mm.rss.fetch_sub(1, Ordering::SeqCst);
            k.folio_put(Folio(old.pfn()));
            let r = dev.dma_read(&k, BASE);
            let stale = k.san.count_kind(ViolationKind::SecondaryTlbStale);
            if on {
                assert_eq!((r, stale), (Ok(0), 0), "{arch:?}: device re-faulted a fresh page");
            } else {
                assert_eq!(stale, 1, "{arch:?}: device read a freed frame");
            }
            dev.iommu_sva_unbind_device();
            exit_mm(&k, &mm);
            assert_no_leaks(&k);
        }
    }
}

/// Pre-6bbd42e2df8f placement, faithfully: the gather's
/// `tlb_flush_mmu_tlbonly` and `ptep_clear_flush_notify` still reached the
/// device, so munmap and COW were safe either way.  Counts: reverted 4 —
/// fork's range_end, the COW's `ptep_clear_flush_notify`, munmap's
/// `tlb_flush_mmu_tlbonly` and `unmap_vmas`'s range_end; with the fix 3, one
/// per arch flush (fork's `flush_tlb_mm`, the COW's `flush_tlb_page`,
/// munmap's gather flush).
#[test]
fn gather_and_cow_invalidate_the_device_both_ways() {
    let mut counts = Vec::new();
    for on in [false, true] {
        let k = kernel_with(1, Arch::Arm64, |c| c.fixes.set(Fix::SecondaryTlbOnFlush, on));
        let mm = k.mm_alloc();
        run_on(&k, 0, &mm);
        mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
        for i in 0..4 {
            k.write_user(&mm, BASE + i * PS, i + 1).unwrap();
        }
        let dev = iommu_sva_bind_device(&k, &mm, 2);
        for i in 0..4 {
            assert_eq!(dev.dma_read(&k, BASE + i * PS), Ok(i + 1));
        }
        // COW: fork, then the parent writes (wp_page_copy), the child exits
        // so the old page is freed.
        let child = dup_mmap(&k, &mm).unwrap();
        k.write_user(&mm, BASE, 9).unwrap();
        run_on(&k, 0, &child);
        exit_mm(&k, &child);
        run_on(&k, 0, &mm);
        assert_eq!(dev.dma_read(&k, BASE), Ok(9), "the device follows the COW");
        munmap(&k, &mm, BASE + PS, 2 * PS).unwrap();
        assert_eq!(dev.dma_read(&k, BASE + PS), Err(DmaError::Fault));
        assert_eq!(k.san.count(), 0, "on={on}: {:?}", k.san.violations());
        counts.push((k.stats.get(Stat::SecondaryTlbInvalidations), dev.invalidations()));
        dev.iommu_sva_unbind_device();
        exit_mm(&k, &mm);
        assert_no_leaks(&k);
    }
    assert_eq!(counts, vec![(4, 4), (3, 3)], "(secondary invalidations, device invalidations), off then on");
}

// ---- folio-pages-batching: a 2 MiB PTE-mapped folio -----------------------------

fn large_folio_kernel(on: bool) -> Arc<Kernel> {
    kernel_with(1, Arch::X86, |c| {
        c.fixes.set(Fix::FolioPagesBatching, on);
        c.ram_frames = 1 << 15;
    })
}

#[test]
fn folio_pages_batching_zap_of_2mib_folio_takes_2_slots_not_512() {
    for on in [true, false] {
        let k = large_folio_kernel(on);
        let mm = k.mm_alloc();
        run_on(&k, 0, &mm);
        let pmd = k.cfg.geometry.pmd_size();
        let order = k.cfg.geometry.hpage_pmd_order();
        let nr = k.cfg.geometry.hpage_pmd_nr();
        mmap_anon(&k, &mm, BASE, pmd, true).unwrap();
        let f = fault::do_anonymous_page_mthp(&k, &mm, BASE, order).unwrap();
        assert_eq!(k.mem.folio_nr_pages(f), 512);
        assert_eq!(k.mem.folio_mapcount(f), 512);
        assert_eq!(k.read_user(&mm, BASE + 300 * PS).unwrap(), 0);
        let lock = mm.mmap_lock.read();
        let vma = lock.find(BASE).cloned().unwrap();
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_start_vma(&vma);
        let table = pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
        assert_eq!(zap::zap_pte_range(&mut tlb, &vma, table, BASE, BASE + pmd, None), BASE + pmd);
        if on {
            assert_eq!(tlb.nr_gathered(), 2);
            assert_eq!(
                tlb.local_entries(),
                &[encode_page(f.pfn(), ENCODED_PAGE_BIT_NR_PAGES_NEXT), encode_nr_pages(nr)][..]
            );
            assert!(tlb.active_is_local());
        } else {
            assert_eq!(tlb.nr_gathered(), 512);
            // Pre-d7f861b9c43a a batch is full at nr == max: `local` holds
            // all MMU_GATHER_BUNDLE pages.
            let local: Vec<_> = (0..MMU_GATHER_BUNDLE as u64).map(|i| encode_page(f.pfn().add(i), 0)).collect();
            assert_eq!(tlb.local_entries(), &local[..], "one slot per page, `local` first");
            let first = MMU_GATHER_BUNDLE as u64;
            let rest: Vec<_> = (first..nr).map(|i| encode_page(f.pfn().add(i), 0)).collect();
            assert_eq!(tlb.active_entries(), &rest[..]);
        }
        tlb.tlb_end_vma(&vma);
        tlb.tlb_finish_mmu();
        drop(lock);
        assert_eq!(k.mem.page(f.pfn()).refcount(), 0, "freed after the flush");
        exit_mm(&k, &mm);
        assert_no_leaks(&k);
        assert_eq!(k.san.count(), 0);
    }
}

/// MADV_DONTNEED of 24 PTE-mapped 2 MiB folios (12288 pages, 48 MiB).  With
/// batching 48 slots fit in one gather: one TLB flush (tlb_end_vma), one
/// batch page.  Without, 12288 slots exceed a gather's capacity
/// (pre-d7f861b9c43a: `MMU_GATHER_BUNDLE` + `MAX_GATHER_BATCH_COUNT` ×
/// `MAX_GATHER_BATCH` = 9698 pages): the zap force-flushes in the middle.
#[test]
fn folio_pages_batching_counts_for_a_large_range() {
    let mut res = Vec::new();
    for on in [true, false] {
        let k = large_folio_kernel(on);
        let mm = k.mm_alloc();
        run_on(&k, 0, &mm);
        let pmd = k.cfg.geometry.pmd_size();
        let n = 24;
        mmap_anon(&k, &mm, BASE, n * pmd, true).unwrap();
        for i in 0..n {
            fault::do_anonymous_page_mthp(&k, &mm, BASE + i * pmd, k.cfg.geometry.hpage_pmd_order()).unwrap();
        }
        let before = k.stats_snapshot();
        madvise_dontneed(&k, &mm, BASE, n * pmd).unwrap();
        let after = k.stats_snapshot();
        let d = |name: &str| after.get(name) - before.get(name);
        res.push((
            d("tlb_flush_ranged") + d("tlb_flush_full"),
            d("gather_flushes"),
            d("gather_batch_alloc"),
            d("gather_pages_freed"),
        ));
        assert_eq!(mm.rss.load(Ordering::SeqCst), 0);
        exit_mm(&k, &mm);
        assert_no_leaks(&k);
        assert_eq!(k.san.count(), 0);
    }
    let (on, off) = (res[0], res[1]);
    assert_eq!(on.3, 12288, "every page freed");
    assert_eq!(off.3, 12288);
    assert_eq!(on.0, 1, "one TLB flush with batching: {res:?}");
    assert_eq!(on.2, 1, "48 slots: local + one batch page: {res:?}");
    assert!(off.0 >= 2, "without batching the gather fills and force-flushes mid-range: {res:?}");
    assert_eq!(off.2, crate::gather::MAX_GATHER_BATCH_COUNT as u64, "{res:?}");
    assert_eq!(res, vec![(1, 1, 1, 12288), (2, 2, crate::gather::MAX_GATHER_BATCH_COUNT as u64, 12288)]);
}

// ---- counts (issue 4 item 7) -----------------------------------------------------

#[test]
fn stats_snapshot_names_the_story_counters() {
    let k = kernel_with(2, Arch::X86, |_| {});
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    k.set_cpu(CpuId(1));
    k.read_user(&mm, BASE).unwrap();
    k.set_cpu(CpuId(0));
    madvise_dontneed(&k, &mm, BASE, PS).unwrap();
    crate::gather::tlb_remove_table_sync_one(&k);
    let s = k.stats_snapshot();
    for name in [
        "tlb_remove_table_sync_one",
        "irq_tlb_count",
        "irq_call_count",
        "tlb_flush_ranged",
        "tlb_flush_full",
        "gather_batch_alloc",
        "gather_flushes",
        "delayed_rmaps",
        "secondary_tlb_invalidations",
        "nr_tlb_remote_flush",
    ] {
        assert!(s.totals.iter().any(|(n, _)| *n == name), "{name} missing from the snapshot");
    }
    let cal = &s.per_cpu.iter().find(|(n, _)| *n == "irq_call_count").unwrap().1;
    let tlb = &s.per_cpu.iter().find(|(n, _)| *n == "irq_tlb_count").unwrap().1;
    assert_eq!(cal.len(), 2);
    assert_eq!(tlb[1], 1, "CPU1 took the shootdown");
    assert!(cal[1] >= 2, "shootdown + sync_one both arrive as CAL on CPU1: {cal:?}");
    assert_eq!(s.get("tlb_remove_table_sync_one"), 1);
    exit_mm(&k, &mm);
    k.set_cpu(CpuId(1));
    crate::tlb::switch_to_init_mm(&k, CpuId(1));
    assert_no_leaks(&k);
}

// ---- munmap zaps under mmap_lock read (vms_complete_munmap_vmas, v6.12) ----------

/// Counter deltas: (counter, how much it moved).
type Deltas = Vec<(Stat, u64)>;

/// CPU0 munmaps region A of mm (two threads: CPU0 and CPU1); inside its
/// zap of A (the `zap_pte_range_locked` hook, A's PTL held) CPU1 runs a
/// whole MADV_DONTNEED of region B of the same mm — possible only because
/// munmap downgraded mmap_lock to read before zapping.  The madvise's
/// gather finds the munmap's gather pending (`mm_tlb_flush_nested`) and
/// forces a full flush with freed_tables.  Returns the kernel, the counter
/// deltas of the madvise alone and of the whole munmap (madvise included).
fn munmap_beside_madvise(arch: Arch) -> (Arc<Kernel>, Deltas, Deltas) {
    const A: u64 = BASE;
    const B: u64 = BASE + (8 << 20); // another PTE table (and PTL)
    const WATCH: [Stat; 8] = [
        Stat::NestedFlushForced,
        Stat::TlbFlushFull,
        Stat::TlbFlushRanged,
        Stat::TlbIpiSent,
        Stat::IrqTlbCount,
        Stat::Arm64TlbiAside1is,
        Stat::Arm64BroadcastTlbi,
        Stat::TablesQueued,
    ];
    let k = kernel_with(2, arch, |_| {});
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, A, 4 * PS, true).unwrap();
    mmap_anon(&k, &mm, B, 4 * PS, true).unwrap();
    for i in 0..4 {
        k.write_user(&mm, A + i * PS, 10 + i).unwrap();
        k.write_user(&mm, B + i * PS, 20 + i).unwrap();
    }
    k.set_cpu(CpuId(1));
    assert_eq!(k.read_user(&mm, B).unwrap(), 20);
    k.set_cpu(CpuId(0));
    let snap = |k: &Kernel| WATCH.map(|s| k.stats.get(s));
    let inner: Arc<Mutex<Option<[u64; 8]>>> = Arc::new(Mutex::new(None));
    {
        let (mm, inner) = (mm.clone(), inner.clone());
        let hook = move |k: &Kernel| {
            if k.this_cpu() != CpuId(0) || inner.lock().is_some() {
                return;
            }
            *inner.lock() = Some([0; 8]);
            // vms_complete_munmap_vmas downgraded: a reader gets in.
            assert!(mm.mmap_lock.try_read().is_some(), "munmap zaps with mmap_lock held for write");
            assert!(mm.mm_tlb_flush_pending(), "the munmap's gather is pending");
            let before = snap(k);
            k.set_cpu(CpuId(1));
            madvise_dontneed(k, &mm, B, 4 * PS).unwrap();
            k.set_cpu(CpuId(0));
            let after = snap(k);
            *inner.lock() = Some([0, 1, 2, 3, 4, 5, 6, 7].map(|i| after[i] - before[i]));
        };
        assert!(k.inject.hooks.zap_pte_range_locked.set(Box::new(hook)).is_ok());
    }
    let before = snap(&k);
    munmap(&k, &mm, A, 4 * PS).unwrap();
    let after = snap(&k);
    let inner = inner.lock().expect("the hook ran");
    let outer: Vec<_> = WATCH.iter().enumerate().map(|(i, s)| (*s, after[i] - before[i])).collect();
    let inner: Vec<_> = WATCH.iter().enumerate().map(|(i, s)| (*s, inner[i])).collect();
    // The madvise's full flush reached CPU1's stale entries of B too.
    k.set_cpu(CpuId(1));
    assert_eq!(k.read_user(&mm, B).unwrap(), 0, "B was thrown away");
    assert_eq!(k.san.count(), 0, "{arch:?}: {:?}", k.san.violations());
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    k.set_cpu(CpuId(1));
    crate::tlb::switch_to_init_mm(&k, CpuId(1));
    assert_no_leaks(&k);
    (k, inner, outer)
}

#[test]
fn munmap_zaps_under_the_read_lock_and_a_concurrent_madvise_nests() {
    let nz = |v: &[(Stat, u64)]| v.iter().filter(|(_, n)| *n != 0).map(|(s, n)| (s.name(), *n)).collect::<Vec<_>>();
    // x86 (MMU_GATHER_MERGE_VMAS: tlb_end_vma does not flush): the
    // madvise (CPU1) finishes while the munmap's gather is pending: its one
    // flush is the forced full flush with freed_tables (one IPI to CPU0).
    let (_, inner, outer) = munmap_beside_madvise(Arch::X86);
    assert_eq!(
        nz(&inner),
        [("nested_flush_forced", 1), ("tlb_flush_full", 1), ("tlb_ipi_sent", 1), ("irq_tlb_count", 1)],
        "x86 madvise"
    );
    assert_eq!(
        nz(&outer),
        [
            ("nested_flush_forced", 1),
            ("tlb_flush_full", 1),
            ("tlb_flush_ranged", 1),
            ("tlb_ipi_sent", 2),
            ("irq_tlb_count", 2),
            ("tables_queued", 1)
        ],
        "x86 munmap + madvise: the munmap itself flushes once, at tlb_finish_mmu (ranged, freed_tables; \
         not forced: the madvise had finished), one IPI to CPU1"
    );
    // arm64: the range flush at tlb_end_vma, then the forced fullmm flush
    // with freed_tables is flush_tlb_mm (one ASIDE1IS); no IPIs.
    let (_, inner, outer) = munmap_beside_madvise(Arch::Arm64);
    assert_eq!(
        nz(&inner),
        [
            ("nested_flush_forced", 1),
            ("tlb_flush_full", 1),
            ("tlb_flush_ranged", 1),
            ("arm64_tlbi_aside1is", 1),
            ("arm64_tlbi_broadcast", 2)
        ],
        "arm64 madvise"
    );
    assert_eq!(
        nz(&outer),
        [
            ("nested_flush_forced", 1),
            ("tlb_flush_full", 1),
            ("tlb_flush_ranged", 3),
            ("arm64_tlbi_aside1is", 1),
            ("arm64_tlbi_broadcast", 4),
            ("tables_queued", 1)
        ],
        "arm64 munmap + madvise"
    );
}

// ---- secondary-tlb-on-flush off: the pre-6.6 ->invalidate_range call sites ----

/// A subscriber that records every range it is asked to invalidate.
struct RangeLog(Arc<Mutex<Vec<(u64, u64)>>>);

impl crate::notifier::MmuNotifierOps for RangeLog {
    fn arch_invalidate_secondary_tlbs(&self, _k: &Kernel, _mm: u64, start: u64, end: u64) {
        self.0.lock().push((start, end));
    }
}

/// The ranges a subscriber of `mm` is handed by munmap, MADV_DONTNEED,
/// mprotect, a THP collapse and the exit, one list per operation.
fn secondary_ranges(on: bool) -> Vec<Vec<(u64, u64)>> {
    let k = kernel_with(1, Arch::Arm64, |c| c.fixes.set(Fix::SecondaryTlbOnFlush, on));
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    let pmd = k.cfg.geometry.pmd_size();
    // [BASE, BASE + 2 MiB): collapse target; [BASE + 2 MiB, +8 pages): the rest.
    let (hp, rest) = (BASE, BASE + pmd);
    mmap_anon(&k, &mm, hp, pmd + 8 * PS, true).unwrap();
    for i in 0..16 {
        k.write_user(&mm, hp + i * PS, i + 1).unwrap();
    }
    for i in 0..8 {
        k.write_user(&mm, rest + i * PS, i + 1).unwrap();
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    crate::notifier::mmu_notifier_register(&mm, Box::new(RangeLog(log.clone())));
    let mut out = Vec::new();
    let take = || std::mem::take(&mut *log.lock());
    munmap(&k, &mm, rest + 7 * PS, PS).unwrap();
    out.push(take());
    madvise_dontneed(&k, &mm, rest + 6 * PS, PS).unwrap();
    out.push(take());
    mprotect(&k, &mm, rest, 2 * PS, true, false).unwrap();
    out.push(take());
    assert_eq!(crate::ops::khugepaged::collapse_huge_page(&k, &mm, hp), crate::ops::khugepaged::ScanResult::Succeed);
    out.push(take());
    exit_mm(&k, &mm);
    out.push(take());
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    out
}

/// Before 6bbd42e2df8f (secondary-tlb-on-flush off) the generic code
/// reached a subscriber twice per gathered zap: `mmu_notifier_invalidate_range`
/// in `tlb_flush_mmu_tlbonly` (tlb->start..tlb->end, so ~0..~0 for fullmm)
/// and `->invalidate_range` at the `mmu_notifier_invalidate_range_end` of
/// `unmap_vmas`, `zap_page_range_single` and `change_protection`;
/// `collapse_huge_page` only at its range_end (`pmdp_collapse_flush` is an
/// arch flush).  With the fix every arch flush does it once, nothing else.
#[test]
fn secondary_tlb_on_flush_off_keeps_the_range_end_invalidations() {
    let pmd = 2 << 20;
    let (hp, rest) = (BASE, BASE + pmd);
    let (munmap, madv, mprot, collapse) =
        ((rest + 7 * PS, rest + 8 * PS), (rest + 6 * PS, rest + 7 * PS), (rest, rest + 2 * PS), (hp, hp + pmd));
    // exit: tlb->start is the lowest address the fullmm gather recorded (the
    // PUD freed at 0), tlb->end stays ~0; unmap_vmas's range is 0..ULONG_MAX.
    let exit = (0, u64::MAX);
    assert_eq!(secondary_ranges(true), vec![vec![munmap], vec![madv], vec![mprot], vec![collapse], vec![exit]]);
    assert_eq!(
        secondary_ranges(false),
        vec![vec![munmap; 2], vec![madv; 2], vec![mprot; 2], vec![collapse], vec![exit; 2]],
        "tlb_flush_mmu_tlbonly, then the range_end"
    );
}
