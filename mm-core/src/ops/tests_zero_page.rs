//! The shared zero page (issue 15; mm/memory.c, mm/gup.c, mm/mprotect.c,
//! mm/khugepaged.c, v6.12): a read fault on private anonymous memory maps
//! `my_zero_pfn` special and read-only, with no rmap, reference or rss; the
//! first write is a copy-on-write from it whose `ptep_clear_flush` shoots
//! the other CPUs running the mm down — the second TLB interrupt per
//! MADV_DONTNEED the host shows on `dontneed-sibling-spins.mmemu`.

use super::*;
use crate::check;
use crate::config::KernelConfig;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::ops::gup::{get_user_pages_fast, gup_fast, put_user_pages, unpin_user_pages, Foll};
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::page::{is_zero_pfn, ZERO_PFN};
use crate::stats::Stat;
use crate::sync::{Arc, Ordering};
use crate::tlb::switch_mm;
use crate::types::CpuId;

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn kernel(cpus: usize) -> Arc<Kernel> {
    Kernel::new_sync(KernelConfig { gup_oracle: true, ..KernelConfig::default() }, cpus)
}

fn pte_at(k: &Kernel, mm: &MmStruct, va: u64) -> Pte {
    let t = crate::pgtable::lookup_table(k, mm, va, Level::Pte).expect("a PTE table");
    crate::pgtable::read(k, t, Level::Pte, va)
}

fn rss(mm: &MmStruct) -> u64 {
    mm.rss.load(Ordering::SeqCst)
}

/// The zero page's struct page never changes: one reference, no mapcount,
/// reserved; its frame is never freed (generation 0) and still all zero.
fn assert_zero_page_untouched(k: &Kernel) {
    let p = k.mem.page(ZERO_PFN);
    assert_eq!(p.refcount(), 1, "the zero page's own reference only");
    assert_eq!(p.mapcount(), 0, "no rmap for the zero page");
    assert!(p.test(crate::page::flags::PG_RESERVED));
    assert_eq!(k.hw.ram.gen(ZERO_PFN), 0, "the zero page is never freed");
    let words = k.hw.ram.words_per_frame();
    assert!((0..words).all(|i| k.hw.ram.word(ZERO_PFN, i).load(Ordering::SeqCst) == 0), "nothing wrote the zero page");
}

#[test]
fn read_fault_maps_the_zero_pfn_read_only_with_no_rmap_rss_or_reference() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    for i in 0..4 {
        assert_eq!(k.read_user(&mm, BASE + i * PS + 8).unwrap(), 0);
        let pte = pte_at(&k, &mm, BASE + i * PS);
        assert!(pte.present() && pte.user() && !pte.write() && !pte.dirty(), "{pte:?}");
        assert!(pte.special(), "pte_mkspecial");
        assert_eq!(pte.pfn(), ZERO_PFN, "every address maps the same zero page (x86: no colouring)");
    }
    assert_eq!(rss(&mm), 0, "the zero page is not in MM_ANONPAGES");
    assert_eq!(k.alloc.in_use().anon, 0, "no page allocated for a read");
    assert_eq!(k.stats.get(Stat::CowFaults), 0);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    // A read-only VMA reads the zero page too.
    mmap_anon(&k, &mm, BASE + 8 * PS, PS, false).unwrap();
    assert_eq!(k.read_user(&mm, BASE + 8 * PS).unwrap(), 0);
    assert!(is_zero_pfn(pte_at(&k, &mm, BASE + 8 * PS).pfn()));
    // munmap of zero-page PTEs: cleared, nothing put, rss stays 0.
    munmap(&k, &mm, BASE, 2 * PS).unwrap();
    assert!(pte_at(&k, &mm, BASE).is_none() && pte_at(&k, &mm, BASE + PS).is_none());
    assert_eq!(rss(&mm), 0);
    assert_zero_page_untouched(&k);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_zero_page_untouched(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn write_after_read_is_a_cow_from_the_zero_page_one_page_one_flush() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    let flushes = k.stats.get(Stat::NrTlbLocalFlushOne);
    k.write_user(&mm, BASE + 8, 7).unwrap();
    let pte = pte_at(&k, &mm, BASE);
    assert!(!is_zero_pfn(pte.pfn()) && pte.write() && pte.dirty() && !pte.special(), "{pte:?}");
    assert_eq!(k.read_user(&mm, BASE + 8).unwrap(), 7);
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0, "the new page is zeroed");
    assert_eq!(k.alloc.in_use().anon, 1, "one page allocated");
    assert_eq!(rss(&mm), 1, "inc_mm_counter(MM_ANONPAGES)");
    assert_eq!(k.mem.page(pte.pfn()).mapcount(), 1);
    assert_eq!(k.mem.page(pte.pfn()).refcount(), 1);
    assert_eq!(k.stats.get(Stat::CowFaults), 1);
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), flushes + 1, "ptep_clear_flush: flush_tlb_page");
    // A write fault on a none PTE allocates at once: no COW, no flush.
    k.write_user(&mm, BASE + PS, 1).unwrap();
    assert_eq!(k.stats.get(Stat::CowFaults), 1);
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), flushes + 1);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// The host's `dontneed-sibling-spins` row: a same-mm sibling on CPU1 (not
/// lazy), CPU0 loops MADV_DONTNEED, read, write.  x86 v6.12: the zap's
/// flush interrupts CPU1 once, the read maps the zero page (no flush), the
/// write's COW from the zero page (`ptep_clear_flush`) interrupts it again.
#[test]
fn x86_dontneed_read_write_is_two_tlb_ipis_to_a_running_sibling_per_round() {
    let k = kernel(2);
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 0, "mapping the zero page flushes nothing");
    k.write_user(&mm, BASE, 1).unwrap();
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 1, "the COW from the zero page: one IPI to CPU1");
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 1);
    for round in 1..=5u64 {
        madvise_dontneed(&k, &mm, BASE, PS).unwrap();
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 2 * round, "the zap's flush");
        assert_eq!(k.read_user(&mm, BASE).unwrap(), 0, "zapped: reads the zero page");
        assert!(is_zero_pfn(pte_at(&k, &mm, BASE).pfn()));
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 2 * round, "the read fault flushes nothing");
        k.write_user(&mm, BASE, round).unwrap();
        assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 2 * round + 1, "the COW's ptep_clear_flush");
        assert_eq!(k.smp.call_interrupts(CpuId(1)), 2 * round + 1);
    }
    assert_eq!(k.stats.get(Stat::CowFaults), 6);
    assert_eq!(k.cpus[1].loaded_mm.load(Ordering::SeqCst), mm.id, "CPU1 still runs the mm");
    assert_eq!(rss(&mm), 1);
    k.set_cpu(CpuId(1));
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 5, "CPU1 sees the last write");
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn fork_copies_the_zero_pte_as_is_and_each_side_cows_on_its_own() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    k.write_user(&mm, BASE + PS, 3).unwrap();
    let child = dup_mmap(&k, &mm).unwrap();
    let c = pte_at(&k, &child, BASE);
    assert!(is_zero_pfn(c.pfn()) && c.special() && !c.write() && !c.young(), "copied as is, old: {c:?}");
    assert_eq!(rss(&child), 1, "only the real page counts");
    assert_eq!(rss(&mm), 1);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm, &child], &[]).unwrap();
    switch_mm(&k, &child);
    k.write_user(&child, BASE, 9).unwrap();
    assert!(!is_zero_pfn(pte_at(&k, &child, BASE).pfn()));
    assert!(is_zero_pfn(pte_at(&k, &mm, BASE).pfn()), "the parent keeps the zero page");
    assert_eq!(rss(&child), 2);
    exit_mm(&k, &child);
    switch_mm(&k, &mm);
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    assert_eq!(k.read_user(&mm, BASE + PS).unwrap(), 3);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn mprotect_read_write_leaves_the_zero_pte_read_only() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    k.write_user(&mm, BASE + PS, 1).unwrap();
    mprotect(&k, &mm, BASE, 2 * PS, true, false).unwrap();
    mprotect(&k, &mm, BASE, 2 * PS, true, true).unwrap();
    let z = pte_at(&k, &mm, BASE);
    assert!(is_zero_pfn(z.pfn()) && z.special() && !z.write(), "can_change_pte_writable is false: {z:?}");
    assert!(pte_at(&k, &mm, BASE + PS).write(), "the exclusive anon page becomes writable again");
    k.write_user(&mm, BASE, 4).unwrap();
    assert!(!is_zero_pfn(pte_at(&k, &mm, BASE).pfn()), "the write is a COW from the zero page");
    assert_eq!(k.stats.get(Stat::CowFaults), 1);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// `gup_fast_pte_range`: `pte_special` → the slow path, where
/// `follow_page_pte` takes the zero page: FOLL_GET with a reference,
/// FOLL_PIN without one; a FOLL_WRITE GUP COWs first.
#[test]
fn gup_fast_falls_back_to_the_slow_path_on_the_zero_page() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    assert!(gup_fast(&k, &mm, BASE, 1, Foll::GET).is_empty(), "pte_special: GUP-fast gives up");
    assert!(gup_fast(&k, &mm, BASE, 1, Foll::PIN).is_empty());
    let got = get_user_pages_fast(&k, &mm, BASE, 1, Foll::GET).unwrap();
    assert_eq!(got, vec![ZERO_PFN]);
    assert_eq!(k.mem.page(ZERO_PFN).refcount(), 2, "FOLL_GET takes a reference on the zero page");
    put_user_pages(&k, &got);
    let got = get_user_pages_fast(&k, &mm, BASE, 1, Foll::PIN).unwrap();
    assert_eq!(got, vec![ZERO_PFN]);
    assert_eq!(k.mem.page(ZERO_PFN).refcount(), 1, "no pin on the zero page");
    unpin_user_pages(&k, &got);
    assert_zero_page_untouched(&k);
    assert_eq!(rss(&mm), 0);
    let got = get_user_pages_fast(&k, &mm, BASE, 1, Foll::PIN | Foll::WRITE).unwrap();
    assert!(!is_zero_pfn(got[0]), "a write GUP COWs the zero page away");
    assert_eq!(got[0], pte_at(&k, &mm, BASE).pfn());
    assert_eq!(k.stats.get(Stat::CowFaults), 1);
    unpin_user_pages(&k, &got);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// `__collapse_huge_page_isolate`: a zero-page PTE counts like pte_none
/// (`none_or_zero`); the collapse zero-fills it, clears it and counts it in
/// rss (`__collapse_huge_page_copy_succeeded`).
#[test]
fn khugepaged_counts_zero_ptes_like_none_and_collapses_them() {
    let k = kernel(1);
    let g = k.cfg.geometry;
    let nr = g.hpage_pmd_nr();
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    let base = 0x4000_0000u64;
    assert!(base.is_multiple_of(g.pmd_size()));
    mmap_anon(&k, &mm, base, g.pmd_size(), true).unwrap();
    // One real page; every other PTE the zero page: nr - 1 = max_ptes_none.
    k.write_user(&mm, base, 42).unwrap();
    for i in 1..nr {
        assert_eq!(k.read_user(&mm, base + i * PS).unwrap(), 0);
    }
    assert_eq!(rss(&mm), 1);
    assert_eq!(khugepaged::collapse_huge_page(&k, &mm, base), khugepaged::ScanResult::Succeed);
    assert_eq!(rss(&mm), nr, "holes and zero-page PTEs count in MM_ANONPAGES");
    assert_eq!(k.read_user(&mm, base).unwrap(), 42);
    assert_eq!(k.read_user(&mm, base + (nr - 1) * PS).unwrap(), 0);
    assert_zero_page_untouched(&k);
    check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());

    // With every PTE the zero page there are nr > max_ptes_none of them.
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, base, g.pmd_size(), true).unwrap();
    for i in 0..nr {
        assert_eq!(k.read_user(&mm, base + i * PS).unwrap(), 0);
    }
    assert_eq!(khugepaged::collapse_huge_page(&k, &mm, base), khugepaged::ScanResult::ExceedNonePte);
    assert!(is_zero_pfn(pte_at(&k, &mm, base).pfn()), "the PTE table is put back as it was");
    assert_eq!(rss(&mm), 0);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}
