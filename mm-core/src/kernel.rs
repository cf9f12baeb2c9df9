//! `Kernel`: one emulated machine's kernel state — hardware, memory map,
//! page allocator, per-CPU TLB state, RCU, sanitizer and counters — and the
//! small services every other module uses (allocate / free frames, IRQ
//! masking as an RCU read-side section).  User accesses with fault
//! handling (`Kernel::{user_access, read_user, write_user}`) are in
//! `ops::uaccess`, beside the fault path they take.

use crate::arch::x86::CpuTlbState;
use crate::arch::ArchOps;
use crate::check::sanitizer::{Sanitizer, Violation, ViolationKind};
use crate::config::KernelConfig;
use crate::hw::mmu::Hw;
use crate::inject::Inject;
use crate::mm::{AddressSpace, MmStruct};
use crate::page::alloc::{PageAllocator, PageKind};
use crate::page::{Folio, MemMap};
use crate::rcu::{Rcu, RcuReadGuard};
use crate::smp::{IrqFlags, Smp};
use crate::stats::{Stat, Stats};
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::types::{CpuId, Pfn};

/// One emulated machine's kernel: the globals of mm/ and arch/x86/mm (the
/// `mem_map`, the buddy zone, per-CPU TLB state, RCU) plus the emulated
/// hardware and the checkers.  Shared by every CPU as `Arc<Kernel>`.
pub struct Kernel {
    /// The configuration it was built from (validated; never changes).
    pub cfg: KernelConfig,
    /// The arch profile (`arch/`), chosen here once from `cfg.arch` and
    /// `cfg.kernel`: the flush, context-switch and PTE-upgrade policy.
    pub arch: Box<dyn ArchOps>,
    /// The emulated hardware: RAM with frame generations, per-CPU TLB,
    /// paging-structure cache and CR3.
    pub hw: Hw,
    /// `mem_map`: a `struct page` per frame.
    pub mem: MemMap,
    /// The buddy allocator and per-CPU lists (`alloc_pages`, `free_pages`).
    pub alloc: PageAllocator,
    /// The sanitizer every checker records violations to.
    pub san: Sanitizer,
    /// Per-CPU counters (vmstat, /proc/interrupts, trace reasons).
    pub stats: Stats,
    /// RCU: page tables waiting for a grace period.
    pub rcu: Rcu,
    /// The machine: this CPU, cross calls, IRQ masking.
    pub smp: Box<dyn Smp>,
    /// x86 `cpu_tlbstate` / `cpu_tlbstate_shared`, per CPU: the x86
    /// profile's (the others keep their CPU state in their arch object);
    /// generic code asks `arch.cpu_mm(k, cpu)`.
    pub cpus: Box<[CpuTlbState]>,
    /// `rq->curr->active_mm` per CPU, every profile: the mm the CPU last
    /// switched to, kept while it runs kernel threads or idles (lazy TLB),
    /// with an `mm_count` reference (`tlb::switch_mm` grabs the next one and
    /// drops the previous: `finish_task_switch` → `mmdrop_lazy_tlb`).
    pub active_mm: Box<[crate::sync::Mutex<Option<Arc<MmStruct>>>]>,
    /// GUP oracle: mapping history per (mm, va) (`check::gup_oracle`).
    pub gup_oracle: crate::check::gup_oracle::GupOracle,
    /// Hooks and test knobs (`inject`): injected allocation failures,
    /// forced interleavings, stall points, the injected panic.
    pub inject: Inject,
    next_id: AtomicU64,
}

/// An IRQs-off region on this CPU (`local_irq_save` .. `local_irq_restore`),
/// which is also an RCU read-side critical section.
#[must_use = "IRQs stay off until this guard is dropped"]
pub struct IrqOff<'a> {
    k: &'a Kernel,
    flags: Option<IrqFlags>,
    _rcu: RcuReadGuard,
}

impl Drop for IrqOff<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.flags.take() {
            self.k.smp.local_irq_restore(f);
        }
    }
}

impl Kernel {
    /// Build a kernel on the given `Smp`.  The config is validated.
    pub fn new(cfg: KernelConfig, smp: Box<dyn Smp>) -> Result<Arc<Kernel>, String> {
        cfg.validate()?;
        if smp.nr_cpus() != cfg.nr_cpus {
            return Err(format!("config says {} CPUs but the machine has {}", cfg.nr_cpus, smp.nr_cpus()));
        }
        let n = cfg.nr_cpus;
        let mem = MemMap::new(cfg.ram_frames);
        // The shared zero page is pfn 0, which the allocator never manages
        // (its RAM is zero from boot and nothing writes it).
        mem.init_zero_pfn();
        Ok(Arc::new(Kernel {
            arch: crate::arch::arch_ops(&cfg),
            hw: Hw::new(cfg.geometry, cfg.tlb, cfg.ram_frames, n),
            mem,
            alloc: PageAllocator::new(cfg.ram_frames, n).with_debug_vm(cfg.debug_vm),
            san: Sanitizer::new(),
            stats: Stats::new(n),
            rcu: Rcu::new(),
            smp,
            cpus: (0..n).map(|_| CpuTlbState::default()).collect(),
            active_mm: (0..n).map(|_| crate::sync::Mutex::new(None)).collect(),
            gup_oracle: crate::check::gup_oracle::GupOracle::new(cfg.gup_oracle, n),
            inject: Inject::default(),
            next_id: AtomicU64::new(1),
            cfg,
        }))
    }

    /// A kernel of `nr_cpus` CPUs (overriding `cfg.nr_cpus`) on the
    /// synchronous reference `Smp`, `SyncSmp` (tests).
    pub fn new_sync(mut cfg: KernelConfig, nr_cpus: usize) -> Arc<Kernel> {
        cfg.nr_cpus = nr_cpus;
        Kernel::new(cfg, Box::new(crate::smp::SyncSmp::new(nr_cpus))).expect("valid test config")
    }

    /// Move the running code (this thread) to `cpu`: `SyncSmp` and
    /// `ModelSmp` only; a machine whose threads are CPUs panics.
    pub fn set_cpu(&self, cpu: CpuId) {
        self.smp.bind_current_thread(cpu);
    }

    /// `smp_processor_id()`
    #[inline]
    pub fn this_cpu(&self) -> CpuId {
        self.smp.this_cpu()
    }

    /// Fresh id for an mm or address_space (never 0: 0 is init_mm's tag).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// `local_irq_save()`: IRQs off on this CPU, RCU read side entered.
    pub fn local_irq_save(&self) -> IrqOff<'_> {
        let rcu = self.rcu.read_lock();
        IrqOff { k: self, flags: Some(self.smp.local_irq_save()), _rcu: rcu }
    }

    /// Allocate a folio of `order` for `kind` on this CPU.
    pub fn alloc_pages(&self, order: u32, kind: PageKind) -> Option<Pfn> {
        self.alloc.alloc(&self.mem, self.this_cpu(), order, kind)
    }

    /// Allocate a zeroed folio.
    pub fn alloc_zeroed(&self, order: u32, kind: PageKind) -> Option<Pfn> {
        let pfn = self.alloc_pages(order, kind)?;
        for i in 0..1u64 << order {
            self.hw.ram.clear_frame(pfn.add(i));
        }
        Some(pfn)
    }

    /// Free a folio whose refcount reached zero: bump every frame's
    /// generation (so stale users are caught), check that no CPU still
    /// caches it (strict mode), and return it to the allocator.
    pub fn free_folio(&self, folio: Folio) {
        let pfn = folio.pfn();
        assert!(!crate::page::is_zero_folio(folio), "freeing the shared zero page");
        let nr = self.mem.folio_nr_pages(folio);
        let is_table = self.mem.page(pfn).test(crate::page::flags::PG_TABLE);
        if self.cfg.strict_free_check {
            self.check_not_cached(pfn, nr, is_table);
        }
        for i in 0..nr {
            self.hw.ram.bump_gen(pfn.add(i));
        }
        self.alloc.free(&self.mem, self.this_cpu(), pfn);
    }

    /// `folio_lock`: take PG_locked, waiting while another task holds it.
    /// A sleeping lock: never call it holding a PTL.  The wait is an
    /// interrupt point (`cond_resched`), so a holder that waits for this
    /// CPU to acknowledge a TLB-flush IPI (writeback's `folio_mkclean`) is
    /// not deadlocked; under loom it yields.
    pub fn folio_lock(&self, folio: Folio) {
        let page = self.mem.folio(folio);
        while page.flags.fetch_or(crate::page::flags::PG_LOCKED, Ordering::SeqCst) & crate::page::flags::PG_LOCKED != 0
        {
            self.smp.cpu_relax();
            crate::sync::spin_loop();
        }
    }

    /// `folio_unlock`
    pub fn folio_unlock(&self, folio: Folio) {
        self.mem.folio(folio).clear(crate::page::flags::PG_LOCKED);
    }

    /// `folio_put`: drop a reference, freeing on the last one.
    pub fn folio_put(&self, folio: Folio) {
        if self.mem.folio_put_testzero(folio, 1) {
            self.free_folio(folio);
        }
    }

    /// Sanitizer, free time: no non-lazy CPU may still cache a translation
    /// to (or a walk-cache pointer at) a frame being freed.
    fn check_not_cached(&self, pfn: Pfn, nr: u64, is_table: bool) {
        for c in 0..self.hw.nr_cpus() {
            let cpu = CpuId(c as u32);
            let st = self.arch.cpu_mm(self, cpu);
            let loaded = st.mm;
            if !st.runs(loaded) {
                continue;
            }
            let tlb = self.hw.tlb(cpu);
            let within = |p: Pfn, span: u64| pfn.0 < p.0 + span && p.0 < pfn.0 + nr;
            let hpn = self.cfg.geometry.hpage_pmd_nr();
            if is_table {
                if let Some((_, e)) = tlb.psc_entries().find(|(_, e)| e.asid == loaded && within(e.table, 1)) {
                    self.san.record(Violation {
                        kind: ViolationKind::TableFreedBeforeFlush,
                        cpu: Some(cpu),
                        mm: loaded,
                        va: e.prefix,
                        pfn: e.table,
                        cached_gen: e.gen,
                        frame_gen: self.hw.ram.gen(e.table) + 1,
                    });
                }
            } else if let Some(e) = tlb
                .leaf_entries_over(loaded, pfn, nr)
                .find(|e| within(e.pfn, if e.huge { hpn } else { 1 }) && e.gen == self.hw.ram.gen(e.pfn))
            {
                let shift = if e.huge {
                    self.cfg.geometry.level_shift(crate::hw::pte::Level::Pmd)
                } else {
                    self.cfg.geometry.page_shift
                };
                self.san.record(Violation {
                    kind: ViolationKind::FreedBeforeFlush,
                    cpu: Some(cpu),
                    mm: loaded,
                    va: e.vpn << shift,
                    pfn: e.pfn,
                    cached_gen: e.gen,
                    frame_gen: e.gen + 1,
                });
            }
        }
    }

    /// RCU callback processing (`rcu_core`): run the callbacks whose grace
    /// period ended (`tlb_remove_table_rcu`, `pte_free_now`).
    pub fn rcu_process_callbacks(&self) {
        self.rcu.poke();
        for (cpu, cb) in self.rcu.take_ready() {
            // Counted on the queuing CPU: which CPU runs a callback is timing.
            self.stats.inc(cpu, Stat::RcuCallbacks);
            match cb {
                crate::rcu::RcuCallback::TableBatch { page, tables } => {
                    crate::gather::table_free::__tlb_remove_table_free(self, page, tables)
                }
                crate::rcu::RcuCallback::PteFreeNow(pt) => crate::pgtable::pagetable_free(self, pt),
            }
        }
    }

    /// `rcu_barrier()`: wait until every queued RCU callback ran.
    pub fn rcu_barrier(&self) {
        let mut spins = 0u64;
        while self.rcu.pending() > 0 {
            self.rcu_process_callbacks();
            self.smp.cpu_relax();
            spins += 1;
            if spins.is_multiple_of(64) {
                crate::sync::yield_now();
            }
            assert!(spins < 10_000_000, "rcu_barrier: grace period never ended (a CPU stuck with IRQs off?)");
        }
    }

    /// Create a new address space (`mm_alloc` + `pgd_alloc`).
    pub fn mm_alloc(&self) -> Arc<MmStruct> {
        let pgd =
            crate::page::ptdesc_address(crate::pgtable::pagetable_alloc(self, 0).expect("out of memory for a pgd"));
        let mm = Arc::new(MmStruct::new(self.next_id(), pgd));
        // x86 init_new_context (v6.18): the first cpumask trim a second from now.
        mm.next_trim_cpumask.store(self.smp.jiffies().wrapping_add(crate::smp::HZ), Ordering::SeqCst);
        self.gup_oracle.set_owner(pgd, mm.id);
        mm.nr_ptes.fetch_add(1, Ordering::SeqCst);
        mm
    }

    /// A new file of `nr_pages` pages.
    pub fn new_file(&self, nr_pages: u64) -> Arc<AddressSpace> {
        Arc::new(AddressSpace::new(self.next_id(), nr_pages))
    }

    /// Counters plus the /proc/interrupts "CAL" row (function-call IPIs
    /// received per CPU, from the `Smp`) as `irq_call_count`; the "TLB" row
    /// is `irq_tlb_count`.
    pub fn stats_snapshot(&self) -> crate::stats::StatsSnapshot {
        let mut s = self.stats.snapshot();
        let cal: Vec<u64> = (0..self.hw.nr_cpus()).map(|c| self.smp.call_interrupts(CpuId(c as u32))).collect();
        s.totals.push(("irq_call_count", cal.iter().sum()));
        s.per_cpu.push(("irq_call_count", cal));
        s
    }
}

/// Host memory a kernel built from a configuration can use, by part (bytes).
/// `Kernel::new` allocates the metadata and per-CPU parts at once; emulated
/// RAM is zero-filled on demand by the host, so it costs only as the run
/// touches it — the estimate counts all of it, as a run may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    /// Emulated RAM: every frame's words.
    pub emulated_ram: u64,
    /// Per frame: generation, `struct page`, allocator lists.
    pub frame_metadata: u64,
    /// Per CPU: TLB and paging-structure caches, counters, TLB state.
    pub per_cpu: u64,
}

impl HostMemory {
    /// What a kernel of `cfg` can use at most.
    pub fn of(cfg: &KernelConfig) -> HostMemory {
        use std::mem::size_of;
        let frames = cfg.ram_frames as u64;
        let words = cfg.geometry.ptrs_per_table() as u64;
        let t = cfg.tlb;
        let tlb = ((t.sets + t.huge_sets) * t.ways) as u64 * size_of::<crate::hw::tlb::TlbEntry>() as u64
            + (t.sets + t.huge_sets) as u64
            + 3 * t.psc_entries as u64 * size_of::<crate::hw::tlb::PscEntry>() as u64;
        let counters = crate::stats::Stat::ALL.len() as u64 * 8;
        HostMemory {
            emulated_ram: frames * words * 8,
            // gen (8) + struct page + free_order (1) + next/prev links (8).
            frame_metadata: frames * (8 + size_of::<crate::page::Page>() as u64 + 1 + 8),
            per_cpu: cfg.nr_cpus as u64 * (tlb + counters + size_of::<CpuTlbState>() as u64 + 64),
        }
    }

    /// All parts, in bytes.
    pub fn total(&self) -> u64 {
        self.emulated_ram + self.frame_metadata + self.per_cpu
    }
}
