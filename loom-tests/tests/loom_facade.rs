//! Proves the sync facade (`mm_core::sync`) really runs mm-core on loom:
//! real mm-core code (the page allocator, page-table entry accessors) run
//! by two loom threads on a kernel built inside each loom execution.
//!
//! Run (see ../README.md):
//! `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg mmemu_loom --cfg crossbeam_loom" CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release`
#![cfg(mmemu_loom)]

use loom_tests::model::{check, preemption_bound, small_kernel};
use mm_core::hw::pte::{Level, Pte};
use mm_core::page::alloc::PageKind;
use mm_core::page::Folio;
use mm_core::pgtable;
use mm_core::types::{CpuId, Pfn};
use std::collections::BTreeSet;
use std::sync::Mutex as StdMutex;

/// With a preemption bound of at least 1, a two-thread model must have
/// been run more than once (else loom never interleaved the threads).
fn assert_explored(executions: usize) {
    if preemption_bound() >= 1 {
        assert!(executions > 1, "loom ran a single execution: the threads were not interleaved");
    }
}

/// Two threads allocate an order-0 anon page each, concurrently, on the
/// same CPU's per-CPU list (and, for the first one in, the zone refill).
/// They must get distinct frames, the in-use accounting must say exactly 2,
/// and freeing both must restore the free count.
#[test]
fn concurrent_alloc_pages_distinct_frames() {
    let n = check("concurrent_alloc_pages_distinct_frames", || {
        let k = small_kernel(1);
        let free0 = k.alloc.nr_free();
        assert_eq!(k.alloc.in_use().total(), 0);

        let spawn = |k: &mm_core::sync::Arc<mm_core::Kernel>| {
            let k = k.clone();
            loom::thread::spawn(move || k.alloc_pages(0, PageKind::Anon).expect("64-frame kernel has room"))
        };
        let ta = spawn(&k);
        let tb = spawn(&k);
        let a = ta.join().unwrap();
        let b = tb.join().unwrap();

        assert_ne!(a, b, "two concurrent alloc_pages returned the same frame");
        assert_ne!(a, Pfn(0), "pfn 0 is reserved");
        assert_ne!(b, Pfn(0), "pfn 0 is reserved");
        let used = k.alloc.in_use();
        assert_eq!(used.anon, 2, "in_use after two allocations: {used:?}");
        assert_eq!(used.total(), 2, "in_use after two allocations: {used:?}");
        assert_eq!(k.alloc.nr_free(), free0 - 2);
        assert_eq!(k.mem.page(a).refcount(), 1);
        assert_eq!(k.mem.page(b).refcount(), 1);

        k.folio_put(Folio(a));
        k.folio_put(Folio(b));
        assert_eq!(k.alloc.in_use().total(), 0);
        assert_eq!(k.alloc.nr_free(), free0);
        assert_eq!(k.san.count(), 0);
    });
    assert_explored(n);
}

/// Two CPUs' threads allocate at once, each from its own (empty) per-CPU
/// list, so both refill from the zone under the zone lock at the same time.
/// Calls the allocator with explicit CPU ids (SyncSmp's "this CPU" is one
/// global, so `Kernel::alloc_pages` cannot be on two CPUs at once).
#[test]
fn two_cpu_pcp_refill_distinct_frames() {
    let n = check("two_cpu_pcp_refill_distinct_frames", || {
        let k = small_kernel(2);
        let free0 = k.alloc.nr_free();
        let spawn = |cpu: u32| {
            let k = k.clone();
            loom::thread::spawn(move || k.alloc.alloc(&k.mem, CpuId(cpu), 0, PageKind::Anon).unwrap())
        };
        let (ta, tb) = (spawn(0), spawn(1));
        let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
        assert_ne!(a, b, "CPU0 and CPU1 refilled with the same frame");
        assert_eq!(k.alloc.in_use().anon, 2);
        assert_eq!(k.alloc.nr_free(), free0 - 2, "refilled frames on pcp lists still count as free");
        k.folio_put(Folio(a));
        k.folio_put(Folio(b));
        assert_eq!(k.alloc.in_use().total(), 0);
        assert_eq!(k.alloc.nr_free(), free0);
    });
    assert_explored(n);
}

/// One thread frees a frame while another allocates: the allocator's
/// per-CPU list and zone lock keep the accounting exact either way, and the
/// freed frame's generation was bumped (what the sanitizer relies on).
#[test]
fn concurrent_alloc_and_free() {
    let n = check("concurrent_alloc_and_free", || {
        let k = small_kernel(1);
        let victim = k.alloc_pages(0, PageKind::Anon).unwrap();
        let gen0 = k.hw.ram.gen(victim);
        assert_eq!(k.alloc.in_use().anon, 1);

        let k1 = k.clone();
        let t_free = loom::thread::spawn(move || k1.folio_put(Folio(victim)));
        let k2 = k.clone();
        let t_alloc = loom::thread::spawn(move || k2.alloc_pages(0, PageKind::Anon).unwrap());
        t_free.join().unwrap();
        let got = t_alloc.join().unwrap();

        assert_eq!(k.alloc.in_use().anon, 1, "one freed, one allocated");
        assert_eq!(k.hw.ram.gen(victim), gen0 + 1, "free bumps the frame generation");
        assert_eq!(k.mem.page(got).refcount(), 1);
        k.folio_put(Folio(got));
        assert_eq!(k.alloc.in_use().total(), 0);
    });
    assert_explored(n);
}

/// Outcomes of `pte_write_read_no_torn_values`, collected across loom
/// executions (plain std, outside the model) to show loom explored both
/// orders.
static PTE_OUTCOMES: StdMutex<BTreeSet<(u64, u64)>> = StdMutex::new(BTreeSet::new());

/// Thread A populates a PTE slot and then write-protects it
/// (`set_pte`, then `set_pte` of the wrprotected entry) through
/// `pgtable::write`; thread B reads the slot twice with `pgtable::read`.
/// B may only ever see whole entries (none, the first, the second), and in
/// program order (read-read coherence).
#[test]
fn pte_write_read_no_torn_values() {
    PTE_OUTCOMES.lock().unwrap().clear();
    let n = check("pte_write_read_no_torn_values", || {
        let k = small_kernel(1);
        let table = pgtable::pagetable_alloc(&k, 0).unwrap().pfn();
        let data = k.alloc_pages(0, PageKind::Anon).unwrap();
        let va = 0x3000; // PTE index 3 in a 4-entry table
        let e1 = Pte::new(data, Pte::PRESENT | Pte::RW | Pte::USER);
        let e2 = e1.wrprotect();
        assert_ne!(e1, e2);
        let order = [Pte::NONE, e1, e2];

        let ka = k.clone();
        let writer = loom::thread::spawn(move || {
            pgtable::write(&ka, table, Level::Pte, va, e1);
            pgtable::write(&ka, table, Level::Pte, va, e2);
        });
        let kb = k.clone();
        let reader = loom::thread::spawn(move || {
            let r1 = pgtable::read(&kb, table, Level::Pte, va);
            let r2 = pgtable::read(&kb, table, Level::Pte, va);
            (r1, r2)
        });
        writer.join().unwrap();
        let (r1, r2) = reader.join().unwrap();

        let pos = |e: Pte| order.iter().position(|x| *x == e).unwrap_or_else(|| panic!("torn PTE value {e:?}"));
        let (p1, p2) = (pos(r1), pos(r2));
        assert!(p1 <= p2, "reader saw {r1:?} after {r2:?}: PTE went backwards");
        assert_eq!(pgtable::read(&k, table, Level::Pte, va), e2);
        // The neighbours of the slot are untouched.
        for i in 0..4u64 {
            if i != 3 {
                assert_eq!(pgtable::read(&k, table, Level::Pte, i << 12), Pte::NONE);
            }
        }
        PTE_OUTCOMES.lock().unwrap().insert((p1 as u64, p2 as u64));
    });
    assert_explored(n);
    let seen = PTE_OUTCOMES.lock().unwrap().clone();
    // Bound ≥ 1 can interleave the reader between the two writes.
    assert!(seen.contains(&(0, 0)) && seen.contains(&(2, 2)), "loom explored too little: {seen:?}");
    if preemption_bound() >= 1 {
        assert!(seen.iter().any(|&(a, b)| a == 1 || b == 1), "never saw the intermediate entry: {seen:?}");
    }
    eprintln!("pte outcomes (index into [none, e1, e2]) seen: {seen:?}");
}

/// Self-check of the harness: a racy read-modify-write on the facade's
/// `AtomicU64` (a load then a separate store) loses an update in some
/// interleaving, and loom must find it.  If the facade handed out std
/// atomics instead of loom's, loom would not schedule between the two
/// operations and this test would fail by *not* panicking.
#[test]
#[should_panic(expected = "lost update")]
fn facade_atomics_are_scheduled_by_loom() {
    if preemption_bound() == 0 {
        panic!("lost update (not checkable at bound 0; skipped)");
    }
    check("facade_atomics_are_scheduled_by_loom", || {
        use mm_core::sync::{Arc, AtomicU64, Ordering};
        let x = Arc::new(AtomicU64::new(0));
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let x = x.clone();
                loom::thread::spawn(move || {
                    let v = x.load(Ordering::SeqCst);
                    x.store(v + 1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in ts {
            t.join().unwrap();
        }
        assert_eq!(x.load(Ordering::SeqCst), 2, "lost update");
    });
}
