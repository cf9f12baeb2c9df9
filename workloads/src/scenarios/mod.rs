//! Scenarios: the programs `mmemu run` / `reproduce` / `stress` execute.
//!
//! Contract:
//! - A `Scenario` is a name, a one-line description, its parameters (each
//!   an integer with a default and an allowed range), the fixes it exposes,
//!   the arch it defaults to or requires, and a `run` function.
//! - `run(&Ctx)` boots its own emu-cpu `System` from `ctx.kcfg` /
//!   `ctx.machine`, runs user threads and syscalls on every CPU until
//!   `ctx.budget` is spent, exits every mm, quiesces the machine and
//!   returns an `Outcome`: counters, violations and leaked frames as a
//!   `Measure`, plus a machine error (panic, hang) naming the CPU if one
//!   ended the run early.  `Err` means the scenario could not start (bad
//!   configuration); the message says what is wrong.
//! - Native scenarios (munmap-storm, mprotect-pingpong, madvise-dontneed,
//!   exit-storm) are written here; race scenarios are one small adapter
//!   around a race driver `races::<x>::run` (see `race_adapter`).
//! - Every syscall a native scenario makes is wrapped in a trace span
//!   (`emu_cpu::trace::syscall`), free when no trace is recorded.

mod exit_storm;
mod madvise_dontneed;
mod mprotect_pingpong;
mod munmap_storm;
mod races;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use emu_cpu::{MachineConfig, MachineError, System, TaskHandle};
use mm_core::config::{Arch, Fix, KernelConfig};
use mm_core::page::alloc::InUse;
use mm_core::sync::Arc;
use mm_core::Kernel;

pub use crate::budget::{interrupt_flag, interrupted, Budget, Until};
use crate::error::RunError;
use crate::input::{did_you_mean, parse_decimal, suggest, unknown_name};
pub use crate::outcome::{Measure, Outcome};
use crate::races::{RaceOutcome, RaceParams};

/// One integer parameter of a scenario (`--param key=value`).
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub key: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub help: &'static str,
}

/// Which arch profile a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchReq {
    /// Runs on any profile; this one unless `--arch` says otherwise.
    Default(Arch),
    /// The race only exists on this profile (e.g. arm64's broadcast TLBI
    /// that does not wait for IRQs-off CPUs).
    Requires(Arch),
}

impl ArchReq {
    pub fn arch(self) -> Arch {
        match self {
            ArchReq::Default(a) | ArchReq::Requires(a) => a,
        }
    }
}

/// Everything a scenario run is given.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub kcfg: KernelConfig,
    pub machine: MachineConfig,
    pub budget: Budget,
    pub seed: u64,
    /// Every parameter of the scenario, validated (defaults filled in).
    pub params: BTreeMap<&'static str, u64>,
    /// Race scenarios: stop at the first round with a violation.
    pub stop_on_violation: bool,
}

impl Ctx {
    pub fn param(&self, key: &str) -> u64 {
        *self.params.get(key).unwrap_or_else(|| panic!("scenario parameter '{key}' was not validated"))
    }
    pub fn nr_cpus(&self) -> usize {
        self.kcfg.nr_cpus
    }
}

pub type RunFn = fn(&Ctx) -> Result<Outcome, RunError>;

/// One entry of the registry.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub params: &'static [ParamSpec],
    /// Fixes whose reverted form this scenario shows (violations or counts).
    pub exposes: &'static [Fix],
    pub arch: ArchReq,
    /// Fewest CPUs the scenario makes sense on.
    pub min_cpus: usize,
    /// Rounds when neither `--iterations` nor `--seconds` is given.
    pub default_iterations: u64,
    /// Emulated RAM (page frames) a run of this scenario asks for, before
    /// rounding (`ram_frames`); the CLI checks it against the host first.
    pub frames: fn(&Ctx) -> usize,
    pub run: RunFn,
}

/// `Scenario::frames` of the race scenarios: the configuration's RAM.
pub(crate) fn config_frames(ctx: &Ctx) -> usize {
    ctx.kcfg.ram_frames
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario").field("name", &self.name).finish()
    }
}

impl Scenario {
    /// Validate `key=value` pairs against this scenario's parameters and
    /// fill in defaults.  The error names the key and the allowed range.
    pub fn parse_params(&self, pairs: &[String]) -> Result<BTreeMap<&'static str, u64>, String> {
        let mut out: BTreeMap<&'static str, u64> = self.params.iter().map(|p| (p.key, p.default)).collect();
        let keys = || {
            if self.params.is_empty() {
                format!("scenario {} takes no parameters", self.name)
            } else {
                format!(
                    "allowed keys for {}: {}",
                    self.name,
                    self.params.iter().map(|p| p.key).collect::<Vec<_>>().join(", ")
                )
            }
        };
        let mut seen: BTreeMap<&'static str, &String> = BTreeMap::new();
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("--param '{pair}': expected KEY=VALUE; {}", keys()))?;
            let spec = self.params.iter().find(|p| p.key == k).ok_or_else(|| {
                if self.params.is_empty() {
                    format!("--param {pair}: {}", keys())
                } else {
                    let names: Vec<&str> = self.params.iter().map(|p| p.key).collect();
                    let dym = did_you_mean(&suggest(k, &names));
                    format!("scenario {} has no parameter '{k}'{dym}; allowed: {}", self.name, names.join(", "))
                }
            })?;
            let n = parse_decimal(v, spec.min, spec.max)
                .map_err(|e| format!("--param {k}={v}: {}; allowed {}..={}", e.what(), spec.min, spec.max))?;
            if let Some(first) = seen.insert(spec.key, pair) {
                return Err(format!("--param {k} given twice ({first}, {pair}); allowed once per key"));
            }
            out.insert(spec.key, n);
        }
        Ok(out)
    }
}

/// Every scenario, in `mmemu list` order.
pub fn all() -> &'static [Scenario] {
    REGISTRY
}

/// Look a scenario up by name; the error lists the names.
pub fn find(name: &str) -> Result<&'static Scenario, String> {
    all()
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unknown_name("scenario", name, &all().iter().map(|s| s.name).collect::<Vec<_>>()))
}

/// Which scenario (and arch) shows a switch reverted: `mmemu reproduce`.
#[derive(Clone, Copy, Debug)]
pub struct Exposer {
    pub fix: Fix,
    pub scenario: &'static str,
    pub arch: Arch,
    /// A correctness fix: reverted must give violations, on must give none.
    /// Otherwise the difference is in the counters (IPIs, batches).
    pub correctness: bool,
}

/// Switch → exposing scenario (DESIGN.md "Fixes as switches").
pub const EXPOSERS: &[Exposer] = &[
    Exposer { fix: Fix::KhugepagedGupFastIpi, scenario: "khugepaged-gup", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::GupPmdRecheck, scenario: "khugepaged-gup-pin", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::DelayRmap, scenario: "writeback-race", arch: Arch::X86, correctness: true },
    Exposer { fix: Fix::HugetlbUnshareSync, scenario: "hugetlb-unshare-gup", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::HugetlbUnshareBatched, scenario: "fork-exit-hugetlb", arch: Arch::X86, correctness: false },
    Exposer { fix: Fix::SecondaryTlbOnFlush, scenario: "iommu-sva", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::FolioPagesBatching, scenario: "large-folio-zap", arch: Arch::X86, correctness: false },
    Exposer { fix: Fix::NestedFlushDetect, scenario: "nested-zap", arch: Arch::X86, correctness: true },
    Exposer { fix: Fix::LazyTlbFreedTables, scenario: "lazy-tlb", arch: Arch::X86, correctness: true },
];

pub fn exposer(fix: Fix) -> &'static Exposer {
    EXPOSERS.iter().find(|e| e.fix == fix).expect("every Fix has an exposer (test `every_fix_has_an_exposer`)")
}

/// `mm_core::types::NR_CPUS`: the largest `--cpus`.
pub const MAX_CPUS: usize = mm_core::types::NR_CPUS;

static REGISTRY: &[Scenario] = &[
    munmap_storm::SCENARIO,
    mprotect_pingpong::SCENARIO,
    madvise_dontneed::SCENARIO,
    exit_storm::SCENARIO,
    races::LAZY_TLB,
    races::GUP_TABLE_FREE,
    races::KHUGEPAGED_GUP,
    races::KHUGEPAGED_GUP_FILE,
    races::KHUGEPAGED_GUP_PIN,
    races::HUGETLB_UNSHARE_GUP,
    races::FORK_EXIT_HUGETLB,
    races::WRITEBACK_RACE,
    races::NESTED_ZAP,
    races::IOMMU_SVA,
    races::IOMMU_SVA_DMA,
    races::LARGE_FOLIO_ZAP,
];

// ---------------------------------------------------------------------------
// Helpers shared by the native scenarios.

/// The largest emulated RAM a run may have: `KernelConfig::validate`'s
/// bound (2^24 frames, 64 GiB of 4 KiB pages).
pub const MAX_RAM_FRAMES: usize = 1 << 24;

/// The emulated RAM a native scenario boots with: what it asked for,
/// rounded up to a power of two, at least the configuration's default.
/// More than `MAX_RAM_FRAMES` is refused with the parameters that asked
/// for it (never silently capped: the run would then fail for lack of RAM).
pub(crate) fn ram_frames(ctx: &Ctx, min_frames: usize) -> Result<usize, String> {
    let frames = ctx.kcfg.ram_frames.max(min_frames.next_power_of_two());
    if frames > MAX_RAM_FRAMES {
        return Err(format!(
            "--cpus {} with {} needs {frames} emulated page frames; at most {MAX_RAM_FRAMES} \
             (lower --cpus or the parameters)",
            ctx.nr_cpus(),
            describe_params(ctx)
        ));
    }
    Ok(frames)
}

/// `key=value ...` of the run's parameters, for messages.
pub fn describe_params(ctx: &Ctx) -> String {
    if ctx.params.is_empty() {
        return "no parameters".to_string();
    }
    ctx.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

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
        if let Err(e) = b.sys.quiesce(b.sys.machine.config().hang_timeout) {
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
        metrics: BTreeMap::new(),
        leak_not_checked,
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
fn syscall_entry(k: &Kernel, name: &'static str) -> Option<emu_cpu::trace::Span> {
    let cpu = k.this_cpu();
    crate::inject::point(cpu, name);
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

// ---------------------------------------------------------------------------
// Race scenarios.

/// Run a race driver under `ctx`: one call for `--iterations`, repeated
/// chunks of `chunk` rounds (each on a fresh machine) for `--seconds`.
/// Counters of all chunks are summed; a driver's failure ends the run (the
/// outcome's `error` names the CPU or the round); a configuration the
/// driver refuses is the run's `Err`.
pub fn race_adapter(
    ctx: &Ctx,
    chunk: u64,
    run: fn(&RaceParams) -> Result<RaceOutcome, RunError>,
) -> Result<Outcome, RunError> {
    chunked(ctx, chunk, run)
}

/// Call the driver `f` once (`--iterations`) or in chunks of `chunk`
/// rounds until the time is up (`--seconds`), summing what the kernels
/// measured.  Each call's `RaceParams::stop` is the run's deadline and
/// interrupt; its seed is `--seed` plus the call's number.  Frames still in
/// use after a call are leaks (the harness's teardown ran).
pub fn chunked(
    ctx: &Ctx,
    chunk: u64,
    mut f: impl FnMut(&RaceParams) -> Result<RaceOutcome, RunError>,
) -> Result<Outcome, RunError> {
    let t0 = Instant::now();
    let mut out = Outcome {
        iterations: 0,
        ops: 0,
        elapsed: Duration::ZERO,
        overshoot: None,
        teardown: Duration::ZERO,
        interrupted: false,
        program_digest: 0,
        measure: Measure::empty(ctx.nr_cpus()),
        error: None,
        first_violation_at: None,
        metrics: BTreeMap::new(),
        leak_not_checked: None,
    };
    let until = Until::new(ctx.budget);
    let mut call = 0u64;
    loop {
        let iterations = match ctx.budget {
            Budget::Iterations(n) => n,
            Budget::Seconds(_) => chunk.max(1),
        };
        let p = RaceParams {
            kcfg: ctx.kcfg.clone(),
            machine: ctx.machine,
            iterations,
            seed: ctx.seed.wrapping_add(call),
            stop_on_violation: ctx.stop_on_violation,
            stop: until.deadline_only(),
            params: ctx.params.clone(),
        };
        match f(&p) {
            Ok(c) => {
                if out.first_violation_at.is_none() {
                    out.first_violation_at = c.first_violation_at.map(|r| r + out.iterations);
                }
                out.iterations += c.iterations;
                out.ops += c.iterations;
                if c.leaked.is_none() {
                    out.leak_not_checked = Some("RCU callbacks were still pending when the driver returned".into());
                }
                out.measure.add(&Measure::from_kernel(&c.kernel, c.leaked));
            }
            Err(e) if e.is_config() => return Err(e),
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
        call += 1;
        let stop = matches!(ctx.budget, Budget::Iterations(_))
            || (ctx.stop_on_violation && out.first_violation_at.is_some())
            || !until.more(call);
        if stop {
            break;
        }
    }
    out.elapsed = t0.elapsed();
    out.overshoot = until.overshoot();
    out.interrupted = interrupted();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fix_has_an_exposer() {
        for f in Fix::ALL {
            assert_eq!(exposer(f).fix, f);
        }
    }

    #[test]
    fn names_are_unique_and_params_have_sane_defaults() {
        let mut names: Vec<_> = all().iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all().len());
        for s in all() {
            for p in s.params {
                assert!(p.min <= p.default && p.default <= p.max, "{} {}", s.name, p.key);
            }
        }
    }

    #[test]
    fn param_validation_messages() {
        let s = find("munmap-storm").unwrap();
        assert!(s.parse_params(&["nope=1".into()]).unwrap_err().contains("allowed: "));
        assert!(s.parse_params(&["pages=0".into()]).unwrap_err().contains("allowed 1..="));
        assert!(s.parse_params(&["pages".into()]).unwrap_err().contains("KEY=VALUE"));
        assert_eq!(s.parse_params(&["pages=8".into()]).unwrap()["pages"], 8);
    }
}
