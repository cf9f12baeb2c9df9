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
    pub fn builder() -> loom::model::Builder {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(preemption_bound());
        b
    }

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
        eprintln!(
            "loom model {name}: {n} executions, bound {}, {} ms",
            preemption_bound(),
            t0.elapsed().as_millis()
        );
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
}
