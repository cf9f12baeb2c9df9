//! The arm64 profile: hardware-broadcast TLB invalidation
//! (arch/arm64/include/asm/tlb.h, tlbflush.h, hugetlb.h, pgtable.h as of
//! v6.12).
//!
//! Contract: a flush is a sequence of TLBI ... IS instructions and a DSB
//! ISH, which reach every CPU's TLB through the interconnect: when it
//! returns no CPU can use a translation of the range, and nobody was
//! interrupted — an IRQs-off CPU (a GUP-fast walker) is not waited for
//! beyond the instruction in flight.  That is why arm64 needs
//! MMU_GATHER_RCU_TABLE_FREE (or `tlb_remove_table_sync_one`, which still
//! uses IPIs) before a page table may be freed.
//!
//! - `tlb_flush` is arm64's own (asm/tlb.h): a range at the gather's unmap
//!   stride with the level hint of `tlb_get_level`, last level only
//!   (VALE1IS) unless tables were freed — or, with c2ff4764e03e, unshared;
//!   for fullmm nothing at all unless tables were freed (then
//!   `flush_tlb_mm`): the ASID allocator never hands the dying mm's ASID to
//!   anyone before a rollover has flushed every TLB.
//! - `__flush_tlb_range` (tlbflush.h): without FEAT_TLBIRANGE one TLBI per
//!   stride, and a whole-ASID `flush_tlb_mm` from MAX_DVM_OPS strides on;
//!   with it range TLBIs, and `flush_tlb_mm` beyond MAX_TLBI_RANGE_PAGES.
//! - `flush_tlb_range`, `flush_pmd_tlb_range`, `flush_hugetlb_tlb_range`
//!   invalidate all levels (walk caches too): they may be removing a table;
//!   only `flush_tlb_page` and the gather's last-level case do not.
//! - No vmstat NR_TLB_*, no /proc/interrupts TLB row, no tlb:tlb_flush
//!   trace (those are x86's): the counters are the TLBIs by kind
//!   (`Arm64Tlbi*`), the completed sequences (`Arm64BroadcastTlbi`) and the
//!   gather's own `tlb_flush_ranged` / `tlb_flush_full`.
//!
//! The context switch is the x86 one (`super::x86::switch_mm`: PCID slots,
//! tlb_gen catch-up, lazy TLB), as it has always been here.

use super::{secondary_invalidate, ArchOps, FLUSH_ALL};
use crate::config::{Arch, KernelVersion};
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::Ordering;
use crate::types::{CpuId, Pfn};

/// `TLBI_TTL_UNKNOWN` is `None`; a level hint is the level of the leaf
/// being invalidated (`Level::Pte` is the kernel's 3, `Level::Pmd` 2,
/// `Level::Pud` 1, `Level::Pgd` 0).
pub type TlbLevel = Option<Level>;

/// The arm64 profile (`Arch::Arm64`).
pub struct Arm64 {
    kernel: KernelVersion,
}

impl Arm64 {
    /// The arm64 profile as of `kernel` (`arch::arch_ops`).
    pub fn new(kernel: KernelVersion) -> Self {
        Arm64 { kernel }
    }
}

impl ArchOps for Arm64 {
    fn arch(&self) -> Arch {
        Arch::Arm64
    }
    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    /// arch/arm64/include/asm/tlb.h `tlb_flush` (v6.12): last level only
    /// unless tables were freed; fullmm flushes only the walk cache's reason
    /// to exist — with freed tables it is `flush_tlb_mm`, without nothing:
    /// "the ASID allocator won't reallocate our ASID without invalidating
    /// the entire TLB".  Otherwise `__flush_tlb_range` of the gathered range
    /// at `tlb_get_unmap_size` with `tlb_get_level`'s hint.
    /// `need_flush_all` is not looked at (only x86's page-table code sets it).
    fn tlb_flush(&self, tlb: &MmuGather<'_>) {
        let (k, mm) = (tlb.kernel(), tlb.mm());
        let cpu = k.this_cpu();
        let last_level = !tlb.freed_tables();
        if tlb.fullmm() {
            if !last_level {
                k.stats.inc(cpu, Stat::TlbFlushFull);
                flush_tlb_mm(k, mm);
            }
            return;
        }
        let (start, end) = tlb.range();
        k.stats.inc(cpu, Stat::TlbFlushRanged);
        __flush_tlb_range(k, mm, start, end, tlb.tlb_get_unmap_size(), last_level, tlb_get_level(tlb));
    }

    /// The asm-generic one.
    fn tlb_update_vma_flags(&self, tlb: &mut MmuGather<'_>, vma: &Vma) {
        tlb.record_vma_flags(vma);
    }

    /// Not selected.
    fn mmu_gather_merge_vmas(&self) -> bool {
        false
    }

    /// asm-generic's is `true` (every changed PTE is flushed); modelled as:
    /// a permission was removed.
    fn pte_needs_flush(&self, oldpte: Pte, newpte: Pte) -> bool {
        super::pte_permission_removed(oldpte, newpte)
    }

    /// x86's entry point, reached only by code that names it: the arm64
    /// equivalent is `__flush_tlb_range` at that stride, all levels when
    /// tables were freed.
    fn flush_tlb_mm_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, stride: u32, freed_tables: bool) {
        __flush_tlb_range(k, mm, start, end, 1 << stride, !freed_tables, None);
    }

    /// arm64 `flush_tlb_mm`: TLBI ASIDE1IS.
    fn flush_tlb_mm(&self, k: &Kernel, mm: &MmStruct) {
        flush_tlb_mm(k, mm);
    }

    /// `flush_tlb_range` — `__flush_tlb_range(vma, start, end, PAGE_SIZE,
    /// false, TLBI_TTL_UNKNOWN)`: never leaf-only, "since we may be
    /// invalidating table entries as part of collapsing hugepages or moving
    /// page tables" (so `freed_tables` changes nothing here).  For a
    /// VM_HUGETLB VMA generic code calls `flush_hugetlb_tlb_range` instead
    /// (asm/hugetlb.h): stride PMD_SIZE, level 2, not leaf-only either
    /// (it also runs after `hugetlb_unshare_pmds` cleared a PUD).
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool, _freed_tables: bool) {
        let g = k.cfg.geometry;
        if huge {
            __flush_tlb_range(k, mm, start, end, g.pmd_size(), false, Some(Level::Pmd));
        } else {
            __flush_tlb_range(k, mm, start, end, g.page_size(), false, None);
        }
    }

    /// `flush_tlb_page` → `__flush_tlb_page_nosync`: one TLBI VALE1IS, no
    /// level hint.
    fn flush_tlb_page(&self, k: &Kernel, mm: &MmStruct, addr: u64) {
        flush_tlb_page(k, mm, addr);
    }

    /// asm/pgtable.h `flush_pmd_tlb_range` — `__flush_tlb_range(vma, addr,
    /// end, PMD_SIZE, false, 2)`: all levels at PMD stride.
    fn flush_pmd_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64) {
        __flush_tlb_range(k, mm, start, end, k.cfg.geometry.pmd_size(), false, Some(Level::Pmd));
    }

    fn switch_mm(&self, k: &Kernel, next: &MmStruct) {
        super::x86::switch_mm(k, next);
    }
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId) {
        super::x86::switch_to_init_mm(k, cpu);
    }
    fn enter_lazy_tlb(&self, k: &Kernel) {
        super::x86::enter_lazy_tlb(k);
    }

    /// No IPI, no vmstat, no trace: a broadcast TLBI interrupts nobody.
    /// (TLB_FLUSH_ON_TASK_SWITCH is still moved by the x86 context switch
    /// this profile borrows.)
    fn stats(&self) -> &'static [Stat] {
        &[
            Stat::Arm64BroadcastTlbi,
            Stat::Arm64TlbiVale1is,
            Stat::Arm64TlbiVae1is,
            Stat::Arm64TlbiRvale1is,
            Stat::Arm64TlbiRvae1is,
            Stat::Arm64TlbiAside1is,
            Stat::TraceOnTaskSwitch,
            Stat::TlbFlushRanged,
            Stat::TlbFlushFull,
        ]
    }

    /// arch/arm64/mm/fault.c `__ptep_set_access_flags`: the hardware may set
    /// A/D concurrently, so merge with a cmpxchg loop keeping the more
    /// permissive state of both; then `flush_tlb_page` when `dirty` to
    /// invalidate a stale read-only entry (arm64 may cache permission bits).
    fn ptep_set_access_flags(&self, k: &Kernel, mm: &MmStruct, table: Pfn, va: u64, entry: Pte, dirty: bool) -> bool {
        let slot = pgtable::slot(k, table, Level::Pte, va);
        let old = Pte(slot.load(Ordering::SeqCst));
        if old == entry {
            return false;
        }
        let keep = Pte::ACCESSED | Pte::DIRTY | Pte::RW;
        let mut cur = old;
        loop {
            let new = Pte(cur.0 | (entry.0 & keep));
            match slot.compare_exchange(cur.0, new.0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => cur = Pte(now),
            }
        }
        // Invalidate a stale read-only entry.
        if dirty {
            flush_tlb_page(k, mm, va);
        }
        true
    }

    /// Empty on arm64.
    fn flush_tlb_fix_spurious_fault(&self, _k: &Kernel, _mm: &MmStruct, _va: u64) {}
}

/// asm/tlb.h `tlb_get_level`: the level of the only kind of entry the
/// gather cleared, or TLBI_TTL_UNKNOWN when tables were freed ("the TTL
/// field is only valid for the leaf entry") or several levels were cleared.
pub fn tlb_get_level(tlb: &MmuGather<'_>) -> TlbLevel {
    if tlb.freed_tables() {
        return None;
    }
    match tlb.cleared_levels() {
        (true, false, false, false) => Some(Level::Pte),
        (false, true, false, false) => Some(Level::Pmd),
        (false, false, true, false) => Some(Level::Pud),
        // P4D folded into the PGD: the kernel's level 0.
        (false, false, false, true) => Some(Level::Pgd),
        _ => None,
    }
}

/// `MAX_DVM_OPS` (asm/tlbflush.h): PTRS_PER_PTE — PAGE_SIZE / sizeof(pte_t),
/// 512 with 4 KiB pages; the geometry's entries per table (4 in the small
/// loom geometry).  Without FEAT_TLBIRANGE a range of this many strides or
/// more becomes `flush_tlb_mm` ("to avoid soft lock-ups on large TLB
/// flushing ranges").
pub fn max_dvm_ops(k: &Kernel) -> u64 {
    k.cfg.geometry.ptrs_per_table() as u64
}

/// `__TLBI_RANGE_PAGES(num, scale)`: pages one range TLBI covers.
pub const fn tlbi_range_pages(num: u64, scale: u32) -> u64 {
    (num + 1) << (5 * scale + 1)
}

/// `MAX_TLBI_RANGE_PAGES` = `__TLBI_RANGE_PAGES(31, 3)`: 2^21 pages, the most
/// one `__flush_tlb_range_op` of range TLBIs may cover (in pages, whatever
/// PAGE_SIZE is); beyond it `flush_tlb_mm`.
pub const MAX_TLBI_RANGE_PAGES: u64 = tlbi_range_pages(31, 3);

/// `__TLBI_RANGE_NUM(pages, scale)`: the NUM field for `pages` at `scale`
/// (-1 when fewer pages than one unit of the scale remain).
fn tlbi_range_num(pages: u64, scale: u32) -> i64 {
    let pages = pages.min(tlbi_range_pages(31, scale));
    (pages >> (5 * scale + 1)) as i64 - 1
}

/// One TLBI instruction of `__flush_tlb_range_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tlbi {
    /// TLBI VALE1IS / VAE1IS of one address.
    Va { addr: u64 },
    /// TLBI RVALE1IS / RVAE1IS of [start, start + pages pages).
    Range { start: u64, pages: u64 },
}

/// `__flush_tlb_range_op(op, start, pages, stride, asid, tlb_level,
/// tlbi_user, lpa2)` without KPTI's user ASID and LPA2: the instructions
/// the kernel issues for `pages` pages from `start`.  Without FEAT_TLBIRANGE
/// one per stride; with it range TLBIs from scale 3 down, and a single page
/// left over as a by-VA TLBI.
pub fn flush_tlb_range_op(k: &Kernel, start: u64, pages: u64, stride: u64, mut emit: impl FnMut(Tlbi)) {
    let ps = k.cfg.geometry.page_shift;
    let range = k.cfg.arm64.feat_tlbirange;
    let (mut start, mut pages) = (start, pages);
    let mut scale: i32 = 3;
    while pages > 0 {
        if !range || pages == 1 {
            emit(Tlbi::Va { addr: start });
            start += stride;
            pages = pages.saturating_sub(stride >> ps);
            continue;
        }
        let num = tlbi_range_num(pages, scale as u32);
        if num >= 0 {
            let n = tlbi_range_pages(num as u64, scale as u32);
            emit(Tlbi::Range { start, pages: n });
            start += n << ps;
            pages -= n;
        }
        scale -= 1;
        // pages > 1 always has a unit at scale 0 (2 pages): the loop ends.
        debug_assert!(scale >= 0 || pages <= 1, "__flush_tlb_range_op: {pages} pages left below scale 0");
    }
}

/// The hint the hardware gets: FEAT_TTL or nothing; a range TLBI's TTL
/// field only encodes levels 1..3 (`__TLBI_VADDR_RANGE`).
fn hint(k: &Kernel, level: TlbLevel, range_op: bool) -> TlbLevel {
    if !k.cfg.arm64.feat_ttl {
        return None;
    }
    if range_op && level == Some(Level::Pgd) {
        return None;
    }
    level
}

/// `__flush_tlb_range(vma, start, end, stride, last_level, tlb_level)` =
/// `__flush_tlb_range_nosync` + DSB ISH: round the range to the stride,
/// fall back to `flush_tlb_mm` for MAX_DVM_OPS strides (no FEAT_TLBIRANGE)
/// or more than MAX_TLBI_RANGE_PAGES pages, else broadcast the
/// instructions of `flush_tlb_range_op` — VALE1IS / RVALE1IS when
/// `last_level`, VAE1IS / RVAE1IS otherwise — then invalidate secondary
/// TLBs.  Every CPU's TLB is invalidated directly (under its TLB lock):
/// nobody is interrupted and IRQs-off CPUs are not waited for.
#[doc(alias = "__flush_tlb_range_nosync")]
pub fn __flush_tlb_range(
    k: &Kernel,
    mm: &MmStruct,
    start: u64,
    end: u64,
    stride: u64,
    last_level: bool,
    level: TlbLevel,
) {
    let me = k.this_cpu();
    let ps = k.cfg.geometry.page_shift;
    let start = start & !(stride - 1);
    let end = end.div_ceil(stride) * stride;
    let pages = (end - start) >> ps;
    if (!k.cfg.arm64.feat_tlbirange && end - start >= max_dvm_ops(k) * stride) || pages > MAX_TLBI_RANGE_PAGES {
        flush_tlb_mm(k, mm);
        return;
    }
    let (mut by_va, mut by_range) = (0, 0);
    flush_tlb_range_op(k, start, pages, stride, |op| match op {
        Tlbi::Va { .. } => by_va += 1,
        Tlbi::Range { .. } => by_range += 1,
    });
    let (va_stat, range_stat) = if last_level {
        (Stat::Arm64TlbiVale1is, Stat::Arm64TlbiRvale1is)
    } else {
        (Stat::Arm64TlbiVae1is, Stat::Arm64TlbiRvae1is)
    };
    k.stats.add(me, va_stat, by_va);
    k.stats.add(me, range_stat, by_range);
    for c in 0..k.hw.nr_cpus() {
        let mut tlb = k.hw.tlb(CpuId(c as u32));
        flush_tlb_range_op(k, start, pages, stride, |op| match op {
            Tlbi::Va { addr } => {
                tlb.tlbi_va(mm.id, addr, last_level, hint(k, level, false));
            }
            Tlbi::Range { start, pages } => {
                tlb.tlbi_range(mm.id, start, start + (pages << ps), last_level, hint(k, level, true));
            }
        });
    }
    k.stats.inc(me, Stat::Arm64BroadcastTlbi);
    secondary_invalidate(k, mm, start, end);
}

/// arm64 `flush_tlb_mm`: TLBI ASIDE1IS of the mm's ASID, every level, on
/// every CPU; then the secondary TLBs.
pub fn flush_tlb_mm(k: &Kernel, mm: &MmStruct) {
    let me = k.this_cpu();
    k.stats.inc(me, Stat::Arm64TlbiAside1is);
    for c in 0..k.hw.nr_cpus() {
        k.hw.tlb(CpuId(c as u32)).flush_asid(mm.id);
    }
    k.stats.inc(me, Stat::Arm64BroadcastTlbi);
    secondary_invalidate(k, mm, 0, FLUSH_ALL);
}

/// arm64 `flush_tlb_page` (`__flush_tlb_page_nosync` + DSB ISH): one TLBI
/// VALE1IS of the page, no level hint — a single last-level entry, never
/// the walk caches.
#[doc(alias = "__flush_tlb_page_nosync")]
pub fn flush_tlb_page(k: &Kernel, mm: &MmStruct, uaddr: u64) {
    let me = k.this_cpu();
    let ps = k.cfg.geometry.page_size();
    let addr = uaddr & !(ps - 1);
    k.stats.inc(me, Stat::Arm64TlbiVale1is);
    for c in 0..k.hw.nr_cpus() {
        k.hw.tlb(CpuId(c as u32)).tlbi_va(mm.id, addr, true, None);
    }
    k.stats.inc(me, Stat::Arm64BroadcastTlbi);
    secondary_invalidate(k, mm, addr, addr + ps);
}
