//! Unmapping through the gather (mm/memory.c): `unmap_vmas` →
//! `unmap_single_vma` → `unmap_page_range` → `zap_pud_range` →
//! `zap_pmd_range` → `zap_pte_range` → `zap_present_ptes`; and page-table
//! teardown, `free_pgtables` → `free_pgd_range` → `free_pud_range` →
//! `free_pmd_range` → `free_pte_range` (mm/memory.c, 4 levels, P4D folded).
//!
//! Contract of `zap_pte_range` (the heart of it):
//! - Entries are cleared under the PTE table's PTL, the range recorded in
//!   the gather, and each page handed to the gather with its reference.
//! - A dirty file page is marked dirty at zap time; with delay-rmap its rmap
//!   is removed only after the TLB flush and still under the PTL
//!   (`tlb_flush_mmu_tlbonly` + `tlb_flush_rmaps` before unlocking), so
//!   folio_mkclean can still find — and flush — the stale writable mapping.
//! - If the gather is full, the TLB is flushed before the PTL is dropped and
//!   the pages are freed right after (`force_flush`).
//!
//! `free_pgd_range` frees a table only when the whole range it maps lies
//! inside [floor, ceiling), so tables shared with neighbouring VMAs survive.

use crate::config::Fix;
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::inject::ZapPoint;
use crate::kernel::Kernel;
use crate::mm::Vma;
use crate::page::flags;
use crate::pgtable;
use crate::sync::Ordering;
use crate::types::Pfn;

/// `struct zap_details` (mm/memory.c, v6.12): what a zap may leave behind.
/// `None` (a NULL `details`) zaps everything.  Only `even_cows` is
/// modelled: `single_folio` serves the THP pmd-lock handshake in
/// `zap_pmd_range` and `zap_flags` the uffd-wp markers, neither of which
/// the model has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZapDetails {
    /// Zap COWed private (anonymous) pages too?  `false` keeps them: the
    /// callers that only want the file's own pages gone
    /// (`unmap_mapping_folio`, `unmap_mapping_pages(.., false)`).
    pub even_cows: bool,
}

/// `should_zap_cows`: no details, or `even_cows`.
fn should_zap_cows(details: Option<&ZapDetails>) -> bool {
    details.is_none_or(|d| d.even_cows)
}

/// `should_zap_folio`: unless COWs go too, only non-anonymous folios (the
/// file's page-cache pages) are zapped; a private anon copy stays mapped.
pub(crate) fn should_zap_folio(k: &Kernel, details: Option<&ZapDetails>, folio: crate::page::Folio) -> bool {
    should_zap_cows(details) || !k.mem.folio(folio).test(flags::PG_ANON)
}

/// `zap_page_range_single(vma, address, size, details)`: its own gather on
/// `vma`'s mm (`tlb_gather_mmu` … `tlb_finish_mmu`), so the flush — and the
/// IPIs to the CPUs running that mm — happens before it returns.  The range
/// must lie in one VMA.
pub fn zap_page_range_single(
    k: &Kernel,
    mm: &crate::mm::MmStruct,
    vma: &Vma,
    start: u64,
    end: u64,
    details: Option<&ZapDetails>,
) {
    let mut tlb = MmuGather::tlb_gather_mmu(k, mm);
    unmap_single_vma(&mut tlb, vma, start, end, details);
    // Pre-6bbd42e2df8f: ->invalidate_range at the range_end (after the
    // gather's own mmu_notifier_invalidate_range in tlb_flush_mmu_tlbonly).
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, start, end);
    tlb.tlb_finish_mmu();
}

/// `unmap_vmas(tlb, vmas, start, end)`: v6.12 zaps with
/// `details = { .even_cows = true }` ("we need to zap private pages too").
pub fn unmap_vmas<'v>(tlb: &mut MmuGather<'_>, vmas: impl IntoIterator<Item = &'v Vma>, start: u64, end: u64) {
    let details = ZapDetails { even_cows: true };
    for vma in vmas {
        unmap_single_vma(tlb, vma, start, end, Some(&details));
    }
    // mmu_notifier_invalidate_range_end of the MMU_NOTIFY_UNMAP range: before
    // 6bbd42e2df8f it called every subscriber's ->invalidate_range.
    let (k, mm) = (tlb.kernel(), tlb.mm());
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, start, end);
}

/// `unmap_single_vma`
pub fn unmap_single_vma(
    tlb: &mut MmuGather<'_>,
    vma: &Vma,
    start_addr: u64,
    end_addr: u64,
    details: Option<&ZapDetails>,
) {
    let start = vma.start.max(start_addr);
    let end = vma.end.min(end_addr);
    if start >= end {
        return;
    }
    if vma.is_hugetlb() {
        // __hugetlb_zap_begin / __unmap_hugepage_range / __hugetlb_zap_end
        super::hugetlb::unmap_hugepage_range(tlb, vma, start, end);
        return;
    }
    unmap_page_range(tlb, vma, start, end, details);
}

/// `unmap_page_range`: the walk between `tlb_start_vma` and `tlb_end_vma`.
pub fn unmap_page_range(tlb: &mut MmuGather<'_>, vma: &Vma, addr: u64, end: u64, details: Option<&ZapDetails>) {
    let k = tlb.kernel();
    let mm = tlb.mm();
    tlb.tlb_start_vma(vma);
    let mut a = addr;
    while a < end {
        let next = pgtable::addr_end(k, Level::Pgd, a, end);
        let e = pgtable::read(k, mm.pgd, Level::Pgd, a);
        if e.present() {
            zap_pud_range(tlb, vma, e.pfn(), a, next, details);
        }
        a = next;
    }
    tlb.tlb_end_vma(vma);
}

fn zap_pud_range(
    tlb: &mut MmuGather<'_>,
    vma: &Vma,
    pud_table: Pfn,
    addr: u64,
    end: u64,
    details: Option<&ZapDetails>,
) {
    let k = tlb.kernel();
    let mut a = addr;
    while a < end {
        let next = pgtable::addr_end(k, Level::Pud, a, end);
        let e = pgtable::read(k, pud_table, Level::Pud, a);
        if e.present() {
            zap_pmd_range(tlb, vma, e.pfn(), a, next, details);
        }
        a = next;
    }
}

fn zap_pmd_range(
    tlb: &mut MmuGather<'_>,
    vma: &Vma,
    pmd_table: Pfn,
    addr: u64,
    end: u64,
    details: Option<&ZapDetails>,
) {
    let k = tlb.kernel();
    let mut a = addr;
    while a < end {
        let next = pgtable::addr_end(k, Level::Pmd, a, end);
        let mut e = pgtable::read(k, pmd_table, Level::Pmd, a);
        if e.present() && e.huge() && !vma.is_hugetlb() {
            // A THP (ops/huge_memory.rs): zapped whole, or split first.
            if next - a == pgtable::level_size(k, Level::Pmd) {
                if super::huge_memory::zap_huge_pmd(tlb, vma, pmd_table, a) {
                    a = next;
                    continue;
                }
            } else {
                super::huge_memory::__split_huge_pmd(k, tlb.mm(), vma, pmd_table, a);
            }
            e = pgtable::read(k, pmd_table, Level::Pmd, a);
        }
        // hugetlb PMD leaves are zapped by the hugetlb code, never here.
        if e.present() && !e.huge() {
            let mut at = a;
            while at < next {
                at = zap_pte_range(tlb, vma, e.pfn(), at, next, details);
                k.smp.cond_resched();
            }
        }
        a = next;
    }
}

/// `zap_pte_range`: returns the address it got to (less than `end` when
/// the gather filled up and it stopped early, like the kernel).
pub fn zap_pte_range(
    tlb: &mut MmuGather<'_>,
    vma: &Vma,
    pte_table: Pfn,
    addr: u64,
    end: u64,
    details: Option<&ZapDetails>,
) -> u64 {
    let k = tlb.kernel();
    let mm = tlb.mm();
    let ps = k.cfg.geometry.page_size();
    let mut force_flush = false;
    let mut rss: u64 = 0;
    let start = addr;
    tlb.tlb_change_page_size(ps);
    let ptl = pgtable::ptl(k, pte_table);
    let mut a = addr;
    while a < end {
        let ptent = pgtable::read(k, pte_table, Level::Pte, a);
        if !ptent.present() {
            a += ps;
            continue;
        }
        if super::pfnmap::vm_normal_page(vma, ptent).is_none() {
            // zap_present_ptes without a page (a PFN mapping's special PTE,
            // or the shared zero page): clear it and record the range;
            // nothing goes in the batch, no rmap, no rss.
            pgtable::get_and_clear(k, pte_table, Level::Pte, a);
            tlb.tlb_remove_tlb_entry(a);
            a += ps;
            continue;
        }
        // zap_present_ptes: `should_zap_folio` — a private COW copy the
        // caller wants kept stays mapped, and counts as one PTE looked at.
        if !should_zap_folio(k, details, k.mem.page_folio(ptent.pfn())) {
            a += ps;
            continue;
        }
        let (nr, force_break) = zap_present_ptes(tlb, pte_table, ptent, a, end, &mut force_flush);
        rss += nr;
        a += nr * ps;
        if force_break {
            break;
        }
    }
    mm.rss.fetch_sub(rss, Ordering::SeqCst);
    if let Some(hook) = k.inject.hooks.zap_pte_range_locked.get() {
        hook(k);
    }
    // Do the actual TLB flush before dropping the PTL.
    if force_flush {
        tlb.tlb_flush_mmu_tlbonly();
        tlb.tlb_flush_rmaps(vma);
    }
    drop(ptl);
    // If we forced a flush (batch full, or dirty pages with delayed rmap),
    // free the batched memory too.
    if force_flush {
        tlb.tlb_flush_mmu();
    }
    // The PTL is dropped and IRQs are on: the zapper may be preempted here
    // (zap_pmd_range's cond_resched) with this table's PTEs cleared and,
    // unless force_flush, their TLB flush still pending.
    k.inject.race.zap(k, ZapPoint::PteTableDone, start);
    a
}

/// `folio_pte_batch` (mm/internal.h, v6.12, as `zap_present_ptes` calls it
/// with FPB_IGNORE_DIRTY | FPB_IGNORE_SOFT_DIRTY): how many consecutive
/// PTEs from `addr` map consecutive pages of the same large folio with the
/// same bits once `__pte_batch_clear_ignored` dropped the accessed, dirty
/// and writable bits — a run that is partly write-protected is one batch.
fn folio_pte_batch(k: &Kernel, pte_table: Pfn, first: Pte, addr: u64, end: u64) -> u64 {
    let folio = k.mem.page_folio(first.pfn());
    let nr_pages = k.mem.folio_nr_pages(folio);
    if nr_pages == 1 {
        return 1;
    }
    let ps = k.cfg.geometry.page_size();
    let folio_end = folio.pfn().0 + nr_pages;
    // __pte_batch_clear_ignored: pte_mkclean, pte_wrprotect(pte_mkold(..)).
    let ignored = Pte::ACCESSED | Pte::DIRTY | Pte::RW;
    let same = |p: Pte| p.flags() & !ignored == first.flags() & !ignored;
    let mut nr = 1;
    // Stay within this PTE table.
    let table_end = pgtable::addr_end(k, Level::Pmd, addr, end);
    while addr + nr * ps < table_end && first.pfn().0 + nr < folio_end {
        let p = pgtable::read(k, pte_table, Level::Pte, addr + nr * ps);
        if !p.present() || p.pfn().0 != first.pfn().0 + nr || !same(p) {
            break;
        }
        nr += 1;
    }
    nr
}

/// `zap_present_ptes` + `zap_present_folio_ptes`: returns (ptes zapped,
/// force_break).
fn zap_present_ptes(
    tlb: &mut MmuGather<'_>,
    pte_table: Pfn,
    ptent: Pte,
    addr: u64,
    end: u64,
    force_flush: &mut bool,
) -> (u64, bool) {
    let k = tlb.kernel();
    let ps = k.cfg.geometry.page_size();
    let page = ptent.pfn();
    let folio = k.mem.page_folio(page);
    // Pre-d7f861b9c43a (folio-pages-batching off) zap_pte_range went PTE by
    // PTE: no folio batching, one gather slot and one rmap call per page.
    let nr = if k.cfg.fixes.on(Fix::FolioPagesBatching) { folio_pte_batch(k, pte_table, ptent, addr, end) } else { 1 };
    let mut delay_rmap = false;
    let anon = k.mem.folio(folio).test(flags::PG_ANON);
    // get_and_clear_full_ptes: collect the A/D bits the hardware set.
    let mut dirty = false;
    for i in 0..nr {
        let old = pgtable::get_and_clear(k, pte_table, Level::Pte, addr + i * ps);
        dirty |= old.dirty();
    }
    if !anon && dirty {
        // folio_mark_dirty
        k.mem.folio(folio).set(flags::PG_DIRTY);
        if tlb.tlb_delay_rmap() {
            delay_rmap = true;
            *force_flush = true;
        } else if !k.cfg.fixes.on(Fix::DelayRmap) {
            // Pre-5df397dec7c4: flush before dropping the PTL, but the rmap
            // goes right now (below), before that flush.
            *force_flush = true;
        }
    }
    tlb.tlb_remove_tlb_entries(addr, nr);
    if !delay_rmap {
        k.mem.remove_rmap_ptes(page, nr);
    }
    if tlb.__tlb_remove_folio_pages(page, nr, delay_rmap) {
        *force_flush = true;
        return (nr, true);
    }
    (nr, false)
}

/// `free_pgtables(tlb, vmas, floor, ceiling)`: free the page tables under
/// the (already zapped, detached) `vmas`, sorted by address.  `floor` is the
/// end of the previous remaining VMA (or 0), `ceiling` the start of the next
/// (or 0 = top of the address space).  The calls down are
/// `free_pgtables_calls`'s: a hugetlb VMA always goes alone, through
/// `hugetlb_free_pgd_range`; runs of nearby other VMAs are grouped.
pub fn free_pgtables(tlb: &mut MmuGather<'_>, vmas: &[Vma], floor: u64, ceiling: u64) {
    let pmd_size = pgtable::level_size(tlb.kernel(), Level::Pmd);
    for c in free_pgtables_calls(vmas, floor, ceiling, pmd_size) {
        if c.hugetlb {
            hugetlb_free_pgd_range(tlb, c.addr, c.end, c.floor, c.ceiling);
        } else {
            free_pgd_range(tlb, c.addr, c.end, c.floor, c.ceiling);
        }
    }
    // Every VMA is out of i_mmap now and the gather's flush may still be
    // pending: the window of b67fbebd4cf9 (a driver's unmap_mapping_range
    // finds nothing and frees its frames).
    let k = tlb.kernel();
    k.inject.race.after_free_pgtables(k);
}

/// One call down from `free_pgtables`: `free_pgd_range` (or, for a hugetlb
/// VMA, `hugetlb_free_pgd_range`) of [addr, end) bounded by [floor, ceiling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreePgdRangeCall {
    /// The VMA is hugetlb: `hugetlb_free_pgd_range`.
    pub hugetlb: bool,
    /// Start of the first VMA of the group.
    pub addr: u64,
    /// End of the last VMA of the group.
    pub end: u64,
    /// `free_pgtables`' floor (the same for every call, as in the kernel).
    pub floor: u64,
    /// Start of the next VMA, or `free_pgtables`' ceiling after the last.
    pub ceiling: u64,
}

/// The loop of `free_pgtables` (mm/memory.c, v6.12): for each VMA, a
/// hugetlb one is freed alone (`hugetlb_free_pgd_range` up to the next
/// VMA's start); any other starts a group that takes in the following VMAs
/// while each starts within PMD_SIZE of the previous one's end **and is not
/// hugetlb** ("Optimization: gather nearby vmas into one call down"), then
/// one `free_pgd_range` up to the next VMA's start.
pub fn free_pgtables_calls(vmas: &[Vma], floor: u64, ceiling: u64, pmd_size: u64) -> Vec<FreePgdRangeCall> {
    let mut calls = Vec::new();
    let mut i = 0;
    while i < vmas.len() {
        let hugetlb = vmas[i].is_hugetlb();
        let mut last = i;
        if !hugetlb {
            while last + 1 < vmas.len()
                && vmas[last + 1].start <= vmas[last].end + pmd_size
                && !vmas[last + 1].is_hugetlb()
            {
                last += 1;
            }
        }
        let next_start = vmas.get(last + 1).map_or(ceiling, |v| v.start);
        calls.push(FreePgdRangeCall { hugetlb, addr: vmas[i].start, end: vmas[last].end, floor, ceiling: next_start });
        i = last + 1;
    }
    calls
}

/// `hugetlb_free_pgd_range`: the asm-generic one (include/asm-generic/hugetlb.h;
/// x86 and arm64 do not override it) is `free_pgd_range`.
pub fn hugetlb_free_pgd_range(tlb: &mut MmuGather<'_>, addr: u64, end: u64, floor: u64, ceiling: u64) {
    free_pgd_range(tlb, addr, end, floor, ceiling);
}

/// `free_pgd_range`
pub fn free_pgd_range(tlb: &mut MmuGather<'_>, mut addr: u64, mut end: u64, floor: u64, mut ceiling: u64) {
    let k = tlb.kernel();
    let pmd_mask = !(pgtable::level_size(k, Level::Pmd) - 1);
    let pmd_size = pgtable::level_size(k, Level::Pmd);
    // Only whole PTE tables (PMD-sized ranges) strictly inside
    // [floor, ceiling) can go.
    addr &= pmd_mask;
    if addr < floor {
        addr = addr.wrapping_add(pmd_size);
        if addr == 0 {
            return;
        }
    }
    if ceiling != 0 {
        ceiling &= pmd_mask;
        if ceiling == 0 {
            return;
        }
    }
    if end.wrapping_sub(1) > ceiling.wrapping_sub(1) {
        end = end.wrapping_sub(pmd_size);
    }
    if addr > end.wrapping_sub(1) {
        return;
    }
    let mm = tlb.mm();
    let mut a = addr;
    loop {
        let next = pgtable::addr_end(k, Level::Pgd, a, end);
        let e = pgtable::read(k, mm.pgd, Level::Pgd, a);
        if e.present() {
            free_pud_range(tlb, mm.pgd, e.pfn(), a, next, floor, ceiling);
        }
        a = next;
        if a == end {
            break;
        }
    }
}

/// `free_pud_range` (with the folded `free_p4d_range`): frees the PUD table
/// itself when its whole PGDIR-sized range is inside [floor, ceiling).
fn free_pud_range(tlb: &mut MmuGather<'_>, pgd: Pfn, pud_table: Pfn, addr: u64, end: u64, floor: u64, ceiling: u64) {
    let k = tlb.kernel();
    let mut a = addr;
    loop {
        let next = pgtable::addr_end(k, Level::Pud, a, end);
        let e = pgtable::read(k, pud_table, Level::Pud, a);
        if e.present() {
            free_pmd_range(tlb, pud_table, e.pfn(), a, next, floor, ceiling);
        }
        a = next;
        if a == end {
            break;
        }
    }
    if let Some(start) = table_fully_inside(k, Level::Pgd, addr, end, floor, ceiling) {
        pgtable::get_and_clear(k, pgd, Level::Pgd, start);
        tlb.mm().nr_ptes.fetch_sub(1, Ordering::SeqCst);
        tlb.pud_free_tlb(pud_table, start);
    }
}

/// `free_pmd_range`
fn free_pmd_range(
    tlb: &mut MmuGather<'_>,
    pud_table: Pfn,
    pmd_table: Pfn,
    addr: u64,
    end: u64,
    floor: u64,
    ceiling: u64,
) {
    let k = tlb.kernel();
    let mut a = addr;
    loop {
        let next = pgtable::addr_end(k, Level::Pmd, a, end);
        let e = pgtable::read(k, pmd_table, Level::Pmd, a);
        if e.present() && !e.huge() {
            free_pte_range(tlb, pmd_table, e.pfn(), a);
        }
        a = next;
        if a == end {
            break;
        }
    }
    if let Some(start) = table_fully_inside(k, Level::Pud, addr, end, floor, ceiling) {
        pgtable::get_and_clear(k, pud_table, Level::Pud, start);
        tlb.mm().nr_ptes.fetch_sub(1, Ordering::SeqCst);
        tlb.pmd_free_tlb(pmd_table, start);
    }
}

/// `free_pte_range`: `pmd_clear` + `pte_free_tlb`.
fn free_pte_range(tlb: &mut MmuGather<'_>, pmd_table: Pfn, pte_table: Pfn, addr: u64) {
    let k = tlb.kernel();
    pgtable::get_and_clear(k, pmd_table, Level::Pmd, addr);
    tlb.mm().nr_ptes.fetch_sub(1, Ordering::SeqCst);
    tlb.pte_free_tlb(pte_table, addr);
}

/// The floor/ceiling test at the end of `free_pXd_range`: the table that the
/// entry at `level` points to covers `start &= level mask`; it may go only if
/// that whole range is inside [floor, ceiling).  Returns the aligned start.
fn table_fully_inside(k: &Kernel, level: Level, addr: u64, end: u64, floor: u64, ceiling: u64) -> Option<u64> {
    let mask = !(pgtable::level_size(k, level) - 1);
    let start = addr & mask;
    if start < floor {
        return None;
    }
    if ceiling != 0 {
        let c = ceiling & mask;
        if c == 0 {
            return None;
        }
        if end.wrapping_sub(1) > c.wrapping_sub(1) {
            return None;
        }
    }
    Some(start)
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
