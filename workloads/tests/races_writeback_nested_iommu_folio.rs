//! Stress drivers of docs/RACES.md, “Delayed rmap removal”, “Concurrent zaps under a shared lock” and the folio-batching count driver
//! on the threaded machine (emu-cpu): writeback_race (RACES.md “Delayed rmap removal”, delay-rmap),
//! iommu_sva (RACES.md “Secondary-TLB (IOMMU) invalidation”, secondary-tlb-on-flush: the livelock and DMA vs zap),
//! nested_zap (RACES.md “Concurrent zaps under a shared lock”, nested-flush-detect) and large_folio_zap
//! (folio-pages-batching counts).  With each switch off the driver finds
//! the matching violation within a bounded number of rounds; with it on,
//! none in as many rounds.  Each test prints the rounds it needed (run with
//! `--nocapture`).

use mm_core::check::ViolationKind;
use mm_core::config::{Arch, Fix, KernelConfig};
use workloads::races::{iommu_sva, large_folio_zap, nested_zap, writeback_race, RaceOutcome, RaceParams};

fn params(cpus: usize, revert: Option<Fix>, iterations: u64) -> RaceParams {
    let mut kcfg = KernelConfig { arch: Arch::Arm64, nr_cpus: cpus, ..KernelConfig::default() };
    if let Some(f) = revert {
        kcfg.fixes.set(f, false);
    }
    RaceParams::until_violation(kcfg, iterations)
}

fn expect_found(name: &str, o: &RaceOutcome, kind: ViolationKind, bound: u64) {
    eprintln!("{name} (fix off): {o:?}");
    let at = o.first_violation_at.unwrap_or_else(|| panic!("{name}: no violation in {} rounds", o.iterations));
    assert!(at <= bound, "{name}: first violation in round {at} > {bound}");
    assert!(o.kinds.contains(&kind), "{name}: expected {kind}, got {:?}", o.kinds);
}

fn expect_clean(name: &str, o: &RaceOutcome, rounds: u64) {
    eprintln!("{name} (fix on): {o:?}");
    assert_eq!(o.iterations, rounds);
    assert_eq!(o.kernel.san.count(), 0, "{name}: {:?}", o.kernel.san.violations());
}

#[test]
fn writeback_race_delay_rmap_off_loses_data() {
    let o = writeback_race::run(&params(2, Some(Fix::DelayRmap), 1000)).unwrap();
    expect_found("writeback_race", &o, ViolationKind::LostDirtyData, 1000);
}

#[test]
fn writeback_race_delay_rmap_on_is_clean() {
    let o = writeback_race::run(&params(2, None, 100)).unwrap();
    expect_clean("writeback_race", &o, 100);
    // Every dirty file page of every zap is a delayed rmap — except page 0,
    // which A's msync may have cleaned before Z reached it (then it is not
    // dirty at zap time and its rmap goes at once, correctly).
    assert!(o.kernel.stats.get(mm_core::stats::Stat::DelayedRmaps) >= 100 * (writeback_race::PAGES - 1));
}

#[test]
fn nested_zap_detect_off_leaves_stale_entries() {
    let o = nested_zap::run(&params(2, Some(Fix::NestedFlushDetect), 1000)).unwrap();
    expect_found("nested_zap", &o, ViolationKind::StaleAfterZap, 1000);
}

#[test]
fn nested_zap_detect_on_is_clean() {
    let o = nested_zap::run(&params(2, None, 60)).unwrap();
    expect_clean("nested_zap", &o, 60);
}

#[test]
fn iommu_sva_secondary_tlb_on_flush_off_livelocks() {
    let o = iommu_sva::run(&params(2, Some(Fix::SecondaryTlbOnFlush), 200)).unwrap();
    expect_found("iommu_sva", &o, ViolationKind::SecondaryLivelock, 200);
}

#[test]
fn iommu_sva_secondary_tlb_on_flush_on_is_clean() {
    let o = iommu_sva::run(&params(2, None, 200)).unwrap();
    expect_clean("iommu_sva", &o, 200);
    assert!(o.kernel.stats.get(mm_core::stats::Stat::SecondaryTlbInvalidations) >= 200);
}

#[test]
fn iommu_dma_vs_zap_never_touches_freed_frames_either_placement() {
    for revert in [None, Some(Fix::SecondaryTlbOnFlush)] {
        let o = iommu_sva::run_dma_vs_zap(&params(2, revert, 150)).unwrap();
        expect_clean("iommu_dma_vs_zap", &o, 150);
        assert!(o.kernel.stats.get(mm_core::stats::Stat::SecondaryTlbInvalidations) >= 150);
    }
}

#[test]
fn large_folio_zap_counts() {
    let mut r = Vec::new();
    for revert in [None, Some(Fix::FolioPagesBatching)] {
        let mut p = params(2, revert, 3);
        p.kcfg.arch = Arch::X86;
        let o = large_folio_zap::run(&p).unwrap();
        assert_eq!(o.kernel.san.count(), 0);
        let s = o.kernel.stats_snapshot();
        r.push((
            s.get("tlb_flush_ranged") + s.get("tlb_flush_full"),
            s.get("gather_batch_alloc"),
            s.get("gather_pages_freed"),
        ));
    }
    eprintln!("large_folio_zap (on, off): {r:?}");
    let pages = 3 * large_folio_zap::FOLIOS * 512;
    assert_eq!(r[0].2, pages);
    assert_eq!(r[1].2, pages);
    assert!(r[1].0 > r[0].0, "page-by-page gathering flushes more: {r:?}");
    assert!(r[1].1 > r[0].1, "and needs more batch pages: {r:?}");
}
