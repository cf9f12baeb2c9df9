//! Newtypes that carry the model's basic invariants: page frame numbers,
//! CPU ids and CPU masks.  (Virtual addresses are plain `u64`s.)

use crate::sync::{AtomicU64, Ordering};
use serde::Serialize;
use std::fmt;

/// Physical page frame number (index into emulated RAM).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Pfn(pub u64);

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn:{:#x}", self.0)
    }
}

impl Pfn {
    /// Index into per-frame arrays (`mem_map`, RAM, generations).
    #[inline]
    pub fn idx(self) -> usize {
        self.0 as usize
    }
    /// The frame `n` after this one (`pfn + n`, e.g. a folio's tail page).
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
}

/// Emulated CPU number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize)]
pub struct CpuId(pub u32);

impl CpuId {
    /// Index into per-CPU arrays (`smp_processor_id()` as a `usize`).
    #[inline]
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU{}", self.0)
    }
}

/// Largest number of emulated CPUs (NR_CPUS).  Small under loom so that a
/// cpumask is one atomic word.
pub const NR_CPUS: usize = if crate::sync::LOOM { 64 } else { 256 };
const MASK_WORDS: usize = NR_CPUS / 64;

/// A plain CPU bitmap (`struct cpumask` snapshot).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuMask {
    bits: [u64; MASK_WORDS],
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|c| c.0)).finish()
    }
}

impl CpuMask {
    /// The empty mask.
    pub const fn new() -> Self {
        Self { bits: [0; MASK_WORDS] }
    }
    /// Mask of CPUs 0..n.
    pub fn first_n(n: usize) -> Self {
        let mut m = Self::new();
        for c in 0..n {
            m.set(CpuId(c as u32));
        }
        m
    }
    /// `__cpumask_set_cpu`
    pub fn set(&mut self, c: CpuId) {
        self.bits[c.idx() / 64] |= 1 << (c.idx() % 64);
    }
    /// `__cpumask_clear_cpu`
    pub fn clear(&mut self, c: CpuId) {
        self.bits[c.idx() / 64] &= !(1 << (c.idx() % 64));
    }
    /// `cpumask_test_cpu`
    pub fn test(&self, c: CpuId) -> bool {
        self.bits[c.idx() / 64] & (1 << (c.idx() % 64)) != 0
    }
    /// `cpumask_empty`
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }
    /// `cpumask_weight`: the number of CPUs set.
    pub fn weight(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// `for_each_cpu`: the CPUs set, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = CpuId> + '_ {
        (0..NR_CPUS).map(|i| CpuId(i as u32)).filter(move |c| self.test(*c))
    }
}

/// An atomically updated CPU bitmap (`mm_cpumask(mm)`).
pub struct AtomicCpuMask {
    bits: Box<[AtomicU64]>,
}

impl Default for AtomicCpuMask {
    fn default() -> Self {
        Self { bits: (0..MASK_WORDS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl fmt::Debug for AtomicCpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl AtomicCpuMask {
    /// `cpumask_set_cpu`
    pub fn set(&self, c: CpuId) {
        self.bits[c.idx() / 64].fetch_or(1 << (c.idx() % 64), Ordering::SeqCst);
    }
    /// `cpumask_clear_cpu`
    pub fn clear(&self, c: CpuId) {
        self.bits[c.idx() / 64].fetch_and(!(1 << (c.idx() % 64)), Ordering::SeqCst);
    }
    /// `cpumask_test_cpu` (one SeqCst load).
    pub fn test(&self, c: CpuId) -> bool {
        self.bits[c.idx() / 64].load(Ordering::SeqCst) & (1 << (c.idx() % 64)) != 0
    }
    /// A copy, word by word: not atomic across words, like
    /// `cpumask_copy` of a live `mm_cpumask`.
    pub fn snapshot(&self) -> CpuMask {
        let mut m = CpuMask::new();
        for (i, w) in self.bits.iter().enumerate() {
            m.bits[i] = w.load(Ordering::SeqCst);
        }
        m
    }
}
