//! Shared setup for the criterion benches (`benches/mmemu.rs`) and the
//! `scaling` example.
//!
//! The helpers in this file build a kernel on the synchronous reference
//! `Smp` (`Kernel::new_sync`), so a bench measures mm-core code on the
//! calling host thread only: no emulated-CPU threads, no IPIs.  `emu` holds
//! the threaded-machine and munmap setups, `host` the host-kernel anchors.

use mm_core::hw::mmu::Access;
use mm_core::mm::{vm, Backing, MmStruct, Vma};
use mm_core::sync::Arc;
use mm_core::{CpuId, Kernel, KernelConfig};

/// Start of the user range the helpers map (1 MiB: away from va 0, inside
/// one PMD table on x86-64 geometry for up to 511 pages after it).
pub const USER_BASE: u64 = 0x10_0000;

/// CPU 0: the only CPU the benches run on.
pub const CPU0: CpuId = CpuId(0);

/// A kernel with `cfg` (its `nr_cpus` forced to 1) and one mm running on
/// CPU 0, with an anonymous read-write VMA of `nr_pages` pages at
/// `USER_BASE`, every page faulted in by a write (so the PTEs are present,
/// young and dirty, and CPU 0's TLB holds whatever fits).
///
/// Panics if a fault fails or the sanitizer recorded anything.
pub fn mapped_kernel(cfg: KernelConfig, nr_pages: u64) -> (Arc<Kernel>, Arc<MmStruct>) {
    let k = Kernel::new_sync(cfg, 1);
    k.san.set_panic(true);
    let mm = k.mm_alloc();
    mm_core::tlb::switch_mm(&k, &mm);
    let page = k.cfg.geometry.page_size();
    let end = USER_BASE + nr_pages * page;
    mm.mmap_lock.write().insert(Vma {
        start: USER_BASE,
        end,
        flags: vm::VM_READ | vm::VM_WRITE,
        backing: Backing::Anon,
    });
    for i in 0..nr_pages {
        let va = USER_BASE + i * page;
        k.write_user(&mm, va, i).unwrap_or_else(|e| panic!("warm-up fault at {va:#x}: {e:?}"));
    }
    assert_eq!(k.san.count(), 0, "sanitizer violations during setup");
    (k, mm)
}

/// Virtual address of page `i` of the helper's VMA.
pub fn page_va(k: &Kernel, i: u64) -> u64 {
    USER_BASE + i * k.cfg.geometry.page_size()
}

/// One user read on CPU 0 straight through the MMU (no fault handling):
/// a TLB hit, or a miss + page walk that fills the TLB.
#[inline]
pub fn hw_read(k: &Kernel, va: u64) -> u64 {
    k.hw.access(CPU0, va, Access::Read, &k.san).expect("mapped page")
}

/// A kernel with nothing mapped and no mm loaded (allocator benches: the
/// strict free-time check then has no CPU to scan).
pub fn bare_kernel(cfg: KernelConfig) -> Arc<Kernel> {
    Kernel::new_sync(cfg, 1)
}

pub mod emu;
pub mod host;
