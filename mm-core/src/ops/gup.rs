//! get_user_pages (mm/gup.c): the lockless fast path and the slow path.
//!
//! # GUP-fast: the contract it relies on
//!
//! `gup_fast` takes no lock at all.  It runs with IRQs off
//! (`local_irq_save`, which is also an RCU read-side section), reads every
//! page-table entry exactly once into a local copy (`READ_ONCE` /
//! `pmdp_get_lockless` / `ptep_get_lockless`) and descends from the copy,
//! takes a *speculative* reference on the folio (`try_grab_folio_fast`:
//! fails on refcount 0, so a freed data page is never grabbed), and then
//! re-reads the entries that led to the page: the PTE, and (70cbc3cc78a9,
//! switch `gup-pmd-recheck`) the PMD.  A mismatch undoes the grab and the
//! call falls back to the slow path.
//!
//! The re-checks only notice that an entry changed; they do not make it
//! safe to *read* a table that was freed.  That is the table freer's side
//! of the contract (unhook → invalidate → wait for IRQs-off walkers → free):
//! either the TLB flush was an IPI that waited for this CPU (x86 without
//! RCU table freeing), or the table went through an RCU grace period
//! (`tlb_remove_table` with `rcu_table_free`), or a `tlb_remove_table_sync_one`
//! IPI ran after the unhook (khugepaged, 2ba99c5e0881).  A walker that reads
//! a table frame whose generation changed since it read the entry pointing
//! at it is reported as `gup-fast-freed-table`; a returned page that was not
//! mapped at that address during the call as `gup-oracle` (see
//! `check::gup_oracle`).
//!
//! # The slow path
//!
//! `get_user_pages` walks under `mmap_lock` (read) and the page-table locks
//! (`follow_page_mask`), and faults missing pages in (`faultin_page`).
//! `get_user_pages_fast` / `pin_user_pages_fast` try the fast path and
//! finish on the slow one (`gup_fast_fallback`).
//!
//! # References
//!
//! `Foll::GET` takes one folio reference per page (release with
//! `put_user_pages`); `Foll::PIN` takes `GUP_PIN_COUNTING_BIAS` per page of a
//! small folio (release with `unpin_user_pages`).  Large folios are pinned
//! with plain references: `_pincount` is not modelled.
//!
//! Not modelled: `mm->write_protect_seq` (fork), `gup_must_unshare`
//! (anon-exclusive), FOLL_LONGTERM checks, devmap, PUD leaves.

use crate::check::sanitizer::{Violation, ViolationKind};
use crate::config::Fix;
use crate::hw::pte::{Level, Pte};
use crate::inject::GupFastPoint;
use crate::kernel::Kernel;
use crate::mm::{MmStruct, VmaTree};
use crate::page::{flags, Folio};
use crate::pgtable;
use crate::sync::Ordering;
use crate::types::{CpuId, Pfn};
use std::fmt;
use std::ops::BitOr;

/// `FOLL_*` flags (the subset the model uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Foll(u32);

impl Foll {
    /// `FOLL_WRITE`: the caller will write to the pages.
    pub const WRITE: Foll = Foll(1);
    /// `FOLL_GET`: take a plain reference per page.
    pub const GET: Foll = Foll(2);
    /// `FOLL_PIN`: take a pin (`GUP_PIN_COUNTING_BIAS` references).
    pub const PIN: Foll = Foll(4);

    /// Every flag of `f` is set (`gup_flags & FOLL_PIN`).
    #[inline]
    pub fn has(self, f: Foll) -> bool {
        self.0 & f.0 == f.0
    }
}

impl BitOr for Foll {
    type Output = Foll;
    fn bitor(self, rhs: Foll) -> Foll {
        Foll(self.0 | rhs.0)
    }
}

/// `GUP_PIN_COUNTING_BIAS`: references one FOLL_PIN adds to a small folio.
pub(crate) const GUP_PIN_COUNTING_BIAS: i32 = 1024;

/// Why the slow path gave up (`-EFAULT` / `-ENOMEM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupError {
    /// No VMA, or the VMA does not allow the access.
    Fault(u64),
    /// A page or page table could not be allocated while faulting in.
    NoMem,
}

impl fmt::Display for GupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GupError::Fault(va) => write!(f, "EFAULT at {va:#x}"),
            GupError::NoMem => write!(f, "ENOMEM"),
        }
    }
}

impl std::error::Error for GupError {}

// ---- references ---------------------------------------------------------

/// `folio_ref_try_add` (`page_ref_add_unless(.., refs, 0)`).
fn folio_ref_try_add(k: &Kernel, folio: Folio, refs: i32) -> bool {
    let rc = &k.mem.folio(folio).refcount;
    let mut cur = rc.load(Ordering::SeqCst);
    loop {
        if cur <= 0 {
            return false;
        }
        match rc.compare_exchange(cur, cur + refs, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// References a grab of `refs` pages of `folio` takes with `flags`: none
/// for a `FOLL_PIN` of the shared zero page (`try_grab_folio` / `gup_put_folio`:
/// "Don't take a pin on the zero page - it's not going anywhere"); a
/// `FOLL_GET` of it takes a plain reference.
fn grab_refs(k: &Kernel, folio: Folio, refs: i32, flags: Foll) -> i32 {
    if flags.has(Foll::PIN) && crate::page::is_zero_folio(folio) {
        return 0;
    }
    if flags.has(Foll::PIN) && k.mem.folio_nr_pages(folio) == 1 {
        refs * GUP_PIN_COUNTING_BIAS
    } else {
        refs
    }
}

/// `try_grab_folio_fast`: speculative reference on the folio of `page`
/// without any lock; fails if the folio is free (refcount 0) — but succeeds
/// on a folio that was freed and *reused*, which is why the entries must be
/// re-checked afterwards.
pub(crate) fn try_grab_folio_fast(k: &Kernel, page: Pfn, refs: i32, flags: Foll) -> Option<Folio> {
    loop {
        let folio = k.mem.page_folio(page);
        if k.mem.folio(folio).refcount() < 0 {
            return None;
        }
        if !folio_ref_try_add(k, folio, refs) {
            return None;
        }
        // The page may have been split off / freed and reused meanwhile.
        if k.mem.page_folio(page) != folio {
            gup_put_refs(k, folio, refs);
            continue;
        }
        // FOLL_PIN of a small folio: the rest of GUP_PIN_COUNTING_BIAS
        // (`folio_ref_add(folio, refs * (GUP_PIN_COUNTING_BIAS - 1))`); a
        // FOLL_GET or large-folio grab adds 0 here.
        k.mem.folio_ref_add(folio, grab_refs(k, folio, refs, flags) - refs);
        return Some(folio);
    }
}

/// `try_grab_folio`: the slow path's grab, with the page-table lock held
/// (the folio is mapped, so its refcount cannot be 0).
pub(crate) fn try_grab_folio(k: &Kernel, folio: Folio, refs: i32, flags: Foll) {
    k.mem.folio_ref_add(folio, grab_refs(k, folio, refs, flags));
}

fn gup_put_refs(k: &Kernel, folio: Folio, refs: i32) {
    if k.mem.folio_put_testzero(folio, refs) {
        k.free_folio(folio);
    }
}

/// `gup_put_folio`: drop what a grab of `refs` pages with `flags` took.
pub(crate) fn gup_put_folio(k: &Kernel, folio: Folio, refs: i32, flags: Foll) {
    gup_put_refs(k, folio, grab_refs(k, folio, refs, flags));
}

/// `unpin_user_pages`: release pages returned with `Foll::PIN`.
#[doc(alias = "unpin_user_page")]
pub fn unpin_user_pages(k: &Kernel, pages: &[Pfn]) {
    for p in pages {
        gup_put_folio(k, k.mem.page_folio(*p), 1, Foll::PIN);
    }
}

/// `put_page` on every page returned with `Foll::GET`.
#[doc(alias = "put_page")]
pub fn put_user_pages(k: &Kernel, pages: &[Pfn]) {
    for p in pages {
        gup_put_folio(k, k.mem.page_folio(*p), 1, Foll::GET);
    }
}

/// `pte_access_permitted` / `pmd_access_permitted`.
fn access_permitted(e: Pte, write: bool) -> bool {
    e.present() && e.user() && (!write || e.write())
}

// ---- GUP-fast ------------------------------------------------------------

/// State of one lockless walk: who walks, and the sanitizer / oracle
/// bookkeeping (ghost state the kernel code never reads).
struct Walker<'a> {
    k: &'a Kernel,
    mm: &'a MmStruct,
    cpu: CpuId,
    flags: Foll,
    /// One violation report per call is enough.
    reported: bool,
    /// (va, page, oracle tick before its grab) of every page returned.
    got: Vec<(u64, Pfn, u64)>,
}

impl Walker<'_> {
    /// `READ_ONCE(*entry)` of the slot for `va` in `table`, whose pointer
    /// this walker took when the frame had generation `gen`.  The read
    /// happens whatever the frame is now (hardware does not know better);
    /// afterwards the frame is checked — the same generation check the
    /// hardware walker does for paging-structure-cache entries — and must
    /// still be a page table.  Returns the entry and the generation of the
    /// frame it points at (the walker's snapshot for the next level down).
    fn read(&mut self, table: Pfn, gen: u64, level: Level, va: u64) -> (Pte, u64) {
        let k = self.k;
        let e = pgtable::read(k, table, level, va);
        let child_gen = if e.present() && (e.pfn().0 as usize) < k.mem.nr_frames() { k.hw.ram.gen(e.pfn()) } else { 0 };
        if !self.reported {
            let now = k.hw.ram.gen(table);
            let ok = k.san.check_gen(ViolationKind::GupFastFreedTable, Some(self.cpu), self.mm.id, va, table, gen, now);
            if !ok {
                self.reported = true;
            } else if !k.mem.page(table).test(flags::PG_TABLE) {
                k.san.record(Violation {
                    kind: ViolationKind::GupFastFreedTable,
                    cpu: Some(self.cpu),
                    mm: self.mm.id,
                    va,
                    pfn: table,
                    cached_gen: gen,
                    frame_gen: now,
                });
                self.reported = true;
            }
        }
        (e, child_gen)
    }

    fn tick(&self) -> u64 {
        if self.k.gup_oracle.enabled() {
            self.k.gup_oracle.tick()
        } else {
            0
        }
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        (pfn.0 as usize) < self.k.mem.nr_frames()
    }
}

/// `gup_fast(start, end, gup_flags, pages)`: the lockless walk over
/// `nr_pages` pages from `start`, IRQs off.  Returns the pages it grabbed,
/// in address order from `start`; it stops at the first page it cannot
/// grab (not mapped, not permitted, or an entry changed under it), so the
/// result may be shorter than asked — the caller finishes on the slow path
/// (`get_user_pages_fast`) or releases what it got.
///
/// Must run on a CPU that has `mm` loaded (GUP-fast works on
/// `current->mm`; that is what makes the flush IPIs reach it).
pub fn gup_fast(k: &Kernel, mm: &MmStruct, start: u64, nr_pages: u64, flags: Foll) -> Vec<Pfn> {
    let g = k.cfg.geometry;
    let start = start & !(g.page_size() - 1);
    let end = start.wrapping_add(nr_pages << g.page_shift);
    let mut pages = Vec::new();
    if nr_pages == 0 || end <= start || end > g.task_size() {
        return pages;
    }
    let cpu = k.this_cpu();
    // The emulator's own invariant (the kernel's gup_fast walks current->mm).
    assert_eq!(k.arch.cpu_mm(k, cpu).mm, mm.id, "gup_fast on {cpu} for mm {} which this CPU does not run", mm.id);
    let oracle = k.gup_oracle.enabled();
    if oracle {
        k.gup_oracle.call_start(cpu);
    }
    let mut w = Walker { k, mm, cpu, flags, reported: false, got: Vec::new() };
    {
        let _irq = k.local_irq_save();
        let pgd_gen = k.hw.ram.gen(mm.pgd);
        gup_fast_pgd_range(&mut w, pgd_gen, start, end);
    }
    if oracle {
        k.gup_oracle.call_end(&k.hw, &k.san, cpu, mm.id, &w.got);
    }
    pages.extend(w.got.iter().map(|(_, p, _)| *p));
    pages
}

/// `gup_fast_pgd_range` (P4D folded: `gup_fast_p4d_range` is the identity).
fn gup_fast_pgd_range(w: &mut Walker<'_>, pgd_gen: u64, addr: u64, end: u64) {
    let k = w.k;
    let mut a = addr;
    loop {
        let next = pgtable::addr_end(k, Level::Pgd, a, end);
        let (pgd, pud_gen) = w.read(w.mm.pgd, pgd_gen, Level::Pgd, a);
        if !pgd.present() || !w.pfn_valid(pgd.pfn()) {
            return;
        }
        if !gup_fast_pud_range(w, pgd.pfn(), pud_gen, a, next) {
            return;
        }
        a = next;
        if a == end {
            return;
        }
    }
}

/// `gup_fast_pud_range`: walks the PUD table the PGD copy points at.
fn gup_fast_pud_range(w: &mut Walker<'_>, pud_table: Pfn, pud_gen: u64, addr: u64, end: u64) -> bool {
    let k = w.k;
    let mut a = addr;
    loop {
        let next = pgtable::addr_end(k, Level::Pud, a, end);
        let (pud, pmd_gen) = w.read(pud_table, pud_gen, Level::Pud, a);
        k.inject.race.gup_fast(k, GupFastPoint::PudRead, a);
        // PUD leaves (1 GiB pages) are not modelled.
        if !pud.present() || pud.huge() || !w.pfn_valid(pud.pfn()) {
            return false;
        }
        if !gup_fast_pmd_range(w, pud.pfn(), pmd_gen, a, next) {
            return false;
        }
        a = next;
        if a == end {
            return true;
        }
    }
}

/// `gup_fast_pmd_range`: `pmdp_get_lockless` each PMD once, then a leaf or
/// the PTE table below the copy.
fn gup_fast_pmd_range(w: &mut Walker<'_>, pmd_table: Pfn, pmd_gen: u64, addr: u64, end: u64) -> bool {
    let k = w.k;
    let mut a = addr;
    loop {
        let next = pgtable::addr_end(k, Level::Pmd, a, end);
        let (pmd, pte_gen) = w.read(pmd_table, pmd_gen, Level::Pmd, a);
        k.inject.race.gup_fast(k, GupFastPoint::PmdRead, a);
        if !pmd.present() || !w.pfn_valid(pmd.pfn()) {
            return false;
        }
        let pmdp = (pmd_table, pmd_gen);
        let ok = if pmd.huge() {
            gup_fast_pmd_leaf(w, pmd, pmdp, a, next)
        } else {
            gup_fast_pte_range(w, pmd, pmdp, pte_gen, a, next)
        };
        if !ok {
            return false;
        }
        a = next;
        if a == end {
            return true;
        }
    }
}

/// `gup_fast_pte_range(pmd, pmdp, addr, end, flags, pages)`: the PTE table
/// is the one the PMD *copy* names (`pte_offset_map(&pmd, addr)`); every
/// PTE is read once, its folio grabbed, then the PMD (70cbc3cc78a9) and the
/// PTE are re-read and compared with the copies.
///
/// Why the PMD re-check closes the khugepaged race (the comment above the
/// kernel function): `collapse_huge_page` clears the PMD *before* it checks
/// the page refcounts; this walker grabs *before* it re-checks the PMD.
/// Either khugepaged sees the grab (and aborts), or the walker sees the
/// cleared PMD (and backs off).  Without it (switch off: the code before
/// that commit), only the PTE is compared, which khugepaged has not cleared
/// yet at that point.
fn gup_fast_pte_range(w: &mut Walker<'_>, pmd: Pte, pmdp: (Pfn, u64), pte_gen: u64, addr: u64, end: u64) -> bool {
    let k = w.k;
    let ps = k.cfg.geometry.page_size();
    let pte_table = pmd.pfn();
    let write = w.flags.has(Foll::WRITE);
    let mut a = addr;
    while a < end {
        let (pte, _) = w.read(pte_table, pte_gen, Level::Pte, a);
        if !access_permitted(pte, write) || !w.pfn_valid(pte.pfn()) {
            return false;
        }
        // pte_special (the shared zero page, a PFN mapping): no struct page
        // to grab locklessly; the slow path handles it.
        if pte.special() {
            return false;
        }
        k.inject.race.gup_fast(k, GupFastPoint::PteRead, a);
        let page = pte.pfn();
        let t = w.tick();
        let Some(folio) = try_grab_folio_fast(k, page, 1, w.flags) else {
            return false;
        };
        k.inject.race.gup_fast(k, GupFastPoint::Grabbed, a);
        let pmd_changed = k.cfg.fixes.on(Fix::GupPmdRecheck) && w.read(pmdp.0, pmdp.1, Level::Pmd, a).0 != pmd;
        if pmd_changed || w.read(pte_table, pte_gen, Level::Pte, a).0 != pte {
            gup_put_folio(k, folio, 1, w.flags);
            return false;
        }
        w.got.push((a, page, t));
        a += ps;
    }
    true
}

/// `gup_fast_pmd_leaf(orig, pmdp, addr, end, flags, pages)`: a huge PMD:
/// grab every subpage in range at once (`record_subpages`), then re-check
/// the PMD.
fn gup_fast_pmd_leaf(w: &mut Walker<'_>, orig: Pte, pmdp: (Pfn, u64), addr: u64, end: u64) -> bool {
    let k = w.k;
    let g = k.cfg.geometry;
    if !access_permitted(orig, w.flags.has(Foll::WRITE)) {
        return false;
    }
    let page = orig.pfn().add((addr & (g.pmd_size() - 1)) >> g.page_shift);
    let refs = ((end - addr) >> g.page_shift) as i32;
    let t = w.tick();
    let Some(folio) = try_grab_folio_fast(k, page, refs, w.flags) else {
        return false;
    };
    k.inject.race.gup_fast(k, GupFastPoint::Grabbed, addr);
    if w.read(pmdp.0, pmdp.1, Level::Pmd, addr).0 != orig {
        gup_put_folio(k, folio, refs, w.flags);
        return false;
    }
    for i in 0..refs as u64 {
        w.got.push((addr + (i << g.page_shift), page.add(i), t));
    }
    true
}

// ---- the slow path --------------------------------------------------------

/// `follow_page_mask`: look `va` up under the page-table locks and grab its
/// page if mapped with the access allowed.
pub(crate) fn follow_page_mask(k: &Kernel, mm: &MmStruct, va: u64, flags: Foll) -> Option<Pfn> {
    let g = k.cfg.geometry;
    let write = flags.has(Foll::WRITE);
    let pmd_table = pgtable::lookup_table(k, mm, va, Level::Pmd)?;
    let pmd = pgtable::read(k, pmd_table, Level::Pmd, va);
    if !pmd.present() {
        return None;
    }
    if pmd.huge() {
        // follow_huge_pmd under pmd_lock
        let _pml = pgtable::ptl(k, pmd_table);
        let pmd = pgtable::read(k, pmd_table, Level::Pmd, va);
        if !pmd.huge() || !access_permitted(pmd, write) {
            return None;
        }
        let page = pmd.pfn().add((va & (g.pmd_size() - 1)) >> g.page_shift);
        try_grab_folio(k, k.mem.page_folio(page), 1, flags);
        return Some(page);
    }
    // follow_page_pte under the PTE lock
    let pte_table = pmd.pfn();
    let _ptl = pgtable::ptl(k, pte_table);
    if pgtable::read(k, pmd_table, Level::Pmd, va) != pmd {
        return None;
    }
    let pte = pgtable::read(k, pte_table, Level::Pte, va);
    if !access_permitted(pte, write) {
        return None;
    }
    // vm_normal_page is NULL for the zero page, and follow_page_pte takes
    // it anyway (`is_zero_pfn(pte_pfn(pte))` → `pte_page(pte)`); a write
    // never gets here with it (it is never writable: faultin_page COWs).
    try_grab_folio(k, k.mem.page_folio(pte.pfn()), 1, flags);
    Some(pte.pfn())
}

/// `faultin_page`: fault `va` in with `mmap_lock` already held for read.
fn faultin_page(k: &Kernel, mm: &MmStruct, vmas: &VmaTree, va: u64, write: bool) -> Result<(), GupError> {
    let vma = vmas.find(va).ok_or(GupError::Fault(va))?;
    let table = pgtable::alloc_table(k, mm, va, Level::Pte).ok_or(GupError::NoMem)?;
    crate::ops::fault::handle_pte_fault(k, mm, vma, table, va, write).map_err(|e| match e {
        crate::ops::fault::FaultError::Oom => GupError::NoMem,
        _ => GupError::Fault(va),
    })
}

/// `__get_user_pages` with `mmap_lock` held for read: for each page,
/// `follow_page_mask`, and on a miss `faultin_page` and retry.
fn __get_user_pages(
    k: &Kernel,
    mm: &MmStruct,
    vmas: &VmaTree,
    start: u64,
    nr_pages: u64,
    flags: Foll,
    pages: &mut Vec<Pfn>,
) -> Result<(), GupError> {
    let ps = k.cfg.geometry.page_size();
    let write = flags.has(Foll::WRITE);
    for i in 0..nr_pages {
        let va = start + i * ps;
        let vma = vmas.find(va).ok_or(GupError::Fault(va))?;
        // check_vma_flags
        if (write && !vma.writable()) || vma.flags & crate::mm::vm::VM_READ == 0 {
            return Err(GupError::Fault(va));
        }
        let mut tries = 0;
        loop {
            if let Some(p) = follow_page_mask(k, mm, va, flags) {
                pages.push(p);
                break;
            }
            tries += 1;
            if tries > 8 {
                return Err(GupError::Fault(va));
            }
            faultin_page(k, mm, vmas, va, write)?;
        }
        k.smp.cond_resched();
    }
    Ok(())
}

/// `get_user_pages(start, nr_pages, gup_flags, pages)`: the slow path under
/// `mmap_lock` (read).  Returns the pages grabbed; an error only if not even
/// the first page could be.
pub fn get_user_pages(k: &Kernel, mm: &MmStruct, start: u64, nr_pages: u64, flags: Foll) -> Result<Vec<Pfn>, GupError> {
    let start = start & !(k.cfg.geometry.page_size() - 1);
    let vmas = mm.mmap_lock.read();
    let mut pages = Vec::new();
    match __get_user_pages(k, mm, &vmas, start, nr_pages, flags, &mut pages) {
        Err(e) if pages.is_empty() => Err(e),
        _ => Ok(pages),
    }
}

/// `get_user_pages_fast` / `pin_user_pages_fast` (`gup_fast_fallback`):
/// the lockless walk, then the slow path for whatever it did not get.
#[doc(alias = "gup_fast_fallback", alias = "pin_user_pages_fast")]
pub fn get_user_pages_fast(
    k: &Kernel,
    mm: &MmStruct,
    start: u64,
    nr_pages: u64,
    flags: Foll,
) -> Result<Vec<Pfn>, GupError> {
    let start = start & !(k.cfg.geometry.page_size() - 1);
    let mut pages = gup_fast(k, mm, start, nr_pages, flags);
    let done = pages.len() as u64;
    if done == nr_pages {
        return Ok(pages);
    }
    let rest_start = start + (done << k.cfg.geometry.page_shift);
    match get_user_pages(k, mm, rest_start, nr_pages - done, flags) {
        Ok(mut rest) => {
            pages.append(&mut rest);
            Ok(pages)
        }
        Err(e) if pages.is_empty() => Err(e),
        Err(_) => Ok(pages),
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
