#![warn(missing_docs)]

//! The machine: emulated CPUs as OS threads, cross calls on per-CPU call
//! slots, interrupt masking.
//!
//! Contract (ARCHITECTURE.md, “Invariants”: interrupts really are masked):
//! - `Machine::new(n, cfg)` spawns one OS thread per emulated CPU (pinned
//!   round-robin to host cores when `cfg.pin`; any number of CPUs works).
//! - `Machine::smp()` is the `mm_core::smp::Smp` the kernel owns.  Cross
//!   calls are serviced by targets only at interrupt points with IRQs on; a
//!   waiting sender keeps servicing the calls pending for it, so mutual
//!   shootdowns never deadlock; a call allocates nothing and sends no
//!   message (one fixed slot per sender, a pending bitmap per target, as
//!   in kernel/smp.c; cpu.rs has the protocol); waiting with IRQs off panics; a target that does not
//!   acknowledge within `cfg.watchdog` makes the sender panic naming sender,
//!   target and the target's IRQ state (CSD-lock timeout: the panic's
//!   payload is a `CsdLockTimeout`, and the task's error
//!   `MachineError::CsdTimeout`, a hang).
//! - `Machine::run_on(cpu, f)` runs `f` as a task on `cpu` and returns its
//!   result, or an error naming the CPU on panic / hang / stopped machine.
//!   A hang is a machine none of whose CPUs made progress (see cpu.rs) for
//!   `cfg.hang_timeout`: a task may run as long as it keeps working.
//! - A timer thread per machine advances `jiffies` every `TICK` (HZ=250).
//! - `Machine::shutdown()` (also on Drop) stops and joins every CPU thread;
//!   a CPU that is stuck in a task is detached after a grace period rather
//!   than hanging the caller.
//!
//! # Crate map
//!
//! - The crate root: `Machine` (CPUs as threads, `run_on` / `spawn_on`,
//!   `jiffies`), `MachineConfig` and `WaitPolicy`, `MachineError` /
//!   `CsdLockTimeout` (why a task gave no result), `TaskHandle`,
//!   `MachineSmp` (the `Smp` a kernel owns), `Spawner` (queues tasks from
//!   inside a task), `System` (a machine with the
//!   kernel booted on it: user tasks, kernel threads, RCU in the idle loop
//!   and the tick), `HZ` / `TICK` (the unit of `jiffies`) and
//!   `HOST_BYTES_PER_CPU`.
//! - `trace` — the Perfetto trace recorder: IRQs-off regions, IPIs,
//!   tlb_flush events, syscalls (`start`, `stop`, `syscall`).
//!
//! Internal modules: `cpu` (a CPU's main loop, the call slots and pending
//! bitmaps, the watchdog and hang detection) and `system` (re-exported as `System`).

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

use cpu::{panic_message, Shared, Task};
pub use cpu::{MachineSmp, HZ, TICK};
pub use system::System;

/// How an idle CPU (or a sender waiting for acknowledgements) waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Busy-poll for pending calls (lowest latency, burns a host core per CPU).
    Spin,
    /// Block until woken (a call queued, a task, a call completed).
    Park,
    /// Spin briefly, then block (an idle CPU that just took a call spins
    /// again, unless the machine has more CPUs than the host has cores).
    Adaptive,
}

/// How a `Machine` runs its CPU threads (`mmemu --pin`, `--wait`,
/// `--hang-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct MachineConfig {
    /// Pin CPU threads round-robin to host cores.
    pub pin: bool,
    /// How idle CPUs and waiting senders wait for calls and completions.
    pub wait: WaitPolicy,
    /// CSD-lock timeout: how long a sender waits for each cross call.
    pub watchdog: Duration,
    /// Hang detector: a task's `join` gives up when no CPU of the machine
    /// made progress for this long (never because the task is long).
    pub hang_timeout: Duration,
}

/// Default of `MachineConfig::hang_timeout` (`mmemu --hang-timeout`).
pub const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            pin: false,
            wait: WaitPolicy::Adaptive,
            watchdog: Duration::from_secs(5),
            hang_timeout: DEFAULT_HANG_TIMEOUT,
        }
    }
}

/// Why a task did not produce a result.  Display always names the CPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The task panicked (an assertion, a VM_BUG_ON, a panic in an IPI
    /// handler it waited for).
    #[error("{cpu}: task panicked: {msg}")]
    Panicked {
        /// The CPU the task ran on.
        cpu: CpuId,
        /// The panic message.
        msg: String,
    },
    /// The task's CPU waited `MachineConfig::watchdog` in
    /// `smp_call_function_many` for `targets` to acknowledge (CSD-lock
    /// timeout): those CPUs hang, so `is_hang`.  Printed as the panic it is
    /// on the machine; `msg` names the targets and their IRQ state.
    #[error("{cpu}: task panicked: {msg}")]
    CsdTimeout {
        /// The task's CPU: the sender that waited.
        cpu: CpuId,
        /// The CPUs that never started the call (empty: they started it
        /// but finished late).
        targets: Vec<CpuId>,
        /// The watchdog's message (`CsdLockTimeout::msg`).
        msg: String,
    },
    /// No CPU of the machine made progress for `after` while waiting for
    /// the task's result; `state` says what each CPU was doing.
    #[error("{cpu}: hang: no CPU made progress for {after:?} while its task ran ({state})")]
    Hang {
        /// The CPU the task was queued on.
        cpu: CpuId,
        /// How long no CPU made progress (the `join` timeout).
        after: Duration,
        /// What the busy CPUs were doing (at most 8 named) and how many idled.
        state: String,
    },
    /// The CPU is stopped (or does not exist) and will never run the task.
    #[error("{cpu}: CPU is stopped or does not exist")]
    Stopped {
        /// The CPU the task was given to.
        cpu: CpuId,
    },
}

impl MachineError {
    /// The CPU whose task did not produce a result.
    pub fn cpu(&self) -> CpuId {
        match self {
            MachineError::Panicked { cpu, .. }
            | MachineError::CsdTimeout { cpu, .. }
            | MachineError::Hang { cpu, .. }
            | MachineError::Stopped { cpu } => *cpu,
        }
    }

    /// A hang of the machine: no progress, or a CSD-lock timeout (targets
    /// that never acknowledged a cross call).
    pub fn is_hang(&self) -> bool {
        matches!(self, MachineError::Hang { .. } | MachineError::CsdTimeout { .. })
    }
}

/// The payload of the watchdog's panic (`std::panic::panic_any`): `sender`
/// waited `MachineConfig::watchdog` in `smp_call_function_many` for
/// `targets`, which never started the call (empty: they started it but
/// finished late).  A task that ends with it is `MachineError::CsdTimeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsdLockTimeout {
    /// The CPU waiting in `smp_call_function_many`.
    pub sender: CpuId,
    /// The targets that never started the call (empty: all started, some
    /// finished late).
    pub targets: Vec<CpuId>,
    /// `CSD lock timeout: CPU0 waited 5s in smp_call_function_many for CPU1
    /// (IRQs off, running a task) to acknowledge`.
    pub msg: String,
}

impl fmt::Display for CsdLockTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

/// How a task ended without a result, before `join` names its CPU.
enum TaskFailure {
    Panic(String),
    CsdTimeout(CsdLockTimeout),
}

impl TaskFailure {
    fn from_payload(p: Box<dyn std::any::Any + Send>) -> TaskFailure {
        match p.downcast::<CsdLockTimeout>() {
            Ok(t) => TaskFailure::CsdTimeout(*t),
            Err(p) => TaskFailure::Panic(panic_message(&*p)),
        }
    }

    fn on(self, cpu: CpuId) -> MachineError {
        match self {
            TaskFailure::Panic(msg) => MachineError::Panicked { cpu, msg },
            TaskFailure::CsdTimeout(t) => MachineError::CsdTimeout { cpu, targets: t.targets, msg: t.msg },
        }
    }
}

/// A task submitted with `spawn_on`; `join` waits for its result.
#[must_use = "join the task to see its result"]
pub struct TaskHandle<R> {
    cpu: CpuId,
    rx: Receiver<Result<R, TaskFailure>>,
    shared: Arc<Shared>,
}

/// `Machine::spawn_on` for a holder of the machine's shared state.
fn spawn_task<R, F>(shared: &Arc<Shared>, cpu: CpuId, f: F) -> TaskHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (tx, rx) = crossbeam::channel::bounded(1);
    if let Some(slot) = shared.cpus.get(cpu.idx()) {
        let job = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).map_err(TaskFailure::from_payload);
            let _ = tx.send(r);
        });
        // If the CPU is gone the job (and `tx`) is dropped: join sees Stopped.
        let _ = slot.task_tx.send(Task::Run(job));
    }
    TaskHandle { cpu, rx, shared: shared.clone() }
}

/// Queues tasks on a machine's CPUs (`Machine::spawner`): cloneable and
/// `Send`, so a task can start another.  Tasks queued after the machine
/// stopped are never run (their `join` says `Stopped`).
#[derive(Clone)]
pub struct Spawner {
    shared: Arc<Shared>,
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spawner").field("cpus", &self.shared.cpus.len()).finish()
    }
}

impl Spawner {
    /// `Machine::spawn_on`.
    pub fn spawn_on<R, F>(&self, cpu: CpuId, f: F) -> TaskHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        spawn_task(&self.shared, cpu, f)
    }
}

/// How often a joiner looks at the machine's progress.
const JOIN_SLICE: Duration = Duration::from_millis(50);

impl<R> TaskHandle<R> {
    /// Wait for the task's result.  `hang_after`: give up (`Hang`) once no
    /// CPU of the machine has made progress for that long; a task that
    /// keeps working is waited for however long it takes.
    pub fn join(self, hang_after: Duration) -> Result<R, MachineError> {
        let mut seen = self.shared.progress_sum();
        let mut since = Instant::now();
        loop {
            let left = hang_after.saturating_sub(since.elapsed());
            match self.rx.recv_timeout(left.min(JOIN_SLICE)) {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(f)) => return Err(f.on(self.cpu)),
                Err(RecvTimeoutError::Disconnected) => return Err(MachineError::Stopped { cpu: self.cpu }),
                Err(RecvTimeoutError::Timeout) => {
                    let now = self.shared.progress_sum();
                    if now != seen {
                        seen = now;
                        since = Instant::now();
                    } else if since.elapsed() >= hang_after {
                        // One last look: the result may have just arrived.
                        if let Ok(r) = self.rx.try_recv() {
                            return r.map_err(|f| f.on(self.cpu));
                        }
                        let state = self.shared.describe_all();
                        return Err(MachineError::Hang { cpu: self.cpu, after: hang_after, state });
                    }
                }
            }
        }
    }
}

static NEXT_MACHINE: AtomicU64 = AtomicU64::new(1);

/// Host memory one emulated CPU costs beyond the kernel's per-CPU state
/// (`mm_core::kernel::HostMemory`): its thread's stack as touched, its
/// channels and its two slots (`CpuSlot`, and `CallSlot` with a state per
/// possible target: 1.1 KiB).  Measured before the call slots existed
/// (per-call allocations then): the peak RSS of `mmemu run lazy-tlb
/// --iterations 1` at 256 CPUs minus that at 2, divided by 254, is 27 KiB
/// (12.2 MB vs 5.3 MB); the estimate leaves room for deeper stacks.
pub const HOST_BYTES_PER_CPU: u64 = 64 << 10;

/// Grace period for CPU threads to exit at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An emulated SMP machine: one OS thread per CPU, a timer thread, the
/// cross-call slots (see the crate doc for the contract).  Dropping it shuts it
/// down.
pub struct Machine {
    shared: Arc<Shared>,
    cfg: MachineConfig,
    threads: Vec<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine").field("cpus", &self.shared.cpus.len()).field("cfg", &self.cfg).finish()
    }
}

impl Machine {
    /// Boot `n_cpus` CPUs (1..=`NR_CPUS`, else panics) and the timer; each
    /// CPU idles with IRQs on until given a task.
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
        let timer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("emu-timer".into())
                .spawn(move || {
                    while !shared.stopping.load(Ordering::SeqCst) {
                        std::thread::sleep(cpu::TICK);
                        shared.timer_tick();
                    }
                })
                .expect("spawn the timer thread")
        };
        Machine { shared, cfg, threads, timer: Some(timer) }
    }

    /// `jiffies` of this machine (ticks of `TICK` since boot).
    pub fn jiffies(&self) -> u64 {
        self.shared.jiffies.load(Ordering::SeqCst)
    }

    /// CPUs of the machine (`nr_cpu_ids`).
    pub fn nr_cpus(&self) -> usize {
        self.shared.cpus.len()
    }

    /// The configuration it was built with.
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
        spawn_task(&self.shared, cpu, f)
    }

    /// A handle that queues tasks on this machine's CPUs from anywhere,
    /// also from a task (a thread that starts another thread).
    pub fn spawner(&self) -> Spawner {
        Spawner { shared: self.shared.clone() }
    }

    /// Run `f` on `cpu` and wait for its result (a hang: no progress for
    /// `cfg.hang_timeout`).
    pub fn run_on<R, F>(&self, cpu: CpuId, f: F) -> Result<R, MachineError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn_on(cpu, f).join(self.cfg.hang_timeout)
    }

    /// Stop every CPU after its queued tasks and join the threads.  A CPU
    /// still busy after the grace period is detached (reported on stderr).
    pub fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
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
