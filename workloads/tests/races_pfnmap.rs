//! Stress driver for docs/RACES.md, “munmap of a PFN mapping versus the
//! driver's free” on the threaded machine (MMU_GATHER_NO_RANGE): with
//! no-range-vma-pfn reverted the driver frees frames another CPU still
//! caches; with the fix `tlb_end_vma` flushed them first.

use mm_core::check::ViolationKind;
use mm_core::config::{Arch, Fix, KernelConfig};
use mm_core::stats::Stat;
use workloads::races::{pfnmap_unmap, RaceParams};

fn params(revert: bool, iterations: u64) -> RaceParams {
    let mut kcfg = KernelConfig { arch: Arch::GenericNoRange, nr_cpus: 2, ..KernelConfig::default() };
    kcfg.fixes.set(Fix::NoRangeVmaPfn, !revert);
    RaceParams::until_violation(kcfg, iterations)
}

#[test]
fn no_range_vma_pfn_off_frees_frames_a_cpu_still_caches() {
    let o = pfnmap_unmap::run(&params(true, 10)).unwrap();
    eprintln!("pfnmap_unmap (fix off): {o:?}");
    assert_eq!(o.first_violation_at, Some(1), "the window is forced: the first round shows it");
    assert!(o.kinds.contains(&ViolationKind::FreedBeforeFlush), "{:?}", o.kinds);
    assert_eq!(o.kernel.stats.get(Stat::NoRangeFlushTlbMm), 1, "one flush, at tlb_finish_mmu");
    // The harness timed the rounds up to the end of the violating one (it
    // stopped there, so that is all of them).
    let after = o.timing.first_violation_after.expect("a time to the first violation");
    assert!(after > std::time::Duration::ZERO && after <= o.timing.rounds, "{:?}", o.timing);
}

#[test]
fn no_range_vma_pfn_on_is_clean() {
    let o = pfnmap_unmap::run(&params(false, 20)).unwrap();
    eprintln!("pfnmap_unmap (fix on): {o:?}");
    assert_eq!(o.iterations, 20);
    assert_eq!(o.kernel.san.count(), 0, "{:?}", o.kernel.san.violations());
    assert_eq!(o.leaked.map(|l| l.total()), Some(0));
    assert_eq!(o.timing.first_violation_after, None, "no violation, no time to one");
    assert!(o.timing.rounds > std::time::Duration::ZERO);
}
