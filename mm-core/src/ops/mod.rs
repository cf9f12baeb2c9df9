//! The callers of the gather: page faults, zap (unmap_vmas / zap_pte_range),
//! free_pgtables, munmap, exit_mmap, fork (dup_mmap + COW), madvise
//! (MADV_DONTNEED), mprotect, writeback (folio_mkclean) and truncation
//! (unmap_mapping_range, truncate_pagecache); and user accesses, which
//! take the page-fault path (`uaccess`).

pub mod fault;
pub(crate) mod fork;
pub mod gup;
pub(crate) mod huge_memory;
pub mod hugetlb;
pub mod khugepaged;
pub(crate) mod madvise;
pub(crate) mod mmap;
pub(crate) mod mprotect;
pub mod pfnmap;
pub mod truncate;
pub(crate) mod uaccess;
pub mod writeback;
pub(crate) mod zap;

pub use fork::dup_mmap;
pub use hugetlb::mmap_hugetlb;
pub use madvise::madvise_dontneed;
pub use mmap::{exit_mm, exit_mmap, mmap_anon, mmap_file, mmdrop, munmap, MmError};
pub use mprotect::mprotect;
pub use pfnmap::mmap_pfnmap;
pub use truncate::{truncate_inode_pages, truncate_setsize, unmap_mapping_range};
pub use uaccess::Segv;
pub use writeback::{folio_mkclean, writeback_mapping};

#[cfg(all(test, not(mmemu_loom)))]
pub(crate) mod test_util;
#[cfg(all(test, not(mmemu_loom)))]
mod tests;
#[cfg(all(test, not(mmemu_loom)))]
mod tests_race_features;
#[cfg(all(test, not(mmemu_loom)))]
mod tests_zero_page;
