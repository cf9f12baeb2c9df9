//! Workloads: the programs mmemu runs on the emulated machine, and the
//! `mmemu` command line around them.
//!
//! - `scenarios`: the registry `mmemu list` shows — native multi-CPU
//!   programs (munmap-storm, mprotect-pingpong, madvise-dontneed,
//!   exit-storm) and one adapter per race driver.
//! - `races`: one stress driver per race of KERNEL-RACES.md.  Each runs the
//!   racing kernel paths concurrently on an emu-cpu `System` for a bounded
//!   number of iterations and reports what the sanitizer / oracles found.
//!   With the race's fix switched off a driver must find the violation
//!   within its iteration bound; with the fix on it must find none.
//! - `report`: counters, violations and leaks as a human summary or JSON.
//! - `trace_json`: Chrome trace-event JSON for ui.perfetto.dev.
//! - `budget`: rounds or seconds, and the SIGINT / SIGTERM stop request.
//! - `cli`: argument parsing and the subcommands (`src/bin/mmemu.rs` is thin).

pub mod budget;
pub mod cli;
pub mod error;
pub mod inject;
pub mod input;
pub mod outcome;
pub mod races;
pub mod report;
pub mod scenarios;
pub mod trace_json;
