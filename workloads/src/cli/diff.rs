//! `mmemu diff FILE`: the script on the host (`crate::host`, until
//! `--runs` trusted runs or ten times that many attempts) and on the
//! emulator (`run_scenario`, the profile of the host's release), compared
//! by `host::diff`.  Host runs go first, while mmemu has no emulator
//! threads.  Exit 0 every row inside, 1 a row outside or too few trusted
//! host runs, 2 a refused script or bad usage.

use emu_cpu::MachineConfig;

use super::args::DiffArgs;
use super::output::{emit, print_json, CliError};
use super::run::{run_scenario, RunSpec};
use crate::budget::Budget;
use crate::host::diff::{profile_for, DiffReport, HostRun, RunRows, Tolerance};
use crate::host::{HostError, HostOptions};

/// Host attempts per run asked for (untrusted runs are retried).
const ATTEMPTS_PER_RUN: usize = 10;

/// A CPU that takes more TLB shootdowns per second than this from other
/// processes, in `NOISE_WINDOW` just before a host run, is not trusted in
/// that run: the noise would be counted as the script's (a row near zero
/// is judged to ±0.02 per iteration).
const NOISY_TLB_PER_SEC: f64 = 10.0;
const NOISE_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

pub(super) fn diff(a: DiffArgs) -> Result<i32, CliError> {
    let path = a.file.display().to_string();
    let s = crate::script::load(&path).map_err(CliError::Usage)?;
    let l = s.script().expect("a loaded script");
    let params = s.parse_params(&a.params).map_err(CliError::Usage)?;
    let iterations = a.iterations.unwrap_or(s.default_iterations);
    let cpus = a.cpus.unwrap_or(l.checked.cpus as usize);
    let release = crate::host::counters::kernel_release();
    let profile = profile_for(&release);
    let opts = HostOptions {
        file: path.clone(),
        params: params.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        budget: Some(Budget::Iterations(iterations)),
        seed: a.seed,
        cpus: Some(cpus as u64),
    };
    let mut host = Vec::new();
    for _ in 0..a.runs * ATTEMPTS_PER_RUN {
        let noise = crate::host::counters::background_tlb_per_sec(NOISE_WINDOW);
        let r = crate::host::run(&opts).map_err(|e| match e {
            HostError::Refused(m) => CliError::Usage(m),
            HostError::Failed(m) => CliError::Failed(m),
        })?;
        if let Some(e) = &r.error {
            if r.verdict == "panic" {
                return Err(CliError::Failed(format!("host run: {e}")));
            }
        }
        let (mut trusted, mut why) = (r.host.trusted_cpus.clone(), r.host.untrusted_reason.clone());
        for (cpu, rate) in noise.iter().enumerate() {
            if *rate > NOISY_TLB_PER_SEC && trusted.get(cpu) == Some(&true) {
                trusted[cpu] = false;
                why.get_or_insert(format!(
                    "CPU{cpu} took {rate:.0} TLB shootdowns/s from other processes just before the run \
                     (more than {NOISY_TLB_PER_SEC}: a noisy host)"
                ));
            }
        }
        host.push(HostRun {
            rows: RunRows::new(&r.interrupts.tlb, &r.interrupts.cal, r.iterations),
            trusted,
            min_share: r.host.min_share,
            untrusted_reason: why,
        });
        let enough = |cpu: usize| host.iter().filter(|h| h.trusted.get(cpu) == Some(&true)).count() >= a.runs;
        if (0..cpus).all(enough) {
            break;
        }
    }
    let spec = RunSpec {
        scenario: s,
        cpus,
        arch: l.checked.arch,
        kernel: profile.0,
        reverted: l.checked.reverts.clone(),
        budget: Budget::Iterations(iterations),
        seed: a.seed,
        machine: MachineConfig { pin: true, ..MachineConfig::default() },
        params,
        trace: None,
        stop_on_violation: false,
        debug_vm: true,
    };
    let mut emulator = Vec::new();
    for _ in 0..a.runs {
        let r = run_scenario(&spec)?;
        let tlb = r.interrupts.tlb.clone().unwrap_or_else(|| vec![0; cpus]);
        emulator.push(RunRows::new(&tlb, &r.interrupts.cal, r.iterations));
    }
    let d = DiffReport::new(
        l.checked.name.clone(),
        path,
        cpus,
        iterations,
        a.seed,
        profile,
        a.runs,
        Tolerance { percent: a.tolerance, near_zero: a.near_zero },
        &emulator,
        host,
    );
    if a.json {
        print_json(&d)?;
    } else {
        emit(&d.human())?;
    }
    Ok(if d.failed() { 1 } else { 0 })
}
