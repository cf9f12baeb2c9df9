//! mmemu's criterion benches (one harness), the host-kernel anchors, and a
//! final interleaved ratio step.  docs/PERFORMANCE.md explains every group.
//!
//! ```text
//! cargo bench -p benches                 # full run (~10 min on 2 cores)
//! cargo bench -p benches -- --quick      # quick mode (< 3 min)
//! cargo bench -p benches -- mmu/         # one group (the ratio step is skipped
//!                                        # unless the filter matches "ratios")
//! cargo bench -p benches -- ratios       # only the interleaved ratio table
//! ```
//!
//! Groups: `mmu` (TLB hit, miss + walk), `page_alloc`, `gather` (push of a
//! page / a folio fragment, batch free per page), `table` (table batch + RCU
//! free per table), `munmap` (1 GiB of 4 KiB pages, one CPU), `ipi` (1-target
//! round trip and all-target shootdown for 2/4/8/16 CPUs × spin/park/
//! adaptive), `host` (membarrier IPI round trip), `dontneed` (touch +
//! MADV_DONTNEED of a page alone and with a sibling thread on the other CPU,
//! emulated and host).  Then `ratios`: emulated and host measured in
//! alternating rounds (A, B, A, B, ...), medians, written to
//! `target/criterion/mmemu-ratios.txt`.

use std::time::{Duration, Instant};

use benches::emu::{median, policy_name, EmuDontneed, EmuIpi, EmuMunmap, Targets};
use benches::host::{self, HostDontneed, HostIpi};
use benches::{bare_kernel, hw_read, mapped_kernel, page_va, CPU0, USER_BASE};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emu_cpu::WaitPolicy;
use mm_core::gather::{MmuGather, MAX_TABLE_BATCH};
use mm_core::page::alloc::PageKind;
use mm_core::page::Folio;
use mm_core::{KernelConfig, Pfn};

/// 1 GiB: the munmap benches' region.
const GIB: u64 = 1 << 30;

/// CLI flags criterion parses too; we only peek at them.
struct Mode {
    quick: bool,
    /// `--test` (cargo test --benches) or `--list`: run each bench once / not at all.
    test: bool,
    list_or_profile: bool,
    filter: Option<String>,
}

fn mode() -> Mode {
    // Criterion options that take a value (so the value is not a filter).
    const WITH_VALUE: &[&str] = &[
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--profile-time",
        "--plotting-backend",
        "--output-format",
        "--color",
        "-c",
        "--format",
        "--logfile",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filter = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if WITH_VALUE.contains(&a.as_str()) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') && filter.is_none() {
            filter = Some(a.clone());
        }
        i += 1;
    }
    let has = |f: &str| args.iter().any(|a| a == f || a.starts_with(&format!("{f}=")));
    Mode { quick: has("--quick"), test: has("--test"), list_or_profile: has("--list") || has("--profile-time"), filter }
}

fn mmu(c: &mut Criterion) {
    let mut g = c.benchmark_group("mmu");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));

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
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
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

/// Pages (or fragments) one gather round holds: below the gather's
/// capacity (8 + 19 × 510 slots) so no push reports "full".
const GATHER_ROUND: u64 = 4096;
/// Pages per folio in the fragment bench (a 64 KiB mTHP: order 4).
const FRAG_ORDER: u32 = 4;

/// `iter_custom` helper for the gather benches: runs `iters` operations in
/// rounds of at most `round`, with `setup` and `teardown` untimed and only
/// `timed` measured.
fn rounds<S>(
    iters: u64,
    round: u64,
    mut setup: impl FnMut(u64) -> S,
    mut timed: impl FnMut(&mut S),
    mut teardown: impl FnMut(S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(round);
        let mut s = setup(n);
        let t0 = Instant::now();
        timed(&mut s);
        total += t0.elapsed();
        teardown(s);
        left -= n;
    }
    total
}

fn gather(c: &mut Criterion) {
    let mut g = c.benchmark_group("gather");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    let cfg = KernelConfig { ram_frames: 1 << 17, ..KernelConfig::default() };
    let (k, mm) = mapped_kernel(cfg, 1);
    let ps = k.cfg.geometry.page_size();
    let in_use0 = k.alloc.in_use().total();
    let alloc = |order: u32, n: u64| -> Vec<Pfn> {
        (0..n)
            .map(|_| {
                let p = k.alloc_pages(order, PageKind::Anon).expect("free frames");
                // One reference per PTE that would map a page of the folio.
                if order > 0 {
                    k.mem.folio_ref_add(Folio(p), (1 << order) - 1);
                }
                p
            })
            .collect()
    };
    let new_gather = |n_pages: u64| {
        let mut tlb = MmuGather::tlb_gather_mmu(&k, &mm);
        tlb.tlb_flush_pte_range(USER_BASE, n_pages * ps);
        tlb
    };

    // __tlb_remove_page: one order-0 page per call (tlb_remove_page's
    // gather step; batch pages are allocated on the way, as in the kernel).
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_page", |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                GATHER_ROUND,
                |n| (alloc(0, n), new_gather(n)),
                |(pages, tlb)| {
                    for p in pages.iter() {
                        let full = tlb.__tlb_remove_page(black_box(*p), false);
                        assert!(!full, "gather full inside a bench round");
                    }
                },
                |(_, tlb)| tlb.tlb_finish_mmu(),
            )
        })
    });

    // __tlb_remove_folio_pages: one 16-page folio fragment per call (two
    // slots: page + nr_pages).  Time is per call; throughput in pages.
    g.throughput(Throughput::Elements(1 << FRAG_ORDER));
    g.bench_function("push_folio_fragment_16p", |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                GATHER_ROUND / 2,
                |n| (alloc(FRAG_ORDER, n), new_gather(n << FRAG_ORDER)),
                |(folios, tlb)| {
                    for p in folios.iter() {
                        let full = tlb.__tlb_remove_folio_pages(black_box(*p), 1 << FRAG_ORDER, false);
                        assert!(!full, "gather full inside a bench round");
                    }
                },
                |(_, tlb)| tlb.tlb_finish_mmu(),
            )
        })
    });

    // tlb_batch_pages_flush per page: the gathered pages' references are
    // dropped and every page freed (generation bump, strict free check,
    // allocator).  The TLB flush before it is not timed.
    g.throughput(Throughput::Elements(1));
    g.bench_function("batch_free_per_page", |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                GATHER_ROUND,
                |n| {
                    let mut tlb = new_gather(n);
                    for p in alloc(0, n) {
                        assert!(!tlb.__tlb_remove_page(p, false));
                    }
                    tlb.tlb_flush_mmu_tlbonly();
                    tlb
                },
                |tlb| tlb.tlb_batch_pages_flush(),
                |tlb| tlb.tlb_finish_mmu(),
            )
        })
    });
    g.finish();
    assert_eq!(k.alloc.in_use().total(), in_use0, "gather benches leaked frames");
}

fn table(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    let cfg = KernelConfig { ram_frames: 1 << 16, ..KernelConfig::default() };
    let (k, mm) = mapped_kernel(cfg, 1);
    let ps = k.cfg.geometry.page_size();
    let in_use0 = k.alloc.in_use().total();

    // pte_free_tlb per table, in rounds of one full table batch (509): the
    // last one fills the batch, which flushes (TLB + walk caches) and hands
    // it to call_rcu; then rcu_barrier waits out the grace period and the
    // callback frees every table.  All of that is timed.
    g.bench_function("pte_free_tlb+rcu_free_per_table", |b| {
        b.iter_custom(|iters| {
            rounds(
                iters,
                MAX_TABLE_BATCH as u64,
                |n| {
                    let tables: Vec<Pfn> =
                        (0..n).map(|_| mm_core::pgtable::pagetable_alloc(&k, 0).expect("table frame").pfn()).collect();
                    (tables, MmuGather::tlb_gather_mmu(&k, &mm))
                },
                |(tables, tlb)| {
                    for (i, t) in tables.iter().enumerate() {
                        tlb.pte_free_tlb(*t, USER_BASE + i as u64 * ps);
                    }
                    tlb.tlb_table_flush();
                    k.rcu_barrier();
                },
                |(_, tlb)| tlb.tlb_finish_mmu(),
            )
        })
    });
    g.finish();
    k.rcu_barrier();
    assert_eq!(k.alloc.in_use().total(), in_use0, "table bench leaked frames");
}

fn munmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("munmap");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let m = EmuMunmap::new(KernelConfig::default(), GIB);
    // One iteration = one munmap of the whole GiB (262144 pages); the
    // mmap + touch before it is not timed.  ns/page = time / 262144.
    g.throughput(Throughput::Elements(m.pages()));
    g.bench_function("emu_1GiB_4K_pages", |b| b.iter_custom(|iters| (0..iters).map(|_| m.round()).sum()));
    drop(m);
    g.bench_function("host_1GiB_4K_pages", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let ns = host::host_munmap_ns_per_page(GIB as usize).unwrap_or_else(|e| panic!("host munmap: {e}"));
                    Duration::from_nanos((ns * (GIB as usize / host::HOST_PAGE) as f64) as u64)
                })
                .sum()
        })
    });
    g.finish();
}

const POLICIES: [WaitPolicy; 3] = [WaitPolicy::Spin, WaitPolicy::Park, WaitPolicy::Adaptive];

fn ipi(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipi");
    g.measurement_time(Duration::from_secs(1));
    g.warm_up_time(Duration::from_millis(300));
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    for policy in POLICIES {
        for n in [2usize, 4, 8, 16] {
            // One machine per (policy, n), dropped before the next: spinning
            // CPU threads must not steal the host cores from later benches.
            let m = EmuIpi::new(n, policy);
            let p = policy_name(policy);
            g.bench_with_input(BenchmarkId::new(format!("{p}/1target"), n), &n, |b, _| {
                b.iter_custom(|iters| m.time(iters, Targets::One))
            });
            g.bench_with_input(BenchmarkId::new(format!("{p}/shootdown_all"), n), &n, |b, _| {
                b.iter_custom(|iters| m.time(iters, Targets::All))
            });
        }
    }
    g.finish();
}

fn host_anchors(c: &mut Criterion) {
    let mut g = c.benchmark_group("host");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(300));
    g.throughput(Throughput::Elements(1));
    match HostIpi::start() {
        Ok(h) => {
            g.bench_function("membarrier_private_expedited", |b| {
                b.iter_custom(|iters| h.time(iters).unwrap_or_else(|e| panic!("{e}")))
            });
        }
        Err(e) => eprintln!("host/membarrier_private_expedited: skipped: {e}"),
    }
    g.finish();
}

/// Touch one page + madvise(MADV_DONTNEED) it, alone and with a sibling
/// thread of the same mm running on the other (emulated / host) CPU, so the
/// zap's flush is a real cross-CPU shootdown.  Emulated: 2-CPU `System`,
/// spin policy.
fn dontneed(c: &mut Criterion) {
    let mut g = c.benchmark_group("dontneed");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(300));
    g.throughput(Throughput::Elements(1));
    for (name, sibling) in [("alone", false), ("sibling", true)] {
        {
            let e = EmuDontneed::new(sibling, WaitPolicy::Spin);
            g.bench_function(format!("emu_{name}"), |b| b.iter_custom(|iters| e.time(iters)));
        }
        match HostDontneed::start(sibling) {
            Ok(h) => {
                g.bench_function(format!("host_{name}"), |b| {
                    b.iter_custom(|iters| h.time(iters).unwrap_or_else(|e| panic!("{e}")))
                });
            }
            Err(e) => eprintln!("dontneed/host_{name}: skipped: {e}"),
        }
    }
    g.finish();
}

// ---- the interleaved ratio step ------------------------------------------

/// One line of the ratio table.
struct Row {
    what: &'static str,
    emu: Option<f64>,
    host: Option<f64>,
    unit: &'static str,
    /// (target ratio, or target absolute value when `host` is None)
    target: f64,
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.1}"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn host_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    format!("{model}, {} host cores, Linux {kernel}", host::host_cores())
}

fn ratios_path() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        // target/release/deps/mmemu-<hash>: three levels up is target/.
        std::env::current_exe()
            .ok()
            .and_then(|p| p.ancestors().nth(3).map(|p| p.to_path_buf()))
            .unwrap_or_else(|| "target".into())
    });
    target.join("criterion").join("mmemu-ratios.txt")
}

/// Emulated and host figures in alternating rounds (A, B, A, B, ...), then
/// the medians side by side.
fn ratios(_c: &mut Criterion) {
    let m = mode();
    if m.list_or_profile {
        return;
    }
    if let Some(f) = &m.filter {
        if !"ratios".contains(f.as_str()) {
            return;
        }
    }
    let (rounds, ipi_calls, munmap_bytes, hits) = if m.test {
        (1, 1_000u64, 16u64 << 20, 100_000u64)
    } else if m.quick {
        (5, 20_000, GIB, 2_000_000)
    } else {
        (11, 50_000, GIB, 5_000_000)
    };
    let load0 = loadavg();
    let t_start = Instant::now();

    // 1. IPI round trip: emulated spin 2 CPUs vs host membarrier.
    let host_ipi = HostIpi::start();
    if let Err(e) = &host_ipi {
        eprintln!("ratios: host membarrier anchor skipped: {e}");
    }
    drop(host_ipi);
    let (mut emu_ipi, mut host_ipi) = (Vec::new(), Vec::new());
    // membarrier with no sibling running: the syscall alone, no IPI.
    let mut host_noipi = Vec::new();
    for _ in 0..rounds {
        {
            // A fresh machine per round, dropped before the host half: its
            // spinning CPU threads would otherwise occupy both host cores.
            let e = EmuIpi::new(2, WaitPolicy::Spin);
            e.time(ipi_calls / 10, Targets::One); // warm
            emu_ipi.push(e.time(ipi_calls, Targets::One).as_nanos() as f64 / ipi_calls as f64);
        }
        if let Ok(h) = HostIpi::start() {
            let _ = h.time(ipi_calls / 10);
            match h.time(ipi_calls) {
                Ok(d) => host_ipi.push(d.as_nanos() as f64 / ipi_calls as f64),
                Err(e) => eprintln!("ratios: membarrier failed: {e}"),
            }
        }
        if let Ok(h) = HostIpi::start_with(false) {
            if let Ok(d) = h.time(ipi_calls) {
                host_noipi.push(d.as_nanos() as f64 / ipi_calls as f64);
            }
        }
    }

    // 2. munmap of 1 GiB: emulated (one CPU) vs host, alternating.
    // Wall time and this thread's CPU time (immune to preemption by other
    // jobs) of the same munmap.
    let (mut emu_mu, mut host_mu) = (Vec::new(), Vec::new());
    let (mut emu_mu_cpu, mut host_mu_cpu) = (Vec::new(), Vec::new());
    {
        let em = EmuMunmap::new(KernelConfig::default(), munmap_bytes);
        let pages = em.pages() as f64;
        for _ in 0..rounds {
            let t = em.round_timed();
            emu_mu.push(t.wall.as_nanos() as f64 / pages);
            emu_mu_cpu.push(t.cpu_ns as f64 / pages);
            match host::host_munmap_timed(munmap_bytes as usize) {
                Ok(t) => {
                    host_mu.push(t.wall.as_nanos() as f64 / pages);
                    host_mu_cpu.push(t.cpu_ns as f64 / pages);
                }
                Err(e) => eprintln!("ratios: host munmap failed: {e}"),
            }
        }
    }

    // 3. TLB hit (no host counterpart: a target in ns).
    let (mut hit, mut hit_cpu) = (Vec::new(), Vec::new());
    {
        let (k, _mm) = mapped_kernel(KernelConfig::default(), 1);
        let va = page_va(&k, 0);
        hw_read(&k, va);
        for _ in 0..rounds {
            let ((), t) = host::Timed::measure(|| {
                for _ in 0..hits {
                    black_box(hw_read(&k, black_box(va)));
                }
            });
            hit.push(t.wall.as_nanos() as f64 / hits as f64);
            hit_cpu.push(t.cpu_ns as f64 / hits as f64);
        }
    }

    // 4. The real shootdown, for reference: touch + DONTNEED alone / with a
    // sibling thread, emulated (2-CPU System, spin) and host, alternating.
    let dn_iters = ipi_calls / 5;
    let mut dn = [Vec::new(), Vec::new()];
    let mut edn = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, sib) in [false, true].into_iter().enumerate() {
            {
                let e = EmuDontneed::new(sib, WaitPolicy::Spin);
                e.time(dn_iters / 10);
                edn[i].push(e.time(dn_iters).as_nanos() as f64 / dn_iters as f64);
            }
            if let Ok(h) = HostDontneed::start(sib) {
                if let Ok(d) = h.time(dn_iters) {
                    dn[i].push(d.as_nanos() as f64 / dn_iters as f64);
                }
            }
        }
    }

    let med = |v: &mut Vec<f64>| (!v.is_empty()).then(|| median(v));
    let rows = [
        Row {
            what: "IPI round trip, 1 target (emu: spin, 2 CPUs; host: membarrier)",
            emu: med(&mut emu_ipi),
            host: med(&mut host_ipi),
            unit: "ns",
            target: 0.25,
        },
        Row {
            what: "munmap 1 GiB of 4 KiB pages, per page (emu: 1 CPU)",
            emu: med(&mut emu_mu),
            host: med(&mut host_mu),
            unit: "ns/page",
            target: 1.0,
        },
        Row { what: "TLB hit (emulated read)", emu: med(&mut hit), host: None, unit: "ns", target: 10.0 },
        Row {
            what: "munmap per page, thread CPU time (preemption excluded)",
            emu: med(&mut emu_mu_cpu),
            host: med(&mut host_mu_cpu),
            unit: "ns/page",
            target: 1.0,
        },
        Row {
            what: "TLB hit, thread CPU time (preemption excluded)",
            emu: med(&mut hit_cpu),
            host: None,
            unit: "ns",
            target: 10.0,
        },
    ];
    let dn_alone = med(&mut dn[0]);
    let dn_sib = med(&mut dn[1]);
    let edn_alone = med(&mut edn[0]);
    let edn_sib = med(&mut edn[1]);

    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "mmemu ratios: emulated vs host kernel, alternating rounds in one process, medians of {rounds} rounds"
    );
    let _ = writeln!(out, "host: {}", host_description());
    let _ = writeln!(
        out,
        "load average at start: {load0}; at end: {} (shared host: other jobs inflate both columns)",
        loadavg()
    );
    if m.test || munmap_bytes != GIB {
        let _ = writeln!(out, "NOTE: --test mode: tiny sizes, one round; these numbers are a smoke test only");
    }
    let _ = writeln!(out);
    let _ =
        writeln!(out, "{:<66} {:>10} {:>10} {:>8} {:>7} {:>7}", "metric", "emulated", "host", "ratio", "target", "met");
    for r in &rows {
        let (ratio, met) = match (r.emu, r.host) {
            (Some(e), Some(h)) => (Some(e / h), if e / h <= r.target { "yes" } else { "NO" }),
            (Some(e), None) if r.host.is_none() && r.what.starts_with("TLB") => {
                (None, if e <= r.target { "yes" } else { "NO" })
            }
            _ => (None, "n/a"),
        };
        let target = if r.what.starts_with("TLB") { format!("<={}ns", r.target) } else { format!("<={}x", r.target) };
        let _ = writeln!(
            out,
            "{:<66} {:>10} {:>10} {:>8} {:>7} {:>7}   [{}]",
            r.what,
            fmt_opt(r.emu),
            fmt_opt(r.host),
            ratio.map_or("n/a".into(), |x| format!("{x:.3}x")),
            target,
            met,
            r.unit
        );
    }
    let _ = writeln!(out);
    let diff = |a: Option<f64>, s: Option<f64>| match (a, s) {
        (Some(a), Some(s)) => format!("{:.1}", s - a),
        _ => "n/a".into(),
    };
    let _ = writeln!(out, "reference, no target: touch + MADV_DONTNEED of one page, ns per pair");
    let _ = writeln!(out, "{:<24} {:>10} {:>10} {:>12}", "", "alone", "sibling", "shootdown");
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>12}",
        "emulated (spin, 2 CPUs)",
        fmt_opt(edn_alone),
        fmt_opt(edn_sib),
        diff(edn_alone, edn_sib)
    );
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>12}",
        "host",
        fmt_opt(dn_alone),
        fmt_opt(dn_sib),
        diff(dn_alone, dn_sib)
    );
    let _ = writeln!(
        out,
        "host membarrier with no sibling running (syscall only, no IPI): median {} ns",
        fmt_opt(med(&mut host_noipi.clone()))
    );
    let _ = writeln!(out, "raw rounds (ns): emu ipi {:?}", rounded(&emu_ipi));
    let _ = writeln!(out, "                 host ipi {:?}", rounded(&host_ipi));
    let _ = writeln!(out, "                 emu munmap/page {:?}", rounded(&emu_mu));
    let _ = writeln!(out, "                 host munmap/page {:?}", rounded(&host_mu));
    let _ = writeln!(out, "                 tlb hit {:?}", rounded(&hit));
    let _ = writeln!(out, "  (CPU-time rows: CLOCK_THREAD_CPUTIME_ID of the measuring thread; the wall-time rows are the targets' definition)");
    let _ = writeln!(out, "ratio step took {:.1} s", t_start.elapsed().as_secs_f64());
    println!("\n{out}");
    let path = ratios_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, &out) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("ratios: cannot write {}: {e}", path.display()),
    }
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 10.0).round() / 10.0).collect()
}

/// Quick mode (`-- --quick`) must finish in under 3 minutes on a loaded
/// 2-core host: most of a quick bench's wall time is not measuring but the
/// bootstrap (100k resamples) and the KDE plots over it, so quick mode runs
/// without plots and with 10k resamples.  Full runs keep criterion's
/// defaults (HTML report in target/criterion/report/).
fn config() -> Criterion {
    let c = Criterion::default();
    if mode().quick {
        c.without_plots().nresamples(10_000)
    } else {
        c
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = mmu, page_alloc, gather, table, munmap, ipi, host_anchors, dontneed, ratios
}
criterion_main!(benches);
