//! The emulator's checkers: ghost state and checks that watch the modelled
//! kernel, never part of it (no kernel code path reads their results).
//! The kernel's *own* checks, ported (VM_BUG_ON / VM_WARN_ON), are
//! `debug_vm`; the hooks and knobs that steer a run are `inject`.
//!
//! What each one guarantees, what it costs, and when it is on:
//!
//! - `sanitizer` — the violation records every checker reports to
//!   (`Violation`, `ViolationKind`; the kebab names are the JSON report's)
//!   and the frame-generation check they share (`Sanitizer::check_gen`).
//!   Every use of a freed or reused frame through a cached pointer is
//!   recorded: a TLB hit (`hw::mmu`), a walk from a paging-structure-cache
//!   entry, GUP-fast reading a table through its snapshot of the entry
//!   above (`ops::gup`), a secondary TLB (`iommu`); a walk of an mm from a
//!   walk-cache entry of a PMD table that mm unshared (its PUD cleared, the
//!   unshare flush done: `MmuGather::tlb_flush_mmu_tlbonly` reports it)
//!   and no longer links, while the table lives on as another mm's
//!   (`walk-into-unshared-table`: ghost state of (mm, table, generation),
//!   at most 65536 pairs, and a look at the mm's page tables to confirm);
//!   and, with `KernelConfig::strict_free_check`, a frame freed while a CPU
//!   running the mm still caches it (`Kernel::free_folio`).  With every fix on a
//!   run has none.  Always on: a TLB hit costs one generation load and
//!   compare; recording takes a lock (at most 256 records are kept, the
//!   count goes on).  `set_panic(true)` (loom models) panics on the first.
//! - `gup_oracle` — mapping history per (mm, va): a page GUP returns must
//!   have been mapped at that address at some instant between its grab and
//!   the end of the call (`gup-oracle`; the module doc has the exact rule).
//!   On with `KernelConfig::gup_oracle` (off by default): then every
//!   page-table store (`pgtable::{write, exchange, get_and_clear}`) runs
//!   under the oracle's lock.  Off, each store pays one branch.
//! - `dirty_oracle` — lost dirty data: every recorded user store to a file
//!   word is on the backing store or in a page-cache page that is still
//!   dirty (`lost-dirty-data`).  On when a test or scenario creates a
//!   `DirtyDataOracle` for a file and records its stores; `check` runs
//!   with no writer on the file.
//! - `stale_after_zap` — post-syscall coherence: when MADV_DONTNEED
//!   returns, no CPU running the mm caches a translation of the range whose
//!   frame differs from the PTE (`stale-after-zap`).  Always on, at the
//!   return of `madvise_dontneed`: one pass over each such CPU's TLB.
//! - `consistency` — refcounts, mapcounts and rss agree with the page
//!   tables and page caches (`check_consistency`, an `Err` naming the
//!   first mismatch, not a violation).  Called by tests and scenarios only,
//!   when quiescent (no gather in flight); it walks every page table.
//!
//! Arrows: `sanitizer` and `gup_oracle` are called from below the kernel
//! (`hw`, `pgtable`) and import neither `kernel` nor `pgtable`: they see
//! the hardware (`Hw`) and record to the `Sanitizer`.  The other three read
//! the kernel's state through `&Kernel` and are called from `ops` and tests.

pub(crate) mod consistency;
pub(crate) mod dirty_oracle;
pub(crate) mod gup_oracle;
pub(crate) mod sanitizer;
pub(crate) mod stale_after_zap;

pub use consistency::check_consistency;
pub use dirty_oracle::DirtyDataOracle;
pub use gup_oracle::GupOracle;
pub use sanitizer::{Sanitizer, Violation, ViolationKind};
