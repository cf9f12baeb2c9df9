//! Concurrent zaps under a shared mmap_lock (docs/RACES.md, “Concurrent zaps under a shared lock”):
//! 99baac21e458 "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem"
//! (switch `nested-flush-detect`).
//!
//! Bad interleaving with the fix reverted: T1's MADV_DONTNEED clears v's PTE
//! and drops the PTL with its flush still deferred; T2's MADV_DONTNEED of v
//! finds the PTE none, gathers nothing, flushes nothing and returns while
//! its own TLB (and T1's) still maps v.
//!
//! Threads: T1 (spawned, CPU0: MADV_DONTNEED of v) and T2 (main, CPU1: read
//! v during set-up so its TLB caches it, then MADV_DONTNEED of v).  The
//! check is `madvise_dontneed`'s own return-time sanitizer
//! (`sanitize_stale_after_zap`): `stale-after-zap`.  With the fix, T2's
//! `tlb_finish_mmu` sees `mm_tlb_flush_nested` (T1 raised
//! `tlb_flush_pending` before touching the PTE and drops it only after its
//! flush) and flushes the whole mm itself.  Run on arm64 (broadcast TLBI)
//! and on x86 (IPI shootdowns: the `_x86_` pair).
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::{Arch, Fix};
use mm_core::ops::{madvise_dontneed, mmap_anon};
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

const BASE: u64 = 0x4_0000;

fn model(arch: Arch, fix: bool) -> Option<String> {
    let k = model_kernel(2, |c| {
        c.arch = arch;
        c.fixes.set(Fix::NestedFlushDetect, fix);
    });
    let ps = k.cfg.geometry.page_size();
    // Set-up: CPU0 faults v in (write), CPU1 reads it: both TLBs cache v.
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    mmap_anon(&k, &mm, BASE, ps, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    k.set_cpu(CpuId(1));
    switch_mm(&k, &mm);
    k.read_user(&mm, BASE).unwrap();

    let (k1, mm1) = (k.clone(), mm.clone());
    let t1 = loom::thread::spawn(move || {
        k1.set_cpu(CpuId(0));
        madvise_dontneed(&k1, &mm1, BASE, ps).unwrap();
    });
    // T2 (this thread, CPU1).
    madvise_dontneed(&k, &mm, BASE, ps).unwrap();
    t1.join().unwrap();
    violation(&k)
}

#[test]
fn nested_zap_fixed() {
    check_fixed("nested_zap_fixed", || model(Arch::Arm64, true));
}

#[test]
fn nested_zap_reverted() {
    check_reverted("nested_zap_reverted", "sanitizer: stale-after-zap", || model(Arch::Arm64, false));
}

/// The same race with x86 IPI shootdowns (T1's flush interrupts CPU1).
#[test]
fn nested_zap_x86_fixed() {
    check_fixed("nested_zap_x86_fixed", || model(Arch::X86, true));
}

#[test]
fn nested_zap_x86_reverted() {
    check_reverted("nested_zap_x86_reverted", "sanitizer: stale-after-zap", || model(Arch::X86, false));
}
