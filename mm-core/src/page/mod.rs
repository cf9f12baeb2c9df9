//! struct page / folio / ptdesc metadata, and the page allocator.
//!
//! One `Page` per RAM frame.  A folio is named by its head frame (`Folio`);
//! tail pages point at the head.  A page-table frame's `struct ptdesc`
//! (`ptdesc::Ptdesc`) overlays its `Page`, as in the kernel: the split
//! page-table lock (`ptl`) and the hugetlb PMD share count
//! (`pt_share_count`) are reached through the descriptor.
//!
//! Refcount rules (as the kernel's): the allocator hands out a folio with
//! refcount 1; `folio_put` to 0 frees it; `folio_try_get` (the speculative
//! grab of GUP-fast) fails on a refcount of 0, so a freed data page can never
//! be pinned — but a *reused* one can, which is what the races are about.

pub mod alloc;
pub mod ptdesc;

pub use ptdesc::{ptdesc_address, ptdesc_page, Ptdesc};

use crate::sync::{AtomicI32, AtomicU32, AtomicU64, Mutex, Ordering};
use crate::types::Pfn;

/// Page flags (subset of enum pageflags).
pub mod flags {
    /// `PG_locked`: the folio lock (`Kernel::folio_lock`), a sleeping lock.
    pub const PG_LOCKED: u64 = 1 << 0;
    /// `PG_dirty`: the page cache holds data the disk does not.
    pub const PG_DIRTY: u64 = 1 << 1;
    /// `PG_writeback`: being written to disk; eviction skips it.
    pub const PG_WRITEBACK: u64 = 1 << 2;
    /// `PG_head`: first frame of a folio of order > 0.
    pub const PG_HEAD: u64 = 1 << 3;
    /// `PG_uptodate`: the contents are valid (read in or filled).
    pub const PG_UPTODATE: u64 = 1 << 4;
    /// `PG_swapbacked`: set on anonymous folios.
    pub const PG_SWAPBACKED: u64 = 1 << 5;
    /// Frame is a page table (PageTable / page_type PGTY_table).
    pub const PG_TABLE: u64 = 1 << 6;
    /// Frame backs a kernel object (an mmu_gather batch page).
    pub const PG_KERNEL: u64 = 1 << 7;
    /// Frame is on the allocator's free lists (PageBuddy / pcp).
    pub const PG_BUDDY: u64 = 1 << 8;
    /// Anonymous folio (mapping has PAGE_MAPPING_ANON).
    pub const PG_ANON: u64 = 1 << 9;
    /// hugetlb folio.
    pub const PG_HUGETLB: u64 = 1 << 10;
    /// `PG_reserved`: a frame the page allocator never manages (the
    /// shared zero page, `empty_zero_page`).
    pub const PG_RESERVED: u64 = 1 << 11;
}

/// The shared zero page's frame (`zero_pfn`, x86's `empty_zero_page`: one
/// page for every address, no colouring).  It is pfn 0, the frame the
/// allocator reserves and never hands out, so it is outside `in_use`
/// accounting and never freed: its generation never changes.  Its
/// `struct page` holds one reference for ever (`PG_reserved`, set up by
/// `Kernel::new` → `init_zero_pfn`); a `FOLL_GET` adds to it, a
/// `FOLL_PIN` does not (`try_grab_folio`: "Don't take a pin on the zero
/// page").
pub const ZERO_PFN: Pfn = Pfn(0);

/// `my_zero_pfn(addr)`: the zero page to map at `addr` (x86: the same one
/// everywhere).
#[inline]
pub fn my_zero_pfn(_addr: u64) -> Pfn {
    ZERO_PFN
}

/// `is_zero_pfn(pfn)`
#[inline]
pub fn is_zero_pfn(pfn: Pfn) -> bool {
    pfn == ZERO_PFN
}

/// `is_zero_folio(folio)`
#[inline]
pub fn is_zero_folio(folio: Folio) -> bool {
    is_zero_pfn(folio.pfn())
}

/// `struct page` (+ the `struct ptdesc` fields when the frame is a table).
pub struct Page {
    /// `page->flags`: the `flags::PG_*` bits, set and cleared atomically.
    pub flags: AtomicU64,
    /// `_refcount`
    pub refcount: AtomicI32,
    /// Number of page-table entries mapping this page (`_mapcount + 1`).
    pub mapcount: AtomicI32,
    /// PMD-level mappings of the whole folio (`_entire_mapcount + 1`, head only).
    pub entire_mapcount: AtomicI32,
    /// Folio order (head only).
    pub order: AtomicU32,
    /// Head frame (self for order-0 and for heads).
    pub head: AtomicU64,
    /// Owner id: address_space id for file pages, mm id for anon, 0 none.
    pub mapping: AtomicU64,
    /// Page offset in the file (`index`), or the anon linear page index.
    pub index: AtomicU64,
    /// ptdesc overlay: `pt_share_count` (hugetlb PMD sharing); reach it
    /// through a `Ptdesc` (`MemMap::pt_share_count`).
    pub(crate) pt_share_count: AtomicI32,
    /// ptdesc overlay: the split page-table lock (`ptl`); reach it through
    /// a `Ptdesc` (`MemMap::ptlock_ptr`, `pgtable::ptl`).
    pub(crate) ptl: Mutex<()>,
}

impl Page {
    pub(crate) fn new() -> Self {
        Self {
            flags: AtomicU64::new(0),
            refcount: AtomicI32::new(0),
            mapcount: AtomicI32::new(0),
            entire_mapcount: AtomicI32::new(0),
            order: AtomicU32::new(0),
            head: AtomicU64::new(0),
            mapping: AtomicU64::new(0),
            index: AtomicU64::new(0),
            pt_share_count: AtomicI32::new(0),
            ptl: Mutex::new(()),
        }
    }

    /// Any of the bits `f` set (`PageDirty`, `folio_test_locked`, ...).
    #[inline]
    pub fn test(&self, f: u64) -> bool {
        self.flags.load(Ordering::SeqCst) & f != 0
    }
    /// Set the bits `f` atomically (`SetPageDirty`, ...).
    #[inline]
    pub fn set(&self, f: u64) {
        self.flags.fetch_or(f, Ordering::SeqCst);
    }
    /// Clear the bits `f` atomically (`ClearPageDirty`, ...).
    #[inline]
    pub fn clear(&self, f: u64) {
        self.flags.fetch_and(!f, Ordering::SeqCst);
    }
    /// Clear `f` and say whether it was set (`TestClearPageDirty`).
    pub fn test_and_clear(&self, f: u64) -> bool {
        self.flags.fetch_and(!f, Ordering::SeqCst) & f != 0
    }
    /// `page_ref_count`: 0 means free.
    pub fn refcount(&self) -> i32 {
        self.refcount.load(Ordering::SeqCst)
    }
    /// `page_mapcount` of this page alone (PTE mappings; not the folio's
    /// PMD mappings).
    pub fn mapcount(&self) -> i32 {
        self.mapcount.load(Ordering::SeqCst)
    }
}

/// A folio, named by its head frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Folio(pub Pfn);

impl Folio {
    /// `folio_pfn`: the head frame.
    pub fn pfn(self) -> Pfn {
        self.0
    }
}

/// The `mem_map`: metadata of every frame.
pub struct MemMap {
    pages: Box<[Page]>,
}

impl MemMap {
    /// Metadata for `nr_frames` frames, all zero (nothing allocated yet).
    pub fn new(nr_frames: usize) -> Self {
        Self { pages: (0..nr_frames).map(|_| Page::new()).collect() }
    }

    /// `pfn_to_page`
    #[inline]
    pub fn page(&self, pfn: Pfn) -> &Page {
        &self.pages[pfn.idx()]
    }

    /// `page_folio`
    #[inline]
    pub fn page_folio(&self, pfn: Pfn) -> Folio {
        Folio(Pfn(self.page(pfn).head.load(Ordering::SeqCst)))
    }

    /// The head page of `f`, where the folio-wide fields (refcount, order,
    /// entire mapcount) live.
    pub fn folio(&self, f: Folio) -> &Page {
        self.page(f.0)
    }

    /// `folio_nr_pages`
    pub fn folio_nr_pages(&self, f: Folio) -> u64 {
        1 << self.folio(f).order.load(Ordering::SeqCst)
    }

    /// `folio_get`
    pub fn folio_get(&self, f: Folio) {
        let old = self.folio(f).refcount.fetch_add(1, Ordering::SeqCst);
        assert!(old > 0, "folio_get on a free folio {:?}", f.0);
    }

    /// `folio_ref_add`
    pub fn folio_ref_add(&self, f: Folio, nr: i32) {
        let old = self.folio(f).refcount.fetch_add(nr, Ordering::SeqCst);
        assert!(old > 0, "folio_ref_add on a free folio {:?}", f.0);
    }

    /// `folio_try_get` (`page_ref_add_unless(page, 1, 0)`): the speculative
    /// reference used by lockless lookups; fails if the folio is free.
    pub fn folio_try_get(&self, f: Folio) -> bool {
        let rc = &self.folio(f).refcount;
        let mut cur = rc.load(Ordering::SeqCst);
        loop {
            if cur <= 0 {
                return false;
            }
            match rc.compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Drop `nr` references; true when that was the last one (the caller
    /// frees the folio: `folio_put` → `__folio_put`).
    #[must_use = "a folio whose refcount hit zero must be freed"]
    pub fn folio_put_testzero(&self, f: Folio, nr: i32) -> bool {
        let old = self.folio(f).refcount.fetch_sub(nr, Ordering::SeqCst);
        assert!(old >= nr, "folio refcount underflow on {:?}: {old} - {nr}", f.0);
        old == nr
    }

    /// `folio_mapcount`: PTE mappings of all pages plus PMD mappings.
    pub fn folio_mapcount(&self, f: Folio) -> i32 {
        let n = self.folio_nr_pages(f);
        let ptes: i32 = (0..n).map(|i| self.page(f.0.add(i)).mapcount()).sum();
        ptes + self.folio(f).entire_mapcount.load(Ordering::SeqCst)
    }

    /// `folio_mapped`
    pub fn folio_mapped(&self, f: Folio) -> bool {
        self.folio_mapcount(f) > 0
    }

    /// Add `nr` PTE mappings starting at page `pfn` (`folio_add_*_rmap_ptes`).
    pub fn add_rmap_ptes(&self, pfn: Pfn, nr: u64) {
        for i in 0..nr {
            self.page(pfn.add(i)).mapcount.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Remove `nr` PTE mappings starting at page `pfn` (`folio_remove_rmap_ptes`).
    pub fn remove_rmap_ptes(&self, pfn: Pfn, nr: u64) {
        for i in 0..nr {
            let old = self.page(pfn.add(i)).mapcount.fetch_sub(1, Ordering::SeqCst);
            assert!(old > 0, "mapcount underflow on {:?}", pfn.add(i));
        }
    }

    /// `folio_add_*_rmap_pmd`
    pub fn add_rmap_pmd(&self, f: Folio) {
        self.folio(f).entire_mapcount.fetch_add(1, Ordering::SeqCst);
    }

    /// `folio_remove_rmap_pmd`
    pub fn remove_rmap_pmd(&self, f: Folio) {
        let old = self.folio(f).entire_mapcount.fetch_sub(1, Ordering::SeqCst);
        assert!(old > 0, "entire mapcount underflow on {:?}", f.0);
    }

    /// `init_zero_pfn`: make pfn 0's `struct page` the shared zero page's:
    /// reserved, one reference that is never dropped, no mapping.
    pub fn init_zero_pfn(&self) {
        let p = self.page(ZERO_PFN);
        p.flags.store(flags::PG_RESERVED, Ordering::SeqCst);
        p.head.store(ZERO_PFN.0, Ordering::SeqCst);
        p.refcount.store(1, Ordering::SeqCst);
    }

    /// Frames of emulated RAM (`max_pfn`).
    pub fn nr_frames(&self) -> usize {
        self.pages.len()
    }
}
