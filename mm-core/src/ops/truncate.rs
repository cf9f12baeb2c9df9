//! Truncation of a file (mm/truncate.c and mm/memory.c, v6.12):
//! `truncate_setsize` → `truncate_pagecache` → `unmap_mapping_range` →
//! `unmap_mapping_pages` → `unmap_mapping_range_tree` →
//! `unmap_mapping_range_vma` → `zap_page_range_single`, and
//! `truncate_inode_pages` → `truncate_inode_pages_range` →
//! `truncate_inode_folio` (`truncate_cleanup_folio`: `unmap_mapping_folio`
//! of a folio still mapped, then `filemap_remove_folio`).
//!
//! Contract:
//! - `unmap_mapping_range` walks the file's i_mmap under `i_mmap_rwsem`
//!   held for read and zaps, in every VMA mapping a page of the hole, the
//!   PTEs of those pages — each VMA with its own gather on *that VMA's* mm,
//!   so the TLB flush (and the IPIs to the CPUs running that mm) is done
//!   before the next VMA is looked at.  With `even_cows` false the private
//!   COW copies (anonymous folios in a private file mapping) stay.
//! - `truncate_pagecache(newsize)` unmaps everything from the first page
//!   past `newsize` **including the COW copies** (`even_cows`), removes the
//!   page cache from there (`truncate_inode_pages`), then unmaps once more:
//!   a private page COWed between the first unmap and the page-cache removal
//!   would otherwise outlive the file's end.
//! - `truncate_setsize` lowers `i_size` before any of that: a fault at or
//!   past the new end is then VM_FAULT_SIGBUS (`filemap_fault`).
//! - Sizes are page multiples (the model has no partial folio to zero:
//!   `truncate_inode_partial_folio` is not modelled).
//!
//! Not modelled: the folio lock across a fault's PTE install (a fault that
//! found its folio before the removal can still map it after the second
//! unmap; the kernel's `finish_fault` holds the folio lock and rechecks
//! `folio->mapping`), the `invalidate_lock`, and hugetlbfs, which truncates
//! through `hugetlb_vmtruncate` (a hugetlb VMA in the walk is refused).

use super::zap::{zap_page_range_single, ZapDetails};
use crate::check::stale_after_zap::sanitize_stale_after_zap;
use crate::kernel::Kernel;
use crate::mm::{vm, vma_interval_tree_foreach, AddressSpace, Backing, IMmapEntry, Vma};
use crate::page::{flags, Folio};
use crate::sync::Arc;

/// `unmap_mapping_range(mapping, holebegin, holelen, even_cows)`: unmap the
/// file bytes [holebegin, holebegin + holelen) — rounded out to whole pages
/// — from every mapping of the file; `holelen == 0` means to the end of the
/// file.  `even_cows`: private COW copies go too (truncate); otherwise
/// only the file's own pages (invalidation).
pub fn unmap_mapping_range(k: &Kernel, mapping: &Arc<AddressSpace>, holebegin: u64, holelen: u64, even_cows: bool) {
    let shift = k.cfg.geometry.page_shift;
    let ps = k.cfg.geometry.page_size();
    let hba = holebegin >> shift;
    let hlen = holelen.wrapping_add(ps - 1) >> shift;
    unmap_mapping_pages(k, mapping, hba, hlen, even_cows);
}

/// `unmap_mapping_pages(mapping, start, nr, even_cows)`: the same in file
/// pages, [start, start + nr); `nr == 0` (or an overflow) means to the end.
pub fn unmap_mapping_pages(k: &Kernel, mapping: &Arc<AddressSpace>, start: u64, nr: u64, even_cows: bool) {
    let details = ZapDetails { even_cows };
    let first_index = start;
    let mut last_index = start.wrapping_add(nr).wrapping_sub(1);
    if last_index < first_index {
        last_index = u64::MAX;
    }
    let i_mmap = mapping.i_mmap.read(); // i_mmap_lock_read
    if !i_mmap.is_empty() {
        unmap_mapping_range_tree(k, mapping, &i_mmap, first_index, last_index, &details);
    }
}

/// `unmap_mapping_folio(folio)`: unmap one locked page-cache folio from
/// every mapping of the file, keeping private COW copies
/// (`even_cows = false`).  What `truncate_cleanup_folio` does to a folio
/// that is still mapped when the page cache drops it.
pub fn unmap_mapping_folio(k: &Kernel, mapping: &Arc<AddressSpace>, folio: Folio) {
    debug_assert!(k.mem.folio(folio).test(flags::PG_LOCKED), "unmap_mapping_folio of an unlocked folio");
    let first_index = k.mem.folio(folio).index.load(crate::sync::Ordering::SeqCst);
    let last_index = first_index + k.mem.folio_nr_pages(folio) - 1;
    let details = ZapDetails { even_cows: false };
    let i_mmap = mapping.i_mmap.read();
    if !i_mmap.is_empty() {
        unmap_mapping_range_tree(k, mapping, &i_mmap, first_index, last_index, &details);
    }
}

/// `unmap_mapping_range_tree`: for every VMA of the i_mmap tree that maps a
/// file page in [first_index, last_index] (`vma_interval_tree_foreach`),
/// the part of it mapping those pages goes (`unmap_mapping_range_vma`).
fn unmap_mapping_range_tree(
    k: &Kernel,
    mapping: &Arc<AddressSpace>,
    i_mmap: &[IMmapEntry],
    first_index: u64,
    last_index: u64,
    details: &ZapDetails,
) {
    let shift = k.cfg.geometry.page_shift;
    for e in vma_interval_tree_foreach(i_mmap, first_index, last_index, shift) {
        let (vba, vea) = (e.pgoff, e.last_pgoff(shift));
        assert!(
            e.flags & vm::VM_HUGETLB == 0,
            "unmap_mapping_range of a hugetlbfs file: hugetlbfs truncates through hugetlb_vmtruncate (not modelled)"
        );
        let zba = first_index.max(vba);
        let zea = last_index.min(vea);
        // The i_mmap entry is the VMA as the walk sees it (vm_mm, vm_start,
        // vm_end, vm_pgoff, vm_flags, vm_file).
        let vma = Vma {
            start: e.start,
            end: e.end,
            flags: e.flags,
            backing: Backing::File { mapping: mapping.clone(), pgoff: e.pgoff },
        };
        unmap_mapping_range_vma(k, e, &vma, e.address_of(zba, shift), e.address_of(zea + 1, shift), details);
    }
}

/// `unmap_mapping_range_vma`: `zap_page_range_single` of [start, end) of
/// one VMA — its own gather on that VMA's mm.
fn unmap_mapping_range_vma(k: &Kernel, e: &IMmapEntry, vma: &Vma, start: u64, end: u64, details: &ZapDetails) {
    zap_page_range_single(k, &e.mm, vma, start, end, Some(details));
}

/// `truncate_inode_pages_range(mapping, lstart, lend)`: drop the page-cache
/// folios of the bytes [lstart, lend] (`lend` inclusive; `u64::MAX` is the
/// kernel's -1, "to the end of the file").  Each folio is locked
/// (`find_lock_entries` / the second pass's `folio_lock`), rechecked to be
/// still this file's, unmapped if something still maps it
/// (`truncate_cleanup_folio` → `unmap_mapping_folio`, COW copies kept),
/// its dirtiness cancelled (`folio_cancel_dirty`: the data is gone), and
/// removed (`filemap_remove_folio`: the page cache's reference dropped).
/// The kernel's first pass only trylocks and skips folios locked or under
/// writeback, its second pass waits for them; one pass with a waiting lock
/// ends in the same state.
///
/// Returns how many folios were still mapped when reached — and unmapped
/// here.  0 after `truncate_pagecache`'s first unmap, and 0 at a teardown
/// after every mm mapping the file exited (a non-zero count there is a
/// leaked mapping).
pub fn truncate_inode_pages_range(k: &Kernel, mapping: &Arc<AddressSpace>, lstart: u64, lend: u64) -> usize {
    let shift = k.cfg.geometry.page_shift;
    let ps = k.cfg.geometry.page_size();
    assert!(
        lstart.is_multiple_of(ps) && (lend == u64::MAX || (lend + 1).is_multiple_of(ps)),
        "truncate_inode_pages_range({lstart:#x}, {lend:#x}): partial folios are not modelled"
    );
    let start = lstart.div_ceil(ps);
    let end = if lend == u64::MAX { u64::MAX } else { (lend + 1) >> shift };
    if start >= end {
        return 0;
    }
    // find_lock_entries: look the folios up under the i_pages lock, each
    // with a reference (folio_try_get) so that none is freed under us.
    let batch: Vec<(u64, Folio)> = {
        let pages = mapping.i_pages.lock();
        pages
            .range(start..end)
            .map(|(i, f)| {
                k.mem.folio_get(*f);
                (*i, *f)
            })
            .collect()
    };
    let mut was_mapped = 0;
    for (index, folio) in batch {
        k.folio_lock(folio);
        // truncate_inode_folio: `folio->mapping != mapping` — removed
        // (evicted, truncated) while we waited for the lock.
        if mapping.i_pages.lock().get(&index) == Some(&folio) {
            // folio_wait_writeback: the model's writeback runs under the
            // folio lock, so none is in flight once we hold it.
            if k.mem.folio_mapped(folio) {
                was_mapped += 1;
                unmap_mapping_folio(k, mapping, folio);
            }
            k.mem.folio(folio).clear(flags::PG_DIRTY); // folio_cancel_dirty
            mapping.i_pages.lock().remove(&index); // filemap_remove_folio
            k.folio_put(folio); // the page cache's reference
        }
        k.folio_unlock(folio);
        k.folio_put(folio); // folio_batch_release
    }
    was_mapped
}

/// `truncate_inode_pages(mapping, lstart)`: `truncate_inode_pages_range`
/// from `lstart` to the end of the file.  Returns the folios that were
/// still mapped (see `truncate_inode_pages_range`).
pub fn truncate_inode_pages(k: &Kernel, mapping: &Arc<AddressSpace>, lstart: u64) -> usize {
    truncate_inode_pages_range(k, mapping, lstart, u64::MAX)
}

/// `truncate_pagecache(inode, newsize)`: unmap every page from the first one
/// past `newsize` (bytes), COW copies too, then drop the page cache there,
/// then unmap again (for the private pages COWed in between).  The new
/// `i_size` must already be written.  Returns `truncate_inode_pages`'
/// still-mapped count.
pub fn truncate_pagecache(k: &Kernel, mapping: &Arc<AddressSpace>, newsize: u64) -> usize {
    let holebegin = newsize.next_multiple_of(k.cfg.geometry.page_size());
    unmap_mapping_range(k, mapping, holebegin, 0, true);
    let was_mapped = truncate_inode_pages(k, mapping, newsize);
    unmap_mapping_range(k, mapping, holebegin, 0, true);
    was_mapped
}

/// `truncate_setsize(inode, newsize)`: write the new `i_size` (bytes, a page
/// multiple) first — faults past it now fail — then `truncate_pagecache`.
/// A file grows back only up to `nr_pages` (`mmap` refuses past it), and
/// `pagecache_isize_extended` has nothing to do for a page-multiple size:
/// the pages regained read zeros (their cache and blocks were dropped).
pub fn truncate_setsize(k: &Kernel, mapping: &Arc<AddressSpace>, newsize: u64) -> usize {
    let shift = k.cfg.geometry.page_shift;
    assert!(
        newsize.is_multiple_of(k.cfg.geometry.page_size()) && newsize >> shift <= mapping.nr_pages,
        "truncate_setsize({newsize:#x}): a page multiple up to the file's {} pages",
        mapping.nr_pages
    );
    mapping.i_size_write_pages(newsize >> shift);
    truncate_pagecache(k, mapping, newsize)
}

/// `ftruncate(fd, length)`: `do_sys_ftruncate` → `do_truncate` →
/// `notify_change` → the filesystem's `->setattr`, which calls
/// `truncate_setsize` and then frees the file's blocks past the new end
/// (here: forgets the backing store's pages from there, so the data is not
/// read back if the file were mapped again).
pub fn do_sys_ftruncate(k: &Kernel, mapping: &Arc<AddressSpace>, length: u64) {
    truncate_setsize(k, mapping, length);
    let shift = k.cfg.geometry.page_shift;
    let from = length >> shift;
    mapping.disk.lock().retain(|pgoff, _| *pgoff < from);
    // Post-syscall coherence, as madvise's: no CPU running an mm that maps
    // the file may still reach a page past the new end (`stale-after-zap`).
    let past_eof: Vec<(Arc<crate::mm::MmStruct>, u64, u64)> =
        vma_interval_tree_foreach(&mapping.i_mmap.read(), from, u64::MAX, shift)
            .map(|e| (e.mm.clone(), e.address_of(from.max(e.pgoff), shift), e.end))
            .collect();
    for (mm, start, end) in past_eof {
        sanitize_stale_after_zap(k, &mm, start, end);
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
