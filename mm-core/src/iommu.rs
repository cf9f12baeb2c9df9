//! An emulated SVA device behind an IOMMU (SMMUv3 without broadcast TLB
//! maintenance, Intel/AMD SVM alike): DMA on a process address space through
//! the device's own TLB (IOTLB / ATC), filled by walking the mm's CPU page
//! tables (ATS translation), kept coherent only by mmu_notifier
//! invalidations.  A device fault goes to the IOMMU page-fault handler
//! (`iommu_sva_handle_iopf` → `handle_mm_fault`) and the access is retried.
//!
//! The TLB is `hw::tlb::Tlb` — the same structure the CPUs use — tagged with
//! the mm id (the PASID's address space), under the device's own lock.
//! What differs from a CPU is the fault rule: **a device access that faults
//! on a cached entry keeps the entry** (an SMMU does not invalidate on a
//! translation fault; only an explicit invalidation command does), so if the
//! invalidation never comes, every retry hits the same stale entry.
//!
//! Sanitizer hooks:
//! - a TLB hit whose frame generation changed since the fill is
//!   `secondary-tlb-stale` (the device read or wrote a freed frame);
//! - an access still faulting after `retry_bound` handled faults is
//!   `secondary-livelock` (the infinite IOPF loop of 6bbd42e2df8f, made
//!   finite), and the access fails with `DmaError::Livelock`.
//!
//! Contract: `iommu_sva_bind_device` registers the device's notifier on the
//! mm; from then on every secondary invalidation of the mm drops the matching
//! device TLB entries before it returns.  `iommu_sva_unbind_device` undoes it.
//! A device is driven by whatever thread calls `dma_read`/`dma_write` — an
//! emu-cpu kthread in the stress drivers — on some CPU (the IOPF handler
//! runs there).

use crate::check::sanitizer::{Violation, ViolationKind};
use crate::config::TlbShape;
use crate::hw::pte::{Level, Pte};
use crate::hw::tlb::{Tlb, TlbEntry};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::notifier::{self, MmuNotifierOps, SubscriptionId};
use crate::pgtable;
use crate::stats::Stat;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};

/// Why a DMA access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The fault handler could not resolve the fault (no VMA, no permission):
    /// the IOPF is answered with a failure and the device aborts the access.
    Fault,
    /// The access kept faulting after `retry_bound` resolved faults.
    Livelock,
    /// The mm was released (`mmu_notifier_release`): the PASID faults everything.
    Released,
}

/// Shared state of one bound device.
pub struct SvaDevice {
    /// The mm bound to the device's PASID (`iommu_sva_bind_device`).
    pub mm: Arc<MmStruct>,

    /// The device's IOTLB/ATC.
    tlb: Mutex<Tlb>,
    /// Resolved faults allowed for one access before it counts as a livelock.
    pub retry_bound: u32,
    released: AtomicBool,
    subscription: AtomicU64,
    /// Invalidations received from the notifier.
    invalidations: AtomicU64,
}

/// The notifier subscription of one device (`struct arm_smmu_mmu_notifier`).
struct SvaNotifier(Arc<SvaDevice>);

impl MmuNotifierOps for SvaNotifier {
    /// `arm_smmu_mm_arch_invalidate_secondary_tlbs`: TLBI by ASID/VA, then
    /// ATC invalidation, then CMD_SYNC — synchronous here.
    fn arch_invalidate_secondary_tlbs(&self, _k: &Kernel, mm: u64, start: u64, end: u64) {
        let mut tlb = self.0.tlb.lock();
        if end == crate::tlb::FLUSH_ALL {
            tlb.flush_asid(mm);
        } else {
            tlb.flush_range_leaf(mm, start, end);
        }
        self.0.invalidations.fetch_add(1, Ordering::SeqCst);
    }

    /// `arm_smmu_mm_release`: make the context descriptor fault every access
    /// and drop the TLB.
    fn release(&self, _k: &Kernel, mm: u64) {
        self.0.released.store(true, Ordering::SeqCst);
        self.0.tlb.lock().flush_asid(mm);
    }
}

/// Device IOTLB shape: small, like a real ATC.
pub(crate) const DEVICE_TLB: TlbShape = TlbShape { sets: 16, ways: 4, huge_sets: 1, psc_entries: 1 };

/// `iommu_sva_bind_device(dev, mm)`: bind a new device to `mm`.
pub fn iommu_sva_bind_device(k: &Kernel, mm: &Arc<MmStruct>, retry_bound: u32) -> Arc<SvaDevice> {
    let dev = Arc::new(SvaDevice {
        mm: mm.clone(),
        tlb: Mutex::new(Tlb::new(k.cfg.geometry, DEVICE_TLB)),
        retry_bound,
        released: AtomicBool::new(false),
        subscription: AtomicU64::new(0),
        invalidations: AtomicU64::new(0),
    });
    let id = notifier::mmu_notifier_register(mm, Box::new(SvaNotifier(dev.clone())));
    dev.subscription.store(id, Ordering::SeqCst);
    dev
}

impl SvaDevice {
    /// `iommu_sva_unbind_device`: unregister and drop the TLB.
    pub fn iommu_sva_unbind_device(&self) {
        let id: SubscriptionId = self.subscription.swap(0, Ordering::SeqCst);
        if id != 0 {
            notifier::mmu_notifier_unregister(&self.mm, id);
        }
        self.tlb.lock().flush_all();
    }

    /// Invalidations the device received.
    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::SeqCst)
    }

    /// The cached translation for `va`, if any (tests, coherence checks).
    pub fn cached(&self, va: u64) -> Option<TlbEntry> {
        self.tlb.lock().lookup(self.mm.id, va).copied()
    }

    /// DMA read of the word at `va`.
    pub fn dma_read(&self, k: &Kernel, va: u64) -> Result<u64, DmaError> {
        self.dma(k, va, None)
    }

    /// DMA write of `val` to the word at `va`; returns the old word.
    pub fn dma_write(&self, k: &Kernel, va: u64, val: u64) -> Result<u64, DmaError> {
        self.dma(k, va, Some(val))
    }

    fn dma(&self, k: &Kernel, va: u64, write: Option<u64>) -> Result<u64, DmaError> {
        let mut faults = 0u32;
        loop {
            if self.released.load(Ordering::SeqCst) {
                return Err(DmaError::Released);
            }
            match self.try_access(k, va, write) {
                Ok(v) => return Ok(v),
                Err(()) => {
                    if faults >= self.retry_bound {
                        k.san.record(Violation {
                            kind: ViolationKind::SecondaryLivelock,
                            cpu: None,
                            mm: self.mm.id,
                            va,
                            pfn: self.cached(va).map_or(crate::types::Pfn(0), |e| e.pfn),
                            cached_gen: 0,
                            frame_gen: faults as u64,
                        });
                        return Err(DmaError::Livelock);
                    }
                    faults += 1;
                    self.iommu_sva_handle_iopf(k, va, write.is_some())?;
                }
            }
        }
    }

    /// `iommu_sva_handle_iopf`: the page-request handler resolves the fault
    /// with `handle_mm_fault` (mmap_lock for read) on the CPU it runs on.
    fn iommu_sva_handle_iopf(&self, k: &Kernel, va: u64, write: bool) -> Result<(), DmaError> {
        k.stats.inc(k.this_cpu(), Stat::IommuPageFaults);
        crate::ops::fault::handle_mm_fault(k, &self.mm, va, write).map_err(|_| DmaError::Fault)
    }

    /// One translation + access attempt.  Err(()) is a translation or
    /// permission fault reported to the IOMMU (the entry, if any, stays).
    fn try_access(&self, k: &Kernel, va: u64, write: Option<u64>) -> Result<u64, ()> {
        let mm = self.mm.id;
        let mut tlb = self.tlb.lock();
        let is_write = write.is_some();
        let hit = tlb.lookup(mm, va).copied();
        let entry = match hit {
            Some(e) if is_write && !e.writable => return Err(()),
            Some(e) if !is_write || e.dirty => e,
            // A write through a clean writable entry: the walker sets the
            // dirty bit (HTTU) — re-walk.
            _ => self.walk(k, &mut tlb, va, is_write)?,
        };
        let now = k.hw.ram.gen(entry.pfn);
        if hit.is_some() && now != entry.gen {
            k.san.record(Violation {
                kind: ViolationKind::SecondaryTlbStale,
                cpu: None,
                mm,
                va,
                pfn: entry.pfn,
                cached_gen: entry.gen,
                frame_gen: now,
            });
        }
        let word = k.hw.ram.word(entry.pfn, ((va >> 3) as usize) & (k.cfg.geometry.ptrs_per_table() - 1));
        Ok(match write {
            None => word.load(Ordering::SeqCst),
            Some(v) => word.swap(v, Ordering::SeqCst),
        })
    }

    /// ATS translation: walk the mm's page table (no locks, like a hardware
    /// walker), set A (and D for a write) atomically, fill the device TLB.
    fn walk(&self, k: &Kernel, tlb: &mut Tlb, va: u64, write: bool) -> Result<TlbEntry, ()> {
        let table = pgtable::lookup_table(k, &self.mm, va, Level::Pte).ok_or(())?;
        let slot = pgtable::slot(k, table, Level::Pte, va);
        let cur = crate::hw::mmu::set_accessed_dirty(slot, Pte(slot.load(Ordering::SeqCst)), write, Level::Pte)
            .map_err(|_| ())?;
        let pfn = cur.pfn();
        tlb.insert(self.mm.id, va, pfn, cur.write(), cur.dirty(), false, k.hw.ram.gen(pfn));
        Ok(*tlb.lookup(self.mm.id, va).expect("just filled"))
    }
}

/// Coherence (docs/RACES.md, “Secondary-TLB (IOMMU) invalidation”): entries of `dev` in [start, end) whose pfn
/// or write permission differ from the current PTE.  Call when no fault or
/// zap of the range runs concurrently.
pub fn incoherent_entries(k: &Kernel, dev: &SvaDevice, start: u64, end: u64) -> Vec<TlbEntry> {
    let ps = k.cfg.geometry.page_size();
    let tlb = dev.tlb.lock();
    tlb.leaf_entries()
        .filter(|e| e.asid == dev.mm.id && !e.huge)
        .filter(|e| {
            let va = e.vpn * ps;
            if va < start || va >= end {
                return false;
            }
            let pte = pgtable::lookup_table(k, &dev.mm, va, Level::Pte)
                .map(|t| pgtable::read(k, t, Level::Pte, va))
                .unwrap_or(Pte::NONE);
            !pte.present() || pte.pfn() != e.pfn || pte.write() != e.writable
        })
        .copied()
        .collect()
}
