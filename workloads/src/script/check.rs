//! Semantic validation of a parsed script (docs/SCRIPTS.md "Checks before
//! running"): names resolve (fixes, knobs, counters, violation kinds,
//! processes, files, regions, threads), values are in range (evaluated
//! with the parameters' values and each thread's CPU), and the threads'
//! barriers cannot deadlock in the statically visible ways.  The result is
//! a `Checked` (the resolved header and a count of what the script holds)
//! or one `ScriptError`.

use crate::error::RunError;
use std::collections::{BTreeMap, BTreeSet};

use mm_core::config::{Arch, Fix};
use mm_core::stats::Stat;
use mm_core::KernelConfig;

use super::ast::*;
use super::ScriptError;
use crate::input::{did_you_mean, suggest};

/// Emulated CPUs a script may ask for (`mm_core::types::NR_CPUS`, as
/// `scenarios::MAX_CPUS`).
pub const MAX_CPUS: u64 = mm_core::types::NR_CPUS as u64;
/// Page size of the emulated geometry (x86-64 and arm64 4K both).
pub const PAGE: u64 = mm_core::Geometry::X86_64.page_size();
/// A PMD-sized (2 MiB) range in pages: THP, hugetlb, khugepaged collapse.
pub const PMD_PAGES: u64 = mm_core::Geometry::X86_64.pmd_size() / PAGE;
/// Largest region (bytes).
pub const MAX_REGION: u64 = 1 << 30;
/// Largest file (bytes).
pub const MAX_FILE: u64 = 1 << 30;
/// End of the user address space the emulator maps (x86-64 TASK_SIZE_MAX).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// Largest `repeat N` and `budget N rounds`.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// Largest budget in seconds.
pub const MAX_SECONDS: u64 = 86_400;
/// Barrier events compared per pair of threads before the order check
/// gives up (the counts are still compared exactly).
const MAX_EVENTS: usize = 20_000;

/// Kernel profiles a script may name.
pub const KERNELS: &[&str] = &["6.12", "6.18"];
/// Every `madvise` advice the model implements.
pub const ADVICES: &[&str] = &["dontneed"];
/// `GupFastPoint`s, in the kernel's order.
pub const GUP_POINTS: &[&str] = &["pud-read", "pmd-read", "pte-read", "grabbed"];
/// `CollapsePoint`s.
pub const COLLAPSE_POINTS: &[&str] = &["after-collapse-flush", "after-isolate"];
/// `ZapPoint`s (the zap walk of `madvise … dontneed` and `munmap`).
pub const ZAP_POINTS: &[&str] = &["pte-table-done"];
/// /proc/interrupts rows.
pub const INTERRUPT_ROWS: &[&str] = &["TLB", "CAL"];
/// `ViolationKind::name` of every kind (pinned by a test).
pub const VIOLATION_KINDS: &[&str] = &[
    "stale-tlb-access",
    "walk-into-freed-table",
    "walk-into-unshared-table",
    "freed-before-flush",
    "table-freed-before-flush",
    "gup-fast-freed-table",
    "gup-oracle",
    "secondary-tlb-stale",
    "lost-dirty-data",
    "secondary-livelock",
    "stale-after-zap",
    "debug-vm-warning",
];

/// A knob and what it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnobKind {
    Bool,
    Num { min: u64, max: u64 },
}

/// Every knob a header may set (docs/SCRIPTS.md: the `KernelConfig` field
/// or test knob each moves).
pub const KNOBS: &[(&str, KnobKind)] = &[
    ("rcu-table-free", KnobKind::Bool),
    ("pte-free-defer", KnobKind::Bool),
    ("table-free-one-sync", KnobKind::Bool),
    ("gup-oracle", KnobKind::Bool),
    ("strict-free-check", KnobKind::Bool),
    ("init-on-free", KnobKind::Bool),
    ("debug-vm", KnobKind::Bool),
    ("tlb-single-page-flush-ceiling", KnobKind::Num { min: 1, max: 4096 }),
    ("hugetlb-unshare-sync-after-unlock", KnobKind::Bool),
];

/// A resolved knob value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnobSetting {
    Bool(bool),
    Num(u64),
}

/// The budget a header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetSpec {
    Rounds(u64),
    Millis(u64),
}

/// What `check` found: the resolved header and the script's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub name: String,
    pub arch: Arch,
    pub kernel: &'static str,
    pub cpus: u64,
    pub reverts: Vec<Fix>,
    pub knobs: Vec<(&'static str, KnobSetting)>,
    pub budget: BudgetSpec,
    /// Parameter values used (defaults, or the overrides given).
    pub params: BTreeMap<String, u64>,
    /// Thread instances (`on each cpu` counts one per CPU).
    pub threads: usize,
    /// Steps written (each line once, loops not unrolled).
    pub steps: usize,
    pub barriers: usize,
    pub expects: usize,
}

impl Checked {
    /// The one-line summary `mmemu check` prints.
    pub fn summary(&self, file: &str) -> String {
        let p = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        format!(
            "{file}: ok: script {}, arch {}, kernel {}, {} CPUs, {}, {}, {}, {}",
            self.name,
            self.arch.name(),
            self.kernel,
            self.cpus,
            p(self.threads, "thread"),
            p(self.steps, "step"),
            p(self.barriers, "barrier"),
            p(self.expects, "expectation"),
        )
    }
}

type R<T> = Result<T, ScriptError>;

/// Default CPUs when the header says none.
pub const DEFAULT_CPUS: u64 = 4;
/// Default budget when the header says none.
pub const DEFAULT_ROUNDS: u64 = 100;

/// Validate `s` (read from `file`) with parameter overrides `overrides`
/// (`--param KEY=VALUE`, already split).
pub fn check(file: &str, s: &Script, overrides: &[(String, u64)]) -> R<Checked> {
    Checker::new(file, s)?.run(overrides)
}

/// A region as the checker knows it: pages and whether it maps a file.
#[derive(Clone, Copy, Debug)]
struct Region {
    pages: u64,
    file: bool,
}

/// One barrier arrival (or a loop of them), for the deadlock checks.
#[derive(Clone, Debug)]
enum Ev {
    Barrier(String, Span),
    /// The body `n` times (`None`: until the budget).
    Loop(Option<u64>, Vec<Ev>),
}

/// One thread instance's barrier program and name.
struct Instance {
    name: String,
    cpu: u64,
    first: bool,
    held: bool,
    /// Where the thread is declared; whether its body ends with `spin`.
    span: Span,
    spins: bool,
    events: Vec<Ev>,
}

struct Checker<'a> {
    file: &'a str,
    s: &'a Script,
    params: BTreeMap<String, u64>,
    cpus: u64,
    /// Regions each process has mapped so far, in file order.
    regions: BTreeMap<String, BTreeMap<String, Region>>,
    /// Declared files: pages.
    files: BTreeMap<String, u64>,
    /// Process names: declared, or created by fork / exec.
    processes: BTreeSet<String>,
    /// Held threads and how often something starts them.
    starts: BTreeMap<String, u64>,
    steps: usize,
}

/// What a walk of a body knows about where it is.
#[derive(Clone)]
struct Env {
    process: String,
    cpu: u64,
    vars: Vec<(String, u64)>,
    in_budget_loop: bool,
    /// Inside a `spawn` block (no barriers there).
    in_spawn: bool,
    /// Loop multiplicity above this body (for `start` counts).
    mult: u64,
    /// `for` loops around this body (each walks its body twice, with the
    /// first and the last value, up to `MAX_FOR_REWALK` levels).
    fors: u32,
}

/// `for` nesting up to which the body is also checked with the last value
/// (2^6 walks at most).
const MAX_FOR_REWALK: u32 = 6;

impl<'a> Checker<'a> {
    fn new(file: &'a str, s: &'a Script) -> R<Checker<'a>> {
        Ok(Checker {
            file,
            s,
            params: BTreeMap::new(),
            cpus: DEFAULT_CPUS,
            regions: BTreeMap::new(),
            files: BTreeMap::new(),
            processes: BTreeSet::new(),
            starts: BTreeMap::new(),
            steps: 0,
        })
    }

    fn err<T>(&self, span: Span, msg: impl Into<String>) -> R<T> {
        Err(ScriptError::new(self.file, span, msg.into()))
    }

    fn unknown<T>(&self, span: Span, what: &str, input: &str, names: &[&str]) -> R<T> {
        self.err(
            span,
            format!(
                "found unknown {what} '{input}'{}; allowed {}",
                did_you_mean(&suggest(input, names)),
                names.join(", ")
            ),
        )
    }

    fn run(mut self, overrides: &[(String, u64)]) -> R<Checked> {
        let s = self.s;
        // Parameters first: the header may use them.
        for p in &s.params {
            if matches!(p.name.text.as_str(), "cpu" | "ncpus") || self.params.contains_key(&p.name.text) {
                return self.err(
                    p.name.span,
                    format!(
                        "found parameter '{}' declared twice or reserved; allowed a new name (not cpu, ncpus)",
                        p.name.text
                    ),
                );
            }
            if p.min > p.max || !(p.min..=p.max).contains(&p.default) {
                return self.err(
                    p.span,
                    format!(
                        "found param '{}' = {} in {}..{}; allowed MIN <= DEFAULT <= MAX",
                        p.name.text, p.default, p.min, p.max
                    ),
                );
            }
            self.params.insert(p.name.text.clone(), p.default);
        }
        for (k, v) in overrides {
            let Some(p) = s.params.iter().find(|p| &p.name.text == k) else {
                let names: Vec<&str> = s.params.iter().map(|p| p.name.text.as_str()).collect();
                if names.is_empty() {
                    return self.err(
                        s.name.span,
                        format!("--param {k}: script '{}' has no parameters; allowed no --param", s.name.text),
                    );
                }
                return self.err(
                    s.name.span,
                    format!(
                        "--param: unknown key '{k}'{}; allowed {}",
                        did_you_mean(&suggest(k, &names)),
                        names.join(", ")
                    ),
                );
            };
            if !(p.min..=p.max).contains(v) {
                return self.err(p.span, format!("--param {k}={v} is out of range; allowed {}..={}", p.min, p.max));
            }
            self.params.insert(k.clone(), *v);
        }
        let h = &s.header;
        // The header's profile, or the kernel config's default one.
        let mut arch = KernelConfig::default().arch;
        if let Some(n) = &h.arch {
            let Ok(a) = n.text.parse::<Arch>() else {
                return self.unknown(n.span, "arch", &n.text, &Arch::ALL.map(|a| a.name()));
            };
            arch = a;
        }
        let kernel = match &h.kernel {
            None => KERNELS[0],
            Some(n) => match KERNELS.iter().find(|k| **k == n.text) {
                Some(k) => k,
                None => return self.unknown(n.span, "kernel profile", &n.text, KERNELS),
            },
        };
        let top = self.top_env();
        if let Some(e) = &h.cpus {
            let n = self.eval(e, &top)?;
            if !(1..=MAX_CPUS).contains(&n) {
                return self.err(e.span, format!("found cpus {n}; allowed 1..={MAX_CPUS}"));
            }
            self.cpus = n;
        }
        let mut reverts = Vec::new();
        let fixes: Vec<&str> = Fix::ALL.iter().map(|f| f.name()).collect();
        for r in &h.reverts {
            let Ok(f) = r.text.parse::<Fix>() else {
                return self.unknown(r.span, "fix", &r.text, &fixes);
            };
            if reverts.contains(&f) {
                return self.err(r.span, format!("found fix '{}' reverted twice; allowed once", r.text));
            }
            reverts.push(f);
        }
        let mut knobs: Vec<(&'static str, KnobSetting)> = Vec::new();
        for k in &h.knobs {
            let Some((name, kind)) = KNOBS.iter().find(|(n, _)| *n == k.name.text) else {
                let names: Vec<&str> = KNOBS.iter().map(|(n, _)| *n).collect();
                return self.unknown(k.name.span, "knob", &k.name.text, &names);
            };
            if knobs.iter().any(|(n, _)| n == name) {
                return self.err(k.name.span, format!("found knob '{name}' set twice; allowed once"));
            }
            let v = match (kind, &k.value) {
                (KnobKind::Bool, KnobValue::On) => KnobSetting::Bool(true),
                (KnobKind::Bool, KnobValue::Off) => KnobSetting::Bool(false),
                (KnobKind::Num { min, max }, KnobValue::Num(e)) => {
                    let n = self.eval(e, &top)?;
                    if !(*min..=*max).contains(&n) {
                        return self.err(k.value_span, format!("found {name} = {n}; allowed {min}..={max}"));
                    }
                    KnobSetting::Num(n)
                }
                (KnobKind::Bool, _) => {
                    return self.err(k.value_span, format!("found a number for knob '{name}'; allowed on, off"))
                }
                (KnobKind::Num { min, max }, _) => {
                    return self
                        .err(k.value_span, format!("found on/off for knob '{name}'; allowed a number {min}..={max}"))
                }
            };
            knobs.push((name, v));
        }
        let budget = match &h.budget {
            None => BudgetSpec::Rounds(DEFAULT_ROUNDS),
            Some(b) => {
                let n = self.eval(&b.amount, &top)?;
                match b.unit {
                    BudgetUnit::Rounds if (1..=MAX_COUNT).contains(&n) => BudgetSpec::Rounds(n),
                    BudgetUnit::Rounds => {
                        return self
                            .err(b.amount.span, format!("found budget {n} rounds; allowed 1..={MAX_COUNT} rounds"))
                    }
                    BudgetUnit::Seconds if (1..=MAX_SECONDS).contains(&n) => BudgetSpec::Millis(n * 1000),
                    BudgetUnit::Millis if (1..=MAX_SECONDS * 1000).contains(&n) => BudgetSpec::Millis(n),
                    _ => {
                        return self.err(b.amount.span, format!("found budget {n}; allowed 1ms..={MAX_SECONDS}s"));
                    }
                }
            }
        };
        for p in &s.processes {
            if !self.processes.insert(p.text.clone()) {
                return self.err(p.span, format!("found process '{}' declared twice; allowed once", p.text));
            }
            self.regions.insert(p.text.clone(), BTreeMap::new());
        }
        for f in &s.files {
            if self.files.contains_key(&f.name.text) {
                return self.err(f.name.span, format!("found file '{}' declared twice; allowed once", f.name.text));
            }
            let bytes = self.size(&f.size, &top, MAX_FILE)?;
            if let Contents::Fill(e) = &f.contents {
                self.eval(e, &top)?;
            }
            self.files.insert(f.name.text.clone(), bytes / PAGE);
        }
        if s.threads.is_empty() {
            return self.err(
                s.name.span,
                "found a script without threads; allowed at least one 'thread NAME on cpu N in P {'",
            );
        }
        // Threads: names, placement, then each instance's program.
        let mut names = BTreeSet::new();
        for t in &s.threads {
            if !names.insert(t.name.text.as_str()) {
                return self.err(t.name.span, format!("found thread '{}' declared twice; allowed once", t.name.text));
            }
            if t.held {
                self.starts.insert(t.name.text.clone(), 0);
            }
        }
        let mut instances = Vec::new();
        for t in &s.threads {
            if !s.processes.iter().any(|p| p.text == t.process.text) {
                let names: Vec<&str> = s.processes.iter().map(|p| p.text.as_str()).collect();
                return self.err(
                    t.process.span,
                    format!(
                        "found process '{}', not declared{}; allowed a 'process NAME' line's name ({})",
                        t.process.text,
                        did_you_mean(&suggest(&t.process.text, &names)),
                        if names.is_empty() { "none declared".to_string() } else { names.join(", ") }
                    ),
                );
            }
            let cpus: Vec<u64> = match &t.placement {
                Placement::Cpu(e) => vec![self.cpu(e, &top)?],
                Placement::EachCpu => (0..self.cpus).collect(),
                Placement::Cpus(a, b) => {
                    let (x, y) = (self.eval(a, &top)?, self.eval(b, &top)?);
                    if x >= y || y > self.cpus {
                        return self.err(
                            a.span,
                            format!(
                                "found cpus {x}..{y}; allowed A..B with 0 <= A < B <= {} (the header's cpus)",
                                self.cpus
                            ),
                        );
                    }
                    (x..y).collect()
                }
            };
            let multi = !matches!(t.placement, Placement::Cpu(_));
            for (i, cpu) in cpus.into_iter().enumerate() {
                let env = Env {
                    process: t.process.text.clone(),
                    cpu,
                    vars: Vec::new(),
                    in_budget_loop: false,
                    in_spawn: false,
                    mult: 1,
                    fors: 0,
                };
                let count_steps = i == 0;
                let before = self.steps;
                let mut events = Vec::new();
                self.body(&t.body, &env, &mut events, true)?;
                if !count_steps {
                    self.steps = before;
                }
                let name = if multi { format!("{}.{cpu}", t.name.text) } else { t.name.text.clone() };
                instances.push(Instance {
                    name,
                    cpu,
                    first: t.first,
                    held: t.held,
                    span: t.name.span,
                    spins: matches!(t.body.last().map(|s| &s.kind), Some(StepKind::Spin)),
                    events,
                });
            }
        }
        for (t, n) in &self.starts {
            let th = s.threads.iter().find(|x| &x.name.text == t).expect("held threads are declared");
            match n {
                0 => {
                    return self.err(
                        th.name.span,
                        format!("found held thread '{t}' that no step starts; allowed a 'start {t}' step in another thread, or no 'held'"),
                    )
                }
                1 => {}
                _ => {
                    return self.err(
                        th.name.span,
                        format!("found held thread '{t}' started {n} times; allowed one 'start {t}' executed once"),
                    )
                }
            }
        }
        self.same_cpu(&instances)?;
        let barriers = self.barriers(&instances)?;
        for e in &s.expects {
            self.expect(e, arch, &top)?;
        }
        Ok(Checked {
            name: s.name.text.clone(),
            arch,
            kernel,
            cpus: self.cpus,
            reverts,
            knobs,
            budget,
            params: self.params.clone(),
            threads: instances.len(),
            steps: self.steps,
            barriers,
            expects: s.expects.len(),
        })
    }

    fn top_env(&self) -> Env {
        Env {
            process: String::new(),
            cpu: 0,
            vars: Vec::new(),
            in_budget_loop: false,
            in_spawn: false,
            mult: 1,
            fors: 0,
        }
    }

    // ---- values ----

    fn eval(&self, e: &Expr, env: &Env) -> R<u64> {
        match &e.kind {
            ExprKind::Int(n) => Ok(*n),
            ExprKind::Var(v) => {
                if let Some((_, x)) = env.vars.iter().rev().find(|(n, _)| n == v) {
                    return Ok(*x);
                }
                match v.as_str() {
                    "cpu" => return Ok(env.cpu),
                    "ncpus" => return Ok(self.cpus),
                    _ => {}
                }
                if let Some(x) = self.params.get(v) {
                    return Ok(*x);
                }
                let mut names: Vec<&str> = self.params.keys().map(|k| k.as_str()).collect();
                names.extend(env.vars.iter().map(|(n, _)| n.as_str()));
                names.extend(["cpu", "ncpus"]);
                let dym = did_you_mean(&suggest(v, &names));
                self.err(
                    e.span,
                    format!(
                        "found unknown variable '${v}'{dym}; allowed {}",
                        names.iter().map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
                    ),
                )
            }
            ExprKind::Bin(op, a, b) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                op.apply(x, y).map_or_else(|| self.arith_err(e.span, *op, x, y), Ok)
            }
            ExprKind::Rand(a) => match self.eval(a, env)? {
                0 => self.err(e.span, "found rand(0); allowed rand(N) with N >= 1"),
                // Checked with its largest value (indices stay below N).
                n => Ok(n - 1),
            },
            ExprKind::Call(f, a, b) => {
                let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                match f.apply(x, y) {
                    Some(v) => Ok(v),
                    None => self.err(e.span, format!("found divup({x}, 0); allowed a divisor >= 1")),
                }
            }
        }
    }

    fn arith_err<T>(&self, span: Span, op: BinOp, x: u64, y: u64) -> R<T> {
        let (sym, why) = match op {
            BinOp::Add => ("+", "overflows"),
            BinOp::Sub => ("-", "is negative"),
            BinOp::Mul => ("*", "overflows"),
            BinOp::Div => ("/", "divides by zero"),
            BinOp::Rem => ("%", "divides by zero"),
        };
        self.err(span, format!("found {x} {sym} {y}, which {why}; allowed values 0..={}", u64::MAX))
    }

    fn cpu(&self, e: &Expr, env: &Env) -> R<u64> {
        let n = self.eval(e, env)?;
        if n >= self.cpus {
            return self.err(
                e.span,
                format!(
                    "found CPU {n}; allowed 0..={} (the header's cpus {}; at most {MAX_CPUS})",
                    self.cpus - 1,
                    self.cpus
                ),
            );
        }
        Ok(n)
    }

    /// A size in bytes: a multiple of the page size in 1 page..=max.
    fn size(&self, sz: &Size, env: &Env, max: u64) -> R<u64> {
        let n = self.eval(&sz.expr, env)?;
        let bytes = if sz.pages { n.checked_mul(PAGE) } else { Some(n) };
        match bytes {
            Some(b) if b > 0 && b <= max && b % PAGE == 0 => Ok(b),
            _ => {
                let shown = if sz.pages { format!("{n} pages") } else { format!("{n} bytes") };
                self.err(
                    sz.expr.span,
                    format!(
                        "found size {shown}; allowed a multiple of {PAGE} bytes from {PAGE} to {max} (or 1..={} pages)",
                        max / PAGE
                    ),
                )
            }
        }
    }

    fn region(&self, loc: &Loc, env: &Env) -> R<Region> {
        let known = self.regions.get(&env.process);
        match known.and_then(|m| m.get(&loc.region.text)) {
            Some(r) => Ok(*r),
            None => {
                let names: Vec<&str> = known.map(|m| m.keys().map(|k| k.as_str()).collect()).unwrap_or_default();
                self.err(
                    loc.region.span,
                    format!(
                        "found region '{}' used before it is mapped in process {}{}; allowed a region an earlier 'mmap {}' of the process maps ({})",
                        loc.region.text,
                        env.process,
                        did_you_mean(&suggest(&loc.region.text, &names)),
                        loc.region.text,
                        if names.is_empty() { "none so far".to_string() } else { names.join(", ") }
                    ),
                )
            }
        }
    }

    /// The pages `[a, b)` a loc names, checked against the region.
    fn loc(&self, loc: &Loc, env: &Env) -> R<(Region, u64, u64)> {
        let r = self.region(loc, env)?;
        let (a, b, span) = match &loc.pages {
            LocPages::Whole => (0, r.pages, loc.region.span),
            LocPages::One(e) => {
                let i = self.eval(e, env)?;
                if i >= r.pages {
                    return self.err(
                        e.span,
                        format!(
                            "found page {i} of region '{}'; allowed 0..={} (it has {} pages)",
                            loc.region.text,
                            r.pages - 1,
                            r.pages
                        ),
                    );
                }
                (i, i + 1, e.span)
            }
            LocPages::Range(x, y) => (self.eval(x, env)?, self.eval(y, env)?, x.span),
        };
        if a >= b || b > r.pages {
            return self.err(
                span,
                format!(
                    "found pages {a}..{b} of region '{}'; allowed a..b with 0 <= a < b <= {} (its pages)",
                    loc.region.text, r.pages
                ),
            );
        }
        Ok((r, a, b))
    }

    fn file(&self, n: &Name) -> R<u64> {
        match self.files.get(&n.text) {
            Some(p) => Ok(*p),
            None => {
                let names: Vec<&str> = self.files.keys().map(|k| k.as_str()).collect();
                self.err(
                    n.span,
                    format!(
                        "found file '{}', not declared{}; allowed a 'file NAME size SIZE' line's name ({})",
                        n.text,
                        did_you_mean(&suggest(&n.text, &names)),
                        if names.is_empty() { "none declared".to_string() } else { names.join(", ") }
                    ),
                )
            }
        }
    }

    // ---- programs ----

    /// Walk `body` as thread code in `env`; barrier arrivals go to `ev`.
    /// `top`: the thread's (or a fork / exec / spawn child's) own body.
    fn body(&mut self, body: &[Step], env: &Env, ev: &mut Vec<Ev>, top: bool) -> R<()> {
        let mut spawned: Vec<(String, bool)> = Vec::new();
        for (i, st) in body.iter().enumerate() {
            let last = i + 1 == body.len();
            self.steps += 1;
            match &st.kind {
                StepKind::Spin | StepKind::Sleep | StepKind::Exit { .. } if !last => {
                    let next = &body[i + 1];
                    return self.err(
                        next.span,
                        format!(
                            "found step '{}' after '{}' (line {}); allowed '{}' only as the last step of its block",
                            next.kind.keyword(),
                            st.kind.keyword(),
                            st.span.line,
                            st.kind.keyword()
                        ),
                    );
                }
                StepKind::Spin | StepKind::Sleep if !top => {
                    return self.err(
                        st.span,
                        format!(
                            "found '{}' inside a loop; allowed '{}' only as the last step of a thread (it lasts until the others finish)",
                            st.kind.keyword(),
                            st.kind.keyword()
                        ),
                    );
                }
                _ => {}
            }
            self.step(st, env, ev, &mut spawned)?;
        }
        Ok(())
    }

    fn step(&mut self, st: &Step, env: &Env, ev: &mut Vec<Ev>, spawned: &mut Vec<(String, bool)>) -> R<()> {
        match &st.kind {
            StepKind::Mmap { region, kind, size, at, prot: _, offset } => {
                let huge = matches!(kind, MapKind::Thp | MapKind::Hugetlb);
                let bytes = self.size(size, env, MAX_REGION)?;
                if huge && bytes % (PMD_PAGES * PAGE) != 0 {
                    return self.err(
                        size.expr.span,
                        format!(
                            "found a {bytes}-byte thp/hugetlb region; allowed a multiple of 2 MiB ({PMD_PAGES} pages)"
                        ),
                    );
                }
                let align = if huge { PMD_PAGES * PAGE } else { PAGE };
                if let Some(a) = at {
                    let addr = self.eval(a, env)?;
                    if addr == 0 || addr % align != 0 || addr.checked_add(bytes).is_none_or(|e| e > TASK_SIZE) {
                        return self.err(
                            a.span,
                            format!(
                                "found address {addr:#x}; allowed a non-zero multiple of {align:#x} with the region ({bytes:#x} bytes) below {TASK_SIZE:#x}"
                            ),
                        );
                    }
                }
                let file = match kind {
                    MapKind::FilePrivate(f) | MapKind::FileShared(f) => Some(self.file(f)?),
                    _ => None,
                };
                match (offset, file) {
                    (Some(o), None) => {
                        return self.err(o.span, "found 'offset' on an anonymous mapping; allowed 'offset' only with file-private or file-shared")
                    }
                    (o, Some(fpages)) => {
                        let off = match o {
                            Some(o) => self.eval(o, env)?,
                            None => 0,
                        };
                        if off % PAGE != 0 || off / PAGE + bytes / PAGE > fpages {
                            let span = o.as_ref().map_or(size.expr.span, |o| o.span);
                            return self.err(
                                span,
                                format!(
                                    "found offset {off} + size {bytes} bytes past the file's {} bytes; allowed a page-aligned range inside the file",
                                    fpages * PAGE
                                ),
                            );
                        }
                    }
                    (None, None) => {}
                }
                self.regions
                    .entry(env.process.clone())
                    .or_default()
                    .insert(region.text.clone(), Region { pages: bytes / PAGE, file: file.is_some() });
            }
            StepKind::Write { loc, value } => {
                self.loc(loc, env)?;
                if let Some(v) = value {
                    self.eval(v, env)?;
                }
            }
            StepKind::Read { loc, expect } => {
                self.loc(loc, env)?;
                if let Some(ReadExpect::Value(v)) = expect {
                    self.eval(v, env)?;
                }
            }
            StepKind::Munmap { loc, stall } => {
                self.loc(loc, env)?;
                if let Some(s) = stall {
                    self.stall(s, ZAP_POINTS, "munmap", env, ev)?;
                }
            }
            StepKind::Mprotect { loc, .. } => {
                self.loc(loc, env)?;
            }
            StepKind::Madvise { loc, advice, stall } => {
                self.loc(loc, env)?;
                if !ADVICES.contains(&advice.text.as_str()) {
                    return self.unknown(advice.span, "advice", &advice.text, ADVICES);
                }
                if let Some(s) = stall {
                    self.stall(s, ZAP_POINTS, "madvise", env, ev)?;
                }
            }
            StepKind::Msync { loc } => {
                let (r, _, _) = self.loc(loc, env)?;
                if !r.file {
                    return self.err(
                        loc.region.span,
                        format!(
                            "found msync of anonymous region '{}'; allowed a file-shared or file-private region",
                            loc.region.text
                        ),
                    );
                }
            }
            StepKind::Fadvise { file, advice, pages } => {
                let fp = self.file(file)?;
                if !ADVICES.contains(&advice.text.as_str()) {
                    return self.unknown(advice.span, "fadvise advice", &advice.text, ADVICES);
                }
                if let Some((a, b)) = pages {
                    let (x, y) = (self.eval(a, env)?, self.eval(b, env)?);
                    if x >= y || y > fp {
                        return self.err(
                            a.span,
                            format!(
                                "found pages {x}..{y} of file '{}'; allowed a..b with 0 <= a < b <= {fp}",
                                file.text
                            ),
                        );
                    }
                }
            }
            StepKind::Truncate { file, size } => {
                let fp = self.file(file)?;
                if let Some(sz) = size {
                    let n = self.eval(&sz.expr, env)?;
                    let bytes = if sz.pages { n.checked_mul(PAGE) } else { Some(n) };
                    if !bytes.is_some_and(|b| b % PAGE == 0 && b <= fp * PAGE) {
                        return self.err(
                            sz.expr.span,
                            format!(
                                "found truncate size {n}; allowed a multiple of {PAGE} bytes up to the file's {} bytes",
                                fp * PAGE
                            ),
                        );
                    }
                }
            }
            StepKind::Fork { child, body } | StepKind::Exec { child, body } => {
                if self.s.processes.iter().any(|p| p.text == child.text)
                    || self.s.threads.iter().any(|t| t.name.text == child.text)
                {
                    return self.err(
                        child.span,
                        format!(
                            "found '{}', already a process or thread name; allowed a new name for the child process",
                            child.text
                        ),
                    );
                }
                let inherited = match st.kind {
                    StepKind::Fork { .. } => self.regions.get(&env.process).cloned().unwrap_or_default(),
                    _ => BTreeMap::new(),
                };
                // A child of the same name (a fork in a loop, another
                // thread's) gets the regions of this fork.
                self.regions.insert(child.text.clone(), inherited);
                self.processes.insert(child.text.clone());
                let mut cenv = env.clone();
                cenv.process = child.text.clone();
                self.body(body, &cenv, ev, true)?;
            }
            StepKind::Spawn { thread, cpu, body } => {
                if let Some(c) = cpu {
                    self.cpu(c, env)?;
                }
                if spawned.iter().any(|(n, _)| *n == thread.text) {
                    return self.err(
                        thread.span,
                        format!(
                            "found thread '{}' spawned twice in one block; allowed a new name, or 'join' first",
                            thread.text
                        ),
                    );
                }
                let mut cenv = env.clone();
                cenv.in_spawn = true;
                if let Some(c) = cpu {
                    cenv.cpu = self.eval(c, env)?;
                }
                let mut sub = Vec::new();
                self.body(body, &cenv, &mut sub, true)?;
                spawned.push((thread.text.clone(), false));
            }
            StepKind::Join { thread } => match spawned.iter_mut().find(|(n, _)| *n == thread.text) {
                Some((_, joined)) if !*joined => *joined = true,
                Some(_) => {
                    return self.err(
                        thread.span,
                        format!("found thread '{}' joined twice; allowed one 'join' per 'spawn'", thread.text),
                    )
                }
                None => {
                    return self.err(
                        thread.span,
                        format!(
                        "found 'join {}' with no 'spawn {}' earlier in this block; allowed a thread this block spawned",
                        thread.text, thread.text
                    ),
                    )
                }
            },
            StepKind::Spin if env.in_spawn => {
                return self.err(
                    st.span,
                    "found 'spin' in a spawned thread; allowed in declared threads only (a spawned thread ends with the block that spawned it)",
                )
            }
            StepKind::Exit { .. } | StepKind::Spin | StepKind::Sleep => {}
            StepKind::Start { thread } => match self.s.threads.iter().find(|t| t.name.text == thread.text) {
                Some(t) if t.held => {
                    *self.starts.entry(thread.text.clone()).or_default() += env.mult;
                }
                Some(_) => {
                    return self.err(
                        thread.span,
                        format!(
                            "found 'start {}' of a thread that is not held; allowed a thread declared with 'held'",
                            thread.text
                        ),
                    )
                }
                None => {
                    let held: Vec<&str> =
                        self.s.threads.iter().filter(|t| t.held).map(|t| t.name.text.as_str()).collect();
                    return self.unknown(thread.span, "held thread", &thread.text, &held);
                }
            },
            StepKind::Barrier { name } => self.barrier(name, env, ev)?,
            StepKind::Peek { addr } => {
                let a = self.eval(addr, env)?;
                if a >= TASK_SIZE {
                    return self
                        .err(addr.span, format!("found address {a:#x}; allowed a user address below {TASK_SIZE:#x}"));
                }
            }
            StepKind::GupFast { loc, stall, .. } => {
                self.loc(loc, env)?;
                if let Some(s) = stall {
                    self.stall(s, GUP_POINTS, "gup-fast", env, ev)?;
                }
            }
            StepKind::Collapse { loc, stall } => {
                let (_, a, b) = self.loc(loc, env)?;
                if a % PMD_PAGES != 0 || (b - a) % PMD_PAGES != 0 {
                    return self.err(
                        loc.region.span,
                        format!("found collapse of pages {a}..{b}; allowed whole 2 MiB ranges (pages a..b, multiples of {PMD_PAGES})"),
                    );
                }
                if let Some(s) = stall {
                    self.stall(s, COLLAPSE_POINTS, "collapse", env, ev)?;
                }
            }
            StepKind::Device { loc, value, expect, .. } => {
                self.loc(loc, env)?;
                for v in value.iter().chain(expect.iter()) {
                    self.eval(v, env)?;
                }
            }
            StepKind::Repeat { count, body } => {
                let n = self.eval(count, env)?;
                if n > MAX_COUNT {
                    return self.err(count.span, format!("found repeat {n}; allowed 0..={MAX_COUNT}"));
                }
                let mut e = env.clone();
                e.mult = e.mult.saturating_mul(n);
                let mut sub = Vec::new();
                self.body(body, &e, &mut sub, false)?;
                ev.push(Ev::Loop(Some(n), sub));
            }
            StepKind::RepeatUntilBudget { body } => {
                if env.in_budget_loop {
                    return self
                        .err(st.span, "found 'repeat until budget' inside another; allowed one budget loop level");
                }
                let mut e = env.clone();
                e.in_budget_loop = true;
                e.mult = e.mult.saturating_mul(2);
                let mut sub = Vec::new();
                self.body(body, &e, &mut sub, false)?;
                ev.push(Ev::Loop(None, sub));
            }
            StepKind::For { var, from, to, step, body, .. } => {
                let (a, b) = (self.eval(from, env)?, self.eval(to, env)?);
                let s = match step {
                    Some(e) => self.eval(e, env)?,
                    None => 1,
                };
                if a > b {
                    return self.err(from.span, format!("found range {a}..{b}; allowed A..B with A <= B"));
                }
                if s == 0 {
                    let sp = step.as_ref().map_or(from.span, |e| e.span);
                    return self.err(sp, "found step 0; allowed a step >= 1");
                }
                if matches!(var.text.as_str(), "cpu" | "ncpus") || self.params.contains_key(&var.text) {
                    return self.err(
                        var.span,
                        format!("found loop variable '{}', a parameter or reserved name; allowed a new name", var.text),
                    );
                }
                let n = (b - a).div_ceil(s);
                if n > MAX_COUNT {
                    return self.err(from.span, format!("found a loop of {n} iterations; allowed 0..={MAX_COUNT}"));
                }
                let mut sub = Vec::new();
                if n > 0 {
                    // The body with the first and the last value: indices
                    // grow or shrink with the variable in any sane script.
                    let last = a + (n - 1) * s;
                    for (k, v) in [a, last].into_iter().enumerate() {
                        if k == 1 && (v == a || env.fors >= MAX_FOR_REWALK) {
                            break;
                        }
                        let mut e = env.clone();
                        e.vars.push((var.text.clone(), v));
                        e.fors += 1;
                        e.mult = e.mult.saturating_mul(n);
                        let before = self.steps;
                        let mut evs = Vec::new();
                        self.body(body, &e, &mut evs, false)?;
                        if k == 0 {
                            sub = evs;
                        } else {
                            self.steps = before;
                        }
                    }
                }
                ev.push(Ev::Loop(Some(n), sub));
            }
        }
        Ok(())
    }

    fn barrier(&self, name: &Name, env: &Env, ev: &mut Vec<Ev>) -> R<()> {
        if env.in_spawn {
            return self.err(
                name.span,
                format!("found barrier '{}' in a spawned thread; allowed barriers in declared threads only", name.text),
            );
        }
        ev.push(Ev::Barrier(name.text.clone(), name.span));
        Ok(())
    }

    fn stall(&self, s: &Stall, points: &[&str], what: &str, env: &Env, ev: &mut Vec<Ev>) -> R<()> {
        if !points.contains(&s.point.text.as_str()) {
            let owner = [("gup-fast", GUP_POINTS), ("collapse", COLLAPSE_POINTS), ("madvise and munmap", ZAP_POINTS)]
                .into_iter()
                .find(|(_, ps)| ps.contains(&s.point.text.as_str()));
            if let Some((owner, _)) = owner {
                return self.err(
                    s.point.span,
                    format!(
                        "found stall point '{}' on {what}, a {owner} stall point; allowed {}",
                        s.point.text,
                        points.join(", ")
                    ),
                );
            }
            return self.unknown(s.point.span, &format!("{what} stall point"), &s.point.text, points);
        }
        if s.barriers.is_empty() {
            return self.err(
                s.point.span,
                "found a stall point without barriers; allowed one or more 'barrier NAME' lines in its block",
            );
        }
        for b in &s.barriers {
            self.barrier(b, env, ev)?;
        }
        Ok(())
    }

    // ---- barriers ----

    /// The emulator runs one CPU's threads one after the other (no
    /// preemption): two threads of one CPU cannot meet at a barrier, a
    /// thread that spins holds its CPU until the others end (so none may
    /// wait behind it), and a `first` thread meets no one.
    fn same_cpu(&self, inst: &[Instance]) -> R<()> {
        for (i, a) in inst.iter().enumerate() {
            if a.first {
                let mut m = BTreeMap::new();
                collect(&a.events, &mut m);
                if let Some((n, sp)) = m.into_iter().next() {
                    return self.err(
                        sp,
                        format!(
                            "found barrier '{n}' in thread {}, which runs first and alone; allowed no barrier in a 'first' thread",
                            a.name
                        ),
                    );
                }
            }
            for b in &inst[i + 1..] {
                if a.cpu != b.cpu || a.first || b.first {
                    continue;
                }
                if a.held || b.held {
                    let h = if a.held { a } else { b };
                    return self.err(
                        b.span,
                        format!(
                            "found threads {} and {} on CPU {}, one of them held; allowed a held thread alone on its CPU (it holds the CPU, lazy, until it is started)",
                            a.name, b.name, h.cpu
                        ),
                    );
                }
                if a.spins {
                    return self.err(
                        b.span,
                        format!(
                            "found thread {} on CPU {} after thread {}, which spins there until the others end; allowed one CPU per thread when one spins (the emulator runs a CPU's threads one after the other)",
                            b.name, b.cpu, a.name
                        ),
                    );
                }
                let (na, nb) = (names_of(&a.events), names_of(&b.events));
                if let Some(n) = na.intersection(&nb).next() {
                    return self.err(
                        b.span,
                        format!(
                            "found threads {} and {} on CPU {} meeting at barrier '{n}'; allowed threads that meet on different CPUs (the emulator runs a CPU's threads one after the other)",
                            a.name, b.name, a.cpu
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Every barrier has two or more threads; threads that share barriers
    /// reach each the same number of times, in the same order; no held
    /// thread that waits at a barrier is left unstarted (checked before).
    fn barriers(&self, inst: &[Instance]) -> R<usize> {
        // name -> (instances naming it, first span)
        let mut who: BTreeMap<&str, (Vec<usize>, Span)> = BTreeMap::new();
        for (i, t) in inst.iter().enumerate() {
            let mut names = BTreeMap::new();
            collect(&t.events, &mut names);
            for (n, sp) in names {
                let e = who.entry(n).or_insert((Vec::new(), sp));
                e.0.push(i);
            }
        }
        for (n, (ts, sp)) in &who {
            if ts.len() < 2 {
                return self.err(
                    *sp,
                    format!(
                        "found barrier '{n}' that only thread {} names; allowed a barrier at least two threads name (it would wait forever)",
                        inst[ts[0]].name
                    ),
                );
            }
            let counts: Vec<(u128, u128)> = ts.iter().map(|&i| count(&inst[i].events, n)).collect();
            for (k, &i) in ts.iter().enumerate().skip(1) {
                if counts[k] != counts[0] {
                    let show = |c: (u128, u128)| match c {
                        (f, 0) => format!("{f} times"),
                        (0, b) => format!("{b} times per budget round"),
                        (f, b) => format!("{f} times plus {b} per budget round"),
                    };
                    let span = first_span(&inst[i].events, n).unwrap_or(*sp);
                    return self.err(
                        span,
                        format!(
                            "found thread {} reaching barrier '{n}' {} and thread {} {}; allowed the same count in every thread that names it (one would wait forever)",
                            inst[i].name,
                            show(counts[k]),
                            inst[ts[0]].name,
                            show(counts[0])
                        ),
                    );
                }
            }
        }
        // Order: pairwise, on the barriers both name.
        for a in 0..inst.len() {
            for b in a + 1..inst.len() {
                let na: BTreeSet<&str> = names_of(&inst[a].events);
                let nb: BTreeSet<&str> = names_of(&inst[b].events);
                let shared: BTreeSet<&str> = na.intersection(&nb).copied().collect();
                if shared.len() < 2 {
                    continue;
                }
                let (mut fa, mut fb) = (Vec::new(), Vec::new());
                flatten(&inst[a].events, &shared, &mut fa);
                flatten(&inst[b].events, &shared, &mut fb);
                for (x, y) in fa.iter().zip(fb.iter()) {
                    if x.0 != y.0 {
                        return self.err(
                            y.1,
                            format!(
                                "found thread {} waiting at barrier '{}' while thread {} waits at '{}' (line {}); allowed shared barriers reached in the same order by every thread (this deadlocks)",
                                inst[b].name, y.0, inst[a].name, x.0, x.1.line
                            ),
                        );
                    }
                }
            }
        }
        Ok(who.len())
    }

    fn expect(&self, e: &Expect, arch: Arch, top: &Env) -> R<()> {
        let counter_names = || -> Vec<&'static str> {
            let cfg = KernelConfig { arch, nr_cpus: 1, ..KernelConfig::default() };
            let mut v: Vec<&'static str> = mm_core::counters_kept(&cfg).iter().map(|s| s.name()).collect();
            v.push("irq_call_count");
            v
        };
        let counter = |n: &Name| -> R<()> {
            let names = counter_names();
            if names.contains(&n.text.as_str()) {
                return Ok(());
            }
            if Stat::ALL.iter().any(|s| s.name() == n.text) {
                return self.err(
                    n.span,
                    format!(
                        "found counter '{}', which arch {} does not keep; allowed {}",
                        n.text,
                        arch.name(),
                        names.join(", ")
                    ),
                );
            }
            self.unknown(n.span, "counter", &n.text, &names)
        };
        match &e.target {
            Target::Violations(Some(k)) if !VIOLATION_KINDS.contains(&k.text.as_str()) => {
                return self.unknown(k.span, "violation kind", &k.text, VIOLATION_KINDS)
            }
            Target::Counter { name, cpu } => {
                counter(name)?;
                if let Some(c) = cpu {
                    self.cpu(c, top)?;
                }
            }
            Target::Interrupts { row, cpu } => {
                if !INTERRUPT_ROWS.contains(&row.text.as_str()) {
                    return self.unknown(row.span, "interrupt row", &row.text, INTERRUPT_ROWS);
                }
                if row.text == "TLB" && !counter_names().contains(&"irq_tlb_count") {
                    return self.err(
                        row.span,
                        format!("found interrupts TLB on arch {}, which sends no TLB IPIs; allowed CAL", arch.name()),
                    );
                }
                if let Some(c) = cpu {
                    self.cpu(c, top)?;
                }
            }
            Target::Rate { counter: n, .. } => counter(n)?,
            _ => {}
        }
        if let Some(Tolerance::Percent(p)) = e.cmp.tolerance {
            if p > 100.0 {
                return self.err(e.cmp.value_span, format!("found a tolerance of {p}%; allowed 0..=100%"));
            }
        }
        if e.cmp.tolerance.is_some() && e.cmp.op != CmpOp::Eq {
            return self.err(
                e.cmp.value_span,
                format!("found '+-' after '{}'; allowed a tolerance only with '=='", e.cmp.op.symbol()),
            );
        }
        Ok(())
    }
}

fn collect<'e>(ev: &'e [Ev], out: &mut BTreeMap<&'e str, Span>) {
    for e in ev {
        match e {
            Ev::Barrier(n, sp) => {
                out.entry(n.as_str()).or_insert(*sp);
            }
            Ev::Loop(_, b) => collect(b, out),
        }
    }
}

fn names_of(ev: &[Ev]) -> BTreeSet<&str> {
    let mut m = BTreeMap::new();
    collect(ev, &mut m);
    m.into_keys().collect()
}

fn first_span(ev: &[Ev], name: &str) -> Option<Span> {
    let mut m = BTreeMap::new();
    collect(ev, &mut m);
    m.get(name).copied()
}

/// Arrivals at `name`: (a fixed number, a number per budget round).
fn count(ev: &[Ev], name: &str) -> (u128, u128) {
    let mut t = (0u128, 0u128);
    for e in ev {
        match e {
            Ev::Barrier(n, _) if n == name => t.0 = t.0.saturating_add(1),
            Ev::Barrier(..) => {}
            Ev::Loop(Some(k), b) => {
                // Saturating: 32 nested loops of 10^9 overflow even u128.
                let (f, r) = count(b, name);
                let k = *k as u128;
                t = (t.0.saturating_add(f.saturating_mul(k)), t.1.saturating_add(r.saturating_mul(k)));
            }
            Ev::Loop(None, b) => {
                let (f, r) = count(b, name);
                // Budget loops do not nest: r is 0.
                t = (t.0, t.1.saturating_add(f).saturating_add(r));
            }
        }
    }
    t
}

/// The arrivals at `shared` barriers in order, loops unrolled (budget
/// loops twice), up to `MAX_EVENTS`.
fn flatten<'e>(ev: &'e [Ev], shared: &BTreeSet<&str>, out: &mut Vec<(&'e str, Span)>) {
    for e in ev {
        if out.len() >= MAX_EVENTS {
            return;
        }
        match e {
            Ev::Barrier(n, sp) if shared.contains(n.as_str()) => out.push((n, *sp)),
            Ev::Barrier(..) => {}
            Ev::Loop(k, b) => {
                let before = out.len();
                flatten(b, shared, out);
                let once = out.len() - before;
                if once == 0 {
                    continue;
                }
                let times = k.unwrap_or(2);
                for _ in 1..times {
                    if out.len() >= MAX_EVENTS {
                        return;
                    }
                    flatten(b, shared, out);
                }
            }
        }
    }
}

/// Where an expression finds its variables and random numbers (the
/// interpreter's and the host runner's threads, or the values known
/// before the run).
pub(crate) trait Scope {
    fn var(&self, name: &str) -> Option<u64>;
    /// A number below `n` (> 0) drawn from the thread's stream; None where
    /// there is none.
    fn rand(&mut self, n: u64) -> Option<u64>;
}

/// The value of `e` in `scope`, or the span of the (innermost)
/// sub-expression that has none: an overflow, a division by zero,
/// `rand(0)`, an unknown variable.
pub(crate) fn eval_in(e: &Expr, scope: &mut impl Scope) -> Result<u64, Span> {
    let v = match &e.kind {
        ExprKind::Int(n) => Some(*n),
        ExprKind::Var(v) => scope.var(v),
        ExprKind::Bin(op, a, b) => {
            let (x, y) = (eval_in(a, scope)?, eval_in(b, scope)?);
            op.apply(x, y)
        }
        ExprKind::Call(f, a, b) => {
            let (x, y) = (eval_in(a, scope)?, eval_in(b, scope)?);
            f.apply(x, y)
        }
        ExprKind::Rand(a) => {
            let n = eval_in(a, scope)?;
            if n == 0 {
                None
            } else {
                scope.rand(n)
            }
        }
    };
    v.ok_or(e.span)
}

/// The values known before the run: parameters, `$cpu`, `$ncpus`; no
/// `rand`.
struct BeforeRun<'a> {
    c: &'a Checked,
    ncpus: u64,
    cpu: u64,
}

impl Scope for BeforeRun<'_> {
    fn var(&self, name: &str) -> Option<u64> {
        match name {
            "ncpus" => Some(self.ncpus),
            "cpu" => Some(self.cpu),
            _ => self.c.params.get(name).copied(),
        }
    }
    fn rand(&mut self, _n: u64) -> Option<u64> {
        None
    }
}

/// An expression's value before the run (parameters, `$cpu`, `$ncpus`;
/// no `rand`): thread placements and expectations' CPUs.
pub(crate) fn const_eval(e: &Expr, c: &Checked, ncpus: u64, cpu: u64) -> Result<u64, RunError> {
    eval_in(e, &mut BeforeRun { c, ncpus, cpu })
        .map_err(|span| RunError::Config(format!("line {}: the expression has no value before the run", span.line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_core::check::ViolationKind;

    #[test]
    fn violation_kinds_are_the_sanitizers_names() {
        let kinds = [
            ViolationKind::StaleTlbAccess,
            ViolationKind::WalkIntoFreedTable,
            ViolationKind::WalkIntoUnsharedTable,
            ViolationKind::FreedBeforeFlush,
            ViolationKind::TableFreedBeforeFlush,
            ViolationKind::GupFastFreedTable,
            ViolationKind::GupOracle,
            ViolationKind::SecondaryTlbStale,
            ViolationKind::LostDirtyData,
            ViolationKind::SecondaryLivelock,
            ViolationKind::StaleAfterZap,
            ViolationKind::DebugVmWarning("x"),
        ];
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names, VIOLATION_KINDS);
    }
}
