//! x86 lazy TLB and freed page tables (docs/RACES.md, “x86 lazy TLB and freed page tables”): the
//! freed_tables rule of 016c4d92cd16 "x86/mm/tlb: Add freed_tables argument
//! to flush_tlb_mm_range" (switch `lazy-tlb-freed-tables`).
//!
//! Bad interleaving with the rule reverted: CPU1 is lazy in mm M with a
//! paging-structure-cache entry for table T; CPU0 unmaps, its flush skips
//! the lazy CPU, T is freed and reused — and CPU1's speculative walk goes
//! through its cached entry into the freed frame.
//!
//! Threads: CPU0 (munmap + reuse of the freed frames) and CPU1 (lazy, two
//! speculative walks, each with IRQs off).  `rcu_table_free = false`: the
//! flush IPI is the only thing that protects the walker (older stable x86
//! bare metal).
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::Fix;
use mm_core::hw::mmu::Access;
use mm_core::ops::{mmap_anon, munmap};
use mm_core::page::alloc::PageKind;
use mm_core::tlb::{enter_lazy_tlb, switch_mm};
use mm_core::CpuId;

const BASE: u64 = 0x4_0000;

fn model(fix: bool) -> Option<String> {
    let k = model_kernel(2, |c| {
        c.rcu_table_free = false;
        c.fixes.set(Fix::LazyTlbFreedTables, fix);
    });
    let ps = k.cfg.geometry.page_size();
    let ptrs = k.cfg.geometry.ptrs_per_table() as u64;
    // Set-up on CPU1: map one PTE table's worth of pages, touch the first
    // (fills the paging-structure cache down to the PTE table), go lazy.
    k.set_cpu(CpuId(1));
    let mm = k.mm_alloc();
    switch_mm(&k, &mm);
    mmap_anon(&k, &mm, BASE, ptrs * ps, true).unwrap();
    k.write_user(&mm, BASE, 1).unwrap();
    enter_lazy_tlb(&k);

    let (k0, mm0) = (k.clone(), mm.clone());
    let freer = loom::thread::spawn(move || {
        k0.set_cpu(CpuId(0));
        switch_mm(&k0, &mm0);
        munmap(&k0, &mm0, BASE, ptrs * ps).unwrap();
        // Reuse the freed table frames.
        let a = k0.alloc_pages(0, PageKind::Kernel);
        let b = k0.alloc_pages(0, PageKind::Kernel);
        (a, b)
    });
    // CPU1 (this thread): lazy, speculative walks of an address it never
    // touched (so no leaf TLB entry): the walk starts from the cached PSC.
    k.set_cpu(CpuId(1));
    for _ in 0..2 {
        let irq = k.local_irq_save();
        let _ = k.hw.access(CpuId(1), BASE + ps, Access::Read, &k.san);
        drop(irq);
    }
    let (a, b) = freer.join().unwrap();
    for f in [a, b].into_iter().flatten() {
        k.folio_put(mm_core::page::Folio(f));
    }
    violation(&k)
}

#[test]
fn lazy_tlb_freed_tables_fixed() {
    check_fixed("lazy_tlb_freed_tables_fixed", || model(true));
}

#[test]
fn lazy_tlb_freed_tables_reverted() {
    check_reverted("lazy_tlb_freed_tables_reverted", "sanitizer: walk-into-freed-table", || model(false));
}
