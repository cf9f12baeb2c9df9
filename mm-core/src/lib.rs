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

pub mod arch;
pub mod check;
pub mod config;
pub mod debug_vm;
pub mod gather;
pub mod hw;
pub mod inject;
pub mod iommu;
pub mod kernel;
pub mod mm;
pub mod notifier;
pub mod ops;
pub mod page;
pub mod pgtable;
pub mod rcu;
pub mod smp;
pub mod stats;
pub mod sync;
pub mod tlb;
pub mod types;

pub use config::{Arch, Fix, Fixes, Geometry, KernelConfig, KernelVersion};
pub use kernel::Kernel;
pub use types::{CpuId, CpuMask, Pfn};
