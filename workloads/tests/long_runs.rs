//! Long runs hold: the failures a stress user hit after N rounds or N
//! seconds, each reproduced in a configuration that reaches the same state
//! quickly (issue 11).  Runs the built `mmemu` binary.

use std::process::{Command, Output};

fn mmemu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmemu")).args(args).output().expect("run mmemu")
}

fn expect_ok(args: &[&str]) -> String {
    let o = mmemu(args);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "mmemu {args:?}\nstdout:\n{out}\nstderr:\n{err}");
    out.into_owned()
}

/// munmap-storm on one CPU panicked after 5375 rounds ("touch own region:
/// Segv ... NotPresent"): the CPU never idled, so no RCU callback ran and
/// the page tables every munmap frees through RCU used up the emulated RAM.
/// One page per round frees three tables (PTE, PMD, PUD); the scenario's
/// RAM for one 1-page thread is 16384 frames, so 7000 rounds (21000 tables)
/// run out without the timer tick's RCU processing.
#[test]
fn munmap_storm_frees_rcu_tables_on_a_cpu_that_never_idles() {
    let out = expect_ok(&[
        "run", "munmap-storm", "--cpus", "1", "--no-pin", "--iterations", "7000", "--param", "pages=1", "--param",
        "chunk=1", "--param", "peek=0",
    ]);
    assert!(out.contains("7000 rounds"), "{out}");
    assert!(out.contains("verdict: ok"), "{out}");
}
