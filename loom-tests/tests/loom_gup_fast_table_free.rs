//! GUP-fast versus page-table freeing (docs/RACES.md, “GUP-fast versus page-table freeing”): the general
//! contract of MMU_GATHER_RCU_TABLE_FREE (267239116987 "mm, powerpc: move
//! the RCU page-table freeing into generic code"; the fallback's table
//! invalidation d86564a2f085; x86 a37259732a7d).
//!
//! Bad interleaving (protection removed): CPU1's GUP-fast reads the PMD (→ PTE table T) with
//! IRQs off; CPU0's munmap clears the PMD, flushes by broadcast (no wait) and frees T at once.
//!
//! Threads: CPU1 (main: `gup_fast` of one page, then the cleanup) and CPU0
//! (munmap of the only VMA — `free_pgtables` frees the PTE, PMD and PUD
//! tables — then two page allocations that reuse the freed frames).  The
//! walker reads the PGD, PUD, PMD and PTE one after the other: loom may
//! put the whole munmap between any two of them.
//!
//! The matrix (RACES.md “GUP-fast versus page-table freeing”):
//! - x86 IPI flush + immediate free (`rcu_table_free = false`): the flush
//!   IPI waits for CPU1's IRQs-off walk, so the free cannot overtake it.
//! - arm64 broadcast flush + RCU free: the walk is an RCU reader; the
//!   tables are freed only after a grace period.
//! - arm64 broadcast flush + immediate free: no wait at all: fails with
//!   `sanitizer: gup-fast-freed-table`.
//! - arm64 + RCU free, the table batch cannot be allocated
//!   (`k.inject.faults.fail_table_batch`): `tlb_remove_table_one` frees each table
//!   at once after `tlb_remove_table_sync_one`, which waits for the walker;
//!   with `KernelConfig::table_free_one_sync` off (an ablation: no kernel
//!   shipped without that sync) it fails like the broadcast + immediate
//!   free case.
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::Arch;
use mm_core::ops::gup::{gup_fast, put_user_pages, Foll};
use mm_core::ops::{mmap_anon, munmap};
use mm_core::page::alloc::PageKind;
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

const BASE: u64 = 0x4_0000;

#[derive(Clone, Copy)]
struct Cfg {
    arch: Arch,
    rcu_table_free: bool,
    /// Fail every table-batch allocation (the `tlb_remove_table_one` path).
    batch_fail: bool,
    /// `tlb_remove_table_one` syncs (`KernelConfig::table_free_one_sync`).
    sync_one: bool,
}

fn model(c: Cfg) -> Option<String> {
    let k = model_kernel(2, |cfg| {
        cfg.arch = c.arch;
        cfg.rcu_table_free = c.rcu_table_free;
        cfg.table_free_one_sync = c.sync_one;
    });
    if c.batch_fail {
        k.inject.faults.fail_table_batch.store(u32::MAX, mm_core::sync::Ordering::SeqCst);
    }
    let ps = k.cfg.geometry.page_size();
    // Set-up on CPU1: one page mapped and written (PUD, PMD, PTE tables).
    k.set_cpu(CpuId(1));
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    mmap_anon(&k, &mm, BASE, ps, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();

    let (k0, mm0) = (k.clone(), mm.clone());
    let freer = loom::thread::spawn(move || {
        k0.set_cpu(CpuId(0));
        switch_mm(&k0, &mm0);
        munmap(&k0, &mm0, BASE, ps).unwrap();
        // Reuse the freed frames (with RCU freeing: whatever the grace
        // period let go so far).
        k0.rcu_process_callbacks();
        let a = k0.alloc_pages(0, PageKind::Kernel);
        let b = k0.alloc_pages(0, PageKind::Kernel);
        (a, b)
    });
    // CPU1 (this thread): the lockless walk.
    let pages = gup_fast(&k, &mm, BASE, 1, Foll::GET);
    put_user_pages(&k, &pages);
    let (a, b) = freer.join().unwrap();
    for f in [a, b].into_iter().flatten() {
        k.folio_put(mm_core::page::Folio(f));
    }
    // rcu_barrier, yielding on every round (the kernel's yields every 64).
    while k.rcu.pending() > 0 {
        k.rcu_process_callbacks();
        loom::thread::yield_now();
    }
    violation(&k)
}

const IPI_IMMEDIATE: Cfg = Cfg { arch: Arch::X86, rcu_table_free: false, batch_fail: false, sync_one: true };
const BROADCAST_RCU: Cfg = Cfg { arch: Arch::Arm64, rcu_table_free: true, batch_fail: false, sync_one: true };
const BROADCAST_IMMEDIATE: Cfg = Cfg { arch: Arch::Arm64, rcu_table_free: false, batch_fail: false, sync_one: true };
const BATCH_FAIL_SYNC: Cfg = Cfg { arch: Arch::Arm64, rcu_table_free: true, batch_fail: true, sync_one: true };
const BATCH_FAIL_NO_SYNC: Cfg = Cfg { sync_one: false, ..BATCH_FAIL_SYNC };

#[test]
fn gup_fast_table_free_ipi_flush_fixed() {
    check_fixed("gup_fast_table_free_ipi_flush_fixed", || model(IPI_IMMEDIATE));
}

#[test]
fn gup_fast_table_free_rcu_fixed() {
    check_fixed("gup_fast_table_free_rcu_fixed", || model(BROADCAST_RCU));
}

#[test]
fn gup_fast_table_free_reverted() {
    check_reverted("gup_fast_table_free_reverted", "sanitizer: gup-fast-freed-table", || model(BROADCAST_IMMEDIATE));
}

#[test]
fn gup_fast_table_free_batch_fail_fixed() {
    check_fixed("gup_fast_table_free_batch_fail_fixed", || model(BATCH_FAIL_SYNC));
}

#[test]
fn gup_fast_table_free_batch_fail_reverted() {
    check_reverted("gup_fast_table_free_batch_fail_reverted", "sanitizer: gup-fast-freed-table", || {
        model(BATCH_FAIL_NO_SYNC)
    });
}
