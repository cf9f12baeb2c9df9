//! The interpreter's first part: a checked script's basic steps run on the
//! machinery the native scenarios use (`scenarios::native`: `boot`, the
//! syscall wrappers `sys`, `WorkLog`, `Rng`, `finish`), and its
//! expectations judged on the `Outcome`.
//!
//! Run today: `mmap` of every kind (at a given or a chosen address; files
//! with their contents on disk), `write`, `read` (with
//! `expect`), `peek`, `munmap`, `mprotect`, `madvise … dontneed`, `msync`
//! (`filemap_fdatawrite_range`), `fadvise … dontneed`
//! (`invalidate_mapping_pages`), `truncate` (`ftruncate`: `do_sys_ftruncate`
//! → `truncate_setsize` → `truncate_pagecache`, to SIZE or 0),
//! `fork`, `exec`, `exit`, `spin`, `sleep`, `barrier`, `repeat`,
//! `repeat until budget`, `for` (also `shuffled`) and `rand`; files with
//! zero contents; `gup-fast` (`gup_fast`, pages released after) and
//! `collapse` (`collapse_huge_page` per 2 MiB), with their RaceHooks stall
//! points (`at POINT { barrier … }`: the hook meets the barriers with IRQs
//! off), and `madvise` / `munmap` with the zap walk's (`pte-table-done`,
//! met with IRQs on); `device` (an SVA device bound to the process on first use,
//! `iommu_sva_bind_device`, DMA through its IOTLB, unbound at the thread's
//! end); `held` threads (a kernel thread on their CPU, lazy, until `start`)
//! and `start`; `spawn` (a thread queued on its CPU's run queue, `runq`:
//! run when the CPU's current thread blocks, or by a drainer task queued
//! behind it) and `join` (a blocking wait: the CPU idles lazily); the
//! header's knobs; every mmap kind (anon-shared and hugetlb: an object of
//! their own, `Shared::objects`, dropped with its last unmap).
//!
//! A barrier is a generation counter that its threads wait on with
//! `cpu_relax` (an interrupt point: a waiting CPU still serves flush
//! IPIs).  Threads whose `repeat until budget` meets barriers agree on the
//! number of rounds (`Runner::lockstep_more`): under a time budget or a
//! stop request every round someone started runs to its end everywhere,
//! so no partner is left waiting at a barrier.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use mm_core::inject::{CollapsePoint, GupFastPoint, ZapPoint};
use mm_core::mm::MmStruct;
use mm_core::ops::gup::{gup_fast, put_user_pages, unpin_user_pages, Foll};
use mm_core::sync::Arc;
use mm_core::tlb::switch_mm;
use mm_core::{CpuId, Kernel};

use super::ast::*;
use super::check::{const_eval, eval_in, Checked, KnobSetting, Scope, PAGE};
use crate::error::RunError;
use crate::outcome::Outcome;
use crate::scenarios::native::{boot, finish, join_into, sys, syscall_entry, Rng, WorkLog};
use crate::scenarios::Ctx;

/// Device faults one SVA access retries before it gives up (a livelock):
/// the race driver's bound (races/iommu_sva.rs).
const DEVICE_RETRY_BOUND: u32 = 8;

/// Pages a `write` / `read` of a range touches between two looks at the
/// clock.
const TOUCHES_PER_CHECK: u64 = 64;

/// Where chosen addresses start (the user half, far above the examples'
/// fixed ones), and the stride between two regions.
const CHOSEN_BASE: u64 = 0x100_0000_0000;
const CHOSEN_STRIDE: u64 = 1 << 30;

/// What a script run produced: the outcome (the same as a native
/// scenario's) and the expectations that failed, one line each
/// (`FILE:LINE:COLUMN: expectation failed: …`).
#[derive(Debug)]
pub struct ScriptRun {
    pub outcome: Outcome,
    pub reads_failed: u64,
    pub failed: Vec<String>,
}

/// The signal a failed user access delivers: SIGBUS for a file page past
/// EOF (`VM_FAULT_SIGBUS`), SIGSEGV otherwise.  `read … expect segv`
/// accepts either.
fn signal(e: &mm_core::ops::Segv) -> &'static str {
    if e.sigbus {
        "SIGBUS"
    } else {
        "SIGSEGV"
    }
}

/// A mapped region: where, how many pages, and the file (index into
/// `Shared::files`) and file page it starts at, for file mappings.
#[derive(Clone, Copy, Debug)]
struct At {
    addr: u64,
    pages: u64,
    file: Option<(usize, u64)>,
}

/// A generation barrier for `parties` threads.
struct Barrier {
    parties: u64,
    arrived: AtomicU64,
    generation: AtomicU64,
}

impl Barrier {
    /// Wait for the other parties; false if the run was aborted meanwhile
    /// (a hang elsewhere: the waiter must let its CPU stop).  `idle` runs
    /// a spawned thread queued on this CPU, if any (true if it ran one):
    /// a blocked task lets the scheduler pick another.
    fn wait(&self, k: &Kernel, abort: &AtomicBool, idle: &dyn Fn() -> bool) -> bool {
        let g = self.generation.load(Ordering::SeqCst);
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 == self.parties {
            self.arrived.store(0, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::SeqCst) == g {
            if abort.load(Ordering::Relaxed) {
                return false;
            }
            if idle() {
                continue;
            }
            k.smp.cpu_relax();
            spins += 1;
            if spins.is_multiple_of(32) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        true
    }
}

/// What every thread of the run shares.
struct Shared {
    file: String,
    barriers: BTreeMap<String, Barrier>,
    /// (process, region) -> (address, pages), as last mapped by any thread.
    regions: Mutex<BTreeMap<(String, String), At>>,
    /// (process, region, instance) -> the address chosen for it.
    chosen: Mutex<BTreeMap<(String, String, usize), u64>>,
    next_addr: AtomicU64,
    /// Threads that have not reached their end, `spin` or `sleep`.
    working: AtomicU64,
    reads_failed: AtomicU64,
    first_bad_read: Mutex<Option<String>>,
    params: BTreeMap<String, u64>,
    ncpus: u64,
    /// Declared files, in declaration order.
    files: Vec<(String, Arc<mm_core::mm::AddressSpace>)>,
    /// Per CPU: the stall point its current gup-fast / collapse step
    /// waits at, and the barriers it meets there (taken by the hook).
    stalls: Vec<Mutex<Option<Armed>>>,
    /// The run ended in a machine error: every waiting thread gives up so
    /// its CPU can stop.
    abort: AtomicBool,
    /// Held threads: set by `start NAME`.
    started: BTreeMap<String, std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Per CPU: spawned threads waiting to run there.  The CPU runs one at
    /// its current task's next blocking wait (`join`, a barrier, a held
    /// thread's wait, `spin`: the scheduler picking a woken task), or the
    /// task queued behind its current one does (`drainers`).
    runq: Vec<Mutex<std::collections::VecDeque<Job>>>,
    /// Queues the drainer tasks (from inside a task).
    spawner: emu_cpu::Spawner,
    /// One task per `spawn`, queued on its CPU: runs what is still queued
    /// there when it gets the CPU.  Joined at the end of the run.
    drainers: Mutex<Vec<emu_cpu::TaskHandle<()>>>,
    /// Syscalls of spawned threads (declared threads count theirs in the
    /// work log).
    spawned_ops: AtomicU64,
    /// The threads' error lines (a failed step), first first.
    errors: Mutex<Vec<String>>,
    seed: u64,
    /// `repeat until budget` loops that meet at barriers agree on their
    /// last round (`Runner::lockstep_more`): the highest round any of them
    /// started, plus one, closed once one saw the budget spent
    /// (`budget::round_gate_pass`).
    round_gate: AtomicU64,
    /// shmem and hugetlbfs objects of anon-shared and hugetlb mmaps, freed
    /// once nothing maps them.
    objects: Mutex<Vec<Arc<mm_core::mm::AddressSpace>>>,
}

/// A spawned thread's program, run on its CPU with the kernel.
type Job = Box<dyn FnOnce(&Arc<Kernel>) + Send>;

/// Set when a spawned thread's program is over (also when it panicked:
/// then the run is aborted, so that nobody waits for it in vain).
struct DoneGuard {
    done: std::sync::Arc<AtomicBool>,
    sh: std::sync::Arc<Shared>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.sh.abort.store(true, Ordering::SeqCst);
        }
        self.done.store(true, Ordering::SeqCst);
    }
}

/// A stall point and the barriers met there.
type Armed = (Point, Vec<String>);

/// A RaceHooks stall point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Gup(GupFastPoint),
    Collapse(CollapsePoint),
    Zap(ZapPoint),
}

fn point(name: &str) -> Option<Point> {
    Some(match name {
        "pud-read" => Point::Gup(GupFastPoint::PudRead),
        "pmd-read" => Point::Gup(GupFastPoint::PmdRead),
        "pte-read" => Point::Gup(GupFastPoint::PteRead),
        "grabbed" => Point::Gup(GupFastPoint::Grabbed),
        "after-collapse-flush" => Point::Collapse(CollapsePoint::AfterCollapseFlush),
        "after-isolate" => Point::Collapse(CollapsePoint::AfterIsolate),
        "pte-table-done" => Point::Zap(ZapPoint::PteTableDone),
        _ => return None,
    })
}

impl Shared {
    /// The last unmap of a shmem or hugetlbfs object of this run drops its
    /// file (fput → evict_inode: shmem_evict_inode / hugetlbfs's
    /// remove_inode_hugepages): its pages leave the page cache.
    fn release_objects(&self, k: &Kernel) {
        let mut objs = self.objects.lock().expect("objects lock");
        objs.retain(|o| {
            if !o.i_mmap.read().is_empty() {
                return true;
            }
            mm_core::ops::truncate::truncate_inode_pages(k, o, 0);
            false
        });
    }

    /// Run one spawned thread queued on this CPU, if any (a context switch
    /// to it and, after, back to `back`, or lazy when None): true if one ran.
    fn schedule(&self, k: &Arc<Kernel>, back: Option<&Arc<MmStruct>>) -> bool {
        let cpu = k.this_cpu().0 as usize;
        let job = self.runq.get(cpu).and_then(|q| q.lock().expect("run queue lock").pop_front());
        let Some(job) = job else { return false };
        job(k);
        match back {
            Some(mm) => switch_mm(k, mm),
            None => mm_core::tlb::enter_lazy_tlb(k),
        }
        true
    }

    /// At a stall point on this CPU: meet the step's barriers.  At a
    /// gup-fast or collapse point IRQs are off (a waiting walker serves no
    /// IPI, as in the kernel); at a zap point they are on, and the barrier
    /// wait's `cpu_relax` serves the flush IPIs other CPUs send meanwhile.
    fn stall(&self, k: &Kernel, p: Point) {
        let cpu = k.this_cpu().0 as usize;
        let Some(slot) = self.stalls.get(cpu) else { return };
        let hit = {
            let mut g = slot.lock().expect("stall lock");
            match g.as_ref() {
                Some((q, _)) if *q == p => g.take(),
                _ => None,
            }
        };
        if let Some((_, bars)) = hit {
            // Mid-call in a kernel path: no other thread runs here.
            for b in bars {
                if !self.barriers[&b].wait(k, &self.abort, &|| false) {
                    return;
                }
            }
        }
    }
}

/// One thread's interpreter state.
struct Runner<'a> {
    sh: std::sync::Arc<Shared>,
    k: &'a Arc<Kernel>,
    cpu: u64,
    vars: Vec<(String, u64)>,
    rng: Rng,
    work: crate::scenarios::native::ThreadWork,
    until: crate::budget::Until,
    /// This thread's instance index (chosen addresses are per instance).
    me: usize,
    /// SVA devices this thread bound, per process (unbound at its end).
    devices: BTreeMap<String, Arc<mm_core::iommu::SvaDevice>>,
    /// (process, region) -> (address, pages) this thread mapped itself:
    /// looked up before what other threads mapped under the same name.
    own: BTreeMap<(String, String), At>,
    /// Per block being run: the threads it spawned and has not joined
    /// (name, done).  They are joined when the block ends.
    spawns: Vec<Vec<(String, std::sync::Arc<AtomicBool>)>>,
    /// A declared thread (counted in `Shared::working` and the work log);
    /// false for a spawned one.
    declared: bool,
    /// This thread no longer counts in `Shared::working`.
    finished: bool,
    /// Inside a `repeat until budget` whose body meets barriers: a round
    /// is never cut short (its partners would wait at the next barrier).
    lockstep: bool,
}

/// Why a thread stopped before its end.
enum Stop {
    /// The budget ran out (not an error).
    Budget,
    /// `exit`: this block is over.
    Exit,
    Error(String),
}

type Flow = Result<(), Stop>;

impl Scope for Runner<'_> {
    fn var(&self, name: &str) -> Option<u64> {
        match self.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, x)) => Some(*x),
            None => match name {
                "cpu" => Some(self.cpu),
                "ncpus" => Some(self.sh.ncpus),
                _ => self.sh.params.get(name).copied(),
            },
        }
    }
    fn rand(&mut self, n: u64) -> Option<u64> {
        Some(self.rng.below(n))
    }
}

impl Runner<'_> {
    fn fail(&self, span: Span, msg: impl std::fmt::Display) -> Stop {
        Stop::Error(format!("{}:{}:{}: {msg}", self.sh.file, span.line, span.col))
    }

    fn eval(&mut self, e: &Expr) -> Result<u64, Stop> {
        eval_in(e, self).map_err(|span| {
            self.fail(span, "the expression has no value here (an overflow, a division by zero or rand(0))")
        })
    }

    fn file(&self, n: &Name) -> Result<(usize, Arc<mm_core::mm::AddressSpace>), Stop> {
        match self.sh.files.iter().position(|(f, _)| *f == n.text) {
            Some(i) => Ok((i, self.sh.files[i].1.clone())),
            None => Err(self.fail(n.span, format!("file '{}' is not declared", n.text))),
        }
    }

    /// The pages `[a, b)` of a loc and the region.
    fn loc(&mut self, process: &str, loc: &Loc) -> Result<(At, u64, u64), Stop> {
        let key = (process.to_string(), loc.region.text.clone());
        let found = match self.own.get(&key) {
            Some(r) => Some(*r),
            None => self.sh.regions.lock().expect("regions lock").get(&key).copied(),
        };
        let Some(at) = found else {
            return Err(
                self.fail(loc.region.span, format!("region '{}' is not mapped in process {process}", loc.region.text))
            );
        };
        let pages = at.pages;
        let (a, b) = match &loc.pages {
            LocPages::Whole => (0, pages),
            LocPages::One(e) => {
                let i = self.eval(e)?;
                (i, i.saturating_add(1))
            }
            LocPages::Range(x, y) => (self.eval(x)?, self.eval(y)?),
        };
        if a >= b || b > pages {
            return Err(self.fail(
                loc.region.span,
                format!("pages {a}..{b} are outside region '{}' ({pages} pages)", loc.region.text),
            ));
        }
        Ok((at, a, b))
    }

    fn body(&mut self, mm: &Arc<MmStruct>, process: &str, body: &[Step]) -> Flow {
        self.spawns.push(Vec::new());
        let mut r = Ok(());
        for st in body {
            r = self.step(mm, process, st);
            if r.is_err() {
                break;
            }
        }
        // The threads this block spawned and did not join end with it,
        // before the process they run in can exit.
        for (_, done) in self.spawns.pop().unwrap_or_default() {
            if !self.wait_done(&done, mm) && r.is_ok() {
                r = Err(Stop::Error(format!("{}: the run was aborted while a spawned thread ran", self.sh.file)));
            }
        }
        r
    }

    /// Wait until a spawned thread is done (pthread_join: a futex wait, so
    /// the CPU idles lazily, with this mm still loaded, and runs what is
    /// queued on it meanwhile, staying lazy in the last one's mm), then
    /// switch back to `mm` (the waiter is woken); false if the run was
    /// aborted.
    fn wait_done(&self, done: &AtomicBool, mm: &Arc<MmStruct>) -> bool {
        if done.load(Ordering::SeqCst) {
            return true;
        }
        mm_core::tlb::enter_lazy_tlb(self.k);
        let mut spins = 0u32;
        while !done.load(Ordering::SeqCst) {
            if self.sh.abort.load(Ordering::Relaxed) {
                return false;
            }
            if self.sh.schedule(self.k, None) {
                continue;
            }
            self.k.smp.cpu_relax();
            spins += 1;
            if spins.is_multiple_of(32) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        switch_mm(self.k, mm);
        true
    }

    /// A thread's end: its devices unbound, its error kept, and it no
    /// longer counts as working.
    fn end(&mut self, r: Flow) {
        for (_, d) in std::mem::take(&mut self.devices) {
            d.iommu_sva_unbind_device();
        }
        if let Err(Stop::Error(e)) = r {
            self.sh.errors.lock().expect("errors lock").push(e);
        }
        self.done_working();
    }

    /// Arm this CPU's stall slot for the next kernel call.
    fn arm(&self, stall: &Option<Stall>) -> Result<(), Stop> {
        if let Some(st) = stall {
            let p = point(&st.point.text).ok_or_else(|| self.fail(st.point.span, "unknown stall point"))?;
            let bars = st.barriers.iter().map(|b| b.text.clone()).collect();
            *self.sh.stalls[self.cpu as usize].lock().expect("stall lock") = Some((p, bars));
        }
        Ok(())
    }

    /// A stall the call never reached does not carry over to the next one.
    fn disarm(&self) {
        self.sh.stalls[self.cpu as usize].lock().expect("stall lock").take();
    }

    fn done_working(&mut self) {
        if self.declared && !self.finished {
            self.sh.working.fetch_sub(1, Ordering::SeqCst);
        }
        self.finished = true;
    }

    /// Inside a step over many pages: every `TOUCHES_PER_CHECK` pages, stop
    /// the thread if the time is up (a round of a big region takes
    /// seconds; `--seconds` is kept to within a step), unless the round
    /// must run to its end (`lockstep`).
    #[inline]
    fn budget_check(&self, i: u64) -> Flow {
        if i > 0 && i.is_multiple_of(TOUCHES_PER_CHECK) && !self.lockstep && self.until.expired() {
            return Err(Stop::Budget);
        }
        Ok(())
    }

    /// Whether round `r` of a `repeat until budget` that meets barriers
    /// runs: `budget::round_gate_pass` on the run's round gate.
    fn lockstep_more(&self, r: u64) -> bool {
        crate::budget::round_gate_pass(&self.sh.round_gate, r, |r| self.until.more(r))
    }

    /// A spawned thread's program: a thread of `mm` on CPU `cpu` that sees
    /// this thread's variables and regions and draws from its own stream.
    fn spawned(
        &mut self,
        mm: &Arc<MmStruct>,
        process: &str,
        cpu: u64,
        body: &[Step],
        done: std::sync::Arc<AtomicBool>,
    ) -> Job {
        let (sh, mm, process, body) = (self.sh.clone(), mm.clone(), process.to_string(), body.to_vec());
        let (vars, own, until, me, stream) =
            (self.vars.clone(), self.own.clone(), self.until, self.me, self.rng.next());
        Box::new(move |k: &Arc<Kernel>| {
            let _done = DoneGuard { done, sh: sh.clone() };
            let mut th = Runner {
                rng: Rng::new(sh.seed, stream),
                sh,
                k,
                cpu,
                vars,
                work: WorkLog::new(1).thread(0),
                until,
                me,
                devices: BTreeMap::new(),
                own,
                spawns: Vec::new(),
                declared: false,
                finished: false,
                lockstep: false,
            };
            switch_mm(k, &mm);
            let r = th.body(&mm, &process, &body);
            th.sh.spawned_ops.fetch_add(th.work.ops(), Ordering::Relaxed);
            th.end(r);
        })
    }

    fn step(&mut self, mm: &Arc<MmStruct>, process: &str, st: &Step) -> Flow {
        let k = self.k;
        let sys_err = |t: &Self, e: mm_core::ops::MmError| t.fail(st.span, format!("{}: {e}", st.kind.keyword()));
        match &st.kind {
            StepKind::Mmap { region, kind, size, at, prot, offset } => {
                let n = self.eval(&size.expr)?;
                let bytes = if size.pages { n * PAGE } else { n };
                let key = (process.to_string(), region.text.clone());
                let addr = match at {
                    Some(a) => self.eval(a)?,
                    None => {
                        let mut ch = self.sh.chosen.lock().expect("chosen lock");
                        let slot = (process.to_string(), region.text.clone(), self.me);
                        *ch.entry(slot).or_insert_with(|| {
                            CHOSEN_BASE
                                + self.sh.next_addr.fetch_add(bytes.div_ceil(CHOSEN_STRIDE), Ordering::SeqCst)
                                    * CHOSEN_STRIDE
                        })
                    }
                };
                let file = match kind {
                    MapKind::FilePrivate(f) | MapKind::FileShared(f) => {
                        let (i, mapping) = self.file(f)?;
                        let pgoff = match offset {
                            Some(o) => self.eval(o)? / PAGE,
                            None => 0,
                        };
                        let shared = matches!(kind, MapKind::FileShared(_));
                        let _t = syscall_entry(k, "mmap");
                        mm_core::ops::mmap_file(k, mm, addr, bytes, *prot == Prot::Rw, shared, &mapping, pgoff)
                            .map_err(|e| sys_err(self, e))?;
                        Some((i, pgoff))
                    }
                    // MAP_SHARED|MAP_ANONYMOUS: a shmem object of its own
                    // (shmem_zero_setup); MAP_HUGETLB: a hugetlbfs file of
                    // its own (hugetlb_file_setup).  Freed when nothing
                    // maps it any more (`Shared::release_objects`).
                    MapKind::AnonShared | MapKind::Hugetlb => {
                        let object = k.new_file(bytes / PAGE);
                        let _t = syscall_entry(k, "mmap");
                        let r = if matches!(kind, MapKind::Hugetlb) {
                            mm_core::ops::mmap_hugetlb(k, mm, addr, bytes, *prot == Prot::Rw, &object, 0)
                        } else {
                            mm_core::ops::mmap_file(k, mm, addr, bytes, *prot == Prot::Rw, true, &object, 0)
                        };
                        r.map_err(|e| sys_err(self, e))?;
                        self.sh.objects.lock().expect("objects lock").push(object);
                        None
                    }
                    // Anonymous private; `thp` is the same VMA at a 2 MiB
                    // aligned address: its faults map base pages (the model
                    // has no do_huge_pmd_anonymous_page, as when the THP
                    // allocation at fault time falls back), and `collapse`
                    // makes it PMD-mapped, as khugepaged does.
                    MapKind::Anon | MapKind::Thp => {
                        sys::mmap_anon(k, mm, addr, bytes).map_err(|e| sys_err(self, e))?;
                        if *prot != Prot::Rw {
                            sys::mprotect(k, mm, addr, bytes, false).map_err(|e| sys_err(self, e))?;
                        }
                        None
                    }
                };
                self.work.op();
                let at = At { addr, pages: bytes / PAGE, file };
                self.own.insert(key.clone(), at);
                self.sh.regions.lock().expect("regions lock").insert(key, at);
            }
            StepKind::Write { loc, value } => {
                let (at, a, b) = self.loc(process, loc)?;
                let addr = at.addr;
                let v = match value {
                    Some(v) => self.eval(v)?,
                    None => 1,
                };
                for p in a..b {
                    self.budget_check(p - a)?;
                    if let Err(e) = k.write_user(mm, addr + p * PAGE, v) {
                        return Err(self.fail(
                            st.span,
                            format!("write of page {p} of '{}' faulted ({})", loc.region.text, signal(&e)),
                        ));
                    }
                }
            }
            StepKind::Read { loc, expect } => {
                let (at, a, b) = self.loc(process, loc)?;
                let addr = at.addr;
                let want = match expect {
                    Some(ReadExpect::Value(v)) => Some(Some(self.eval(v)?)),
                    Some(ReadExpect::Segv) => Some(None),
                    None => None,
                };
                for p in a..b {
                    self.budget_check(p - a)?;
                    let r = k.read_user(mm, addr + p * PAGE);
                    let got = r.as_ref().ok().copied();
                    match want {
                        Some(w) if w != got => {
                            self.sh.reads_failed.fetch_add(1, Ordering::Relaxed);
                            let show = |v: Option<u64>| v.map_or("SIGSEGV".to_string(), |v| v.to_string());
                            let msg = format!(
                                "{}:{}:{}: read of page {p} of '{}' saw {}; expected {}",
                                self.sh.file,
                                st.span.line,
                                st.span.col,
                                loc.region.text,
                                show(got),
                                show(w)
                            );
                            self.sh.first_bad_read.lock().expect("read lock").get_or_insert(msg);
                        }
                        None if got.is_none() => {
                            let sig = r.err().map_or("SIGSEGV", |e| signal(&e));
                            return Err(self
                                .fail(st.span, format!("read of page {p} of '{}' faulted ({sig})", loc.region.text)));
                        }
                        _ => {}
                    }
                }
            }
            StepKind::Peek { addr } => {
                let a = self.eval(addr)?;
                let _ = k.read_user(mm, a & !(PAGE - 1));
            }
            StepKind::Munmap { loc, stall } => {
                let (at, a, b) = self.loc(process, loc)?;
                let addr = at.addr;
                self.arm(stall)?;
                let r = sys::munmap(k, mm, addr + a * PAGE, (b - a) * PAGE);
                self.disarm();
                r.map_err(|e| sys_err(self, e))?;
                self.sh.release_objects(k);
                self.work.op();
            }
            StepKind::Mprotect { loc, prot } => {
                let (at, a, b) = self.loc(process, loc)?;
                let addr = at.addr;
                let r = match prot {
                    Prot::Rw => sys::mprotect(k, mm, addr + a * PAGE, (b - a) * PAGE, true),
                    Prot::Ro => sys::mprotect(k, mm, addr + a * PAGE, (b - a) * PAGE, false),
                    // PROT_NONE: no syscall wrapper of the native scenarios has it.
                    Prot::None => mm_core::ops::mprotect(k, mm, addr + a * PAGE, (b - a) * PAGE, false, false),
                };
                r.map_err(|e| sys_err(self, e))?;
                self.work.op();
            }
            StepKind::Madvise { loc, stall, .. } => {
                let (at, a, b) = self.loc(process, loc)?;
                let addr = at.addr;
                self.arm(stall)?;
                let r = sys::madvise_dontneed(k, mm, addr + a * PAGE, (b - a) * PAGE);
                self.disarm();
                r.map_err(|e| sys_err(self, e))?;
                self.work.op();
            }
            StepKind::Fork { child, body } | StepKind::Exec { child, body } => {
                let c = match st.kind {
                    StepKind::Fork { .. } => sys::fork(k, mm).map_err(|e| sys_err(self, e))?,
                    _ => k.mm_alloc(),
                };
                {
                    let mut r = self.sh.regions.lock().expect("regions lock");
                    r.retain(|(p, _), _| *p != child.text);
                    if matches!(st.kind, StepKind::Fork { .. }) {
                        let mine: Vec<_> =
                            r.iter().filter(|((p, _), _)| p == process).map(|((_, n), v)| (n.clone(), *v)).collect();
                        for (n, v) in mine {
                            r.insert((child.text.clone(), n), v);
                        }
                    }
                }
                let inherited: Vec<_> = self
                    .own
                    .iter()
                    .filter(|((p, _), _)| p == process)
                    .map(|((_, n), v)| ((child.text.clone(), n.clone()), *v))
                    .collect();
                self.own.retain(|(p, _), _| *p != child.text);
                if matches!(st.kind, StepKind::Fork { .. }) {
                    self.own.extend(inherited);
                }
                self.work.op();
                switch_mm(k, &c);
                let flow = self.body(&c, &child.text, body);
                sys::exit(k, &c);
                self.sh.release_objects(k);
                self.work.op();
                switch_mm(k, mm);
                match flow {
                    Ok(()) | Err(Stop::Exit) => {}
                    Err(e) => return Err(e),
                }
            }
            StepKind::Msync { loc } => {
                let (at, a, b) = self.loc(process, loc)?;
                let Some((i, pgoff)) = at.file else {
                    return Err(self.fail(st.span, format!("msync of '{}', which maps no file", loc.region.text)));
                };
                let _t = syscall_entry(k, "msync");
                mm_core::ops::writeback::filemap_fdatawrite_range(k, &self.sh.files[i].1, pgoff + a, pgoff + b);
                self.work.op();
            }
            StepKind::Fadvise { file, pages, .. } => {
                let (_, mapping) = self.file(file)?;
                let (a, b) = match pages {
                    Some((a, b)) => (self.eval(a)?, self.eval(b)?),
                    None => (0, mapping.nr_pages),
                };
                let _t = syscall_entry(k, "fadvise64");
                mm_core::ops::writeback::invalidate_mapping_pages(k, &mapping, a, b);
                self.work.op();
            }
            StepKind::Truncate { file, size } => {
                // ftruncate(fd, SIZE) (0 without `size`): do_sys_ftruncate →
                // truncate_setsize → truncate_pagecache.
                let (_, mapping) = self.file(file)?;
                let bytes = match size {
                    Some(sz) => {
                        let n = self.eval(&sz.expr)?;
                        if sz.pages {
                            n * PAGE
                        } else {
                            n
                        }
                    }
                    None => 0,
                };
                let _t = syscall_entry(k, "ftruncate");
                mm_core::ops::truncate::do_sys_ftruncate(k, &mapping, bytes);
                self.work.op();
            }
            StepKind::GupFast { loc, write, pin, stall } => {
                let (at, a, b) = self.loc(process, loc)?;
                let mut flags = if *pin { Foll::PIN } else { Foll::GET };
                if *write {
                    flags = flags | Foll::WRITE;
                }
                self.arm(stall)?;
                let pages = gup_fast(k, mm, at.addr + a * PAGE, b - a, flags);
                self.disarm();
                if *pin {
                    unpin_user_pages(k, &pages);
                } else {
                    put_user_pages(k, &pages);
                }
            }
            StepKind::Collapse { loc, stall } => {
                let (at, a, b) = self.loc(process, loc)?;
                let pmd = super::check::PMD_PAGES;
                for r in (a..b).step_by(pmd as usize) {
                    self.arm(stall)?;
                    let _ = mm_core::ops::khugepaged::collapse_huge_page(k, mm, at.addr + r * PAGE);
                    self.disarm();
                }
            }
            StepKind::Device { write, loc, value, expect } => {
                let (at, a, b) = self.loc(process, loc)?;
                let dev = self
                    .devices
                    .entry(process.to_string())
                    .or_insert_with(|| mm_core::iommu::iommu_sva_bind_device(k, mm, DEVICE_RETRY_BOUND))
                    .clone();
                let v = match value {
                    Some(v) => self.eval(v)?,
                    None => 1,
                };
                let want = match expect {
                    Some(e) => Some(self.eval(e)?),
                    None => None,
                };
                for p in a..b {
                    let va = at.addr + p * PAGE;
                    let r = if *write { dev.dma_write(k, va, v) } else { dev.dma_read(k, va) };
                    let got = match r {
                        Ok(x) => x,
                        Err(e) => {
                            return Err(self.fail(
                                st.span,
                                format!("device access to page {p} of '{}' failed: {e:?}", loc.region.text),
                            ))
                        }
                    };
                    // A write returns the old word: its expectation is on that.
                    if want.is_some_and(|w| w != got) {
                        self.sh.reads_failed.fetch_add(1, Ordering::Relaxed);
                        let msg = format!(
                            "{}:{}:{}: device access to page {p} of '{}' saw {got}; expected {}",
                            self.sh.file,
                            st.span.line,
                            st.span.col,
                            loc.region.text,
                            want.unwrap_or_default()
                        );
                        self.sh.first_bad_read.lock().expect("read lock").get_or_insert(msg);
                    }
                }
            }
            StepKind::Start { thread } => match self.sh.started.get(&thread.text) {
                Some(f) => f.store(true, Ordering::SeqCst),
                None => return Err(self.fail(thread.span, format!("thread '{}' is not held", thread.text))),
            },
            StepKind::Exit { .. } => return Err(Stop::Exit),
            StepKind::Spin => {
                self.done_working();
                let mut spins = 0u32;
                while self.sh.working.load(Ordering::SeqCst) > 0 && !self.sh.abort.load(Ordering::Relaxed) {
                    // The tick would let a thread woken on this CPU run.
                    if self.sh.schedule(k, Some(mm)) {
                        continue;
                    }
                    k.smp.cpu_relax();
                    spins += 1;
                    if spins.is_multiple_of(32) {
                        std::thread::yield_now();
                    }
                }
                return Err(Stop::Exit);
            }
            StepKind::Sleep => {
                self.done_working();
                return Err(Stop::Exit);
            }
            StepKind::Barrier { name } => {
                let sh = self.sh.clone();
                if !sh.barriers[&name.text].wait(k, &sh.abort, &|| sh.schedule(k, Some(mm))) {
                    return Err(self.fail(st.span, "the run was aborted while this thread waited at the barrier"));
                }
            }
            StepKind::Repeat { count, body } => {
                let n = self.eval(count)?;
                for _ in 0..n {
                    self.body(mm, process, body)?;
                }
            }
            StepKind::RepeatUntilBudget { body } => {
                let mut names = Vec::new();
                barrier_names(body, &mut names);
                if names.is_empty() || self.lockstep {
                    while self.until.more(self.work.rounds()) {
                        self.body(mm, process, body)?;
                        self.work.round(&self.rng);
                    }
                } else {
                    self.lockstep = true;
                    let mut r = Ok(());
                    while r.is_ok() && self.lockstep_more(self.work.rounds()) {
                        r = self.body(mm, process, body);
                        if r.is_ok() {
                            self.work.round(&self.rng);
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
                    if self.until.expired() && !self.lockstep {
                        return Err(Stop::Budget);
                    }
                    self.vars.push((var.text.clone(), a + i * s));
                    let r = self.body(mm, process, body);
                    self.vars.pop();
                    r?;
                }
            }
            StepKind::Spawn { thread, cpu, body } => {
                let target = match cpu {
                    Some(e) => self.eval(e)?,
                    None => self.cpu,
                };
                if target >= self.sh.ncpus {
                    return Err(self.fail(st.span, format!("spawn on CPU {target}; the run has {}", self.sh.ncpus)));
                }
                let done = std::sync::Arc::new(AtomicBool::new(false));
                let job = self.spawned(mm, process, target, body, done.clone());
                self.sh.runq[target as usize].lock().expect("run queue lock").push_back(job);
                let (sh, kk) = (self.sh.clone(), k.clone());
                let drainer = self.sh.spawner.spawn_on(CpuId(target as u32), move || {
                    mm_core::tlb::enter_lazy_tlb(&kk);
                    while sh.schedule(&kk, None) {}
                });
                self.sh.drainers.lock().expect("drainers lock").push(drainer);
                if let Some(frame) = self.spawns.last_mut() {
                    frame.push((thread.text.clone(), done));
                }
                self.work.op();
            }
            StepKind::Join { thread } => {
                let i = self.spawns.last().and_then(|f| f.iter().position(|(n, _)| *n == thread.text));
                let Some(i) = i else {
                    return Err(
                        self.fail(thread.span, format!("thread '{}' was not spawned in this block", thread.text))
                    );
                };
                let (_, done) = self.spawns.last_mut().map(|f| f.remove(i)).expect("the frame just searched");
                if !self.wait_done(&done, mm) {
                    return Err(self.fail(st.span, "the run was aborted while this thread waited in join"));
                }
            }
        }
        Ok(())
    }
}

/// The emulated RAM (page frames) a run asks for: what the threads map,
/// twice over (RCU-freed frames come back a tick later), and room for
/// tables.  The CLI checks it against the host before the run.
pub fn ram_frames(s: &Script, c: &Checked, ncpus: u64) -> usize {
    frames(s, c, ncpus).saturating_mul(2).saturating_add(8192)
}

/// Pages the threads map at most at once (every mmap of every instance
/// counted once: regions are remapped in loops, not piled up).
fn frames(s: &Script, c: &Checked, ncpus: u64) -> usize {
    fn walk(b: &[Step], c: &Checked, ncpus: u64, cpu: u64) -> u64 {
        b.iter()
            .map(|st| match &st.kind {
                StepKind::Mmap { size, .. } => {
                    let n = const_eval(&size.expr, c, ncpus, cpu).unwrap_or(0);
                    if size.pages {
                        n
                    } else {
                        n / PAGE
                    }
                }
                StepKind::Fork { body, .. } => 2 * walk(body, c, ncpus, cpu),
                StepKind::Exec { body, .. }
                | StepKind::Spawn { body, .. }
                | StepKind::Repeat { body, .. }
                | StepKind::RepeatUntilBudget { body }
                | StepKind::For { body, .. } => walk(body, c, ncpus, cpu),
                _ => 0,
            })
            .sum()
    }
    let per: u64 = s.threads.iter().map(|t| walk(&t.body, c, ncpus, 0)).sum();
    usize::try_from(per.saturating_mul(ncpus.max(1))).unwrap_or(usize::MAX)
}

/// Barrier names a body reaches (its fork / exec children's too).
fn barrier_names(body: &[Step], out: &mut Vec<String>) {
    for st in body {
        match &st.kind {
            StepKind::Barrier { name } if !out.contains(&name.text) => out.push(name.text.clone()),
            StepKind::GupFast { stall: Some(st), .. }
            | StepKind::Collapse { stall: Some(st), .. }
            | StepKind::Munmap { stall: Some(st), .. }
            | StepKind::Madvise { stall: Some(st), .. } => {
                for b in &st.barriers {
                    if !out.contains(&b.text) {
                        out.push(b.text.clone());
                    }
                }
            }
            StepKind::Fork { body, .. }
            | StepKind::Exec { body, .. }
            | StepKind::Repeat { body, .. }
            | StepKind::RepeatUntilBudget { body }
            | StepKind::For { body, .. } => barrier_names(body, out),
            _ => {}
        }
    }
}

/// Run the checked script `s` on a machine booted from `ctx` (whose
/// `kcfg` already carries the header's arch, CPUs and reverts).
pub fn run(file: &str, s: &Script, c: &Checked, ctx: &Ctx) -> Result<ScriptRun, RunError> {
    let n = ctx.nr_cpus() as u64;
    // Instances: (thread, cpu).
    let mut inst: Vec<(&Thread, u64)> = Vec::new();
    for t in &s.threads {
        let cpus: Vec<u64> = match &t.placement {
            Placement::Cpu(e) => vec![const_eval(e, c, n, 0)?],
            Placement::EachCpu => (0..n).collect(),
            Placement::Cpus(a, b) => (const_eval(a, c, n, 0)?..const_eval(b, c, n, 0)?).collect(),
        };
        for cpu in cpus {
            if cpu >= n {
                return Err(RunError::Config(format!(
                    "{file}: thread {} wants CPU {cpu}; the run has {n}",
                    t.name.text
                )));
            }
            inst.push((t, cpu));
        }
    }
    let mut barriers = BTreeMap::new();
    for (t, _) in &inst {
        let mut names = Vec::new();
        barrier_names(&t.body, &mut names);
        for b in names {
            barriers
                .entry(b)
                .or_insert(Barrier { parties: 0, arrived: AtomicU64::new(0), generation: AtomicU64::new(0) })
                .parties += 1;
        }
    }
    // The header's knobs (KernelConfig fields; the test knob after boot).
    let mut ctx = ctx.clone();
    for (name, v) in &c.knobs {
        let kc = &mut ctx.kcfg;
        match (*name, *v) {
            ("rcu-table-free", KnobSetting::Bool(on)) => kc.rcu_table_free = on,
            ("pte-free-defer", KnobSetting::Bool(on)) => kc.pte_free_defer = on,
            ("table-free-one-sync", KnobSetting::Bool(on)) => kc.table_free_one_sync = on,
            ("gup-oracle", KnobSetting::Bool(on)) => kc.gup_oracle = on,
            ("strict-free-check", KnobSetting::Bool(on)) => kc.strict_free_check = on,
            ("init-on-free", KnobSetting::Bool(on)) => kc.init_on_free = on,
            ("debug-vm", KnobSetting::Bool(on)) => kc.debug_vm = on,
            ("tlb-single-page-flush-ceiling", KnobSetting::Num(x)) => kc.tlb_single_page_flush_ceiling = x,
            _ => {}
        }
    }
    let ctx = &ctx;
    let b = boot(ctx, ram_frames(s, c, n))?;
    let files: Vec<(String, Arc<mm_core::mm::AddressSpace>)> = s
        .files
        .iter()
        .map(|f| {
            let n = const_eval(&f.size.expr, c, n, 0).unwrap_or(0);
            let pages = if f.size.pages { n } else { n / PAGE };
            let file = b.sys.kernel().new_file(pages);
            // The file's first words on disk: page i reads i (`index`) or V
            // (`fill V`) when it is first faulted in.
            let word = |i: u64| match &f.contents {
                Contents::Zero => None,
                Contents::Index => Some(i),
                Contents::Fill(e) => const_eval(e, c, n, 0).ok(),
            };
            {
                let mut disk = file.disk.lock();
                for i in 0..pages {
                    if let Some(w) = word(i) {
                        disk.insert(i, vec![w]);
                    }
                }
            }
            (f.name.text.clone(), file)
        })
        .collect();
    let mut mms = BTreeMap::new();
    for p in &s.processes {
        mms.insert(p.text.clone(), b.sys.mm_alloc()?);
    }
    let sh = std::sync::Arc::new(Shared {
        file: file.to_string(),
        barriers,
        regions: Mutex::new(BTreeMap::new()),
        chosen: Mutex::new(BTreeMap::new()),
        next_addr: AtomicU64::new(0),
        working: AtomicU64::new(inst.len() as u64),
        reads_failed: AtomicU64::new(0),
        first_bad_read: Mutex::new(None),
        params: c.params.clone(),
        ncpus: n,
        files: files.clone(),
        stalls: (0..n).map(|_| Mutex::new(None)).collect(),
        abort: AtomicBool::new(false),
        started: s.threads.iter().filter(|t| t.held).map(|t| (t.name.text.clone(), Default::default())).collect(),
        runq: (0..n).map(|_| Mutex::new(Default::default())).collect(),
        spawner: b.sys.machine.spawner(),
        drainers: Mutex::new(Vec::new()),
        spawned_ops: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        seed: ctx.seed,
        round_gate: AtomicU64::new(0),
        objects: Mutex::new(Vec::new()),
    });
    {
        let (g, cl, z) = (sh.clone(), sh.clone(), sh.clone());
        let k = b.sys.kernel();
        k.inject.race.set_gup_fast(move |k, p, _va| g.stall(k, Point::Gup(p)));
        k.inject.race.set_collapse(move |k, p, _va| cl.stall(k, Point::Collapse(p)));
        k.inject.race.set_zap(move |k, p, _va| z.stall(k, Point::Zap(p)));
        for (name, v) in &c.knobs {
            if let (&"hugetlb-unshare-sync-after-unlock", KnobSetting::Bool(on)) = (name, v) {
                k.inject.knobs.hugetlb_unshare_sync_after_unlock.set(*on);
            }
        }
    }
    let log = WorkLog::new(inst.len());
    let until = b.until;
    // Seed streams: the threads that start together take 0, 1, … in
    // declaration order (the native scenarios' per-CPU streams for `on each
    // cpu`), `first` threads the numbers after them.
    let mut streams = vec![0u64; inst.len()];
    let together = inst.iter().filter(|(t, _)| !t.first).count() as u64;
    let (mut a, mut f) = (0u64, together);
    for (i, (t, _)) in inst.iter().enumerate() {
        let n = if t.first { &mut f } else { &mut a };
        streams[i] = *n;
        *n += 1;
    }
    let spawn = |i: usize, t: &Thread, cpu: u64| {
        let (sh, body, process) = (sh.clone(), t.body.clone(), t.process.text.clone());
        let work = log.thread(i);
        let (seed, stream) = (ctx.seed, streams[i]);
        let held = t.held.then(|| sh.started[&t.name.text].clone());
        let abort_of = sh.clone();
        let mm = mms[&t.process.text].clone();
        let job = move |k: &Arc<Kernel>, mm: &Arc<MmStruct>| {
            let mut th = Runner {
                sh,
                k,
                cpu,
                vars: Vec::new(),
                rng: Rng::new(seed, stream),
                work,
                until,
                me: i,
                own: BTreeMap::new(),
                devices: BTreeMap::new(),
                spawns: Vec::new(),
                declared: true,
                finished: false,
                lockstep: false,
            };
            let r = th.body(mm, &process, &body);
            th.end(r);
        };
        match held {
            None => b.sys.spawn_user(CpuId(cpu as u32), &mm, job),
            // A held thread: a kernel thread (lazy TLB, the CPU as good as
            // idle) until some step starts it, then the task in its mm.
            Some(flag) => b.sys.spawn_kthread(CpuId(cpu as u32), move |k| {
                let abort = &abort_of.abort;
                let mut spins = 0u32;
                while !flag.load(Ordering::SeqCst) {
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    if abort_of.schedule(k, None) {
                        continue;
                    }
                    k.smp.cpu_relax();
                    spins += 1;
                    if spins.is_multiple_of(32) {
                        std::thread::yield_now();
                    }
                }
                switch_mm(k, &mm);
                job(k, &mm);
                mm_core::tlb::enter_lazy_tlb(k);
            }),
        }
    };
    // `first` threads run to their end before the others start.
    let mut err = None;
    for (i, (t, cpu)) in inst.iter().enumerate().filter(|(_, (t, _))| t.first) {
        join_into(&b, vec![spawn(i, t, *cpu)], &mut err);
        if err.is_some() {
            sh.abort.store(true, Ordering::SeqCst);
            break;
        }
    }
    let hs = if err.is_some() {
        Vec::new()
    } else {
        inst.iter().enumerate().filter(|(_, (t, _))| !t.first).map(|(i, (t, cpu))| spawn(i, t, *cpu)).collect()
    };
    join_into(&b, hs, &mut err);
    if err.is_some() {
        sh.abort.store(true, Ordering::SeqCst);
    }
    // Every spawned thread ended with its block; their drainers end at once.
    loop {
        let hs = std::mem::take(&mut *sh.drainers.lock().expect("drainers lock"));
        if hs.is_empty() {
            break;
        }
        join_into(&b, hs, &mut err);
    }
    let last = sh.clone();
    let exit: Vec<Arc<MmStruct>> = mms.into_values().collect();
    let mut work = log.total();
    work.ops += sh.spawned_ops.load(Ordering::SeqCst);
    let mut outcome = finish(b, work, err, move |k| {
        for mm in &exit {
            sys::exit(k, mm);
        }
        // The page cache goes with the files (the leak check counts it).
        for (_, f) in &files {
            mm_core::ops::truncate::truncate_inode_pages(k, f, 0);
        }
        last.release_objects(k);
    });
    if let Some(e) = sh.errors.lock().expect("errors lock").first() {
        outcome.error.get_or_insert(RunError::Driver(e.clone()));
    }
    let reads_failed = sh.reads_failed.load(Ordering::SeqCst);
    let mut failed = Vec::new();
    for e in &s.expects {
        let obs = super::judge::Emulated { outcome: &outcome, reads_failed };
        if let super::judge::Judged::Failed(f) = super::judge::judge(file, e, &obs, n, c)? {
            failed.push(f);
        }
    }
    if reads_failed > 0 && !s.expects.iter().any(|e| matches!(e.target, Target::ReadsFailed)) {
        if let Some(m) = sh.first_bad_read.lock().expect("read lock").clone() {
            failed.push(m);
        }
    }
    Ok(ScriptRun { outcome, reads_failed, failed })
}
