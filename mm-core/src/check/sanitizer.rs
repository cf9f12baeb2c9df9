//! The sanitizer: records every use of a freed or reused frame.
//!
//! Frames carry generations (`hw::ram`); whatever caches a pointer to a frame
//! (TLB entry, paging-structure-cache entry, a lockless walker's snapshot, a
//! secondary TLB) remembers the generation it saw.  A mismatch on use is a
//! violation.  With every fix on, a run has zero violations; with a fix off,
//! the matching violation appears.
//!
//! In loom models `set_panic(true)` turns the first violation into a panic
//! whose message starts with `sanitizer: <kind>`, so a `*_reverted` test can
//! match exactly the violation it expects.

use crate::sync::{unmodelled, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::types::{CpuId, Pfn};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::fmt;

/// Serialized as its kebab-case `name()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// A load/store hit a TLB entry whose frame was freed since the fill.
    StaleTlbAccess,
    /// A hardware walk started from a paging-structure-cache entry whose
    /// table frame was freed since it was cached.
    WalkIntoFreedTable,
    /// A hardware walk of mm A started from a walk-cache entry of a PMD
    /// table A had unshared — A's PUD no longer links it and A's unshare
    /// flush has completed — while the table lives on (same generation) as
    /// its other sharers' (c2ff4764e03e: a last-level-only flush kept it).
    WalkIntoUnsharedTable,
    /// A data frame was freed while a CPU running the mm still cached a
    /// translation to it (the free overtook the flush).
    FreedBeforeFlush,
    /// A table frame was freed while a CPU running the mm still cached it in
    /// its paging-structure cache.
    TableFreedBeforeFlush,
    /// A lockless walker (GUP-fast) read a table frame that was freed or
    /// reused under it.
    GupFastFreedTable,
    /// GUP returned a page never mapped at that address during the call.
    GupOracle,
    /// A secondary (IOMMU) TLB used a stale translation.
    SecondaryTlbStale,
    /// Data written was neither written back nor still dirty.
    LostDirtyData,
    /// A device access kept faulting past its retry bound.
    SecondaryLivelock,
    /// A zap returned while some CPU still cached a translation in its range.
    StaleAfterZap,
    /// A ported kernel VM_WARN_ON-class check fired (`KernelConfig::debug_vm`);
    /// the payload is the check, e.g.
    /// `"VM_WARN_ON_ONCE(tlb->fully_unshared_tables) in tlb_finish_mmu"`.
    DebugVmWarning(&'static str),
}

impl ViolationKind {
    /// The kebab-case name reports and `--expect` use (`stale-tlb-access`).
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::StaleTlbAccess => "stale-tlb-access",
            ViolationKind::WalkIntoFreedTable => "walk-into-freed-table",
            ViolationKind::WalkIntoUnsharedTable => "walk-into-unshared-table",
            ViolationKind::FreedBeforeFlush => "freed-before-flush",
            ViolationKind::TableFreedBeforeFlush => "table-freed-before-flush",
            ViolationKind::GupFastFreedTable => "gup-fast-freed-table",
            ViolationKind::GupOracle => "gup-oracle",
            ViolationKind::SecondaryTlbStale => "secondary-tlb-stale",
            ViolationKind::LostDirtyData => "lost-dirty-data",
            ViolationKind::SecondaryLivelock => "secondary-livelock",
            ViolationKind::StaleAfterZap => "stale-after-zap",
            ViolationKind::DebugVmWarning(_) => "debug-vm-warning",
        }
    }

    /// The kernel check of a `DebugVmWarning`.
    pub fn check(self) -> Option<&'static str> {
        match self {
            ViolationKind::DebugVmWarning(c) => Some(c),
            _ => None,
        }
    }
}

impl Serialize for ViolationKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One recorded violation: kind, CPU, address, frame and both generations.
/// Serialized with its fields in order, `kind` by name, plus `check` (the
/// kernel check) for a `debug-vm-warning`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What went wrong.
    pub kind: ViolationKind,
    /// The CPU that used the stale pointer or still cached it; `None` for a
    /// device (IOMMU) or an oracle's after-the-fact check.
    pub cpu: Option<CpuId>,
    /// The mm's id (the TLB tag), or the file's `AddressSpace::id` for
    /// lost dirty data.
    pub mm: u64,
    /// The user virtual address (`table-freed-before-flush`: the PSC
    /// entry's VA prefix; `lost-dirty-data`: the word's byte offset in the
    /// file).
    pub va: u64,
    /// The frame the cached pointer named.
    pub pfn: Pfn,
    /// Generation the cached pointer remembered.
    pub cached_gen: u64,
    /// Generation of the frame now.
    pub frame_gen: u64,
}

impl Serialize for Violation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let check = self.kind.check();
        let mut st = s.serialize_struct("Violation", 7 + check.is_some() as usize)?;
        st.serialize_field("kind", &self.kind)?;
        match check {
            Some(c) => st.serialize_field("check", c)?,
            None => st.skip_field("check")?,
        }
        st.serialize_field("cpu", &self.cpu)?;
        st.serialize_field("mm", &self.mm)?;
        st.serialize_field("va", &self.va)?;
        st.serialize_field("pfn", &self.pfn)?;
        st.serialize_field("cached_gen", &self.cached_gen)?;
        st.serialize_field("frame_gen", &self.frame_gen)?;
        st.end()
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sanitizer: {} ", self.kind)?;
        if let Some(c) = self.kind.check() {
            write!(f, "{c} ")?;
        }
        match self.cpu {
            Some(c) => write!(f, "on {c} ")?,
            None => write!(f, "on - ")?,
        }
        write!(
            f,
            "mm {} va {:#x} {:?} cached gen {} frame gen {}",
            self.mm, self.va, self.pfn, self.cached_gen, self.frame_gen
        )
    }
}

/// Keep at most this many violation records (the count keeps going).
const MAX_RECORDS: usize = 256;

/// Unlinked (mm, table) pairs kept at most; the oldest half goes beyond.
const MAX_UNLINKED: usize = 1 << 16;

/// The violation log every checker records to (`Kernel::san`): a count and
/// the first 256 records.
#[derive(Default)]
pub struct Sanitizer {
    count: AtomicU64,
    records: Mutex<Vec<Violation>>,
    panic: AtomicBool,
    /// Ghost state of `walk-into-unshared-table`: (mm, table frame) →
    /// the table's generation, for every PMD table an mm unshared and whose
    /// unshare flush completed; `order` keeps insertion order for the cap.
    unlinked: unmodelled::RwLock<UnlinkedTables>,
    /// Some pair was ever recorded: a walk from the paging-structure cache
    /// pays one relaxed load until then.
    any_unlinked: unmodelled::AtomicBool,
}

#[derive(Default)]
struct UnlinkedTables {
    map: HashMap<(u64, Pfn), u64>,
    order: VecDeque<(u64, Pfn)>,
}

impl Sanitizer {
    /// No violations; `set_panic` off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Panic on the first violation (loom models).
    pub fn set_panic(&self, on: bool) {
        self.panic.store(on, Ordering::SeqCst);
    }

    /// Count `v` and keep it if fewer than 256 are kept; panics with its
    /// `Display` instead when `set_panic(true)`.
    pub fn record(&self, v: Violation) {
        if self.panic.load(Ordering::SeqCst) {
            panic!("{v}");
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        let mut r = self.records.lock();
        if r.len() < MAX_RECORDS {
            r.push(v);
        }
    }

    /// The one generation check every cached-pointer user shares (the
    /// hardware walker starting from a paging-structure-cache entry, GUP-fast
    /// reading a table through its snapshot of the entry above): the pointer
    /// to `pfn` was taken when the frame had generation `cached_gen`; it now
    /// has `frame_gen`.  A mismatch means the frame was freed (and perhaps
    /// reused) since: record `kind`.  Returns true when the pointer is still
    /// good.
    #[allow(clippy::too_many_arguments)]
    pub fn check_gen(
        &self,
        kind: ViolationKind,
        cpu: Option<CpuId>,
        mm: u64,
        va: u64,
        pfn: Pfn,
        cached_gen: u64,
        frame_gen: u64,
    ) -> bool {
        if cached_gen == frame_gen {
            return true;
        }
        self.record(Violation { kind, cpu, mm, va, pfn, cached_gen, frame_gen });
        false
    }

    /// `mm` unlinked the table `table` (generation `gen`) from its page
    /// tables — a hugetlb PMD unshare — and the TLB flush covering it has
    /// completed (`MmuGather::tlb_flush_mmu_tlbonly`): from now on no walk
    /// of `mm` may start from a walk-cache entry of that table while it is
    /// not linked into `mm` again (`walk_into_unlinked`).
    pub fn table_unlinked(&self, mm: u64, table: Pfn, gen: u64) {
        let mut u = self.unlinked.write().unwrap_or_else(|e| e.into_inner());
        if u.map.insert((mm, table), gen).is_none() {
            u.order.push_back((mm, table));
        }
        if u.order.len() > MAX_UNLINKED {
            for key in u.order.drain(..MAX_UNLINKED / 2).collect::<Vec<_>>() {
                u.map.remove(&key);
            }
        }
        self.any_unlinked.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Did `mm` unlink `table` at generation `gen` (and flush)?  One relaxed
    /// load while no table was ever unlinked.
    pub fn was_unlinked(&self, mm: u64, table: Pfn, gen: u64) -> bool {
        if !self.any_unlinked.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let u = self.unlinked.read().unwrap_or_else(|e| e.into_inner());
        u.map.get(&(mm, table)) == Some(&gen)
    }

    /// Violations recorded so far, kept or not (0: the run is clean).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Kept records of `kind` (at most 256 in all are kept).
    pub fn count_kind(&self, kind: ViolationKind) -> usize {
        self.records.lock().iter().filter(|v| v.kind == kind).count()
    }

    /// A copy of the kept records, in the order they were recorded.
    pub fn violations(&self) -> Vec<Violation> {
        self.records.lock().clone()
    }
}
