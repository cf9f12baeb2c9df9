//! Page faults (mm/memory.c): `handle_mm_fault` → anonymous zero-fill
//! (`do_anonymous_page`), file read from the page cache (`do_read_fault`),
//! private-file write (`do_cow_fault`), shared-file write (`do_shared_fault`
//! / `wp_page_shared`), and write-protect faults (`do_wp_page`: reuse an
//! exclusive anon page, or copy — `wp_page_copy` with `ptep_clear_flush`).
//!
//! Every present PTE holds one folio reference and one mapcount, except a
//! PTE of the shared zero page.  Runs with `mmap_lock` held for read and the
//! PTE table's PTL held around the PTE update.  A read fault on private
//! anonymous memory maps the shared zero page read-only (`do_anonymous_page`:
//! `pte_mkspecial(pfn_pte(my_zero_pfn(addr), vma->vm_page_prot))`: no rmap,
//! no reference, no rss); the first write to it is a copy-on-write from the
//! zero page (`wp_page_copy` with `is_zero_pfn(pte_pfn(orig_pte))`: a new
//! zeroed folio, `ptep_clear_flush` of the zero-page entry).

use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::page::alloc::PageKind;
use crate::page::{flags, Folio};
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::{Arc, Ordering};

/// Why a fault could not be handled (the access gets SIGSEGV / VM_FAULT_OOM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// No VMA, or the VMA does not allow the access.
    Segv,
    /// `VM_FAULT_SIGBUS`: a file page at or past the file's end
    /// (`filemap_fault` against `i_size`).
    Sigbus,
    /// Out of memory.
    Oom,
    /// A mapping kind this model does not fault in through this path.
    Unsupported,
}

/// User PTE bits for a mapping.
fn user_pte(pfn: crate::types::Pfn, writable: bool, dirty: bool) -> Pte {
    let mut f = Pte::PRESENT | Pte::USER | Pte::ACCESSED;
    if writable {
        f |= Pte::RW;
    }
    if dirty {
        f |= Pte::DIRTY;
    }
    Pte::new(pfn, f)
}

/// `handle_mm_fault(vma, address, flags)`: takes `mmap_lock` for read.
pub fn handle_mm_fault(k: &Kernel, mm: &Arc<MmStruct>, va: u64, write: bool) -> Result<(), FaultError> {
    let vmas = mm.mmap_lock.read();
    let vma = vmas.find(va).ok_or(FaultError::Segv)?;
    if (write && !vma.writable()) || vma.flags & crate::mm::vm::VM_READ == 0 {
        return Err(FaultError::Segv);
    }
    if vma.is_hugetlb() {
        return super::hugetlb::hugetlb_fault(k, mm, vma, va, write);
    }
    if vma.flags & crate::mm::vm::VM_PFNMAP != 0 {
        // A remap_pfn_range mapping has no ->fault: a missing PTE is
        // VM_FAULT_SIGBUS (`ops::pfnmap`).
        return Err(FaultError::Segv);
    }
    let table = pgtable::alloc_table(k, mm, va, Level::Pte).ok_or(FaultError::Oom)?;
    handle_pte_fault(k, mm, vma, table, va, write)
}

/// `handle_pte_fault` with the PTE table known.
pub(crate) fn handle_pte_fault(
    k: &Kernel,
    mm: &MmStruct,
    vma: &Vma,
    table: crate::types::Pfn,
    va: u64,
    write: bool,
) -> Result<(), FaultError> {
    let page_mask = !(k.cfg.geometry.page_size() - 1);
    let va = va & page_mask;
    let ptl = pgtable::ptl(k, table);
    let pte = pgtable::read(k, table, Level::Pte, va);
    if pte.present() {
        if write && !pte.write() {
            return do_wp_page(k, mm, vma, table, va, pte, ptl);
        }
        // Spurious: another CPU already resolved it, or the TLB entry that
        // faulted was stale (handle_pte_fault's tail): make it young (and
        // dirty for a write); if nothing changed, flush_tlb_fix_spurious_fault
        // for a write.  x86's MMU re-walks on retry anyway.
        let mut entry = Pte(pte.0 | Pte::ACCESSED);
        if write {
            entry = entry.mkdirty();
        }
        if !pgtable::ptep_set_access_flags(k, mm, table, va, entry, write) && write {
            pgtable::flush_tlb_fix_spurious_fault(k, mm, va);
        }
        return Ok(());
    }
    drop(ptl);
    match vma.mapping() {
        None => do_anonymous_page(k, mm, vma, table, va, write),
        Some(_) if !write => do_read_fault(k, mm, vma, table, va),
        Some(_) if vma.is_shared() => do_shared_fault(k, mm, vma, table, va),
        Some(_) => do_cow_fault(k, mm, vma, table, va),
    }
}

/// Install `new` at `va` if the PTE is still none; false if we lost the race.
fn install(k: &Kernel, mm: &MmStruct, table: crate::types::Pfn, va: u64, new: Pte) -> bool {
    let _ptl = pgtable::ptl(k, table);
    if !pgtable::read(k, table, Level::Pte, va).is_none() {
        return false;
    }
    k.mem.add_rmap_ptes(new.pfn(), 1);
    pgtable::write(k, table, Level::Pte, va, new);
    mm.rss.fetch_add(1, Ordering::SeqCst);
    true
}

/// `do_anonymous_page`: a read fault (`!FAULT_FLAG_WRITE`, and no
/// `mm_forbids_zeropage`: s390 only) maps the shared zero page with the
/// VMA's read-only private protection, special, under the PTL if the PTE is
/// still none (`update_mmu_tlb` otherwise: nothing on x86): no rmap, no
/// reference, no rss.  A write fault maps a new zeroed page, writable and
/// dirty.  (The model's shared anonymous VMAs have no shmem backing: they
/// keep the fresh page on a read too.)
fn do_anonymous_page(
    k: &Kernel,
    mm: &MmStruct,
    vma: &Vma,
    table: crate::types::Pfn,
    va: u64,
    write: bool,
) -> Result<(), FaultError> {
    if !write && !vma.is_shared() {
        let entry = user_pte(crate::page::my_zero_pfn(va), false, false).mkspecial();
        let _ptl = pgtable::ptl(k, table);
        if pgtable::read(k, table, Level::Pte, va).is_none() {
            pgtable::write(k, table, Level::Pte, va, entry);
        }
        return Ok(());
    }
    let writable = vma.writable();
    let pfn = k.alloc_zeroed(0, PageKind::Anon).ok_or(FaultError::Oom)?;
    let page = k.mem.page(pfn);
    page.mapping.store(mm.id, Ordering::SeqCst);
    page.index.store(va >> k.cfg.geometry.page_shift, Ordering::SeqCst);
    if !install(k, mm, table, va, user_pte(pfn, writable, writable)) {
        k.folio_put(Folio(pfn));
    }
    Ok(())
}

/// `do_anonymous_page` with a large folio (mTHP: `alloc_anon_folio` of
/// `order`, `folio_ref_add(nr - 1)`, `folio_add_new_anon_rmap`, `set_ptes`):
/// map `1 << order` consecutive pages of one new folio at the
/// `order`-aligned `va` by PTEs, writable and dirty.  Takes `mmap_lock` for
/// read.  `Segv` if `va` is not in a writable anonymous VMA covering the
/// whole folio; `Unsupported` if a PTE of the range is already present or
/// the folio would cross a PTE table.
pub fn do_anonymous_page_mthp(k: &Kernel, mm: &Arc<MmStruct>, va: u64, order: u32) -> Result<Folio, FaultError> {
    let nr = 1u64 << order;
    let ps = k.cfg.geometry.page_size();
    let size = nr * ps;
    if !va.is_multiple_of(size) || order > k.cfg.geometry.pt_bits {
        return Err(FaultError::Unsupported);
    }
    let vmas = mm.mmap_lock.read();
    let vma = vmas.find(va).ok_or(FaultError::Segv)?;
    if !vma.is_anon() || !vma.writable() || va + size > vma.end {
        return Err(FaultError::Segv);
    }
    let table = pgtable::alloc_table(k, mm, va, Level::Pte).ok_or(FaultError::Oom)?;
    let pfn = k.alloc_zeroed(order, PageKind::Anon).ok_or(FaultError::Oom)?;
    for i in 0..nr {
        let page = k.mem.page(pfn.add(i));
        page.mapping.store(mm.id, Ordering::SeqCst);
        page.index.store((va >> k.cfg.geometry.page_shift) + i, Ordering::SeqCst);
    }
    let f = Folio(pfn);
    let ptl = pgtable::ptl(k, table);
    if (0..nr).any(|i| !pgtable::read(k, table, Level::Pte, va + i * ps).is_none()) {
        drop(ptl);
        k.folio_put(f);
        return Err(FaultError::Unsupported);
    }
    if nr > 1 {
        k.mem.folio_ref_add(f, (nr - 1) as i32);
    }
    k.mem.add_rmap_ptes(pfn, nr);
    for i in 0..nr {
        pgtable::write(k, table, Level::Pte, va + i * ps, user_pte(pfn.add(i), true, true));
    }
    mm.rss.fetch_add(nr, Ordering::SeqCst);
    Ok(f)
}

/// `filemap_fault`: find or read the page-cache folio for `pgoff`; returns
/// it with an extra reference for the caller.  A page at or past EOF
/// (`index >= DIV_ROUND_UP(i_size, PAGE_SIZE)`) is `VM_FAULT_SIGBUS`; the
/// size is read under the `i_pages` lock, which `truncate_inode_pages_range`
/// takes after `truncate_setsize` lowered it, so a fault either sees the new
/// size or inserts a folio that truncation then removes.
pub(crate) fn filemap_get_folio(
    k: &Kernel,
    mapping: &crate::mm::AddressSpace,
    pgoff: u64,
) -> Result<Folio, FaultError> {
    let mut pages = mapping.i_pages.lock();
    if pgoff >= mapping.i_size_read_pages() {
        return Err(FaultError::Sigbus);
    }
    if let Some(f) = pages.get(&pgoff) {
        k.mem.folio_get(*f);
        return Ok(*f);
    }
    let pfn = k.alloc_zeroed(0, PageKind::File).ok_or(FaultError::Oom)?;
    if let Some(words) = mapping.disk.lock().get(&pgoff) {
        for (i, w) in words.iter().enumerate() {
            k.hw.ram.word(pfn, i).store(*w, Ordering::SeqCst);
        }
    }
    let page = k.mem.page(pfn);
    page.mapping.store(mapping.id, Ordering::SeqCst);
    page.index.store(pgoff, Ordering::SeqCst);
    page.set(flags::PG_UPTODATE);
    let f = Folio(pfn);
    pages.insert(pgoff, f); // the page cache's reference
    k.mem.folio_get(f); // the caller's
    Ok(f)
}

/// `do_read_fault`: map the page-cache page read-only (a later write to a
/// shared mapping faults again for dirty tracking).
fn do_read_fault(k: &Kernel, mm: &MmStruct, vma: &Vma, table: crate::types::Pfn, va: u64) -> Result<(), FaultError> {
    let mapping = vma.mapping().expect("file vma");
    let f = filemap_get_folio(k, mapping, vma.pgoff_of(va, k.cfg.geometry.page_shift))?;
    if !install(k, mm, table, va, user_pte(f.pfn(), false, false)) {
        k.folio_put(f);
    }
    Ok(())
}

/// `do_shared_fault`: map writable and dirty, mark the folio dirty
/// (`fault_dirty_shared_page`).
fn do_shared_fault(k: &Kernel, mm: &MmStruct, vma: &Vma, table: crate::types::Pfn, va: u64) -> Result<(), FaultError> {
    let mapping = vma.mapping().expect("file vma");
    let f = filemap_get_folio(k, mapping, vma.pgoff_of(va, k.cfg.geometry.page_shift))?;
    // __do_fault: filemap_fault hands the folio back locked; it stays
    // locked across finish_fault until fault_dirty_shared_page.
    k.folio_lock(f);
    if install(k, mm, table, va, user_pte(f.pfn(), true, true)) {
        fault_dirty_shared_page(k, f);
    } else {
        k.folio_unlock(f);
        k.folio_put(f);
    }
    Ok(())
}

/// `fault_dirty_shared_page`: mark the (locked) folio dirty and unlock it.
/// The folio lock is what orders a write fault on a shared file page with
/// writeback (`folio_clear_dirty_for_io` runs under it): the task cannot
/// return to user space and store through the new writable entry while a
/// writeback between its `folio_mkclean` and its `PG_dirty` test-and-clear
/// is in progress.
fn fault_dirty_shared_page(k: &Kernel, f: Folio) {
    k.mem.folio(f).set(flags::PG_DIRTY);
    k.folio_unlock(f);
}

/// `do_cow_fault`: private write to a file page — copy into a new anon page.
fn do_cow_fault(k: &Kernel, mm: &MmStruct, vma: &Vma, table: crate::types::Pfn, va: u64) -> Result<(), FaultError> {
    let mapping = vma.mapping().expect("file vma");
    let src = filemap_get_folio(k, mapping, vma.pgoff_of(va, k.cfg.geometry.page_shift))?;
    let new = k.alloc_pages(0, PageKind::Anon);
    let Some(new) = new else {
        k.folio_put(src);
        return Err(FaultError::Oom);
    };
    k.hw.ram.copy_frame(new, src.pfn());
    k.folio_put(src);
    k.mem.page(new).mapping.store(mm.id, Ordering::SeqCst);
    k.stats.inc(k.this_cpu(), Stat::CowFaults);
    if !install(k, mm, table, va, user_pte(new, true, true)) {
        k.folio_put(Folio(new));
    }
    Ok(())
}

/// `do_wp_page`: a write to a present read-only PTE in a writable VMA.
fn do_wp_page(
    k: &Kernel,
    mm: &MmStruct,
    vma: &Vma,
    table: crate::types::Pfn,
    va: u64,
    pte: Pte,
    ptl: crate::sync::MutexGuard<'_, ()>,
) -> Result<(), FaultError> {
    if crate::page::is_zero_pfn(pte.pfn()) {
        // vm_normal_page is NULL: no folio to reuse, straight to wp_page_copy.
        drop(ptl);
        return wp_page_copy(k, mm, table, va, pte);
    }
    let old = k.mem.page_folio(pte.pfn());
    if vma.is_shared() {
        // wp_page_shared → finish_mkwrite_fault → wp_page_reuse: dirty
        // tracking of a shared file page; the arch decides whether the
        // upgrade needs a flush (arm64: flush_tlb_page).
        // (No ->page_mkwrite here: wp_page_reuse under the PTL, then
        // folio_lock after dropping it, then fault_dirty_shared_page.)
        let entry = Pte(pte.0 | Pte::ACCESSED).mkwrite().mkdirty();
        pgtable::ptep_set_access_flags(k, mm, table, va, entry, true);
        drop(ptl);
        k.folio_lock(old);
        fault_dirty_shared_page(k, old);
        return Ok(());
    }
    let page = k.mem.folio(old);
    let exclusive = page.test(flags::PG_ANON) && k.mem.folio_mapcount(old) == 1 && page.refcount() == 1;
    if exclusive {
        // wp_page_reuse: ptep_set_access_flags (x86: no flush, a stale
        // read-only entry just faults again and re-walks; arm64:
        // flush_tlb_page).
        let entry = Pte(pte.0 | Pte::ACCESSED).mkwrite().mkdirty();
        pgtable::ptep_set_access_flags(k, mm, table, va, entry, true);
        return Ok(());
    }
    drop(ptl);
    wp_page_copy(k, mm, table, va, pte)
}

/// `wp_page_copy`: a new anonymous page for the faulting address — zeroed
/// (`vma_alloc_zeroed_movable_folio`) when the PTE maps the zero page
/// (`is_zero_pfn(pte_pfn(vmf->orig_pte))`), else a copy of the old page —
/// installed under the PTL if the PTE is still the one that faulted:
/// `ptep_clear_flush` (x86 `flush_tlb_page`: an IPI to every other CPU
/// running the mm), `folio_add_new_anon_rmap`, the writable dirty entry;
/// then the old page's rmap and reference go, or for the zero page (no
/// rmap, no reference) `inc_mm_counter(MM_ANONPAGES)`.
fn wp_page_copy(k: &Kernel, mm: &MmStruct, table: crate::types::Pfn, va: u64, pte: Pte) -> Result<(), FaultError> {
    let zero = crate::page::is_zero_pfn(pte.pfn());
    let new = if zero {
        k.alloc_zeroed(0, PageKind::Anon).ok_or(FaultError::Oom)?
    } else {
        let new = k.alloc_pages(0, PageKind::Anon).ok_or(FaultError::Oom)?;
        k.hw.ram.copy_frame(new, pte.pfn());
        new
    };
    k.mem.page(new).mapping.store(mm.id, Ordering::SeqCst);
    k.mem.page(new).index.store(va >> k.cfg.geometry.page_shift, Ordering::SeqCst);
    let ptl = pgtable::ptl(k, table);
    if pgtable::read(k, table, Level::Pte, va) != pte {
        drop(ptl);
        k.folio_put(Folio(new));
        return Ok(());
    }
    k.stats.inc(k.this_cpu(), Stat::CowFaults);
    // ptep_clear_flush_notify: unhook and invalidate (CPU and, before
    // 6bbd42e2df8f, secondary TLBs explicitly) before the new page goes in.
    crate::notifier::ptep_clear_flush_notify(k, mm, table, va);
    k.mem.add_rmap_ptes(new, 1);
    pgtable::write(k, table, Level::Pte, va, user_pte(new, true, true));
    if zero {
        mm.rss.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    }
    k.mem.remove_rmap_ptes(pte.pfn(), 1);
    drop(ptl);
    k.folio_put(k.mem.page_folio(pte.pfn()));
    Ok(())
}
