//! lazy-tlb-walk: x86 lazy TLB and freed page tables (KERNEL-RACES §7,
//! switch `lazy-tlb-freed-tables`, 016c4d92cd16).
//!
//! Every round: a thread of the process on CPU1 maps a few pages at a
//! 1 GiB-aligned address and touches one (its paging-structure cache now
//! points at the PTE, PMD and PUD tables), then CPU1 runs a kernel thread
//! — lazily, the process's page tables still loaded — whose hardware walks
//! speculatively through them (one walk per IRQs-off section; between
//! them IRQs are on and IPIs are taken).  Meanwhile a thread on CPU0
//! munmaps the region: free_pgtables frees all three tables.  The flush
//! says `freed_tables`, so x86 interrupts lazy CPUs too and CPU1 leaves
//! the mm (switch to init_mm) before the tables are freed.  With the rule
//! reverted the lazy CPU is skipped, the tables are freed under its walks,
//! and the sanitizer reports `walk-into-freed-table`.
//!
//! `rcu-table-free=0` by default (bare-metal x86 before 6.15): with RCU
//! table freeing the IRQs-off walks hold the grace period and also close
//! the window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc as StdArc;

use mm_core::config::{Arch, Fix};
use mm_core::hw::mmu::Access;
use mm_core::CpuId;

use super::{boot, finish, sys, ArchReq, Ctx, Outcome, ParamSpec, Scenario, Until, Work};

pub(super) const SCENARIO: Scenario = Scenario {
    name: "lazy-tlb-walk",
    about: "a lazy CPU's speculative page walks while another CPU's munmap frees the tables (x86 lazy TLB, §7)",
    params: &[
        ParamSpec { key: "pages", default: 4, min: 1, max: 512, help: "pages mapped (and unmapped) per round" },
        ParamSpec { key: "walks", default: 200, min: 1, max: 1_000_000, help: "speculative walks after the munmap returned, per round" },
        ParamSpec { key: "rcu-table-free", default: 0, min: 0, max: 1, help: "CONFIG_MMU_GATHER_RCU_TABLE_FREE" },
    ],
    exposes: &[Fix::LazyTlbFreedTables],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 2,
    default_iterations: 100,
    run,
};

const BASE: u64 = 0x50_0000_0000;

fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let (pages, walks) = (ctx.param("pages"), ctx.param("walks"));
    let mut ctx = ctx.clone();
    ctx.kcfg.rcu_table_free = ctx.param("rcu-table-free") == 1;
    let b = boot(&ctx, 8192)?;
    let mm = b.sys.mm_alloc().map_err(|e| e.to_string())?;
    let ps = b.sys.kernel().cfg.geometry.page_size();
    let until = Until::new(ctx.budget);
    let mut work = Work::default();
    let mut err = None;
    let mut first = None;
    while until.more(work.rounds) && !(ctx.stop_on_violation && first.is_some()) {
        let step = b.sys.run_user(CpuId(1), &mm, move |k, mm| {
            sys::mmap_anon(k, mm, BASE, pages * ps).expect("mmap");
            k.write_user(mm, BASE, 1).expect("touch");
        });
        if let Err(e) = step {
            err = Some(e);
            break;
        }
        let unmapped = StdArc::new(AtomicBool::new(false));
        let u = unmapped.clone();
        // CPU1 idles lazily with the mm loaded: its "kernel thread" walks.
        let walker = b.sys.spawn_kthread(CpuId(1), move |k| {
            let mut after = 0;
            while after < walks {
                let done = u.load(Ordering::SeqCst);
                let irq = k.local_irq_save();
                let _ = k.hw.access(CpuId(1), BASE + ps, Access::Read, &k.san);
                drop(irq);
                if done {
                    after += 1;
                }
            }
            0u64
        });
        let unmapper = b.sys.spawn_user(CpuId(0), &mm, move |k, mm| {
            sys::munmap(k, mm, BASE, pages * ps).expect("munmap");
            unmapped.store(true, Ordering::SeqCst);
            2u64
        });
        match b.sys.join_all(vec![unmapper, walker]) {
            Ok(v) => work.ops += v.iter().sum::<u64>(),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
        work.rounds += 1;
        if first.is_none() && b.sys.kernel().san.count() > 0 {
            first = Some(work.rounds);
        }
    }
    let mut out = finish(b, work, err, move |k| sys::exit(k, &mm));
    out.first_violation_at = first;
    Ok(out)
}
