//! The `mmemu` command line: argument parsing (clap) and the four
//! subcommands.  `src/bin/mmemu.rs` only calls `main()`.
//!
//! Exit status: 0 success; 1 the run found something (violation, leak,
//! hang, a panic on an emulated CPU; `reproduce`: the fix-on run failed or
//! the fix-off run did not show the bug); 2 bad usage (one line on stderr
//! saying what is wrong and what is allowed); 3 the output could not be
//! written to stdout: the reader went away (EPIPE, e.g. `| head -c 10`:
//! silent, like a tool killed by SIGPIPE, but an exit status instead of
//! the shell's 141) or the write failed (ENOSPC, EIO, ...: one line on
//! stderr).  3 and not 0 because the status is the verdict: a run whose
//! report was cut short must not look like a clean one.
//!
//! Nothing here writes to stdout with `print!`/`println!` (they panic on a
//! write error); every report goes through `emit`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use emu_cpu::{MachineConfig, WaitPolicy};
use mm_core::config::{Arch, Fix, KernelConfig};
use serde::Serialize;

use crate::error::RunError;
use crate::input::{did_you_mean, parse_decimal, suggest, unknown_name, BadNumber};
use crate::report::{BudgetJson, MemoryJson, Report, Setup, TraceInfo};
use crate::scenarios::{self, ArchReq, Budget, Ctx, Scenario, MAX_CPUS};

#[derive(Parser, Debug)]
#[command(
    name = "mmemu",
    version,
    about = "Userspace emulator of the Linux kernel's TLB-invalidation machinery",
    long_about = "Userspace emulator of the Linux kernel's TLB-invalidation machinery: emulated CPUs with \
                  stale-until-flushed TLBs, the kernel's mmu_gather, RCU table freeing and x86/arm64/generic \
                  flush policies, with every historical fix switchable.\n\nExit status: 0 ok, 1 the run found \
                  a violation, leak, hang or panic, 2 bad usage, 3 stdout closed or not writable."
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List scenarios (name, arch, CPUs, exposed switches, parameters) and switches.
    List {
        /// Print the registry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one scenario and print its report.
    Run(RunArgs),
    /// Run the scenario that exposes SWITCH with the fix off and on, side by side.
    Reproduce(ReproArgs),
    /// All scenarios mixed until the time is up; exit 1 on any violation, hang or leak.
    Stress(StressArgs),
}

#[derive(Args, Debug, Clone)]
struct MachineArgs {
    /// Wait policy of idle CPUs and IPI senders.
    #[arg(long, value_name = "spin|park|adaptive", default_value = "adaptive", value_parser = parse_wait)]
    wait: WaitPolicy,
    /// Do not pin emulated CPUs to host cores.
    #[arg(long)]
    no_pin: bool,
    /// Seed of the scenario's choices (same seed, same program; 0..=18446744073709551615).
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_seed, allow_negative_numbers = true)]
    seed: u64,
    /// Report a hang when no emulated CPU made progress for S seconds
    /// (0.1 <= S <= 86400; default 20).  A long task that keeps working is
    /// never a hang.
    #[arg(long, value_name = "S", default_value = "20", value_parser = parse_hang_timeout, allow_negative_numbers = true)]
    hang_timeout: f64,
    /// Skip the kernel's own VM_BUG_ON / VM_WARN_ON checks (on by default,
    /// like CONFIG_DEBUG_VM): for measuring without their cost.
    #[arg(long)]
    no_debug_vm: bool,
}

#[derive(Args, Debug, Clone)]
struct BudgetArgs {
    /// Run for this many seconds (0 < S <= 86400).
    #[arg(long, value_name = "S", value_parser = parse_seconds, conflicts_with = "iterations", allow_negative_numbers = true)]
    seconds: Option<f64>,
    /// Run this many rounds (per thread for native scenarios; 1..=1000000000).
    #[arg(long, value_name = "N", value_parser = parse_iterations, allow_negative_numbers = true)]
    iterations: Option<u64>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Scenario name (see `mmemu list`).
    #[arg(value_parser = parse_scenario)]
    scenario: &'static Scenario,
    /// Emulated CPUs (1..=256; default 4).
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    cpus: Option<usize>,
    /// Arch profile (default: the scenario's).
    #[arg(long, value_name = "x86|arm64|generic", value_parser = parse_arch)]
    arch: Option<Arch>,
    /// Switch a fix off (repeatable, once per switch; see `mmemu list`).
    #[arg(long = "revert", value_name = "SWITCH", value_parser = parse_fix)]
    revert: Vec<Fix>,
    #[command(flatten)]
    budget: BudgetArgs,
    #[command(flatten)]
    machine: MachineArgs,
    /// Scenario parameter (repeatable, once per key; see `mmemu list` for keys and ranges).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Print one JSON report instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Write a Chrome trace-event JSON file (open it in ui.perfetto.dev).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Testing the error path: the first syscall on this CPU panics (race
    /// scenarios: a task there at the start of the first round).
    #[arg(long, value_name = "CPU", hide = true, value_parser = parse_cpu_index)]
    inject_panic: Option<u32>,
    /// Testing the error path: that CPU's syscalls (race scenarios: rounds)
    /// before the panicking one.
    #[arg(long, value_name = "N", hide = true, default_value = "0", value_parser = parse_seed)]
    inject_panic_after: u64,
}

#[derive(Args, Debug)]
struct ReproArgs {
    /// The switch whose bug to reproduce (see `mmemu list`).
    #[arg(value_parser = parse_fix)]
    switch: Fix,
    /// Emulated CPUs (1..=256; default 4).
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    cpus: Option<usize>,
    #[command(flatten)]
    budget: BudgetArgs,
    #[command(flatten)]
    machine: MachineArgs,
    /// Scenario parameter (repeatable, once per key).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Print both reports as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct StressArgs {
    /// Emulated CPUs (1..=256; default: the host's cores); scenarios that need more are skipped.
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    cpus: Option<usize>,
    /// Total seconds (0 < S <= 86400; default 10).
    #[arg(long, value_name = "S", value_parser = parse_seconds, default_value = "10", allow_negative_numbers = true)]
    seconds: f64,
    /// Longest single scenario run inside the stress, in seconds.
    #[arg(long, value_name = "S", value_parser = parse_seconds, default_value = "2", allow_negative_numbers = true)]
    slice: f64,
    #[command(flatten)]
    machine: MachineArgs,
}

fn parse_scenario(s: &str) -> Result<&'static Scenario, String> {
    scenarios::find(s)
}

fn parse_fix(s: &str) -> Result<Fix, String> {
    s.parse().map_err(|_| unknown_name("switch", s, &switch_names()))
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    s.parse().map_err(|_| unknown_name("arch", s, &Arch::ALL.map(|a| a.name())))
}

/// An integer option's value: the error (after clap's `--option: `) names
/// the value and the allowed range.
fn parse_int_arg(s: &str, min: u64, max: u64) -> Result<u64, String> {
    parse_decimal(s, min, max).map_err(|e| match e {
        BadNumber::Empty => format!("{}; allowed {min}..={max}", e.what()),
        _ => format!("'{s}' is {}; allowed {min}..={max}", e.what()),
    })
}

fn parse_cpus(s: &str) -> Result<usize, String> {
    parse_int_arg(s, 1, MAX_CPUS as u64).map(|n| n as usize)
}

/// Largest `--iterations`.
const MAX_ITERATIONS: u64 = 1_000_000_000;
/// Largest `--seconds` / `--slice` (one day).
const MAX_SECONDS: f64 = 86400.0;
const SECONDS_ALLOWED: &str = "0 < S <= 86400";

fn parse_iterations(s: &str) -> Result<u64, String> {
    parse_int_arg(s, 1, MAX_ITERATIONS)
}

fn parse_seed(s: &str) -> Result<u64, String> {
    parse_int_arg(s, 0, u64::MAX)
}

fn parse_cpu_index(s: &str) -> Result<u32, String> {
    parse_int_arg(s, 0, MAX_CPUS as u64 - 1).map(|n| n as u32)
}

/// Seconds: a finite decimal (`0.5`, `10`, `1e3`) in 0 < S <= 86400; no
/// sign, no `nan` / `inf`.
fn parse_seconds(s: &str) -> Result<f64, String> {
    if s.is_empty() {
        return Err(format!("empty value; allowed {SECONDS_ALLOWED}"));
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && !s.starts_with('+') => {
            if x > 0.0 && x <= MAX_SECONDS {
                Ok(x)
            } else {
                Err(format!("'{s}' is out of range; allowed {SECONDS_ALLOWED}"))
            }
        }
        _ => Err(format!("'{s}' is not a number of seconds (a decimal such as 0.5 or 10); allowed {SECONDS_ALLOWED}")),
    }
}

fn parse_hang_timeout(s: &str) -> Result<f64, String> {
    const ALLOWED: &str = "0.1 <= S <= 86400";
    let x = parse_seconds(s).map_err(|e| e.replace(SECONDS_ALLOWED, ALLOWED))?;
    if x < 0.1 {
        return Err(format!("'{s}' is out of range; allowed {ALLOWED}"));
    }
    Ok(x)
}

fn parse_wait(s: &str) -> Result<WaitPolicy, String> {
    match s {
        "spin" => Ok(WaitPolicy::Spin),
        "park" => Ok(WaitPolicy::Park),
        "adaptive" => Ok(WaitPolicy::Adaptive),
        _ => Err(unknown_name("wait policy", s, &["spin", "park", "adaptive"])),
    }
}

fn wait_name(w: WaitPolicy) -> &'static str {
    match w {
        WaitPolicy::Spin => "spin",
        WaitPolicy::Park => "park",
        WaitPolicy::Adaptive => "adaptive",
    }
}

/// What an option accepts, as the usage-error lines say it.
fn value_allowed(flag: &str) -> String {
    match flag {
        "--cpus" => format!("1..={MAX_CPUS}"),
        "--iterations" => format!("1..={MAX_ITERATIONS}"),
        "--seconds" | "--slice" => SECONDS_ALLOWED.to_string(),
        "--seed" => format!("0..={}", u64::MAX),
        "--wait" => "spin, park, adaptive".to_string(),
        "--arch" => Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
        "--revert" => switch_names().join(", "),
        "--param" => "KEY=VALUE (keys and ranges: mmemu list)".to_string(),
        "--trace" => "a file path in a writable directory".to_string(),
        "--inject-panic" => format!("0..={}", MAX_CPUS - 1),
        _ => "see --help".to_string(),
    }
}

fn switch_names() -> Vec<&'static str> {
    Fix::ALL.iter().map(|f| f.name()).collect()
}

fn scenario_names() -> Vec<&'static str> {
    scenarios::all().iter().map(|s| s.name).collect()
}

/// The one line (after `error: `) for a clap parse error: what was wrong;
/// what is allowed.  clap's own rendering is 3-7 lines (usage, tips,
/// "for more information"); this keeps its facts (the argument, the
/// value, the suggestion) and says what the command accepts instead.
fn usage_line(e: &clap::Error, args: &[std::ffi::OsString]) -> String {
    use clap::error::{ContextKind as K, ContextValue as V, ErrorKind};
    use clap::CommandFactory as _;
    let mut root = Cli::command();
    root.build();
    let subs: Vec<&str> = root.get_subcommands().map(|c| c.get_name()).collect();
    let subs = subs.join(", ");
    // The subcommand being parsed: the first argument (mmemu has no
    // options before it but --help / --version).
    let sub = args.get(1).and_then(|a| a.to_str()).and_then(|n| root.find_subcommand(n));
    let label = sub.map_or("mmemu".to_string(), |c| format!("mmemu {}", c.get_name()));
    let cmd = sub.unwrap_or(&root);
    let opts: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_positional() && !a.is_hide_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let opts = opts.join(", ");
    let all = |k: K| match e.get(k) {
        Some(V::String(s)) => vec![s.clone()],
        Some(V::Strings(v)) => v.clone(),
        _ => Vec::new(),
    };
    let one = |k: K| all(k).into_iter().next().unwrap_or_default();
    // "--cpus <N>" -> "--cpus"; "<SCENARIO>" stays.
    let flag = |s: &str| s.split(' ').next().unwrap_or_default().to_string();
    match e.kind() {
        ErrorKind::InvalidSubcommand => {
            let x = one(K::InvalidSubcommand);
            let mut dym = all(K::SuggestedSubcommand);
            if dym.is_empty() {
                let names: Vec<&str> = root.get_subcommands().map(|c| c.get_name()).collect();
                dym = suggest(&x, &names).into_iter().map(String::from).collect();
            }
            format!("unknown subcommand '{x}'{}; allowed: {subs}", did_you_mean(&dym))
        }
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            format!("missing subcommand; allowed: {subs} (see 'mmemu --help')")
        }
        ErrorKind::UnknownArgument => {
            let x = one(K::InvalidArg);
            // After `--` everything is a positional argument, dashes or not.
            let after_dashes = args
                .iter()
                .position(|a| a == "--")
                .is_some_and(|p| args[p + 1..].iter().any(|a| a.to_str() == Some(x.as_str())));
            let is_option = x.len() > 1 && x.starts_with('-') && x.parse::<f64>().is_err() && !after_dashes;
            let mut dym = all(K::SuggestedArg);
            if dym.is_empty() && is_option {
                // Also `-c` / `-cpus` (clap reads the latter as -c -p -u -s).
                let longs: Vec<&str> =
                    cmd.get_arguments().filter(|a| !a.is_hide_set()).filter_map(|a| a.get_long()).collect();
                dym = suggest(x.trim_start_matches('-'), &longs).into_iter().map(|l| format!("--{l}")).collect();
            }
            let dym = did_you_mean(&dym);
            match (is_option, sub) {
                (true, Some(_)) => format!("unknown option '{x}' for {label}{dym}; allowed: {opts}"),
                (true, None) => format!("unknown option '{x}'{dym}; allowed: a subcommand ({subs}), {opts}"),
                (false, None) => format!("unexpected argument '{x}'; allowed: a subcommand ({subs}), {opts}"),
                (false, Some(c)) => {
                    let pos: Vec<String> = c
                        .get_positionals()
                        .map(|a| {
                            let v = a.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
                            format!("<{}>", v.unwrap_or_else(|| a.get_id().to_string().to_uppercase()))
                        })
                        .collect();
                    if pos.is_empty() {
                        format!(
                            "unexpected argument '{x}'; {label} takes no positional arguments, only the options {opts}"
                        )
                    } else {
                        format!("unexpected argument '{x}'; {label} takes one {} and the options {opts}", pos.join(" "))
                    }
                }
            }
        }
        ErrorKind::ValueValidation => {
            let a = one(K::InvalidArg);
            let msg = std::error::Error::source(e)
                .map_or_else(|| format!("invalid value '{}'", one(K::InvalidValue)), |s| s.to_string());
            if a.starts_with('-') {
                format!("{}: {msg}", flag(&a))
            } else {
                msg
            }
        }
        ErrorKind::InvalidValue => {
            let a = flag(&one(K::InvalidArg));
            let v = one(K::InvalidValue);
            if v.is_empty() {
                format!("missing value for {a}; allowed: {}", value_allowed(&a))
            } else {
                let valid = all(K::ValidValue);
                let allowed = if valid.is_empty() { value_allowed(&a) } else { valid.join(", ") };
                format!("{a}: invalid value '{v}'{}; allowed: {allowed}", did_you_mean(&all(K::SuggestedValue)))
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let x = one(K::InvalidArg);
            let allowed = match x.as_str() {
                "<SCENARIO>" => scenario_names().join(", "),
                "<SWITCH>" => switch_names().join(", "),
                _ => format!("see '{label} --help'"),
            };
            format!("{label} needs {x}; allowed: {allowed}")
        }
        ErrorKind::ArgumentConflict => {
            let a = flag(&one(K::InvalidArg));
            let prior: Vec<String> = all(K::PriorArg).iter().map(|p| flag(p)).collect();
            if prior.is_empty() || prior == [a.clone()] {
                format!("{a} given more than once; allowed once")
            } else {
                format!("{a} cannot be used with {}; allowed: one of them", prior.join(", "))
            }
        }
        ErrorKind::TooManyValues => {
            let a = flag(&one(K::InvalidArg));
            let v = one(K::InvalidValue);
            let is_flag = cmd
                .get_arguments()
                .find(|x| x.get_long().is_some_and(|l| a == format!("--{l}")))
                .is_some_and(|x| !x.get_action().takes_values());
            if is_flag {
                format!("{a} takes no value, got '{v}'; allowed: {a} alone")
            } else {
                format!("{a}: unexpected extra value '{v}'; allowed: one value ({})", value_allowed(&a))
            }
        }
        ErrorKind::InvalidUtf8 => {
            let bad = args.iter().skip(1).find(|a| a.to_str().is_none()).map(|a| a.to_string_lossy().into_owned());
            format!(
                "argument '{}' is not valid UTF-8; allowed: UTF-8 text (only --trace FILE may be any path)",
                bad.unwrap_or_default()
            )
        }
        _ => {
            // Not produced by mmemu's arguments today; keep clap's first line.
            let r = e.render().to_string();
            let first = r.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            format!("{first}; see '{label} --help'")
        }
    }
}

/// Why a command did not produce a verdict.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage: exit 2.
    Usage(String),
    /// Could not complete (cannot write the trace file, ...): exit 1.
    Failed(String),
    /// Writing to stdout failed: exit 3 (silent for EPIPE).
    Stdout(std::io::Error),
}

/// Exit status when stdout could not be written (see the module comment).
pub const EXIT_STDOUT: i32 = 3;

/// Write `s` to stdout and flush; a write error (EPIPE, ENOSPC, ...) is
/// returned, never a panic.
fn emit(s: &str) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes()).and_then(|()| out.flush()).map_err(CliError::Stdout)
}

/// Everything one scenario run needs.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub scenario: &'static Scenario,
    pub cpus: usize,
    pub arch: Arch,
    pub reverted: Vec<Fix>,
    pub budget: Budget,
    pub seed: u64,
    pub machine: MachineConfig,
    pub params: BTreeMap<&'static str, u64>,
    pub trace: Option<PathBuf>,
    pub stop_on_violation: bool,
    /// `KernelConfig::debug_vm` (`--no-debug-vm` turns it off).
    pub debug_vm: bool,
}

impl RunSpec {
    /// Check the combination (CPU count, arch) against the scenario.
    pub fn validate(&self) -> Result<(), String> {
        let s = self.scenario;
        if self.cpus < s.min_cpus {
            return Err(format!(
                "scenario {} needs at least {} CPUs; allowed --cpus {}..={MAX_CPUS}",
                s.name, s.min_cpus, s.min_cpus
            ));
        }
        if let ArchReq::Requires(a) = s.arch {
            if a != self.arch {
                return Err(format!(
                    "scenario {} needs --arch {} (the race only exists there); got --arch {}",
                    s.name,
                    a.name(),
                    self.arch.name()
                ));
            }
        }
        Ok(())
    }

    fn kcfg(&self) -> KernelConfig {
        let mut k =
            KernelConfig { arch: self.arch, nr_cpus: self.cpus, debug_vm: self.debug_vm, ..KernelConfig::default() };
        for f in &self.reverted {
            k.fixes.set(*f, false);
        }
        k
    }

    fn setup(&self) -> Setup {
        Setup {
            scenario: self.scenario.name.to_string(),
            arch: self.arch.name(),
            cpus: self.cpus,
            reverted: self.reverted.iter().map(|f| f.name()).collect(),
            seed: self.seed,
            wait: wait_name(self.machine.wait),
            pin: self.machine.pin,
            budget: match self.budget {
                Budget::Iterations(n) => BudgetJson { iterations: Some(n), seconds: None },
                Budget::Seconds(s) => BudgetJson { iterations: None, seconds: Some(s) },
            },
            params: self.params.clone(),
            debug_vm: self.debug_vm,
            memory: None,
        }
    }
}

/// `MemAvailable` of /proc/meminfo in bytes (None off Linux).
fn host_mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a run of `spec` will allocate, checked before anything is: more
/// emulated RAM than a kernel config allows, or more host memory than the
/// host has available, is refused with the parameters that asked for it.
fn plan_memory(spec: &RunSpec, ctx: &Ctx) -> Result<MemoryJson, CliError> {
    let s = spec.scenario;
    let frames = scenarios::ram_frames(ctx, (s.frames)(ctx))
        .map_err(|e| CliError::Usage(format!("scenario {}: {e}", s.name)))?;
    let kcfg = KernelConfig { ram_frames: frames, ..ctx.kcfg.clone() };
    let est = mm_core::kernel::HostMemory::of(&kcfg);
    let host = est.total() + spec.cpus as u64 * emu_cpu::HOST_BYTES_PER_CPU;
    if let Some(avail) = host_mem_available() {
        if host > avail {
            return Err(CliError::Usage(format!(
                "scenario {} with --cpus {} and {} needs up to {} of host memory (emulated RAM {}: {frames} frames); \
                 this host has {} available: lower --cpus or the parameters",
                s.name,
                spec.cpus,
                scenarios::describe_params(ctx),
                crate::report::human_bytes(host),
                crate::report::human_bytes(est.emulated_ram),
                crate::report::human_bytes(avail)
            )));
        }
    }
    Ok(MemoryJson {
        emulated_ram_frames: frames as u64,
        emulated_ram_bytes: est.emulated_ram,
        host_estimate_bytes: host,
    })
}

/// Set while a scenario runs: the panic hook stays quiet.  Panics on
/// emulated CPUs come back as `MachineError`s naming the CPU; a panic of
/// the scenario's own thread is caught by `run_scenario` and reported as
/// one error line.
static RUN_ACTIVE: AtomicBool = AtomicBool::new(false);

/// The signal that ended the budget early (0: none), for the exit status.
fn stop_signal() -> &'static StdArc<std::sync::atomic::AtomicUsize> {
    static SIG: std::sync::OnceLock<StdArc<std::sync::atomic::AtomicUsize>> = std::sync::OnceLock::new();
    SIG.get_or_init(Default::default)
}

/// SIGINT / SIGTERM: the first one ends the budget (every thread stops at
/// its next step, the run tears down, leak-checks and prints its report,
/// marked `interrupted`, and writes its trace); a second one exits at once
/// with status 128 + the signal's number, printing nothing more.
pub fn install_signal_handlers() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = scenarios::interrupt_flag();
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as it was before this
        // signal: set means this is the second one.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone());
        let _ = signal_hook::flag::register_usize(sig, stop_signal().clone(), sig as usize);
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
}

/// Exit status of a command whose runs `failed` or not: 1 for a finding;
/// else 128 + the signal if one cut the budget short (130 SIGINT, 143
/// SIGTERM); else 0.
pub fn exit_status(failed: bool) -> i32 {
    let sig = stop_signal().load(Ordering::SeqCst);
    if failed {
        1
    } else if sig != 0 || scenarios::interrupted() {
        128 + if sig == 0 { 2 } else { sig as i32 }
    } else {
        0
    }
}

/// Install the panic hook (once per process; `main()` does it).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if RUN_ACTIVE.load(Ordering::SeqCst) {
            return;
        }
        default(info)
    }));
}

/// Validate `spec` and plan its memory (nothing is allocated yet).
pub fn plan(spec: &RunSpec) -> Result<(Ctx, MemoryJson), CliError> {
    spec.validate().map_err(CliError::Usage)?;
    let kcfg = spec.kcfg();
    kcfg.validate().map_err(CliError::Usage)?;
    let ctx = Ctx {
        kcfg,
        machine: spec.machine,
        budget: spec.budget,
        seed: spec.seed,
        params: spec.params.clone(),
        stop_on_violation: spec.stop_on_violation,
    };
    let memory = plan_memory(spec, &ctx)?;
    Ok((ctx, memory))
}

/// Run one scenario: validate, boot, run, leak check, report (and trace).
pub fn run_scenario(spec: &RunSpec) -> Result<Report, CliError> {
    let (ctx, memory) = plan(spec)?;
    if spec.trace.is_some() {
        emu_cpu::trace::start();
    }
    RUN_ACTIVE.store(true, Ordering::SeqCst);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (spec.scenario.run)(&ctx)));
    RUN_ACTIVE.store(false, Ordering::SeqCst);
    let traced = spec.trace.as_ref().map(|_| emu_cpu::trace::stop());
    let r = r.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic payload>".into());
        CliError::Failed(format!("scenario {} panicked outside the emulated CPUs: {msg}", spec.scenario.name))
    })?;
    let outcome = r.map_err(|e| scenario_failed(spec.scenario, &e))?;
    let mut report = Report::new(Setup { memory: Some(memory), ..spec.setup() }, &outcome);
    if let (Some(path), Some((events, dropped))) = (&spec.trace, traced) {
        let title = format!("mmemu {} ({} CPUs, {})", spec.scenario.name, spec.cpus, spec.arch.name());
        // A trace that cannot be written (a full disk) does not cost the
        // report: it says so, and the command exits 1.
        let error = crate::trace_json::write(path, &title, spec.cpus, &events).err();
        report.trace = Some(TraceInfo { file: path.display().to_string(), events: events.len(), dropped, error });
    }
    Ok(report)
}

/// A scenario's `Err`: a configuration it refuses is bad usage (exit 2);
/// anything else went wrong while it ran (exit 1).
fn scenario_failed(s: &Scenario, e: &RunError) -> CliError {
    let msg = format!("scenario {}: {e}", s.name);
    if e.is_config() {
        CliError::Usage(msg)
    } else {
        CliError::Failed(msg)
    }
}

fn machine_config(m: &MachineArgs) -> MachineConfig {
    MachineConfig {
        pin: !m.no_pin,
        wait: m.wait,
        hang_timeout: Duration::from_secs_f64(m.hang_timeout),
        ..MachineConfig::default()
    }
}

fn budget(b: &BudgetArgs, s: &Scenario) -> Budget {
    match (b.seconds, b.iterations) {
        (Some(x), _) => Budget::Seconds(x),
        (None, Some(n)) => Budget::Iterations(n),
        (None, None) => Budget::Iterations(s.default_iterations),
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    emit(&format!("{}\n", serde_json::to_string_pretty(v).expect("reports serialize")))
}

/// `error: MSG` on stderr (`eprintln!` would panic if stderr fails too).
fn error_line(msg: &str) {
    error_line_raw(&format!("error: {msg}"));
}

/// One line on stderr, ignoring write errors.
fn error_line_raw(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The exit status and stderr line for a failed write to stdout.
fn stdout_failed(e: &std::io::Error) -> i32 {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        error_line(&format!("cannot write the report to stdout: {e}"));
    }
    EXIT_STDOUT
}

/// Parse the command line and run; returns the process exit status.
pub fn main() -> i32 {
    install_panic_hook();
    install_signal_handlers();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version: clap's text on stdout, exit 0.
            use std::io::Write as _;
            return match e.print().and_then(|()| std::io::stdout().flush()) {
                Ok(()) => 0,
                Err(err) => stdout_failed(&err),
            };
        }
        Err(e) => {
            error_line(&usage_line(&e, &args));
            return 2;
        }
    };
    let r = match cli.cmd {
        Cmd::List { json } => list(json),
        Cmd::Run(a) => run(a),
        Cmd::Reproduce(a) => reproduce(a),
        Cmd::Stress(a) => stress(a),
    };
    match r {
        Ok(code) => code,
        Err(CliError::Usage(msg)) => {
            error_line(&msg);
            2
        }
        Err(CliError::Failed(msg)) => {
            error_line(&msg);
            1
        }
        Err(CliError::Stdout(e)) => stdout_failed(&e),
    }
}

#[derive(Serialize)]
struct ParamJson {
    key: &'static str,
    default: u64,
    min: u64,
    max: u64,
    help: &'static str,
}

#[derive(Serialize)]
struct ScenarioJson {
    name: &'static str,
    about: &'static str,
    arch: &'static str,
    arch_required: bool,
    min_cpus: usize,
    default_iterations: u64,
    exposes: Vec<&'static str>,
    params: Vec<ParamJson>,
}

#[derive(Serialize)]
struct SwitchJson {
    name: &'static str,
    commit: &'static str,
    off_means: &'static str,
    scenario: &'static str,
    arch: &'static str,
    available: bool,
}

fn exposed_by(s: &Scenario) -> Vec<&'static str> {
    let mut v: Vec<_> = s.exposes.iter().map(|f| f.name()).collect();
    for e in scenarios::EXPOSERS.iter().filter(|e| e.scenario == s.name) {
        if !v.contains(&e.fix.name()) {
            v.push(e.fix.name());
        }
    }
    v
}

fn list(json: bool) -> Result<i32, CliError> {
    if json {
        let sc: Vec<_> = scenarios::all()
            .iter()
            .map(|s| ScenarioJson {
                name: s.name,
                about: s.about,
                arch: s.arch.arch().name(),
                arch_required: matches!(s.arch, ArchReq::Requires(_)),
                min_cpus: s.min_cpus,
                default_iterations: s.default_iterations,
                exposes: exposed_by(s),
                params: s
                    .params
                    .iter()
                    .map(|p| ParamJson { key: p.key, default: p.default, min: p.min, max: p.max, help: p.help })
                    .collect(),
            })
            .collect();
        let sw: Vec<_> = scenarios::EXPOSERS
            .iter()
            .map(|e| SwitchJson {
                name: e.fix.name(),
                commit: e.fix.commit(),
                off_means: e.fix.off_means(),
                scenario: e.scenario,
                arch: e.arch.name(),
                available: scenarios::find(e.scenario).is_ok(),
            })
            .collect();
        print_json(&serde_json::json!({"scenarios": sc, "switches": sw}))?;
        return Ok(0);
    }
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "Scenarios (mmemu run NAME [--param KEY=VALUE]...):");
    for s in scenarios::all() {
        let _ = writeln!(out, "  {:<22}{}", s.name, s.about);
        let arch = match s.arch {
            ArchReq::Default(a) => format!("arch {} (default)", a.name()),
            ArchReq::Requires(a) => format!("arch {} (required)", a.name()),
        };
        let ex = exposed_by(s);
        let ex = if ex.is_empty() { String::new() } else { format!(", exposes {}", ex.join(", ")) };
        let _ =
            writeln!(out, "  {:<22}{arch}, {}+ CPUs, {} rounds by default{ex}", "", s.min_cpus, s.default_iterations);
        for p in s.params {
            let _ = writeln!(out, "  {:<24}{}={} ({}..={}): {}", "", p.key, p.default, p.min, p.max, p.help);
        }
    }
    let _ = writeln!(out, "\nSwitches (mmemu run --revert SWITCH, mmemu reproduce SWITCH):");
    for e in scenarios::EXPOSERS {
        let avail = if scenarios::find(e.scenario).is_ok() { "" } else { " [scenario not built yet]" };
        let _ = writeln!(out, "  {:<26}{}  off: {}", e.fix.name(), e.fix.commit(), e.fix.off_means());
        let _ = writeln!(out, "  {:<26}reproduce: {} on {}{avail}", "", e.scenario, e.arch.name());
    }
    emit(&out)?;
    Ok(0)
}

/// `--revert X --revert X` is a mistake (a typo for another switch?), not
/// a no-op.
fn no_repeated_switch(revert: &[Fix]) -> Result<(), CliError> {
    match revert.iter().enumerate().find(|(i, f)| revert[..*i].contains(f)) {
        Some((_, f)) => Err(CliError::Usage(format!("--revert {f} given twice; allowed once per switch"))),
        None => Ok(()),
    }
}

fn run(a: RunArgs) -> Result<i32, CliError> {
    let s = a.scenario;
    no_repeated_switch(&a.revert)?;
    let params = s.parse_params(&a.params).map_err(CliError::Usage)?;
    if let Some(c) = a.inject_panic {
        crate::inject::arm(c, a.inject_panic_after);
    }
    let spec = RunSpec {
        scenario: s,
        cpus: a.cpus.unwrap_or(4.max(s.min_cpus)),
        arch: a.arch.unwrap_or(s.arch.arch()),
        reverted: a.revert.clone(),
        budget: budget(&a.budget, s),
        seed: a.machine.seed,
        machine: machine_config(&a.machine),
        params,
        trace: a.trace.clone(),
        stop_on_violation: false,
        debug_vm: !a.machine.no_debug_vm,
    };
    if let Some(path) = &spec.trace {
        // Find an unwritable --trace before the run, not after it (the
        // report would be lost); a refused run leaves no empty file.
        spec.validate().map_err(CliError::Usage)?;
        std::fs::File::create(path).map_err(|e| {
            CliError::Usage(format!(
                "--trace '{}': cannot create the file: {e}; allowed: a file path in a writable directory",
                path.display()
            ))
        })?;
    }
    if std::io::stderr().is_terminal() {
        // What the run will cost, before it starts (the report repeats it).
        let (_, m) = plan(&spec)?;
        error_line_raw(&format!(
            "mmemu: {} on {} CPUs: emulated RAM {} ({} frames), host memory up to {}; Ctrl-C ends the run early and keeps its report",
            s.name,
            spec.cpus,
            crate::report::human_bytes(m.emulated_ram_bytes),
            m.emulated_ram_frames,
            crate::report::human_bytes(m.host_estimate_bytes)
        ));
    }
    let report = run_scenario(&spec)?;
    if a.json {
        print_json(&report)?;
    } else {
        emit(&report.human())?;
    }
    Ok(exit_status(report.failed()))
}

#[derive(Serialize)]
struct ReproJson<'a> {
    switch: &'static str,
    commit: &'static str,
    off_means: &'static str,
    scenario: &'static str,
    correctness: bool,
    reproduced: bool,
    fix_off: &'a Report,
    fix_on: &'a Report,
}

fn reproduce(a: ReproArgs) -> Result<i32, CliError> {
    let e = scenarios::exposer(a.switch);
    let s = scenarios::find(e.scenario).map_err(|_| {
        CliError::Usage(format!(
            "switch {} is exposed by scenario {}, which this build does not have yet (its race driver is not merged); \
             available scenarios: {}",
            a.switch.name(),
            e.scenario,
            scenarios::all().iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let params = s.parse_params(&a.params).map_err(CliError::Usage)?;
    let mut spec = RunSpec {
        scenario: s,
        cpus: a.cpus.unwrap_or(4.max(s.min_cpus)),
        arch: e.arch,
        reverted: vec![a.switch],
        budget: budget(&a.budget, s),
        seed: a.machine.seed,
        machine: machine_config(&a.machine),
        params,
        trace: None,
        stop_on_violation: e.correctness,
        debug_vm: !a.machine.no_debug_vm,
    };
    let off = run_scenario(&spec)?;
    spec.reverted.clear();
    spec.stop_on_violation = false;
    let on = run_scenario(&spec)?;
    let reproduced = if e.correctness {
        off.violations.count > 0 && on.violations.count == 0 && !on.failed()
    } else {
        !on.failed() && !off.failed()
    };
    if a.json {
        print_json(&ReproJson {
            switch: a.switch.name(),
            commit: a.switch.commit(),
            off_means: a.switch.off_means(),
            scenario: s.name,
            correctness: e.correctness,
            reproduced,
            fix_off: &off,
            fix_on: &on,
        })?;
    } else {
        emit(&side_by_side(a.switch, e, &off, &on, reproduced))?;
    }
    // Interrupted: the verdict is not meaningful, but a run that failed
    // still says so.
    let interrupted = off.interrupted || on.interrupted;
    let broke = on.failed() || (off.failed() && off.verdict != "violations");
    Ok(if interrupted {
        exit_status(broke)
    } else if reproduced {
        0
    } else {
        1
    })
}

/// The `reproduce` table.
pub fn side_by_side(fix: Fix, e: &scenarios::Exposer, off: &Report, on: &Report, reproduced: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "mmemu reproduce {} (commit {}): scenario {} on {}, {} CPUs",
        fix.name(),
        fix.commit(),
        e.scenario,
        e.arch.name(),
        off.cpus
    );
    let _ = writeln!(s, "  fix off means: {}", fix.off_means());
    let _ = writeln!(s, "\n  {:<34}{:>14}{:>14}", "", "fix off", "fix on");
    let mut row = |label: &str, a: String, b: String| {
        let _ = writeln!(s, "  {label:<34}{a:>14}{b:>14}");
    };
    row("violations", off.violations.count.to_string(), on.violations.count.to_string());
    let kinds: std::collections::BTreeSet<_> =
        off.violations.by_kind.keys().chain(on.violations.by_kind.keys()).cloned().collect();
    for k in kinds {
        let g = |r: &Report| r.violations.by_kind.get(&k).copied().unwrap_or(0).to_string();
        row(&format!("  {k}"), g(off), g(on));
    }
    let kept = |r: &Report| r.violations.by_kind.values().sum::<u64>();
    if off.violations.count > kept(off) || on.violations.count > kept(on) {
        row("  (kinds: of the records kept)", kept(off).to_string(), kept(on).to_string());
    }
    let fv = |r: &Report| r.violations.first_violation_at.map_or("-".to_string(), |x| x.to_string());
    row("first violation in round", fv(off), fv(on));
    row("rounds", off.iterations.to_string(), on.iterations.to_string());
    let sum = |v: &[u64]| v.iter().sum::<u64>().to_string();
    row("IPIs sent", sum(&off.interrupts.sent), sum(&on.interrupts.sent));
    row("IPIs handled (CAL)", sum(&off.interrupts.cal), sum(&on.interrupts.cal));
    row("TLB shootdowns (TLB)", sum(&off.interrupts.tlb), sum(&on.interrupts.tlb));
    for (name, v) in &off.vmstat {
        row(name, v.to_string(), on.vmstat.get(name).copied().unwrap_or(0).to_string());
    }
    let c = |r: &Report, n: &str| r.counters.get(n).copied().unwrap_or(0).to_string();
    row("arm64 broadcast TLBIs", c(off, "arm64_tlbi_broadcast"), c(on, "arm64_tlbi_broadcast"));
    row("sync-one broadcasts", off.sync_one_broadcasts.to_string(), on.sync_one_broadcasts.to_string());
    row("gather flushes", off.gather.flushes.to_string(), on.gather.flushes.to_string());
    row("gather batches", off.gather.batches.to_string(), on.gather.batches.to_string());
    row("pages freed", off.gather.pages_freed.to_string(), on.gather.pages_freed.to_string());
    row("tables freed", off.gather.tables_freed.to_string(), on.gather.tables_freed.to_string());
    let metrics: std::collections::BTreeSet<_> = off.metrics.keys().chain(on.metrics.keys()).cloned().collect();
    for m in metrics {
        let g = |r: &Report| r.metrics.get(&m).map_or("-".to_string(), |v| v.to_string());
        row(&m, g(off), g(on));
    }
    let leak = |r: &Report| r.leaked_frames.as_ref().map_or("-".to_string(), |l| l.total.to_string());
    row("leaked frames", leak(off), leak(on));
    row("verdict", off.verdict.to_string(), on.verdict.to_string());
    for (name, r) in [("fix off", off), ("fix on", on)] {
        if let Some(v) = r.violations.records.first() {
            let _ = writeln!(s, "  {name}: first {v}");
        }
        if let Some(err) = &r.error {
            let _ = writeln!(s, "  {name}: error: {err}");
        }
    }
    let verdict = match (e.correctness, reproduced) {
        (true, true) => format!("reproduced: {} violations with the fix off, none with it on", off.violations.count),
        (true, false) => "NOT reproduced: expected violations with the fix off and none with it on".to_string(),
        (false, true) => "compared: the switch changes counts, not correctness (see the rows above)".to_string(),
        (false, false) => "FAILED: a run ended with a violation, leak, hang or panic".to_string(),
    };
    let _ = writeln!(s, "\n  {verdict}");
    s
}

#[derive(Default, Clone, Debug)]
struct Tally {
    runs: u64,
    rounds: u64,
    ops: u64,
    violations: u64,
    leaked: i64,
    failures: u64,
}

fn stress(a: StressArgs) -> Result<i32, CliError> {
    let cpus = a.cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(MAX_CPUS));
    // An explicit --cpus N is honoured: scenarios that need more CPUs are
    // skipped (the table says so).  Without it (the host's cores) each
    // scenario gets at least its minimum, as before.
    let skipped = |s: &Scenario| a.cpus.is_some() && s.min_cpus > cpus;
    if scenarios::all().iter().all(skipped) {
        let least = scenarios::all().iter().map(|s| s.min_cpus).min().unwrap_or(1);
        return Err(CliError::Usage(format!(
            "--cpus {cpus}: no scenario runs on {cpus} CPU(s); allowed --cpus {least}..={MAX_CPUS}"
        )));
    }
    let machine = machine_config(&a.machine);
    let total = Duration::from_secs_f64(a.seconds);
    let t0 = Instant::now();
    let pb = indicatif::ProgressBar::new(total.as_millis() as u64);
    if std::io::stderr().is_terminal() {
        pb.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let done = StdArc::new(AtomicBool::new(false));
    let ticker = {
        let (pb, done) = (pb.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                pb.set_position(t0.elapsed().as_millis() as u64);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let all = scenarios::all();
    let mut tallies: Vec<Tally> = vec![Tally::default(); all.len()];
    let mut rng = scenarios::Rng::new(a.machine.seed, 0x57);
    let mut order: Vec<usize> = (0..all.len()).filter(|&i| !skipped(&all[i])).collect();
    let mut failed = false;
    let mut rss_first = None;
    'outer: loop {
        // A fresh shuffle per pass: every scenario once, mixed.
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for &i in &order {
            let left = total.saturating_sub(t0.elapsed());
            if left < Duration::from_millis(50) || scenarios::interrupted() {
                break 'outer;
            }
            let s = &all[i];
            let spec = RunSpec {
                scenario: s,
                cpus: cpus.max(s.min_cpus),
                arch: s.arch.arch(),
                reverted: Vec::new(),
                budget: Budget::Seconds(left.as_secs_f64().min(a.slice)),
                seed: rng.next(),
                machine,
                params: s.parse_params(&[]).map_err(CliError::Usage)?,
                trace: None,
                stop_on_violation: false,
                debug_vm: !a.machine.no_debug_vm,
            };
            pb.set_message(format!("{} ({} CPUs)", s.name, spec.cpus));
            let r = run_scenario(&spec)?;
            rss_first.get_or_insert_with(|| proc_status_bytes("VmRSS"));
            let t = &mut tallies[i];
            t.runs += 1;
            t.rounds += r.iterations;
            t.ops += r.ops;
            t.violations += r.violations.count;
            t.leaked += r.leaked_frames.as_ref().map_or(0, |l| l.total);
            if r.failed() {
                t.failures += 1;
                failed = true;
                pb.suspend(|| eprint!("{}", r.human()));
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let _ = ticker.join();
    pb.finish_and_clear();
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "mmemu stress: {cpus} CPUs, {:.1} s, seed {}", t0.elapsed().as_secs_f64(), a.machine.seed);
    let _ = writeln!(
        out,
        "  {:<22}{:>6}{:>10}{:>12}{:>12}{:>8}{:>10}  note",
        "scenario", "runs", "rounds", "ops", "violations", "leaked", "failures"
    );
    for (s, t) in all.iter().zip(&tallies) {
        let note = if skipped(s) {
            format!("skipped: needs {}+ CPUs", s.min_cpus)
        } else if s.min_cpus > cpus {
            format!("ran on {} CPUs (needs {}+)", s.min_cpus, s.min_cpus)
        } else {
            String::new()
        };
        let row = format!(
            "  {:<22}{:>6}{:>10}{:>12}{:>12}{:>8}{:>10}  {note}",
            s.name, t.runs, t.rounds, t.ops, t.violations, t.leaked, t.failures
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
    let mib = |b: Option<u64>| b.map_or("?".to_string(), crate::report::human_bytes);
    let _ = writeln!(
        out,
        "  host memory: RSS {} after the first run, {} at the end, peak {}",
        mib(rss_first.flatten()),
        mib(proc_status_bytes("VmRSS")),
        mib(proc_status_bytes("VmHWM"))
    );
    if scenarios::interrupted() {
        let _ = writeln!(out, "  interrupted: stopped early by a signal; the table is what ran until then");
    }
    let _ = writeln!(out, "  verdict: {}", if failed { "FAILED" } else { "ok" });
    emit(&out)?;
    Ok(exit_status(failed))
}

/// A `/proc/self/status` size field (`VmRSS`, `VmHWM`) in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let st = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = st.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use emu_cpu::MachineError;
    use mm_core::CpuId;

    #[test]
    fn only_a_refused_configuration_is_bad_usage() {
        let s = scenarios::find("lazy-tlb").unwrap();
        let usage = |e: RunError| matches!(scenario_failed(s, &e), CliError::Usage(_));
        assert!(usage(RunError::Config("lazy_tlb needs 2 CPUs; got 1".into())));
        assert!(!usage(RunError::Machine(MachineError::Stopped { cpu: CpuId(0) })));
        assert!(!usage(RunError::Model("mmap: Enomem".into())));
        assert!(!usage(RunError::Driver("the device never ran".into()).in_round(3)));
        match scenario_failed(s, &RunError::Config("x".into()).during("boot")) {
            CliError::Usage(m) => assert_eq!(m, "scenario lazy-tlb: boot: x"),
            e => panic!("{e:?}"),
        }
    }
}
