//! exit-storm: many short-lived processes.  Every round, one process per
//! CPU: it is created on its CPU, maps and touches a region, runs a second
//! thread on the next CPU (which then idles with the mm loaded, lazily),
//! optionally forks a child that writes a few pages (copy-on-write) and
//! exits, and finally exits itself: exit_mmap's full-mm gather frees every
//! table (lazy CPUs are interrupted because tables were freed) and mmdrop
//! shoots the lazy CPUs off the mm before the PGD is freed.

use mm_core::config::Arch;
use mm_core::tlb::switch_mm;
use mm_core::CpuId;

use super::{boot, finish, sys, ArchReq, Ctx, Outcome, ParamSpec, Scenario, Until, Work};

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
    run,
};

const BASE: u64 = 0x40_0000_0000;

fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let n = ctx.nr_cpus();
    let (pages, fork) = (ctx.param("pages"), ctx.param("fork") == 1);
    let b = boot(ctx, n * (pages as usize + 64) * 3 + 8192)?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let until = Until::new(ctx.budget);
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
            // Step 2: a second thread on the next CPU reads half the pages.
            &|c| {
                b.sys.spawn_user(cpu((c + 1) % n), &mms[c], move |k, mm| {
                    for p in (0..pages).step_by(2) {
                        k.read_user(mm, BASE + p * ps).expect("second thread reads");
                    }
                    0
                })
            },
            // Step 3: fork + child writes and exits; the process exits.
            &|c| {
                b.sys.spawn_user(cpu(c), &mms[c], move |k, mm| {
                    let mut ops = 0;
                    if fork {
                        let child = sys::fork(k, mm).expect("fork");
                        switch_mm(k, &child);
                        for p in (0..pages).step_by(4) {
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
        for step in steps {
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
    Ok(finish(b, work, err, |_| ()))
}
