//! mm_struct, VMAs and address_space (page cache + i_mmap for rmap).
//!
//! Locking (as the kernel's, simplified to what the model needs):
//! - `mmap_lock` (rw) protects the VMA tree.  Page-table *teardown*
//!   (free_pgtables) runs with it held for write; faults and
//!   madvise(DONTNEED) with it held for read.
//! - `page_table_lock` protects populating upper-level entries; the split
//!   PTL of each PTE table (`Page::ptl`) protects its entries.
//! - `tlb_flush_pending` counts gathers in flight on this mm (incremented by
//!   `__tlb_gather_mmu` before any PTE changes, decremented by
//!   `tlb_finish_mmu` after the flush).
//! - `tlb_gen` is x86's `mm->context.tlb_gen`: bumped by every flush request.

pub(crate) mod address_space;

pub use crate::notifier::MmuNotifierSubscriptions;
pub use address_space::{vma_interval_tree_foreach, AddressSpace, IMmapEntry};

use crate::sync::{Arc, AtomicI32, AtomicU64, Mutex, Ordering, RwLock};
use crate::types::{AtomicCpuMask, Pfn};
use std::collections::BTreeMap;

/// VMA flags (subset of vm_flags).
pub mod vm {
    /// `VM_READ`: user reads allowed (PROT_READ).
    pub const VM_READ: u64 = 1 << 0;
    /// `VM_WRITE`: user writes allowed (PROT_WRITE); off means write faults
    /// are SEGV.
    pub const VM_WRITE: u64 = 1 << 1;
    /// `VM_EXEC`: the gather's `vma_exec` (arch `tlb_flush` may also flush
    /// the I-side).
    pub const VM_EXEC: u64 = 1 << 2;
    /// `VM_SHARED`: MAP_SHARED; without it a writable mapping is COW.
    pub const VM_SHARED: u64 = 1 << 3;
    /// `VM_MAYWRITE`: mprotect may add PROT_WRITE; fork COWs a private
    /// mapping only with it.
    pub const VM_MAYWRITE: u64 = 1 << 5;
    /// `VM_PFNMAP`: page-ranges managed without struct page, just pure PFN
    /// (`remap_pfn_range`, `ops::pfnmap`); the gather's `vma_pfn`.
    pub const VM_PFNMAP: u64 = 1 << 10;
    /// `VM_IO`: memory-mapped I/O or similar (set with VM_PFNMAP by
    /// `remap_pfn_range`).
    pub const VM_IO: u64 = 1 << 14;
    /// `VM_MIXEDMAP`: a mix of struct-page and pure-PFN pages
    /// (`vm_insert_page` / `vmf_insert_mixed`); the gather's `vma_pfn` too.
    pub const VM_MIXEDMAP: u64 = 1 << 28;
    /// `VM_HUGETLB`: a hugetlbfs mapping (`ops::hugetlb`; PMD sharing).
    pub const VM_HUGETLB: u64 = 1 << 22;
}

/// What backs a VMA.
#[derive(Clone)]
pub enum Backing {
    /// Private anonymous memory.
    Anon,
    /// A file mapping: `pgoff` is the file page at `start`.
    File {
        /// `vma->vm_file->f_mapping`.
        mapping: Arc<AddressSpace>,
        /// `vma->vm_pgoff`, in pages.
        pgoff: u64,
    },
}

/// `struct vm_area_struct`
#[derive(Clone)]
pub struct Vma {
    /// `vm_start`: first byte, page aligned.
    pub start: u64,
    /// `vm_end`: one past the last byte, page aligned; `start < end`.
    pub end: u64,
    /// `vm_flags` (`vm::VM_*`).
    pub flags: u64,
    /// Anonymous, or `vm_file` + `vm_pgoff`.
    pub backing: Backing,
}

impl Vma {
    /// `vma_is_anonymous`
    pub fn is_anon(&self) -> bool {
        matches!(self.backing, Backing::Anon)
    }
    /// `VM_SHARED` is set (MAP_SHARED).
    pub fn is_shared(&self) -> bool {
        self.flags & vm::VM_SHARED != 0
    }
    /// `is_vm_hugetlb_page`
    pub fn is_hugetlb(&self) -> bool {
        self.flags & vm::VM_HUGETLB != 0
    }
    /// `VM_WRITE` is set.
    pub fn writable(&self) -> bool {
        self.flags & vm::VM_WRITE != 0
    }
    /// File page index for `addr` (`linear_page_index`).
    pub fn pgoff_of(&self, addr: u64, page_shift: u32) -> u64 {
        match &self.backing {
            Backing::File { pgoff, .. } => pgoff + ((addr - self.start) >> page_shift),
            Backing::Anon => addr >> page_shift,
        }
    }
    /// The file's `address_space` (`vma->vm_file->f_mapping`); `None` for anon.
    pub fn mapping(&self) -> Option<&Arc<AddressSpace>> {
        match &self.backing {
            Backing::File { mapping, .. } => Some(mapping),
            Backing::Anon => None,
        }
    }
}

/// The VMA tree (maple tree in the kernel; a BTreeMap keyed by start here).
#[derive(Clone, Default)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// `find_vma`-like exact lookup: the VMA containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        self.map.range(..=addr).next_back().map(|(_, v)| v).filter(|v| addr < v.end)
    }
    /// VMAs intersecting [start, end).
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> {
        let first = self.map.range(..=start).next_back().map(|(k, _)| *k).unwrap_or(0);
        self.map.range(first..end).map(|(_, v)| v).filter(move |v| v.end > start && v.start < end)
    }
    /// Every VMA, by ascending start (`for_each_vma`).
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.map.values()
    }
    /// `vma_link`: add `vma`; panics if it overlaps one already there.
    pub fn insert(&mut self, vma: Vma) {
        assert!(self.overlapping(vma.start, vma.end).next().is_none(), "overlapping VMA");
        self.map.insert(vma.start, vma);
    }
    /// Remove [start, end) from the tree, splitting VMAs at the edges.
    /// Returns the removed pieces.
    pub fn remove_range(&mut self, start: u64, end: u64, page_shift: u32) -> Vec<Vma> {
        let hit: Vec<u64> = self.overlapping(start, end).map(|v| v.start).collect();
        let mut removed = Vec::new();
        for k in hit {
            let v = self.map.remove(&k).expect("listed");
            if v.start < start {
                let mut left = v.clone();
                left.end = start;
                self.map.insert(left.start, left);
            }
            if v.end > end {
                let mut right = v.clone();
                right.start = end;
                if let Backing::File { pgoff, .. } = &mut right.backing {
                    *pgoff += (end - v.start) >> page_shift;
                }
                self.map.insert(right.start, right);
            }
            let mut mid = v.clone();
            mid.start = v.start.max(start);
            mid.end = v.end.min(end);
            if let Backing::File { pgoff, .. } = &mut mid.backing {
                *pgoff += (mid.start - v.start) >> page_shift;
            }
            removed.push(mid);
        }
        removed
    }
    /// Change flags of [start, end), splitting at the edges (mprotect).
    pub fn change_flags(&mut self, start: u64, end: u64, page_shift: u32, f: impl Fn(u64) -> u64) -> Vec<Vma> {
        let mut pieces = self.remove_range(start, end, page_shift);
        for p in pieces.iter_mut() {
            p.flags = f(p.flags);
            self.map.insert(p.start, p.clone());
        }
        pieces
    }
    /// `mm->map_count`: the number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// No VMA left (after `exit_mmap`, or before the first mmap).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// `struct mm_struct`
pub struct MmStruct {
    /// Unique id; also the address-space tag of its TLB entries.
    pub id: u64,
    /// Top-level table frame.
    pub pgd: Pfn,
    /// `mm->mmap_lock` around the VMA tree (`mm->mm_mt`): read for faults
    /// and MADV_DONTNEED, write for mmap / munmap / page-table teardown.
    pub mmap_lock: RwLock<VmaTree>,
    /// `mm->page_table_lock`: serialises populating upper-level entries
    /// (`__pte_alloc`, `__pmd_alloc`, `huge_pmd_share`).
    pub page_table_lock: Mutex<()>,

    /// `mm_cpumask(mm)`: CPUs that may cache translations of this mm.
    pub cpumask: AtomicCpuMask,
    /// `mm->tlb_flush_pending`
    pub tlb_flush_pending: AtomicI32,
    /// `mm->mm_count` (`MmCount`): references to the mm_struct itself — one
    /// for all its users (mm_users, dropped after `exit_mmap`) and one per
    /// CPU that has it as `active_mm` (`Kernel::active_mm`, also while it
    /// runs a kernel thread lazily).  The page tables' root goes at the
    /// last `mmdrop` (`__mmdrop`).
    pub mm_count: MmCount,
    /// x86 `mm->context.tlb_gen`
    pub tlb_gen: AtomicU64,
    /// x86 `mm->context.next_trim_cpumask` (v6.18, 6db2526c1d69): the jiffy
    /// after which the next multi-CPU flush also interrupts CPUs that left
    /// the mm, so they drop out of `mm_cpumask` (`should_trim_cpumask`).
    /// `init_new_context` sets it to `jiffies + HZ` (`Kernel::mm_alloc`).
    pub next_trim_cpumask: AtomicU64,
    /// arm64 `mm->context.id`: generation | ASID (0: none allocated yet,
    /// `init_new_context`); `arch/arm64.rs` alone reads and writes it.
    pub context_id: AtomicU64,
    /// Resident pages (MM_ANONPAGES + MM_FILEPAGES).
    pub rss: AtomicU64,
    /// Page tables allocated (`mm->pgtables_bytes` in pages).
    pub nr_ptes: AtomicU64,
    /// `mm->notifier_subscriptions`: secondary MMUs (`notifier.rs`).
    pub notifier_subscriptions: crate::notifier::MmuNotifierSubscriptions,
    /// `pmd_huge_pte`: PTE tables deposited under huge PMDs (anon THP),
    /// keyed by the PMD-aligned address (`pgtable_trans_huge_deposit`).
    pub pmd_huge_pte: Mutex<BTreeMap<u64, Pfn>>,
}

/// `mm->mm_count`: `mmgrab` takes a reference, `ops::mmdrop` drops one and
/// frees the mm's root table at the last (`__mmdrop`).  x86 does not select
/// MMU_LAZY_TLB_SHOOTDOWN: a lazy CPU keeps the mm alive this way, and no
/// IPI is ever sent to make it let go.
#[derive(Debug)]
pub struct MmCount(AtomicU64);

impl MmCount {
    /// The references held.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// `mmgrab` / `mmgrab_lazy_tlb`
    pub fn mmgrab(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    /// `atomic_dec_and_test(&mm->mm_count)`: true for the last reference.
    pub(crate) fn put_testzero(&self) -> bool {
        let old = self.0.fetch_sub(1, Ordering::SeqCst);
        assert!(old > 0, "mm_count underflow");
        old == 1
    }
}

impl MmStruct {
    pub(crate) fn new(id: u64, pgd: Pfn) -> Self {
        Self {
            id,
            pgd,
            mmap_lock: RwLock::new(VmaTree::default()),
            page_table_lock: Mutex::new(()),
            cpumask: AtomicCpuMask::default(),
            tlb_flush_pending: AtomicI32::new(0),
            mm_count: MmCount(AtomicU64::new(1)),
            tlb_gen: AtomicU64::new(1),
            next_trim_cpumask: AtomicU64::new(0),
            context_id: AtomicU64::new(0),
            rss: AtomicU64::new(0),
            nr_ptes: AtomicU64::new(0),
            notifier_subscriptions: crate::notifier::MmuNotifierSubscriptions::new(),
            pmd_huge_pte: Mutex::new(BTreeMap::new()),
        }
    }

    /// `inc_tlb_flush_pending`
    pub fn inc_tlb_flush_pending(&self) {
        self.tlb_flush_pending.fetch_add(1, Ordering::SeqCst);
    }

    /// `dec_tlb_flush_pending`
    pub fn dec_tlb_flush_pending(&self) {
        let old = self.tlb_flush_pending.fetch_sub(1, Ordering::SeqCst);
        assert!(old > 0, "tlb_flush_pending underflow on mm {}", self.id);
    }

    /// `mm_tlb_flush_pending`
    pub fn mm_tlb_flush_pending(&self) -> bool {
        self.tlb_flush_pending.load(Ordering::SeqCst) > 0
    }

    /// `mm_tlb_flush_nested`: more than one gather of this mm in flight.
    pub fn mm_tlb_flush_nested(&self) -> bool {
        self.tlb_flush_pending.load(Ordering::SeqCst) > 1
    }

    /// `inc_mm_tlb_gen`: returns the new generation.
    pub fn inc_mm_tlb_gen(&self) -> u64 {
        self.tlb_gen.fetch_add(1, Ordering::SeqCst) + 1
    }
}
