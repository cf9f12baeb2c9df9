//! Stress drivers of docs/RACES.md, “hugetlb PMD sharing” on the threaded machine (emu-cpu):
//! hugetlb PMD unsharing versus GUP-fast (1013af4f585f), the fork+exit
//! IPI regression workload (8ce720d5bd91), and the walk cache left on an
//! unshared table by arm64's last-level flush (c2ff4764e03e).

use std::time::Duration;

use emu_cpu::{MachineConfig, WaitPolicy};
use mm_core::check::ViolationKind;
use mm_core::config::Arm64Cpu;
use mm_core::{Arch, Fix, Fixes, KernelConfig};
use workloads::races::fork_exit_hugetlb::{self, ForkExit, Shape};
use workloads::races::{hugetlb_unshare_gup, hugetlb_unshare_walk, RaceOutcome, RaceParams};

/// Upper bound on rounds for the switch-off run (the issue's "bounded
/// number of iterations").
const MAX_ROUNDS_OFF: u64 = 50;
/// Rounds the switch-on run must survive.
const ROUNDS_ON: u64 = 40;

fn machine() -> MachineConfig {
    MachineConfig {
        wait: WaitPolicy::Adaptive,
        watchdog: Duration::from_secs(5),
        hang_timeout: Duration::from_secs(20),
        ..MachineConfig::default()
    }
}

fn params(arch: Arch, fixes: Fixes, iterations: u64) -> RaceParams {
    RaceParams {
        kcfg: KernelConfig { arch, fixes, nr_cpus: 3, ..KernelConfig::default() },
        machine: machine(),
        iterations,
        seed: 0x5eed,
        stop_on_violation: true,
        stop: workloads::budget::Until::forever(),
        params: Default::default(),
    }
}

fn assert_no_leaks(k: &mm_core::Kernel) {
    let used = k.alloc.in_use();
    assert_eq!(used.total(), 0, "leaked frames: {used:?}");
}

#[test]
fn hugetlb_unshare_sync_off_on_arm64_lets_gup_fast_pin_a_foreign_page() {
    let out =
        hugetlb_unshare_gup::run(&params(Arch::Arm64, Fixes::all().revert(Fix::HugetlbUnshareSync), MAX_ROUNDS_OFF))
            .expect("driver");
    println!("hugetlb-unshare-sync off, arm64: {out:?}");
    let at = out
        .first_violation_at
        .expect("the RACES.md “Unshare versus GUP-fast” race must show within the bound with the sync reverted");
    assert!(at <= MAX_ROUNDS_OFF);
    assert!(out.kinds.contains(&ViolationKind::GupOracle), "{:?}", out.kernel.san.violations());
    assert_no_leaks(&out.kernel);
}

#[test]
fn hugetlb_unshare_sync_on_arm64_is_clean() {
    let out = hugetlb_unshare_gup::run(&params(Arch::Arm64, Fixes::all(), ROUNDS_ON)).expect("driver");
    println!("hugetlb-unshare-sync on, arm64: {out:?}");
    assert_eq!(out.iterations, ROUNDS_ON);
    assert_eq!(out.first_violation_at, None, "{:?}", out.kernel.san.violations());
    assert_eq!(out.kernel.san.count(), 0);
    // Every round's last-sharer unshare paid exactly one sync broadcast.
    assert_eq!(out.kernel.stats.get(mm_core::stats::Stat::TlbRemoveTableSyncOne), ROUNDS_ON);
    assert_no_leaks(&out.kernel);
}

#[test]
fn hugetlb_unshare_batched_off_is_still_safe_on_arm64() {
    let out = hugetlb_unshare_gup::run(&params(Arch::Arm64, Fixes::all().revert(Fix::HugetlbUnshareBatched), 15))
        .expect("driver");
    assert_eq!(out.kernel.san.count(), 0, "{:?}", out.kernel.san.violations());
    assert_no_leaks(&out.kernel);
}

#[test]
fn arm64_unshare_walk_cache_off_reads_through_the_reused_table() {
    let p = params(Arch::Arm64, Fixes::all().revert(Fix::Arm64UnshareWalkCache), MAX_ROUNDS_OFF);
    let out = hugetlb_unshare_walk::run(&p).expect("driver");
    println!("arm64-unshare-walk-cache off: {out:?}");
    // Not a timing race: with the last-level flush every round shows it.
    assert_eq!(out.first_violation_at, Some(1), "{:?}", out.kernel.san.violations());
    assert_eq!(out.kinds, [ViolationKind::WalkIntoUnsharedTable]);
    assert_no_leaks(&out.kernel);
}

#[test]
fn arm64_unshare_walk_cache_on_is_clean() {
    let out = hugetlb_unshare_walk::run(&params(Arch::Arm64, Fixes::all(), ROUNDS_ON)).expect("driver");
    println!("arm64-unshare-walk-cache on: {out:?}");
    assert_eq!(out.iterations, ROUNDS_ON);
    assert_eq!(out.kernel.san.count(), 0, "{:?}", out.kernel.san.violations());
    assert_no_leaks(&out.kernel);
}

#[test]
fn arm64_unshare_walk_cache_off_is_safe_without_range_tlbi_and_on_x86() {
    // Armv8.2 (no FEAT_TLBIRANGE): the PUD-sized unshare flush is
    // MAX_DVM_OPS strides, so it becomes flush_tlb_mm; x86: INVLPG drops
    // every paging-structure cache entry of the PCID.
    let mut v8_2 = params(Arch::Arm64, Fixes::all().revert(Fix::Arm64UnshareWalkCache), 10);
    v8_2.kcfg.arm64 = Arm64Cpu::V8_2;
    let x86 = params(Arch::X86, Fixes::all().revert(Fix::Arm64UnshareWalkCache), 10);
    for p in [v8_2, x86] {
        let out = hugetlb_unshare_walk::run(&p).expect("driver");
        assert_eq!(out.iterations, 10);
        assert_eq!(out.kernel.san.count(), 0, "{:?}: {:?}", p.kcfg.arch, out.kernel.san.violations());
        assert_no_leaks(&out.kernel);
    }
}

#[test]
fn hugetlb_unshare_sync_off_on_x86_is_saved_by_the_flush_ipi() {
    let out =
        hugetlb_unshare_gup::run(&params(Arch::X86, Fixes::all().revert(Fix::HugetlbUnshareSync), 15)).expect("driver");
    assert_eq!(out.kernel.san.count(), 0, "{:?}", out.kernel.san.violations());
    assert_no_leaks(&out.kernel);
}

fn fork_exit(fixes: Fixes) -> RaceOutcome<ForkExit> {
    let p = RaceParams {
        kcfg: KernelConfig { fixes, nr_cpus: 3, ..KernelConfig::default() },
        machine: machine(),
        iterations: 1,
        seed: 7,
        stop_on_violation: false,
        stop: workloads::budget::Until::forever(),
        params: Shape { tables: 6, children: 4, touch: 3 }.params(),
    };
    let r = fork_exit_hugetlb::run(&p).expect("fork-exit-hugetlb");
    println!("{:?}: {r:?}", fixes.reverted());
    assert_eq!(r.kernel.san.count(), 0, "{:?}", r.kernel.san.violations());
    assert_no_leaks(&r.kernel);
    assert_eq!(r.leaked.map(|l| l.total()), Some(0), "the harness's leak check agrees");
    r
}

#[test]
fn fork_exit_hugetlb_batched_one_sync_for_the_last_sharer_none_for_the_others() {
    let r = fork_exit(Fixes::all());
    let n = r.details.per_child.len();
    for c in &r.details.per_child[..n - 1] {
        assert!(!c.last_sharer);
        assert_eq!(c.sync_broadcasts, 0, "child {} is not the last sharer", c.child);
    }
    let last = &r.details.per_child[n - 1];
    assert!(last.last_sharer);
    assert_eq!(last.sync_broadcasts, 1, "one broadcast for all {} tables", r.details.tables);
    assert_eq!(last.call_interrupts, 2, "the broadcast reached the 2 other CPUs");
    assert_eq!(r.details.parent_exit_syncs, 0);
}

#[test]
fn fork_exit_hugetlb_unbatched_one_sync_per_table_for_every_child() {
    let r = fork_exit(Fixes::all().revert(Fix::HugetlbUnshareBatched));
    for c in &r.details.per_child {
        assert_eq!(c.sync_broadcasts, r.details.tables, "child {}: one broadcast per unshared table", c.child);
        assert_eq!(c.call_interrupts, 2 * r.details.tables);
    }
    assert!(r.details.per_child.last().unwrap().last_sharer);
}

#[test]
fn fork_exit_hugetlb_before_the_sync_fix_sends_nothing() {
    let r = fork_exit(Fixes::all().revert(Fix::HugetlbUnshareSync));
    assert!(r.details.per_child.iter().all(|c| c.sync_broadcasts == 0));
}

/// Rounds share one machine (the harness boots once): every round's parent
/// and children give the same numbers as the first round's.
#[test]
fn fork_exit_hugetlb_rounds_on_one_machine_repeat_the_first_rounds_numbers() {
    let p = RaceParams {
        kcfg: KernelConfig { nr_cpus: 3, ..KernelConfig::default() },
        machine: machine(),
        iterations: 3,
        seed: 7,
        stop_on_violation: false,
        stop: workloads::budget::Until::forever(),
        params: Shape { tables: 4, children: 3, touch: 2 }.params(),
    };
    let r = fork_exit_hugetlb::run(&p).expect("fork-exit-hugetlb");
    assert_eq!(r.iterations, 3);
    assert_eq!(r.details.per_child.len(), 9);
    let first: Vec<_> = r.details.per_child.iter().filter(|c| c.round == 1).cloned().collect();
    for round in 2..=3 {
        let again: Vec<_> = r
            .details
            .per_child
            .iter()
            .filter(|c| c.round == round)
            .map(|c| workloads::races::fork_exit_hugetlb::ChildExit { round: 1, ..c.clone() })
            .collect();
        assert_eq!(again, first, "round {round}");
    }
    assert_no_leaks(&r.kernel);
}
