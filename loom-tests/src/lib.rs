//! loom models of mmemu's races.
//!
//! The models live in `tests/` and compile only under the project's loom cfg:
//!
//! ```text
//! LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg mmemu_loom --cfg crossbeam_loom" \
//!     CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release
//! ```
//!
//! Without the cfg this crate is empty and `cargo test -p loom-tests` runs
//! 0 tests.  See `README.md` for the list of models and their cost.
//!
//! Shared helpers for the models are below (loom mode only).

/// Helpers shared by the loom models.
#[cfg(mmemu_loom)]
pub mod model {
    use mm_core::sync::Arc;
    use mm_core::{Kernel, KernelConfig};

    /// Preemption bound for `loom::model::Builder`: `LOOM_MAX_PREEMPTIONS`
    /// from the environment, 2 when unset or unparsable.
    pub fn preemption_bound() -> usize {
        std::env::var("LOOM_MAX_PREEMPTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2)
    }

    /// A `loom::model::Builder` with the project's preemption bound.
    ///
    /// loom's own `Builder::new()` also reads `LOOM_MAX_PREEMPTIONS`, but
    /// leaves the bound unset (exhaustive search) when the variable is
    /// missing; the project default is 2.
    ///
    /// The branch limit (`LOOM_MAX_BRANCHES`, loom's default 1000) is
    /// raised to `DEFAULT_MAX_BRANCHES` when the variable is unset: an
    /// execution that goes through crossbeam-epoch (RCU table freeing) or
    /// a whole `munmap` + `collapse_huge_page` has more than 1000 branch
    /// points without spinning anywhere.
    pub fn builder() -> loom::model::Builder {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(preemption_bound());
        if std::env::var("LOOM_MAX_BRANCHES").is_err() {
            b.max_branches = DEFAULT_MAX_BRANCHES;
        }
        b
    }

    /// `max_branches` when `LOOM_MAX_BRANCHES` is unset.
    pub const DEFAULT_MAX_BRANCHES: usize = 10_000;

    /// Run `f` under `builder()`, counting loom executions; prints
    /// `loom model <name>: <n> executions, bound <b>, <t> ms` to stderr
    /// (visible with `--nocapture`) and returns the execution count.
    pub fn check<F>(name: &str, f: F) -> usize
    where
        F: Fn() + Sync + Send + 'static,
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let t0 = std::time::Instant::now();
        builder().check(move || {
            r.fetch_add(1, Ordering::Relaxed);
            f()
        });
        let n = runs.load(Ordering::Relaxed);
        eprintln!("loom model {name}: {n} executions, bound {}, {} ms", preemption_bound(), t0.elapsed().as_millis());
        n
    }

    /// A tiny kernel (`KernelConfig::small()`) with `nr_cpus` CPUs on the
    /// synchronous reference `Smp`.  Must be called inside each loom
    /// execution: every atomic/lock in it is a loom object of that execution.
    ///
    /// Note: `SyncSmp`'s "this CPU" is one global for all host (loom)
    /// threads, so models that run several threads at once must not
    /// `set_cpu` concurrently; they all act as CPU 0 unless a model
    /// serialises migrations itself.
    pub fn small_kernel(nr_cpus: usize) -> Arc<Kernel> {
        let k = Kernel::new_sync(KernelConfig::small(), nr_cpus);
        k.san.set_panic(true);
        k
    }

    /// A tiny kernel on `ModelSmp`: every loom thread plays the CPU it
    /// binds with `k.set_cpu(cpu)`; an IPI's handler runs on the sender's
    /// thread as the target, once the target has IRQs on (see
    /// `mm_core::smp::ModelSmp`).  `tune` adjusts the config (fix
    /// switches, `rcu_table_free`).  The sanitizer records (it does not
    /// panic: a panic while a loom lock guard is held aborts the process);
    /// end every model with `assert_clean`.  The calling thread is bound to
    /// CPU 0.
    pub fn model_kernel(nr_cpus: usize, tune: impl FnOnce(&mut KernelConfig)) -> Arc<Kernel> {
        let mut cfg = KernelConfig { nr_cpus, ..KernelConfig::small() };
        tune(&mut cfg);
        let k = Kernel::new(cfg, Box::new(mm_core::smp::ModelSmp::new(nr_cpus))).expect("valid model config");
        k.set_cpu(mm_core::CpuId(0));
        k
    }

    /// What `explore` saw over every execution of a race model.
    #[derive(Debug)]
    pub struct Explored {
        pub executions: usize,
        /// Executions that ended with a violation.
        pub failing: usize,
        /// The first violation message loom reached.
        pub first: Option<String>,
    }

    /// Run a race model under `builder()`.  The model returns the first
    /// violation of its execution (`violation(&k)`) instead of panicking:
    /// a panic inside a loom execution that still owns loom objects aborts
    /// the process.  Prints `loom model <name>: <n> executions (<f>
    /// failing), bound <b>, <t> ms`.
    pub fn explore<F>(name: &str, f: F) -> Explored
    where
        F: Fn() -> Option<String> + Sync + Send + 'static,
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex as StdMutex;
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let failing = std::sync::Arc::new(AtomicUsize::new(0));
        let first = std::sync::Arc::new(StdMutex::new(None::<String>));
        let (r, fl, fi) = (runs.clone(), failing.clone(), first.clone());
        let t0 = std::time::Instant::now();
        builder().check(move || {
            r.fetch_add(1, Ordering::Relaxed);
            if let Some(msg) = f() {
                fl.fetch_add(1, Ordering::Relaxed);
                fi.lock().unwrap().get_or_insert(msg);
            }
        });
        let e = Explored {
            executions: runs.load(Ordering::Relaxed),
            failing: failing.load(Ordering::Relaxed),
            first: first.lock().unwrap().take(),
        };
        eprintln!(
            "loom model {name}: {} executions ({} failing), bound {}, {} ms",
            e.executions,
            e.failing,
            preemption_bound(),
            t0.elapsed().as_millis()
        );
        e
    }

    /// `<race>_fixed`: no execution may end in a violation.
    pub fn check_fixed<F>(name: &str, f: F) -> Explored
    where
        F: Fn() -> Option<String> + Sync + Send + 'static,
    {
        let e = explore(name, f);
        assert_eq!(
            e.failing, 0,
            "loom model {name}: {} of {} executions failed; first: {:?}",
            e.failing, e.executions, e.first
        );
        e
    }

    /// `<race>_reverted`: loom must reach an execution whose violation
    /// message contains `expected` (e.g. `"sanitizer: walk-into-freed-table"`).
    pub fn check_reverted<F>(name: &str, expected: &str, f: F) -> Explored
    where
        F: Fn() -> Option<String> + Sync + Send + 'static,
    {
        let e = explore(name, f);
        match &e.first {
            None => panic!("loom model {name}: expected {expected:?}, but all {} executions passed", e.executions),
            Some(m) => assert!(m.contains(expected), "loom model {name}: failed, but not with {expected:?}: {m}"),
        }
        eprintln!("loom model {name}: first violation: {}", e.first.as_deref().unwrap_or(""));
        e
    }

    /// The first sanitizer record of this execution, as its Display
    /// ("sanitizer: <kind> on CPUn ..."), if any.
    pub fn violation(k: &Kernel) -> Option<String> {
        k.san.violations().first().map(|v| v.to_string())
    }
}
