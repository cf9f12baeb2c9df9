//! The budget of a run: rounds or seconds, and the process-wide stop
//! request that SIGINT / SIGTERM raise.
//!
//! Contract:
//! - `Until::more(r)` is asked before each round and `Until::expired()`
//!   before each step inside one (a syscall, a batch of touches, a race
//!   round): a `--seconds` budget overshoots by at most one step at any
//!   CPU count, and an interrupt ends every thread at its next step.
//! - `request_stop(sig)` records the first SIGINT / SIGTERM (the CLI
//!   installs the handlers); nothing clears it: the process is ending.

use std::time::{Duration, Instant};

/// How long a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Rounds: per user thread for the native scenarios, rounds of the
    /// race for race scenarios.
    Iterations(u64),
    /// Wall-clock seconds.
    Seconds(f64),
}

/// The process-wide stop request: the number of the first SIGINT / SIGTERM
/// (0: none).  The CLI's handlers set it, and every budget then ends at its
/// next step.
static STOP_SIGNAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Record `sig` as the stop request if none was made yet: true for the
/// first signal, false for a later one.  One compare-and-swap, so two
/// signals taken at once by two threads are still a first and a second;
/// async-signal-safe.
pub fn request_stop(sig: usize) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    STOP_SIGNAL.compare_exchange(0, sig, SeqCst, SeqCst).is_ok()
}

/// The signal that requested the stop (0: none).
pub fn stop_signal() -> usize {
    STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst)
}

/// Has a stop been requested (`request_stop`)?  One relaxed load.
#[inline]
pub fn interrupted() -> bool {
    STOP_SIGNAL.load(std::sync::atomic::Ordering::Relaxed) != 0
}

/// Decides when a thread stops (Copy: every task gets its own).
///
/// `more(r)` is asked before each round, `expired()` before each step
/// inside one (a syscall, a batch of touches): a `--seconds` budget then
/// overshoots by at most one step at any CPU count, and an interrupt ends
/// every thread at its next step.
#[derive(Clone, Copy, Debug)]
pub struct Until {
    rounds: Option<u64>,
    deadline: Option<Instant>,
}

impl Until {
    pub fn new(b: Budget) -> Until {
        match b {
            Budget::Iterations(n) => Until { rounds: Some(n), deadline: None },
            Budget::Seconds(s) => Until { rounds: None, deadline: Some(Instant::now() + Duration::from_secs_f64(s)) },
        }
    }
    /// No round limit and no deadline: only an interrupt stops it.
    pub fn forever() -> Until {
        Until { rounds: None, deadline: None }
    }
    /// Only the deadline (and an interrupt) of this budget, not its rounds:
    /// what a race driver checks between its rounds.
    pub fn deadline_only(self) -> Until {
        Until { rounds: None, ..self }
    }
    /// May round `r` (0-based) start?
    pub fn more(&self, r: u64) -> bool {
        !self.expired() && self.rounds.is_none_or(|n| r < n)
    }
    /// Is the time up (or a stop requested)?  Rounds are not looked at.
    #[inline]
    pub fn expired(&self) -> bool {
        interrupted() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
    /// When the budget's time is up, if it has a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    /// Called once every thread stopped: how long after the deadline that
    /// was (None without a deadline, or when stopped before it, e.g. by an
    /// interrupt).
    pub fn overshoot(&self) -> Option<Duration> {
        let now = Instant::now();
        self.deadline.filter(|d| now >= *d).map(|d| now - d)
    }
}

/// A round gate's "no round past the count in the other bits starts".
const GATE_CLOSED: u64 = 1 << 63;

/// Whether round `r` of a `repeat until budget` that meets barriers runs,
/// decided on `gate` (the highest round any such loop started, plus one,
/// and `GATE_CLOSED` once one found the budget spent; starts at 0) with
/// `more`, this thread's look at its budget.  Every loop on one gate
/// agrees: once one of them finds the budget spent, the rounds someone
/// already started still run everywhere (their partners wait for them at
/// the barriers) and no later one starts.  Under a rounds budget that is
/// the budget; under a time budget (or a stop request) it overshoots by at
/// most a round.  The script interpreter's threads and the host runner's
/// (a gate in shared memory) use it.
pub fn round_gate_pass(gate: &std::sync::atomic::AtomicU64, r: u64, more: impl Fn(u64) -> bool) -> bool {
    use std::sync::atomic::Ordering;
    let mut cur = gate.load(Ordering::SeqCst);
    loop {
        if cur & GATE_CLOSED != 0 {
            return r < cur & !GATE_CLOSED;
        }
        let (next, go) = if more(r) { (cur.max(r + 1), true) } else { (cur | GATE_CLOSED, r < cur) };
        match gate.compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return go,
            Err(now) => cur = now,
        }
    }
}
