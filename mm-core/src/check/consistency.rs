//! Consistency checks for tests and runs: page tables vs struct page
//! accounting.  Call only when no gather is in flight (quiescent).
//!
//! For every present PTE of the given mms: the page is allocated (not on
//! the free lists), its mapcount equals the number of PTEs mapping it, its
//! folio's refcount equals those mappings plus the page cache's reference,
//! and each mm's rss equals its present PTEs.

use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{AddressSpace, MmStruct};
use crate::page::{flags, Folio};
use crate::pgtable;
use crate::sync::{Arc, Ordering};
use crate::types::Pfn;
use std::collections::HashMap;

/// Present entries of `table` (at `level`, covering from `base`) as (va, entry).
fn present_children(k: &Kernel, table: Pfn, level: Level, base: u64) -> impl Iterator<Item = (u64, Pte)> + '_ {
    let shift = k.cfg.geometry.level_shift(level);
    (0..pgtable::ptrs(k)).filter_map(move |i| {
        let va = base + (i << shift);
        let e = pgtable::read(k, table, level, va);
        e.present().then_some((va, e))
    })
}

/// Visit every present PMD entry of `mm` (table pointer or huge leaf) as (va, pmd).
fn for_each_pmd(k: &Kernel, mm: &MmStruct, mut f: impl FnMut(u64, Pte)) {
    for (va3, e3) in present_children(k, mm.pgd, Level::Pgd, 0) {
        for (va2, e2) in present_children(k, e3.pfn(), Level::Pud, va3) {
            for (va1, e1) in present_children(k, e2.pfn(), Level::Pmd, va2) {
                f(va1, e1);
            }
        }
    }
}

/// Visit every present 4 KiB leaf PTE of `mm` as (va, pte).
pub fn for_each_pte(k: &Kernel, mm: &MmStruct, mut f: impl FnMut(u64, Pte)) {
    for_each_pmd(k, mm, |va1, e1| {
        if !e1.huge() {
            for (va0, e0) in present_children(k, e1.pfn(), Level::Pte, va1) {
                f(va0, e0);
            }
        }
    });
}

/// Visit every huge PMD (THP) of `mm` as (va, pmd).
pub fn for_each_huge_pmd(k: &Kernel, mm: &MmStruct, mut f: impl FnMut(u64, Pte)) {
    for_each_pmd(k, mm, |va1, e1| {
        if e1.huge() {
            f(va1, e1);
        }
    });
}

/// Check refcounts, mapcounts and rss of the pages mapped by `mms`, with
/// `files` the address_spaces whose page caches hold references.
pub fn check_consistency(k: &Kernel, mms: &[&Arc<MmStruct>], files: &[&Arc<AddressSpace>]) -> Result<(), String> {
    let mut maps: HashMap<Pfn, i32> = HashMap::new();
    let mut huge_maps: HashMap<Folio, i32> = HashMap::new();
    let mut hugetlb_seen: std::collections::HashSet<(Pfn, usize)> = std::collections::HashSet::new();
    for mm in mms {
        let mut rss = 0;
        for_each_pte(k, mm, |_, pte| {
            // The shared zero page: no rss, mapcount or reference per PTE.
            if crate::page::is_zero_pfn(pte.pfn()) {
                return;
            }
            rss += 1;
            *maps.entry(pte.pfn()).or_default() += 1;
        });
        let mut huge = 0;
        for_each_huge_pmd(k, mm, |va, pmd| {
            if k.mem.folio(k.mem.page_folio(pmd.pfn())).test(flags::PG_HUGETLB) {
                // hugetlb: not in rss, no deposited table, and a PMD table
                // shared by several mms holds its entries once.
                let table = pgtable::lookup_table(k, mm, va, Level::Pmd).expect("walked");
                if hugetlb_seen.insert((table, pgtable::index(k, Level::Pmd, va))) {
                    *huge_maps.entry(k.mem.page_folio(pmd.pfn())).or_default() += 1;
                }
                return;
            }
            rss += k.cfg.geometry.hpage_pmd_nr();
            *huge_maps.entry(k.mem.page_folio(pmd.pfn())).or_default() += 1;
            huge += 1;
        });
        let deposited = mm.pmd_huge_pte.lock().len();
        if deposited != huge {
            return Err(format!("mm {}: {huge} huge PMDs but {deposited} deposited tables", mm.id));
        }
        let want = mm.rss.load(Ordering::SeqCst);
        if rss != want {
            return Err(format!("mm {}: rss counter {want} but {rss} present PTEs", mm.id));
        }
    }
    let mut cached: HashMap<Folio, i32> = HashMap::new();
    for f in files {
        for folio in f.i_pages.lock().values() {
            *cached.entry(*folio).or_default() += 1;
        }
    }
    let mut folio_maps: HashMap<Folio, i32> = HashMap::new();
    for (pfn, n) in &maps {
        let page = k.mem.page(*pfn);
        if page.test(flags::PG_BUDDY) {
            return Err(format!("{pfn:?} is mapped {n} times but is free"));
        }
        if page.mapcount() != *n {
            return Err(format!("{pfn:?}: mapcount {} but mapped by {n} PTEs", page.mapcount()));
        }
        *folio_maps.entry(k.mem.page_folio(*pfn)).or_default() += n;
    }
    for (folio, n) in &huge_maps {
        let em = k.mem.folio(*folio).entire_mapcount.load(Ordering::SeqCst);
        if em != *n {
            return Err(format!("{:?}: entire mapcount {em} but mapped by {n} huge PMDs", folio.pfn()));
        }
        *folio_maps.entry(*folio).or_default() += n;
    }
    for (folio, n) in &folio_maps {
        let want = n + cached.get(folio).copied().unwrap_or(0);
        let rc = k.mem.folio(*folio).refcount();
        if rc != want {
            return Err(format!("{:?}: refcount {rc} but {n} mappings + page cache", folio.pfn()));
        }
    }
    for (folio, c) in &cached {
        if !folio_maps.contains_key(folio) && k.mem.folio(*folio).refcount() != *c {
            return Err(format!("unmapped page-cache {:?}: refcount {}", folio.pfn(), k.mem.folio(*folio).refcount()));
        }
    }
    Ok(())
}
