//! `mmemu host FILE`: a script run on the real host kernel instead of the
//! emulator (docs/HOST.md).  One forked process per script process, one
//! pinned std::thread per script thread (script CPU n on host CPU n), the
//! steps as the syscalls they name, and the host's own counters before and
//! after: /proc/interrupts' TLB and CAL rows per CPU, /proc/vmstat's
//! nr_tlb_* (when the kernel keeps them), page faults (getrusage of the
//! children).  What the host cannot show (violations, leaks, the
//! emulator's internal counters) is null with the reason.
//!
//! - `refuse`: what the host cannot run, refused before anything runs.
//! - `runner`: the processes and threads, step by step.
//! - `arena`: the shared memory (futex barriers, the start gate, counts).
//! - `counters`: /proc/interrupts, /proc/vmstat, schedstat, getrusage.
//! - `sys`: the libc calls.
//! - `report`: the report (the emulator's JSON shape) and the trust check.
//! - `diff`: `mmemu diff`'s comparison (profiles, medians, tolerance, table).

pub mod arena;
pub mod counters;
pub mod diff;
pub mod refuse;
pub mod report;
mod runner;
pub mod sys;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::script::ast::{Contents, Placement, Script, Target};
use crate::script::check::const_eval;
use crate::script::check::{BudgetSpec, Checked, PAGE};
use crate::script::judge::{judge, Judged, Observed};

pub use report::HostReport;
use runner::{HostFile, Inst, Plan};

/// What `mmemu host` was asked for.
#[derive(Clone, Debug)]
pub struct HostOptions {
    pub file: String,
    pub params: Vec<(String, u64)>,
    /// `--iterations` / `--seconds`; None: the header's budget.
    pub budget: Option<Budget>,
    pub seed: u64,
    /// `--cpus N`: the script's CPUs (`$ncpus`, `on each cpu`) instead of
    /// its header's.
    pub cpus: Option<u64>,
}

/// Why a host run produced no report.
#[derive(Debug)]
pub enum HostError {
    /// Bad script or refused by the host (exit 2): one line.
    Refused(String),
    /// Could not set the run up (exit 1).
    Failed(String),
}

/// What a host run measured.
#[derive(Clone, Debug)]
pub struct Measured {
    pub before: counters::Interrupts,
    pub after: counters::Interrupts,
    pub vmstat_before: BTreeMap<String, u64>,
    pub vmstat_after: BTreeMap<String, u64>,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub rounds: u64,
    pub ops: u64,
    pub reads_failed: u64,
    pub elapsed: Duration,
    pub threads: Vec<report::ThreadRecord>,
    pub error: Option<String>,
    pub interrupted: bool,
    pub digest: u64,
    /// The first `read … expect` that saw another value.
    pub bad_read: Option<String>,
}

impl Measured {
    pub fn tlb(&self) -> Vec<u64> {
        delta(&self.before.tlb, &self.after.tlb)
    }
    pub fn cal(&self) -> Vec<u64> {
        delta(&self.before.cal, &self.after.cal)
    }
    pub fn vmstat(&self) -> BTreeMap<String, u64> {
        self.vmstat_after
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(self.vmstat_before.get(k).copied().unwrap_or(0))))
            .collect()
    }
}

fn delta(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect()
}

/// Why the host shows no emulator-internal value.
pub const NOT_OBSERVABLE: &str = "not observable on a host";

impl Observed for Measured {
    fn counter(&self, name: &str, cpu: Option<usize>) -> Result<f64, String> {
        let per_cpu = match name {
            "irq_tlb_count" => self.tlb(),
            "irq_call_count" => self.cal(),
            n if n.starts_with("nr_tlb_") => {
                let Some(v) = self.vmstat().get(n).copied() else {
                    return Err(format!("{NOT_OBSERVABLE}: /proc/vmstat has no {n} (CONFIG_DEBUG_TLBFLUSH is off)"));
                };
                return match cpu {
                    None => Ok(v as f64),
                    Some(_) => Err(format!("{NOT_OBSERVABLE}: /proc/vmstat's {n} is not per CPU")),
                };
            }
            n => return Err(format!("{NOT_OBSERVABLE}: {n} is an emulator counter")),
        };
        Ok(match cpu {
            Some(i) => per_cpu.get(i).copied().unwrap_or(0) as f64,
            None => per_cpu.iter().sum::<u64>() as f64,
        })
    }
    fn violations(&self, _kind: Option<&str>) -> Result<f64, String> {
        Err(format!("{NOT_OBSERVABLE}: no sanitizer watches the real TLB"))
    }
    fn leaked(&self) -> Result<f64, String> {
        Err(format!("{NOT_OBSERVABLE}: the host's page allocator is not audited"))
    }
    fn rounds(&self) -> u64 {
        self.rounds
    }
    fn ops(&self) -> u64 {
        self.ops
    }
    fn reads_failed(&self) -> u64 {
        self.reads_failed
    }
}

/// Read, check and refuse-or-run `o.file` on this host.
pub fn run(o: &HostOptions) -> Result<HostReport, HostError> {
    let src = std::fs::read(&o.file).map_err(|e| {
        HostError::Refused(format!("cannot read script '{}': {e}; allowed a readable .mmemu file", o.file))
    })?;
    let src = String::from_utf8(src).map_err(|_| {
        HostError::Refused(format!("script '{}' is not UTF-8 text; allowed a UTF-8 .mmemu file", o.file))
    })?;
    run_source(o, &src, &refuse::HostFacts::this_host())
}

/// `run` of a script already read, with the host's facts given.
pub fn run_source(o: &HostOptions, src: &str, facts: &refuse::HostFacts) -> Result<HostReport, HostError> {
    let file = o.file.as_str();
    let script = crate::script::parse(file, src).map_err(|e| HostError::Refused(e.to_string()))?;
    let mut checked = crate::script::check(file, &script, &o.params).map_err(|e| HostError::Refused(e.to_string()))?;
    if let Some(n) = o.cpus {
        checked.cpus = n;
    }
    if let Some(e) = refuse::refusal(file, &script, &checked, facts) {
        return Err(HostError::Refused(e.to_string()));
    }
    let budget = o.budget.unwrap_or(match checked.budget {
        BudgetSpec::Rounds(n) => Budget::Iterations(n),
        BudgetSpec::Millis(ms) => Budget::Seconds(ms as f64 / 1000.0),
    });
    let plan = plan(file, script, checked, budget, o.seed, None)?;
    let plan = Arc::new(plan);
    let m = execute(&plan).map_err(HostError::Failed)?;
    let mut expectations = Vec::new();
    let mut failed = Vec::new();
    for e in &plan.script.expects {
        let j = judge(file, e, &m, plan.checked.cpus, &plan.checked).map_err(|e| HostError::Failed(e.to_string()))?;
        if let Judged::Failed(f) = &j {
            failed.push(f.clone());
        }
        expectations.push((e.span.line, j));
    }
    if m.reads_failed > 0 && !plan.script.expects.iter().any(|e| matches!(e.target, Target::ReadsFailed)) {
        failed.push(m.bad_read.clone().unwrap_or_else(|| format!("{} reads saw another value", m.reads_failed)));
    }
    Ok(HostReport::new(&plan.checked, budget, o.seed, &m, expectations, failed))
}

/// Instances, barriers, held threads and files: everything fixed before
/// the first fork.
/// `adopt`: an `exec` helper's files, the descriptors it inherited (in
/// declaration order), instead of new temporary files.
fn plan(
    file: &str,
    script: Script,
    checked: Checked,
    budget: Budget,
    seed: u64,
    mut adopt: Option<Vec<std::fs::File>>,
) -> Result<Plan, HostError> {
    let n = checked.cpus;
    let cfg = |e: crate::error::RunError| HostError::Refused(e.to_string());
    let mut insts = Vec::new();
    let mut held = BTreeMap::new();
    for (ti, t) in script.threads.iter().enumerate() {
        let cpus: Vec<u64> = match &t.placement {
            Placement::Cpu(e) => vec![const_eval(e, &checked, n, 0).map_err(cfg)?],
            Placement::EachCpu => (0..n).collect(),
            Placement::Cpus(a, b) => {
                (const_eval(a, &checked, n, 0).map_err(cfg)?..const_eval(b, &checked, n, 0).map_err(cfg)?).collect()
            }
        };
        let each = !matches!(t.placement, Placement::Cpu(_));
        let h = if t.held {
            let i = held.len();
            held.insert(t.name.text.clone(), i);
            Some(i)
        } else {
            None
        };
        for cpu in cpus {
            if cpu >= n {
                return Err(HostError::Refused(format!(
                    "{file}:{}:{}: found thread {} on CPU {cpu} with {n} CPUs (--cpus); allowed CPUs 0..{}",
                    t.span.line,
                    t.span.col,
                    t.name.text,
                    n - 1
                )));
            }
            let name = if each { format!("{}.{cpu}", t.name.text) } else { t.name.text.clone() };
            insts.push(Inst { thread: ti, name, cpu, process: t.process.text.clone(), first: 0, stream: 0, held: h });
        }
    }
    if insts.len() > arena::MAX_THREADS || held.len() > arena::MAX_HELD {
        return Err(HostError::Refused(format!(
            "{file}: found more than {} threads or {} held ones; allowed at most that many on the host",
            arena::MAX_THREADS,
            arena::MAX_HELD
        )));
    }
    // Seed streams as the interpreter's: threads that start together take
    // 0, 1, … in declaration order, `first` threads the numbers after them;
    // `first` threads run one by one in declaration order.
    let together = insts.iter().filter(|i| !script.threads[i.thread].first).count() as u64;
    let (mut a, mut f, mut turn) = (0u64, together, 0u32);
    for i in insts.iter_mut() {
        if script.threads[i.thread].first {
            turn += 1;
            i.first = turn;
            i.stream = f;
            f += 1;
        } else {
            i.stream = a;
            a += 1;
        }
    }
    let mut barriers = BTreeMap::new();
    for i in &insts {
        let mut names = Vec::new();
        runner::barrier_names(&script.threads[i.thread].body, &mut names);
        for b in names {
            let next = barriers.len();
            barriers.entry(b).or_insert(next);
        }
    }
    if barriers.len() > arena::MAX_BARRIERS {
        return Err(HostError::Refused(format!(
            "{file}: found more than {} barriers; allowed at most that many on the host",
            arena::MAX_BARRIERS
        )));
    }
    let mut files = Vec::new();
    for f in &script.files {
        let v = const_eval(&f.size.expr, &checked, n, 0).map_err(cfg)?;
        let pages = if f.size.pages { v } else { v / PAGE };
        let word = match &f.contents {
            Contents::Zero => None,
            Contents::Index => Some(None),
            Contents::Fill(e) => Some(Some(const_eval(e, &checked, n, 0).map_err(cfg)?)),
        };
        let file = match adopt.as_mut() {
            Some(fds) if !fds.is_empty() => fds.remove(0),
            Some(_) => return Err(HostError::Failed(format!("{file}: the exec helper lacks file {}", f.name.text))),
            None => temp_file(pages, word).map_err(HostError::Failed)?,
        };
        files.push(HostFile { name: f.name.text.clone(), file, pages });
    }
    Ok(Plan { file: file.to_string(), script, checked, insts, nfirst: turn, barriers, held, files, budget, seed })
}

/// A file of `pages` pages in the temporary directory, unlinked at once
/// (only the descriptor keeps it: nothing is left behind, whatever
/// happens to the run).  `word`: page i's first word is i (`Some(None)`),
/// V (`Some(Some(V))`), or every byte 0 (None).  Written and synced, so
/// its pages start clean in the page cache, as the emulator's disk.
fn temp_file(pages: u64, word: Option<Option<u64>>) -> Result<std::fs::File, String> {
    use std::os::unix::fs::FileExt as _;
    let dir = std::env::temp_dir();
    let mut last = String::new();
    for k in 0..100u32 {
        let path = dir.join(format!("mmemu-host-{}-{k}", std::process::id()));
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                f.set_len(pages * PAGE).map_err(|e| format!("cannot size {}: {e}", path.display()))?;
                if let Some(w) = word {
                    for i in 0..pages {
                        let v = w.unwrap_or(i);
                        f.write_all_at(&v.to_ne_bytes(), i * PAGE)
                            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    }
                }
                f.sync_all().map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
                return Ok(f);
            }
            Err(e) => last = format!("{}: {e}", path.display()),
        }
    }
    Err(format!("cannot create a temporary file: {last}"))
}

/// Fork the processes, open the gate, wait for every process, and read
/// the counters around it.
fn execute(plan: &Arc<Plan>) -> Result<Measured, String> {
    let arena = arena::Arena::map()?;
    arena.working.store(plan.insts.len() as u32, Ordering::SeqCst);
    for i in &plan.insts {
        let mut names = Vec::new();
        runner::barrier_names(&plan.script.threads[i.thread].body, &mut names);
        for b in names {
            arena.barriers[plan.barriers[&b]].parties.fetch_add(1, Ordering::SeqCst);
        }
    }
    // Nothing buffered may be written twice by a child.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let faults0 = counters::rusage(libc::RUSAGE_CHILDREN);
    let mut pids: Vec<(i32, String)> = Vec::new();
    for p in &plan.script.processes {
        if !plan.insts.iter().any(|i| i.process == p.text) {
            continue;
        }
        // SAFETY: fork of mmemu's (single-threaded) main thread; the child
        // only runs `process_main`, which _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = format!("fork: {}", sys::errno());
            arena.abort();
            reap(&pids);
            return Err(e);
        }
        if pid == 0 {
            runner::process_main(plan.clone(), arena, &p.text);
        }
        pids.push((pid, p.text.clone()));
    }
    // Every thread pinned and at the gate (or a process failed early).
    let t_ready = Instant::now();
    while (arena.ready.load(Ordering::SeqCst) as usize) < plan.insts.len() && !arena.aborted() {
        if t_ready.elapsed() > Duration::from_secs(30) {
            arena.abort();
            reap(&pids);
            return Err("the script's threads did not start within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = counters::interrupts()?;
    let vm0 = counters::vmstat_tlb();
    let t0 = Instant::now();
    arena.gate_open_ns.store(counters::monotonic_ns(), Ordering::SeqCst);
    arena.gate.store(1, Ordering::SeqCst);
    sys::futex_wake(&arena.gate);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dog = watchdog(arena, &pids, done.clone());
    let mut error = None;
    let mut left = pids.clone();
    while !left.is_empty() {
        let mut st = 0i32;
        // SAFETY: `st` is a writable int; -1 waits for any child of ours.
        let pid = unsafe { libc::waitpid(-1, &mut st, 0) };
        if pid < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        let Some(k) = left.iter().position(|(p, _)| *p == pid) else { continue };
        let (_, name) = left.remove(k);
        let bad = if libc::WIFSIGNALED(st) {
            Some(format!("process {name} was killed by {}", sys::signal_name(libc::WTERMSIG(st))))
        } else if libc::WEXITSTATUS(st) != 0 {
            Some(format!("process {name} exited with status {}", libc::WEXITSTATUS(st)))
        } else {
            None
        };
        if let Some(b) = bad {
            error.get_or_insert(b);
            arena.abort();
        }
    }
    let elapsed = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let hung = dog.join().unwrap_or(false);
    if hung {
        error.get_or_insert(format!(
            "no step started for {} s: the run hung; its processes were killed",
            HANG_TIMEOUT.as_secs()
        ));
    }
    let after = counters::interrupts()?;
    let vm1 = counters::vmstat_tlb();
    let faults1 = counters::rusage(libc::RUSAGE_CHILDREN);
    // A faulting access names its thread's step.
    let ft = arena.fault_thread.load(Ordering::SeqCst);
    if ft > 0 {
        let i = (ft - 1) as usize;
        let step = arena.threads.get(i).map_or(0, |s| s.step.load(Ordering::SeqCst));
        let sig = sys::signal_name(arena.fault_signal.load(Ordering::SeqCst) as i32);
        let who = plan.insts.get(i).map_or("?".to_string(), |x| x.name.clone());
        error = Some(format!(
            "{}:{}:{}: thread {who}: the access faulted ({sig}) on the host",
            plan.file,
            step >> 32,
            step & 0xffff_ffff
        ));
    } else if let Some(e) = arena.error.get() {
        error = Some(e);
    }
    let threads = plan
        .insts
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let s = &arena.threads[i];
            report::ThreadRecord {
                name: x.name.clone(),
                cpu: x.cpu,
                spun: s.spun.load(Ordering::SeqCst) != 0,
                spin_run_ns: s.spin_run_ns.load(Ordering::SeqCst),
                spin_wall_ns: s.spin_wall_ns.load(Ordering::SeqCst),
                run_ns: s.run_ns.load(Ordering::SeqCst),
                wall_ns: s.wall_ns.load(Ordering::SeqCst),
                nivcsw: s.nivcsw.load(Ordering::SeqCst),
                nvcsw: s.nvcsw.load(Ordering::SeqCst),
                delay_ns: (s.delay_known.load(Ordering::SeqCst) != 0).then(|| s.delay_ns.load(Ordering::SeqCst)),
                first: x.first > 0,
            }
        })
        .collect();
    let rounds = (0..plan.insts.len()).map(|i| arena.threads[i].rounds.load(Ordering::SeqCst)).sum();
    let ops = (0..plan.insts.len()).map(|i| arena.threads[i].ops.load(Ordering::SeqCst)).sum::<u64>()
        + arena.spawned_ops.load(Ordering::SeqCst);
    let digest = (0..plan.insts.len()).fold(0, |d, i| d ^ arena.threads[i].digest.load(Ordering::SeqCst));
    let reads_failed = arena.reads_failed.load(Ordering::SeqCst);
    Ok(Measured {
        before,
        after,
        vmstat_before: vm0,
        vmstat_after: vm1,
        minor_faults: faults1.2.saturating_sub(faults0.2),
        major_faults: faults1.3.saturating_sub(faults0.3),
        rounds,
        ops,
        reads_failed,
        elapsed,
        threads,
        error,
        interrupted: crate::budget::interrupted(),
        digest,
        bad_read: arena.bad_read.get(),
    })
}

/// `mmemu __host-exec` (never typed by a user): the helper an `exec C { … }`
/// step execve's, so that C has a fresh mm.  Its state comes in the
/// environment (`runner::EXEC_ENV`); it runs C's block and _exits.
pub fn exec_helper() -> ! {
    let st = std::env::var(runner::EXEC_ENV).unwrap_or_default();
    let fail = |m: String| -> ! {
        let _ = writeln!(std::io::stderr(), "mmemu __host-exec: {m}");
        // SAFETY: ends this helper process at once.
        unsafe { libc::_exit(1) }
    };
    let e = runner::ExecState::decode(&st).unwrap_or_else(|| fail("no or bad exec state".into()));
    let arena = arena::Arena::attach(e.arena_fd).unwrap_or_else(|m| fail(m));
    let src = std::fs::read_to_string(&e.file).unwrap_or_else(|x| fail(format!("{}: {x}", e.file)));
    let r = (|| -> Result<Plan, HostError> {
        let script = crate::script::parse(&e.file, &src).map_err(|x| HostError::Failed(x.to_string()))?;
        let mut checked =
            crate::script::check(&e.file, &script, &e.params).map_err(|x| HostError::Failed(x.to_string()))?;
        checked.cpus = e.cpus;
        use std::os::fd::FromRawFd as _;
        // SAFETY: descriptors the parent left open across execve for us, each owned once here.
        let files = e.file_fds.iter().map(|fd| unsafe { std::fs::File::from_raw_fd(*fd) }).collect();
        plan(&e.file, script, checked, e.budget, e.seed, Some(files))
    })();
    match r {
        Ok(plan) => runner::exec_main(Arc::new(plan), arena, e),
        Err(HostError::Failed(m) | HostError::Refused(m)) => {
            arena.error.set(&m);
            fail(m)
        }
    }
}

/// A host run whose threads start no step for this long has hung (a
/// partner that can never come): it is aborted, then killed.
const HANG_TIMEOUT: Duration = Duration::from_secs(60);

/// While the parent waits for its processes: forward a SIGINT / SIGTERM
/// that reached mmemu alone (`kill PID`, not Ctrl-C, which the whole
/// process group gets) to the children through the arena, and end a run
/// that makes no progress: abort it, and SIGKILL its processes if they do
/// not end.  Wakes every 50 ms, off the script's CPUs' hot paths.  True
/// if it found a hang.
fn watchdog(
    arena: &'static arena::Arena,
    pids: &[(i32, String)],
    done: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<bool> {
    let pids: Vec<i32> = pids.iter().map(|(p, _)| *p).collect();
    std::thread::spawn(move || {
        let (mut last, mut since) = (arena.steps.load(Ordering::Relaxed), Instant::now());
        let mut hung = false;
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            if crate::budget::interrupted() {
                arena.stop.store(1, Ordering::SeqCst);
                sys::futex_wake(&arena.working);
            }
            let now = arena.steps.load(Ordering::Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > HANG_TIMEOUT && !hung {
                hung = true;
                arena.abort();
            } else if hung && since.elapsed() > HANG_TIMEOUT + Duration::from_secs(5) {
                for p in &pids {
                    // SAFETY: SIGKILL to a process this run forked and has
                    // not reaped (its pid cannot have been reused yet).
                    unsafe { libc::kill(*p, libc::SIGKILL) };
                }
                since = Instant::now();
            }
        }
        hung
    })
}

/// After a failed start: end and reap the processes already forked.
fn reap(pids: &[(i32, String)]) {
    for (p, _) in pids {
        let _ = sys::wait_for(*p);
    }
}
