//! The typed syntax tree of a `.mmemu` script (docs/SCRIPTS.md).  Names
//! stay strings with their spans: the checker (`check.rs`) resolves them
//! (fixes, knobs, counters, regions) so that its errors point at them.

/// Where something starts in the file: 1-based line and column (in
/// characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

/// A name and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

/// An integer expression (u64, evaluated by the checker and the
/// interpreter with the parameters' values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExprKind {
    Int(u64),
    /// `$name`: a parameter, a `for` variable, `$cpu` or `$ncpus`.
    Var(String),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Box<Expr>, Box<Expr>),
    /// `rand(N)`: a seed-drawn value in 0..N (`--seed`).
    Rand(Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    Min,
    Max,
    DivUp,
}

impl BinOp {
    /// `x op y`, or `None` on overflow / division by zero.
    pub fn apply(self, x: u64, y: u64) -> Option<u64> {
        match self {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::Div => x.checked_div(y),
            BinOp::Rem => x.checked_rem(y),
        }
    }
}

impl Func {
    /// `f(x, y)`, or `None` for `div_up(_, 0)`.
    pub fn apply(self, x: u64, y: u64) -> Option<u64> {
        match self {
            Func::Min => Some(x.min(y)),
            Func::Max => Some(x.max(y)),
            Func::DivUp => (y != 0).then(|| x.div_ceil(y)),
        }
    }
}

/// A size: bytes, or `N pages`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Size {
    pub expr: Expr,
    pub pages: bool,
}

/// A whole script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub name: Name,
    pub header: Header,
    pub params: Vec<Param>,
    pub processes: Vec<Name>,
    pub files: Vec<FileDecl>,
    pub threads: Vec<Thread>,
    pub expects: Vec<Expect>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub about: Option<String>,
    /// `arch NAME` (resolved by the checker).
    pub arch: Option<Name>,
    /// `kernel 6.12|6.18`, as written.
    pub kernel: Option<Name>,
    pub cpus: Option<Expr>,
    /// `revert NAME…`: `Fix::name`s.
    pub reverts: Vec<Name>,
    pub knobs: Vec<Knob>,
    pub budget: Option<Budget>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knob {
    pub name: Name,
    pub value: KnobValue,
    pub value_span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KnobValue {
    On,
    Off,
    Num(Expr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub amount: Expr,
    pub unit: BudgetUnit,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetUnit {
    Rounds,
    Seconds,
    Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: Name,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub help: Option<String>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDecl {
    pub name: Name,
    pub size: Size,
    pub contents: Contents,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    Zero,
    Index,
    Fill(Expr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thread {
    pub name: Name,
    pub placement: Placement,
    pub process: Name,
    pub held: bool,
    /// `first`: runs to its end before any other thread starts (setup).
    pub first: bool,
    pub body: Vec<Step>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Cpu(Expr),
    EachCpu,
    Cpus(Expr, Expr),
}

/// A region, a page of it, or pages `[a, b)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub region: Name,
    pub pages: LocPages,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocPages {
    Whole,
    One(Expr),
    Range(Expr, Expr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prot {
    Rw,
    Ro,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapKind {
    Anon,
    AnonShared,
    Thp,
    Hugetlb,
    FilePrivate(Name),
    FileShared(Name),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadExpect {
    Value(Expr),
    Segv,
}

/// `at POINT { barrier … }`: a RaceHooks stall point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub point: Name,
    pub barriers: Vec<Name>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    Mmap {
        region: Name,
        kind: MapKind,
        size: Size,
        at: Option<Expr>,
        prot: Prot,
        offset: Option<Expr>,
    },
    Write {
        loc: Loc,
        value: Option<Expr>,
    },
    Read {
        loc: Loc,
        expect: Option<ReadExpect>,
    },
    Munmap {
        loc: Loc,
        stall: Option<Stall>,
    },
    Mprotect {
        loc: Loc,
        prot: Prot,
    },
    Madvise {
        loc: Loc,
        advice: Name,
        stall: Option<Stall>,
    },
    Msync {
        loc: Loc,
    },
    Fadvise {
        file: Name,
        advice: Name,
        pages: Option<(Expr, Expr)>,
    },
    Truncate {
        file: Name,
        size: Option<Size>,
    },
    /// `fork C { … }`: dup_mmap, then this task runs the body in C's mm
    /// and C exits (exit-storm's fork + child exit).
    Fork {
        child: Name,
        body: Vec<Step>,
    },
    /// `exec C { … }`: a fresh mm (execve's mm_alloc), the body runs in it
    /// on this CPU, then C exits.
    Exec {
        child: Name,
        body: Vec<Step>,
    },
    /// `spawn T [on cpu N] { … }`: a new thread of this process.
    Spawn {
        thread: Name,
        cpu: Option<Expr>,
        body: Vec<Step>,
    },
    /// `join T`: wait for the spawned thread T to end.
    Join {
        thread: Name,
    },
    Exit {
        process: bool,
    },
    Start {
        thread: Name,
    },
    Spin,
    Sleep,
    Barrier {
        name: Name,
    },
    /// `peek ADDR`: a user read at a raw address that may fault (SIGSEGV
    /// is a legitimate answer; a stale translation is not).
    Peek {
        addr: Expr,
    },
    GupFast {
        loc: Loc,
        write: bool,
        pin: bool,
        stall: Option<Stall>,
    },
    Collapse {
        loc: Loc,
        stall: Option<Stall>,
    },
    Device {
        write: bool,
        loc: Loc,
        value: Option<Expr>,
        expect: Option<Expr>,
    },
    Repeat {
        count: Expr,
        body: Vec<Step>,
    },
    RepeatUntilBudget {
        body: Vec<Step>,
    },
    For {
        var: Name,
        shuffled: bool,
        from: Expr,
        to: Expr,
        step: Option<Expr>,
        body: Vec<Step>,
    },
}

impl StepKind {
    /// The step's keyword, as written.
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Mmap { .. } => "mmap",
            StepKind::Write { .. } => "write",
            StepKind::Read { .. } => "read",
            StepKind::Munmap { .. } => "munmap",
            StepKind::Mprotect { .. } => "mprotect",
            StepKind::Madvise { .. } => "madvise",
            StepKind::Msync { .. } => "msync",
            StepKind::Fadvise { .. } => "fadvise",
            StepKind::Truncate { .. } => "truncate",
            StepKind::Fork { .. } => "fork",
            StepKind::Exec { .. } => "exec",
            StepKind::Spawn { .. } => "spawn",
            StepKind::Join { .. } => "join",
            StepKind::Exit { .. } => "exit",
            StepKind::Start { .. } => "start",
            StepKind::Spin => "spin",
            StepKind::Sleep => "sleep",
            StepKind::Barrier { .. } => "barrier",
            StepKind::Peek { .. } => "peek",
            StepKind::GupFast { .. } => "gup-fast",
            StepKind::Collapse { .. } => "collapse",
            StepKind::Device { .. } => "device",
            StepKind::Repeat { .. } => "repeat",
            StepKind::RepeatUntilBudget { .. } => "repeat",
            StepKind::For { .. } => "for",
        }
    }
}

/// Every step keyword (for "unknown step" messages).
pub const STEP_KEYWORDS: &[&str] = &[
    "mmap", "write", "read", "munmap", "mprotect", "madvise", "msync", "fadvise", "truncate", "fork", "exec", "spawn",
    "join", "exit", "start", "spin", "sleep", "barrier", "peek", "gup-fast", "collapse", "device", "repeat", "for",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub target: Target,
    pub cmp: Cmp,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Violations(Option<Name>),
    Leaked,
    Counter { name: Name, cpu: Option<Expr> },
    Interrupts { row: Name, cpu: Option<Expr> },
    Rate { counter: Name, per_op: bool },
    ReadsFailed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// `OP VALUE [+- TOL[%]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cmp {
    pub op: CmpOp,
    pub value: f64,
    pub tolerance: Option<Tolerance>,
    pub value_span: Span,
}

// f64 values are finite (the parser refuses anything else).
impl Eq for Cmp {}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    Abs(f64),
    Percent(f64),
}
