//! mprotect-pingpong: threads of one process share a region; every round
//! each thread reads the whole region (so every CPU caches every page),
//! write-protects its own slice, reads it, makes it writable again and
//! writes it.  Each write-protect must shoot down every other CPU's
//! writable entries (change_pte_range → tlb_flush_pte_range → tlb_finish_mmu).

use mm_core::config::Arch;
use mm_core::CpuId;

use super::native::{boot, finish, join_into, sys, Rng, Work, WorkLog};
use super::{ArchReq, Ctx, ParamSpec, Scenario};
use crate::error::RunError;
use crate::outcome::Outcome;

pub(super) const SCENARIO: Scenario = Scenario {
    name: "mprotect-pingpong",
    about: "threads read a shared region and flip their own slice read-only and back (mprotect)",
    params: &[
        ParamSpec { key: "pages", default: 32, min: 1, max: 65536, help: "pages in each thread's slice" },
        ParamSpec { key: "flips", default: 4, min: 1, max: 1_000_000, help: "read-only/read-write flips per round" },
    ],
    exposes: &[],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 1,
    default_iterations: 400,
    frames,
    run,
};

const BASE: u64 = 0x20_0000_0000;

/// Emulated RAM: the shared region and its tables, twice over.
fn frames(ctx: &Ctx) -> usize {
    ctx.nr_cpus() * ctx.param("pages") as usize * 2 + 8192
}

fn run(ctx: &Ctx) -> Result<Outcome, RunError> {
    let n = ctx.nr_cpus();
    let (pages, flips) = (ctx.param("pages"), ctx.param("flips"));
    let b = boot(ctx, frames(ctx))?;
    let mm = b.sys.mm_alloc()?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let total = pages * n as u64;
    b.sys.run_user(CpuId(0), &mm, move |k, mm| {
        sys::mmap_anon(k, mm, BASE, total * ps).expect("mmap of the shared region");
        for p in 0..total {
            k.write_user(mm, BASE + p * ps, p).expect("populate");
        }
    })?;
    let until = b.until;
    let seed = ctx.seed;
    let log = WorkLog::new(n);
    let hs = (0..n)
        .map(|c| {
            let mut w = log.thread(c);
            b.sys.spawn_user(CpuId(c as u32), &mm, move |k, mm| {
                // Seed-drawn: the order the shared region is read in.
                let mut rng = Rng::new(seed, c as u64);
                let mine = BASE + c as u64 * pages * ps;
                'run: while until.more(w.rounds()) {
                    for p in rng.permutation(total) {
                        k.read_user(mm, BASE + p * ps).expect("read the shared region");
                    }
                    for f in 0..flips {
                        if until.expired() {
                            break 'run;
                        }
                        sys::mprotect(k, mm, mine, pages * ps, false).expect("mprotect PROT_READ");
                        w.op();
                        for p in 0..pages {
                            k.read_user(mm, mine + p * ps).expect("read own read-only slice");
                        }
                        sys::mprotect(k, mm, mine, pages * ps, true).expect("mprotect PROT_READ|PROT_WRITE");
                        w.op();
                        for p in 0..pages {
                            k.write_user(mm, mine + p * ps, f).expect("write own slice");
                        }
                    }
                    w.round(&rng);
                }
            })
        })
        .collect();
    let mut err = None;
    join_into(&b, hs, &mut err);
    // The populating mmap on CPU0 is one more syscall.
    let work = Work { ops: 1, ..Default::default() };
    let mut total = log.total();
    total += work;
    Ok(finish(b, total, err, move |k| sys::exit(k, &mm)))
}
