//! Scripts (docs/SCRIPTS.md): every checker error with its exact line,
//! `mmemu check` on the command line, every shipped example checks, and
//! a proptest: random and mutated scripts never make the parser or the
//! checker panic.

use std::process::{Command, Output};

use proptest::prelude::*;
use workloads::script::check_source;

const HEAD: &str = "script s\ncpus 2\nprocess P\n";

/// The checker's error for `HEAD` + `body`.
fn err(body: &str) -> String {
    let src = format!("{HEAD}{body}");
    match check_source("t.mmemu", &src, &[]) {
        Ok(c) => panic!("checked: {c:?}\n{src}"),
        Err(e) => e.to_string(),
    }
}

fn thread(steps: &str) -> String {
    format!("thread T on cpu 0 in P {{\n{steps}}}\n")
}

#[test]
fn a_good_script_checks_and_sums_up() {
    let src = format!(
        "{HEAD}param n = 4 in 1..8\nthread A on cpu 0 in P {{\n  mmap R anon $n pages\n  barrier b\n  write R[$n - 1] = 2\n}}\n\
         thread B on cpu 1 in P {{\n  barrier b\n  sleep\n}}\nexpect interrupts TLB on cpu 1 == 0\n"
    );
    let c = check_source("t.mmemu", &src, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.summary("t.mmemu"),
        "t.mmemu: ok: script s, arch x86, kernel 6.12, 2 CPUs, 2 threads, 5 steps, 1 barrier, 1 expectation"
    );
    assert_eq!(c.params.get("n"), Some(&4));
    let c = check_source("t.mmemu", &src, &[("n".into(), 8)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.params.get("n"), Some(&8));
    assert_eq!(
        check_source("t.mmemu", &src, &[("n".into(), 9)]).map_err(|e| e.to_string()),
        Err("t.mmemu:4:1: --param n=9 is out of range; allowed 1..=8".to_string())
    );
}

#[test]
fn header_names_are_resolved_with_did_you_mean() {
    let t = thread("  spin\n");
    let e = |h: &str| {
        let src = format!("script s\n{h}\nprocess P\n{t}");
        check_source("t.mmemu", &src, &[]).map(|_| ()).map_err(|e| e.to_string()).expect_err(h)
    };
    assert_eq!(
        e("arch x68"),
        "t.mmemu:2:6: found unknown arch 'x68' (did you mean 'x86'?); allowed x86, arm64, generic"
    );
    assert_eq!(
        e("kernel 6.13"),
        "t.mmemu:2:8: found unknown kernel profile '6.13' (did you mean '6.12' or '6.18'?); allowed 6.12, 6.18"
    );
    assert_eq!(e("cpus 0"), "t.mmemu:2:6: found cpus 0; allowed 1..=256");
    assert_eq!(e("cpus 257"), "t.mmemu:2:6: found cpus 257; allowed 1..=256");
    assert_eq!(
        e("revert delay-rmpa"),
        "t.mmemu:2:8: found unknown fix 'delay-rmpa' (did you mean 'delay-rmap'?); allowed khugepaged-gup-fast-ipi, delay-rmap, hugetlb-unshare-sync, hugetlb-unshare-batched, secondary-tlb-on-flush, folio-pages-batching, nested-flush-detect, lazy-tlb-freed-tables, gup-pmd-recheck, arm64-unshare-walk-cache, no-range-vma-pfn"
    );
    assert_eq!(e("revert delay-rmap delay-rmap"), "t.mmemu:2:19: found fix 'delay-rmap' reverted twice; allowed once");
    assert_eq!(
        e("knob rcu-tabel-free off"),
        "t.mmemu:2:6: found unknown knob 'rcu-tabel-free' (did you mean 'rcu-table-free'?); allowed rcu-table-free, pte-free-defer, table-free-one-sync, gup-oracle, strict-free-check, init-on-free, debug-vm, tlb-single-page-flush-ceiling, hugetlb-unshare-sync-after-unlock"
    );
    assert_eq!(e("knob rcu-table-free 1"), "t.mmemu:2:21: found a number for knob 'rcu-table-free'; allowed on, off");
    assert_eq!(
        e("knob tlb-single-page-flush-ceiling = 0"),
        "t.mmemu:2:38: found tlb-single-page-flush-ceiling = 0; allowed 1..=4096"
    );
    assert_eq!(e("budget 0 rounds"), "t.mmemu:2:8: found budget 0 rounds; allowed 1..=1000000000 rounds");
}

#[test]
fn each_check_error_is_one_line_naming_what_and_what_is_allowed() {
    let cases: &[(&str, &str)] = &[
        (
            &thread("  write R[0]\n"),
            "t.mmemu:5:9: found region 'R' used before it is mapped in process P; allowed a region an earlier 'mmap R' of the process maps (none so far)",
        ),
        (
            &thread("  mmap A anon 1 page\n  munmap B\n"),
            "t.mmemu:6:10: found region 'B' used before it is mapped in process P (did you mean 'A'?); allowed a region an earlier 'mmap B' of the process maps (A)",
        ),
        ("thread T on cpu 2 in P {\n  spin\n}\n", "t.mmemu:4:17: found CPU 2; allowed 0..=1 (the header's cpus 2; at most 256)"),
        ("thread T on cpus 1..3 in P {\n  spin\n}\n", "t.mmemu:4:18: found cpus 1..3; allowed A..B with 0 <= A < B <= 2 (the header's cpus)"),
        (
            "thread T on cpu 0 in Q {\n  spin\n}\n",
            "t.mmemu:4:22: found process 'Q', not declared (did you mean 'P'?); allowed a 'process NAME' line's name (P)",
        ),
        (&thread("  mmap R anon 1 page\n  write R[1]\n"), "t.mmemu:6:11: found page 1 of region 'R'; allowed 0..=0 (it has 1 pages)"),
        (
            &thread("  mmap R anon 4 pages\n  read R[2..9]\n"),
            "t.mmemu:6:10: found pages 2..9 of region 'R'; allowed a..b with 0 <= a < b <= 4 (its pages)",
        ),
        (
            &thread("  mmap R anon 100\n"),
            "t.mmemu:5:15: found size 100 bytes; allowed a multiple of 4096 bytes from 4096 to 1073741824 (or 1..=262144 pages)",
        ),
        (
            &thread("  mmap R anon 1 page at 0x1234\n"),
            "t.mmemu:5:25: found address 0x1234; allowed a non-zero multiple of 0x1000 with the region (0x1000 bytes) below 0x7ffffffff000",
        ),
        (
            &thread("  mmap R thp 1 page\n"),
            "t.mmemu:5:14: found a 4096-byte thp/hugetlb region; allowed a multiple of 2 MiB (512 pages)",
        ),
        (
            &thread("  mmap R file-shared F 1 page\n"),
            "t.mmemu:5:22: found file 'F', not declared; allowed a 'file NAME size SIZE' line's name (none declared)",
        ),
        (
            &format!("file F size 2 pages\n{}", thread("  mmap R file-shared F 1 page offset 8192\n")),
            "t.mmemu:6:38: found offset 8192 + size 4096 bytes past the file's 8192 bytes; allowed a page-aligned range inside the file",
        ),
        (
            &thread("  mmap R anon 1 page\n  madvise R free\n"),
            "t.mmemu:6:13: found unknown advice 'free'; allowed dontneed",
        ),
        (
            &thread("  mmap R anon 1 page\n  msync R\n"),
            "t.mmemu:6:9: found msync of anonymous region 'R'; allowed a file-shared or file-private region",
        ),
        (
            &thread("  mmap R anon 1 page\n  gup-fast R at pmd-raed {\n    barrier x\n  }\n"),
            "t.mmemu:6:17: found unknown gup-fast stall point 'pmd-raed' (did you mean 'pmd-read'?); allowed pud-read, pmd-read, pte-read, grabbed",
        ),
        (
            &thread("  mmap R anon 1 page\n  madvise R dontneed at pmd-read {\n    barrier x\n  }\n"),
            "t.mmemu:6:25: found stall point 'pmd-read' on madvise, a gup-fast stall point; allowed pte-table-done",
        ),
        (
            &thread("  mmap R anon 1 page\n  gup-fast R at pte-table-done {\n    barrier x\n  }\n"),
            "t.mmemu:6:17: found stall point 'pte-table-done' on gup-fast, a madvise and munmap stall point; allowed pud-read, pmd-read, pte-read, grabbed",
        ),
        (
            &thread("  mmap R anon 1 page\n  munmap R at pte-tabel-done {\n    barrier x\n  }\n"),
            "t.mmemu:6:15: found unknown munmap stall point 'pte-tabel-done' (did you mean 'pte-table-done'?); allowed pte-table-done",
        ),
        (
            &thread("  mmap R anon 1 page\n  madvise R dontneed at pte-table-done {\n  }\n"),
            "t.mmemu:6:25: found a stall point without barriers; allowed one or more 'barrier NAME' lines in its block",
        ),
        (
            &thread("  mmap R anon 1 page\n  madvise R dontneed at pte-table-done {\n    write R[0]\n  }\n"),
            "t.mmemu:7:5: found step 'write' at a stall point; allowed only 'barrier NAME' lines (the kernel path waits there, mid-call)",
        ),
        (
            &thread("  mmap R anon 1 page\n  madvise R dontneed now\n"),
            "t.mmemu:6:22: found 'now'; allowed 'at POINT {' or the end of the line",
        ),
        (
            &thread("  mmap R anon 1 page\n  munmap R at pte-table-done {\n    barrier x\n  }\n"),
            "t.mmemu:7:13: found barrier 'x' that only thread T names; allowed a barrier at least two threads name (it would wait forever)",
        ),
        (
            "thread A on cpu 0 in P {\n  mmap R anon 1 page\n  barrier a\n  madvise R dontneed at pte-table-done {\n    barrier b\n  }\n}\nthread B on cpu 1 in P {\n  barrier b\n  barrier a\n}\n",
            "t.mmemu:12:11: found thread B waiting at barrier 'b' while thread A waits at 'a' (line 6); allowed shared barriers reached in the same order by every thread (this deadlocks)",
        ),
        (
            &thread("  mmap R anon 512 pages\n  collapse R[1..513]\n"),
            "t.mmemu:6:14: found pages 1..513 of region 'R'; allowed a..b with 0 <= a < b <= 512 (its pages)",
        ),
        (
            &thread("  mmap R anon 1024 pages\n  collapse R[1..513]\n"),
            "t.mmemu:6:12: found collapse of pages 1..513; allowed whole 2 MiB ranges (pages a..b, multiples of 512)",
        ),
        (&thread("  repeat 1000000001 {\n    spin\n  }\n"), "t.mmemu:5:10: found repeat 1000000001; allowed 0..=1000000000"),
        (
            &thread("  repeat 2 {\n    sleep\n  }\n"),
            "t.mmemu:6:5: found 'sleep' inside a loop; allowed 'sleep' only as the last step of a thread (it lasts until the others finish)",
        ),
        (
            &thread("  spin\n  mmap R anon 1 page\n"),
            "t.mmemu:6:3: found step 'mmap' after 'spin' (line 5); allowed 'spin' only as the last step of its block",
        ),
        (
            &thread("  repeat until budget {\n    repeat until budget {\n    }\n  }\n"),
            "t.mmemu:6:5: found 'repeat until budget' inside another; allowed one budget loop level",
        ),
        (&thread("  write R[$x]\n"), "t.mmemu:5:9: found region 'R' used before it is mapped in process P; allowed a region an earlier 'mmap R' of the process maps (none so far)"),
        (
            &thread("  mmap R anon 1 page\n  write R[$pgaes]\n"),
            "t.mmemu:6:11: found unknown variable '$pgaes'; allowed $cpu, $ncpus",
        ),
        (&thread("  mmap R anon 1 page\n  write R[0 - 1]\n"), "t.mmemu:6:11: found 0 - 1, which is negative; allowed values 0..=18446744073709551615"),
        (&thread("  peek rand(0)\n"), "t.mmemu:5:8: found rand(0); allowed rand(N) with N >= 1"),
        (&thread("  peek 0x800000000000\n"), "t.mmemu:5:8: found address 0x800000000000; allowed a user address below 0x7ffffffff000"),
        (&thread("  for i in 4..2 {\n  }\n"), "t.mmemu:5:12: found range 4..2; allowed A..B with A <= B"),
        (
            &thread("  barrier lonely\n"),
            "t.mmemu:5:11: found barrier 'lonely' that only thread T names; allowed a barrier at least two threads name (it would wait forever)",
        ),
        (
            "thread A on cpu 0 in P {\n  repeat 3 {\n    barrier b\n  }\n}\nthread B on cpu 1 in P {\n  repeat 2 {\n    barrier b\n  }\n}\n",
            "t.mmemu:11:13: found thread B reaching barrier 'b' 2 times and thread A 3 times; allowed the same count in every thread that names it (one would wait forever)",
        ),
        (
            "thread A on cpu 0 in P {\n  repeat until budget {\n    barrier b\n  }\n}\nthread B on cpu 1 in P {\n  barrier b\n}\n",
            "t.mmemu:10:11: found thread B reaching barrier 'b' 1 times and thread A 1 times per budget round; allowed the same count in every thread that names it (one would wait forever)",
        ),
        (
            "thread A on cpu 0 in P {\n  barrier x\n  barrier y\n}\nthread B on cpu 1 in P {\n  barrier y\n  barrier x\n}\n",
            "t.mmemu:9:11: found thread B waiting at barrier 'y' while thread A waits at 'x' (line 5); allowed shared barriers reached in the same order by every thread (this deadlocks)",
        ),
        (
            "thread A on cpu 0 in P held {\n  spin\n}\nthread B on cpu 1 in P {\n  sleep\n}\n",
            "t.mmemu:4:8: found held thread 'A' that no step starts; allowed a 'start A' step in another thread, or no 'held'",
        ),
        (
            "thread A on cpu 0 in P held {\n  spin\n}\nthread B on cpu 1 in P {\n  repeat 2 {\n    start A\n  }\n}\n",
            "t.mmemu:4:8: found held thread 'A' started 2 times; allowed one 'start A' executed once",
        ),
        (
            "thread A on cpu 0 in P {\n  start B\n}\nthread B on cpu 1 in P {\n  sleep\n}\n",
            "t.mmemu:5:9: found 'start B' of a thread that is not held; allowed a thread declared with 'held'",
        ),
        (
            "thread A on cpu 0 in P {\n  barrier b\n}\nthread B on cpu 0 in P {\n  barrier b\n}\n",
            "t.mmemu:7:8: found threads A and B on CPU 0 meeting at barrier 'b'; allowed threads that meet on different CPUs (the emulator runs a CPU's threads one after the other)",
        ),
        (
            "thread A on cpu 0 in P {\n  spin\n}\nthread B on cpu 0 in P {\n  sleep\n}\n",
            "t.mmemu:7:8: found thread B on CPU 0 after thread A, which spins there until the others end; allowed one CPU per thread when one spins (the emulator runs a CPU's threads one after the other)",
        ),
        (
            "thread A on cpu 0 in P first {\n  barrier b\n}\nthread B on cpu 1 in P {\n  barrier b\n}\n",
            "t.mmemu:5:11: found barrier 'b' in thread A, which runs first and alone; allowed no barrier in a 'first' thread",
        ),
        (
            "thread A on cpu 0 in P held {\n  sleep\n}\nthread B on cpu 0 in P {\n  start A\n}\n",
            "t.mmemu:7:8: found threads A and B on CPU 0, one of them held; allowed a held thread alone on its CPU (it holds the CPU, lazy, until it is started)",
        ),
        (&thread("  join X\n"), "t.mmemu:5:8: found 'join X' with no 'spawn X' earlier in this block; allowed a thread this block spawned"),
        (
            "thread A on cpu 0 in P {\n  spawn S {\n    barrier b\n  }\n}\nthread B on cpu 1 in P {\n  barrier b\n}\n",
            "t.mmemu:6:13: found barrier 'b' in a spawned thread; allowed barriers in declared threads only",
        ),
        (
            &thread("  spawn S on cpu 1 {\n    spin\n  }\n"),
            "t.mmemu:6:5: found 'spin' in a spawned thread; allowed in declared threads only (a spawned thread ends with the block that spawned it)",
        ),
        (&thread("  fork P {\n  }\n"), "t.mmemu:5:8: found 'P', already a process or thread name; allowed a new name for the child process"),
        ("thread T on cpu 0 in P {\n  spin\n}\nthread T on cpu 1 in P {\n  spin\n}\n", "t.mmemu:7:8: found thread 'T' declared twice; allowed once"),
        ("param cpu = 1 in 0..2\n", "t.mmemu:4:7: found parameter 'cpu' declared twice or reserved; allowed a new name (not cpu, ncpus)"),
        ("param n = 9 in 0..2\n", "t.mmemu:4:1: found param 'n' = 9 in 0..2; allowed MIN <= DEFAULT <= MAX"),
        ("", "t.mmemu:1:8: found a script without threads; allowed at least one 'thread NAME on cpu N in P {'"),
        (
            &format!("{}expect violations stale-tlb {}", thread("  spin\n"), "== 0\n"),
            "t.mmemu:7:19: found unknown violation kind 'stale-tlb' (did you mean 'stale-tlb-access'?); allowed stale-tlb-access, walk-into-freed-table, walk-into-unshared-table, freed-before-flush, table-freed-before-flush, gup-fast-freed-table, gup-oracle, secondary-tlb-stale, lost-dirty-data, secondary-livelock, stale-after-zap, debug-vm-warning",
        ),
        (
            &format!("{}expect counter nr_tlb_remote_flsh >= 1\n", thread("  spin\n")),
            "t.mmemu:7:16: found unknown counter 'nr_tlb_remote_flsh' (did you mean 'nr_tlb_remote_flush'?)",
        ),
        (
            &format!("{}expect interrupts TLB on cpu 5 == 0\n", thread("  spin\n")),
            "t.mmemu:7:30: found CPU 5; allowed 0..=1 (the header's cpus 2; at most 256)",
        ),
        (
            &format!("{}expect rate pgfault per round > 1 +- 5%\n", thread("  spin\n")),
            "t.mmemu:7:33: found '+-' after '>'; allowed a tolerance only with '=='",
        ),
        (
            &format!("{}expect rate pgfault per round == 1 +- 500%\n", thread("  spin\n")),
            "t.mmemu:7:34: found a tolerance of 500%; allowed 0..=100%",
        ),
    ];
    let mut wrong = Vec::new();
    for (body, want) in cases {
        let got = err(body);
        // The counter list is long: compare up to it.
        let got =
            if want.ends_with("?)") { got.split("; allowed").next().unwrap_or_default().to_string() } else { got };
        if &got != want {
            wrong.push(format!("{HEAD}{body}\n  got:  {got}\n  want: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[test]
fn a_counter_the_arch_does_not_keep_is_refused() {
    let src = "script s\narch arm64\ncpus 2\nprocess P\nthread T on cpu 0 in P {\n  spin\n}\nexpect counter nr_tlb_remote_flush == 0\n";
    let e = check_source("t.mmemu", src, &[]).map(|_| ()).map_err(|e| e.to_string()).expect_err("arm64");
    assert!(
        e.starts_with("t.mmemu:8:16: found counter 'nr_tlb_remote_flush', which arch arm64 does not keep; allowed "),
        "{e}"
    );
    let src = src.replace("expect counter nr_tlb_remote_flush == 0", "expect interrupts TLB == 0");
    let e = check_source("t.mmemu", &src, &[]).map(|_| ()).map_err(|e| e.to_string()).expect_err("arm64");
    assert_eq!(e, "t.mmemu:8:19: found interrupts TLB on arch arm64, which sends no TLB IPIs; allowed CAL");
}

// ---- mmemu check ----

fn mmemu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmemu")).args(args).output().expect("run mmemu")
}

fn temp_script(name: &str, src: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mmemu-scripts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, src).expect("write script");
    p
}

#[test]
fn mmemu_check_prints_one_line_and_exits_0_or_2() {
    let good = temp_script("good.mmemu", &format!("{HEAD}{}", thread("  mmap R anon 1 page\n  write R\n")));
    let g = good.to_str().expect("utf-8 path");
    let o = mmemu(&["check", g]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{g}: ok: script s, arch x86, kernel 6.12, 2 CPUs, 1 thread, 2 steps, 0 barriers, 0 expectations\n")
    );
    let bad = temp_script("bad.mmemu", &format!("{HEAD}{}", thread("  write R\n")));
    let b = bad.to_str().expect("utf-8 path");
    let o = mmemu(&["check", b]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(o.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!("error: {b}:5:9: found region 'R' used before it is mapped in process P; allowed a region an earlier 'mmap R' of the process maps (none so far)\n")
    );
    let o = mmemu(&["check", "/nonexistent/x.mmemu"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: cannot read script '/nonexistent/x.mmemu': No such file or directory (os error 2); allowed a readable .mmemu file\n"
    );
    let o = mmemu(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: mmemu check needs <FILE>; allowed: a script file (.mmemu, docs/SCRIPTS.md)\n"
    );
    let o = mmemu(&["check", g, "--param", "n"]);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "error: --param: 'n' has no '='; allowed KEY=VALUE\n");
    let o = mmemu(&["check", g, "--param", "n=1"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!("error: {g}:1:8: --param n: script 's' has no parameters; allowed no --param\n")
    );
}

// ---- no panics ----

/// Lines scripts are made of, for the generator and the mutator.
const LINES: &[&str] = &[
    "script s",
    "arch arm64",
    "cpus $n + 1",
    "revert delay-rmap",
    "knob rcu-table-free off",
    "budget 3 rounds",
    "param n = 2 in 1..4",
    "process P",
    "file F size 8 pages contents index",
    "thread T on cpu 0 in P {",
    "thread U on each cpu in P held {",
    "thread V on cpus 0..2 in P {",
    "mmap R anon $n pages at 0x10000",
    "mmap H file-shared F 4 pages offset 4096",
    "mmap X thp 2M",
    "write R[0] = 7",
    "read R[$n - 1] expect 0",
    "munmap R[0..1]",
    "mprotect R ro",
    "madvise R[1] dontneed",
    "msync H",
    "fadvise F dontneed pages 0..2",
    "truncate F size 1 page",
    "fork C {",
    "exec E {",
    "spawn S on cpu 1 {",
    "join S",
    "exit",
    "start U",
    "spin",
    "sleep",
    "barrier b",
    "gup-fast R write pin at pmd-read {",
    "collapse X at after-isolate {",
    "madvise R dontneed at pte-table-done {",
    "device write R[0] = 3 expect 3",
    "repeat 2 {",
    "repeat until budget {",
    "for i in shuffled 0..$n step 1 {",
    "}",
    "expect violations == 0",
    "expect rate pgfault per round == 2.5 +- 10%",
    "expect interrupts TLB on cpu 1 == 0",
    "",
    "# comment",
];

fn check_never_panics(src: &str) {
    // Any outcome but a panic; an error is one line with FILE:LINE:COL.
    if let Err(e) = check_source("p.mmemu", src, &[]) {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(s.starts_with("p.mmemu:"), "{s}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn random_lines_never_panic(head in any::<bool>(), lines in proptest::collection::vec(0..LINES.len(), 0..40)) {
        // With a valid head half of the time, so the checker sees them.
        let mut src: Vec<&str> = if head { vec!["script s", "cpus 2", "process P"] } else { Vec::new() };
        src.extend(lines.iter().map(|&i| LINES[i]));
        check_never_panics(&src.join("\n"));
    }

    #[test]
    fn random_thread_bodies_never_panic(lines in proptest::collection::vec(12..40usize, 0..30)) {
        // Steps and blocks inside one thread (LINES[12..40]), closed.
        let mut src = vec!["script s", "cpus 2", "param n = 2 in 1..4", "process P", "file F size 8 pages", "thread T on cpu 0 in P {"];
        src.extend(lines.iter().map(|&i| LINES[i]));
        src.extend(["}"; 8]);
        check_never_panics(&src.join("\n"));
    }

    #[test]
    fn random_bytes_never_panic(src in "\\PC{0,200}") {
        check_never_panics(&src);
    }

    #[test]
    fn mutated_examples_never_panic(pick in 0usize..64, at in 0usize..4096, len in 0usize..16, with in "[ -~\\n{}\\[\\]$.0-9]{0,8}") {
        let ex = examples();
        let (_, src) = &ex[pick % ex.len()];
        let mut b = src.clone().into_bytes();
        let at = at % (b.len() + 1);
        let end = (at + len).min(b.len());
        b.splice(at..end, with.bytes());
        if let Ok(s) = String::from_utf8(b) {
            check_never_panics(&s);
        }
    }
}

// ---- the shipped examples ----

fn examples() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "mmemu"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).expect("read example")))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_checks() {
    let ex = examples();
    assert!(ex.len() >= 12, "examples/scripts has {} scripts", ex.len());
    for (path, src) in ex {
        check_source(&path, &src, &[]).unwrap_or_else(|e| panic!("{e}"));
    }
}

// ---- running scripts (the interpreter's first part) ----

/// Run an example; `rounds`: the budget (None: the header's).
fn run_example(name: &str, rounds: Option<u64>) -> workloads::script::interp::ScriptRun {
    run_example_reverting(name, rounds, &[])
}

/// Run an example with `revert` switched off besides its header's reverts.
fn run_example_reverting(
    name: &str,
    rounds: Option<u64>,
    revert: &[mm_core::Fix],
) -> workloads::script::interp::ScriptRun {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts").join(name);
    let src = std::fs::read_to_string(&path).expect("read example");
    let file = format!("examples/scripts/{name}");
    let s = workloads::script::parse(&file, &src).unwrap_or_else(|e| panic!("{e}"));
    let c = workloads::script::check(&file, &s, &[]).unwrap_or_else(|e| panic!("{e}"));
    let mut kcfg = mm_core::KernelConfig { arch: c.arch, nr_cpus: c.cpus as usize, ..mm_core::KernelConfig::default() };
    for f in c.reverts.iter().chain(revert) {
        kcfg.fixes.set(*f, false);
    }
    let ctx = workloads::scenarios::Ctx {
        kcfg,
        machine: emu_cpu::MachineConfig::default(),
        budget: workloads::budget::Budget::Iterations(match (rounds, c.budget) {
            (Some(n), _) => n,
            (None, workloads::script::check::BudgetSpec::Rounds(n)) => n,
            (None, _) => 10,
        }),
        seed: 1,
        params: Default::default(),
        stop_on_violation: false,
    };
    workloads::script::interp::run(&file, &s, &c, &ctx).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The rounds budget in a shipped script's header (0 if it has none).
fn header_rounds(file: &str) -> u64 {
    let src = workloads::script::shipped::SHIPPED.iter().find(|(f, _)| f == &file).map_or("", |(_, s)| s);
    match workloads::script::check_source(file, src, &[]).map(|c| c.budget) {
        Ok(workloads::script::check::BudgetSpec::Rounds(n)) => n,
        _ => 0,
    }
}

#[test]
fn a_failed_expectation_and_a_wrong_read_name_their_lines() {
    let src = "script s\ncpus 2\nbudget 2 rounds\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 2 pages\n  repeat until budget {\n    write R = 5\n    read R[1] expect 4\n  }\n}\nexpect violations == 1\nexpect reads failed == 0\nexpect counter pgfault >= 1\n";
    let r = run_src(src, workloads::budget::Budget::Iterations(2), emu_cpu::MachineConfig::default());
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert_eq!(r.reads_failed, 2);
    assert_eq!(
        r.failed,
        [
            "t.mmemu:12:1: expectation failed: violations is 0; expected == 1",
            "t.mmemu:13:1: expectation failed: reads failed is 2; expected == 0",
        ]
    );
}

/// `truncate F size SIZE` is ftruncate: the pages past the new end are
/// unmapped from every mapping (one flush, one IPI to the other CPU running
/// the mm), the page cache there is dropped, and a read past the end fails
/// (SIGBUS in the kernel) on either CPU; the pages before it keep the
/// file's data.  `truncate F` is ftruncate(fd, 0): nothing is left.
#[test]
fn a_truncate_to_a_size_unmaps_past_the_end_and_later_reads_fail() {
    let src = "script s\ncpus 2\nprocess P\nfile F size 4 pages contents index\n\
        thread A on cpu 0 in P {\n  mmap S file-shared F 4 pages\n  read S[0..4]\n  barrier mapped\n  barrier touched\n\
        truncate F size 1 page\n  barrier truncated\n  read S[0] expect 0\n  read S[1..4] expect segv\n  barrier checked\n\
        truncate F\n  barrier emptied\n  read S[0] expect segv\n  barrier done\n}\n\
        thread B on cpu 1 in P {\n  barrier mapped\n  read S[0..4]\n  barrier touched\n  barrier truncated\n\
        read S[1..4] expect segv\n  read S[0] expect 0\n  barrier checked\n  barrier emptied\n\
        read S[0] expect segv\n  barrier done\n}\n\
        expect reads failed == 0\nexpect counter nr_tlb_local_flush_one on cpu 0 == 4\n\
        expect counter nr_tlb_remote_flush on cpu 0 == 3\nexpect interrupts TLB on cpu 0 == 0\nexpect interrupts TLB on cpu 1 == 3\n\
        expect violations == 0\nexpect leaked == 0\n";
    let r = run_source(src);
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
    assert_eq!(r.reads_failed, 0);
    // 3 pages past the 1-page end, flushed page by page on CPU 0 (and on
    // CPU 1 by its IPI: it waits at a barrier in the mm); `truncate F` then
    // takes page 0: one more page, one more IPI; exit_mmap's freed-tables
    // flush is CPU 1's third (lazy by then: x86 v6.12 interrupts it when
    // tables are freed).
    assert_eq!(r.outcome.measure.per_cpu["irq_tlb_count"], [0, 3]);
    // A read the truncate broke is named: the model's signal is SIGBUS.
    let bad =
        "script s\ncpus 2\nprocess P\nfile F size 2 pages\nthread A on cpu 0 in P {\n  mmap S file-shared F 2 pages\n\
        read S[0..2]\n  truncate F size 1 page\n  read S[1]\n}\n";
    let r = run_source(bad);
    let err = r.outcome.error.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("t.mmemu:9:3: read of page 1 of 'S' faulted (SIGBUS)"), "{err}");
}

/// The shipped example: exact counts (see its header), and the COW copy
/// is gone only because truncate zaps with even_cows.
#[test]
fn the_truncate_mapped_example_meets_its_expectations() {
    for _ in 0..3 {
        let r = run_example("truncate-mapped.mmemu", None);
        assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
        assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
        assert_eq!(r.outcome.measure.per_cpu["irq_tlb_count"], [0, 3]);
        assert_eq!(r.outcome.measure.per_cpu["nr_tlb_local_flush_one"], [7, 0]);
        assert_eq!(r.outcome.measure.per_cpu["nr_tlb_remote_flush"], [3, 0]);
    }
}

#[test]
fn mmemu_run_file_gives_the_scenario_report_and_fails_on_an_expectation() {
    let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts/dontneed-sibling-spins.mmemu");
    let o = mmemu(&["run", ex.to_str().expect("utf-8 path"), "--json", "--iterations", "5", "--no-pin"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(v["scenario"], "dontneed-sibling-spins");
    assert_eq!(v["cpus"], 2, "the header's cpus");
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["iterations"], 5);
    let bad = temp_script(
        "expect.mmemu",
        &format!("{HEAD}{}expect violations == 1\n", thread("  mmap R anon 1 page\n  write R\n")),
    );
    let b = bad.to_str().expect("utf-8 path");
    let o = mmemu(&["run", b, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(v["verdict"], "expectation");
    assert_eq!(v["error"], format!("{b}:8:1: expectation failed: violations is 0; expected == 1"));
    // The header's `kernel 6.18` is the run's kernel; --kernel overrides it.
    let k618 = temp_script(
        "k618.mmemu",
        &format!("script s\nkernel 6.18\ncpus 2\nprocess P\n{}", thread("  mmap R anon 1 page\n  write R\n")),
    );
    let k = k618.to_str().expect("utf-8 path");
    let o = mmemu(&["run", k, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(v["kernel"], "6.18");
    let o = mmemu(&["run", k, "--json", "--kernel", "6.12"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(v["kernel"], "6.12");
    // A truncate to a size runs: the shipped example, verdict ok.
    let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts/truncate-mapped.mmemu");
    let o = mmemu(&["run", ex.to_str().expect("utf-8 path"), "--json", "--no-pin"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["interrupts"]["TLB"], serde_json::json!([0, 3]));
}

#[test]
fn a_race_written_as_a_script_reproduces_without_its_fix_and_is_clean_with_it() {
    // Barriers at the RaceHooks stall point order the race exactly: no
    // rounds, no luck.
    let off = run_example("gup-table-free-stall.mmemu", None);
    assert!(off.outcome.error.is_none(), "{:?}", off.outcome.error);
    assert!(off.failed.is_empty(), "{}", off.failed.join("\n"));
    let kinds: Vec<&str> = off.outcome.measure.records.iter().map(|r| r.kind.name()).collect();
    assert_eq!(kinds, ["gup-fast-freed-table"]);
    let on = run_example("gup-table-free-stall-rcu.mmemu", None);
    assert!(on.outcome.error.is_none(), "{:?}", on.outcome.error);
    assert!(on.failed.is_empty(), "{}", on.failed.join("\n"));
    assert_eq!(on.outcome.measure.violations, 0);
    // On the command line the expected violation is the script's result:
    // verdict ok, exit 0.
    let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts/gup-table-free-stall.mmemu");
    let o = mmemu(&["run", ex.to_str().expect("utf-8 path"), "--json", "--no-pin"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["violations"]["count"], 1, "{v}");
}

#[test]
fn the_nested_zap_race_as_a_script_reproduces_without_its_fix_and_is_clean_with_it() {
    // T1 (CPU0) stalls at pte-table-done after table A, S's PTEs cleared
    // and unflushed; T2 (CPU1) MADV_DONTNEEDs S meanwhile and finds nothing.
    let name = "nested-zap-stall.mmemu";
    let per_cpu = |r: &workloads::script::interp::ScriptRun, c: &str| r.outcome.measure.per_cpu[c].clone();
    // Fix off: T2's madvise returns with S (8 pages) still cached on both
    // CPUs — one stale-after-zap per page per CPU, and nothing else.  No
    // flush IPI reaches CPU0: T2 sends none, T1's own flush and the final
    // exit_mmap (a kthread on CPU0) are local there.  (CPU1's count is
    // timing: T1's flush IPIs it only if T2 has not gone lazy yet.)
    let off = run_example_reverting(name, None, &[mm_core::Fix::NestedFlushDetect]);
    assert!(off.outcome.error.is_none(), "{:?}", off.outcome.error);
    assert!(off.failed.is_empty(), "{}", off.failed.join("\n"));
    let kinds: std::collections::BTreeSet<&str> = off.outcome.measure.records.iter().map(|r| r.kind.name()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["stale-after-zap"]);
    assert_eq!(off.outcome.measure.violations, 16, "8 pages of S x 2 CPUs");
    let mut where_: Vec<(u32, u64)> =
        off.outcome.measure.records.iter().map(|r| (r.cpu.expect("a CPU").0, r.va - 0x4000_0000)).collect();
    where_.sort();
    let want: Vec<(u32, u64)> = (0..2).flat_map(|c| (0..8).map(move |p| (c, p * 4096))).collect();
    assert_eq!(where_, want, "(CPU, offset) of each stale entry: S on both CPUs");
    assert_eq!(per_cpu(&off, "irq_tlb_count")[0], 0);
    assert_eq!(off.outcome.measure.per_cpu["nested_flush_forced"].iter().sum::<u64>(), 0);
    // Fix on: T2 sees mm_tlb_flush_nested and flushes the whole mm; its
    // IPI reaches CPU0 while T1 waits at the barrier with IRQs on: CPU0's
    // one flush IPI.
    let on = run_example(name, None);
    assert!(on.outcome.error.is_none(), "{:?}", on.outcome.error);
    assert!(on.failed.is_empty(), "{}", on.failed.join("\n"));
    assert_eq!(on.outcome.measure.violations, 0, "{:?}", on.outcome.measure.records);
    assert_eq!(per_cpu(&on, "irq_tlb_count")[0], 1);
    assert_eq!(on.outcome.measure.per_cpu["nested_flush_forced"].iter().sum::<u64>(), 1, "T2's, not T1's");
    // The command line: fix off shows violations, fix on none.
    let ex = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts").join(name);
    let o = mmemu(&[
        "reproduce",
        "nested-flush-detect",
        "--script",
        ex.to_str().expect("utf-8 path"),
        "--json",
        "--no-pin",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["reproduced"], true, "{v}");
    assert_eq!(v["scenario"], "nested-zap-stall");
    assert_eq!(v["fix_off"]["violations"]["by_kind"], serde_json::json!({"stale-after-zap": 16}));
    assert_eq!(v["fix_on"]["violations"]["count"], 0);
    assert_eq!(v["fix_on"]["interrupts"]["TLB"][0], 1, "{}", v["fix_on"]["interrupts"]);
}

#[test]
fn a_munmap_stalls_at_pte_table_done_with_its_gather_pending() {
    // A's munmap stops after its first PTE table; B's MADV_DONTNEED of its
    // own region meanwhile nests with that pending gather (mmap_lock read
    // for both): it must force its flush (nested_flush_forced).  Were the
    // stall never reached, B would wait at 'in' until the watchdog.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1024 pages at 0x40000000\n  write R[0]\n  write R[512]\n  barrier mapped\n  munmap R at pte-table-done {\n    barrier in\n    barrier out\n  }\n}\n\
               thread B on cpu 1 in P {\n  mmap Q anon 1 page at 0x50000000\n  write Q[0]\n  barrier mapped\n  barrier in\n  madvise Q dontneed\n  barrier out\n}\n\
               expect counter nested_flush_forced == 1\nexpect violations == 0\nexpect leaked == 0\n";
    let r = run_src(
        src,
        workloads::budget::Budget::Iterations(1),
        emu_cpu::MachineConfig { hang_timeout: std::time::Duration::from_secs(5), ..Default::default() },
    );
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
}

#[test]
fn the_storm_scenarios_are_their_shipped_scripts_and_run_the_deleted_rust_programs() {
    // `mmemu run NAME` is examples/scripts/NAME.mmemu (embedded): the same
    // report.  The numbers pinned here are what the Rust scenarios these
    // scripts replaced reported for the same seed (commit 978ebcc: `mmemu
    // run NAME --iterations 4 --seed 7 --json`, 4 CPUs): the same
    // seed-drawn choices in the same order (the program digest), rounds,
    // syscalls and page faults.  Counts that depend on timing (which CPU
    // is in the mm when a flush goes out) differ run to run, for the Rust
    // scenarios too.  munmap-storm's peeks fault or not as the
    // neighbour's region is mapped or not at that moment: timing too.
    // exit-storm's script is the same program written with spawn / join
    // (its digest is the script's own: the Rust one drew the second
    // thread's CPU and pages from one stream for all CPUs), the same 1280
    // page faults; its 96 syscalls are the Rust one's 64 plus the execve
    // and the clone of each of the 16 processes, which it did not count.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts");
    for (name, digest, ops, faults) in [
        ("munmap-storm", "0x3cecf7b8d41a0335", 112, None),
        ("madvise-dontneed", "0x408314a8d6139a03", 2052, Some(2048)),
        ("mprotect-pingpong", "0x408314a8d6139a03", 129, Some(128)),
        ("exit-storm", "0xbc85bffa66af1569", 96, Some(1280)),
    ] {
        let report = |what: &str| -> serde_json::Value {
            let o = mmemu(&["run", what, "--iterations", "4", "--seed", "7", "--json", "--no-pin"]);
            assert_eq!(o.status.code(), Some(0), "{what}: {o:?}");
            serde_json::from_slice(&o.stdout).expect("json report")
        };
        let by_name = report(name);
        let file = report(dir.join(format!("{name}.mmemu")).to_str().expect("utf-8 path"));
        for key in ["scenario", "program_digest", "iterations", "ops", "cpus", "params", "arch", "kernel"] {
            assert_eq!(by_name[key], file[key], "{name}: {key}");
        }
        assert_eq!(by_name["program_digest"], digest, "{name}");
        assert_eq!(by_name["iterations"], 16, "{name}");
        assert_eq!(by_name["ops"], ops, "{name}");
        if let Some(f) = faults {
            assert_eq!(by_name["counters"]["pgfault"], f, "{name}: page faults");
        }
    }
}

#[test]
fn every_example_is_shipped_and_listed() {
    let files: Vec<String> = examples()
        .iter()
        .map(|(p, _)| std::path::Path::new(p).file_name().expect("file name").to_string_lossy().into_owned())
        .collect();
    let shipped: Vec<&str> = workloads::script::shipped::SHIPPED.iter().map(|(f, _)| *f).collect();
    assert_eq!(files, shipped, "workloads/src/script/shipped.rs lists examples/scripts/*.mmemu");
    let o = mmemu(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let names: Vec<&str> =
        v["scripts"].as_array().expect("scripts").iter().map(|s| s["name"].as_str().unwrap_or("")).collect();
    assert_eq!(names.len(), files.len());
    assert!(names.contains(&"tlb-flush2"), "{names:?}");
    let exit_storm =
        v["scripts"].as_array().expect("scripts").iter().find(|s| s["name"] == "exit-storm").expect("exit-storm");
    assert_eq!(exit_storm["file"], "examples/scripts/exit-storm.mmemu");
    // The storm scenarios say which script they run; the races are Rust.
    let sc = v["scenarios"].as_array().expect("scenarios");
    let script_of = |n: &str| sc.iter().find(|s| s["name"] == n).map(|s| s["script"].clone());
    assert_eq!(script_of("exit-storm"), Some(serde_json::json!("examples/scripts/exit-storm.mmemu")));
    assert_eq!(script_of("nested-zap"), Some(serde_json::Value::Null));
    // A shipped script runs by its name when no scenario has it.
    let o = mmemu(&["run", "tlb-flush2", "--iterations", "1", "--json", "--no-pin"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["scenario"], "tlb-flush2");
}

#[test]
fn a_held_thread_runs_when_started() {
    // B waits on CPU1 (a lazy kernel thread) until A starts it; then both
    // meet, B reads what A wrote, and A's MADV_DONTNEED must reach CPU1.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page\n  write R[0] = 9\n  start B\n  barrier in\n  barrier read\n  madvise R dontneed\n  barrier zapped\n}\n\
               thread B on cpu 1 in P held {\n  barrier in\n  read R[0] expect 9\n  barrier read\n  barrier zapped\n  read R[0] expect 0\n}\nexpect reads failed == 0\nexpect violations == 0\nexpect leaked == 0\n";
    let r = run_src(src, workloads::budget::Budget::Iterations(1), emu_cpu::MachineConfig::default());
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
    assert_eq!(r.reads_failed, 0);
    assert!(r.outcome.measure.per_cpu["irq_tlb_count"][1] >= 1, "the zap reached CPU1");
}

#[test]
fn a_script_that_deadlocks_at_run_time_ends_as_the_watchdogs_error() {
    // A faults (its region is gone) before the barrier B waits at: no
    // static check sees it; the hang detector ends the run.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page\n  munmap R\n  write R[0]\n  barrier b\n}\nthread B on cpu 1 in P {\n  barrier b\n}\n";
    let r = run_src(
        src,
        workloads::budget::Budget::Iterations(1),
        emu_cpu::MachineConfig { hang_timeout: std::time::Duration::from_millis(300), ..Default::default() },
    );
    let e = r.outcome.error.expect("the run must end in an error");
    assert!(e.is_hang(), "{e}");
}

#[test]
fn mmemu_reproduce_with_a_script_runs_it_with_the_fix_off_and_on() {
    // A lazy CPU keeps the freed tables in its paging-structure cache but
    // never walks again: no violation either way, so this script does not
    // reproduce lazy-tlb-freed-tables (exit 1); both runs are the script,
    // with the switch reverted in the first only.
    let p = temp_script(
        "lazy.mmemu",
        "script lazy-tables\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page at 0x60000000\n  write R[0] = 1\n  barrier mapped\n  barrier walked\n  munmap R\n}\n\
         thread B on cpu 1 in P {\n  barrier mapped\n  read R[0] expect 1\n  barrier walked\n  sleep\n}\n",
    );
    let o = mmemu(&[
        "reproduce",
        "lazy-tlb-freed-tables",
        "--script",
        p.to_str().expect("utf-8 path"),
        "--json",
        "--no-pin",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["scenario"], "lazy-tables");
    assert_eq!(v["reproduced"], false);
    assert_eq!(v["fix_off"]["reverted"], serde_json::json!(["lazy-tlb-freed-tables"]));
    assert_eq!(v["fix_on"]["reverted"], serde_json::json!([]));
    assert_eq!(v["fix_off"]["verdict"], "ok");
    assert_eq!(v["fix_on"]["verdict"], "ok");
    let o = mmemu(&["reproduce", "lazy-tlb-freed-tables", "--script", p.to_str().expect("utf-8 path"), "--no-pin"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(
            "mmemu reproduce lazy-tlb-freed-tables (commit 016c4d92cd16): scenario lazy-tables on x86, 2 CPUs"
        ),
        "{out}"
    );
}

/// Run the script source `src` (named t.mmemu) on 2 CPUs.
fn run_src(
    src: &str,
    budget: workloads::budget::Budget,
    machine: emu_cpu::MachineConfig,
) -> workloads::script::interp::ScriptRun {
    let s = workloads::script::parse("t.mmemu", src).unwrap_or_else(|e| panic!("{e}"));
    let c = workloads::script::check("t.mmemu", &s, &[]).unwrap_or_else(|e| panic!("{e}"));
    let ctx = workloads::scenarios::Ctx {
        kcfg: mm_core::KernelConfig { nr_cpus: 2, ..mm_core::KernelConfig::default() },
        machine,
        budget,
        seed: 1,
        params: Default::default(),
        stop_on_violation: false,
    };
    workloads::script::interp::run("t.mmemu", &s, &c, &ctx).unwrap_or_else(|e| panic!("{e}"))
}

/// `run_src` for one round.
fn run_source(src: &str) -> workloads::script::interp::ScriptRun {
    run_src(src, workloads::budget::Budget::Iterations(1), emu_cpu::MachineConfig::default())
}

#[test]
fn a_spawned_thread_runs_on_its_cpu_and_leaves_it_lazy_in_the_mm() {
    // S runs on the idle CPU1 and ends there: CPU1 keeps P loaded lazily
    // (x86 v6.12).  MADV_DONTNEED frees no table, so flush_tlb_mm_range
    // skips the lazy CPU (tlb_is_not_lazy): no IPI.  The munmap frees the
    // PTE table: freed_tables interrupts every CPU of mm_cpumask, lazy or
    // not: exactly one IPI to CPU1.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 1 page at 0x60000000\n  write R[0] = 7\n  spawn S on cpu 1 {\n    read R[0] expect 7\n    write R[0] = 8\n  }\n  join S\n  read R[0] expect 8\n  madvise R dontneed\n  read R[0] expect 0\n  munmap R\n}\n\
               expect interrupts TLB on cpu 1 == 1\nexpect interrupts TLB on cpu 0 == 0\nexpect reads failed == 0\nexpect violations == 0\nexpect leaked == 0\n";
    let r = run_source(src);
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
    // mmap, spawn (clone), madvise, munmap.
    assert_eq!(r.outcome.ops, 4);
}

#[test]
fn a_spawned_thread_runs_while_its_cpus_thread_is_blocked() {
    // B holds CPU1 until barrier b, which A reaches only after joining S,
    // queued on CPU1: S must run while B waits (the scheduler picking the
    // woken task), or the run hangs.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 2 pages\n  write R = 1\n  spawn S on cpu 1 {\n    write R[1] = 5\n  }\n  join S\n  read R[1] expect 5\n  barrier b\n}\n\
               thread B on cpu 1 in P {\n  barrier b\n}\nexpect reads failed == 0\nexpect violations == 0\nexpect leaked == 0\n";
    let r = run_source(src);
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
}

#[test]
fn an_unjoined_spawned_thread_ends_with_its_block() {
    // The exec'd process exits only after S, which still writes into it.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  exec C {\n    mmap R anon 64 pages\n    spawn S on cpu 1 {\n      write R\n    }\n  }\n}\nexpect violations == 0\nexpect leaked == 0\nexpect counter pgfault == 64\n";
    let r = run_source(src);
    assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
    assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
}

#[test]
fn threads_meeting_at_barriers_agree_on_the_last_round_under_a_time_budget() {
    // A's rounds are long, B's short: when the time is up one of them is
    // usually mid-round.  Every round someone started runs to its end on
    // both (the other waits for it at the barrier), so the run ends at
    // once with the same number of rounds on each, never as a hang.
    let src = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon 64 pages\n  repeat until budget {\n    for i in 0..64 {\n      write R[$i]\n    }\n    barrier a\n    madvise R dontneed\n    barrier b\n  }\n}\n\
               thread B on cpu 1 in P {\n  repeat until budget {\n    barrier a\n    barrier b\n  }\n}\nexpect violations == 0\n";
    let mut rounds = 0;
    for _ in 0..10 {
        let machine = emu_cpu::MachineConfig { hang_timeout: std::time::Duration::from_secs(3), ..Default::default() };
        let r = run_src(src, workloads::budget::Budget::Seconds(0.03), machine);
        assert!(r.outcome.error.is_none(), "{:?}", r.outcome.error);
        assert!(r.failed.is_empty(), "{}", r.failed.join("\n"));
        assert_eq!(r.outcome.iterations % 2, 0, "both threads ran the same rounds: {}", r.outcome.iterations);
        rounds += r.outcome.iterations;
    }
    // A loaded host may spend a whole 30 ms budget starting the threads;
    // over ten runs some rounds ran.
    assert!(rounds > 0);
}

#[test]
fn anon_shared_hugetlb_and_thp_mappings_run() {
    // MAP_SHARED|MAP_ANONYMOUS: a forked child writes what the parent then
    // reads (one shmem object), and the object goes with its last unmap.
    let shm = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R anon-shared 4 pages\n  write R[0] = 3\n  fork C {\n    read R[0] expect 3\n    write R[0] = 4\n  }\n  read R[0] expect 4\n  munmap R\n}\n\
               expect reads failed == 0\nexpect violations == 0\nexpect leaked == 0\n";
    // hugetlb: one 2 MiB page both CPUs read; its munmap, while B spins in
    // the mm at a barrier, interrupts CPU1 exactly once.
    let huge = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R hugetlb 512 pages at 0x40000000\n  write R[0] = 1\n  write R[511] = 2\n  barrier m\n  barrier r\n  munmap R\n  barrier u\n}\n\
                thread B on cpu 1 in P {\n  barrier m\n  read R[0] expect 1\n  read R[511] expect 2\n  barrier r\n  barrier u\n  spin\n}\n\
                expect reads failed == 0\nexpect violations == 0\nexpect leaked == 0\nexpect interrupts TLB on cpu 1 == 1\nexpect interrupts TLB on cpu 0 == 0\n";
    // thp: base pages at fault, one PMD-mapped THP after the collapse (the
    // holes read 0).
    let thp = "script s\ncpus 2\nprocess P\nthread A on cpu 0 in P {\n  mmap R thp 512 pages at 0x40000000\n  write R[0..8] = 7\n  collapse R\n  read R[0] expect 7\n  read R[100] expect 0\n  munmap R\n}\n\
               expect reads failed == 0\nexpect violations == 0\nexpect leaked == 0\nexpect counter thp_collapse_alloc == 1\nexpect counter pgfault == 8\n";
    for (what, src) in [("anon-shared", shm), ("hugetlb", huge), ("thp", thp)] {
        let r = run_source(src);
        assert!(r.outcome.error.is_none(), "{what}: {:?}", r.outcome.error);
        assert!(r.failed.is_empty(), "{what}: {}", r.failed.join("\n"));
    }
}

#[test]
fn every_shipped_script_runs_clean_on_a_short_budget() {
    // CI's run of every shipped script: its header's rounds budget up to
    // 100 rounds (the expectations are written for it), 3 rounds of the
    // storms; the header's CPUs, arch and reverts; no machine error, every
    // expectation met (the race scripts' expected violations included).
    for (file, _) in workloads::script::shipped::SHIPPED {
        let name = format!("examples/scripts/{file}");
        let r = run_example(file, Some(3).filter(|_| header_rounds(file) > 100));
        assert!(r.outcome.error.is_none(), "{name}: {:?}", r.outcome.error);
        assert!(r.failed.is_empty(), "{name}:\n{}", r.failed.join("\n"));
    }
}
