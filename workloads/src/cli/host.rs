//! `mmemu host FILE`: the options made `host::HostOptions`, the run
//! (`crate::host`), the report printed.  Exit 0 ok, 1 a failed
//! expectation or step, 2 a refused script or bad usage, 128 + the signal
//! when SIGINT / SIGTERM cut the budget short (as `mmemu run`).

use super::args::HostArgs;
use super::output::{emit, print_json, CliError};
use crate::budget::Budget;
use crate::host::{HostError, HostOptions};

pub(super) fn host(a: HostArgs) -> Result<i32, CliError> {
    let budget = match (a.budget.iterations, a.budget.seconds) {
        (Some(n), _) => Some(Budget::Iterations(n)),
        (None, Some(s)) => Some(Budget::Seconds(s)),
        (None, None) => None,
    };
    let o = HostOptions {
        file: a.file.display().to_string(),
        params: super::run::script_params(&a.params)?,
        budget,
        seed: a.seed,
        cpus: a.cpus.map(|n| n as u64),
    };
    let r = crate::host::run(&o).map_err(|e| match e {
        HostError::Refused(m) => CliError::Usage(m),
        HostError::Failed(m) => CliError::Failed(m),
    })?;
    if a.json {
        print_json(&r)?;
    } else {
        emit(&r.human())?;
    }
    Ok(super::run::exit_status(r.failed()))
}
