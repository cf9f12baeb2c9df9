//! CONFIG_DEBUG_VM at run time: the kernel's own VM_BUG_ON / VM_WARN_ON
//! checks, ported, behind `KernelConfig::debug_vm` (on by default, as on a
//! debug kernel) instead of `debug_assert!`, so they also fire in release
//! builds, where mmemu is run.
//!
//! Contract:
//! - `vm_bug_on!(k, cond, "CHECK", "why {}", args..)`: a port of a kernel
//!   `VM_BUG_ON` / `VM_BUG_ON_PAGE` / `VM_BUG_ON_FOLIO` / `BUG_ON`.  With
//!   `k.cfg.debug_vm` and `cond`, panics with `kernel BUG: CHECK: why`
//!   (on an emulated CPU that stops the run and names the CPU).
//! - `vm_warn_on!(k, cond, "CHECK", mm, va, pfn)`: a port of a kernel
//!   `VM_WARN_ON` / `VM_WARN_ON_ONCE` / `WARN_ON` / `WARN_ON_ONCE`.  With
//!   `k.cfg.debug_vm` and `cond`, records a sanitizer violation
//!   `ViolationKind::DebugVmWarning(CHECK)` (`debug-vm-warning`) on this CPU
//!   with the mm id, address and frame the check is about (0 when it has
//!   none), and the code goes on, as the kernel does.  `_ONCE` is not
//!   modelled: every occurrence is recorded (the kernel would print the
//!   first one only).
//! - Disabled (`debug_vm = false`), each check costs one load and one
//!   predictable branch on `k.cfg.debug_vm`; `cond` is not evaluated.
//! - CHECK is the kernel's own expression and function, so it can be
//!   grepped in both trees.
//!
//! Checks of the emulator's own invariants (not ports of a kernel check)
//! are plain `assert!`s, or `debug_assert!`s where they sit on a hot path.

use std::fmt;

/// A port of a kernel `VM_BUG_ON`-class check: with `$k.cfg.debug_vm` and
/// `$cond`, panic naming the kernel check.
/// `vm_bug_on!(on = SWITCH, ..)` where no `Kernel` is at hand (the page
/// allocator keeps its own copy of the switch).
macro_rules! vm_bug_on {
    (on = $on:expr, $cond:expr, $check:literal, $($why:tt)+) => {
        if $on && $cond {
            $crate::debug_vm::vm_bug($check, format_args!($($why)+))
        }
    };
    ($k:expr, $cond:expr, $check:literal, $($why:tt)+) => {
        if $k.cfg.debug_vm && $cond {
            $crate::debug_vm::vm_bug($check, format_args!($($why)+))
        }
    };
}
pub(crate) use vm_bug_on;

/// A port of a kernel `VM_WARN_ON`-class check: with `$k.cfg.debug_vm` and
/// `$cond`, record a `debug-vm-warning` violation and go on.
macro_rules! vm_warn_on {
    ($k:expr, $cond:expr, $check:literal, $mm:expr, $va:expr, $pfn:expr) => {
        if $k.cfg.debug_vm && $cond {
            $crate::debug_vm::vm_warn($k, $check, $mm, $va, $pfn)
        }
    };
}
pub(crate) use vm_warn_on;

/// The failing side of `vm_bug_on!`.
#[cold]
#[inline(never)]
#[track_caller]
pub fn vm_bug(check: &'static str, why: fmt::Arguments<'_>) -> ! {
    panic!("kernel BUG: {check}: {why}")
}

/// The failing side of `vm_warn_on!`.
#[cold]
#[inline(never)]
pub fn vm_warn(k: &crate::Kernel, check: &'static str, mm: u64, va: u64, pfn: crate::Pfn) {
    k.san.record(crate::check::sanitizer::Violation {
        kind: crate::check::sanitizer::ViolationKind::DebugVmWarning(check),
        cpu: Some(k.this_cpu()),
        mm,
        va,
        pfn,
        cached_gen: 0,
        frame_gen: 0,
    });
}
