//! The callers of the gather: page faults, zap (unmap_vmas / zap_pte_range),
//! free_pgtables, munmap, exit_mmap, fork (dup_mmap + COW), madvise
//! (MADV_DONTNEED), mprotect and writeback (folio_mkclean).

pub mod fault;
