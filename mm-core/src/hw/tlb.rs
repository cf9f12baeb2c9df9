//! Per-CPU software TLB and paging-structure cache (PSC).
//!
//! The TLB is set-associative, one array for base pages and one for PMD-sized
//! pages, every entry tagged with an address-space id (the mm's id; 0 is
//! init_mm).  The PSC caches upper-level entries — "the PUD/PMD/PTE table for
//! this VA prefix is frame T" — so a later walk can start below the top.
//!
//! Every entry remembers the generation of the frame it points to at fill
//! time; `mmu.rs` compares it with RAM's current generation on use.
//!
//! Invalidation contract (what each op drops), x86 semantics:
//! - `flush_one(asid, va)`  — INVLPG: leaf entries for `va` *and every PSC
//!   entry* of `asid` (Intel SDM: INVLPG invalidates all paging-structure
//!   caches associated with the current PCID).
//! - `flush_range(asid, start, end)` — INVLPG for each page of the range.
//! - `flush_asid(asid)` — everything tagged `asid` (leaf and PSC).
//! - `flush_all()` — every non-global entry (we have no global entries).
//!
//! arm64 semantics (TLBI by VA is narrower than INVLPG):
//! - `tlbi_va(asid, va, last_level, ttl)` — TLBI VAE1IS / VALE1IS: the leaf
//!   translating `va` and, unless last-level, the walk-cache entries a walk
//!   of `va` uses; a level hint (`ttl`) narrows both.
//! - `tlbi_range(asid, start, end, last_level, ttl)` — TLBI RVAE1IS /
//!   RVALE1IS: the same for every address of the range.
//! - `flush_asid` is TLBI ASIDE1IS, `flush_all` TLBI VMALLE1.

use crate::config::{Geometry, TlbShape};
use crate::hw::pte::Level;
use crate::types::Pfn;

/// One cached leaf translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbEntry {
    /// In use; invalidation clears it (the slot is then free for a fill).
    pub valid: bool,
    /// Address-space tag: the mm's id (0 = init_mm), as loaded in CR3.
    pub asid: u64,
    /// Virtual page number at the entry's size (va >> PAGE_SHIFT or PMD_SHIFT).
    pub vpn: u64,
    /// First frame of the mapping.
    pub pfn: Pfn,
    /// The PTE had `_PAGE_RW` at fill time: stores may use the entry.
    pub writable: bool,
    /// The dirty bit was set in the PTE when this entry was filled: writes go
    /// straight to memory without touching the PTE again.
    pub dirty: bool,
    /// A PMD-level leaf (in the huge array; `vpn` is va >> PMD_SHIFT).
    pub huge: bool,
    /// Generation of `pfn` (head frame) when filled.
    pub gen: u64,
}

/// One cached upper-level entry: the table that maps `prefix` at `level`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PscEntry {
    /// In use; invalidation clears it.
    pub valid: bool,
    /// Address-space tag of the walk that filled it (the mm's id).
    pub asid: u64,
    /// va >> level_shift(level + 1): the VA prefix the cached entry covers.
    pub prefix: u64,
    /// Frame of the table (whose entries are at `level`).
    pub table: Pfn,
    /// Generation of `table` when filled: a walk from an entry whose table
    /// was freed since is a `walk-into-freed-table`.
    pub gen: u64,
}

/// The three PSC levels: tables of PTEs, of PMDs and of PUDs.
const PSC_LEVELS: [Level; 3] = [Level::Pte, Level::Pmd, Level::Pud];

/// One CPU's TLB (a base-page and a PMD-page array, `ways`-associative)
/// and its paging-structure cache (three fully associative levels).
pub struct Tlb {
    geo: Geometry,
    shape: TlbShape,
    small: Box<[TlbEntry]>,
    huge: Box<[TlbEntry]>,
    small_victim: Box<[u8]>,
    huge_victim: Box<[u8]>,
    /// psc[i] caches tables whose entries are at PSC_LEVELS[i].
    psc: [Box<[PscEntry]>; 3],
    psc_victim: [usize; 3],
    /// Superset of the tags of valid leaf entries, one bit per `asid % 64`:
    /// set by `insert`, recomputed exactly by every `drop_leaf` scan (all
    /// flushes but `flush_all`, which clears it).  Entries invalidated any
    /// other way keep their bit (still a superset).  Lets `leaf_entries_of`
    /// — the sanitizer's free-time scan, run once per freed page — skip a
    /// TLB that holds nothing of that mm, e.g. after a munmap's flush.
    leaf_asids: u64,
    /// A Bloom filter of the frames valid base-page entries point at (two
    /// bits per frame, `pfn_bits`; `LEAF_PFN_BITS_PER_ENTRY` bits per
    /// entry): set by `insert`, recomputed exactly by every `drop_leaf`
    /// scan and after every `small.len()` inserts (so the bits of entries
    /// evicted or invalidated one by one do not pile up), cleared by
    /// `flush_all`; between two rebuilds it is a superset.  Lets the sanitizer's free-time
    /// check (`leaf_entries_over`, run for every freed page on every CPU in
    /// a user mm) skip the scan of a TLB that cannot hold a translation to
    /// the frame.
    leaf_pfns: Box<[u64]>,
    /// Superset of "the huge array holds a valid entry" (same upkeep).
    huge_any: bool,
    /// Inserts since `leaf_pfns` was last rebuilt.
    filter_inserts: usize,
}

/// Bits of `Tlb::leaf_pfns` per base-page entry: with every entry valid
/// (and two bits per frame) a frame the TLB does not cache passes the
/// filter (1 - e^(-2/16))^2 = 1.4% of the time.
const LEAF_PFN_BITS_PER_ENTRY: usize = 16;

#[inline]
fn asid_bit(asid: u64) -> u64 {
    1 << (asid % 64)
}

impl Tlb {
    /// An empty TLB and PSC of `shape` for page tables of `geo`.
    pub fn new(geo: Geometry, shape: TlbShape) -> Self {
        let e = |n| vec![TlbEntry::default(); n].into_boxed_slice();
        let p = || vec![PscEntry::default(); shape.psc_entries].into_boxed_slice();
        Self {
            geo,
            shape,
            small: e(shape.sets * shape.ways),
            huge: e(shape.huge_sets * shape.ways),
            small_victim: vec![0; shape.sets].into_boxed_slice(),
            huge_victim: vec![0; shape.huge_sets].into_boxed_slice(),
            psc: [p(), p(), p()],
            psc_victim: [0; 3],
            leaf_asids: 0,
            leaf_pfns: vec![0; (shape.sets * shape.ways * LEAF_PFN_BITS_PER_ENTRY).div_ceil(64)].into_boxed_slice(),
            huge_any: false,
            filter_inserts: 0,
        }
    }

    /// Rebuild `leaf_pfns` and `huge_any` from the valid entries.
    fn rebuild_filter(&mut self) {
        self.leaf_pfns.fill(0);
        self.huge_any = self.huge.iter().any(|e| e.valid);
        for e in self.small.iter().filter(|e| e.valid) {
            Self::filter_set(&mut self.leaf_pfns, e.pfn);
        }
        self.filter_inserts = 0;
    }

    /// The two bits of `pfn` in a filter of `words` words (two
    /// multiplicative hashes; frames of a folio spread over the filter).
    #[inline]
    fn pfn_bits(words: usize, pfn: Pfn) -> [usize; 2] {
        let m = words as u64 * 64;
        let h = pfn.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        [((h >> 32) % m) as usize, ((h.rotate_left(17) ^ pfn.0) % m) as usize]
    }

    #[inline]
    fn filter_set(filter: &mut [u64], pfn: Pfn) {
        for b in Self::pfn_bits(filter.len(), pfn) {
            filter[b / 64] |= 1 << (b % 64);
        }
    }

    #[inline]
    fn filter_has(&self, pfn: Pfn) -> bool {
        Self::pfn_bits(self.leaf_pfns.len(), pfn).iter().all(|b| self.leaf_pfns[b / 64] & (1 << (b % 64)) != 0)
    }

    #[inline]
    fn set_range(&self, huge: bool, vpn: u64) -> std::ops::Range<usize> {
        let sets = if huge { self.shape.huge_sets } else { self.shape.sets };
        let set = (vpn as usize) & (sets - 1);
        set * self.shape.ways..(set + 1) * self.shape.ways
    }

    /// Find the leaf entry translating `va` in `asid`.
    #[inline]
    pub fn lookup(&mut self, asid: u64, va: u64) -> Option<&mut TlbEntry> {
        let vpn = va >> self.geo.page_shift;
        let r = self.set_range(false, vpn);
        if let Some(i) = r.clone().find(|&i| {
            let e = &self.small[i];
            e.valid && e.vpn == vpn && e.asid == asid
        }) {
            return Some(&mut self.small[i]);
        }
        let hvpn = va >> self.geo.level_shift(Level::Pmd);
        let r = self.set_range(true, hvpn);
        let i = r.clone().find(|&i| {
            let e = &self.huge[i];
            e.valid && e.vpn == hvpn && e.asid == asid
        })?;
        Some(&mut self.huge[i])
    }

    /// Insert (or replace) the translation for `va`.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(&mut self, asid: u64, va: u64, pfn: Pfn, writable: bool, dirty: bool, huge: bool, gen: u64) {
        let shift = if huge { self.geo.level_shift(Level::Pmd) } else { self.geo.page_shift };
        let vpn = va >> shift;
        let r = self.set_range(huge, vpn);
        let ways = self.shape.ways;
        let set = r.start / ways;
        let (arr, victims) =
            if huge { (&mut self.huge, &mut self.huge_victim) } else { (&mut self.small, &mut self.small_victim) };
        let slot = r
            .clone()
            .find(|&i| arr[i].valid && arr[i].vpn == vpn && arr[i].asid == asid)
            .or_else(|| r.clone().find(|&i| !arr[i].valid))
            .unwrap_or_else(|| {
                let v = victims[set] as usize % ways;
                victims[set] = ((v + 1) % ways) as u8;
                r.start + v
            });
        arr[slot] = TlbEntry { valid: true, asid, vpn, pfn, writable, dirty, huge, gen };
        self.leaf_asids |= asid_bit(asid);
        if huge {
            self.huge_any = true;
        } else {
            Self::filter_set(&mut self.leaf_pfns, pfn);
        }
        self.filter_inserts += 1;
        if self.filter_inserts >= self.small.len() {
            self.rebuild_filter();
        }
    }

    fn psc_index(level: Level) -> usize {
        match level {
            Level::Pte => 0,
            Level::Pmd => 1,
            Level::Pud => 2,
            Level::Pgd => unreachable!("the PGD is reached through CR3, not the PSC"),
        }
    }

    fn psc_prefix(&self, level: Level, va: u64) -> u64 {
        va >> self.geo.level_shift(level).saturating_add(self.geo.pt_bits)
    }

    /// Deepest cached table for `va`: (level of its entries, table frame, gen).
    pub fn lookup_psc(&self, asid: u64, va: u64) -> Option<(Level, Pfn, u64)> {
        for (i, level) in PSC_LEVELS.iter().enumerate() {
            let prefix = self.psc_prefix(*level, va);
            if let Some(e) = self.psc[i].iter().find(|e| e.valid && e.asid == asid && e.prefix == prefix) {
                return Some((*level, e.table, e.gen));
            }
        }
        None
    }

    /// Remember that the table whose entries are at `level` for `va` is `table`.
    pub fn insert_psc(&mut self, asid: u64, level: Level, va: u64, table: Pfn, gen: u64) {
        let i = Self::psc_index(level);
        let prefix = self.psc_prefix(level, va);
        let arr = &mut self.psc[i];
        let slot = arr
            .iter()
            .position(|e| e.valid && e.asid == asid && e.prefix == prefix)
            .or_else(|| arr.iter().position(|e| !e.valid))
            .unwrap_or_else(|| {
                let v = self.psc_victim[i] % arr.len();
                self.psc_victim[i] = v + 1;
                v
            });
        arr[slot] = PscEntry { valid: true, asid, prefix, table, gen };
    }

    fn drop_psc_asid(&mut self, asid: u64) -> usize {
        let mut n = 0;
        for arr in self.psc.iter_mut() {
            for e in arr.iter_mut().filter(|e| e.valid && e.asid == asid) {
                e.valid = false;
                n += 1;
            }
        }
        n
    }

    /// INVLPG: drop the leaf entries for `va` and every PSC entry of `asid`.
    /// Returns the number of leaf entries dropped.
    pub fn flush_one(&mut self, asid: u64, va: u64) -> usize {
        self.drop_psc_asid(asid);
        // Same result as drop_leaf(asid, va, va + 1), but only the two sets
        // `va` indexes can hold a translation of it (insert places entries
        // by set), so look there only: flush_tlb_func issues one of these
        // per page up to the 33-page ceiling.  `leaf_asids` stays a superset.
        let mut n = 0;
        let vpn = va >> self.geo.page_shift;
        for i in self.set_range(false, vpn) {
            let e = &mut self.small[i];
            if e.valid && e.asid == asid && e.vpn == vpn {
                e.valid = false;
                n += 1;
            }
        }
        let hvpn = va >> self.geo.level_shift(Level::Pmd);
        for i in self.set_range(true, hvpn) {
            let e = &mut self.huge[i];
            if e.valid && e.asid == asid && e.vpn == hvpn {
                e.valid = false;
                n += 1;
            }
        }
        n
    }

    fn drop_leaf(&mut self, asid: u64, start: u64, end: u64) -> usize {
        let ps = self.geo.page_shift;
        let hs = self.geo.level_shift(Level::Pmd);
        let mut n = 0;
        let mut left = 0;
        self.leaf_pfns.fill(0);
        self.huge_any = false;
        self.filter_inserts = 0;
        for e in self.small.iter_mut().chain(self.huge.iter_mut()) {
            if !e.valid {
                continue;
            }
            if e.asid == asid {
                let shift = if e.huge { hs } else { ps };
                let (s, t) = (e.vpn << shift, (e.vpn + 1) << shift);
                if s < end && start < t {
                    e.valid = false;
                    n += 1;
                    continue;
                }
            }
            left |= asid_bit(e.asid);
            if e.huge {
                self.huge_any = true;
            } else {
                Self::filter_set(&mut self.leaf_pfns, e.pfn);
            }
        }
        self.leaf_asids = left;
        n
    }

    /// INVLPG over every page of [start, end): leaf entries in the range and
    /// all PSC entries of `asid`.
    pub fn flush_range(&mut self, asid: u64, start: u64, end: u64) -> usize {
        self.drop_psc_asid(asid);
        self.drop_leaf(asid, start, end)
    }

    /// Last-level-only invalidation of [start, end): leaf entries in the
    /// range; walk-cache entries survive (the SVA device's IOTLB
    /// invalidation, `iommu.rs`).
    pub fn flush_range_leaf(&mut self, asid: u64, start: u64, end: u64) -> usize {
        self.drop_leaf(asid, start, end)
    }

    /// arm64 `TLBI VAE1IS` / `TLBI VALE1IS` (`last_level`) of one address,
    /// as every TLB in the inner-shareable domain executes it: drop what
    /// translates `va` in `asid` and nothing else.
    ///
    /// - Leaf entries: the one mapping `va` (a base page or the PMD-sized
    ///   block containing it); with a level hint only a leaf *at* that
    ///   level.
    /// - Walk-cache entries (unless `last_level`): those a walk of `va`
    ///   would use; with a level hint only those cached from a descriptor
    ///   *above* the hinted level (the commit message of c2ff4764e03e:
    ///   "VAE1IS + TTL=2: non-leaf at level 0/1 + leaf at level 2").
    ///
    /// `ttl` is the FEAT_TTL hint as the level of the leaf being removed
    /// (`Level::Pte` is the kernel's 3, `Level::Pmd` its 2, `Level::Pud` its
    /// 1, `Level::Pgd` its 0); `None` is TLBI_TTL_UNKNOWN.  A wrong hint
    /// invalidates nothing of the other levels: the architecture allows
    /// exactly that ("if the level is wrong, no invalidation may take
    /// place", asm/tlbflush.h), and hardware here is never helpful.
    /// Returns the entries dropped.
    pub fn tlbi_va(&mut self, asid: u64, va: u64, last_level: bool, ttl: Option<Level>) -> usize {
        let mut n = 0;
        if ttl.is_none_or(|l| l == Level::Pte) {
            let vpn = va >> self.geo.page_shift;
            for i in self.set_range(false, vpn) {
                let e = &mut self.small[i];
                if e.valid && e.asid == asid && e.vpn == vpn {
                    e.valid = false;
                    n += 1;
                }
            }
        }
        if ttl.is_none_or(|l| l == Level::Pmd) {
            let hvpn = va >> self.geo.level_shift(Level::Pmd);
            for i in self.set_range(true, hvpn) {
                let e = &mut self.huge[i];
                if e.valid && e.asid == asid && e.vpn == hvpn {
                    e.valid = false;
                    n += 1;
                }
            }
        }
        if !last_level {
            n += self.drop_walk_cache(asid, va, va + 1, ttl);
        }
        n
    }

    /// arm64 `TLBI RVAE1IS` / `TLBI RVALE1IS` (FEAT_TLBIRANGE): `tlbi_va`
    /// for every address of [start, end) at once (one instruction).
    pub fn tlbi_range(&mut self, asid: u64, start: u64, end: u64, last_level: bool, ttl: Option<Level>) -> usize {
        let ps = self.geo.page_shift;
        let hs = self.geo.level_shift(Level::Pmd);
        let mut n = 0;
        for e in self.small.iter_mut().chain(self.huge.iter_mut()) {
            if !e.valid || e.asid != asid {
                continue;
            }
            let (shift, level) = if e.huge { (hs, Level::Pmd) } else { (ps, Level::Pte) };
            if ttl.is_some_and(|l| l != level) {
                continue;
            }
            let (s, t) = (e.vpn << shift, (e.vpn + 1) << shift);
            if s < end && start < t {
                e.valid = false;
                n += 1;
            }
        }
        if !last_level {
            n += self.drop_walk_cache(asid, start, end, ttl);
        }
        n
    }

    /// The walk-cache half of a TLBI by VA: entries of `asid` that a walk
    /// of an address in [start, end) would use, cached from a descriptor
    /// above the hinted leaf level (all of them without a hint).
    fn drop_walk_cache(&mut self, asid: u64, start: u64, end: u64, ttl: Option<Level>) -> usize {
        let mut n = 0;
        for (i, level) in PSC_LEVELS.iter().enumerate() {
            // The entry for a table at `level` was read from a descriptor
            // one level up; the hint spares descriptors at or below it.
            if ttl.is_some_and(|l| (*level as u32) < l as u32) {
                continue;
            }
            let shift = self.geo.level_shift(*level).saturating_add(self.geo.pt_bits);
            for e in self.psc[i].iter_mut().filter(|e| e.valid && e.asid == asid) {
                let s = e.prefix.checked_shl(shift).unwrap_or(u64::MAX);
                let t = (e.prefix + 1).checked_shl(shift).unwrap_or(u64::MAX);
                if s < end && start < t {
                    e.valid = false;
                    n += 1;
                }
            }
        }
        n
    }

    /// Drop everything tagged `asid` (leaf and PSC).
    pub fn flush_asid(&mut self, asid: u64) -> usize {
        self.drop_psc_asid(asid);
        self.drop_leaf(asid, 0, u64::MAX)
    }

    /// Drop every entry (a CR3 write without PCID / a full flush).
    pub fn flush_all(&mut self) {
        for e in self.small.iter_mut().chain(self.huge.iter_mut()) {
            e.valid = false;
        }
        self.leaf_asids = 0;
        self.leaf_pfns.fill(0);
        self.huge_any = false;
        self.filter_inserts = 0;
        for arr in self.psc.iter_mut() {
            for e in arr.iter_mut() {
                e.valid = false;
            }
        }
    }

    /// Valid leaf entries (for the sanitizer and tests).
    pub fn leaf_entries(&self) -> impl Iterator<Item = &TlbEntry> {
        self.small.iter().chain(self.huge.iter()).filter(|e| e.valid)
    }

    /// Valid leaf entries tagged `asid`; a TLB known to hold none of that
    /// tag yields nothing without a scan (see `leaf_asids`).
    pub fn leaf_entries_of(&self, asid: u64) -> impl Iterator<Item = &TlbEntry> {
        let n = if self.leaf_asids & asid_bit(asid) != 0 { usize::MAX } else { 0 };
        self.small.iter().chain(self.huge.iter()).take(n).filter(move |e| e.valid && e.asid == asid)
    }

    /// Valid leaf entries tagged `asid` that may translate to a frame of
    /// `[pfn, pfn + nr)`: a superset of those that do (the caller checks
    /// each), without a scan of the base-page array when `leaf_pfns` says
    /// no entry points there, nor of either array when the TLB holds
    /// nothing of `asid`.  The huge array (few entries, each covering many
    /// frames) is looked at whenever it may hold a valid entry.
    pub fn leaf_entries_over(&self, asid: u64, pfn: Pfn, nr: u64) -> impl Iterator<Item = &TlbEntry> {
        let mine = self.leaf_asids & asid_bit(asid) != 0;
        let small = mine && (0..nr).any(|i| self.filter_has(pfn.add(i)));
        let take = |yes: bool| if yes { usize::MAX } else { 0 };
        self.small
            .iter()
            .take(take(small))
            .chain(self.huge.iter().take(take(mine && self.huge_any)))
            .filter(move |e| e.valid && e.asid == asid)
    }

    /// Valid PSC entries with the level of their table's entries.
    pub fn psc_entries(&self) -> impl Iterator<Item = (Level, &PscEntry)> {
        self.psc.iter().enumerate().flat_map(|(i, a)| a.iter().filter(|e| e.valid).map(move |e| (PSC_LEVELS[i], e)))
    }

    /// The geometry its entries' VPNs and prefixes are computed with.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlb() -> Tlb {
        Tlb::new(Geometry::X86_64, TlbShape::DEFAULT)
    }

    #[test]
    fn insert_lookup_and_asid_tagging() {
        let mut t = tlb();
        t.insert(1, 0x4000, Pfn(7), true, false, false, 3);
        assert_eq!(t.lookup(1, 0x4123).unwrap().pfn, Pfn(7));
        assert!(t.lookup(2, 0x4123).is_none(), "other address space must miss");
        assert!(t.lookup(1, 0x5000).is_none());
    }

    #[test]
    fn huge_entries_cover_pmd_range() {
        let mut t = tlb();
        t.insert(1, 0x20_0000, Pfn(512), true, true, true, 0);
        assert!(t.lookup(1, 0x3f_f000).unwrap().huge);
        assert!(t.lookup(1, 0x40_0000).is_none());
        assert_eq!(t.flush_one(1, 0x21_0000), 1);
        assert!(t.lookup(1, 0x20_0000).is_none());
    }

    #[test]
    fn invlpg_drops_all_psc_of_asid() {
        let mut t = tlb();
        t.insert_psc(1, Level::Pte, 0x20_0000, Pfn(9), 0);
        t.insert_psc(2, Level::Pte, 0x20_0000, Pfn(10), 0);
        assert_eq!(t.lookup_psc(1, 0x20_1000).unwrap().1, Pfn(9));
        t.flush_one(1, 0x7000_0000);
        assert!(t.lookup_psc(1, 0x20_1000).is_none());
        assert_eq!(t.lookup_psc(2, 0x20_1000).unwrap().1, Pfn(10));
    }

    #[test]
    fn set_conflicts_evict_round_robin() {
        let mut t = tlb();
        let stride = (TlbShape::DEFAULT.sets as u64) << 12;
        for i in 0..5 {
            t.insert(1, i * stride, Pfn(i), false, false, false, 0);
        }
        let present = (0..5).filter(|i| t.lookup(1, i * stride).is_some()).count();
        assert_eq!(present, TlbShape::DEFAULT.ways);
    }

    #[test]
    fn tlbi_va_drops_only_what_translates_the_address() {
        let mut t = tlb();
        t.insert(1, 0x20_0000, Pfn(1), true, true, false, 0);
        t.insert(1, 0x20_1000, Pfn(2), true, true, false, 0);
        t.insert_psc(1, Level::Pte, 0x20_0000, Pfn(9), 0);
        t.insert_psc(1, Level::Pte, 0x40_0000, Pfn(10), 0);
        // VALE1IS: the leaf only, both walk-cache entries survive.
        assert_eq!(t.tlbi_va(1, 0x20_0000, true, None), 1);
        assert!(t.lookup(1, 0x20_1000).is_some());
        assert_eq!(t.psc_entries().count(), 2);
        // VAE1IS: the leaf and the PTE-table entry covering the address.
        assert_eq!(t.tlbi_va(1, 0x20_1000, false, None), 2);
        assert_eq!(t.lookup_psc(1, 0x40_0000).unwrap().1, Pfn(10), "another VA's walk cache survives");
        assert!(t.lookup_psc(1, 0x20_0000).is_none());
    }

    #[test]
    fn tlbi_level_hint_spares_other_levels() {
        let mut t = tlb();
        // A 2 MiB block and a base page in the same 1 GiB region, the
        // PMD table (from the PUD entry) and a PTE table (from a PMD entry).
        t.insert(1, 0x4000_0000, Pfn(512), true, true, true, 0);
        t.insert(1, 0x4020_0000, Pfn(3), true, true, false, 0);
        t.insert_psc(1, Level::Pmd, 0x4000_0000, Pfn(20), 0);
        t.insert_psc(1, Level::Pte, 0x4020_0000, Pfn(21), 0);
        // Leaf-only at level 2 (the kernel's TTL=2): the block goes, the
        // base page and every walk-cache entry stay.
        assert_eq!(t.tlbi_range(1, 0x4000_0000, 0x8000_0000, true, Some(Level::Pmd)), 1);
        assert!(t.lookup(1, 0x4020_0000).is_some());
        assert_eq!(t.psc_entries().count(), 2);
        // All levels with TTL=2: the PMD-table entry (a level-1 descriptor)
        // goes; the PTE-table entry (a level-2 descriptor) and the base
        // page (a level-3 leaf) do not.
        assert_eq!(t.tlbi_range(1, 0x4000_0000, 0x8000_0000, false, Some(Level::Pmd)), 1);
        assert!(t.lookup_psc(1, 0x4020_0000).is_some_and(|(l, p, _)| l == Level::Pte && p == Pfn(21)));
        assert!(t.lookup_psc(1, 0x4000_0000).is_none());
        assert!(t.lookup(1, 0x4020_0000).is_some());
        // No hint: everything in the range.
        assert_eq!(t.tlbi_range(1, 0x4000_0000, 0x8000_0000, false, None), 2);
        assert_eq!(t.psc_entries().count() + t.leaf_entries().count(), 0);
    }

    /// Every valid entry of `asid` pointing into `[pfn, pfn + nr)`.
    fn exact(t: &Tlb, asid: u64, pfn: u64, nr: u64) -> Vec<TlbEntry> {
        let span = |e: &TlbEntry| if e.huge { 512 } else { 1 };
        t.leaf_entries_of(asid).filter(|e| e.pfn.0 < pfn + nr && pfn < e.pfn.0 + span(e)).copied().collect()
    }

    #[test]
    fn leaf_entries_over_skips_a_tlb_without_the_frame() {
        let mut t = tlb();
        t.insert(1, 0x4000, Pfn(7), true, false, false, 0);
        assert_eq!(t.leaf_entries_over(1, Pfn(7), 1).count(), 1);
        // Frame 8's bit is clear: no scan, nothing (frame 7's entry is not
        // a candidate).
        assert_eq!(t.leaf_entries_over(1, Pfn(8), 1).count(), 0);
        // A folio's range covers the frame.
        assert_eq!(t.leaf_entries_over(1, Pfn(0), 8).count(), 1);
        // Another mm: nothing, whatever the frame.
        assert_eq!(t.leaf_entries_over(2, Pfn(7), 1).count(), 0);
        // Dropped by a range flush: its bit is recomputed away.
        assert_eq!(t.flush_range(1, 0x4000, 0x5000), 1);
        let bits = t.leaf_pfns.iter().map(|w| w.count_ones()).sum::<u32>();
        assert_eq!(bits, 0);
        // A huge entry is always a candidate of its mm.
        t.insert(1, 0x20_0000, Pfn(512), true, true, true, 0);
        assert_eq!(t.leaf_entries_over(1, Pfn(700), 1).count(), 1);
        t.flush_all();
        assert_eq!(t.leaf_entries_over(1, Pfn(512), 512).count(), 0);
    }

    proptest::proptest! {
        /// Whatever the fills and invalidations, the candidates include
        /// every entry that translates to the frame (the sanitizer may
        /// never miss one).
        #[test]
        fn leaf_entries_over_never_misses_an_entry(
            ops in proptest::collection::vec((0u8..6, 1u64..4, 0u64..4096, 0u64..2048), 1..200),
            probe in 0u64..2048,
        ) {
            let mut t = tlb();
            for (op, asid, page, pfn) in ops {
                let va = page << 12;
                match op {
                    0..=2 => t.insert(asid, va, Pfn(pfn), true, false, false, 0),
                    3 => t.insert(asid, va & !0x1f_ffff, Pfn(pfn & !511), true, true, true, 0),
                    4 => { t.flush_range(asid, va, va + (64 << 12)); }
                    _ => { t.flush_one(asid, va); }
                }
            }
            for asid in 1..4 {
                for nr in [1, 512] {
                    let p = if nr == 1 { probe } else { probe & !511 };
                    let want = exact(&t, asid, p, nr);
                    let got: Vec<TlbEntry> = t.leaf_entries_over(asid, Pfn(p), nr).copied().collect();
                    for e in &want {
                        proptest::prop_assert!(got.contains(e), "missed {e:?} of frame {p}+{nr}");
                    }
                }
            }
        }
    }

    #[test]
    fn range_flush_only_hits_range() {
        let mut t = tlb();
        for i in 0..8u64 {
            t.insert(1, i << 12, Pfn(i), false, false, false, 0);
        }
        assert_eq!(t.flush_range(1, 2 << 12, 5 << 12), 3);
        assert_eq!(t.leaf_entries().count(), 5);
        assert_eq!(t.flush_asid(1), 5);
    }
}
