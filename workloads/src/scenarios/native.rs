//! What the script interpreter runs on (it was the Rust storm
//! scenarios' shared code, hence the name): boot (the machine, the leak-check
//! baseline, the budget), the work each thread publishes as it goes
//! (`WorkLog`), the seed's generator (`Rng`), the end of a run (`finish`:
//! exit every mm, quiesce, leak check) and the syscall wrappers (`sys`:
//! an `--inject-panic` point and a trace span each).

use std::collections::BTreeMap;
use std::time::Instant;

use emu_cpu::{MachineError, System, TaskHandle};
use mm_core::page::alloc::InUse;
use mm_core::sync::Arc;
use mm_core::Kernel;

use super::{ram_frames, Ctx};
use crate::budget::{interrupted, Until};
use crate::error::RunError;
use crate::outcome::{Measure, Outcome};

/// A booted system, what the allocator held before any mm existed, and
/// the budget (which starts once the machine is up).
pub(crate) struct Booted {
    pub sys: System,
    pub baseline: InUse,
    pub t0: Instant,
    pub until: Until,
}

pub(crate) fn boot(ctx: &Ctx, min_frames: usize) -> Result<Booted, RunError> {
    let mut kcfg = ctx.kcfg.clone();
    kcfg.ram_frames = ram_frames(ctx, min_frames).map_err(RunError::Config)?;
    let sys = System::new(kcfg, ctx.machine).map_err(RunError::Config)?;
    crate::inject::attach(sys.kernel());
    let baseline = sys.kernel().alloc.in_use();
    Ok(Booted { sys, baseline, t0: Instant::now(), until: Until::new(ctx.budget) })
}

/// Rounds, ops and the digest of the seed-drawn choices of a native
/// scenario (summed over its threads).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Work {
    pub rounds: u64,
    pub ops: u64,
    pub digest: u64,
}

impl std::ops::AddAssign for Work {
    fn add_assign(&mut self, o: Work) {
        self.rounds += o.rounds;
        self.ops += o.ops;
        self.digest ^= o.digest;
    }
}

#[derive(Default)]
struct WorkSlot {
    rounds: std::sync::atomic::AtomicU64,
    ops: std::sync::atomic::AtomicU64,
    digest: std::sync::atomic::AtomicU64,
}

/// Every thread's `Work`, published as it happens: the work of a thread
/// that panics or hangs stays in the report.  One cache line per thread.
#[derive(Clone)]
pub(crate) struct WorkLog(Arc<[crossbeam::utils::CachePadded<WorkSlot>]>);

impl WorkLog {
    pub fn new(threads: usize) -> WorkLog {
        WorkLog((0..threads).map(|_| Default::default()).collect())
    }
    /// Thread `i`'s counter: `op()` / `round()` publish at once.
    pub fn thread(&self, i: usize) -> ThreadWork {
        ThreadWork { log: self.clone(), i, w: Work::default() }
    }
    pub fn total(&self) -> Work {
        use std::sync::atomic::Ordering::Relaxed;
        let mut t = Work::default();
        for s in self.0.iter() {
            t += Work { rounds: s.rounds.load(Relaxed), ops: s.ops.load(Relaxed), digest: s.digest.load(Relaxed) };
        }
        t
    }
}

/// One thread's side of a `WorkLog`.
pub(crate) struct ThreadWork {
    log: WorkLog,
    i: usize,
    w: Work,
}

impl ThreadWork {
    pub fn op(&mut self) {
        self.w.ops += 1;
        self.log.0[self.i].ops.store(self.w.ops, std::sync::atomic::Ordering::Relaxed);
    }
    /// A round is done; `rng` is the thread's generator (its digest so far).
    pub fn round(&mut self, rng: &Rng) {
        self.w.rounds += 1;
        self.w.digest = rng.digest();
        let s = &self.log.0[self.i];
        s.rounds.store(self.w.rounds, std::sync::atomic::Ordering::Relaxed);
        s.digest.store(self.w.digest, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn rounds(&self) -> u64 {
        self.w.rounds
    }
    pub fn ops(&self) -> u64 {
        self.w.ops
    }
}

/// Join `hs` (every one, even after an error); the first machine error is
/// kept in `err`.  The work is in the threads' `WorkLog`.
pub(crate) fn join_into(b: &Booted, hs: Vec<TaskHandle<()>>, err: &mut Option<MachineError>) {
    if let Err(e) = b.sys.join_all(hs) {
        err.get_or_insert(e);
    }
}

/// End of a native run: `cleanup` (exit every mm) on CPU0, quiesce, leak
/// check against the boot baseline, counters.
pub(crate) fn finish<F>(b: Booted, work: Work, mut err: Option<MachineError>, cleanup: F) -> Outcome
where
    F: FnOnce(&Arc<Kernel>) + Send + 'static,
{
    let elapsed = b.t0.elapsed();
    let overshoot = b.until.overshoot();
    let t_teardown = Instant::now();
    if err.is_none() {
        if let Err(e) = b.sys.run_kthread(mm_core::CpuId(0), cleanup) {
            err = Some(e);
        }
    }
    if err.is_none() {
        if let Err(e) = b.sys.release_lazy_mms(b.sys.machine.config().hang_timeout) {
            err = Some(e);
        }
    }
    let k = b.sys.kernel().clone();
    let leaked = if err.is_none() { Some(sub(k.alloc.in_use(), b.baseline)) } else { None };
    let leak_not_checked = leaked.is_none().then(|| "the run ended early".to_string());
    let measure = Measure::from_kernel(&k, leaked);
    Outcome {
        iterations: work.rounds,
        ops: work.ops,
        elapsed,
        overshoot,
        teardown: t_teardown.elapsed(),
        interrupted: interrupted(),
        program_digest: work.digest,
        measure,
        error: err.map(RunError::Machine),
        first_violation_at: None,
        first_violation_after: None,
        metrics: BTreeMap::new(),
        leak_not_checked,
        violations_expected: false,
    }
}

fn sub(a: InUse, b: InUse) -> InUse {
    InUse {
        anon: a.anon - b.anon,
        file: a.file - b.file,
        page_table: a.page_table - b.page_table,
        kernel: a.kernel - b.kernel,
        hugetlb: a.hugetlb - b.hugetlb,
    }
}

/// splitmix64: a tiny deterministic generator (one per thread, seeded from
/// `--seed` and the CPU).  It also folds every value it hands out into a
/// digest, so a report can show which program the seed chose.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rng {
    state: u64,
    digest: u64,
}

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        Rng { state: seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15), digest: 0 }
    }
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let z = z ^ (z >> 31);
        // FNV-1a style fold: order-sensitive, cheap.
        self.digest = (self.digest ^ z).wrapping_mul(0x0000_0100_0000_01b3);
        z
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// `0..n` in an order drawn from the generator (Fisher-Yates).
    pub fn permutation(&mut self, n: u64) -> Vec<u64> {
        let mut v: Vec<u64> = (0..n).collect();
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }
    /// Digest of every value handed out so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

/// Syscall entry of the native scenarios: an injection point
/// (`--inject-panic`) and a trace span (free when no trace is recorded).
pub(crate) fn syscall_entry(k: &Kernel, name: &'static str) -> Option<emu_cpu::trace::Span> {
    let cpu = k.this_cpu();
    crate::inject::point(k, cpu, name);
    emu_cpu::trace::syscall(cpu, name)
}

/// Syscalls with a trace span each (the scenarios' syscall entry).
pub(crate) mod sys {
    use super::syscall_entry;
    use mm_core::mm::MmStruct;
    use mm_core::ops::{self, MmError};
    use mm_core::sync::Arc;
    use mm_core::Kernel;

    pub fn mmap_anon(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64) -> Result<(), MmError> {
        let _t = syscall_entry(k, "mmap");
        ops::mmap_anon(k, mm, addr, len, true)
    }
    pub fn munmap(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64) -> Result<(), MmError> {
        let _t = syscall_entry(k, "munmap");
        ops::munmap(k, mm, addr, len)
    }
    pub fn mprotect(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64, write: bool) -> Result<(), MmError> {
        let _t = syscall_entry(k, "mprotect");
        ops::mprotect(k, mm, addr, len, true, write)
    }
    pub fn madvise_dontneed(k: &Kernel, mm: &Arc<MmStruct>, addr: u64, len: u64) -> Result<(), MmError> {
        let _t = syscall_entry(k, "madvise");
        ops::madvise_dontneed(k, mm, addr, len)
    }
    pub fn fork(k: &Kernel, mm: &Arc<MmStruct>) -> Result<Arc<MmStruct>, MmError> {
        let _t = syscall_entry(k, "fork");
        ops::dup_mmap(k, mm)
    }
    pub fn exit(k: &Kernel, mm: &Arc<MmStruct>) {
        let _t = syscall_entry(k, "exit");
        ops::exit_mm(k, mm)
    }
}
