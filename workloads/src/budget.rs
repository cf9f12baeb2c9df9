//! The budget of a run: rounds or seconds, and the process-wide stop
//! request that SIGINT / SIGTERM raise.
//!
//! Contract:
//! - `Until::more(r)` is asked before each round and `Until::expired()`
//!   before each step inside one (a syscall, a batch of touches, a race
//!   round): a `--seconds` budget overshoots by at most one step at any
//!   CPU count, and an interrupt ends every thread at its next step.
//! - `interrupt_flag()` is set once by the first SIGINT / SIGTERM (the CLI
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

/// The process-wide stop request: the first SIGINT / SIGTERM sets it (the
/// CLI installs the handlers), and every budget then ends at its next step.
/// A std `Arc` so signal handlers can hold it.
pub fn interrupt_flag() -> &'static std::sync::Arc<std::sync::atomic::AtomicBool> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(Default::default)
}

/// Has a stop been requested (`interrupt_flag`)?  One relaxed load.
#[inline]
pub fn interrupted() -> bool {
    interrupt_flag().load(std::sync::atomic::Ordering::Relaxed)
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
