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
//! The context switch (asm/mmu_context.h, arch/arm64/mm/context.c) flushes
//! nothing: every mm has an ASID; when the ASID space is used up a new
//! generation begins and each CPU flushes its whole TLB once, at its next
//! switch (`check_and_switch_context`, `new_context`, `flush_context`).  No
//! mm_cpumask, no tlb_gen, no lazy-TLB shootdown rule: a lazy CPU keeps the
//! mm active and every broadcast TLBI reaches it anyway.

use super::{secondary_invalidate, ActiveMm, ArchOps, CpuMm, FLUSH_ALL};
use crate::config::{Arch, Arm64Cpu, Fix, KernelVersion};
use crate::gather::MmuGather;
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{MmStruct, Vma};
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::types::{CpuId, CpuMask, Pfn};

/// `TLBI_TTL_UNKNOWN` is `None`; a level hint is the level of the leaf
/// being invalidated (`Level::Pte` is the kernel's 3, `Level::Pmd` 2,
/// `Level::Pud` 1, `Level::Pgd` 0).
pub type TlbLevel = Option<Level>;

/// The arm64 profile (`Arch::Arm64`).
pub struct Arm64 {
    kernel: KernelVersion,
    /// `current->active_mm` per CPU (and whether a kernel thread borrows it).
    active: Box<[ActiveMm]>,
    /// The ASID allocator of arch/arm64/mm/context.c.
    asids: AsidAllocator,
}

impl Arm64 {
    /// The arm64 profile as of `kernel` on `nr_cpus` CPUs with `cpu`'s
    /// features (`arch::arch_ops`).
    pub fn new(kernel: KernelVersion, cpu: Arm64Cpu, nr_cpus: usize) -> Self {
        Arm64 { kernel, active: ActiveMm::per_cpu(nr_cpus), asids: AsidAllocator::new(cpu.asid_bits, nr_cpus) }
    }
}

/// arch/arm64/mm/context.c (v6.12; the logic unchanged since v5.12's pinned
/// ASIDs): `asid_generation`, `asid_map`, the per-CPU `active_asids` and
/// `reserved_asids`, `tlb_flush_pending`, all but the first two under
/// `cpu_asid_lock`.  A context id is `generation | asid`; the generation
/// moves by `1 << asid_bits` at each rollover.
///
/// Not modelled: pinned ASIDs (`arm64_mm_context_get`, for SVA: the
/// emulated SMMU keeps its own tags), KPTI's even/odd pairs.  TLB entries
/// stay tagged with the mm's id, which is never reused, so an ASID handed
/// to a new mm cannot alias the old one's stale entries here: the rollover
/// flush is performed and counted, but the model cannot show what would
/// go wrong without it.
struct AsidAllocator {
    /// `asid_generation` (starts at ASID_FIRST_VERSION).
    generation: AtomicU64,
    /// `per_cpu(active_asids)`: the context id each CPU runs (0 after a
    /// rollover until it switches again).
    active_asids: Box<[AtomicU64]>,
    /// `cpu_asid_lock` and what it protects.
    locked: Mutex<AsidMap>,
}

/// The state under `cpu_asid_lock`.
struct AsidMap {
    /// `asid_map`: ASIDs in use in this generation (index = ASID).
    map: Vec<bool>,
    /// `per_cpu(reserved_asids)`: the context id each CPU ran at the last rollover.
    reserved: Vec<u64>,
    /// `tlb_flush_pending`: CPUs that must `local_flush_tlb_all` at their next
    /// slow-path switch.
    flush_pending: CpuMask,
    /// `new_context`'s `static u32 cur_idx`.
    cur_idx: usize,
}

impl AsidAllocator {
    /// `asids_init`: generation ASID_FIRST_VERSION, every ASID free.
    fn new(asid_bits: u32, nr_cpus: usize) -> Self {
        AsidAllocator {
            generation: AtomicU64::new(1 << asid_bits),
            active_asids: (0..nr_cpus).map(|_| AtomicU64::new(0)).collect(),
            locked: Mutex::new(AsidMap {
                map: vec![false; 1 << asid_bits],
                reserved: vec![0; nr_cpus],
                flush_pending: CpuMask::new(),
                cur_idx: 1,
            }),
        }
    }
}

/// `ctxid2asid`: the ASID part of a context id.
fn ctxid2asid(k: &Kernel, ctxid: u64) -> usize {
    (ctxid & ((1 << k.cfg.arm64.asid_bits) - 1)) as usize
}

/// `asid_gen_match`: `ctxid` belongs to the current generation.
fn asid_gen_match(k: &Kernel, a: &AsidAllocator, ctxid: u64) -> bool {
    (ctxid ^ a.generation.load(Ordering::SeqCst)) >> k.cfg.arm64.asid_bits == 0
}

/// `flush_context`: a rollover.  Every CPU's running ASID is carried into
/// the new generation as reserved (a CPU that has not switched since the
/// last rollover keeps its reserved one), the map is rebuilt from them,
/// and every CPU must flush its whole TLB at its next slow-path switch.
fn flush_context(k: &Kernel, a: &AsidAllocator, m: &mut AsidMap) {
    m.map.iter_mut().for_each(|b| *b = false);
    for (i, active) in a.active_asids.iter().enumerate() {
        let mut asid = active.swap(0, Ordering::SeqCst);
        if asid == 0 {
            asid = m.reserved[i];
        }
        m.map[ctxid2asid(k, asid)] = true;
        m.reserved[i] = asid;
    }
    m.flush_pending = CpuMask::first_n(a.active_asids.len());
}

/// `check_update_reserved_asid`: if `asid` is some CPU's reserved one, move
/// every copy to `newasid` (the same ASID in this generation).
fn check_update_reserved_asid(m: &mut AsidMap, asid: u64, newasid: u64) -> bool {
    let mut hit = false;
    for r in m.reserved.iter_mut().filter(|r| **r == asid) {
        *r = newasid;
        hit = true;
    }
    hit
}

/// `new_context`: keep the mm's old ASID in the new generation if it was
/// reserved or is still free, else take the next free one from `cur_idx`;
/// with none free, bump the generation and `flush_context`.  ASID 0 is
/// init_mm's (the reserved TTBR0).
fn new_context(k: &Kernel, a: &AsidAllocator, m: &mut AsidMap, mm: &MmStruct) -> u64 {
    let bits = k.cfg.arm64.asid_bits;
    let asid = mm.context_id.load(Ordering::SeqCst);
    let mut generation = a.generation.load(Ordering::SeqCst);
    if asid != 0 {
        let newasid = ctxid2asid(k, asid) as u64 | generation;
        if check_update_reserved_asid(m, asid, newasid) {
            return newasid;
        }
        let idx = ctxid2asid(k, asid);
        if !m.map[idx] {
            m.map[idx] = true;
            return newasid;
        }
    }
    let free = |m: &AsidMap, from: usize| (from..m.map.len()).find(|i| !m.map[*i]);
    let idx = match free(m, m.cur_idx) {
        Some(i) => i,
        None => {
            generation = a.generation.fetch_add(1 << bits, Ordering::SeqCst) + (1 << bits);
            k.stats.inc(k.this_cpu(), Stat::Arm64AsidRollover);
            flush_context(k, a, m);
            // More ASIDs than CPUs (KernelConfig::validate): always one.
            free(m, 1).expect("an ASID is free after a rollover")
        }
    };
    m.map[idx] = true;
    m.cur_idx = idx;
    idx as u64 | generation
}

/// `local_flush_tlb_all`: TLBI VMALLE1 of this CPU only (no DSB ISH, no
/// secondary TLB).
fn local_flush_tlb_all(k: &Kernel, cpu: CpuId) {
    k.hw.tlb(cpu).flush_all();
    k.stats.inc(cpu, Stat::Arm64TlbiVmalle1);
}

/// `check_and_switch_context(mm)` + `cpu_switch_mm`: the fast path — an
/// ASID of the current generation and a CPU not caught by a rollover —
/// swaps `active_asids` with a cmpxchg and touches no lock and no TLB; the
/// slow path, under `cpu_asid_lock`, allocates a new context if the
/// generation moved and performs the rollover's pending
/// `local_flush_tlb_all`.  Either way TTBR0 gets the mm's tables and tag.
fn check_and_switch_context(k: &Kernel, a: &AsidAllocator, mm: &MmStruct, cpu: CpuId) {
    let asid = mm.context_id.load(Ordering::SeqCst);
    let active = &a.active_asids[cpu.idx()];
    let old_active = active.load(Ordering::SeqCst);
    let fast = old_active != 0
        && asid_gen_match(k, a, asid)
        && active.compare_exchange(old_active, asid, Ordering::SeqCst, Ordering::SeqCst).is_ok();
    if !fast {
        let mut m = a.locked.lock();
        let mut asid = mm.context_id.load(Ordering::SeqCst);
        if !asid_gen_match(k, a, asid) {
            asid = new_context(k, a, &mut m, mm);
            mm.context_id.store(asid, Ordering::SeqCst);
        }
        if m.flush_pending.test(cpu) {
            m.flush_pending.clear(cpu);
            local_flush_tlb_all(k, cpu);
        }
        active.store(asid, Ordering::SeqCst);
    }
    // cpu_switch_mm: TTBR0_EL1 = pgd | ASID (the TLB tag is the mm's id).
    k.hw.load_cr3(cpu, Some(mm.pgd), mm.id);
}

impl ArchOps for Arm64 {
    fn arch(&self) -> Arch {
        Arch::Arm64
    }
    fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    /// arch/arm64/include/asm/tlb.h `tlb_flush` (v6.12, and c2ff4764e03e
    /// behind `Fix::Arm64UnshareWalkCache`): last level only unless tables
    /// were freed (or, with the fix, unshared); fullmm flushes only the walk cache's reason
    /// to exist — with freed tables it is `flush_tlb_mm`, without nothing:
    /// "the ASID allocator won't reallocate our ASID without invalidating
    /// the entire TLB".  Otherwise `__flush_tlb_range` of the gathered range
    /// at `tlb_get_unmap_size` with `tlb_get_level`'s hint.
    /// `need_flush_all` is not looked at (only x86's page-table code sets it).
    fn tlb_flush(&self, tlb: &MmuGather<'_>) {
        let (k, mm) = (tlb.kernel(), tlb.mm());
        let cpu = k.this_cpu();
        let last_level = !(tlb.freed_tables() || (tlb.unshared_tables() && unshare_flushes_walk_cache(k)));
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

    /// The asm-generic default (include/asm-generic/tlb.h, v6.12; no
    /// override here): every PTE `change_pte_range` rewrote is flushed,
    /// whatever changed — upgrades and unchanged protections too.
    fn pte_needs_flush(&self, _oldpte: Pte, _newpte: Pte) -> bool {
        true
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
    fn flush_tlb_range(&self, k: &Kernel, mm: &MmStruct, start: u64, end: u64, huge: bool) {
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

    /// asm/mmu_context.h `switch_mm` → `__switch_mm` →
    /// `check_and_switch_context`, with IRQs off (`context_switch`): no TLB
    /// flush on a switch — the ASID keeps every mm's entries apart — except
    /// the whole-TLB flush a rollover left pending for this CPU.  Switching
    /// to the mm already active does nothing (`prev == next`).  arm64 keeps
    /// no mm_cpumask.
    fn switch_mm(&self, k: &Kernel, next: &crate::sync::Arc<MmStruct>) {
        let cpu = k.this_cpu();
        let irq = k.local_irq_save();
        let st = &self.active[cpu.idx()];
        if st.get().mm != next.id {
            check_and_switch_context(k, &self.asids, next, cpu);
        }
        st.set(next.id);
        drop(irq);
    }
    /// `__switch_mm(&init_mm)`: `cpu_set_reserved_ttbr0` — no user tables,
    /// reserved ASID 0; `active_asids` is left as it was.
    fn switch_to_init_mm(&self, k: &Kernel, cpu: CpuId) {
        k.hw.load_cr3(cpu, None, 0);
        self.active[cpu.idx()].set(0);
    }
    /// `enter_lazy_tlb`: only `update_saved_ttbr0` for SW PAN; the mm stays
    /// active (TTBR0 unchanged).
    fn enter_lazy_tlb(&self, k: &Kernel) {
        self.active[k.this_cpu().idx()].set_lazy();
    }
    /// `active_mm` of `cpu`, and whether a kernel thread borrows it.
    fn cpu_mm(&self, _k: &Kernel, cpu: CpuId) -> CpuMm {
        self.active[cpu.idx()].get()
    }

    /// No IPI, no vmstat, no trace: a broadcast TLBI interrupts nobody.
    fn stats(&self) -> &'static [Stat] {
        &[
            Stat::Arm64BroadcastTlbi,
            Stat::Arm64TlbiVale1is,
            Stat::Arm64TlbiVae1is,
            Stat::Arm64TlbiRvale1is,
            Stat::Arm64TlbiRvae1is,
            Stat::Arm64TlbiAside1is,
            Stat::Arm64TlbiVmalle1,
            Stat::Arm64AsidRollover,
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

/// c2ff4764e03e (`Fix::Arm64UnshareWalkCache`): `tlb_flush` treats an
/// unshared PMD table like a freed one — all levels, not VALE1IS — so no
/// walk cache keeps pointing into a table the next owner may rewrite.
/// `tlb_get_level` still says level 2 (only PMDs were cleared): VAE1IS with
/// TTL=2 drops the level-1 descriptor (PUD → table) that matters.
fn unshare_flushes_walk_cache(k: &Kernel) -> bool {
    k.cfg.fixes.on(Fix::Arm64UnshareWalkCache)
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
