//! KernelConfig: the arch profile, the emulated geometry, batch sizes and one
//! switch per historical fix.
//!
//! Every switch defaults to ON (the fixed kernel).  Turning one off makes the
//! code behave as it did before the named commit, so the old bug can be
//! reproduced and the fix's cost measured.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// How TLB invalidation reaches other CPUs (and whether ranges exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum Arch {
    /// arch/x86/mm/tlb.c: IPIs, mm_cpumask, lazy TLB, tlb_gen, 33-page ceiling.
    #[default]
    X86,
    /// arm64: hardware-broadcast TLBI; does not interrupt or wait for
    /// IRQs-off CPUs.  `tlb_remove_table_sync_one` still uses IPIs.
    Arm64,
    /// CONFIG_MMU_GATHER_NO_RANGE (alpha, m68k, ...): every flush is flush_tlb_mm.
    GenericNoRange,
}

impl Arch {
    /// Every profile, in CLI order.
    pub const ALL: [Arch; 3] = [Arch::X86, Arch::Arm64, Arch::GenericNoRange];
    /// The profile of the machine this program runs on (`x86_64` is x86,
    /// `aarch64` arm64), or None: what `mmemu host` may run on the host.
    pub fn of_host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
    /// The CLI / report name (`--arch x86|arm64|generic`); `FromStr` parses it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86 => "x86",
            Arch::Arm64 => "arm64",
            Arch::GenericNoRange => "generic",
        }
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown arch '{s}'; allowed: x86, arm64, generic"))
    }
}

/// The kernel release an arch profile follows (`KernelConfig::kernel`), given
/// to the arch object when the `Kernel` is built (`arch::arch_ops`):
/// `--kernel 6.12|6.18`.
///
/// What differs is decided inside `arch/` (docs/FIDELITY.md lists it).  On
/// x86, v6.18 (this machine's host kernel; arch/x86/mm/tlb.c after
/// 209954cbc7d0 and 6db2526c1d69) leaves a CPU in `mm_cpumask` when it
/// switches away and clears it in `flush_tlb_func` (trace reason
/// `TLB_REMOTE_WRONG_CPU`); `should_flush_tlb` reads the target's
/// `loaded_mm` (and `LOADED_MM_SWITCHING`) and, once a second per mm
/// (`should_trim_cpumask`, on the machine's jiffies), also interrupts CPUs
/// that left the mm so they drop out of the mask.  v6.12 clears the CPU from
/// the previous mm's mask in `switch_mm_irqs_off` at once and filters
/// flushes without freed tables by `tlb_is_not_lazy` alone.  v6.18 is
/// x86's only (`KernelConfig::kernel_pairing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub enum KernelVersion {
    /// Linux v6.12.y (the port's reference, with 8ce720d5bd91).
    #[default]
    V6_12,
    /// Linux v6.18.y (the host kernel this machine runs: 6.18.44).
    V6_18,
}

impl KernelVersion {
    /// Every version, in CLI order.
    pub const ALL: [KernelVersion; 2] = [KernelVersion::V6_12, KernelVersion::V6_18];
    /// The CLI / report name (`--kernel 6.12|6.18`); `FromStr` parses it.
    pub fn name(self) -> &'static str {
        match self {
            KernelVersion::V6_12 => "6.12",
            KernelVersion::V6_18 => "6.18",
        }
    }
    /// This version is `other` or later.
    pub fn at_least(self, other: KernelVersion) -> bool {
        self as u8 >= other as u8
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KernelVersion::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("unknown kernel '{s}'; allowed: 6.12, 6.18"))
    }
}

/// The historical fixes, one switch each (docs/RACES.md: the race each fix closes; off means the code before the commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Fix {
    /// 2ba99c5e0881: `tlb_remove_table_sync_one()` after khugepaged's
    /// `pmdp_collapse_flush`, before the old PTE table is freed or reused.
    KhugepagedGupFastIpi,
    /// 5df397dec7c4: zap keeps a dirty file page's rmap until after the
    /// TLB flush (`ENCODED_PAGE_BIT_DELAY_RMAP`, `tlb_flush_rmaps`).
    DelayRmap,
    /// 1013af4f585f (CVE-2025-38085): `huge_pmd_unshare` syncs every CPU
    /// (`tlb_remove_table_sync_one`) before i_mmap_rwsem is dropped.
    HugetlbUnshareSync,
    /// 8ce720d5bd91: unsharing goes through the mmu_gather, one sync per
    /// gather and none while other sharers remain.
    HugetlbUnshareBatched,
    /// 6bbd42e2df8f: the arch flush primitives invalidate secondary TLBs
    /// (`mmu_notifier_arch_invalidate_secondary_tlbs`).
    SecondaryTlbOnFlush,
    /// d7f861b9c43a: one gather slot per contiguous run of a large folio's
    /// pages (`ENCODED_PAGE_BIT_NR_PAGES_NEXT`).
    FolioPagesBatching,
    /// 99baac21e458: `tlb_finish_mmu` flushes the whole range when
    /// `mm_tlb_flush_nested` sees another gatherer pending.
    NestedFlushDetect,
    /// 016c4d92cd16: x86 IPIs lazy-TLB CPUs too when page tables were
    /// freed (`freed_tables`).  Its off state is an ablation: the v4.20
    /// series ("Add freed_tables argument to flush_tlb_mm_range", then "Only
    /// send page table free TLB flush to lazy TLB CPUs") introduced the skip
    /// of lazy CPUs together with this exception, and the reverted mid-2018
    /// form IPIed them at table-free time too (`tlb_flush_remove_tables`):
    /// no released kernel skipped them when tables were freed.
    LazyTlbFreedTables,
    /// 70cbc3cc78a9: `gup_fast_pte_range` re-checks the PMD after the grab.
    GupPmdRecheck,
    /// c2ff4764e03e (Fixes: 8ce720d5bd91): arm64 `tlb_flush` invalidates
    /// walk caches (VAE1IS, not VALE1IS) when the gather unshared PMD tables
    /// (`tlb->unshared_tables`), as when it freed them.
    Arm64UnshareWalkCache,
    /// 7fb5e5083190 (with b67fbebd4cf9): MMU_GATHER_NO_RANGE keeps the VMA
    /// flags (`tlb_update_vma_flags`, its stub removed), so `tlb_end_vma`
    /// force-flushes a VM_PFNMAP / VM_MIXEDMAP VMA under the MERGE_VMAS that
    /// NO_RANGE selects.
    NoRangeVmaPfn,
}

impl Fix {
    /// Every switch, in `--revert` listing order.
    pub const ALL: [Fix; 11] = [
        Fix::KhugepagedGupFastIpi,
        Fix::DelayRmap,
        Fix::HugetlbUnshareSync,
        Fix::HugetlbUnshareBatched,
        Fix::SecondaryTlbOnFlush,
        Fix::FolioPagesBatching,
        Fix::NestedFlushDetect,
        Fix::LazyTlbFreedTables,
        Fix::GupPmdRecheck,
        Fix::Arm64UnshareWalkCache,
        Fix::NoRangeVmaPfn,
    ];

    /// Kebab-case switch name (CLI `--revert NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Fix::KhugepagedGupFastIpi => "khugepaged-gup-fast-ipi",
            Fix::DelayRmap => "delay-rmap",
            Fix::HugetlbUnshareSync => "hugetlb-unshare-sync",
            Fix::HugetlbUnshareBatched => "hugetlb-unshare-batched",
            Fix::SecondaryTlbOnFlush => "secondary-tlb-on-flush",
            Fix::FolioPagesBatching => "folio-pages-batching",
            Fix::NestedFlushDetect => "nested-flush-detect",
            Fix::LazyTlbFreedTables => "lazy-tlb-freed-tables",
            Fix::GupPmdRecheck => "gup-pmd-recheck",
            Fix::Arm64UnshareWalkCache => "arm64-unshare-walk-cache",
            Fix::NoRangeVmaPfn => "no-range-vma-pfn",
        }
    }

    /// The kernel commit that introduced the fix.
    pub fn commit(self) -> &'static str {
        match self {
            Fix::KhugepagedGupFastIpi => "2ba99c5e0881",
            Fix::DelayRmap => "5df397dec7c4",
            Fix::HugetlbUnshareSync => "1013af4f585f",
            Fix::HugetlbUnshareBatched => "8ce720d5bd91",
            Fix::SecondaryTlbOnFlush => "6bbd42e2df8f",
            Fix::FolioPagesBatching => "d7f861b9c43a",
            Fix::NestedFlushDetect => "99baac21e458",
            Fix::LazyTlbFreedTables => "016c4d92cd16",
            Fix::GupPmdRecheck => "70cbc3cc78a9",
            Fix::Arm64UnshareWalkCache => "c2ff4764e03e",
            Fix::NoRangeVmaPfn => "7fb5e5083190",
        }
    }

    /// What the code does with the switch off.
    pub fn off_means(self) -> &'static str {
        match self {
            Fix::KhugepagedGupFastIpi => "collapse frees/reuses the PTE table without tlb_remove_table_sync_one",
            Fix::DelayRmap => "zap removes rmap before the TLB flush",
            Fix::HugetlbUnshareSync => "huge_pmd_unshare sends no IPI at all",
            Fix::HugetlbUnshareBatched => "one sync IPI broadcast per unshared table, even when not the last sharer",
            Fix::SecondaryTlbOnFlush => "TLB flushes do not invalidate the secondary (IOMMU) TLB",
            Fix::FolioPagesBatching => "large folios gathered page by page",
            Fix::NestedFlushDetect => "tlb_finish_mmu trusts its own range even when a parallel zap is pending",
            Fix::LazyTlbFreedTables => {
                "ablation (no kernel ran it: lazy CPUs got every flush IPI until the v4.20 series that added freed_tables): lazy-TLB CPUs are skipped even when page tables were freed"
            }
            Fix::GupPmdRecheck => "gup_fast_pte_range does not re-check the PMD after the grab",
            Fix::Arm64UnshareWalkCache => {
                "arm64 tlb_flush after huge_pmd_unshare is last-level only (VALE1IS): the walk cache keeps the unshared PMD table"
            }
            Fix::NoRangeVmaPfn => {
                "MMU_GATHER_NO_RANGE as v5.18 ran it: no VMA flags kept, tlb_end_vma never flushes, a VM_PFNMAP VMA's flush waits for tlb_finish_mmu"
            }
        }
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fix::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            let names: Vec<_> = Fix::ALL.iter().map(|f| f.name()).collect();
            format!("unknown switch '{s}'; allowed: {}", names.join(", "))
        })
    }
}

/// The set of fixes that are switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Fixes(u32);

impl Default for Fixes {
    fn default() -> Self {
        Self::all()
    }
}

impl Fixes {
    /// Every fix on: the current kernel (the default).
    pub fn all() -> Self {
        Fixes(Fix::ALL.iter().fold(0, |m, f| m | (1 << *f as u32)))
    }
    /// Every fix off: each path as before its commit.
    pub fn none() -> Self {
        Fixes(0)
    }
    /// Whether `f` is switched on (the code after its commit).
    #[inline]
    pub fn on(self, f: Fix) -> bool {
        self.0 & (1 << f as u32) != 0
    }
    /// Switch `f` on or off.
    pub fn set(&mut self, f: Fix, on: bool) {
        if on {
            self.0 |= 1 << f as u32;
        } else {
            self.0 &= !(1 << f as u32);
        }
    }
    /// Builder form: the same set with `f` switched off.
    pub fn revert(mut self, f: Fix) -> Self {
        self.set(f, false);
        self
    }
    /// The switches that are off, in `Fix::ALL` order.
    pub fn reverted(self) -> Vec<Fix> {
        Fix::ALL.into_iter().filter(|f| !self.on(*f)).collect()
    }
}

/// Emulated page-table geometry: 4 levels (PGD → PUD → PMD → PTE; P4D
/// folded, as on 4-level x86-64) of `1 << pt_bits` entries each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    /// PAGE_SHIFT.
    pub page_shift: u32,
    /// log2(PTRS_PER_PTE) (= PTRS_PER_PMD = PTRS_PER_PUD = PTRS_PER_PGD).
    pub pt_bits: u32,
}

impl Geometry {
    /// x86-64: 4 KiB pages, 512 entries per table, 2 MiB PMD leaves.
    pub const X86_64: Geometry = Geometry { page_shift: 12, pt_bits: 9 };
    /// Model-checking geometry: 4 entries per table (a "PMD" maps 16 KiB).
    pub const SMALL: Geometry = Geometry { page_shift: 12, pt_bits: 2 };

    /// PAGE_SIZE, in bytes.
    pub const fn page_size(self) -> u64 {
        1 << self.page_shift
    }
    /// Entries per table at every level (PTRS_PER_PTE).
    pub const fn ptrs_per_table(self) -> usize {
        1 << self.pt_bits
    }
    /// Shift of the range one entry at `level` maps (PAGE_SHIFT, PMD_SHIFT, ...).
    pub const fn level_shift(self, level: crate::hw::pte::Level) -> u32 {
        self.page_shift + self.pt_bits * level as u32
    }
    /// PMD_SIZE: bytes one PMD entry maps (a PTE table's span, a THP).
    pub const fn pmd_size(self) -> u64 {
        1 << (self.page_shift + self.pt_bits)
    }
    /// PUD_SIZE: bytes one PUD entry maps (a PMD table's span).
    pub const fn pud_size(self) -> u64 {
        1 << (self.page_shift + 2 * self.pt_bits)
    }
    /// Pages in a PMD-mapped (huge) folio: HPAGE_PMD_NR.
    pub const fn hpage_pmd_nr(self) -> u64 {
        1 << self.pt_bits
    }
    /// HPAGE_PMD_ORDER.
    pub const fn hpage_pmd_order(self) -> u32 {
        self.pt_bits
    }
    /// TASK_SIZE: the user half covered by the 4 levels.
    pub const fn task_size(self) -> u64 {
        1 << (self.page_shift + 4 * self.pt_bits)
    }
}

/// Software TLB shape (per CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TlbShape {
    /// Sets of the 4 KiB-page array (power of two).
    pub sets: usize,
    /// Ways per set.
    pub ways: usize,
    /// Sets of the huge-page array (power of two).
    pub huge_sets: usize,
    /// Entries of each paging-structure-cache level (fully associative).
    pub psc_entries: usize,
}

impl TlbShape {
    /// Roughly a modern x86 L1 dTLB + STLB slice: 64×4 small, 8×4 huge.
    pub const DEFAULT: TlbShape = TlbShape { sets: 64, ways: 4, huge_sets: 8, psc_entries: 16 };
    /// Model-checking shape: 2×2 small, 1×2 huge, 2 PSC entries per level.
    pub const SMALL: TlbShape = TlbShape { sets: 2, ways: 2, huge_sets: 1, psc_entries: 2 };
}

/// The arm64 CPU features the TLB code tests at run time (the arm64 profile
/// reads them; the others ignore them).
///
/// The default is an Armv8.4+ server core (Neoverse N2/V1/V2, Graviton3/4,
/// AmpereOne): FEAT_TTL, FEAT_TLBIRANGE, 16-bit ASIDs.  Neoverse N1 and
/// Cortex-A76-class cores (Graviton2, Ampere Altra) have neither feature:
/// there a range flush is one TLBI per stride and falls back to
/// `flush_tlb_mm` at MAX_DVM_OPS strides.  Not modelled: KPTI (the
/// kernel/user ASID pairs, `__tlbi_user`), FEAT_LPA2, E2H.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Arm64Cpu {
    /// ID_AA64MMFR0_EL1.ASIDBits: 8 or 16 (`asid_bits` in
    /// arch/arm64/mm/context.c; NUM_USER_ASIDS is `1 << asid_bits`).
    pub asid_bits: u32,
    /// FEAT_TTL (ARM64_HAS_ARMv8_4_TTL): TLBI by VA carries the level hint.
    pub feat_ttl: bool,
    /// FEAT_TLBIRANGE (`system_supports_tlb_range()`): TLBI RVAE1IS /
    /// RVALE1IS invalidate a range in one instruction.
    pub feat_tlbirange: bool,
}

impl Arm64Cpu {
    /// Armv8.4+ (FEAT_TTL, FEAT_TLBIRANGE, 16-bit ASIDs): the default.
    pub const V8_4: Arm64Cpu = Arm64Cpu { asid_bits: 16, feat_ttl: true, feat_tlbirange: true };
    /// Armv8.2 (Neoverse N1, Cortex-A76): no level hint, no range TLBI.
    pub const V8_2: Arm64Cpu = Arm64Cpu { asid_bits: 16, feat_ttl: false, feat_tlbirange: false };
}

impl Default for Arm64Cpu {
    fn default() -> Self {
        Arm64Cpu::V8_4
    }
}

/// Everything that shapes one emulated kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelConfig {
    /// The arch profile: how flushes reach other CPUs (`arch::arch_ops`).
    pub arch: Arch,
    /// The kernel release the arch profile follows.
    pub kernel: KernelVersion,
    /// The arm64 profile's CPU features (ASID width, TLBI level hint and
    /// range operations).
    pub arm64: Arm64Cpu,
    /// Page size and entries per table.
    pub geometry: Geometry,
    /// Every CPU's TLB and paging-structure-cache shape.
    pub tlb: TlbShape,
    /// Emulated RAM in page frames.
    pub ram_frames: usize,
    /// Number of emulated CPUs (the `Smp` implementation must agree).
    pub nr_cpus: usize,
    /// CONFIG_MMU_GATHER_RCU_TABLE_FREE (which selects MMU_GATHER_TABLE_FREE):
    /// page tables go to a table batch and are freed after an RCU grace
    /// period (crossbeam-epoch).  Off: a kernel without MMU_GATHER_TABLE_FREE
    /// (x86 without PARAVIRT in v6.12, the MMU_GATHER_NO_RANGE arches):
    /// `tlb_remove_table` is `tlb_remove_page`, tables are freed with the
    /// gathered pages right after the flush.  (arm64 v6.12 selects it; off
    /// there is the state before it did, docs/RACES.md “GUP-fast versus
    /// page-table freeing”.)
    pub rcu_table_free: bool,
    /// x86 `tlb_single_page_flush_ceiling` (pages).
    pub tlb_single_page_flush_ceiling: u64,
    /// CONFIG_PAGE_POISONING / init_on_free: the free-chunk cap counts pages.
    pub init_on_free: bool,
    /// Sanitizer: also check at free time that no CPU running the mm still
    /// caches a translation to the freed frame ("freed before flushed").
    pub strict_free_check: bool,
    /// The fix switches.
    pub fixes: Fixes,
    /// GUP oracle (check/gup_oracle.rs): record every leaf mapping change per
    /// (mm, va) so a page returned by GUP-fast that was not mapped there
    /// during the call is reported (`gup-oracle`).  Off by default: it takes
    /// a lock on every page-table store.
    pub gup_oracle: bool,
    /// File THP collapse (`retract_page_tables`, `collapse_pte_mapped_thp`)
    /// frees the retracted PTE table with `pte_free_defer` (RCU, v6.6+).
    /// Off: the 2022-era `collapse_and_free_pmd` frees it at once with
    /// `pte_free` (after the khugepaged-gup-fast-ipi sync, if that is on).
    pub pte_free_defer: bool,
    /// `tlb_remove_table_one` (the table-batch allocation failure path of
    /// MMU_GATHER_RCU_TABLE_FREE) sends `tlb_remove_table_sync_one` before
    /// the immediate free.  On (default) is every kernel: powerpc's
    /// `pgtable_free_now` (`pte_free_smp_sync`) had it before the code went
    /// generic in 267239116987 (2011), d86564a2f085 (2018) only added the
    /// `tlb_table_invalidate` in front of it, and the 2026 follow-ups replace
    /// the IPI with `synchronize_rcu` (another wait for IRQs-off walkers).
    /// Off is an ablation, not a historical kernel: the fallback frees the
    /// table right after the (broadcast) invalidation, which is the RACES.md “GUP-fast versus page-table freeing”
    /// "broadcast flush + immediate free" bug on the fallback path.
    pub table_free_one_sync: bool,
    /// CONFIG_DEBUG_VM: the kernel's own VM_BUG_ON / VM_WARN_ON checks that
    /// mm-core ports (`debug_vm`): a BUG panics naming the check, a WARN
    /// records a `debug-vm-warning` violation and goes on.  On by default,
    /// like a debug kernel, in release builds too.  Off is for measuring
    /// without the checks (each then costs one predictable branch); the
    /// emulator's own invariants stay checked either way.
    pub debug_vm: bool,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::X86,
            kernel: KernelVersion::V6_12,
            arm64: Arm64Cpu::default(),
            geometry: Geometry::X86_64,
            tlb: TlbShape::DEFAULT,
            ram_frames: 1 << 14,
            nr_cpus: 1,
            rcu_table_free: true,
            tlb_single_page_flush_ceiling: 33,
            init_on_free: false,
            strict_free_check: true,
            fixes: Fixes::all(),
            gup_oracle: false,
            pte_free_defer: true,
            table_free_one_sync: true,
            debug_vm: true,
        }
    }
}

impl KernelConfig {
    /// A tiny configuration for loom models: small geometry, small TLB, few frames.
    pub fn small() -> Self {
        Self { geometry: Geometry::SMALL, tlb: TlbShape::SMALL, ram_frames: 64, ..Self::default() }
    }

    /// Check the values make sense; the message says what is wrong and what is allowed.
    ///
    /// No arch × option pairing is refused, because some kernel built each.
    /// The `#error`s of include/asm-generic/tlb.h — an arch's own
    /// `tlb_needs_table_invalidate()` without MMU_GATHER_RCU_TABLE_FREE, an
    /// MMU_GATHER_NO_RANGE arch with its own `tlb_flush()` — constrain an
    /// arch's code, which the profiles in `arch/` fix (none overrides
    /// `tlb_needs_table_invalidate`; `generic` has the NO_RANGE `tlb_flush`),
    /// not an option here.  `rcu_table_free`: x86 selects
    /// MMU_GATHER_RCU_TABLE_FREE only `if PARAVIRT` before v6.15
    /// (a37259732a7d); arm64 did not select it before Steve Capper's 2014
    /// fast_gup series (the RACES.md “GUP-fast versus page-table freeing” bug `gup-table-free` shows on arm64 with it
    /// off); nothing ties it to MMU_GATHER_NO_RANGE.  v6.12's arm64 selects
    /// it unconditionally, so `arm64` with it off is an older arm64 under
    /// the v6.12 profile: refusing that waits for a `KernelVersion` that can
    /// name the older release.
    pub fn validate(&self) -> Result<(), String> {
        let g = self.geometry;
        if !(1..=9).contains(&g.pt_bits) {
            return Err(format!("geometry.pt_bits = {}: allowed 1..=9", g.pt_bits));
        }
        if !(12..=16).contains(&g.page_shift) {
            return Err(format!("geometry.page_shift = {}: allowed 12..=16", g.page_shift));
        }
        if self.nr_cpus == 0 || self.nr_cpus > crate::types::NR_CPUS {
            return Err(format!("nr_cpus = {}: allowed 1..={}", self.nr_cpus, crate::types::NR_CPUS));
        }
        if self.ram_frames < 16 || self.ram_frames > (1 << 24) {
            return Err(format!("ram_frames = {}: allowed 16..=16777216", self.ram_frames));
        }
        let t = self.tlb;
        if !t.sets.is_power_of_two() || !t.huge_sets.is_power_of_two() || t.ways == 0 || t.psc_entries == 0 {
            return Err(format!("tlb shape {t:?}: sets and huge_sets must be powers of two, ways and psc_entries ≥ 1"));
        }
        if self.tlb_single_page_flush_ceiling == 0 {
            return Err("tlb_single_page_flush_ceiling must be ≥ 1".into());
        }
        self.kernel_pairing()?;
        let bits = self.arm64.asid_bits;
        if bits != 8 && bits != 16 {
            return Err(format!("arm64.asid_bits = {bits}: allowed 8 or 16 (ID_AA64MMFR0_EL1.ASIDBits)"));
        }
        // asids_update_limit: WARN_ON(num_available_asids - 1 <= num_possible_cpus()),
        // and new_context after a rollover could then find no free ASID.
        if self.arch == Arch::Arm64 && (1usize << bits) - 1 <= self.nr_cpus {
            return Err(format!(
                "arm64 with {bits}-bit ASIDs needs fewer than {} CPUs (one more ASID than CPUs); got {}",
                (1usize << bits) - 1,
                self.nr_cpus
            ));
        }
        Ok(())
    }
}

impl KernelConfig {
    /// The pairings with `kernel` that no kernel ran, refused:
    /// - v6.18 is modelled for x86 only: the arm64 and NO_RANGE profiles
    ///   follow v6.12 (their changes up to v6.18 were not reviewed), so
    ///   calling them 6.18 would be a label, not a model;
    /// - x86 v6.18 with `rcu_table_free` off: x86 selects
    ///   MMU_GATHER_RCU_TABLE_FREE unconditionally from v6.15
    ///   (a37259732a7d); before that only `if PARAVIRT`, which v6.12 covers.
    pub fn kernel_pairing(&self) -> Result<(), String> {
        if self.kernel == KernelVersion::V6_18 && self.arch != Arch::X86 {
            return Err(format!(
                "--kernel 6.18 is modelled for x86 only ({} follows v6.12); allowed with --arch {}: 6.12",
                self.arch.name(),
                self.arch.name()
            ));
        }
        if self.kernel == KernelVersion::V6_18 && !self.rcu_table_free {
            return Err("x86 6.18 always has MMU_GATHER_RCU_TABLE_FREE (a37259732a7d, v6.15): rcu-table-free=0 \
                        needs --kernel 6.12"
                .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A switch whose off state no kernel ran says so where `mmemu list`
    /// and `reproduce` print it (CONTRIBUTING.md, “Adding a fix switch”).
    #[test]
    fn ablations_are_labelled() {
        assert!(Fix::LazyTlbFreedTables.off_means().starts_with("ablation"));
        for f in Fix::ALL {
            if f != Fix::LazyTlbFreedTables {
                assert!(!f.off_means().contains("ablation"), "{f}: a real kernel's state");
            }
        }
    }

    #[test]
    fn v6_18_is_x86_only_and_always_frees_tables_by_rcu() {
        let c = |arch, kernel, rcu_table_free| KernelConfig { arch, kernel, rcu_table_free, ..KernelConfig::default() };
        assert_eq!(c(Arch::X86, KernelVersion::V6_18, true).validate(), Ok(()));
        assert!(c(Arch::X86, KernelVersion::V6_18, false).validate().unwrap_err().contains("a37259732a7d"));
        for arch in [Arch::Arm64, Arch::GenericNoRange] {
            assert!(c(arch, KernelVersion::V6_18, true).validate().unwrap_err().contains("x86 only"));
            assert_eq!(c(arch, KernelVersion::V6_12, true).validate(), Ok(()));
        }
        assert_eq!("6.18".parse::<KernelVersion>(), Ok(KernelVersion::V6_18));
        assert_eq!("6.12".parse::<KernelVersion>(), Ok(KernelVersion::V6_12));
        assert!("6.13".parse::<KernelVersion>().unwrap_err().contains("allowed: 6.12, 6.18"));
    }

    #[test]
    fn arm64_asid_bits_are_8_or_16_and_more_than_the_cpus() {
        let arm64 = |asid_bits, nr_cpus| KernelConfig {
            arch: Arch::Arm64,
            nr_cpus,
            arm64: Arm64Cpu { asid_bits, ..Arm64Cpu::default() },
            ..KernelConfig::default()
        };
        assert_eq!(arm64(8, 254).validate(), Ok(()));
        assert!(arm64(8, 255).validate().unwrap_err().contains("fewer than 255 CPUs"));
        assert!(arm64(12, 4).validate().unwrap_err().contains("allowed 8 or 16"));
        assert_eq!(arm64(16, 256).validate(), Ok(()));
    }

    #[test]
    fn every_arch_with_either_table_free_is_a_kernel_that_was_built() {
        for arch in Arch::ALL {
            for rcu_table_free in [false, true] {
                let c = KernelConfig { arch, rcu_table_free, ..KernelConfig::default() };
                assert_eq!(c.validate(), Ok(()), "{arch:?} rcu_table_free={rcu_table_free}");
            }
        }
    }
}
