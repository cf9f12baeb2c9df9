//! The seam to the machine: CPU ids, "this CPU", cross-CPU function calls
//! with wait, and interrupt masking.
//!
//! mm-core never names a thread or a channel; the kernel code calls these
//! operations, and the machine (emu-cpu) implements them with real threads.
//! `SyncSmp` is the synchronous reference implementation: one host thread
//! plays every CPU, so all of mm-core is testable deterministically.
//!
//! Contract (kernel/smp.c):
//! - `smp_call_function_many(mask, func)` runs `func(target)` on every online
//!   CPU of `mask` other than the caller and returns only when all of them
//!   ran it (wait = true; the kernel's TLB and table-sync callers all wait).
//!   Targets run it from their IPI handler, i.e. only while their IRQs are
//!   on.  Calling it with IRQs off is a bug (two CPUs waiting for each other
//!   deadlock) and panics with a message saying so.
//! - `local_irq_save` / `local_irq_restore` mask and unmask this CPU's
//!   interrupts; an IRQs-off region is an RCU read-side critical section
//!   (see `rcu.rs`).

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::types::{CpuId, CpuMask};

/// Saved interrupt state (`unsigned long flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "restore the IRQ state with local_irq_restore"]
pub struct IrqFlags {
    /// IRQs were already off at the save: the restore leaves them off.
    pub was_disabled: bool,
}

/// The machine as the kernel sees it (kernel/smp.c, irqflags): implemented
/// by `SyncSmp`, `ModelSmp` (loom) and emu-cpu's `MachineSmp`.
pub trait Smp: Send + Sync {
    /// `nr_cpu_ids`: CPUs are `0..nr_cpus()`, all online.
    fn nr_cpus(&self) -> usize;
    /// `smp_processor_id()`
    fn this_cpu(&self) -> CpuId;
    /// `cpu_online_mask`
    fn online_mask(&self) -> CpuMask {
        CpuMask::first_n(self.nr_cpus())
    }
    /// `smp_call_function_many(mask, func, info, wait = true)`.
    fn smp_call_function_many(&self, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync));
    /// `local_irq_save`
    fn local_irq_save(&self) -> IrqFlags;
    /// `local_irq_restore`
    fn local_irq_restore(&self, flags: IrqFlags);
    /// `irqs_disabled()`
    fn irqs_disabled(&self) -> bool;
    /// An interrupt point outside any IRQs-off region (`cond_resched()` in
    /// long loops): the machine may service pending IPIs here.  The caller
    /// is getting work done: the machine counts it as this CPU's progress
    /// (its hang detector looks for CPUs that make none).
    fn cond_resched(&self) {}
    /// One turn of a wait loop with IRQs on (`cpu_relax()` in a loop that
    /// polls a flag another CPU sets): an interrupt point like
    /// `cond_resched`, but waiting is not progress.
    fn cpu_relax(&self) {}
    /// An instruction boundary of user code on `cpu` (user mode runs with
    /// IRQs on): the machine may deliver pending IPIs and the timer tick
    /// here (the tick runs softirq work: RCU callbacks).  Called on every
    /// user access, so an implementation must make the nothing-pending
    /// case one load.
    #[inline]
    fn user_irq_window(&self, cpu: CpuId) {
        let _ = cpu;
    }
    /// CAL interrupts received by `cpu` so far (/proc/interrupts "CAL").
    fn call_interrupts(&self, cpu: CpuId) -> u64;
    /// Cross-call IPIs sent by `cpu` so far, one per target CPU (the
    /// sender side of the CAL row: over all CPUs the two sums are equal).
    fn ipis_sent(&self, cpu: CpuId) -> u64;
    /// `jiffies`: timer ticks since boot, `HZ` a second (emu-cpu's machine
    /// advances it from its timer thread; `SyncSmp` when a test says so;
    /// models that have no clock stay at 0).  x86 v6.18 trims mm_cpumask
    /// on it once a second (`should_trim_cpumask`).
    fn jiffies(&self) -> u64 {
        0
    }
    /// The synchronous reference implementation, if this is it (tests use it
    /// to move the running code between CPUs).
    fn as_sync(&self) -> Option<&SyncSmp> {
        None
    }
    /// Make the calling thread run as `cpu` from now on (test and model
    /// set-up; a migration).  Machines whose threads *are* CPUs refuse.
    fn bind_current_thread(&self, cpu: CpuId) {
        panic!("this Smp does not let a caller choose its CPU (asked for {cpu})");
    }
}

/// `CONFIG_HZ`: timer ticks a second (250, as Debian's and most
/// distributions' x86 and arm64 configs; emu-cpu's tick period is 1/HZ).
pub const HZ: u64 = 250;

/// `time_after(a, b)`: jiffy `a` is later than `b` (wrap-safe).
pub fn time_after(a: u64, b: u64) -> bool {
    (b.wrapping_sub(a) as i64) < 0
}

/// `smp_call_function(func, wait=1)`: every online CPU but this one.
pub fn smp_call_function(smp: &dyn Smp, func: &(dyn Fn(CpuId) + Sync)) {
    let mut mask = smp.online_mask();
    mask.clear(smp.this_cpu());
    smp.smp_call_function_many(&mask, func);
}

/// `on_each_cpu_mask(mask, func, info, wait = true)`: the mask's other CPUs
/// by IPI, and this CPU (if in the mask) directly with IRQs off.
pub(crate) fn on_each_cpu_mask(smp: &dyn Smp, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
    let me = smp.this_cpu();
    smp.smp_call_function_many(mask, func);
    if mask.test(me) {
        let f = smp.local_irq_save();
        func(me);
        smp.local_irq_restore(f);
    }
}

/// Per-CPU interrupt state both reference `Smp`s keep: the IRQs-off flag,
/// CAL interrupts received and cross-call IPIs sent.
struct SmpCpus {
    irq_off: Box<[AtomicBool]>,
    cal: Box<[AtomicU64]>,
    sent: Box<[AtomicU64]>,
}

impl SmpCpus {
    /// `who` names the `Smp` in the message for a bad CPU count.
    fn new(who: &str, nr_cpus: usize) -> Self {
        assert!((1..=crate::types::NR_CPUS).contains(&nr_cpus), "{who}: bad CPU count {nr_cpus}");
        Self {
            irq_off: (0..nr_cpus).map(|_| AtomicBool::new(false)).collect(),
            cal: (0..nr_cpus).map(|_| AtomicU64::new(0)).collect(),
            sent: (0..nr_cpus).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn nr(&self) -> usize {
        self.irq_off.len()
    }

    /// One IPI from `from` handled by `to` (both sides of the CAL row).
    fn count_ipi(&self, from: CpuId, to: CpuId) {
        self.sent[from.idx()].fetch_add(1, Ordering::SeqCst);
        self.cal[to.idx()].fetch_add(1, Ordering::SeqCst);
    }

    fn call_interrupts(&self, cpu: CpuId) -> u64 {
        self.cal[cpu.idx()].load(Ordering::SeqCst)
    }

    fn ipis_sent(&self, cpu: CpuId) -> u64 {
        self.sent[cpu.idx()].load(Ordering::SeqCst)
    }
}

/// The synchronous reference `Smp`: one host thread plays all CPUs.
///
/// `set_cpu` says which CPU the running code is on (a migration).  A cross
/// call runs each target's handler inline, with "this CPU" switched to the
/// target for its duration.  A target that has IRQs off could never
/// acknowledge, so that case panics instead of hanging.
pub struct SyncSmp {
    current: AtomicU32,
    cpus: SmpCpus,
    jiffies: AtomicU64,
}

impl SyncSmp {
    /// `nr_cpus` CPUs, IRQs on everywhere, the calling thread on CPU 0.
    pub fn new(nr_cpus: usize) -> Self {
        Self { current: AtomicU32::new(0), cpus: SmpCpus::new("SyncSmp", nr_cpus), jiffies: AtomicU64::new(0) }
    }

    /// Let `n` timer ticks pass (`jiffies += n`).
    pub fn advance_jiffies(&self, n: u64) {
        self.jiffies.fetch_add(n, Ordering::SeqCst);
    }

    /// Run the following code on `cpu`.
    pub fn set_cpu(&self, cpu: CpuId) {
        assert!(cpu.idx() < self.cpus.nr(), "SyncSmp: no {cpu}");
        self.current.store(cpu.0, Ordering::SeqCst);
    }
}

impl Smp for SyncSmp {
    fn nr_cpus(&self) -> usize {
        self.cpus.nr()
    }

    fn this_cpu(&self) -> CpuId {
        CpuId(self.current.load(Ordering::SeqCst))
    }

    fn smp_call_function_many(&self, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
        let me = self.this_cpu();
        assert!(
            !self.irqs_disabled(),
            "smp_call_function_many called on {me} with IRQs disabled: it would wait forever"
        );
        for target in mask.iter().filter(|c| *c != me && c.idx() < self.cpus.nr()) {
            assert!(
                !self.cpus.irq_off[target.idx()].load(Ordering::SeqCst),
                "smp_call_function_many from {me}: {target} has IRQs disabled and cannot acknowledge (would hang)"
            );
            self.cpus.count_ipi(me, target);
            self.current.store(target.0, Ordering::SeqCst);
            self.cpus.irq_off[target.idx()].store(true, Ordering::SeqCst);
            func(target);
            self.cpus.irq_off[target.idx()].store(false, Ordering::SeqCst);
            self.current.store(me.0, Ordering::SeqCst);
        }
    }

    fn local_irq_save(&self) -> IrqFlags {
        let c = self.this_cpu();
        IrqFlags { was_disabled: self.cpus.irq_off[c.idx()].swap(true, Ordering::SeqCst) }
    }

    fn local_irq_restore(&self, flags: IrqFlags) {
        let c = self.this_cpu();
        self.cpus.irq_off[c.idx()].store(flags.was_disabled, Ordering::SeqCst);
    }

    fn irqs_disabled(&self) -> bool {
        self.cpus.irq_off[self.this_cpu().idx()].load(Ordering::SeqCst)
    }

    fn call_interrupts(&self, cpu: CpuId) -> u64 {
        self.cpus.call_interrupts(cpu)
    }

    fn ipis_sent(&self, cpu: CpuId) -> u64 {
        self.cpus.ipis_sent(cpu)
    }

    fn jiffies(&self) -> u64 {
        self.jiffies.load(Ordering::SeqCst)
    }

    fn as_sync(&self) -> Option<&SyncSmp> {
        Some(self)
    }

    fn bind_current_thread(&self, cpu: CpuId) {
        self.set_cpu(cpu);
    }
}

// Not `const`-initialised: loom's `thread_local!` does not accept that form.
#[allow(clippy::missing_const_for_thread_local)]
mod model_tls {
    crate::sync::thread_local! {
        /// The CPU the calling (loom or std) thread plays in a `ModelSmp`.
        pub(super) static MODEL_CPU: core::cell::Cell<Option<u32>> = core::cell::Cell::new(None);
        /// The code running on this thread has IRQs off (its own IRQs-off
        /// region, or an IPI handler it runs on a target's behalf).
        pub(super) static MODEL_IRQS_OFF: core::cell::Cell<bool> = core::cell::Cell::new(false);
    }
}
use model_tls::{MODEL_CPU, MODEL_IRQS_OFF};

fn model_cpu() -> Option<CpuId> {
    MODEL_CPU.with(|c| c.get()).map(CpuId)
}

fn set_model_cpu(cpu: CpuId) {
    MODEL_CPU.with(|c| c.set(Some(cpu.0)));
}

fn model_irqs_off() -> bool {
    MODEL_IRQS_OFF.with(|c| c.get())
}

fn set_model_irqs_off(off: bool) {
    MODEL_IRQS_OFF.with(|c| c.set(off));
}

/// The model-checking `Smp`: each thread (a loom thread in the models) is
/// one CPU, chosen with `bind_current_thread`.
///
/// Real hardware takes an interrupt at any instruction boundary where IRQs
/// are on.  A model thread cannot be interrupted, so the handler runs on
/// the *sender's* thread instead, as the target CPU: the sender first takes
/// the target's `irq_off` flag (as if the target had entered its handler,
/// which runs with IRQs off), runs `func(target)` with "this CPU" switched
/// to the target, and releases the flag.  A target inside an IRQs-off
/// region holds its own flag, so the handler waits until that region ends —
/// exactly what `tlb_remove_table_sync_one` relies on — and nothing else
/// ever delays it.  `local_irq_save` on a CPU whose handler is running
/// waits for the handler (the CPU is busy in it).  Every wait yields, so
/// loom sees progress.
pub struct ModelSmp {
    cpus: SmpCpus,
}

impl ModelSmp {
    /// `nr_cpus` CPUs with IRQs on; each loom thread binds itself to its
    /// CPU (`Smp::bind_current_thread`).
    pub fn new(nr_cpus: usize) -> Self {
        Self { cpus: SmpCpus::new("ModelSmp", nr_cpus) }
    }

    /// Take `cpu`'s IRQs-off flag, waiting while someone else holds it.
    fn take_irq_flag(&self, cpu: CpuId) {
        let flag = &self.cpus.irq_off[cpu.idx()];
        while flag.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            crate::sync::spin_loop();
        }
    }
}

impl Smp for ModelSmp {
    fn nr_cpus(&self) -> usize {
        self.cpus.nr()
    }

    fn this_cpu(&self) -> CpuId {
        model_cpu().expect("ModelSmp: this thread has no CPU (call bind_current_thread first)")
    }

    fn smp_call_function_many(&self, mask: &CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
        let me = self.this_cpu();
        assert!(
            !self.irqs_disabled(),
            "smp_call_function_many called on {me} with IRQs disabled: it would wait forever"
        );
        for target in mask.iter().filter(|c| *c != me && c.idx() < self.cpus.nr()) {
            self.take_irq_flag(target);
            self.cpus.count_ipi(me, target);
            set_model_cpu(target);
            set_model_irqs_off(true);
            func(target);
            set_model_irqs_off(false);
            set_model_cpu(me);
            self.cpus.irq_off[target.idx()].store(false, Ordering::SeqCst);
        }
    }

    fn local_irq_save(&self) -> IrqFlags {
        let me = self.this_cpu();
        if model_irqs_off() {
            return IrqFlags { was_disabled: true };
        }
        self.take_irq_flag(me);
        set_model_irqs_off(true);
        IrqFlags { was_disabled: false }
    }

    fn local_irq_restore(&self, flags: IrqFlags) {
        if !flags.was_disabled {
            set_model_irqs_off(false);
            self.cpus.irq_off[self.this_cpu().idx()].store(false, Ordering::SeqCst);
        }
    }

    fn irqs_disabled(&self) -> bool {
        model_irqs_off()
    }

    fn call_interrupts(&self, cpu: CpuId) -> u64 {
        self.cpus.call_interrupts(cpu)
    }

    fn ipis_sent(&self, cpu: CpuId) -> u64 {
        self.cpus.ipis_sent(cpu)
    }

    fn bind_current_thread(&self, cpu: CpuId) {
        assert!(cpu.idx() < self.cpus.nr(), "ModelSmp: no {cpu}");
        assert!(!model_irqs_off(), "ModelSmp: migrating with IRQs off");
        set_model_cpu(cpu);
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn call_runs_on_targets_with_this_cpu_switched() {
        let smp = SyncSmp::new(4);
        smp.set_cpu(CpuId(1));
        let seen = Mutex::new(Vec::new());
        smp_call_function(&smp, &|c| seen.lock().unwrap().push((c, smp.this_cpu())));
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen, vec![(CpuId(0), CpuId(0)), (CpuId(2), CpuId(2)), (CpuId(3), CpuId(3))]);
        assert_eq!(smp.this_cpu(), CpuId(1));
        assert_eq!(smp.call_interrupts(CpuId(1)), 0);
        assert_eq!(smp.call_interrupts(CpuId(2)), 1);
    }

    #[test]
    fn model_smp_handler_runs_as_target_and_waits_for_irqs_off_region() {
        use std::sync::atomic::AtomicBool as StdBool;
        use std::sync::Arc;
        let smp = Arc::new(ModelSmp::new(2));
        let in_region = Arc::new(StdBool::new(false));
        let region_done = Arc::new(StdBool::new(false));
        let (s1, r1, d1) = (smp.clone(), in_region.clone(), region_done.clone());
        let cpu1 = std::thread::spawn(move || {
            s1.bind_current_thread(CpuId(1));
            let f = s1.local_irq_save();
            r1.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            d1.store(true, Ordering::SeqCst);
            s1.local_irq_restore(f);
        });
        smp.bind_current_thread(CpuId(0));
        while !in_region.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let seen = std::sync::Mutex::new(Vec::new());
        smp_call_function(&*smp, &|c| {
            // The handler runs as the target, with IRQs off, after the
            // target's IRQs-off region ended.
            seen.lock().unwrap().push((c, smp.this_cpu(), smp.irqs_disabled(), region_done.load(Ordering::SeqCst)));
        });
        cpu1.join().unwrap();
        assert_eq!(seen.into_inner().unwrap(), vec![(CpuId(1), CpuId(1), true, true)]);
        assert_eq!(smp.this_cpu(), CpuId(0));
        assert!(!smp.irqs_disabled());
        assert_eq!((smp.call_interrupts(CpuId(1)), smp.ipis_sent(CpuId(0))), (1, 1));
    }

    #[test]
    #[should_panic(expected = "IRQs disabled")]
    fn waiting_with_irqs_off_panics() {
        let smp = SyncSmp::new(2);
        let _f = smp.local_irq_save();
        smp_call_function(&smp, &|_| {});
    }

    #[test]
    #[should_panic(expected = "cannot acknowledge")]
    fn target_with_irqs_off_is_reported() {
        let smp = SyncSmp::new(2);
        smp.set_cpu(CpuId(1));
        let _f = smp.local_irq_save();
        smp.set_cpu(CpuId(0));
        smp_call_function(&smp, &|_| {});
    }
}
