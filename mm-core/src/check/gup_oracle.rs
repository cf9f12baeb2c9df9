//! The GUP oracle (docs/RACES.md, “Vocabulary” "mapping history"): ghost state,
//! never read by the modelled kernel code.
//!
//! Contract:
//! - While `KernelConfig::gup_oracle` is on, every page-table store made
//!   through `pgtable::{write, exchange, get_and_clear}` is passed through
//!   `GupOracle::update`, which performs the store under the oracle's lock
//!   and records what became *reachable* at which (mm, va): a leaf PTE or
//!   huge PMD installed or cleared, a PTE table linked or unlinked under a
//!   PMD (all its leaves appear / vanish at once: `pmdp_collapse_flush`), an
//!   upper table unlinked (`free_pgtables`, `huge_pmd_unshare`).
//! - Time is a logical clock.  A mapping's interval starts with a tick taken
//!   *before* its store and ends with a tick taken *after* its clear, so the
//!   interval covers every instant the entry was in memory (no false
//!   positives from the ghost bookkeeping itself).
//! - GUP takes its tick *before* each speculative grab.  The check at the end
//!   of the call: every returned page must have been mapped at (mm, va) at
//!   some instant in [tick before its grab, end of call].  That is the
//!   guarantee GUP-fast gives its callers (grab, then re-validate the entries
//!   that led to the page); a page reached through a freed-and-reused table
//!   (RACES.md “GUP-fast versus page-table freeing”, RACES.md “The PTE table freed under the walker”) or pinned after khugepaged detached its table (RACES.md “Stale pin of a collapsed page”) fails it:
//!   violation `gup-oracle`.  One exception, because GUP-fast never
//!   re-checks a PUD: a mapping that went away by an entry above the PMD
//!   being cleared (hugetlb `huge_pmd_unshare`) only has to overlap
//!   [start of call, end of call]; a page reached through a PMD table that
//!   was unshared *and then reused* by its new owner (RACES.md “Unshare versus GUP-fast”) still fails.
//! - A PTE table detached from its PMD (`pmdp_collapse_flush`) may be put
//!   back unchanged (khugepaged aborts the collapse when it sees a pin).  A
//!   page grabbed through such a table after the detach, whose call ended
//!   before the PMD slot was written again, is judged at that write: the
//!   same table frame (same generation) put back with the page still at va
//!   means the page never left va — accepted (the RACES.md “Stale pin of a collapsed page” pin that
//!   2ba99c5e0881's sync IPI makes khugepaged see, without 70cbc3cc78a9's
//!   PMD re-check); a huge PMD, another table, or the page gone from the
//!   table — `gup-oracle`, reported then.  A slot never written again leaves
//!   the page unjudged (a conservative miss).
//! - Owners: which mms a table frame is reachable from, and at which address,
//!   is learnt when it is linked under an entry of a table whose owners are
//!   known (the PGD's is set at `mm_alloc`), and forgotten when that entry is
//!   cleared (recursively for the tables below).  A table linked into several
//!   mms (hugetlb PMD sharing) has one owner per link: a store into it is a
//!   mapping change in every mm that can reach it, at that mm's address.
//! - Cost: nothing when off (a config bool).  When on, closed intervals are
//!   dropped as soon as no GUP call in flight can still need them.
//! - What it sees: the hardware state alone (`Hw`: the geometry and the
//!   table words and generations in RAM), and it reports to the
//!   `Sanitizer`; it never takes the `Kernel`, so `pgtable`, which calls
//!   it on every store, stays below it.

use crate::check::sanitizer::{Sanitizer, Violation, ViolationKind};
use crate::config::Geometry;
use crate::hw::mmu::Hw;
use crate::hw::pte::{Level, Pte};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::types::{CpuId, Pfn};
use std::collections::HashMap;

/// `to` of an interval that is still open.
const OPEN: u64 = u64::MAX;
/// A CPU's slot while it is between "announced" and "start tick taken".
const STARTING: u64 = 0;
/// A CPU's slot when no GUP call is in flight on it.
const IDLE: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Interval {
    va: u64,
    pfn: Pfn,
    /// A PMD leaf: maps `pfn..pfn + HPAGE_PMD_NR` from `va`.
    huge: bool,
    from: u64,
    to: u64,
    /// Closed by clearing an entry *above* the PMD level (a PUD/PGD entry:
    /// `huge_pmd_unshare`, `free_pgtables`).  GUP-fast re-checks the PTE and
    /// the PMD after its grab but never the PUD, so for such a close its
    /// guarantee is the weaker "mapped at some instant of the call" (8ce720d5bd91:
    /// no different from a GUP-fast that finished just before the unmap).
    upper: bool,
    /// Closed by unlinking the PTE table (frame, generation) it was in from
    /// its PMD (a detach that may be undone).
    detached: Option<(Pfn, u64)>,
    /// For a detached interval: at the next present store into the PMD
    /// slot, was the same table put back with this page still in it?
    /// (None: no such store yet.)
    put_back: Option<bool>,
}

/// A page whose judgement waits for the next write of its PMD slot (see
/// the module doc).
#[derive(Clone, Copy, Debug)]
struct Pending {
    cpu: CpuId,
    mm: u64,
    va: u64,
    page: Pfn,
    grab: u64,
    table: Pfn,
    table_gen: u64,
}

#[derive(Default)]
struct History {
    /// Table frame → (mm id, va its first entry maps in that mm) of every
    /// link to it.
    owners: HashMap<Pfn, Vec<(u64, u64)>>,
    /// (mm id, PMD-aligned va) → leaf intervals under that PMD entry.
    groups: HashMap<(u64, u64), Vec<Interval>>,
    /// Pages returned through a detached PTE table, judged at the next
    /// store into their PMD slot.
    pending: Vec<Pending>,
}

/// The GUP oracle (`Kernel::gup_oracle`): the mapping history of every
/// (mm, va) and the GUP calls in flight, per CPU.
pub struct GupOracle {
    enabled: bool,
    clock: AtomicU64,
    /// Per CPU: start tick of the GUP call in flight, STARTING or IDLE.
    active: Box<[AtomicU64]>,
    hist: Mutex<History>,
}

impl GupOracle {
    /// An empty history for `nr_cpus` CPUs; `enabled` is
    /// `KernelConfig::gup_oracle` (off: every method returns at once).
    pub fn new(enabled: bool, nr_cpus: usize) -> Self {
        Self {
            enabled,
            clock: AtomicU64::new(1),
            active: (0..nr_cpus).map(|_| AtomicU64::new(IDLE)).collect(),
            hist: Mutex::new(History::default()),
        }
    }

    /// `KernelConfig::gup_oracle`: whether stores go through `update`.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// One tick of the logical clock.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// `mm_alloc`: the PGD frame belongs to `mm`.
    pub fn set_owner(&self, table: Pfn, mm: u64) {
        if self.enabled {
            self.hist.lock().owners.insert(table, vec![(mm, 0)]);
        }
    }

    /// Oldest start tick of a GUP call in flight (STARTING counts as 0:
    /// keep everything), or None.
    fn oldest_active(&self) -> Option<u64> {
        self.active.iter().map(|a| a.load(Ordering::SeqCst)).filter(|t| *t != IDLE).min()
    }

    /// Perform the store `op` (returning the old and new entry) on the slot
    /// for `va` in `table` (entries at `level`) and record what changed.
    pub fn update(
        &self,
        hw: &Hw,
        san: &Sanitizer,
        table: Pfn,
        level: Level,
        va: u64,
        op: impl FnOnce() -> (Pte, Pte),
    ) -> Pte {
        let mut h = self.hist.lock();
        let before = self.tick();
        let (old, new) = op();
        let after = self.tick();
        let Some(owners) = h.owners.get(&table).cloned() else { return old };
        let g = hw.geo;
        let same_target = old.present() && new.present() && old.pfn() == new.pfn() && old.huge() == new.huge();
        if same_target {
            return old; // permission / A / D change only
        }
        let keep_from = self.oldest_active();
        let span = 1u64 << g.level_shift(level);
        let idx = index(g, level, va) as u64;
        for (mm, tbase) in owners {
            // The entry's address in this owner's address space.
            let va = tbase + idx * span + (va & (span - 1));
            self.update_one(hw, san, &mut h, mm, level, va, old, new, before, after, keep_from);
        }
        old
    }

    /// `update` for one owner `mm` of the table, the entry mapping `va` there.
    #[allow(clippy::too_many_arguments)]
    fn update_one(
        &self,
        hw: &Hw,
        san: &Sanitizer,
        h: &mut History,
        mm: u64,
        level: Level,
        va: u64,
        old: Pte,
        new: Pte,
        before: u64,
        after: u64,
        keep_from: Option<u64>,
    ) {
        let g = hw.geo;
        let pmd_mask = !(g.pmd_size() - 1);
        let page_va = va & !(g.page_size() - 1);
        let h = &mut *h;
        match level {
            Level::Pte => {
                if old.present() {
                    close(h, mm, va & pmd_mask, |i| !i.huge && i.va == page_va && i.pfn == old.pfn(), after, keep_from);
                }
                if new.present() {
                    open(
                        h,
                        mm,
                        va & pmd_mask,
                        Interval {
                            va: page_va,
                            pfn: new.pfn(),
                            huge: false,
                            from: before,
                            to: OPEN,
                            upper: false,
                            detached: None,
                            put_back: None,
                        },
                    );
                }
            }
            Level::Pmd => {
                let pmd_va = va & pmd_mask;
                if new.present() {
                    judge_detached(hw, san, h, mm, pmd_va, new);
                }
                if old.present() {
                    // A huge leaf goes, or a whole PTE table is unlinked.
                    let huge = old.huge();
                    if !huge {
                        let d = Some((old.pfn(), hw.ram.gen(old.pfn())));
                        if let Some(v) = h.groups.get_mut(&(mm, pmd_va)) {
                            for i in v.iter_mut().filter(|i| i.to == OPEN && !i.huge) {
                                i.detached = d;
                            }
                        }
                    }
                    close(h, mm, pmd_va, |i| i.huge == huge, after, keep_from);
                    if !huge {
                        unlink(hw, h, mm, old.pfn(), Level::Pte, pmd_va);
                    }
                }
                if new.present() && new.huge() {
                    open(
                        h,
                        mm,
                        pmd_va,
                        Interval {
                            va: pmd_va,
                            pfn: new.pfn(),
                            huge: true,
                            from: before,
                            to: OPEN,
                            upper: false,
                            detached: None,
                            put_back: None,
                        },
                    );
                } else if new.present() {
                    self.link(hw, h, mm, new.pfn(), Level::Pte, pmd_va, before);
                }
            }
            Level::Pud | Level::Pgd => {
                let span = 1u64 << g.level_shift(level);
                let base = va & !(span - 1);
                if old.present() {
                    let keys: Vec<_> = h
                        .groups
                        .keys()
                        .filter(|(m, v)| *m == mm && (base..base.wrapping_add(span)).contains(v))
                        .copied()
                        .collect();
                    for (m, v) in keys {
                        close_upper(h, m, v, after, keep_from);
                    }
                    unlink(hw, h, mm, old.pfn(), level.below().expect("upper level"), base);
                }
                if new.present() {
                    let below = level.below().expect("upper level");
                    self.link(hw, h, mm, new.pfn(), below, base, before);
                }
            }
        }
    }

    /// A table (entries at `level`) mapping from `base` became reachable in
    /// `mm`: own it and open an interval for every leaf already in it.
    #[allow(clippy::too_many_arguments)]
    fn link(&self, hw: &Hw, h: &mut History, mm: u64, table: Pfn, level: Level, base: u64, at: u64) {
        let links = h.owners.entry(table).or_default();
        if !links.contains(&(mm, base)) {
            links.push((mm, base));
        }
        let g = hw.geo;
        for i in 0..g.ptrs_per_table() as u64 {
            let va = base + (i << g.level_shift(level));
            let e = Pte(hw.ram.word(table, i as usize).load(Ordering::SeqCst));
            if !e.present() {
                continue;
            }
            let pmd_va = va & !(g.pmd_size() - 1);
            match level {
                Level::Pte => open(
                    h,
                    mm,
                    pmd_va,
                    Interval {
                        va,
                        pfn: e.pfn(),
                        huge: false,
                        from: at,
                        to: OPEN,
                        upper: false,
                        detached: None,
                        put_back: None,
                    },
                ),
                Level::Pmd if e.huge() => open(
                    h,
                    mm,
                    pmd_va,
                    Interval {
                        va,
                        pfn: e.pfn(),
                        huge: true,
                        from: at,
                        to: OPEN,
                        upper: false,
                        detached: None,
                        put_back: None,
                    },
                ),
                _ => self.link(hw, h, mm, e.pfn(), level.below().expect("upper level"), va, at),
            }
        }
    }

    /// A GUP call starts on `cpu`: returns its start tick.
    pub fn call_start(&self, cpu: CpuId) -> u64 {
        let slot = &self.active[cpu.idx()];
        slot.store(STARTING, Ordering::SeqCst);
        let t = self.tick();
        slot.store(t, Ordering::SeqCst);
        t
    }

    /// Check the pages a GUP call returned (`(va, page, tick before its
    /// grab)`), then end the call.
    pub fn call_end(&self, hw: &Hw, san: &Sanitizer, cpu: CpuId, mm: u64, got: &[(u64, Pfn, u64)]) {
        let start = self.active[cpu.idx()].load(Ordering::SeqCst);
        let end = self.tick();
        let g = hw.geo;
        let pmd_mask = !(g.pmd_size() - 1);
        {
            let mut h = self.hist.lock();
            for &(va, page, grab) in got {
                let ok = h.groups.get(&(mm, va & pmd_mask)).is_some_and(|v| {
                    v.iter().any(|i| {
                        let covers = if i.huge {
                            page.0 >= i.pfn.0 && page.0 - i.pfn.0 == (va - i.va) >> g.page_shift
                        } else {
                            i.va == va && i.pfn == page
                        };
                        covers && i.from <= end && (grab <= i.to || (i.upper && start <= i.to))
                    })
                });
                // Reached through a PTE table detached before the grab, and
                // the slot not written since: judge at the next write.
                let detached = (!ok)
                    .then(|| h.groups.get(&(mm, va & pmd_mask)))
                    .flatten()
                    .and_then(|v| {
                        v.iter()
                            .rev()
                            .find(|i| !i.huge && i.va == va && i.pfn == page && i.to < grab && i.detached.is_some())
                    })
                    .map(|d| (d.detached.expect("checked"), d.put_back));
                let ok = ok || matches!(detached, Some((_, Some(true))));
                if let Some(((table, table_gen), None)) = detached {
                    h.pending.push(Pending { cpu, mm, va, page, grab, table, table_gen });
                } else if !ok {
                    san.record(Violation {
                        kind: ViolationKind::GupOracle,
                        cpu: Some(cpu),
                        mm,
                        va,
                        pfn: page,
                        cached_gen: grab,
                        frame_gen: hw.ram.gen(page),
                    });
                }
            }
        }
        self.active[cpu.idx()].store(IDLE, Ordering::SeqCst);
    }
}

/// The link of `table` (entries at `level`, first entry mapping `base`) into
/// `mm` was cleared: forget it, and the links of the tables below it that
/// were reachable in `mm` only through it.
fn unlink(hw: &Hw, h: &mut History, mm: u64, table: Pfn, level: Level, base: u64) {
    let Some(links) = h.owners.get_mut(&table) else { return };
    let before = links.len();
    links.retain(|l| *l != (mm, base));
    if links.len() == before {
        return;
    }
    if links.is_empty() {
        h.owners.remove(&table);
    }
    let Some(below) = level.below() else { return };
    let g = hw.geo;
    for i in 0..g.ptrs_per_table() as u64 {
        let e = Pte(hw.ram.word(table, i as usize).load(Ordering::SeqCst));
        if e.present() && !(level == Level::Pmd && e.huge()) && (e.pfn().0 as usize) < hw.ram.nr_frames() {
            unlink(hw, h, mm, e.pfn(), below, base + (i << g.level_shift(level)));
        }
    }
}

/// Whether the present PMD `new` puts the detached `table` (generation
/// `table_gen`) back with `page` still mapped at `va`.
fn puts_back(hw: &Hw, new: Pte, table: Pfn, table_gen: u64, va: u64, page: Pfn) -> bool {
    !new.huge() && new.pfn() == table && hw.ram.gen(table) == table_gen && {
        let pte = Pte(hw.ram.word(table, index(hw.geo, Level::Pte, va)).load(Ordering::SeqCst));
        pte.present() && pte.pfn() == page
    }
}

/// The PMD slot (mm, pmd_va) is written with the present entry `new`:
/// decide the intervals detached from it, and judge the pages waiting for
/// it (see the module doc).
fn judge_detached(hw: &Hw, san: &Sanitizer, h: &mut History, mm: u64, pmd_va: u64, new: Pte) {
    let g = hw.geo;
    let pmd_mask = !(g.pmd_size() - 1);
    if let Some(v) = h.groups.get_mut(&(mm, pmd_va)) {
        for i in v.iter_mut().filter(|i| i.put_back.is_none()) {
            if let Some((table, table_gen)) = i.detached {
                i.put_back = Some(puts_back(hw, new, table, table_gen, i.va, i.pfn));
            }
        }
    }
    let (mine, rest): (Vec<Pending>, Vec<Pending>) =
        h.pending.drain(..).partition(|p| p.mm == mm && p.va & pmd_mask == pmd_va);
    h.pending = rest;
    for p in mine {
        if !puts_back(hw, new, p.table, p.table_gen, p.va, p.page) {
            san.record(Violation {
                kind: ViolationKind::GupOracle,
                cpu: Some(p.cpu),
                mm,
                va: p.va,
                pfn: p.page,
                cached_gen: p.grab,
                frame_gen: hw.ram.gen(p.page),
            });
        }
    }
}

fn open(h: &mut History, mm: u64, pmd_va: u64, i: Interval) {
    h.groups.entry((mm, pmd_va)).or_default().push(i);
}

/// Close the open intervals of group (mm, pmd_va) matching `pred` at `at`;
/// drop closed intervals no GUP call in flight can need (closed before the
/// oldest call started).
/// `close` for an unlink above the PMD level: every open interval of the
/// group, marked `upper`.
fn close_upper(h: &mut History, mm: u64, pmd_va: u64, at: u64, keep_from: Option<u64>) {
    if let Some(v) = h.groups.get_mut(&(mm, pmd_va)) {
        for i in v.iter_mut().filter(|i| i.to == OPEN) {
            i.upper = true;
        }
    }
    close(h, mm, pmd_va, |_| true, at, keep_from);
}

fn close(h: &mut History, mm: u64, pmd_va: u64, pred: impl Fn(&Interval) -> bool, at: u64, keep_from: Option<u64>) {
    let Some(v) = h.groups.get_mut(&(mm, pmd_va)) else { return };
    for i in v.iter_mut().filter(|i| i.to == OPEN && pred(i)) {
        i.to = at;
    }
    v.retain(|i| i.to == OPEN || keep_from.is_some_and(|t| i.to >= t));
    if v.is_empty() {
        h.groups.remove(&(mm, pmd_va));
    }
}

/// Index of `va` in a table whose entries are at `level` (`pgtable::index`,
/// from the geometry alone: the oracle watches the hardware state).
fn index(g: Geometry, level: Level, va: u64) -> usize {
    ((va >> g.level_shift(level)) as usize) & (g.ptrs_per_table() - 1)
}
