//! An injected panic on an emulated CPU, for tests of the error path
//! (`mmemu run --inject-panic CPU [--inject-panic-after N]`, hidden).
//!
//! The CLI records the request; every kernel a run boots is armed with it
//! (`attach`: mm-core's `Kernel::inject.panic`).  Injection points: every
//! syscall of a native scenario (on the CPU that makes it), and the start
//! of every round of a race driver (a task on the armed CPU, queued only
//! while armed).  The point after the first `after` ones on the armed CPU
//! panics, once per kernel.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use mm_core::{CpuId, Kernel};

const NONE: u32 = u32::MAX;
static CPU: AtomicU32 = AtomicU32::new(NONE);
static AFTER: AtomicU64 = AtomicU64::new(0);

/// Ask for the injection point on `cpu` after the first `after` to panic
/// (in every kernel booted from now on).
pub fn arm(cpu: u32, after: u64) {
    AFTER.store(after, SeqCst);
    CPU.store(cpu, SeqCst);
}

/// Arm a freshly booted kernel with the request, if there is one.
pub fn attach(k: &Kernel) {
    let cpu = CPU.load(SeqCst);
    if cpu != NONE && (cpu as usize) < k.cfg.nr_cpus {
        k.inject.panic.arm(CpuId(cpu), AFTER.load(SeqCst));
    }
}

/// An injection point on `cpu` (the caller runs there): panics naming
/// `what` if this is the armed one.  One relaxed load when nothing is armed.
pub fn point(k: &Kernel, cpu: CpuId, what: &str) {
    if k.inject.panic.fire(cpu) {
        panic!("injected panic in {what} (--inject-panic {})", cpu.0);
    }
}
