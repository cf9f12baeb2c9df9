//! khugepaged collapse versus GUP-fast, the stale pin (docs/RACES.md, “Stale pin of a collapsed page”):
//! 70cbc3cc78a9 "mm: gup: fix the fast GUP race against THP collapse"
//! (switch `gup-pmd-recheck`), also closed by 2ba99c5e0881's sync IPI
//! (switch `khugepaged-gup-fast-ipi`).
//!
//! Bad interleaving (both off): CPU1 reads the PMD and the PTE of X; CPU0 clears the PMD and
//! passes the refcount check; CPU1 grabs X, re-checks only the PTE — unchanged — and returns X,
//! which the collapse then copies and discards: `gup-oracle` (X not mapped at the grab).
//!
//! Threads: CPU1 (main: `gup_fast` of page 0, then unpin) and CPU0
//! (`collapse_huge_page` of the 4-page PMD range; page 0 is the only page
//! mapped).  arm64 (the flush in `pmdp_collapse_flush` is a broadcast: it
//! does not wait for CPU1) with `rcu_table_free` (so the sync IPI is not a
//! no-op).  Either protection alone closes the race: the PMD re-check sees
//! the PMD the collapse cleared before its refcount check, and the sync
//! IPI waits for the whole walk before the refcount check — so the model
//! fails only with both off, a self-check of the model itself.
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::{Arch, Fix};
use mm_core::ops::gup::{gup_fast, unpin_user_pages, Foll};
use mm_core::ops::khugepaged::collapse_huge_page;
use mm_core::ops::mmap_anon;
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

const BASE: u64 = 0x4_0000;

fn model(pmd_recheck: bool, sync_ipi: bool) -> Option<String> {
    let k = model_kernel(2, |c| {
        c.arch = Arch::Arm64;
        c.rcu_table_free = true;
        c.gup_oracle = true;
        c.fixes.set(Fix::GupPmdRecheck, pmd_recheck);
        c.fixes.set(Fix::KhugepagedGupFastIpi, sync_ipi);
    });
    let hpage = k.cfg.geometry.pmd_size();
    // Set-up on CPU1: one PMD range, page 0 written (X).
    k.set_cpu(CpuId(1));
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    mmap_anon(&k, &mm, BASE, hpage, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();

    let (k0, mm0) = (k.clone(), mm.clone());
    let khugepaged = loom::thread::spawn(move || {
        k0.set_cpu(CpuId(0));
        collapse_huge_page(&k0, &mm0, BASE)
    });
    // CPU1 (this thread): pin X.
    let pages = gup_fast(&k, &mm, BASE, 1, Foll::PIN);
    let _ = khugepaged.join().unwrap();
    unpin_user_pages(&k, &pages);
    violation(&k)
}

#[test]
fn khugepaged_stale_pin_fixed() {
    check_fixed("khugepaged_stale_pin_fixed", || model(true, true));
}

#[test]
fn khugepaged_stale_pin_recheck_only_fixed() {
    check_fixed("khugepaged_stale_pin_recheck_only_fixed", || model(true, false));
}

#[test]
fn khugepaged_stale_pin_sync_only_fixed() {
    check_fixed("khugepaged_stale_pin_sync_only_fixed", || model(false, true));
}

#[test]
fn khugepaged_stale_pin_reverted() {
    check_reverted("khugepaged_stale_pin_reverted", "sanitizer: gup-oracle", || model(false, false));
}
