//! hugetlb PMD sharing on the synchronous reference Smp: share on fault and
//! fork, unshare on munmap / mprotect / exit / split, share counts, the
//! hardware walking shared tables with 2 MiB TLB entries, and the IPI story
//! of 1013af4f585f / 8ce720d5bd91 (issue 4 acceptance).

use super::*;
use crate::config::{Arch, Fixes, KernelConfig};
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::ops::{dup_mmap, exit_mm, mmap_anon, mprotect, munmap, truncate_inode_pages};
use crate::stats::Stat;
use crate::types::CpuId;

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// Start of the hugetlb area: PGD-aligned (512 GiB), so one PUD table.
const HBASE: u64 = 512 * GIB;
/// An anonymous neighbour in the same PGD region, keeping the PUD table
/// alive when the hugetlb area goes (so a munmap frees no table).
const NEIGHBOUR: u64 = HBASE + 256 * GIB;

fn kernel_with(cpus: usize, fixes: Fixes, arch: Arch) -> Arc<Kernel> {
    Kernel::new_sync(KernelConfig { fixes, arch, ..KernelConfig::default() }, cpus)
}

fn kernel(cpus: usize) -> Arc<Kernel> {
    kernel_with(cpus, Fixes::all(), Arch::X86)
}

/// A hugetlbfs file of `gib` GiB.
fn hfile(k: &Kernel, gib: u64) -> Arc<AddressSpace> {
    k.new_file(gib * GIB / k.cfg.geometry.page_size())
}

/// mmap `n` GiB of `file` at HBASE in `mm` and touch one huge page per GiB
/// (writing `tag + i` there), so the mm has a PMD table for every region.
fn map_and_touch(k: &Kernel, mm: &Arc<MmStruct>, file: &Arc<AddressSpace>, n: u64, tag: u64) {
    mmap_hugetlb(k, mm, HBASE, n * GIB, true, file, 0).unwrap();
    for i in 0..n {
        k.write_user(mm, HBASE + i * GIB + 8, tag + i).unwrap();
    }
}

fn pmd_table(k: &Kernel, mm: &MmStruct, va: u64) -> Option<Pfn> {
    huge_pte_offset(k, mm, va)
}

/// Check refcounts / mapcounts (shared entries count once), then tear
/// everything down: exit every mm (each on its own CPU slot 0), drop
/// the page cache, check leaks and the sanitizer.
fn teardown(k: &Kernel, mms: &[&Arc<MmStruct>], files: &[&Arc<AddressSpace>]) {
    crate::check::check_consistency(k, mms, files).unwrap();
    for mm in mms {
        run_on(k, 0, mm);
        exit_mm(k, mm);
    }
    for f in files {
        assert_eq!(truncate_inode_pages(k, f, 0), 0, "hugetlb pages still mapped after every exit");
    }
    assert_no_leaks(k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn mmap_hugetlb_checks_alignment() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let f = hfile(&k, 1);
    assert!(matches!(mmap_hugetlb(&k, &mm, HBASE + 4096, MIB2, true, &f, 0), Err(MmError::Inval(_))));
    assert!(matches!(mmap_hugetlb(&k, &mm, HBASE, MIB2 + 4096, true, &f, 0), Err(MmError::Inval(_))));
    assert!(matches!(mmap_hugetlb(&k, &mm, HBASE, MIB2, true, &f, 1), Err(MmError::Inval(_))));
    mmap_hugetlb(&k, &mm, HBASE, MIB2, true, &f, 0).unwrap();
    teardown(&k, &[&mm], &[&f]);
}

#[test]
fn fault_maps_a_2m_page_and_the_mmu_uses_a_huge_tlb_entry() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let f = hfile(&k, 1);
    run_on(&k, 0, &mm);
    mmap_hugetlb(&k, &mm, HBASE, 2 * MIB2, true, &f, 0).unwrap();
    k.write_user(&mm, HBASE + 8, 11).unwrap();
    // Another 4 KiB page of the same 2 MiB page: no new fault, TLB hit.
    let faults = k.stats.get(Stat::PageFaults);
    k.write_user(&mm, HBASE + 5 * 4096 + 16, 12).unwrap();
    assert_eq!(k.stats.get(Stat::PageFaults), faults, "one fault maps the whole 2 MiB");
    let tlb = k.hw.tlb(CpuId(0));
    assert!(tlb.leaf_entries().any(|e| e.huge && e.asid == mm.id), "a 2 MiB TLB entry was filled");
    drop(tlb);
    assert_eq!(k.alloc.in_use().hugetlb, 512);
    let folio = f.i_pages.lock()[&0];
    assert_eq!(k.mem.folio(folio).refcount(), 2, "page cache + one mapping");
    assert_eq!(k.mem.folio_mapcount(folio), 1);
    assert_eq!(k.read_user(&mm, HBASE + 5 * 4096 + 16).unwrap(), 12);
    teardown(&k, &[&mm], &[&f]);
}

#[test]
fn second_mm_shares_the_pmd_table_on_fault() {
    let k = kernel(2);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    let b = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 100);
    let tables_before = k.alloc.in_use().page_table;
    run_on(&k, 1, &b);
    mmap_hugetlb(&k, &b, HBASE, GIB, true, &f, 0).unwrap();
    // b's first access faults only to find a's table: it then reads a's data.
    assert_eq!(k.read_user(&b, HBASE + 8).unwrap(), 100);
    let ta = pmd_table(&k, &a, HBASE).unwrap();
    assert_eq!(pmd_table(&k, &b, HBASE), Some(ta), "b's PUD points at a's PMD table");
    assert_eq!(ptdesc_pmd_pts_count(&k, ta), 1);
    // b needed a PGD's PUD table of its own, but no PMD table.
    assert_eq!(k.alloc.in_use().page_table, tables_before + 1);
    // Writes through either mm land in the same 2 MiB page; a page faulted
    // by b appears in a without a fault.
    k.write_user(&b, HBASE + 3 * MIB2 + 8, 7).unwrap();
    run_on(&k, 0, &a);
    let faults = k.stats.get(Stat::PageFaults);
    assert_eq!(k.read_user(&a, HBASE + 3 * MIB2 + 8).unwrap(), 7);
    assert_eq!(k.stats.get(Stat::PageFaults), faults, "the entry b installed is in a's table");
    // Entries are counted once: one mapping each.
    let folio = f.i_pages.lock()[&3];
    assert_eq!(k.mem.folio_mapcount(folio), 1);
    teardown(&k, &[&a, &b], &[&f]);
}

#[test]
fn no_sharing_without_a_whole_pud_region_or_with_other_flags() {
    let k = kernel(1);
    let f = hfile(&k, 2);
    let a = k.mm_alloc();
    let b = k.mm_alloc();
    let c = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 0);
    // b maps only half of the region: cannot share.
    run_on(&k, 0, &b);
    mmap_hugetlb(&k, &b, HBASE, GIB / 2, true, &f, 0).unwrap();
    assert_eq!(k.read_user(&b, HBASE + 8).unwrap(), 0);
    assert_ne!(pmd_table(&k, &b, HBASE), pmd_table(&k, &a, HBASE));
    // c maps the whole region read-only: flags differ, no sharing.
    run_on(&k, 0, &c);
    mmap_hugetlb(&k, &c, HBASE, GIB, false, &f, 0).unwrap();
    assert_eq!(k.read_user(&c, HBASE + 8).unwrap(), 0);
    assert_ne!(pmd_table(&k, &c, HBASE), pmd_table(&k, &a, HBASE));
    assert!(k.write_user(&c, HBASE + 8, 1).is_err(), "read-only mapping");
    let ta = pmd_table(&k, &a, HBASE).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, ta), 0);
    // A different file offset at the same address: a different table.
    let d = k.mm_alloc();
    run_on(&k, 0, &d);
    mmap_hugetlb(&k, &d, HBASE, GIB, true, &f, GIB / 4096).unwrap();
    k.read_user(&d, HBASE + 8).unwrap();
    assert_ne!(pmd_table(&k, &d, HBASE), Some(ta));
    teardown(&k, &[&a, &b, &c, &d], &[&f]);
}

/// `dup_mmap`, then the child's first fault in every PUD region where the
/// parent maps something (at the parent's first mapped huge page there):
/// `vma_needs_copy` is false for a shared hugetlb VMA, so this is where the
/// child becomes a sharer, not at fork.
fn fork_and_fault(k: &Kernel, parent: &Arc<MmStruct>) -> Arc<MmStruct> {
    let child = dup_mmap(k, parent).unwrap();
    let vmas: Vec<Vma> = child.mmap_lock.read().iter().filter(|v| v.is_hugetlb()).cloned().collect();
    let (pud, hs) = (k.cfg.geometry.pud_size(), k.cfg.geometry.pmd_size());
    for vma in &vmas {
        let mut region = vma.start & !(pud - 1);
        while region < vma.end {
            let (lo, hi) = (region.max(vma.start), (region + pud).min(vma.end));
            if let Some(t) = huge_pte_offset(k, parent, lo) {
                let mut a = lo;
                while a < hi && !pgtable::read(k, t, Level::Pmd, a).present() {
                    a += hs;
                }
                if a < hi {
                    let _mmap_read = child.mmap_lock.read();
                    hugetlb_fault(k, &child, vma, a, false).unwrap();
                }
            }
            region += pud;
        }
    }
    child
}

#[test]
fn fork_copies_nothing_and_the_child_shares_on_its_first_fault() {
    let k = kernel(2);
    let f = hfile(&k, 3);
    let parent = k.mm_alloc();
    run_on(&k, 0, &parent);
    map_and_touch(&k, &parent, &f, 3, 10);
    let tables = k.alloc.in_use().page_table;
    let child = dup_mmap(&k, &parent).unwrap();
    // vma_needs_copy: shared, no anon_vma — nothing copied, nothing shared.
    for i in 0..3 {
        let t = pmd_table(&k, &parent, HBASE + i * GIB).unwrap();
        assert_eq!(pmd_table(&k, &child, HBASE + i * GIB), None);
        assert_eq!(ptdesc_pmd_pts_count(&k, t), 0);
    }
    assert_eq!(k.alloc.in_use().page_table, tables + 1, "the child got its PGD only");
    run_on(&k, 1, &child);
    let faults = k.stats.get(Stat::PageFaults);
    for i in 0..3 {
        assert_eq!(k.read_user(&child, HBASE + i * GIB + 8).unwrap(), 10 + i);
    }
    assert_eq!(k.stats.get(Stat::PageFaults), faults + 3, "one fault per PUD region");
    for i in 0..3 {
        let t = pmd_table(&k, &parent, HBASE + i * GIB).unwrap();
        assert_eq!(pmd_table(&k, &child, HBASE + i * GIB), Some(t), "huge_pmd_share on the first fault");
        assert_eq!(ptdesc_pmd_pts_count(&k, t), 1);
    }
    // ... then a PUD table, no PMD tables.
    assert_eq!(k.alloc.in_use().page_table, tables + 2);
    // A second child that touches one region: a third sharer of that table only.
    run_on(&k, 0, &parent);
    let child2 = dup_mmap(&k, &parent).unwrap();
    run_on(&k, 1, &child2);
    assert_eq!(k.read_user(&child2, HBASE + GIB + 8).unwrap(), 11);
    assert_eq!(ptdesc_pmd_pts_count(&k, pmd_table(&k, &parent, HBASE).unwrap()), 1);
    assert_eq!(ptdesc_pmd_pts_count(&k, pmd_table(&k, &parent, HBASE + GIB).unwrap()), 2);
    teardown(&k, &[&child, &child2, &parent], &[&f]);
}

#[test]
fn munmap_unshares_and_the_last_owner_frees_the_table() {
    let k = kernel(2);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 5);
    let b = fork_and_fault(&k, &a);
    let t = pmd_table(&k, &a, HBASE).unwrap();
    run_on(&k, 1, &b);
    assert_eq!(k.read_user(&b, HBASE + 8).unwrap(), 5);
    let b_tables = b.nr_ptes.load(Ordering::SeqCst);
    munmap(&k, &b, HBASE, GIB).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, t), 0, "a owns the table alone now");
    assert_eq!(pmd_table(&k, &b, HBASE), None);
    assert!(k.read_user(&b, HBASE + 8).is_err(), "b's mapping is gone (its TLB was flushed)");
    assert_eq!(b.nr_ptes.load(Ordering::SeqCst), b_tables - 2, "mm_dec_nr_pmds, and the PUD table went");
    // a is untouched and still maps the page through the same table.
    run_on(&k, 0, &a);
    assert_eq!(k.read_user(&a, HBASE + 8).unwrap(), 5);
    assert_eq!(pmd_table(&k, &a, HBASE), Some(t));
    let folio = f.i_pages.lock()[&0];
    assert_eq!(k.mem.folio(folio).refcount(), 2, "one mapping (the shared entry) + page cache");
    // a's munmap zaps the entries and frees the table.
    let freed = k.stats.get(Stat::TablesFreed);
    munmap(&k, &a, HBASE, GIB).unwrap();
    k.rcu_barrier();
    assert!(k.stats.get(Stat::TablesFreed) > freed);
    assert_eq!(k.mem.folio(folio).refcount(), 1, "only the page cache");
    assert_eq!(k.mem.folio_mapcount(folio), 0);
    teardown(&k, &[&a, &b], &[&f]);
}

#[test]
fn mprotect_unshares_and_other_sharers_keep_their_protection() {
    let k = kernel(2);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 1);
    let b = fork_and_fault(&k, &a);
    let t = pmd_table(&k, &a, HBASE).unwrap();
    run_on(&k, 1, &b);
    k.write_user(&b, HBASE + 8, 2).unwrap(); // b caches a writable 2 MiB entry
    mprotect(&k, &b, HBASE, GIB, true, false).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, t), 0, "mprotect unshared b");
    assert!(k.write_user(&b, HBASE + 8, 3).is_err(), "b's writable TLB entry was flushed");
    assert_eq!(k.read_user(&b, HBASE + 8).unwrap(), 2, "b refaults read-only into a table of its own");
    let tb = pmd_table(&k, &b, HBASE).unwrap();
    assert_ne!(tb, t);
    assert!(!pgtable::read(&k, tb, Level::Pmd, HBASE).write());
    // a keeps its writable mapping through its (now exclusive) table.
    run_on(&k, 0, &a);
    k.write_user(&a, HBASE + 8, 4).unwrap();
    assert!(pgtable::read(&k, t, Level::Pmd, HBASE).write());
    // Back to read-write: b's flags match a's again, new regions share again.
    run_on(&k, 1, &b);
    mprotect(&k, &b, HBASE, GIB, true, true).unwrap();
    k.write_user(&b, HBASE + 8, 5).unwrap();
    run_on(&k, 0, &a);
    assert_eq!(k.read_user(&a, HBASE + 8).unwrap(), 5);
    // A partial mprotect must be huge-page aligned.
    assert!(matches!(mprotect(&k, &a, HBASE, 4096, true, false), Err(MmError::Inval(_))));
    teardown(&k, &[&a, &b], &[&f]);
}

#[test]
fn exit_unshares_and_the_last_exit_frees_everything() {
    let k = kernel(3);
    let f = hfile(&k, 2);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 2, 0);
    let b = fork_and_fault(&k, &a);
    let c = fork_and_fault(&k, &a);
    let t0 = pmd_table(&k, &a, HBASE).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, t0), 2);
    // The original owner exits first: the children keep the tables.
    run_on(&k, 0, &a);
    exit_mm(&k, &a);
    assert_eq!(ptdesc_pmd_pts_count(&k, t0), 1);
    run_on(&k, 1, &b);
    assert_eq!(k.read_user(&b, HBASE + GIB + 8).unwrap(), 1);
    exit_mm(&k, &b);
    assert_eq!(ptdesc_pmd_pts_count(&k, t0), 0);
    run_on(&k, 2, &c);
    assert_eq!(k.read_user(&c, HBASE + 8).unwrap(), 0);
    exit_mm(&k, &c);
    assert_eq!(truncate_inode_pages(&k, &f, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn split_at_a_non_pud_boundary_unshares_the_region() {
    let k = kernel(2);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 9);
    let b = fork_and_fault(&k, &a);
    let t = pmd_table(&k, &a, HBASE).unwrap();
    run_on(&k, 1, &b);
    // Unmap one 2 MiB page in the middle of b's VMA: hugetlb_split unshares.
    munmap(&k, &b, HBASE + 4 * MIB2, MIB2).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, t), 0);
    assert_eq!(b.mmap_lock.read().len(), 2);
    // The pieces no longer cover the PUD region: b refaults into a private table.
    assert_eq!(k.read_user(&b, HBASE + 8).unwrap(), 9);
    assert_ne!(pmd_table(&k, &b, HBASE), Some(t));
    assert!(k.read_user(&b, HBASE + 4 * MIB2).is_err());
    // a still maps that page.
    run_on(&k, 0, &a);
    k.read_user(&a, HBASE + 4 * MIB2).unwrap();
    // A boundary inside a huge page is refused.
    assert!(matches!(munmap(&k, &a, HBASE + 4096, 4096), Err(MmError::Inval(_))));
    teardown(&k, &[&a, &b], &[&f]);
}

// ---- the IPI story (issue 4 acceptance) --------------------------------------

const N: u64 = 4;

/// Counters around one munmap of the hugetlb area by `victim`.
struct Measured {
    syncs: u64,
    /// tlb_gen bumps of the unsharer's mm: one per flush_tlb_mm_range.
    flushes_of_mm: u64,
    cal_cpu1: u64,
}

/// `sharers` mms share N PMD tables (the first faulted them, the others
/// were forked from it); the last one munmaps the whole area on CPU0 while
/// CPU1..3 run the others.  Returns the counters of that munmap.
fn unshare_n_tables(fixes: Fixes, sharers: usize) -> Measured {
    let k = kernel_with(4, fixes, Arch::X86);
    let f = hfile(&k, N);
    let owner = k.mm_alloc();
    run_on(&k, 1, &owner);
    map_and_touch(&k, &owner, &f, N, 0);
    mmap_anon(&k, &owner, NEIGHBOUR, 4096, true).unwrap();
    let mut mms = vec![owner.clone()];
    for _ in 1..sharers {
        mms.push(fork_and_fault(&k, &owner));
    }
    for (i, mm) in mms.iter().enumerate().take(sharers - 1).skip(1) {
        run_on(&k, 1 + i as u32, mm);
        k.read_user(mm, HBASE + 8).unwrap();
    }
    let victim = mms.last().unwrap().clone();
    run_on(&k, 0, &victim);
    for i in 0..N {
        assert_eq!(k.read_user(&victim, HBASE + i * GIB + 8).unwrap(), i);
    }
    let t = pmd_table(&k, &owner, HBASE).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, t), sharers as i32 - 1);
    let syncs = k.stats.get(Stat::TlbRemoveTableSyncOne);
    let gen = victim.tlb_gen.load(Ordering::SeqCst);
    let cal = k.smp.call_interrupts(CpuId(1));
    munmap(&k, &victim, HBASE, N * GIB).unwrap();
    let m = Measured {
        syncs: k.stats.get(Stat::TlbRemoveTableSyncOne) - syncs,
        flushes_of_mm: victim.tlb_gen.load(Ordering::SeqCst) - gen,
        cal_cpu1: k.smp.call_interrupts(CpuId(1)) - cal,
    };
    assert_eq!(ptdesc_pmd_pts_count(&k, t), sharers as i32 - 2);
    assert!(k.read_user(&victim, HBASE + 8).is_err());
    let refs: Vec<&Arc<MmStruct>> = mms.iter().collect();
    teardown(&k, &refs, &[&f]);
    m
}

#[test]
fn last_sharer_unsharing_n_tables_syncs_once_batched_and_n_times_not() {
    let on = unshare_n_tables(Fixes::all(), 2);
    assert_eq!(on.syncs, 1, "8ce720d5bd91: one tlb_remove_table_sync_one per gather");
    assert_eq!(on.flushes_of_mm, 1);
    assert_eq!(on.cal_cpu1, 1, "the one sync reached CPU1 (not running the unsharer's mm)");
    let off = unshare_n_tables(Fixes::all().revert(Fix::HugetlbUnshareBatched), 2);
    assert_eq!(off.syncs, N, "1013af4f585f: one broadcast per unshared table");
    assert_eq!(off.flushes_of_mm, 1);
    assert_eq!(off.cal_cpu1, N);
    let none = unshare_n_tables(Fixes::all().revert(Fix::HugetlbUnshareSync), 2);
    assert_eq!(none.syncs, 0, "before 1013af4f585f: no IPI at all");
    assert_eq!(none.flushes_of_mm, 1, "only the unsharer's own TLB flush");
    assert_eq!(none.cal_cpu1, 0);
}

#[test]
fn unsharing_while_another_sharer_remains_sends_no_sync_but_flushes_once() {
    let on = unshare_n_tables(Fixes::all(), 3);
    assert_eq!(on.syncs, 0, "not the last sharer: the table stays a hugetlb table");
    assert_eq!(on.flushes_of_mm, 1, "exactly one TLB flush of the unsharer's mm");
    assert_eq!(on.cal_cpu1, 0);
    let off = unshare_n_tables(Fixes::all().revert(Fix::HugetlbUnshareBatched), 3);
    assert_eq!(off.syncs, N, "1013af4f585f broadcasts even when not the last sharer");
    assert_eq!(off.flushes_of_mm, 1);
}

#[test]
fn three_sharers_only_the_final_unshare_broadcasts() {
    // P3 unshares first (2 -> 1, no sync), then P2 (1 -> 0: one sync that
    // also drains walkers that came in through P3's old PUD).
    let k = kernel(3);
    let f = hfile(&k, 2);
    let p1 = k.mm_alloc();
    run_on(&k, 0, &p1);
    map_and_touch(&k, &p1, &f, 2, 0);
    let p2 = fork_and_fault(&k, &p1);
    let p3 = fork_and_fault(&k, &p1);
    let s0 = k.stats.get(Stat::TlbRemoveTableSyncOne);
    run_on(&k, 2, &p3);
    exit_mm(&k, &p3);
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0);
    run_on(&k, 1, &p2);
    exit_mm(&k, &p2);
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0 + 1, "one sync for two tables");
    assert_eq!(ptdesc_pmd_pts_count(&k, pmd_table(&k, &p1, HBASE).unwrap()), 0);
    teardown(&k, &[&p1], &[&f]);
}

#[test]
fn mprotect_and_split_unshare_through_one_gather() {
    // mprotect of N shared regions as the last sharer: one sync.
    let k = kernel(2);
    let f = hfile(&k, N);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, N, 0);
    let b = fork_and_fault(&k, &a);
    run_on(&k, 1, &b);
    let s0 = k.stats.get(Stat::TlbRemoveTableSyncOne);
    mprotect(&k, &b, HBASE, N * GIB, true, false).unwrap();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0 + 1);
    teardown(&k, &[&a, &b], &[&f]);
    // The same with batching reverted: N.
    let k = kernel_with(2, Fixes::all().revert(Fix::HugetlbUnshareBatched), Arch::X86);
    let f = hfile(&k, N);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, N, 0);
    let b = fork_and_fault(&k, &a);
    run_on(&k, 1, &b);
    let s0 = k.stats.get(Stat::TlbRemoveTableSyncOne);
    mprotect(&k, &b, HBASE, N * GIB, true, false).unwrap();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0 + N);
    // Split (munmap of one 2 MiB page inside a shared-then-exclusive
    // region): the table is exclusive now, nothing to unshare, no sync.
    run_on(&k, 0, &a);
    let s1 = k.stats.get(Stat::TlbRemoveTableSyncOne);
    munmap(&k, &a, HBASE + MIB2, MIB2).unwrap();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s1);
    teardown(&k, &[&a, &b], &[&f]);
}

#[test]
fn arm64_profile_unshares_with_a_broadcast_flush() {
    let k = kernel_with(2, Fixes::all(), Arch::Arm64);
    let f = hfile(&k, 2);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 2, 3);
    let b = fork_and_fault(&k, &a);
    run_on(&k, 1, &b);
    assert_eq!(k.read_user(&b, HBASE + GIB + 8).unwrap(), 4);
    let tlbi = k.stats.get(Stat::Arm64BroadcastTlbi);
    let s0 = k.stats.get(Stat::TlbRemoveTableSyncOne);
    munmap(&k, &b, HBASE, 2 * GIB).unwrap();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0 + 1);
    assert!(k.stats.get(Stat::Arm64BroadcastTlbi) > tlbi);
    assert!(k.read_user(&b, HBASE + 8).is_err());
    teardown(&k, &[&a, &b], &[&f]);
}

#[test]
fn gather_ends_with_fully_unshared_tables_clear() {
    // The finish-time check is tlb_finish_mmu's VM_WARN_ON_ONCE (with
    // KernelConfig::debug_vm, the default); every unsharing path above ran
    // through it with no violation.  Here: a direct unshare without
    // huge_pmd_unshare_flush trips it (a debug-vm-warning violation; it
    // used to be a debug-build panic).
    let k = kernel(1);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 0);
    let b = fork_and_fault(&k, &a);
    let t = pmd_table(&k, &b, HBASE).unwrap();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &b);
    let i_mmap = f.i_mmap.write();
    let ptl = pgtable::ptl(&k, t);
    assert!(huge_pmd_unshare(&mut tlb, HBASE, t, &i_mmap));
    drop(ptl);
    drop(i_mmap);
    assert_eq!(k.san.count(), 0);
    tlb.tlb_finish_mmu();
    let check = "VM_WARN_ON_ONCE(tlb->fully_unshared_tables) in tlb_finish_mmu";
    assert_eq!(
        k.san.count_kind(ViolationKind::DebugVmWarning(check)),
        1,
        "tlb_finish_mmu must catch the missing huge_pmd_unshare_flush: {:?}",
        k.san.violations()
    );
    assert_eq!(k.san.count(), 1, "{:?}", k.san.violations());
    assert_eq!(k.san.violations()[0].mm, b.id);
}

// ---- GUP-fast through shared tables (docs/RACES.md, “Unshare versus GUP-fast”) -------------------

use crate::check::sanitizer::ViolationKind;
use crate::inject::GupFastPoint;
use crate::ops::gup::{gup_fast, put_user_pages, Foll};
use crate::sync::{AtomicBool, AtomicU64};

fn kernel_oracle(cpus: usize, fixes: Fixes, arch: Arch) -> Arc<Kernel> {
    Kernel::new_sync(KernelConfig { fixes, arch, gup_oracle: true, ..KernelConfig::default() }, cpus)
}

#[test]
fn gup_fast_through_a_shared_table_sees_every_sharers_mappings() {
    // The oracle must know a shared table is reachable from both mms: a
    // page the *other* sharer faulted in is legitimately mapped here too.
    let k = kernel_oracle(2, Fixes::all(), Arch::X86);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 0);
    let b = fork_and_fault(&k, &a);
    run_on(&k, 1, &b);
    k.write_user(&b, HBASE + 7 * MIB2, 70).unwrap(); // installed by b, seen by a
    run_on(&k, 0, &a);
    k.write_user(&a, HBASE + 9 * MIB2, 90).unwrap(); // installed by a, seen by b
    let got_a = gup_fast(&k, &a, HBASE + 7 * MIB2, 4, Foll::GET | Foll::WRITE);
    assert_eq!(got_a.len(), 4);
    run_on(&k, 1, &b);
    let got_b = gup_fast(&k, &b, HBASE + 9 * MIB2, 2, Foll::GET);
    assert_eq!(got_b.len(), 2);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    put_user_pages(&k, &got_a);
    put_user_pages(&k, &got_b);
    // After b unshares, b's GUP-fast finds nothing there any more.
    munmap(&k, &b, HBASE, GIB).unwrap();
    mmap_hugetlb(&k, &b, HBASE, GIB, true, &f, 0).unwrap();
    run_on(&k, 0, &a);
    let got = gup_fast(&k, &a, HBASE + 9 * MIB2, 1, Foll::GET);
    assert_eq!(got, vec![f.i_pages.lock()[&9].pfn()]);
    put_user_pages(&k, &got);
    teardown(&k, &[&a, &b], &[&f]);
}

/// The RACES.md “Unshare versus GUP-fast” interleaving, deterministically: P2's walker (CPU0) has read
/// P2's PUD entry (→ shared table S) and stalls there with IRQs off; P2's
/// munmap (CPU1) unshares; P1 (CPU2) splits its VMA, unmaps the first 2 MiB
/// and faults an anonymous page Q there, which hangs a PTE table of P1 into
/// S.  Then the walker continues into S.  Returns the walker's pages.
fn unshare_race(k: &Arc<Kernel>) -> (Vec<Pfn>, Arc<MmStruct>, Arc<MmStruct>, Arc<AddressSpace>) {
    let f = hfile(k, 1);
    let p1 = k.mm_alloc();
    run_on(k, 2, &p1);
    map_and_touch(k, &p1, &f, 1, 0x11);
    let p2 = fork_and_fault(k, &p1);
    run_on(k, 0, &p2);
    assert_eq!(k.read_user(&p2, HBASE + 8).unwrap(), 0x11);
    let fired = Arc::new(AtomicBool::new(false));
    let (hp1, hp2, fired2) = (p1.clone(), p2.clone(), fired.clone());
    k.inject.race.set_gup_fast(move |k, point, va| {
        if point != GupFastPoint::PudRead || va != HBASE || fired2.swap(true, Ordering::SeqCst) {
            return;
        }
        // B: P2's munmap on CPU1.
        run_on(k, 1, &hp2);
        munmap(k, &hp2, HBASE, GIB).unwrap();
        // C: P1 reuses S on CPU2.
        run_on(k, 2, &hp1);
        munmap(k, &hp1, HBASE, MIB2).unwrap();
        mmap_anon(k, &hp1, HBASE, MIB2, true).unwrap();
        k.write_user(&hp1, HBASE + 8, 0x51).unwrap();
        // Back to the walker's CPU (its IRQs-off guard restores there).
        k.set_cpu(CpuId(0));
    });
    let got = gup_fast(k, &p2, HBASE, 1, Foll::GET);
    assert!(fired.load(Ordering::SeqCst));
    (got, p1, p2, f)
}

#[test]
fn unshare_race_without_the_sync_lets_gup_fast_pin_another_process_page() {
    // arm64: the TLB flush is a hardware broadcast that does not wait for
    // the walker; hugetlb-unshare-sync reverted: nothing else does either.
    let k = kernel_oracle(3, Fixes::all().revert(Fix::HugetlbUnshareSync), Arch::Arm64);
    let (got, p1, p2, f) = unshare_race(&k);
    assert_eq!(got.len(), 1, "the walker got a page through S");
    let q = got[0];
    assert!(k.mem.page(q).test(flags::PG_ANON), "... P1's anonymous page Q, not the hugetlb page");
    assert_eq!(k.hw.ram.word(q, 1).load(Ordering::SeqCst), 0x51);
    assert!(k.san.count_kind(ViolationKind::GupOracle) >= 1, "{:?}", k.san.violations());
    put_user_pages(&k, &got);
    run_on(&k, 2, &p1);
    exit_mm(&k, &p1);
    run_on(&k, 0, &p2);
    exit_mm(&k, &p2);
    assert_eq!(truncate_inode_pages(&k, &f, 0), 0);
    assert_no_leaks(&k);
}

#[test]
#[should_panic(expected = "cannot acknowledge")]
fn unshare_race_with_the_sync_makes_the_unsharer_wait_for_the_walker() {
    // With 1013af4f585f the unsharer's tlb_remove_table_sync_one (while it
    // still holds i_mmap_rwsem, so P1 cannot reuse S yet) needs the walker's
    // CPU to take the IPI: on the synchronous Smp that is reported as the
    // hang it would be until the walker re-enables IRQs.
    let k = kernel_oracle(3, Fixes::all(), Arch::Arm64);
    unshare_race(&k);
}

#[test]
#[should_panic(expected = "cannot acknowledge")]
fn unshare_race_on_x86_the_flush_ipi_alone_waits_for_the_walker() {
    // Jann: it can't happen where TLB synchronisation always uses IPIs.
    let k = kernel_oracle(3, Fixes::all().revert(Fix::HugetlbUnshareSync), Arch::X86);
    unshare_race(&k);
}

#[test]
fn three_sharers_the_final_unshare_drains_a_walker_that_entered_through_an_earlier_sharer() {
    // docs/RACES.md, “One sync per gather” subtlety: P3's walker is inside S (entered through
    // P3's PUD); P3 unshares first (2 -> 1: no sync, and on arm64 its flush
    // does not wait for the walker); P2 unshares last (1 -> 0).  P2's one
    // sync must reach the walker of the *other* process before S can be
    // reused.  On the synchronous Smp "must wait for it" is reported as the
    // hang it would be.
    let k = kernel_oracle(4, Fixes::all(), Arch::Arm64);
    let f = hfile(&k, 1);
    let p1 = k.mm_alloc();
    run_on(&k, 3, &p1);
    map_and_touch(&k, &p1, &f, 1, 0x11);
    let p2 = fork_and_fault(&k, &p1);
    let p3 = fork_and_fault(&k, &p1);
    run_on(&k, 1, &p2);
    run_on(&k, 0, &p3);
    let syncs_after_p3 = Arc::new(AtomicU64::new(u64::MAX));
    let (hp2, hp3, rec) = (p2.clone(), p3.clone(), syncs_after_p3.clone());
    k.inject.race.set_gup_fast(move |k, point, va| {
        if point != GupFastPoint::PudRead || va != HBASE || rec.load(Ordering::SeqCst) != u64::MAX {
            return;
        }
        let s0 = k.stats.get(Stat::TlbRemoveTableSyncOne);
        run_on(k, 2, &hp3);
        munmap(k, &hp3, HBASE, GIB).unwrap();
        rec.store(k.stats.get(Stat::TlbRemoveTableSyncOne) - s0, Ordering::SeqCst);
        run_on(k, 1, &hp2);
        munmap(k, &hp2, HBASE, GIB).unwrap(); // 1 -> 0: the sync needs CPU0
        k.set_cpu(CpuId(0));
    });
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gup_fast(&k, &p3, HBASE, 1, Foll::GET)));
    assert_eq!(syncs_after_p3.load(Ordering::SeqCst), 0, "P3 was not the last sharer: no sync");
    let err = r.expect_err("P2's final unshare must wait for P3's walker");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("cannot acknowledge") && msg.contains("CPU0"), "{msg}");
}

// ---- the loom models' geometry (KernelConfig::small()) ---------------------

#[test]
fn small_geometry_shares_unshares_and_reuses_a_pmd_table() {
    // KernelConfig::small(): 4-entry tables, so a huge page is PMD_SIZE =
    // 16 KiB (order 2) and a PUD region 64 KiB; 64 frames of RAM.
    let k = Kernel::new_sync(KernelConfig { gup_oracle: true, arch: Arch::Arm64, ..KernelConfig::small() }, 3);
    let g = k.cfg.geometry;
    let (hs, pud) = (g.pmd_size(), g.pud_size());
    assert_eq!((hs, pud), (16 << 10, 64 << 10));
    let base = g.task_size() / 4; // PGD-aligned: one PUD table
    let f = k.new_file(pud / g.page_size());
    let p1 = k.mm_alloc();
    run_on(&k, 0, &p1);
    mmap_hugetlb(&k, &p1, base, pud, true, &f, 0).unwrap();
    k.write_user(&p1, base + 8, 0x11).unwrap();
    k.write_user(&p1, base + 3 * hs + 8, 0x13).unwrap();
    assert_eq!(k.alloc.in_use().hugetlb, 2 * g.hpage_pmd_nr() as i64);
    let p2 = fork_and_fault(&k, &p1);
    let s = pmd_table(&k, &p1, base).unwrap();
    assert_eq!(pmd_table(&k, &p2, base), Some(s));
    assert_eq!(ptdesc_pmd_pts_count(&k, s), 1);
    run_on(&k, 1, &p2);
    assert_eq!(k.read_user(&p2, base + 3 * hs + 8).unwrap(), 0x13);
    let got = gup_fast(&k, &p2, base, 1, Foll::GET);
    assert_eq!(got, vec![f.i_pages.lock()[&0].pfn()]);
    put_user_pages(&k, &got);
    // P2 unshares; P1 (on a third CPU, as in the loom model: its first
    // allocations find the free frames on the other CPUs' lists) splits at a
    // huge-page boundary, unmaps the first huge page and maps anonymous
    // memory there: S now holds a PTE table of P1.
    munmap(&k, &p2, base, pud).unwrap();
    assert_eq!(ptdesc_pmd_pts_count(&k, s), 0);
    assert_eq!(pmd_table(&k, &p2, base), None);
    run_on(&k, 2, &p1);
    munmap(&k, &p1, base, hs).unwrap();
    mmap_anon(&k, &p1, base, hs, true).unwrap();
    k.write_user(&p1, base + 8, 0x51).unwrap();
    assert_eq!(pmd_table(&k, &p1, base), Some(s), "the formerly shared table, reused");
    assert!(!pgtable::read(&k, s, Level::Pmd, base).huge(), "a PTE table pointer now");
    assert_eq!(k.read_user(&p1, base + 3 * hs + 8).unwrap(), 0x13);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
    teardown(&k, &[&p1, &p2], &[&f]);
}

#[test]
fn sync_after_unlock_knob_still_sends_one_sync_per_last_sharer_gather() {
    // The broken placement the loom model loom_hugetlb_unshare_batched uses
    // (the sync moves to tlb_finish_mmu, after i_mmap_rwsem is dropped; the
    // model shows why that is wrong): the counts are those of 8ce720d5bd91 —
    // none for a non-last sharer, one for the last sharer's two tables — and
    // tlb_finish_mmu does not trip over the pending fully_unshared_tables.
    let k = Kernel::new_sync(KernelConfig::default(), 2);
    k.inject.knobs.hugetlb_unshare_sync_after_unlock.set(true);
    let f = hfile(&k, 2);
    let p1 = k.mm_alloc();
    run_on(&k, 0, &p1);
    map_and_touch(&k, &p1, &f, 2, 0);
    let p2 = fork_and_fault(&k, &p1);
    let p3 = fork_and_fault(&k, &p1);
    run_on(&k, 1, &p3);
    let s0 = k.stats.get(Stat::TlbRemoveTableSyncOne);
    munmap(&k, &p3, HBASE, 2 * GIB).unwrap();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0, "not the last sharer");
    run_on(&k, 1, &p2);
    let ipis = k.smp.call_interrupts(CpuId(0));
    munmap(&k, &p2, HBASE, 2 * GIB).unwrap();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), s0 + 1, "one sync for two tables");
    assert_eq!(k.smp.call_interrupts(CpuId(0)) - ipis, 1);
    assert_eq!(ptdesc_pmd_pts_count(&k, pmd_table(&k, &p1, HBASE).unwrap()), 0);
    teardown(&k, &[&p1, &p2, &p3], &[&f]);
}

// ---- free_pgtables never groups hugetlb VMAs (mm/memory.c, v6.12) ------------

#[test]
fn free_pgtables_frees_each_hugetlb_vma_alone() {
    use crate::mm::{vm, Backing};
    use crate::ops::zap::{free_pgtables_calls, FreePgdRangeCall};
    let vma = |start: u64, end: u64, flags: u64| Vma { start, end, flags, backing: Backing::Anon };
    // anon | hugetlb | anon | anon, each starting within PMD_SIZE of the
    // previous end: without the hugetlb check the loop makes one call.
    let a = vma(HBASE - 2 * 4096, HBASE - 4096, vm::VM_READ);
    let h = vma(HBASE, HBASE + MIB2, vm::VM_READ | vm::VM_SHARED | vm::VM_HUGETLB);
    let b = vma(HBASE + MIB2 + 4096, HBASE + MIB2 + 2 * 4096, vm::VM_READ);
    let c = vma(HBASE + 2 * MIB2, HBASE + 2 * MIB2 + 4096, vm::VM_READ);
    let (floor, ceiling) = (HBASE - GIB, HBASE + GIB);
    let call = |hugetlb, addr, end, ceiling| FreePgdRangeCall { hugetlb, addr, end, floor, ceiling };
    assert_eq!(
        free_pgtables_calls(&[a.clone(), h.clone(), b.clone(), c.clone()], floor, ceiling, MIB2),
        vec![
            call(false, a.start, a.end, h.start),
            call(true, h.start, h.end, b.start),
            call(false, b.start, c.end, ceiling)
        ],
        "the hugetlb VMA is neither grouped after `a` nor heads a group with `b`"
    );
    // Two hugetlb VMAs side by side: one call each.
    let h2 = vma(HBASE + MIB2, HBASE + 2 * MIB2, h.flags);
    let h1 = vma(HBASE, HBASE + MIB2, h.flags);
    assert_eq!(
        free_pgtables_calls(&[h1.clone(), h2.clone()], floor, 0, MIB2),
        vec![
            call(true, h1.start, h1.end, h2.start),
            FreePgdRangeCall { ceiling: 0, ..call(true, h2.start, h2.end, 0) }
        ]
    );
    // End to end: one munmap of an anon VMA right below a hugetlb VMA frees
    // both VMAs' tables (the split calls free what the grouped one would).
    let k = kernel(1);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    let f = hfile(&k, 1);
    mmap_anon(&k, &mm, HBASE - 4096, 4096, true).unwrap();
    k.write_user(&mm, HBASE - 4096, 1).unwrap();
    mmap_hugetlb(&k, &mm, HBASE, MIB2, true, &f, 0).unwrap();
    k.write_user(&mm, HBASE, 2).unwrap();
    munmap(&k, &mm, HBASE - 4096, 4096 + MIB2).unwrap();
    k.rcu_barrier();
    assert_eq!(k.alloc.in_use().page_table, 1, "only the PGD is left");
    teardown(&k, &[&mm], &[&f]);
}

// ---- 8ce720d5bd91: hugetlb callers run their own tlb_gather_mmu_vma gathers ----

/// a maps 1 GiB of a hugetlb file and touches it; b (forked) shares a's
/// PMD table and runs on CPU0 and CPU1; CPU1 then mprotects `len` bytes of
/// b read-only.  Returns the counter deltas of that mprotect.
fn hugetlb_mprotect_counts(len: u64) -> Vec<(&'static str, u64)> {
    hugetlb_op_counts(|k, b| mprotect(k, b, HBASE, len, true, false).unwrap())
}

/// The setup of `hugetlb_mprotect_counts`, running `op` on CPU1 for b.
fn hugetlb_op_counts(op: impl FnOnce(&Kernel, &Arc<MmStruct>)) -> Vec<(&'static str, u64)> {
    const WATCH: [Stat; 6] = [
        Stat::NestedFlushForced,
        Stat::TlbFlushRanged,
        Stat::TlbFlushFull,
        Stat::TlbIpiSent,
        Stat::TlbRemoveTableSyncOne,
        Stat::GatherFlushes,
    ];
    let k = kernel(2);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 1);
    let b = fork_and_fault(&k, &a);
    run_on(&k, 0, &b);
    assert_eq!(k.read_user(&b, HBASE + 8).unwrap(), 1, "b shares a's table");
    run_on(&k, 1, &b);
    assert_eq!(pmd_table(&k, &a, HBASE), pmd_table(&k, &b, HBASE));
    let before = WATCH.map(|s| k.stats.get(s));
    op(&k, &b);
    let d: Vec<_> =
        WATCH.iter().zip(before).map(|(s, b0)| (s.name(), k.stats.get(*s) - b0)).filter(|(_, n)| *n != 0).collect();
    assert!(k.write_user(&b, HBASE + 8, 2).is_err(), "read-only or unmapped for b");
    run_on(&k, 0, &a);
    k.write_user(&a, HBASE + 8, 3).unwrap();
    teardown(&k, &[&a, &b], &[&f]);
    d
}

#[test]
fn hugetlb_mprotect_gathers_nest_inside_do_mprotect_pkeys() {
    // The whole VMA: hugetlb_change_protection's own gather unshares b's
    // table (a range flush, one IPI to CPU0; a's table is exclusive now: one
    // sync) and, nested in do_mprotect_pkey's gather, finishes with a forced
    // full flush with freed_tables (a second IPI).  do_mprotect_pkey's own
    // gather gathered nothing: no flush.
    assert_eq!(
        hugetlb_mprotect_counts(GIB),
        [
            ("nested_flush_forced", 1),
            ("tlb_flush_ranged", 1),
            ("tlb_flush_full", 1),
            ("tlb_ipi_sent", 2),
            ("tlb_remove_table_sync_one", 1),
            ("gather_flushes", 1)
        ]
    );
    // 2 MiB of it: mprotect_fixup splits at a non-PUD-aligned address, so
    // hugetlb_unshare_pmds unshares the region in its own gather (range
    // flush + sync, then a forced full flush: nested); then
    // hugetlb_change_protection of the 2 MiB piece finds no table left
    // (b refaults later) and still finishes nested: a second forced flush.
    assert_eq!(
        hugetlb_mprotect_counts(MIB2),
        [
            ("nested_flush_forced", 2),
            ("tlb_flush_ranged", 1),
            ("tlb_flush_full", 2),
            ("tlb_ipi_sent", 3),
            ("tlb_remove_table_sync_one", 1),
            ("gather_flushes", 2)
        ]
    );
    // munmap splits before it gathers (vms_gather_munmap_vmas, then
    // vms_clear_ptes): hugetlb_unshare_pmds' gather is alone, not nested.
    // Its range flush + sync and an unforced finish with nothing left;
    // then the munmap's gather finds no table of b's under the 2 MiB (the
    // unshare cleared b's PUD entry): nothing to zap, free or flush.
    assert_eq!(
        hugetlb_op_counts(|k, b| munmap(k, b, HBASE, MIB2).unwrap()),
        [("tlb_flush_ranged", 1), ("tlb_ipi_sent", 1), ("tlb_remove_table_sync_one", 1)]
    );
}

// ---- sharing by file offset, partial sharers, self-sharing, sparse walks --------
// (mm/hugetlb.c v6.12: huge_pmd_share's `vma_interval_tree_foreach` over the
// file offset, page_table_shareable's saddr / range_in_vma, want_pmd_share,
// the `svma == vma` skip; the walks' `address |= last_addr_mask` skip over a
// PUD region without a PMD table)

/// Two mms map the same 1 GiB of a file, at file offset 1 GiB, at odd-GiB
/// addresses that differ: the second finds the first's table by the file
/// offset (saddr = (idx - svma->vm_pgoff) << PAGE_SHIFT + svma->vm_start),
/// so the PUD region base of saddr and of the fault must both be computed
/// with PUD_MASK.  A third mm at file offset 0 faults while the others are
/// in i_mmap: their VMAs start past its index and are skipped, not
/// subtracted from.
#[test]
fn sharing_finds_the_sharer_by_file_offset_at_odd_gib_addresses() {
    let k = kernel(1);
    let f = hfile(&k, 2);
    let off = GIB / k.cfg.geometry.page_size(); // file offset 1 GiB, in pages
    let (a, b, c) = (k.mm_alloc(), k.mm_alloc(), k.mm_alloc());
    run_on(&k, 0, &a);
    mmap_hugetlb(&k, &a, HBASE + GIB, GIB, true, &f, off).unwrap();
    k.write_user(&a, HBASE + GIB + 8, 41).unwrap();
    run_on(&k, 0, &b);
    mmap_hugetlb(&k, &b, HBASE + 3 * GIB, GIB, true, &f, off).unwrap();
    assert_eq!(k.read_user(&b, HBASE + 3 * GIB + 8).unwrap(), 41);
    let ta = pmd_table(&k, &a, HBASE + GIB).unwrap();
    assert_eq!(pmd_table(&k, &b, HBASE + 3 * GIB), Some(ta), "b shares a's table");
    assert_eq!(ptdesc_pmd_pts_count(&k, ta), 1);
    run_on(&k, 0, &c);
    mmap_hugetlb(&k, &c, HBASE, GIB, true, &f, 0).unwrap();
    assert_eq!(k.read_user(&c, HBASE + 8).unwrap(), 0, "file offset 0: another page");
    assert_ne!(pmd_table(&k, &c, HBASE), Some(ta));
    assert_eq!(ptdesc_pmd_pts_count(&k, ta), 1);
    teardown(&k, &[&a, &b, &c], &[&f]);
}

/// A VMA that covers only part of a PUD region cannot lend its table (its
/// other half may map something else), even to a VMA that covers all of it.
#[test]
fn a_sharer_must_cover_the_whole_pud_region() {
    let k = kernel(1);
    let f = hfile(&k, 1);
    let (a, b) = (k.mm_alloc(), k.mm_alloc());
    run_on(&k, 0, &b);
    mmap_hugetlb(&k, &b, HBASE, GIB / 2, true, &f, 0).unwrap();
    k.write_user(&b, HBASE + 8, 5).unwrap();
    run_on(&k, 0, &a);
    mmap_hugetlb(&k, &a, HBASE, GIB, true, &f, 0).unwrap();
    assert_eq!(k.read_user(&a, HBASE + 8).unwrap(), 5, "the same file page");
    let tb = pmd_table(&k, &b, HBASE).unwrap();
    assert_ne!(pmd_table(&k, &a, HBASE), Some(tb), "b's table is not shareable");
    assert_eq!(ptdesc_pmd_pts_count(&k, tb), 0);
    teardown(&k, &[&a, &b], &[&f]);
}

/// One mm mapping the same GiB of a file twice: the second VMA shares the
/// first one's table (only `svma == vma` itself is skipped).
#[test]
fn a_second_mapping_in_the_same_mm_shares_the_first_ones_table() {
    let k = kernel(1);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    mmap_hugetlb(&k, &a, HBASE, GIB, true, &f, 0).unwrap();
    mmap_hugetlb(&k, &a, HBASE + 2 * GIB, GIB, true, &f, 0).unwrap();
    k.write_user(&a, HBASE + 8, 9).unwrap();
    assert_eq!(k.read_user(&a, HBASE + 2 * GIB + 8).unwrap(), 9);
    let t = pmd_table(&k, &a, HBASE).unwrap();
    assert_eq!(pmd_table(&k, &a, HBASE + 2 * GIB), Some(t));
    assert_eq!(ptdesc_pmd_pts_count(&k, t), 1);
    teardown(&k, &[&a], &[&f]);
}

/// A 2 GiB VMA whose first PUD region has no PMD table and whose second has
/// its first huge page mapped: mprotect and munmap walk past the empty
/// region (`address |= hugetlb_mask_last_page`, then `+= sz`) to exactly the
/// start of the next one, and reach its first page.
#[test]
fn walks_skip_an_empty_pud_region_to_the_start_of_the_next() {
    let k = kernel(1);
    let f = hfile(&k, 2);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    mmap_hugetlb(&k, &a, HBASE, 2 * GIB, true, &f, 0).unwrap();
    k.write_user(&a, HBASE + GIB + 8, 3).unwrap();
    k.write_user(&a, HBASE + GIB + 2 * MIB2 + 8, 4).unwrap();
    assert_eq!(pmd_table(&k, &a, HBASE), None, "region 0 has no PMD table");
    mprotect(&k, &a, HBASE, 2 * GIB, true, false).unwrap();
    assert!(k.write_user(&a, HBASE + GIB + 8, 5).is_err(), "the first page of region 1 is read-only");
    assert!(k.write_user(&a, HBASE + GIB + 2 * MIB2 + 8, 5).is_err());
    let t = pmd_table(&k, &a, HBASE + GIB).unwrap();
    assert!(!pgtable::read(&k, t, Level::Pmd, HBASE + GIB).write());
    munmap(&k, &a, HBASE, 2 * GIB).unwrap();
    assert!(!pgtable::read(&k, t, Level::Pmd, HBASE + GIB).present() || pmd_table(&k, &a, HBASE + GIB).is_none());
    let folio = f.i_pages.lock()[&512];
    assert_eq!(k.mem.folio_mapcount(folio), 0, "munmap zapped region 1's first page");
    teardown(&k, &[&a], &[&f]);
}

/// `hugetlb_fault` on a present leaf: a read, or a write to a writable leaf,
/// is spurious (a stale TLB entry or a racing fault) and succeeds; a write
/// to a read-only leaf of a writable shared VMA cannot happen in a
/// writable mapping and is refused (the VMA forbids it).
#[test]
fn faults_on_present_leaves_are_spurious_unless_a_write_hits_a_read_only_one() {
    let k = kernel(1);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    mmap_hugetlb(&k, &a, HBASE, GIB, true, &f, 0).unwrap();
    k.write_user(&a, HBASE + 8, 1).unwrap();
    let vma = a.mmap_lock.read().find(HBASE).unwrap().clone();
    assert_eq!(hugetlb_fault(&k, &a, &vma, HBASE + 8, false), Ok(()));
    assert_eq!(hugetlb_fault(&k, &a, &vma, HBASE + 8, true), Ok(()));
    let t = pmd_table(&k, &a, HBASE).unwrap();
    let e = pgtable::read(&k, t, Level::Pmd, HBASE);
    pgtable::write(&k, t, Level::Pmd, HBASE, Pte(e.0 & !Pte::RW));
    assert_eq!(hugetlb_fault(&k, &a, &vma, HBASE + 8, false), Ok(()), "a read of a read-only leaf");
    assert_eq!(hugetlb_fault(&k, &a, &vma, HBASE + 8, true), Err(FaultError::Segv));
    pgtable::write(&k, t, Level::Pmd, HBASE, e);
    teardown(&k, &[&a], &[&f]);
}

/// A partial munmap zaps exactly [start, end): the huge page right after
/// `end` stays mapped (`__unmap_hugepage_range`'s `address < end`), so
/// reading it takes no fault.
#[test]
fn a_partial_munmap_zaps_no_page_past_its_end() {
    let k = kernel(1);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    mmap_hugetlb(&k, &a, HBASE, GIB, true, &f, 0).unwrap();
    for i in 0..3 {
        k.write_user(&a, HBASE + i * MIB2 + 8, 10 + i).unwrap();
    }
    munmap(&k, &a, HBASE, MIB2).unwrap();
    let t = pmd_table(&k, &a, HBASE + MIB2).unwrap();
    assert!(pgtable::read(&k, t, Level::Pmd, HBASE + MIB2).present(), "the next huge page is still mapped");
    let faults = k.stats.get(Stat::PageFaults);
    assert_eq!(k.read_user(&a, HBASE + MIB2 + 8).unwrap(), 11);
    assert_eq!(k.stats.get(Stat::PageFaults), faults, "no refault past the unmapped range");
    assert!(k.read_user(&a, HBASE + 8).is_err(), "the unmapped page is gone");
    teardown(&k, &[&a], &[&f]);
}

/// `hugetlb_split` unshares the one PUD region around the boundary and no
/// other (`hugetlb_unshare_pmds(floor, floor + PUD_SIZE)`), in each of the
/// three unshare forms (before 1013af4f585f, with it, and with
/// 8ce720d5bd91's gather): b shares both of a's PMD tables; a munmap of one
/// huge page inside b's first GiB leaves b's second GiB shared.  A
/// boundary that is not a multiple of the huge page size is refused
/// (`hugetlb_vm_op_split`), at either end, and changes nothing.
#[test]
fn a_split_unshares_only_the_pud_region_around_its_boundary() {
    use crate::config::Fix;
    for (sync, batched) in [(false, false), (true, false), (true, true)] {
        let mut fixes = Fixes::default();
        fixes.set(Fix::HugetlbUnshareSync, sync);
        fixes.set(Fix::HugetlbUnshareBatched, batched);
        let k = kernel_with(2, fixes, Arch::X86);
        let f = hfile(&k, 2);
        let a = k.mm_alloc();
        run_on(&k, 0, &a);
        map_and_touch(&k, &a, &f, 2, 40);
        let b = fork_and_fault(&k, &a);
        let (t0, t1) = (pmd_table(&k, &a, HBASE).unwrap(), pmd_table(&k, &a, HBASE + GIB).unwrap());
        assert_eq!((ptdesc_pmd_pts_count(&k, t0), ptdesc_pmd_pts_count(&k, t1)), (1, 1), "b shares both");
        run_on(&k, 1, &b);
        for (start, len) in [(HBASE + 4 * MIB2 + 4096, MIB2), (HBASE + 4 * MIB2, MIB2 + 4096)] {
            assert!(matches!(munmap(&k, &b, start, len), Err(MmError::Inval(_))), "{start:#x}+{len:#x}");
        }
        assert_eq!(
            (ptdesc_pmd_pts_count(&k, t0), ptdesc_pmd_pts_count(&k, t1)),
            (1, 1),
            "a refused split unshares nothing"
        );
        munmap(&k, &b, HBASE + 4 * MIB2, MIB2).unwrap();
        assert_eq!(ptdesc_pmd_pts_count(&k, t0), 0, "sync {sync} batched {batched}: the split's region unshared");
        assert_eq!(ptdesc_pmd_pts_count(&k, t1), 1, "sync {sync} batched {batched}: the next region still shared");
        assert_eq!(pmd_table(&k, &b, HBASE + GIB), Some(t1));
        assert_eq!(k.read_user(&b, HBASE + GIB + 8).unwrap(), 41);
        teardown(&k, &[&a, &b], &[&f]);
    }
}

/// Before 8ce720d5bd91 a munmap that unshares a PMD table flushes the
/// whole PUD region right away (`flush_hugetlb_tlb_range` of
/// `address & PUD_MASK`, PUD_SIZE): on arm64 (range TLBIs, no full-mm
/// fallback for 1 GiB at PMD stride) the sharer's CPU then caches nothing
/// of the region, and the walk goes on from the next region, never back
/// below the range (b's anonymous page at 1 GiB, in another PGD entry's
/// range, is not touched).  b's neighbour mapping keeps its PUD table, so
/// no table-freeing flush hides a wrong range.
#[test]
fn a_pre_gather_unshare_flushes_its_pud_region_and_walks_on_from_the_next() {
    use crate::config::Fix;
    for sync in [false, true] {
        let mut fixes = Fixes::default();
        fixes.set(Fix::HugetlbUnshareSync, sync);
        fixes.set(Fix::HugetlbUnshareBatched, false);
        let k = kernel_with(2, fixes, Arch::Arm64);
        let f = hfile(&k, 2);
        let a = k.mm_alloc();
        run_on(&k, 0, &a);
        map_and_touch(&k, &a, &f, 2, 50);
        let b = fork_and_fault(&k, &a);
        run_on(&k, 1, &b);
        mmap_anon(&k, &b, GIB, 4096, true).unwrap();
        k.write_user(&b, GIB, 3).unwrap();
        // Keeps b's PUD table: the munmap frees no table, so no later
        // flush covers the region but the unshare's own.
        mmap_anon(&k, &b, NEIGHBOUR, 4096, true).unwrap();
        k.write_user(&b, NEIGHBOUR, 4).unwrap();
        for i in 0..2 {
            assert_eq!(k.read_user(&b, HBASE + i * GIB + 8).unwrap(), 50 + i);
            assert!(k.hw.tlb(CpuId(1)).lookup(b.id, HBASE + i * GIB).is_some(), "CPU1 caches b's region {i}");
        }
        // Flushed inside __unmap_hugepage_range (its tlb_end_vma, then the
        // unshare's force flush), before i_mmap_rwsem is dropped: done by
        // the end of free_pgtables, not left to tlb_finish_mmu.
        let seen = Arc::new(crate::sync::Mutex::new(None));
        let (seen2, id) = (seen.clone(), b.id);
        assert!(k.inject.race.set_after_free_pgtables(move |k| {
            *seen2.lock() = Some(k.hw.tlb(CpuId(1)).lookup(id, HBASE).is_some());
        }));
        munmap(&k, &b, HBASE, 2 * GIB).unwrap();
        assert_eq!(*seen.lock(), Some(false), "sync {sync}: flushed before the gather finished");
        for i in 0..2 {
            assert!(
                k.hw.tlb(CpuId(1)).lookup(b.id, HBASE + i * GIB).is_none(),
                "sync {sync}: region {i} flushed from CPU1's TLB"
            );
        }
        assert_eq!(k.read_user(&b, GIB).unwrap(), 3, "the page below the range is still mapped");
        teardown(&k, &[&a, &b], &[&f]);
    }
}

/// `hugetlb_change_protection` rewrites the huge entries of [start, end)
/// and stops at `end`: mprotect read-only of the first of two adjacent
/// hugetlb VMAs leaves the second's first entry writable; PROT_NONE takes
/// the USER bit away (a read faults), and read-write gives both back.
#[test]
fn hugetlb_change_protection_stops_at_the_end_and_prot_none_takes_user_away() {
    use crate::hw::pte::Pte;
    let k = kernel(1);
    let (f, g) = (hfile(&k, 1), hfile(&k, 1));
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_hugetlb(&k, &mm, HBASE, GIB, true, &f, 0).unwrap();
    mmap_hugetlb(&k, &mm, HBASE + GIB, GIB, true, &g, 0).unwrap();
    k.write_user(&mm, HBASE, 1).unwrap();
    k.write_user(&mm, HBASE + GIB, 2).unwrap();
    let entry = |va: u64| {
        let t = pmd_table(&k, &mm, va).unwrap();
        pgtable::read(&k, t, Level::Pmd, va)
    };
    mprotect(&k, &mm, HBASE, GIB, true, false).unwrap();
    assert!(!entry(HBASE).write(), "the range's entry is read-only");
    assert!(entry(HBASE + GIB).write(), "the next VMA's entry, at `end`, is untouched");
    mprotect(&k, &mm, HBASE, GIB, false, false).unwrap();
    assert_eq!(entry(HBASE).0 & Pte::USER, 0, "PROT_NONE: no USER bit");
    assert!(k.read_user(&mm, HBASE).is_err(), "PROT_NONE faults");
    mprotect(&k, &mm, HBASE, GIB, true, true).unwrap();
    assert_ne!(entry(HBASE).0 & Pte::USER, 0);
    assert_eq!(k.read_user(&mm, HBASE).unwrap(), 1);
    teardown(&k, &[&mm], &[&f, &g]);
}

/// `hugetlb_mask_last_page` for a PMD-sized hstate is PUD_SIZE - PMD_SIZE
/// (mm/hugetlb.c v6.12): `addr | mask` is the last huge page of the PUD
/// region, so `+ sz` is the first of the next.  On both geometries.
#[test]
fn hugetlb_mask_last_page_is_pud_size_minus_pmd_size() {
    let k = kernel(1);
    assert_eq!(hugetlb_mask_last_page(&k), GIB - MIB2);
    assert_eq!((HBASE + 3 * MIB2) | hugetlb_mask_last_page(&k), HBASE + GIB - MIB2);
    let s = Kernel::new_sync(KernelConfig::small(), 1);
    assert_eq!(hugetlb_mask_last_page(&s), (64 << 10) - (16 << 10), "small geometry: 64 KiB PUD, 16 KiB PMD");
}

/// `adjust_range_if_pmd_sharing_possible` (mm/hugetlb.c v6.12): for a
/// VM_MAYSHARE VMA spanning at least one aligned PUD region, a range that
/// meets [ALIGN(vm_start), ALIGN_DOWN(vm_end)) is widened to whole PUD
/// regions (start down, end up); otherwise it is left alone.
#[test]
fn adjust_range_widens_to_whole_pud_regions_only_where_sharing_is_possible() {
    let k = kernel(1);
    let f = hfile(&k, 4);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    // [HBASE + 1 GiB - 8 MiB, HBASE + 3 GiB + 8 MiB): aligned part [1, 3) GiB.
    let (vs, ve) = (HBASE + GIB - 4 * MIB2, HBASE + 3 * GIB + 4 * MIB2);
    mmap_hugetlb(&k, &mm, vs, ve - vs, true, &f, 0).unwrap();
    let vma = mm.mmap_lock.read().find(vs).unwrap().clone();
    let adj = |vma: &Vma, s: u64, e: u64| {
        let (mut s2, mut e2) = (s, e);
        adjust_range_if_pmd_sharing_possible(&k, vma, &mut s2, &mut e2);
        (s2, e2)
    };
    let (g1, g2, g3) = (HBASE + GIB, HBASE + 2 * GIB, HBASE + 3 * GIB);
    // Inside one region: both ends widened.
    assert_eq!(adj(&vma, g1 + MIB2, g1 + 4 * MIB2), (g1, g2));
    // Already aligned: unchanged.
    assert_eq!(adj(&vma, g1, g2), (g1, g2));
    // Start before the aligned part stays; the end is rounded up.
    assert_eq!(adj(&vma, vs, g2 + MIB2), (vs, g3));
    // End past the aligned part stays; the start is rounded down.
    assert_eq!(adj(&vma, g2 + MIB2, ve), (g2, ve));
    // Ranges that only touch the unaligned edges: unchanged.
    assert_eq!(adj(&vma, vs, g1), (vs, g1), "end == v_start");
    assert_eq!(adj(&vma, g3, ve), (g3, ve), "start == v_end");
    assert_eq!(adj(&vma, vs, vs + MIB2), (vs, vs + MIB2), "wholly below v_start");
    assert_eq!(adj(&vma, g3 + MIB2, ve), (g3 + MIB2, ve), "wholly above v_end");
    // A private VMA, or one that spans no whole PUD region: unchanged.
    let mut private = vma.clone();
    private.flags &= !vm::VM_SHARED;
    assert_eq!(adj(&private, g1 + MIB2, g1 + 4 * MIB2), (g1 + MIB2, g1 + 4 * MIB2));
    let mut small = vma.clone();
    small.start = g1 + MIB2;
    small.end = g2 - MIB2;
    assert_eq!(adj(&small, g1 + 2 * MIB2, g1 + 4 * MIB2), (g1 + 2 * MIB2, g1 + 4 * MIB2));
    let mut one = vma.clone();
    one.start = g1;
    one.end = g2;
    assert_eq!(adj(&one, g1 + MIB2, g1 + 4 * MIB2), (g1, g2), "exactly one region");
    drop(vma);
    munmap(&k, &mm, vs, ve - vs).unwrap();
    teardown(&k, &[&mm], &[&f]);
}

/// `hugetlb_change_protection` returns the base pages it touched: each
/// rewritten huge leaf and each unshared table is one huge page, shifted
/// by the hstate's order (`pages << h->order`).
#[test]
fn hugetlb_change_protection_returns_base_pages_touched() {
    let k = kernel(2);
    let f = hfile(&k, 2);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 2, 1);
    k.write_user(&a, HBASE + MIB2, 9).unwrap(); // a third leaf, region 0
    let b = fork_and_fault(&k, &a);
    run_on(&k, 1, &b);
    let nr = k.cfg.geometry.hpage_pmd_nr();
    let vma_of = |mm: &Arc<MmStruct>| mm.mmap_lock.read().find(HBASE).unwrap().clone();
    // b shares both of a's tables: each region is one unshare.
    let vb = vma_of(&b);
    assert_eq!(hugetlb_change_protection(&k, &b, &vb), 2 * nr, "two unshared tables");
    // a owns both tables now: three leaves rewritten.
    run_on(&k, 0, &a);
    let va = vma_of(&a);
    assert_eq!(hugetlb_change_protection(&k, &a, &va), 3 * nr, "three huge leaves");
    teardown(&k, &[&a, &b], &[&f]);
}

/// `hugetlb_unshare_pmds(vma, start, end)` unshares every shared PMD table
/// of its PUD-aligned range and no other, in every unshare mode; and
/// `hugetlb_split` at a non-PUD-aligned address unshares the region
/// around it, while an aligned address or a region the VMA does not
/// cover whole does nothing.
#[test]
fn hugetlb_unshare_pmds_and_split_unshare_exactly_their_regions() {
    use crate::config::Fix;
    for (sync, batched) in [(true, true), (true, false), (false, false)] {
        let mut fixes = Fixes::default();
        fixes.set(Fix::HugetlbUnshareSync, sync);
        fixes.set(Fix::HugetlbUnshareBatched, batched);
        let k = kernel_with(2, fixes, Arch::X86);
        let f = hfile(&k, 3);
        let a = k.mm_alloc();
        run_on(&k, 0, &a);
        map_and_touch(&k, &a, &f, 3, 1);
        let b = fork_and_fault(&k, &a);
        run_on(&k, 1, &b);
        let region = |i: u64| HBASE + i * GIB;
        let shared = |i: u64| {
            pmd_table(&k, &b, region(i)).is_some() && pmd_table(&k, &a, region(i)) == pmd_table(&k, &b, region(i))
        };
        assert!((0..3).all(shared), "b shares all three tables");
        let vb = b.mmap_lock.read().find(HBASE).unwrap().clone();
        // An empty range does nothing.
        hugetlb_unshare_pmds(&k, &b, &vb, region(1), region(1));
        assert!((0..3).all(shared), "mode ({sync}, {batched}): empty range");
        // Region 1 only.
        hugetlb_unshare_pmds(&k, &b, &vb, region(1), region(2));
        assert!(shared(0) && !shared(1) && shared(2), "mode ({sync}, {batched}): only region 1 unshared");
        assert!(pmd_table(&k, &b, region(1)).is_none(), "b's PUD entry for region 1 is cleared");
        assert_eq!(ptdesc_pmd_pts_count(&k, pmd_table(&k, &a, region(1)).unwrap()), 0, "a's table is exclusive again");
        // Splits: at an aligned address, nothing; inside region 2, region 2.
        hugetlb_split(&k, &b, &vb, region(2));
        assert!(shared(0) && shared(2), "mode ({sync}, {batched}): aligned split unshares nothing");
        hugetlb_split(&k, &b, &vb, region(2) + MIB2);
        assert!(shared(0) && !shared(2), "mode ({sync}, {batched}): split inside region 2 unshares it");
        // A VMA that does not cover region 0 whole: the split does nothing.
        let mut part = vb.clone();
        part.start = region(0) + MIB2;
        hugetlb_split(&k, &b, &part, region(0) + 2 * MIB2);
        assert!(shared(0), "mode ({sync}, {batched}): no whole region, no unshare");
        part.start = region(0);
        part.end = region(1) - MIB2;
        hugetlb_split(&k, &b, &part, region(0) + 2 * MIB2);
        assert!(shared(0), "mode ({sync}, {batched}): region past the VMA's end, no unshare");
        assert_eq!(k.read_user(&b, region(1) + 8).unwrap(), 2, "b refaults region 1 from the file");
        teardown(&k, &[&a, &b], &[&f]);
    }
}

/// Before 8ce720d5bd91 (`HugetlbUnshareBatched` off) `__unmap_hugepage_range`
/// flushes an unshared table's PUD region itself (`flush_hugetlb_tlb_range`
/// of `address & PUD_MASK`, PUD_SIZE) and forces the flush before
/// i_mmap_rwsem is dropped.  Pinned on arm64 (FEAT_TLBIRANGE): a munmap of
/// the shared region is one range TLBI (last-level: no table is freed)
/// of exactly that region, not a
/// whole-ASID flush; in an exit (a fullmm gather, whose `tlb_end_vma`
/// flushes nothing) the unshare costs one ASID flush of its own, and an
/// exit that unshared nothing has none.
#[test]
fn pre_gather_unshare_flushes_its_pud_region_by_range_and_forces_a_flush_in_exit() {
    use crate::config::Fix;
    const WATCH: [Stat; 3] = [Stat::Arm64TlbiRvae1is, Stat::Arm64TlbiRvale1is, Stat::Arm64TlbiAside1is];
    let counts = |k: &Kernel| WATCH.map(|s| k.stats.get(s));
    let delta = |a: [u64; 3], b: [u64; 3]| [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let mut fixes = Fixes::default();
    fixes.set(Fix::HugetlbUnshareBatched, false);
    let setup = |arch| {
        let k = kernel_with(2, fixes, arch);
        let f = hfile(&k, 1);
        let a = k.mm_alloc();
        run_on(&k, 0, &a);
        map_and_touch(&k, &a, &f, 1, 1);
        let b = fork_and_fault(&k, &a);
        run_on(&k, 1, &b);
        // b's PUD table outlives the munmap: no table is freed.
        mmap_anon(&k, &b, NEIGHBOUR, 4096, true).unwrap();
        k.write_user(&b, NEIGHBOUR, 4).unwrap();
        assert_eq!(pmd_table(&k, &a, HBASE), pmd_table(&k, &b, HBASE), "b shares a's table");
        (k, f, a, b)
    };
    // munmap: the PUD region by range.
    let (k, f, a, b) = setup(Arch::Arm64);
    let c0 = counts(&k);
    munmap(&k, &b, HBASE, GIB).unwrap();
    assert_eq!(
        delta(c0, counts(&k)),
        [0, 1, 0],
        "munmap: one last-level TLBI RVALE1IS (no table freed), no ASID flush"
    );
    teardown(&k, &[&a, &b], &[&f]);
    // exit (x86: a fullmm tlb_flush is always a full flush; arm64's
    // flushes nothing unless tables were freed): the sharer's unshare is
    // flushed at once, then the final flush; the last owner, who unshares
    // nothing, has the final flush only.
    let (k, f, a, b) = setup(Arch::X86);
    let full = |k: &Kernel| k.stats.get(Stat::TlbFlushFull);
    let c0 = full(&k);
    exit_mm(&k, &b);
    let sharer = full(&k) - c0;
    run_on(&k, 0, &a);
    let c1 = full(&k);
    exit_mm(&k, &a);
    let owner = full(&k) - c1;
    assert_eq!((sharer, owner), (2, 1), "exit: the unshare's forced flush, then the final one");
    assert_eq!(truncate_inode_pages(&k, &f, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// After mprotect the file's i_mmap sees the VMA's new flags (the kernel
/// reads `svma->vm_flags`; the model re-registers the pieces,
/// `hugetlb_update_i_mmap_flags`): a read-write mapping of the same file
/// faulting after another mm made its mapping read-only must not share
/// that mm's table (`page_table_shareable` wants equal flags), and its
/// write succeeds.
#[test]
fn a_mapping_made_read_only_is_not_shared_with_a_read_write_one() {
    let k = kernel(2);
    let f = hfile(&k, 1);
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    map_and_touch(&k, &a, &f, 1, 1);
    mprotect(&k, &a, HBASE, GIB, true, false).unwrap();
    let b = k.mm_alloc();
    run_on(&k, 1, &b);
    mmap_hugetlb(&k, &b, HBASE, GIB, true, &f, 0).unwrap();
    k.write_user(&b, HBASE + 8, 7).unwrap();
    assert_ne!(pmd_table(&k, &a, HBASE), pmd_table(&k, &b, HBASE), "different flags: not shared");
    assert_eq!(ptdesc_pmd_pts_count(&k, pmd_table(&k, &a, HBASE).unwrap()), 0);
    run_on(&k, 0, &a);
    assert_eq!(k.read_user(&a, HBASE + 8).unwrap(), 7, "the same file page");
    assert!(k.write_user(&a, HBASE + 8, 8).is_err(), "a is read-only");
    teardown(&k, &[&a, &b], &[&f]);
}

/// `hugetlb_change_protection` over a VMA that starts inside a PUD region
/// with no PMD table skips to the next region (`(address |
/// last_addr_mask) + sz`), and after unsharing a table walks on from the
/// next region only: a PMD table of an anonymous mapping elsewhere in the
/// mm is never visited (its table entry keeps RW, the page stays writable).
#[test]
fn hugetlb_change_protection_walks_on_from_the_next_region_only() {
    let k = kernel(2);
    let f = hfile(&k, 2);
    // Unaligned start, first region empty.
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_hugetlb(&k, &mm, HBASE + MIB2, 2 * GIB - MIB2, true, &f, 1 << 9).unwrap();
    k.write_user(&mm, HBASE + GIB, 5).unwrap();
    assert!(pmd_table(&k, &mm, HBASE + MIB2).is_none(), "region 0 has no PMD table");
    mprotect(&k, &mm, HBASE + MIB2, 2 * GIB - MIB2, true, false).unwrap();
    assert!(k.write_user(&mm, HBASE + GIB, 6).is_err(), "region 1 is read-only");
    assert_eq!(k.read_user(&mm, HBASE + GIB).unwrap(), 5);
    // A shared table unshared by mprotect, an anonymous page at 1 GiB.
    let a = k.mm_alloc();
    run_on(&k, 0, &a);
    let g = hfile(&k, 1);
    map_and_touch(&k, &a, &g, 1, 1);
    let b = fork_and_fault(&k, &a);
    run_on(&k, 1, &b);
    mmap_anon(&k, &b, GIB, 4096, true).unwrap();
    k.write_user(&b, GIB, 3).unwrap();
    let anon_pmd = || {
        let t = pgtable::lookup_table(&k, &b, GIB, Level::Pmd).unwrap();
        pgtable::read(&k, t, Level::Pmd, GIB)
    };
    let before = anon_pmd();
    mprotect(&k, &b, HBASE, GIB, true, false).unwrap();
    assert_ne!(pmd_table(&k, &a, HBASE), pmd_table(&k, &b, HBASE), "unshared");
    assert_eq!(anon_pmd(), before, "the anonymous mapping's PMD entry is untouched");
    k.write_user(&b, GIB, 4).unwrap();
    teardown(&k, &[&mm, &a, &b], &[&f, &g]);
}
