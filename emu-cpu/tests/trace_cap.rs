//! Trace cap: past `MAX_EVENTS` events are counted in `dropped`, not kept.
//! (Its own test binary: the recorder is process-wide.)

use emu_cpu::trace::{self, Args, Cat, Event, Kind, MAX_EVENTS};

#[test]
fn events_past_the_cap_are_dropped_and_counted() {
    const OVER: usize = 1234;
    trace::start();
    for i in 0..MAX_EVENTS + OVER {
        let args = if i % 2 == 0 { Args::None } else { Args::Targets { call: i as u64 } };
        trace::emit(Event {
            cpu: (i % 4) as u32,
            ts_us: i as f64,
            name: "ev",
            cat: Cat::Irq,
            kind: Kind::Instant,
            args,
        });
    }
    let (evs, dropped) = trace::stop();
    assert_eq!(evs.len(), MAX_EVENTS);
    assert_eq!(dropped, OVER as u64);
    // The first MAX_EVENTS are the ones kept, in order.
    assert_eq!(evs[0].ts_us, 0.0);
    assert_eq!(evs[MAX_EVENTS - 1].ts_us, (MAX_EVENTS - 1) as f64);
    // Stopped: nothing more is recorded, and the next trace starts empty.
    trace::instant(0, "late", Cat::Irq, Args::None);
    assert!(trace::stop().0.is_empty());
    trace::start();
    let (evs, dropped) = trace::stop();
    assert!(evs.is_empty() && dropped == 0);
}
