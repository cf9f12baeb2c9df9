//! The lost-dirty-data oracle (ghost state, never read by kernel code).
//!
//! Per file word, the last value a user store (CPU or device) wrote to it —
//! recorded by the writer once the store completed.  `check` compares that
//! with what the file system would keep: the value must be on the backing
//! store (written back) or in a page-cache page that is still dirty (PG_dirty,
//! or a dirty PTE mapping it, which writeback would transfer with
//! folio_mkclean).  Anything else is data the kernel has silently forgotten:
//! a clean page whose contents differ from disk is dropped on eviction or
//! truncate.  That is exactly what 5df397dec7c4 fixed: with the rmap removed
//! before the TLB flush, writeback cleans the page while another CPU still
//! stores through a writable, dirty TLB entry.
//!
//! Contract of `check`: call it with no writer running on the file; it
//! records one `lost-dirty-data` violation per lost word and returns how many.

use crate::check::sanitizer::{Violation, ViolationKind};
use crate::hw::pte::Level;
use crate::kernel::Kernel;
use crate::mm::AddressSpace;
use crate::page::flags;
use crate::pgtable;
use crate::sync::{Arc, Mutex, Ordering};
use crate::types::Pfn;
use std::collections::BTreeMap;

/// The lost-dirty-data oracle of one file: the last value stored to every
/// word a writer recorded.
pub struct DirtyDataOracle {
    /// The file watched.
    pub mapping: Arc<AddressSpace>,
    /// (file page, word) → last value stored.
    written: Mutex<BTreeMap<(u64, usize), u64>>,
}

impl DirtyDataOracle {
    /// An oracle for `mapping` with no store recorded yet.
    pub fn new(mapping: &Arc<AddressSpace>) -> Self {
        Self { mapping: mapping.clone(), written: Mutex::new(BTreeMap::new()) }
    }

    /// A store of `val` to word `word` of file page `pgoff` completed.
    pub fn record_store(&self, pgoff: u64, word: usize, val: u64) {
        self.written.lock().insert((pgoff, word), val);
    }

    /// Stores recorded so far (distinct words).
    pub fn nr_recorded(&self) -> usize {
        self.written.lock().len()
    }

    /// Is the cached folio at `pgoff` still dirty (flag or any mapping PTE)?
    fn still_dirty(&self, k: &Kernel, pgoff: u64, pfn: Pfn) -> bool {
        if k.mem.page(pfn).test(flags::PG_DIRTY) {
            return true;
        }
        let shift = k.cfg.geometry.page_shift;
        let i_mmap = self.mapping.i_mmap.read();
        let dirty = crate::mm::vma_interval_tree_foreach(&i_mmap, pgoff, pgoff, shift).any(|e| {
            let va = e.address_of(pgoff, shift);
            pgtable::lookup_table(k, &e.mm, va, Level::Pte).is_some_and(|t| {
                let p = pgtable::read(k, t, Level::Pte, va);
                p.present() && p.pfn() == pfn && p.dirty()
            })
        });
        dirty
    }

    /// Compare every recorded store with disk and the dirty page cache.
    pub fn check(&self, k: &Kernel) -> usize {
        let written = self.written.lock().clone();
        let cache = self.mapping.i_pages.lock().clone();
        let disk = self.mapping.disk.lock().clone();
        let mut lost = 0;
        for ((pgoff, word), val) in written {
            if disk.get(&pgoff).and_then(|w| w.get(word)) == Some(&val) {
                continue;
            }
            let cached = cache.get(&pgoff).map(|f| f.pfn());
            if let Some(pfn) = cached {
                if k.hw.ram.word(pfn, word).load(Ordering::SeqCst) == val && self.still_dirty(k, pgoff, pfn) {
                    continue;
                }
            }
            lost += 1;
            k.san.record(Violation {
                kind: ViolationKind::LostDirtyData,
                cpu: None,
                mm: self.mapping.id,
                va: (pgoff << k.cfg.geometry.page_shift) + (word as u64) * 8,
                pfn: cached.unwrap_or(Pfn(0)),
                cached_gen: val,
                frame_gen: 0,
            });
        }
        lost
    }
}
