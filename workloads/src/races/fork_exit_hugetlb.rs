//! The 2025 regression workload (KERNEL-RACES.md §3.2, reported against
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
//! The children run one after another (each on the next CPU after CPU0,
//! where the parent runs), so each count is exactly that child's.  This is
//! a library function; the CLI wraps it as the `fork-exit-hugetlb`
//! scenario.

use std::time::Duration;

use emu_cpu::{MachineConfig, System};
use mm_core::ops::hugetlb::{huge_pte_offset, ptdesc_pmd_pts_count};
use mm_core::ops::{dup_mmap, exit_mm, mmap_hugetlb, truncate_inode_pages};
use mm_core::stats::Stat;
use mm_core::sync::Arc;
use mm_core::{CpuId, Kernel, KernelConfig};

/// What to run.
#[derive(Clone, Debug)]
pub struct ForkExitParams {
    /// Kernel config (arch, fixes, CPUs).  `ram_frames` is raised if the
    /// area's touched pages would not fit.
    pub kcfg: KernelConfig,
    pub machine: MachineConfig,
    /// Size of the shared area in PUD regions: the number of shared PMD
    /// tables per child (N).
    pub tables: u64,
    pub children: usize,
    /// Huge pages each child touches (writes), chosen at random among the
    /// first `POOL` huge pages of each PUD region.
    pub touch: u64,
    pub seed: u64,
}

impl Default for ForkExitParams {
    fn default() -> Self {
        Self {
            kcfg: KernelConfig { nr_cpus: 2, ..KernelConfig::default() },
            machine: MachineConfig::default(),
            tables: 8,
            children: 4,
            touch: 4,
            seed: 1,
        }
    }
}

/// Huge pages per PUD region the children choose from.
const POOL: u64 = 2;
const TIMEOUT: Duration = Duration::from_secs(30);

/// One child's exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildExit {
    pub child: usize,
    pub cpu: u32,
    /// Its exit left the tables exclusive to the parent (share count 1 → 0).
    pub last_sharer: bool,
    /// `tlb_remove_table_sync_one` broadcasts during the child's exit.
    pub sync_broadcasts: u64,
    /// CAL interrupts those broadcasts raised on the other CPUs.
    pub call_interrupts: u64,
}

/// The whole run.
pub struct ForkExitReport {
    /// Shared PMD tables per child (N).
    pub tables: u64,
    pub per_child: Vec<ChildExit>,
    /// Broadcasts of the parent's own exit at the end (its tables are
    /// exclusive again by then: 0).
    pub parent_exit_syncs: u64,
    pub kernel: Arc<Kernel>,
}

impl std::fmt::Debug for ForkExitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkExitReport")
            .field("tables", &self.tables)
            .field("per_child", &self.per_child)
            .field("parent_exit_syncs", &self.parent_exit_syncs)
            .finish()
    }
}

fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    s.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Run the workload; see the module doc.
pub fn run(p: &ForkExitParams) -> Result<ForkExitReport, String> {
    if p.tables == 0 || p.children == 0 {
        return Err("fork-exit-hugetlb needs at least one table and one child".into());
    }
    let mut kcfg = p.kcfg.clone();
    let g = kcfg.geometry;
    if g.pud_size() < POOL * g.pmd_size() {
        return Err("fork-exit-hugetlb needs a PUD region of several huge pages (use the x86-64 geometry)".into());
    }
    // Every touched huge page, the tables and some slack must fit.
    let need = (p.tables * POOL * g.hpage_pmd_nr() + 64 * (p.children as u64 + 2) + 1024) as usize;
    kcfg.ram_frames = kcfg.ram_frames.max(need.next_power_of_two());
    let sys = System::new(kcfg, p.machine).map_err(|e| format!("boot: {e}"))?;
    let k = sys.kernel().clone();
    let n = sys.nr_cpus();
    let (pud, hpage) = (g.pud_size(), g.pmd_size());
    let hbase = 1u64 << g.level_shift(mm_core::hw::pte::Level::Pgd);
    let len = p.tables * pud;
    let file = k.new_file(len / g.page_size());
    let parent = sys.mm_alloc().map_err(|e| e.to_string())?;
    let f = file.clone();
    // The parent maps the area and faults one huge page per PUD region, so
    // it has a PMD table for each; then it forks the children.
    sys.run_user(CpuId(0), &parent, move |k, mm| -> Result<(), String> {
        mmap_hugetlb(k, mm, hbase, len, true, &f, 0).map_err(|e| e.to_string())?;
        for i in 0..len / pud {
            k.write_user(mm, hbase + i * pud, i).map_err(|e| format!("{e:?}"))?;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())??;
    let mut kids = Vec::with_capacity(p.children);
    for _ in 0..p.children {
        let c = sys.run_user(CpuId(0), &parent, |k, mm| dup_mmap(k, mm)).map_err(|e| e.to_string())?;
        kids.push(c.map_err(|e| e.to_string())?);
    }
    let first_table = huge_pte_offset(&k, &parent, hbase).ok_or("the parent has no PMD table")?;
    let mut rng = p.seed | 1;
    let mut per_child = Vec::with_capacity(kids.len());
    for (i, child) in kids.into_iter().enumerate() {
        let cpu = CpuId(if n > 1 { 1 + (i % (n - 1)) as u32 } else { 0 });
        let touches: Vec<u64> = (0..p.touch)
            .map(|_| {
                let region = next_rand(&mut rng) % p.tables;
                let page = next_rand(&mut rng) % POOL;
                hbase + region * pud + page * hpage + 8
            })
            .collect();
        sys.run_user(cpu, &child, move |k, mm| -> Result<(), String> {
            for va in touches {
                k.write_user(mm, va, va).map_err(|e| format!("{e:?}"))?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())??;
        let last_sharer = ptdesc_pmd_pts_count(&k, first_table) == 1;
        let syncs = k.stats.get(Stat::TlbRemoveTableSyncOne);
        let cal: u64 = (0..n).map(|c| k.smp.call_interrupts(CpuId(c as u32))).sum();
        sys.run_user(cpu, &child, |k, mm| exit_mm(k, mm)).map_err(|e| e.to_string())?;
        per_child.push(ChildExit {
            child: i,
            cpu: cpu.0,
            last_sharer,
            sync_broadcasts: k.stats.get(Stat::TlbRemoveTableSyncOne) - syncs,
            call_interrupts: (0..n).map(|c| k.smp.call_interrupts(CpuId(c as u32))).sum::<u64>() - cal,
        });
    }
    let syncs = k.stats.get(Stat::TlbRemoveTableSyncOne);
    sys.run_user(CpuId(0), &parent, |k, mm| exit_mm(k, mm)).map_err(|e| e.to_string())?;
    let parent_exit_syncs = k.stats.get(Stat::TlbRemoveTableSyncOne) - syncs;
    let still = sys.run_kthread(CpuId(0), move |k| truncate_inode_pages(k, &file)).map_err(|e| e.to_string())?;
    if still != 0 {
        return Err(format!("{still} hugetlb pages still mapped after every exit"));
    }
    sys.quiesce(TIMEOUT).map_err(|e| format!("quiesce: {e}"))?;
    Ok(ForkExitReport { tables: p.tables, per_child, parent_exit_syncs, kernel: k })
}
