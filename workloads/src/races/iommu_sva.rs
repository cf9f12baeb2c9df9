//! Stress drivers for docs/RACES.md, “Secondary-TLB (IOMMU) invalidation”: a secondary MMU (an SVA device behind
//! an SMMU-like IOMMU, `mm_core::iommu`) sharing an mm with CPU threads
//! (6bbd42e2df8f, switch `secondary-tlb-on-flush`).
//!
//! `run` — the permission-upgrade livelock.  Each round uses a fresh page of
//! a shared file mapping, first mapped read-only by a CPU read fault:
//! - the device (a kernel thread on CPU1: the DMA engine and its IOPF
//!   handler) reads the page — caching a read-only translation if it comes
//!   first — then writes it, retrying after each resolved fault up to
//!   `RETRY_BOUND` times;
//! - a thread of the mm (CPU0) writes the page: `wp_page_shared` upgrades the
//!   PTE in place with `ptep_set_access_flags` → arm64 `flush_tlb_page`.
//!
//! With the fix reverted that flush never reaches the device, whose stale
//! read-only entry makes every retry fault again: `secondary-livelock`.
//! Requires the arm64 profile (x86 `ptep_set_access_flags` does not flush at
//! all; the SMMU story is arm64's) and 2 CPUs.
//!
//! `run_dma_vs_zap` — freed frames.  The device DMAs over a range in a loop
//! while a thread of the mm MADV_DONTNEEDs and re-faults it; every zap frees
//! the pages after the gather's flush.  Both placements of the secondary
//! invalidation (inside the arch flush, or pre-6bbd42e2df8f right after it
//! in `tlb_flush_mmu_tlbonly`) precede the free, so the device never touches
//! a freed frame either way; a missing invalidation would show up as
//! `secondary-tlb-stale`.

use super::{harness, wait_for, RaceOutcome, RaceParams};
use crate::error::RunError;
use mm_core::config::Arch;
use mm_core::iommu::{iommu_sva_bind_device, DmaError};
use mm_core::ops::{madvise_dontneed, mmap_anon, mmap_file};
use mm_core::sync::{Arc, AtomicBool, AtomicU64, Ordering};
use mm_core::CpuId;

const BASE: u64 = 0x4000_0000;
/// Resolved device faults allowed per access before it is a livelock.
pub const RETRY_BOUND: u32 = 8;
/// Pages of the shared file (one per round, reused cyclically).
const FILE_PAGES: u64 = 256;

fn check(p: &RaceParams) -> Result<(), RunError> {
    if p.kcfg.arch != Arch::Arm64 {
        return Err(RunError::Config(format!("iommu_sva models an SMMU on arm64; got arch {}", p.kcfg.arch.name())));
    }
    if p.kcfg.nr_cpus < 2 {
        return Err(RunError::Config(format!("iommu_sva needs 2 CPUs; got {}", p.kcfg.nr_cpus)));
    }
    Ok(())
}

/// The permission-upgrade livelock race.
pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    check(p)?;
    harness::run(p, p.kcfg.clone(), |h| {
        let ps = h.k.cfg.geometry.page_size();
        let file = h.file(FILE_PAGES);
        let mm = h.mm()?;
        let dev = iommu_sva_bind_device(&h.k, &mm, RETRY_BOUND);
        let rounds = h.rounds(|h, round| {
            let va = BASE + ((round - 1) % FILE_PAGES) * ps;
            // A fresh read-only mapping of the round's page.
            let f = file.clone();
            h.sys.run_user(CpuId(0), &mm, move |k, mm| {
                let _ = mm_core::ops::munmap(k, mm, va, ps);
                mmap_file(k, mm, va, ps, true, true, &f, (va - BASE) / ps).expect("mmap");
                k.read_user(mm, va).expect("read fault");
            })?;
            let go = Arc::new(AtomicU64::new(0));
            let delay = h.p.seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 512;
            // Odd rounds line the CPU's write up after the device's read (the
            // commit's sequence: the device caches the read-only entry, then the
            // CPU upgrades it); even rounds race freely after a random delay.
            let ordered = round % 2 == 1;
            let cpu = {
                let go = go.clone();
                h.sys.spawn_user(CpuId(0), &mm, move |k, mm| {
                    go.fetch_add(1, Ordering::SeqCst);
                    wait_for(&go, if ordered { 3 } else { 2 }, k);
                    for _ in 0..delay {
                        mm_core::sync::spin_loop();
                    }
                    k.write_user(mm, va, round).expect("CPU write");
                })
            };
            let device = {
                let (go, dev) = (go.clone(), dev.clone());
                h.sys.spawn_kthread(CpuId(1), move |k| {
                    go.fetch_add(1, Ordering::SeqCst);
                    wait_for(&go, 2, k);
                    let r = dev.dma_read(k, va);
                    go.fetch_add(1, Ordering::SeqCst);
                    k.smp.cond_resched();
                    let w = dev.dma_write(k, va + 8, round);
                    (r, w)
                })
            };
            let res = h.sys.join_all(vec![cpu]);
            let (r, w) = device.join(h.sys.machine.config().hang_timeout)?;
            res?;
            if let Err(e) = r {
                return Err(RunError::Driver(format!("device read failed: {e:?}")).in_round(round));
            }
            if let Err(e) = w {
                if e != DmaError::Livelock {
                    return Err(RunError::Driver(format!("device write failed: {e:?}")).in_round(round));
                }
            }
            Ok(h.violated())
        });
        dev.iommu_sva_unbind_device();
        rounds
    })
}

/// Pages the device and the zapper share in `run_dma_vs_zap`.
pub const DMA_PAGES: u64 = 16;

/// Device DMA concurrent with MADV_DONTNEED + re-fault of the same range.
pub fn run_dma_vs_zap(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    check(p)?;
    harness::run(p, p.kcfg.clone(), |h| {
        let ps = h.k.cfg.geometry.page_size();
        let mm = h.mm()?;
        h.sys
            .run_user(CpuId(0), &mm, move |k, mm| mmap_anon(k, mm, BASE, DMA_PAGES * ps, true))?
            .map_err(|e| RunError::Model(format!("mmap: {e:?}")))?;
        let dev = iommu_sva_bind_device(&h.k, &mm, RETRY_BOUND);
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let device = {
            let (stop, started, dev) = (stop.clone(), started.clone(), dev.clone());
            h.sys.spawn_kthread(CpuId(1), move |k| {
                started.store(true, Ordering::SeqCst);
                let mut n = 0u64;
                // At least one DMA per call, however quickly the CPU side ends.
                while n == 0 || !stop.load(Ordering::SeqCst) {
                    let va = BASE + (n % DMA_PAGES) * ps;
                    // Faults are resolved by re-faulting; a failure means the
                    // page was never there (no VMA) — not expected here.
                    if let Err(e) = dev.dma_read(k, va) {
                        return Err(RunError::Driver(format!("device read {va:#x}: {e:?}")));
                    }
                    n += 1;
                    k.smp.cond_resched();
                }
                Ok(n)
            })
        };
        // The rounds only race with DMA once the device thread is running.
        let t0 = std::time::Instant::now();
        let mut rounds = Ok(());
        while !started.load(Ordering::SeqCst) {
            if t0.elapsed() > h.sys.machine.config().hang_timeout {
                rounds = Err(RunError::Driver("the device thread on CPU1 never started".into()));
                break;
            }
            std::thread::yield_now();
        }
        if rounds.is_ok() {
            rounds = h.rounds(|h, round| {
                h.sys.run_user(CpuId(0), &mm, move |k, mm| {
                    for i in 0..DMA_PAGES {
                        k.write_user(mm, BASE + i * ps, round).expect("touch");
                    }
                    madvise_dontneed(k, mm, BASE, DMA_PAGES * ps).expect("madvise");
                })?;
                Ok(h.violated())
            });
        }
        // The device stops whatever happened to the rounds (the teardown
        // needs CPU1 back); their error comes first.
        stop.store(true, Ordering::SeqCst);
        let n = device.join(h.sys.machine.config().hang_timeout);
        rounds?;
        if n?? == 0 {
            return Err(RunError::Driver("the device never ran".into()));
        }
        dev.iommu_sva_unbind_device();
        Ok(())
    })
}
