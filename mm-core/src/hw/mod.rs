//! What the hardware does by itself, never the kernel.
//!
//! Contract: nothing in here is "helpful".  A TLB entry, once filled, is used
//! without looking at the page table again until an invalidation removes it;
//! the paging-structure cache keeps pointing at lower-level tables even after
//! the kernel unhooked them.  If the kernel code forgets a flush, the emulated
//! CPU really uses the old page, and the sanitizer (frame generations) reports
//! it.
//!
//! - `pte`: entry format (x86-64 bit layout).
//! - `ram`: physical frames (data words / table entries) and frame generations.
//! - `tlb`: per-CPU set-associative TLB tagged by address space, plus the
//!   paging-structure cache.
//! - `mmu`: `Hw::access` — a user load or store: TLB hit, or walk + fill,
//!   setting accessed/dirty atomically like x86.

pub mod mmu;
pub mod pte;
pub(crate) mod ram;
pub(crate) mod tlb;

pub use ram::Ram;
pub use tlb::{PscEntry, Tlb, TlbEntry};
