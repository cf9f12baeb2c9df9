//! munmap_demo: the foundation's end-to-end run, until the `mmemu` CLI lands.
//!
//! N emulated CPUs (synchronous reference Smp: one host thread plays them
//! all, deterministically) run threads of one mm: every CPU touches its
//! slice of an anonymous region, a child is forked and exits, then the
//! region is unmapped chunk by chunk from rotating CPUs — each munmap a full
//! mmu_gather cycle with remote shootdowns and RCU table freeing.  Prints
//! the kernel's counters per CPU, violations and leaked frames; exits 1 if
//! anything went wrong.
//!
//!     cargo run --release -p workloads --example munmap_demo -- --cpus 4 --mib 64

use clap::Parser;
use mm_core::config::{Arch, Fix, KernelConfig};
use mm_core::ops;
use mm_core::stats::Stat;
use mm_core::tlb::switch_mm;
use mm_core::{CpuId, Kernel};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "munmap storm on the synchronous reference machine")]
struct Args {
    /// Emulated CPUs (1..=64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Size of the region in MiB (1..=1024).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    mib: u64,
    /// Pages per munmap call (1..=4096).
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(1..=4096))]
    chunk: u64,
    /// Arch profile: x86, arm64 or generic.
    #[arg(long, default_value = "x86", value_parser = |s: &str| s.parse::<Arch>())]
    arch: Arch,
    /// Switch a fix off (repeatable).
    #[arg(long = "revert", value_parser = |s: &str| s.parse::<Fix>())]
    revert: Vec<Fix>,
}

fn main() {
    let args = Args::parse();
    const BASE: u64 = 0x10_0000_0000;
    let mut cfg = KernelConfig { arch: args.arch, ..KernelConfig::default() };
    let ps = cfg.geometry.page_size();
    let pages = args.mib * (1 << 20) / ps;
    cfg.ram_frames = (pages as usize * 2 + 8192).next_power_of_two();
    for f in &args.revert {
        cfg.fixes.set(*f, false);
    }
    let k = Kernel::new_sync(cfg, args.cpus as usize);
    let mm = k.mm_alloc();
    let t0 = Instant::now();
    ops::mmap_anon(&k, &mm, BASE, pages * ps, true).expect("mmap");
    let per_cpu = pages.div_ceil(args.cpus as u64);
    for c in 0..args.cpus {
        k.set_cpu(CpuId(c));
        switch_mm(&k, &mm);
        for p in (c as u64 * per_cpu..((c as u64 + 1) * per_cpu).min(pages)).step_by(1) {
            k.write_user(&mm, BASE + p * ps, p).expect("touch");
        }
    }
    let touched = t0.elapsed();
    let child = ops::dup_mmap(&k, &mm).expect("fork");
    k.set_cpu(CpuId(args.cpus - 1));
    switch_mm(&k, &child);
    let _ = k.write_user(&child, BASE, 1);
    ops::exit_mm(&k, &child);
    let t1 = Instant::now();
    let mut p = 0;
    let mut calls = 0u64;
    while p < pages {
        let n = args.chunk.min(pages - p);
        k.set_cpu(CpuId((calls % args.cpus as u64) as u32));
        switch_mm(&k, &mm);
        ops::munmap(&k, &mm, BASE + p * ps, n * ps).expect("munmap");
        p += n;
        calls += 1;
    }
    let unmapped = t1.elapsed();
    k.set_cpu(CpuId(0));
    ops::exit_mm(&k, &mm);
    k.rcu_barrier();

    println!("munmap_demo: {} CPUs, arch {}, {} MiB ({} pages), {} munmap calls of {} pages, reverted: {:?}",
        args.cpus, args.arch.name(), args.mib, pages, calls, args.chunk,
        args.revert.iter().map(|f| f.name()).collect::<Vec<_>>());
    println!("  touch: {:.1} ns/page   munmap: {:.1} ns/page",
        touched.as_nanos() as f64 / pages as f64, unmapped.as_nanos() as f64 / pages as f64);
    print!("  {:<28}", "");
    for c in 0..args.cpus {
        print!("{:>10}", format!("CPU{c}"));
    }
    println!();
    print!("  {:<28}", "CAL");
    for c in 0..args.cpus {
        print!("{:>10}", k.smp.call_interrupts(CpuId(c)));
    }
    println!();
    for s in [Stat::IrqTlbCount, Stat::NrTlbRemoteFlush, Stat::NrTlbRemoteFlushReceived, Stat::NrTlbLocalFlushAll, Stat::NrTlbLocalFlushOne] {
        print!("  {:<28}", s.name());
        for c in 0..args.cpus {
            print!("{:>10}", k.stats.get_cpu(CpuId(c), s));
        }
        println!();
    }
    for s in [Stat::GatherFlushes, Stat::GatherBatchAlloc, Stat::GatherPagesFreed, Stat::TablesQueued, Stat::TablesFreed, Stat::TlbRemoveTableSyncOne, Stat::LazySwitchToInitMm] {
        println!("  {:<28}{:>10}", s.name(), k.stats.get(s));
    }
    let leaked = k.alloc.in_use();
    println!("  violations: {}   leaked frames: {} {:?}", k.san.count(), leaked.total(), leaked);
    for v in k.san.violations().iter().take(10) {
        println!("    {v}");
    }
    if k.san.count() > 0 || leaked.total() != 0 {
        std::process::exit(1);
    }
}
