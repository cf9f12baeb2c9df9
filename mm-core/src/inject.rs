//! Hooks and test knobs: what tests, loom models and stress drivers inject
//! into a kernel to force an interleaving, a failure or a panic.  None of
//! it is kernel state and none of it is a kernel; the `Kernel` holds all of
//! it in one field, `k.inject`:
//!
//! - `faults` (`FaultInject`): injected GFP_NOWAIT allocation failures.
//! - `hooks` (`TestHooks`): forced interleavings for deterministic tests.
//! - `race` (`RaceHooks`): stall points inside gup_fast,
//!   collapse_huge_page and zap_pte_range (tests, loom models, stress
//!   drivers).
//! - `panic` (`PanicInject`): a panic at a chosen syscall of one CPU.
//! - `knobs` (`Knobs`): code placements no kernel had, kept so that a model
//!   can show why the kernel does not do it that way.
//!
//! Contract: with nothing installed, armed or set, the kernel code runs
//! exactly as it would without this module; each injection point costs
//! one load and a predictable branch (no lock, no call).  Hooks are set
//! once per kernel.  Under loom the allocation-failure counters are loom
//! atomics (a model that fails allocations explores their use); the
//! knobs and the panic are plain std atomics (`sync::unmodelled`), and the
//! hooks set-once cells: set before the model's threads start, never part
//! of a modelled race.

use crate::kernel::Kernel;
use crate::sync::unmodelled;
use crate::sync::{AtomicU32, HookCell, Ordering};
use crate::types::CpuId;

/// Everything injected into one kernel (`Kernel::inject`).
#[derive(Default)]
pub struct Inject {
    /// Injected GFP_NOWAIT failures of gather and table batches.
    pub faults: FaultInject,
    /// Forced interleavings for deterministic tests.
    pub hooks: TestHooks,
    /// Stall points inside gup_fast, collapse_huge_page and zap_pte_range.
    pub race: RaceHooks,
    /// A panic at a chosen syscall of one CPU.
    pub panic: PanicInject,
    /// Code placements no kernel had.
    pub knobs: Knobs,
}

// ---- allocation failures --------------------------------------------------

/// Allocation failures injected into GFP_NOWAIT allocations, for tests of
/// the fallback paths (`tlb_next_batch` failing, `tlb_remove_table_one`).
#[derive(Default)]
pub struct FaultInject {
    /// Fail this many upcoming gather page-batch allocations.
    pub fail_page_batch: AtomicU32,
    /// Fail this many upcoming table-batch allocations.
    pub fail_table_batch: AtomicU32,
}

impl FaultInject {
    /// Consume one injected failure from `counter`; true if it fired.
    pub fn take(counter: &AtomicU32) -> bool {
        let mut cur = counter.load(Ordering::SeqCst);
        while cur > 0 {
            match counter.compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }
}

// ---- forced interleavings -------------------------------------------------

/// A test hook called with the kernel.
pub type KernelHook = Box<dyn Fn(&Kernel) + Send + Sync>;

/// Test hooks: forced interleavings for deterministic tests on `SyncSmp`
/// (set once; never part of a modelled race).
#[derive(Default)]
pub struct TestHooks {
    /// Called by `zap_pte_range` after its PTE loop, with the PTL still held
    /// and before the force-flush (`tlb_flush_mmu_tlbonly` + `tlb_flush_rmaps`):
    /// the window of 5df397dec7c4.
    pub zap_pte_range_locked: HookCell<KernelHook>,
}

// ---- stall points ---------------------------------------------------------

/// Where in `gup_fast` a test / stress hook runs (with IRQs off).  Models
/// the walker being stalled there (an NMI, a vCPU preempted by the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GupFastPoint {
    /// The PUD entry was read (copy taken); the PMD table below it not read
    /// yet.  Nothing re-checks a PUD: this is where the hugetlb unshare race
    /// (1013af4f585f) needs its walker.
    PudRead,
    /// The PMD entry was read (copy taken); nothing below read yet.
    PmdRead,
    /// The PTE was read (copy taken); the folio not yet grabbed.
    PteRead,
    /// The folio was grabbed; the re-checks not yet done.
    Grabbed,
}

/// Where in `collapse_huge_page` a test hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollapsePoint {
    /// `pmdp_collapse_flush` done (and the sync IPI, if on).
    AfterCollapseFlush,
    /// `__collapse_huge_page_isolate` succeeded; nothing copied yet.
    AfterIsolate,
}

/// Where in the zap walk (`zap_pte_range`, mm/memory.c) a test / stress
/// hook runs.  Unlike the gup-fast and collapse points, IRQs are on here:
/// a CPU stalled at a zap point still takes flush IPIs while it waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZapPoint {
    /// The end of one `zap_pte_range` call: the PTEs of its range in one
    /// PTE table are cleared and handed to the gather, the table's PTL is
    /// released (`pte_unmap_unlock`), and the gather's force-flush, if the
    /// call needed one, is done.  Otherwise the TLB flush of those PTEs is
    /// still pending (deferred to `tlb_end_vma` / `tlb_finish_mmu`).  In
    /// the kernel the caller, `zap_pmd_range`, passes `cond_resched()`
    /// right after (v6.12; with CONFIG_PT_RECLAIM, later, the retry loop
    /// inside `zap_pte_range` calls it at the same unlocked place): the
    /// zapper can be preempted or interrupted here with the cleared PTEs unflushed.
    /// That is the window of 99baac21e458 — a second MADV_DONTNEED of the
    /// same range finds every PTE none and, without `mm_tlb_flush_nested`,
    /// returns with no flush.  Called once per call: once per PTE table
    /// walked, twice or more when the gather filled up and the walk came
    /// back to the same table; never for a table that is not there.
    PteTableDone,
}

type GupFastHook = Box<dyn Fn(&Kernel, GupFastPoint, u64) + Send + Sync>;
type CollapseHook = Box<dyn Fn(&Kernel, CollapsePoint, u64) + Send + Sync>;
type ZapHook = Box<dyn Fn(&Kernel, ZapPoint, u64) + Send + Sync>;
type KernelPointHook = Box<dyn Fn(&Kernel) + Send + Sync>;

/// Injection points for tests and stress drivers (set once per kernel).
#[derive(Default)]
pub struct RaceHooks {
    gup_fast: HookCell<GupFastHook>,
    collapse: HookCell<CollapseHook>,
    zap: HookCell<ZapHook>,
    after_free_pgtables: HookCell<KernelPointHook>,
}

impl RaceHooks {
    /// Install the `gup_fast` hook; false if one is already installed.
    pub fn set_gup_fast(&self, f: impl Fn(&Kernel, GupFastPoint, u64) + Send + Sync + 'static) -> bool {
        self.gup_fast.set(Box::new(f)).is_ok()
    }
    /// Install the `collapse_huge_page` hook; false if one is already installed.
    pub fn set_collapse(&self, f: impl Fn(&Kernel, CollapsePoint, u64) + Send + Sync + 'static) -> bool {
        self.collapse.set(Box::new(f)).is_ok()
    }
    /// Install the zap-walk hook (`ZapPoint`); it gets the address the
    /// `zap_pte_range` call started at (the start of its range in that PTE
    /// table).  False if one is already installed.
    pub fn set_zap(&self, f: impl Fn(&Kernel, ZapPoint, u64) + Send + Sync + 'static) -> bool {
        self.zap.set(Box::new(f)).is_ok()
    }
    /// Install the hook run at the end of `free_pgtables` (every VMA of the
    /// call unlinked from i_mmap, the gather not finished: the
    /// munmap-versus-`unmap_mapping_range` window of b67fbebd4cf9); false
    /// if one is already installed.
    pub fn set_after_free_pgtables(&self, f: impl Fn(&Kernel) + Send + Sync + 'static) -> bool {
        self.after_free_pgtables.set(Box::new(f)).is_ok()
    }
    #[inline]
    pub(crate) fn after_free_pgtables(&self, k: &Kernel) {
        if let Some(h) = self.after_free_pgtables.get() {
            h(k);
        }
    }
    #[inline]
    pub(crate) fn gup_fast(&self, k: &Kernel, p: GupFastPoint, va: u64) {
        if let Some(h) = self.gup_fast.get() {
            h(k, p, va);
        }
    }
    #[inline]
    pub(crate) fn zap(&self, k: &Kernel, p: ZapPoint, va: u64) {
        if let Some(h) = self.zap.get() {
            h(k, p, va);
        }
    }
    #[inline]
    pub(crate) fn collapse(&self, k: &Kernel, p: CollapsePoint, va: u64) {
        if let Some(h) = self.collapse.get() {
            h(k, p, va);
        }
    }
}

// ---- an injected panic ----------------------------------------------------

/// No CPU armed.
const UNARMED: u32 = u32::MAX;

/// "Panic at the syscall after the first N on CPU c", for tests of a run's
/// error path (the workloads' `--inject-panic CPU --inject-panic-after N`).
/// The syscall entry asks `fire`; the kernel code never does.  At most one
/// CPU is armed at a time, and it fires once.
pub struct PanicInject {
    /// The armed CPU, or `UNARMED`.
    cpu: unmodelled::AtomicU32,
    /// Syscalls of the armed CPU that still go through before the panic.
    skip: unmodelled::AtomicU64,
}

impl Default for PanicInject {
    fn default() -> Self {
        Self { cpu: unmodelled::AtomicU32::new(UNARMED), skip: unmodelled::AtomicU64::new(0) }
    }
}

impl PanicInject {
    /// Make the syscall of `cpu` after its first `after` panic.
    pub fn arm(&self, cpu: CpuId, after: u64) {
        self.skip.store(after, Ordering::SeqCst);
        self.cpu.store(cpu.0, Ordering::SeqCst);
    }

    /// The armed CPU, until its panic fired.
    pub fn armed(&self) -> Option<CpuId> {
        let c = self.cpu.load(Ordering::Relaxed);
        (c != UNARMED).then_some(CpuId(c))
    }

    /// At a syscall entry on `cpu`: true (once) when this is the syscall to
    /// panic at, and the caller panics.  Unarmed, or armed for another CPU,
    /// it costs one relaxed load.
    #[inline]
    pub fn fire(&self, cpu: CpuId) -> bool {
        self.cpu.load(Ordering::Relaxed) == cpu.0
            && self.skip.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err()
            && self.cpu.compare_exchange(cpu.0, UNARMED, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }
}

// ---- test knobs -----------------------------------------------------------

/// One test knob: a flag set before the run (after `Kernel::new`, before
/// any task runs) and read by the code it moves.
#[derive(Default)]
pub struct Knob(unmodelled::AtomicBool);

impl Knob {
    /// Turn the knob on or off (before any task runs).
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
    /// Whether the knob is on (one relaxed load).
    #[inline]
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Test knobs: each puts a piece of kernel code where no kernel had it.
/// All off by default.
#[derive(Default)]
pub struct Knobs {
    /// Test knob, not a kernel: with `Fix::HugetlbUnshareBatched`, do the
    /// gather's unshare sync (`tlb_remove_table_sync_one`) in
    /// `tlb_finish_mmu`, i.e. *after* i_mmap_rwsem was dropped, instead of
    /// in `huge_pmd_unshare_flush` before the unlock.  This is the placement
    /// the 8ce720d5bd91 message forbids ("deferring it to tlb_finish_mmu"
    /// lets the new owner reuse the table while a GUP-fast walker is still
    /// in it); the loom model `loom_hugetlb_unshare_batched` shows it fails.
    pub hugetlb_unshare_sync_after_unlock: Knob,
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests {
    use super::*;

    #[test]
    fn panic_inject_fires_once_at_the_syscall_after_the_first_n_on_its_cpu() {
        let p = PanicInject::default();
        assert!(!p.fire(CpuId(0)), "unarmed");
        p.arm(CpuId(1), 2);
        assert!(!p.fire(CpuId(0)), "another CPU");
        assert!(!p.fire(CpuId(1)), "first syscall goes through");
        assert!(!p.fire(CpuId(1)), "second syscall goes through");
        assert!(!p.fire(CpuId(0)), "another CPU never counts");
        assert!(p.fire(CpuId(1)), "the third panics");
        assert!(!p.fire(CpuId(1)), "once");
        p.arm(CpuId(0), 0);
        assert!(p.fire(CpuId(0)), "after 0: the first syscall");
    }

    #[test]
    fn knobs_are_off_until_set() {
        let k = Knobs::default();
        assert!(!k.hugetlb_unshare_sync_after_unlock.get());
        k.hugetlb_unshare_sync_after_unlock.set(true);
        assert!(k.hugetlb_unshare_sync_after_unlock.get());
    }
}
