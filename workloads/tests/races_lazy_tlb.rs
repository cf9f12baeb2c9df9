//! Stress driver for docs/RACES.md, “x86 lazy TLB and freed page tables” on the threaded machine: with
//! lazy-tlb-freed-tables reverted a lazy CPU's speculative walk lands in a
//! freed page table in the first round; with the rule, none.
//! Prints the rounds needed (`--nocapture`).

use mm_core::check::ViolationKind;
use mm_core::config::{Arch, Fix, KernelConfig};
use mm_core::stats::Stat;
use workloads::races::{lazy_tlb, RaceParams};

fn params(revert: bool, iterations: u64) -> RaceParams {
    let mut kcfg = KernelConfig { arch: Arch::X86, nr_cpus: 2, ..KernelConfig::default() };
    kcfg.fixes.set(Fix::LazyTlbFreedTables, !revert);
    RaceParams::until_violation(kcfg, iterations)
}

#[test]
fn lazy_tlb_freed_tables_off_walks_into_freed_table() {
    let o = lazy_tlb::run(&params(true, 500)).unwrap();
    eprintln!("lazy_tlb (fix off): {o:?}");
    let at = o.first_violation_at.unwrap_or_else(|| panic!("no violation in {} rounds", o.iterations));
    assert!(o.kinds.contains(&ViolationKind::WalkIntoFreedTable), "{:?}", o.kinds);
    // The walker walks until CPU0 has freed the table (rcu_barrier), so the
    // first round shows it.
    assert_eq!(at, 1, "{o:?}");
    assert_eq!(o.kernel.stats.get(Stat::LazySwitchToInitMm), 0, "reverted: the lazy CPU is never IPIed");
}

#[test]
fn lazy_tlb_freed_tables_on_is_clean() {
    let o = lazy_tlb::run(&params(false, 60)).unwrap();
    eprintln!("lazy_tlb (fix on): {o:?}");
    assert_eq!(o.iterations, 60);
    assert_eq!(o.kernel.san.count(), 0, "{:?}", o.kernel.san.violations());
    assert!(o.kernel.stats.get(Stat::LazySwitchToInitMm) >= 1, "the lazy CPU was IPIed and left the mm");
}
