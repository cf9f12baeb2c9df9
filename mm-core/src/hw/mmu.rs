//! The MMU: `Hw::access`, a user load or store through it (TLB hit, or
//! walk + fill).
//!
//! Per CPU: a TLB + PSC behind a tiny lock (instruction atomicity: a user
//! access and an invalidation of that CPU's TLB never interleave half-way;
//! the CPU itself, its IPI handlers and arm64 broadcast invalidations take
//! it), and the CR3 register (root table frame + address-space tag).
//!
//! Walk rules (x86):
//! - A TLB hit does not read the page table.  A hit whose frame generation
//!   changed since the fill is a `stale-tlb-access` (the access still happens,
//!   to whatever the frame holds now — the hardware does not know better).
//! - A miss walks from the deepest PSC entry (or CR3), filling the PSC with
//!   every table pointer it reads; a PSC table whose generation changed is a
//!   `walk-into-freed-table`; a live one that the mm unshared (and flushed)
//!   and no longer links is a `walk-into-unshared-table`.
//! - The leaf's accessed bit (and dirty bit on a write) is set atomically in
//!   the PTE.  A write through an entry filled without the dirty bit re-walks
//!   to set it; a write through a dirty entry does not touch the PTE.
//! - An access the entry does not permit drops the entry and re-walks (the
//!   SDM's invalidate-on-fault); if the PTE still does not permit it, fault.

use super::pte::{Level, Pte};
use super::ram::Ram;
use super::tlb::Tlb;
use crate::check::sanitizer::{Sanitizer, Violation, ViolationKind};
use crate::config::{Geometry, TlbShape};
use crate::sync::{AtomicU64, Mutex, MutexGuard, Ordering};
use crate::types::{CpuId, Pfn};

/// Why a translation failed (becomes a page fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An entry at `level` was not present.
    NotPresent {
        /// The level of the first non-present entry (`Pgd` when no CR3 is
        /// loaded).
        level: Level,
    },
    /// Write to a read-only leaf (or a supervisor page).
    Protection,
}

/// Access kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A user load; `access` returns the word read.
    Read,
    /// A user store of this word; `access` returns the word it replaced.
    Write(u64),
}

/// Per-CPU MMU state.
pub struct CpuHw {
    /// The CPU's TLB and paging-structure cache; the lock makes a user
    /// access or an invalidation of this CPU atomic.
    pub tlb: Mutex<Tlb>,
    /// Root table frame (CR3 page-frame), `u64::MAX` when none loaded.
    cr3: AtomicU64,
    /// Address-space tag of CR3 (PCID-like; the mm's id, 0 = init_mm).
    asid: AtomicU64,
}

/// Per-CPU hardware counters, read with `Hw::counters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MmuCounters {
    /// User accesses served by a TLB entry, without reading the page table.
    pub hits: u64,
    /// TLB misses that walked the page table (from the PSC or CR3).
    pub walks: u64,
}

/// The machine's hardware: RAM and, per CPU, an MMU (TLB, PSC, CR3).
pub struct Hw {
    /// The page-table geometry the walker decodes (`KernelConfig::geometry`).
    pub geo: Geometry,
    /// Physical memory and frame generations.
    pub ram: Ram,
    cpus: Box<[CpuHw]>,
    counters: Box<[[AtomicU64; 2]]>,
}

/// No root table loaded.
pub(crate) const NO_CR3: u64 = u64::MAX;

#[inline]
/// A hardware walker's leaf step (CPU MMU and IOMMU alike): check the
/// entry's permissions, then set Accessed (and Dirty for a write) with a
/// compare-and-swap, re-checking if the entry changed under us.  Returns
/// the entry as it now is.
pub(crate) fn set_accessed_dirty(slot: &AtomicU64, mut cur: Pte, write: bool, level: Level) -> Result<Pte, Fault> {
    loop {
        if !cur.present() {
            return Err(Fault::NotPresent { level });
        }
        if !cur.user() || (write && !cur.write()) {
            return Err(Fault::Protection);
        }
        let mut new = cur.0 | Pte::ACCESSED;
        if write {
            new |= Pte::DIRTY;
        }
        if new == cur.0 {
            return Ok(cur);
        }
        match slot.compare_exchange(cur.0, new, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Ok(Pte(new)),
            Err(now) => cur = Pte(now),
        }
    }
}

/// Count one hit or walk.  Only `Hw::access`, holding the CPU's TLB lock,
/// writes a CPU's counters, so a load + store suffices: no locked
/// read-modify-write on the TLB-hit path (readers may see a slightly old
/// value, as with any statistics counter).
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl Hw {
    /// Zeroed RAM of `nr_frames` frames and `nr_cpus` MMUs with empty TLBs
    /// of `shape` and no CR3 loaded.
    pub fn new(geo: Geometry, shape: TlbShape, nr_frames: usize, nr_cpus: usize) -> Self {
        Self {
            geo,
            ram: Ram::new(nr_frames, geo.ptrs_per_table()),
            cpus: (0..nr_cpus)
                .map(|_| CpuHw {
                    tlb: Mutex::new(Tlb::new(geo, shape)),
                    cr3: AtomicU64::new(NO_CR3),
                    asid: AtomicU64::new(0),
                })
                .collect(),
            counters: (0..nr_cpus).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
        }
    }

    /// The number of CPUs (`nr_cpu_ids`).
    pub fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// `cpu`'s MMU state.
    pub fn cpu(&self, cpu: CpuId) -> &CpuHw {
        &self.cpus[cpu.idx()]
    }

    /// Lock a CPU's TLB (its own accesses, its IPI handlers, broadcasts).
    pub fn tlb(&self, cpu: CpuId) -> MutexGuard<'_, Tlb> {
        self.cpus[cpu.idx()].tlb.lock()
    }

    /// Write CR3: load `root` tagged `asid`.  Like a CR3 write with PCID and
    /// the no-flush bit: entries of other tags stay cached.
    pub fn load_cr3(&self, cpu: CpuId, root: Option<Pfn>, asid: u64) {
        let c = &self.cpus[cpu.idx()];
        let _tlb = c.tlb.lock();
        c.cr3.store(root.map_or(NO_CR3, |p| p.0), Ordering::SeqCst);
        c.asid.store(asid, Ordering::SeqCst);
    }

    /// (root table, asid) currently loaded on `cpu`.
    pub fn cr3(&self, cpu: CpuId) -> (Option<Pfn>, u64) {
        let c = &self.cpus[cpu.idx()];
        let r = c.cr3.load(Ordering::SeqCst);
        ((r != NO_CR3).then_some(Pfn(r)), c.asid.load(Ordering::SeqCst))
    }

    /// `cpu`'s TLB hits and walks so far.
    pub fn counters(&self, cpu: CpuId) -> MmuCounters {
        let c = &self.counters[cpu.idx()];
        MmuCounters { hits: c[0].load(Ordering::Relaxed), walks: c[1].load(Ordering::Relaxed) }
    }

    #[inline]
    fn word_index(&self, va: u64) -> usize {
        ((va >> 3) as usize) & (self.geo.ptrs_per_table() - 1)
    }

    /// A user load or store by `cpu` at `va` through its MMU.  Returns the
    /// value read (for a store: the value overwritten).
    pub fn access(&self, cpu: CpuId, va: u64, op: Access, san: &Sanitizer) -> Result<u64, Fault> {
        let c = &self.cpus[cpu.idx()];
        let mut tlb = c.tlb.lock();
        let asid = c.asid.load(Ordering::Relaxed);
        let write = matches!(op, Access::Write(_));
        let hit = match tlb.lookup(asid, va) {
            Some(e) if !write || (e.writable && e.dirty) => Some(*e),
            Some(e) => {
                // Write through a clean or read-only entry: drop and re-walk.
                e.valid = false;
                None
            }
            None => None,
        };
        let entry = match hit {
            Some(e) => {
                bump(&self.counters[cpu.idx()][0]);
                let now = self.ram.gen(e.pfn);
                if now != e.gen {
                    san.record(Violation {
                        kind: ViolationKind::StaleTlbAccess,
                        cpu: Some(cpu),
                        mm: asid,
                        va,
                        pfn: e.pfn,
                        cached_gen: e.gen,
                        frame_gen: now,
                    });
                }
                e
            }
            None => {
                bump(&self.counters[cpu.idx()][1]);
                let root = c.cr3.load(Ordering::Relaxed);
                if root == NO_CR3 {
                    return Err(Fault::NotPresent { level: Level::Pgd });
                }
                self.walk(&mut tlb, cpu, asid, Pfn(root), va, write, san)?;
                *tlb.lookup(asid, va).expect("walk fills the TLB")
            }
        };
        let sub = if entry.huge { (va & (self.geo.pmd_size() - 1)) >> self.geo.page_shift } else { 0 };
        let word = self.ram.word(entry.pfn.add(sub), self.word_index(va));
        Ok(match op {
            Access::Read => word.load(Ordering::SeqCst),
            Access::Write(v) => word.swap(v, Ordering::SeqCst),
        })
    }

    /// The sanitizer's look at the page tables themselves (not a hardware
    /// step): does the tree under `root` link `table`, a table whose entries
    /// are at `level`, for `va` right now?
    fn links(&self, root: Pfn, va: u64, level: Level, table: Pfn) -> bool {
        let geo = self.geo;
        let (mut l, mut t) = (Level::Pgd, root);
        loop {
            let idx = ((va >> geo.level_shift(l)) as usize) & (geo.ptrs_per_table() - 1);
            let e = Pte(self.ram.word(t, idx).load(Ordering::SeqCst));
            let Some(below) = l.below() else { return false };
            if !e.present() || (l == Level::Pmd && e.huge()) {
                return false;
            }
            if below == level {
                return e.pfn() == table;
            }
            (l, t) = (below, e.pfn());
        }
    }

    /// Hardware page walk for `va`; fills the PSC and the TLB.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        tlb: &mut Tlb,
        cpu: CpuId,
        asid: u64,
        root: Pfn,
        va: u64,
        write: bool,
        san: &Sanitizer,
    ) -> Result<(), Fault> {
        let geo = self.geo;
        let (mut level, mut table) = match tlb.lookup_psc(asid, va) {
            Some((level, table, gen)) => {
                let now = self.ram.gen(table);
                if san.check_gen(ViolationKind::WalkIntoFreedTable, Some(cpu), asid, va, table, gen, now)
                    && san.was_unlinked(asid, table, gen)
                    && !self.links(root, va, level, table)
                {
                    san.record(Violation {
                        kind: ViolationKind::WalkIntoUnsharedTable,
                        cpu: Some(cpu),
                        mm: asid,
                        va,
                        pfn: table,
                        cached_gen: gen,
                        frame_gen: now,
                    });
                }
                (level, table)
            }
            None => (Level::Pgd, root),
        };
        loop {
            let idx = ((va >> geo.level_shift(level)) as usize) & (geo.ptrs_per_table() - 1);
            let slot = self.ram.word(table, idx);
            let e = Pte(slot.load(Ordering::SeqCst));
            if !e.present() {
                return Err(Fault::NotPresent { level });
            }
            let is_leaf = level == Level::Pte || (level == Level::Pmd && e.huge());
            if !is_leaf {
                let below = level.below().expect("non-leaf above PTE");
                let next = e.pfn();
                tlb.insert_psc(asid, below, va, next, self.ram.gen(next));
                table = next;
                level = below;
                continue;
            }
            let cur = set_accessed_dirty(slot, e, write, level)?;
            let huge = level == Level::Pmd;
            let pfn = cur.pfn();
            tlb.insert(asid, va, pfn, cur.write(), cur.dirty(), huge, self.ram.gen(pfn));
            return Ok(());
        }
    }
}
