//! The sync facade: the only module of the project that names `std`,
//! `parking_lot` or `loom` synchronisation types.
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
    pub use parking_lot::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    /// What `RwLock::downgrade` returns: a read hold.
    pub type RwLockDowngradedGuard<'a, T> = RwLockReadGuard<'a, T>;
    use std::cell::RefCell;
    use std::time::Duration;

    thread_local! {
        /// What this host thread does while it waits for a contended lock:
        /// emu-cpu installs "service my pending IPIs if IRQs are on" on
        /// every CPU thread (see `set_lock_wait_hook`).
        static LOCK_WAIT_HOOK: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
    }

    /// Install the calling thread's lock-wait hook.  A CPU spinning on a
    /// spinlock (or sleeping on an rwsem) with IRQs on still takes
    /// interrupts: without this, CPU A holding the PTL while it waits for
    /// CPU B to acknowledge a shootdown, and B waiting for that PTL, would
    /// deadlock — which the real kernel does not.
    pub fn set_lock_wait_hook(hook: Box<dyn Fn()>) {
        LOCK_WAIT_HOOK.with(|h| *h.borrow_mut() = Some(hook));
    }

    /// How long a contended locker blocks before it runs the wait hook.
    const LOCK_WAIT_SLICE: Duration = Duration::from_micros(50);

    fn lock_wait_hook() {
        LOCK_WAIT_HOOK.with(|h| {
            // A hook re-entered from inside itself (an IPI handler that
            // waits for a lock) does nothing: handlers only take locks
            // nobody holds across a cross call.
            if let Ok(h) = h.try_borrow() {
                if let Some(f) = h.as_ref() {
                    f();
                }
            }
        });
    }

    /// A kernel spinlock / mutex: parking_lot underneath; a contended
    /// `lock()` is an interrupt point (see `set_lock_wait_hook`).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        /// An unlocked lock around `v` (`spin_lock_init` / `mutex_init`).
        pub const fn new(v: T) -> Self {
            Self(parking_lot::Mutex::new(v))
        }
        /// `spin_lock` / `mutex_lock`: every 50 µs of contention runs the
        /// thread's lock-wait hook (IPIs are served while it spins).
        #[inline]
        pub fn lock(&self) -> MutexGuard<'_, T> {
            if let Some(g) = self.0.try_lock() {
                return g;
            }
            loop {
                if let Some(g) = self.0.try_lock_for(LOCK_WAIT_SLICE) {
                    return g;
                }
                lock_wait_hook();
            }
        }
        /// `spin_trylock`: the guard, or `None` if the lock is held.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
        /// The value, without locking (the borrow proves exclusivity).
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
        /// The value, consuming the lock.
        pub fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    /// A kernel rwsem / rwlock (mmap_lock, i_mmap_rwsem): parking_lot
    /// underneath; a contended `read()`/`write()` is an interrupt point.
    #[derive(Debug, Default)]
    pub struct RwLock<T>(parking_lot::RwLock<T>);

    impl<T> RwLock<T> {
        /// An unlocked rwsem around `v` (`init_rwsem`).
        pub const fn new(v: T) -> Self {
            Self(parking_lot::RwLock::new(v))
        }
        /// `down_read` (`mmap_read_lock`, `i_mmap_lock_read`); contention
        /// runs the lock-wait hook like `Mutex::lock`.
        #[inline]
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            if let Some(g) = self.0.try_read() {
                return g;
            }
            loop {
                if let Some(g) = self.0.try_read_for(LOCK_WAIT_SLICE) {
                    return g;
                }
                lock_wait_hook();
            }
        }
        /// `down_write` (`mmap_write_lock`, `i_mmap_lock_write`); contention
        /// runs the lock-wait hook like `Mutex::lock`.
        #[inline]
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            if let Some(g) = self.0.try_write() {
                return g;
            }
            loop {
                if let Some(g) = self.0.try_write_for(LOCK_WAIT_SLICE) {
                    return g;
                }
                lock_wait_hook();
            }
        }
        /// `down_write_trylock`: the guard, or `None` if held.
        pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
            self.0.try_write()
        }
        /// `down_read_trylock`: the guard, or `None` if held for write.
        pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
            self.0.try_read()
        }
        /// `downgrade_write` (`mmap_write_downgrade`): atomically turn a
        /// write hold into a read hold; readers may enter at once, no
        /// writer can get in between.
        pub fn downgrade(guard: RwLockWriteGuard<'_, T>) -> RwLockDowngradedGuard<'_, T> {
            RwLockWriteGuard::downgrade(guard)
        }
        /// The value, without locking (the borrow proves exclusivity).
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut()
        }
        /// The value, consuming the lock.
        pub fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }
    pub use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
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

    /// Thread-local storage of the model's threads (std here, loom's under
    /// loom, where every loom thread is a coroutine on one OS thread).
    pub use std::thread_local;
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
        /// An unlocked lock around `v` (not `const`: loom's is not).
        pub fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        /// `spin_lock` / `mutex_lock`; a poisoned lock is taken anyway.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        /// `spin_trylock`: the guard, or `None` if the lock is held.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
        /// The value, consuming the lock.
        pub fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// parking_lot-shaped wrapper over `loom::sync::RwLock` (no poisoning).
    #[derive(Debug, Default)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        /// An unlocked rwsem around `v` (not `const`: loom's is not).
        pub fn new(v: T) -> Self {
            Self(loom::sync::RwLock::new(v))
        }
        /// `down_read`; a poisoned lock is taken anyway.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(|e| e.into_inner())
        }
        /// `down_write`; a poisoned lock is taken anyway.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(|e| e.into_inner())
        }
        /// `down_write_trylock`: the guard, or `None` if held.
        pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
            self.0.try_write().ok()
        }
        /// `down_read_trylock`: the guard, or `None` if held for write.
        pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
            self.0.try_read().ok()
        }
        /// `downgrade_write`: loom's RwLock cannot downgrade atomically and
        /// releasing then re-reading would let a writer in between (which
        /// the kernel's rwsem never does), so under loom the write hold is
        /// kept: a model sees fewer interleavings (no reader during the
        /// downgraded part), never one the kernel cannot reach.
        pub fn downgrade(guard: RwLockWriteGuard<'_, T>) -> RwLockDowngradedGuard<'_, T> {
            RwLockDowngradedGuard(guard)
        }
    }

    /// What `RwLock::downgrade` returns under loom: the write hold, read-only.
    pub struct RwLockDowngradedGuard<'a, T>(RwLockWriteGuard<'a, T>);

    impl<T> std::ops::Deref for RwLockDowngradedGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }

    /// One iteration of a spin-wait: a loom yield, so the model can run
    /// the thread being waited for.
    #[inline]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }

    /// Yield to another loom thread.
    #[inline]
    pub fn yield_now() {
        loom::thread::yield_now();
    }

    /// True when running under loom (lets code shrink its sizes).
    pub const LOOM: bool = true;

    pub use loom::thread_local;

    /// Under loom there are no emulated-CPU threads and no IPIs to serve.
    pub fn set_lock_wait_hook(_hook: Box<dyn Fn()>) {}
}

pub use imp::*;

/// Statistics counters are never part of a modelled race: they stay plain
/// std atomics even under loom, so counting adds no interleavings.
pub use std::sync::atomic::AtomicU64 as StatCounter;
/// Set-once cells for configuration hooks (e.g. the trace hook); like
/// `StatCounter`, never part of a modelled race.
pub use std::sync::OnceLock as HookCell;
/// Atomics of the test knobs and the injected panic (`inject`): set before
/// a run or by the workload's syscall entry, never part of a modelled race,
/// so like `StatCounter` they stay plain std atomics even under loom.
pub(crate) mod unmodelled {
    pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
    /// Ghost state of the checkers (`check/`): held only for a lookup or an
    /// insert, never across a modelled operation, so under loom it adds no
    /// interleaving.
    pub use std::sync::RwLock;
}
