//! The sync facade: the only module of the project that names `std`,
//! `parking_lot`, `crossbeam-utils` or `loom` synchronisation types.
//!
//! Every other module (and every other crate that shares state with mm-core)
//! imports `Arc`, `Mutex`, `RwLock`, the atomics, `spin_loop` and `epoch` from
//! here.  Under the project's loom cfg the whole model switches to loom's
//! types, so loom explores every interleaving of the real kernel code:
//!
//! ```text
//! RUSTFLAGS="--cfg mmemu_loom --cfg crossbeam_loom" cargo test -p loom-tests --release
//! ```
//!
//! `mmemu_loom` selects loom here; `crossbeam_loom` puts crossbeam-epoch (the
//! RCU table-free machinery, see `rcu.rs`) into its own loom mode.  The two
//! must be given together.
//!
//! Contract of the lock wrappers: `lock()`/`read()`/`write()` return the
//! guard directly (parking_lot style, no poisoning) in both modes.

#[cfg(all(mmemu_loom, not(crossbeam_loom)))]
compile_error!("--cfg mmemu_loom needs --cfg crossbeam_loom too (crossbeam-epoch must run on loom)");

pub use crossbeam_epoch as epoch;

#[cfg(not(mmemu_loom))]
mod imp {
    pub use parking_lot::{
        Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
    };
    pub use std::sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub use std::sync::{Arc, Weak};

    /// One iteration of a spin-wait.  Under loom this yields so the model
    /// can make progress; here it is the CPU's pause hint.
    #[inline]
    pub fn spin_loop() {
        core::hint::spin_loop();
    }

    /// Yield the host thread (used by waits that have spun long enough).
    #[inline]
    pub fn yield_now() {
        std::thread::yield_now();
    }

    /// True when running under loom (lets code shrink its sizes).
    pub const LOOM: bool = false;
}

#[cfg(mmemu_loom)]
mod imp {
    pub use loom::sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering,
    };
    pub use loom::sync::{Arc, MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    /// loom's `Weak` does not exist; models never need it, so mm-core avoids
    /// it under loom.  Kept as a marker for readers grepping the facade.
    pub type Weak<T> = std::sync::Weak<T>;

    /// parking_lot-shaped wrapper over `loom::sync::Mutex` (no poisoning).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
        pub fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// parking_lot-shaped wrapper over `loom::sync::RwLock` (no poisoning).
    #[derive(Debug, Default)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub fn new(v: T) -> Self {
            Self(loom::sync::RwLock::new(v))
        }
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
        pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
            self.0.try_write().ok()
        }
    }

    #[inline]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }

    #[inline]
    pub fn yield_now() {
        loom::thread::yield_now();
    }

    pub const LOOM: bool = true;
}

pub use imp::*;

/// Statistics counters are never part of a modelled race: they stay plain
/// std atomics even under loom, so counting adds no interleavings.
pub use std::sync::atomic::AtomicU64 as StatCounter;
/// Set-once cells for configuration hooks (e.g. the trace hook); like
/// `StatCounter`, never part of a modelled race.
pub use std::sync::OnceLock as HookCell;
