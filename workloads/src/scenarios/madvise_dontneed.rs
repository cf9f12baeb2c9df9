//! madvise-dontneed: will-it-scale's tlb_flush2 pattern — threads of one
//! process on every CPU each touch a page of their own region and drop it
//! with MADV_DONTNEED, one page (or `batch` pages) at a time.  Every
//! madvise is zap_page_range_single with its own gather, mmap_lock held
//! for read, so zaps of different threads run concurrently (the nested
//! gather case of mm_tlb_flush_nested).

use mm_core::config::Arch;
use mm_core::CpuId;

use super::native::{boot, finish, join_into, sys, Rng, WorkLog};
use super::{ArchReq, Ctx, ParamSpec, Scenario};
use crate::error::RunError;
use crate::outcome::Outcome;

pub(super) const SCENARIO: Scenario = Scenario {
    name: "madvise-dontneed",
    about: "will-it-scale tlb_flush2: touch + MADV_DONTNEED one page at a time, threads on every CPU",
    params: &[
        ParamSpec { key: "pages", default: 128, min: 1, max: 65536, help: "pages in each thread's region" },
        ParamSpec { key: "batch", default: 1, min: 1, max: 65536, help: "pages touched per madvise call" },
    ],
    exposes: &[],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 1,
    default_iterations: 50,
    frames,
    run,
};

const BASE: u64 = 0x30_0000_0000;
/// Threads 1 GiB apart: separate PMD tables, so zaps share no table.
const STRIDE: u64 = 1 << 30;

/// Emulated RAM: every thread's region and its tables, twice over.
fn frames(ctx: &Ctx) -> usize {
    ctx.nr_cpus() * (ctx.param("pages") as usize + 64) * 2 + 8192
}

fn run(ctx: &Ctx) -> Result<Outcome, RunError> {
    let n = ctx.nr_cpus();
    let (pages, batch) = (ctx.param("pages"), ctx.param("batch"));
    let b = boot(ctx, frames(ctx))?;
    let mm = b.sys.mm_alloc()?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let until = b.until;
    let seed = ctx.seed;
    let log = WorkLog::new(n);
    let hs = (0..n)
        .map(|c| {
            let mut w = log.thread(c);
            b.sys.spawn_user(CpuId(c as u32), &mm, move |k, mm| {
                // Seed-drawn: the order the batches are visited in each round.
                let mut rng = Rng::new(seed, c as u64);
                let base = BASE + c as u64 * STRIDE;
                sys::mmap_anon(k, mm, base, pages * ps).expect("mmap of the thread's region");
                w.op();
                'run: while until.more(w.rounds()) {
                    for i in rng.permutation(pages.div_ceil(batch)) {
                        if until.expired() {
                            break 'run;
                        }
                        let p = i * batch;
                        let len = batch.min(pages - p);
                        for j in 0..len {
                            k.write_user(mm, base + (p + j) * ps, w.rounds()).expect("touch");
                        }
                        sys::madvise_dontneed(k, mm, base + p * ps, len * ps).expect("madvise(MADV_DONTNEED)");
                        w.op();
                    }
                    w.round(&rng);
                }
            })
        })
        .collect();
    let mut err = None;
    join_into(&b, hs, &mut err);
    Ok(finish(b, log.total(), err, move |k| sys::exit(k, &mm)))
}
