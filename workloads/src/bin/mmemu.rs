//! `mmemu`: list / run / reproduce / stress.  All logic is in the library
//! (`workloads::cli`); see `mmemu --help` and the README.

fn main() {
    std::process::exit(workloads::cli::main());
}
