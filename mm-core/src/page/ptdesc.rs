//! `struct ptdesc` (include/linux/mm_types.h, include/linux/mm.h;
//! bf2d4334f72e "mm: add utility functions for ptdesc", v6.12 form with
//! `pagetable_alloc_noprof`).
//!
//! A page-table page's descriptor.  In the kernel it overlays the table's
//! `struct page` (TABLE_MATCH static asserts in mm_types.h); here too: the
//! split PTL (`ptl`) and the hugetlb PMD share count (`pt_share_count`)
//! live in the frame's `Page`, and are reached through a `Ptdesc` —
//! `ptlock_ptr` and `MemMap::pt_share_count`.
//!
//! Invariant (in the type): a `Ptdesc` names a frame that is a page table
//! (PG_table, `PageKind::PageTable`).  One is made only by `pagetable_alloc`
//! or by the accessors the kernel uses to get from a page or a table address
//! to its descriptor (`page_ptdesc`, `virt_to_ptdesc`), which check it in
//! debug builds; it is a `Copy` wrapper of the pfn, as cheap as the pfn.

use super::{flags, MemMap, Page};
use crate::sync::{AtomicI32, Mutex};
use crate::types::Pfn;

/// `struct ptdesc *`: a page-table page's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Ptdesc(Pfn);

impl Ptdesc {
    /// `page_to_pfn(ptdesc_page(pt))`
    #[inline]
    pub fn pfn(self) -> Pfn {
        self.0
    }
}

/// `ptdesc_page`: the descriptor's page (its frame).
#[inline]
pub fn ptdesc_page(pt: Ptdesc) -> Pfn {
    pt.0
}

/// `ptdesc_address`: the table itself, as `pgtable::{read, write, slot}`
/// address it (a table is named by its frame in this model).
#[inline]
pub fn ptdesc_address(pt: Ptdesc) -> Pfn {
    pt.0
}

impl MemMap {
    /// `page_ptdesc`: the descriptor of the page-table page `page`.
    #[inline]
    pub fn page_ptdesc(&self, page: Pfn) -> Ptdesc {
        debug_assert!(self.page(page).test(flags::PG_TABLE), "page_ptdesc of {page:?}, which is not a page table");
        Ptdesc(page)
    }

    /// `virt_to_ptdesc`: the descriptor of the table at `table` (its
    /// address: the frame, here).
    #[inline]
    pub fn virt_to_ptdesc(&self, table: Pfn) -> Ptdesc {
        self.page_ptdesc(table)
    }

    /// `ptdesc` → its `struct page` fields.
    #[inline]
    fn pt_page(&self, pt: Ptdesc) -> &Page {
        self.page(pt.0)
    }

    /// `ptlock_ptr(ptdesc)`: the split page-table lock (`ptdesc->ptl`,
    /// USE_SPLIT_PTE_PTLOCKS / USE_SPLIT_PMD_PTLOCKS).
    #[inline]
    pub fn ptlock_ptr(&self, pt: Ptdesc) -> &Mutex<()> {
        &self.pt_page(pt).ptl
    }

    /// `ptdesc->pt_share_count` (CONFIG_HUGETLB_PMD_PAGE_TABLE_SHARING,
    /// 59d9094df3d7): how many other mms share this PMD table.
    #[inline]
    pub fn pt_share_count(&self, pt: Ptdesc) -> &AtomicI32 {
        &self.pt_page(pt).pt_share_count
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests {
    use crate::config::KernelConfig;
    use crate::kernel::Kernel;
    use crate::page::alloc::PageKind;
    use crate::pgtable::{pagetable_alloc, pagetable_free};
    use crate::stats::Stat;
    use crate::sync::Ordering;

    /// `pagetable_alloc` is one compound allocation of any order (`__GFP_COMP`)
    /// and `pagetable_free` the one free for it; the accessors lead to the
    /// same descriptor, whose PTL and share count are the frame's.
    #[test]
    fn pagetable_alloc_and_free_are_one_compound_allocation() {
        let k = Kernel::new_sync(KernelConfig::default(), 1);
        let base = k.alloc.in_use().page_table;
        let pt0 = pagetable_alloc(&k, 0).unwrap();
        let pt2 = pagetable_alloc(&k, 2).unwrap();
        assert_eq!(k.alloc.in_use().page_table, base + 1 + 4);
        let head = k.mem.page(pt2.pfn());
        assert!(head.test(crate::page::flags::PG_HEAD), "order 2: a compound page");
        assert_eq!(k.mem.page_folio(pt2.pfn().add(3)).pfn(), pt2.pfn());
        assert_eq!(k.mem.virt_to_ptdesc(super::ptdesc_address(pt0)), pt0);
        assert_eq!(k.mem.page_ptdesc(super::ptdesc_page(pt0)), pt0);
        assert_eq!(k.hw.ram.word(super::ptdesc_address(pt0), 7).load(Ordering::SeqCst), 0, "zeroed");
        k.mem.pt_share_count(pt0).store(3, Ordering::SeqCst);
        assert_eq!(k.mem.page(pt0.pfn()).pt_share_count.load(Ordering::SeqCst), 3, "held in the table's page");
        drop(k.mem.ptlock_ptr(pt0).lock());
        pagetable_free(&k, pt2);
        pagetable_free(&k, pt0);
        assert_eq!(k.alloc.in_use().page_table, base, "both allocations, all 5 frames, returned");
        assert_eq!(k.stats.get(Stat::TablesFreed), 2);
        assert_eq!(k.alloc.in_use().kernel + k.alloc.in_use().anon, 0);
        let _ = PageKind::PageTable;
    }
}
