//! Criterion benches of the paths that exist today: the emulated MMU (TLB
//! hit, TLB miss + page walk) and the page allocator.  The mmu_gather /
//! flush benches join here once munmap and the gather land.
//!
//! ```text
//! cargo bench -p benches                 # full run
//! cargo bench -p benches -- --quick      # criterion 0.5 quick mode
//! cargo bench -p benches -- mmu/         # one group
//! ```

use benches::{bare_kernel, hw_read, mapped_kernel, page_va, CPU0};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use mm_core::page::alloc::PageKind;
use mm_core::page::Folio;
use mm_core::KernelConfig;

fn mmu(c: &mut Criterion) {
    let mut g = c.benchmark_group("mmu");
    g.throughput(Throughput::Elements(1));

    // TLB hit: one mapped page, faulted in, read again and again.
    {
        let (k, _mm) = mapped_kernel(KernelConfig::default(), 1);
        let va = page_va(&k, 0);
        hw_read(&k, va);
        let before = k.hw.counters(CPU0);
        g.bench_function("tlb_hit_read", |b| b.iter(|| hw_read(&k, black_box(va))));
        let after = k.hw.counters(CPU0);
        assert_eq!(after.walks, before.walks, "tlb_hit_read walked: not a hit bench");
    }

    // Cost of flush_all alone (to subtract from the full-walk bench).
    {
        let (k, _mm) = mapped_kernel(KernelConfig::default(), 1);
        g.bench_function("tlb_flush_all", |b| b.iter(|| k.hw.tlb(CPU0).flush_all()));
    }

    // TLB miss + full 4-level walk from CR3: flush the TLB and the
    // paging-structure caches before every read.
    {
        let (k, _mm) = mapped_kernel(KernelConfig::default(), 1);
        let va = page_va(&k, 0);
        let before = k.hw.counters(CPU0);
        let mut n = 0u64;
        g.bench_function("flush_all+miss_walk4_read", |b| {
            b.iter(|| {
                k.hw.tlb(CPU0).flush_all();
                n += 1;
                hw_read(&k, black_box(va))
            })
        });
        let after = k.hw.counters(CPU0);
        assert_eq!(after.walks - before.walks, n, "every read must walk");
    }

    // TLB miss, walk starting at the PSC's PTE-table entry: 1024 pages read
    // round-robin, 4x the 256-entry TLB (64 sets x 4 ways), so every read
    // misses; the 16-entry PSC covers the 2 PTE tables involved.
    {
        const PAGES: u64 = 1024;
        let (k, _mm) = mapped_kernel(KernelConfig::default(), PAGES);
        let vas: Vec<u64> = (0..PAGES).map(|i| page_va(&k, i)).collect();
        for va in &vas {
            hw_read(&k, *va);
        }
        let before = k.hw.counters(CPU0);
        let mut i = 0usize;
        let mut n = 0u64;
        g.bench_function("miss_psc_walk_read", |b| {
            b.iter(|| {
                let va = vas[i];
                i = (i + 1) % vas.len();
                n += 1;
                hw_read(&k, black_box(va))
            })
        });
        let after = k.hw.counters(CPU0);
        assert_eq!(after.walks - before.walks, n, "every round-robin read must miss");
    }
    g.finish();
}

fn page_alloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("page_alloc");
    g.throughput(Throughput::Elements(1));
    let k = bare_kernel(KernelConfig::default());
    let in_use0 = k.alloc.in_use().total();

    // Order 0: per-CPU list pop + struct page init, then folio_put frees it
    // (refcount 1 -> 0: generation bump, pcp push).
    g.bench_function("alloc_free_order0", |b| {
        b.iter(|| {
            let pfn = k.alloc_pages(0, PageKind::Anon).expect("free frames");
            k.folio_put(Folio(black_box(pfn)));
        })
    });

    // Order 9 (a PMD-sized folio): buddy split and merge under the zone lock.
    g.bench_function("alloc_free_order9", |b| {
        b.iter(|| {
            let pfn = k.alloc_pages(9, PageKind::Anon).expect("free order-9 block");
            k.folio_put(Folio(black_box(pfn)));
        })
    });

    // 64 order-0 pages at once, then all freed: exercises pcp refill from
    // the zone (batch 31) and the drain above the high watermark.
    let mut held = Vec::with_capacity(64);
    g.throughput(Throughput::Elements(64));
    g.bench_function("alloc64_free64_order0", |b| {
        b.iter(|| {
            for _ in 0..64 {
                held.push(k.alloc_pages(0, PageKind::Anon).expect("free frames"));
            }
            for pfn in held.drain(..) {
                k.folio_put(Folio(pfn));
            }
        })
    });
    g.finish();
    assert_eq!(k.alloc.in_use().total(), in_use0, "page_alloc benches leaked frames");
}

criterion_group!(benches, mmu, page_alloc);
criterion_main!(benches);
