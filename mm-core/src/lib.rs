#![warn(missing_docs)]

//! mm-core: the model.  Emulated MMU hardware (`hw`) and a port of the Linux
//! kernel's TLB-invalidation machinery: the mmu_gather (`gather`), page-table
//! freeing through RCU (`rcu`), the arch flush policies (`arch`, reached
//! through the kernel's names in `tlb`), and the single-address-space
//! operations that run through them (`ops`).
//!
//! What watches the model is not kernel code: the checkers (`check`:
//! sanitizer, oracles, consistency) and the hooks and test knobs that
//! steer it (`inject`).
//!
//! mm-core has no threads of its own: the machine (emu-cpu) or the
//! synchronous reference `SyncSmp` drives it through the `Smp` seam.
//!
//! The ordering the whole subsystem exists for (include/asm-generic/tlb.h):
//! **unhook → invalidate → free.**  Clear entries under the page-table lock,
//! flush every TLB / walk cache that may hold them, and only then free the
//! pages and page tables (tables after an RCU grace period or a synchronous
//! IPI).  The sanitizer (frame generations) catches every violation.
//!
//! # Crate map
//!
//! Public modules (what emu-cpu, workloads, loom-tests and benches use):
//!
//! - `kernel` — `Kernel`, one machine's kernel state and services
//!   (allocate / free folios, `local_irq_save`, `mm_alloc`, RCU callbacks);
//!   `HostMemory`, what a configuration costs the host.
//! - `config` — `KernelConfig`: arch profile, kernel release, geometry, TLB
//!   shape, RAM, and `Fixes`, one switch per historical fix.
//! - `ops` — the syscalls and kernel paths a workload drives: `mmap_anon`,
//!   `mmap_file`, `munmap`, `exit_mm`, `dup_mmap`, `madvise_dontneed`,
//!   `mprotect`, writeback; `fault` (`handle_mm_fault`), `gup` (GUP-fast and
//!   the slow path), `hugetlb` (PMD sharing), `khugepaged` (collapse,
//!   retract), `writeback` (msync / fadvise eviction).  User loads and
//!   stores are `Kernel::{user_access, read_user, write_user}`.
//! - `tlb` — the flush and context-switch names generic mm code calls
//!   (`switch_mm`, `enter_lazy_tlb`, `flush_tlb_mm_range`, ...), each handed
//!   to the arch profile.
//! - `gather` — the mmu_gather (`MmuGather`), its batch constants and
//!   `tlb_remove_table_sync_one`.
//! - `mm` — `MmStruct` (mmap_lock, mm_cpumask, tlb_flush_pending, tlb_gen),
//!   `Vma`, `vm::VM_*`, `AddressSpace`.
//! - `page` — `struct page` / folio / ptdesc metadata (`Folio`, `MemMap`,
//!   `Ptdesc`, `flags::PG_*`) and the page allocator (`alloc`: `PageKind`,
//!   `InUse`).
//! - `pgtable` — page tables and entry access (`read`, `write`,
//!   `lookup_table`, `pagetable_alloc`, `pagetable_free`).
//! - `hw` — what the hardware does by itself: entry format (`pte`), the
//!   MMU (`mmu`: `Hw`, `Access`), RAM with frame generations, per-CPU TLB
//!   and paging-structure cache (`Ram`, `Tlb` re-exported).
//! - `smp` — the `Smp` seam to the machine and the reference `SyncSmp` /
//!   `ModelSmp` (loom); `smp_call_function`.
//! - `iommu` — an SVA device behind an IOMMU (`iommu_sva_bind_device`).
//! - `check` — the emulator's checkers: `Sanitizer` and its `Violation`s,
//!   the GUP and lost-dirty-data oracles, `check_consistency`.
//! - `inject` — hooks and test knobs (`Kernel::inject`): stall points,
//!   allocation failures, the injected panic.
//! - `stats` — counters with the kernel's names (`Stat`) and the tlb_flush
//!   trace hook.
//! - `sync` — the sync facade: every lock and atomic shared with mm-core
//!   (std / parking_lot, or loom under the loom cfg).
//! - `types` — `Pfn`, `CpuId`, `CpuMask`, `NR_CPUS`.
//!
//! Internal modules: `arch` (the x86, arm64 and MMU_GATHER_NO_RANGE
//! profiles behind `Kernel::arch`), `rcu` (call_rcu on crossbeam-epoch),
//! `notifier` (mmu_notifier, reached through `iommu`), `debug_vm`
//! (VM_BUG_ON / VM_WARN_ON).  The types of theirs that public items expose
//! are re-exported here: `ArchOps`, `CpuMm` (`Kernel::arch`,
//! `ArchOps::cpu_mm`), `arch_counters` and `counters_kept` (which counters
//! a run of a configuration has, for reports), `CpuTlbState` (`Kernel::cpus`), `Rcu`,
//! `RcuReadGuard` (`Kernel::rcu`); and
//! `mm::MmuNotifierSubscriptions`.

pub(crate) mod arch;

pub mod check;
pub mod config;
pub(crate) mod debug_vm;
pub mod gather;
pub mod hw;
pub mod inject;
pub mod iommu;
pub mod kernel;
pub mod mm;
pub(crate) mod notifier;
pub mod ops;
pub mod page;
pub mod pgtable;
pub(crate) mod rcu;
pub mod smp;
pub mod stats;
pub mod sync;
pub mod tlb;
pub mod types;

pub use arch::x86::CpuTlbState;
pub use arch::{arch_counters, counters_kept, ArchOps, CpuMm};
pub use config::{Arch, Fix, Fixes, Geometry, KernelConfig, KernelVersion};
pub use kernel::Kernel;
pub use rcu::{Rcu, RcuReadGuard};
pub use types::{CpuId, CpuMask, Pfn};
