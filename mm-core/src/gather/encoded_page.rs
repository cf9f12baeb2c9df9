//! Encoded pages (include/linux/mm_types.h, `struct encoded_page`).
//!
//! Contract: a gathered slot is either
//! - a *page entry*: the page (here its pfn, standing for the `struct page *`)
//!   with flag bits in the low bits that a page pointer never uses, or
//! - a *count entry*: `nr_pages << 2`, which only ever follows a page entry
//!   carrying `ENCODED_PAGE_BIT_NR_PAGES_NEXT`.
//!
//! Flags (`ENCODED_PAGE_BITS` is the kernel's *mask* of usable low bits, 3):
//! - `ENCODED_PAGE_BIT_DELAY_RMAP` (1): remove this page's rmap only after the
//!   TLB flush (`tlb_flush_rmaps`), never before.
//! - `ENCODED_PAGE_BIT_NR_PAGES_NEXT` (2): the next slot is a count entry; the
//!   two slots are one folio fragment and must never be separated (a batch
//!   is "full" while one slot is left, and the free path extends a chunk by
//!   one to keep the count with its page).
//!
//! Representation: a `struct page *` is at least 8-byte aligned, so its low
//! `PAGE_PTR_ALIGN_SHIFT` = 3 bits are free; the emulator's "pointer" is
//! therefore `pfn << 3`, and an entry is `(pfn << 3) | flags` (the brief's
//! `(pfn << ENCODED_PAGE_BITS) | flags`: the numbers coincide, 3 = 3).  The
//! bit budget is checked at compile time below.

/// Mask of the low bits usable for flags (`ENCODED_PAGE_BITS`, 3ul).
pub const ENCODED_PAGE_BITS: u64 = 3;
/// `ENCODED_PAGE_BIT_DELAY_RMAP`
pub const ENCODED_PAGE_BIT_DELAY_RMAP: u64 = 1;
/// `ENCODED_PAGE_BIT_NR_PAGES_NEXT`
pub const ENCODED_PAGE_BIT_NR_PAGES_NEXT: u64 = 2;
/// log2 of the alignment of a `struct page *`: the emulated pointer is
/// `pfn << PAGE_PTR_ALIGN_SHIFT`.
pub const PAGE_PTR_ALIGN_SHIFT: u32 = 3;
/// Shift of a count entry (`encode_nr_pages`: `nr << 2`).
pub const ENCODED_NR_PAGES_SHIFT: u32 = 2;
/// Largest pfn the emulator can have (KernelConfig::validate caps RAM at 2^24 frames).
const MAX_PFN: u64 = 1 << 24;

// The bit budget, checked at compile time.
const _: () = assert!(
    (ENCODED_PAGE_BIT_DELAY_RMAP | ENCODED_PAGE_BIT_NR_PAGES_NEXT) & !ENCODED_PAGE_BITS == 0,
    "every flag must live inside ENCODED_PAGE_BITS"
);
const _: () = assert!(ENCODED_PAGE_BIT_DELAY_RMAP & ENCODED_PAGE_BIT_NR_PAGES_NEXT == 0, "flags must be distinct bits");
const _: () =
    assert!(ENCODED_PAGE_BITS < (1 << PAGE_PTR_ALIGN_SHIFT), "flag bits must fit below the page pointer's alignment");
const _: () =
    assert!(ENCODED_PAGE_BITS >> ENCODED_NR_PAGES_SHIFT == 0, "a count entry's low bits must read as 'no flags'");
const _: () =
    assert!((MAX_PFN << PAGE_PTR_ALIGN_SHIFT) >> PAGE_PTR_ALIGN_SHIFT == MAX_PFN, "every pfn must survive the shift");

/// One gathered slot (`struct encoded_page *`): opaque; build it with
/// `encode_page` / `encode_nr_pages`, read it with the accessors.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EncodedPage(u64);

/// `encode_page(page, flags)`
#[inline]
pub const fn encode_page(pfn: crate::types::Pfn, flags: u64) -> EncodedPage {
    // The emulator's own, on the per-page gather path, so debug only: the
    // kernel checks the flags at build time (BUILD_BUG_ON(flags >
    // ENCODED_PAGE_BITS)), callers pass the flag constants, and every pfn
    // is below ram_frames <= MAX_PFN (KernelConfig::validate).
    debug_assert!(flags & !ENCODED_PAGE_BITS == 0);
    debug_assert!(pfn.0 < MAX_PFN);
    EncodedPage((pfn.0 << PAGE_PTR_ALIGN_SHIFT) | flags)
}

/// `encoded_page_flags(page)`
#[inline]
pub const fn encoded_page_flags(page: EncodedPage) -> u64 {
    page.0 & ENCODED_PAGE_BITS
}

/// `encoded_page_ptr(page)`: the page (its pfn).
#[inline]
pub const fn encoded_page_ptr(page: EncodedPage) -> crate::types::Pfn {
    crate::types::Pfn((page.0 & !ENCODED_PAGE_BITS) >> PAGE_PTR_ALIGN_SHIFT)
}

/// `encode_nr_pages(nr)`: the count entry that follows an
/// `ENCODED_PAGE_BIT_NR_PAGES_NEXT` page entry.  The kernel's
/// `VM_WARN_ON_ONCE` that `nr` survives the shift is done by the gather
/// before it calls this (`nr_pages_encodable`), where the `debug_vm`
/// switch is at hand.
#[inline]
pub const fn encode_nr_pages(nr: u64) -> EncodedPage {
    EncodedPage(nr << ENCODED_NR_PAGES_SHIFT)
}

/// Does `nr` survive `encode_nr_pages`' shift?
#[inline]
pub const fn nr_pages_encodable(nr: u64) -> bool {
    (nr << ENCODED_NR_PAGES_SHIFT) >> ENCODED_NR_PAGES_SHIFT == nr
}

/// `encoded_nr_pages(page)`
#[inline]
pub const fn encoded_nr_pages(page: EncodedPage) -> u64 {
    page.0 >> ENCODED_NR_PAGES_SHIFT
}

impl EncodedPage {
    /// The raw word (diagnostics and tests only).
    pub const fn raw(self) -> u64 {
        self.0
    }
    /// True for a page entry carrying `ENCODED_PAGE_BIT_DELAY_RMAP`.
    pub const fn delay_rmap(self) -> bool {
        encoded_page_flags(self) & ENCODED_PAGE_BIT_DELAY_RMAP != 0
    }
    /// True for a page entry whose next slot is a count entry.
    pub const fn nr_pages_next(self) -> bool {
        encoded_page_flags(self) & ENCODED_PAGE_BIT_NR_PAGES_NEXT != 0
    }
}

#[cfg(all(test, not(mmemu_loom)))]
mod tests {
    use super::*;
    use crate::types::Pfn;

    #[test]
    fn round_trip() {
        for flags in 0..=ENCODED_PAGE_BITS {
            let e = encode_page(Pfn(0xabcde), flags);
            assert_eq!(encoded_page_ptr(e), Pfn(0xabcde));
            assert_eq!(encoded_page_flags(e), flags);
        }
        let c = encode_nr_pages(512);
        assert_eq!(encoded_nr_pages(c), 512);
        assert_eq!(encoded_page_flags(c), 0, "a count slot carries no flags");
        assert!(encode_page(Pfn(1), ENCODED_PAGE_BIT_DELAY_RMAP).delay_rmap());
        assert!(encode_page(Pfn(1), ENCODED_PAGE_BIT_NR_PAGES_NEXT).nr_pages_next());
    }

    /// Each flag reads back alone: a DELAY_RMAP entry has no next count,
    /// a NR_PAGES_NEXT entry no delayed rmap, a count slot neither.
    #[test]
    fn flags_are_independent() {
        let p = Pfn(0x1234);
        assert!(!encode_page(p, 0).delay_rmap() && !encode_page(p, 0).nr_pages_next());
        assert!(!encode_page(p, ENCODED_PAGE_BIT_DELAY_RMAP).nr_pages_next());
        assert!(!encode_page(p, ENCODED_PAGE_BIT_NR_PAGES_NEXT).delay_rmap());
        let both = encode_page(p, ENCODED_PAGE_BIT_DELAY_RMAP | ENCODED_PAGE_BIT_NR_PAGES_NEXT);
        assert!(both.delay_rmap() && both.nr_pages_next());
        for nr in [1, 2, 3, 511, 512] {
            let c = encode_nr_pages(nr);
            assert!(!c.delay_rmap() && !c.nr_pages_next(), "count {nr}");
        }
    }

    /// The raw words: `(pfn << 3) | flags` and `nr << 2`.
    #[test]
    fn raw_words() {
        assert_eq!(encode_page(Pfn(5), ENCODED_PAGE_BIT_DELAY_RMAP).raw(), (5 << 3) | 1);
        assert_eq!(encode_page(Pfn(5), ENCODED_PAGE_BIT_NR_PAGES_NEXT).raw(), (5 << 3) | 2);
        assert_eq!(encode_nr_pages(3).raw(), 12);
        assert_eq!(encoded_nr_pages(encode_nr_pages(7)), 7);
    }

    /// `encode_nr_pages`' VM_WARN_ON_ONCE((nr << 2) >> 2 != nr): the two
    /// top bits of nr are lost.
    #[test]
    fn nr_pages_encodable_is_the_shift_round_trip() {
        assert!(nr_pages_encodable(1));
        assert!(nr_pages_encodable(512));
        assert!(nr_pages_encodable((1 << 62) - 1));
        assert!(!nr_pages_encodable(1 << 62));
        assert!(!nr_pages_encodable(u64::MAX));
    }

    /// The emulator's own debug check: no pfn beyond the largest RAM (a
    /// `debug_assert!`, so only in builds with debug assertions).
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic]
    fn encode_page_of_a_pfn_beyond_ram_panics() {
        let _ = encode_page(Pfn(MAX_PFN), 0);
    }
}
