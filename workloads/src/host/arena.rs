//! The memory every process of a host run shares: a memfd mapped
//! MAP_SHARED before the first fork, so each forked process sees it at
//! the same address (and an `exec` helper maps the same memfd again).  It holds the futex words
//! (barriers, the start gate, the count of working threads, held threads'
//! start flags), the per-thread work and scheduling record the parent
//! reports, and the first error line.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Thread instances, barriers and held threads a host run has room for.
pub const MAX_THREADS: usize = 256;
pub const MAX_BARRIERS: usize = 256;
pub const MAX_HELD: usize = 64;
const MESSAGE: usize = 1000;

/// A generation barrier: `generation` is the futex word.
#[repr(C)]
pub struct BarrierSlot {
    pub parties: AtomicU32,
    pub arrived: AtomicU32,
    pub generation: AtomicU32,
}

/// One declared thread's record (its fork children add to it too).
#[repr(C)]
pub struct ThreadSlot {
    pub rounds: AtomicU64,
    pub ops: AtomicU64,
    pub digest: AtomicU64,
    /// Set once the thread no longer counts in `Arena::working`.
    pub finished: AtomicU32,
    /// 1 once it reached `spin`.
    pub spun: AtomicU32,
    /// While spinning: ns on its CPU (schedstat) and ns of wall time.
    pub spin_run_ns: AtomicU64,
    pub spin_wall_ns: AtomicU64,
    /// From the gate's opening to its end: ns on its CPU and of wall time, involuntary and
    /// voluntary context switches.
    pub run_ns: AtomicU64,
    pub wall_ns: AtomicU64,
    pub nivcsw: AtomicU64,
    pub nvcsw: AtomicU64,
    /// ns runnable but off its CPU (run_delay), and 1 if that was measured.
    pub delay_ns: AtomicU64,
    pub delay_known: AtomicU32,
    /// The step it is at, `line << 32 | column` (a fault names it).
    pub step: AtomicU64,
}

/// A line of text written once (the first writer wins).
#[repr(C)]
pub struct Message {
    claimed: AtomicU32,
    len: AtomicU32,
    bytes: [AtomicU8; MESSAGE],
}

impl Message {
    /// Keep `s` if no line was kept yet.
    pub fn set(&self, s: &str) {
        if self.claimed.swap(1, Ordering::SeqCst) != 0 {
            return;
        }
        let b = &s.as_bytes()[..s.len().min(MESSAGE)];
        for (i, x) in b.iter().enumerate() {
            self.bytes[i].store(*x, Ordering::Relaxed);
        }
        self.len.store(b.len() as u32, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<String> {
        let n = self.len.load(Ordering::SeqCst) as usize;
        if n == 0 {
            return None;
        }
        let v: Vec<u8> = self.bytes[..n].iter().map(|b| b.load(Ordering::Relaxed)).collect();
        Some(String::from_utf8_lossy(&v).into_owned())
    }
}

#[repr(C)]
pub struct Arena {
    /// Set when the run must end (a process died): every wait gives up.
    pub abort: AtomicU32,
    /// Set by the parent when mmemu got SIGINT / SIGTERM (a signal sent
    /// to mmemu alone, not to its process group): budgets end at the next
    /// step, as `budget::interrupted` does in the process that got it.
    pub stop: AtomicU32,
    /// Steps started, over every thread (the parent's hang watchdog).
    pub steps: AtomicU64,
    /// The arena's memfd (the same number in every process of the run).
    pub fd: AtomicU32,
    /// The start gate: 0 closed; `k` lets the k-th `first` thread run;
    /// past them, everyone.
    pub gate: AtomicU32,
    /// Threads pinned and waiting at the gate.
    pub ready: AtomicU32,
    /// CLOCK_MONOTONIC ns when the gate opened (threads' wall time counts from it).
    pub gate_open_ns: AtomicU64,
    /// Declared threads that have not reached their end, `spin` or `sleep`.
    pub working: AtomicU32,
    /// `repeat until budget` loops that meet at barriers agree on their
    /// last round (as the interpreter's round gate).
    pub round_gate: AtomicU64,
    pub reads_failed: AtomicU64,
    /// Syscalls of spawned threads.
    pub spawned_ops: AtomicU64,
    /// 1 + the thread slot whose access faulted (SIGSEGV / SIGBUS), and the signal.
    pub fault_thread: AtomicU32,
    pub fault_signal: AtomicU32,
    pub barriers: [BarrierSlot; MAX_BARRIERS],
    pub held: [AtomicU32; MAX_HELD],
    pub threads: [ThreadSlot; MAX_THREADS],
    pub error: Message,
    pub bad_read: Message,
}

impl Arena {
    /// A zeroed arena in fresh shared memory: a memfd mapped MAP_SHARED
    /// (never unmapped: it lives as long as the process, one per host
    /// run).  The memfd's descriptor stays open, without close-on-exec
    /// cleared only for an `exec` helper (`fd`), which maps it again.
    pub fn map() -> Result<&'static Arena, String> {
        let len = std::mem::size_of::<Arena>() as u64;
        // SAFETY: a NUL-terminated name; MFD_CLOEXEC keeps it from other programs.
        let fd = unsafe { libc::memfd_create(c"mmemu-host-arena".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("cannot create the shared arena (memfd_create): {}", super::sys::errno()));
        }
        // SAFETY: our own new descriptor.
        super::sys::check(unsafe { libc::ftruncate(fd, len as libc::off_t) })
            .map_err(|e| format!("cannot size the shared arena: {e}"))?;
        let a = Arena::attach(fd)?;
        a.fd.store(fd as u32, Ordering::SeqCst);
        Ok(a)
    }

    /// The arena behind descriptor `fd` (an `exec` helper's, inherited).
    pub fn attach(fd: i32) -> Result<&'static Arena, String> {
        let len = std::mem::size_of::<Arena>() as u64;
        let p = super::sys::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
            .map_err(|e| format!("cannot map the shared arena: {e}"))?;
        // SAFETY: the mapping is page aligned and `len` bytes of a memfd
        // sized to `len` (zero-filled when new); every field of Arena is
        // an atomic (or an array of them) for which all-zero bytes are a
        // valid value; it is never unmapped, so the reference may be 'static.
        Ok(unsafe { &*(p as *const Arena) })
    }

    /// The run must end: every waiter gives up.
    pub fn abort(&self) {
        self.abort.store(1, Ordering::SeqCst);
        for w in [&self.gate, &self.working] {
            super::sys::futex_wake(w);
        }
        for b in &self.barriers {
            super::sys::futex_wake(&b.generation);
        }
        for h in &self.held {
            super::sys::futex_wake(h);
        }
    }

    /// A stop was requested (here or in the parent).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) != 0 || crate::budget::interrupted()
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed) != 0
    }
}
