//! GUP-fast and the slow path on the synchronous Smp; the RACES.md “GUP-fast versus page-table freeing” interleaving
//! (GUP-fast vs munmap/free_pgtables) forced through the PmdRead hook.

use super::*;
use crate::check::sanitizer::ViolationKind;
use crate::config::{Arch, KernelConfig};
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::ops::{exit_mm, mmap_anon, munmap};
use crate::sync::{Arc, AtomicBool};

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn cfg() -> KernelConfig {
    KernelConfig { gup_oracle: true, ..KernelConfig::default() }
}

fn pte_pfn(k: &Kernel, mm: &MmStruct, va: u64) -> Pfn {
    let t = pgtable::lookup_table(k, mm, va, Level::Pte).expect("mapped");
    pgtable::read(k, t, Level::Pte, va).pfn()
}

#[test]
fn gup_fast_pins_the_mapped_pages_and_unpin_releases() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 8 * PS, true).unwrap();
    for i in 0..8 {
        k.write_user(&mm, BASE + i * PS, i + 1).unwrap();
    }
    let pages = gup_fast(&k, &mm, BASE, 8, Foll::PIN | Foll::WRITE);
    assert_eq!(pages.len(), 8);
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(*p, pte_pfn(&k, &mm, BASE + i as u64 * PS));
        assert_eq!(k.mem.page(*p).refcount(), 1 + GUP_PIN_COUNTING_BIAS, "mapping + one pin");
        assert_eq!(k.hw.ram.word(*p, 0).load(Ordering::SeqCst), i as u64 + 1);
    }
    unpin_user_pages(&k, &pages);
    for p in &pages {
        assert_eq!(k.mem.page(*p).refcount(), 1);
    }
    let got = gup_fast(&k, &mm, BASE + 2 * PS, 3, Foll::GET);
    assert_eq!(got.len(), 3);
    assert_eq!(k.mem.page(got[0]).refcount(), 2);
    put_user_pages(&k, &got);
    crate::check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn gup_fast_stops_at_unmapped_or_readonly_and_the_slow_path_faults_in() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    mmap_anon(&k, &mm, BASE + 4 * PS, 2 * PS, false).unwrap();
    k.write_user(&mm, BASE, 5).unwrap();
    // Page 1 not faulted in: the fast path stops after page 0.
    let fast = gup_fast(&k, &mm, BASE, 4, Foll::GET);
    assert_eq!(fast.len(), 1);
    put_user_pages(&k, &fast);
    // The fallback faults the rest in under mmap_lock.
    let pages = get_user_pages_fast(&k, &mm, BASE, 4, Foll::PIN | Foll::WRITE).unwrap();
    assert_eq!(pages.len(), 4);
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(*p, pte_pfn(&k, &mm, BASE + i as u64 * PS));
    }
    unpin_user_pages(&k, &pages);
    // Read-only VMA: a read pin works, a write pin is EFAULT.
    k.read_user(&mm, BASE + 4 * PS).unwrap();
    assert!(gup_fast(&k, &mm, BASE + 4 * PS, 1, Foll::GET | Foll::WRITE).is_empty(), "pte not writable");
    assert_eq!(
        get_user_pages_fast(&k, &mm, BASE + 4 * PS, 1, Foll::GET | Foll::WRITE),
        Err(GupError::Fault(BASE + 4 * PS))
    );
    let ro = get_user_pages_fast(&k, &mm, BASE + 4 * PS, 2, Foll::GET).unwrap();
    assert_eq!(ro.len(), 2);
    put_user_pages(&k, &ro);
    // No VMA at all.
    assert_eq!(get_user_pages(&k, &mm, BASE + 64 * PS, 1, Foll::GET), Err(GupError::Fault(BASE + 64 * PS)));
    crate::check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn try_grab_folio_fast_fails_on_a_free_folio() {
    let k = Kernel::new_sync(cfg(), 1);
    let p = k.alloc_pages(0, crate::page::alloc::PageKind::Anon).unwrap();
    k.folio_put(Folio(p));
    assert!(try_grab_folio_fast(&k, p, 1, Foll::GET).is_none(), "refcount 0: no speculative reference");
    let q = k.alloc_pages(0, crate::page::alloc::PageKind::Anon).unwrap();
    let f = try_grab_folio_fast(&k, q, 1, Foll::PIN).unwrap();
    assert_eq!(k.mem.folio(f).refcount(), 1 + GUP_PIN_COUNTING_BIAS);
    gup_put_folio(&k, f, 1, Foll::PIN);
    k.folio_put(f);
    assert_no_leaks(&k);
}

/// RACES.md “GUP-fast versus page-table freeing”: the walker (CPU1) read the PMD and stalls; CPU0 munmaps the range
/// (zap, free_pgtables) while CPU1's IRQs are off.  Returns the kernel
/// after the walker finished.
fn section1(arch: Arch, rcu_table_free: bool) -> Arc<Kernel> {
    let k = Kernel::new_sync(KernelConfig { arch, rcu_table_free, ..cfg() }, 2);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    run_on(&k, 1, &mm);
    for i in 0..4 {
        k.write_user(&mm, BASE + i * PS, i).unwrap();
    }
    let armed = Arc::new(AtomicBool::new(true));
    let (a, m) = (armed.clone(), mm.clone());
    k.inject.race.set_gup_fast(move |k, p, _va| {
        if p == GupFastPoint::PmdRead && a.swap(false, Ordering::SeqCst) {
            k.set_cpu(CpuId(0));
            munmap(k, &m, BASE, 4 * PS).unwrap();
            k.rcu_process_callbacks();
            // Reuse the freed frames: a new mapping elsewhere.
            mmap_anon(k, &m, BASE + (1 << 30), 4 * PS, true).unwrap();
            for i in 0..4 {
                k.write_user(&m, BASE + (1 << 30) + i * PS, 0xdead).unwrap();
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
fn section1_broadcast_flush_and_immediate_free_walks_a_freed_table() {
    let k = section1(Arch::Arm64, false);
    assert!(k.san.count_kind(ViolationKind::GupFastFreedTable) >= 1, "{:?}", k.san.violations());
}

#[test]
fn section1_broadcast_flush_with_rcu_table_free_is_safe() {
    let k = section1(Arch::Arm64, true);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// x86 without RCU table freeing: the munmap's flush IPI must wait for the
/// walker's CPU, which has IRQs off — the synchronous Smp reports the wait
/// it cannot perform, i.e. the free can never overtake the walker.
#[test]
#[should_panic(expected = "cannot acknowledge")]
fn section1_x86_ipi_flush_waits_for_the_walker() {
    section1(Arch::X86, false);
}

/// The oracle on its own: a page is accepted only if it was mapped at
/// (mm, va) at some instant between the grab tick and the end of the call.
#[test]
fn oracle_accepts_only_pages_mapped_during_the_window() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    k.write_user(&mm, BASE + PS, 2).unwrap();
    let (p0, p1) = (pte_pfn(&k, &mm, BASE), pte_pfn(&k, &mm, BASE + PS));
    let o = &k.gup_oracle;
    let cpu = CpuId(0);
    // Mapped now: accepted.
    o.call_start(cpu);
    let t = o.tick();
    o.call_end(&k.hw, &k.san, cpu, mm.id, &[(BASE, p0, t), (BASE + PS, p1, t)]);
    assert_eq!(k.san.count(), 0);
    // The right pfn at the wrong address: never mapped there.
    o.call_start(cpu);
    let t = o.tick();
    o.call_end(&k.hw, &k.san, cpu, mm.id, &[(BASE + PS, p0, t)]);
    assert_eq!(k.san.count_kind(ViolationKind::GupOracle), 1);
    // Grabbed before the unmap, checked after: accepted (the unmap is
    // kept for the call in flight).
    o.call_start(cpu);
    let t = o.tick();
    crate::ops::madvise_dontneed(&k, &mm, BASE, PS).unwrap();
    o.call_end(&k.hw, &k.san, cpu, mm.id, &[(BASE, p0, t)]);
    assert_eq!(k.san.count_kind(ViolationKind::GupOracle), 1);
    // Grabbed after the unmap: rejected.
    crate::ops::madvise_dontneed(&k, &mm, BASE + PS, PS).unwrap();
    o.call_start(cpu);
    let t = o.tick();
    o.call_end(&k.hw, &k.san, cpu, mm.id, &[(BASE + PS, p1, t)]);
    assert_eq!(k.san.count_kind(ViolationKind::GupOracle), 2);
    // A forked child's tables are linked (owned) and recorded too.
    k.write_user(&mm, BASE + 2 * PS, 3).unwrap();
    let child = crate::ops::dup_mmap(&k, &mm).unwrap();
    let c2 = pte_pfn(&k, &child, BASE + 2 * PS);
    o.call_start(cpu);
    let t = o.tick();
    o.call_end(&k.hw, &k.san, cpu, child.id, &[(BASE + 2 * PS, c2, t)]);
    assert_eq!(k.san.count_kind(ViolationKind::GupOracle), 2, "{:?}", k.san.violations());
    exit_mm(&k, &mm);
    run_on(&k, 0, &child);
    exit_mm(&k, &child);
    assert_no_leaks(&k);
}

/// The oracle's detach rule: a page grabbed after its PTE table was
/// detached from the PMD is accepted if the same table is put back with
/// the page in it (khugepaged aborting on the pin), and reported when the
/// slot gets anything else — whether that happens before or after the end
/// of the call.
#[test]
fn oracle_judges_a_detached_table_when_the_pmd_slot_is_written_again() {
    for (put_back_before_end, put_back) in [(false, true), (true, true), (false, false), (true, false)] {
        let k = Kernel::new_sync(cfg(), 1);
        let mm = k.mm_alloc();
        run_on(&k, 0, &mm);
        mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
        k.write_user(&mm, BASE, 1).unwrap();
        let p0 = pte_pfn(&k, &mm, BASE);
        let pmd_table = pgtable::lookup_table(&k, &mm, BASE, Level::Pmd).unwrap();
        let o = &k.gup_oracle;
        let cpu = CpuId(0);
        o.call_start(cpu);
        let old = pgtable::get_and_clear(&k, pmd_table, Level::Pmd, BASE);
        let t = o.tick();
        let other = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
        let new = if put_back { old } else { Pte::table(other) };
        if put_back_before_end {
            pgtable::write(&k, pmd_table, Level::Pmd, BASE, new);
        }
        o.call_end(&k.hw, &k.san, cpu, mm.id, &[(BASE, p0, t)]);
        if !put_back_before_end {
            assert_eq!(k.san.count(), 0, "undecided until the slot is written");
            pgtable::write(&k, pmd_table, Level::Pmd, BASE, new);
        }
        let want = usize::from(!put_back);
        assert_eq!(
            k.san.count_kind(ViolationKind::GupOracle),
            want,
            "put back {put_back}, before end {put_back_before_end}: {:?}",
            k.san.violations()
        );
        if !put_back {
            pgtable::write(&k, pmd_table, Level::Pmd, BASE, old);
        }
        crate::pgtable::free_table_frame(&k, other);
        exit_mm(&k, &mm);
        assert_no_leaks(&k);
    }
}

// ---- issue 13: pins for the cargo-mutants survivors of ops/gup.rs ---------

const HPAGE: u64 = 512 * PS;

/// `FOLL_*` flags combine with a bit-or (`FOLL_PIN | FOLL_WRITE`): or-ing a
/// flag that is already set keeps it.  `GupError` prints the errno name.
#[test]
fn foll_flags_or_and_gup_error_display() {
    assert_eq!(Foll::PIN | Foll::PIN, Foll::PIN);
    let f = Foll::PIN | Foll::WRITE | Foll::WRITE;
    assert!(f.has(Foll::PIN) && f.has(Foll::WRITE) && !f.has(Foll::GET));
    assert_eq!(GupError::Fault(0x4000_1000).to_string(), "EFAULT at 0x40001000");
    assert_eq!(GupError::NoMem.to_string(), "ENOMEM");
}

/// `gup_fast_fallback` (mm/gup.c): `start &= PAGE_MASK`, an `end` that
/// overflows (`check_add_overflow`) or lies past `TASK_SIZE_MAX` gets
/// nothing; `end == TASK_SIZE` is allowed.
#[test]
fn gup_fast_aligns_start_and_checks_the_range() {
    let k = Kernel::new_sync(cfg(), 1);
    let g = k.cfg.geometry;
    let top = g.task_size() - PS;
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    mmap_anon(&k, &mm, top, PS, true).unwrap();
    for i in 0..4 {
        k.write_user(&mm, BASE + i * PS, i).unwrap();
    }
    k.write_user(&mm, top, 9).unwrap();
    // An unaligned start is rounded down to its page.
    let got = gup_fast(&k, &mm, BASE + PS + 8, 2, Foll::GET);
    assert_eq!(got, vec![pte_pfn(&k, &mm, BASE + PS), pte_pfn(&k, &mm, BASE + 2 * PS)]);
    put_user_pages(&k, &got);
    let got = get_user_pages_fast(&k, &mm, BASE + PS + 8, 2, Foll::GET).unwrap();
    assert_eq!(got, vec![pte_pfn(&k, &mm, BASE + PS), pte_pfn(&k, &mm, BASE + 2 * PS)]);
    put_user_pages(&k, &got);
    // The last user page: end == TASK_SIZE is fine, one more page is not.
    let got = gup_fast(&k, &mm, top, 1, Foll::GET);
    assert_eq!(got, vec![pte_pfn(&k, &mm, top)]);
    put_user_pages(&k, &got);
    assert!(gup_fast(&k, &mm, top, 2, Foll::GET).is_empty(), "end > TASK_SIZE");
    // start + len wraps around: nothing (-EOVERFLOW in the kernel).
    assert!(gup_fast(&k, &mm, BASE, u64::MAX >> g.page_shift, Foll::GET).is_empty());
    assert!(gup_fast(&k, &mm, BASE, 0, Foll::GET).is_empty());
    assert_eq!(k.mem.page(pte_pfn(&k, &mm, BASE)).refcount(), 1, "nothing left grabbed");
    crate::check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// The walk goes on across a PMD, a PUD and a PGD boundary
/// (`gup_fast_pmd_range` / `_pud_range` / `_pgd_range` loop to `end`).
#[test]
fn gup_fast_walks_across_pmd_pud_and_pgd_boundaries() {
    let k = Kernel::new_sync(cfg(), 1);
    let g = k.cfg.geometry;
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    let pgd_span = g.pud_size() << g.pt_bits;
    for boundary in [BASE + HPAGE, BASE + g.pud_size(), pgd_span] {
        let start = boundary - 2 * PS;
        mmap_anon(&k, &mm, start, 4 * PS, true).unwrap();
        for i in 0..4 {
            k.write_user(&mm, start + i * PS, i).unwrap();
        }
        let got = gup_fast(&k, &mm, start, 4, Foll::PIN);
        let want: Vec<Pfn> = (0..4).map(|i| pte_pfn(&k, &mm, start + i * PS)).collect();
        assert_eq!(got, want, "across {boundary:#x}");
        unpin_user_pages(&k, &got);
    }
    crate::check::check_consistency(&k, &[&mm], &[]).unwrap();
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// `pgd_none` / `pud_none` / `pmd_none` stop the walk: nothing is grabbed
/// and no table is read below an empty entry.
#[test]
fn gup_fast_stops_at_empty_pgd_pud_and_pmd_entries() {
    let k = Kernel::new_sync(cfg(), 1);
    let g = k.cfg.geometry;
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    // No PGD entry at all.
    assert!(gup_fast(&k, &mm, BASE, 1, Foll::GET).is_empty());
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    // Same PGD entry, empty PUD entry; same PUD entry, empty PMD entry.
    for va in [BASE + 2 * g.pud_size(), BASE + 2 * HPAGE] {
        mmap_anon(&k, &mm, va, PS, true).unwrap();
        assert!(gup_fast(&k, &mm, va, 1, Foll::GET).is_empty(), "{va:#x}");
        assert_eq!(get_user_pages_fast(&k, &mm, va, 1, Foll::GET).map(|p| p.len()), Ok(1));
        put_user_pages(&k, &[pte_pfn(&k, &mm, va)]);
    }
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// A table reused after a free has a non-zero generation: the walker's
/// snapshot of it (`Walker::read`'s child generation) must be the frame's
/// real generation, or every later read would be reported as a freed table.
#[test]
fn gup_fast_on_reused_table_frames_reports_nothing() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    munmap(&k, &mm, BASE, 4 * PS).unwrap();
    k.rcu_process_callbacks();
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 2).unwrap();
    let pte_table = pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
    assert!(k.hw.ram.gen(pte_table) > 0, "the PTE table is a reused frame");
    let got = gup_fast(&k, &mm, BASE, 1, Foll::GET);
    assert_eq!(got, vec![pte_pfn(&k, &mm, BASE)]);
    put_user_pages(&k, &got);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// An entry read from a freed-and-reused table frame can be any bit
/// pattern (the RACES.md “GUP-fast versus page-table freeing” case): a
/// present entry whose pfn is past the last frame, or a PUD leaf (not
/// modelled), must end the walk rather than be followed.  The garbage is
/// written into live slots here so that nothing else changes.
#[test]
fn gup_fast_does_not_follow_garbage_entries() {
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    let data = pte_pfn(&k, &mm, BASE);
    let beyond = Pfn(k.mem.nr_frames() as u64);
    let bad = Pte::new(beyond, Pte::PRESENT | Pte::RW | Pte::USER | Pte::ACCESSED);
    let leaf = Pte::new(data, Pte::PRESENT | Pte::RW | Pte::USER | Pte::ACCESSED | Pte::HUGE);
    for (level, e) in [(Level::Pte, bad), (Level::Pmd, bad), (Level::Pud, bad), (Level::Pud, leaf)] {
        let table = pgtable::lookup_table(&k, &mm, BASE, level).unwrap();
        let old = pgtable::read(&k, table, level, BASE);
        pgtable::write(&k, table, level, BASE, e);
        assert!(gup_fast(&k, &mm, BASE, 1, Foll::GET).is_empty(), "{level:?} {e:?}");
        pgtable::write(&k, table, level, BASE, old);
    }
    assert_eq!(k.mem.page(data).refcount(), 1);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}

/// `follow_huge_pmd`: the slow path on a THP returns the subpage
/// `pmd_page + ((addr & ~HPAGE_PMD_MASK) >> PAGE_SHIFT)`, one reference on
/// the folio per page; a FOLL_WRITE lookup of a write-protected huge PMD
/// gets nothing (`can_follow_write_pmd`).
#[test]
fn get_user_pages_on_a_thp_returns_the_subpages() {
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * HPAGE, true).unwrap();
    for i in 0..16 {
        k.write_user(&mm, BASE + i * PS, i + 100).unwrap();
    }
    assert_eq!(crate::ops::khugepaged::collapse_huge_page(&k, &mm, BASE), crate::ops::khugepaged::ScanResult::Succeed);
    let pmd_table = pgtable::lookup_table(&k, &mm, BASE, Level::Pmd).unwrap();
    let pmd = pgtable::read(&k, pmd_table, Level::Pmd, BASE);
    assert!(pmd.huge());
    let head = pmd.pfn();
    let before = k.mem.folio(Folio(head)).refcount();
    let got = get_user_pages(&k, &mm, BASE + 5 * PS, 3, Foll::GET | Foll::WRITE).unwrap();
    assert_eq!(got, vec![head.add(5), head.add(6), head.add(7)]);
    assert_eq!(k.mem.folio(Folio(head)).refcount(), before + 3);
    assert_eq!(k.hw.ram.word(got[0], 0).load(Ordering::SeqCst), 105);
    put_user_pages(&k, &got);
    // The fast path on it, and a range whose end wraps around
    // (`check_add_overflow`: nothing, not a walk of a huge leaf to an end
    // below the start).
    let got = gup_fast(&k, &mm, BASE + 5 * PS, 2, Foll::GET);
    assert_eq!(got, vec![head.add(5), head.add(6)]);
    put_user_pages(&k, &got);
    assert!(gup_fast(&k, &mm, BASE, u64::MAX >> k.cfg.geometry.page_shift, Foll::GET).is_empty());
    assert_eq!(k.mem.folio(Folio(head)).refcount(), before);
    // Read-only huge PMD: a read lookup works, a write lookup does not.
    pgtable::write(&k, pmd_table, Level::Pmd, BASE, pmd.wrprotect());
    assert_eq!(follow_page_mask(&k, &mm, BASE + 9 * PS, Foll::GET), Some(head.add(9)));
    put_user_pages(&k, &[head.add(9)]);
    assert_eq!(follow_page_mask(&k, &mm, BASE + 9 * PS, Foll::GET | Foll::WRITE), None);
    pgtable::write(&k, pmd_table, Level::Pmd, BASE, pmd);
    assert_eq!(k.mem.folio(Folio(head)).refcount(), before);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}

/// `__get_user_pages` returns `i ? i : ret`, and `gup_fast_fallback`
/// returns `nr_pinned` when the slow path fails after a partial fast walk;
/// the slow path is asked only for the `nr_pages - nr_pinned` left.
#[test]
fn partial_results_are_returned_and_the_fallback_asks_for_the_rest() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, PS, true).unwrap();
    mmap_anon(&k, &mm, BASE + 4 * PS, 8 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    // Slow path: page 0 is there, page 1 has no VMA.
    let got = get_user_pages(&k, &mm, BASE, 2, Foll::GET).unwrap();
    assert_eq!(got, vec![pte_pfn(&k, &mm, BASE)]);
    put_user_pages(&k, &got);
    // Fast path gets page 0, the slow path fails on page 1.
    let got = get_user_pages_fast(&k, &mm, BASE, 2, Foll::GET).unwrap();
    assert_eq!(got, vec![pte_pfn(&k, &mm, BASE)]);
    put_user_pages(&k, &got);
    // Fast path gets 1 page of 2; the slow path faults in exactly one more.
    let va = BASE + 4 * PS;
    k.write_user(&mm, va, 2).unwrap();
    let got = get_user_pages_fast(&k, &mm, va, 2, Foll::GET).unwrap();
    assert_eq!(got, vec![pte_pfn(&k, &mm, va), pte_pfn(&k, &mm, va + PS)]);
    put_user_pages(&k, &got);
    let t = pgtable::lookup_table(&k, &mm, va, Level::Pte).unwrap();
    assert!(pgtable::read(&k, t, Level::Pte, va + 2 * PS).is_none(), "page 2 not faulted in");
    // The read fault of page 1 mapped the shared zero page: not in rss.
    assert_eq!(pte_pfn(&k, &mm, va + PS), crate::page::ZERO_PFN);
    assert_eq!(mm.rss.load(Ordering::SeqCst), 2);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// `check_vma_flags`: a read of a PROT_NONE VMA is -EFAULT, and nothing is
/// faulted in.
#[test]
fn get_user_pages_on_prot_none_is_efault() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    crate::ops::mprotect::mprotect(&k, &mm, BASE, 2 * PS, false, false).unwrap();
    assert_eq!(get_user_pages(&k, &mm, BASE, 1, Foll::GET), Err(GupError::Fault(BASE)));
    assert_eq!(get_user_pages_fast(&k, &mm, BASE + PS, 1, Foll::PIN), Err(GupError::Fault(BASE + PS)));
    assert_eq!(mm.rss.load(Ordering::SeqCst), 0);
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}

/// `faultin_page`: VM_FAULT_OOM becomes -ENOMEM (`vm_fault_to_errno`), and
/// `__get_user_pages` returns it when no page was got.  A write GUP must
/// allocate; a read one maps the shared zero page, which needs no memory.
#[test]
fn get_user_pages_out_of_memory_is_enomem() {
    let k = Kernel::new_sync(cfg(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 2 * PS, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    let mut hog = Vec::new();
    while let Some(p) = k.alloc_pages(0, crate::page::alloc::PageKind::Anon) {
        hog.push(p);
    }
    assert_eq!(get_user_pages(&k, &mm, BASE + PS, 1, Foll::GET | Foll::WRITE), Err(GupError::NoMem));
    let got = get_user_pages(&k, &mm, BASE + PS, 1, Foll::GET).unwrap();
    assert_eq!(got, vec![crate::page::ZERO_PFN], "a read fault maps the zero page, out of memory or not");
    put_user_pages(&k, &got);
    for p in hog {
        k.folio_put(Folio(p));
    }
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
}
