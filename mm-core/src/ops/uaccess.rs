//! User accesses: a load or store by the task running an mm on this CPU,
//! through the emulated MMU, with the page fault handled
//! (`handle_mm_fault`) and the access retried — the user-mode instruction
//! and the fault path it takes (x86 `do_user_addr_fault`), or SIGSEGV.
//!
//! They are inherent methods of `Kernel` (`k.read_user(mm, va)`), defined
//! here, beside the fault path they call: kernel.rs stays below `ops` (it
//! imports nothing from it), and callers need no trait in scope.  The hot
//! path is the TLB hit in `Hw::access`; these add no dynamic call and no
//! lock to it.

use crate::hw::mmu::{Access, Fault};
use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::ops::fault::handle_mm_fault;
use crate::stats::Stat;
use crate::sync::Arc;

/// A user access that could not be satisfied: SIGSEGV, or SIGBUS when
/// `sigbus` (the fault was `VM_FAULT_SIGBUS`: a file page past EOF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segv {
    /// The faulting user address (`si_addr`).
    pub va: u64,
    /// The MMU fault `handle_mm_fault` could not resolve.
    pub fault: Fault,
    /// The kernel would send SIGBUS rather than SIGSEGV (`mm_fault_error`
    /// with VM_FAULT_SIGBUS → `do_sigbus`).
    pub sigbus: bool,
}

impl Kernel {
    /// A user load/store by the task running `mm` on this CPU; page faults
    /// are handled (`handle_mm_fault`) and the access retried.  The CPU must
    /// have switched to `mm` (`tlb::switch_mm`).
    pub fn user_access(&self, mm: &Arc<MmStruct>, va: u64, op: Access) -> Result<u64, Segv> {
        let cpu = self.this_cpu();
        // User code runs with IRQs on: between two accesses the CPU takes
        // IPIs and the timer tick.
        self.smp.user_irq_window(cpu);
        for _ in 0..8 {
            match self.hw.access(cpu, va, op, &self.san) {
                Ok(v) => return Ok(v),
                Err(fault) => {
                    self.stats.inc(cpu, Stat::PageFaults);
                    let write = matches!(op, Access::Write(_));
                    handle_mm_fault(self, mm, va, write).map_err(|e| Segv {
                        va,
                        fault,
                        sigbus: e == crate::ops::fault::FaultError::Sigbus,
                    })?;
                }
            }
        }
        panic!("user access at {va:#x} on {cpu} kept faulting after the fault was handled");
    }

    /// `user_access` read.
    pub fn read_user(&self, mm: &Arc<MmStruct>, va: u64) -> Result<u64, Segv> {
        self.user_access(mm, va, Access::Read)
    }

    /// `user_access` write.
    pub fn write_user(&self, mm: &Arc<MmStruct>, va: u64, val: u64) -> Result<u64, Segv> {
        self.user_access(mm, va, Access::Write(val))
    }
}
