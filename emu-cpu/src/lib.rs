//! The machine: emulated CPUs as OS threads, IPI mailboxes, interrupt masking.
//!
//! Contract (DESIGN.md "three ideas", point 3):
//! - `Machine::new(n, cfg)` spawns one OS thread per emulated CPU (pinned
//!   round-robin to host cores when `cfg.pin`; any number of CPUs works).
//! - `Machine::smp()` is the `mm_core::smp::Smp` the kernel owns.  Cross
//!   calls are serviced by targets only at interrupt points with IRQs on; a
//!   waiting sender keeps servicing its own mailbox, so mutual shootdowns
//!   never deadlock; waiting with IRQs off panics; a target that does not
//!   acknowledge within `cfg.watchdog` makes the sender panic naming sender,
//!   target and the target's IRQ state (CSD-lock timeout).
//! - `Machine::run_on(cpu, f)` runs `f` as a task on `cpu` and returns its
//!   result, or an error naming the CPU on panic / timeout / stopped machine.
//!   It never hangs past `cfg.task_timeout`.
//! - `Machine::shutdown()` (also on Drop) stops and joins every CPU thread;
//!   a CPU that is stuck in a task is detached after a grace period rather
//!   than hanging the caller.

mod cpu;
mod system;
pub mod trace;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError};
use mm_core::sync::{Arc, AtomicU64, Ordering};
use mm_core::types::CpuId;

pub use cpu::MachineSmp;
pub use system::System;
use cpu::{panic_message, Shared, Task};

/// How an idle CPU (or a sender waiting for acknowledgements) waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Busy-poll the mailbox (lowest latency, burns a host core per CPU).
    Spin,
    /// Block on the mailbox.
    Park,
    /// Spin briefly, then block.
    Adaptive,
}

#[derive(Clone, Copy, Debug)]
pub struct MachineConfig {
    /// Pin CPU threads round-robin to host cores.
    pub pin: bool,
    pub wait: WaitPolicy,
    /// CSD-lock timeout: how long a sender waits for each cross call.
    pub watchdog: Duration,
    /// How long `run_on` waits for a task's result.
    pub task_timeout: Duration,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            pin: false,
            wait: WaitPolicy::Adaptive,
            watchdog: Duration::from_secs(5),
            task_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a task did not produce a result.  Display always names the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineError {
    /// The task panicked (including a watchdog panic inside it).
    Panicked { cpu: CpuId, msg: String },
    /// No result within the timeout.
    Timeout { cpu: CpuId, after: Duration },
    /// The CPU is stopped (or does not exist) and will never run the task.
    Stopped { cpu: CpuId },
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Panicked { cpu, msg } => write!(f, "{cpu}: task panicked: {msg}"),
            MachineError::Timeout { cpu, after } => write!(f, "{cpu}: task gave no result within {after:?}"),
            MachineError::Stopped { cpu } => write!(f, "{cpu}: CPU is stopped or does not exist"),
        }
    }
}

impl std::error::Error for MachineError {}

/// A task submitted with `spawn_on`; `join` waits for its result.
#[must_use = "join the task to see its result"]
pub struct TaskHandle<R> {
    cpu: CpuId,
    rx: Receiver<Result<R, String>>,
}

impl<R> TaskHandle<R> {
    pub fn join(self, timeout: Duration) -> Result<R, MachineError> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(msg)) => Err(MachineError::Panicked { cpu: self.cpu, msg }),
            Err(RecvTimeoutError::Timeout) => Err(MachineError::Timeout { cpu: self.cpu, after: timeout }),
            Err(RecvTimeoutError::Disconnected) => Err(MachineError::Stopped { cpu: self.cpu }),
        }
    }
}

static NEXT_MACHINE: AtomicU64 = AtomicU64::new(1);

/// Grace period for CPU threads to exit at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Machine {
    shared: Arc<Shared>,
    cfg: MachineConfig,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine").field("cpus", &self.shared.cpus.len()).field("cfg", &self.cfg).finish()
    }
}

impl Machine {
    pub fn new(n_cpus: usize, cfg: MachineConfig) -> Machine {
        assert!(
            (1..=mm_core::types::NR_CPUS).contains(&n_cpus),
            "Machine: bad CPU count {n_cpus} (1..={})",
            mm_core::types::NR_CPUS
        );
        let id = NEXT_MACHINE.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::new(Shared::new(id, n_cpus, cfg.wait, cfg.watchdog));
        let cores = if cfg.pin { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        let threads = (0..n_cpus)
            .map(|i| {
                let shared = shared.clone();
                let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
                std::thread::Builder::new()
                    .name(format!("emu-cpu{i}"))
                    .spawn(move || {
                        if let Some(c) = core {
                            core_affinity::set_for_current(c);
                        }
                        cpu::cpu_main(shared, CpuId(i as u32));
                    })
                    .expect("spawn CPU thread")
            })
            .collect();
        Machine { shared, cfg, threads }
    }

    pub fn nr_cpus(&self) -> usize {
        self.shared.cpus.len()
    }

    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// The `Smp` for `Kernel::new(cfg, Box::new(machine.smp()))`.
    pub fn smp(&self) -> MachineSmp {
        MachineSmp { shared: self.shared.clone() }
    }

    /// Queue `f` on `cpu`; it runs from the CPU's main loop with IRQs on.
    pub fn spawn_on<R, F>(&self, cpu: CpuId, f: F) -> TaskHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = crossbeam::channel::bounded(1);
        if let Some(slot) = self.shared.cpus.get(cpu.idx()) {
            let job = Box::new(move || {
                let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(&*p));
                let _ = tx.send(r);
            });
            // If the CPU is gone the job (and `tx`) is dropped: join sees Stopped.
            let _ = slot.task_tx.send(Task::Run(job));
        }
        TaskHandle { cpu, rx }
    }

    /// Run `f` on `cpu` and wait (at most `cfg.task_timeout`) for its result.
    pub fn run_on<R, F>(&self, cpu: CpuId, f: F) -> Result<R, MachineError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn_on(cpu, f).join(self.cfg.task_timeout)
    }

    /// Stop every CPU after its queued tasks and join the threads.  A CPU
    /// still busy after the grace period is detached (reported on stderr).
    pub fn shutdown(&mut self) {
        for slot in self.shared.cpus.iter() {
            let _ = slot.task_tx.send(Task::Stop);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for (i, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!("emu-cpu: CPU{i} did not stop within {SHUTDOWN_GRACE:?}; detaching its thread");
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
