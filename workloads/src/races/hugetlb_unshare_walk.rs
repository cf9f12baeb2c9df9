//! docs/RACES.md, “Unshare versus the walk cache”: a hardware walk through a
//! hugetlb PMD table its mm unshared and the other sharer reused
//! (c2ff4764e03e, Fixes: 8ce720d5bd91).  Switch: `arm64-unshare-walk-cache`.
//!
//! Three threads on three emulated CPUs, one round per iteration:
//! - **A** (CPU0, a thread of P2): reads P2's first hugetlb word — the
//!   hardware walk caches P2's PUD → the PMD table S that P2 shares with P1
//!   — and, once C reports S reused, reads it again: a use after munmap
//!   that must fault (SIGSEGV).
//! - **B** (CPU1, another thread of P2): once A has read, `munmap` of P2's
//!   hugetlb VMA: `huge_pmd_unshare` clears P2's PUD and the gather flushes
//!   the PUD region (arm64 `tlb_flush`).
//! - **C** (CPU2, P1): once B's munmap returned, P1 reuses S: `munmap` of
//!   its first 2 MiB, an anonymous mapping in its place and a write fault,
//!   which hangs a PTE table of P1 (and P1's anonymous page) into S.
//!
//! With the switch off, arm64's `tlb_flush` after an unshare is last-level
//! only (TLBI RVALE1IS, TTL=2): A's 2 MiB TLB entry goes, A's walk-cache
//! entry for S stays, and A's second read walks from it through S into
//! P1's PTE table and reads P1's page: `walk-into-unshared-table`.  With
//! the switch on the flush is RVAE1IS and the read faults.  The bug needs
//! FEAT_TLBIRANGE (`KernelConfig::arm64`, the default): without range
//! TLBIs the PUD-sized flush is MAX_DVM_OPS strides and becomes
//! `flush_tlb_mm`; x86's INVLPG drops every paging-structure cache entry of
//! the PCID and the NO_RANGE profile flushes the whole mm (any arch is
//! accepted; only arm64 with range TLBIs can find the violation).
//!
//! Needs ≥ 3 CPUs and the x86-64-like geometry (a PUD region must hold a
//! PMD-mapped huge page plus a 2 MiB split).

use std::time::{Duration, Instant};

use emu_cpu::MachineError;
use mm_core::ops::{dup_mmap, mmap_anon, mmap_hugetlb, munmap};
use mm_core::sync::{yield_now, Arc, AtomicBool, Ordering};
use mm_core::{CpuId, Kernel};

use super::{harness, RaceOutcome, RaceParams};
use crate::error::RunError;

/// The bound on every handshake wait.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// P1's word in its anonymous page, and in the hugetlb page.
const ANON_WORD: u64 = 0x51;
const HUGE_WORD: u64 = 0xf11e;

/// Handshake state of one round.
#[derive(Default)]
struct Round {
    /// A's first read is done (its walk cache holds P2's PUD → S).
    walked: AtomicBool,
    /// B's munmap returned.
    unshared: AtomicBool,
    /// C hung its PTE table into S.
    reused: AtomicBool,
}

/// Wait (as a task, IRQs on: servicing IPIs) until `flag` is set; false on timeout.
fn wait_flag(k: &Kernel, flag: &AtomicBool) -> bool {
    let t0 = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        k.smp.cpu_relax();
        yield_now();
        if t0.elapsed() > HANDSHAKE_TIMEOUT {
            return false;
        }
    }
    true
}

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    let kcfg = p.kcfg.clone();
    if kcfg.nr_cpus < 3 {
        return Err(RunError::Config(format!(
            "hugetlb-unshare-walk needs at least 3 CPUs (reader, unsharer, reuser); got {}",
            kcfg.nr_cpus
        )));
    }
    let g = kcfg.geometry;
    if g.pud_size() < 4 * g.pmd_size() {
        return Err(RunError::Config(
            "hugetlb-unshare-walk needs a PUD region of at least 4 huge pages (use the x86-64 geometry)".into(),
        ));
    }
    harness::run(p, kcfg, |h| {
        let pud = g.pud_size();
        let hpage = g.pmd_size();
        // The hugetlb area: the second PGD slot; an anonymous neighbour in
        // the same PGD region keeps P2's PUD table, so its munmap frees no
        // table (a freed table would make every arch flush the walk cache).
        let hbase = 1u64 << g.level_shift(mm_core::hw::pte::Level::Pgd);
        let neighbour = hbase + (pud << (g.pt_bits - 1));
        let (a_cpu, b_cpu, c_cpu) = (CpuId(0), CpuId(1), CpuId(2));
        h.rounds(|h, it| {
            let file = h.file(pud / g.page_size());
            let p1 = h.mm()?;
            let f1 = file.clone();
            let p2 = h.sys.run_user(c_cpu, &p1, move |k, p1| {
                mmap_anon(k, p1, neighbour, g.page_size(), true).map_err(RunError::model)?;
                mmap_hugetlb(k, p1, hbase, pud, true, &f1, 0).map_err(RunError::model)?;
                k.write_user(p1, hbase + 8, HUGE_WORD).map_err(|e| RunError::Model(format!("{e:?}")))?;
                dup_mmap(k, p1).map_err(RunError::model)
            })??;
            h.adopt(&p2);
            let round = Arc::new(Round::default());
            let r = round.clone();
            let a = h.sys.spawn_user(a_cpu, &p2, move |k, p2| {
                let first = k.read_user(p2, hbase + 8);
                r.walked.store(true, Ordering::SeqCst);
                if first != Ok(HUGE_WORD) {
                    return Err(RunError::Driver(format!("reader: the shared hugetlb word read {first:?}")));
                }
                if !wait_flag(k, &r.reused) {
                    return Err(RunError::Driver("reader: the reuser never finished".into()));
                }
                // After munmap returned: must be a fault.
                Ok(k.read_user(p2, hbase + 8).ok())
            });
            let r = round.clone();
            let b = h.sys.spawn_user(b_cpu, &p2, move |k, p2| {
                if !wait_flag(k, &r.walked) {
                    return Err(RunError::Driver("unsharer: the reader never read".into()));
                }
                munmap(k, p2, hbase, pud).map_err(RunError::model)?;
                r.unshared.store(true, Ordering::SeqCst);
                Ok(())
            });
            let r = round.clone();
            let c = h.sys.spawn_user(c_cpu, &p1, move |k, p1| {
                if !wait_flag(k, &r.unshared) {
                    return Err(RunError::Driver("reuser: the unsharer never finished".into()));
                }
                munmap(k, p1, hbase, hpage).map_err(RunError::model)?;
                mmap_anon(k, p1, hbase, hpage, true).map_err(RunError::model)?;
                k.write_user(p1, hbase + 8, ANON_WORD).map_err(|e| RunError::Model(format!("{e:?}")))?;
                r.reused.store(true, Ordering::SeqCst);
                Ok(())
            });
            let in_round = |step: &'static str, e: MachineError| RunError::from(e).during(step).in_round(it);
            let read = a.join(HANDSHAKE_TIMEOUT * 2).map_err(|e| in_round("reader", e))?;
            b.join(HANDSHAKE_TIMEOUT * 2).map_err(|e| in_round("unsharer", e))??;
            c.join(HANDSHAKE_TIMEOUT * 2).map_err(|e| in_round("reuser", e))??;
            let read = read?;
            if read.is_some() && !h.violated() {
                return Err(RunError::Driver(format!(
                    "the reader read {read:?} after munmap returned but the sanitizer saw nothing"
                ))
                .in_round(it));
            }
            h.exit_mm(b_cpu, &p2)?;
            h.exit_mm(c_cpu, &p1)?;
            let still = h.truncate(c_cpu, &file)?;
            if still != 0 {
                return Err(
                    RunError::Driver(format!("{still} hugetlb pages still mapped after both exits")).in_round(it)
                );
            }
            Ok(h.violated())
        })
    })
}
