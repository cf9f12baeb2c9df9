//! exit-storm: many short-lived processes.  Every round, one process per
//! CPU: it is created on its CPU, maps and touches a region, runs a second
//! thread on the next CPU (which then idles with the mm loaded, lazily),
//! optionally forks a child that writes a few pages (copy-on-write) and
//! exits, and finally exits itself: exit_mmap's full-mm gather frees every
//! table (lazy CPUs are interrupted because tables were freed); the PGD is
//! freed at the last `mmdrop`, when the last CPU holding the mm as
//! `active_mm` switches away (no IPI for it: mm_count, as on x86).

use mm_core::config::Arch;
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

use super::native::{boot, finish, sys, Rng, Work};
use super::{ArchReq, Ctx, ParamSpec, Scenario};
use crate::error::RunError;
use crate::outcome::Outcome;

pub(super) const SCENARIO: Scenario = Scenario {
    name: "exit-storm",
    about: "short-lived processes on every CPU: mmap, touch, a second thread, fork + child exit, exit",
    params: &[
        ParamSpec { key: "pages", default: 64, min: 1, max: 65536, help: "pages each process maps and touches" },
        ParamSpec { key: "fork", default: 1, min: 0, max: 1, help: "1: fork a child that writes and exits" },
    ],
    exposes: &[],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 1,
    default_iterations: 500,
    frames,
    run,
};

const BASE: u64 = 0x40_0000_0000;

/// Emulated RAM: every process, its child's copies and their tables.
fn frames(ctx: &Ctx) -> usize {
    ctx.nr_cpus() * (ctx.param("pages") as usize + 64) * 3 + 8192
}

fn run(ctx: &Ctx) -> Result<Outcome, RunError> {
    let n = ctx.nr_cpus();
    let (pages, fork) = (ctx.param("pages"), ctx.param("fork") == 1);
    let b = boot(ctx, frames(ctx))?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let until = b.until;
    // Seed-drawn, per process and round: the CPU its second thread runs
    // on, which pages that thread reads and which the child writes.
    let mut rng = Rng::new(ctx.seed, 0);
    let mut work = Work::default();
    let mut err = None;
    let cpu = |c: usize| CpuId(c as u32);
    'rounds: while until.more(work.rounds / n as u64) {
        // Step 1: each process is born on its CPU and maps + touches.
        let mms: Vec<_> = (0..n).map(|c| b.sys.spawn_kthread(cpu(c), |k| k.mm_alloc())).collect();
        let mms = match b.sys.join_all(mms) {
            Ok(m) => m,
            Err(e) => {
                err = Some(e);
                break;
            }
        };
        let picks: Vec<(usize, Vec<u64>, Vec<u64>)> = (0..n)
            .map(|c| {
                let other = if n == 1 { c } else { (c + 1 + rng.below(n as u64 - 1) as usize) % n };
                let mut reads = rng.permutation(pages);
                reads.truncate(pages.div_ceil(2) as usize);
                let mut writes = rng.permutation(pages);
                writes.truncate(pages.div_ceil(4) as usize);
                (other, reads, writes)
            })
            .collect();
        // Once the time is up, the processes skip to their exit (step 3
        // without the fork): every mm still exits.
        let steps: [&dyn Fn(usize) -> emu_cpu::TaskHandle<u64>; 3] = [
            &|c| {
                b.sys.spawn_user(cpu(c), &mms[c], move |k, mm| {
                    sys::mmap_anon(k, mm, BASE, pages * ps).expect("mmap");
                    for p in 0..pages {
                        k.write_user(mm, BASE + p * ps, p).expect("touch");
                    }
                    1
                })
            },
            // Step 2: a second thread on another CPU reads half the pages.
            &|c| {
                let reads = picks[c].1.clone();
                b.sys.spawn_user(cpu(picks[c].0), &mms[c], move |k, mm| {
                    for p in reads {
                        k.read_user(mm, BASE + p * ps).expect("second thread reads");
                    }
                    0
                })
            },
            // Step 3: fork + child writes and exits; the process exits.
            &|c| {
                let writes = picks[c].2.clone();
                let fork = fork && !until.expired();
                b.sys.spawn_user(cpu(c), &mms[c], move |k, mm| {
                    let mut ops = 0;
                    if fork {
                        let child = sys::fork(k, mm).expect("fork");
                        switch_mm(k, &child);
                        for p in writes {
                            k.write_user(&child, BASE + p * ps, !p).expect("child writes (COW)");
                        }
                        sys::exit(k, &child);
                        switch_mm(k, mm);
                        ops += 2;
                    }
                    sys::exit(k, mm);
                    ops + 1
                })
            },
        ];
        for (i, step) in steps.iter().enumerate() {
            if i == 1 && until.expired() {
                continue;
            }
            let hs = (0..n).map(step).collect();
            match b.sys.join_all(hs) {
                Ok(v) => work.ops += v.iter().sum::<u64>(),
                Err(e) => {
                    err = Some(e);
                    break 'rounds;
                }
            }
        }
        work.rounds += n as u64;
    }
    work.digest = rng.digest();
    Ok(finish(b, work, err, |_| ()))
}
