//! Page-table freeing through the gather (MMU_GATHER_TABLE_FREE /
//! MMU_GATHER_RCU_TABLE_FREE, mm/mmu_gather.c and include/asm-generic/tlb.h,
//! v6.12).
//!
//! Contract (unhook → invalidate → free, for page-table pages):
//! - `pte_free_tlb` / `pmd_free_tlb` / `pud_free_tlb`: the caller has already
//!   cleared the upper entry that pointed at `table` (unhook).  The range is
//!   recorded one level up, `freed_tables` is set (walk caches must be
//!   dropped; x86 then also interrupts lazy CPUs), and the table is queued.
//! - With `rcu_table_free` (MMU_GATHER_RCU_TABLE_FREE, which selects
//!   MMU_GATHER_TABLE_FREE): `tlb_table_flush` first runs
//!   `tlb_table_invalidate` (a TLB flush including the walk caches, since
//!   `tlb_needs_table_invalidate()` holds for every modelled arch), then hands
//!   the batch to `call_rcu`.  Its callback, `tlb_remove_table_rcu`, frees
//!   every table and then the batch page (`__tlb_remove_table_free`: the
//!   `rcu_head` lives in that page).  IRQs-off walkers (GUP-fast) are RCU
//!   readers.  When `tlb_table_flush` returns the gather has no table batch.
//! - Without it (a kernel without MMU_GATHER_TABLE_FREE: x86 without
//!   PARAVIRT in v6.12, whose `paravirt_tlb_remove_table` is
//!   `tlb_remove_page`; the MMU_GATHER_NO_RANGE arches): `tlb_remove_table`
//!   is `tlb_remove_page` — the table goes into the page batch and is freed
//!   with the pages after the TLB flush (`tlb_batch_pages_flush`); there is
//!   no table batch, no allocation to fail, and `tlb_remove_table_sync_one`
//!   is a no-op.
//! - Table-batch allocation is GFP_NOWAIT and may fail (inject with
//!   `k.inject.faults.fail_table_batch`): then the table is invalidated, a
//!   `tlb_remove_table_sync_one` IPI waits out every IRQs-off walker, and the
//!   table is freed immediately (`tlb_remove_table_one`).  The sync can be
//!   switched off (`KernelConfig::table_free_one_sync`, an ablation: no
//!   kernel ever shipped without it) to show what it protects.

use super::batch::{MmuTableBatch, MAX_TABLE_BATCH};
use super::MmuGather;
use crate::inject::FaultInject;
use crate::kernel::Kernel;
use crate::page::alloc::PageKind;
use crate::page::{ptdesc_page, Folio, Ptdesc};
use crate::rcu::RcuCallback;
use crate::stats::Stat;
use crate::types::Pfn;

/// `tlb_remove_table_sync_one`: an empty IPI to every other online CPU,
/// waiting for all.  Not a grace period, but enough for software walkers
/// that rely on IRQs being off (GUP-fast).  A no-op without
/// MMU_GATHER_RCU_TABLE_FREE, as in the kernel.
pub fn tlb_remove_table_sync_one(k: &Kernel) {
    if !k.cfg.rcu_table_free {
        return;
    }
    k.stats.inc(k.this_cpu(), Stat::TlbRemoveTableSyncOne);
    // tlb_remove_table_smp_sync: simply deliver the interrupt.
    crate::smp::smp_call_function(&*k.smp, &|_| {});
}

/// `__tlb_remove_table`: free one page table (`pagetable_free`).
fn __tlb_remove_table(k: &Kernel, table: Ptdesc) {
    crate::pgtable::pagetable_free(k, table);
}

/// `__tlb_remove_table_free`: free every table of a batch, then the batch
/// page.  Run by the RCU callback `tlb_remove_table_rcu`
/// (`Kernel::rcu_process_callbacks`).
pub(crate) fn __tlb_remove_table_free(k: &Kernel, page: Pfn, tables: Vec<Ptdesc>) {
    for t in tables {
        __tlb_remove_table(k, t);
    }
    k.folio_put(Folio(page));
}

/// `tlb_remove_table_one`: sync with IRQs-off walkers, then free at once.
/// (`KernelConfig::table_free_one_sync` off: no sync — an ablation knob
/// for the loom model, see the field's doc.)
fn tlb_remove_table_one(k: &Kernel, table: Ptdesc) {
    if k.cfg.table_free_one_sync {
        tlb_remove_table_sync_one(k);
    }
    __tlb_remove_table(k, table);
}

/// `tlb_needs_table_invalidate`: true unless the arch's walkers never cache
/// tables (powerpc hash); true for every modelled arch.
pub fn tlb_needs_table_invalidate() -> bool {
    true
}

impl MmuGather<'_> {
    /// `tlb_table_invalidate`: drop hardware walk caches before the tables
    /// go (software walkers are waited for by RCU / the sync IPI).
    fn tlb_table_invalidate(&mut self) {
        if tlb_needs_table_invalidate() {
            self.tlb_flush_mmu_tlbonly();
        }
    }

    /// `tlb_remove_table_free` (MMU_GATHER_RCU_TABLE_FREE): `call_rcu` with
    /// `tlb_remove_table_rcu`; tables and batch page go in the callback.
    fn tlb_remove_table_free(&mut self, batch: MmuTableBatch) {
        self.k.rcu.call_rcu(self.k.this_cpu(), RcuCallback::TableBatch { page: batch.page, tables: batch.tables });
    }

    /// `tlb_table_flush`: invalidate, then hand the table batch to RCU.
    pub fn tlb_table_flush(&mut self) {
        if self.batch.is_some() {
            self.tlb_table_invalidate();
            let batch = self.batch.take().expect("checked");
            self.tlb_remove_table_free(batch);
        }
    }

    /// `tlb_remove_table`: queue an unhooked page-table page for freeing
    /// after the flush (and grace period).  Without MMU_GATHER_TABLE_FREE
    /// (`rcu_table_free` off) it is `tlb_remove_page`: the page batch.
    pub fn tlb_remove_table(&mut self, table: Ptdesc) {
        let k = self.k;
        k.stats.inc(k.this_cpu(), Stat::TablesQueued);
        if !k.cfg.rcu_table_free {
            self.tlb_remove_page(ptdesc_page(table));
            return;
        }
        if self.batch.is_none() {
            let page = if FaultInject::take(&k.inject.faults.fail_table_batch) {
                None
            } else {
                k.alloc_pages(0, PageKind::Kernel)
            };
            match page {
                Some(p) => self.batch = Some(MmuTableBatch::new(p)),
                None => {
                    k.stats.inc(k.this_cpu(), Stat::TableBatchAllocFail);
                    self.tlb_table_invalidate();
                    tlb_remove_table_one(k, table);
                    return;
                }
            }
        }
        let batch = self.batch.as_mut().expect("allocated above");
        batch.tables.push(table);
        if batch.tables.len() == MAX_TABLE_BATCH {
            self.tlb_table_flush();
        }
    }

    /// `tlb_remove_ptdesc`: queue a page table by its descriptor (what the
    /// arch `__pte_free_tlb` & co. call after the dtor).
    pub fn tlb_remove_ptdesc(&mut self, pt: Ptdesc) {
        self.tlb_remove_table(pt);
    }

    /// `pte_free_tlb`: the PMD entry at `addr` pointing at PTE table `table`
    /// (a `pgtable_t`: the table's page) was cleared; `__pte_free_tlb` →
    /// `tlb_remove_ptdesc(page_ptdesc(pte))`.
    pub fn pte_free_tlb(&mut self, table: Pfn, addr: u64) {
        let ps = self.k.cfg.geometry.page_size();
        self.tlb_flush_pmd_range(addr, ps);
        self.freed_tables = true;
        let pt = self.k.mem.page_ptdesc(table);
        self.tlb_remove_ptdesc(pt);
    }

    /// `pmd_free_tlb`: the PUD entry at `addr` pointing at PMD table `table`
    /// was cleared; `__pmd_free_tlb` → `tlb_remove_ptdesc(virt_to_ptdesc(pmd))`.
    pub fn pmd_free_tlb(&mut self, table: Pfn, addr: u64) {
        let ps = self.k.cfg.geometry.page_size();
        self.tlb_flush_pud_range(addr, ps);
        self.freed_tables = true;
        let pt = self.k.mem.virt_to_ptdesc(table);
        self.tlb_remove_ptdesc(pt);
    }

    /// `pud_free_tlb`: the P4D/PGD entry at `addr` pointing at PUD table
    /// `table` was cleared; `__pud_free_tlb` → `tlb_remove_ptdesc(virt_to_ptdesc(pud))`.
    pub fn pud_free_tlb(&mut self, table: Pfn, addr: u64) {
        let ps = self.k.cfg.geometry.page_size();
        self.tlb_flush_p4d_range(addr, ps);
        self.freed_tables = true;
        let pt = self.k.mem.virt_to_ptdesc(table);
        self.tlb_remove_ptdesc(pt);
    }
}
