//! The command line: clap's structs for the four subcommands, the value
//! parsers (each error names the value and what is allowed) and the one
//! line a parse error becomes (`usage_line`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use emu_cpu::WaitPolicy;
use mm_core::config::{Arch, Fix, KernelVersion};

use crate::input::{did_you_mean, parse_decimal, suggest, unknown_name, BadNumber};
use crate::scenarios::{self, Scenario, MAX_CPUS};

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
    pub(super) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(super) enum Cmd {
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
    /// Parse and validate a script (docs/SCRIPTS.md) without running it.
    Check(CheckArgs),
    /// Run a script on the real host kernel (docs/HOST.md): real processes, pinned threads, /proc/interrupts.
    Host(HostArgs),
    /// Run a script on the emulator and on the host N times each and compare TLB / CAL per iteration (docs/HOST.md).
    Diff(DiffArgs),
}

#[derive(Args, Debug)]
pub(super) struct DiffArgs {
    /// The script (a .mmemu file).
    #[arg(value_name = "FILE")]
    pub(super) file: PathBuf,
    /// The script's CPUs instead of its header's (both sides).
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub(super) cpus: Option<usize>,
    /// Rounds per run on both sides (1..=1000000000; default the header's budget in rounds, else 100).
    #[arg(long, value_name = "N", value_parser = parse_iterations, allow_negative_numbers = true)]
    pub(super) iterations: Option<u64>,
    /// Runs on each side; the rows are their medians (1..=100).
    #[arg(long, value_name = "N", default_value = "3", value_parser = parse_runs, allow_negative_numbers = true)]
    pub(super) runs: usize,
    /// Tolerance in percent of the emulator's row (0..=1000).
    #[arg(long, value_name = "PCT", default_value = "5", value_parser = parse_percent, allow_negative_numbers = true)]
    pub(super) tolerance: f64,
    /// Absolute tolerance per iteration, the bound where counts are near zero (0..=1000).
    #[arg(long, value_name = "X", default_value = "0.02", value_parser = parse_percent, allow_negative_numbers = true)]
    pub(super) near_zero: f64,
    /// Script parameter (repeatable, once per key).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub(super) params: Vec<String>,
    /// Seed of the script's rand() and shuffled loops (both sides).
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_seed, allow_negative_numbers = true)]
    pub(super) seed: u64,
    /// Print the comparison as JSON (schema mmemu-diff/1).
    #[arg(long)]
    pub(super) json: bool,
}

fn parse_runs(s: &str) -> Result<usize, String> {
    parse_int_arg(s, 1, 100).map(|n| n as usize)
}

/// A non-negative decimal up to 1000 (a tolerance).
fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && (0.0..=1000.0).contains(&x) && !s.starts_with('+') => Ok(x),
        _ => Err(format!("'{s}' is not a decimal in 0..=1000; allowed 0..=1000")),
    }
}

#[derive(Args, Debug)]
pub(super) struct HostArgs {
    /// The script (a .mmemu file).
    #[arg(value_name = "FILE")]
    pub(super) file: PathBuf,
    /// The script's CPUs instead of its header's (`$ncpus`, `on each cpu`; script CPU n is host CPU n).
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub(super) cpus: Option<usize>,
    #[command(flatten)]
    pub(super) budget: BudgetArgs,
    /// Script parameter (repeatable, once per key; the script's `param` lines).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub(super) params: Vec<String>,
    /// Seed of the script's rand() and shuffled loops (0..=18446744073709551615).
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_seed, allow_negative_numbers = true)]
    pub(super) seed: u64,
    /// Print one JSON report (the `mmemu run --json` shape) instead of the human summary.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct CheckArgs {
    /// The script (a .mmemu file).
    #[arg(value_name = "FILE")]
    pub(super) file: PathBuf,
    /// Script parameter (repeatable, once per key; the script's `param` lines).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub(super) params: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub(super) struct MachineArgs {
    /// Wait policy of idle CPUs and IPI senders.
    #[arg(long, value_name = "spin|park|adaptive", default_value = "adaptive", value_parser = parse_wait)]
    pub(super) wait: WaitPolicy,
    /// Do not pin emulated CPUs to host cores.
    #[arg(long)]
    pub(super) no_pin: bool,
    /// Seed of the scenario's choices (same seed, same program; 0..=18446744073709551615).
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_seed, allow_negative_numbers = true)]
    pub(super) seed: u64,
    /// Report a hang when no emulated CPU made progress for S seconds
    /// (0.1 <= S <= 86400; default 20).  A long task that keeps working is
    /// never a hang.
    #[arg(long, value_name = "S", default_value_t = emu_cpu::DEFAULT_HANG_TIMEOUT.as_secs_f64(), value_parser = parse_hang_timeout, allow_negative_numbers = true)]
    pub(super) hang_timeout: f64,
    /// Skip the kernel's own VM_BUG_ON / VM_WARN_ON checks (on by default,
    /// like CONFIG_DEBUG_VM): for measuring without their cost.
    #[arg(long)]
    pub(super) no_debug_vm: bool,
    /// Kernel release the arch profile follows: 6.12 (the reference) or
    /// 6.18 (this machine's host kernel; x86: lazy mm_cpumask with the
    /// once-a-second trim).  Default: a script's `kernel` line, else 6.12.
    #[arg(long, value_name = "6.12|6.18", value_parser = parse_kernel)]
    pub(super) kernel: Option<KernelVersion>,
}

impl MachineArgs {
    /// `--kernel`, or the reference 6.12.
    pub(super) fn kernel(&self) -> KernelVersion {
        self.kernel.unwrap_or(KernelVersion::V6_12)
    }
}

#[derive(Args, Debug, Clone)]
pub(super) struct BudgetArgs {
    /// Run for this many seconds (0 < S <= 86400).
    #[arg(long, value_name = "S", value_parser = parse_seconds, conflicts_with = "iterations", allow_negative_numbers = true)]
    pub(super) seconds: Option<f64>,
    /// Run this many rounds (per thread for native scenarios; 1..=1000000000).
    #[arg(long, value_name = "N", value_parser = parse_iterations, allow_negative_numbers = true)]
    pub(super) iterations: Option<u64>,
}

#[derive(Args, Debug)]
pub(super) struct RunArgs {
    /// Scenario name (see `mmemu list`), or a script file (FILE.mmemu, docs/SCRIPTS.md).
    #[arg(value_parser = parse_scenario)]
    pub(super) scenario: &'static Scenario,
    /// Emulated CPUs (1..=256; default 4, a script's header's).
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub(super) cpus: Option<usize>,
    /// Arch profile (default: the scenario's).
    #[arg(long, value_name = "x86|arm64|generic", value_parser = parse_arch)]
    pub(super) arch: Option<Arch>,
    /// Switch a fix off (repeatable, once per switch; see `mmemu list`).
    #[arg(long = "revert", value_name = "SWITCH", value_parser = parse_fix)]
    pub(super) revert: Vec<Fix>,
    #[command(flatten)]
    pub(super) budget: BudgetArgs,
    #[command(flatten)]
    pub(super) machine: MachineArgs,
    /// Scenario parameter (repeatable, once per key; see `mmemu list` for keys and ranges).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub(super) params: Vec<String>,
    /// Print one JSON report instead of the human summary.
    #[arg(long)]
    pub(super) json: bool,
    /// Write a Chrome trace-event JSON file (open it in ui.perfetto.dev).
    #[arg(long, value_name = "FILE")]
    pub(super) trace: Option<PathBuf>,
    /// Testing the error path: the first syscall on this CPU panics (race
    /// scenarios: a task there at the start of the first round).
    #[arg(long, value_name = "CPU", hide = true, value_parser = parse_cpu_index)]
    pub(super) inject_panic: Option<u32>,
    /// Testing the error path: that CPU's syscalls (race scenarios: rounds)
    /// before the panicking one.
    #[arg(long, value_name = "N", hide = true, default_value = "0", value_parser = parse_seed)]
    pub(super) inject_panic_after: u64,
}

#[derive(Args, Debug)]
pub(super) struct ReproArgs {
    /// The switch whose bug to reproduce (see `mmemu list`).
    #[arg(value_parser = parse_fix)]
    pub(super) switch: Fix,
    /// Emulated CPUs (1..=256; default 4).
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub(super) cpus: Option<usize>,
    #[command(flatten)]
    pub(super) budget: BudgetArgs,
    #[command(flatten)]
    pub(super) machine: MachineArgs,
    /// Scenario parameter (repeatable, once per key).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub(super) params: Vec<String>,
    /// Print both reports as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
    /// Run this script (docs/SCRIPTS.md) instead of the switch's scenario,
    /// with the fix off and on.
    #[arg(long, value_name = "FILE", value_parser = parse_script)]
    pub(super) script: Option<&'static Scenario>,
}

#[derive(Args, Debug)]
pub(super) struct StressArgs {
    /// Emulated CPUs (1..=256; default: the host's cores); scenarios that need more are skipped.
    #[arg(long, value_name = "N", value_parser = parse_cpus, allow_negative_numbers = true)]
    pub(super) cpus: Option<usize>,
    /// Total seconds (0 < S <= 86400; default 10).
    #[arg(long, value_name = "S", value_parser = parse_seconds, default_value = "10", allow_negative_numbers = true)]
    pub(super) seconds: f64,
    /// Longest single scenario run inside the stress, in seconds.
    #[arg(long, value_name = "S", value_parser = parse_seconds, default_value = "2", allow_negative_numbers = true)]
    pub(super) slice: f64,
    #[command(flatten)]
    pub(super) machine: MachineArgs,
}

/// A scenario name, or a script's path (`….mmemu`, or anything with a
/// `/`): docs/SCRIPTS.md.
fn parse_scenario(s: &str) -> Result<&'static Scenario, String> {
    if s.ends_with(".mmemu") || s.contains('/') {
        return crate::script::load(s);
    }
    scenarios::find(s).or_else(|e| match crate::script::shipped::find(s) {
        Some((file, src)) => crate::script::load_source(&format!("examples/scripts/{file}"), src),
        None => Err(e),
    })
}

fn parse_script(s: &str) -> Result<&'static Scenario, String> {
    crate::script::load(s)
}

fn parse_fix(s: &str) -> Result<Fix, String> {
    s.parse().map_err(|_| unknown_name("switch", s, &switch_names()))
}

fn parse_kernel(s: &str) -> Result<KernelVersion, String> {
    s.parse().map_err(|_| unknown_name("kernel", s, &KernelVersion::ALL.map(|v| v.name())))
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

pub(super) fn wait_name(w: WaitPolicy) -> &'static str {
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
        "--kernel" => KernelVersion::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
        "--revert" => switch_names().join(", "),
        "--param" => "KEY=VALUE (keys and ranges: mmemu list)".to_string(),
        "--trace" => "a file path in a writable directory".to_string(),
        "--script" => "a script file (.mmemu, docs/SCRIPTS.md)".to_string(),
        "--inject-panic" => format!("0..={}", MAX_CPUS - 1),
        "--runs" => "1..=100".to_string(),
        "--tolerance" | "--near-zero" => "0..=1000".to_string(),
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
pub(super) fn usage_line(e: &clap::Error, args: &[std::ffi::OsString]) -> String {
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
                "<FILE>" => "a script file (.mmemu, docs/SCRIPTS.md)".to_string(),
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
