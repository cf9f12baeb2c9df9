//! hugetlb PMD unshare versus GUP-fast (docs/RACES.md, “Unshare versus GUP-fast”): kernel commit
//! 1013af4f585f "mm/hugetlb: fix huge_pmd_unshare() vs GUP-fast race"
//! (CVE-2025-38085; switch `hugetlb-unshare-sync`).
//!
//! Bad interleaving with the fix reverted (broadcast TLBI, arm64): P2's GUP-fast reads P2's PUD → shared
//! table S and stalls; P2's munmap unshares S, P1 reuses S's slot for an anonymous PTE table, and the
//! walker, resuming inside S, pins P1's anonymous page — `sanitizer: gup-oracle`.
//!
//! Threads (3 with main): the walker (main, CPU0: `gup_fast` in P2), the
//! unsharer (CPU1: P2's `munmap` of the whole hugetlb VMA →
//! `huge_pmd_unshare`) and the reuser (CPU2: P1 `munmap`s its first huge
//! page, which splits its VMA, `mmap`s anonymous memory there and takes the
//! write fault that hangs a PTE table of P1 (and anon page Q) into S's slot
//! 0).  Everything is the real mm-core code on `KernelConfig::small()`
//! (huge page = PMD_SIZE = 16 KiB, a PUD region 64 KiB), arm64 profile,
//! GUP oracle on, `rcu_table_free` on (arm64; it also makes
//! `tlb_remove_table_sync_one` real).
//!
//! State kept small: every CPU runs its process before the threads start
//! (switch_mm pins crossbeam-epoch, whose loom state is large); the reuser
//! starts its surgery once P2's PUD no longer points at S (a ghost read —
//! in the other order P1 unshares itself and S never changes hands); the
//! walker's stall after its PUD read is the `GupFastPoint::PudRead` race
//! hook doing a loom yield (a free context switch, not a preemption).
//!
//! Fixed: the unsharer's `tlb_remove_table_sync_one` runs while it still
//! holds i_mmap_rwsem, so it waits for the walker's IRQs-off region before
//! the reuser (who needs i_mmap_rwsem for the split and the zap) can touch S.
#![cfg(mmemu_loom)]

use loom_tests::model::{check_fixed, check_reverted, model_kernel, violation};
use mm_core::config::{Arch, Fix};
use mm_core::hw::pte::Level;
use mm_core::inject::GupFastPoint;
use mm_core::ops::fault::handle_mm_fault;
use mm_core::ops::gup::{gup_fast, put_user_pages, Foll};
use mm_core::ops::{dup_mmap, exit_mm, mmap_anon, mmap_hugetlb, munmap};
use mm_core::pgtable::{lookup_table, read};
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

fn model(fix: bool) -> Option<String> {
    let k = model_kernel(3, |c| {
        c.arch = Arch::Arm64; // broadcast TLBI: the flush does not wait for the walker
        c.gup_oracle = true;
        c.fixes.set(Fix::HugetlbUnshareSync, fix);
    });
    let g = k.cfg.geometry;
    let (hs, pud) = (g.pmd_size(), g.pud_size());
    let base = g.task_size() / 4; // PGD-aligned: one PUD table
                                  // Set-up (CPU0): P1 maps the file over one whole PUD region and faults
                                  // its first huge page F; P2 is forked from P1 and faults F, so P2's PUD points at
                                  // P1's PMD table S (pt_share_count 1).
    let f = k.new_file(pud / g.page_size());
    let p1 = k.mm_alloc();
    switch_mm(&k, &p1);
    mmap_hugetlb(&k, &p1, base, pud, true, &f, 0).unwrap();
    k.write_user(&p1, base + 8, 0x11).unwrap();
    let p2 = dup_mmap(&k, &p1).unwrap();
    switch_mm(&k, &p2);
    // fork copied nothing (vma_needs_copy): P2's first fault shares S.
    handle_mm_fault(&k, &p2, base + 8, false).unwrap();
    // An untouched neighbour keeps P2's PUD table when the hugetlb VMA goes
    // (P2's munmap unhooks S and frees no table).
    mmap_anon(&k, &p2, base + pud, g.page_size(), true).unwrap();
    let p2_pud = lookup_table(&k, &p2, base, Level::Pud).unwrap();
    // Every CPU is already running its process when the threads start
    // (switch_mm is an IRQs-off region, i.e. an RCU reader, and RCU under
    // loom is crossbeam-epoch's: keeping those out of the threads keeps the
    // model small).
    for (cpu, mm) in [(1, &p2), (2, &p1), (0, &p2)] {
        k.set_cpu(CpuId(cpu));
        switch_mm(&k, mm);
    }

    let (k1, p2b) = (k.clone(), p2.clone());
    let unsharer = loom::thread::spawn(move || {
        k1.set_cpu(CpuId(1));
        munmap(&k1, &p2b, base, pud).map_err(|e| format!("model: P2 munmap: {e}"))
    });
    let (k2, p1c) = (k.clone(), p1.clone());
    let reuser = loom::thread::spawn(move || -> Result<(), String> {
        k2.set_cpu(CpuId(2));
        // P1's surgery starts once P2's PUD no longer points at S (in the
        // other order P1 unshares itself and S never changes hands): a ghost
        // read of the PUD slot, not kernel code.
        while read(&k2, p2_pud, Level::Pud, base).present() {
            loom::thread::yield_now();
        }
        munmap(&k2, &p1c, base, hs).map_err(|e| format!("model: P1 munmap: {e}"))?;
        mmap_anon(&k2, &p1c, base, hs, true).map_err(|e| format!("model: P1 mmap: {e}"))?;
        // The write fault that hangs P1's PTE table (and anon page Q) into S.
        handle_mm_fault(&k2, &p1c, base, true).map_err(|e| format!("model: P1 fault: {e:?}"))?;
        Ok(())
    });
    // The walker may stall (an NMI, a preempted vCPU) right after reading
    // P2's PUD entry — the point GUP-fast never re-checks: a loom yield
    // there lets the others run without spending a preemption on it.
    k.inject.race.set_gup_fast(|_, point, _| {
        if point == GupFastPoint::PudRead {
            loom::thread::yield_now();
        }
    });
    // The walker: P2's GUP-fast of the first base page of huge page F.
    let got = gup_fast(&k, &p2, base, 1, Foll::GET);
    put_user_pages(&k, &got);
    let errs = [unsharer.join().unwrap(), reuser.join().unwrap()];
    let v = violation(&k).or_else(|| errs.into_iter().find_map(Result::err));
    // Tear down whatever happened (the mm ↔ file references would otherwise
    // keep loom Arcs alive past the execution).
    exit_mm(&k, &p2);
    k.set_cpu(CpuId(2));
    exit_mm(&k, &p1);
    v
}

#[test]
fn hugetlb_unshare_gup_fixed() {
    check_fixed("hugetlb_unshare_gup_fixed", || model(true));
}

#[test]
fn hugetlb_unshare_gup_reverted() {
    check_reverted("hugetlb_unshare_gup_reverted", "sanitizer: gup-oracle", || model(false));
}
