//! khugepaged collapse, zap_huge_pmd / split, retract_page_tables, and the
//! RACES.md “Stale pin of a collapsed page” / RACES.md “The PTE table freed under the walker” interleavings forced through the gup_fast and collapse hooks.

use super::*;
use crate::check::check_consistency;
use crate::check::sanitizer::ViolationKind;
use crate::config::{Arch, KernelConfig};
use crate::inject::GupFastPoint;
use crate::ops::gup::{gup_fast, unpin_user_pages, Foll};
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::ops::{exit_mm, madvise_dontneed, mmap_anon, mmap_file, munmap};
use crate::stats::Stat;
use crate::sync::{AtomicBool, Mutex};
use crate::types::CpuId;
use std::sync::mpsc;

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;
const HPAGE: u64 = 512 * PS;

fn cfg() -> KernelConfig {
    KernelConfig { gup_oracle: true, ..KernelConfig::default() }
}

fn pmd_of(k: &Kernel, mm: &MmStruct, va: u64) -> Pte {
    let t = pgtable::lookup_table(k, mm, va, Level::Pmd).unwrap();
    pgtable::read(k, t, Level::Pmd, va)
}

/// An anon mm with one PMD range at BASE, `n` pages written (value = index + 100).
fn setup(k: &Kernel, n: u64) -> Arc<MmStruct> {
    let mm = k.mm_alloc();
    run_on(k, 0, &mm);
    mmap_anon(k, &mm, BASE, 2 * HPAGE, true).unwrap();
    for i in 0..n {
        k.write_user(&mm, BASE + i * PS, i + 100).unwrap();
    }
    mm
}

#[test]
fn collapse_anon_maps_a_thp_and_munmap_frees_the_deposited_table() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = setup(&k, 16);
    let tables_before = k.alloc.in_use().page_table;
    assert_eq!(collapse_huge_page(&k, &mm, BASE + 5 * PS), ScanResult::Succeed);
    let pmd = pmd_of(&k, &mm, BASE);
    assert!(pmd.huge() && pmd.write());
    assert_eq!(k.alloc.in_use().anon, 512, "16 small pages gone, one 512-page THP");
    assert_eq!(k.alloc.in_use().page_table, tables_before, "the PTE table is deposited, not freed");
    assert_eq!(mm.rss.load(Ordering::SeqCst), 512);
    check_consistency(&k, &[&mm], &[]).unwrap();
    // Data survived; holes read zero; writes go through the huge mapping.
    for i in 0..16 {
        assert_eq!(k.read_user(&mm, BASE + i * PS).unwrap(), i + 100);
    }
    assert_eq!(k.read_user(&mm, BASE + 300 * PS).unwrap(), 0);
    k.write_user(&mm, BASE + 300 * PS, 7).unwrap();
    assert_eq!(k.read_user(&mm, BASE + 300 * PS).unwrap(), 7);
    assert_eq!(collapse_huge_page(&k, &mm, BASE), ScanResult::PmdMapped);
    assert_eq!((k.stats.get(Stat::ThpCollapseAlloc), k.stats.get(Stat::ThpCollapsed)), (1, 1));
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 1, "one sync IPI per collapse that got past the flush");
    // GUP through the huge PMD (gup_fast_pmd_leaf).
    let pages = gup_fast(&k, &mm, BASE + 510 * PS, 2, Foll::PIN);
    assert_eq!(pages, vec![pmd.pfn().add(510), pmd.pfn().add(511)]);
    unpin_user_pages(&k, &pages);
    let freed = k.stats.get(Stat::TablesFreed);
    munmap(&k, &mm, BASE, HPAGE).unwrap();
    assert!(k.stats.get(Stat::TablesFreed) > freed, "zap_deposited_table freed the deposited table");
    assert!(mm.pmd_huge_pte.lock().is_empty());
    assert_eq!(mm.rss.load(Ordering::SeqCst), 0);
    assert!(k.read_user(&mm, BASE).is_err());
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn collapse_aborts_on_a_gup_pin_and_puts_the_table_back() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = setup(&k, 8);
    let pinned = gup_fast(&k, &mm, BASE + 3 * PS, 1, Foll::PIN | Foll::WRITE);
    assert_eq!(pinned.len(), 1);
    assert_eq!(collapse_huge_page(&k, &mm, BASE), ScanResult::PageCount);
    assert!(!pmd_of(&k, &mm, BASE).huge(), "the PTE table is back");
    assert_eq!(k.read_user(&mm, BASE + 3 * PS).unwrap(), 103);
    check_consistency(&k, &[&mm], &[]).ok(); // the pin is an extra reference
    unpin_user_pages(&k, &pinned);
    check_consistency(&k, &[&mm], &[]).unwrap();
    assert_eq!(collapse_huge_page(&k, &mm, BASE), ScanResult::Succeed);
    assert_eq!(collapse_huge_page(&k, &mm, BASE + HPAGE), ScanResult::PmdNull, "nothing mapped there");
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn partial_munmap_of_a_thp_splits_it() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = setup(&k, 512);
    assert_eq!(collapse_huge_page(&k, &mm, BASE), ScanResult::Succeed);
    munmap(&k, &mm, BASE + 256 * PS, 256 * PS).unwrap();
    assert!(!pmd_of(&k, &mm, BASE).huge(), "split into PTEs");
    assert!(mm.pmd_huge_pte.lock().is_empty(), "the deposited table was withdrawn");
    for i in [0, 100, 255] {
        assert_eq!(k.read_user(&mm, BASE + i * PS).unwrap(), i + 100);
    }
    assert!(k.read_user(&mm, BASE + 256 * PS).is_err());
    check_consistency(&k, &[&mm], &[]).unwrap();
    assert_eq!(mm.rss.load(Ordering::SeqCst), 256);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// RACES.md “Stale pin of a collapsed page”: W (CPU1) read the PMD and the PTE of X, then stalls; K (CPU0)
/// clears the PMD and passes the refcount check; W grabs X and re-checks;
/// K copies X and discards it.  The two actors run on two host threads
/// handing the (synchronous) machine to each other.  Returns (collapse
/// result, pages W returned, kernel).
fn section2a(pmd_recheck: bool) -> (ScanResult, Vec<Pfn>, Arc<Kernel>) {
    let fixes = crate::config::Fixes::all().revert(Fix::KhugepagedGupFastIpi);
    let mut fixes = fixes;
    fixes.set(Fix::GupPmdRecheck, pmd_recheck);
    let k = Kernel::new_sync(KernelConfig { arch: Arch::Arm64, fixes, ..cfg() }, 2);
    let mm = setup(&k, 4);
    run_on(&k, 1, &mm);
    let (at_grab_tx, at_grab_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Vec<Pfn>>();
    let (at_grab_tx, go_rx) = (Mutex::new(at_grab_tx), Mutex::new(go_rx));
    let armed = AtomicBool::new(true);
    k.inject.race.set_gup_fast(move |k, p, _| {
        if p == GupFastPoint::PteRead && armed.swap(false, Ordering::SeqCst) {
            at_grab_tx.lock().send(()).unwrap();
            go_rx.lock().recv().unwrap();
            k.set_cpu(CpuId(1));
        }
    });
    let (go_tx, done_rx) = (Mutex::new(go_tx), Mutex::new(done_rx));
    let w_got = Arc::new(Mutex::new(None));
    let w_got2 = w_got.clone();
    k.inject.race.set_collapse(move |k, p, _| {
        if p == CollapsePoint::AfterIsolate {
            go_tx.lock().send(()).unwrap();
            *w_got2.lock() = Some(done_rx.lock().recv().unwrap());
            k.set_cpu(CpuId(0));
        }
    });
    let (res, got) = std::thread::scope(|s| {
        let (k2, mm2) = (k.clone(), mm.clone());
        s.spawn(move || {
            k2.set_cpu(CpuId(1));
            let pages = gup_fast(&k2, &mm2, BASE + PS, 1, Foll::PIN);
            done_tx.send(pages).unwrap();
        });
        at_grab_rx.recv().unwrap();
        k.set_cpu(CpuId(0));
        let res = collapse_huge_page(&k, &mm, BASE);
        let got = w_got.lock().take().expect("W ran inside the collapse");
        (res, got)
    });
    unpin_user_pages(&k, &got);
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    (res, got, k)
}

#[test]
fn section2a_without_pmd_recheck_pins_a_page_the_collapse_discards() {
    let (res, got, k) = section2a(false);
    assert_eq!(res, ScanResult::Succeed, "the refcount check ran before the pin");
    assert_eq!(got.len(), 1, "W returned the old small page");
    assert!(k.san.count_kind(ViolationKind::GupOracle) >= 1, "{:?}", k.san.violations());
}

#[test]
fn section2a_with_pmd_recheck_backs_off() {
    let (res, got, k) = section2a(true);
    assert_eq!(res, ScanResult::Succeed);
    assert!(got.is_empty(), "W saw the cleared PMD and dropped its grab");
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// RACES.md “The PTE table freed under the walker” (anon): W (CPU1) read the PMD (table T) and stalls with IRQs off;
/// K (CPU0) collapses (T deposited under the THP) and munmaps the THP
/// (zap_deposited_table frees T at once); W reads on from T.
fn section2b_anon(sync_ipi: bool) -> Arc<Kernel> {
    let fixes = crate::config::Fixes::all();
    let mut fixes = fixes;
    fixes.set(Fix::KhugepagedGupFastIpi, sync_ipi);
    let k = Kernel::new_sync(KernelConfig { arch: Arch::Arm64, fixes, ..cfg() }, 2);
    let mm = setup(&k, 4);
    run_on(&k, 1, &mm);
    let armed = AtomicBool::new(true);
    let m = mm.clone();
    k.inject.race.set_gup_fast(move |k, p, _| {
        if p == GupFastPoint::PmdRead && armed.swap(false, Ordering::SeqCst) {
            k.set_cpu(CpuId(0));
            assert_eq!(collapse_huge_page(k, &m, BASE), ScanResult::Succeed);
            munmap(k, &m, BASE, HPAGE).unwrap();
            // Reuse: new page tables and pages elsewhere.
            for i in 0..4 {
                k.write_user(&m, BASE + HPAGE + i * (HPAGE / 4), 0xbad).unwrap();
            }
            k.set_cpu(CpuId(1));
        }
    });
    let pages = gup_fast(&k, &mm, BASE, 4, Foll::PIN);
    unpin_user_pages(&k, &pages);
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    k.set_cpu(CpuId(1));
    crate::tlb::enter_lazy_tlb(&k);
    assert_no_leaks(&k);
    k
}

#[test]
fn section2b_anon_without_sync_ipi_walks_the_freed_deposited_table() {
    let k = section2b_anon(false);
    assert!(k.san.count_kind(ViolationKind::GupFastFreedTable) >= 1, "{:?}", k.san.violations());
}

/// With the sync IPI the collapse cannot get past `tlb_remove_table_sync_one`
/// while W has IRQs off: the synchronous Smp reports the wait it cannot do.
#[test]
#[should_panic(expected = "cannot acknowledge")]
fn section2b_anon_with_sync_ipi_waits_for_the_walker() {
    section2b_anon(true);
}

/// A shared file mapping at BASE whose first PMD range has an empty PTE
/// table (pages faulted in, then MADV_DONTNEED).
fn file_setup(k: &Kernel) -> (Arc<MmStruct>, Arc<AddressSpace>) {
    let mm = k.mm_alloc();
    run_on(k, 0, &mm);
    let file = k.new_file(1024);
    mmap_file(k, &mm, BASE, 2 * HPAGE, false, true, &file, 0).unwrap();
    for i in 0..8 {
        k.read_user(&mm, BASE + i * PS).unwrap();
    }
    madvise_dontneed(k, &mm, BASE, HPAGE).unwrap();
    (mm, file)
}

fn drop_file(k: &Kernel, file: &crate::sync::Arc<AddressSpace>) {
    crate::ops::truncate_inode_pages(k, file, 0);
}

#[test]
fn retract_page_tables_frees_empty_tables_deferred_or_at_once() {
    for defer in [true, false] {
        let k = Kernel::new_sync(KernelConfig { pte_free_defer: defer, ..cfg() }, 1);
        let (mm, file) = file_setup(&k);
        k.read_user(&mm, BASE + HPAGE).unwrap(); // second range: table not empty
        let freed = k.stats.get(Stat::TablesFreed);
        assert_eq!(retract_page_tables(&k, &file, 0), 1);
        assert_eq!(retract_page_tables(&k, &file, 512), 0, "a table that maps pages stays");
        assert!(pmd_of(&k, &mm, BASE).is_none());
        assert_eq!(k.stats.get(Stat::TablesFreed) - freed, u64::from(!defer), "defer: not before a grace period");
        k.rcu_barrier();
        assert_eq!(k.stats.get(Stat::TablesFreed) - freed, 1);
        assert_eq!(k.read_user(&mm, BASE + PS).unwrap(), 0, "refaults through a new table");
        exit_mm(&k, &mm);
        drop_file(&k, &file);
        assert_no_leaks(&k);
        assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    }
}

/// RACES.md “The PTE table freed under the walker” (file, 2022 path): W (CPU1) read the PMD (table T) and stalls; K
/// retracts T.
fn section2b_file(pte_free_defer: bool, sync_ipi: bool) -> Arc<Kernel> {
    let mut fixes = crate::config::Fixes::all();
    fixes.set(Fix::KhugepagedGupFastIpi, sync_ipi);
    let k = Kernel::new_sync(KernelConfig { arch: Arch::Arm64, fixes, pte_free_defer, ..cfg() }, 2);
    let (mm, file) = file_setup(&k);
    run_on(&k, 1, &mm);
    let armed = AtomicBool::new(true);
    let f = file.clone();
    k.inject.race.set_gup_fast(move |k, p, _| {
        if p == GupFastPoint::PmdRead && armed.swap(false, Ordering::SeqCst) {
            k.set_cpu(CpuId(0));
            assert_eq!(retract_page_tables(k, &f, 0), 1);
            k.rcu_process_callbacks();
            k.set_cpu(CpuId(1));
        }
    });
    let pages = gup_fast(&k, &mm, BASE, 1, Foll::GET);
    assert!(pages.is_empty());
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    drop_file(&k, &file);
    k.set_cpu(CpuId(1));
    crate::tlb::enter_lazy_tlb(&k);
    assert_no_leaks(&k);
    k
}

#[test]
fn section2b_file_immediate_free_without_sync_walks_a_freed_table() {
    let k = section2b_file(false, false);
    assert!(k.san.count_kind(ViolationKind::GupFastFreedTable) >= 1, "{:?}", k.san.violations());
}

#[test]
fn section2b_file_pte_free_defer_is_safe_without_the_sync() {
    let k = section2b_file(true, false);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
#[should_panic(expected = "cannot acknowledge")]
fn section2b_file_immediate_free_with_sync_waits_for_the_walker() {
    section2b_file(false, true);
}

/// The loom geometry (`KernelConfig::small()`: 4-entry tables, 64 frames):
/// a THP is 4 pages (order 2); collapse, GUP through the huge PMD, zap of
/// the deposited table and the file retraction all work there too.
#[test]
fn collapse_and_retract_work_on_the_small_geometry() {
    let k = Kernel::new_sync(KernelConfig { gup_oracle: true, ..KernelConfig::small() }, 1);
    let g = k.cfg.geometry;
    let (ps, hpage) = (g.page_size(), g.pmd_size());
    assert_eq!(g.hpage_pmd_nr(), 4);
    let base = 0x4_0000;
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, base, hpage, true).unwrap();
    k.write_user(&mm, base + ps, 7).unwrap();
    assert_eq!(collapse_huge_page(&k, &mm, base), ScanResult::Succeed);
    let pmd = pmd_of(&k, &mm, base);
    assert!(pmd.huge());
    assert_eq!(k.read_user(&mm, base + ps).unwrap(), 7);
    assert_eq!(k.read_user(&mm, base + 3 * ps).unwrap(), 0, "a hole reads zero");
    let pages = gup_fast(&k, &mm, base, 4, Foll::PIN);
    assert_eq!(pages, (0..4).map(|i| pmd.pfn().add(i)).collect::<Vec<_>>());
    unpin_user_pages(&k, &pages);
    let freed = k.stats.get(Stat::TablesFreed);
    munmap(&k, &mm, base, hpage).unwrap();
    assert!(k.stats.get(Stat::TablesFreed) > freed, "the deposited table was freed");
    // File retraction with the immediate (2022) free.
    let k2 = Kernel::new_sync(KernelConfig { pte_free_defer: false, ..KernelConfig::small() }, 1);
    let mm2 = k2.mm_alloc();
    run_on(&k2, 0, &mm2);
    let file = k2.new_file(8);
    mmap_file(&k2, &mm2, base, hpage, false, true, &file, 0).unwrap();
    k2.read_user(&mm2, base).unwrap();
    madvise_dontneed(&k2, &mm2, base, hpage).unwrap();
    assert_eq!(retract_page_tables(&k2, &file, 0), 1);
    assert!(pmd_of(&k2, &mm2, base).is_none());
    exit_mm(&k2, &mm2);
    drop_file(&k2, &file);
    assert_no_leaks(&k2);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count() + k2.san.count(), 0, "{:?} {:?}", k.san.violations(), k2.san.violations());
}
