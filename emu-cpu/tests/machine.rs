//! Machine tests: cross calls, mutual shootdowns, many CPUs, the CSD-lock
//! watchdog, panics reported with their CPU, and the real kernel on top.
//! Every wait is bounded; each test finishes in seconds on 2 host cores.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emu_cpu::{Machine, MachineConfig, MachineError, WaitPolicy};
use mm_core::smp::{smp_call_function, Smp};
use mm_core::stats::Stat;
use mm_core::types::{CpuId, CpuMask};

fn cfg(wait: WaitPolicy) -> MachineConfig {
    MachineConfig { pin: false, wait, watchdog: Duration::from_secs(5), hang_timeout: Duration::from_secs(20) }
}

fn cross_call_reaches_each_other_cpu_once(n: usize, wait: WaitPolicy, pin: bool) {
    let m = Machine::new(n, MachineConfig { pin, ..cfg(wait) });
    let smp = Arc::new(m.smp());
    for sender in [0, n - 1] {
        let hits: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let before: Vec<u64> = (0..n).map(|c| smp.call_interrupts(CpuId(c as u32))).collect();
        let (s, h) = (smp.clone(), hits.clone());
        m.run_on(CpuId(sender as u32), move || {
            let s2 = s.clone();
            smp_call_function(&*s, &|c| {
                assert_eq!(s2.this_cpu(), c, "handler runs on its target");
                assert!(s2.irqs_disabled(), "handlers run with IRQs off");
                h[c.idx()].fetch_add(1, Ordering::SeqCst);
            });
        })
        .unwrap();
        for c in 0..n {
            let want = usize::from(c != sender);
            assert_eq!(hits[c].load(Ordering::SeqCst), want, "CPU{c} ran the call {want} time(s)");
            let cal = smp.call_interrupts(CpuId(c as u32)) - before[c];
            assert_eq!(cal, want as u64, "CAL count of CPU{c}");
        }
    }
    let total: u64 = (0..n).map(|c| smp.call_interrupts(CpuId(c as u32))).sum();
    assert_eq!(total, 2 * (n as u64 - 1));
}

#[test]
fn a_cross_call_2_4_16_cpus() {
    for n in [2, 4, 16] {
        cross_call_reaches_each_other_cpu_once(n, WaitPolicy::Adaptive, false);
        cross_call_reaches_each_other_cpu_once(n, WaitPolicy::Park, true);
    }
    cross_call_reaches_each_other_cpu_once(2, WaitPolicy::Spin, true);
    cross_call_reaches_each_other_cpu_once(4, WaitPolicy::Spin, false);
}

#[test]
fn b_mutual_shootdown_no_deadlock_1000() {
    const ROUNDS: usize = 1000;
    for wait in [WaitPolicy::Adaptive, WaitPolicy::Park] {
        let m = Machine::new(2, cfg(wait));
        let smp = Arc::new(m.smp());
        let arrived = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2u32)
            .map(|me| {
                let (s, arrived) = (smp.clone(), arrived.clone());
                m.spawn_on(CpuId(me), move || {
                    let mut mask = CpuMask::new();
                    mask.set(CpuId(1 - me));
                    let deadline = Instant::now() + Duration::from_secs(10);
                    for round in 0..ROUNDS {
                        // Rendezvous at an interrupt point so both calls overlap.
                        arrived.fetch_add(1, Ordering::SeqCst);
                        while arrived.load(Ordering::SeqCst) < 2 * (round + 1) {
                            s.cond_resched();
                            assert!(Instant::now() < deadline, "rendezvous timed out");
                            std::thread::yield_now(); // 2-core CI: let the other CPU thread run
                        }
                        s.smp_call_function_many(&mask, &|_| {});
                    }
                })
            })
            .collect();
        for h in handles {
            h.join(Duration::from_secs(20)).unwrap();
        }
        assert_eq!(smp.call_interrupts(CpuId(0)), ROUNDS as u64);
        assert_eq!(smp.call_interrupts(CpuId(1)), ROUNDS as u64);
    }
}

#[test]
fn c_64_cpus_unpinned_adaptive_call_to_all() {
    let m = Machine::new(64, cfg(WaitPolicy::Adaptive));
    let smp = Arc::new(m.smp());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, seen2) = (smp.clone(), seen.clone());
    m.run_on(CpuId(5), move || smp_call_function(&*s, &|c| seen2.lock().unwrap().push(c))).unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let want: Vec<CpuId> = (0..64u32).filter(|&c| c != 5).map(CpuId).collect();
    assert_eq!(seen, want);
}

#[test]
fn d_watchdog_names_target_with_irqs_off() {
    let m = Machine::new(2, MachineConfig { watchdog: Duration::from_millis(200), ..cfg(WaitPolicy::Adaptive) });
    let smp = Arc::new(m.smp());
    let release = Arc::new(AtomicBool::new(false));
    let irqs_off = Arc::new(AtomicBool::new(false));
    let (s, rel, off) = (smp.clone(), release.clone(), irqs_off.clone());
    let stuck = m.spawn_on(CpuId(1), move || {
        let f = s.local_irq_save();
        off.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rel.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        s.local_irq_restore(f);
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !irqs_off.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "CPU1 never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let s = smp.clone();
    let t0 = Instant::now();
    let err = m.run_on(CpuId(0), move || smp_call_function(&*s, &|_| {})).unwrap_err();
    let waited = t0.elapsed();
    release.store(true, Ordering::SeqCst);
    stuck.join(Duration::from_secs(5)).unwrap();
    let msg = err.to_string();
    // A CSD-lock timeout is told from a panic by its type, not its text.
    assert!(matches!(&err, MachineError::CsdTimeout { cpu: CpuId(0), targets, .. } if targets == &[CpuId(1)]), "{msg}");
    assert!(err.is_hang(), "{msg}");
    assert!(msg.starts_with("CPU0: task panicked: CSD lock timeout: CPU0 waited 200ms"), "{msg}");
    assert!(msg.contains("CSD lock timeout") && msg.contains("CPU1 (IRQs off, running a task)"), "{msg}");
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(5), "{waited:?}");
    // The cancelled call never ran on CPU1, and the machine still works.
    assert_eq!(smp.call_interrupts(CpuId(1)), 0);
    let s = smp.clone();
    m.run_on(CpuId(0), move || smp_call_function(&*s, &|_| {})).unwrap();
    assert_eq!(smp.call_interrupts(CpuId(1)), 1);
}

#[test]
fn e_task_panic_reports_cpu() {
    let m = Machine::new(4, cfg(WaitPolicy::Park));
    let err = m.run_on(CpuId(3), || -> u32 { panic!("boom") }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("CPU3") && msg.contains("boom"), "{msg}");
    // The CPU survives its task's panic.
    assert_eq!(m.run_on(CpuId(3), || 7).unwrap(), 7);
    // A handler panic is reported to the sender, not lost.
    let smp = Arc::new(m.smp());
    let s = smp.clone();
    let err = m
        .run_on(CpuId(0), move || {
            let mut mask = CpuMask::new();
            mask.set(CpuId(2));
            s.smp_call_function_many(&mask, &|_| panic!("handler oops"));
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("CPU0") && err.contains("CPU2") && err.contains("handler oops"), "{err}");
    // Non-existent CPU: an error, not a hang.
    assert!(matches!(m.run_on(CpuId(9), || ()), Err(MachineError::Stopped { .. })));
}

#[test]
fn waiting_with_irqs_off_panics_clearly() {
    let m = Machine::new(2, cfg(WaitPolicy::Adaptive));
    let s = m.smp();
    let err = m
        .run_on(CpuId(1), move || {
            let _f = s.local_irq_save();
            smp_call_function(&s, &|_| {});
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("IRQs disabled") && err.contains("CPU1"), "{err}");
}

#[test]
#[should_panic(expected = "not an emulated CPU")]
fn this_cpu_off_machine_panics() {
    let m = Machine::new(1, cfg(WaitPolicy::Park));
    let _ = m.smp().this_cpu();
}

#[test]
fn f_real_kernel_remote_flush() {
    use mm_core::ops::{madvise_dontneed, mmap_anon};
    use mm_core::tlb::switch_mm;
    use mm_core::{Kernel, KernelConfig};
    const BASE: u64 = 0x4000_0000;
    const PS: u64 = 4096;

    let m = Machine::new(2, cfg(WaitPolicy::Adaptive));
    let kc = KernelConfig { nr_cpus: 2, ..KernelConfig::default() };
    let k = Kernel::new(kc, Box::new(m.smp())).unwrap();
    let kk = k.clone();
    let mm = m
        .run_on(CpuId(1), move || {
            let mm = kk.mm_alloc();
            switch_mm(&kk, &mm);
            mmap_anon(&kk, &mm, BASE, 4 * PS, true).unwrap();
            kk.write_user(&mm, BASE, 1).unwrap();
            mm
        })
        .unwrap();
    let (kk, mm0) = (k.clone(), mm.clone());
    m.run_on(CpuId(0), move || {
        switch_mm(&kk, &mm0);
        madvise_dontneed(&kk, &mm0, BASE, PS).unwrap();
    })
    .unwrap();
    assert_eq!(k.stats.get_cpu(CpuId(1), Stat::NrTlbRemoteFlushReceived), 1);
    assert_eq!(k.smp.call_interrupts(CpuId(1)), 1);
    let (kk, mm1) = (k.clone(), mm.clone());
    let v = m.run_on(CpuId(1), move || kk.read_user(&mm1, BASE).unwrap()).unwrap();
    assert_eq!(v, 0, "CPU1 does not see the freed page");
    assert_eq!(k.san.count(), 0, "violations: {:?}", k.san.violations());
}

/// The classic deadlock, made finite: CPU0 holds a spinlock and shoots
/// down CPU1, which spins on that lock with IRQs off (spin_lock_irqsave).
/// The watchdog names CPU1, its IRQ state and that it spins on a lock.
#[test]
fn g_watchdog_reports_irqs_off_lock_spinner() {
    use mm_core::sync::Mutex;
    let m = Machine::new(2, MachineConfig { watchdog: Duration::from_millis(300), ..cfg(WaitPolicy::Adaptive) });
    let smp = Arc::new(m.smp());
    let lock = Arc::new(Mutex::new(0u32));
    let held = Arc::new(AtomicBool::new(false));
    let (s0, l0, h0) = (smp.clone(), lock.clone(), held.clone());
    let holder = m.spawn_on(CpuId(0), move || {
        let g = l0.lock();
        h0.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50)); // let CPU1 start spinning
        smp_call_function(&*s0, &|_| {});
        drop(g);
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !held.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "CPU0 never took the lock");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (s1, l1) = (smp.clone(), lock.clone());
    let spinner = m.spawn_on(CpuId(1), move || {
        let f = s1.local_irq_save();
        *l1.lock() += 1;
        s1.local_irq_restore(f);
    });
    let err = holder.join(Duration::from_secs(10)).unwrap_err().to_string();
    assert!(err.contains("CSD lock timeout"), "{err}");
    assert!(err.contains("CPU1 (IRQs off, running a task, spinning on a contended lock)"), "{err}");
    // The holder's panic released the lock: the spinner finishes.
    spinner.join(Duration::from_secs(10)).unwrap();
    assert_eq!(*lock.lock(), 1);
}

/// A hang is no progress, not a long task: a task that runs three times the
/// hang timeout but keeps working (cond_resched in a long kernel loop) is
/// waited for; one that waits for a flag nobody sets is reported as a hang
/// naming its CPU and what it was doing, after about the timeout.
#[test]
fn hang_means_no_progress_not_a_long_task() {
    let hang = Duration::from_millis(300);
    let m = Machine::new(2, MachineConfig { hang_timeout: hang, ..cfg(WaitPolicy::Adaptive) });
    let smp = Arc::new(m.smp());
    let s = smp.clone();
    let t0 = Instant::now();
    let r = m.run_on(CpuId(1), move || {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < 3 * hang {
            s.cond_resched();
            n += 1;
        }
        n
    });
    assert!(r.is_ok(), "a long task that keeps working is not a hang: {r:?}");
    assert!(t0.elapsed() >= 3 * hang);

    let s = smp.clone();
    let never = Arc::new(AtomicBool::new(false));
    let n2 = never.clone();
    let t0 = Instant::now();
    let h = m.spawn_on(CpuId(0), move || {
        while !n2.load(Ordering::SeqCst) {
            s.cpu_relax();
            std::hint::spin_loop();
        }
    });
    let err = h.join(hang).unwrap_err();
    let waited = t0.elapsed();
    never.store(true, Ordering::SeqCst); // let the CPU go for shutdown
    match &err {
        MachineError::Hang { cpu, after, state } => {
            assert_eq!(*cpu, CpuId(0));
            assert_eq!(*after, hang);
            assert!(state.contains("CPU0 (IRQs on, running a task)") && state.contains("1 idle"), "{state}");
        }
        e => panic!("expected a hang, got {e}"),
    }
    assert!(waited >= hang && waited < 20 * hang, "reported after {waited:?}");
    assert!(err.to_string().starts_with("CPU0: hang: no CPU made progress for 300ms"), "{err}");
}

/// The timer tick reaches a CPU that runs user code and never idles: its
/// RCU callbacks run there.  Before the tick existed, a one-CPU machine
/// busy in one task freed no RCU-deferred table until the task ended, and
/// munmap-storm ran out of RAM after 5375 rounds.
#[test]
fn a_cpu_that_never_idles_still_frees_rcu_tables() {
    use emu_cpu::System;
    use mm_core::ops::{mmap_anon, munmap};
    let s = System::new(
        mm_core::KernelConfig { nr_cpus: 1, ..mm_core::KernelConfig::default() },
        cfg(WaitPolicy::Adaptive),
    )
    .unwrap();
    let mm = s.mm_alloc().unwrap();
    let freed = s
        .run_user(CpuId(0), &mm, |k, mm| {
            let t = Instant::now();
            let base = 0x4000_0000u64;
            // One page per round: every munmap frees its PTE, PMD and PUD
            // tables through RCU.
            while t.elapsed() < Duration::from_secs(5) {
                mmap_anon(k, mm, base, 4096, true).unwrap();
                k.write_user(mm, base, 1).unwrap();
                munmap(k, mm, base, 4096).unwrap();
                let freed = k.stats.get(Stat::TablesFreed);
                if freed > 0 {
                    return freed;
                }
            }
            0
        })
        .unwrap();
    assert!(freed > 0, "no RCU callback ran on a CPU busy with user code for 5 s");
    s.run_user(CpuId(0), &mm, |k, mm| mm_core::ops::exit_mm(k, mm)).unwrap();
}

/// `cpu_relax` is an interrupt point: a CPU spinning on a flag with IRQs on
/// takes the cross call whose completion sets that flag (without it the
/// sender would wait for the watchdog).
#[test]
fn cpu_relax_takes_ipis() {
    let m = Machine::new(2, MachineConfig { watchdog: Duration::from_secs(2), ..cfg(WaitPolicy::Adaptive) });
    let smp = Arc::new(m.smp());
    let flag = Arc::new(AtomicBool::new(false));
    let (s, f) = (smp.clone(), flag.clone());
    let spinner = m.spawn_on(CpuId(0), move || {
        while !f.load(Ordering::SeqCst) {
            s.cpu_relax();
            std::hint::spin_loop();
        }
    });
    let (s, f) = (smp.clone(), flag.clone());
    let sender = m.spawn_on(CpuId(1), move || {
        let mut mask = CpuMask::new();
        mask.set(CpuId(0));
        s.smp_call_function_many(&mask, &|_| {});
        f.store(true, Ordering::SeqCst);
    });
    sender.join(Duration::from_secs(10)).expect("the cross call to a cpu_relax spinner completes");
    spinner.join(Duration::from_secs(10)).unwrap();
}

/// The hang report names the busy CPUs (at most 8, then a count) and
/// counts the idle ones; with none idle it says nothing about idling.
#[test]
fn hang_report_names_busy_cpus_and_counts_the_rest() {
    let hang = Duration::from_millis(300);
    for (n, busy) in [(12usize, 10usize), (3, 3)] {
        let m = Machine::new(n, MachineConfig { hang_timeout: hang, ..cfg(WaitPolicy::Adaptive) });
        let stop = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..busy)
            .map(|c| {
                let stop = stop.clone();
                m.spawn_on(CpuId(c as u32), move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        let mut hs = hs.into_iter();
        let first = hs.next().unwrap();
        let err = first.join(hang).unwrap_err();
        stop.store(true, Ordering::SeqCst);
        let MachineError::Hang { state, .. } = &err else { panic!("expected a hang, got {err}") };
        let shown = state.matches("running a task").count();
        assert_eq!(shown, busy.min(8), "{state}");
        if busy > 8 {
            assert!(state.contains(&format!("and {} more busy", busy - 8)), "{state}");
        } else {
            assert!(!state.contains("more busy"), "{state}");
        }
        if n > busy {
            assert!(state.ends_with(&format!("; {} idle", n - busy)), "{state}");
        } else {
            assert!(!state.contains("idle"), "{state}");
        }
        for h in hs {
            h.join(Duration::from_secs(10)).unwrap();
        }
    }
}

#[test]
fn a_task_starts_a_task_on_another_cpu_through_a_spawner() {
    // A Spawner is Send: a task on CPU0 queues one on CPU1 and waits for
    // it there; the inner task runs on CPU1, and a panic in it comes back
    // with CPU1's id.
    let m = Machine::new(2, cfg(WaitPolicy::Adaptive));
    let (sp, smp) = (m.spawner(), Arc::new(m.smp()));
    let s = smp.clone();
    let inner_cpu = m
        .run_on(CpuId(0), move || {
            let s2 = s.clone();
            sp.spawn_on(CpuId(1), move || s2.this_cpu()).join(Duration::from_secs(20))
        })
        .unwrap()
        .unwrap();
    assert_eq!(inner_cpu, CpuId(1));
    let sp = m.spawner();
    let e = m
        .run_on(CpuId(0), move || sp.spawn_on(CpuId(1), || panic!("inner task")).join(Duration::from_secs(20)))
        .unwrap()
        .unwrap_err();
    assert_eq!(e, MachineError::Panicked { cpu: CpuId(1), msg: "inner task".into() });
}
