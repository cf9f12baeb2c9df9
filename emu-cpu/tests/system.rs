//! `System`: user tasks context-switch with switch_mm and idle lazily;
//! RCU-freed tables come back through the idle loop.

use std::time::Duration;

use emu_cpu::{MachineConfig, System, WaitPolicy};
use mm_core::ops::{mmap_anon, munmap};
use mm_core::sync::Ordering;
use mm_core::{CpuId, KernelConfig};

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn sys(n: usize) -> System {
    let mc = MachineConfig { wait: WaitPolicy::Adaptive, watchdog: Duration::from_secs(5), ..MachineConfig::default() };
    System::new(KernelConfig { nr_cpus: n, ..KernelConfig::default() }, mc).unwrap()
}

#[test]
fn user_task_switches_mm_and_idles_lazily() {
    let s = sys(2);
    let k = s.kernel().clone();
    let mm = s.mm_alloc().unwrap();
    s.run_user(CpuId(1), &mm, |k, mm| {
        mmap_anon(k, mm, BASE, 4 * PS, true).unwrap();
        k.write_user(mm, BASE, 7).unwrap();
    })
    .unwrap();
    // After the task the CPU idles lazily with the mm still loaded.
    assert!(mm.cpumask.test(CpuId(1)));
    assert_eq!(k.cpus[1].loaded_mm.load(Ordering::SeqCst), mm.id);
    assert!(k.cpus[1].is_lazy.load(Ordering::SeqCst));
    // A second thread of the mm on the same CPU: back from lazy, no flush
    // needed, the value is there.
    let v = s.run_user(CpuId(1), &mm, |k, mm| k.read_user(mm, BASE).unwrap()).unwrap();
    assert_eq!(v, 7);
    assert!(!k.cpus[1].is_lazy.load(Ordering::SeqCst) || k.cpus[1].loaded_mm.load(Ordering::SeqCst) == mm.id);
    // Unmap from CPU0; tables go through RCU and come back via the idle loop.
    let before = k.alloc.in_use().total();
    s.run_user(CpuId(0), &mm, |k, mm| munmap(k, mm, BASE, 4 * PS).unwrap()).unwrap();
    s.quiesce(Duration::from_secs(5)).unwrap();
    assert!(k.alloc.in_use().total() < before);
    assert_eq!(k.san.count(), 0, "{:?}", k.san.violations());
}

/// The idle hook must not keep the kernel alive: the kernel owns the
/// machine's `Smp`, the machine owns the hook.  A strong reference there
/// leaked every booted kernel and its emulated RAM (a race scenario run
/// with `--seconds` boots one machine per chunk: 800 MB after 4 s).
#[test]
fn dropping_a_system_frees_its_kernel() {
    let s = sys(2);
    let mm = s.mm_alloc().unwrap();
    s.run_user(CpuId(1), &mm, |k, mm| {
        mmap_anon(k, mm, BASE, 4 * PS, true).unwrap();
        k.write_user(mm, BASE, 1).unwrap();
        mm_core::ops::exit_mm(k, mm);
    })
    .unwrap();
    drop(mm);
    let weak = mm_core::sync::Arc::downgrade(s.kernel());
    drop(s);
    assert!(weak.upgrade().is_none(), "the kernel outlived its System (a reference cycle through the machine)");
}
