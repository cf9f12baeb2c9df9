//! munmap-storm: threads of one process mmap, touch and munmap their own
//! regions on every CPU, and peek into a neighbour's region (so the
//! neighbour's munmap has remote TLB entries to shoot down).  Every munmap
//! is a full mmu_gather cycle: unmap_vmas, free_pgtables (RCU table
//! freeing), tlb_finish_mmu with remote flushes.

use mm_core::config::Arch;
use mm_core::CpuId;

use super::native::{boot, finish, join_into, sys, Rng, WorkLog};
use super::{ArchReq, Ctx, ParamSpec, Scenario};
use crate::error::RunError;
use crate::outcome::Outcome;

pub(super) const SCENARIO: Scenario = Scenario {
    name: "munmap-storm",
    about: "threads mmap, touch and munmap their own regions (chunk by chunk) and peek at a neighbour's",
    params: &[
        ParamSpec { key: "pages", default: 256, min: 1, max: 65536, help: "pages in each thread's region" },
        ParamSpec { key: "chunk", default: 48, min: 1, max: 65536, help: "pages per munmap call" },
        ParamSpec {
            key: "peek",
            default: 8,
            min: 0,
            max: 65536,
            help: "pages of the neighbour's region read per round",
        },
    ],
    exposes: &[],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 1,
    default_iterations: 200,
    frames,
    run,
};

/// Each CPU's region starts here, 1 GiB apart (separate PMD and PUD tables).
pub(super) const BASE: u64 = 0x10_0000_0000;
pub(super) const STRIDE: u64 = 1 << 30;

/// Emulated RAM: every thread's region and its tables, twice over (frames
/// freed through RCU come back a tick later).
fn frames(ctx: &Ctx) -> usize {
    ctx.nr_cpus() * (ctx.param("pages") as usize + 64) * 2 + 8192
}

/// Touches between two looks at the clock.
const TOUCHES_PER_CHECK: u64 = 64;

fn run(ctx: &Ctx) -> Result<Outcome, RunError> {
    let n = ctx.nr_cpus();
    let (pages, chunk, peek) = (ctx.param("pages"), ctx.param("chunk"), ctx.param("peek"));
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
                // Seed-drawn: which neighbour pages are peeked at, and the
                // order the chunks are unmapped in (which munmap frees a
                // table depends on it).
                let mut rng = Rng::new(seed, c as u64);
                let base = BASE + c as u64 * STRIDE;
                let next = BASE + ((c + 1) % n) as u64 * STRIDE;
                'run: while until.more(w.rounds()) {
                    sys::mmap_anon(k, mm, base, pages * ps).expect("mmap of the thread's own region");
                    w.op();
                    for p in 0..pages {
                        if p % TOUCHES_PER_CHECK == TOUCHES_PER_CHECK - 1 && until.expired() {
                            break 'run;
                        }
                        k.write_user(mm, base + p * ps, p ^ c as u64).expect("touch own region");
                    }
                    // The neighbour's region may be mapped or not: SIGSEGV
                    // is a legitimate answer, a stale translation is not.
                    for _ in 0..peek {
                        let _ = k.read_user(mm, next + rng.below(pages) * ps);
                    }
                    for i in rng.permutation(pages.div_ceil(chunk)) {
                        if until.expired() {
                            break 'run;
                        }
                        let p = i * chunk;
                        sys::munmap(k, mm, base + p * ps, chunk.min(pages - p) * ps).expect("munmap");
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
