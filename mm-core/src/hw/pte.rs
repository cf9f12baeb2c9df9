//! Page-table entry format: x86-64 bit layout, used at every level.

use crate::types::Pfn;
use std::fmt;

/// Page-table level, numbered so that `level_shift = PAGE_SHIFT + pt_bits * level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Level {
    /// Leaf tables: entries map PAGE_SIZE pages (`pte_t`).
    Pte = 0,
    /// Entries point at PTE tables or, with `Pte::HUGE`, map a PMD_SIZE
    /// folio (`pmd_t`).
    Pmd = 1,
    /// Entries point at PMD tables (`pud_t`; never a leaf here).
    Pud = 2,
    /// The top level, `mm->pgd` (`pgd_t`; P4D folded into it).
    Pgd = 3,
}

impl Level {
    /// The level of the entries of the table an entry at `self` points to.
    pub fn below(self) -> Option<Level> {
        match self {
            Level::Pte => None,
            Level::Pmd => Some(Level::Pte),
            Level::Pud => Some(Level::Pmd),
            Level::Pgd => Some(Level::Pud),
        }
    }
}

/// One page-table entry (any level).
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Pte(pub u64);

impl Pte {
    /// _PAGE_PRESENT
    pub const PRESENT: u64 = 1 << 0;
    /// _PAGE_RW
    pub const RW: u64 = 1 << 1;
    /// _PAGE_USER
    pub const USER: u64 = 1 << 2;
    /// _PAGE_ACCESSED (set by the hardware walker)
    pub const ACCESSED: u64 = 1 << 5;
    /// _PAGE_DIRTY (set by the hardware on the first write through the entry)
    pub const DIRTY: u64 = 1 << 6;
    /// _PAGE_PSE: a leaf at PMD level (2 MiB page)
    pub const HUGE: u64 = 1 << 7;
    /// _PAGE_SPECIAL (_PAGE_SOFTW1, bit 9): a software bit the MMU ignores;
    /// `pte_mkspecial` marks an entry whose frame has no `struct page` the
    /// core mm manages for it (the shared zero page, `remap_pfn_range`).
    pub const SPECIAL: u64 = 1 << 9;
    const PFN_SHIFT: u32 = 12;
    const PFN_MASK: u64 = ((1u64 << 52) - 1) & !((1u64 << 12) - 1);

    /// The empty entry (`pte_none`, `pmd_none`): no pfn, no flags.
    pub const NONE: Pte = Pte(0);

    /// `pfn_pte(pfn, prot)`
    pub fn new(pfn: Pfn, flags: u64) -> Pte {
        Pte((pfn.0 << Self::PFN_SHIFT) & Self::PFN_MASK | (flags & !Self::PFN_MASK))
    }
    /// An upper-level entry pointing at a table (`pmd_populate` & co.).
    pub fn table(pfn: Pfn) -> Pte {
        Pte::new(pfn, Self::PRESENT | Self::RW | Self::USER | Self::ACCESSED)
    }
    /// `pte_pfn`: the frame mapped, or the table pointed at.
    #[inline]
    pub fn pfn(self) -> Pfn {
        Pfn((self.0 & Self::PFN_MASK) >> Self::PFN_SHIFT)
    }
    /// The flag bits (`pte_flags`): everything but the pfn field.
    #[inline]
    pub fn flags(self) -> u64 {
        self.0 & !Self::PFN_MASK
    }
    /// `pte_none`: the all-zero entry.
    #[inline]
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
    /// `pte_present`
    #[inline]
    pub fn present(self) -> bool {
        self.0 & Self::PRESENT != 0
    }
    /// `pte_write`
    #[inline]
    pub fn write(self) -> bool {
        self.0 & Self::RW != 0
    }
    /// `_PAGE_USER` is set: user mode may use the entry.
    #[inline]
    pub fn user(self) -> bool {
        self.0 & Self::USER != 0
    }
    /// `pte_young`
    #[inline]
    pub fn young(self) -> bool {
        self.0 & Self::ACCESSED != 0
    }
    /// `pte_dirty`
    #[inline]
    pub fn dirty(self) -> bool {
        self.0 & Self::DIRTY != 0
    }
    /// `pmd_leaf` / `pmd_huge`
    #[inline]
    pub fn huge(self) -> bool {
        self.0 & Self::HUGE != 0
    }
    /// `pte_wrprotect`
    pub fn wrprotect(self) -> Pte {
        Pte(self.0 & !Self::RW)
    }
    /// `pte_mkwrite`
    pub fn mkwrite(self) -> Pte {
        Pte(self.0 | Self::RW)
    }
    /// `pte_mkclean`
    pub fn mkclean(self) -> Pte {
        Pte(self.0 & !Self::DIRTY)
    }
    /// `pte_mkdirty`
    pub fn mkdirty(self) -> Pte {
        Pte(self.0 | Self::DIRTY)
    }
    /// `pte_mkold`
    pub fn mkold(self) -> Pte {
        Pte(self.0 & !Self::ACCESSED)
    }
    /// `pte_special`
    #[inline]
    pub fn special(self) -> bool {
        self.0 & Self::SPECIAL != 0
    }
    /// `pte_mkspecial`
    pub fn mkspecial(self) -> Pte {
        Pte(self.0 | Self::SPECIAL)
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return write!(f, "Pte(none)");
        }
        write!(
            f,
            "Pte({:?} {}{}{}{}{}{})",
            self.pfn(),
            if self.present() { "P" } else { "-" },
            if self.write() { "W" } else { "-" },
            if self.user() { "U" } else { "-" },
            if self.young() { "A" } else { "-" },
            if self.dirty() { "D" } else { "-" },
            if self.huge() { "H" } else { "-" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let p = Pte::new(Pfn(0x1234), Pte::PRESENT | Pte::RW | Pte::USER);
        assert_eq!(p.pfn(), Pfn(0x1234));
        assert!(p.present() && p.write() && p.user() && !p.dirty() && !p.young() && !p.huge());
        assert!(!p.wrprotect().write());
        assert!(p.mkdirty().dirty() && !p.mkdirty().mkclean().dirty());
        assert_eq!(p.mkdirty().pfn(), Pfn(0x1234));
        assert!(Pte::NONE.is_none() && !Pte::NONE.present());
    }
}
