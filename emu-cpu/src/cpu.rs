//! Per-CPU state, cross-call delivery, interrupt masking and the `Smp` handle.
//!
//! Contract:
//! - Every emulated CPU is one OS thread.  Cross calls reach it through
//!   fixed per-CPU state allocated once with the machine (the kernel's
//!   kernel/smp.c: per-CPU `cfd_data` and `call_single_queue`): each
//!   sender CPU owns one `CallSlot` (the call's function, a state per
//!   target, the count of targets still to finish, the handler-panic slot,
//!   the trace id), and each target's `CpuSlot` holds a bitmap of the
//!   senders with a call pending for it.  Sending is stores and atomic
//!   RMWs only: no allocation, no channel message, no `Vec`.  The `task`
//!   channel carries work items (run only from the CPU's main loop); the
//!   `wake` channel carries nothing but wake-ups for a CPU parked in
//!   `idle_wait` (wait policies Park and Adaptive; Spin never parks).
//! - A sender has at most one call outstanding: handlers never send (they
//!   run with IRQs off and `smp_call_function_many` asserts IRQs on), and
//!   a nested send from the same CPU panics before touching the slot.  So
//!   the slot is free whenever its owner enters `smp_call_function_many`
//!   (the kernel's `csd_lock` never waits here).
//! - Interrupt points: the main loop between tasks and while idle, the wait
//!   inside this CPU's own `smp_call_function_many`, `local_irq_restore` that
//!   re-enables IRQs, `cond_resched` / `cpu_relax` with IRQs on, and every
//!   user-mode instruction boundary (`user_irq_window`, one load when
//!   nothing is pending).  `poll_ipis` with nothing pending is one load of
//!   the IRQ flag and one per 64 CPUs of the pending bitmap.
//! - Pending senders are served in passes, lowest CPU id first; a pass
//!   takes each sender at most once, so none starves.
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
//!   running or can still start the borrowed closure, and no target will
//!   touch the sender's slot again: each target's state goes PENDING ->
//!   RUNNING -> DONE and its last touch of the slot is the decrement of
//!   `remaining`; on watchdog timeout the sender flips PENDING -> CANCELLED
//!   and waits until `remaining` is the number it cancelled.  A stale
//!   pending bit (a cancelled call, or a call already served through an
//!   earlier bit) finds no PENDING state and is dropped.
//! - Parking is a Dekker handshake: the waiter sets `parked` (SeqCst),
//!   re-checks its pending bitmap / tasks / what it waits for, and only
//!   then blocks on `wake`; a sender (or the target completing a call)
//!   publishes first, then looks at `parked` (SeqCst) and sends a wake-up
//!   only if it is set.  Every park is also bounded by `MAX_PARK`.
//! - `this_cpu()` outside a CPU thread of this machine panics.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Select, Sender};
use crossbeam::utils::CachePadded;
use mm_core::smp::{IrqFlags, Smp};
use mm_core::sync::{Arc, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering};
use mm_core::types::{CpuId, CpuMask, NR_CPUS};

use crate::trace;
use crate::WaitPolicy;

/// Spins before an adaptive waiter parks.
const ADAPTIVE_SPINS: u32 = 200;
/// Longest single park; waiters re-check their state at least this often.
const MAX_PARK: Duration = Duration::from_millis(50);
/// Spin policy: pauses per `idle_wait`, each followed by a look at the
/// pending bitmap and the waiter's condition (so a call is seen within a
/// pause, not after the caller's whole loop: its task-channel poll, its
/// idle hook).  Tasks are then looked at every ~1 µs.
const SPIN_BATCH: u32 = 64;

thread_local! {
    /// (machine id, cpu) of the emulated CPU this OS thread plays.
    static CURRENT: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
}

pub(crate) fn set_current(machine: u64, cpu: u32) {
    CURRENT.with(|c| c.set(Some((machine, cpu))));
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

/// Words of a pending-senders bitmap (one bit per possible sender).
const PENDING_WORDS: usize = NR_CPUS / 64;

/// The function of a call that is not running (never called: no state is
/// PENDING while it is installed).
const NO_CALL: &(dyn Fn(CpuId) + Sync) = &|_: CpuId| {};

/// The borrowed closure of the current call, lifetime erased (see the
/// SAFETY notes in `smp_call_function_many` and `handle_ipi`).
type CallFn = *const (dyn Fn(CpuId) + Sync + 'static);

/// One sender CPU's cross-call slot (the kernel's per-CPU `cfd_data`),
/// reused by every `smp_call_function_many` of that CPU.  The first fields
/// and the first states share a cache line, so a call to a low-numbered
/// CPU touches one line of the sender's.
#[repr(C)]
pub(crate) struct CallSlot {
    /// The current call's function.  Written only by the owning sender,
    /// before any target of the call can see a PENDING state, and only
    /// while no target can read it; read by a target only after winning
    /// PENDING -> RUNNING on its state.
    func: UnsafeCell<CallFn>,
    /// Trace flow id base (0: not traced); target i's flow is `id << 8 | i`.
    trace_id: AtomicU64,
    /// Targets that have not finished yet (the kernel's `csd_lock_wait`
    /// over the call's CPUs).  A target's decrement is its last touch of
    /// this slot.
    remaining: AtomicUsize,
    /// A handler panicked: `panic` holds its message.  Between calls the
    /// flag is clear and `panic` is `None`.
    panicked: AtomicBool,
    /// Per target CPU: NOT_TARGET / PENDING / RUNNING / DONE / CANCELLED
    /// (the kernel's per-target csd and its CSD_FLAG_LOCK).  A target's
    /// entry is left DONE or CANCELLED after the call; only a PENDING one
    /// is ever acted on.
    state: [AtomicU32; NR_CPUS],
    panic: Mutex<Option<String>>,
}

// SAFETY: every field but `func` is Send + Sync.  `func` is a raw pointer
// to the sender's borrowed `Sync` closure; it is written only by the
// owning sender's thread, inside `smp_call_function_many`, while no other
// thread may read it (every target state of the previous call is DONE,
// CANCELLED or NOT_TARGET, and a target reads `func` only after winning
// PENDING -> RUNNING), and read by targets only after their winning CAS,
// which acquires the sender's release store of PENDING made after the
// write: the writes and reads never race.  Calling the closure from
// another thread is sound because it is `Sync`; it is never called after
// the sender returned (see `smp_call_function_many`).
unsafe impl Sync for CallSlot {}
// SAFETY: the slot holds no thread-affine data; the raw pointer is only an
// address (see the Sync note above for when it is dereferenced).
unsafe impl Send for CallSlot {}

impl CallSlot {
    fn new() -> Self {
        CallSlot {
            func: UnsafeCell::new(NO_CALL as CallFn),
            trace_id: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            state: std::array::from_fn(|_| AtomicU32::new(NOT_TARGET)),
            panic: Mutex::new(None),
        }
    }
}

/// One CPU's state.  The fields a sender writes (`pending`, `attention`)
/// come first and share a line with the ones the CPU itself writes on
/// every IPI (`irq_off`, `cal`, `progress`), which the target then owns
/// anyway.
#[repr(C)]
pub(crate) struct CpuSlot {
    /// Senders with a call pending here: bit `s % 64` of word `s / 64`
    /// (the kernel's `call_single_queue`).  Set by a sender after it made
    /// its state for this CPU PENDING; taken a word at a time by
    /// `poll_ipis`.  A set bit is a hint; the sender's state is the truth.
    pending: [AtomicU64; PENDING_WORDS],
    /// Something may be waiting for this CPU at its next user-mode
    /// instruction boundary: set by an IPI sender after queueing the call
    /// and by the timer tick; cleared by `user_irq_window`'s slow path.
    /// The nothing-pending check of every user access is this one load.
    attention: AtomicBool,
    /// The CPU is in (or about to enter) the blocking step of `idle_wait`:
    /// whoever gives it something to do afterwards sends a `wake`.
    parked: AtomicBool,
    irq_off: AtomicBool,
    cal: AtomicU64,
    /// Work done: IPIs acknowledged, tasks finished, `cond_resched` in long
    /// kernel loops, ticks taken while running user code.  The hang
    /// detector (`TaskHandle::join`) looks for a machine where no CPU's
    /// count moves.
    pub(crate) progress: AtomicU64,
    sent: AtomicU64,
    /// ACT_* : idle, running a task, waiting in smp_call_function_many.
    activity: AtomicU32,
    /// Machine-relative µs of the last contended-lock wait slice (0 = never).
    last_lock_wait_us: AtomicU64,
    /// Trace: `trace::now_us()` bits when IRQs went off (tracing only).
    irq_off_since: AtomicU64,
    /// The last jiffy whose tick this CPU took.
    seen_jiffies: AtomicU64,
    /// Wake-ups for this CPU while `parked` (one token at most: a wake-up
    /// only makes the CPU look again).
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    pub(crate) task_tx: Sender<Task>,
    pub(crate) task_rx: Receiver<Task>,
}

/// Work an idle CPU does between waits (the kernel's softirq / RCU core).
pub(crate) type IdleHook = Box<dyn Fn(CpuId) + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) id: u64,
    boot: Instant,
    /// One cache line (or more) per CPU: a sender's stores into its
    /// target's slot do not bounce the lines of its neighbours.
    pub(crate) cpus: Box<[CachePadded<CpuSlot>]>,
    /// Each CPU's cross-call slot as a sender, padded likewise.
    calls: Box<[CachePadded<CallSlot>]>,
    /// Words of `CpuSlot::pending` in use (`nr_cpus` / 64, rounded up).
    pending_words: usize,
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

/// `c += n` for a counter only its own CPU's thread writes (`cal`, `sent`,
/// `progress`): a load and a store instead of a locked RMW on the IPI path.
/// Other threads only read it; what happens-after the writer (a sender
/// that saw the handler's decrement of `remaining`, a joined task) sees
/// the new value.
#[inline]
fn owner_add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Release);
}

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
        assert!((1..=NR_CPUS).contains(&n), "emu-cpu: bad CPU count {n}");
        let cpus = (0..n)
            .map(|_| {
                let (wake_tx, wake_rx) = crossbeam::channel::bounded(1);
                let (task_tx, task_rx) = crossbeam::channel::unbounded();
                CpuSlot {
                    pending: std::array::from_fn(|_| AtomicU64::new(0)),
                    attention: AtomicBool::new(false),
                    parked: AtomicBool::new(false),
                    irq_off: AtomicBool::new(false),
                    cal: AtomicU64::new(0),
                    progress: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    activity: AtomicU32::new(ACT_IDLE),
                    last_lock_wait_us: AtomicU64::new(0),
                    irq_off_since: AtomicU64::new(0),
                    seen_jiffies: AtomicU64::new(0),
                    wake_tx,
                    wake_rx,
                    task_tx,
                    task_rx,
                }
            })
            .map(CachePadded::new)
            .collect();
        let calls = (0..n).map(|_| CachePadded::new(CallSlot::new())).collect();
        let host = std::thread::available_parallelism().map_or(1, |n| n.get());
        Shared {
            id,
            boot: Instant::now(),
            cpus,
            calls,
            pending_words: n.div_ceil(64),
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
            slot.attention.store(true, Ordering::SeqCst);
        }
    }

    /// Sum of every CPU's progress count.
    pub(crate) fn progress_sum(&self) -> u64 {
        self.cpus.iter().map(|s| s.progress.load(Ordering::Relaxed)).sum()
    }

    /// Work done on `me` (see `CpuSlot::progress`).  Called on `me`'s own
    /// thread only.
    #[inline]
    pub(crate) fn note_progress(&self, me: CpuId) {
        owner_add(&self.cpus[me.idx()].progress, 1);
    }

    /// `user_irq_window`'s slow path: something was flagged for `me`.
    #[cold]
    fn user_irq_slow(&self, me: CpuId) {
        let slot = &self.cpus[me.idx()];
        if slot.irq_off.load(Ordering::SeqCst) {
            return; // not user mode after all: keep the flag for later
        }
        // SeqCst, like the poll's loads: a sender whose bit the poll misses
        // sets the flag again (see `smp_call_function_many`).
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
    /// With nothing pending this is the IRQ flag and one load per 64 CPUs.
    /// Returns whether it took any pending bit.
    pub(crate) fn poll_ipis(&self, me: CpuId) -> bool {
        let slot = &self.cpus[me.idx()];
        let mut took = false;
        // A handler leaves IRQs as it found them (on), so one look at the
        // flag per pass is enough.
        while !slot.irq_off.load(Ordering::SeqCst) {
            let mut ran = false;
            for (w, word) in slot.pending[..self.pending_words].iter().enumerate() {
                // SeqCst: the `attention` argument in `smp_call_function_many`.
                if word.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                // Acquire (of the senders' SeqCst fetch_or): each sender's
                // PENDING store, made before its bit, is visible to the CAS
                // in `handle_ipi`, so a taken bit never loses its call.
                let mut bits = word.swap(0, Ordering::SeqCst);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    self.handle_ipi(me, CpuId((w * 64 + b) as u32));
                    ran = true;
                }
            }
            if !ran {
                break;
            }
            took = true;
        }
        took
    }

    /// A spinner's look at `me`'s pending bitmap (the poll that follows
    /// takes the bits with the ordering it needs).
    #[inline]
    fn pending_hint(&self, me: CpuId) -> bool {
        self.cpus[me.idx()].pending[..self.pending_words].iter().any(|w| w.load(Ordering::Relaxed) != 0)
    }

    /// Is a sender's bit set in `me`'s pending bitmap?  SeqCst: the
    /// waiter's half of the Dekker handshake in `idle_wait`.
    fn has_pending(&self, me: CpuId) -> bool {
        self.cpus[me.idx()].pending[..self.pending_words].iter().any(|w| w.load(Ordering::SeqCst) != 0)
    }

    /// Run `from`'s current call on `me`, if it is still PENDING here (the
    /// kernel's `__flush_smp_call_function_queue` for one csd).
    fn handle_ipi(&self, me: CpuId, from: CpuId) {
        let call = &self.calls[from.idx()];
        let i = me.idx();
        // Acquire on success: pairs with the sender's release of PENDING,
        // so `func`, `trace_id` and `remaining` of this call are visible.
        if call.state[i].compare_exchange(PENDING, RUNNING, Ordering::SeqCst, Ordering::Relaxed).is_err() {
            // A stale bit: the call was cancelled by the sender's watchdog,
            // or this CPU already ran it through an earlier bit.
            return;
        }
        let trace_id = call.trace_id.load(Ordering::Relaxed);
        let slot = &self.cpus[i];
        // `irq_off` is written only by its own CPU's thread (others read it
        // for reports), so plain stores keep it exact here.
        let was_off = slot.irq_off.load(Ordering::Relaxed);
        slot.irq_off.store(true, Ordering::Relaxed);
        owner_add(&slot.cal, 1);
        let traced = (trace_id != 0 && trace::enabled()).then(|| {
            let t0 = trace::now_us();
            trace::emit(trace::Event {
                cpu: me.0,
                ts_us: t0,
                name: "ipi",
                cat: trace::Cat::Ipi,
                kind: trace::Kind::FlowEnd { id: trace_id << 8 | i as u64 },
                args: trace::Args::None,
            });
            t0
        });
        let r = {
            // SAFETY: we won PENDING -> RUNNING, whose acquire reads the
            // sender's release store of PENDING made after it wrote `func`
            // for this call, so this read does not race with that write;
            // the sender writes `func` again only in a later call, after
            // our decrement of `remaining` below.  The pointee is the
            // sender's borrowed closure: the sender does not return or
            // unwind before `remaining` counts our decrement (normally it
            // waits for 0; its watchdog waits for the number it
            // cancelled, and ours was not cancelled), and the reference
            // lives only inside this block, before the decrement.  The
            // closure is `Sync`, so calling it from this thread is sound.
            let func: &(dyn Fn(CpuId) + Sync) = unsafe { &**call.func.get() };
            catch_unwind(AssertUnwindSafe(|| func(me)))
        };
        if let Some(t0) = traced {
            trace::slice(me.0, "IPI: call_function", trace::Cat::Irq, t0, trace::Args::From(from));
        }
        slot.irq_off.store(was_off, Ordering::Relaxed);
        if let Err(p) = r {
            *call.panic.lock() = Some(format!("IPI handler panicked on {me}: {}", panic_message(&*p)));
            // Published to the sender by the decrement below.
            call.panicked.store(true, Ordering::Relaxed);
        }
        call.state[i].store(DONE, Ordering::Release);
        // The last touch of the slot: once this decrement is counted the
        // sender may return (the borrow of `func` ends) and reuse the slot.
        // A Spin sender never parks, so it needs no wake-up.
        if call.remaining.fetch_sub(1, Ordering::SeqCst) == 1 && self.wait != WaitPolicy::Spin {
            self.wake_if_parked(from);
        }
        self.note_progress(me);
    }

    /// Wake `cpu` if it is parked or about to park.  The caller has already
    /// published what it is woken for (a pending bit, the last decrement of
    /// `remaining`) with SeqCst: the sender's half of the Dekker handshake
    /// in `idle_wait`.
    #[inline]
    fn wake_if_parked(&self, cpu: CpuId) {
        let slot = &self.cpus[cpu.idx()];
        if slot.parked.load(Ordering::SeqCst) {
            // Full: a wake-up is already on its way, and one is enough.
            let _ = slot.wake_tx.try_send(());
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

    /// Wait (per policy) until `me` may have something to do: a pending
    /// call, a task in `task`, or `done()`; a park lasts at most `max`.
    pub(crate) fn idle_wait(
        &self,
        me: CpuId,
        spins: &mut u32,
        task: Option<&Receiver<Task>>,
        done: impl Fn() -> bool,
        max: Duration,
    ) {
        if self.spins_next(*spins) {
            // Oversubscribed: yield every 64 spins.  Otherwise only every
            // 4096 (a few µs), in case the host is busy with other work
            // (parallel test threads, other machines): then the CPU we wait
            // for may be queued behind us.
            let every = if self.oversubscribed { 63 } else { 4095 };
            // Adaptive counts single spins before it parks: one per call.
            let batch = if self.wait == WaitPolicy::Spin { SPIN_BATCH } else { 1 };
            for _ in 0..batch {
                *spins = spins.wrapping_add(1);
                if *spins & every == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                if batch > 1 && (self.pending_hint(me) || done()) {
                    break;
                }
            }
            return;
        }
        let slot = &self.cpus[me.idx()];
        // Dekker handshake with `wake_if_parked`: publish `parked`, then
        // look again.  In the SeqCst order either this look comes after a
        // sender's fetch_or of its bit (or a target's last decrement), and
        // sees it, or that sender's later load of `parked` comes after our
        // store and it sends a wake-up, which ends the block below (a token
        // sent before the block starts is found at once).  Tasks need no
        // handshake: the select below watches the task channel itself.
        slot.parked.store(true, Ordering::SeqCst);
        if !(self.has_pending(me) || task.is_some_and(|t| !t.is_empty()) || done()) {
            let timeout = max.min(MAX_PARK);
            match task {
                Some(t) => {
                    let mut sel = Select::new();
                    sel.recv(&slot.wake_rx);
                    sel.recv(t);
                    let _ = sel.ready_timeout(timeout);
                }
                None => {
                    let _ = slot.wake_rx.recv_timeout(timeout);
                }
            }
        }
        slot.parked.store(false, Ordering::SeqCst);
        // A token left over (the select does not take it, or it came after
        // we woke) only asks for a look the caller is about to take.
        let _ = slot.wake_rx.try_recv();
    }

    fn smp_call_function_many(&self, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
        let me = self.this_cpu();
        let n = self.cpus.len();
        let my = &self.cpus[me.idx()];
        assert!(
            !my.irq_off.load(Ordering::SeqCst),
            "smp_call_function_many called on {me} with IRQs disabled: it would wait forever"
        );
        let is_target = |i: usize| i != me.idx() && mask.test(CpuId(i as u32));
        let nr_targets = (0..n).filter(|&i| is_target(i)).count();
        if nr_targets == 0 {
            return;
        }
        // `activity` and `sent` are written only by this CPU's thread.
        let prev_act = my.activity.load(Ordering::Relaxed);
        assert!(
            prev_act != ACT_CSD_WAIT,
            "smp_call_function_many on {me} from inside its own wait for a cross call: one call per sender"
        );
        let call = &self.calls[me.idx()];
        // SAFETY: only the closure's lifetime is erased (same pointer, same
        // vtable), so that it can sit in the slot.  The pointer is
        // dereferenced only by a target that won PENDING -> RUNNING for
        // this call, and only before its decrement of `remaining`.  This
        // function does not return or unwind before every target's
        // decrement is counted or the target was cancelled: normally it
        // waits for `remaining == 0`; on watchdog timeout every PENDING
        // state is CANCELLED (those targets never call it) and it waits
        // until `remaining` equals the number cancelled before panicking.
        // So no call outlives the borrow.
        let func = unsafe { std::mem::transmute::<*const (dyn Fn(CpuId) + Sync + '_), CallFn>(func) };
        // SAFETY: this CPU owns the slot and it is free.  A sender has one
        // call at a time (handlers cannot send: IRQs are off in them and
        // asserted on above; the activity check above catches any other
        // nesting), and this CPU's previous call ended only once each of
        // its targets had decremented `remaining` (after its last read of
        // `func`) or been cancelled (never to read it).  Every state is
        // now NOT_TARGET, DONE or CANCELLED, so no target reads `func`
        // until one is made PENDING below, after this write.
        unsafe { *call.func.get() = func };
        let t0 = trace::enabled().then(trace::now_us);
        let trace_id = if t0.is_some() { trace::next_id() } else { 0 };
        call.trace_id.store(trace_id, Ordering::Relaxed);
        call.remaining.store(nr_targets, Ordering::Relaxed);
        let (word, bit) = (me.idx() / 64, 1u64 << (me.idx() % 64));
        for i in (0..n).filter(|&i| is_target(i)) {
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
            // Release: the target that wins PENDING -> RUNNING sees `func`,
            // `trace_id` and `remaining` as written above.
            call.state[i].store(PENDING, Ordering::Release);
            let t = &self.cpus[i];
            // Queue after the state, so a target that takes the bit finds
            // the call.  SeqCst: the Dekker pair with the target's `parked`.
            t.pending[word].fetch_or(bit, Ordering::SeqCst);
            // Flag it for the target's next user-mode boundary.  Already set
            // (an idle CPU never clears it): leave the line alone.  No bit
            // is missed: if the owner's poll after its clearing store does
            // not see our bit, that poll comes before our fetch_or in the
            // SeqCst order, so our load comes after the clear and sees it
            // (we set the flag again) or a later setter's true.
            if !t.attention.load(Ordering::SeqCst) {
                t.attention.store(true, Ordering::SeqCst);
            }
            // A Spin CPU never parks.
            if self.wait != WaitPolicy::Spin {
                self.wake_if_parked(CpuId(i as u32));
            }
        }
        // Off the targets' critical path: they are already on their way.
        owner_add(&my.sent, nr_targets as u64);
        my.activity.store(ACT_CSD_WAIT, Ordering::Release);
        let done = || call.remaining.load(Ordering::SeqCst) == 0;
        // The watchdog's deadline is set at the first look at the clock,
        // so a call that completes while spinning never reads it.
        let mut deadline: Option<Instant> = None;
        let mut left = self.watchdog;
        let mut spins = 0;
        let mut polls = 0u32;
        loop {
            self.poll_ipis(me);
            if done() {
                break;
            }
            // Reading the clock costs about as much as a poll: while
            // spinning look at it every 64 polls only (the deadline then
            // starts at most 64 polls late), and always before parking
            // (so the park never outlasts the watchdog).
            polls = polls.wrapping_add(1);
            if polls & 63 == 0 || !self.spins_next(spins) {
                let now = Instant::now();
                let deadline = *deadline.get_or_insert(now + self.watchdog);
                if now >= deadline {
                    my.activity.store(prev_act, Ordering::Release);
                    self.watchdog_fire(me, call);
                }
                left = deadline - now;
            }
            self.idle_wait(me, &mut spins, None, done, left);
        }
        my.activity.store(prev_act, Ordering::Release);
        if let Some(t0) = t0 {
            trace::slice(me.0, "smp_call_function_many", trace::Cat::Ipi, t0, trace::Args::Targets { call: trace_id });
        }
        // Relaxed: `remaining == 0` (SeqCst) already ordered every
        // handler's writes of the panic slot before this.
        if call.panicked.load(Ordering::Relaxed) {
            let p = call.panic.lock().take().unwrap_or_default();
            call.panicked.store(false, Ordering::Relaxed);
            panic!("smp_call_function_many from {me}: {p}");
        }
    }

    /// CSD-lock timeout: cancel what has not started, wait for what runs,
    /// then panic naming the sender, the stuck targets and their IRQ state.
    /// The payload is a `CsdLockTimeout` (`panic_any`), so the task's
    /// result is `MachineError::CsdTimeout`, told from a panic by its type.
    fn watchdog_fire(&self, me: CpuId, call: &CallSlot) -> ! {
        let mut stuck = Vec::new();
        let mut targets = Vec::new();
        for (i, s) in call.state[..self.cpus.len()].iter().enumerate() {
            if s.compare_exchange(PENDING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                stuck.push(self.describe(i));
                targets.push(CpuId(i as u32));
            }
        }
        // Handlers already running must be done with the slot before the
        // borrow ends: each one's last touch is its decrement, and the
        // cancelled ones never decrement.
        let cancelled = targets.len();
        let settled = || call.remaining.load(Ordering::SeqCst) == cancelled;
        let mut spins = 0;
        while !settled() {
            self.poll_ipis(me);
            self.idle_wait(me, &mut spins, None, settled, Duration::from_millis(1));
        }
        // No target touches the slot now: leave it clean for the next call.
        call.panicked.store(false, Ordering::Relaxed);
        *call.panic.lock() = None;
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
        // Adaptive: a CPU that just took a cross call spins again before
        // it parks, so a stream of calls finds it awake — unless the
        // machine is oversubscribed, where spinners take the cores from
        // the CPUs they wait for.
        if shared.poll_ipis(me) && !shared.oversubscribed {
            spins = 0;
        }
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
                shared.idle_wait(me, &mut spins, Some(&slot.task_rx), || false, MAX_PARK);
            }
        }
    }
}
