//! `System`: a `Machine` with the kernel running on it, and tasks.
//!
//! Contract:
//! - `System::new(kcfg, mcfg)` builds the machine with `kcfg.nr_cpus` CPUs
//!   and a `Kernel` whose `Smp` is that machine.  Every CPU's idle loop then
//!   runs RCU callback processing (`rcu_core` in softirq context), and so
//!   does the timer tick on a CPU busy with user code, so tables freed with
//!   `call_rcu` are returned without anyone calling `rcu_barrier` even on
//!   a machine whose CPUs never idle.
//! - A *user task* is a thread of an mm: `spawn_user(cpu, mm, f)` queues it
//!   on `cpu`; when it is scheduled the CPU context-switches to it
//!   (`switch_mm`, the arch's: x86 mm_cpumask, tlb_gen catch-up and PCID
//!   slots; arm64 an ASID, a local flush only after a rollover; the
//!   NO_RANGE profile a flush of the user TLB), runs `f`, and when `f`
//!   returns the CPU goes idle *lazily* (`enter_lazy_tlb`: the mm stays
//!   loaded, exactly what x86's lazy-TLB rule is about).
//! - A *kernel thread* (`spawn_kthread`) runs with whatever mm the CPU had
//!   loaded, lazily (khugepaged, kworkers, the device driver of a secondary
//!   MMU).
//! - Tasks on one CPU run one after another in queue order (a context
//!   switch between them); tasks on different CPUs run concurrently.
//! - Results come back through `TaskHandle::join`; a panic in a task (or an
//!   IPI handler it waited for) comes back as `MachineError::Panicked` with
//!   the CPU id, never as a hang.

use std::time::Duration;

use mm_core::mm::MmStruct;
use mm_core::sync::Arc;
use mm_core::tlb::{drop_lazy_mm, enter_lazy_tlb, switch_mm};
use mm_core::types::CpuId;
use mm_core::{Kernel, KernelConfig};

use crate::{Machine, MachineConfig, MachineError, TaskHandle};

/// A booted machine: the CPUs and the kernel whose `Smp` they are.
pub struct System {
    /// The CPUs (threads, mailboxes, timer).
    pub machine: Machine,
    /// The kernel running on them; its idle and tick hooks run RCU callbacks.
    pub kernel: Arc<Kernel>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System").field("machine", &self.machine).finish()
    }
}

impl System {
    /// Boot: a machine of `kcfg.nr_cpus` CPUs and the kernel on it.
    pub fn new(kcfg: KernelConfig, mcfg: MachineConfig) -> Result<System, String> {
        kcfg.validate()?;
        let machine = Machine::new(kcfg.nr_cpus, mcfg);
        let kernel = Kernel::new(kcfg, Box::new(machine.smp()))?;
        if crate::trace::enabled() {
            kernel.stats.set_trace_hook(Box::new(|e| {
                let args = crate::trace::Args::TlbFlush { reason: e.stat, pages: e.pages };
                crate::trace::instant(e.cpu.0, "tlb_flush", crate::trace::Cat::Tlb, args);
            }));
        }
        // The hook holds the kernel weakly: the kernel owns the machine's
        // `Smp`, which owns the hook, and a strong reference here would be a
        // cycle that keeps every booted kernel (and its emulated RAM) alive.
        let k = Arc::downgrade(&kernel);
        let softirq = move |_cpu| {
            if let Some(k) = k.upgrade() {
                if k.rcu.pending() > 0 {
                    k.rcu_process_callbacks();
                }
            }
        };
        let tick = softirq.clone();
        machine.shared.set_idle_hook(Box::new(softirq));
        machine.shared.set_tick_hook(Box::new(tick));
        Ok(System { machine, kernel })
    }

    /// CPUs of the machine (= `kernel.cfg.nr_cpus`).
    pub fn nr_cpus(&self) -> usize {
        self.machine.nr_cpus()
    }

    /// The kernel (also the `kernel` field).
    pub fn kernel(&self) -> &Arc<Kernel> {
        &self.kernel
    }

    /// `mm_alloc` on CPU0 (allocation needs a CPU; callers off the machine
    /// use this).
    pub fn mm_alloc(&self) -> Result<Arc<MmStruct>, MachineError> {
        self.run_kthread(CpuId(0), |k| k.mm_alloc())
    }

    /// Queue a thread of `mm` on `cpu`: switch_mm(mm), `f(kernel, mm)`,
    /// then the CPU idles lazily.
    pub fn spawn_user<R, F>(&self, cpu: CpuId, mm: &Arc<MmStruct>, f: F) -> TaskHandle<R>
    where
        F: FnOnce(&Arc<Kernel>, &Arc<MmStruct>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (k, mm) = (self.kernel.clone(), mm.clone());
        self.machine.spawn_on(cpu, move || {
            switch_mm(&k, &mm);
            let r = f(&k, &mm);
            enter_lazy_tlb(&k);
            r
        })
    }

    /// `spawn_user` and wait (at most the machine's task timeout).
    pub fn run_user<R, F>(&self, cpu: CpuId, mm: &Arc<MmStruct>, f: F) -> Result<R, MachineError>
    where
        F: FnOnce(&Arc<Kernel>, &Arc<MmStruct>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn_user(cpu, mm, f).join(self.machine.config().hang_timeout)
    }

    /// Queue a kernel thread on `cpu` (lazy TLB: the loaded mm stays).
    pub fn spawn_kthread<R, F>(&self, cpu: CpuId, f: F) -> TaskHandle<R>
    where
        F: FnOnce(&Arc<Kernel>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let k = self.kernel.clone();
        self.machine.spawn_on(cpu, move || {
            enter_lazy_tlb(&k);
            f(&k)
        })
    }

    /// `spawn_kthread` and wait.
    pub fn run_kthread<R, F>(&self, cpu: CpuId, f: F) -> Result<R, MachineError>
    where
        F: FnOnce(&Arc<Kernel>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn_kthread(cpu, f).join(self.machine.config().hang_timeout)
    }

    /// Join every handle; the first error (in order) wins, but all are
    /// waited for so no task is left running.
    pub fn join_all<R>(&self, handles: Vec<TaskHandle<R>>) -> Result<Vec<R>, MachineError> {
        let t = self.machine.config().hang_timeout;
        let mut out = Vec::with_capacity(handles.len());
        let mut err = None;
        for h in handles {
            match h.join(t) {
                Ok(r) => out.push(r),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        err.map_or(Ok(out), Err)
    }

    /// A run's end: every CPU lets go of the mm it holds lazily
    /// (`tlb::drop_lazy_mm`, what its next switch to a user task would do:
    /// the last exited mm's PGD is freed then), then `quiesce`.
    pub fn release_lazy_mms(&self, timeout: Duration) -> Result<(), MachineError> {
        let hs: Vec<_> = (0..self.nr_cpus())
            .map(|c| {
                let k = self.kernel.clone();
                self.machine.spawn_on(CpuId(c as u32), move || drop_lazy_mm(&k))
            })
            .collect();
        for h in hs {
            h.join(timeout)?;
        }
        self.quiesce(timeout)
    }

    /// Wait until every CPU has drained its task queue and every queued RCU
    /// callback ran (tables freed through RCU are back in the allocator).
    pub fn quiesce(&self, timeout: Duration) -> Result<(), MachineError> {
        let hs: Vec<_> = (0..self.nr_cpus()).map(|c| self.machine.spawn_on(CpuId(c as u32), || ())).collect();
        for h in hs {
            h.join(timeout)?;
        }
        let k = self.kernel.clone();
        self.machine.run_on(CpuId(0), move || k.rcu_barrier())
    }
}
