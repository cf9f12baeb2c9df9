//! hugetlb batched unshare (docs/RACES.md, “One sync per gather”): kernel commit
//! 8ce720d5bd91 "mm/hugetlb: fix excessive IPI broadcasts when unsharing PMD
//! tables using mmu_gather" (switch `hugetlb-unshare-batched`).
//!
//! Bad interleaving with the sync after the i_mmap unlock (broadcast TLBI, arm64): P3's GUP-fast enters
//! S through P3's PUD and stalls; P3 unshares (2 → 1, no sync), P2 unshares last (1 → 0) and drops
//! i_mmap_rwsem before its sync; P1 reuses S's slot, and P3's walker pins P1's page — `sanitizer: gup-oracle`.
//!
//! Threads (3 with main): the walker (main, CPU0: `gup_fast` in P3), the
//! unsharers (one loom thread: CPU1 runs P3's `munmap` of its hugetlb VMA —
//! not the last sharer, so 8ce720d5bd91 sends no sync — then CPU2 runs P2's,
//! the last sharer, whose gather's one `tlb_remove_table_sync_one` must also
//! drain the walker that entered through P3's PUD) and the reuser (CPU3: P1
//! `munmap`s its first
//! huge page, `mmap`s anonymous memory there and takes the write fault that
//! hangs a PTE table of P1 into S's slot 0).  Real mm-core code on
//! `KernelConfig::small()`, arm64, GUP oracle, `rcu_table_free` on, both
//! hugetlb unshare fixes on.
//!
//! - `hugetlb_unshare_batched_fixed`: the sync in `huge_pmd_unshare_flush`,
//!   after the last decrement and before i_mmap_rwsem is dropped: passes.
//!   Every execution also checks the counts: P3's munmap sent 0 syncs, P2's
//!   exactly 1 (one per gather, only for the last sharer).
//! - `hugetlb_unshare_batched_reverted`: the sync moved to `tlb_finish_mmu`,
//!   after the unlock (`inject::Knobs::hugetlb_unshare_sync_after_unlock`,
//!   the placement the commit message forbids): the reuser gets i_mmap_rwsem
//!   between P2's unlock and P2's sync and rewrites S under the walker.
//!
//! State kept small as in `loom_hugetlb_unshare_gup.rs`: CPUs run their
//! processes before the threads start; P3 and P2 unshare in that order on
//! one loom thread (a separate thread each, spinning on P3's PUD, took >10
//! minutes at bound 1); the reuser starts after P2's PUD is cleared (a
//! ghost read of the PUD slot — the roles "first unsharer", "last
//! unsharer", "new owner" are the scenario);
//! the walker stalls after its PUD read through the `PudRead` race hook (a
//! loom yield).
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::{Arch, Fix};
use mm_core::hw::pte::Level;
use mm_core::inject::GupFastPoint;
use mm_core::ops::fault::handle_mm_fault;
use mm_core::ops::gup::{gup_fast, put_user_pages, Foll};
use mm_core::ops::{dup_mmap, exit_mm, mmap_anon, mmap_hugetlb, munmap};
use mm_core::pgtable::{lookup_table, read};
use mm_core::stats::Stat;
use mm_core::tlb::switch_mm;
use mm_core::types::Pfn;
use mm_core::{CpuId, Kernel};

/// Spin (yielding) until `pud_table`'s entry for `va` is clear.
fn wait_pud_clear(k: &Kernel, pud_table: Pfn, va: u64) {
    while read(k, pud_table, Level::Pud, va).present() {
        loom::thread::yield_now();
    }
}

fn model(sync_before_unlock: bool) -> Option<String> {
    let k = model_kernel(4, |c| {
        c.arch = Arch::Arm64;
        c.gup_oracle = true;
        c.fixes.set(Fix::HugetlbUnshareSync, true);
        c.fixes.set(Fix::HugetlbUnshareBatched, true);
    });
    k.inject.knobs.hugetlb_unshare_sync_after_unlock.set(!sync_before_unlock);
    let g = k.cfg.geometry;
    let (hs, pud) = (g.pmd_size(), g.pud_size());
    let base = g.task_size() / 4; // PGD-aligned: one PUD table
                                  // Set-up (CPU0): P1 maps the file over one PUD region and faults huge
                                  // page F; P2 and P3 are forked from it and fault F: S has pt_share_count 2.
    let f = k.new_file(pud / g.page_size());
    let p1 = k.mm_alloc();
    switch_mm(&k, &p1);
    mmap_hugetlb(&k, &p1, base, pud, true, &f, 0).unwrap();
    k.write_user(&p1, base + 8, 0x11).unwrap();
    let p2 = dup_mmap(&k, &p1).unwrap();
    let p3 = dup_mmap(&k, &p1).unwrap();
    let mut p2_pud = None;
    for mm in [&p2, &p3] {
        switch_mm(&k, mm);
        // fork copied nothing (vma_needs_copy): the first fault makes it a
        // sharer of S (huge_pmd_share).
        handle_mm_fault(&k, mm, base + 8, false).unwrap();
        // Untouched neighbours keep the PUD tables: the munmaps free none.
        mmap_anon(&k, mm, base + pud, g.page_size(), true).unwrap();
        p2_pud.get_or_insert(lookup_table(&k, mm, base, Level::Pud).unwrap());
    }
    let p2_pud = p2_pud.unwrap();
    for (cpu, mm) in [(1, &p3), (2, &p2), (3, &p1), (0, &p3)] {
        k.set_cpu(CpuId(cpu));
        switch_mm(&k, mm);
    }

    // The unsharers, one loom thread playing CPU1 (P3's munmap: 2 -> 1)
    // then CPU2 (P2's munmap: 1 -> 0).
    let (k1, p3b, p2c) = (k.clone(), p3.clone(), p2.clone());
    let unsharers = loom::thread::spawn(move || -> Result<(), String> {
        k1.set_cpu(CpuId(1));
        munmap(&k1, &p3b, base, pud).map_err(|e| format!("model: P3 munmap: {e}"))?;
        if let n @ 1.. = k1.stats.get_cpu(CpuId(1), Stat::TlbRemoveTableSyncOne) {
            return Err(format!("model: P3 was not the last sharer but sent {n} syncs"));
        }
        k1.set_cpu(CpuId(2));
        munmap(&k1, &p2c, base, pud).map_err(|e| format!("model: P2 munmap: {e}"))?;
        match k1.stats.get_cpu(CpuId(2), Stat::TlbRemoveTableSyncOne) {
            1 => Ok(()),
            n => Err(format!("model: the last sharer's gather sent {n} syncs, not 1")),
        }
    });
    let (k3, p1d) = (k.clone(), p1.clone());
    let reuser = loom::thread::spawn(move || -> Result<(), String> {
        k3.set_cpu(CpuId(3));
        wait_pud_clear(&k3, p2_pud, base);
        munmap(&k3, &p1d, base, hs).map_err(|e| format!("model: P1 munmap: {e}"))?;
        mmap_anon(&k3, &p1d, base, hs, true).map_err(|e| format!("model: P1 mmap: {e}"))?;
        handle_mm_fault(&k3, &p1d, base, true).map_err(|e| format!("model: P1 fault: {e:?}"))?;
        Ok(())
    });
    k.inject.race.set_gup_fast(|_, point, _| {
        if point == GupFastPoint::PudRead {
            loom::thread::yield_now();
        }
    });
    let got = gup_fast(&k, &p3, base, 1, Foll::GET);
    put_user_pages(&k, &got);
    let errs = [unsharers.join().unwrap(), reuser.join().unwrap()];
    let v = violation(&k).or_else(|| errs.into_iter().find_map(Result::err));
    exit_mm(&k, &p3);
    for (cpu, mm) in [(2, &p2), (3, &p1)] {
        k.set_cpu(CpuId(cpu));
        exit_mm(&k, mm);
    }
    v
}

#[test]
fn hugetlb_unshare_batched_fixed() {
    check_fixed("hugetlb_unshare_batched_fixed", || model(true));
}

#[test]
fn hugetlb_unshare_batched_reverted() {
    check_reverted("hugetlb_unshare_batched_reverted", "sanitizer: gup-oracle", || model(false));
}
