//! `RunError`: why a scenario or a race driver produced no outcome, or why
//! it ended early.
//!
//! Contract:
//! - `Config` is the only variant that means "this configuration cannot
//!   run" (refused before boot: the CLI exits 2); every other variant is a
//!   failure while running (exit 1).
//! - A machine error stays a `MachineError` (panic, CSD-lock timeout, hang,
//!   stopped CPU), wherever it is wrapped: `is_hang` and `machine` look
//!   through `Round` / `Step`, so nothing classifies an error by its text.
//! - Display is the one line the report and the CLI print; the wrappers
//!   only prefix it (`round 3: walker: CPU0: hang: ...`).

use emu_cpu::MachineError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot run (too few CPUs, the wrong arch, emulated
    /// RAM out of bounds, a kernel config refused at boot).
    #[error("{0}")]
    Config(String),
    /// A task on the emulated machine panicked, timed out on the CSD lock
    /// or hung; names the CPU.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The model refused an operation the run needs (an mmap that failed,
    /// an accounting check).  mm-core reports `MmError`s and strings today:
    /// this carries their text.
    #[error("{0}")]
    Model(String),
    /// A driver's own check failed (a handshake that never happened, an
    /// oracle that disagrees, pages still mapped at teardown).
    #[error("{0}")]
    Driver(String),
    /// A script's expectation failed (docs/SCRIPTS.md): `FILE:LINE:COL:
    /// expectation failed: …`.  The run itself completed.
    #[error("{0}")]
    Expectation(String),
    /// `source` happened in round `round` of a race driver.
    #[error("round {round}: {source}")]
    Round { round: u64, source: Box<RunError> },
    /// `source` happened in the driver's step `step` (`walker`, `quiesce`).
    #[error("{step}: {source}")]
    Step { step: &'static str, source: Box<RunError> },
}

impl RunError {
    /// `Model` from anything mm-core returns that displays.
    pub fn model(e: impl std::fmt::Display) -> RunError {
        RunError::Model(e.to_string())
    }

    /// This error, as having happened in round `round`.
    pub fn in_round(self, round: u64) -> RunError {
        RunError::Round { round, source: Box::new(self) }
    }

    /// This error, as having happened in the driver's step `step`.
    pub fn during(self, step: &'static str) -> RunError {
        RunError::Step { step, source: Box::new(self) }
    }

    /// The configuration cannot run (exit 2); anything else failed while
    /// running (exit 1).
    pub fn is_config(&self) -> bool {
        matches!(self.innermost(), RunError::Config(_))
    }

    /// The machine error underneath, if this is one.
    pub fn machine(&self) -> Option<&MachineError> {
        match self.innermost() {
            RunError::Machine(m) => Some(m),
            _ => None,
        }
    }

    /// A hang (no progress, or a CSD-lock timeout) rather than a panic or
    /// another failure: the report's verdict `hang`.
    pub fn is_hang(&self) -> bool {
        self.machine().is_some_and(MachineError::is_hang)
    }

    fn innermost(&self) -> &RunError {
        match self {
            RunError::Round { source, .. } | RunError::Step { source, .. } => source.innermost(),
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_core::CpuId;
    use std::time::Duration;

    #[test]
    fn wrappers_prefix_the_text_and_keep_the_kind() {
        let hang = MachineError::Hang { cpu: CpuId(1), after: Duration::from_millis(300), state: "x".into() };
        let e = RunError::from(hang).during("walker").in_round(3);
        assert_eq!(e.to_string(), "round 3: walker: CPU1: hang: no CPU made progress for 300ms while its task ran (x)");
        assert!(e.is_hang() && !e.is_config());
        let csd = MachineError::CsdTimeout { cpu: CpuId(0), targets: vec![CpuId(1)], msg: "CSD lock timeout".into() };
        assert!(RunError::from(csd).is_hang());
        let panic = RunError::from(MachineError::Panicked { cpu: CpuId(0), msg: "CSD lock timeout".into() });
        assert!(!panic.is_hang(), "the text does not make a hang");
        assert!(RunError::Config("needs 2 CPUs".into()).during("boot").is_config());
        assert!(!RunError::Driver("the device never ran".into()).is_config());
    }
}
