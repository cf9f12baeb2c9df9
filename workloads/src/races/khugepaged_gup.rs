//! docs/RACES.md, “khugepaged collapse versus GUP-fast”: khugepaged collapse versus GUP-fast, on the arm64
//! profile (the TLB flush in `pmdp_collapse_flush` is a hardware broadcast
//! that does not wait for the walker's IRQs-off section).
//!
//! - RACES.md “Stale pin of a collapsed page”, 70cbc3cc78a9 (`gup-pmd-recheck`): W stalls after reading a PTE;
//!   khugepaged (K) clears the PMD and checks refcounts meanwhile; W grabs
//!   the old page after the check, and only a PMD re-check makes it back
//!   off.  Run with `khugepaged-gup-fast-ipi` off (either fix closes RACES.md “Stale pin of a collapsed page”);
//!   the violation is `gup-oracle` (W returns a page that was no longer
//!   mapped when it was grabbed; the collapse discarded it).  The driver
//!   keeps RACES.md “The PTE table freed under the walker” out of this run (see the harness sync in the actor).
//! - RACES.md “The PTE table freed under the walker” anon, 2ba99c5e0881 (`khugepaged-gup-fast-ipi`): W stalls after
//!   reading the PMD; K collapses (the PTE table is deposited under the THP)
//!   and munmaps the THP (`zap_deposited_table` frees the table at once);
//!   W reads on from the freed table: `gup-fast-freed-table`.  Needs
//!   `rcu_table_free` (without it `tlb_remove_table_sync_one` is a no-op).
//! - RACES.md “The PTE table freed under the walker” file: as RACES.md “The PTE table freed under the walker” with `retract_page_tables` freeing an empty file PTE
//!   table at once (`pte_free_defer = false`, the 2022 path); with
//!   `pte_free_defer` the table waits for a grace period and the sync does
//!   not matter.
//!
//! The driver forces `arch = arm64` and the GUP oracle on; the switches,
//! `rcu_table_free`, `pte_free_defer` and the geometry come from `p.kcfg`
//! (a smaller geometry, e.g. 64-entry tables, makes each collapse cheap and
//! so lets more rounds run per second; the race is the same).

use std::time::Duration;

use mm_core::inject::{CollapsePoint, GupFastPoint};
use mm_core::mm::MmStruct;
use mm_core::ops::khugepaged::{collapse_huge_page, retract_page_tables, ScanResult};
use mm_core::ops::{madvise_dontneed, mmap_anon, mmap_file, munmap};
use mm_core::sync::{Arc, AtomicU64, Ordering};
use mm_core::{Arch, Kernel};

use super::gup_table_free::{gup_kcfg, gup_round, install_stall, install_stall_until};
use super::{harness, RaceOutcome, RaceParams};
use crate::error::RunError;

/// The raced PMD range (2 MiB aligned).
pub const BASE: u64 = 0x4000_0000;
/// Pages faulted in before each collapse (the rest are holes).
pub const NR_PAGES: u64 = 8;

/// Which RACES.md “khugepaged collapse versus GUP-fast” race to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// RACES.md “Stale pin of a collapsed page”: stale-page pin (70cbc3cc78a9).
    A,
    /// RACES.md “The PTE table freed under the walker”, anon collapse + deposit + zap_deposited_table (2ba99c5e0881).
    BAnon,
    /// RACES.md “The PTE table freed under the walker”, file retract_page_tables with an immediate free.
    BFile,
}

/// `run_scenario(p, Scenario::BAnon)`: the race-driver contract's entry.
pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    run_scenario(p, Scenario::BAnon)
}

pub fn run_scenario(p: &RaceParams, sc: Scenario) -> Result<RaceOutcome, RunError> {
    let mut kcfg = gup_kcfg(p)?;
    kcfg.arch = Arch::Arm64;
    harness::run(p, kcfg, |h| {
        let k = h.k.clone();
        let ps = k.cfg.geometry.page_size();
        let hpage = k.cfg.geometry.pmd_size();
        let (point, stall) = match sc {
            // Long enough to span K's isolate-to-release window.
            Scenario::A => (GupFastPoint::PteRead, Duration::from_micros(300)),
            // Long enough to span K's collapse + munmap (or retract).
            Scenario::BAnon | Scenario::BFile => (GupFastPoint::PmdRead, Duration::from_micros(600)),
        };
        if sc == Scenario::A {
            // W's stall after reading a PTE ends at the latest after
            // `stall`, and as soon as K's `__collapse_huge_page_isolate`
            // has checked the small pages' refcounts (K cleared the PMD
            // before): W then grabs the page right after the check it
            // had to miss.  Only W's timing is chosen; K runs as always.
            let isolated = Arc::new(AtomicU64::new(0));
            let i = isolated.clone();
            if !k.inject.race.set_collapse(move |_k, p, _va| {
                if p == CollapsePoint::AfterIsolate {
                    i.fetch_add(1, Ordering::SeqCst);
                }
            }) {
                return Err(RunError::Driver("khugepaged_gup: the collapse hook is already taken".into()));
            }
            install_stall_until(&k, point, stall, h.p.seed, Some(isolated));
        } else {
            install_stall(&k, point, stall, h.p.seed);
        }
        let mm = h.mm()?;
        let file = h.file(hpage / ps);
        match sc {
            Scenario::A | Scenario::BAnon => {
                let actor = move |k: &Arc<Kernel>, mm: &Arc<MmStruct>, _round: u64| {
                    mmap_anon(k, mm, BASE, hpage, true).expect("mmap");
                    for i in 0..NR_PAGES {
                        k.write_user(mm, BASE + i * ps, i + 1).expect("fault in");
                    }
                    let r = collapse_huge_page(k, mm, BASE);
                    assert!(matches!(r, ScanResult::Succeed | ScanResult::PageCount), "collapse: {r:?}");
                    if sc == Scenario::A {
                        // Harness, not kernel: RACES.md “Stale pin of a collapsed page” runs with khugepaged-gup-fast-ipi
                        // off, so the munmap below could free the deposited table
                        // under a walker still stalled in it — that is RACES.md “The PTE table freed under the walker”.  Wait
                        // out every IRQs-off section first (after the collapse, so
                        // RACES.md “Stale pin of a collapsed page”'s window inside it is untouched) to keep the two races
                        // apart.
                        mm_core::smp::smp_call_function(&*k.smp, &|_| {});
                    }
                    munmap(k, mm, BASE, hpage).expect("munmap");
                    // Reuse freed frames.
                    mmap_anon(k, mm, BASE + hpage, NR_PAGES * ps, true).expect("mmap");
                    for i in 0..NR_PAGES {
                        k.write_user(mm, BASE + hpage + i * ps, 0xbad).expect("fault in");
                    }
                    munmap(k, mm, BASE + hpage, NR_PAGES * ps).expect("munmap");
                };
                h.rounds(|h, round| gup_round(h, &mm, (BASE, NR_PAGES), &actor, round))
            }
            Scenario::BFile => {
                let f = file.clone();
                let actor = move |k: &Arc<Kernel>, mm: &Arc<MmStruct>, _round: u64| {
                    mmap_file(k, mm, BASE, hpage, false, true, &f, 0).expect("mmap");
                    for i in 0..NR_PAGES {
                        k.read_user(mm, BASE + i * ps).expect("fault in");
                    }
                    madvise_dontneed(k, mm, BASE, hpage).expect("madvise");
                    retract_page_tables(k, &f, 0);
                    munmap(k, mm, BASE, hpage).expect("munmap");
                };
                h.rounds(|h, round| gup_round(h, &mm, (BASE, NR_PAGES), &actor, round))
            }
        }
    })
}
