//! docs/RACES.md, “Unshare versus GUP-fast”: hugetlb PMD unsharing versus GUP-fast
//! (1013af4f585f, CVE-2025-38085).  Switch: `hugetlb-unshare-sync`.
//!
//! Three threads on three emulated CPUs, one round per iteration:
//! - **A** (CPU0, a thread of P2): `gup_fast` of P2's first huge page.  It
//!   reads P2's PUD entry (→ the PMD table S that P2 shares with P1) and is
//!   then stalled with IRQs off (an NMI, a preempted vCPU: the
//!   `GupFastPoint::PudRead` hook) for a per-round random time, or until C
//!   reports that S was reused, whichever comes first.  Then it walks on.
//! - **B** (CPU1, another thread of P2): once A is in, `munmap` of P2's
//!   hugetlb VMA: `huge_pmd_unshare` clears P2's PUD; S becomes P1's alone.
//! - **C** (CPU2, P1): once B's munmap returned, P1 reuses S for something
//!   else: `munmap` of its first 2 MiB (splitting the hugetlb VMA at a
//!   non-PUD boundary), an anonymous mapping in its place, and a write fault
//!   there, which hangs a PTE table of P1 into S — and P1's anonymous page Q
//!   under it.
//!
//! If A continues into S after that, it finds P1's PTE table, grabs Q and
//! returns it: its re-checks compare S's slot and the PTE, which both still
//! hold P1's values; nothing re-checks the PUD.  The GUP oracle (forced on)
//! reports `gup-oracle`: Q was never mapped in P2.
//!
//! With `hugetlb-unshare-sync` on, B's `tlb_remove_table_sync_one` (sent
//! while B still holds i_mmap_rwsem, which C's split and munmap need) cannot
//! complete until A re-enables IRQs; A's stall times out, A returns the
//! hugetlb page it legitimately saw, and only then can C reuse S.  The race
//! needs a TLB flush that does not wait for IRQs-off CPUs: on the arm64
//! profile it shows; on x86 B's own flush IPI waits for A even with the
//! switch off (any arch is accepted; only arm64 can find the violation).
//!
//! Needs ≥ 3 CPUs and the x86-64-like geometry (a PUD region must hold a
//! PMD-mapped huge page plus a 2 MiB split); forces `gup_oracle` on.

use std::time::{Duration, Instant};

use emu_cpu::MachineError;
use mm_core::inject::GupFastPoint;
use mm_core::ops::fault::handle_mm_fault;
use mm_core::ops::gup::{gup_fast, put_user_pages, Foll};
use mm_core::ops::{dup_mmap, mmap_anon, mmap_hugetlb, munmap};
use mm_core::page::flags;
use mm_core::sync::{spin_loop, yield_now, Arc, AtomicBool, AtomicU64, Ordering};
use mm_core::{CpuId, Kernel};

use super::{harness, RaceOutcome, RaceParams};
use crate::error::RunError;

/// Longest stall of the walker, and the bound on every handshake wait.
const MAX_STALL: Duration = Duration::from_millis(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Handshake state of one round (the hook is installed once per kernel).
#[derive(Default)]
struct Round {
    /// The next `gup_fast` of the walker should stall at PudRead.
    armed: AtomicBool,
    /// The walker has read P2's PUD and is stalled.
    walker_in: AtomicBool,
    /// B's munmap returned.
    unshared: AtomicBool,
    /// C hung its PTE table into S.
    reused: AtomicBool,
    /// This round's stall, in ns.
    stall_ns: AtomicU64,
    /// The PUD-region address the walker targets.
    va: AtomicU64,
}

impl Round {
    fn reset(&self, stall: Duration, va: u64) {
        self.walker_in.store(false, Ordering::SeqCst);
        self.unshared.store(false, Ordering::SeqCst);
        self.reused.store(false, Ordering::SeqCst);
        self.stall_ns.store(stall.as_nanos() as u64, Ordering::SeqCst);
        self.va.store(va, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// Wait (as a task, IRQs on: servicing IPIs) until `flag` is set; false on timeout.
fn wait_flag(k: &Kernel, flag: &AtomicBool, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        k.smp.cpu_relax();
        yield_now();
        if t0.elapsed() > timeout {
            return false;
        }
    }
    true
}

/// xorshift64*: the per-round stall from the seed.
fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// What one round's walker got.
struct WalkerResult {
    pages: usize,
    got_anon: bool,
}

pub fn run(p: &RaceParams) -> Result<RaceOutcome, RunError> {
    let mut kcfg = p.kcfg.clone();
    kcfg.gup_oracle = true;
    if kcfg.nr_cpus < 3 {
        return Err(RunError::Config(format!(
            "hugetlb-unshare-gup needs at least 3 CPUs (walker, unsharer, reuser); got {}",
            kcfg.nr_cpus
        )));
    }
    let g = kcfg.geometry;
    if g.pud_size() < 4 * g.pmd_size() {
        return Err(RunError::Config(
            "hugetlb-unshare-gup needs a PUD region of at least 4 huge pages (use the x86-64 geometry)".into(),
        ));
    }
    harness::run(p, kcfg, |h| {
        let k = h.k.clone();
        let pud = g.pud_size();
        let hpage = g.pmd_size();
        // The hugetlb area: the second PGD slot (PUD-aligned, away from 0).
        let hbase = 1u64 << g.level_shift(mm_core::hw::pte::Level::Pgd);
        let round = Arc::new(Round::default());
        let hook_round = round.clone();
        let installed = k.inject.race.set_gup_fast(move |_k, point, va| {
            let r = &hook_round;
            if point != GupFastPoint::PudRead
                || va != r.va.load(Ordering::SeqCst)
                || !r.armed.swap(false, Ordering::SeqCst)
            {
                return;
            }
            r.walker_in.store(true, Ordering::SeqCst);
            // Stalled with IRQs off: no interrupt point in here.
            let deadline = Instant::now() + Duration::from_nanos(r.stall_ns.load(Ordering::SeqCst));
            while !r.reused.load(Ordering::SeqCst) && Instant::now() < deadline {
                spin_loop();
                yield_now();
            }
        });
        if !installed {
            return Err(RunError::Driver("gup_fast race hook already installed on this kernel".into()));
        }
        let (a_cpu, b_cpu, c_cpu) = (CpuId(0), CpuId(1), CpuId(2));
        let mut rng = h.p.seed | 1;
        h.rounds(|h, it| {
            let stall = Duration::from_nanos(20_000 + next_rand(&mut rng) % MAX_STALL.as_nanos() as u64);
            let file = h.file(pud / g.page_size());
            // Setup: P1 maps one PUD region of the file and faults its first
            // huge page; P2 is P1's fork, and its first fault there makes it a
            // sharer of P1's PMD table S (fork copies nothing: vma_needs_copy).
            let p1 = h.mm()?;
            let f1 = file.clone();
            let p2 = h.sys.run_user(c_cpu, &p1, move |k, p1| {
                mmap_hugetlb(k, p1, hbase, pud, true, &f1, 0).map_err(RunError::model)?;
                k.write_user(p1, hbase + 8, 0xf11e).map_err(|e| RunError::Model(format!("{e:?}")))?;
                let p2 = dup_mmap(k, p1).map_err(RunError::model)?;
                handle_mm_fault(k, &p2, hbase + 8, false).map_err(|e| RunError::Model(format!("{e:?}")))?;
                Ok::<_, RunError>(p2)
            })??;
            h.adopt(&p2);
            round.reset(stall, hbase);
            let r = round.clone();
            let a = h.sys.spawn_user(a_cpu, &p2, move |k, p2| {
                let pages = gup_fast(k, p2, hbase, 1, Foll::GET);
                let got_anon = pages.iter().any(|q| k.mem.page(*q).test(flags::PG_ANON));
                put_user_pages(k, &pages);
                // If the hook never fired (nothing to walk), let B go anyway.
                r.walker_in.store(true, Ordering::SeqCst);
                WalkerResult { pages: pages.len(), got_anon }
            });
            let r = round.clone();
            let b = h.sys.spawn_user(b_cpu, &p2, move |k, p2| {
                if !wait_flag(k, &r.walker_in, HANDSHAKE_TIMEOUT) {
                    return Err(RunError::Driver("unsharer: the walker never started".to_string()));
                }
                munmap(k, p2, hbase, pud).map_err(RunError::model)?;
                r.unshared.store(true, Ordering::SeqCst);
                Ok(())
            });
            let r = round.clone();
            let c = h.sys.spawn_user(c_cpu, &p1, move |k, p1| {
                if !wait_flag(k, &r.unshared, HANDSHAKE_TIMEOUT) {
                    return Err(RunError::Driver("reuser: the unsharer never finished".to_string()));
                }
                munmap(k, p1, hbase, hpage).map_err(RunError::model)?;
                mmap_anon(k, p1, hbase, hpage, true).map_err(RunError::model)?;
                k.write_user(p1, hbase + 8, 0x51).map_err(|e| RunError::Model(format!("{e:?}")))?;
                r.reused.store(true, Ordering::SeqCst);
                Ok(())
            });
            let in_round = |step: &'static str, e: MachineError| RunError::from(e).during(step).in_round(it);
            let walker = a.join(HANDSHAKE_TIMEOUT * 2).map_err(|e| in_round("walker", e))?;
            b.join(HANDSHAKE_TIMEOUT * 2).map_err(|e| in_round("unsharer", e))??;
            c.join(HANDSHAKE_TIMEOUT * 2).map_err(|e| in_round("reuser", e))??;
            if walker.got_anon && !h.violated() {
                return Err(RunError::Driver("the walker got P1's anonymous page but the oracle saw nothing".into())
                    .in_round(it));
            }
            debug_assert!(walker.pages <= 1);
            // Teardown of the round: both exit, the file goes.
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
