//! Workloads: the programs mmemu runs on the emulated machine, and the
//! `mmemu` command line around them.  From the top down:
//!
//! - `cli`: argument parsing, the subcommands and the exit status
//!   (`src/bin/mmemu.rs` is thin).
//! - `report`: an `Outcome` and its setup as a human summary or JSON.
//! - `scenarios`: the registry `mmemu list` shows — the storms
//!   (munmap-storm, mprotect-pingpong, madvise-dontneed, exit-storm:
//!   shipped scripts) and one adapter per race driver.
//! - `races`: one stress driver per race of docs/RACES.md, all through
//!   one harness (`races::harness`).  Each runs the racing kernel paths
//!   concurrently on an emu-cpu `System` for a bounded number of rounds and
//!   reports what the sanitizer / oracles found.  With the race's fix
//!   switched off a driver must find the violation within its round bound;
//!   with the fix on it must find none.
//! - `outcome`: what a run produced (`Outcome`, `Measure`).
//! - `error`: `RunError`, why a run produced nothing or ended early.
//! - `trace_json`: Chrome trace-event JSON for ui.perfetto.dev.
//! - `budget`: rounds or seconds, and the SIGINT / SIGTERM stop request.
//! - `input`: names with "did you mean", decimal integers in a range.
//! - `host`: `mmemu host FILE`, a script run on the real host kernel
//!   (forked processes, pinned threads, /proc/interrupts before and after).
//! - `script`: `.mmemu` scripts (docs/SCRIPTS.md): parser and checker.
//! - `inject`: `--inject-panic`, the error path's test hook.

pub mod budget;
pub mod cli;
pub mod error;
pub mod host;
pub mod inject;
pub mod input;
pub mod outcome;
pub mod races;
pub mod report;
pub mod scenarios;
pub mod script;
pub mod trace_json;
