//! Secondary-TLB (IOMMU/SVA) invalidation (docs/RACES.md, “Secondary-TLB (IOMMU) invalidation”):
//! 6bbd42e2df8f "mmu_notifiers: call invalidate_range() when invalidating
//! TLBs" (switch `secondary-tlb-on-flush`), arm64.
//!
//! Bad interleaving with the fix reverted: the device caches v read-only;
//! a CPU write fault upgrades the PTE in place (`ptep_set_access_flags` →
//! `flush_tlb_page`), which reaches no mmu_notifier subscriber — the
//! device's write keeps hitting its stale read-only entry, and each IOPF
//! finds the PTE already writable+dirty (nothing to flush): livelock.
//!
//! Threads: a thread of the mm (main, CPU0: a store to v — a write fault on
//! the read-only shared file PTE, `wp_page_shared`) and the device
//! (spawned, its IOPF handler on CPU1: DMA read of v, then DMA write of v).
//! loom's first schedule runs the upgrade before the device starts (the
//! device caches v writable: passes); the failing ones have the device's
//! ATS walk cache v read-only first.  The retry bound is 1 (one resolved
//! fault per access), so the livelock shows as `secondary-livelock` after
//! one useless IOPF.  With the fix the arch flush itself invalidates the
//! device TLB (under the device TLB lock, so a concurrent ATS walk either
//! sees the new PTE or is invalidated after).
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::{Arch, Fix};
use mm_core::iommu::{iommu_sva_bind_device, DmaError};
use mm_core::ops::mmap_file;
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

const BASE: u64 = 0x4_0000;
/// Resolved device faults allowed per access (`SvaDevice::retry_bound`).
const RETRY_BOUND: u32 = 1;

fn model(fix: bool) -> Option<String> {
    let k = model_kernel(2, |c| {
        c.arch = Arch::Arm64;
        c.fixes.set(Fix::SecondaryTlbOnFlush, fix);
    });
    let ps = k.cfg.geometry.page_size();
    // Set-up on CPU0: a shared file page mapped by a read fault (read-only,
    // clean: the next write is a write-notify fault), device bound.
    let file = k.new_file(1);
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    mmap_file(&k, &mm, BASE, ps, true, true, &file, 0).unwrap();
    k.read_user(&mm, BASE).unwrap();
    let dev = iommu_sva_bind_device(&k, &mm, RETRY_BOUND);

    let (kd, devd) = (k.clone(), dev.clone());
    let device = loom::thread::spawn(move || {
        // The device; its IOPF handler runs on CPU1.
        kd.set_cpu(CpuId(1));
        let r = devd.dma_read(&kd, BASE);
        let w = devd.dma_write(&kd, BASE + 8, 2);
        (r, w)
    });
    // A thread of the mm (this thread, CPU0): write fault on the read-only
    // shared PTE, upgraded in place.
    k.write_user(&mm, BASE, 1).unwrap();
    let (r, w) = device.join().unwrap();
    let v = violation(&k);
    // Break the Arc cycles (device ↔ mm notifier list, mm ↔ file i_mmap)
    // so loom's leak check stays quiet.
    dev.iommu_sva_unbind_device();
    mm_core::ops::munmap(&k, &mm, BASE, ps).unwrap();
    match (r, w) {
        (Ok(_), Ok(_)) | (Ok(_), Err(DmaError::Livelock)) => v,
        other => Some(format!("unexpected DMA result {other:?}")),
    }
}

#[test]
fn secondary_tlb_fixed() {
    check_fixed("secondary_tlb_fixed", || model(true));
}

#[test]
fn secondary_tlb_reverted() {
    check_reverted("secondary_tlb_reverted", "sanitizer: secondary-livelock", || model(false));
}
