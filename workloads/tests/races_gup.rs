//! Stress drivers for docs/RACES.md, “GUP-fast versus page-table freeing”, “khugepaged collapse versus GUP-fast” on the threaded machine: with
//! the protection off the driver finds the violation within a bounded number
//! of rounds; with it on, none in a fixed number of rounds.  Each test
//! prints the rounds it needed (`cargo test -p workloads --test races_gup
//! -- --nocapture`).

use std::time::Instant;

use emu_cpu::{MachineConfig, WaitPolicy};
use mm_core::check::ViolationKind;
use mm_core::{Arch, Fix, Fixes, Geometry, KernelConfig};

/// 64-entry tables: a THP is 64 pages, so each collapse copies 64 frames
/// instead of 512 (cheaper rounds, same race).
const KHUGEPAGED_GEOMETRY: Geometry = Geometry { page_shift: 12, pt_bits: 6 };
use workloads::error::RunError;
use workloads::races::khugepaged_gup::{self, Scenario};
use workloads::races::{gup_table_free, RaceOutcome, RaceParams};

/// Rounds a reverted protection may need at most before the test fails.
const FIND_BOUND: u64 = 3000;
/// Rounds a protected configuration must run clean (compare with the
/// rounds the reverted configurations needed: printed by each test).
/// `MMEMU_CLEAN_ROUNDS=N` runs every clean test for N rounds instead.
fn clean_rounds() -> u64 {
    clean_override().unwrap_or(100)
}

/// The same for configurations whose every round waits for IPIs to a CPU
/// that is stalled with IRQs off (slow on a small, busy host).
fn clean_rounds_ipi() -> u64 {
    clean_override().unwrap_or(40)
}

fn clean_override() -> Option<u64> {
    std::env::var("MMEMU_CLEAN_ROUNDS").ok().and_then(|v| v.parse().ok())
}

fn params(kcfg: KernelConfig, iterations: u64) -> RaceParams {
    RaceParams {
        kcfg: KernelConfig { nr_cpus: 2, ..kcfg },
        // Parked waiters: on a small, busy host spinning CPU threads steal
        // the time the CPU they wait for needs (x86 rounds 3x faster).
        machine: MachineConfig { wait: WaitPolicy::Park, ..MachineConfig::default() },
        iterations,
        seed: 0x5eed,
        stop_on_violation: true,
        stop: workloads::budget::Until::forever(),
        params: Default::default(),
    }
}

fn report(name: &str, t: Instant, o: &RaceOutcome) {
    println!(
        "{name}: {} rounds, first violation at {:?}, kinds {:?}, {:.2?}",
        o.iterations,
        o.first_violation_at,
        o.kinds,
        t.elapsed()
    );
}

fn expect_found(name: &str, r: Result<RaceOutcome, RunError>, kind: ViolationKind, t: Instant) {
    let o = r.expect("driver");
    report(name, t, &o);
    assert!(o.first_violation_at.is_some(), "{name}: no violation in {FIND_BOUND} rounds");
    assert!(o.kinds.contains(&kind), "{name}: expected {kind}, got {:?}", o.kernel.san.violations());
}

fn expect_clean(name: &str, r: Result<RaceOutcome, RunError>, rounds: u64, t: Instant) {
    let o = r.expect("driver");
    report(name, t, &o);
    assert_eq!(o.iterations, rounds);
    assert_eq!(o.kernel.san.count(), 0, "{name}: {:?}", o.kernel.san.violations());
    assert_eq!(o.kernel.alloc.in_use().total(), 0, "{name}: leaked {:?}", o.kernel.alloc.in_use());
}

// ---- RACES.md “GUP-fast versus page-table freeing” -------------------------------------------------------------------

#[test]
fn gup_table_free_arm64_immediate_free_finds_the_walk_into_a_freed_table() {
    let t = Instant::now();
    let kcfg = KernelConfig { arch: Arch::Arm64, rcu_table_free: false, ..KernelConfig::default() };
    expect_found(
        "RACES.md “GUP-fast versus page-table freeing” arm64 immediate free",
        gup_table_free::run(&params(kcfg, FIND_BOUND)),
        ViolationKind::GupFastFreedTable,
        t,
    );
}

#[test]
fn gup_table_free_x86_ipi_flush_immediate_free_is_clean() {
    let t = Instant::now();
    let kcfg = KernelConfig { arch: Arch::X86, rcu_table_free: false, ..KernelConfig::default() };
    expect_clean(
        "RACES.md “GUP-fast versus page-table freeing” x86 IPI + immediate free",
        gup_table_free::run(&params(kcfg, clean_rounds_ipi())),
        clean_rounds_ipi(),
        t,
    );
}

#[test]
fn gup_table_free_arm64_rcu_table_free_is_clean() {
    let t = Instant::now();
    let kcfg = KernelConfig { arch: Arch::Arm64, rcu_table_free: true, ..KernelConfig::default() };
    expect_clean(
        "RACES.md “GUP-fast versus page-table freeing” arm64 RCU free",
        gup_table_free::run(&params(kcfg, clean_rounds())),
        clean_rounds(),
        t,
    );
}

// ---- RACES.md “Stale pin of a collapsed page”: gup-pmd-recheck (70cbc3cc78a9) ------------------------------------

fn cfg_2a(pmd_recheck: bool) -> KernelConfig {
    let mut fixes = Fixes::all().revert(Fix::KhugepagedGupFastIpi);
    fixes.set(Fix::GupPmdRecheck, pmd_recheck);
    KernelConfig { fixes, geometry: KHUGEPAGED_GEOMETRY, ..KernelConfig::default() }
}

#[test]
fn khugepaged_2a_without_pmd_recheck_finds_the_stale_pin() {
    let t = Instant::now();
    let r = khugepaged_gup::run_scenario(&params(cfg_2a(false), FIND_BOUND), Scenario::A);
    expect_found("RACES.md “Stale pin of a collapsed page” gup-pmd-recheck off", r, ViolationKind::GupOracle, t);
}

#[test]
fn khugepaged_2a_with_pmd_recheck_is_clean() {
    let t = Instant::now();
    // Each round waits out the walker once (the driver's harness sync).
    let r = khugepaged_gup::run_scenario(&params(cfg_2a(true), clean_rounds_ipi()), Scenario::A);
    expect_clean("RACES.md “Stale pin of a collapsed page” gup-pmd-recheck on", r, clean_rounds_ipi(), t);
}

// ---- RACES.md “The PTE table freed under the walker”: khugepaged-gup-fast-ipi (2ba99c5e0881) ---------------------------

fn cfg_2b(sync_ipi: bool, pte_free_defer: bool) -> KernelConfig {
    let mut fixes = Fixes::all();
    fixes.set(Fix::KhugepagedGupFastIpi, sync_ipi);
    KernelConfig {
        fixes,
        rcu_table_free: true,
        pte_free_defer,
        geometry: KHUGEPAGED_GEOMETRY,
        ..KernelConfig::default()
    }
}

#[test]
fn khugepaged_2b_anon_without_sync_ipi_finds_the_freed_deposited_table() {
    let t = Instant::now();
    let r = khugepaged_gup::run_scenario(&params(cfg_2b(false, true), FIND_BOUND), Scenario::BAnon);
    expect_found(
        "RACES.md “The PTE table freed under the walker” anon khugepaged-gup-fast-ipi off",
        r,
        ViolationKind::GupFastFreedTable,
        t,
    );
}

#[test]
fn khugepaged_2b_anon_with_sync_ipi_is_clean() {
    let t = Instant::now();
    let r = khugepaged_gup::run_scenario(&params(cfg_2b(true, true), clean_rounds_ipi()), Scenario::BAnon);
    expect_clean(
        "RACES.md “The PTE table freed under the walker” anon khugepaged-gup-fast-ipi on",
        r,
        clean_rounds_ipi(),
        t,
    );
}

#[test]
fn khugepaged_2b_file_immediate_free_without_sync_ipi_finds_the_freed_table() {
    let t = Instant::now();
    let r = khugepaged_gup::run_scenario(&params(cfg_2b(false, false), FIND_BOUND), Scenario::BFile);
    expect_found(
        "RACES.md “The PTE table freed under the walker” file khugepaged-gup-fast-ipi off",
        r,
        ViolationKind::GupFastFreedTable,
        t,
    );
}

#[test]
fn khugepaged_2b_file_immediate_free_with_sync_ipi_is_clean() {
    let t = Instant::now();
    let r = khugepaged_gup::run_scenario(&params(cfg_2b(true, false), clean_rounds_ipi()), Scenario::BFile);
    expect_clean(
        "RACES.md “The PTE table freed under the walker” file khugepaged-gup-fast-ipi on",
        r,
        clean_rounds_ipi(),
        t,
    );
}

#[test]
fn khugepaged_2b_file_pte_free_defer_is_clean_without_sync_ipi() {
    let t = Instant::now();
    let r = khugepaged_gup::run_scenario(&params(cfg_2b(false, true), clean_rounds()), Scenario::BFile);
    expect_clean("RACES.md “The PTE table freed under the walker” file pte_free_defer", r, clean_rounds(), t);
}
