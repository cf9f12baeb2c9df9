//! Per-CPU state, the IPI mailbox, interrupt masking and the `Smp` handle.
//!
//! Contract:
//! - Every emulated CPU is one OS thread with two mailboxes: `ipi` (cross
//!   calls and wake-ups, serviced only at interrupt points with IRQs on) and
//!   `task` (work items, run only from the CPU's main loop).
//! - Interrupt points: the main loop between tasks and while idle, the wait
//!   inside this CPU's own `smp_call_function_many`, `local_irq_restore` that
//!   re-enables IRQs, `cond_resched` / `cpu_relax` with IRQs on, and every
//!   user-mode instruction boundary (`user_irq_window`, one load when
//!   nothing is pending).
//! - The timer tick: a machine thread advances `jiffies` every `TICK`; a
//!   CPU takes the tick at its next user-mode boundary (or in its idle
//!   loop) and runs the tick hook there — softirq work such as RCU
//!   callbacks, so a CPU that never idles still frees RCU-deferred tables.
//! - Progress: every CPU counts the work it gets done (IPIs acknowledged,
//!   tasks finished, `cond_resched` in long kernel loops, ticks that found
//!   it in user code).  Waiting (`cpu_relax`, a contended lock, idling)
//!   is not progress.  A machine none of whose CPUs makes progress for the
//!   hang timeout is hung; a long task that keeps working never is.
//! - An IPI handler runs with this CPU's IRQs off, counts one CAL interrupt,
//!   and never lets a panic escape (the panic is reported to the sender).
//! - `smp_call_function_many` returns (or panics) only once no target is
//!   running or can still start the borrowed closure: each target's slot
//!   goes PENDING -> RUNNING -> DONE, and on watchdog timeout the sender
//!   flips PENDING -> CANCELLED and waits for RUNNING ones to finish.
//! - `this_cpu()` outside a CPU thread of this machine panics.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Select, Sender};
use crossbeam::utils::CachePadded;
use mm_core::smp::{IrqFlags, Smp};
use mm_core::sync::{Arc, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering};
use mm_core::types::{CpuId, CpuMask};

use crate::trace;
use crate::WaitPolicy;

/// Spins before an adaptive waiter parks.
const ADAPTIVE_SPINS: u32 = 200;
/// Longest single park; waiters re-check their state at least this often.
const MAX_PARK: Duration = Duration::from_millis(50);

thread_local! {
    /// (machine id, cpu) of the emulated CPU this OS thread plays.
    static CURRENT: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
}

pub(crate) fn set_current(machine: u64, cpu: u32) {
    CURRENT.with(|c| c.set(Some((machine, cpu))));
}

pub(crate) enum Ipi {
    Call(Arc<CallData>),
    /// "Your cross call completed": only wakes a parked sender.
    Wake,
}

pub(crate) enum Task {
    Run(Box<dyn FnOnce() + Send>),
    Stop,
}

const NOT_TARGET: u32 = 0;
const PENDING: u32 = 1;
const RUNNING: u32 = 2;
const DONE: u32 = 3;
const CANCELLED: u32 = 4;

/// What a CPU is doing, for the watchdog's report.
const ACT_IDLE: u32 = 0;
const ACT_TASK: u32 = 1;
const ACT_CSD_WAIT: u32 = 2;

/// A lock-wait hook call this recent means the CPU is spinning on a lock.
const LOCK_WAIT_RECENT: Duration = Duration::from_millis(100);

/// One `smp_call_function_many` (the kernel's per-call csd set).
pub(crate) struct CallData {
    /// The sender's borrowed closure; see the SAFETY note in
    /// `smp_call_function_many` for why `'static` is sound here.
    func: &'static (dyn Fn(CpuId) + Sync),
    from: CpuId,
    /// Per CPU index: NOT_TARGET / PENDING / RUNNING / DONE / CANCELLED.
    state: Box<[AtomicU32]>,
    remaining: AtomicUsize,
    panic: Mutex<Option<String>>,
    /// Trace flow id base (0: not traced); target i's flow is `id << 8 | i`.
    trace_id: u64,
}

pub(crate) struct CpuSlot {
    pub(crate) ipi_tx: Sender<Ipi>,
    pub(crate) ipi_rx: Receiver<Ipi>,
    pub(crate) task_tx: Sender<Task>,
    pub(crate) task_rx: Receiver<Task>,
    irq_off: AtomicBool,
    cal: AtomicU64,
    sent: AtomicU64,
    /// ACT_* : idle, running a task, waiting in smp_call_function_many.
    activity: AtomicU32,
    /// Machine-relative µs of the last contended-lock wait slice (0 = never).
    last_lock_wait_us: AtomicU64,
    /// Trace: `trace::now_us()` bits when IRQs went off (tracing only).
    irq_off_since: AtomicU64,
    /// Something may be waiting for this CPU at its next user-mode
    /// instruction boundary: set by an IPI sender after queueing the call
    /// and by the timer tick; cleared by `user_irq_window`'s slow path.
    /// The nothing-pending check of every user access is this one load.
    attention: AtomicBool,
    /// The last jiffy whose tick this CPU took.
    seen_jiffies: AtomicU64,
    /// Work done: IPIs acknowledged, tasks finished, `cond_resched` in long
    /// kernel loops, ticks taken while running user code.  The hang
    /// detector (`TaskHandle::join`) looks for a machine where no CPU's
    /// count moves.
    pub(crate) progress: AtomicU64,
}

/// Work an idle CPU does between waits (the kernel's softirq / RCU core).
pub(crate) type IdleHook = Box<dyn Fn(CpuId) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) id: u64,
    boot: Instant,
    /// One cache line (or more) per CPU: a sender's stores into its
    /// target's slot do not bounce the lines of its neighbours.
    pub(crate) cpus: Box<[CachePadded<CpuSlot>]>,
    pub(crate) wait: WaitPolicy,
    /// More emulated CPUs than host cores: spinners must yield often or the
    /// CPU they wait for may not run for a whole time slice.  With a core
    /// each, a frequent yield mostly hands the core to unrelated host work
    /// (and costs a syscall per 64 polls on the IPI round trip).
    oversubscribed: bool,
    pub(crate) watchdog: Duration,
    idle_hook: std::sync::OnceLock<IdleHook>,
    /// Timer-tick softirq work (`run_local_timers` → RCU_SOFTIRQ), run on a
    /// CPU the first time it reaches a user-mode instruction boundary in a
    /// new jiffy.  Without it a CPU that never idles never runs its RCU
    /// callbacks, and tables freed through RCU pile up until RAM runs out.
    tick_hook: std::sync::OnceLock<IdleHook>,
    /// `jiffies`: advanced every `TICK` by the machine's timer thread.
    pub(crate) jiffies: AtomicU64,
    /// Tells the timer thread to exit (machine shutdown).
    pub(crate) stopping: AtomicBool,
}

/// `CONFIG_HZ=250` (Debian's and most distributions' x86 and arm64
/// configs): one timer tick every 4 ms.
pub const HZ: u64 = mm_core::smp::HZ;
/// The period of the machine's timer tick.
pub const TICK: Duration = Duration::from_micros(1_000_000 / HZ);

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(t) = p.downcast_ref::<crate::CsdLockTimeout>() {
        t.msg.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

impl Shared {
    pub(crate) fn new(id: u64, n: usize, wait: WaitPolicy, watchdog: Duration) -> Self {
        let cpus = (0..n)
            .map(|_| {
                let (ipi_tx, ipi_rx) = crossbeam::channel::unbounded();
                let (task_tx, task_rx) = crossbeam::channel::unbounded();
                CpuSlot {
                    ipi_tx,
                    ipi_rx,
                    task_tx,
                    task_rx,
                    irq_off: AtomicBool::new(false),
                    cal: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    activity: AtomicU32::new(ACT_IDLE),
                    last_lock_wait_us: AtomicU64::new(0),
                    irq_off_since: AtomicU64::new(0),
                    attention: AtomicBool::new(false),
                    seen_jiffies: AtomicU64::new(0),
                    progress: AtomicU64::new(0),
                }
            })
            .map(CachePadded::new)
            .collect();
        let host = std::thread::available_parallelism().map_or(1, |n| n.get());
        Shared {
            id,
            boot: Instant::now(),
            cpus,
            wait,
            oversubscribed: n > host,
            watchdog,
            idle_hook: std::sync::OnceLock::new(),
            tick_hook: std::sync::OnceLock::new(),
            jiffies: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }
    }

    /// One timer tick (`tick_periodic`): `jiffies++`, and every CPU is told
    /// to look at it at its next user-mode instruction boundary.
    pub(crate) fn timer_tick(&self) {
        self.jiffies.fetch_add(1, Ordering::SeqCst);
        for slot in self.cpus.iter() {
            slot.attention.store(true, Ordering::Release);
        }
    }

    /// Sum of every CPU's progress count.
    pub(crate) fn progress_sum(&self) -> u64 {
        self.cpus.iter().map(|s| s.progress.load(Ordering::Relaxed)).sum()
    }

    /// Work done on `me` (see `CpuSlot::progress`).
    #[inline]
    pub(crate) fn note_progress(&self, me: CpuId) {
        self.cpus[me.idx()].progress.fetch_add(1, Ordering::Relaxed);
    }

    /// `user_irq_window`'s slow path: something was flagged for `me`.
    #[cold]
    fn user_irq_slow(&self, me: CpuId) {
        let slot = &self.cpus[me.idx()];
        if slot.irq_off.load(Ordering::SeqCst) {
            return; // not user mode after all: keep the flag for later
        }
        slot.attention.store(false, Ordering::SeqCst);
        self.poll_ipis(me);
        let j = self.jiffies.load(Ordering::SeqCst);
        if slot.seen_jiffies.swap(j, Ordering::SeqCst) != j {
            // A tick that found this CPU running user code.
            self.note_progress(me);
            if let Some(h) = self.tick_hook.get() {
                h(me);
            }
        }
    }

    /// Install the timer-tick hook (once; later calls are ignored).
    pub(crate) fn set_tick_hook(&self, hook: IdleHook) {
        let _ = self.tick_hook.set(hook);
    }

    /// What every CPU is doing, for a hang report: the busy ones by name,
    /// the idle ones counted.
    pub(crate) fn describe_all(&self) -> String {
        let mut busy = Vec::new();
        let mut idle = 0;
        for i in 0..self.cpus.len() {
            if self.cpus[i].activity.load(Ordering::SeqCst) == ACT_IDLE {
                idle += 1;
            } else {
                busy.push(self.describe(i));
            }
        }
        let shown = busy.len().min(8);
        let mut s = busy[..shown].join(", ");
        if busy.len() > shown {
            s += &format!(" and {} more busy", busy.len() - shown);
        }
        if idle > 0 {
            s += &format!("{}{idle} idle", if s.is_empty() { "" } else { "; " });
        }
        s
    }

    /// The lock-wait hook of `me`'s thread: note the wait, take interrupts.
    pub(crate) fn lock_wait(&self, me: CpuId) {
        let us = self.boot.elapsed().as_micros().max(1) as u64;
        self.cpus[me.idx()].last_lock_wait_us.store(us, Ordering::Relaxed);
        self.poll_ipis(me);
    }

    /// "what it was doing", for the CSD-lock report.
    fn describe(&self, cpu: usize) -> String {
        let slot = &self.cpus[cpu];
        let irqs = if slot.irq_off.load(Ordering::SeqCst) { "IRQs off" } else { "IRQs on" };
        let last = slot.last_lock_wait_us.load(Ordering::Relaxed);
        let now = self.boot.elapsed().as_micros() as u64;
        let doing = match slot.activity.load(Ordering::SeqCst) {
            ACT_IDLE => "idle",
            ACT_CSD_WAIT => "itself waiting in smp_call_function_many",
            _ if last != 0 && now.saturating_sub(last) < LOCK_WAIT_RECENT.as_micros() as u64 => {
                "running a task, spinning on a contended lock"
            }
            _ => "running a task",
        };
        format!("CPU{cpu} ({irqs}, {doing})")
    }

    /// Install the idle-loop hook (once; later calls are ignored).
    pub(crate) fn set_idle_hook(&self, hook: IdleHook) {
        let _ = self.idle_hook.set(hook);
    }

    fn current(&self) -> Option<CpuId> {
        match CURRENT.with(|c| c.get()) {
            Some((m, c)) if m == self.id => Some(CpuId(c)),
            _ => None,
        }
    }

    pub(crate) fn this_cpu(&self) -> CpuId {
        self.current().unwrap_or_else(|| {
            panic!(
                "emu-cpu: this_cpu() called from a thread that is not an emulated CPU of machine {} \
                 (run kernel code through Machine::run_on / spawn_on)",
                self.id
            )
        })
    }

    /// Interrupt point: run every pending IPI if this CPU's IRQs are on.
    pub(crate) fn poll_ipis(&self, me: CpuId) {
        let slot = &self.cpus[me.idx()];
        while !slot.irq_off.load(Ordering::SeqCst) {
            match slot.ipi_rx.try_recv() {
                Ok(msg) => self.handle_ipi(me, msg),
                Err(_) => break,
            }
        }
    }

    fn handle_ipi(&self, me: CpuId, msg: Ipi) {
        let Ipi::Call(cd) = msg else { return };
        let i = me.idx();
        if cd.state[i].compare_exchange(PENDING, RUNNING, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return; // cancelled by the sender's watchdog
        }
        let slot = &self.cpus[i];
        let was_off = slot.irq_off.swap(true, Ordering::SeqCst);
        slot.cal.fetch_add(1, Ordering::SeqCst);
        let traced = (cd.trace_id != 0 && trace::enabled()).then(|| {
            let t0 = trace::now_us();
            trace::emit(trace::Event {
                cpu: me.0,
                ts_us: t0,
                name: "ipi",
                cat: trace::Cat::Ipi,
                kind: trace::Kind::FlowEnd { id: cd.trace_id << 8 | i as u64 },
                args: trace::Args::None,
            });
            t0
        });
        let r = catch_unwind(AssertUnwindSafe(|| (cd.func)(me)));
        if let Some(t0) = traced {
            trace::slice(me.0, "IPI: call_function", trace::Cat::Irq, t0, trace::Args::From(cd.from));
        }
        slot.irq_off.store(was_off, Ordering::SeqCst);
        if let Err(p) = r {
            *cd.panic.lock() = Some(format!("IPI handler panicked on {me}: {}", panic_message(&*p)));
        }
        self.note_progress(me);
        // After this store the sender may return: `cd.func` is not touched again.
        cd.state[i].store(DONE, Ordering::SeqCst);
        // A Spin sender never blocks, so it needs no wake-up message.
        if cd.remaining.fetch_sub(1, Ordering::SeqCst) == 1 && self.wait != WaitPolicy::Spin {
            let _ = self.cpus[cd.from.idx()].ipi_tx.send(Ipi::Wake);
        }
    }

    /// Will the next `idle_wait` spin (rather than park)?
    #[inline]
    fn spins_next(&self, spins: u32) -> bool {
        match self.wait {
            WaitPolicy::Spin => true,
            WaitPolicy::Park => false,
            WaitPolicy::Adaptive => spins < ADAPTIVE_SPINS,
        }
    }

    /// Block (per policy) until something may be in `rxs`, at most `max`.
    pub(crate) fn idle_wait(
        &self,
        spins: &mut u32,
        rxs: &[&Receiver<Ipi>],
        task: Option<&Receiver<Task>>,
        max: Duration,
    ) {
        let ready = || rxs.iter().any(|r| !r.is_empty()) || task.is_some_and(|t| !t.is_empty());
        if self.spins_next(*spins) {
            *spins = spins.wrapping_add(1);
            // Oversubscribed: yield every 64 spins.  Otherwise only every
            // 4096 (a few µs), in case the host is busy with other work
            // (parallel test threads, other machines): then the CPU we wait
            // for may be queued behind us.
            let every = if self.oversubscribed { 63 } else { 4095 };
            if *spins & every == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            return;
        }
        if ready() {
            return;
        }
        let mut sel = Select::new();
        for r in rxs {
            sel.recv(r);
        }
        if let Some(t) = task {
            sel.recv(t);
        }
        let _ = sel.ready_timeout(max.min(MAX_PARK));
    }

    fn smp_call_function_many(&self, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
        let me = self.this_cpu();
        let n = self.cpus.len();
        assert!(
            !self.cpus[me.idx()].irq_off.load(Ordering::SeqCst),
            "smp_call_function_many called on {me} with IRQs disabled: it would wait forever"
        );
        let is_target = |i: usize| i != me.idx() && mask.test(CpuId(i as u32));
        let nr_targets = (0..n).filter(|i| is_target(*i)).count();
        if nr_targets == 0 {
            return;
        }
        // SAFETY: the reference is extended to 'static only to travel through
        // the mailboxes.  Targets call it only after winning PENDING->RUNNING
        // on their slot and never touch it after storing DONE.  This function
        // does not return or unwind before every target slot is DONE or
        // CANCELLED (normal path: `remaining == 0`; watchdog path: every
        // PENDING slot is CANCELLED and every RUNNING slot is waited for
        // before panicking), so no call outlives the borrow.
        let func: &'static (dyn Fn(CpuId) + Sync) = unsafe { std::mem::transmute(func) };
        let t0 = trace::enabled().then(trace::now_us);
        let trace_id = if t0.is_some() { trace::next_id() } else { 0 };
        let cd = Arc::new(CallData {
            func,
            from: me,
            state: (0..n).map(|i| AtomicU32::new(if is_target(i) { PENDING } else { NOT_TARGET })).collect(),
            remaining: AtomicUsize::new(nr_targets),
            panic: Mutex::new(None),
            trace_id,
        });
        self.cpus[me.idx()].sent.fetch_add(nr_targets as u64, Ordering::SeqCst);
        for i in (0..n).filter(|i| is_target(*i)) {
            if let Some(ts_us) = t0 {
                trace::emit(trace::Event {
                    cpu: me.0,
                    ts_us,
                    name: "ipi",
                    cat: trace::Cat::Ipi,
                    kind: trace::Kind::FlowStart { id: trace_id << 8 | i as u64 },
                    args: trace::Args::None,
                });
            }
            // The receiver lives in `self`, so send cannot fail.
            let _ = self.cpus[i].ipi_tx.send(Ipi::Call(cd.clone()));
            self.cpus[i].attention.store(true, Ordering::Release);
        }
        let own = &self.cpus[me.idx()].ipi_rx;
        let prev_act = self.cpus[me.idx()].activity.swap(ACT_CSD_WAIT, Ordering::SeqCst);
        let deadline = Instant::now() + self.watchdog;
        let mut left = self.watchdog;
        let mut spins = 0;
        let mut polls = 0u32;
        loop {
            self.poll_ipis(me);
            if cd.remaining.load(Ordering::SeqCst) == 0 {
                break;
            }
            // Reading the clock costs about as much as a poll: while
            // spinning look at it every 64 polls only, and always before
            // parking (so the park never outlasts the watchdog).
            polls = polls.wrapping_add(1);
            if polls & 63 == 0 || !self.spins_next(spins) {
                let now = Instant::now();
                if now >= deadline {
                    self.cpus[me.idx()].activity.store(prev_act, Ordering::SeqCst);
                    self.watchdog_fire(me, &cd);
                }
                left = deadline - now;
            }
            self.idle_wait(&mut spins, &[own], None, left);
        }
        self.cpus[me.idx()].activity.store(prev_act, Ordering::SeqCst);
        if let Some(t0) = t0 {
            trace::slice(me.0, "smp_call_function_many", trace::Cat::Ipi, t0, trace::Args::Targets { call: trace_id });
        }
        let p = cd.panic.lock().take();
        if let Some(p) = p {
            panic!("smp_call_function_many from {me}: {p}");
        }
    }

    /// CSD-lock timeout: cancel what has not started, wait for what runs,
    /// then panic naming the sender, the stuck targets and their IRQ state.
    /// The payload is a `CsdLockTimeout` (`panic_any`), so the task's
    /// result is `MachineError::CsdTimeout`, told from a panic by its type.
    fn watchdog_fire(&self, me: CpuId, cd: &CallData) -> ! {
        let mut stuck = Vec::new();
        let mut targets = Vec::new();
        for (i, s) in cd.state.iter().enumerate() {
            if s.compare_exchange(PENDING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                stuck.push(self.describe(i));
                targets.push(CpuId(i as u32));
            }
        }
        // Handlers already running must finish before the borrow ends.
        let mut spins = 0;
        while cd.state.iter().any(|s| s.load(Ordering::SeqCst) == RUNNING) {
            self.poll_ipis(me);
            self.idle_wait(&mut spins, &[&self.cpus[me.idx()].ipi_rx], None, Duration::from_millis(1));
        }
        let msg = format!(
            "CSD lock timeout: {me} waited {:?} in smp_call_function_many for {} to acknowledge",
            self.watchdog,
            if stuck.is_empty() { "<targets that finished late>".to_string() } else { stuck.join(", ") }
        );
        std::panic::panic_any(crate::CsdLockTimeout { sender: me, targets, msg });
    }
}

/// The machine's `Smp`: what the kernel owns (`Box<dyn Smp>`).  Cheap to
/// clone; every clone talks to the same machine.
#[derive(Clone)]
pub struct MachineSmp {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for MachineSmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineSmp").field("machine", &self.shared.id).field("cpus", &self.shared.cpus.len()).finish()
    }
}

impl Smp for MachineSmp {
    fn nr_cpus(&self) -> usize {
        self.shared.cpus.len()
    }

    fn this_cpu(&self) -> CpuId {
        self.shared.this_cpu()
    }

    fn smp_call_function_many(&self, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
        self.shared.smp_call_function_many(mask, func);
    }

    fn local_irq_save(&self) -> IrqFlags {
        let me = self.this_cpu();
        let slot = &self.shared.cpus[me.idx()];
        let was_disabled = slot.irq_off.swap(true, Ordering::SeqCst);
        if !was_disabled && trace::enabled() {
            slot.irq_off_since.store(trace::now_us().to_bits(), Ordering::Relaxed);
        }
        IrqFlags { was_disabled }
    }

    fn local_irq_restore(&self, flags: IrqFlags) {
        let me = self.this_cpu();
        let slot = &self.shared.cpus[me.idx()];
        if !flags.was_disabled && trace::enabled() && slot.irq_off.load(Ordering::SeqCst) {
            let t0 = f64::from_bits(slot.irq_off_since.load(Ordering::Relaxed));
            trace::slice(me.0, "irqs_off", trace::Cat::Irq, t0, trace::Args::None);
        }
        slot.irq_off.store(flags.was_disabled, Ordering::SeqCst);
        if !flags.was_disabled {
            self.shared.poll_ipis(me); // re-enable is an interrupt point
        }
    }

    fn irqs_disabled(&self) -> bool {
        let me = self.this_cpu();
        self.shared.cpus[me.idx()].irq_off.load(Ordering::SeqCst)
    }

    fn cond_resched(&self) {
        if let Some(me) = self.shared.current() {
            self.shared.note_progress(me);
            self.shared.poll_ipis(me);
        }
    }

    fn cpu_relax(&self) {
        if let Some(me) = self.shared.current() {
            self.shared.poll_ipis(me);
        }
    }

    #[inline]
    fn user_irq_window(&self, cpu: CpuId) {
        if self.shared.cpus[cpu.idx()].attention.load(Ordering::Relaxed) {
            self.shared.user_irq_slow(cpu);
        }
    }

    fn jiffies(&self) -> u64 {
        self.shared.jiffies.load(Ordering::SeqCst)
    }

    fn call_interrupts(&self, cpu: CpuId) -> u64 {
        self.shared.cpus[cpu.idx()].cal.load(Ordering::SeqCst)
    }

    fn ipis_sent(&self, cpu: CpuId) -> u64 {
        self.shared.cpus[cpu.idx()].sent.load(Ordering::SeqCst)
    }
}

/// The CPU thread's main loop.
pub(crate) fn cpu_main(shared: Arc<Shared>, me: CpuId) {
    set_current(shared.id, me.0);
    // Waiting for a contended kernel lock with IRQs on is an interrupt point.
    let hook_shared = shared.clone();
    mm_core::sync::set_lock_wait_hook(Box::new(move || hook_shared.lock_wait(me)));
    let slot = &shared.cpus[me.idx()];
    let mut spins = 0;
    loop {
        shared.poll_ipis(me);
        match slot.task_rx.try_recv() {
            Ok(Task::Run(f)) => {
                spins = 0;
                slot.activity.store(ACT_TASK, Ordering::SeqCst);
                // Tasks report their own panics (see Machine::spawn_on); this
                // guard only keeps the CPU alive if one slips through.
                let _ = catch_unwind(AssertUnwindSafe(f));
                shared.note_progress(me);
                // Between tasks IRQs are on (a task that leaked an
                // IRQs-off region does not wedge the CPU).
                slot.irq_off.store(false, Ordering::SeqCst);
                slot.activity.store(ACT_IDLE, Ordering::SeqCst);
            }
            Ok(Task::Stop) => break,
            Err(crossbeam::channel::TryRecvError::Disconnected) => break,
            Err(crossbeam::channel::TryRecvError::Empty) => {
                if let Some(h) = shared.idle_hook.get() {
                    // Idle with IRQs on: softirq work (RCU callbacks).  A
                    // panic here would kill the CPU; report and go on.
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| h(me))) {
                        eprintln!("emu-cpu: idle hook panicked on {me}: {}", panic_message(&*p));
                    }
                }
                shared.idle_wait(&mut spins, &[&slot.ipi_rx], Some(&slot.task_rx), MAX_PARK);
            }
        }
    }
}
