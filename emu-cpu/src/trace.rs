//! Trace hooks: what the machine did, per emulated CPU, for Perfetto.
//!
//! Contract:
//! - Off by default.  Every hook starts with one relaxed load of a global
//!   flag (`enabled()`), so a run without `--trace` pays nothing else.
//! - `start()` clears the buffer, sets time zero and turns recording on
//!   for every machine in the process (race drivers boot their own
//!   `System`s; they are traced too).  `stop()` turns it off and returns
//!   the events in the order they were recorded.
//! - Timestamps are microseconds since `start()` (fractional).
//! - What is recorded: IRQs-off regions (`local_irq_save` ..
//!   `local_irq_restore` that re-enables) and IPI handlers as slices on the
//!   CPU that ran them; each cross call as a slice on the sender plus one
//!   flow per target (sender → handler); tlb_flush trace events (mm-core's
//!   `Stats` hook, installed by `System::new` when tracing is on) as
//!   instants; syscalls as slices (`syscall()`, called by the workloads).
//! - At most `MAX_EVENTS` are kept; the rest are counted in `dropped`.
//! - Memory: an `Event` is a fixed-size `Copy` record (64 bytes: names
//!   are `&'static str`, categories and args small enums, no heap data),
//!   and `start()` reserves the whole buffer once, so recording never
//!   allocates and the cap costs at most `MAX_EVENTS * 64` bytes (256 MB),
//!   touched only as events arrive.  Strings (CPU names, the IPI targets,
//!   reasons) are formatted only when the trace is written
//!   (workloads' `trace_json`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use mm_core::stats::Stat;
use mm_core::CpuId;

/// Cap on recorded events (a few hundred MB of JSON at most).
pub const MAX_EVENTS: usize = 4_000_000;

/// Bound on `size_of::<Event>()` (pinned by a test): the cap costs at most
/// `MAX_EVENTS * EVENT_BYTES` of host memory.
pub const EVENT_BYTES: usize = 64;

static ON: AtomicBool = AtomicBool::new(false);
/// Nanoseconds from `base()` to the current trace's time zero.
static EPOCH_NS: AtomicU64 = AtomicU64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static BUF: Mutex<Buf> = Mutex::new(Buf { events: Vec::new(), dropped: 0 });

struct Buf {
    events: Vec<Event>,
    dropped: u64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// What kind of trace event (Chrome trace-event phases).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A complete slice ("X") of `dur_us` starting at `ts_us`.
    Slice {
        /// Duration in microseconds.
        dur_us: f64,
    },
    /// An instant event ("i", thread scope).
    Instant,
    /// Flow start ("s") on the sender.
    FlowStart {
        /// `call << 8 | target index`: pairs it with one `FlowEnd`.
        id: u64,
    },
    /// Flow end ("f", bound to the enclosing slice) on the target.
    FlowEnd {
        /// The `FlowStart`'s id.
        id: u64,
    },
}

/// Category ("cat") of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cat {
    /// Cross calls: the sender's `smp_call_function_many` and its flows.
    Ipi,
    /// IRQs-off regions and IPI handlers.
    Irq,
    /// tlb_flush trace events.
    Tlb,
    /// Syscalls of the workloads.
    Syscall,
}

impl Cat {
    /// The trace's "cat" string.
    pub fn name(self) -> &'static str {
        match self {
            Cat::Ipi => "ipi",
            Cat::Irq => "irq",
            Cat::Tlb => "tlb",
            Cat::Syscall => "syscall",
        }
    }
}

/// An event's args, kept as integers; the writer turns them into the
/// trace's string args.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    /// No args.
    None,
    /// tlb_flush: `"reason"` (the Stat's name) and `"pages"` (a number, or
    /// `TLB_FLUSH_ALL` for `mm_core::stats::TLB_FLUSH_ALL`).
    TlbFlush {
        /// The trace reason (`Stat::name` is its kernel name).
        reason: Stat,
        /// Pages flushed, or `mm_core::stats::TLB_FLUSH_ALL`.
        pages: u64,
    },
    /// IPI handler: `"from"`, the sending CPU.
    From(CpuId),
    /// smp_call_function_many: `"targets"`, the CPUs of cross call `call`
    /// (`next_id()`), comma-separated.  Not stored: they are the targets of
    /// the call's `FlowStart` events (`id = call << 8 | cpu`), which are
    /// recorded before the slice and so are kept whenever it is.
    Targets {
        /// The cross call's id (`next_id()`).
        call: u64,
    },
}

/// One recorded event on one emulated CPU's track.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// Microseconds since `start()` (a slice's start).
    pub ts_us: f64,
    /// Slice, instant or flow end point.
    pub kind: Kind,
    /// The event's name, e.g. `"irqs_off"`, `"tlb_flush"`, a syscall's.
    pub name: &'static str,
    /// The event's args.
    pub args: Args,
    /// The emulated CPU whose track it is on.
    pub cpu: u32,
    /// Its category.
    pub cat: Cat,
}

/// Is a trace being recorded?  One relaxed load.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Start recording (time zero is now); clears anything recorded before.
pub fn start() {
    let mut b = BUF.lock().unwrap_or_else(|e| e.into_inner());
    b.events.clear();
    // All of it now, so `emit` never reallocates under the lock (pages are
    // touched only as events arrive).
    b.events.reserve_exact(MAX_EVENTS);
    b.dropped = 0;
    EPOCH_NS.store(base().elapsed().as_nanos() as u64, Ordering::SeqCst);
    ON.store(true, Ordering::SeqCst);
}

/// Stop recording; returns the events and how many were dropped at the cap.
pub fn stop() -> (Vec<Event>, u64) {
    ON.store(false, Ordering::SeqCst);
    let mut b = BUF.lock().unwrap_or_else(|e| e.into_inner());
    let d = b.dropped;
    b.dropped = 0;
    (std::mem::take(&mut b.events), d)
}

/// Microseconds since `start()`.
#[inline]
pub(crate) fn now_us() -> f64 {
    let ns = (base().elapsed().as_nanos() as u64).saturating_sub(EPOCH_NS.load(Ordering::Relaxed));
    ns as f64 / 1000.0
}

/// A fresh id for flows.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Record one event (no-op when tracing is off).
pub fn emit(ev: Event) {
    if !enabled() {
        return;
    }
    let mut b = BUF.lock().unwrap_or_else(|e| e.into_inner());
    if b.events.len() < MAX_EVENTS {
        b.events.push(ev);
    } else {
        b.dropped += 1;
    }
}

/// A slice from `start_us` to now on `cpu`.
pub(crate) fn slice(cpu: u32, name: &'static str, cat: Cat, start_us: f64, args: Args) {
    let dur_us = (now_us() - start_us).max(0.0);
    emit(Event { cpu, ts_us: start_us, name, cat, kind: Kind::Slice { dur_us }, args });
}

/// An instant event now on `cpu`.
pub fn instant(cpu: u32, name: &'static str, cat: Cat, args: Args) {
    emit(Event { cpu, ts_us: now_us(), name, cat, kind: Kind::Instant, args });
}

/// A slice recorded when dropped (syscalls).  Create it with `syscall`.
#[must_use = "the slice ends when this guard is dropped"]
pub struct Span {
    cpu: u32,
    name: &'static str,
    start_us: f64,
}

impl Drop for Span {
    fn drop(&mut self) {
        slice(self.cpu, self.name, Cat::Syscall, self.start_us, Args::None);
    }
}

/// A syscall slice on `cpu` lasting until the returned guard drops; `None`
/// (free) when tracing is off.
#[inline]
pub fn syscall(cpu: CpuId, name: &'static str) -> Option<Span> {
    enabled().then(|| Span { cpu: cpu.0, name, start_us: now_us() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_a_small_fixed_size_record() {
        assert!(std::mem::size_of::<Event>() <= EVENT_BYTES, "Event is {} bytes", std::mem::size_of::<Event>());
        // No heap data: dropping a buffer of events runs no destructors.
        assert!(!std::mem::needs_drop::<Event>());
    }
}
