//! Race scenarios: one small adapter per race driver (`races::<x>::run`).
//!
//! Each adapter only names the driver, the switch it exposes, the arch and
//! CPU count it needs and a default round count; `race_adapter` /
//! `chunked` do the budget and the summing of counters and leaks over
//! machines (each driver's harness tears down and leak-checks its machine).

use std::collections::BTreeMap;

use mm_core::config::{Arch, Fix};

use super::race_adapter::{chunked, race_adapter};
use super::{config_frames, ArchReq, Ctx, ParamSpec, Program, Scenario};
use crate::error::RunError;
use crate::outcome::Outcome;
use crate::races::fork_exit_hugetlb::{self, Shape};
use crate::races::khugepaged_gup::{self, Scenario as Khp};
use crate::races::{
    gup_table_free, hugetlb_unshare_gup, hugetlb_unshare_walk, iommu_sva, large_folio_zap, lazy_tlb, nested_zap,
    pfnmap_unmap, writeback_race, RaceOutcome,
};
use mm_core::config::Geometry;

/// The khugepaged drivers' geometry: 64-entry tables make each collapse
/// cheap (more rounds per second); the race is the same.
const KHUGEPAGED_GEOMETRY: Geometry = Geometry { page_shift: 12, pt_bits: 6 };

pub(super) const LAZY_TLB: Scenario = Scenario {
    name: "lazy-tlb",
    about: "a lazy CPU's speculative page walks while another CPU's munmap frees the tables (x86 lazy TLB, RACES.md “x86 lazy TLB and freed page tables”)",
    params: &[],
    exposes: &[Fix::LazyTlbFreedTables],
    arch: ArchReq::Requires(Arch::X86),
    min_cpus: 2,
    default_iterations: 60,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 20, lazy_tlb::run) },
};

pub(super) const GUP_TABLE_FREE: Scenario = Scenario {
    name: "gup-table-free",
    about: "GUP-fast stalled with IRQs off while munmap frees the tables it walks (docs/RACES.md, “GUP-fast versus page-table freeing”)",
    params: &[ParamSpec {
        key: "rcu-table-free",
        default: 1,
        min: 0,
        max: 1,
        help: "CONFIG_MMU_GATHER_RCU_TABLE_FREE; 0 on arm64 shows the walk into a freed table",
    }],
    exposes: &[],
    arch: ArchReq::Default(Arch::Arm64),
    min_cpus: 2,
    default_iterations: 300,
    program: Program::Rust { frames: config_frames, run: |ctx| {
        let mut ctx = ctx.clone();
        ctx.kcfg.rcu_table_free = ctx.param("rcu-table-free") == 1;
        race_adapter(&ctx, 100, gup_table_free::run)
    } },
};

fn khugepaged(ctx: &Ctx, sc: Khp, tweak: impl Fn(&mut mm_core::KernelConfig)) -> Result<Outcome, RunError> {
    let mut ctx = ctx.clone();
    ctx.kcfg.geometry = KHUGEPAGED_GEOMETRY;
    tweak(&mut ctx.kcfg);
    chunked(&ctx, 20, |p| khugepaged_gup::run_scenario(p, sc))
}

pub(super) const KHUGEPAGED_GUP: Scenario = Scenario {
    name: "khugepaged-gup",
    about: "khugepaged collapses (anon) and zaps the THP while GUP-fast walks the old PTE table (RACES.md “The PTE table freed under the walker”, 2ba99c5e0881)",
    params: &[],
    exposes: &[Fix::KhugepagedGupFastIpi],
    arch: ArchReq::Requires(Arch::Arm64),
    min_cpus: 2,
    default_iterations: 1000,
    program: Program::Rust { frames: config_frames, run: |ctx| khugepaged(ctx, Khp::BAnon, |k| k.rcu_table_free = true) },
};

pub(super) const KHUGEPAGED_GUP_FILE: Scenario = Scenario {
    name: "khugepaged-gup-file",
    about: "retract_page_tables frees a file PTE table while GUP-fast walks it (RACES.md “The PTE table freed under the walker” file, 2022 path without pte_free_defer)",
    params: &[],
    exposes: &[Fix::KhugepagedGupFastIpi],
    arch: ArchReq::Requires(Arch::Arm64),
    min_cpus: 2,
    default_iterations: 1000,
    program: Program::Rust { frames: config_frames, run: |ctx| {
        khugepaged(ctx, Khp::BFile, |k| {
            k.rcu_table_free = true;
            k.pte_free_defer = false;
        })
    } },
};

pub(super) const KHUGEPAGED_GUP_PIN: Scenario = Scenario {
    name: "khugepaged-gup-pin",
    about:
        "GUP-fast pins a page khugepaged is collapsing away (RACES.md “Stale pin of a collapsed page”, 70cbc3cc78a9; runs with khugepaged-gup-fast-ipi off)",
    params: &[],
    exposes: &[Fix::GupPmdRecheck],
    arch: ArchReq::Requires(Arch::Arm64),
    min_cpus: 2,
    default_iterations: 1000,
    // Either fix closes RACES.md “Stale pin of a collapsed page”: the sync IPI is switched off so the PMD
    // re-check is what the run measures.
    program: Program::Rust { frames: config_frames, run: |ctx| khugepaged(ctx, Khp::A, |k| k.fixes.set(Fix::KhugepagedGupFastIpi, false)) },
};

pub(super) const HUGETLB_UNSHARE_GUP: Scenario = Scenario {
    name: "hugetlb-unshare-gup",
    about: "GUP-fast stalled in a shared hugetlb PMD table while it is unshared and reused (CVE-2025-38085)",
    params: &[],
    exposes: &[Fix::HugetlbUnshareSync],
    arch: ArchReq::Default(Arch::Arm64),
    min_cpus: 3,
    default_iterations: 40,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 10, hugetlb_unshare_gup::run) },
};

pub(super) const HUGETLB_UNSHARE_WALK: Scenario = Scenario {
    name: "hugetlb-unshare-walk",
    about: "a thread reads a hugetlb page its sibling unmapped, through the walk cache of the PMD table the unmap unshared and the other sharer reused (arm64, c2ff4764e03e)",
    params: &[],
    exposes: &[Fix::Arm64UnshareWalkCache],
    arch: ArchReq::Default(Arch::Arm64),
    min_cpus: 3,
    default_iterations: 40,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 10, hugetlb_unshare_walk::run) },
};

pub(super) const FORK_EXIT_HUGETLB: Scenario = Scenario {
    name: "fork-exit-hugetlb",
    about:
        "a parent maps a large shared hugetlb area, forks children that touch a few pages and exit (2025 regression)",
    params: &[
        ParamSpec {
            key: "tables",
            default: Shape::DEFAULT.tables,
            min: 1,
            max: 64,
            help: "PUD regions of the area = shared PMD tables per child (N)",
        },
        ParamSpec {
            key: "children",
            default: Shape::DEFAULT.children,
            min: 1,
            max: 256,
            help: "children forked per round",
        },
        ParamSpec {
            key: "touch",
            default: Shape::DEFAULT.touch,
            min: 0,
            max: 1024,
            help: "huge pages each child writes",
        },
    ],
    exposes: &[Fix::HugetlbUnshareBatched],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 2,
    default_iterations: 2,
    program: Program::Rust { frames: config_frames, run: fork_exit },
};

/// fork-exit-hugetlb: a round is one parent with `children` children.
/// Metrics: sync broadcasts per exiting child, split by whether its exit
/// left the tables exclusive to the parent (last sharer) or not.
fn fork_exit(ctx: &Ctx) -> Result<Outcome, RunError> {
    let (mut last, mut other, mut syncs_last, mut syncs_other, mut parent) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let tables = ctx.param("tables");
    let mut out = chunked(ctx, 1, |p| {
        let o = fork_exit_hugetlb::run(p)?;
        for c in &o.details.per_child {
            if c.last_sharer {
                last += 1;
                syncs_last += c.sync_broadcasts;
            } else {
                other += 1;
                syncs_other += c.sync_broadcasts;
            }
        }
        parent += o.details.parent_exit_syncs;
        // A count workload: no round is "the first violation".
        let o = o.plain();
        let timing = crate::races::RoundTiming { first_violation_after: None, ..o.timing };
        Ok(RaceOutcome { first_violation_at: None, timing, ..o })
    })?;
    let avg = |s: u64, n: u64| if n == 0 { 0.0 } else { s as f64 / n as f64 };
    out.metrics = BTreeMap::from([
        ("shared_tables_per_child".to_string(), tables as f64),
        ("last_sharer_exits".to_string(), last as f64),
        ("syncs_per_last_sharer_exit".to_string(), avg(syncs_last, last)),
        ("other_exits".to_string(), other as f64),
        ("syncs_per_other_exit".to_string(), avg(syncs_other, other)),
        ("parent_exit_syncs".to_string(), parent as f64),
    ]);
    Ok(out)
}

pub(super) const WRITEBACK_RACE: Scenario = Scenario {
    name: "writeback-race",
    about: "MADV_DONTNEED of dirty shared file pages while msync cleans and fadvise evicts them (RACES.md “Delayed rmap removal”, delayed rmap)",
    params: &[],
    exposes: &[Fix::DelayRmap],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 2,
    default_iterations: 300,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 50, writeback_race::run) },
};

pub(super) const IOMMU_SVA: Scenario = Scenario {
    name: "iommu-sva",
    about: "an SVA device's write retries vs a CPU's permission upgrade that must invalidate the IOMMU TLB (RACES.md “Secondary-TLB (IOMMU) invalidation”)",
    params: &[],
    exposes: &[Fix::SecondaryTlbOnFlush],
    arch: ArchReq::Requires(Arch::Arm64),
    min_cpus: 2,
    default_iterations: 100,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 20, iommu_sva::run) },
};

pub(super) const IOMMU_SVA_DMA: Scenario = Scenario {
    name: "iommu-sva-dma",
    about: "an SVA device DMAs over a range while a thread MADV_DONTNEEDs and re-faults it (RACES.md “Secondary-TLB (IOMMU) invalidation”, freed frames)",
    params: &[],
    exposes: &[],
    arch: ArchReq::Requires(Arch::Arm64),
    min_cpus: 2,
    default_iterations: 5000,
    // Long calls: every call waits for its device thread to start before
    // its rounds (on an oversubscribed host, 8 CPUs on 2 cores, CPU1's
    // thread may run only after a while), and 200 rounds of ~50 µs keep that
    // wait a small share of the run.
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 200, iommu_sva::run_dma_vs_zap) },
};

pub(super) const NESTED_ZAP: Scenario = Scenario {
    name: "nested-zap",
    about: "two MADV_DONTNEEDs of one mm under mmap_lock read; the one that finds nothing must still flush (RACES.md “Concurrent zaps under a shared lock”)",
    params: &[],
    exposes: &[Fix::NestedFlushDetect],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 2,
    default_iterations: 300,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 50, nested_zap::run) },
};

pub(super) const LARGE_FOLIO_ZAP: Scenario = Scenario {
    name: "large-folio-zap",
    about: "map PTE-mapped 2 MiB anonymous folios and MADV_DONTNEED them (gather slots per folio vs per page)",
    params: &[],
    exposes: &[Fix::FolioPagesBatching],
    arch: ArchReq::Default(Arch::X86),
    min_cpus: 1,
    default_iterations: 20,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 5, large_folio_zap::run) },
};

pub(super) const PFNMAP_UNMAP: Scenario = Scenario {
    name: "pfnmap-unmap",
    about: "munmap of a driver's PFN mapping while another CPU loads from it; the driver frees its frames once the VMA left i_mmap (MMU_GATHER_NO_RANGE, RACES.md “munmap of a PFN mapping versus the driver's free”)",
    params: &[],
    exposes: &[Fix::NoRangeVmaPfn],
    arch: ArchReq::Requires(Arch::GenericNoRange),
    min_cpus: 2,
    default_iterations: 40,
    program: Program::Rust { frames: config_frames, run: |ctx| race_adapter(ctx, 10, pfnmap_unmap::run) },
};
