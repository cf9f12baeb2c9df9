//! mmu_notifier (mm/mmu_notifier.c, include/linux/mmu_notifier.h): how a
//! secondary MMU — an IOMMU doing SVA, a GPU, KVM — learns that the CPU page
//! tables of an mm changed.
//!
//! # The ordering it guarantees
//!
//! A secondary TLB caches translations of the mm's page tables exactly like a
//! CPU TLB, so it obeys the same rule: **unhook → invalidate (CPU and
//! secondary) → free**.  Since 6bbd42e2df8f ("mmu_notifiers: call
//! invalidate_range() when invalidating TLBs") the secondary invalidation is
//! issued *from inside the arch TLB flush* (`tlb::secondary_invalidate`, called
//! by x86 `flush_tlb_mm_range`, the arm64 range / mm flushes and the generic
//! `flush_tlb_mm`): "the CPU decided (mm, range) must be invalidated" and "the
//! secondary TLB is invalidated" are one event.  `flush_tlb_all` does not call
//! it (no IOMMU caches kernel mappings).
//!
//! # Contract of each call
//!
//! - `mmu_notifier_register(k, mm, ops)`: `ops` sees every later invalidation
//!   of `mm`; returns an id for `mmu_notifier_unregister`.
//! - `mmu_notifier_arch_invalidate_secondary_tlbs(k, mm, start, end)`: when it
//!   returns, no subscriber's TLB holds a translation of [start, end) of `mm`
//!   (ATC invalidation + CMD_SYNC are synchronous here).
//! - `mmu_notifier_release(k, mm)`: `exit_mmap` is about to tear everything
//!   down; subscribers stop translating (SVA: the context descriptor is set to
//!   fault every access) and drop their TLB.
//!
//! # Options: `Fix::SecondaryTlbOnFlush` (6bbd42e2df8f)
//!
//! Off reproduces the pre-6.6 placement, which kept the secondary
//! invalidation (`->invalidate_range`) in generic wrappers around the CPU
//! flush rather than in it:
//! - `tlb_flush_mmu_tlbonly` called `mmu_notifier_invalidate_range(mm,
//!   tlb->start, tlb->end)` right after `tlb_flush` (so zap / munmap /
//!   madvise / mprotect through the gather were covered);
//! - the `*_notify` helpers (`ptep_clear_flush_notify` in `wp_page_copy`);
//! - `mmu_notifier_invalidate_range_end` (`__mmu_notifier_invalidate_range_end`
//!   with `only_end == false`), i.e. after the PTL is dropped: folio_mkclean's
//!   `page_vma_mkclean_one`, fork's `copy_page_range`, `unmap_vmas`,
//!   `zap_page_range_single`, `change_protection` (the kernel's range is
//!   per `change_pmd_range`; once per VMA here) and `collapse_huge_page`
//!   — so a gathered zap reached a subscriber twice.
//!
//! A path that calls the arch flush directly — arm64 `ptep_set_access_flags`
//! → `flush_tlb_page` on a permission upgrade — reached no subscriber, and a
//! device holding the old read-only translation faulted forever (the SMMU
//! livelock of the commit message; `iommu.rs` bounds it and reports
//! `secondary-livelock`).

use crate::config::Fix;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::{AtomicU64, Ordering, RwLock};
use crate::types::Pfn;

/// `struct mmu_notifier_ops`, the part the model needs.
pub trait MmuNotifierOps: Send + Sync {
    /// `arch_invalidate_secondary_tlbs(subscription, mm, start, end)` (named
    /// `invalidate_range` before 6bbd42e2df8f; same job).
    fn arch_invalidate_secondary_tlbs(&self, k: &Kernel, mm: u64, start: u64, end: u64);
    /// `release(subscription, mm)`: the mm is being torn down.
    fn release(&self, _k: &Kernel, _mm: u64) {}
}

/// Subscription handle returned by `mmu_notifier_register`.
pub type SubscriptionId = u64;

/// `struct mmu_notifier_subscriptions` (`mm->notifier_subscriptions`).
#[derive(Default)]
pub struct MmuNotifierSubscriptions {
    list: RwLock<Vec<(SubscriptionId, Box<dyn MmuNotifierOps>)>>,
    next: AtomicU64,
}

impl MmuNotifierSubscriptions {
    /// No subscriber (a new mm).
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of registered subscribers.
    pub fn len(&self) -> usize {
        self.list.read().len()
    }
    /// No subscriber (the kernel's `mm_has_notifiers(mm)` is false).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `mmu_notifier_register(subscription, mm)`
pub fn mmu_notifier_register(mm: &MmStruct, ops: Box<dyn MmuNotifierOps>) -> SubscriptionId {
    let subs = &mm.notifier_subscriptions;
    let id = subs.next.fetch_add(1, Ordering::SeqCst) + 1;
    subs.list.write().push((id, ops));
    id
}

/// `mmu_notifier_unregister(subscription, mm)`: true if it was registered.
pub fn mmu_notifier_unregister(mm: &MmStruct, id: SubscriptionId) -> bool {
    let mut l = mm.notifier_subscriptions.list.write();
    let before = l.len();
    l.retain(|(i, _)| *i != id);
    l.len() != before
}

fn call_subscribers(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    let l = mm.notifier_subscriptions.list.read();
    if l.is_empty() {
        return;
    }
    for (_, ops) in l.iter() {
        ops.arch_invalidate_secondary_tlbs(k, mm.id, start, end);
    }
    k.stats.add(k.this_cpu(), Stat::SecondaryTlbInvalidations, l.len() as u64);
}

/// `mmu_notifier_arch_invalidate_secondary_tlbs(mm, start, end)`: the call
/// the arch TLB flush makes (6bbd42e2df8f).  Only reached through
/// `tlb::secondary_invalidate`, which checks the switch.
pub fn mmu_notifier_arch_invalidate_secondary_tlbs(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    call_subscribers(k, mm, start, end);
}

/// Pre-6bbd42e2df8f `mmu_notifier_invalidate_range(mm, start, end)`: the
/// generic-code call sites (`tlb_flush_mmu_tlbonly`, `*_notify`).  A no-op
/// with the fix on — the kernel deleted these calls because the arch flush
/// right before them now does it.
pub fn mmu_notifier_invalidate_range(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    if !k.cfg.fixes.on(Fix::SecondaryTlbOnFlush) {
        call_subscribers(k, mm, start, end);
    }
}

/// `mmu_notifier_invalidate_range_end(range)`: pre-6bbd42e2df8f it ended
/// with `->invalidate_range` for every subscriber (after the caller dropped
/// the PTL); since then it only runs `->invalidate_range_end` callbacks,
/// which no modelled subscriber has.
pub fn mmu_notifier_invalidate_range_end(k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
    mmu_notifier_invalidate_range(k, mm, start, end);
}

/// `mmu_notifier_release(mm)` (`__mmu_notifier_release`): called by
/// `exit_mmap` before the teardown; every subscriber's `release` runs.
pub fn mmu_notifier_release(k: &Kernel, mm: &MmStruct) {
    let l = mm.notifier_subscriptions.list.read();
    for (_, ops) in l.iter() {
        ops.release(k, mm.id);
    }
}

/// `ptep_clear_flush_notify(vma, addr, ptep)`: `ptep_clear_flush`, then
/// (pre-6bbd42e2df8f) `mmu_notifier_invalidate_range` for the page.  Since the
/// fix it is plain `ptep_clear_flush` (the kernel removed the macro).
pub fn ptep_clear_flush_notify(k: &Kernel, mm: &MmStruct, table: Pfn, va: u64) -> Pte {
    let ps = k.cfg.geometry.page_size();
    let va = va & !(ps - 1);
    let old = pgtable::get_and_clear(k, table, Level::Pte, va);
    crate::tlb::flush_tlb_page(k, mm, va);
    mmu_notifier_invalidate_range(k, mm, va, va + ps);
    old
}
