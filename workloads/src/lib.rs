//! Workloads: the programs mmemu runs on the emulated machine.
//!
//! - `races`: one stress driver per race of KERNEL-RACES.md.  Each runs the
//!   racing kernel paths concurrently on an emu-cpu `System` for a bounded
//!   number of iterations and reports what the sanitizer / oracles found.
//!   With the race's fix switched off a driver must find the violation
//!   within its iteration bound; with the fix on it must find none.

pub mod races;
