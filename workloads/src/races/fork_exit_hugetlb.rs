//! The 2025 regression workload (docs/RACES.md, “One sync per gather”, reported against
//! the CVE-2025-38085 backport; fixed by 8ce720d5bd91): a parent maps a large
//! shared hugetlb area, forks children that each touch a few pages and exit.
//! Every child shares all of the parent's PMD tables (one per PUD region,
//! 1 GiB on x86-64), so every child exit unshares all of them.
//!
//! Per exiting child the report gives the `tlb_remove_table_sync_one`
//! broadcasts its exit cost:
//! - `hugetlb-unshare-batched` off (1013af4f585f): one per unshared table,
//!   N per child, last sharer or not;
//! - on (8ce720d5bd91): 0 for a child that is not the last sharer (the
//!   parent and other children still share the tables), 1 for the child
//!   whose exit leaves the tables exclusive to the parent — one per gather,
//!   however many tables;
//! - `hugetlb-unshare-sync` off (before 1013af4f585f): 0 for everyone.
//!
//! A round is one parent (with its own file) and its children; the
//! children run one after another (each on the next CPU after CPU0, where
//! the parent runs), so each count is exactly that child's.  The shape
//! (`tables`, `children`, `touch`) comes from `RaceParams::params`, the
//! `fork-exit-hugetlb` scenario's `--param`s; the per-child numbers are the
//! outcome's `details`.  A count workload: no round ends the run early.

use std::collections::BTreeMap;

use mm_core::ops::dup_mmap;
use mm_core::ops::fault::handle_mm_fault;
use mm_core::ops::hugetlb::{huge_pte_offset, ptdesc_pmd_pts_count};
use mm_core::ops::mmap_hugetlb;
use mm_core::stats::Stat;
use mm_core::CpuId;

use super::{harness, RaceOutcome, RaceParams};
use crate::error::RunError;

/// What each round does (`--param`s of the scenario).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Size of the shared area in PUD regions: the number of shared PMD
    /// tables per child (N).
    pub tables: u64,
    /// Children forked per round.
    pub children: u64,
    /// Huge pages each child touches (writes), chosen at random among the
    /// first `POOL` huge pages of each PUD region.
    pub touch: u64,
}

impl Shape {
    /// The scenario's defaults.
    pub const DEFAULT: Shape = Shape { tables: 8, children: 4, touch: 4 };

    /// From `p.params`; a key that is not there takes its default.
    pub fn of(p: &RaceParams) -> Shape {
        let get = |key, default| p.params.get(key).copied().unwrap_or(default);
        let d = Shape::DEFAULT;
        Shape { tables: get("tables", d.tables), children: get("children", d.children), touch: get("touch", d.touch) }
    }

    /// As `RaceParams::params`.
    pub fn params(self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([("tables", self.tables), ("children", self.children), ("touch", self.touch)])
    }
}

/// Huge pages per PUD region the children choose from.
const POOL: u64 = 2;

/// One child's exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildExit {
    /// The round (1-based) whose parent forked it.
    pub round: u64,
    pub child: usize,
    pub cpu: u32,
    /// Its exit left the tables exclusive to the parent (share count 1 → 0).
    pub last_sharer: bool,
    /// `tlb_remove_table_sync_one` broadcasts during the child's exit.
    pub sync_broadcasts: u64,
    /// CAL interrupts those broadcasts raised on the other CPUs.
    pub call_interrupts: u64,
}

/// The per-child numbers of a run (`RaceOutcome::details`).
#[derive(Clone, Debug, Default)]
pub struct ForkExit {
    /// Shared PMD tables per child (N).
    pub tables: u64,
    /// Every child's exit, round by round.
    pub per_child: Vec<ChildExit>,
    /// Broadcasts of the parents' own exits at the end of each round (their
    /// tables are exclusive again by then: 0).
    pub parent_exit_syncs: u64,
}

fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Run the workload; see the module doc.
pub fn run(p: &RaceParams) -> Result<RaceOutcome<ForkExit>, RunError> {
    let shape = Shape::of(p);
    if shape.tables == 0 || shape.children == 0 {
        return Err(RunError::Config("fork-exit-hugetlb needs at least one table and one child".into()));
    }
    let mut kcfg = p.kcfg.clone();
    let g = kcfg.geometry;
    if g.pud_size() < POOL * g.pmd_size() {
        return Err(RunError::Config(
            "fork-exit-hugetlb needs a PUD region of several huge pages (use the x86-64 geometry)".into(),
        ));
    }
    // Every touched huge page, the tables and some slack must fit.
    let need = (shape.tables * POOL * g.hpage_pmd_nr() + 64 * (shape.children + 2) + 1024) as usize;
    kcfg.ram_frames = kcfg.ram_frames.max(need.next_power_of_two());
    harness::run(p, kcfg, |h| {
        let k = h.k.clone();
        let n = h.sys.nr_cpus();
        let (pud, hpage) = (g.pud_size(), g.pmd_size());
        let hbase = 1u64 << g.level_shift(mm_core::hw::pte::Level::Pgd);
        let len = shape.tables * pud;
        let mut out = ForkExit { tables: shape.tables, ..ForkExit::default() };
        h.rounds(|h, round| {
            let file = h.file(len / g.page_size());
            let parent = h.mm()?;
            let f = file.clone();
            // The parent maps the area and faults one huge page per PUD region, so
            // it has a PMD table for each; then it forks the children.
            h.sys.run_user(CpuId(0), &parent, move |k, mm| -> Result<(), RunError> {
                mmap_hugetlb(k, mm, hbase, len, true, &f, 0).map_err(RunError::model)?;
                for i in 0..len / pud {
                    k.write_user(mm, hbase + i * pud, i).map_err(|e| RunError::Model(format!("{e:?}")))?;
                }
                Ok(())
            })??;
            let mut kids = Vec::with_capacity(shape.children as usize);
            for _ in 0..shape.children {
                // fork copies nothing of the hugetlb VMA (vma_needs_copy): each
                // child's first fault in a PUD region makes it a sharer of the
                // parent's table there (huge_pmd_share).  Every child takes
                // that fault in every region before any child exits, so all of
                // them share all the tables (the fault path only: no TLB or
                // mm_cpumask of the child's is touched).
                let c = h.sys.run_user(CpuId(0), &parent, move |k, mm| -> Result<_, RunError> {
                    let c = dup_mmap(k, mm).map_err(RunError::model)?;
                    for i in 0..len / pud {
                        handle_mm_fault(k, &c, hbase + i * pud, false)
                            .map_err(|e| RunError::Model(format!("{e:?}")))?;
                    }
                    Ok(c)
                })??;
                h.adopt(&c);
                kids.push(c);
            }
            let first_table = huge_pte_offset(&k, &parent, hbase)
                .ok_or_else(|| RunError::Driver("the parent has no PMD table".into()))?;
            let mut rng = h.p.seed.wrapping_add(round - 1) | 1;
            for (i, child) in kids.into_iter().enumerate() {
                let cpu = CpuId(if n > 1 { 1 + (i % (n - 1)) as u32 } else { 0 });
                let touches: Vec<u64> = (0..shape.touch)
                    .map(|_| {
                        let region = next_rand(&mut rng) % shape.tables;
                        let page = next_rand(&mut rng) % POOL;
                        hbase + region * pud + page * hpage + 8
                    })
                    .collect();
                h.sys.run_user(cpu, &child, move |k, mm| -> Result<(), RunError> {
                    for va in touches {
                        k.write_user(mm, va, va).map_err(|e| RunError::Model(format!("{e:?}")))?;
                    }
                    Ok(())
                })??;
                let last_sharer = ptdesc_pmd_pts_count(&k, first_table) == 1;
                let syncs = k.stats.get(Stat::TlbRemoveTableSyncOne);
                let cal: u64 = (0..n).map(|c| k.smp.call_interrupts(CpuId(c as u32))).sum();
                h.exit_mm(cpu, &child)?;
                out.per_child.push(ChildExit {
                    round,
                    child: i,
                    cpu: cpu.0,
                    last_sharer,
                    sync_broadcasts: k.stats.get(Stat::TlbRemoveTableSyncOne) - syncs,
                    call_interrupts: (0..n).map(|c| k.smp.call_interrupts(CpuId(c as u32))).sum::<u64>() - cal,
                });
            }
            let syncs = k.stats.get(Stat::TlbRemoveTableSyncOne);
            h.exit_mm(CpuId(0), &parent)?;
            out.parent_exit_syncs += k.stats.get(Stat::TlbRemoveTableSyncOne) - syncs;
            let still = h.truncate(CpuId(0), &file)?;
            if still != 0 {
                return Err(RunError::Driver(format!("{still} hugetlb pages still mapped after every exit")));
            }
            Ok(false)
        })?;
        Ok(out)
    })
}
