//! Flush policies on real CPU threads (issue 3 acceptance):
//! - x86 skips a lazy CPU for a plain flush and IPIs it when page tables
//!   were freed (and, with lazy-tlb-freed-tables reverted, does not);
//! - arm64's broadcast invalidation reaches a CPU whose IRQs are off,
//!   without interrupting it, and is complete when the flush returns;
//!   `tlb_remove_table_sync_one` still needs that CPU to take an IPI.

use std::time::{Duration, Instant};

use emu_cpu::{MachineConfig, System, WaitPolicy};
use mm_core::config::{Arch, Fix};
use mm_core::ops::{madvise_dontneed, mmap_anon, munmap};
use mm_core::stats::Stat;
use mm_core::sync::{Arc, AtomicBool, Ordering};
use mm_core::{CpuId, KernelConfig};

const PS: u64 = 4096;
const BASE: u64 = 0x10_0000_0000;

fn sys(arch: Arch, fixes_off: &[Fix]) -> System {
    let mut kc = KernelConfig { nr_cpus: 2, arch, ..KernelConfig::default() };
    for f in fixes_off {
        kc.fixes.set(*f, false);
    }
    let mc = MachineConfig { wait: WaitPolicy::Adaptive, ..MachineConfig::default() };
    System::new(kc, mc).unwrap()
}

fn has_entry(s: &System, cpu: u32, mm: u64, va: u64) -> bool {
    s.kernel().hw.tlb(CpuId(cpu)).leaf_entries().any(|e| e.valid && e.asid == mm && e.vpn == va >> 12)
}

/// CPU1 touches the region and goes lazy; CPU0 flushes one page, then
/// unmaps everything (freeing the tables).  Returns (CAL after the plain
/// flush, CAL after the table-freeing flush, lazy switches to init_mm).
fn x86_lazy(fixes_off: &[Fix]) -> (u64, u64, u64) {
    let s = sys(Arch::X86, fixes_off);
    let k = s.kernel().clone();
    let mm = s.mm_alloc().unwrap();
    s.run_user(CpuId(0), &mm, |k, mm| mmap_anon(k, mm, BASE, 8 * PS, true).unwrap()).unwrap();
    s.run_user(CpuId(1), &mm, |k, mm| {
        for p in 0..8 {
            k.write_user(mm, BASE + p * PS, p).unwrap();
        }
    })
    .unwrap();
    // CPU1 now idles with the mm loaded: lazy.
    assert!(k.cpus[1].is_lazy.load(Ordering::SeqCst));
    s.run_user(CpuId(0), &mm, |k, mm| madvise_dontneed(k, mm, BASE, PS).unwrap()).unwrap();
    let cal_plain = k.smp.call_interrupts(CpuId(1));
    // Skipped, so its (harmless: it runs no user code) stale entry is still there.
    if cal_plain == 0 {
        assert!(has_entry(&s, 1, mm.id, BASE), "a skipped lazy CPU keeps its TLB entries");
    }
    s.run_user(CpuId(0), &mm, |k, mm| munmap(k, mm, BASE, 8 * PS).unwrap()).unwrap();
    let cal_freed = k.smp.call_interrupts(CpuId(1));
    let lazy_switch = k.stats.get_cpu(CpuId(1), Stat::LazySwitchToInitMm);
    s.run_user(CpuId(0), &mm, |k, mm| mm_core::ops::exit_mm(k, mm)).unwrap();
    s.release_lazy_mms(Duration::from_secs(5)).unwrap();
    assert_eq!(k.san.count(), 0);
    assert_eq!(k.alloc.in_use().total(), 0);
    (cal_plain, cal_freed, lazy_switch)
}

#[test]
fn x86_skips_lazy_cpu_for_plain_flush_and_ipis_it_when_tables_freed() {
    let (plain, freed, switched) = x86_lazy(&[]);
    assert_eq!(plain, 0, "a plain flush must not interrupt a lazy CPU");
    assert_eq!(freed, 1, "freeing tables must IPI the lazy CPU");
    assert_eq!(switched, 1, "the lazy CPU leaves the mm (switch_mm to init_mm)");
}

#[test]
fn x86_lazy_tlb_freed_tables_reverted_skips_lazy_cpu_always() {
    let (plain, freed, switched) = x86_lazy(&[Fix::LazyTlbFreedTables]);
    assert_eq!((plain, freed, switched), (0, 0, 0));
}

#[test]
fn arm64_broadcast_reaches_cpu_with_irqs_off() {
    let s = sys(Arch::Arm64, &[]);
    let k = s.kernel().clone();
    let mm = s.mm_alloc().unwrap();
    s.run_user(CpuId(0), &mm, |k, mm| mmap_anon(k, mm, BASE, 8 * PS, true).unwrap()).unwrap();
    let irqs_off = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let (off, rel) = (irqs_off.clone(), release.clone());
    // CPU1 caches a translation, then sits with IRQs off until released.
    let held = s.spawn_user(CpuId(1), &mm, move |k, mm| {
        k.write_user(mm, BASE, 1).unwrap();
        let irq = k.local_irq_save();
        off.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while !rel.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(10) {
            std::hint::spin_loop();
        }
        drop(irq);
    });
    let t0 = Instant::now();
    while !irqs_off.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < Duration::from_secs(10), "CPU1 never disabled IRQs");
        std::thread::yield_now();
    }
    assert!(has_entry(&s, 1, mm.id, BASE));
    // MADV_DONTNEED on CPU0 while CPU1 has IRQs off: the broadcast must not
    // wait for CPU1, and CPU1's entry is gone when it returns.
    s.run_user(CpuId(0), &mm, |k, mm| madvise_dontneed(k, mm, BASE, PS).unwrap()).unwrap();
    assert!(!has_entry(&s, 1, mm.id, BASE), "broadcast TLBI did not reach the IRQs-off CPU");
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 0, "a broadcast TLBI is not an interrupt");
    assert!(k.stats.get_cpu(CpuId(0), Stat::Arm64BroadcastTlbi) >= 1);
    // tlb_remove_table_sync_one, by contrast, is an IPI: it completes only
    // once CPU1 re-enables IRQs.
    let sync = s.spawn_kthread(CpuId(0), |k| mm_core::gather::tlb_remove_table_sync_one(k));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 0, "the IPI cannot land while IRQs are off");
    release.store(true, Ordering::SeqCst);
    held.join(Duration::from_secs(10)).unwrap();
    sync.join(Duration::from_secs(10)).unwrap();
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 1);
    assert_eq!(k.san.count(), 0);
}
