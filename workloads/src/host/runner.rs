//! A script's threads as real threads: one `Runner` per thread runs its
//! steps as the syscalls they name (through `sys`), in the process the
//! parent forked for it, pinned to its CPU.  Counts go straight to the
//! shared arena, so the work of a fork child (its own process) is counted
//! with its thread's.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::arena::Arena;
use super::sys::{self, Probe};
use crate::budget::{Budget, Until};
use crate::scenarios::native::Rng;
use crate::script::ast::*;
use crate::script::check::{eval_in, Checked, Scope, PAGE, PMD_PAGES};

/// Pages a `write` / `read` of a range touches between two looks at the clock.
const TOUCHES_PER_CHECK: u64 = 64;
/// How long a barrier waiter spins (staying in its mm, as the emulator's
/// `cpu_relax` waiter does) before it blocks on the futex.
const BARRIER_SPIN: Duration = Duration::from_millis(20);
/// Longest single futex sleep (waiters look at the abort flag between).
const FUTEX_SLICE: Duration = Duration::from_millis(20);

/// One thread instance of the script: which thread, its CPU, its slot.
#[derive(Clone, Debug)]
pub struct Inst {
    pub thread: usize,
    pub name: String,
    pub cpu: u64,
    pub process: String,
    /// 1-based turn of a `first` thread (0: starts with everyone).
    pub first: u32,
    pub stream: u64,
    /// A `held` thread's start flag (`Arena::held`).
    pub held: Option<usize>,
}

/// A declared file: its descriptor (an unlinked temporary file) and pages.
#[derive(Debug)]
pub struct HostFile {
    pub name: String,
    pub file: std::fs::File,
    pub pages: u64,
}

/// What every thread reads (copied into each process by fork).
#[derive(Debug)]
pub struct Plan {
    pub file: String,
    pub script: Script,
    pub checked: Checked,
    pub insts: Vec<Inst>,
    pub nfirst: u32,
    pub barriers: BTreeMap<String, usize>,
    pub held: BTreeMap<String, usize>,
    pub files: Vec<HostFile>,
    pub budget: Budget,
    pub seed: u64,
}

/// A mapped region.
#[derive(Clone, Copy, Debug)]
struct Region {
    addr: u64,
    pages: u64,
    /// (file index, first file page)
    file: Option<(usize, u64)>,
}

type Regions = Arc<Mutex<BTreeMap<(String, String), Region>>>;

enum Stop {
    Budget,
    Exit,
    Error(String),
    /// The error line is already in the arena.
    Reported,
}

type Flow = Result<(), Stop>;

thread_local! {
    /// The arena slot of this thread (for the fault handler).
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

static ARENA: std::sync::atomic::AtomicPtr<Arena> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// SIGSEGV / SIGBUS in a script process: a `write` or `read` faulted.
/// Record which thread (its step is in its slot) and end the process.
extern "C" fn on_fault(sig: libc::c_int) {
    let a = ARENA.load(Ordering::SeqCst);
    let slot = SLOT.with(|s| s.get());
    if !a.is_null() {
        // SAFETY: ARENA points at the 'static arena (set before any thread ran).
        let a = unsafe { &*a };
        if a.fault_thread.compare_exchange(0, slot as u32 + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            a.fault_signal.store(sig as u32, Ordering::SeqCst);
        }
    }
    // SAFETY: _exit is async-signal-safe; the process ends here.
    unsafe { libc::_exit(128 + sig) };
}

/// A process of the script: its threads, each pinned and waiting at the
/// gate; when they are done the process exits (never returns).
pub fn process_main(plan: Arc<Plan>, arena: &'static Arena, process: &str) -> ! {
    ARENA.store(arena as *const Arena as *mut Arena, Ordering::SeqCst);
    // SAFETY: installing a handler that only stores to atomics and calls _exit.
    unsafe {
        libc::signal(libc::SIGSEGV, on_fault as *const () as libc::sighandler_t);
        libc::signal(libc::SIGBUS, on_fault as *const () as libc::sighandler_t);
    }
    let regions: Regions = Arc::default();
    let mut hs = Vec::new();
    for (i, inst) in plan.insts.iter().enumerate().filter(|(_, x)| x.process == process) {
        let (plan, regions, inst) = (plan.clone(), regions.clone(), inst.clone());
        hs.push(std::thread::spawn(move || thread_main(plan, arena, regions, i, inst)));
    }
    let mut code = 0;
    for h in hs {
        if h.join().is_err() {
            code = 1;
        }
    }
    // SAFETY: _exit ends this forked process without running the parent's
    // atexit handlers or destructors (its copies are not ours to run).
    unsafe { libc::_exit(code) }
}

fn wait_gate(arena: &Arena, until: impl Fn(u32) -> bool) -> bool {
    loop {
        let g = arena.gate.load(Ordering::SeqCst);
        if until(g) {
            return true;
        }
        if arena.aborted() {
            return false;
        }
        sys::futex_wait(&arena.gate, g, FUTEX_SLICE);
    }
}

fn thread_main(plan: Arc<Plan>, arena: &'static Arena, regions: Regions, i: usize, inst: Inst) {
    SLOT.with(|s| s.set(i));
    let slot = &arena.threads[i];
    let prep = sys::pin_to(inst.cpu as usize).and_then(|()| Probe::new());
    let probe = match prep {
        Ok(p) => p,
        Err(e) => {
            arena.error.set(&format!("{}: thread {}: {e}", plan.file, inst.name));
            arena.ready.fetch_add(1, Ordering::SeqCst);
            arena.abort();
            return;
        }
    };
    let (run0, cs0) = (super::counters::thread_cpu_ns(), super::counters::rusage(libc::RUSAGE_THREAD));
    let delay0 = super::counters::thread_run_delay_ns();
    arena.ready.fetch_add(1, Ordering::SeqCst);
    let first = inst.first;
    let mut go = if first > 0 { wait_gate(arena, |g| g == first) } else { wait_gate(arena, |g| g > plan.nfirst) };
    if let (true, Some(h)) = (go, inst.held) {
        go = wait_held(arena, h);
    }
    let t0 = Instant::now();
    let body = plan.script.threads[inst.thread].body.clone();
    let mut r = Runner {
        until: Until::new(plan.budget),
        rng: Rng::new(plan.seed, inst.stream),
        plan: plan.clone(),
        arena,
        slot: i,
        cpu: inst.cpu,
        vars: Vec::new(),
        regions,
        own: BTreeMap::new(),
        spawns: Vec::new(),
        declared: true,
        lockstep: false,
        probe,
    };
    let flow = if go { r.body(&inst.process, &body) } else { Err(Stop::Reported) };
    r.end(flow);
    let cs1 = super::counters::rusage(libc::RUSAGE_THREAD);
    if let (Some(a), Some(b)) = (run0, super::counters::thread_cpu_ns()) {
        slot.run_ns.store(b.saturating_sub(a), Ordering::SeqCst);
    }
    // Wall time from when the gate let it run (a thread the scheduler kept
    // off its CPU at the start is off it from then on); a `first` thread's
    // from its own start.
    let open = arena.gate_open_ns.load(Ordering::SeqCst);
    let wall =
        if first > 0 { t0.elapsed().as_nanos() as u64 } else { super::counters::monotonic_ns().saturating_sub(open) };
    slot.wall_ns.store(wall, Ordering::SeqCst);
    if let (Some(a), Some(b)) = (delay0, super::counters::thread_run_delay_ns()) {
        slot.delay_ns.store(b.saturating_sub(a), Ordering::SeqCst);
        slot.delay_known.store(1, Ordering::SeqCst);
    }
    slot.nivcsw.store(cs1.0.saturating_sub(cs0.0), Ordering::SeqCst);
    slot.nvcsw.store(cs1.1.saturating_sub(cs0.1), Ordering::SeqCst);
    if first > 0 {
        arena.gate_open_ns.store(super::counters::monotonic_ns(), Ordering::SeqCst);
        arena.gate.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&arena.gate);
    }
}

struct Runner {
    plan: Arc<Plan>,
    arena: &'static Arena,
    slot: usize,
    cpu: u64,
    vars: Vec<(String, u64)>,
    rng: Rng,
    until: Until,
    /// What this process's threads mapped, by (process, region).
    regions: Regions,
    /// What this thread mapped itself (looked up first).
    own: BTreeMap<(String, String), Region>,
    spawns: Vec<Vec<(String, std::thread::JoinHandle<()>)>>,
    declared: bool,
    lockstep: bool,
    probe: Probe,
}

impl Scope for Runner {
    fn var(&self, name: &str) -> Option<u64> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, x)) => Some(*x),
            None => match name {
                "cpu" => Some(self.cpu),
                "ncpus" => Some(self.plan.checked.cpus),
                _ => self.plan.checked.params.get(name).copied(),
            },
        }
    }
    fn rand(&mut self, n: u64) -> Option<u64> {
        Some(self.rng.below(n))
    }
}

impl Runner {
    fn fail(&self, span: Span, msg: impl std::fmt::Display) -> Stop {
        Stop::Error(format!("{}:{}:{}: {msg}", self.plan.file, span.line, span.col))
    }

    fn op(&self) {
        if self.declared {
            self.arena.threads[self.slot].ops.fetch_add(1, Ordering::Relaxed);
        } else {
            self.arena.spawned_ops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn eval(&mut self, e: &Expr) -> Result<u64, Stop> {
        eval_in(e, self).map_err(|span| {
            self.fail(span, "the expression has no value here (an overflow, a division by zero or rand(0))")
        })
    }

    fn file(&self, n: &Name) -> Result<usize, Stop> {
        self.plan
            .files
            .iter()
            .position(|f| f.name == n.text)
            .ok_or_else(|| self.fail(n.span, format!("file '{}' is not declared", n.text)))
    }

    fn fd(&self, i: usize) -> i32 {
        use std::os::fd::AsRawFd as _;
        self.plan.files[i].file.as_raw_fd()
    }

    fn loc(&mut self, process: &str, loc: &Loc) -> Result<(Region, u64, u64), Stop> {
        let key = (process.to_string(), loc.region.text.clone());
        let found = match self.own.get(&key) {
            Some(r) => Some(*r),
            None => self.regions.lock().expect("regions lock").get(&key).copied(),
        };
        let Some(at) = found else {
            return Err(
                self.fail(loc.region.span, format!("region '{}' is not mapped in process {process}", loc.region.text))
            );
        };
        let (a, b) = match &loc.pages {
            LocPages::Whole => (0, at.pages),
            LocPages::One(e) => {
                let i = self.eval(e)?;
                (i, i.saturating_add(1))
            }
            LocPages::Range(x, y) => (self.eval(x)?, self.eval(y)?),
        };
        if a >= b || b > at.pages {
            return Err(self.fail(
                loc.region.span,
                format!("pages {a}..{b} are outside region '{}' ({} pages)", loc.region.text, at.pages),
            ));
        }
        Ok((at, a, b))
    }

    fn body(&mut self, process: &str, body: &[Step]) -> Flow {
        self.spawns.push(Vec::new());
        let mut r = Ok(());
        for st in body {
            self.arena.threads[self.slot]
                .step
                .store((st.span.line as u64) << 32 | st.span.col as u64, Ordering::Relaxed);
            self.arena.steps.fetch_add(1, Ordering::Relaxed);
            r = self.step(process, st);
            if r.is_err() {
                break;
            }
        }
        for (_, h) in self.spawns.pop().unwrap_or_default() {
            let _ = h.join();
        }
        r
    }

    /// A declared thread no longer counts as working (once).
    fn done_working(&self) {
        if self.declared && self.arena.threads[self.slot].finished.swap(1, Ordering::SeqCst) == 0 {
            self.arena.working.fetch_sub(1, Ordering::SeqCst);
            sys::futex_wake(&self.arena.working);
        }
    }

    fn end(&mut self, r: Flow) {
        match r {
            Err(Stop::Error(e)) => {
                self.arena.error.set(&e);
                self.arena.abort();
            }
            Err(Stop::Reported) => self.arena.abort(),
            _ => {}
        }
        self.done_working();
    }

    /// The budget's time is up, or a stop was requested (SIGINT / SIGTERM
    /// here or forwarded by the parent).
    fn expired(&self) -> bool {
        self.until.expired() || self.arena.stopped()
    }

    /// May round `r` start?
    fn more(&self, r: u64) -> bool {
        self.until.more(r) && !self.arena.stopped()
    }

    #[inline]
    fn budget_check(&self, i: u64) -> Flow {
        if i > 0 && i.is_multiple_of(TOUCHES_PER_CHECK) && !self.lockstep && self.expired() {
            return Err(Stop::Budget);
        }
        Ok(())
    }

    /// `budget::round_gate_pass` on the shared round gate.
    fn lockstep_more(&self, r: u64) -> bool {
        crate::budget::round_gate_pass(&self.arena.round_gate, r, |r| self.more(r))
    }

    fn rounds(&self) -> u64 {
        self.arena.threads[self.slot].rounds.load(Ordering::SeqCst)
    }

    fn round(&self) {
        let s = &self.arena.threads[self.slot];
        s.rounds.fetch_add(1, Ordering::SeqCst);
        s.digest.store(self.rng.digest(), Ordering::Relaxed);
    }

    /// Wait at barrier `b`: spin first (in the mm, like the emulator's
    /// waiter), then block on its futex.  False if the run was aborted.
    fn barrier(&self, b: usize) -> bool {
        let s = &self.arena.barriers[b];
        let g = s.generation.load(Ordering::SeqCst);
        if s.arrived.fetch_add(1, Ordering::SeqCst) + 1 == s.parties.load(Ordering::SeqCst) {
            s.arrived.store(0, Ordering::SeqCst);
            s.generation.fetch_add(1, Ordering::SeqCst);
            sys::futex_wake(&s.generation);
            return true;
        }
        let t0 = Instant::now();
        let mut n = 0u32;
        while s.generation.load(Ordering::SeqCst) == g {
            if self.arena.aborted() {
                return false;
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(1024) && t0.elapsed() > BARRIER_SPIN {
                sys::futex_wait(&s.generation, g, FUTEX_SLICE);
            } else {
                std::hint::spin_loop();
            }
        }
        true
    }

    fn region_put(&mut self, process: &str, name: &str, r: Region) {
        let key = (process.to_string(), name.to_string());
        self.own.insert(key.clone(), r);
        self.regions.lock().expect("regions lock").insert(key, r);
    }

    fn step(&mut self, process: &str, st: &Step) -> Flow {
        let sys_err = |t: &Self, what: &str, e: String| t.fail(st.span, format!("{what}: {e}"));
        match &st.kind {
            StepKind::Mmap { region, kind, size, at, prot, offset } => {
                let n = self.eval(&size.expr)?;
                let bytes = if size.pages { n * PAGE } else { n };
                let addr = match at {
                    Some(a) => self.eval(a)?,
                    None => 0,
                };
                let p = match prot {
                    Prot::Rw => libc::PROT_READ | libc::PROT_WRITE,
                    Prot::Ro => libc::PROT_READ,
                    Prot::None => libc::PROT_NONE,
                };
                let fixed = if at.is_some() { libc::MAP_FIXED_NOREPLACE } else { 0 };
                let (flags, fd, off, file) = match kind {
                    MapKind::Anon | MapKind::Thp => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0, None),
                    MapKind::AnonShared => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0, None),
                    MapKind::Hugetlb => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB, -1, 0, None),
                    MapKind::FilePrivate(f) | MapKind::FileShared(f) => {
                        let i = self.file(f)?;
                        let o = match offset {
                            Some(o) => self.eval(o)?,
                            None => 0,
                        };
                        let share =
                            if matches!(kind, MapKind::FileShared(_)) { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
                        (share, self.fd(i), o, Some((i, o / PAGE)))
                    }
                };
                let got = if matches!(kind, MapKind::Thp) && at.is_none() {
                    // A 2 MiB aligned range: map one more PMD, trim the ends.
                    let pmd = PMD_PAGES * PAGE;
                    let raw = sys::mmap(0, bytes + pmd, p, flags, -1, 0).map_err(|e| sys_err(self, "mmap", e))?;
                    let start = raw.next_multiple_of(pmd);
                    // SAFETY: both pieces lie inside the mapping just made, which nothing else uses.
                    unsafe {
                        if start > raw {
                            libc::munmap(raw as *mut libc::c_void, (start - raw) as usize);
                        }
                        let end = raw + bytes + pmd;
                        if end > start + bytes {
                            libc::munmap((start + bytes) as *mut libc::c_void, (end - start - bytes) as usize);
                        }
                    }
                    start
                } else {
                    sys::mmap(addr, bytes, p, flags | fixed, fd, off).map_err(|e| sys_err(self, "mmap", e))?
                };
                if at.is_some() && got != addr {
                    return Err(self.fail(
                        st.span,
                        format!("mmap at {addr:#x} got {got:#x} (a kernel without MAP_FIXED_NOREPLACE)"),
                    ));
                }
                if matches!(kind, MapKind::Thp) {
                    // SAFETY: advice on the range just mapped.
                    sys::check(unsafe { libc::madvise(got as *mut libc::c_void, bytes as usize, libc::MADV_HUGEPAGE) })
                        .map_err(|e| sys_err(self, "madvise(MADV_HUGEPAGE)", e))?;
                }
                self.op();
                self.region_put(process, &region.text, Region { addr: got, pages: bytes / PAGE, file });
            }
            StepKind::Write { loc, value } => {
                let (at, a, b) = self.loc(process, loc)?;
                let v = match value {
                    Some(v) => self.eval(v)?,
                    None => 1,
                };
                for p in a..b {
                    self.budget_check(p - a)?;
                    // SAFETY: page p of a region this process mapped (the
                    // script's own memory, never Rust's); a fault is the
                    // process's SIGSEGV handler's (the run's error).
                    unsafe { std::ptr::write_volatile((at.addr + p * PAGE) as *mut u64, v) };
                }
            }
            StepKind::Read { loc, expect } => {
                let (at, a, b) = self.loc(process, loc)?;
                let want = match expect {
                    Some(ReadExpect::Value(v)) => Some(Some(self.eval(v)?)),
                    Some(ReadExpect::Segv) => Some(None),
                    None => None,
                };
                for p in a..b {
                    self.budget_check(p - a)?;
                    let va = at.addr + p * PAGE;
                    let got = if want == Some(None) {
                        // A fault is the answer asked for: the kernel's copy, EFAULT not SIGSEGV.
                        self.probe.read(va)
                    } else {
                        // SAFETY: as for `write`: a page of a script region.
                        Some(unsafe { std::ptr::read_volatile(va as *const u64) })
                    };
                    if let Some(w) = want {
                        if w != got {
                            self.arena.reads_failed.fetch_add(1, Ordering::Relaxed);
                            let show = |v: Option<u64>| v.map_or("SIGSEGV".to_string(), |v| v.to_string());
                            self.arena.bad_read.set(&format!(
                                "{}:{}:{}: read of page {p} of '{}' saw {}; expected {}",
                                self.plan.file,
                                st.span.line,
                                st.span.col,
                                loc.region.text,
                                show(got),
                                show(w)
                            ));
                        }
                    }
                }
            }
            StepKind::Peek { addr } => {
                let a = self.eval(addr)?;
                let _ = self.probe.read(a & !(PAGE - 1));
            }
            StepKind::Munmap { loc, .. } => {
                let (at, a, b) = self.loc(process, loc)?;
                // SAFETY: pages of a script region; no Rust object lives there.
                let rc = unsafe { libc::munmap((at.addr + a * PAGE) as *mut libc::c_void, ((b - a) * PAGE) as usize) };
                sys::check(rc).map_err(|e| sys_err(self, "munmap", e))?;
                self.op();
            }
            StepKind::Mprotect { loc, prot } => {
                let (at, a, b) = self.loc(process, loc)?;
                let p = match prot {
                    Prot::Rw => libc::PROT_READ | libc::PROT_WRITE,
                    Prot::Ro => libc::PROT_READ,
                    Prot::None => libc::PROT_NONE,
                };
                // SAFETY: pages of a script region.
                let rc =
                    unsafe { libc::mprotect((at.addr + a * PAGE) as *mut libc::c_void, ((b - a) * PAGE) as usize, p) };
                sys::check(rc).map_err(|e| sys_err(self, "mprotect", e))?;
                self.op();
            }
            StepKind::Madvise { loc, .. } => {
                let (at, a, b) = self.loc(process, loc)?;
                // SAFETY: pages of a script region (their contents may go; nothing of Rust's is there).
                let rc = unsafe {
                    libc::madvise(
                        (at.addr + a * PAGE) as *mut libc::c_void,
                        ((b - a) * PAGE) as usize,
                        libc::MADV_DONTNEED,
                    )
                };
                sys::check(rc).map_err(|e| sys_err(self, "madvise(MADV_DONTNEED)", e))?;
                self.op();
            }
            StepKind::Msync { loc } => {
                let (at, a, b) = self.loc(process, loc)?;
                if at.file.is_none() {
                    return Err(self.fail(st.span, format!("msync of '{}', which maps no file", loc.region.text)));
                }
                // SAFETY: pages of a script region.
                let rc = unsafe {
                    libc::msync((at.addr + a * PAGE) as *mut libc::c_void, ((b - a) * PAGE) as usize, libc::MS_SYNC)
                };
                sys::check(rc).map_err(|e| sys_err(self, "msync", e))?;
                self.op();
            }
            StepKind::Fadvise { file, pages, .. } => {
                let i = self.file(file)?;
                let (a, b) = match pages {
                    Some((a, b)) => (self.eval(a)?, self.eval(b)?),
                    None => (0, self.plan.files[i].pages),
                };
                // SAFETY: advice on our own descriptor.
                let rc = unsafe {
                    libc::posix_fadvise(
                        self.fd(i),
                        (a * PAGE) as libc::off_t,
                        ((b.saturating_sub(a)) * PAGE) as libc::off_t,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
                sys::check(rc).map_err(|e| sys_err(self, "posix_fadvise", e))?;
                self.op();
            }
            StepKind::Truncate { file, size } => {
                let i = self.file(file)?;
                let to = match size {
                    Some(s) => {
                        let n = self.eval(&s.expr)?;
                        if s.pages {
                            n * PAGE
                        } else {
                            n
                        }
                    }
                    None => 0,
                };
                // SAFETY: our own descriptor.
                let rc = unsafe { libc::ftruncate(self.fd(i), to as libc::off_t) };
                sys::check(rc).map_err(|e| sys_err(self, "ftruncate", e))?;
                self.op();
            }
            StepKind::Fork { child, body } => return self.fork(process, st, child, body),
            StepKind::Exec { child, .. } => return self.exec(st, child),
            StepKind::GupFast { .. } | StepKind::Collapse { .. } | StepKind::Device { .. } => {
                return Err(self.fail(st.span, format!("{} is not run on the host", st.kind.keyword())));
            }
            StepKind::Spawn { thread, cpu, body } => {
                let target = match cpu {
                    Some(e) => self.eval(e)?,
                    None => self.cpu,
                };
                let probe = Probe::new().map_err(|e| sys_err(self, "pipe2", e))?;
                let mut th = Runner {
                    plan: self.plan.clone(),
                    arena: self.arena,
                    slot: self.slot,
                    cpu: target,
                    vars: self.vars.clone(),
                    rng: Rng::new(self.plan.seed, self.rng.next()),
                    until: self.until,
                    regions: self.regions.clone(),
                    own: self.own.clone(),
                    spawns: Vec::new(),
                    declared: false,
                    lockstep: false,
                    probe,
                };
                let (process, body, slot) = (process.to_string(), body.clone(), self.slot);
                let h = std::thread::spawn(move || {
                    SLOT.with(|s| s.set(slot));
                    let r = match sys::pin_to(target as usize) {
                        Ok(()) => th.body(&process, &body),
                        Err(e) => Err(Stop::Error(format!("{}: spawned thread: {e}", th.plan.file))),
                    };
                    th.end(r);
                });
                if let Some(f) = self.spawns.last_mut() {
                    f.push((thread.text.clone(), h));
                }
                self.op();
            }
            StepKind::Join { thread } => {
                let i = self.spawns.last().and_then(|f| f.iter().position(|(n, _)| *n == thread.text));
                let Some(i) = i else {
                    return Err(
                        self.fail(thread.span, format!("thread '{}' was not spawned in this block", thread.text))
                    );
                };
                let (_, h) = self.spawns.last_mut().map(|f| f.remove(i)).expect("the frame just searched");
                let _ = h.join();
            }
            StepKind::Start { thread } => match self.plan.held.get(&thread.text) {
                Some(&h) => {
                    self.arena.held[h].store(1, Ordering::SeqCst);
                    sys::futex_wake(&self.arena.held[h]);
                }
                None => return Err(self.fail(thread.span, format!("thread '{}' is not held", thread.text))),
            },
            StepKind::Exit { process: true } => {
                // Inside a fork block (the refusals keep it there): the child process ends now.
                // SAFETY: _exit ends this forked child without the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            StepKind::Exit { process: false } => return Err(Stop::Exit),
            StepKind::Spin => {
                self.done_working();
                let s = &self.arena.threads[self.slot];
                s.spun.store(1, Ordering::SeqCst);
                let (r0, t0) = (super::counters::thread_cpu_ns(), Instant::now());
                while self.arena.working.load(Ordering::Relaxed) > 0 && !self.arena.aborted() && !self.arena.stopped() {
                    std::hint::spin_loop();
                }
                if let (Some(a), Some(b)) = (r0, super::counters::thread_cpu_ns()) {
                    s.spin_run_ns.store(b.saturating_sub(a), Ordering::SeqCst);
                }
                s.spin_wall_ns.store(t0.elapsed().as_nanos() as u64, Ordering::SeqCst);
                return Err(Stop::Exit);
            }
            StepKind::Sleep => {
                self.done_working();
                loop {
                    let w = self.arena.working.load(Ordering::SeqCst);
                    if w == 0 || self.arena.aborted() || self.arena.stopped() {
                        break;
                    }
                    sys::futex_wait(&self.arena.working, w, FUTEX_SLICE);
                }
                return Err(Stop::Exit);
            }
            StepKind::Barrier { name } => {
                if !self.barrier(self.plan.barriers[&name.text]) {
                    return Err(Stop::Reported);
                }
            }
            StepKind::Repeat { count, body } => {
                let n = self.eval(count)?;
                for _ in 0..n {
                    self.body(process, body)?;
                }
            }
            StepKind::RepeatUntilBudget { body } => {
                let mut names = Vec::new();
                barrier_names(body, &mut names);
                if names.is_empty() || self.lockstep {
                    while self.more(self.rounds()) {
                        self.body(process, body)?;
                        self.round();
                    }
                } else {
                    self.lockstep = true;
                    let mut r = Ok(());
                    while r.is_ok() && self.lockstep_more(self.rounds()) {
                        r = self.body(process, body);
                        if r.is_ok() {
                            self.round();
                        }
                    }
                    self.lockstep = false;
                    r?;
                }
            }
            StepKind::For { var, shuffled, from, to, step, body } => {
                let (a, b) = (self.eval(from)?, self.eval(to)?);
                let s = match step {
                    Some(e) => self.eval(e)?,
                    None => 1,
                };
                let n = b.saturating_sub(a).div_ceil(s.max(1));
                let order: Vec<u64> = if *shuffled { self.rng.permutation(n) } else { (0..n).collect() };
                for i in order {
                    if self.expired() && !self.lockstep {
                        return Err(Stop::Budget);
                    }
                    self.vars.push((var.text.clone(), a + i * s));
                    let r = self.body(process, body);
                    self.vars.pop();
                    r?;
                }
            }
        }
        Ok(())
    }

    /// `fork C { … }`: a real fork; the child (a copy of this process,
    /// this thread only) runs the block in process C and _exits; this
    /// thread waits for it (waitpid: its CPU runs the child meanwhile).
    fn fork(&mut self, process: &str, st: &Step, child: &Name, body: &[Step]) -> Flow {
        // Held across fork, so the child's copy of the lock is not held by
        // a thread that does not exist there.
        let guard = self.regions.lock().expect("regions lock");
        let mine: BTreeMap<(String, String), Region> = guard
            .iter()
            .filter(|((p, _), _)| p == process)
            .map(|((_, n), v)| ((child.text.clone(), n.clone()), *v))
            .collect();
        self.op();
        // SAFETY: fork in a threaded process: the child runs only this
        // thread; it uses the allocator (glibc resets its locks at fork)
        // and the regions lock held here (released in both below), then
        // _exits without unwinding into the parent's frames.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            drop(guard);
            return Err(self.fail(st.span, format!("fork: {}", sys::errno())));
        }
        drop(guard);
        if pid == 0 {
            let own: BTreeMap<_, _> = self
                .own
                .iter()
                .filter(|((p, _), _)| p == process)
                .map(|((_, n), v)| ((child.text.clone(), n.clone()), *v))
                .collect();
            self.regions = Arc::new(Mutex::new(mine));
            self.own = own;
            // The parent's spawned threads do not exist here: forget their
            // handles (dropping one would detach a thread of the parent's).
            std::mem::forget(std::mem::take(&mut self.spawns));
            // A pipe of its own: the parent's is its thread's.
            match Probe::new() {
                Ok(p) => self.probe = p,
                Err(e) => {
                    self.arena.error.set(&format!("{}: fork child: {e}", self.plan.file));
                    // SAFETY: the forked child ends here.
                    unsafe { libc::_exit(1) };
                }
            }
            let code = match self.body(&child.text, body) {
                Ok(()) | Err(Stop::Exit) => 0,
                Err(Stop::Budget) => 3,
                Err(Stop::Error(e)) => {
                    self.arena.error.set(&e);
                    1
                }
                Err(Stop::Reported) => 1,
            };
            // SAFETY: the forked child ends here, without the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let ended = sys::wait_for(pid).map_err(|e| self.fail(st.span, e))?;
        self.op();
        match ended {
            sys::Ended::Code(0) => Ok(()),
            sys::Ended::Code(3) => Err(Stop::Budget),
            sys::Ended::Code(_) => Err(Stop::Reported),
            sys::Ended::Signal(s) => {
                Err(self.fail(st.span, format!("fork child {} was killed by {}", child.text, sys::signal_name(s))))
            }
        }
    }
}

impl Runner {
    /// `exec C { … }`: fork, and the child execve's mmemu as the helper
    /// (`host::exec_helper`), which runs the block in a fresh mm and
    /// _exits; this thread waits for it.  The helper draws from a stream of
    /// its own (as a spawned thread does).
    fn exec(&mut self, st: &Step, child: &Name) -> Flow {
        let budget = match self.until.deadline() {
            Some(d) => Budget::Seconds(d.saturating_duration_since(Instant::now()).as_secs_f64().max(1e-3)),
            None => self.plan.budget,
        };
        use std::os::fd::AsRawFd as _;
        let e = ExecState {
            file: self.plan.file.clone(),
            params: self.plan.checked.params.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            seed: self.plan.seed,
            cpus: self.plan.checked.cpus,
            budget,
            slot: self.slot,
            declared: self.declared,
            line: st.span.line,
            col: st.span.col,
            child: child.text.clone(),
            vars: self.vars.clone(),
            stream: self.rng.next(),
            arena_fd: self.arena.fd.load(Ordering::SeqCst) as i32,
            file_fds: self.plan.files.iter().map(|f| f.file.as_raw_fd()).collect(),
        };
        let env = std::ffi::CString::new(format!("{EXEC_ENV}={}", e.encode()))
            .map_err(|_| self.fail(st.span, "exec: the helper's state holds a NUL"))?;
        let exe = c"/proc/self/exe";
        let argv = [c"mmemu".as_ptr(), c"__host-exec".as_ptr(), std::ptr::null()];
        let envp = [env.as_ptr(), std::ptr::null()];
        let fds: Vec<i32> = std::iter::once(e.arena_fd).chain(e.file_fds.iter().copied()).collect();
        self.op();
        // SAFETY: fork in a threaded process; the child only clears
        // close-on-exec on descriptors we own, calls execve (everything it
        // needs was built before the fork) or _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(self.fail(st.span, format!("fork: {}", sys::errno())));
        }
        if pid == 0 {
            // SAFETY: as above: async-signal-safe calls only, then execve or _exit.
            unsafe {
                for fd in &fds {
                    libc::fcntl(*fd, libc::F_SETFD, 0);
                }
                libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(126);
            }
        }
        let ended = sys::wait_for(pid).map_err(|e| self.fail(st.span, e))?;
        self.op();
        match ended {
            sys::Ended::Code(0) => Ok(()),
            sys::Ended::Code(3) => Err(Stop::Budget),
            sys::Ended::Code(126) => Err(self.fail(st.span, "exec: execve of /proc/self/exe failed")),
            sys::Ended::Code(_) => Err(Stop::Reported),
            sys::Ended::Signal(s) => {
                Err(self.fail(st.span, format!("exec child {} was killed by {}", child.text, sys::signal_name(s))))
            }
        }
    }
}

/// The environment variable that carries an `exec` helper's state.
pub const EXEC_ENV: &str = "MMEMU_HOST_EXEC";

/// What an `exec` helper needs: the script and its options, where the
/// step is (its line and column: one step per place), whose thread slot
/// it counts in, the loop variables, a seed stream, and the descriptors
/// of the arena and the files.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecState {
    pub file: String,
    pub params: Vec<(String, u64)>,
    pub seed: u64,
    pub cpus: u64,
    pub budget: Budget,
    pub slot: usize,
    pub declared: bool,
    pub line: u32,
    pub col: u32,
    pub child: String,
    pub vars: Vec<(String, u64)>,
    pub stream: u64,
    pub arena_fd: i32,
    pub file_fds: Vec<i32>,
}

impl ExecState {
    /// One line per field, `key=value`; the file path last (it may hold `=`).
    pub fn encode(&self) -> String {
        let kv = |v: &[(String, u64)]| v.iter().map(|(k, x)| format!("{k}:{x}")).collect::<Vec<_>>().join(",");
        let budget = match self.budget {
            Budget::Iterations(n) => format!("rounds:{n}"),
            Budget::Seconds(s) => format!("seconds:{s}"),
        };
        let fds = self.file_fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(",");
        format!(
            "params={}\u{1f}seed={}\u{1f}cpus={}\u{1f}budget={budget}\u{1f}slot={}\u{1f}declared={}\u{1f}at={}:{}\u{1f}child={}\u{1f}vars={}\u{1f}stream={}\u{1f}arena={}\u{1f}files={fds}\u{1f}file={}",
            kv(&self.params),
            self.seed,
            self.cpus,
            self.slot,
            self.declared as u8,
            self.line,
            self.col,
            self.child,
            kv(&self.vars),
            self.stream,
            self.arena_fd,
            self.file
        )
    }

    pub fn decode(s: &str) -> Option<ExecState> {
        let mut m = BTreeMap::new();
        for part in s.split('\u{1f}') {
            let (k, v) = part.split_once('=')?;
            m.insert(k, v);
        }
        let kv = |v: &str| -> Option<Vec<(String, u64)>> {
            v.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.split_once(':').and_then(|(k, n)| Some((k.to_string(), n.parse().ok()?))))
                .collect()
        };
        let (bk, bv) = m.get("budget")?.split_once(':')?;
        let budget = match bk {
            "rounds" => Budget::Iterations(bv.parse().ok()?),
            _ => Budget::Seconds(bv.parse().ok()?),
        };
        let (line, col) = m.get("at")?.split_once(':')?;
        Some(ExecState {
            file: m.get("file")?.to_string(),
            params: kv(m.get("params")?)?,
            seed: m.get("seed")?.parse().ok()?,
            cpus: m.get("cpus")?.parse().ok()?,
            budget,
            slot: m.get("slot")?.parse().ok()?,
            declared: *m.get("declared")? == "1",
            line: line.parse().ok()?,
            col: col.parse().ok()?,
            child: m.get("child")?.to_string(),
            vars: kv(m.get("vars")?)?,
            stream: m.get("stream")?.parse().ok()?,
            arena_fd: m.get("arena")?.parse().ok()?,
            file_fds: m
                .get("files")?
                .split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?,
        })
    }
}

/// The `exec` step at `line:col` of the script, and its block.
fn find_exec(b: &[Step], line: u32, col: u32) -> Option<&[Step]> {
    b.iter().find_map(|st| match &st.kind {
        StepKind::Exec { body, .. } if st.span.line == line && st.span.col == col => Some(body.as_slice()),
        StepKind::Fork { body, .. }
        | StepKind::Exec { body, .. }
        | StepKind::Spawn { body, .. }
        | StepKind::Repeat { body, .. }
        | StepKind::RepeatUntilBudget { body }
        | StepKind::For { body, .. } => find_exec(body, line, col),
        _ => None,
    })
}

/// The helper's work: C's block in this fresh process, then _exit (0 done,
/// 3 the budget ran out, 1 an error, in the arena).
pub fn exec_main(plan: Arc<Plan>, arena: &'static Arena, e: ExecState) -> ! {
    ARENA.store(arena as *const Arena as *mut Arena, Ordering::SeqCst);
    SLOT.with(|s| s.set(e.slot));
    // SAFETY: installing a handler that only stores to atomics and calls _exit.
    unsafe {
        libc::signal(libc::SIGSEGV, on_fault as *const () as libc::sighandler_t);
        libc::signal(libc::SIGBUS, on_fault as *const () as libc::sighandler_t);
    }
    let body = plan.script.threads.iter().find_map(|t| find_exec(&t.body, e.line, e.col)).map(|b| b.to_vec());
    let Some(body) = body else {
        arena.error.set(&format!("{}:{}:{}: the exec helper found no exec step here", plan.file, e.line, e.col));
        // SAFETY: ends the helper.
        unsafe { libc::_exit(1) }
    };
    let probe = match Probe::new() {
        Ok(p) => p,
        Err(m) => {
            arena.error.set(&m);
            // SAFETY: ends the helper.
            unsafe { libc::_exit(1) }
        }
    };
    // SAFETY: sched_getcpu takes no arguments (the affinity came through fork and execve).
    let cpu = unsafe { libc::sched_getcpu() }.max(0) as u64;
    let mut r = Runner {
        until: Until::new(e.budget),
        rng: Rng::new(e.seed, e.stream),
        plan: plan.clone(),
        arena,
        slot: e.slot,
        cpu,
        vars: e.vars.clone(),
        regions: Arc::default(),
        own: BTreeMap::new(),
        spawns: Vec::new(),
        declared: e.declared,
        lockstep: false,
        probe,
    };
    let code = match r.body(&e.child, &body) {
        Ok(()) | Err(Stop::Exit) => 0,
        Err(Stop::Budget) => 3,
        Err(Stop::Error(m)) => {
            arena.error.set(&m);
            1
        }
        Err(Stop::Reported) => 1,
    };
    // SAFETY: the helper ends here.
    unsafe { libc::_exit(code) }
}

/// Barrier names a body reaches (its fork children's too).
pub fn barrier_names(body: &[Step], out: &mut Vec<String>) {
    for st in body {
        match &st.kind {
            StepKind::Barrier { name } if !out.contains(&name.text) => out.push(name.text.clone()),
            StepKind::Fork { body, .. }
            | StepKind::Exec { body, .. }
            | StepKind::Repeat { body, .. }
            | StepKind::RepeatUntilBudget { body }
            | StepKind::For { body, .. } => barrier_names(body, out),
            _ => {}
        }
    }
}

/// A held thread waits (blocked: its CPU idles, lazily) until `start`.
pub fn wait_held(arena: &Arena, h: usize) -> bool {
    while arena.held[h].load(Ordering::SeqCst) == 0 {
        if arena.aborted() {
            return false;
        }
        sys::futex_wait(&arena.held[h], 0, FUTEX_SLICE);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_state_survives_the_environment() {
        let e = ExecState {
            file: "a=b/c.mmemu".into(),
            params: vec![("pages".into(), 64), ("fork".into(), 1)],
            seed: u64::MAX,
            cpus: 2,
            budget: Budget::Seconds(0.25),
            slot: 3,
            declared: true,
            line: 25,
            col: 5,
            child: "C".into(),
            vars: vec![("k".into(), 7)],
            stream: 99,
            arena_fd: 5,
            file_fds: vec![6, 7],
        };
        assert_eq!(ExecState::decode(&e.encode()), Some(e.clone()));
        let none = ExecState { params: vec![], vars: vec![], file_fds: vec![], budget: Budget::Iterations(4), ..e };
        assert_eq!(ExecState::decode(&none.encode()), Some(none));
        assert_eq!(ExecState::decode("garbage"), None);
    }
}
