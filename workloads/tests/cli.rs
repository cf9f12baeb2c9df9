//! The `mmemu` binary end to end: every subcommand, the JSON report schema,
//! the Perfetto trace file, and every bad-input case (exit 2, one clear
//! line, no panic trace).  Runs are kept tiny (debug build, 2-core host).

use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn mmemu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmemu")).args(args).output().expect("run mmemu")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn ok(args: &[&str]) -> String {
    let o = mmemu(args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "mmemu {args:?}\nstdout:\n{out}\nstderr:\n{err}");
    out
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap_or_else(|e| panic!("mmemu {args:?}: not JSON: {e}"))
}

fn no_panic_spew(err: &str) {
    assert!(!err.contains("panicked at") && !err.contains("RUST_BACKTRACE"), "panic trace on stderr:\n{err}");
}

fn scenario_names() -> Vec<String> {
    let v = json(&["list", "--json"]);
    v["scenarios"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn list_shows_scenarios_and_switches() {
    let out = ok(&["list"]);
    for name in ["munmap-storm", "mprotect-pingpong", "madvise-dontneed", "exit-storm", "lazy-tlb"] {
        assert!(out.contains(name), "{name} missing from list:\n{out}");
    }
    for fix in mm_core::Fix::ALL {
        assert!(out.contains(fix.name()), "switch {} missing from list", fix.name());
        assert!(out.contains(fix.commit()));
    }
    let v = json(&["list", "--json"]);
    for s in v["scenarios"].as_array().unwrap() {
        for key in ["name", "about", "arch", "arch_required", "min_cpus", "default_iterations", "exposes", "params"] {
            assert!(s.get(key).is_some(), "list --json scenario lacks {key}: {s}");
        }
    }
    assert_eq!(v["switches"].as_array().unwrap().len(), mm_core::Fix::ALL.len());
    for sw in v["switches"].as_array().unwrap() {
        let keys: Vec<&str> = sw.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["arch", "commit", "name", "off_means", "scenario"], "list --json switch: {sw}");
    }
}

#[test]
fn run_human_summary() {
    let out = ok(&["run", "munmap-storm", "--cpus", "2", "--iterations", "2", "--no-pin"]);
    for needle in [
        "mmemu run munmap-storm: 2 CPUs, arch x86",
        "CPU0",
        "CPU1",
        "CAL:",
        "TLB:",
        "nr_tlb_remote_flush",
        "nr_tlb_remote_flush_received",
        "nr_tlb_local_flush_all",
        "nr_tlb_local_flush_one",
        "tlb_remove_table_sync_one",
        "gather:",
        "pages freed",
        "tables freed",
        "violations: 0",
        "leaked frames: 0",
        "ops/s",
        "verdict: ok",
    ] {
        assert!(out.contains(needle), "summary lacks {needle:?}:\n{out}");
    }
}

#[test]
fn run_json_schema() {
    let v =
        json(&["run", "munmap-storm", "--cpus", "3", "--iterations", "2", "--seed", "7", "--json", "--wait", "park"]);
    assert_eq!(v["schema"], "mmemu-report/2");
    assert_eq!(v["scenario"], "munmap-storm");
    assert_eq!(v["cpus"], 3);
    assert_eq!(v["seed"], 7);
    assert_eq!(v["wait"], "park");
    assert_eq!(v["budget"]["iterations"], 2);
    assert!(v["budget"]["seconds"].is_null());
    assert_eq!(v["arch"], "x86");
    assert!(v["reverted"].as_array().unwrap().is_empty());
    assert!(v["params"]["pages"].is_u64());
    for key in ["iterations", "ops", "sync_one_broadcasts"] {
        assert!(v[key].is_u64(), "{key}: {}", v[key]);
    }
    assert!(v["elapsed_s"].is_f64() && v["ops_per_sec"].is_f64());
    for row in ["CAL", "TLB", "sent"] {
        assert_eq!(v["interrupts"][row].as_array().unwrap().len(), 3, "{row}");
    }
    for name in
        ["nr_tlb_remote_flush", "nr_tlb_remote_flush_received", "nr_tlb_local_flush_all", "nr_tlb_local_flush_one"]
    {
        assert!(v["vmstat"][name].is_u64(), "vmstat.{name}");
        assert_eq!(v["per_cpu"][name].as_array().unwrap().len(), 3, "per_cpu.{name}");
    }
    assert!(v["vmstat"]["nr_tlb_remote_flush"].as_u64().unwrap() > 0, "threads on 3 CPUs must shoot each other down");
    for key in ["flushes", "batches", "batch_alloc_failures", "pages_freed", "tables_queued", "tables_freed"] {
        assert!(v["gather"][key].is_u64(), "gather.{key}");
    }
    assert!(v["tlb_flush_reasons"]["TLB_REMOTE_SHOOTDOWN"].is_u64());
    assert!(v["counters"]["pgfault"].as_u64().unwrap() > 0);
    assert_eq!(v["violations"]["count"], 0);
    assert!(v["violations"]["by_kind"].is_object());
    assert!(v["violations"]["records"].is_array());
    for key in ["first_violation_at", "first_violation_s"] {
        let o = v["violations"].as_object().unwrap();
        assert!(o.contains_key(key) && o[key].is_null(), "violations.{key} on a clean run: {}", v["violations"]);
    }
    assert_eq!(v["leaked_frames"]["total"], 0);
    assert!(v["leak_not_checked"].is_null());
    assert!(v["error"].is_null());
    assert_eq!(v["verdict"], "ok");
    assert!(v["trace"].is_null());
}

#[test]
fn arm64_reports_its_own_counters_and_none_of_x86s() {
    let v = json(&["run", "munmap-storm", "--arch", "arm64", "--cpus", "2", "--iterations", "2", "--json"]);
    assert_eq!(v["arch"], "arm64");
    // No vmstat NR_TLB_*, no TLB row, no tlb_flush trace on arm64: absent, not 0.
    assert_eq!(v["vmstat"], serde_json::json!({}));
    assert_eq!(v["per_cpu"], serde_json::json!({}));
    assert_eq!(v["tlb_flush_reasons"], serde_json::json!({}));
    assert!(v["interrupts"].get("TLB").is_none(), "{}", v["interrupts"]);
    assert!(v["counters"].get("nr_tlb_remote_flush").is_none());
    assert!(v["counters"].get("irq_tlb_count").is_none());
    assert!(v["counters"]["pgfault"].as_u64().unwrap() > 0);
    assert!(v["arch_counters"]["arm64_tlbi_broadcast"].as_u64().unwrap() > 0);
    for name in ["arm64_tlbi_vale1is", "arm64_tlbi_rvae1is", "arm64_tlbi_aside1is", "arm64_asid_rollover"] {
        assert!(v["arch_counters"][name].is_u64(), "arch_counters.{name}");
        assert_eq!(v["arch_per_cpu"][name].as_array().unwrap().len(), 2, "arch_per_cpu.{name}");
    }
    let human = ok(&["run", "munmap-storm", "--arch", "arm64", "--cpus", "2", "--iterations", "1"]);
    assert!(human.contains("arm64 counters:") && human.contains("arm64_tlbi_broadcast"), "{human}");
    assert!(!human.contains("nr_tlb_") && !human.contains("TLB:") && !human.contains("tlb_flush:"), "{human}");
}

#[test]
fn every_native_scenario_runs_clean() {
    for s in ["munmap-storm", "mprotect-pingpong", "madvise-dontneed", "exit-storm"] {
        let v = json(&["run", s, "--cpus", "2", "--iterations", "1", "--json", "--param", "pages=16"]);
        assert_eq!(v["verdict"], "ok", "{s}: {v}");
        assert!(v["ops"].as_u64().unwrap() > 0, "{s}");
    }
}

/// Every scenario of the registry (race adapters included) runs clean with
/// every fix on, at its own arch and smallest CPU count.
#[test]
fn every_scenario_runs_clean_with_fixes_on() {
    let list = json(&["list", "--json"]);
    for s in list["scenarios"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let cpus = s["min_cpus"].as_u64().unwrap().max(2).to_string();
        let rounds = "2";
        let v = json(&["run", name, "--cpus", &cpus, "--iterations", rounds, "--json", "--no-pin"]);
        assert_eq!(v["verdict"], "ok", "{name}: {v}");
        assert_eq!(v["arch"], s["arch"], "{name}");
        assert!(v["leak_not_checked"].is_null(), "{name}: {v}");
        assert_eq!(v["leaked_frames"]["total"], 0, "{name}");
    }
}

#[test]
fn run_for_seconds_with_params_and_reverts() {
    let v = json(&[
        "run",
        "madvise-dontneed",
        "--seconds",
        "0.3",
        "--cpus",
        "2",
        "--param",
        "pages=8",
        "--param",
        "batch=2",
        "--revert",
        "folio-pages-batching",
        "--arch",
        "generic",
        "--json",
    ]);
    assert_eq!(v["budget"]["seconds"], 0.3);
    assert_eq!(v["params"]["batch"], 2);
    assert_eq!(v["arch"], "generic");
    assert_eq!(v["reverted"][0], "folio-pages-batching");
    assert_eq!(v["verdict"], "ok");
}

#[test]
fn trace_file_is_chrome_json_with_events_per_cpu() {
    let dir = std::env::temp_dir().join(format!("mmemu-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.json");
    let v =
        json(&["run", "munmap-storm", "--cpus", "3", "--iterations", "2", "--json", "--trace", path.to_str().unwrap()]);
    assert_eq!(v["trace"]["file"], path.to_str().unwrap());
    let t: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("trace is valid JSON");
    let evs = t["traceEvents"].as_array().expect("traceEvents");
    assert!(v["trace"]["events"].as_u64().unwrap() > 0);
    for cpu in 0..3u64 {
        let named = evs.iter().any(|e| {
            e["ph"] == "M" && e["name"] == "thread_name" && e["tid"] == cpu && e["args"]["name"] == format!("CPU{cpu}")
        });
        assert!(named, "no thread_name for CPU{cpu}");
        let n = evs.iter().filter(|e| e["ph"] != "M" && e["tid"] == cpu && e["pid"] == 1).count();
        assert!(n > 0, "no events on CPU{cpu}");
    }
    let has = |ph: &str, name: &str| evs.iter().any(|e| e["ph"] == ph && e["name"] == name);
    assert!(has("X", "munmap") && has("X", "mmap"), "syscall slices");
    assert!(has("X", "IPI: call_function") && has("X", "smp_call_function_many"), "IPI slices");
    assert!(has("X", "irqs_off"), "IRQs-off slices");
    assert!(
        evs.iter().any(|e| e["ph"] == "i" && e["name"] == "tlb_flush" && e["args"]["reason"].is_string()),
        "tlb_flush instants with a reason"
    );
    for e in evs.iter().filter(|e| e["ph"] == "X") {
        assert!(e["ts"].is_number() && e["dur"].as_f64().unwrap() >= 0.0, "{e}");
    }
    // Every flow that ends started somewhere.
    let starts: std::collections::HashSet<_> =
        evs.iter().filter(|e| e["ph"] == "s").map(|e| e["id"].as_u64().unwrap()).collect();
    let ends: Vec<_> = evs.iter().filter(|e| e["ph"] == "f").map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(!ends.is_empty(), "IPI flows");
    assert!(ends.iter().all(|id| starts.contains(id)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An unwritable --trace is refused before the run (exit 2, one line),
/// not found after it with the report thrown away.
#[test]
fn unwritable_trace_is_refused_before_the_run() {
    let dir = std::env::temp_dir().join(format!("mmemu-trace-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let missing = format!("{d}/no/such/dir/t.json");
    // A long budget: if the run started, the test would take minutes.
    let run =
        |trace: &str| ["run", "munmap-storm", "--cpus", "2", "--seconds", "600", "--trace", trace].map(String::from);
    let cases: Vec<([String; 8], String)> = vec![
        (run(&missing), format!("--trace '{missing}': cannot create the file: No such file or directory (os error 2); allowed: a file path in a writable directory")),
        (run(d), format!("--trace '{d}': cannot create the file: Is a directory (os error 21); allowed: a file path in a writable directory")),
        (run(""), "missing value for --trace; allowed: a file path in a writable directory".into()),
    ];
    for (args, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t0 = std::time::Instant::now();
        let o = mmemu(&args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "mmemu {args:?}: {err}");
        assert_eq!(out, "");
        assert_eq!(err, format!("error: {want}\n"), "mmemu {args:?}");
        assert!(t0.elapsed().as_secs() < 60, "the run must not start");
    }
    // A run that is refused for another reason leaves no empty trace file.
    let path = dir.join("refused.json");
    let o = mmemu(&["run", "hugetlb-unshare-gup", "--cpus", "2", "--trace", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!path.exists(), "refused run created {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every switch: `reproduce` runs its scenario with the fix off and on.
/// The fix-on run must be clean; a fix-off run that found the bug must be
/// reported as reproduced (exit 0).  The races whose first violation comes
/// at round 1 must reproduce here; the timing-dependent ones (tens of
/// rounds, slow in a debug build on a loaded 2-core host) may miss within
/// this short budget — their drivers' own tests bound them
/// (tests/races_*.rs) and the release-build numbers are in the README.
#[test]
fn reproduce_every_switch() {
    const ALWAYS_ROUND_1: [&str; 3] = ["hugetlb-unshare-sync", "secondary-tlb-on-flush", "lazy-tlb-freed-tables"];
    let list = json(&["list", "--json"]);
    for sw in list["switches"].as_array().unwrap() {
        let name = sw["name"].as_str().unwrap();
        let secs = if name == "khugepaged-gup-fast-ipi" { "3" } else { "1" };
        let o = mmemu(&["reproduce", name, "--json", "--no-pin", "--seconds", secs, "--cpus", "3"]);
        let (out, err) = text(&o);
        no_panic_spew(&err);
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("reproduce {name}: not JSON ({e}): {out}\n{err}"));
        assert_eq!(v["switch"], name);
        assert!(v["fix_off"]["reverted"].as_array().unwrap().iter().any(|r| r == name));
        assert!(v["fix_on"]["reverted"].as_array().unwrap().is_empty());
        assert_eq!(v["fix_on"]["verdict"], "ok", "reproduce {name}: fix on must be clean: {v}");
        assert_eq!(o.status.code(), Some(if v["reproduced"] == true { 0 } else { 1 }), "reproduce {name}");
        // The clean run has neither a first violating round nor a time to it.
        for key in ["first_violation_at", "first_violation_s"] {
            let o = v["fix_on"]["violations"].as_object().unwrap();
            assert!(o.contains_key(key) && o[key].is_null(), "reproduce {name}: fix_on violations.{key}: {v}");
        }
        if v["correctness"] == true {
            let found = v["fix_off"]["violations"]["count"].as_u64().unwrap() > 0;
            assert_eq!(v["reproduced"], found, "reproduce {name}: {v}");
            if found {
                // The rounds' time until the end of the first violating round.
                let first = &v["fix_off"]["violations"]["first_violation_s"];
                assert!(first.as_f64().is_some_and(|t| t > 0.0), "reproduce {name}: first_violation_s {first}: {v}");
            }
            if !found {
                assert!(!ALWAYS_ROUND_1.contains(&name), "reproduce {name}: no violation with the fix off");
                eprintln!("reproduce {name}: not found within {secs} s in this debug run");
            }
        } else {
            assert_eq!(v["reproduced"], true, "reproduce {name}: {v}");
        }
        if name == "hugetlb-unshare-batched" {
            // 8ce720d5bd91: N broadcasts per exiting child (one per shared
            // table) before; 1 for the last sharer and 0 for the others after.
            let (off, on) = (&v["fix_off"]["metrics"], &v["fix_on"]["metrics"]);
            let n = off["shared_tables_per_child"].as_f64().unwrap();
            assert!(n > 1.0);
            assert_eq!(off["syncs_per_last_sharer_exit"].as_f64(), Some(n), "{off}");
            assert_eq!(off["syncs_per_other_exit"].as_f64(), Some(n), "{off}");
            assert_eq!(on["syncs_per_last_sharer_exit"].as_f64(), Some(1.0), "{on}");
            assert_eq!(on["syncs_per_other_exit"].as_f64(), Some(0.0), "{on}");
        }
    }
}

/// The time to the first violation, in the human output of `run` and
/// `reproduce` (pfnmap-unmap's window is forced: round 1 every time).
#[test]
fn the_time_to_the_first_violation_is_shown() {
    let o = mmemu(&["run", "pfnmap-unmap", "--revert", "no-range-vma-pfn", "--cpus", "2", "--no-pin"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains(", first in round 1 after ") && out.contains(" ms of rounds"), "{out}");
    let out = ok(&["reproduce", "no-range-vma-pfn", "--cpus", "2", "--no-pin"]);
    let row = out.lines().find(|l| l.contains("first violation after (ms)")).unwrap_or_else(|| panic!("{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.last(), Some(&"-"), "fix on: no violation, no time: {row}");
    let off: f64 = cells[cells.len() - 2].parse().unwrap_or_else(|e| panic!("{row}: {e}"));
    assert!(off >= 0.0, "{row}");
}

#[test]
fn stress_short() {
    let o = mmemu(&["stress", "--seconds", "3", "--cpus", "2", "--slice", "0.3", "--no-pin"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("verdict: ok"), "{out}");
    for s in scenario_names() {
        assert!(out.contains(&s), "stress table lacks {s}:\n{out}");
    }
}

/// `stress --cpus 1` runs only what fits on 1 CPU; the others are rows
/// with 0 runs and a note (they used to be raised to their minimum).
#[test]
fn stress_skips_scenarios_that_need_more_cpus() {
    let o = mmemu(&["stress", "--seconds", "1.5", "--cpus", "1", "--slice", "0.2", "--no-pin"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("mmemu stress: 1 CPUs,"), "{out}");
    assert!(out.lines().nth(1).unwrap().ends_with("failures  note"), "{out}");
    let list = json(&["list", "--json"]);
    let mut skipped = 0;
    for s in list["scenarios"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let min = s["min_cpus"].as_u64().unwrap();
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        if min > 1 {
            skipped += 1;
            assert_eq!(
                cols[1..],
                ["0", "0", "0", "0", "0", "0", "skipped:", "needs", &format!("{min}+"), "CPUs"],
                "{row}"
            );
        } else {
            assert_eq!(cols.len(), 7, "{name} fits on 1 CPU: no note: {row}");
        }
    }
    assert!(skipped > 0, "some scenario needs 2+ CPUs");
    assert!(out.contains("verdict: ok"), "{out}");
}

#[test]
fn panic_on_an_emulated_cpu_names_it_and_exits_1() {
    let o = mmemu(&["run", "munmap-storm", "--cpus", "2", "--iterations", "2", "--inject-panic", "1"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("error: CPU1: task panicked: injected panic"), "{out}");
    assert!(out.contains("verdict: panic"), "{out}");
    no_panic_spew(&err);
}

/// Exit 2 is bad usage only (a configuration refused before boot is bad
/// usage); whatever goes wrong once a run started exits 1, after its
/// report: a violation, a panic on an emulated CPU in a race driver's round.
#[test]
fn exit_2_is_bad_usage_only_and_a_run_that_fails_is_1() {
    for args in [
        &["run", "hugetlb-unshare-gup", "--cpus", "2", "--no-pin"][..],
        &["reproduce", "hugetlb-unshare-sync", "--cpus", "2", "--no-pin"],
        &["run", "khugepaged-gup", "--arch", "x86", "--no-pin"],
    ] {
        let o = mmemu(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "mmemu {args:?}: refused before boot: {err}");
        assert_eq!(out, "", "mmemu {args:?}");
        assert_eq!(err.lines().count(), 1, "mmemu {args:?}: {err}");
    }
    // A race driver's round fails (its first task panics on CPU1): the run
    // ends with its report, verdict panic, exit 1.
    let args = [
        "run",
        "nested-zap",
        "--cpus",
        "2",
        "--iterations",
        "5",
        "--no-pin",
        "--json",
        "--inject-panic",
        "1",
        "--inject-panic-after",
        "2",
    ];
    let o = mmemu(&args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "a failing race round exits 1: {out}\n{err}");
    no_panic_spew(&err);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    assert_eq!(v["verdict"], "panic", "{v}");
    assert_eq!(v["error"], "CPU1: task panicked: injected panic in race round 3 (--inject-panic 1)", "{v}");
    // A violation (found in round 1 every time): exit 1.
    let o = mmemu(&["run", "iommu-sva", "--revert", "secondary-tlb-on-flush", "--cpus", "2", "--iterations", "3"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("verdict: violations"), "{out}");
}

const RUN_OPTIONS: &str = "--cpus, --arch, --revert, --seconds, --iterations, --wait, --no-pin, --seed, --hang-timeout, --no-debug-vm, --kernel, --param, --json, --trace, --help";
const SUBCOMMANDS: &str = "list, run, reproduce, stress, check, host, diff, help";

/// Every bad input: exit 2, nothing on stdout, and exactly one line on
/// stderr: `error: ` + the expected text, where `{scenarios}`,
/// `{switches}`, `{run-options}` and `{params:SCENARIO}` stand for the
/// lists the binary has.
fn assert_usage_errors(cases: &[(&[&str], &str)]) {
    let list = json(&["list", "--json"]);
    let scenarios = list["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let switches: Vec<&str> = mm_core::Fix::ALL.iter().map(|f| f.name()).collect();
    for (args, want) in cases {
        let mut want = want
            .replace("{scenarios}", &names.join(", "))
            .replace("{switches}", &switches.join(", "))
            .replace("{run-options}", RUN_OPTIONS);
        for s in scenarios {
            let keys: Vec<&str> = s["params"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
            want = want.replace(&format!("{{params:{}}}", s["name"].as_str().unwrap()), &keys.join(", "));
        }
        let want = format!("error: {want}\n");
        let o = mmemu(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "mmemu {args:?}: stdout {out} stderr {err}");
        assert_eq!(out, "", "mmemu {args:?}: nothing on stdout");
        assert_eq!(err, want, "mmemu {args:?}");
    }
}

/// clap's errors, one line each (clap prints 3-7: usage, tips, help hint).
#[test]
fn parse_errors_are_one_line() {
    let sub = format!("allowed: {SUBCOMMANDS}");
    let cases: Vec<(&[&str], String)> = vec![
        (&[], format!("missing subcommand; {sub} (see 'mmemu --help')")),
        (&["frobnicate"], format!("unknown subcommand 'frobnicate'; {sub}")),
        (&["help", "frobnicate"], format!("unknown subcommand 'frobnicate'; {sub}")),
        (&["--foo"], format!("unknown option '--foo'; allowed: a subcommand ({SUBCOMMANDS}), --help, --version")),
        (&["run", "munmap-storm", "--frob"], "unknown option '--frob' for mmemu run; allowed: {run-options}".into()),
        (&["run", "munmap-storm", "--iteration", "3"], "unknown option '--iteration' for mmemu run (did you mean '--iterations'?); allowed: {run-options}".into()),
        (&["run", "munmap-storm", "--iteration=3"], "unknown option '--iteration' for mmemu run (did you mean '--iterations'?); allowed: {run-options}".into()),
        (&["run", "munmap-storm", "--no_pin"], "unknown option '--no_pin' for mmemu run (did you mean '--no-pin'?); allowed: {run-options}".into()),
        (&["stress", "--revert", "delay-rmap"], "unknown option '--revert' for mmemu stress; allowed: --cpus, --seconds, --slice, --wait, --no-pin, --seed, --hang-timeout, --no-debug-vm, --kernel, --help".into()),
        (&["run", "munmap-storm", "--cpus"], "missing value for --cpus; allowed: 1..=256".into()),
        (&["run", "munmap-storm", "--wait"], "missing value for --wait; allowed: spin, park, adaptive".into()),
        (&["stress", "--slice"], "missing value for --slice; allowed: 0 < S <= 86400".into()),
        (&["run"], "mmemu run needs <SCENARIO>; allowed: {scenarios}".into()),
        (&["reproduce"], "mmemu reproduce needs <SWITCH>; allowed: {switches}".into()),
        (&["run", "munmap-storm", "--seconds", "1", "--iterations", "2"], "--seconds cannot be used with --iterations; allowed: one of them".into()),
        (&["reproduce", "delay-rmap", "--iterations", "2", "--seconds", "1"], "--iterations cannot be used with --seconds; allowed: one of them".into()),
        (&["run", "munmap-storm", "--cpus", "2", "--cpus", "3"], "--cpus given more than once; allowed once".into()),
        (&["run", "munmap-storm", "extra"], "unexpected argument 'extra'; mmemu run takes one <SCENARIO> and the options {run-options}".into()),
        (&["list", "extra"], "unexpected argument 'extra'; mmemu list takes no positional arguments, only the options --json, --help".into()),
        (&["run", "munmap-storm", "--json=1"], "--json takes no value, got '1'; allowed: --json alone".into()),
        (&["run", "munmap-storm", "--json", "--json"], "--json given more than once; allowed once".into()),
        (&["run", "munmap-storm", "--", "--cpus"], "unexpected argument '--cpus'; mmemu run takes one <SCENARIO> and the options {run-options}".into()),
        (&["run", "munmap-storm", "-c", "3"], "unknown option '-c' for mmemu run (did you mean '--cpus'?); allowed: {run-options}".into()),
        (&["run", "munmap-storm", "-cpus", "3"], "unknown option '-c' for mmemu run (did you mean '--cpus'?); allowed: {run-options}".into()),
        (&["run", "munmap-storm", "--param"], "missing value for --param; allowed: KEY=VALUE (keys and ranges: mmemu list)".into()),
        (&["run", "munmap-storm", "--trace"], "missing value for --trace; allowed: a file path in a writable directory".into()),
        (&["run", "munmap-storm", "--inject-panic"], "missing value for --inject-panic; allowed: 0..=255".into()),
        (&["run", ""], "empty scenario name; allowed: {scenarios}".into()),
        (&["reproduce", ""], "empty switch name; allowed: {switches}".into()),
        (&["run", "munmap-storm", "--arch="], "--arch: empty arch name; allowed: x86, arm64, generic".into()),
        (&["run", "munmap-storm", "--wait="], "--wait: empty wait policy name; allowed: spin, park, adaptive".into()),
        (&["run", "munmap-storm", "--revert="], "--revert: empty switch name; allowed: {switches}".into()),
        (&["run", "nope"], "unknown scenario 'nope'; allowed: {scenarios}".into()),
        (&["reproduce", "nope"], "unknown switch 'nope'; allowed: {switches}".into()),
        (&["run", "munmap-storm", "--revert", "nope"], "--revert: unknown switch 'nope'; allowed: {switches}".into()),
        (&["run", "munmap-storm", "--arch", "sparc"], "--arch: unknown arch 'sparc'; allowed: x86, arm64, generic".into()),
        (&["run", "munmap-storm", "--wait", "sleepy"], "--wait: unknown wait policy 'sleepy'; allowed: spin, park, adaptive".into()),
    ];
    let cases: Vec<(&[&str], &str)> = cases.iter().map(|(a, w)| (*a, w.as_str())).collect();
    assert_usage_errors(&cases);
}

/// Near misses get a suggestion on the same line (underscores, case,
/// prefixes, typos); the near miss itself is still refused.
#[test]
fn near_misses_suggest_the_name() {
    let sub = format!("allowed: {SUBCOMMANDS}");
    let cases: Vec<(&[&str], String)> = vec![
        (&["run", "munmap-strom"], "unknown scenario 'munmap-strom' (did you mean 'munmap-storm'?); allowed: {scenarios}".into()),
        (&["run", "munmap_storm"], "unknown scenario 'munmap_storm' (did you mean 'munmap-storm'?); allowed: {scenarios}".into()),
        (&["run", "Munmap-Storm"], "unknown scenario 'Munmap-Storm' (did you mean 'munmap-storm'?); allowed: {scenarios}".into()),
        (&["run", "munmap"], "unknown scenario 'munmap' (did you mean 'munmap-storm'?); allowed: {scenarios}".into()),
        (&["run", "munmap-storms"], "unknown scenario 'munmap-storms' (did you mean 'munmap-storm'?); allowed: {scenarios}".into()),
        (&["run", "iommu"], "unknown scenario 'iommu' (did you mean 'iommu-sva' or 'iommu-sva-dma'?); allowed: {scenarios}".into()),
        (&["run", "zzz"], "unknown scenario 'zzz'; allowed: {scenarios}".into()),
        (&["run", "munmap-storm", "--revert", "delay_rmap"], "--revert: unknown switch 'delay_rmap' (did you mean 'delay-rmap'?); allowed: {switches}".into()),
        (&["run", "munmap-storm", "--revert", "delay-rmpa"], "--revert: unknown switch 'delay-rmpa' (did you mean 'delay-rmap'?); allowed: {switches}".into()),
        (&["reproduce", "delay_rmap"], "unknown switch 'delay_rmap' (did you mean 'delay-rmap'?); allowed: {switches}".into()),
        (&["reproduce", "hugetlb-unshare"], "unknown switch 'hugetlb-unshare' (did you mean 'hugetlb-unshare-sync' or 'hugetlb-unshare-batched'?); allowed: {switches}".into()),
        (&["run", "munmap-storm", "--arch", "x68"], "--arch: unknown arch 'x68' (did you mean 'x86'?); allowed: x86, arm64, generic".into()),
        (&["run", "munmap-storm", "--arch", "arm"], "--arch: unknown arch 'arm' (did you mean 'arm64'?); allowed: x86, arm64, generic".into()),
        (&["run", "munmap-storm", "--arch", "X86"], "--arch: unknown arch 'X86' (did you mean 'x86'?); allowed: x86, arm64, generic".into()),
        (&["run", "munmap-storm", "--wait", "spn"], "--wait: unknown wait policy 'spn' (did you mean 'spin'?); allowed: spin, park, adaptive".into()),
        (&["run", "munmap-storm", "--wait", "adaptiv"], "--wait: unknown wait policy 'adaptiv' (did you mean 'adaptive'?); allowed: spin, park, adaptive".into()),
        (&["run", "munmap-storm", "--param", "page=8"], "scenario munmap-storm has no parameter 'page' (did you mean 'pages'?); allowed: {params:munmap-storm}".into()),
        (&["run", "munmap-storm", "--param", "PAGES=8"], "scenario munmap-storm has no parameter 'PAGES' (did you mean 'pages'?); allowed: {params:munmap-storm}".into()),
        (&["run", "munmap-storm", "--seeds", "3"], "unknown option '--seeds' for mmemu run (did you mean '--seed'?); allowed: {run-options}".into()),
        (&["run", "munmap-storm", "--Cpus", "3"], "unknown option '--Cpus' for mmemu run (did you mean '--cpus'?); allowed: {run-options}".into()),
        (&["lst"], format!("unknown subcommand 'lst' (did you mean 'host' or 'list'?); {sub}")),
        (&["Run", "munmap-storm"], format!("unknown subcommand 'Run' (did you mean 'run'?); {sub}")),
        (&["repro", "delay-rmap"], format!("unknown subcommand 'repro' (did you mean 'reproduce'?); {sub}")),
    ];
    let cases: Vec<(&[&str], &str)> = cases.iter().map(|(a, w)| (*a, w.as_str())).collect();
    assert_usage_errors(&cases);
}

/// Arguments that are not UTF-8 (only `--trace FILE` may be any path).
#[test]
fn non_utf8_argument_is_one_line() {
    use std::os::unix::ffi::OsStrExt as _;
    let bad = std::ffi::OsStr::from_bytes(b"munmap-\xffstorm");
    let o = Command::new(env!("CARGO_BIN_EXE_mmemu")).arg("run").arg(bad).output().expect("run mmemu");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err, "error: argument 'munmap-\u{fffd}storm' is not valid UTF-8; allowed: UTF-8 text (only --trace FILE may be any path)\n");
}

#[test]
fn help_and_version_go_to_stdout_and_exit_0() {
    for args in [&["--help"][..], &["-h"], &["run", "--help"], &["help", "stress"], &["--version"], &["-V"]] {
        let o = mmemu(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "mmemu {args:?}: {err}");
        assert_eq!(err, "", "mmemu {args:?}");
        assert!(out.contains("mmemu"), "mmemu {args:?}: {out}");
    }
    assert!(ok(&["run", "--help"]).contains("Usage: mmemu run [OPTIONS] <SCENARIO>"));
}

/// Bad values: integers are ASCII digits in range (no sign, spaces, `_`,
/// hex or fractions), seconds are finite and in range.
#[test]
fn bad_inputs_exit_2_with_one_clear_line() {
    const DIGITS: &str = "is not a decimal number (digits only, no sign or spaces)";
    let cases: Vec<(&[&str], String)> = vec![
        (&["run", "munmap-storm", "--cpus", "0"], "--cpus: '0' is out of range; allowed 1..=256".into()),
        (&["run", "munmap-storm", "--cpus", "257"], "--cpus: '257' is out of range; allowed 1..=256".into()),
        (
            &["run", "munmap-storm", "--cpus", "99999999999999999999999"],
            "--cpus: '99999999999999999999999' is out of range; allowed 1..=256".into(),
        ),
        (&["run", "munmap-storm", "--cpus", "-3"], format!("--cpus: '-3' {DIGITS}; allowed 1..=256")),
        (&["run", "munmap-storm", "--cpus", "+4"], format!("--cpus: '+4' {DIGITS}; allowed 1..=256")),
        (&["run", "munmap-storm", "--cpus", " 4"], format!("--cpus: ' 4' {DIGITS}; allowed 1..=256")),
        (&["run", "munmap-storm", "--cpus", "4 "], format!("--cpus: '4 ' {DIGITS}; allowed 1..=256")),
        (&["run", "munmap-storm", "--cpus", "0x4"], format!("--cpus: '0x4' {DIGITS}; allowed 1..=256")),
        (&["run", "munmap-storm", "--cpus", "many"], format!("--cpus: 'many' {DIGITS}; allowed 1..=256")),
        (&["run", "munmap-storm", "--cpus="], "--cpus: empty value; allowed 1..=256".into()),
        (
            &["run", "munmap-storm", "--iterations", "0"],
            "--iterations: '0' is out of range; allowed 1..=1000000000".into(),
        ),
        (
            &["run", "munmap-storm", "--iterations", "1000000001"],
            "--iterations: '1000000001' is out of range; allowed 1..=1000000000".into(),
        ),
        (
            &["run", "munmap-storm", "--iterations", "1e3"],
            format!("--iterations: '1e3' {DIGITS}; allowed 1..=1000000000"),
        ),
        (
            &["run", "munmap-storm", "--iterations", "1.5"],
            format!("--iterations: '1.5' {DIGITS}; allowed 1..=1000000000"),
        ),
        (
            &["run", "munmap-storm", "--iterations", "+2"],
            format!("--iterations: '+2' {DIGITS}; allowed 1..=1000000000"),
        ),
        (&["run", "munmap-storm", "--seed", "x"], format!("--seed: 'x' {DIGITS}; allowed 0..=18446744073709551615")),
        (&["run", "munmap-storm", "--seed", "-1"], format!("--seed: '-1' {DIGITS}; allowed 0..=18446744073709551615")),
        (&["run", "munmap-storm", "--seed", "+1"], format!("--seed: '+1' {DIGITS}; allowed 0..=18446744073709551615")),
        (
            &["run", "munmap-storm", "--seed", "18446744073709551616"],
            "--seed: '18446744073709551616' is out of range; allowed 0..=18446744073709551615".into(),
        ),
        (&["stress", "--seed", "-1"], format!("--seed: '-1' {DIGITS}; allowed 0..=18446744073709551615")),
        (&["run", "munmap-storm", "--inject-panic", "x"], format!("--inject-panic: 'x' {DIGITS}; allowed 0..=255")),
        (&["run", "munmap-storm", "--seconds", "0"], "--seconds: '0' is out of range; allowed 0 < S <= 86400".into()),
        (&["run", "munmap-storm", "--seconds", "-1"], "--seconds: '-1' is out of range; allowed 0 < S <= 86400".into()),
        (
            &["run", "munmap-storm", "--seconds", "86401"],
            "--seconds: '86401' is out of range; allowed 0 < S <= 86400".into(),
        ),
        (
            &["run", "munmap-storm", "--seconds", "1e-400"],
            "--seconds: '1e-400' is out of range; allowed 0 < S <= 86400".into(),
        ),
        (
            &["run", "munmap-storm", "--seconds", "soon"],
            "--seconds: 'soon' is not a number of seconds (a decimal such as 0.5 or 10); allowed 0 < S <= 86400".into(),
        ),
        (
            &["run", "munmap-storm", "--seconds", "nan"],
            "--seconds: 'nan' is not a number of seconds (a decimal such as 0.5 or 10); allowed 0 < S <= 86400".into(),
        ),
        (
            &["run", "munmap-storm", "--seconds", "inf"],
            "--seconds: 'inf' is not a number of seconds (a decimal such as 0.5 or 10); allowed 0 < S <= 86400".into(),
        ),
        (
            &["run", "munmap-storm", "--seconds", "+1"],
            "--seconds: '+1' is not a number of seconds (a decimal such as 0.5 or 10); allowed 0 < S <= 86400".into(),
        ),
        (&["stress", "--cpus", "0"], "--cpus: '0' is out of range; allowed 1..=256".into()),
        (&["stress", "--seconds", "0"], "--seconds: '0' is out of range; allowed 0 < S <= 86400".into()),
        (&["stress", "--slice", "0"], "--slice: '0' is out of range; allowed 0 < S <= 86400".into()),
        (
            &["run", "munmap-storm", "--param", "nope=1"],
            "scenario munmap-storm has no parameter 'nope'; allowed: {params:munmap-storm}".into(),
        ),
        (&["run", "lazy-tlb", "--param", "pages=1"], "--param pages=1: scenario lazy-tlb takes no parameters".into()),
        (&["run", "munmap-storm", "--param", "pages=0"], "--param pages=0: out of range; allowed 1..=65536".into()),
        (
            &["run", "munmap-storm", "--param", "pages=65537"],
            "--param pages=65537: out of range; allowed 1..=65536".into(),
        ),
        (
            &["run", "munmap-storm", "--param", "pages=99999999999999999999999"],
            "--param pages=99999999999999999999999: out of range; allowed 1..=65536".into(),
        ),
        (
            &["run", "munmap-storm", "--param", "pages=lots"],
            "--param pages=lots: not a decimal number (digits only, no sign or spaces); allowed 1..=65536".into(),
        ),
        (
            &["run", "munmap-storm", "--param", "pages=+8"],
            "--param pages=+8: not a decimal number (digits only, no sign or spaces); allowed 1..=65536".into(),
        ),
        (
            &["run", "munmap-storm", "--param", "pages= 8"],
            "--param pages= 8: not a decimal number (digits only, no sign or spaces); allowed 1..=65536".into(),
        ),
        (&["run", "munmap-storm", "--param", "pages="], "--param pages=: empty value; allowed 1..=65536".into()),
        (
            &["run", "munmap-storm", "--param", "pages"],
            "--param 'pages': expected KEY=VALUE; allowed keys for munmap-storm: {params:munmap-storm}".into(),
        ),
        (
            &["run", "munmap-storm", "--param", "=8"],
            "--param '=8': expected KEY=VALUE; allowed keys for munmap-storm: {params:munmap-storm}".into(),
        ),
        (
            &["run", "munmap-storm", "--param", ""],
            "--param '': expected KEY=VALUE; allowed keys for munmap-storm: {params:munmap-storm}".into(),
        ),
        (&["run", "fork-exit-hugetlb", "--param", "tables=0"], "--param tables=0: out of range; allowed 1..=64".into()),
        (
            &["run", "munmap-storm", "--param", "pages=4", "--param", "pages=8"],
            "--param pages given twice (pages=4, pages=8); allowed once per key".into(),
        ),
        (
            &["run", "munmap-storm", "--param", "pages=4", "--param", "chunk=1", "--param", "pages=4"],
            "--param pages given twice (pages=4, pages=4); allowed once per key".into(),
        ),
        (
            &["reproduce", "hugetlb-unshare-batched", "--param", "tables=1", "--param", "tables=2"],
            "--param tables given twice (tables=1, tables=2); allowed once per key".into(),
        ),
        (
            &["run", "munmap-storm", "--revert", "delay-rmap", "--revert", "delay-rmap"],
            "--revert delay-rmap given twice; allowed once per switch".into(),
        ),
        (
            &["run", "munmap-storm", "--revert", "delay-rmap", "--revert", "gup-pmd-recheck", "--revert", "delay-rmap"],
            "--revert delay-rmap given twice; allowed once per switch".into(),
        ),
        (
            &["run", "khugepaged-gup", "--arch", "x86"],
            "scenario khugepaged-gup needs --arch arm64 (the race only exists there); got --arch x86".into(),
        ),
        (
            &["run", "hugetlb-unshare-gup", "--cpus", "2"],
            "scenario hugetlb-unshare-gup needs at least 3 CPUs; allowed --cpus 3..=256".into(),
        ),
    ];
    let cases: Vec<(&[&str], &str)> = cases.iter().map(|(a, w)| (*a, w.as_str())).collect();
    assert_usage_errors(&cases);
}

/// Where a test sends the binary's stdout.
enum Sink {
    /// A pipe whose read end is already closed: every write is EPIPE.
    ClosedPipe,
    /// /dev/full: every write is ENOSPC.
    Full,
}

fn mmemu_into(args: &[&str], sink: Sink) -> Output {
    let stdout: Stdio = match sink {
        Sink::ClosedPipe => {
            let (r, w) = std::io::pipe().expect("pipe");
            drop(r);
            w.into()
        }
        Sink::Full => std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full").into(),
    };
    Command::new(env!("CARGO_BIN_EXE_mmemu")).args(args).stdout(stdout).output().expect("run mmemu")
}

/// Every command that prints: a closed stdout (`| head -c 10` after head
/// exited) exits 3 silently, a full one exits 3 with one line; never a
/// panic (exit 101).
#[test]
fn stdout_closed_or_full_exits_3_without_panic() {
    let cmds: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["run", "munmap-storm", "--cpus", "2", "--iterations", "1", "--no-pin"],
        &["run", "munmap-storm", "--cpus", "2", "--iterations", "1", "--no-pin", "--json"],
        &["reproduce", "nested-flush-detect", "--cpus", "2", "--iterations", "1", "--no-pin"],
        &["reproduce", "nested-flush-detect", "--cpus", "2", "--iterations", "1", "--no-pin", "--json"],
        &["stress", "--cpus", "2", "--seconds", "0.2", "--slice", "0.1", "--no-pin"],
        &["--help"],
        &["run", "--help"],
        &["--version"],
    ];
    for args in cmds {
        let o = mmemu_into(args, Sink::ClosedPipe);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(3), "mmemu {args:?} > closed pipe: stderr {err}");
        assert_eq!(err, "", "mmemu {args:?} > closed pipe: EPIPE is silent");
        if std::path::Path::new("/dev/full").exists() {
            let o = mmemu_into(args, Sink::Full);
            let (_, err) = text(&o);
            assert_eq!(o.status.code(), Some(3), "mmemu {args:?} > /dev/full: stderr {err}");
            assert_eq!(
                err, "error: cannot write the report to stdout: No space left on device (os error 28)\n",
                "mmemu {args:?} > /dev/full"
            );
        }
    }
}

/// `--kernel 6.12|6.18` on run / reproduce / stress: the report names it,
/// `mmemu list` lists both, a bad value or a pairing no kernel ran is one
/// line (exit 2).
#[test]
fn kernel_version_option() {
    for (kernel, name) in [(None, "6.12"), (Some("6.12"), "6.12"), (Some("6.18"), "6.18")] {
        let mut args = vec!["run", "exit-storm", "--cpus", "2", "--iterations", "2", "--no-pin", "--json"];
        if let Some(v) = kernel {
            args.extend(["--kernel", v]);
        }
        let v = json(&args);
        assert_eq!(v["kernel"], name, "{args:?}");
        assert_eq!(v["verdict"], "ok");
        // TLB_REMOTE_WRONG_CPU is a v6.18 trace reason only.
        assert_eq!(v["tlb_flush_reasons"].get("TLB_REMOTE_WRONG_CPU").is_some(), name == "6.18", "{v}");
    }
    let human = ok(&["run", "munmap-storm", "--cpus", "2", "--iterations", "1", "--no-pin", "--kernel", "6.18"]);
    assert!(human.contains("arch x86, kernel 6.18"), "{human}");
    let list = ok(&["list"]);
    assert!(list.contains("6.12") && list.contains("6.18"), "{list}");
    let lj = json(&["list", "--json"]);
    assert_eq!(lj["kernels"], serde_json::json!(["6.12", "6.18"]));
    assert_usage_errors(&[
        (
            &["run", "munmap-storm", "--kernel", "6.13"],
            "--kernel: unknown kernel '6.13' (did you mean '6.12' or '6.18'?); allowed: 6.12, 6.18",
        ),
        (
            &["run", "munmap-storm", "--arch", "arm64", "--kernel", "6.18"],
            "--kernel 6.18 is modelled for x86 only (arm64 follows v6.12); allowed with --arch arm64: 6.12",
        ),
        (
            &["run", "gup-table-free", "--arch", "x86", "--kernel", "6.18", "--param", "rcu-table-free=0"],
            "x86 6.18 always has MMU_GATHER_RCU_TABLE_FREE (a37259732a7d, v6.15): rcu-table-free=0 needs --kernel 6.12",
        ),
    ]);
}

/// `stress --kernel 6.18` runs the x86 scenarios only; the others say why.
#[test]
fn stress_on_6_18_skips_the_scenarios_that_are_not_x86() {
    let o = mmemu(&["stress", "--seconds", "1.5", "--cpus", "2", "--slice", "0.2", "--no-pin", "--kernel", "6.18"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let list = json(&["list", "--json"]);
    let mut skipped = 0;
    for s in list["scenarios"].as_array().unwrap() {
        let (name, arch) = (s["name"].as_str().unwrap(), s["arch"].as_str().unwrap());
        let row = out.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap();
        if arch != "x86" {
            skipped += 1;
            assert!(row.ends_with(&format!("skipped: --kernel 6.18 is x86 only ({arch} follows 6.12)")), "{row}");
        } else {
            assert!(!row.contains("skipped"), "{row}");
        }
    }
    assert!(skipped > 0);
    assert!(out.contains("verdict: ok"), "{out}");
}
