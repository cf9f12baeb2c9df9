//! The `mmemu` command line.  `src/bin/mmemu.rs` only calls `main()`:
//! parse (`args`: clap, the value parsers, one-line usage errors), run the
//! subcommand (`output::list`, `run`: run / reproduce / stress / check, or
//! `host` / `diff`: a script on the host kernel, and beside the emulator), and map
//! the result to the exit status.  `output` is everything written.
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

mod args;
mod diff;
mod host;
mod output;
mod run;

pub use args::Cli;
pub use output::{side_by_side, CliError, EXIT_STDOUT};
pub use run::{exit_status, install_panic_hook, install_signal_handlers, plan, run_scenario, RunSpec};

use clap::Parser as _;

use args::{usage_line, Cmd};
use output::{error_line, list, stdout_failed};

/// Parse the command line and run; returns the process exit status.
pub fn main() -> i32 {
    install_panic_hook();
    install_signal_handlers();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // An `exec` step's helper (docs/HOST.md), never typed by a user.
    if args.get(1).is_some_and(|a| a == "__host-exec") {
        crate::host::exec_helper();
    }
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
        Cmd::Run(a) => run::run(a),
        Cmd::Reproduce(a) => run::reproduce(a),
        Cmd::Stress(a) => run::stress(a),
        Cmd::Check(a) => run::check(a),
        Cmd::Host(a) => host::host(a),
        Cmd::Diff(a) => diff::diff(a),
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
