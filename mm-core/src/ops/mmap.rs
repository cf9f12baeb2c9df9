//! Address-space lifetime: mmap (fixed address), munmap, exit_mmap and the
//! final mmdrop (mm/mmap.c, mm/vma.c, kernel/fork.c).
//!
//! munmap = (mmap_lock for write) detach the VMAs → `mmap_write_downgrade`
//! → `tlb_gather_mmu` → `unmap_vmas` → `free_pgtables(floor = prev end,
//! ceiling = next start)` → `tlb_finish_mmu` → `mmap_read_unlock`
//! (`do_vmi_align_munmap` → `vms_complete_munmap_vmas` → `vms_clear_ptes`,
//! mm/vma.c v6.12).  The zap and the table freeing run under mmap_lock for
//! *read*: the VMAs are already out of the tree, so nothing can find them,
//! but another reader of the mm — MADV_DONTNEED, a fault, GUP — runs beside
//! them, and a MADV_DONTNEED's gather and ours are then both pending
//! (`mm_tlb_flush_nested`: whichever finishes second-to-last forces a full
//! flush with freed_tables).  Two munmaps never overlap so: the second one
//! waits for the write lock until the first has dropped its read hold.
//! exit_mmap = `tlb_gather_mmu_fullmm` → `unmap_vmas` over everything →
//! `free_pgtables` → `tlb_finish_mmu`.  The PGD goes at the last `mmdrop`
//! (`__mmdrop`): the exit drops the users' `mm_count` reference, and every
//! CPU that still has the mm as `active_mm` (lazily) holds one until its
//! next switch — no IPI makes it let go (x86 does not select
//! CONFIG_MMU_LAZY_TLB_SHOOTDOWN, and the other profiles share the rule).

use super::zap::{free_pgtables, unmap_vmas};
use crate::debug_vm::vm_warn_on;
use crate::gather::MmuGather;
use crate::kernel::Kernel;
use crate::mm::address_space::IMmapEntry;
use crate::mm::{vm, AddressSpace, Backing, MmStruct, Vma};
use crate::sync::{Arc, RwLock};
use std::fmt;

/// A rejected memory-management call (EINVAL / ENOMEM / EEXIST).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmError {
    /// `-EINVAL`: bad arguments (unaligned, outside TASK_SIZE, a flag the
    /// mapping does not allow); the message says which.
    Inval(String),
    /// `-EEXIST` (MAP_FIXED_NOREPLACE): an existing VMA, starting at this
    /// address, overlaps the range.
    Exists(u64),
    /// `-ENOMEM`: no VMA covers the range (madvise, mprotect), or a page
    /// table could not be allocated.
    NoMem,
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmError::Inval(s) => write!(f, "EINVAL: {s}"),
            MmError::Exists(a) => write!(f, "EEXIST: a mapping already covers {a:#x}"),
            MmError::NoMem => write!(f, "ENOMEM"),
        }
    }
}

impl std::error::Error for MmError {}

/// Check page alignment and the user address range.
pub fn check_range(k: &Kernel, addr: u64, len: u64) -> Result<u64, MmError> {
    let ps = k.cfg.geometry.page_size();
    if len == 0 || !addr.is_multiple_of(ps) || !len.is_multiple_of(ps) {
        return Err(MmError::Inval(format!(
            "addr {addr:#x} / len {len:#x} must be non-empty multiples of the page size {ps:#x}"
        )));
    }
    let end = addr.checked_add(len).filter(|e| *e <= k.cfg.geometry.task_size()).ok_or_else(|| {
        MmError::Inval(format!("range {addr:#x}+{len:#x} exceeds TASK_SIZE {:#x}", k.cfg.geometry.task_size()))
    })?;
    if addr == 0 {
        return Err(MmError::Inval("address 0 is below FIRST_USER_ADDRESS".into()));
    }
    Ok(end)
}

pub(crate) fn insert_vma(k: &Kernel, mm: &Arc<MmStruct>, vma: Vma) -> Result<(), MmError> {
    let mut vmas = mm.mmap_lock.write();
    if let Some(v) = vmas.overlapping(vma.start, vma.end).next() {
        return Err(MmError::Exists(v.start));
    }
    if let Backing::File { mapping, pgoff } = &vma.backing {
        let pages = (vma.end - vma.start) >> k.cfg.geometry.page_shift;
        if pgoff + pages > mapping.nr_pages {
            return Err(MmError::Inval(format!(
                "file mapping pages {pgoff}..{} beyond the file's {} pages",
                pgoff + pages,
                mapping.nr_pages
            )));
        }
        mapping.i_mmap_insert(IMmapEntry {
            mm: mm.clone(),
            start: vma.start,
            end: vma.end,
            pgoff: *pgoff,
            flags: vma.flags,
        });
    }
    vmas.insert(vma);
    Ok(())
}

/// `mmap(addr, len, PROT_READ|PROT_WRITE?, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE)`
pub fn mmap_anon(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64, writable: bool) -> Result<(), MmError> {
    let end = check_range(k, addr, len)?;
    let mut flags = vm::VM_READ | vm::VM_MAYWRITE;
    if writable {
        flags |= vm::VM_WRITE;
    }
    insert_vma(k, mm, Vma { start: addr, end, flags, backing: Backing::Anon })
}

/// `mmap(addr, len, prot, MAP_SHARED or MAP_PRIVATE, file, pgoff)` at a fixed address.
#[allow(clippy::too_many_arguments)]
pub fn mmap_file(
    k: &Kernel,
    mm: &Arc<MmStruct>,
    addr: u64,
    len: u64,
    writable: bool,
    shared: bool,
    file: &Arc<AddressSpace>,
    pgoff: u64,
) -> Result<(), MmError> {
    let end = check_range(k, addr, len)?;
    let mut flags = vm::VM_READ | vm::VM_MAYWRITE;
    if writable {
        flags |= vm::VM_WRITE;
    }
    if shared {
        flags |= vm::VM_SHARED;
    }
    insert_vma(k, mm, Vma { start: addr, end, flags, backing: Backing::File { mapping: file.clone(), pgoff } })
}

/// Unlink file VMAs from their address_space's i_mmap.
fn unlink_file_vmas(k: &Kernel, mm: &MmStruct, vmas: &[Vma]) {
    for v in vmas {
        if let Some(m) = v.mapping() {
            m.i_mmap_remove(mm.id, v.start, v.end, k.cfg.geometry.page_shift);
        }
    }
}

/// `munmap(addr, len)` (`__vm_munmap(.., unlock = true)` →
/// `do_vmi_align_munmap` → `vms_complete_munmap_vmas`, which downgrades
/// mmap_lock to read before `vms_clear_ptes`).
pub fn munmap(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64) -> Result<(), MmError> {
    let end = check_range(k, addr, len)?;
    let mut vmas = mm.mmap_lock.write();
    let ps = k.cfg.geometry.page_shift;
    // __split_vma → hugetlb_vm_op_split / hugetlb_split (unshare around a
    // non-PUD-aligned boundary) before the tree changes.
    super::hugetlb::hugetlb_split_range(k, mm, &vmas, addr, end)?;
    let detached = vmas.remove_range(addr, end, ps);
    if detached.is_empty() {
        return Ok(());
    }
    // unmap_start / unmap_end: the neighbours bound which tables may go.
    let floor = vmas.iter().filter(|v| v.end <= addr).map(|v| v.end).max().unwrap_or(0);
    let ceiling = vmas.iter().filter(|v| v.start >= end).map(|v| v.start).min().unwrap_or(0);
    // vms_complete_munmap_vmas: `mmap_write_downgrade` — the detached VMAs
    // are unreachable, so the page tables can go under the read lock.
    let vmas = RwLock::downgrade(vmas);
    let mut tlb = MmuGather::tlb_gather_mmu(k, mm);
    unmap_vmas(&mut tlb, detached.iter(), addr, end);
    // free_pgtables unlinks file VMAs from i_mmap (unlink_file_vma) before
    // freeing their tables, so huge_pmd_share can never pick up a table
    // that is about to be freed.
    unlink_file_vmas(k, mm, &detached);
    free_pgtables(&mut tlb, &detached, floor, ceiling);
    tlb.tlb_finish_mmu();
    drop(vmas);
    Ok(())
}

/// `exit_mmap`: tear down every mapping and page table but the PGD.
pub fn exit_mmap(k: &Kernel, mm: &Arc<MmStruct>) {
    crate::notifier::mmu_notifier_release(k, mm);
    let mut vmas = mm.mmap_lock.write();
    let all: Vec<Vma> = vmas.iter().cloned().collect();
    let mut tlb = MmuGather::tlb_gather_mmu_fullmm(k, mm);
    unmap_vmas(&mut tlb, all.iter(), 0, u64::MAX);
    unlink_file_vmas(k, mm, &all); // in free_pgtables, as in munmap
    free_pgtables(&mut tlb, &all, 0, 0);
    tlb.tlb_finish_mmu();
    *vmas = Default::default();
}

/// The task running `mm` on this CPU exits: `exit_mm` (drop to lazy TLB;
/// the CPU keeps `mm` as `active_mm`, with its reference) then, as the last
/// user, `mmput` → `exit_mmap` and `mmdrop` of the users' reference.
pub fn exit_mm(k: &Kernel, mm: &Arc<MmStruct>) {
    crate::tlb::enter_lazy_tlb(k);
    exit_mmap(k, mm);
    mmdrop(k, mm);
}

/// `mmdrop`: drop an `mm_count` reference; the last one runs `__mmdrop`.
/// Never an IPI: a CPU using the mm lazily holds a reference, so the last
/// drop comes when no CPU has it as `active_mm` any more.
pub fn mmdrop(k: &Kernel, mm: &Arc<MmStruct>) {
    if mm.mm_count.put_testzero() {
        __mmdrop(k, mm);
    }
}

/// `__mmdrop`: free the PGD (`pgd_free`).  No CPU may have the mm loaded.
fn __mmdrop(k: &Kernel, mm: &Arc<MmStruct>) {
    for c in 0..k.hw.nr_cpus() {
        vm_warn_on!(
            k,
            k.arch.cpu_mm(k, crate::types::CpuId(c as u32)).mm == mm.id,
            "WARN_ON_ONCE(mm == current->active_mm) in __mmdrop",
            mm.id,
            0,
            mm.pgd
        );
    }
    crate::pgtable::free_table_frame(k, mm.pgd);
}
