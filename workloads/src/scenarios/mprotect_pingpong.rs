//! mprotect-pingpong: threads of one process share a region; every round
//! each thread reads the whole region (so every CPU caches every page),
//! write-protects its own slice, reads it, makes it writable again and
//! writes it.  Each write-protect must shoot down every other CPU's
//! writable entries (change_pte_range → tlb_flush_pte_range → tlb_finish_mmu).

use mm_core::config::Arch;
use mm_core::CpuId;

use super::{boot, finish, join_into, sys, ArchReq, Ctx, Outcome, ParamSpec, Scenario, Until, Work};

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
    run,
};

const BASE: u64 = 0x20_0000_0000;

fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let n = ctx.nr_cpus();
    let (pages, flips) = (ctx.param("pages"), ctx.param("flips"));
    let b = boot(ctx, n * pages as usize * 2 + 8192)?;
    let mm = b.sys.mm_alloc().map_err(|e| e.to_string())?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let total = pages * n as u64;
    b.sys
        .run_user(CpuId(0), &mm, move |k, mm| {
            sys::mmap_anon(k, mm, BASE, total * ps).expect("mmap of the shared region");
            for p in 0..total {
                k.write_user(mm, BASE + p * ps, p).expect("populate");
            }
        })
        .map_err(|e| e.to_string())?;
    let until = Until::new(ctx.budget);
    let hs = (0..n)
        .map(|c| {
            b.sys.spawn_user(CpuId(c as u32), &mm, move |k, mm| {
                let mut w = Work { ops: 0, rounds: 0 };
                let mine = BASE + c as u64 * pages * ps;
                while until.more(w.rounds) {
                    for p in 0..total {
                        k.read_user(mm, BASE + p * ps).expect("read the shared region");
                    }
                    for f in 0..flips {
                        sys::mprotect(k, mm, mine, pages * ps, false).expect("mprotect PROT_READ");
                        for p in 0..pages {
                            k.read_user(mm, mine + p * ps).expect("read own read-only slice");
                        }
                        sys::mprotect(k, mm, mine, pages * ps, true).expect("mprotect PROT_READ|PROT_WRITE");
                        for p in 0..pages {
                            k.write_user(mm, mine + p * ps, f).expect("write own slice");
                        }
                        w.ops += 2;
                    }
                    w.rounds += 1;
                }
                w
            })
        })
        .collect();
    let mut work = Work { ops: 1, rounds: 0 };
    let mut err = None;
    join_into(&b, hs, &mut work, &mut err);
    Ok(finish(b, work, err, move |k| sys::exit(k, &mm)))
}
