//! The host's counters: the per-CPU `TLB:` and `CAL:` rows of
//! /proc/interrupts, the `nr_tlb_*` lines of /proc/vmstat (present only
//! when the kernel has CONFIG_DEBUG_TLBFLUSH), and a thread's time on
//! its CPU (CLOCK_THREAD_CPUTIME_ID) and context switches (getrusage).

use std::collections::BTreeMap;

/// One snapshot of /proc/interrupts' rows, one value per CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    pub tlb: Vec<u64>,
    pub cal: Vec<u64>,
}

/// The counts of row `name` (`TLB`, `CAL`) in /proc/interrupts text, one
/// per CPU column (the header line's CPUn count), or None when the row is
/// absent.
pub fn interrupt_row(text: &str, name: &str) -> Option<Vec<u64>> {
    let ncols = text.lines().next()?.split_whitespace().filter(|w| w.starts_with("CPU")).count();
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{name}:")))?;
    let rest = line.trim_start()[name.len() + 1..].split_whitespace();
    let v: Vec<u64> = rest.take(ncols).map_while(|w| w.parse().ok()).collect();
    (v.len() == ncols).then_some(v)
}

/// /proc/interrupts now; the error says which row is missing.
pub fn interrupts() -> Result<Interrupts, String> {
    let text = std::fs::read_to_string("/proc/interrupts").map_err(|e| format!("cannot read /proc/interrupts: {e}"))?;
    let tlb = interrupt_row(&text, "TLB").ok_or("/proc/interrupts has no TLB row (per-CPU TLB shootdowns)")?;
    let cal = interrupt_row(&text, "CAL").ok_or("/proc/interrupts has no CAL row (function call interrupts)")?;
    Ok(Interrupts { tlb, cal })
}

/// TLB shootdowns per second on each CPU over `window` in which the caller
/// runs nothing: what other processes (and the kernel's own kernel-range
/// flushes) cause on this host.  Empty when there is no TLB row.
pub fn background_tlb_per_sec(window: std::time::Duration) -> Vec<f64> {
    let Ok(a) = interrupts() else { return Vec::new() };
    std::thread::sleep(window);
    let Ok(b) = interrupts() else { return Vec::new() };
    let secs = window.as_secs_f64().max(1e-3);
    a.tlb.iter().zip(&b.tlb).map(|(x, y)| y.saturating_sub(*x) as f64 / secs).collect()
}

/// The `nr_tlb_*` counters of /proc/vmstat (empty when the kernel keeps
/// none: they need CONFIG_DEBUG_TLBFLUSH).
pub fn vmstat_tlb() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| k.starts_with("nr_tlb_"))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// This thread's time on a CPU so far (ns): CLOCK_THREAD_CPUTIME_ID,
/// which the kernel brings up to date when asked (task_sched_runtime),
/// unlike /proc/thread-self/schedstat's figure, which lags by up to a tick.
pub fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// How long this thread has waited on a run queue so far (ns): runnable,
/// but another task had its CPU (/proc/thread-self/schedstat, second
/// field, `run_delay`; brought up to date each time the thread gets its
/// CPU back, so exact when the thread reads it itself).  None without
/// CONFIG_SCHED_INFO.
pub fn thread_run_delay_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// CLOCK_MONOTONIC in ns (the clock of `Instant`, shared by processes).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// getrusage: (involuntary, voluntary) context switches and (minor, major)
/// page faults of `who` (RUSAGE_THREAD, RUSAGE_CHILDREN).
pub fn rusage(who: libc::c_int) -> (u64, u64, u64, u64) {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable rusage; getrusage writes only it.
    let rc = unsafe { libc::getrusage(who, &mut r) };
    if rc != 0 {
        return (0, 0, 0, 0);
    }
    (r.ru_nivcsw as u64, r.ru_nvcsw as u64, r.ru_minflt as u64, r.ru_majflt as u64)
}

/// The host kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// HugeTLB pages the host has reserved (/proc/sys/vm/nr_hugepages).
pub fn nr_hugepages() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set in bounds (i < CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize).filter(|&i| unsafe { libc::CPU_ISSET(i, &set) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_per_cpu_column() {
        let t = "           CPU0       CPU1\n  0:         40          0  IR-IO-APIC    2-edge      timer\n\
                 CAL:     148864     138554   Function call interrupts\n\
                 TLB:      96980      93841   TLB shootdowns\n";
        assert_eq!(interrupt_row(t, "TLB"), Some(vec![96980, 93841]));
        assert_eq!(interrupt_row(t, "CAL"), Some(vec![148864, 138554]));
        assert_eq!(interrupt_row(t, "RES"), None);
    }
}
