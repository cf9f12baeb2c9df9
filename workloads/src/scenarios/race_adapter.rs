//! The race scenarios' adapter: a race driver (`races::<x>::run`) under a
//! scenario's `Ctx` — the budget as one call or chunks of rounds, each on a
//! fresh machine, their counters summed into one `Outcome`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::budget::{interrupted, Budget, Until};
use crate::error::RunError;
use crate::outcome::{Measure, Outcome};
use crate::races::{RaceOutcome, RaceParams};

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
        first_violation_after: None,
        metrics: BTreeMap::new(),
        leak_not_checked: None,
        violations_expected: false,
    };
    let until = Until::new(ctx.budget);
    let mut call = 0u64;
    // Rounds' time of the calls before the one that found the race.
    let mut rounds_before = Duration::ZERO;
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
                    out.first_violation_after = c.timing.first_violation_after.map(|t| t + rounds_before);
                    rounds_before += c.timing.rounds;
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
                // The failed call's machine was not leak-checked (its
                // teardown stopped at the failure, or was skipped after a
                // hang): the run as a whole was not.
                out.measure.leaked = None;
                out.leak_not_checked = Some("the run ended early".into());
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
