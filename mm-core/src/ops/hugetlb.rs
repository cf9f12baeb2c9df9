//! hugetlb PMD sharing (mm/hugetlb.c, CONFIG_HUGETLB_PMD_PAGE_TABLE_SHARING)
//! and the three generations of its unshare flushing.
//!
//! # What is modelled
//!
//! A hugetlbfs file is an `AddressSpace` whose page cache (`i_pages`) holds
//! PMD-sized folios (`PageKind::Hugetlb`, order `HPAGE_PMD_ORDER`) keyed by
//! *huge* page index; `mmap_hugetlb` maps it `MAP_SHARED` at a fixed,
//! huge-page-aligned address (a VMA with `VM_SHARED | VM_HUGETLB`; `vm_pgoff`
//! stays in base pages, as in the kernel).  Every mapping is a PMD leaf
//! (`_PAGE_PSE`); the hardware walks PGD → PUD → PMD table → leaf and fills
//! 2 MiB TLB entries.
//!
//! Two VMAs (of any mms) mapping the same file range at the same offset
//! within a PUD-aligned region that each covers entirely may point their PUD
//! entries at **one** PMD table (`huge_pmd_share`).  The table's ptdesc
//! `pt_share_count` counts the *additional* sharers (0 = exclusive).  A
//! table's entries (and the folio references/mapcounts they hold) are
//! counted once, however many PUDs point at it.
//!
//! # Locking (as the kernel's, minus the hugetlb VMA lock)
//!
//! - `mmap_lock` of the mm (read for faults; write for mprotect / fork /
//!   exit; munmap takes it for write to split and detach, then downgrades
//!   to read for the zap and `free_pgtables`) → `i_mmap_rwsem` of the file
//!   (`AddressSpace::i_mmap`) →
//!   `page_table_lock` / the PMD table's split PTL.
//! - Sharing (`huge_pmd_share`) runs under `i_mmap_lock_read`; unsharing
//!   (`huge_pmd_unshare`) under `i_mmap_lock_write` and the PMD table's PTL,
//!   and the write lock is held until the unshare flush is done
//!   (`huge_pmd_unshare_flush` takes the write guard as proof).  Whoever
//!   wants to *reuse* an unshared table for something else (split, munmap of
//!   part of the VMA) needs the write lock too, so it always runs after the
//!   flush.
//! - The kernel's per-VMA hugetlb lock (`hugetlb_vma_lock_write`) is not
//!   modelled: here every path that takes it also holds the mm's mmap_lock
//!   or the i_mmap_rwsem for write, which already excludes the same peers.
//!
//! # Unshare flushing: three kernels, two switches
//!
//! - `Fix::HugetlbUnshareSync` off (before 1013af4f585f): `huge_pmd_unshare`
//!   clears the PUD and drops the share; the caller flushes the unsharer's
//!   TLB before dropping i_mmap_rwsem, and sends **no IPI** at all — so on a
//!   broadcast-TLBI platform a GUP-fast walker that read the old PUD can
//!   still be inside the table when its new owner repurposes it
//!   (docs/RACES.md, “Unshare versus GUP-fast”, CVE-2025-38085).
//! - sync on, `Fix::HugetlbUnshareBatched` off (1013af4f585f ..
//!   8ce720d5bd91): `huge_pmd_unshare` calls `tlb_remove_table_sync_one`
//!   after every `pud_clear`, last sharer or not — one all-CPU broadcast per
//!   unshared table (the 2025 regression, RACES.md “One sync per gather”).
//! - both on (8ce720d5bd91): `huge_pmd_unshare` hands the table to the
//!   gather (`tlb_unshare_pmd_ptdesc`); `huge_pmd_unshare_flush` — still
//!   under i_mmap_rwsem — flushes the TLB once and sends one
//!   `tlb_remove_table_sync_one` only if some table became exclusive.
//!   `tlb_finish_mmu` checks that nothing was left for it.
//!   `HugetlbUnshareBatched` builds on `HugetlbUnshareSync`: with the sync
//!   switched off the pre-1013af4f585f code runs whatever the batched switch
//!   says.
//!
//! # Fork
//!
//! `dup_mmap` → `copy_page_range` copies nothing of a hugetlb VMA: it is
//! shared and has no anon_vma, so `vma_needs_copy` is false (bcd51a3c679d,
//! v6.0).  The child becomes a sharer of the parent's PMD table on its
//! first fault in each PUD region (`hugetlb_fault` → `huge_pte_alloc` →
//! `huge_pmd_share`); a region it never touches stays unshared, and its
//! exit has nothing to unshare there.  `copy_hugetlb_page_range` is
//! reached only for a hugetlb VMA that needs copying (MAP_PRIVATE), which
//! `mmap_hugetlb` (MAP_SHARED only) never makes, so it is not ported:
//! `dup_mmap` asserts no hugetlb VMA needs a copy.

use super::fault::FaultError;
use super::mmap::{check_range, insert_vma, MmError};
use crate::config::Fix;
use crate::debug_vm::{vm_bug_on, vm_warn_on};
use crate::gather::{tlb_remove_table_sync_one, MmuGather};
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::address_space::IMmapEntry;
use crate::mm::{vm, vma_interval_tree_foreach, AddressSpace, Backing, MmStruct, Vma, VmaTree};
use crate::page::alloc::PageKind;
use crate::page::{flags, Folio};
use crate::pgtable;
use crate::sync::{Arc, Ordering, RwLockReadGuard, RwLockWriteGuard};
use crate::types::Pfn;

/// Proof that the file's i_mmap_rwsem is held for write
/// (`i_mmap_assert_write_locked`).
pub(crate) type IMmapWriteGuard<'a> = RwLockWriteGuard<'a, Vec<IMmapEntry>>;

/// `i_mmap_lock_write(mapping)`.  i_mmap_rwsem is a sleeping lock: a
/// contended wait is an interrupt point (the sync facade's lock-wait hook),
/// so a waiter keeps answering IPIs — the holder may be waiting for exactly
/// that (`tlb_remove_table_sync_one` under i_mmap_rwsem).
pub(crate) fn i_mmap_lock_write<'a>(_k: &Kernel, mapping: &'a AddressSpace) -> IMmapWriteGuard<'a> {
    mapping.i_mmap.write()
}

/// `i_mmap_lock_read(mapping)` (see `i_mmap_lock_write`).
pub(crate) fn i_mmap_lock_read<'a>(_k: &Kernel, mapping: &'a AddressSpace) -> RwLockReadGuard<'a, Vec<IMmapEntry>> {
    mapping.i_mmap.read()
}

/// Which unshare flushing the configured kernel does (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnshareFlush {
    /// Before 1013af4f585f: TLB flush of the unsharer only, no IPI.
    NoSync,
    /// 1013af4f585f: one `tlb_remove_table_sync_one` per unshared table.
    SyncPerTable,
    /// 8ce720d5bd91: through the mmu_gather, one sync per gather and only
    /// when a table became exclusive.
    Gather,
}

impl UnshareFlush {
    /// The mode `k.cfg.fixes` selects (`HugetlbUnshareSync`,
    /// `HugetlbUnshareBatched`).
    pub fn of(k: &Kernel) -> Self {
        let f = k.cfg.fixes;
        if !f.on(Fix::HugetlbUnshareSync) {
            UnshareFlush::NoSync
        } else if !f.on(Fix::HugetlbUnshareBatched) {
            UnshareFlush::SyncPerTable
        } else {
            UnshareFlush::Gather
        }
    }
}

// ---- ptdesc share count (include/linux/mm.h) --------------------------------

/// `ptdesc_pmd_pts_count`: additional sharers of the PMD table `pt`.
pub fn ptdesc_pmd_pts_count(k: &Kernel, pt: Pfn) -> i32 {
    k.mem.page(pt).pt_share_count.load(Ordering::SeqCst)
}

/// `ptdesc_pmd_is_shared`
pub(crate) fn ptdesc_pmd_is_shared(k: &Kernel, pt: Pfn) -> bool {
    ptdesc_pmd_pts_count(k, pt) > 0
}

/// `ptdesc_pmd_pts_inc`
pub(crate) fn ptdesc_pmd_pts_inc(k: &Kernel, pt: Pfn) {
    k.mem.page(pt).pt_share_count.fetch_add(1, Ordering::SeqCst);
}

/// `ptdesc_pmd_pts_dec`
pub(crate) fn ptdesc_pmd_pts_dec(k: &Kernel, pt: Pfn) {
    let old = k.mem.page(pt).pt_share_count.fetch_sub(1, Ordering::SeqCst);
    assert!(old > 0, "ptdesc_pmd_pts_dec on an unshared PMD table {pt:?}");
}

// ---- geometry helpers -------------------------------------------------------

/// `huge_page_size(h)` for the one hstate modelled: PMD_SIZE.
fn hsz(k: &Kernel) -> u64 {
    k.cfg.geometry.pmd_size()
}

fn pud_size(k: &Kernel) -> u64 {
    k.cfg.geometry.pud_size()
}

/// `hugetlb_mask_last_page`: added to an address to skip to the last huge
/// page of its PUD region (PUD_SIZE - PMD_SIZE).
pub(crate) fn hugetlb_mask_last_page(k: &Kernel) -> u64 {
    pud_size(k) - hsz(k)
}

/// Huge page index of `addr` in the file (`vma_hugecache_offset`).
fn vma_hugecache_offset(k: &Kernel, vma: &Vma, addr: u64) -> u64 {
    vma.pgoff_of(addr, k.cfg.geometry.page_shift) >> k.cfg.geometry.hpage_pmd_order()
}

// ---- mmap -------------------------------------------------------------------

/// `mmap(addr, len, PROT_READ[|PROT_WRITE], MAP_SHARED | MAP_FIXED_NOREPLACE,
/// hugetlbfs_file, pgoff)`: addr, len and the file offset (`pgoff`, in base
/// pages) must be huge-page aligned.  The file is any `AddressSpace`; its
/// page cache then holds huge folios keyed by huge page index.
#[doc(alias = "hugetlbfs_file_mmap")]
pub fn mmap_hugetlb(
    k: &Kernel,
    mm: &Arc<MmStruct>,
    addr: u64,
    len: u64,
    writable: bool,
    file: &Arc<AddressSpace>,
    pgoff: u64,
) -> Result<(), MmError> {
    let end = check_range(k, addr, len)?;
    let hs = hsz(k);
    if !addr.is_multiple_of(hs) || !len.is_multiple_of(hs) || !pgoff.is_multiple_of(k.cfg.geometry.hpage_pmd_nr()) {
        return Err(MmError::Inval(format!(
            "hugetlb mapping {addr:#x}+{len:#x} at file page {pgoff}: address, length and offset must be \
             multiples of the huge page size {hs:#x}"
        )));
    }
    let mut flags = vm::VM_READ | vm::VM_MAYWRITE | vm::VM_SHARED | vm::VM_HUGETLB;
    if writable {
        flags |= vm::VM_WRITE;
    }
    insert_vma(k, mm, Vma { start: addr, end, flags, backing: Backing::File { mapping: file.clone(), pgoff } })
}

// ---- sharing ----------------------------------------------------------------

/// `range_in_vma`
fn range_in(start: u64, end: u64, vstart: u64, vend: u64) -> bool {
    vstart <= start && end <= vend
}

/// `page_table_shareable(svma, vma, addr, idx)`: the address in `svma`
/// mapping file page `idx` if `svma`'s PMD table for it could serve `vma`
/// at `addr` (same slot in the table, same flags apart from VM_LOCKED,
/// `svma` covering the whole PUD region).
pub(crate) fn page_table_shareable(k: &Kernel, svma: &IMmapEntry, vma: &Vma, addr: u64, idx: u64) -> Option<u64> {
    let shift = k.cfg.geometry.page_shift;
    let saddr = svma.address_of(idx, shift);
    let sbase = saddr & !(pud_size(k) - 1);
    let s_end = sbase + pud_size(k);
    let pmd_index = |a: u64| pgtable::index(k, Level::Pmd, a);
    if pmd_index(addr) != pmd_index(saddr) || vma.flags != svma.flags || !range_in(sbase, s_end, svma.start, svma.end) {
        return None;
    }
    Some(saddr)
}

/// `want_pmd_share`: a shared VMA that covers the whole PUD region of `addr`.
pub(crate) fn want_pmd_share(k: &Kernel, vma: &Vma, addr: u64) -> bool {
    let start = addr & !(pud_size(k) - 1);
    let end = start + pud_size(k);
    vma.is_shared() && range_in(start, end, vma.start, vma.end)
}

/// `huge_pte_offset` / `hugetlb_walk`: the PMD table mapping `addr` in `mm`,
/// if the PUD entry is present.
#[doc(alias = "hugetlb_walk")]
pub fn huge_pte_offset(k: &Kernel, mm: &MmStruct, addr: u64) -> Option<Pfn> {
    pgtable::lookup_table(k, mm, addr, Level::Pmd)
}

/// `huge_pmd_share`: look through the file's i_mmap (under
/// `i_mmap_lock_read`) for another VMA whose PMD table for this PUD region
/// can be shared; if found, take a share and point our PUD at it (unless a
/// racing fault populated the PUD first).  Either way return our PMD table
/// (`pmd_alloc`).  The PUD has to be populated inside the same i_mmap_rwsem
/// section, or racing tasks could miss the sharing or pick a table that is
/// being unshared.
pub(crate) fn huge_pmd_share(k: &Kernel, mm: &MmStruct, vma: &Vma, addr: u64, pud_table: Pfn) -> Option<Pfn> {
    let mapping = vma.mapping().expect("hugetlb VMAs are file mappings");
    let idx = vma.pgoff_of(addr, k.cfg.geometry.page_shift);
    let i_mmap = i_mmap_lock_read(k, mapping);
    let mut spte = None;
    for svma in vma_interval_tree_foreach(&i_mmap, idx, idx, k.cfg.geometry.page_shift) {
        if svma.mm.id == mm.id && svma.start == vma.start {
            continue; // svma == vma
        }
        if let Some(saddr) = page_table_shareable(k, svma, vma, addr, idx) {
            if let Some(t) = huge_pte_offset(k, &svma.mm, saddr) {
                ptdesc_pmd_pts_inc(k, t);
                spte = Some(t);
                break;
            }
        }
    }
    if let Some(t) = spte {
        let _l = mm.page_table_lock.lock();
        if pgtable::read(k, pud_table, Level::Pud, addr).is_none() {
            // pud_populate + mm_inc_nr_pmds
            pgtable::write(k, pud_table, Level::Pud, addr, Pte::table(t));
            mm.nr_ptes.fetch_add(1, Ordering::SeqCst);
        } else {
            ptdesc_pmd_pts_dec(k, t);
        }
    }
    let pte = pgtable::alloc_table(k, mm, addr, Level::Pmd);
    drop(i_mmap);
    pte
}

/// `huge_pte_alloc` (CONFIG_ARCH_WANT_GENERAL_HUGETLB, PMD-sized pages):
/// allocate the PUD table if needed, then share a PMD table when possible,
/// else allocate our own.  Returns the PMD table.
pub(crate) fn huge_pte_alloc(k: &Kernel, mm: &MmStruct, vma: &Vma, addr: u64) -> Option<Pfn> {
    let pud_table = pgtable::alloc_table(k, mm, addr, Level::Pud)?;
    if want_pmd_share(k, vma, addr) && pgtable::read(k, pud_table, Level::Pud, addr).is_none() {
        huge_pmd_share(k, mm, vma, addr, pud_table)
    } else {
        pgtable::alloc_table(k, mm, addr, Level::Pmd)
    }
}

// ---- faults -----------------------------------------------------------------

/// The huge PMD leaf mapping `folio` (`make_huge_pte`): writable (and dirty)
/// when the VMA is, as for shared mappings.
fn make_huge_pte(folio: Pfn, vma: &Vma) -> Pte {
    let mut f = Pte::PRESENT | Pte::HUGE | Pte::ACCESSED;
    if vma.flags & vm::VM_READ != 0 {
        f |= Pte::USER;
    }
    if vma.writable() {
        f |= Pte::RW | Pte::DIRTY;
    }
    Pte::new(folio, f)
}

/// `hugetlb_fault`: called by `handle_mm_fault` (mmap_lock held for read)
/// for a hugetlb VMA.
pub(crate) fn hugetlb_fault(k: &Kernel, mm: &MmStruct, vma: &Vma, addr: u64, write: bool) -> Result<(), FaultError> {
    let addr = addr & !(hsz(k) - 1);
    let pmd_table = huge_pte_alloc(k, mm, vma, addr).ok_or(FaultError::Oom)?;
    let e = pgtable::read(k, pmd_table, Level::Pmd, addr);
    if e.present() {
        if write && !e.write() {
            // Shared hugetlb VMAs are mapped writable whenever the VMA is:
            // a write fault on a read-only leaf means the VMA forbids it.
            return Err(FaultError::Segv);
        }
        return Ok(()); // spurious: a stale TLB entry or a racing fault
    }
    hugetlb_no_page(k, vma, pmd_table, addr)
}

/// `hugetlb_no_page`: find or allocate the huge folio in the page cache and
/// map it.  The mapping holds one folio reference and one entire mapcount.
fn hugetlb_no_page(k: &Kernel, vma: &Vma, pmd_table: Pfn, addr: u64) -> Result<(), FaultError> {
    let mapping = vma.mapping().expect("hugetlb VMAs are file mappings");
    let idx = vma_hugecache_offset(k, vma, addr);
    let folio = {
        let mut pages = mapping.i_pages.lock();
        match pages.get(&idx) {
            Some(f) => {
                k.mem.folio_get(*f);
                *f
            }
            None => {
                // alloc_hugetlb_folio + hugetlb_add_to_page_cache
                let pfn = k.alloc_zeroed(k.cfg.geometry.hpage_pmd_order(), PageKind::Hugetlb).ok_or(FaultError::Oom)?;
                let page = k.mem.page(pfn);
                page.mapping.store(mapping.id, Ordering::SeqCst);
                page.index.store(idx, Ordering::SeqCst);
                page.set(flags::PG_UPTODATE);
                let f = Folio(pfn);
                pages.insert(idx, f); // the page cache's reference
                k.mem.folio_get(f); // the mapping's
                f
            }
        }
    };
    let ptl = pgtable::ptl(k, pmd_table);
    if !pgtable::read(k, pmd_table, Level::Pmd, addr).is_none() {
        drop(ptl);
        k.folio_put(folio);
        return Ok(());
    }
    // hugetlb_add_file_rmap + set_huge_pte_at
    k.mem.add_rmap_pmd(folio);
    pgtable::write(k, pmd_table, Level::Pmd, addr, make_huge_pte(folio.pfn(), vma));
    if vma.writable() {
        k.mem.folio(folio).set(flags::PG_DIRTY);
    }
    Ok(())
}

// ---- unsharing --------------------------------------------------------------

/// The common part of every generation of `huge_pmd_unshare`: if the PMD
/// table is shared, clear our PUD (`pud_clear`) and `mm_dec_nr_pmds`.
/// The share count is left to the caller.  Returns the PUD table.
fn unhook_shared_pmd(k: &Kernel, mm: &MmStruct, addr: u64, pmd_table: Pfn) -> Option<Pfn> {
    if !ptdesc_pmd_is_shared(k, pmd_table) {
        return None;
    }
    let pud_table = pgtable::lookup_table(k, mm, addr, Level::Pud).expect("a shared PMD table hangs off a PUD table");
    let old = pgtable::get_and_clear(k, pud_table, Level::Pud, addr);
    assert_eq!(old.pfn(), pmd_table, "PUD at {addr:#x} did not point at the table being unshared");
    mm.nr_ptes.fetch_sub(1, Ordering::SeqCst);
    Some(pud_table)
}

/// `huge_pmd_unshare` of the kernels without a gather argument (before
/// 8ce720d5bd91).  Called with the PMD table's PTL and i_mmap_rwsem (write)
/// held.  With `Fix::HugetlbUnshareSync` (1013af4f585f) it waits for every
/// IRQs-off walker after the `pud_clear`, once per table; without, it sends
/// nothing.  The caller flushes the unsharer's TLB before dropping
/// i_mmap_rwsem.  Returns true if a shared table was unmapped.
pub(crate) fn huge_pmd_unshare_nogather(
    k: &Kernel,
    mm: &MmStruct,
    addr: u64,
    pmd_table: Pfn,
    _i_mmap: &IMmapWriteGuard<'_>,
) -> bool {
    if unhook_shared_pmd(k, mm, addr, pmd_table).is_none() {
        return false;
    }
    if k.cfg.fixes.on(Fix::HugetlbUnshareSync) {
        // Once our caller drops the rmap lock, some other process might be
        // using this page table as a normal, non-hugetlb page table: wait
        // for pending GUP-fast first (one broadcast per table).
        tlb_remove_table_sync_one(k);
    }
    ptdesc_pmd_pts_dec(k, pmd_table);
    true
}

/// `huge_pmd_unshare(tlb, vma, addr, ptep)`: if the PMD table is shared,
/// unmap it from this mm (clear our PUD) and return true.  Called with the
/// table's PTL and i_mmap_rwsem (write) held; the caller must call
/// `huge_pmd_unshare_flush` before dropping i_mmap_rwsem.  In the
/// pre-8ce720d5bd91 configurations this is `huge_pmd_unshare_nogather` and
/// the caller does the old flushing (see `__unmap_hugepage_range`).
pub(crate) fn huge_pmd_unshare(
    tlb: &mut MmuGather<'_>,
    addr: u64,
    pmd_table: Pfn,
    i_mmap: &IMmapWriteGuard<'_>,
) -> bool {
    let (k, mm) = (tlb.kernel(), tlb.mm());
    if UnshareFlush::of(k) != UnshareFlush::Gather {
        return huge_pmd_unshare_nogather(k, mm, addr, pmd_table, i_mmap);
    }
    if unhook_shared_pmd(k, mm, addr, pmd_table).is_none() {
        return false;
    }
    tlb.tlb_unshare_pmd_ptdesc(pmd_table, addr);
    true
}

/// `huge_pmd_unshare_flush`: complete a sequence of `huge_pmd_unshare`
/// calls while still holding i_mmap_rwsem for write (the guard is the
/// proof): flush the unsharer's TLB and, if a table became exclusive, one
/// `tlb_remove_table_sync_one`.
///
/// With the test knob `inject::Knobs::hugetlb_unshare_sync_after_unlock`
/// only the TLB flush happens here and the sync is left to
/// `tlb_finish_mmu`, after the caller dropped i_mmap_rwsem: the broken
/// placement 8ce720d5bd91 warns about (the table's new owner may reuse it
/// before the sync drains a walker still inside it).
pub(crate) fn huge_pmd_unshare_flush(tlb: &mut MmuGather<'_>, _i_mmap: &IMmapWriteGuard<'_>) {
    if tlb.kernel().inject.knobs.hugetlb_unshare_sync_after_unlock.get() {
        if tlb.unshared_tables() {
            tlb.tlb_flush_mmu_tlbonly();
        }
        return;
    }
    tlb.tlb_flush_unshared_tables();
}

/// `adjust_range_if_pmd_sharing_possible`: widen [start, end) to whole PUD
/// regions the VMA could share.
pub(crate) fn adjust_range_if_pmd_sharing_possible(k: &Kernel, vma: &Vma, start: &mut u64, end: &mut u64) {
    let pud = pud_size(k);
    let v_start = vma.start.next_multiple_of(pud);
    let v_end = vma.end & !(pud - 1);
    if !vma.is_shared() || v_end <= v_start || *end <= v_start || *start >= v_end {
        return;
    }
    if *start > v_start {
        *start &= !(pud - 1);
    }
    if *end < v_end {
        *end = end.next_multiple_of(pud);
    }
}

// ---- unmap ------------------------------------------------------------------

/// `__unmap_hugepage_range`: zap [start, end) of a hugetlb VMA into the
/// gather, unsharing shared PMD tables on the way.  i_mmap_rwsem is held
/// for write (`__hugetlb_zap_begin`) — the guard — and the unshare flush is
/// done before returning, i.e. before the caller can drop it.
pub(crate) fn __unmap_hugepage_range(
    tlb: &mut MmuGather<'_>,
    vma: &Vma,
    start: u64,
    end: u64,
    i_mmap: &IMmapWriteGuard<'_>,
) {
    let (k, mm) = (tlb.kernel(), tlb.mm());
    let sz = hsz(k);
    let last_addr_mask = hugetlb_mask_last_page(k);
    let mode = UnshareFlush::of(k);
    vm_warn_on!(
        k,
        !vma.is_hugetlb(),
        "WARN_ON(!is_vm_hugetlb_page(vma)) in __unmap_hugepage_range",
        mm.id,
        start,
        Pfn(0)
    );
    vm_bug_on!(
        k,
        !start.is_multiple_of(sz),
        "BUG_ON(start & ~huge_page_mask(h)) in __unmap_hugepage_range",
        "start {start:#x}"
    );
    vm_bug_on!(
        k,
        !end.is_multiple_of(sz),
        "BUG_ON(end & ~huge_page_mask(h)) in __unmap_hugepage_range",
        "end {end:#x}"
    );
    tlb.tlb_change_page_size(sz);
    tlb.tlb_start_vma(vma);
    let mut force_flush = false;
    let mut address = start;
    while address < end {
        let Some(pmd_table) = huge_pte_offset(k, mm, address) else {
            address = (address | last_addr_mask) + sz;
            continue;
        };
        let ptl = pgtable::ptl(k, pmd_table);
        if huge_pmd_unshare(tlb, address, pmd_table, i_mmap) {
            drop(ptl);
            if mode != UnshareFlush::Gather {
                // Pre-8ce720d5bd91: nothing protects the previously shared
                // table once i_mmap_rwsem is dropped: flush the PUD range now.
                tlb.tlb_flush_pmd_range(address & !(pud_size(k) - 1), pud_size(k));
                force_flush = true;
            }
            address = (address | last_addr_mask) + sz;
            continue;
        }
        let old = pgtable::get_and_clear(k, pmd_table, Level::Pmd, address);
        if !old.present() {
            drop(ptl);
            address += sz;
            continue;
        }
        assert!(old.huge(), "non-huge entry in a hugetlb PMD table at {address:#x}");
        // tlb_remove_huge_tlb_entry: a PMD-sized leaf.
        tlb.tlb_remove_pmd_tlb_entry(address);
        let folio = k.mem.page_folio(old.pfn());
        if old.dirty() {
            k.mem.folio(folio).set(flags::PG_DIRTY);
        }
        k.mem.remove_rmap_pmd(folio); // hugetlb_remove_rmap
        drop(ptl);
        tlb.tlb_remove_page_size(folio.pfn(), sz);
        address += sz;
    }
    tlb.tlb_end_vma(vma);
    match mode {
        UnshareFlush::Gather => huge_pmd_unshare_flush(tlb, i_mmap),
        _ if force_flush => tlb.tlb_flush_mmu_tlbonly(),
        _ => {}
    }
}

/// `unmap_single_vma` for a hugetlb VMA: `__hugetlb_zap_begin` (take
/// i_mmap_rwsem for write), `__unmap_hugepage_range`, `__hugetlb_zap_end`.
#[doc(alias = "__unmap_hugepage_range_final")]
pub(crate) fn unmap_hugepage_range(tlb: &mut MmuGather<'_>, vma: &Vma, start: u64, end: u64) {
    let mapping = vma.mapping().expect("hugetlb VMAs are file mappings").clone();
    let i_mmap = i_mmap_lock_write(tlb.kernel(), &mapping);
    __unmap_hugepage_range(tlb, vma, start, end, &i_mmap);
    drop(i_mmap);
}

// ---- mprotect ---------------------------------------------------------------

/// `hugetlb_change_protection`: apply the VMA's (new) protection to its
/// huge leaves, unsharing shared PMD tables first (their other sharers keep
/// the old protection).  i_mmap_rwsem is taken for write around the walk and
/// the flush.  Returns the number of base pages touched: each rewritten
/// huge leaf and each unshared table counts one huge page, shifted by the
/// hstate's order (`pages << h->order`, mm/hugetlb.c v6.12).
///
/// With 8ce720d5bd91 it runs **its own gather**, `tlb_gather_mmu_vma`
/// (VMA flags and the huge page size set up front; no `tlb_start_vma`),
/// records each rewritten leaf (`tlb_remove_huge_tlb_entry`) and each
/// unshare, flushes (`tlb_flush_mmu_tlbonly`, `huge_pmd_unshare_flush`)
/// under i_mmap_rwsem and finishes after dropping it.  Called from
/// mprotect, that gather is nested inside `do_mprotect_pkey`'s (the mm's
/// `tlb_flush_pending` is 2), so its `tlb_finish_mmu` sees
/// `mm_tlb_flush_nested` and forces a full flush with freed_tables.
/// Before 8ce720d5bd91 there is no gather: `flush_hugetlb_tlb_range`
/// before i_mmap_rwsem is dropped.
pub(crate) fn hugetlb_change_protection(k: &Kernel, mm: &MmStruct, vma: &Vma) -> u64 {
    let sz = hsz(k);
    let last_addr_mask = hugetlb_mask_last_page(k);
    let mode = UnshareFlush::of(k);
    let (start, end) = (vma.start, vma.end);
    let (mut range_start, mut range_end) = (start, end);
    adjust_range_if_pmd_sharing_possible(k, vma, &mut range_start, &mut range_end);
    let mapping = vma.mapping().expect("hugetlb VMAs are file mappings").clone();
    let mut tlb = (mode == UnshareFlush::Gather).then(|| MmuGather::tlb_gather_mmu_vma(k, mm, vma));
    let i_mmap = i_mmap_lock_write(k, &mapping);
    let user = vma.flags & vm::VM_READ != 0;
    let writable = user && vma.writable();
    let mut pages = 0;
    let mut shared_pmd = false;
    let mut address = start;
    while address < end {
        let Some(pmd_table) = huge_pte_offset(k, mm, address) else {
            address = (address | last_addr_mask) + sz;
            continue;
        };
        let ptl = pgtable::ptl(k, pmd_table);
        let unshared = match tlb.as_mut() {
            Some(tlb) => huge_pmd_unshare(tlb, address, pmd_table, &i_mmap),
            None => huge_pmd_unshare_nogather(k, mm, address, pmd_table, &i_mmap),
        };
        if unshared {
            pages += 1;
            shared_pmd = true;
            drop(ptl);
            address = (address | last_addr_mask) + sz;
            continue;
        }
        let slot = pgtable::slot(k, pmd_table, Level::Pmd, address);
        let mut cur = Pte(slot.load(Ordering::SeqCst));
        while cur.present() {
            // huge_ptep_modify_prot_start / huge_pte_modify / _commit
            let mut new = Pte(cur.0 & !(Pte::RW | Pte::USER));
            if user {
                new = Pte(new.0 | Pte::USER);
            }
            if writable {
                new = new.mkwrite();
            }
            match slot.compare_exchange(cur.0, new.0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    pages += 1;
                    if let Some(tlb) = tlb.as_mut() {
                        tlb.tlb_remove_pmd_tlb_entry(address); // tlb_remove_huge_tlb_entry
                    }
                    break;
                }
                Err(now) => cur = Pte(now),
            }
        }
        drop(ptl);
        address += sz;
    }
    match tlb.as_mut() {
        Some(tlb) => {
            tlb.tlb_flush_mmu_tlbonly();
            huge_pmd_unshare_flush(tlb, &i_mmap);
        }
        None => {
            // flush_hugetlb_tlb_range before releasing i_mmap_rwsem; the
            // whole PUD-aligned range if a table was unshared.
            let (s, e) = if shared_pmd { (range_start, range_end) } else { (start, end) };
            crate::tlb::flush_tlb_range(k, mm, s, e, true);
        }
    }
    drop(i_mmap);
    if let Some(tlb) = tlb {
        tlb.tlb_finish_mmu();
    }
    pages << k.cfg.geometry.hpage_pmd_order()
}

// ---- VMA split ----------------------------------------------------------------

/// `hugetlb_unshare_pmds(vma, start, end, take_locks = true)`: unshare every
/// PMD table of the PUD-aligned [start, end) of `vma` (i_mmap_rwsem write
/// held throughout, the unshare flush before it is dropped).
pub(crate) fn hugetlb_unshare_pmds(k: &Kernel, mm: &MmStruct, vma: &Vma, start: u64, end: u64) {
    let pud = pud_size(k);
    assert!(
        start.is_multiple_of(pud) && end.is_multiple_of(pud),
        "hugetlb_unshare_pmds of [{start:#x}, {end:#x}): not PUD-aligned"
    );
    if start >= end {
        return;
    }
    let mapping = vma.mapping().expect("hugetlb VMAs are file mappings").clone();
    match UnshareFlush::of(k) {
        UnshareFlush::Gather => {
            // 8ce720d5bd91: its own gather, `tlb_gather_mmu_vma` (nested in
            // `do_mprotect_pkey`'s when mprotect splits the VMA; not in
            // munmap's, which splits before it gathers).
            let mut tlb = MmuGather::tlb_gather_mmu_vma(k, mm, vma);
            let i_mmap = i_mmap_lock_write(k, &mapping);
            let mut address = start;
            while address < end {
                if let Some(pmd_table) = huge_pte_offset(k, mm, address) {
                    let ptl = pgtable::ptl(k, pmd_table);
                    huge_pmd_unshare(&mut tlb, address, pmd_table, &i_mmap);
                    drop(ptl);
                }
                address += pud;
            }
            huge_pmd_unshare_flush(&mut tlb, &i_mmap);
            drop(i_mmap);
            tlb.tlb_finish_mmu();
        }
        _ => {
            let i_mmap = i_mmap_lock_write(k, &mapping);
            let mut address = start;
            while address < end {
                if let Some(pmd_table) = huge_pte_offset(k, mm, address) {
                    let ptl = pgtable::ptl(k, pmd_table);
                    huge_pmd_unshare_nogather(k, mm, address, pmd_table, &i_mmap);
                    drop(ptl);
                }
                address += pud;
            }
            crate::tlb::flush_tlb_range(k, mm, start, end, true);
            drop(i_mmap);
        }
    }
}

/// `hugetlb_split(vma, addr)`: a hugetlb VMA is being split at `addr`.  If
/// `addr` is not PUD-aligned, the PUD region around it can no longer be
/// shared by either half: unshare it now (only possible when the VMA covers
/// that whole region).
pub(crate) fn hugetlb_split(k: &Kernel, mm: &MmStruct, vma: &Vma, addr: u64) {
    let pud = pud_size(k);
    if addr.is_multiple_of(pud) {
        return;
    }
    let floor = addr & !(pud - 1);
    let ceil = floor + pud;
    if floor >= vma.start && ceil <= vma.end {
        hugetlb_unshare_pmds(k, mm, vma, floor, ceil);
    }
}

/// The hugetlb part of splitting VMAs at `start` and `end` (munmap,
/// mprotect): `hugetlb_vm_op_split` refuses a boundary that is not huge-page
/// aligned (EINVAL), then `hugetlb_split` unshares around each boundary.
/// Called with mmap_lock held for write, before the VMA tree is changed.
#[doc(alias = "hugetlb_vm_op_split")]
pub(crate) fn hugetlb_split_range(
    k: &Kernel,
    mm: &MmStruct,
    vmas: &VmaTree,
    start: u64,
    end: u64,
) -> Result<(), MmError> {
    let hs = hsz(k);
    let hits: Vec<Vma> = vmas.overlapping(start, end).filter(|v| v.is_hugetlb()).cloned().collect();
    for v in &hits {
        for b in [start, end] {
            if v.start < b && b < v.end && !b.is_multiple_of(hs) {
                return Err(MmError::Inval(format!(
                    "splitting the hugetlb VMA {:#x}..{:#x} at {b:#x}: not a multiple of the huge page size {hs:#x}",
                    v.start, v.end
                )));
            }
        }
    }
    for v in &hits {
        for b in [start, end] {
            if v.start < b && b < v.end {
                hugetlb_split(k, mm, v, b);
            }
        }
    }
    Ok(())
}

/// After mprotect changed the flags of the hugetlb VMA pieces `pieces`,
/// re-register them in their file's i_mmap with the new flags (the kernel
/// reads `svma->vm_flags` directly; here i_mmap keeps a copy).
pub(crate) fn hugetlb_update_i_mmap_flags(k: &Kernel, mm: &Arc<MmStruct>, pieces: &[Vma]) {
    for p in pieces.iter().filter(|p| p.is_hugetlb()) {
        let mapping = p.mapping().expect("hugetlb VMAs are file mappings");
        mapping.i_mmap_remove(mm.id, p.start, p.end, k.cfg.geometry.page_shift);
        mapping.i_mmap_insert(IMmapEntry {
            mm: mm.clone(),
            start: p.start,
            end: p.end,
            pgoff: p.pgoff_of(p.start, k.cfg.geometry.page_shift),
            flags: p.flags,
        });
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests;
