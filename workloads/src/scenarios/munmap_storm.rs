//! munmap-storm: threads of one process mmap, touch and munmap their own
//! regions on every CPU, and peek into a neighbour's region (so the
//! neighbour's munmap has remote TLB entries to shoot down).  Every munmap
//! is a full mmu_gather cycle: unmap_vmas, free_pgtables (RCU table
//! freeing), tlb_finish_mmu with remote flushes.

use mm_core::config::Arch;
use mm_core::CpuId;

use super::{boot, finish, join_into, sys, ArchReq, Ctx, Outcome, ParamSpec, Rng, Scenario, Until, Work};

pub(super) const SCENARIO: Scenario = Scenario {
    name: "munmap-storm",
    about: "threads mmap, touch and munmap their own regions (chunk by chunk) and peek at a neighbour's",
    params: &[
        ParamSpec { key: "pages", default: 256, min: 1, max: 65536, help: "pages in each thread's region" },
        ParamSpec { key: "chunk", default: 48, min: 1, max: 65536, help: "pages per munmap call" },
        ParamSpec { key: "peek", default: 8, min: 0, max: 65536, help: "pages of the neighbour's region read per round" },
    ],
    exposes: &[],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 1,
    default_iterations: 200,
    run,
};

/// Each CPU's region starts here, 1 GiB apart (separate PMD and PUD tables).
pub(super) const BASE: u64 = 0x10_0000_0000;
pub(super) const STRIDE: u64 = 1 << 30;

fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let n = ctx.nr_cpus();
    let (pages, chunk, peek) = (ctx.param("pages"), ctx.param("chunk"), ctx.param("peek"));
    let b = boot(ctx, n * (pages as usize + 64) * 2 + 8192)?;
    let mm = b.sys.mm_alloc().map_err(|e| e.to_string())?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let until = Until::new(ctx.budget);
    let seed = ctx.seed;
    let hs = (0..n)
        .map(|c| {
            b.sys.spawn_user(CpuId(c as u32), &mm, move |k, mm| {
                let mut rng = Rng::new(seed, c as u64);
                let mut w = Work::default();
                let base = BASE + c as u64 * STRIDE;
                let next = BASE + ((c + 1) % n) as u64 * STRIDE;
                while until.more(w.rounds) {
                    sys::mmap_anon(k, mm, base, pages * ps).expect("mmap of the thread's own region");
                    w.ops += 1;
                    for p in 0..pages {
                        k.write_user(mm, base + p * ps, p ^ c as u64).expect("touch own region");
                    }
                    // The neighbour's region may be mapped or not: SIGSEGV
                    // is a legitimate answer, a stale translation is not.
                    for _ in 0..peek {
                        let _ = k.read_user(mm, next + rng.below(pages) * ps);
                    }
                    let mut p = 0;
                    while p < pages {
                        let len = chunk.min(pages - p);
                        sys::munmap(k, mm, base + p * ps, len * ps).expect("munmap");
                        w.ops += 1;
                        p += len;
                    }
                    w.rounds += 1;
                }
                w
            })
        })
        .collect();
    let mut work = Work::default();
    let mut err = None;
    join_into(&b, hs, &mut work, &mut err);
    Ok(finish(b, work, err, move |k| sys::exit(k, &mm)))
}
