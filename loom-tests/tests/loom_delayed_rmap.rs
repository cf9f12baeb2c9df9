//! Delayed rmap removal vs writeback (docs/RACES.md, “Delayed rmap removal”): 5df397dec7c4
//! "mm: delay page_remove_rmap() until after the TLB has been flushed"
//! (switch `delay-rmap`).
//!
//! Bad interleaving with the fix reverted: the zap clears the dirty file PTE
//! and removes the rmap at once, flushing only later under the PTL; writeback
//! finds the folio unmapped, cleans it and writes it out, and the writer's
//! next store goes through its still-cached writable+dirty TLB entry into a
//! clean page — the store is on neither the disk nor a dirty page.
//!
//! Threads: A (main, CPU0: cached writable+dirty entry for v from set-up;
//! one store to v), Z (spawned, CPU1: MADV_DONTNEED of v), W (spawned,
//! CPU2: msync of the page, `filemap_fdatawrite_range` →
//! `folio_clear_dirty_for_io` → `folio_mkclean` → write to "disk").  At the
//! end of the execution (all joined) the lost-dirty-data oracle
//! (`check::dirty_oracle`) compares each recorded store with the disk and the
//! dirty page cache; its violation is the model's result.  With the fix the
//! rmap outlives the flush, so `folio_mkclean` must take Z's PTL and waits
//! until A's entry is gone.
//!
//! Run on arm64 (broadcast TLBI: Z's and W's flushes never wait for A) and
//! on x86 (IPI shootdowns: the `_x86_` pair; more than loom's default 1000
//! branches per execution, within the harness's raised limit).
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::check::DirtyDataOracle;
use mm_core::config::{Arch, Fix};
use mm_core::ops::writeback::filemap_fdatawrite_range;
use mm_core::ops::{madvise_dontneed, mmap_file, munmap};
use mm_core::sync::Arc;
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

const BASE: u64 = 0x4_0000;

fn model(arch: Arch, fix: bool) -> Option<String> {
    let k = model_kernel(3, |c| {
        c.arch = arch;
        c.fixes.set(Fix::DelayRmap, fix);
    });
    let ps = k.cfg.geometry.page_size();
    let file = k.new_file(1);
    let oracle = Arc::new(DirtyDataOracle::new(&file));
    // Set-up: Z's CPU runs the mm too; A (CPU0) dirties v through a shared
    // write fault, so its TLB caches v writable and dirty.
    let mm = k.mm_alloc();
    k.set_cpu(CpuId(1));
    switch_mm(&k, &mm);
    k.set_cpu(CpuId(0));
    switch_mm(&k, &mm);
    mmap_file(&k, &mm, BASE, ps, true, true, &file, 0).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    oracle.record_store(0, 0, 1);

    let (kz, mmz) = (k.clone(), mm.clone());
    let z = loom::thread::spawn(move || {
        kz.set_cpu(CpuId(1));
        madvise_dontneed(&kz, &mmz, BASE, ps).unwrap();
    });
    let (kw, fw) = (k.clone(), file.clone());
    let w = loom::thread::spawn(move || {
        kw.set_cpu(CpuId(2));
        filemap_fdatawrite_range(&kw, &fw, 0, 1);
    });
    // A (this thread, CPU0): one more store, recorded once it completed.
    k.write_user(&mm, BASE + 8, 2).unwrap();
    oracle.record_store(0, 1, 2);
    z.join().unwrap();
    w.join().unwrap();
    // End state: every recorded store must be on disk or in a dirty page.
    oracle.check(&k);
    let v = violation(&k);
    // Unlink the file VMA (mm ↔ file Arc cycle) for loom's leak check.
    munmap(&k, &mm, BASE, ps).unwrap();
    v
}

#[test]
fn delayed_rmap_fixed() {
    check_fixed("delayed_rmap_fixed", || model(Arch::Arm64, true));
}

#[test]
fn delayed_rmap_reverted() {
    check_reverted("delayed_rmap_reverted", "sanitizer: lost-dirty-data", || model(Arch::Arm64, false));
}

/// The same race with x86 IPI shootdowns (Z's and W's flushes interrupt A).
#[test]
fn delayed_rmap_x86_fixed() {
    check_fixed("delayed_rmap_x86_fixed", || model(Arch::X86, true));
}

#[test]
fn delayed_rmap_x86_reverted() {
    check_reverted("delayed_rmap_x86_reverted", "sanitizer: lost-dirty-data", || model(Arch::X86, false));
}
