//! Helpers shared by the ops test modules (synchronous `Smp`).

use crate::kernel::Kernel;
use crate::mm::MmStruct;
use crate::tlb::switch_mm;
use crate::types::CpuId;

/// Move the running code to `cpu` and run `mm` there (a context switch).
pub(crate) fn run_on(k: &Kernel, cpu: u32, mm: &crate::sync::Arc<MmStruct>) {
    k.set_cpu(CpuId(cpu));
    switch_mm(k, mm);
}

/// Every CPU lets go of the mm it holds lazily (`tlb::drop_lazy_mm`), as
/// its next switch would; the running code ends on CPU 0.
pub(crate) fn drop_lazy_mms(k: &Kernel) {
    for c in 0..k.hw.nr_cpus() {
        k.set_cpu(CpuId(c as u32));
        crate::tlb::drop_lazy_mm(k);
    }
    k.set_cpu(CpuId(0));
}

/// Everything is freed (after RCU) once every mm exited and files dropped.
pub(crate) fn assert_no_leaks(k: &Kernel) {
    drop_lazy_mms(k);
    k.rcu_barrier();
    let used = k.alloc.in_use();
    assert_eq!(used.total(), 0, "leaked frames: {used:?}");
}
