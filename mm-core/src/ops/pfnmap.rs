//! PFN mappings: a driver's `mmap` that maps frames the core mm does not
//! refcount (`remap_pfn_range`, mm/memory.c, v6.12), and their zap.
//!
//! Contract:
//! - `mmap_pfnmap` makes one `VM_PFNMAP | VM_IO | VM_SHARED` VMA and
//!   installs a present PTE for each frame (`remap_pfn_range` →
//!   `remap_pte_range` with `pte_mkspecial`): no refcount, no mapcount, no
//!   rss.  The frames stay the driver's: it frees them when it likes,
//!   typically after `unmap_mapping_range` of its own mappings.
//! - `vm_normal_page` is `None` for every PTE of such a VMA, so zap clears
//!   the PTE and records the range (`tlb_remove_tlb_entry`) but puts nothing
//!   in the gather's batch: nothing keeps the frame alive until the flush.
//!   That is why `tlb_end_vma` force-flushes a VMA with `vma_pfn`
//!   (b67fbebd4cf9): once munmap has unlinked the VMA, the driver's
//!   `unmap_mapping_range` no longer sees it and returns at once, and the
//!   driver may free the frames while another CPU still caches them.
//! - A fault in the VMA (no PTE: already zapped) is a SIGBUS
//!   (`FaultError::Segv` here); `fork` is not modelled for it.

use super::mmap::{check_range, insert_vma, MmError};
use crate::hw::pte::{Level, Pte};
use crate::kernel::Kernel;
use crate::mm::{vm, Backing, MmStruct, Vma};
use crate::pgtable;
use crate::sync::Arc;
use crate::types::Pfn;

/// The VMA flags of a driver PFN mapping (`remap_pfn_range` sets
/// VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP; a shared R/W mmap).
pub const PFNMAP_FLAGS: u64 = vm::VM_READ | vm::VM_WRITE | vm::VM_MAYWRITE | vm::VM_SHARED | vm::VM_IO | vm::VM_PFNMAP;

/// A driver's `mmap` of `frames` at `addr`, one page each: the VMA, then
/// `remap_pfn_range` (special PTEs, nothing refcounted).
pub fn mmap_pfnmap(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, frames: &[Pfn]) -> Result<(), MmError> {
    let ps = k.cfg.geometry.page_size();
    let end = check_range(k, addr, frames.len() as u64 * ps)?;
    insert_vma(k, mm, Vma { start: addr, end, flags: PFNMAP_FLAGS, backing: Backing::Anon })?;
    let _vmas = mm.mmap_lock.write();
    for (i, pfn) in frames.iter().enumerate() {
        let va = addr + i as u64 * ps;
        let table = pgtable::alloc_table(k, mm, va, Level::Pte).ok_or(MmError::NoMem)?;
        let _ptl = pgtable::ptl(k, table);
        let e = Pte::new(*pfn, Pte::PRESENT | Pte::USER | Pte::RW | Pte::ACCESSED | Pte::DIRTY);
        pgtable::write(k, table, Level::Pte, va, e);
    }
    Ok(())
}

/// `vm_normal_page`: the struct page the core mm manages behind a PTE, or
/// `None` for a PFN mapping's special PTE (VM_PFNMAP; VM_MIXEDMAP entries
/// inserted by `vm_insert_pfn` are special too — the model's MIXEDMAP VMAs
/// have only those) and for the shared zero page (`is_zero_pfn`: special,
/// never refcounted, mapcounted or in rss).
pub(crate) fn vm_normal_page(vma: &Vma, pte: Pte) -> Option<Pfn> {
    if vma.flags & (vm::VM_PFNMAP | vm::VM_MIXEDMAP) != 0 {
        return None;
    }
    if crate::page::is_zero_pfn(pte.pfn()) {
        return None;
    }
    Some(pte.pfn())
}
