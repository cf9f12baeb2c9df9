//! emu-cpu: the machine mm-core runs on.
//!
//! This crate will hold the emulated CPUs as OS threads (pinned to host
//! cores where the host allows, oversubscribed otherwise), per-CPU IPI
//! mailboxes carrying cross-CPU function calls with wait, interrupt masking
//! (IPIs are only serviced while a CPU's IRQs are on), idle and wait
//! policies, and a watchdog that reports CPUs stuck waiting for an IPI
//! acknowledgement.  It implements mm-core's `Smp` seam
//! (`mm_core::smp::Smp`), so the kernel code in mm-core runs unchanged on
//! real threads; `mm_core::smp::SyncSmp` stays the single-threaded
//! reference implementation used by tests and benches.
//!
//! Dependency direction: `workloads -> emu-cpu -> mm-core`.  Nothing is
//! implemented here yet.
