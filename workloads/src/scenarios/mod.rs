//! Scenarios: the programs `mmemu run` / `reproduce` / `stress` execute.
//!
//! Contract:
//! - A `Scenario` is a name, a one-line description, its parameters (each
//!   an integer with a default and an allowed range), the fixes it exposes,
//!   the arch it defaults to or requires, and its `Program`: Rust code or
//!   a script.
//! - `Scenario::run(&Ctx)` boots its own emu-cpu `System` from `ctx.kcfg` /
//!   `ctx.machine`, runs user threads and syscalls on every CPU until
//!   `ctx.budget` is spent, exits every mm, quiesces the machine and
//!   returns an `Outcome`: counters, violations and leaked frames as a
//!   `Measure`, plus a machine error (panic, hang) naming the CPU if one
//!   ended the run early.  `Err` means the scenario could not start (bad
//!   configuration); the message says what is wrong.
//! - The storms (munmap-storm, mprotect-pingpong, madvise-dontneed,
//!   exit-storm: `SCRIPTED`) are shipped scripts, examples/scripts/NAME.mmemu
//!   embedded in the binary, run by the script interpreter on `native`'s
//!   machinery: boot, the work log, the seed's generator, `finish` and the
//!   syscall wrappers (`native::sys`: every syscall a trace span, free when
//!   no trace is recorded).  Race scenarios (`races.rs`) are one small
//!   adapter each around a race driver `races::<x>::run` (`race_adapter`:
//!   the budget in chunks, the sums).
//!
//! This file is the registry: `Scenario`, its parameters and arch,
//! `Ctx`, every scenario (`all`, `find`), the switch → scenario table
//! (`EXPOSERS`) and the emulated RAM a run asks for (`ram_frames`).

pub(crate) mod native;
pub mod race_adapter;
mod races;

use std::collections::BTreeMap;

use emu_cpu::MachineConfig;
use mm_core::config::{Arch, Fix, KernelConfig};

use crate::budget::Budget;
use crate::error::RunError;
use crate::input::{did_you_mean, parse_decimal, suggest, unknown_name};
use crate::outcome::Outcome;

/// One integer parameter of a scenario (`--param key=value`).
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub key: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub help: &'static str,
}

/// Which arch profile a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchReq {
    /// Runs on any profile; this one unless `--arch` says otherwise.
    Default(Arch),
    /// The race only exists on this profile (e.g. arm64's broadcast TLBI
    /// that does not wait for IRQs-off CPUs).
    Requires(Arch),
}

impl ArchReq {
    pub fn arch(self) -> Arch {
        match self {
            ArchReq::Default(a) | ArchReq::Requires(a) => a,
        }
    }
}

/// Everything a scenario run is given.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub kcfg: KernelConfig,
    pub machine: MachineConfig,
    pub budget: Budget,
    pub seed: u64,
    /// Every parameter of the scenario, validated (defaults filled in).
    pub params: BTreeMap<&'static str, u64>,
    /// Race scenarios: stop at the first round with a violation.
    pub stop_on_violation: bool,
}

impl Ctx {
    pub fn param(&self, key: &str) -> u64 {
        *self.params.get(key).unwrap_or_else(|| panic!("scenario parameter '{key}' was not validated"))
    }
    pub fn nr_cpus(&self) -> usize {
        self.kcfg.nr_cpus
    }
}

pub type RunFn = fn(&Ctx) -> Result<Outcome, RunError>;

/// One entry of the registry.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub params: &'static [ParamSpec],
    /// Fixes whose reverted form this scenario shows (violations or counts).
    pub exposes: &'static [Fix],
    pub arch: ArchReq,
    /// Fewest CPUs the scenario makes sense on.
    pub min_cpus: usize,
    /// Rounds when neither `--iterations` nor `--seconds` is given.
    pub default_iterations: u64,
    pub program: Program,
}

/// What a scenario runs.
#[derive(Clone, Copy)]
pub enum Program {
    /// Rust code: `frames` is the emulated RAM (page frames) a run asks
    /// for, before rounding (`ram_frames`; the CLI checks it against the
    /// host first), and `run` the run.
    Rust { frames: fn(&Ctx) -> usize, run: RunFn },
    /// A script (docs/SCRIPTS.md), interpreted: a shipped one
    /// (examples/scripts, embedded) or a user's file.
    Script(&'static crate::script::Loaded),
}

impl Scenario {
    /// Emulated RAM (page frames) a run asks for, before rounding
    /// (`ram_frames`); the CLI checks it against the host first.
    pub fn frames(&self, ctx: &Ctx) -> Result<usize, RunError> {
        match self.program {
            Program::Rust { frames, .. } => Ok(frames(ctx)),
            Program::Script(l) => crate::script::frames(l, ctx),
        }
    }

    /// Run it on a machine booted from `ctx`.
    pub fn run(&self, ctx: &Ctx) -> Result<Outcome, RunError> {
        match self.program {
            Program::Rust { run, .. } => run(ctx),
            Program::Script(l) => crate::script::run_loaded(l, ctx),
        }
    }

    /// The script it interprets, if it is one.
    pub fn script(&self) -> Option<&'static crate::script::Loaded> {
        match self.program {
            Program::Script(l) => Some(l),
            Program::Rust { .. } => None,
        }
    }
}

/// `Program::Rust::frames` of the race scenarios: the configuration's RAM.
pub fn config_frames(ctx: &Ctx) -> usize {
    ctx.kcfg.ram_frames
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario").field("name", &self.name).finish()
    }
}

impl Scenario {
    /// Validate `key=value` pairs against this scenario's parameters and
    /// fill in defaults.  The error names the key and the allowed range.
    pub fn parse_params(&self, pairs: &[String]) -> Result<BTreeMap<&'static str, u64>, String> {
        let mut out: BTreeMap<&'static str, u64> = self.params.iter().map(|p| (p.key, p.default)).collect();
        let keys = || {
            if self.params.is_empty() {
                format!("scenario {} takes no parameters", self.name)
            } else {
                format!(
                    "allowed keys for {}: {}",
                    self.name,
                    self.params.iter().map(|p| p.key).collect::<Vec<_>>().join(", ")
                )
            }
        };
        let mut seen: BTreeMap<&'static str, &String> = BTreeMap::new();
        for pair in pairs {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("--param '{pair}': expected KEY=VALUE; {}", keys()))?;
            let spec = self.params.iter().find(|p| p.key == k).ok_or_else(|| {
                if self.params.is_empty() {
                    format!("--param {pair}: {}", keys())
                } else {
                    let names: Vec<&str> = self.params.iter().map(|p| p.key).collect();
                    let dym = did_you_mean(&suggest(k, &names));
                    format!("scenario {} has no parameter '{k}'{dym}; allowed: {}", self.name, names.join(", "))
                }
            })?;
            let n = parse_decimal(v, spec.min, spec.max)
                .map_err(|e| format!("--param {k}={v}: {}; allowed {}..={}", e.what(), spec.min, spec.max))?;
            if let Some(first) = seen.insert(spec.key, pair) {
                return Err(format!("--param {k} given twice ({first}, {pair}); allowed once per key"));
            }
            out.insert(spec.key, n);
        }
        Ok(out)
    }
}

/// Every scenario, in `mmemu list` order: the scripted ones, then the
/// races.
pub fn all() -> &'static [Scenario] {
    static ALL: std::sync::OnceLock<Vec<Scenario>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v: Vec<Scenario> = SCRIPTED
            .iter()
            .map(|name| {
                let (file, src) = crate::script::shipped::find(name)
                    .unwrap_or_else(|| panic!("scenario {name}: no shipped script of that name (tests/scripts.rs)"));
                *crate::script::load_source(&format!("examples/scripts/{file}"), src)
                    .unwrap_or_else(|e| panic!("scenario {name}: its shipped script does not load: {e}"))
            })
            .collect();
        v.extend_from_slice(RACES);
        v
    })
}

/// Look a scenario up by name; the error lists the names.
pub fn find(name: &str) -> Result<&'static Scenario, String> {
    all()
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unknown_name("scenario", name, &all().iter().map(|s| s.name).collect::<Vec<_>>()))
}

/// Which scenario (and arch) shows a switch reverted: `mmemu reproduce`.
#[derive(Clone, Copy, Debug)]
pub struct Exposer {
    pub fix: Fix,
    pub scenario: &'static str,
    pub arch: Arch,
    /// A correctness fix: reverted must give violations, on must give none.
    /// Otherwise the difference is in the counters (IPIs, batches).
    pub correctness: bool,
}

/// Switch → exposing scenario (`mmemu reproduce`; docs/RACES.md lists them).
pub const EXPOSERS: &[Exposer] = &[
    Exposer { fix: Fix::KhugepagedGupFastIpi, scenario: "khugepaged-gup", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::GupPmdRecheck, scenario: "khugepaged-gup-pin", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::DelayRmap, scenario: "writeback-race", arch: Arch::X86, correctness: true },
    Exposer { fix: Fix::HugetlbUnshareSync, scenario: "hugetlb-unshare-gup", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::HugetlbUnshareBatched, scenario: "fork-exit-hugetlb", arch: Arch::X86, correctness: false },
    Exposer { fix: Fix::SecondaryTlbOnFlush, scenario: "iommu-sva", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::FolioPagesBatching, scenario: "large-folio-zap", arch: Arch::X86, correctness: false },
    Exposer { fix: Fix::NestedFlushDetect, scenario: "nested-zap", arch: Arch::X86, correctness: true },
    Exposer { fix: Fix::LazyTlbFreedTables, scenario: "lazy-tlb", arch: Arch::X86, correctness: true },
    Exposer { fix: Fix::Arm64UnshareWalkCache, scenario: "hugetlb-unshare-walk", arch: Arch::Arm64, correctness: true },
    Exposer { fix: Fix::NoRangeVmaPfn, scenario: "pfnmap-unmap", arch: Arch::GenericNoRange, correctness: true },
];

pub fn exposer(fix: Fix) -> &'static Exposer {
    EXPOSERS.iter().find(|e| e.fix == fix).expect("every Fix has an exposer (test `every_fix_has_an_exposer`)")
}

/// `mm_core::types::NR_CPUS`: the largest `--cpus`.
pub const MAX_CPUS: usize = mm_core::types::NR_CPUS;

/// The scenarios that are shipped scripts (examples/scripts/NAME.mmemu),
/// in `mmemu list` order, before the races.
pub const SCRIPTED: &[&str] = &["munmap-storm", "mprotect-pingpong", "madvise-dontneed", "exit-storm"];

static RACES: &[Scenario] = &[
    races::LAZY_TLB,
    races::GUP_TABLE_FREE,
    races::KHUGEPAGED_GUP,
    races::KHUGEPAGED_GUP_FILE,
    races::KHUGEPAGED_GUP_PIN,
    races::HUGETLB_UNSHARE_GUP,
    races::HUGETLB_UNSHARE_WALK,
    races::FORK_EXIT_HUGETLB,
    races::WRITEBACK_RACE,
    races::NESTED_ZAP,
    races::IOMMU_SVA,
    races::IOMMU_SVA_DMA,
    races::LARGE_FOLIO_ZAP,
    races::PFNMAP_UNMAP,
];

/// The largest emulated RAM a run may have: `KernelConfig::validate`'s
/// bound (2^24 frames, 64 GiB of 4 KiB pages).
pub const MAX_RAM_FRAMES: usize = 1 << 24;

/// The emulated RAM a native scenario boots with: what it asked for,
/// rounded up to a power of two, at least the configuration's default.
/// More than `MAX_RAM_FRAMES` is refused with the parameters that asked
/// for it (never silently capped: the run would then fail for lack of RAM).
pub(crate) fn ram_frames(ctx: &Ctx, min_frames: usize) -> Result<usize, String> {
    let frames = ctx.kcfg.ram_frames.max(min_frames.next_power_of_two());
    if frames > MAX_RAM_FRAMES {
        return Err(format!(
            "--cpus {} with {} needs {frames} emulated page frames; at most {MAX_RAM_FRAMES} \
             (lower --cpus or the parameters)",
            ctx.nr_cpus(),
            describe_params(ctx)
        ));
    }
    Ok(frames)
}

/// `key=value ...` of the run's parameters, for messages.
pub fn describe_params(ctx: &Ctx) -> String {
    if ctx.params.is_empty() {
        return "no parameters".to_string();
    }
    ctx.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fix_has_an_exposer() {
        for f in Fix::ALL {
            assert_eq!(exposer(f).fix, f);
        }
    }

    #[test]
    fn every_exposer_names_a_scenario() {
        for e in EXPOSERS {
            let s = find(e.scenario).unwrap_or_else(|err| panic!("{}: {err}", e.fix));
            if let ArchReq::Requires(a) = s.arch {
                assert_eq!(a, e.arch, "{}: {} runs on {} only", e.fix, s.name, a.name());
            }
        }
    }

    #[test]
    fn names_are_unique_and_params_have_sane_defaults() {
        let mut names: Vec<_> = all().iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all().len());
        for s in all() {
            for p in s.params {
                assert!(p.min <= p.default && p.default <= p.max, "{} {}", s.name, p.key);
            }
        }
    }

    #[test]
    fn param_validation_messages() {
        let s = find("munmap-storm").unwrap();
        assert!(s.parse_params(&["nope=1".into()]).unwrap_err().contains("allowed: "));
        assert!(s.parse_params(&["pages=0".into()]).unwrap_err().contains("allowed 1..="));
        assert!(s.parse_params(&["pages".into()]).unwrap_err().contains("KEY=VALUE"));
        assert_eq!(s.parse_params(&["pages=8".into()]).unwrap()["pages"], 8);
    }
}
