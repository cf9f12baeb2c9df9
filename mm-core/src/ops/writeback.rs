//! Writeback of file pages: `folio_clear_dirty_for_io` → `folio_mkclean`
//! (rmap walk over i_mmap under i_mmap_rwsem for read →
//! `page_vma_mkclean_one`: `ptep_clear_flush`, write-protect, clean), then
//! the data goes to the backing store ("disk").
//!
//! Contract: when `folio_mkclean` returns, no CPU holds a writable or dirty
//! translation of the folio through any mapping it found — later writes
//! fault and re-dirty the folio.  Mappings the rmap walk cannot find (a zap
//! removed the rmap before flushing: delay-rmap off) are exactly how dirty
//! data gets lost (5df397dec7c4).

use crate::hw::pte::Level;
use crate::kernel::Kernel;
use crate::mm::AddressSpace;
use crate::page::{flags, Folio};
use crate::pgtable;
use crate::sync::Ordering;

/// `folio_mkclean`: returns how many mappings were cleaned.
///
/// Like the kernel it first checks `folio_mapped`: a folio with no rmap left
/// has nothing to clean, and the walk does not even look at i_mmap — which is
/// why a zap must not drop the rmap before its TLB flush (5df397dec7c4).
/// Each mapping is then visited under its PTL (`page_vma_mapped_walk` with
/// PVMW_SYNC), so a zap holding that PTL is waited for.
pub fn folio_mkclean(k: &Kernel, mapping: &AddressSpace, folio: Folio) -> usize {
    if !k.mem.folio_mapped(folio) {
        return 0;
    }
    let pgoff = k.mem.folio(folio).index.load(Ordering::SeqCst);
    let shift = k.cfg.geometry.page_shift;
    let mut cleaned = 0;
    let i_mmap = mapping.i_mmap.read();
    for e in crate::mm::vma_interval_tree_foreach(&i_mmap, pgoff, pgoff, shift) {
        let va = e.address_of(pgoff, shift);
        cleaned += page_vma_mkclean_one(k, &e.mm, folio, va);
    }
    cleaned
}

/// `page_vma_mkclean_one` for one PTE mapping: under the PTL,
/// `ptep_clear_flush`, then a clean read-only entry; then
/// `mmu_notifier_invalidate_range_end` (after the PTL is dropped).
fn page_vma_mkclean_one(k: &Kernel, mm: &crate::mm::MmStruct, folio: Folio, va: u64) -> usize {
    let Some(table) = pgtable::lookup_table(k, mm, va, Level::Pte) else { return 0 };
    let cleaned = {
        let _ptl = pgtable::ptl(k, table);
        let pte = pgtable::read(k, table, Level::Pte, va);
        if !pte.present() || pte.pfn() != folio.pfn() || (!pte.dirty() && !pte.write()) {
            0
        } else {
            let old = pgtable::get_and_clear(k, table, Level::Pte, va);
            crate::tlb::flush_tlb_page(k, mm, va);
            pgtable::write(k, table, Level::Pte, va, old.wrprotect().mkclean());
            1
        }
    };
    crate::notifier::mmu_notifier_invalidate_range_end(k, mm, va, va + k.cfg.geometry.page_size());
    cleaned
}

/// `folio_clear_dirty_for_io`: transfer PTE dirtiness to the folio, then
/// test-and-clear the folio's dirty flag.
pub(crate) fn folio_clear_dirty_for_io(k: &Kernel, mapping: &AddressSpace, folio: Folio) -> bool {
    if folio_mkclean(k, mapping, folio) > 0 {
        k.mem.folio(folio).set(flags::PG_DIRTY);
    }
    k.mem.folio(folio).test_and_clear(flags::PG_DIRTY)
}

/// Write back every dirty page of `mapping` (`filemap_write_and_wait`).
/// Returns the number of pages written.
pub fn writeback_mapping(k: &Kernel, mapping: &AddressSpace) -> usize {
    filemap_fdatawrite_range(k, mapping, 0, u64::MAX)
}

/// `filemap_fdatawrite_range` (msync / fdatasync of file pages
/// [start, end)): write back every dirty page in the range.  Returns the
/// number of pages written.
pub fn filemap_fdatawrite_range(k: &Kernel, mapping: &AddressSpace, start: u64, end: u64) -> usize {
    let folios: Vec<(u64, Folio)> = mapping.i_pages.lock().range(start..end).map(|(i, f)| (*i, *f)).collect();
    let mut written = 0;
    for (pgoff, folio) in folios {
        let page = k.mem.folio(folio);
        k.folio_lock(folio);
        if folio_clear_dirty_for_io(k, mapping, folio) {
            page.set(flags::PG_WRITEBACK);
            // The I/O reads the page's current contents.  Memory is
            // multi-copy atomic (x86, arm64): a store some CPU completed
            // before is visible here.  An RMW read gives exactly that under
            // loom too (a plain load there may return an older store when
            // no lock or RMW chain orders the two threads, which no real
            // machine does).
            let words: Vec<u64> = (0..k.hw.ram.words_per_frame())
                .map(|i| k.hw.ram.word(folio.pfn(), i).fetch_add(0, Ordering::SeqCst))
                .collect();
            mapping.disk.lock().insert(pgoff, words);
            page.clear(flags::PG_WRITEBACK);
            written += 1;
        }
        k.folio_unlock(folio);
    }
    written
}

/// `invalidate_mapping_pages(mapping, start, end)` (POSIX_FADV_DONTNEED):
/// evict the clean, unmapped, unlocked page-cache pages of [start, end) that
/// nobody else holds (`mapping_evict_folio`).  Returns how many went.  A
/// clean page whose contents never reached the disk is forgotten here —
/// that is how lost dirty data becomes visible to the next reader.
pub fn invalidate_mapping_pages(k: &Kernel, mapping: &AddressSpace, start: u64, end: u64) -> usize {
    let mut pages = mapping.i_pages.lock();
    let candidates: Vec<(u64, Folio)> = pages.range(start..end).map(|(i, f)| (*i, *f)).collect();
    let mut evicted = 0;
    for (i, f) in candidates {
        let page = k.mem.folio(f);
        if page.test(flags::PG_LOCKED) || page.test(flags::PG_WRITEBACK) || k.mem.folio_mapped(f) {
            continue;
        }
        // __remove_mapping: freeze the refcount at "page cache only" (every
        // mapping and every gather holds its own reference), then re-check
        // dirty — a zap marks the folio dirty before it drops its reference,
        // so a frozen, clean folio really has nothing unwritten.
        let nr = k.mem.folio_nr_pages(f) as i32;
        if page.refcount.compare_exchange(nr, 0, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            continue;
        }
        if page.test(flags::PG_DIRTY) || k.mem.folio_mapped(f) {
            page.refcount.store(nr, Ordering::SeqCst); // folio_ref_unfreeze
            continue;
        }
        page.refcount.store(nr, Ordering::SeqCst);
        pages.remove(&i);
        k.folio_put(f);
        evicted += 1;
    }
    evicted
}
