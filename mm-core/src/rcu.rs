//! RCU for page-table freeing, on crossbeam-epoch.
//!
//! Contract:
//! - A read-side critical section is a pinned epoch guard.  Every IRQs-off
//!   region of an emulated CPU is one (`Kernel::local_irq_save` pins), which
//!   is what makes `call_rcu`-freed page tables safe for GUP-fast: since RCU
//!   flavour consolidation, disabling interrupts is an RCU read-side section.
//! - `call_rcu(cb)` queues a callback (`RcuCallback`: a table batch, or
//!   one deferred PTE table); it runs in
//!   `Kernel::rcu_process_callbacks` only after crossbeam-epoch ran the
//!   deferred marker, i.e. after every guard pinned at queue time is gone
//!   (a grace period).  Callbacks run in kernel context (like RCU softirq
//!   processing) so the free goes through the normal page-free path.
//! - `rcu_barrier` waits until every queued callback ran; it must not be
//!   called inside a read-side section.

use crate::page::Ptdesc;
use crate::sync::{epoch, Arc, AtomicBool, AtomicUsize, Mutex, Ordering};
use crate::types::{CpuId, Pfn};

/// What a queued callback frees once its grace period ended (the `rcu_head`
/// and its function).
#[derive(Debug)]
pub enum RcuCallback {
    /// `tlb_remove_table_rcu` → `__tlb_remove_table_free`: every table of
    /// a `struct mmu_table_batch`, then the batch page itself (the
    /// `rcu_head` lives in that page, so it cannot go before).
    TableBatch {
        /// The page backing the batch.
        page: Pfn,
        /// `batch->tables[]`.
        tables: Vec<Ptdesc>,
    },
    /// `pte_free_now` (the callback of `pte_free_defer`, `pt_rcu_head` in
    /// the ptdesc): one PTE table.
    PteFreeNow(Ptdesc),
}

struct Callback {
    done: Arc<AtomicBool>,
    cpu: CpuId,
    cb: RcuCallback,
}

/// The RCU state of one kernel (`Kernel::rcu`): callbacks waiting for
/// their grace period.
#[derive(Default)]
pub struct Rcu {
    queue: Mutex<Vec<Callback>>,
    pending: AtomicUsize,
}

/// An RCU read-side critical section (`rcu_read_lock` .. `rcu_read_unlock`).
pub struct RcuReadGuard {
    _guard: epoch::Guard,
}

impl Rcu {
    /// No callback queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// `rcu_read_lock()`
    pub fn read_lock(&self) -> RcuReadGuard {
        RcuReadGuard { _guard: epoch::pin() }
    }

    /// `call_rcu(head, func)` on `cpu`: run `cb` after a grace period.
    pub fn call_rcu(&self, cpu: CpuId, cb: RcuCallback) {
        let done = Arc::new(AtomicBool::new(false));
        let marker = done.clone();
        let guard = epoch::pin();
        // SAFETY-free: `defer` (not `defer_unchecked`) requires 'static + Send,
        // which the Arc'd flag is; it runs after a grace period.
        guard.defer(move || marker.store(true, Ordering::SeqCst));
        guard.flush();
        drop(guard);
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.queue.lock().push(Callback { done, cpu, cb });
    }

    /// Take the callbacks whose grace period has ended, each with the CPU
    /// that queued it.
    pub(crate) fn take_ready(&self) -> Vec<(CpuId, RcuCallback)> {
        let mut q = self.queue.lock();
        let mut out = Vec::new();
        let mut i = 0;
        while i < q.len() {
            if q[i].done.load(Ordering::SeqCst) {
                let cb = q.swap_remove(i);
                out.push((cb.cpu, cb.cb));
                self.pending.fetch_sub(1, Ordering::SeqCst);
            } else {
                i += 1;
            }
        }
        out
    }

    /// Try to end a grace period: advance and collect the epoch.
    pub(crate) fn poke(&self) {
        epoch::pin().flush();
    }

    /// Callbacks queued and not yet run.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}
