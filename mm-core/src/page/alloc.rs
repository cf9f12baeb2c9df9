//! The page allocator: a binary buddy allocator (one zone) with per-CPU
//! lists for order-0 pages, and leak accounting.
//!
//! Contract:
//! - `alloc` returns a frame with refcount 1 and the `kind` recorded, or
//!   `None` when memory is exhausted or a failure was injected (the
//!   GFP_NOWAIT allocations of mmu_gather must cope with that).
//! - `free` takes a frame whose refcount already reached 0.  The caller has
//!   bumped the frame generations (see `Kernel::free_folio`).
//! - Frames sitting on per-CPU lists count as free; `in_use()` is what a run
//!   leaked if it is non-zero after every mm exited.
//! - pfn 0 is reserved, so a zero page-table entry never names a frame the
//!   allocator hands out; it is the shared zero page (`page::ZERO_PFN`),
//!   which is why it never shows in `in_use()`.

use super::{flags, MemMap};
use crate::debug_vm::vm_bug_on;
use crate::sync::{AtomicI64, Mutex, Ordering};
use crate::types::{CpuId, Pfn};
use serde::Serialize;

/// MAX_PAGE_ORDER
pub(crate) const MAX_PAGE_ORDER: u32 = 10;
/// Per-CPU list refill batch (`pcp->batch`).
pub(crate) const PCP_BATCH: usize = 31;
/// Per-CPU list high watermark (`pcp->high`), drained back to the zone above it.
pub(crate) const PCP_HIGH: usize = 6 * PCP_BATCH;

/// What a frame is used for (leak accounting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageKind {
    /// Anonymous user memory (`PG_anon | PG_swapbacked`).
    Anon,
    /// Page-cache folios of an `AddressSpace` (no flag of its own).
    File,
    /// Page tables at every level (`PG_table`, the ptdesc).
    PageTable,
    /// Kernel objects: mmu_gather batch pages, table batches.
    Kernel,
    /// hugetlbfs folios (`PG_hugetlb`), PMD-sized.
    Hugetlb,
}

const KINDS: usize = 5;

impl PageKind {
    /// Every kind, in `InUse` field order.
    pub const ALL: [PageKind; KINDS] =
        [PageKind::Anon, PageKind::File, PageKind::PageTable, PageKind::Kernel, PageKind::Hugetlb];
    fn idx(self) -> usize {
        self as usize
    }
    fn flag(self) -> u64 {
        match self {
            PageKind::Anon => flags::PG_ANON | flags::PG_SWAPBACKED,
            PageKind::File => 0,
            PageKind::PageTable => flags::PG_TABLE,
            PageKind::Kernel => flags::PG_KERNEL,
            PageKind::Hugetlb => flags::PG_HUGETLB,
        }
    }
}

/// End of a free list.
const NIL: u32 = u32::MAX;

/// The buddy free lists (`zone->free_area[order].free_list`): one doubly
/// linked list per order threaded through per-frame `next`/`prev` arrays
/// (a frame heads at most one free block), so insert, remove and pop are
/// O(1) as in the kernel.  Freed blocks go to the head and allocation pops
/// the head (cache-hot first); boot hands blocks out in address order.
struct FreeArea {
    head: [u32; MAX_PAGE_ORDER as usize + 1],
    tail: [u32; MAX_PAGE_ORDER as usize + 1],
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl FreeArea {
    fn new(nr_frames: usize) -> Self {
        assert!(nr_frames < NIL as usize, "pfns must fit the u32 free-list links");
        FreeArea {
            head: [NIL; MAX_PAGE_ORDER as usize + 1],
            tail: [NIL; MAX_PAGE_ORDER as usize + 1],
            next: vec![NIL; nr_frames],
            prev: vec![NIL; nr_frames],
        }
    }

    fn is_empty(&self, order: u32) -> bool {
        self.head[order as usize] == NIL
    }

    fn push_head(&mut self, order: u32, pfn: u64) {
        let (o, p) = (order as usize, pfn as u32);
        let h = self.head[o];
        self.next[p as usize] = h;
        self.prev[p as usize] = NIL;
        if h == NIL {
            self.tail[o] = p;
        } else {
            self.prev[h as usize] = p;
        }
        self.head[o] = p;
    }

    fn push_tail(&mut self, order: u32, pfn: u64) {
        let (o, p) = (order as usize, pfn as u32);
        let t = self.tail[o];
        self.prev[p as usize] = t;
        self.next[p as usize] = NIL;
        if t == NIL {
            self.head[o] = p;
        } else {
            self.next[t as usize] = p;
        }
        self.tail[o] = p;
    }

    fn remove(&mut self, order: u32, pfn: u64) {
        let (o, p) = (order as usize, pfn as usize);
        let (n, pr) = (self.next[p], self.prev[p]);
        if pr == NIL {
            assert_eq!(self.head[o], p as u32, "free-list remove of a block not on the order-{order} list");
            self.head[o] = n;
        } else {
            self.next[pr as usize] = n;
        }
        if n == NIL {
            self.tail[o] = pr;
        } else {
            self.prev[n as usize] = pr;
        }
        self.next[p] = NIL;
        self.prev[p] = NIL;
    }

    fn pop(&mut self, order: u32) -> Option<u64> {
        let h = self.head[order as usize];
        if h == NIL {
            return None;
        }
        self.remove(order, u64::from(h));
        Some(u64::from(h))
    }
}

struct Zone {
    free_area: FreeArea,
    /// Order of the free block headed here, or -1.
    free_order: Vec<i8>,
    nr_free: usize,
}

/// The zone's buddy allocator plus the per-CPU order-0 lists
/// (`zone->per_cpu_pageset`) and per-kind in-use counts.
pub struct PageAllocator {
    zone: Mutex<Zone>,
    pcp: Box<[Mutex<Vec<Pfn>>]>,
    in_use: [AtomicI64; KINDS],
    nr_frames: usize,
    /// `KernelConfig::debug_vm` (the allocator has no `Kernel`).
    debug_vm: bool,
}

/// Frames in use by kind (leak report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InUse {
    /// Frames of `PageKind::Anon`.
    pub anon: i64,
    /// Frames of `PageKind::File`.
    pub file: i64,
    /// Frames of `PageKind::PageTable`.
    pub page_table: i64,
    /// Frames of `PageKind::Kernel`.
    pub kernel: i64,
    /// Frames of `PageKind::Hugetlb`.
    pub hugetlb: i64,
}

impl InUse {
    /// Frames in use of every kind (0 after a clean run: no leak).
    pub fn total(&self) -> i64 {
        self.anon + self.file + self.page_table + self.kernel + self.hugetlb
    }
}

impl PageAllocator {
    /// Every frame but pfn 0 free in the zone, in the largest aligned
    /// blocks (`memblock_free_all`); empty per-CPU lists for `nr_cpus`.
    pub fn new(nr_frames: usize, nr_cpus: usize) -> Self {
        let mut zone = Zone { free_area: FreeArea::new(nr_frames), free_order: vec![-1; nr_frames], nr_free: 0 };
        // Hand every frame but pfn 0 to the buddy lists, largest aligned blocks first.
        let mut pfn = 1u64;
        while (pfn as usize) < nr_frames {
            let mut order = 0;
            while order < MAX_PAGE_ORDER
                && pfn.is_multiple_of(1 << (order + 1))
                && pfn as usize + (1 << (order + 1)) <= nr_frames
            {
                order += 1;
            }
            zone.free_area.push_tail(order, pfn);
            zone.free_order[pfn as usize] = order as i8;
            zone.nr_free += 1 << order;
            pfn += 1 << order;
        }
        Self {
            zone: Mutex::new(zone),
            pcp: (0..nr_cpus).map(|_| Mutex::new(Vec::new())).collect(),
            in_use: Default::default(),
            nr_frames,
            debug_vm: true,
        }
    }

    /// The same allocator with `KernelConfig::debug_vm` set to `on`.
    pub fn with_debug_vm(mut self, on: bool) -> Self {
        self.debug_vm = on;
        self
    }

    fn zone_alloc(zone: &mut Zone, order: u32) -> Option<u64> {
        let from = (order..=MAX_PAGE_ORDER).find(|o| !zone.free_area.is_empty(*o))?;
        let pfn = zone.free_area.pop(from)?;
        zone.free_order[pfn as usize] = -1;
        // Split down to the requested order, returning upper halves.
        let mut o = from;
        while o > order {
            o -= 1;
            let buddy = pfn + (1 << o);
            zone.free_area.push_head(o, buddy);
            zone.free_order[buddy as usize] = o as i8;
        }
        zone.nr_free -= 1 << order;
        Some(pfn)
    }

    fn zone_free(zone: &mut Zone, mut pfn: u64, mut order: u32) {
        zone.nr_free += 1 << order;
        while order < MAX_PAGE_ORDER {
            let buddy = pfn ^ (1 << order);
            if buddy == 0 || buddy as usize >= zone.free_order.len() || zone.free_order[buddy as usize] != order as i8 {
                break;
            }
            zone.free_area.remove(order, buddy);
            zone.free_order[buddy as usize] = -1;
            pfn = pfn.min(buddy);
            order += 1;
        }
        zone.free_area.push_head(order, pfn);
        zone.free_order[pfn as usize] = order as i8;
    }

    /// `alloc_pages(gfp, order)`: a (compound, if order > 0) folio of `kind`.
    ///
    /// When the zone cannot serve the request, the other CPUs' per-CPU
    /// lists are drained back into it and the allocation is retried once
    /// (`__alloc_pages_direct_reclaim`: "pages are pinned on the per-cpu
    /// lists … drain them"; remote pcp lists are drained under their own
    /// locks since 443c2accd1b6).  Without this, a small machine whose
    /// CPUs each pulled a `PCP_BATCH` refill could fail with most of its
    /// memory free.
    pub fn alloc(&self, mem: &MemMap, cpu: CpuId, order: u32, kind: PageKind) -> Option<Pfn> {
        assert!(order <= MAX_PAGE_ORDER, "alloc_pages: order {order} > MAX_PAGE_ORDER");
        match self.try_alloc(mem, cpu, order, kind) {
            Some(p) => Some(p),
            None => {
                self.drain_all_pages();
                self.try_alloc(mem, cpu, order, kind)
            }
        }
    }

    /// `drain_all_pages`: return every CPU's per-CPU list to the zone.
    pub fn drain_all_pages(&self) {
        for pcp in self.pcp.iter() {
            let mut pcp = pcp.lock();
            if pcp.is_empty() {
                continue;
            }
            let mut zone = self.zone.lock();
            for p in pcp.drain(..) {
                Self::zone_free(&mut zone, p.0, 0);
            }
        }
    }

    fn try_alloc(&self, mem: &MemMap, cpu: CpuId, order: u32, kind: PageKind) -> Option<Pfn> {
        let pfn = if order == 0 {
            let mut pcp = self.pcp[cpu.idx()].lock();
            if pcp.is_empty() {
                let mut zone = self.zone.lock();
                for _ in 0..PCP_BATCH {
                    match Self::zone_alloc(&mut zone, 0) {
                        Some(p) => pcp.push(Pfn(p)),
                        None => break,
                    }
                }
            }
            pcp.pop()?
        } else {
            Pfn(Self::zone_alloc(&mut self.zone.lock(), order)?)
        };
        let nr = 1u64 << order;
        for i in 0..nr {
            let p = mem.page(pfn.add(i));
            vm_bug_on!(
                on = self.debug_vm,
                p.refcount() != 0,
                "VM_BUG_ON_PAGE(page_ref_count(page)) in set_page_refcounted",
                "allocating a frame in use: {:?}",
                pfn.add(i)
            );
            p.flags.store(kind.flag() | if i == 0 && order > 0 { flags::PG_HEAD } else { 0 }, Ordering::SeqCst);
            p.head.store(pfn.0, Ordering::SeqCst);
            p.mapcount.store(0, Ordering::SeqCst);
            p.mapping.store(0, Ordering::SeqCst);
            p.index.store(0, Ordering::SeqCst);
            p.pt_share_count.store(0, Ordering::SeqCst);
        }
        let head = mem.page(pfn);
        head.order.store(order, Ordering::SeqCst);
        head.entire_mapcount.store(0, Ordering::SeqCst);
        head.refcount.store(1, Ordering::SeqCst);
        self.in_use[kind.idx()].fetch_add(nr as i64, Ordering::SeqCst);
        Some(pfn)
    }

    /// Return a folio whose refcount reached zero (`free_unref_folios` /
    /// `__free_pages`).  The kind is read from the page flags.
    pub fn free(&self, mem: &MemMap, cpu: CpuId, pfn: Pfn) {
        let head = mem.page(pfn);
        let order = head.order.load(Ordering::SeqCst);
        let f = head.flags.load(Ordering::SeqCst);
        let kind = PageKind::ALL
            .into_iter()
            .rev()
            .find(|k| k.flag() != 0 && f & k.flag() == k.flag())
            .unwrap_or(PageKind::File);
        assert!(head.refcount() == 0, "freeing {:?} with refcount {}", pfn, head.refcount());
        let nr = 1u64 << order;
        for i in 0..nr {
            let p = mem.page(pfn.add(i));
            p.flags.store(flags::PG_BUDDY, Ordering::SeqCst);
            p.mapping.store(0, Ordering::SeqCst);
        }
        head.order.store(0, Ordering::SeqCst);
        self.in_use[kind.idx()].fetch_sub(nr as i64, Ordering::SeqCst);
        if order == 0 {
            let mut pcp = self.pcp[cpu.idx()].lock();
            pcp.push(pfn);
            if pcp.len() > PCP_HIGH {
                let mut zone = self.zone.lock();
                for p in pcp.drain(..PCP_BATCH) {
                    Self::zone_free(&mut zone, p.0, 0);
                }
            }
        } else {
            Self::zone_free(&mut self.zone.lock(), pfn.0, order);
        }
    }

    /// Frames in use, by kind.
    pub fn in_use(&self) -> InUse {
        let g = |k: PageKind| self.in_use[k.idx()].load(Ordering::SeqCst);
        InUse {
            anon: g(PageKind::Anon),
            file: g(PageKind::File),
            page_table: g(PageKind::PageTable),
            kernel: g(PageKind::Kernel),
            hugetlb: g(PageKind::Hugetlb),
        }
    }

    /// Free frames (zone + per-CPU lists).
    pub fn nr_free(&self) -> usize {
        let pcp: usize = self.pcp.iter().map(|p| p.lock().len()).sum();
        self.zone.lock().nr_free + pcp
    }

    /// Frames managed, pfn 0 (reserved) included.
    pub fn nr_frames(&self) -> usize {
        self.nr_frames
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn buddy_split_merge_and_accounting() {
        let mem = MemMap::new(4096);
        let a = PageAllocator::new(4096, 2);
        let total = a.nr_free();
        assert_eq!(total, 4095);
        let big = a.alloc(&mem, CpuId(0), 9, PageKind::Hugetlb).unwrap();
        assert_eq!(big.0 % 512, 0, "order-9 block is naturally aligned");
        let small: Vec<_> = (0..100).map(|i| a.alloc(&mem, CpuId(i % 2), 0, PageKind::Anon).unwrap()).collect();
        assert_eq!(a.in_use().anon, 100);
        assert_eq!(a.in_use().hugetlb, 512);
        for p in &small {
            mem.page(*p).refcount.store(0, Ordering::SeqCst);
            a.free(&mem, CpuId(0), *p);
        }
        mem.page(big).refcount.store(0, Ordering::SeqCst);
        a.free(&mem, CpuId(1), big);
        assert_eq!(a.in_use().total(), 0);
        assert_eq!(a.nr_free(), total);
        // After draining, a fresh order-10 allocation is still possible.
        assert!(a.alloc(&mem, CpuId(0), 10, PageKind::Kernel).is_some());
    }

    #[test]
    fn exhaustion_returns_none() {
        let mem = MemMap::new(64);
        let a = PageAllocator::new(64, 1);
        let n = (0..100).filter_map(|_| a.alloc(&mem, CpuId(0), 0, PageKind::Anon)).count();
        assert_eq!(n, 63);
    }

    #[test]
    fn a_cpu_finds_the_frames_other_cpus_hold_on_their_lists() {
        // 64 frames, three CPUs: CPU0 and CPU1 each refill a PCP_BATCH list
        // (62 of the 63 frames), give them back (they stay on their lists),
        // and CPU2 still gets both an order-0 page and an order-2 block.
        let mem = MemMap::new(64);
        let a = PageAllocator::new(64, 3);
        for c in 0..2 {
            let p = a.alloc(&mem, CpuId(c), 0, PageKind::Anon).unwrap();
            mem.page(p).refcount.store(0, Ordering::SeqCst);
            a.free(&mem, CpuId(c), p);
        }
        assert_eq!(a.zone.lock().nr_free, 63 - 2 * PCP_BATCH);
        assert!(a.alloc(&mem, CpuId(2), 2, PageKind::Hugetlb).is_some(), "order-2 after draining");
        assert!(a.alloc(&mem, CpuId(2), 0, PageKind::PageTable).is_some());
        assert_eq!(a.nr_free(), 63 - 5);
        let n = (0..100).filter_map(|_| a.alloc(&mem, CpuId(0), 0, PageKind::Anon)).count();
        assert_eq!(n, 63 - 5, "every remaining frame is reachable from any CPU");
    }
}
