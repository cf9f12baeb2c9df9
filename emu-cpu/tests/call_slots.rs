//! The per-CPU call slots (cpu.rs: one `CallSlot` per sender, reused by
//! each of its calls; a pending-senders bitmap per target): every call
//! runs exactly once on each of its targets and nowhere else, also when
//! every CPU sends at once, right after a call that panicked or timed
//! out, and with masks that change from one call to the next.  Every wait
//! is bounded; no test depends on timing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emu_cpu::{Machine, MachineConfig, MachineError, WaitPolicy};
use mm_core::smp::{smp_call_function, Smp};
use mm_core::types::{CpuId, CpuMask};

fn cfg(wait: WaitPolicy) -> MachineConfig {
    MachineConfig { pin: false, wait, watchdog: Duration::from_secs(20), hang_timeout: Duration::from_secs(60) }
}

fn mask_of(cpus: &[u32]) -> CpuMask {
    let mut m = CpuMask::new();
    for &c in cpus {
        m.set(CpuId(c));
    }
    m
}

/// `n * n` counters: `[sender * n + target]`.
fn matrix(n: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..n * n).map(|_| AtomicU64::new(0)).collect())
}

/// Every CPU of 64 (on however few host cores) shoots down all the others
/// at once, `rounds` times: each (sender, target) pair runs exactly
/// `rounds` handlers, each CPU exactly `(n - 1) * rounds`, and the CAL /
/// sent counters say the same.  A lost pending bit ends in the watchdog's
/// panic; a call run twice, by the wrong CPU or with another sender's
/// closure shows in the counts.
fn all_cpus_shoot_down_each_other(n: usize, wait: WaitPolicy, rounds: u64) {
    let m = Machine::new(n, cfg(wait));
    let smp = Arc::new(m.smp());
    let hits = matrix(n);
    let handles: Vec<_> = (0..n as u32)
        .map(|me| {
            let (s, hits) = (smp.clone(), hits.clone());
            m.spawn_on(CpuId(me), move || {
                let s2 = s.clone();
                for _ in 0..rounds {
                    smp_call_function(&*s, &|c| {
                        assert_eq!(s2.this_cpu(), c, "a handler runs on its target");
                        assert!(s2.irqs_disabled(), "handlers run with IRQs off");
                        hits[me as usize * n + c.idx()].fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        })
        .collect();
    for h in handles {
        h.join(Duration::from_secs(120)).unwrap();
    }
    for s in 0..n {
        for t in 0..n {
            let want = if s == t { 0 } else { rounds };
            assert_eq!(hits[s * n + t].load(Ordering::SeqCst), want, "CPU{s} -> CPU{t} ({wait:?})");
        }
    }
    for c in 0..n {
        let ran: u64 = (0..n).map(|s| hits[s * n + c].load(Ordering::SeqCst)).sum();
        assert_eq!(ran, (n as u64 - 1) * rounds, "handlers run on CPU{c}");
        assert_eq!(smp.call_interrupts(CpuId(c as u32)), (n as u64 - 1) * rounds, "CAL of CPU{c}");
        assert_eq!(smp.ipis_sent(CpuId(c as u32)), (n as u64 - 1) * rounds, "sent by CPU{c}");
    }
}

#[test]
fn every_cpu_of_64_shoots_down_all_others_at_once() {
    all_cpus_shoot_down_each_other(64, WaitPolicy::Adaptive, 40);
    all_cpus_shoot_down_each_other(64, WaitPolicy::Park, 20);
}

#[test]
fn every_cpu_of_4_shoots_down_all_others_at_once_spinning() {
    all_cpus_shoot_down_each_other(4, WaitPolicy::Spin, 200);
}

/// One sender, calls back to back with masks and closures that change
/// each time: each call runs its own closure on exactly its own targets.
/// A target that ran a call through a state left over from the previous
/// one, or the previous call's closure (the three are alive at once, at
/// three addresses, so a slot that kept an old function pointer would
/// run it), breaks the counts.
#[test]
fn back_to_back_calls_from_one_sender_see_only_their_own_targets() {
    const ROUNDS: u64 = 500;
    for wait in [WaitPolicy::Spin, WaitPolicy::Adaptive, WaitPolicy::Park] {
        let m = Machine::new(4, cfg(wait));
        let smp = Arc::new(m.smp());
        // [kind * 4 + target]: kind 0 targets 1, 2, 3; kind 1 only 1;
        // kind 2 only 3.
        let hits = matrix(4);
        let (s, h) = (smp.clone(), hits.clone());
        m.run_on(CpuId(0), move || {
            let masks = [mask_of(&[1, 2, 3]), mask_of(&[1]), mask_of(&[3])];
            // Three closures alive at once (three addresses, three types).
            let f0 = |c: CpuId| {
                h[c.idx()].fetch_add(1, Ordering::SeqCst);
            };
            let f1 = |c: CpuId| {
                h[4 + c.idx()].fetch_add(1, Ordering::SeqCst);
            };
            let f2 = |c: CpuId| {
                h[8 + c.idx()].fetch_add(1, Ordering::SeqCst);
            };
            let calls: [&(dyn Fn(CpuId) + Sync); 3] = [&f0, &f1, &f2];
            for _ in 0..ROUNDS {
                for (mask, f) in masks.iter().zip(calls) {
                    s.smp_call_function_many(mask, f);
                }
            }
        })
        .unwrap();
        let want = [[0, ROUNDS, ROUNDS, ROUNDS], [0, ROUNDS, 0, 0], [0, 0, 0, ROUNDS]];
        for (kind, row) in want.iter().enumerate() {
            for (t, w) in row.iter().enumerate() {
                assert_eq!(hits[kind * 4 + t].load(Ordering::SeqCst), *w, "call kind {kind} on CPU{t} ({wait:?})");
            }
        }
        assert_eq!(smp.call_interrupts(CpuId(1)), 2 * ROUNDS);
        assert_eq!(smp.call_interrupts(CpuId(2)), ROUNDS);
        assert_eq!(smp.call_interrupts(CpuId(3)), 2 * ROUNDS);
    }
}

/// A handler panic reaches the sender, and the sender's very next call
/// (same task, same slot) neither reports that panic again nor runs on
/// the old call's targets.
#[test]
fn a_handler_panic_reaches_the_sender_and_does_not_leak_into_its_next_call() {
    for wait in [WaitPolicy::Spin, WaitPolicy::Adaptive, WaitPolicy::Park] {
        let m = Machine::new(3, cfg(wait));
        let smp = Arc::new(m.smp());
        let hits = matrix(3);
        let (s, h) = (smp.clone(), hits.clone());
        let first = m
            .run_on(CpuId(0), move || {
                let r = catch_unwind(AssertUnwindSafe(|| {
                    s.smp_call_function_many(&mask_of(&[1, 2]), &|c| {
                        h[c.idx()].fetch_add(1, Ordering::SeqCst);
                        if c == CpuId(2) {
                            panic!("handler oops on the first call");
                        }
                    });
                }));
                let msg = match r {
                    Ok(()) => "no panic".to_string(),
                    Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
                };
                // Right after, from the same slot: only CPU1, no panic.
                s.smp_call_function_many(&mask_of(&[1]), &|c| {
                    h[3 + c.idx()].fetch_add(1, Ordering::SeqCst);
                });
                msg
            })
            .unwrap();
        assert!(
            first.contains("smp_call_function_many from CPU0")
                && first.contains("IPI handler panicked on CPU2")
                && first.contains("handler oops on the first call"),
            "{first}"
        );
        let got: Vec<u64> = hits.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        assert_eq!(got[..6], [0, 1, 1, 0, 1, 0], "first call on CPU0..2, then second ({wait:?})");
        // The CPU that panicked in a handler still takes calls.
        let s = smp.clone();
        m.run_on(CpuId(1), move || s.smp_call_function_many(&mask_of(&[2]), &|_| {})).unwrap();
        assert_eq!(smp.call_interrupts(CpuId(2)), 2);
    }
}

/// The watchdog with several targets, one of them stuck with IRQs off:
/// it names that one only and the others ran the call.  The sender's next
/// calls, from the same slot while the stuck CPU still has the cancelled
/// call's bit pending, reach only their own targets; once its IRQs are
/// back on that stale bit runs nothing (neither the cancelled call nor a
/// later one it was not a target of); and a call to every CPU then reaches
/// each exactly once.
#[test]
fn the_watchdog_names_only_the_stuck_target_and_the_slot_is_reused() {
    let m = Machine::new(4, MachineConfig { watchdog: Duration::from_millis(500), ..cfg(WaitPolicy::Adaptive) });
    let smp = Arc::new(m.smp());
    let release = Arc::new(AtomicBool::new(false));
    let irqs_off = Arc::new(AtomicBool::new(false));
    let (s, rel, off) = (smp.clone(), release.clone(), irqs_off.clone());
    let stuck = m.spawn_on(CpuId(2), move || {
        let f = s.local_irq_save();
        off.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rel.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        s.local_irq_restore(f); // an interrupt point: the stale bit is seen here
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !irqs_off.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "CPU2 never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let hits = matrix(4); // rows: the timed-out call, the call to all, the calls to 1 and 3
    let (s, h) = (smp.clone(), hits.clone());
    let err = m
        .run_on(CpuId(0), move || {
            smp_call_function(&*s, &|c| {
                h[c.idx()].fetch_add(1, Ordering::SeqCst);
            })
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, MachineError::CsdTimeout { cpu: CpuId(0), targets, .. } if targets == &[CpuId(2)]), "{msg}");
    assert!(msg.contains("CPU2 (IRQs off, running a task)"), "{msg}");
    assert!(!msg.contains("CPU1") && !msg.contains("CPU3"), "only the stuck target is named: {msg}");
    // CPU2 is still stuck, its bit for CPU0 still set: calls to CPU1 and
    // CPU3 from the same slot.
    let (s, h) = (smp.clone(), hits.clone());
    m.run_on(CpuId(0), move || {
        for _ in 0..10 {
            s.smp_call_function_many(&mask_of(&[1, 3]), &|c| {
                h[8 + c.idx()].fetch_add(1, Ordering::SeqCst);
            });
        }
    })
    .unwrap();
    release.store(true, Ordering::SeqCst);
    stuck.join(Duration::from_secs(10)).unwrap();
    let got: Vec<u64> = hits[..4].iter().map(|a| a.load(Ordering::SeqCst)).collect();
    assert_eq!(got, [0, 1, 0, 1], "the cancelled call never runs on CPU2");
    let got: Vec<u64> = hits[8..12].iter().map(|a| a.load(Ordering::SeqCst)).collect();
    assert_eq!(got, [0, 10, 0, 10], "the calls to CPU1 and CPU3 never run on CPU2");
    assert_eq!(smp.call_interrupts(CpuId(2)), 0);
    // The same sender again: every target exactly once, and CPU2's
    // leftover bit from the cancelled call does not make it run twice.
    let (s, h) = (smp.clone(), hits.clone());
    m.run_on(CpuId(0), move || {
        smp_call_function(&*s, &|c| {
            h[4 + c.idx()].fetch_add(1, Ordering::SeqCst);
        })
    })
    .unwrap();
    let got: Vec<u64> = hits[4..8].iter().map(|a| a.load(Ordering::SeqCst)).collect();
    assert_eq!(got, [0, 1, 1, 1]);
    assert_eq!(smp.call_interrupts(CpuId(2)), 1);
}
