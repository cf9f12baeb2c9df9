//! An injected panic on an emulated CPU, for tests of the error path
//! (`mmemu run --inject-panic CPU [--inject-panic-after N]`, hidden).
//!
//! Injection points: every syscall of a native scenario (on the CPU that
//! makes it), and the start of every round of a race driver (a task on the
//! armed CPU, queued only while armed).  The point after the first `after`
//! ones on the armed CPU panics, once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use mm_core::CpuId;

static CPU: AtomicU32 = AtomicU32::new(u32::MAX);
/// Points of the armed CPU that still go through before the panic.
static SKIP: AtomicU64 = AtomicU64::new(0);

/// Arm: the injection point on `cpu` after the first `after` panics.
pub fn arm(cpu: u32, after: u64) {
    SKIP.store(after, SeqCst);
    CPU.store(cpu, SeqCst);
}

/// The armed CPU, until its panic fired.
pub fn armed() -> Option<CpuId> {
    let c = CPU.load(std::sync::atomic::Ordering::Relaxed);
    (c != u32::MAX).then_some(CpuId(c))
}

/// An injection point on `cpu` (the caller runs there): panics naming
/// `what` if this is the armed one.  One relaxed load when nothing is armed.
pub fn point(cpu: CpuId, what: &str) {
    if CPU.load(std::sync::atomic::Ordering::Relaxed) == cpu.0
        && SKIP.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_err()
        && CPU.compare_exchange(cpu.0, u32::MAX, SeqCst, SeqCst).is_ok()
    {
        panic!("injected panic in {what} (--inject-panic {})", cpu.0);
    }
}
