//! Trace hooks: off by default; when started, a remote flush records the
//! sender's cross-call slice, a flow to each target, the target's handler
//! slice, IRQs-off regions and tlb_flush instants with their reason.
//! (Its own test binary: the recorder is process-wide.)

use std::time::Duration;

use emu_cpu::trace::{self, Args, Kind};
use emu_cpu::{MachineConfig, System};
use mm_core::ops::{mmap_anon, munmap};
use mm_core::{CpuId, KernelConfig};

const BASE: u64 = 0x4000_0000;
const PS: u64 = 4096;

fn shootdown(sys: &System) {
    let mm = sys.mm_alloc().unwrap();
    sys.run_user(CpuId(1), &mm, |k, mm| {
        mmap_anon(k, mm, BASE, 4 * PS, true).unwrap();
        k.write_user(mm, BASE, 1).unwrap();
    })
    .unwrap();
    // CPU1 idles lazily; CPU0 runs a thread too, so CPU1 must be shot down
    // once it runs the mm again: keep it non-lazy with a second task.
    let h = sys.spawn_user(CpuId(1), &mm, |k, mm| {
        for _ in 0..200 {
            let _ = k.read_user(mm, BASE);
            k.smp.cond_resched();
            std::thread::sleep(Duration::from_micros(50));
        }
    });
    sys.run_user(CpuId(0), &mm, |k, mm| munmap(k, mm, BASE, 4 * PS).unwrap()).unwrap();
    h.join(Duration::from_secs(10)).unwrap();
}

#[test]
fn records_ipis_flows_irqs_off_and_tlb_flush_only_when_started() {
    let kcfg = KernelConfig { nr_cpus: 2, ..KernelConfig::default() };
    // Off: nothing recorded.
    let sys = System::new(kcfg.clone(), MachineConfig::default()).unwrap();
    shootdown(&sys);
    assert!(!trace::enabled());
    assert!(trace::stop().0.is_empty());
    drop(sys);

    trace::start();
    let sys = System::new(kcfg, MachineConfig::default()).unwrap();
    shootdown(&sys);
    let (evs, dropped) = trace::stop();
    assert_eq!(dropped, 0);
    let has = |cpu: u32, name: &str| evs.iter().any(|e| e.cpu == cpu && e.name == name);
    assert!(has(0, "smp_call_function_many"), "sender slice");
    assert!(has(1, "IPI: call_function"), "handler slice on the target");
    assert!(evs.iter().any(|e| e.name == "irqs_off" && matches!(e.kind, Kind::Slice { .. })));
    let starts: Vec<u64> =
        evs.iter().filter_map(|e| if let Kind::FlowStart { id } = e.kind { Some(id) } else { None }).collect();
    let ends: Vec<u64> =
        evs.iter().filter_map(|e| if let Kind::FlowEnd { id } = e.kind { Some(id) } else { None }).collect();
    assert!(!ends.is_empty() && ends.iter().all(|id| starts.contains(id)), "flows sender -> target");
    assert!(evs.iter().any(|e| e.name == "tlb_flush"
        && matches!(e.args, Args::TlbFlush { reason, .. } if reason.name().starts_with("TLB_"))));
    // Each cross call's slice names the call whose flows start on the sender.
    for e in evs.iter().filter(|e| e.name == "smp_call_function_many") {
        let Args::Targets { call } = e.args else { panic!("{e:?}") };
        assert!(starts.iter().any(|id| id >> 8 == call), "{e:?}: no flow of call {call}");
    }
    for e in &evs {
        assert!(e.ts_us >= 0.0);
        if let Kind::Slice { dur_us } = e.kind {
            assert!(dur_us >= 0.0);
        }
    }
}
