//! `struct address_space`: the page cache of one file, its i_mmap (who maps
//! it, for rmap walks such as folio_mkclean) and a backing store ("disk").

use super::MmStruct;
use crate::page::Folio;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, RwLock};
use std::collections::BTreeMap;

/// One mapping of the file: (mm, VMA start, VMA end, pgoff at start, and
/// the VMA's `vm_flags`, which hugetlb PMD sharing compares:
/// `page_table_shareable`).
#[derive(Clone)]
pub struct IMmapEntry {
    /// The mapping's `vma->vm_mm`.
    pub mm: Arc<MmStruct>,
    /// `vm_start` of the (piece of the) VMA.
    pub start: u64,
    /// `vm_end`.
    pub end: u64,
    /// `vm_pgoff`: the file page mapped at `start`.
    pub pgoff: u64,
    /// `vm_flags`.
    pub flags: u64,
}

impl IMmapEntry {
    /// The last file page the mapping maps (`vma_last_pgoff`).
    pub fn last_pgoff(&self, page_shift: u32) -> u64 {
        self.pgoff + ((self.end - self.start) >> page_shift) - 1
    }

    /// The user address of file page `pgoff` in this mapping
    /// (`vma_address`); the caller found the mapping by that page.
    pub fn address_of(&self, pgoff: u64, page_shift: u32) -> u64 {
        self.start + ((pgoff - self.pgoff) << page_shift)
    }
}

/// `vma_interval_tree_foreach(vma, &mapping->i_mmap, first, last)`
/// (mm/interval_tree.c): the mappings of a file page in [first, last].
pub fn vma_interval_tree_foreach(
    i_mmap: &[IMmapEntry],
    first: u64,
    last: u64,
    page_shift: u32,
) -> impl Iterator<Item = &IMmapEntry> {
    i_mmap.iter().filter(move |e| e.pgoff <= last && e.last_pgoff(page_shift) >= first)
}

/// `struct address_space` of one file (`inode->i_mapping`).
pub struct AddressSpace {
    /// Unique id (`Kernel::next_id`, shared with mm ids): names the file in
    /// oracles and reports.
    pub id: u64,
    /// The file's size in pages when it was made: the most it ever holds
    /// (the model never extends a file; `mmap` refuses a mapping past it).
    pub nr_pages: u64,
    /// `inode->i_size >> PAGE_SHIFT`: the current size in pages (sizes are
    /// page multiples here).  Starts at `nr_pages`; `truncate_setsize`
    /// lowers it, and a fault at or past it is VM_FAULT_SIGBUS
    /// (`filemap_fault`).  Read it with `i_size_read_pages`.
    #[doc(alias = "i_size")]
    pub i_size_pages: AtomicU64,
    /// `i_pages`: page index → folio (holding one reference).
    pub i_pages: Mutex<BTreeMap<u64, Folio>>,
    /// `i_mmap` under `i_mmap_rwsem`: this lock *is* the i_mmap_rwsem
    /// (`i_mmap_lock_read` = `.read()`, `i_mmap_lock_write` = `.write()`).
    /// hugetlb holds it for write across PMD unsharing and its flush
    /// (`huge_pmd_unshare_flush`), so an unshared table cannot be reused
    /// before every walker is gone.
    #[doc(alias = "i_mmap_rwsem")]
    pub i_mmap: RwLock<Vec<IMmapEntry>>,
    /// Backing store: page index → first data word written back.
    pub disk: Mutex<BTreeMap<u64, Vec<u64>>>,
}

impl AddressSpace {
    /// An empty, unmapped file of `nr_pages` pages with nothing on disk
    /// (`Kernel::new_file` picks the id).
    pub fn new(id: u64, nr_pages: u64) -> Self {
        Self {
            id,
            nr_pages,
            i_size_pages: AtomicU64::new(nr_pages),
            i_pages: Mutex::new(BTreeMap::new()),
            i_mmap: RwLock::new(Vec::new()),
            disk: Mutex::new(BTreeMap::new()),
        }
    }

    /// `i_size_read(inode) >> PAGE_SHIFT`
    pub fn i_size_read_pages(&self) -> u64 {
        self.i_size_pages.load(Ordering::SeqCst)
    }

    /// `i_size_write(inode, pages << PAGE_SHIFT)`
    pub fn i_size_write_pages(&self, pages: u64) {
        self.i_size_pages.store(pages, Ordering::SeqCst);
    }

    /// `vma_interval_tree_insert`
    pub fn i_mmap_insert(&self, e: IMmapEntry) {
        self.i_mmap.write().push(e);
    }

    /// `vma_interval_tree_remove` for [start, end) of `mm`.
    pub fn i_mmap_remove(&self, mm_id: u64, start: u64, end: u64, page_shift: u32) {
        let mut v = self.i_mmap.write();
        let mut out = Vec::new();
        for e in v.drain(..) {
            if e.mm.id != mm_id || e.end <= start || e.start >= end {
                out.push(e);
                continue;
            }
            if e.start < start {
                out.push(IMmapEntry { end: start, ..e.clone() });
            }
            if e.end > end {
                let shift = (end - e.start) >> page_shift;
                out.push(IMmapEntry { start: end, pgoff: e.pgoff + shift, ..e.clone() });
            }
        }
        *v = out;
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests {
    use super::*;
    use crate::config::KernelConfig;
    use crate::kernel::Kernel;

    const PS: u64 = 4096;
    const SHIFT: u32 = 12;

    fn entry(mm: &Arc<MmStruct>, start_page: u64, pages: u64, pgoff: u64) -> IMmapEntry {
        IMmapEntry { mm: mm.clone(), start: start_page * PS, end: (start_page + pages) * PS, pgoff, flags: 0 }
    }

    fn spans(v: &[IMmapEntry]) -> Vec<(u64, u64, u64)> {
        v.iter().map(|e| (e.start / PS, e.end / PS, e.pgoff)).collect()
    }

    /// `vma_last_pgoff`, `vma_address` and the interval query: a mapping of
    /// file pages [pgoff, pgoff + n) at `start` matches a query [first,
    /// last] exactly when the two overlap, its boundary pages included.
    #[test]
    fn the_interval_query_matches_exactly_the_mappings_of_the_pages_asked_for() {
        let k = Kernel::new_sync(KernelConfig::default(), 1);
        let mm = k.mm_alloc();
        // Pages 100..110 of the file at page 16 of the address space.
        let e = entry(&mm, 16, 10, 100);
        assert_eq!(e.last_pgoff(SHIFT), 109);
        assert_eq!(e.address_of(100, SHIFT), 16 * PS);
        assert_eq!(e.address_of(107, SHIFT), 23 * PS);
        let other = entry(&mm, 64, 4, 0); // file pages 0..4
        let i_mmap = [e, other];
        let hits =
            |first, last| vma_interval_tree_foreach(&i_mmap, first, last, SHIFT).map(|e| e.pgoff).collect::<Vec<_>>();
        assert_eq!(hits(100, 100), [100], "its first page");
        assert_eq!(hits(109, 109), [100], "its last page");
        assert_eq!(hits(110, 200), [] as [u64; 0], "just past it");
        assert_eq!(hits(4, 99), [] as [u64; 0], "between the two");
        assert_eq!(hits(3, 100), [100, 0], "a range over both ends");
        assert_eq!(hits(0, u64::MAX), [100, 0]);
    }

    /// `vma_interval_tree_remove` of part of a mapping (a munmap of its
    /// middle): the pieces left keep their own start, end and file offset.
    #[test]
    fn removing_the_middle_of_a_mapping_leaves_both_ends_with_their_offsets() {
        let k = Kernel::new_sync(KernelConfig::default(), 1);
        let (mm, other) = (k.mm_alloc(), k.mm_alloc());
        let f = AddressSpace::new(1, 64);
        f.i_mmap_insert(entry(&mm, 16, 16, 8));
        f.i_mmap_insert(entry(&other, 16, 16, 8));
        f.i_mmap_remove(mm.id, 20 * PS, 24 * PS, SHIFT);
        let v = f.i_mmap.read();
        let mine: Vec<_> = v.iter().filter(|e| e.mm.id == mm.id).cloned().collect();
        assert_eq!(spans(&mine), [(16, 20, 8), (24, 32, 16)]);
        let theirs: Vec<_> = v.iter().filter(|e| e.mm.id == other.id).cloned().collect();
        assert_eq!(spans(&theirs), [(16, 32, 8)], "another mm's mapping is not touched");
    }
}
