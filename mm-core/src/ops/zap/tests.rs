//! `free_pgd_range` (mm/memory.c, v6.12): which page tables go for a given
//! [addr, end) bounded by [floor, ceiling), on minimal single-CPU programs.

use super::*;
use crate::config::KernelConfig;
use crate::mm::MmStruct;
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::ops::{exit_mm, mmap_anon};
use crate::stats::Stat;
use crate::sync::Arc;

const BASE: u64 = 0x4000_0000; // 1 GiB: PUD-aligned, in the first PGD entry
const PS: u64 = 4096;
const M2: u64 = 2 << 20;

/// One anon VMA over `[start, start + len)` with a page written in each
/// of `touch`, so each has its PTE table; then its pages are zapped (the
/// tables stay) and `free_pgd_range(addr, end, floor, ceiling)` runs in the
/// same gather.  Returns the kernel, the mm and the tables freed.
fn free_after_zap(
    start: u64,
    len: u64,
    touch: &[u64],
    (addr, end, floor, ceiling): (u64, u64, u64, u64),
) -> (Arc<Kernel>, Arc<MmStruct>, u64) {
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, start, len, true).unwrap();
    for &va in touch {
        k.write_user(&mm, va, 1).unwrap();
    }
    let vma = mm.mmap_lock.read().iter().next().unwrap().clone();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    unmap_vmas(&mut tlb, [&vma], start, start + len);
    free_pgd_range(&mut tlb, addr, end, floor, ceiling);
    tlb.tlb_finish_mmu();
    k.rcu_barrier();
    let freed = k.stats.get(Stat::TablesFreed);
    (k, mm, freed)
}

fn has(k: &Kernel, mm: &MmStruct, va: u64, level: Level) -> bool {
    pgtable::lookup_table(k, mm, va, level).is_some()
}

fn finish(k: &Kernel, mm: &Arc<MmStruct>) {
    exit_mm(k, mm);
    assert_no_leaks(k);
    assert_eq!(k.san.count(), 0);
}

const THREE: [u64; 3] = [BASE, BASE + M2, BASE + 2 * M2];

#[test]
fn free_pgd_range_keeps_the_table_below_an_unaligned_floor() {
    // addr &= PMD_MASK falls below floor: addr += PMD_SIZE, the first PTE
    // table still maps the previous VMA's page.
    let (k, mm, freed) = free_after_zap(BASE, 3 * M2, &THREE, (BASE + PS, BASE + 3 * M2, BASE + PS, 0));
    assert_eq!(freed, 2);
    assert!(has(&k, &mm, BASE, Level::Pte), "shared with the VMA below the floor");
    assert!(!has(&k, &mm, BASE + M2, Level::Pte) && !has(&k, &mm, BASE + 2 * M2, Level::Pte));
    assert!(has(&k, &mm, BASE, Level::Pmd), "the PMD table starts below floor");
    finish(&k, &mm);
}

#[test]
fn free_pgd_range_at_an_aligned_floor_frees_every_table_above_it() {
    // addr == floor: no bump.  The PMD table (1 GiB at BASE) is inside
    // [floor, top) and goes too; the PUD table starts at 0 < floor, stays.
    let (k, mm, freed) = free_after_zap(BASE, 3 * M2, &THREE, (BASE, BASE + 3 * M2, BASE, 0));
    assert_eq!(freed, 4, "3 PTE tables + the PMD table");
    assert!(!has(&k, &mm, BASE, Level::Pmd));
    assert!(has(&k, &mm, BASE, Level::Pud));
    finish(&k, &mm);
}

#[test]
fn free_pgd_range_keeps_the_table_above_an_unaligned_ceiling() {
    // ceiling &= PMD_MASK, end - 1 > ceiling - 1: end -= PMD_SIZE; the
    // third PTE table also maps the next VMA's page.
    let len = 2 * M2 + PS;
    let (k, mm, freed) = free_after_zap(BASE, len, &THREE, (BASE, BASE + len, BASE, BASE + len + PS));
    assert_eq!(freed, 2);
    assert!(!has(&k, &mm, BASE, Level::Pte) && !has(&k, &mm, BASE + M2, Level::Pte));
    assert!(has(&k, &mm, BASE + 2 * M2, Level::Pte), "shared with the VMA above the ceiling");
    assert!(has(&k, &mm, BASE, Level::Pmd));
    finish(&k, &mm);
}

#[test]
fn free_pgd_range_up_to_an_aligned_ceiling_frees_the_last_table() {
    // end == ceiling == a PMD boundary: end is not pulled back.
    let (k, mm, freed) = free_after_zap(BASE, 2 * M2, &THREE[..2], (BASE, BASE + 2 * M2, BASE, BASE + 2 * M2));
    assert_eq!(freed, 2);
    assert!(!has(&k, &mm, BASE, Level::Pte) && !has(&k, &mm, BASE + M2, Level::Pte));
    assert!(has(&k, &mm, BASE, Level::Pmd), "the ceiling is inside the PMD table's range");
    finish(&k, &mm);
}

#[test]
fn free_pgd_range_frees_nothing_inside_one_shared_table() {
    // floor and ceiling inside the same PMD: after the bump addr > end - 1.
    let a = BASE + M2 + PS;
    let (k, mm, freed) = free_after_zap(a, PS, &[a], (a, a + PS, a, a + 2 * PS));
    assert_eq!(freed, 0);
    assert!(has(&k, &mm, a, Level::Pte));
    finish(&k, &mm);
}

#[test]
fn free_pgd_range_walks_every_pgd_entry() {
    // A range across a PGD boundary: both PUD tables, both PMD tables and
    // both PTE tables go.
    let k0 = Kernel::new_sync(KernelConfig::default(), 1);
    let p = 1u64 << k0.cfg.geometry.level_shift(Level::Pgd);
    drop(k0);
    let (k, mm, freed) = free_after_zap(p - M2, 2 * M2, &[p - M2, p], (p - M2, p + M2, 0, 0));
    assert_eq!(freed, 6);
    assert!(!has(&k, &mm, p - M2, Level::Pud) && !has(&k, &mm, p, Level::Pud));
    finish(&k, &mm);
}

/// `folio_pte_batch` as `zap_present_ptes` calls it (mm/internal.h, v6.12):
/// the writable, dirty and accessed bits do not split a batch; the folio's
/// end, a non-consecutive pfn and a different USER bit do.
#[test]
fn zap_batches_a_folio_run_whatever_its_write_and_dirty_bits() {
    use crate::hw::pte::Pte;
    use crate::page::alloc::PageKind;
    use crate::page::Folio;
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 16 * PS, true).unwrap();
    let vma = mm.mmap_lock.read().iter().next().unwrap().clone();
    let table = pgtable::alloc_table(&k, &mm, BASE, Level::Pte).unwrap();
    // An 8-page folio: pages 0-5 mapped with mixed RW / D / A bits, page
    // 6 without USER, page 7 at the wrong address (after a hole).
    let f = k.alloc_pages(3, PageKind::Anon).unwrap();
    k.mem.folio_ref_add(Folio(f), 7);
    k.mem.add_rmap_ptes(f, 8);
    let (p, rw, u, a, d) = (Pte::PRESENT, Pte::RW, Pte::USER, Pte::ACCESSED, Pte::DIRTY);
    let bits = [p | u | rw | a | d, p | u | rw, p | u | a, p | u, p | u | rw | d, p | u | a | d, p | rw | a];
    for (i, b) in bits.iter().enumerate() {
        pgtable::write(&k, table, Level::Pte, BASE + i as u64 * PS, Pte::new(f.add(i as u64), *b));
    }
    pgtable::write(&k, table, Level::Pte, BASE + 8 * PS, Pte::new(f.add(7), p | u | rw));
    mm.rss.fetch_add(8, Ordering::SeqCst);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    unmap_vmas(&mut tlb, [&vma], vma.start, vma.end);
    // Three fragments: pages 0-5 (page + count), page 6, page 7.
    let e = tlb.local_entries().to_vec();
    assert_eq!(e.len(), 4, "{e:?}");
    assert_eq!(crate::gather::encoded_page_ptr(e[0]), f);
    assert!(e[0].nr_pages_next());
    assert_eq!(crate::gather::encoded_nr_pages(e[1]), 6, "RW, dirty and accessed do not split the run");
    assert_eq!((crate::gather::encoded_page_ptr(e[2]), e[2].nr_pages_next()), (f.add(6), false), "USER differs");
    assert_eq!((crate::gather::encoded_page_ptr(e[3]), e[3].nr_pages_next()), (f.add(7), false));
    tlb.tlb_finish_mmu();
    assert_eq!(k.mem.page(f).refcount(), 0, "the folio was freed");
    assert_eq!(mm.rss.load(Ordering::SeqCst), 0);
    finish(&k, &mm);
}

#[test]
fn free_pgd_range_frees_the_pmd_table_below_a_far_ceiling() {
    // The next VMA is in the next PUD region: the PMD table's whole range
    // [BASE, BASE + 1 GiB) is inside [floor, ceiling) and goes.  The middle
    // PMD entry is none: nothing to free there.
    let gib = 1u64 << 30;
    let (k, mm, freed) =
        free_after_zap(BASE, 3 * M2, &[BASE, BASE + 2 * M2], (BASE, BASE + 3 * M2, BASE, BASE + gib + PS));
    assert_eq!(freed, 3, "2 PTE tables + the PMD table");
    assert!(!has(&k, &mm, BASE, Level::Pmd));
    assert!(has(&k, &mm, BASE, Level::Pud), "the PUD table starts at 0 < floor");
    finish(&k, &mm);
    // end == ceiling == the PMD table's end: it still goes.
    let last = BASE + gib - M2;
    let (k, mm, freed) = free_after_zap(last, M2, &[last], (last, BASE + gib, BASE, BASE + gib));
    assert_eq!(freed, 2, "the PTE table + the PMD table");
    assert!(!has(&k, &mm, last, Level::Pmd));
    finish(&k, &mm);
}

/// `free_pgtables` (mm/memory.c, v6.12) groups the following VMAs while
/// each starts within PMD_SIZE of the previous one's end ("gather nearby
/// vmas into one call down"); a VMA further away starts a new call.
#[test]
fn free_pgtables_groups_vmas_up_to_pmd_size_apart() {
    use crate::mm::{vm, Backing};
    let vma = |start: u64, end: u64| Vma { start, end, flags: vm::VM_READ, backing: Backing::Anon };
    let x = vma(BASE, BASE + PS);
    let y = vma(x.end + M2, x.end + M2 + PS); // exactly PMD_SIZE after x
    let z = vma(y.end + M2 + PS, y.end + M2 + 2 * PS); // one page further
    let (floor, ceiling) = (BASE - M2, 0);
    assert_eq!(
        free_pgtables_calls(&[x.clone(), y.clone(), z.clone()], floor, ceiling, M2),
        vec![
            FreePgdRangeCall { hugetlb: false, addr: x.start, end: y.end, floor, ceiling: z.start },
            FreePgdRangeCall { hugetlb: false, addr: z.start, end: z.end, floor, ceiling },
        ]
    );
}

/// `RaceHooks::set_zap` (`ZapPoint::PteTableDone`): the hook runs once per
/// `zap_pte_range` call — once per PTE table the walk finds — with the
/// address that call started at, after the table's PTEs are cleared and
/// its PTL dropped, with IRQs on and the gather's flush still pending.
/// A PMD entry that is none has no table: no call, no hook.
#[test]
fn the_zap_hook_fires_once_per_pte_table_zapped_with_its_range_start() {
    use crate::inject::ZapPoint;
    use crate::ops::madvise_dontneed;
    use std::sync::Mutex;
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 4 * M2, true).unwrap();
    // Tables 0, 1 and 3; table 2 is never touched, so its PMD entry is none.
    for va in [BASE + 8 * PS, BASE + 9 * PS, BASE + M2, BASE + 3 * M2 + 5 * PS] {
        k.write_user(&mm, va, 1).unwrap();
    }
    /// (point, range start, IRQs off, flush pending, PTEs cleared).
    type Seen = (ZapPoint, u64, bool, bool, bool);
    let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
    let (s, m) = (seen.clone(), mm.clone());
    assert!(k.inject.race.set_zap(move |k, p, va| {
        let table = pgtable::lookup_table(k, &m, va, Level::Pte).expect("the table is still there");
        // The PTL is free again (taking it here does not deadlock) and no
        // PTE of the call's range is left.
        let cleared = {
            let _ptl = pgtable::ptl(k, table);
            let table_end = (va & !(M2 - 1)) + M2;
            (va..table_end).step_by(PS as usize).all(|a| !pgtable::read(k, table, Level::Pte, a).present())
        };
        s.lock().unwrap().push((p, va, k.smp.irqs_disabled(), m.mm_tlb_flush_pending(), cleared));
    }));
    assert!(!k.inject.race.set_zap(|_, _, _| {}), "set once");
    madvise_dontneed(&k, &mm, BASE + 8 * PS, 4 * M2 - 8 * PS).unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let pt = ZapPoint::PteTableDone;
    assert_eq!(
        seen,
        vec![
            (pt, BASE + 8 * PS, false, true, true),
            (pt, BASE + M2, false, true, true),
            (pt, BASE + 3 * M2, false, true, true),
        ],
        "(point, range start, IRQs off, flush pending, PTE cleared) per zap_pte_range call"
    );
    exit_mm(&k, &mm);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

/// `zap_pte_range` steps over a PFN mapping's special PTEs one page at a
/// time, from `addr` up: it clears each one (nothing is gathered) and
/// touches no PTE before `addr`, here the anonymous page of the VMA just
/// below.
#[test]
fn zap_of_a_pfn_mapping_clears_each_special_pte_and_nothing_below_it() {
    use crate::hw::pte::Level as L;
    use crate::page::alloc::PageKind;
    use crate::page::Folio;
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, PS, true).unwrap();
    k.write_user(&mm, BASE, 5).unwrap();
    let frames: Vec<_> = (0..3).map(|_| k.alloc_pages(0, PageKind::Kernel).unwrap()).collect();
    crate::ops::mmap_pfnmap(&k, &mm, BASE + PS, &frames).unwrap();
    let table = pgtable::lookup_table(&k, &mm, BASE, L::Pte).unwrap();
    let present = |va: u64| pgtable::read(&k, table, L::Pte, va).present();
    assert!((0..4).all(|i| present(BASE + i * PS)));
    let vma = mm.mmap_lock.read().find(BASE + PS).cloned().unwrap();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    unmap_vmas(&mut tlb, [&vma], vma.start, vma.end);
    assert_eq!(tlb.nr_gathered(), 0, "a PFN mapping gathers no page");
    tlb.tlb_finish_mmu();
    assert!((1..4).all(|i| !present(BASE + i * PS)), "every special PTE cleared");
    assert!(present(BASE), "the page below the range stays mapped");
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 5);
    for f in frames {
        k.folio_put(Folio(f));
    }
    crate::ops::munmap(&k, &mm, BASE + PS, 3 * PS).unwrap();
    finish(&k, &mm);
}

/// `folio_pte_batch` stops at the zap's end: MADV_DONTNEED of the first
/// half of a PTE-mapped 8-page folio zaps 4 PTEs, one batch of 4, and the
/// other half stays mapped (no refault when read).
#[test]
fn a_folio_batch_stops_at_the_end_of_the_zap() {
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, M2, true).unwrap();
    let f = crate::ops::fault::do_anonymous_page_mthp(&k, &mm, BASE, 3).unwrap();
    for i in 0..8 {
        k.write_user(&mm, BASE + i * PS, 10 + i).unwrap();
    }
    let vma = mm.mmap_lock.read().iter().next().unwrap().clone();
    let table = pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_start_vma(&vma);
    assert_eq!(zap_pte_range(&mut tlb, &vma, table, BASE, BASE + 4 * PS, None), BASE + 4 * PS);
    let e = tlb.local_entries().to_vec();
    assert_eq!(e.len(), 2, "one fragment: {e:?}");
    assert_eq!(crate::gather::encoded_page_ptr(e[0]), f.pfn());
    assert_eq!(crate::gather::encoded_nr_pages(e[1]), 4);
    tlb.tlb_end_vma(&vma);
    tlb.tlb_finish_mmu();
    let faults = k.stats.get(Stat::PageFaults);
    for i in 4..8 {
        assert!(pgtable::read(&k, table, Level::Pte, BASE + i * PS).present(), "page {i} past the end");
        assert_eq!(k.read_user(&mm, BASE + i * PS).unwrap(), 10 + i);
    }
    assert_eq!(k.stats.get(Stat::PageFaults), faults, "no refault past the end");
    assert_eq!(k.mem.folio_mapcount(f), 4);
    finish(&k, &mm);
}

/// `folio_pte_batch` stops at the folio's last page and at a PTE that maps
/// another page than the next one: two physically adjacent 4-page folios
/// mapped back to back are two batches, and a folio whose pages 2 and 3
/// are mapped swapped is three.
#[test]
fn a_folio_batch_ends_at_the_folio_and_at_a_pfn_out_of_order() {
    use crate::hw::pte::Pte;
    use crate::page::alloc::PageKind;
    use crate::page::Folio;
    let k = Kernel::new_sync(KernelConfig::default(), 1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_anon(&k, &mm, BASE, 16 * PS, true).unwrap();
    let vma = mm.mmap_lock.read().iter().next().unwrap().clone();
    let table = pgtable::alloc_table(&k, &mm, BASE, Level::Pte).unwrap();
    let folio = |k: &Kernel| {
        let f = k.alloc_pages(2, PageKind::Anon).unwrap();
        k.mem.folio_ref_add(Folio(f), 3);
        k.mem.add_rmap_ptes(f, 4);
        f
    };
    let (a, b, c) = (folio(&k), folio(&k), folio(&k));
    assert_eq!(b, a.add(4), "the allocator hands out adjacent blocks on a fresh kernel");
    let flags = Pte::PRESENT | Pte::USER | Pte::RW;
    let pages = (0..4).map(|i| a.add(i)).chain((0..4).map(|i| b.add(i))).chain([c, c.add(1), c.add(3), c.add(2)]);
    for (i, p) in pages.enumerate() {
        pgtable::write(&k, table, Level::Pte, BASE + i as u64 * PS, Pte::new(p, flags));
    }
    mm.rss.fetch_add(12, Ordering::SeqCst);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    unmap_vmas(&mut tlb, [&vma], vma.start, vma.end);
    let frag: Vec<(Pfn, u64)> = {
        let mut e = tlb.local_entries().to_vec();
        if !tlb.active_is_local() {
            e.extend_from_slice(tlb.active_entries());
        }
        let mut v = Vec::new();
        let mut i = 0;
        while i < e.len() {
            let p = crate::gather::encoded_page_ptr(e[i]);
            if e[i].nr_pages_next() {
                v.push((p, crate::gather::encoded_nr_pages(e[i + 1])));
                i += 2;
            } else {
                v.push((p, 1));
                i += 1;
            }
        }
        v
    };
    assert_eq!(frag, [(a, 4), (b, 4), (c, 2), (c.add(3), 1), (c.add(2), 1)]);
    tlb.tlb_finish_mmu();
    assert_eq!(mm.rss.load(Ordering::SeqCst), 0);
    finish(&k, &mm);
}

/// A dirty shared file page forces the flush inside `zap_pte_range`,
/// before its PTL is dropped, with delayed rmaps (5df397dec7c4) and
/// without them (the reverted form flushes there too, its rmap went
/// earlier): when it returns, this CPU's TLB no longer maps the page and
/// the gather is empty.
#[test]
fn a_dirty_shared_file_page_forces_the_flush_before_the_ptl_is_dropped() {
    use crate::config::Fix;
    for delay in [true, false] {
        let mut cfg = KernelConfig::default();
        cfg.fixes.set(Fix::DelayRmap, delay);
        let k = Kernel::new_sync(cfg, 1);
        let mm = k.mm_alloc();
        run_on(&k, 0, &mm);
        let file = k.new_file(1);
        crate::ops::mmap_file(&k, &mm, BASE, PS, true, true, &file, 0).unwrap();
        k.write_user(&mm, BASE, 3).unwrap();
        assert!(k.hw.tlb(crate::types::CpuId(0)).lookup(mm.id, BASE).is_some());
        let vma = mm.mmap_lock.read().iter().next().unwrap().clone();
        let table = pgtable::lookup_table(&k, &mm, BASE, Level::Pte).unwrap();
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_start_vma(&vma);
        zap_pte_range(&mut tlb, &vma, table, BASE, BASE + PS, None);
        assert!(k.hw.tlb(crate::types::CpuId(0)).lookup(mm.id, BASE).is_none(), "delay_rmap {delay}: flushed");
        assert_eq!(tlb.nr_gathered(), 0, "delay_rmap {delay}: the batch went with the flush");
        tlb.tlb_end_vma(&vma);
        tlb.tlb_finish_mmu();
        crate::ops::munmap(&k, &mm, BASE, PS).unwrap();
        crate::ops::truncate::truncate_inode_pages(&k, &file, 0);
        finish(&k, &mm);
    }
}
