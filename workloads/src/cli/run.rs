//! The subcommands that run scenarios (`run`, `reproduce`, `stress`) and
//! what they share: `RunSpec` → `plan` (validate, plan the memory, nothing
//! allocated yet) → `run_scenario` (boot, run, report, trace), the signal
//! handlers and the exit status.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc as StdArc;
use std::time::{Duration, Instant};

use emu_cpu::MachineConfig;
use mm_core::config::{Arch, Fix, KernelConfig, KernelVersion};
use serde::Serialize;

use super::args::{wait_name, BudgetArgs, MachineArgs, ReproArgs, RunArgs, StressArgs};
use super::output::{emit, error_line_raw, print_json, side_by_side, CliError};
use crate::budget::{interrupted, request_stop, stop_signal, Budget};
use crate::error::RunError;
use crate::report::{BudgetJson, MemoryJson, Report, Setup, TraceInfo};
use crate::scenarios::native::Rng;
use crate::scenarios::{self, ArchReq, Ctx, Scenario, MAX_CPUS};

/// Everything one scenario run needs.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub scenario: &'static Scenario,
    pub cpus: usize,
    pub arch: Arch,
    /// `--kernel`: the release the arch profile follows.
    pub kernel: KernelVersion,
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
        // --kernel 6.18 pairings no kernel ran (KernelConfig::kernel_pairing),
        // including a scenario parameter that turns RCU table freeing off.
        let rcu = self.params.get("rcu-table-free").is_none_or(|v| *v != 0);
        KernelConfig { arch: self.arch, kernel: self.kernel, rcu_table_free: rcu, ..KernelConfig::default() }
            .kernel_pairing()?;
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
        let mut k = KernelConfig {
            arch: self.arch,
            kernel: self.kernel,
            nr_cpus: self.cpus,
            debug_vm: self.debug_vm,
            ..KernelConfig::default()
        };
        for f in &self.reverted {
            k.fixes.set(*f, false);
        }
        k
    }

    fn setup(&self) -> Setup {
        Setup {
            scenario: self.scenario.name.to_string(),
            arch: self.arch.name(),
            kernel: self.kernel.name(),
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
            arch_counters: mm_core::arch_counters(&self.kcfg()),
            counters_kept: mm_core::counters_kept(&self.kcfg()),
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
    let wanted = s.frames(ctx).map_err(|e| CliError::Usage(e.to_string()))?;
    let frames =
        scenarios::ram_frames(ctx, wanted).map_err(|e| CliError::Usage(format!("scenario {}: {e}", s.name)))?;
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

/// SIGINT / SIGTERM: the first one ends the budget (every thread stops at
/// its next step, the run tears down, leak-checks and prints its report,
/// marked `interrupted`, and writes its trace); a second one exits at once
/// with status 128 + the signal's number, printing nothing more.
///
/// The handler decides "first or second" with `request_stop`'s one
/// compare-and-swap, so two signals taken at the same moment by two threads
/// (a SIGINT and a SIGTERM are not merged like two SIGINTs) still count as
/// one first and one second.
pub fn install_signal_handlers() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        let action = move || {
            if !request_stop(sig as usize) {
                signal_hook::low_level::exit(128 + sig);
            }
        };
        // SAFETY: the action only does one compare-and-swap on a static
        // atomic and `_exit(2)`, both async-signal-safe; it allocates
        // nothing and takes no lock.
        let _ = unsafe { signal_hook::low_level::register(sig, action) };
    }
}

/// Exit status of a command whose runs `failed` or not: 1 for a finding;
/// else 128 + the signal if one cut the budget short (130 SIGINT, 143
/// SIGTERM); else 0.
pub fn exit_status(failed: bool) -> i32 {
    let sig = stop_signal();
    if failed {
        1
    } else if sig != 0 {
        128 + sig as i32
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
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spec.scenario.run(&ctx)));
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

/// `--revert X --revert X` is a mistake (a typo for another switch?), not
/// a no-op.
fn no_repeated_switch(revert: &[Fix]) -> Result<(), CliError> {
    match revert.iter().enumerate().find(|(i, f)| revert[..*i].contains(f)) {
        Some((_, f)) => Err(CliError::Usage(format!("--revert {f} given twice; allowed once per switch"))),
        None => Ok(()),
    }
}

pub(super) fn run(a: RunArgs) -> Result<i32, CliError> {
    let s = a.scenario;
    no_repeated_switch(&a.revert)?;
    let params = s.parse_params(&a.params).map_err(CliError::Usage)?;
    if let Some(c) = a.inject_panic {
        crate::inject::arm(c, a.inject_panic_after);
    }
    // A script's header gives the defaults; every option overrides it.
    let script = s.script();
    let mut reverted = a.revert.clone();
    let mut run_budget = budget(&a.budget, s);
    if let Some(l) = script {
        for f in &l.checked.reverts {
            if !reverted.contains(f) {
                reverted.push(*f);
            }
        }
        if let (None, None, crate::script::check::BudgetSpec::Millis(ms)) =
            (a.budget.seconds, a.budget.iterations, l.checked.budget)
        {
            run_budget = Budget::Seconds(ms as f64 / 1000.0);
        }
    }
    let spec = RunSpec {
        scenario: s,
        cpus: a.cpus.unwrap_or(script.map_or(4.max(s.min_cpus), |l| l.checked.cpus as usize)),
        arch: a.arch.unwrap_or(s.arch.arch()),
        kernel: a
            .machine
            .kernel
            .or_else(|| script.and_then(|l| l.checked.kernel.parse().ok()))
            .unwrap_or(KernelVersion::V6_12),
        reverted,
        budget: run_budget,
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

pub(super) fn reproduce(a: ReproArgs) -> Result<i32, CliError> {
    let e = scenarios::exposer(a.switch);
    let s = match a.script {
        Some(s) => s,
        None => {
            scenarios::find(e.scenario).expect("every exposer names a scenario (test `every_exposer_names_a_scenario`)")
        }
    };
    let params = s.parse_params(&a.params).map_err(CliError::Usage)?;
    // A script: its header's CPUs and arch, and its own reverts in both runs.
    let script = s.script();
    let header_reverts: Vec<Fix> =
        script.map(|l| l.checked.reverts.iter().copied().filter(|f| *f != a.switch).collect()).unwrap_or_default();
    let mut spec = RunSpec {
        scenario: s,
        kernel: a
            .machine
            .kernel
            .or_else(|| script.and_then(|l| l.checked.kernel.parse().ok()))
            .unwrap_or(KernelVersion::V6_12),
        cpus: a.cpus.unwrap_or(script.map_or(4.max(s.min_cpus), |l| l.checked.cpus as usize)),
        arch: script.map_or(e.arch, |l| l.checked.arch),
        reverted: header_reverts.iter().copied().chain([a.switch]).collect(),
        budget: budget(&a.budget, s),
        seed: a.machine.seed,
        machine: machine_config(&a.machine),
        params,
        trace: None,
        stop_on_violation: e.correctness,
        debug_vm: !a.machine.no_debug_vm,
    };
    let off = run_scenario(&spec)?;
    spec.reverted = header_reverts;
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
        // The table names what ran: the script, on its arch.
        let shown = scenarios::Exposer { scenario: s.name, arch: spec.arch, ..*e };
        emit(&side_by_side(a.switch, &shown, &off, &on, reproduced))?;
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

#[derive(Default, Clone, Debug)]
struct Tally {
    runs: u64,
    rounds: u64,
    ops: u64,
    violations: u64,
    leaked: i64,
    failures: u64,
}

pub(super) fn stress(a: StressArgs) -> Result<i32, CliError> {
    let cpus = a.cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(MAX_CPUS));
    // An explicit --cpus N is honoured: scenarios that need more CPUs are
    // skipped (the table says so).  Without it (the host's cores) each
    // scenario gets at least its minimum, as before.
    // --kernel 6.18 runs only the x86 scenarios (the other profiles are
    // v6.12's: KernelConfig::kernel_pairing).
    let kernel_ok = |s: &Scenario| {
        KernelConfig { arch: s.arch.arch(), kernel: a.machine.kernel(), ..KernelConfig::default() }
            .kernel_pairing()
            .is_ok()
    };
    let skipped = |s: &Scenario| (a.cpus.is_some() && s.min_cpus > cpus) || !kernel_ok(s);
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
    let mut rng = Rng::new(a.machine.seed, 0x57);
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
            if left < Duration::from_millis(50) || interrupted() {
                break 'outer;
            }
            let s = &all[i];
            let spec = RunSpec {
                scenario: s,
                cpus: cpus.max(s.min_cpus),
                arch: s.arch.arch(),
                kernel: a.machine.kernel(),
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
        let note = if !kernel_ok(s) {
            format!("skipped: --kernel {} is x86 only ({} follows 6.12)", a.machine.kernel(), s.arch.arch().name())
        } else if skipped(s) {
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
    if interrupted() {
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

/// `mmemu check FILE`: parse and validate a script; the one-line summary
/// on stdout (exit 0) or the script's error line (exit 2).
pub(super) fn check(a: super::args::CheckArgs) -> Result<i32, CliError> {
    let shown = a.file.display().to_string();
    let src = std::fs::read(&a.file)
        .map_err(|e| CliError::Usage(format!("cannot read script '{shown}': {e}; allowed a readable .mmemu file")))?;
    let src = String::from_utf8(src)
        .map_err(|_| CliError::Usage(format!("script '{shown}' is not UTF-8 text; allowed a UTF-8 .mmemu file")))?;
    let params = script_params(&a.params)?;
    let checked = crate::script::check_source(&shown, &src, &params).map_err(|e| CliError::Usage(e.to_string()))?;
    super::output::emit(&format!("{}\n", checked.summary(&shown)))?;
    Ok(0)
}

/// `--param KEY=VALUE` of a script: split and read (the checker knows the
/// keys and ranges).
pub(super) fn script_params(raw: &[String]) -> Result<Vec<(String, u64)>, CliError> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for p in raw {
        let Some((k, v)) = p.split_once('=') else {
            return Err(CliError::Usage(format!("--param: '{p}' has no '='; allowed KEY=VALUE")));
        };
        let n = crate::input::parse_decimal(v, 0, u64::MAX)
            .map_err(|e| CliError::Usage(format!("--param {k}: '{v}' is {}; allowed 0..={}", e.what(), u64::MAX)))?;
        if out.iter().any(|(x, _)| x == k) {
            return Err(CliError::Usage(format!("--param {k} given more than once; allowed once per key")));
        }
        out.push((k.to_string(), n));
    }
    Ok(out)
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
