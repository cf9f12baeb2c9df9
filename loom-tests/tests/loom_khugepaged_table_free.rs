//! khugepaged collapse versus GUP-fast, the table freed under the walker
//! (docs/RACES.md, “The PTE table freed under the walker”): 2ba99c5e0881 "mm/khugepaged: fix GUP-fast
//! interaction by sending IPI" (switch `khugepaged-gup-fast-ipi`).
//!
//! Bad interleaving (sync off): CPU1's GUP-fast reads the PMD (→ PTE table T) with IRQs off;
//! CPU0 collapses (broadcast flush, T deposited), munmaps the THP (T freed at once), T is reused.
//!
//! Threads: CPU1 (main: `gup_fast` of one page) and CPU0 (khugepaged +
//! the unmapper).  arm64 (the collapse flush does not wait for CPU1) with
//! `rcu_table_free` (the sync IPI is real; the gather's own tables go
//! through RCU, so only the khugepaged path is under test).  Two paths:
//! - anon: `collapse_huge_page` deposits T under the huge PMD; `munmap`
//!   then zaps the THP and `zap_deposited_table` frees T with a plain
//!   `pte_free`; two page allocations reuse the freed frames.
//! - file, 2022 (`pte_free_defer = false`): `retract_page_tables` detaches
//!   an empty PTE table and frees it at once (`collapse_and_free_pmd`);
//!   with `pte_free_defer` (v6.6+) it waits for a grace period and needs
//!   no sync.
//!
//! With the sync, CPU0's `tlb_remove_table_sync_one` right after
//! `pmdp_collapse_flush` waits for CPU1's IRQs-off walk.
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::{Arch, Fix, KernelConfig};
use mm_core::ops::gup::{gup_fast, put_user_pages, Foll};
use mm_core::ops::khugepaged::{collapse_huge_page, retract_page_tables};
use mm_core::ops::{exit_mm, madvise_dontneed, mmap_anon, mmap_file, munmap, truncate_inode_pages};
use mm_core::page::alloc::PageKind;
use mm_core::tlb::switch_mm;
use mm_core::{CpuId, Kernel};

const BASE: u64 = 0x4_0000;

fn tune(sync_ipi: bool, pte_free_defer: bool) -> impl FnOnce(&mut KernelConfig) {
    move |c| {
        c.arch = Arch::Arm64;
        c.rcu_table_free = true;
        c.pte_free_defer = pte_free_defer;
        c.fixes.set(Fix::KhugepagedGupFastIpi, sync_ipi);
    }
}

/// Reuse the freed frames on CPU0 (with what the grace period let go so far).
fn reuse(k: &Kernel) -> [Option<mm_core::Pfn>; 2] {
    k.rcu_process_callbacks();
    [k.alloc_pages(0, PageKind::Kernel), k.alloc_pages(0, PageKind::Kernel)]
}

/// After the join: free the reused frames, run every RCU callback.
fn finish(k: &Kernel, reused: [Option<mm_core::Pfn>; 2]) -> Option<String> {
    for f in reused.into_iter().flatten() {
        k.folio_put(mm_core::page::Folio(f));
    }
    while k.rcu.pending() > 0 {
        k.rcu_process_callbacks();
        loom::thread::yield_now();
    }
    violation(k)
}

fn anon(sync_ipi: bool) -> Option<String> {
    let k = model_kernel(2, tune(sync_ipi, true));
    let hpage = k.cfg.geometry.pmd_size();
    // Set-up on CPU1: one PMD range, page 0 written.
    k.set_cpu(CpuId(1));
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    mmap_anon(&k, &mm, BASE, hpage, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();

    let (k0, mm0) = (k.clone(), mm.clone());
    let cpu0 = loom::thread::spawn(move || {
        k0.set_cpu(CpuId(0));
        switch_mm(&k0, &mm0);
        // Succeeds, or (the walker's pin seen) puts T back.
        let _ = collapse_huge_page(&k0, &mm0, BASE);
        munmap(&k0, &mm0, BASE, hpage).unwrap();
        reuse(&k0)
    });
    let pages = gup_fast(&k, &mm, BASE, 1, Foll::GET);
    put_user_pages(&k, &pages);
    let reused = cpu0.join().unwrap();
    finish(&k, reused)
}

fn file(sync_ipi: bool, pte_free_defer: bool) -> Option<String> {
    let k = model_kernel(2, tune(sync_ipi, pte_free_defer));
    let (ps, hpage) = (k.cfg.geometry.page_size(), k.cfg.geometry.pmd_size());
    // Set-up on CPU1: a shared file mapping of one PMD range whose PTE
    // table is empty (page 0 faulted in, then MADV_DONTNEED).
    k.set_cpu(CpuId(1));
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    let f = k.new_file(hpage / ps);
    mmap_file(&k, &mm, BASE, hpage, false, true, &f, 0).unwrap();
    k.read_user(&mm, BASE).unwrap();
    madvise_dontneed(&k, &mm, BASE, hpage).unwrap();

    let (k0, f0) = (k.clone(), f.clone());
    let cpu0 = loom::thread::spawn(move || {
        k0.set_cpu(CpuId(0));
        retract_page_tables(&k0, &f0, 0);
        reuse(&k0)
    });
    let pages = gup_fast(&k, &mm, BASE, 1, Foll::GET);
    put_user_pages(&k, &pages);
    let reused = cpu0.join().unwrap();
    let v = finish(&k, reused);
    // Break the mm ↔ file reference cycle (VMA → file, i_mmap → mm).
    exit_mm(&k, &mm);
    truncate_inode_pages(&k, &f, 0);
    v
}

#[test]
fn khugepaged_table_free_fixed() {
    check_fixed("khugepaged_table_free_fixed", || anon(true));
}

#[test]
fn khugepaged_table_free_reverted() {
    check_reverted("khugepaged_table_free_reverted", "sanitizer: gup-fast-freed-table", || anon(false));
}

#[test]
fn khugepaged_table_free_file_fixed() {
    check_fixed("khugepaged_table_free_file_fixed", || file(true, false));
}

#[test]
fn khugepaged_table_free_file_reverted() {
    check_reverted("khugepaged_table_free_file_reverted", "sanitizer: gup-fast-freed-table", || file(false, false));
}

/// v6.6+: `pte_free_defer` (RCU) protects the walker without the sync.
#[test]
fn khugepaged_table_free_file_defer_fixed() {
    check_fixed("khugepaged_table_free_file_defer_fixed", || file(false, true));
}
