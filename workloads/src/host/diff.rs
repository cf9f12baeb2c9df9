//! `mmemu diff FILE`: the emulator's rows beside the host's
//! (docs/HOST.md "mmemu diff").  This is the comparison only: the kernel
//! profile for a host release, the per-iteration rows with their medians,
//! the tolerance, the report and its table.  The CLI (`cli/diff.rs`) does
//! the runs.
//!
//! A row is one /proc/interrupts row (TLB, CAL) on one CPU, per iteration
//! (count / rounds), with the median taken over the runs on each side.  It
//! is inside when |host - emulator| <= max(percent% of the emulator's,
//! near_zero), so a row near zero is judged by the absolute bound.  A
//! CPU's rows use only the host runs in which that CPU was trusted
//! (report.rs, `TRUST_SHARE`).  With fewer than the runs asked for, its
//! rows are `untrusted` and have no ratio: a wrong ratio is worse than
//! none.

use std::fmt::Write as _;

use mm_core::config::KernelVersion;
use serde::Serialize;

/// Host runs with an untrusted CPU the human table explains.
const SHOWN_SET_ASIDE: usize = 3;

/// JSON schema id of `mmemu diff --json`.
pub const SCHEMA: &str = "mmemu-diff/1";

/// The emulator profile for host release `release` (`6.18.44-…`): the
/// exact major.minor if there is one, else the closest (by distance in
/// major * 1000 + minor, then the newest), and a note saying which.
pub fn profile_for(release: &str) -> (KernelVersion, bool, String) {
    let num = |s: &str| -> Option<(u32, u32)> {
        let mut it = s.split(|c: char| !c.is_ascii_digit()).filter(|x| !x.is_empty());
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let host = num(release);
    let versions: Vec<(KernelVersion, (u32, u32))> =
        KernelVersion::ALL.iter().filter_map(|v| Some((*v, num(v.name())?))).collect();
    let Some(h) = host else {
        let newest = *KernelVersion::ALL.last().expect("a kernel profile");
        return (
            newest,
            false,
            format!("host release '{release}' has no version number; profile {newest} (the newest)"),
        );
    };
    if let Some((v, _)) = versions.iter().find(|(_, x)| *x == h) {
        return (*v, true, format!("profile {v} (the host runs {release})"));
    }
    let key = |x: (u32, u32)| x.0 as u64 * 1000 + x.1 as u64;
    let dist = |x: (u32, u32)| key(x).abs_diff(key(h));
    let (v, _) = versions
        .iter()
        .min_by(|a, b| dist(a.1).cmp(&dist(b.1)).then(b.1.cmp(&a.1)))
        .copied()
        .expect("a kernel profile");
    (v, false, format!("profile {v}: the closest to the host's {release} (no exact profile)"))
}

/// The middle value (the mean of the middle two for an even count); 0
/// for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// How far a host row may be from the emulator's.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tolerance {
    /// Relative, in percent of the emulator's value.
    pub percent: f64,
    /// Absolute, per iteration: the bound where counts are near zero.
    pub near_zero: f64,
}

impl Default for Tolerance {
    fn default() -> Tolerance {
        Tolerance { percent: 5.0, near_zero: 0.02 }
    }
}

impl Tolerance {
    pub fn inside(&self, emulator: f64, host: f64) -> bool {
        (host - emulator).abs() <= (emulator.abs() * self.percent / 100.0).max(self.near_zero)
    }
}

/// One run's rows per iteration: TLB and CAL, per CPU.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunRows {
    #[serde(rename = "TLB")]
    pub tlb: Vec<f64>,
    #[serde(rename = "CAL")]
    pub cal: Vec<f64>,
    pub iterations: u64,
}

impl RunRows {
    /// Counts per CPU over `iterations` rounds.
    pub fn new(tlb: &[u64], cal: &[u64], iterations: u64) -> RunRows {
        let per = |v: &[u64]| v.iter().map(|x| *x as f64 / iterations.max(1) as f64).collect();
        RunRows { tlb: per(tlb), cal: per(cal), iterations }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `TLB` or `CAL`.
    pub row: &'static str,
    pub cpu: usize,
    /// Medians per iteration.
    pub emulator: f64,
    /// None: no trusted host run.
    pub host: Option<f64>,
    /// host / emulator; None when the emulator's is 0 or the host's untrusted.
    pub ratio: Option<f64>,
    /// inside | outside | untrusted
    pub status: &'static str,
    pub emulator_runs: Vec<f64>,
    pub host_runs: Vec<f64>,
}

/// One host run as the diff keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct HostRun {
    pub rows: RunRows,
    /// Per CPU (report.rs `trusted_cpus`).
    pub trusted: Vec<bool>,
    pub min_share: Option<f64>,
    pub untrusted_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub schema: &'static str,
    pub script: String,
    pub file: String,
    pub cpus: usize,
    pub iterations: u64,
    pub seed: u64,
    /// The host's `uname -r`.
    pub host_kernel: String,
    /// The emulator's profile, whether it is exact, and the sentence saying which.
    pub profile: &'static str,
    pub profile_exact: bool,
    pub profile_note: String,
    /// Runs asked for on each side (medians over them).
    pub runs: usize,
    pub tolerance: Tolerance,
    pub rows: Vec<Row>,
    /// Every host run made, trusted or not (a CPU's rows use the runs
    /// trusted on it).
    pub host_runs: Vec<HostRun>,
    /// Per CPU: host runs trusted on it (used: at most `runs`).
    pub trusted_host_runs: Vec<usize>,
    /// Rows outside the tolerance.
    pub outside: usize,
    /// inside | outside | untrusted
    pub verdict: &'static str,
}

impl DiffReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        script: String,
        file: String,
        cpus: usize,
        iterations: u64,
        seed: u64,
        profile: (KernelVersion, bool, String),
        runs: usize,
        tolerance: Tolerance,
        emulator: &[RunRows],
        host: Vec<HostRun>,
    ) -> DiffReport {
        let on = |cpu: usize| -> Vec<&RunRows> {
            host.iter().filter(|h| h.trusted.get(cpu) == Some(&true)).map(|h| &h.rows).take(runs).collect()
        };
        let trusted_host_runs: Vec<usize> = (0..cpus).map(|c| on(c).len()).collect();
        let mut rows = Vec::new();
        for (name, pick) in
            [("TLB", (|r: &RunRows| r.tlb.clone()) as fn(&RunRows) -> Vec<f64>), ("CAL", |r| r.cal.clone())]
        {
            for cpu in 0..cpus {
                let at = |r: &RunRows| pick(r).get(cpu).copied().unwrap_or(0.0);
                let e_runs: Vec<f64> = emulator.iter().map(at).collect();
                let trusted = on(cpu);
                let h_runs: Vec<f64> = trusted.iter().map(|r| at(r)).collect();
                let e = median(&e_runs);
                let (h, ratio, status) = if trusted.len() >= runs {
                    let h = median(&h_runs);
                    let ratio = (e != 0.0).then(|| h / e);
                    (Some(h), ratio, if tolerance.inside(e, h) { "inside" } else { "outside" })
                } else {
                    (None, None, "untrusted")
                };
                rows.push(Row {
                    row: name,
                    cpu,
                    emulator: e,
                    host: h,
                    ratio,
                    status,
                    emulator_runs: e_runs,
                    host_runs: h_runs,
                });
            }
        }
        let outside = rows.iter().filter(|r| r.status == "outside").count();
        let verdict = if outside > 0 {
            "outside"
        } else if rows.iter().any(|r| r.status == "untrusted") {
            "untrusted"
        } else {
            "inside"
        };
        DiffReport {
            schema: SCHEMA,
            script,
            file,
            cpus,
            iterations,
            seed,
            host_kernel: super::counters::kernel_release(),
            profile: profile.0.name(),
            profile_exact: profile.1,
            profile_note: profile.2,
            runs,
            tolerance,
            trusted_host_runs,
            host_runs: host,
            rows,
            outside,
            verdict,
        }
    }

    /// Exit status 1?
    pub fn failed(&self) -> bool {
        self.verdict != "inside"
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mmemu diff {}: {} CPUs, {} iterations, seed {}; host kernel {}, emulator {}",
            self.script, self.cpus, self.iterations, self.seed, self.host_kernel, self.profile_note
        );
        let _ = writeln!(
            s,
            "  medians of {} runs each (host runs made {}, trusted per CPU {:?}); tolerance ±{}% or ±{} per iteration near zero",
            self.runs,
            self.host_runs.len(),
            self.trusted_host_runs,
            self.tolerance.percent,
            self.tolerance.near_zero
        );
        let _ = writeln!(
            s,
            "\n  {:<5}{:>5}{:>16}{:>16}{:>10}   status",
            "row", "CPU", "emulator/iter", "host/iter", "ratio"
        );
        for r in &self.rows {
            let h = r.host.map_or("-".to_string(), |h| format!("{h:.3}"));
            let ratio = r.ratio.map_or("-".to_string(), |x| format!("{x:.3}"));
            let status = if r.status == "outside" { "OUTSIDE" } else { r.status };
            let _ = writeln!(s, "  {:<5}{:>5}{:>16.3}{:>16}{:>10}   {status}", r.row, r.cpu, r.emulator, h, ratio);
        }
        let set_aside: Vec<_> =
            self.host_runs.iter().enumerate().filter(|(_, h)| h.trusted.iter().any(|t| !t)).collect();
        for (i, h) in set_aside.iter().take(SHOWN_SET_ASIDE) {
            if let Some(why) = &h.untrusted_reason {
                let _ = writeln!(s, "  host run {}: {why}", i + 1);
            }
        }
        if set_aside.len() > SHOWN_SET_ASIDE {
            let _ = writeln!(
                s,
                "  … and {} more host runs with an untrusted CPU (--json has them all)",
                set_aside.len() - SHOWN_SET_ASIDE
            );
        }
        let _ = match self.verdict {
            "inside" => writeln!(s, "  verdict: inside (every row within the tolerance)"),
            "outside" => writeln!(s, "  verdict: outside ({} rows outside the tolerance)", self.outside),
            _ => writeln!(
                s,
                "  verdict: untrusted (CPUs with fewer than {} trusted host runs: the host was too loaded; no ratio printed for their rows)",
                self.runs
            ),
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_host_release() {
        assert_eq!(profile_for("6.18.44-fc-v1045").0, KernelVersion::V6_18);
        assert!(profile_for("6.18.44-fc-v1045").1);
        let (v, exact, note) = profile_for("6.15.2");
        assert_eq!((v, exact), (KernelVersion::V6_18, false));
        assert_eq!(note, "profile 6.18: the closest to the host's 6.15.2 (no exact profile)");
        assert_eq!(profile_for("6.13.0").0, KernelVersion::V6_12);
        assert_eq!(profile_for("5.15.0").0, KernelVersion::V6_12);
    }

    #[test]
    fn rows_near_zero_use_the_absolute_bound() {
        let t = Tolerance::default();
        assert!(t.inside(1.0, 1.049) && !t.inside(1.0, 1.051));
        assert!(t.inside(0.0, 0.02) && !t.inside(0.0, 0.03));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn too_few_trusted_host_runs_give_no_ratio() {
        let e = RunRows::new(&[0, 200], &[0, 200], 200);
        let h = |t: bool| HostRun {
            rows: RunRows::new(&[0, 390], &[0, 390], 200),
            trusted: vec![t, t],
            min_share: None,
            untrusted_reason: None,
        };
        let d = DiffReport::new(
            "s".into(),
            "f".into(),
            2,
            200,
            1,
            profile_for("6.18.1"),
            2,
            Tolerance::default(),
            &[e.clone(), e.clone()],
            vec![h(true), h(false)],
        );
        assert_eq!(d.verdict, "untrusted");
        assert!(d.rows.iter().all(|r| r.ratio.is_none() && r.host.is_none()));
        let d = DiffReport::new(
            "s".into(),
            "f".into(),
            2,
            200,
            1,
            profile_for("6.18.1"),
            2,
            Tolerance::default(),
            &[e.clone(), e],
            vec![h(true), h(false), h(true)],
        );
        assert_eq!(d.verdict, "outside");
        assert_eq!(d.outside, 2);
        assert_eq!(d.rows[1].ratio, Some(1.95));
    }
}
