//! Truncation on the synchronous Smp (x86, v6.12 flush policy): what
//! `truncate_setsize` unmaps, on which CPUs it flushes, what it frees.

use super::*;
use crate::check;
use crate::config::KernelConfig;
use crate::ops::test_util::{assert_no_leaks, run_on};
use crate::ops::{exit_mm, mmap_file};
use crate::stats::Stat;
use crate::types::CpuId;

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn kernel(cpus: usize) -> Arc<Kernel> {
    Kernel::new_sync(KernelConfig::default(), cpus)
}

/// The file pages in the page cache, by index.
fn cached(file: &AddressSpace) -> Vec<u64> {
    file.i_pages.lock().keys().copied().collect()
}

#[test]
fn truncate_setsize_unmaps_a_shared_mapping_on_both_cpus_with_one_flush() {
    let k = kernel(2);
    let file = k.new_file(8);
    let mm = k.mm_alloc();
    run_on(&k, 1, &mm);
    mmap_file(&k, &mm, BASE, 8 * PS, true, true, &file, 0).unwrap();
    for i in 0..8 {
        k.write_user(&mm, BASE + i * PS, 100 + i).unwrap();
    }
    run_on(&k, 0, &mm);
    for i in 0..8 {
        assert_eq!(k.read_user(&mm, BASE + i * PS).unwrap(), 100 + i);
    }
    assert_eq!(k.alloc.in_use().file, 8);
    let before = |s| k.stats.get(s);
    let (remote0, local_one0, ranged0) =
        (before(Stat::NrTlbRemoteFlush), before(Stat::NrTlbLocalFlushOne), before(Stat::TlbFlushRanged));
    // ftruncate(fd, 1 page) from CPU 0 while CPU 1 runs the same mm.
    assert_eq!(truncate_setsize(&k, &file, PS), 0, "the first unmap left nothing mapped");
    // One zap_page_range_single found the 7 PTEs: one ranged gather flush
    // (7 pages <= the ceiling of 33: page by page, locally and on CPU 1).
    // The second unmap_mapping_range found nothing and flushed nothing.
    assert_eq!(k.stats.get(Stat::TlbFlushRanged) - ranged0, 1);
    assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush) - remote0, 1, "one flush_tlb_multi");
    assert_eq!(k.stats.get(Stat::TlbIpiSent), 1, "one IPI: to CPU 1");
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 1);
    assert_eq!(k.stats.get_cpu(CpuId(0), Stat::IrqTlbCount), 0);
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::NrTlbRemoteFlushReceived), 1);
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne) - local_one0, 7, "CPU 0 invalidates the 7 pages one by one");
    assert_eq!(k.stats.get(Stat::NrTlbLocalFlushAll), 0);
    assert_eq!(k.stats.get(Stat::TlbFlushFull), 0);
    assert_eq!(k.san.count(), 0, "no CPU kept a stale translation");
    // The page cache keeps page 0 only; the 7 others are freed.
    assert_eq!(cached(&file), [0]);
    assert_eq!(k.alloc.in_use().file, 1);
    assert_eq!(file.i_size_read_pages(), 1);
    assert_eq!(mm.rss.load(crate::sync::Ordering::SeqCst), 1);
    // Page 0 is still mapped with its data; past the end a fault is
    // VM_FAULT_SIGBUS on either CPU (the kernel's SIGBUS).
    for cpu in [0, 1] {
        k.set_cpu(CpuId(cpu));
        assert_eq!(k.read_user(&mm, BASE).unwrap(), 100);
        for i in 1..8 {
            let e = k.read_user(&mm, BASE + i * PS).unwrap_err();
            assert!(e.sigbus, "page {i} on CPU {cpu}: {e:?}");
        }
    }
    check::check_consistency(&k, &[&mm], &[&file]).unwrap();
    k.set_cpu(CpuId(0));
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

/// Two mms map the file: each VMA is zapped with its own gather on its own
/// mm, so each mm's CPUs get their own flush.
#[test]
fn unmap_mapping_range_flushes_each_mapping_mm_on_its_own_cpus() {
    let k = kernel(3);
    let file = k.new_file(4);
    let (a, b) = (k.mm_alloc(), k.mm_alloc());
    run_on(&k, 1, &a);
    mmap_file(&k, &a, BASE, 4 * PS, false, true, &file, 0).unwrap();
    k.read_user(&a, BASE + 2 * PS).unwrap();
    run_on(&k, 2, &b);
    mmap_file(&k, &b, BASE + 16 * PS, 2 * PS, false, true, &file, 2).unwrap();
    k.read_user(&b, BASE + 16 * PS).unwrap();
    // CPU 0 runs neither mm (a kernel thread's view): both flushes are
    // remote only.
    k.set_cpu(CpuId(0));
    unmap_mapping_range(&k, &file, 2 * PS, PS, false);
    assert_eq!(k.stats.get(Stat::NrTlbRemoteFlush), 2, "one per mm");
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::IrqTlbCount), 1);
    assert_eq!(k.stats.get_cpu(CpuId(2), Stat::IrqTlbCount), 1);
    assert_eq!(k.stats.get_cpu(CpuId(0), Stat::IrqTlbCount), 0);
    assert_eq!(k.san.count(), 0);
    // The page cache is untouched: the next access maps it again.
    assert_eq!(cached(&file), [2]);
    k.set_cpu(CpuId(1));
    k.read_user(&a, BASE + 2 * PS).unwrap();
    exit_mm(&k, &a);
    k.set_cpu(CpuId(2));
    exit_mm(&k, &b);
    k.set_cpu(CpuId(0));
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

/// A private mapping with pages COWed past the new end: truncate's
/// `even_cows` zaps the anonymous copies too, and the pages then SIGBUS.
#[test]
fn truncate_setsize_zaps_private_cow_copies_past_the_end() {
    let k = kernel(1);
    let file = k.new_file(4);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 4 * PS, true, false, &file, 0).unwrap();
    k.read_user(&mm, BASE).unwrap();
    k.read_user(&mm, BASE + PS).unwrap(); // the file page, read-only
    k.write_user(&mm, BASE + 2 * PS, 7).unwrap(); // COW: an anon copy
    k.write_user(&mm, BASE + 3 * PS, 8).unwrap();
    assert_eq!(k.alloc.in_use().anon, 2);
    assert_eq!(k.alloc.in_use().file, 4, "the COW faults read pages 2 and 3 into the cache");
    truncate_setsize(&k, &file, PS);
    assert_eq!(k.alloc.in_use().anon, 0, "the COW copies past the end are gone");
    assert_eq!(k.alloc.in_use().file, 1);
    assert_eq!(mm.rss.load(crate::sync::Ordering::SeqCst), 1);
    for i in 1..4 {
        assert!(k.read_user(&mm, BASE + i * PS).unwrap_err().sigbus, "page {i}");
    }
    // Writing past the end does not COW a new page either.
    assert!(k.write_user(&mm, BASE + 2 * PS, 9).unwrap_err().sigbus);
    assert_eq!(k.read_user(&mm, BASE).unwrap(), 0);
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

/// `even_cows = false` (invalidation's `unmap_mapping_pages`) takes the
/// file's pages out of a private mapping but keeps its COW copies.
#[test]
fn unmap_mapping_pages_without_even_cows_keeps_private_cow_copies() {
    let k = kernel(1);
    let file = k.new_file(4);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 4 * PS, true, false, &file, 0).unwrap();
    k.read_user(&mm, BASE + PS).unwrap();
    k.write_user(&mm, BASE + 2 * PS, 7).unwrap();
    // A file page after the kept copy: the zap goes on past the copy.
    k.read_user(&mm, BASE + 3 * PS).unwrap();
    unmap_mapping_pages(&k, &file, 0, 0, false);
    assert_eq!(mm.rss.load(crate::sync::Ordering::SeqCst), 1, "only the COW copy is left");
    assert_eq!(k.alloc.in_use().anon, 1);
    assert_eq!(k.read_user(&mm, BASE + 2 * PS).unwrap(), 7, "the private copy survived");
    unmap_mapping_pages(&k, &file, 0, 0, true);
    assert_eq!(mm.rss.load(crate::sync::Ordering::SeqCst), 0);
    assert_eq!(k.alloc.in_use().anon, 0);
    assert_eq!(k.read_user(&mm, BASE + 2 * PS).unwrap(), 0, "re-faulted from the (never written) file");
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

/// `truncate_inode_pages` on its own unmaps a folio that is still mapped
/// (`truncate_cleanup_folio` → `unmap_mapping_folio`) and says so; the
/// pages before `lstart` stay.
#[test]
fn truncate_inode_pages_unmaps_a_still_mapped_folio_and_counts_it() {
    let k = kernel(1);
    let file = k.new_file(4);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 4 * PS, true, true, &file, 0).unwrap();
    for i in 0..4 {
        k.write_user(&mm, BASE + i * PS, i + 1).unwrap();
    }
    assert_eq!(truncate_inode_pages(&k, &file, 2 * PS), 2, "pages 2 and 3 were mapped");
    assert_eq!(cached(&file), [0, 1]);
    assert_eq!(mm.rss.load(crate::sync::Ordering::SeqCst), 2);
    assert_eq!(k.san.count(), 0);
    // i_size did not change: the page faults back in, from a disk that
    // never got the data (truncate discarded it).
    assert_eq!(k.read_user(&mm, BASE + 3 * PS).unwrap(), 0);
    assert_eq!(k.read_user(&mm, BASE + PS).unwrap(), 2);
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}

/// `ftruncate` also forgets the backing store past the end.
#[test]
fn do_sys_ftruncate_drops_the_disk_blocks_past_the_end() {
    let k = kernel(1);
    let file = k.new_file(4);
    let mm = k.mm_alloc();
    run_on(&k, 0, &mm);
    mmap_file(&k, &mm, BASE, 4 * PS, true, true, &file, 0).unwrap();
    for i in 0..4 {
        k.write_user(&mm, BASE + i * PS, i + 1).unwrap();
    }
    assert_eq!(crate::ops::writeback_mapping(&k, &file), 4);
    do_sys_ftruncate(&k, &file, 3 * PS);
    assert_eq!(file.disk.lock().keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(cached(&file), [0, 1, 2]);
    assert!(k.read_user(&mm, BASE + 3 * PS).unwrap_err().sigbus);
    do_sys_ftruncate(&k, &file, 0);
    assert!(file.disk.lock().is_empty());
    assert!(cached(&file).is_empty());
    assert_eq!(mm.rss.load(crate::sync::Ordering::SeqCst), 0);
    // As in the kernel, mmap past EOF succeeds; the fault is the SIGBUS.
    mmap_file(&k, &mm, BASE + 16 * PS, 2 * PS, false, true, &file, 0).unwrap();
    assert!(k.read_user(&mm, BASE + 16 * PS).unwrap_err().sigbus);
    // Growing it back: the pages regained read zeros, not the old data.
    do_sys_ftruncate(&k, &file, 2 * PS);
    assert_eq!(k.read_user(&mm, BASE + 17 * PS).unwrap(), 0);
    assert!(k.read_user(&mm, BASE + 3 * PS).unwrap_err().sigbus, "page 3 is still past the end");
    exit_mm(&k, &mm);
    assert_eq!(truncate_inode_pages(&k, &file, 0), 0);
    assert_no_leaks(&k);
    assert_eq!(k.san.count(), 0);
}
