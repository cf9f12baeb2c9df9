//! `mmemu host FILE` (docs/HOST.md): the host kernel's own behaviour that
//! the emulator models, the refusals (exact text), failed expectations,
//! faults, and that a run leaves no process or temporary file behind.
//!
//! Tests that need the host (Linux, a TLB row in /proc/interrupts, 2
//! CPUs) print why and return when it lacks them.  Host runs are
//! serialised (one lock): two at once would count each other's IPIs.

use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;
use workloads::host::refuse::HostFacts;
use workloads::host::{run_source, HostError, HostOptions};

static HOST: Mutex<()> = Mutex::new(());

const SPINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scripts/dontneed-sibling-spins.mmemu");
const SLEEPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scripts/dontneed-sibling-sleeps.mmemu");

/// Why this host cannot run the host tests, if it cannot.
fn lacks() -> Option<String> {
    let f = HostFacts::this_host();
    if !f.linux {
        return Some("not a Linux host".into());
    }
    if let Err(e) = f.rows {
        return Some(e);
    }
    if !(f.cpus.contains(&0) && f.cpus.contains(&1)) {
        return Some(format!("fewer than 2 CPUs usable (CPUs {:?})", f.cpus));
    }
    if f.arch != Some(mm_core::config::Arch::X86) {
        return Some("not an x86 host (the sibling scripts say arch x86)".into());
    }
    None
}

macro_rules! need_host {
    () => {
        if let Some(why) = lacks() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn mmemu(args: &[&str], tmp: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmemu")).args(args).env("TMPDIR", tmp).output().expect("run mmemu")
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mmemu-host-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn host_json(script: &str, iterations: u32, tmp: &std::path::Path) -> Value {
    let n = iterations.to_string();
    let o = mmemu(&["host", script, "--json", "--iterations", &n], tmp);
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {}", String::from_utf8_lossy(&o.stderr)))
}

fn tlb(v: &Value, cpu: usize) -> u64 {
    v["interrupts"]["TLB"][cpu].as_u64().unwrap()
}

/// With a same-mm thread spinning on CPU1, each MADV_DONTNEED of a touched
/// page on CPU0 interrupts CPU1 (x86 flush_tlb_mm_range: CPU1 has the mm
/// loaded and is not lazy).  Judged on a trusted run only: a sibling the
/// scheduler took off its CPU misses the IPIs.
#[test]
fn a_spinning_sibling_takes_a_tlb_interrupt_per_dontneed() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("spins");
    let mut shares = Vec::new();
    for _ in 0..20 {
        let v = host_json(SPINS, 200, &tmp);
        assert_eq!(v["mode"], "host");
        assert_eq!(v["iterations"], 200);
        // CPU1's row: trusted when the spinning sibling had CPU1 all along.
        if v["host"]["trusted_cpus"][1] != true {
            shares.push(v["host"]["min_share"].as_f64().unwrap_or(0.0));
            continue;
        }
        let per = tlb(&v, 1) as f64 / 200.0;
        assert!(per >= 0.8, "{per} TLB interrupts on CPU1 per MADV_DONTNEED; report: {v:#}");
        return;
    }
    eprintln!("skipped: the host was too loaded in 20 runs (lowest share of the run a thread had its CPU: {shares:?})");
}

/// With the sibling asleep CPU1 is idle, lazy: the flushes skip it.  Other
/// processes' flushes can only add interrupts, so the best of a few runs
/// is judged.
#[test]
fn a_sleeping_sibling_takes_almost_none() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("sleeps");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let v = host_json(SLEEPS, 200, &tmp);
        // Not the verdict: the script's own `<= 3` can fail on host noise.
        assert!(v["error"].is_null() || v["verdict"] == "expectation", "{v:#}");
        let per = tlb(&v, 1) as f64 / 200.0;
        seen.push(per);
        if per <= 0.1 {
            return;
        }
    }
    panic!("TLB interrupts on CPU1 per MADV_DONTNEED with the sibling asleep, per run: {seen:?}; expected <= 0.1");
}

/// The report has the emulator's keys; what the host cannot give is null
/// and says why; the expectations are listed one by one.
#[test]
fn the_report_has_the_emulators_shape_with_reasons_for_nulls() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("shape");
    let v = host_json(SLEEPS, 20, &tmp);
    let emu: Value = {
        let o = mmemu(&["run", SLEEPS, "--json", "--iterations", "5"], &tmp);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    for k in emu.as_object().unwrap().keys() {
        assert!(v.get(k).is_some(), "host report lacks the key {k}");
    }
    assert_eq!(v["schema"], emu["schema"]);
    assert!(v["violations"].is_null() && v["leaked_frames"].is_null());
    assert_eq!(v["not_observable"]["violations"], "not observable on a host: no sanitizer watches the real TLB");
    assert_eq!(
        v["interrupts"]["TLB"].as_array().unwrap().len(),
        v["host"]["interrupts_after"]["TLB"].as_array().unwrap().len()
    );
    let results: Vec<&str> =
        v["expectations"].as_array().unwrap().iter().map(|e| e["result"].as_str().unwrap()).collect();
    // One line each; the first (`<= 3` on CPU1) can fail on host noise.
    assert_eq!(results.len(), 4, "{v:#}");
    assert_eq!(&results[1..], ["held", "not-observable", "not-observable"], "{v:#}");
    assert!(["held", "failed"].contains(&results[0]), "{v:#}");
}

/// Every step the host runs, in one script (workloads/tests/host-steps.mmemu):
/// a `first` thread, a file mapped shared and private in two processes,
/// msync, a held thread started, spawn / join on the other CPU, fork with
/// `exit process` in the child, mprotect none then `read … expect segv`
/// (the probe), peek of an unmapped page, fadvise and truncate to a size.
/// Every read sees what it expects.
#[test]
fn every_step_the_host_runs_runs() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("steps");
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/host-steps.mmemu");
    let v = host_json(f, 10, &tmp);
    assert_eq!(v["verdict"], "ok", "{v:#}");
    assert_eq!(v["iterations"], 10);
    // setup: mmap, munmap; A: mmap, msync, then per round mmap, spawn,
    // fork (the fork and the child's exit), mprotect, munmap; B: mmap,
    // fadvise, truncate.
    assert_eq!(v["ops"], 2 + 2 + 10 * 6 + 3, "{v:#}");
    assert_eq!(v["expectations"][0]["result"], "held");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "temporary files left behind");
}

fn diff_json(script: &str, tmp: &std::path::Path) -> (Option<i32>, Value) {
    let o = mmemu(&["diff", script, "--json", "--iterations", "200"], tmp);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}); stderr: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), v)
}

fn row<'a>(v: &'a Value, name: &str, cpu: u64) -> &'a Value {
    v["rows"].as_array().unwrap().iter().find(|r| r["row"] == name && r["cpu"] == cpu).unwrap()
}

/// Background TLB shootdowns a host may take while a diff is judged.
const NOISY_TLB_PER_SEC: f64 = 10.0;

/// TLB shootdowns per second on the busiest CPU over 300 ms in which this
/// test runs nothing: what other processes cause.
fn background_tlb_per_sec() -> f64 {
    workloads::host::counters::background_tlb_per_sec(std::time::Duration::from_millis(300))
        .into_iter()
        .fold(0.0, f64::max)
}

/// Run `mmemu diff SCRIPT` up to 5 times and stop at the first run whose
/// rows on `cpus` are all inside (other processes' flushes only add
/// interrupts: 0.01-0.025 per iteration on a loaded 2-CPU host, near the
/// 0.02 bound, so the best of 5 is judged).  `Some(report)` of that run;
/// `None` (skipped, said on stderr) when every run had an untrusted row
/// there; a panic when a trusted run was never inside.
fn diff_inside_on(script: &str, tag: &str, cpus: &[u64], tmp: &std::path::Path) -> Option<Value> {
    let judged = |v: &Value| -> Vec<Value> {
        v["rows"].as_array().unwrap().iter().filter(|r| cpus.iter().any(|c| r["cpu"] == *c)).cloned().collect()
    };
    let mut seen = Vec::new();
    let mut noisy = Vec::new();
    for _ in 0..5 {
        // Other processes' shootdowns are not the script's: a host that
        // takes more than NOISY_TLB_PER_SEC of them on some CPU while
        // nothing of the test runs, just before or just after the diff,
        // cannot judge a 0.02-per-iteration row.
        let noise = background_tlb_per_sec();
        if noise > NOISY_TLB_PER_SEC {
            noisy.push(noise);
            continue;
        }
        let (code, v) = diff_json(script, tmp);
        let after = background_tlb_per_sec();
        if after > NOISY_TLB_PER_SEC {
            noisy.push(after);
            continue;
        }
        assert_eq!(v["schema"], "mmemu-diff/1");
        assert_eq!(v["profile"], workloads::host::diff::profile_for(v["host_kernel"].as_str().unwrap()).0.name());
        let rows = judged(&v);
        assert!(!rows.is_empty(), "no rows on CPUs {cpus:?}: {v:#}");
        if rows.iter().all(|r| r["status"] == "inside") {
            if v["verdict"] == "inside" {
                assert_eq!(code, Some(0));
            }
            return Some(v);
        }
        seen.push(v);
    }
    let untrusted = |v: &Value| judged(v).iter().any(|r| r["status"] == "untrusted");
    if seen.is_empty() {
        eprintln!(
            "skipped ({tag}): the host is noisy: {noisy:?} TLB shootdowns/s on its busiest CPU from other processes"
        );
        return None;
    }
    if seen.iter().all(untrusted) {
        eprintln!("skipped ({tag}): too few trusted host runs per CPU: {}", seen[0]["trusted_host_runs"]);
        return None;
    }
    let first = seen.iter().find(|v| !untrusted(v)).unwrap();
    panic!("the {tag} sibling's diff was never inside on CPUs {cpus:?} in 5 tries; the first trusted one: {first:#}");
}

/// `mmemu diff`: both sibling scripts' rows are inside the tolerance
/// (issue 15 item 4).  The sleeping sibling's are all near zero (every
/// row judged, as before).  The spinning sibling's CPU1 rows are about
/// two per round on both sides: the MADV_DONTNEED and the COW from the
/// shared zero page that the loop's `read … expect 0` mapped
/// (`wp_page_copy` → `ptep_clear_flush`; the emulator maps the zero page
/// since issue 15, docs/FIDELITY.md).  Its CPU0 rows are not judged: other
/// processes' shootdowns on a busy host land there too (CI saw CPU0
/// outside while the tests ran, 3d8b4b3).
#[test]
fn diff_of_the_sibling_scripts() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("diff");
    if let Some(v) = diff_inside_on(SLEEPS, "sleeps", &[0, 1], &tmp) {
        assert_eq!(v["verdict"], "inside", "{v:#}");
    }
    if let Some(v) = diff_inside_on(SPINS, "spins", &[1], &tmp) {
        for name in ["TLB", "CAL"] {
            let r = row(&v, name, 1);
            assert_eq!(r["status"], "inside", "{r:#}");
            assert!((r["emulator"].as_f64().unwrap() - 2.0).abs() < 1e-9, "{r:#}");
            let ratio = r["ratio"].as_f64().unwrap();
            assert!((0.95..=1.05).contains(&ratio), "host / emulator {name} on CPU1 {ratio}; {v:#}");
        }
    }
}

fn write_script(dir: &std::path::Path, name: &str, src: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, src).unwrap();
    p.display().to_string()
}

/// A failed expectation exits 1 and names its line.
#[test]
fn a_failed_expectation_exits_1_naming_its_line() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("expect");
    let f = write_script(
        &tmp,
        "never.mmemu",
        "script never\ncpus 1\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page\n  write R[0] = 3\n  read R[0] expect 3\n}\nexpect reads failed == 0\nexpect interrupts TLB on cpu 0 >= 1000000000\n",
    );
    let o = mmemu(&["host", &f], &tmp);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("{f}:10:1: expectation failed: interrupts TLB is ")), "{out}");
    assert!(out.contains("verdict: expectation"), "{out}");
}

/// A write that faults kills its process: the run ends (its partner in
/// another process, waiting at a barrier, gives up), naming the step, exit
/// 1, and nothing is left behind: no process, no temporary file.
#[test]
fn a_fault_ends_the_run_naming_the_step_and_leaves_nothing_behind() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("fault");
    let f = write_script(
        &tmp,
        "fault.mmemu",
        "script fault\ncpus 2\nfile F size 4 pages contents index\nprocess P\nprocess Q\n\
         thread A on cpu 0 in P {\n  mmap R file-shared F 4 pages prot ro\n  read R[2] expect 2\n  barrier mapped\n  write R[0] = 1\n  barrier done\n}\n\
         thread B on cpu 1 in Q {\n  barrier mapped\n  barrier done\n}\n",
    );
    let t0 = std::time::Instant::now();
    let o = mmemu(&["host", &f, "--json"], &tmp);
    assert!(t0.elapsed().as_secs() < 20, "the partner did not give up");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{v:#}");
    assert_eq!(v["verdict"], "panic");
    assert_eq!(v["error"], format!("{f}:10:3: thread A: the access faulted (SIGSEGV) on the host"));
    // No temporary file (the declared file was unlinked at once) ...
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("fault.mmemu")]);
    // ... and no process of the run: every one was reaped by its parent
    // before mmemu exited, so none is left with mmemu's binary.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_mmemu")).unwrap();
    let running: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe))
        .map(|e| e.file_name())
        .collect();
    assert!(running.is_empty(), "mmemu processes still running: {running:?}");
}

// ---- refusals: exact text, whatever the host (its facts are given) ----

fn facts() -> HostFacts {
    HostFacts { linux: true, cpus: vec![0, 1], rows: Ok(()), hugepages: 0, arch: Some(mm_core::config::Arch::X86) }
}

fn refused(src: &str, f: HostFacts) -> String {
    let o = HostOptions { file: "t.mmemu".into(), params: Vec::new(), budget: None, seed: 1, cpus: None };
    match run_source(&o, src, &f) {
        Err(HostError::Refused(m)) => m,
        Err(e) => panic!("not a refusal: {e:?}"),
        Ok(_) => panic!("ran"),
    }
}

const ONE: &str = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page\n  write R[0]\n}\n";

#[test]
fn refusals_name_the_line_and_why() {
    assert_eq!(
        refused(ONE, HostFacts { linux: false, ..facts() }),
        format!(
            "t.mmemu:1:8: found a {} host; allowed a Linux host (mmemu host runs the script on its kernel)",
            std::env::consts::OS
        )
    );
    assert_eq!(
        refused(ONE, HostFacts { rows: Err("/proc/interrupts has no TLB row (per-CPU TLB shootdowns)".into()), ..facts() }),
        "t.mmemu:1:8: found /proc/interrupts has no TLB row (per-CPU TLB shootdowns); allowed a host whose /proc/interrupts has per-CPU TLB and CAL rows (x86)"
    );
    assert_eq!(
        refused(&ONE.replace("cpus 2", "cpus 4"), facts()),
        "t.mmemu:2:6: found cpus 4 but this host lets mmemu run on CPUs {0,1} only (CPU2 missing); allowed cpus <= 2 on this host (script CPU n runs on host CPU n)"
    );
    assert_eq!(
        refused(&ONE.replace("cpus 2", "arch arm64\ncpus 2"), facts()),
        "t.mmemu:2:6: found arch arm64, but the host is x86; allowed arch x86 (the host runs its own arch)"
    );
    assert_eq!(
        refused(&ONE.replace("cpus 2", "cpus 2\nknob rcu-table-free off"), facts()),
        "t.mmemu:3:6: found knob rcu-table-free: the host kernel's configuration is fixed; allowed no knob line"
    );
    assert_eq!(
        refused(&ONE.replace("write R[0]", "gup-fast R[0]"), facts()),
        "t.mmemu:6:3: found gup-fast, which mmemu host does not run: user space cannot call the kernel's lockless GUP-fast walk directly; allowed by mmemu run (the emulator) only"
    );
    assert_eq!(
        refused(&ONE.replace("mmap R anon 1 page", "mmap R hugetlb 2M"), facts()),
        "t.mmemu:5:3: found hugetlb mmaps of 1 2 MiB pages but the host reserves 0 (/proc/sys/vm/nr_hugepages); allowed at most that many (echo N > /proc/sys/vm/nr_hugepages)"
    );
}

/// `--cpus N` replaces the header's CPUs; a thread placed past them is refused.
#[test]
fn cpus_override_refuses_a_thread_past_them() {
    let src = "script s\ncpus 4\nprocess P\nthread A on cpu 3 in P {\n  mmap R anon 1 page\n}\n";
    let o = HostOptions { file: "t.mmemu".into(), params: Vec::new(), budget: None, seed: 1, cpus: Some(2) };
    match run_source(&o, src, &facts()) {
        Err(HostError::Refused(m)) => {
            assert_eq!(m, "t.mmemu:4:1: found thread A on CPU 3 with 2 CPUs (--cpus); allowed CPUs 0..1")
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn stall_points_and_exit_process_are_refused() {
    let stall = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page\n  madvise R dontneed at pte-table-done {\n    barrier x\n  }\n}\nthread B on cpu 1 in P {\n  barrier x\n}\n";
    assert_eq!(
        refused(stall, facts()),
        "t.mmemu:6:25: found a madvise stalled at pte-table-done, which mmemu host does not run: a race stall point is a hook inside the kernel path (RaceHooks); the host kernel has none; allowed by mmemu run (the emulator) only"
    );
    let exit = ONE.replace("write R[0]", "exit process");
    assert_eq!(
        refused(&exit, facts()),
        "t.mmemu:6:3: found exit process in a thread's own body, which mmemu host does not run: it would end the process's other threads mid-step; allowed inside a fork or exec block"
    );
}

/// The CLI: a refusal is exit 2 with the one line on stderr.
#[test]
fn the_cli_refuses_with_exit_2_and_one_line() {
    let tmp = tmpdir("cli");
    let f = write_script(&tmp, "g.mmemu", &ONE.replace("1 page", "2M").replace("write R[0]", "collapse R"));
    let o = mmemu(&["host", &f], &tmp);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    if lacks().is_some() {
        // The host's own refusal comes first (not Linux, no TLB row).
        assert_eq!(err.lines().count(), 1, "{err}");
        return;
    }
    assert_eq!(
        err,
        format!("error: {f}:6:3: found collapse, which mmemu host does not run: khugepaged's collapse_huge_page cannot be called on a chosen range; allowed by mmemu run (the emulator) only\n")
    );
    assert!(o.stdout.is_empty());
}

/// Bad usage of `host` and `diff` is one line and exit 2.
#[test]
fn host_and_diff_usage_errors_are_one_line() {
    let tmp = tmpdir("usage");
    for (args, want) in [
        (&["host"][..], "error: mmemu host needs <FILE>; allowed: a script file (.mmemu, docs/SCRIPTS.md)\n"),
        (
            &["host", "x.mmemu", "--iterations", "5", "--seconds", "1"][..],
            "error: --iterations cannot be used with --seconds; allowed: one of them\n",
        ),
        (&["diff", "x.mmemu", "--runs", "0"][..], "error: --runs: '0' is out of range; allowed 1..=100\n"),
        (
            &["diff", "x.mmemu", "--tolerance", "-1"][..],
            "error: --tolerance: '-1' is not a decimal in 0..=1000; allowed 0..=1000\n",
        ),
    ] {
        let o = mmemu(args, &tmp);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), want, "{args:?}");
    }
}

/// SIGINT to mmemu alone (not its process group) still ends the run at
/// the children's next step: the parent forwards it through the arena.
/// The report says so, the exit status is 130, nothing is left behind.
#[test]
fn sigint_to_mmemu_alone_ends_the_run() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("sigint");
    let f = write_script(
        &tmp,
        "loop.mmemu",
        "script loop\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page\n  repeat until budget {\n    write R[0] = 1\n    madvise R[0] dontneed\n  }\n}\nthread B on cpu 1 in P {\n  sleep\n}\n",
    );
    let t0 = std::time::Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_mmemu"))
        .args(["host", &f, "--json", "--seconds", "60"])
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SAFETY: SIGINT to the mmemu process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed().as_secs() < 20, "the run did not stop");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["interrupted"], true, "{v:#}");
    assert_eq!(o.status.code(), Some(130), "{v:#}");
}

/// `exec C { … }`: a fresh mm, the block run by mmemu re-executed as a
/// helper; its ops count with its thread's, its reads are checked, and
/// no helper is left behind.
#[test]
fn exec_runs_the_block_in_a_fresh_process() {
    need_host!();
    let _g = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tmpdir("exec");
    let f = write_script(
        &tmp,
        "exec.mmemu",
        "script ex\ncpus 2\nbudget 5 rounds\nfile F size 2 pages contents fill 9\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page at 0x40000000\n  write R[0] = 1\n  repeat until budget {\n    exec C {\n      mmap R anon 1 page at 0x40000000\n      read R[0] expect 0\n      mmap M file-shared F 2 pages\n      read M[1] expect 9\n      spawn S on cpu 1 {\n        read R[0] expect 0\n      }\n      join S\n      exit process\n    }\n    read R[0] expect 1\n  }\n}\nexpect reads failed == 0\n",
    );
    let o = mmemu(&["host", &f, "--json"], &tmp);
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(v["verdict"], "ok", "{v:#}");
    // mmap, then per round: exec (2), mmap, mmap, spawn.
    assert_eq!(v["ops"], 1 + 5 * 5, "{v:#}");
    assert_eq!(v["expectations"][0]["result"], "held");
}
