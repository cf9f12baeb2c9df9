//! What the host runner refuses, before anything runs: one line,
//! `FILE:LINE:COLUMN: found …; …` like the checker's, naming the step or
//! header line and why.  A script is run whole on the host or not at all.

use mm_core::config::Arch;

use crate::script::ast::*;
use crate::script::check::{Checked, PMD_PAGES};
use crate::script::interp::const_eval;
use crate::script::ScriptError;

/// What the refusals look at on the host (a test passes its own).
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub linux: bool,
    /// The CPUs this process may run on.
    pub cpus: Vec<usize>,
    /// /proc/interrupts has both rows (else why not).
    pub rows: Result<(), String>,
    /// HugeTLB pages reserved (/proc/sys/vm/nr_hugepages).
    pub hugepages: u64,
    /// The host's arch as a profile name (`x86`, `arm64`), if it has one.
    pub arch: Option<Arch>,
}

impl HostFacts {
    pub fn this_host() -> HostFacts {
        let arch = Arch::of_host();
        HostFacts {
            linux: cfg!(target_os = "linux"),
            cpus: super::counters::allowed_cpus(),
            rows: super::counters::interrupts().map(|_| ()),
            hugepages: super::counters::nr_hugepages(),
            arch,
        }
    }
}

/// The first reason the host cannot run `s`, as the error line.
pub fn refusal(file: &str, s: &Script, c: &Checked, h: &HostFacts) -> Option<ScriptError> {
    let at = |span: Span, msg: String| Some(ScriptError::new(file, span, msg));
    let top = s.name.span;
    if !h.linux {
        return at(
            top,
            format!(
                "found a {} host; allowed a Linux host (mmemu host runs the script on its kernel)",
                std::env::consts::OS
            ),
        );
    }
    if let Err(why) = &h.rows {
        return at(
            top,
            format!("found {why}; allowed a host whose /proc/interrupts has per-CPU TLB and CAL rows (x86)"),
        );
    }
    let cpus_span = s.header.cpus.as_ref().map_or(top, |e| e.span);
    let missing: Vec<u64> = (0..c.cpus).filter(|i| !h.cpus.contains(&(*i as usize))).collect();
    if !missing.is_empty() {
        let have = h.cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        return at(
            cpus_span,
            format!(
                "found cpus {} but this host lets mmemu run on CPUs {{{have}}} only (CPU{} missing); allowed cpus <= {} on this host (script CPU n runs on host CPU n)",
                c.cpus,
                missing[0],
                (0..).take_while(|i| h.cpus.contains(i)).count()
            ),
        );
    }
    if h.arch != Some(c.arch) {
        let span = s.header.arch.as_ref().map_or(top, |n| n.span);
        let host = h.arch.map_or(std::env::consts::ARCH, |a| a.name());
        return at(
            span,
            format!(
                "found arch {}, but the host is {host}; allowed arch {host} (the host runs its own arch)",
                c.arch.name()
            ),
        );
    }
    if let Some(r) = s.header.reverts.first() {
        return at(
            r.span,
            format!("found revert {}: the host kernel's fixes cannot be switched off; allowed no revert line", r.text),
        );
    }
    if let Some(k) = s.header.knobs.first() {
        return at(
            k.name.span,
            format!("found knob {}: the host kernel's configuration is fixed; allowed no knob line", k.name.text),
        );
    }
    let mut huge = 0u64;
    for t in &s.threads {
        if let Some(e) = walk(file, &t.body, c, true, &mut huge) {
            return Some(e);
        }
    }
    if huge > h.hugepages {
        let span = first_hugetlb(s).unwrap_or(top);
        return at(
            span,
            format!(
                "found hugetlb mmaps of {huge} 2 MiB pages but the host reserves {} (/proc/sys/vm/nr_hugepages); allowed at most that many (echo N > /proc/sys/vm/nr_hugepages)",
                h.hugepages
            ),
        );
    }
    None
}

fn first_hugetlb(s: &Script) -> Option<Span> {
    fn w(b: &[Step]) -> Option<Span> {
        b.iter().find_map(|st| match &st.kind {
            StepKind::Mmap { kind: MapKind::Hugetlb, .. } => Some(st.span),
            StepKind::Fork { body, .. }
            | StepKind::Exec { body, .. }
            | StepKind::Spawn { body, .. }
            | StepKind::Repeat { body, .. }
            | StepKind::RepeatUntilBudget { body }
            | StepKind::For { body, .. } => w(body),
            _ => None,
        })
    }
    s.threads.iter().find_map(|t| w(&t.body))
}

/// The first refused step of a body.  `top`: the thread's own body (not
/// a fork child's).  `huge` sums the 2 MiB pages hugetlb mmaps ask for.
fn walk(file: &str, b: &[Step], c: &Checked, top: bool, huge: &mut u64) -> Option<ScriptError> {
    let refuse = |span: Span, what: &str, why: &str| {
        Some(ScriptError::new(
            file,
            span,
            format!("found {what}, which mmemu host does not run: {why}; allowed by mmemu run (the emulator) only"),
        ))
    };
    for st in b {
        let stall = match &st.kind {
            StepKind::Munmap { stall, .. } | StepKind::Madvise { stall, .. } => stall.as_ref(),
            _ => None,
        };
        if let Some(x) = stall {
            return refuse(
                x.point.span,
                &format!("a {} stalled at {}", st.kind.keyword(), x.point.text),
                "a race stall point is a hook inside the kernel path (RaceHooks); the host kernel has none",
            );
        }
        match &st.kind {
            StepKind::GupFast { .. } => {
                return refuse(
                    st.span,
                    "gup-fast",
                    "user space cannot call the kernel's lockless GUP-fast walk directly",
                );
            }
            StepKind::Collapse { .. } => {
                return refuse(
                    st.span,
                    "collapse",
                    "khugepaged's collapse_huge_page cannot be called on a chosen range",
                );
            }
            StepKind::Device { .. } => {
                return refuse(st.span, "device", "there is no SVA device to bind");
            }
            StepKind::Exit { process: true } if top => {
                return Some(ScriptError::new(
                    file,
                    st.span,
                    "found exit process in a thread's own body, which mmemu host does not run: it would end the process's other threads mid-step; allowed inside a fork or exec block",
                ));
            }
            StepKind::Mmap { kind: MapKind::Hugetlb, size, .. } => {
                let n = const_eval(&size.expr, c, c.cpus, 0).unwrap_or(0);
                let pages = if size.pages { n } else { n / crate::script::check::PAGE };
                *huge += pages.div_ceil(PMD_PAGES);
            }
            StepKind::Fork { body, .. } | StepKind::Exec { body, .. } => {
                if let Some(e) = walk(file, body, c, false, huge) {
                    return Some(e);
                }
            }
            StepKind::Spawn { body, .. }
            | StepKind::Repeat { body, .. }
            | StepKind::RepeatUntilBudget { body }
            | StepKind::For { body, .. } => {
                if let Some(e) = walk(file, body, c, top, huge) {
                    return Some(e);
                }
            }
            _ => {}
        }
    }
    None
}
