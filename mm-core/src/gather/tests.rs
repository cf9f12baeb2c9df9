//! Tests of the mmu_gather port against the checklist of docs/KERNEL-MAP.md, “The mmu_gather port checklist”.

use super::batch::{free_encoded_pages, MmuGatherBatch};
use super::*;
use crate::check::sanitizer::ViolationKind;
use crate::config::{Arch, Fix, KernelConfig};
use crate::hw::pte::Level;
use crate::mm::{Backing, Vma};
use crate::page::alloc::PageKind;
use crate::page::Folio;
use crate::stats::Stat;
use crate::sync::{Arc, Ordering};
use crate::types::{CpuId, Pfn};

fn kernel_with(n: usize, f: impl FnOnce(&mut KernelConfig)) -> Arc<Kernel> {
    let mut cfg = KernelConfig::default();
    f(&mut cfg);
    Kernel::new_sync(cfg, n)
}

fn kernel(n: usize) -> Arc<Kernel> {
    kernel_with(n, |_| {})
}

/// An anon folio of `order` holding one reference per page (as if every
/// page were mapped by one PTE), each page with mapcount 1.
fn mapped_folio(k: &Kernel, order: u32) -> Pfn {
    let pfn = k.alloc_pages(order, PageKind::Anon).expect("memory");
    let nr = 1u64 << order;
    if nr > 1 {
        k.mem.folio_ref_add(Folio(pfn), (nr - 1) as i32);
    }
    k.mem.add_rmap_ptes(pfn, nr);
    pfn
}

fn anon_vma(start: u64, end: u64, flags: u64) -> Vma {
    Vma { start, end, flags, backing: Backing::Anon }
}

fn is_free(k: &Kernel, pfn: Pfn) -> bool {
    k.mem.page(pfn).refcount() == 0
}

const VA: u64 = 0x40_0000;

// ---- checklist item 1: constants -------------------------------------------------------

#[test]
fn constants_are_the_kernels() {
    assert_eq!(MMU_GATHER_BUNDLE, 8);
    assert_eq!(MAX_GATHER_BATCH, 510);
    assert_eq!(MAX_GATHER_BATCH_COUNT, 19);
    assert_eq!(MAX_TABLE_BATCH, 509);
    assert_eq!(MAX_NR_FOLIOS_PER_FREE, 512);
    assert_eq!(KernelConfig::default().tlb_single_page_flush_ceiling, 33);
    assert_eq!(ENCODED_PAGE_BITS, 3);
    assert_eq!(ENCODED_PAGE_BIT_DELAY_RMAP, 1);
    assert_eq!(ENCODED_PAGE_BIT_NR_PAGES_NEXT, 2);
}

#[test]
fn gather_raises_and_finish_drops_flush_pending() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    assert!(mm.mm_tlb_flush_pending());
    assert_eq!(tlb.range(), (k.cfg.geometry.task_size(), 0));
    tlb.tlb_finish_mmu();
    assert!(!mm.mm_tlb_flush_pending());
    let tlb = MmuGather::tlb_gather_mmu_fullmm(&k, &mm);
    assert!(tlb.fullmm());
    assert_eq!(tlb.range(), (u64::MAX, u64::MAX));
    tlb.tlb_finish_mmu();
}

#[test]
#[should_panic(expected = "without tlb_finish_mmu")]
fn dropping_an_unfinished_gather_panics() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let _tlb = MmuGather::tlb_gather_mmu(&k, &mm);
}

// ---- checklist item 2: count slots, full gathers ---------------------------------------

#[test]
fn single_slot_left_means_full() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_remove_tlb_entries(VA, 7);
    k.inject.faults.fail_page_batch.store(1, Ordering::SeqCst);
    let pages: Vec<Pfn> = (0..7).map(|_| mapped_folio(&k, 0)).collect();
    for (i, p) in pages.iter().enumerate() {
        k.mem.remove_rmap_ptes(*p, 1);
        let full = tlb.__tlb_remove_page(*p, false);
        // The 7th entry leaves exactly one slot: full, since a fragment
        // (page + count) would not fit.
        assert_eq!(full, i == 6, "entry {i}");
    }
    assert_eq!(tlb.active_fill(), (7, MMU_GATHER_BUNDLE));
    assert_eq!(k.stats.get(Stat::GatherBatchAllocFail), 1);
    tlb.tlb_flush_mmu();
    assert!(pages.iter().all(|p| is_free(&k, *p)));
    tlb.tlb_finish_mmu();
    assert_eq!(k.alloc.in_use(), base);
}

#[test]
fn folio_fragment_keeps_its_count_slot() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_remove_tlb_entries(VA, 8);
    let singles: Vec<Pfn> = (0..6).map(|_| mapped_folio(&k, 0)).collect();
    for p in &singles {
        k.mem.remove_rmap_ptes(*p, 1);
        assert!(!tlb.__tlb_remove_page(*p, false));
    }
    // Two slots left; the next batch cannot be allocated.
    k.inject.faults.fail_page_batch.store(1, Ordering::SeqCst);
    let frag = mapped_folio(&k, 1);
    k.mem.remove_rmap_ptes(frag, 2);
    assert!(tlb.__tlb_remove_folio_pages(frag, 2, false), "full after the fragment");
    let e = tlb.active_entries();
    assert_eq!(e.len(), 8);
    assert_eq!(encoded_page_ptr(e[6]), frag);
    assert!(e[6].nr_pages_next());
    assert_eq!(encoded_nr_pages(e[7]), 2, "the count slot stayed with its page");
    tlb.tlb_finish_mmu();
    assert!(singles.iter().all(|p| is_free(&k, *p)));
    assert!(is_free(&k, frag));
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), 8);
    assert_eq!(k.alloc.in_use(), base);
}

#[test]
fn full_gather_flushes_never_drops() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let n = MMU_GATHER_BUNDLE + MAX_GATHER_BATCH * MAX_GATHER_BATCH_COUNT + 100;
    let ps = k.cfg.geometry.page_size();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    let mut pages = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let p = mapped_folio(&k, 0);
        k.mem.remove_rmap_ptes(p, 1);
        tlb.tlb_remove_tlb_entry(VA + i * ps);
        tlb.tlb_remove_page(p);
        assert!(tlb.batch_count() <= MAX_GATHER_BATCH_COUNT);
        pages.push(p);
    }
    assert_eq!(tlb.batch_count(), MAX_GATHER_BATCH_COUNT);
    assert!(k.stats.get(Stat::GatherFlushes) >= 1, "the full gather flushed by itself");
    tlb.tlb_finish_mmu();
    assert!(pages.iter().all(|p| is_free(&k, *p)));
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), n as u64);
    assert_eq!(k.stats.get(Stat::GatherBatchAlloc), MAX_GATHER_BATCH_COUNT as u64);
    assert_eq!(k.alloc.in_use(), base, "batch pages returned, data pages freed");
}

#[test]
fn chunked_free_never_separates_a_count_slot() {
    // A batch wider than one chunk, with a fragment straddling entry 512.
    for init_on_free in [false, true] {
        let k = kernel_with(1, |c| c.init_on_free = init_on_free);
        let base = k.alloc.in_use();
        let mut b = MmuGatherBatch::local();
        b.max = 1200;
        b.encoded_pages.reserve(1200);
        let mut pages = Vec::new();
        for _ in 0..511 {
            let p = mapped_folio(&k, 0);
            k.mem.remove_rmap_ptes(p, 1);
            b.push(encode_page(p, 0));
            pages.push(p);
        }
        for _ in 0..200 {
            let f = mapped_folio(&k, 2);
            k.mem.remove_rmap_ptes(f, 4);
            b.push(encode_page(f, ENCODED_PAGE_BIT_NR_PAGES_NEXT));
            b.push(encode_nr_pages(4));
            pages.push(f);
        }
        free_encoded_pages(&k, &mut b);
        assert_eq!(b.nr, 0);
        assert!(pages.iter().all(|p| is_free(&k, *p)));
        assert_eq!(k.stats.get(Stat::GatherPagesFreed), 511 + 800);
        assert_eq!(k.alloc.in_use(), base);
    }
}

/// A `SyncSmp` that counts `cond_resched` calls: the reschedule points of
/// `__tlb_batch_free_encoded_pages`, one after each freed chunk.
struct ReschedCountingSmp {
    inner: crate::smp::SyncSmp,
    resched: Arc<std::sync::atomic::AtomicU64>,
}

impl crate::smp::Smp for ReschedCountingSmp {
    fn nr_cpus(&self) -> usize {
        self.inner.nr_cpus()
    }
    fn this_cpu(&self) -> CpuId {
        self.inner.this_cpu()
    }
    fn smp_call_function_many(&self, mask: &crate::types::CpuMask, func: &(dyn Fn(CpuId) + Sync)) {
        self.inner.smp_call_function_many(mask, func)
    }
    fn local_irq_save(&self) -> crate::smp::IrqFlags {
        self.inner.local_irq_save()
    }
    fn local_irq_restore(&self, flags: crate::smp::IrqFlags) {
        self.inner.local_irq_restore(flags)
    }
    fn irqs_disabled(&self) -> bool {
        self.inner.irqs_disabled()
    }
    fn cond_resched(&self) {
        self.resched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn call_interrupts(&self, cpu: CpuId) -> u64 {
        self.inner.call_interrupts(cpu)
    }
    fn ipis_sent(&self, cpu: CpuId) -> u64 {
        self.inner.ipis_sent(cpu)
    }
    fn as_sync(&self) -> Option<&crate::smp::SyncSmp> {
        Some(&self.inner)
    }
    fn bind_current_thread(&self, cpu: CpuId) {
        self.inner.bind_current_thread(cpu)
    }
}

/// Free one batch of `singles` order-0 entries, then `frags` 4-page
/// fragments, then `tail` more order-0 entries; returns the chunks freed
/// (`cond_resched` calls).
fn free_chunks(init_on_free: bool, singles: usize, frags: usize, tail: usize) -> u64 {
    let cfg = KernelConfig { nr_cpus: 1, init_on_free, ..KernelConfig::default() };
    let resched = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let smp = ReschedCountingSmp { inner: crate::smp::SyncSmp::new(1), resched: resched.clone() };
    let k = Kernel::new(cfg, Box::new(smp)).unwrap();
    let base = k.alloc.in_use();
    let mut b = MmuGatherBatch::local();
    b.max = singles + 2 * frags + tail;
    let single = |k: &Kernel, b: &mut MmuGatherBatch| {
        let p = mapped_folio(k, 0);
        k.mem.remove_rmap_ptes(p, 1);
        b.push(encode_page(p, 0));
    };
    (0..singles).for_each(|_| single(&k, &mut b));
    for _ in 0..frags {
        let f = mapped_folio(&k, 2);
        k.mem.remove_rmap_ptes(f, 4);
        b.push(encode_page(f, ENCODED_PAGE_BIT_NR_PAGES_NEXT));
        b.push(encode_nr_pages(4));
    }
    (0..tail).for_each(|_| single(&k, &mut b));
    free_encoded_pages(&k, &mut b);
    assert_eq!(k.alloc.in_use(), base, "everything freed");
    resched.load(Ordering::SeqCst)
}

/// `__tlb_batch_free_encoded_pages` (mm/mmu_gather.c, v6.12): a chunk is at
/// most MAX_NR_FOLIOS_PER_FREE (512) entries, one more when the last is a
/// fragment's page (its count slot comes along); with init_on_free at most
/// 512 *pages* (stopping once they are reached); `cond_resched` after each.
#[test]
fn free_chunks_are_the_kernels() {
    // 512 + 512 + 1 entries.
    assert_eq!(free_chunks(false, 1025, 0, 0), 3);
    // 511 + fragment (513 entries, the count slot kept), then 511.
    assert_eq!(free_chunks(false, 511, 1, 511), 2);
    // init_on_free: 512 + 512 + 1 pages.
    assert_eq!(free_chunks(true, 1025, 0, 0), 3);
    // init_on_free: 128 fragments make 512 pages, then 72 (288 pages).
    assert_eq!(free_chunks(true, 0, 200, 0), 2);
}

#[test]
fn large_gather_with_fragments_frees_everything() {
    let k = kernel_with(1, |c| c.init_on_free = true);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    let mut folios = Vec::new();
    for i in 0..600u64 {
        let f = mapped_folio(&k, 2);
        k.mem.remove_rmap_ptes(f, 4);
        tlb.tlb_remove_tlb_entries(VA + i * 4 * k.cfg.geometry.page_size(), 4);
        if tlb.__tlb_remove_folio_pages(f, 4, false) {
            tlb.tlb_flush_mmu();
        }
        folios.push(f);
    }
    assert!(tlb.nr_gathered() > 0);
    tlb.tlb_finish_mmu();
    assert!(folios.iter().all(|f| is_free(&k, *f)));
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), 2400);
    assert_eq!(k.alloc.in_use(), base);
}

#[test]
fn folio_pages_batching_off_takes_one_slot_per_page() {
    for on in [true, false] {
        let k = kernel_with(1, |c| c.fixes.set(Fix::FolioPagesBatching, on));
        let mm = k.mm_alloc();
        let base = k.alloc.in_use();
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        let f = mapped_folio(&k, 2);
        k.mem.remove_rmap_ptes(f, 4);
        tlb.tlb_remove_tlb_entries(VA, 4);
        assert!(!tlb.__tlb_remove_folio_pages(f, 4, false));
        let e = tlb.active_entries().to_vec();
        if on {
            assert_eq!(e, vec![encode_page(f, ENCODED_PAGE_BIT_NR_PAGES_NEXT), encode_nr_pages(4)]);
        } else {
            assert_eq!(e, (0..4).map(|i| encode_page(f.add(i), 0)).collect::<Vec<_>>());
        }
        tlb.tlb_finish_mmu();
        assert!(is_free(&k, f));
        assert_eq!(k.alloc.in_use(), base);
    }
}

#[test]
fn folio_pages_batching_off_flushes_mid_fragment_instead_of_dropping() {
    let k = kernel_with(1, |c| c.fixes.set(Fix::FolioPagesBatching, false));
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    // No batch can be allocated: only `local`, full at 8 pages (the
    // pre-d7f861b9c43a nr == max rule).
    k.inject.faults.fail_page_batch.store(100, Ordering::SeqCst);
    let f = mapped_folio(&k, 4); // 16 pages
    tlb.tlb_remove_tlb_entries(VA, 16);
    let full = tlb.__tlb_remove_folio_pages(f, 16, true);
    assert!(full, "the 16th page filled local again: the caller flushes");
    assert!(tlb.delayed_rmap());
    assert_eq!(tlb.nr_gathered(), 8);
    assert_eq!(k.stats.get(Stat::GatherFlushes), 1, "flushed once in the middle, after page 8");
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), 8);
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_rmaps(&anon_vma(VA, VA + 0x10000, 0));
    assert_eq!(k.mem.folio_mapcount(Folio(f)), 0);
    tlb.tlb_finish_mmu();
    assert!(is_free(&k, f));
    assert_eq!(k.alloc.in_use(), base);
    k.inject.faults.fail_page_batch.store(0, Ordering::SeqCst);
}

/// How many single pages a gather takes before `__tlb_remove_page` says
/// "full", and after how many the first page batch was allocated: with the
/// fix `local` is full at 7 (MMU_GATHER_BUNDLE - 1) and a page batch at
/// 509; pre-d7f861b9c43a at 8 and 510 (nr == max).
#[test]
fn folio_pages_batching_off_fills_each_batch_to_max() {
    for (on, first_batch_after, total) in [
        (true, MMU_GATHER_BUNDLE - 1, MMU_GATHER_BUNDLE - 1 + MAX_GATHER_BATCH_COUNT * (MAX_GATHER_BATCH - 1)),
        (false, MMU_GATHER_BUNDLE, MMU_GATHER_BUNDLE + MAX_GATHER_BATCH_COUNT * MAX_GATHER_BATCH),
    ] {
        let k = kernel_with(1, |c| c.fixes.set(Fix::FolioPagesBatching, on));
        let mm = k.mm_alloc();
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_remove_tlb_entry(VA);
        let mut n = 0;
        let mut batch_at = None;
        loop {
            let p = mapped_folio(&k, 0);
            k.mem.remove_rmap_ptes(p, 1);
            n += 1;
            let full = tlb.__tlb_remove_page(p, false);
            if batch_at.is_none() && tlb.batch_count() == 1 {
                batch_at = Some(n);
            }
            if full {
                break;
            }
        }
        assert_eq!(batch_at, Some(first_batch_after), "fix {on}");
        assert_eq!(n, total, "fix {on}");
        assert_eq!(tlb.nr_gathered(), total);
        assert_eq!(tlb.batch_count(), MAX_GATHER_BATCH_COUNT);
        tlb.tlb_flush_mmu();
        assert_eq!(k.stats.get(Stat::GatherPagesFreed), total as u64);
        tlb.tlb_finish_mmu();
    }
}

// ---- checklist item 3: delayed rmaps ---------------------------------------------------

#[test]
fn delayed_rmaps_stay_in_local_and_active() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let vma = anon_vma(VA, VA + (1 << 30), 0);
    let ps = k.cfg.geometry.page_size();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_start_vma(&vma);
    let mut pages = Vec::new();
    let mut i = 0u64;
    loop {
        let p = mapped_folio(&k, 0);
        tlb.tlb_remove_tlb_entry(VA + i * ps);
        i += 1;
        pages.push(p);
        assert!(tlb.tlb_delay_rmap());
        if tlb.__tlb_remove_page(p, true) {
            break;
        }
        assert!(pages.len() < 2 * MAX_GATHER_BATCH, "never refused");
    }
    // local filled, then one batch; a second would hold delayed rmaps
    // outside local/active, so tlb_next_batch refused.
    assert_eq!(tlb.batch_count(), 1);
    assert!(!tlb.active_is_local());
    assert_eq!(pages.len(), (MMU_GATHER_BUNDLE - 1) + (MAX_GATHER_BATCH - 1));
    assert!(!tlb.tlb_next_batch());
    assert!(pages.iter().all(|p| k.mem.page(*p).mapcount() == 1), "rmap still there before the flush");
    // zap_pte_range's force-flush sequence, under the PTL.
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_rmaps(&vma);
    assert!(!tlb.delayed_rmap());
    assert!(pages.iter().all(|p| k.mem.page(*p).mapcount() == 0));
    assert_eq!(k.stats.get(Stat::DelayedRmaps), pages.len() as u64);
    assert!(pages.iter().all(|p| !is_free(&k, *p)), "still held until the free phase");
    tlb.tlb_flush_mmu();
    assert!(pages.iter().all(|p| is_free(&k, *p)));
    tlb.tlb_end_vma(&vma);
    tlb.tlb_finish_mmu();
    assert_eq!(k.alloc.in_use(), base);
}

#[test]
fn delay_rmap_reverted_is_never_delayed() {
    let k = kernel_with(1, |c| c.fixes.set(Fix::DelayRmap, false));
    let mm = k.mm_alloc();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    assert!(!tlb.tlb_delay_rmap());
    assert!(!tlb.delayed_rmap());
    tlb.tlb_finish_mmu();
}

#[test]
fn delayed_rmap_fragment_removes_all_its_pages() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let vma = anon_vma(VA, VA + 0x100000, 0);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    let f = mapped_folio(&k, 3);
    tlb.tlb_remove_tlb_entries(VA, 8);
    assert!(!tlb.__tlb_remove_folio_pages(f, 8, true));
    assert!(tlb.delayed_rmap());
    assert_eq!(k.mem.folio_mapcount(Folio(f)), 8);
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_rmaps(&vma);
    assert_eq!(k.mem.folio_mapcount(Folio(f)), 0);
    assert_eq!(k.stats.get(Stat::DelayedRmaps), 1);
    tlb.tlb_finish_mmu();
    assert!(is_free(&k, f));
}

/// `tlb_flush_rmap_batch` (mm/mmu_gather.c, v6.12) on a batch mixing
/// delayed and non-delayed entries, single pages and fragments: only the
/// delayed entries lose their rmaps, a delayed fragment all of its pages,
/// and a non-delayed fragment's count slot is never taken for an entry.
#[test]
fn flush_rmaps_walks_a_mixed_batch() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let vma = anon_vma(VA, VA + 0x100000, 0);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_remove_tlb_entries(VA, 16);
    // Non-delayed: zap removed the rmap before gathering.
    let plain_frag = mapped_folio(&k, 2);
    k.mem.remove_rmap_ptes(plain_frag, 4);
    let delayed = mapped_folio(&k, 0);
    let plain = mapped_folio(&k, 0);
    k.mem.remove_rmap_ptes(plain, 1);
    let delayed_frag = mapped_folio(&k, 1);
    assert!(tlb.tlb_delay_rmap());
    assert!(!tlb.__tlb_remove_folio_pages(plain_frag, 4, false));
    assert!(!tlb.__tlb_remove_page(delayed, true));
    assert!(!tlb.__tlb_remove_page(plain, false));
    assert!(!tlb.__tlb_remove_folio_pages(delayed_frag, 2, true));
    assert!(tlb.active_is_local());
    assert_eq!(tlb.active_fill(), (6, MMU_GATHER_BUNDLE), "fragment, page, page, fragment");
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_rmaps(&vma);
    assert_eq!(k.stats.get(Stat::DelayedRmaps), 2, "one per delayed entry");
    assert_eq!(k.mem.folio_mapcount(Folio(delayed)), 0);
    assert_eq!(k.mem.folio_mapcount(Folio(delayed_frag)), 0, "both pages of the fragment");
    assert_eq!(k.mem.folio_mapcount(Folio(plain_frag)), 0);
    assert_eq!(k.mem.folio_mapcount(Folio(plain)), 0);
    assert!(!tlb.delayed_rmap());
    tlb.tlb_finish_mmu();
    for f in [plain_frag, delayed, plain, delayed_frag] {
        assert!(is_free(&k, f));
    }
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), 8);
    assert_eq!(k.alloc.in_use(), base);
}

// ---- checklist item 5: table freeing ---------------------------------------------------

#[test]
fn table_batch_alloc_failure_takes_the_sync_one_path() {
    let k = kernel(2);
    let mm = k.mm_alloc();
    let table = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    k.inject.faults.fail_table_batch.store(1, Ordering::SeqCst);
    tlb.pte_free_tlb(table, VA);
    assert_eq!(k.stats.get(Stat::TableBatchAllocFail), 1);
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 1);
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 1, "one empty IPI to the other CPU");
    assert!(is_free(&k, table), "freed immediately after the sync");
    assert_eq!(k.stats.get(Stat::TablesFreed), 1);
    // The table was invalidated before the free.
    assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1);
    assert!(!tlb.freed_tables());
    tlb.tlb_finish_mmu();
    assert_eq!(k.rcu.pending(), 0);
}

/// The ablation knob: without the sync the fallback frees right after the
/// invalidation, with no IPI.
#[test]
fn table_batch_alloc_failure_without_sync_one_frees_at_once() {
    let k = kernel_with(2, |c| c.table_free_one_sync = false);
    let mm = k.mm_alloc();
    let table = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    k.inject.faults.fail_table_batch.store(1, Ordering::SeqCst);
    tlb.pte_free_tlb(table, VA);
    assert_eq!(k.stats.get(Stat::TableBatchAllocFail), 1);
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 0);
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 0, "no IPI");
    assert!(is_free(&k, table));
    tlb.tlb_finish_mmu();
}

#[test]
fn tables_wait_for_flush_and_grace_period() {
    let k = kernel(2);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let t1 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let t2 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.pte_free_tlb(t1, VA);
    tlb.pmd_free_tlb(t2, VA);
    assert!(tlb.freed_tables());
    assert_eq!(tlb.cleared_levels(), (false, true, true, false));
    assert_eq!(tlb.nr_tables_queued(), 2);
    assert_eq!(k.stats.get(Stat::TablesQueued), 2);
    tlb.tlb_finish_mmu();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 0);
    assert!(!is_free(&k, t1) || k.rcu.pending() == 0);
    k.rcu_barrier();
    assert!(is_free(&k, t1) && is_free(&k, t2));
    assert_eq!(k.alloc.in_use().page_table, base.page_table);
    assert_eq!(k.alloc.in_use().kernel, base.kernel, "table batch page returned");
}

#[test]
fn full_table_batch_is_flushed_at_once() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let tables: Vec<Pfn> =
        (0..MAX_TABLE_BATCH).map(|_| crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn()).collect();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    for (i, t) in tables.iter().enumerate() {
        tlb.pte_free_tlb(*t, VA + i as u64 * k.cfg.geometry.pmd_size());
    }
    // The full batch was invalidated and handed to RCU at once.
    assert_eq!(tlb.nr_tables_queued(), 0);
    assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1);
    assert_eq!(k.rcu.pending(), 1);
    assert!(tables.iter().all(|t| !is_free(&k, *t)), "the grace period has not ended");
    tlb.tlb_finish_mmu();
    k.rcu_barrier();
    assert!(tables.iter().all(|t| is_free(&k, *t)));
    assert_eq!(k.stats.get(Stat::RcuCallbacks), 1);
}

/// `tlb_remove_table_rcu` → `__tlb_remove_table_free`: the batch page (where
/// the `rcu_head` lives) is freed in the callback, after the tables — not
/// when the batch is handed to `call_rcu`.
#[test]
fn table_batch_page_is_freed_in_its_rcu_callback() {
    let k = kernel(2);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let t1 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let t2 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.pte_free_tlb(t1, VA);
    tlb.pte_free_tlb(t2, VA + k.cfg.geometry.pmd_size());
    assert_eq!(k.alloc.in_use().kernel, base.kernel + 1, "the table batch page");
    tlb.tlb_finish_mmu();
    assert_eq!(k.rcu.pending(), 1, "one callback for the batch");
    assert_eq!(k.alloc.in_use().kernel, base.kernel + 1, "the batch page waits for its callback");
    assert!(!is_free(&k, t1) && !is_free(&k, t2));
    assert_eq!(k.stats.get(Stat::TablesFreed), 0);
    k.rcu_barrier();
    assert_eq!(k.stats.get(Stat::RcuCallbacks), 1);
    assert_eq!(k.stats.get(Stat::TablesFreed), 2);
    assert!(is_free(&k, t1) && is_free(&k, t2));
    assert_eq!(k.alloc.in_use().kernel, base.kernel, "freed by tlb_remove_table_rcu");
    assert_eq!(k.alloc.in_use().page_table, base.page_table);
}

/// Without MMU_GATHER_TABLE_FREE (x86 without PARAVIRT in v6.12:
/// `paravirt_tlb_remove_table` is `tlb_remove_page`) a table is a page of
/// the page batch: no table batch, no allocation that could fail, freed
/// after the TLB flush together with the pages, no RCU.
#[test]
fn without_table_free_tables_go_through_the_page_batch() {
    let k = kernel_with(2, |c| c.rcu_table_free = false);
    let mm = k.mm_alloc();
    let base = k.alloc.in_use();
    let data = mapped_folio(&k, 0);
    let t1 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let t2 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    k.inject.faults.fail_table_batch.store(1, Ordering::SeqCst);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_remove_tlb_entry(VA);
    k.mem.remove_rmap_ptes(data, 1);
    assert!(!tlb.__tlb_remove_page(data, false));
    tlb.pte_free_tlb(t1, VA);
    tlb.pmd_free_tlb(t2, VA);
    assert_eq!(tlb.nr_tables_queued(), 0, "no table batch");
    assert_eq!(tlb.nr_gathered(), 3, "one data page and two tables in the page batch");
    assert_eq!(k.stats.get(Stat::TablesQueued), 2);
    assert_eq!(k.stats.get(Stat::TableBatchAllocFail), 0);
    assert_eq!(k.inject.faults.fail_table_batch.load(Ordering::SeqCst), 1, "no table batch was allocated");
    assert_eq!(k.alloc.in_use().kernel, base.kernel, "the local batch has no page");
    tlb.tlb_flush_mmu_tlbonly();
    assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1);
    assert!(!is_free(&k, t1) && !is_free(&k, t2), "still held by the batch after the flush");
    tlb.tlb_finish_mmu();
    assert!(is_free(&k, t1) && is_free(&k, t2) && is_free(&k, data));
    assert_eq!(k.stats.get(Stat::TablesFreed), 2);
    assert_eq!(k.stats.get(Stat::GatherPagesFreed), 3);
    assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1, "no second flush");
    assert_eq!(k.rcu.pending(), 0);
    assert_eq!(k.stats.get(Stat::RcuCallbacks), 0);
    // No sync IPI without MMU_GATHER_RCU_TABLE_FREE (a no-op, as in the kernel).
    tlb_remove_table_sync_one(&k);
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 0);
    k.inject.faults.fail_table_batch.store(0, Ordering::SeqCst);
}

// ---- checklist item 6: flush kinds -----------------------------------------------------

/// Kernel on `arch`, CPU 0 running `mm`, TLB holding VA and a far VA.
fn tlb_setup(arch: Arch) -> (Arc<Kernel>, Arc<crate::mm::MmStruct>, u64) {
    tlb_setup_with(arch, |_| {})
}

fn cached(k: &Kernel, mm: &crate::mm::MmStruct, va: u64) -> bool {
    k.hw.tlb(CpuId(0)).lookup(mm.id, va).is_some()
}

#[test]
fn ranged_flush_x86_and_arm64() {
    for arch in [Arch::X86, Arch::Arm64] {
        let (k, mm, far) = tlb_setup(arch);
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_remove_tlb_entry(VA);
        assert_eq!(tlb.range(), (VA, VA + 4096));
        assert_eq!(tlb.tlb_get_unmap_size(), 4096);
        tlb.tlb_finish_mmu();
        assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1, "{arch:?}");
        assert_eq!(k.stats.get(Stat::TlbFlushFull), 0, "{arch:?}");
        assert!(!cached(&k, &mm, VA), "{arch:?}: the gathered page is gone");
        assert!(cached(&k, &mm, far), "{arch:?}: outside the range survives");
        if arch == Arch::X86 {
            assert_eq!(k.stats.get(Stat::NrTlbLocalFlushOne), 1);
        } else {
            assert_eq!(k.stats.get(Stat::Arm64BroadcastTlbi), 1);
        }
    }
}

#[test]
fn fullmm_and_need_flush_all_flush_the_whole_mm() {
    // x86 and MMU_GATHER_NO_RANGE flush the whole mm for both.  arm64's
    // own tlb_flush (asm/tlb.h) looks at neither need_flush_all (only x86's
    // page-table code sets it: a ranged flush of what was gathered) nor, for
    // fullmm, at the range: without freed tables it flushes nothing,
    // relying on the ASID allocator never reusing the ASID before a
    // rollover has invalidated every TLB.
    for arch in Arch::ALL {
        for mode in ["fullmm", "need_flush_all"] {
            let (k, mm, far) = tlb_setup(arch);
            let mut tlb = if mode == "fullmm" {
                MmuGather::tlb_gather_mmu_fullmm(&k, &mm)
            } else {
                let mut t = MmuGather::tlb_gather_mmu(&k, &mm);
                t.set_need_flush_all();
                t
            };
            tlb.tlb_remove_tlb_entry(VA);
            tlb.tlb_finish_mmu();
            let (full, ranged, va_gone, far_gone) = match (arch, mode) {
                (Arch::Arm64, "fullmm") => (0, 0, false, false),
                (Arch::Arm64, _) => (0, 1, true, false),
                _ => (1, 0, true, true),
            };
            assert_eq!(k.stats.get(Stat::TlbFlushFull), full, "{arch:?} {mode}");
            assert_eq!(k.stats.get(Stat::TlbFlushRanged), ranged, "{arch:?} {mode}");
            assert_eq!((!cached(&k, &mm, VA), !cached(&k, &mm, far)), (va_gone, far_gone), "{arch:?} {mode}");
        }
    }
}

#[test]
fn arm64_fullmm_flushes_the_asid_only_when_tables_were_freed() {
    let (k, mm, far) = tlb_setup(Arch::Arm64);
    let table = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let mut tlb = MmuGather::tlb_gather_mmu_fullmm(&k, &mm);
    tlb.tlb_remove_tlb_entry(VA);
    // A batch-full flush in the middle of exit_mmap: no TLBI at all.
    tlb.tlb_flush_mmu();
    assert_eq!(k.stats.get(Stat::Arm64BroadcastTlbi), 0);
    assert!(cached(&k, &mm, VA) && cached(&k, &mm, far));
    // free_pgtables: now the walk caches must go, and flush_tlb_mm takes
    // everything of the ASID with them.
    tlb.pte_free_tlb(table, VA);
    tlb.tlb_finish_mmu();
    assert_eq!(k.stats.get(Stat::TlbFlushFull), 1);
    assert_eq!(k.stats.get(Stat::Arm64TlbiAside1is), 1);
    assert_eq!(k.stats.get(Stat::Arm64BroadcastTlbi), 1);
    assert!(!cached(&k, &mm, VA) && !cached(&k, &mm, far));
}

#[test]
fn no_range_arch_flushes_the_whole_mm() {
    let (k, mm, far) = tlb_setup(Arch::GenericNoRange);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_remove_tlb_entry(VA);
    tlb.tlb_finish_mmu();
    assert_eq!(k.stats.get(Stat::TlbFlushFull), 1);
    assert_eq!(k.stats.get(Stat::NoRangeFlushTlbMm), 1);
    assert_eq!(k.stats.get(Stat::NoRangeCpuFlush), 1, "one CPU runs the mm");
    assert!(!cached(&k, &mm, VA) && !cached(&k, &mm, far));
}

#[test]
fn empty_gather_flushes_nothing() {
    for arch in Arch::ALL {
        let (k, mm, far) = tlb_setup(arch);
        let vma = anon_vma(VA, VA + 0x1000, 0);
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_start_vma(&vma);
        tlb.tlb_end_vma(&vma);
        tlb.tlb_finish_mmu();
        assert_eq!(k.stats.get(Stat::TlbFlushFull) + k.stats.get(Stat::TlbFlushRanged), 0);
        assert_eq!(k.stats.get(Stat::GatherFlushes), 0);
        assert!(cached(&k, &mm, VA) && cached(&k, &mm, far));
    }
}

#[test]
fn end_vma_flushes_and_unmap_shift_follows_levels() {
    let (k, mm, far) = tlb_setup(Arch::X86);
    let g = k.cfg.geometry;
    let vma = anon_vma(VA, VA + 0x1000, crate::mm::vm::VM_EXEC | crate::mm::vm::VM_PFNMAP);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    tlb.tlb_start_vma(&vma);
    assert_eq!(tlb.vma_flags(), (true, false, true));
    tlb.tlb_remove_pmd_tlb_entry(VA);
    assert_eq!(tlb.tlb_get_unmap_shift(), g.level_shift(crate::hw::pte::Level::Pmd));
    tlb.tlb_flush_pud_range(VA, 4096);
    assert_eq!(tlb.tlb_get_unmap_shift(), g.level_shift(crate::hw::pte::Level::Pmd));
    tlb.tlb_remove_tlb_entry(VA);
    assert_eq!(tlb.tlb_get_unmap_shift(), g.page_shift);
    tlb.tlb_end_vma(&vma);
    assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1, "flushed at the VMA boundary");
    assert_eq!(tlb.range(), (g.task_size(), 0), "range reset");
    assert_eq!(tlb.vma_flags(), (true, false, true), "vma bits survive the reset");
    tlb.tlb_finish_mmu();
    // 2 MiB range > 33-page ceiling: x86 made it a full flush.
    assert!(!cached(&k, &mm, VA) && !cached(&k, &mm, far));
}

/// `__tlb_adjust_range` and the `tlb_flush_*_range` / `tlb_remove_*`
/// helpers (asm-generic/tlb.h, v6.12): the range widens to cover every
/// call, each records its level, and `tlb_get_unmap_shift` is the lowest
/// cleared level's (P4D folded: PGDIR_SHIFT).
#[test]
fn range_and_stride_follow_each_level() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let g = k.cfg.geometry;
    let ps = g.page_size();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    assert_eq!(tlb.tlb_get_unmap_shift(), g.page_shift, "nothing cleared: PAGE_SHIFT");
    tlb.tlb_remove_tlb_entries(VA + 4 * ps, 3);
    assert_eq!(tlb.range(), (VA + 4 * ps, VA + 7 * ps), "PAGE_SIZE * nr");
    tlb.tlb_remove_tlb_entry(VA + ps);
    assert_eq!(tlb.range(), (VA + ps, VA + 7 * ps), "start moves down, end stays");
    assert_eq!(tlb.cleared_levels(), (true, false, false, false));
    tlb.tlb_flush_mmu_tlbonly();
    assert_eq!(tlb.range(), (g.task_size(), 0));
    assert_eq!(tlb.cleared_levels(), (false, false, false, false));
    tlb.tlb_remove_pmd_tlb_entry(VA);
    assert_eq!(tlb.range(), (VA, VA + g.pmd_size()), "HPAGE_PMD_SIZE");
    assert_eq!(tlb.tlb_get_unmap_shift(), g.level_shift(Level::Pmd));
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_pud_range(VA, ps);
    assert_eq!(tlb.cleared_levels(), (false, false, true, false));
    assert_eq!(tlb.tlb_get_unmap_shift(), g.level_shift(Level::Pud));
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_p4d_range(VA, ps);
    assert_eq!(tlb.cleared_levels(), (false, false, false, true));
    assert_eq!(tlb.tlb_get_unmap_shift(), g.level_shift(Level::Pgd));
    assert_eq!(tlb.tlb_get_unmap_size(), 1 << g.level_shift(Level::Pgd));
    tlb.tlb_finish_mmu();
}

/// `gather_flushes` (the emulator's counter of `tlb_flush_mmu` calls that
/// had work) counts a call whose TLB flush already ran (zap's force-flush:
/// `tlb_flush_mmu_tlbonly` under the PTL, the free after it) when pages or
/// a table batch are still pending, and not an empty one.
#[test]
fn gather_flushes_counts_the_free_after_a_tlbonly_flush() {
    let k = kernel(1);
    let mm = k.mm_alloc();
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    let p = mapped_folio(&k, 0);
    k.mem.remove_rmap_ptes(p, 1);
    tlb.tlb_remove_tlb_entry(VA);
    assert!(!tlb.__tlb_remove_page(p, false));
    tlb.tlb_flush_mmu_tlbonly();
    tlb.tlb_flush_mmu();
    assert!(is_free(&k, p));
    assert_eq!(k.stats.get(Stat::GatherFlushes), 1, "pages were pending");
    let table = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    tlb.pte_free_tlb(table, VA);
    tlb.tlb_flush_mmu_tlbonly();
    assert_eq!(tlb.nr_tables_queued(), 1);
    tlb.tlb_flush_mmu();
    assert_eq!(k.stats.get(Stat::GatherFlushes), 2, "a table batch was pending");
    tlb.tlb_flush_mmu();
    assert_eq!(k.stats.get(Stat::GatherFlushes), 2, "nothing pending: not counted");
    tlb.tlb_finish_mmu();
    k.rcu_barrier();
    assert!(is_free(&k, table));
}

// ---- checklist item 7: nested gathers ----------------------------------------------------

#[test]
fn nested_gathers_force_a_full_flush_with_freed_tables() {
    for fix in [true, false] {
        let (k, mm, far) = tlb_setup_with(Arch::X86, |c| c.fixes.set(Fix::NestedFlushDetect, fix));
        let mut a = MmuGather::tlb_gather_mmu(&k, &mm);
        // b (e.g. a parallel MADV_DONTNEED) is still pending when a finishes.
        let b = MmuGather::tlb_gather_mmu(&k, &mm);
        a.tlb_remove_tlb_entry(VA);
        a.tlb_finish_mmu();
        if fix {
            assert_eq!(k.stats.get(Stat::NestedFlushForced), 1);
            assert_eq!(k.stats.get(Stat::TlbFlushFull), 1, "forced full flush");
            assert_eq!(k.stats.get(Stat::TlbFlushRanged), 0);
            assert!(!cached(&k, &mm, far), "everything of the mm flushed");
        } else {
            assert_eq!(k.stats.get(Stat::NestedFlushForced), 0);
            assert_eq!(k.stats.get(Stat::TlbFlushFull), 0);
            assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1);
            assert!(cached(&k, &mm, far), "only its own range flushed");
        }
        b.tlb_finish_mmu();
        assert!(!mm.mm_tlb_flush_pending());
    }
}

fn tlb_setup_with(arch: Arch, f: impl FnOnce(&mut KernelConfig)) -> (Arc<Kernel>, Arc<crate::mm::MmStruct>, u64) {
    let k = kernel_with(1, |c| {
        c.arch = arch;
        f(c)
    });
    let mm = k.mm_alloc();
    crate::tlb::switch_mm(&k, &mm);
    let far = VA + 0x1000_0000;
    {
        let mut t = k.hw.tlb(CpuId(0));
        t.insert(mm.id, VA, Pfn(100), true, true, false, 0);
        t.insert(mm.id, far, Pfn(101), true, true, false, 0);
    }
    (k, mm, far)
}

#[test]
fn nested_forced_flush_sets_freed_tables_on_x86() {
    // freed_tables makes x86 interrupt lazy CPUs too: with CPU 1 lazy on the
    // mm, the forced flush reaches it (it switches to init_mm).
    let k = kernel(2);
    let mm = k.mm_alloc();
    crate::tlb::switch_mm(&k, &mm);
    mm.cpumask.set(CpuId(1));
    k.cpus[1].loaded_mm.store(mm.id, Ordering::SeqCst);
    k.cpus[1].is_lazy.store(true, Ordering::SeqCst);
    let a = MmuGather::tlb_gather_mmu(&k, &mm);
    let b = MmuGather::tlb_gather_mmu(&k, &mm);
    a.tlb_finish_mmu();
    assert_eq!(k.stats.get(Stat::LazySwitchToInitMm), 1);
    b.tlb_finish_mmu();
}

// ---- checklist item 8: hugetlb unsharing -------------------------------------------------

#[test]
fn unshare_syncs_once_and_only_for_the_last_sharer() {
    let k = kernel(2);
    let mm = k.mm_alloc();
    let g = k.cfg.geometry;
    let vma = anon_vma(0, g.pud_size() * 4, crate::mm::vm::VM_HUGETLB);
    let pt1 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let pt2 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    let pt3 = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
    k.mem.pt_share_count(k.mem.virt_to_ptdesc(pt1)).store(2, Ordering::SeqCst);
    k.mem.pt_share_count(k.mem.virt_to_ptdesc(pt2)).store(1, Ordering::SeqCst);
    k.mem.pt_share_count(k.mem.virt_to_ptdesc(pt3)).store(1, Ordering::SeqCst);

    let mut tlb = MmuGather::tlb_gather_mmu_vma(&k, &mm, &vma);
    assert_eq!(tlb.page_size(), g.pmd_size());
    assert_eq!(tlb.vma_flags(), (false, true, false));
    // Not the last sharer: flush, but no sync IPI.
    tlb.tlb_unshare_pmd_ptdesc(pt1, g.pud_size() + 0x5000);
    assert_eq!(tlb.range(), (g.pud_size(), 2 * g.pud_size()));
    assert!(tlb.unshared_tables() && !tlb.fully_unshared_tables());
    tlb.tlb_flush_unshared_tables();
    assert_eq!(k.stats.get(Stat::TlbFlushRanged), 1);
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 0);
    assert!(!tlb.unshared_tables());
    // Two tables become exclusive in one gather: one sync.
    tlb.tlb_unshare_pmd_ptdesc(pt2, 2 * g.pud_size());
    tlb.tlb_unshare_pmd_ptdesc(pt3, 3 * g.pud_size());
    assert!(tlb.fully_unshared_tables());
    tlb.tlb_flush_unshared_tables();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 1);
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 1);
    assert!(!tlb.fully_unshared_tables());
    assert_eq!(k.mem.pt_share_count(k.mem.virt_to_ptdesc(pt2)).load(Ordering::SeqCst), 0);
    tlb.tlb_finish_mmu();
    assert_eq!(k.stats.get(Stat::TlbRemoveTableSyncOne), 1);
}

const FULLY_UNSHARED: ViolationKind =
    ViolationKind::DebugVmWarning("VM_WARN_ON_ONCE(tlb->fully_unshared_tables) in tlb_finish_mmu");
const UNSHARE_UNSHARED: ViolationKind =
    ViolationKind::DebugVmWarning("VM_WARN_ON_ONCE(!ptdesc_pmd_is_shared(pt)) in tlb_unshare_pmd_ptdesc");

/// A gather that made a table exclusive and is finished without
/// `tlb_flush_unshared_tables`; returns the sync IPIs it sent.
fn finish_with_fully_unshared_tables(k: &Kernel) -> u64 {
    let mm = k.mm_alloc();
    let pt = crate::pgtable::pagetable_alloc(k, 0).unwrap().pfn();
    k.mem.pt_share_count(k.mem.virt_to_ptdesc(pt)).store(1, Ordering::SeqCst);
    let mut tlb = MmuGather::tlb_gather_mmu(k, &mm);
    tlb.tlb_unshare_pmd_ptdesc(pt, 0);
    assert!(tlb.fully_unshared_tables());
    tlb.tlb_finish_mmu();
    assert!(!mm.mm_tlb_flush_pending(), "the kernel warns and finishes the gather");
    k.stats.get(Stat::TlbRemoveTableSyncOne)
}

// tlb_finish_mmu's check is a VM_WARN_ON_ONCE (8ce720d5bd91): a
// debug-vm-warning violation (it used to be a debug-build panic).
#[test]
fn finish_with_fully_unshared_tables_is_a_bug() {
    let k = kernel(1);
    assert_eq!(finish_with_fully_unshared_tables(&k), 0, "nothing sent the sync the table needed");
    assert_eq!(k.san.count_kind(FULLY_UNSHARED), 1, "{:?}", k.san.violations());
    assert_eq!(k.san.count(), 1);
    let v = &k.san.violations()[0];
    assert_eq!(v.cpu, Some(CpuId(0)));
    assert!(v.to_string().contains("debug-vm-warning VM_WARN_ON_ONCE(tlb->fully_unshared_tables)"), "{v}");
}

#[test]
fn debug_vm_off_silences_the_fully_unshared_tables_check() {
    let k = kernel_with(1, |c| c.debug_vm = false);
    assert_eq!(finish_with_fully_unshared_tables(&k), 0);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

#[test]
fn unsharing_an_unshared_table_warns_and_goes_on() {
    for debug_vm in [true, false] {
        let k = kernel_with(1, |c| c.debug_vm = debug_vm);
        let mm = k.mm_alloc();
        let pt = crate::pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_unshare_pmd_ptdesc(pt, 0);
        // The count went negative: still "shared", so not fully unshared.
        assert_eq!(k.mem.pt_share_count(k.mem.virt_to_ptdesc(pt)).load(Ordering::SeqCst), -1);
        assert!(tlb.unshared_tables() && !tlb.fully_unshared_tables());
        tlb.tlb_flush_unshared_tables();
        tlb.tlb_finish_mmu();
        assert_eq!(
            k.san.count_kind(UNSHARE_UNSHARED),
            debug_vm as usize,
            "debug_vm {debug_vm}: {:?}",
            k.san.violations()
        );
        assert_eq!(k.san.count(), debug_vm as u64);
    }
}

#[test]
fn gathering_before_the_range_is_recorded_is_a_kernel_bug() {
    // VM_BUG_ON(!tlb->end): a panic naming the check with debug_vm...
    let k = kernel(1);
    let mm = k.mm_alloc();
    let pfn = mapped_folio(&k, 0);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.__tlb_remove_folio_pages_size(pfn, 1, false, 4096);
        tlb.tlb_finish_mmu();
    }));
    let p = r.expect_err("VM_BUG_ON(!tlb->end) must fire");
    let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.starts_with("kernel BUG: VM_BUG_ON(!tlb->end) in __tlb_remove_folio_pages_size"), "{msg}");
    // ... and nothing without: the page is gathered and freed as usual.
    let k = kernel_with(1, |c| c.debug_vm = false);
    let mm = k.mm_alloc();
    let pfn = mapped_folio(&k, 0);
    k.mem.remove_rmap_ptes(pfn, 1);
    let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
    assert!(!tlb.__tlb_remove_folio_pages_size(pfn, 1, false, 4096));
    tlb.tlb_finish_mmu();
    assert!(is_free(&k, pfn));
}

/// `vma_pfn` is VM_PFNMAP | VM_MIXEDMAP on every profile (b67fbebd4cf9);
/// on NO_RANGE only with 7fb5e5083190 (`no-range-vma-pfn`), and there it is
/// what makes `tlb_end_vma` flush under MERGE_VMAS.
#[test]
fn vma_pfn_is_pfnmap_or_mixedmap_on_every_profile() {
    use crate::mm::vm::{VM_MIXEDMAP, VM_PFNMAP};
    for arch in Arch::ALL {
        for fix in [true, false] {
            let (k, mm, _) = tlb_setup_with(arch, |c| c.fixes.set(Fix::NoRangeVmaPfn, fix));
            let tracked = fix || arch != Arch::GenericNoRange;
            for (flags, pfn) in [(VM_MIXEDMAP, true), (VM_PFNMAP, true), (0, false)] {
                let vma = anon_vma(VA, VA + 0x1000, flags);
                let before = k.stats.get(Stat::TlbFlushFull) + k.stats.get(Stat::TlbFlushRanged);
                let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
                tlb.tlb_start_vma(&vma);
                assert_eq!(tlb.vma_flags().2, pfn && tracked, "{arch:?} fix {fix} flags {flags:#x}");
                tlb.tlb_remove_tlb_entry(VA);
                tlb.tlb_end_vma(&vma);
                let flushed_at_end = k.stats.get(Stat::TlbFlushFull) + k.stats.get(Stat::TlbFlushRanged) > before;
                let merge = k.arch.mmu_gather_merge_vmas();
                assert_eq!(flushed_at_end, !merge || (pfn && tracked), "{arch:?} fix {fix} flags {flags:#x}");
                tlb.tlb_finish_mmu();
            }
        }
    }
}
