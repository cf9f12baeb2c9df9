//! Scaling tables for docs/PERFORMANCE.md, and single loops to profile.
//!
//! ```text
//! cargo run --release -p benches --example scaling -- cpus    # IPI cost vs emulated CPUs 2..64 × policy
//! cargo run --release -p benches --example scaling -- range   # munmap ns/page vs range size, emu vs host
//! cargo run --release -p benches --example scaling -- rtt 2 spin 1000000 [one|all]
//! cargo run --release -p benches --example scaling -- dontneed sibling spin 200000
//!                                                             # one timed loop (perf record target)
//! ```
//!
//! Every figure is a median of alternating rounds; the host is shared, so
//! read them as shapes (how cost grows), not as absolute numbers.

use std::time::{Duration, Instant};

use benches::emu::{median, policy_name, EmuIpi, EmuMunmap, Targets, MUNMAP_BASE};
use benches::host;
use emu_cpu::WaitPolicy;
use mm_core::{ops, KernelConfig};

const POLICIES: [WaitPolicy; 3] = [WaitPolicy::Spin, WaitPolicy::Park, WaitPolicy::Adaptive];

fn parse_policy(s: &str) -> WaitPolicy {
    match s {
        "spin" => WaitPolicy::Spin,
        "park" => WaitPolicy::Park,
        "adaptive" => WaitPolicy::Adaptive,
        _ => {
            eprintln!("policy must be spin, park or adaptive, not {s:?}");
            std::process::exit(2)
        }
    }
}

/// ns per call: median of `rounds` loops that each last about `budget`.
fn ipi_ns(m: &EmuIpi, t: Targets, rounds: usize, budget: Duration) -> f64 {
    // Calibrate the loop length from one short probe.
    let probe = m.time(16, t).as_nanos().max(1) as f64 / 16.0;
    let calls = ((budget.as_nanos() as f64 / probe) as u64).clamp(16, 200_000);
    let mut v: Vec<f64> = (0..rounds).map(|_| m.time(calls, t).as_nanos() as f64 / calls as f64).collect();
    median(&mut v)
}

fn cpus_table() {
    println!(
        "emulated cross-call cost vs CPUs (ns per smp_call_function_many, empty handler; {} host cores)",
        host::host_cores()
    );
    println!("{:>5} {:>10} {:>14} {:>16}", "CPUs", "policy", "1 target", "all targets");
    for n in [2usize, 4, 8, 16, 32, 64] {
        for p in POLICIES {
            let m = EmuIpi::new(n, p);
            let one = ipi_ns(&m, Targets::One, 5, Duration::from_millis(60));
            let all = ipi_ns(&m, Targets::All, 5, Duration::from_millis(60));
            println!("{n:>5} {:>10} {one:>14.0} {all:>16.0}", policy_name(p));
        }
    }
}

fn range_table() {
    println!("munmap cost vs range size (ns per page; emulated: 1 CPU, sync Smp; host: touched 4 KiB pages, THP off)");
    println!("{:>8} {:>10} {:>12} {:>12} {:>8}", "pages", "size", "emulated", "host", "ratio");
    let em = EmuMunmap::new(KernelConfig::default(), 1 << 30);
    let k = &em.k;
    let ps = k.cfg.geometry.page_size();
    for pages in [1u64, 16, 33, 34, 512, 16_384, 262_144] {
        let reps = (262_144 / pages).clamp(3, 2_000);
        let (mut e, mut h) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let mm = k.mm_alloc();
            mm_core::tlb::switch_mm(k, &mm);
            let mut t = Duration::ZERO;
            for _ in 0..reps {
                ops::mmap_anon(k, &mm, MUNMAP_BASE, pages * ps, true).expect("mmap");
                for p in 0..pages {
                    k.write_user(&mm, MUNMAP_BASE + p * ps, p).expect("touch");
                }
                let t0 = Instant::now();
                ops::munmap(k, &mm, MUNMAP_BASE, pages * ps).expect("munmap");
                t += t0.elapsed();
            }
            ops::exit_mm(k, &mm);
            mm_core::tlb::drop_lazy_mm(k);
            k.rcu_barrier();
            e.push(t.as_nanos() as f64 / (reps * pages) as f64);
            let mut ht = 0.0;
            for _ in 0..reps {
                ht += host::host_munmap_ns_per_page(pages as usize * host::HOST_PAGE).expect("host munmap")
                    * pages as f64;
            }
            h.push(ht / (reps * pages) as f64);
        }
        let (e, h) = (median(&mut e), median(&mut h));
        let size = if pages * 4 >= 1024 { format!("{} MiB", pages * 4 / 1024) } else { format!("{} KiB", pages * 4) };
        println!("{pages:>8} {size:>10} {e:>12.1} {h:>12.1} {:>7.2}x", e / h);
    }
    assert_eq!(k.san.count(), 0, "sanitizer violations");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("cpus") => cpus_table(),
        Some("range") => range_table(),
        Some("dontneed") => {
            let sib = args.get(1).map(String::as_str) == Some("sibling");
            let p = parse_policy(args.get(2).map_or("spin", String::as_str));
            let iters: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200_000);
            let e = benches::emu::EmuDontneed::new(sib, p);
            let d = e.time(iters);
            println!(
                "touch+DONTNEED, sibling {sib}, {}: {:.1} ns per pair",
                policy_name(p),
                d.as_nanos() as f64 / iters as f64
            );
        }
        Some("rtt") => {
            let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
            let p = parse_policy(args.get(2).map_or("spin", String::as_str));
            let calls: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
            let t = if args.get(4).map(String::as_str) == Some("all") { Targets::All } else { Targets::One };
            let m = EmuIpi::new(n, p);
            let d = m.time(calls, t);
            println!(
                "{n} CPUs, {}, {t:?}: {calls} calls, {:.1} ns per call",
                policy_name(p),
                d.as_nanos() as f64 / calls as f64
            );
        }
        _ => {
            eprintln!("usage: scaling cpus | range | rtt [CPUS] [spin|park|adaptive] [CALLS] [one|all]");
            std::process::exit(2);
        }
    }
}
