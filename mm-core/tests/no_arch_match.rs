//! Arch policy lives in `mm-core/src/arch/` only (issue 12).
//!
//! The arch is chosen once, when the `Kernel` is built (`arch::arch_ops`);
//! everything else asks `Kernel::arch`.  This test reads the sources of
//! mm-core, emu-cpu and workloads and fails on a `match` whose scrutinee
//! names an arch, or on a named `Arch` variant (`Arch::X86`, `Arch::Arm64`,
//! `Arch::GenericNoRange`, `Arch::*`, `Arch::{..}`), anywhere but in
//! - `mm-core/src/arch/` (the profiles and the one `match` that picks one),
//! - `mm-core/src/config.rs` (the enum, its names and parsing),
//! - test code (`tests/`, modules declared under `#[cfg(test)]` or
//!   `#[cfg(all(test, ..))]`, inline or in their own file),
//! - configuration: lines that name the arch a scenario or a race driver
//!   runs on, never what the kernel does there (`CONFIGURATION` below).
//!
//! Comments are not read.

use std::fs;
use std::path::{Path, PathBuf};

/// The source trees read, relative to the workspace root.
const ROOTS: &[&str] = &["mm-core/src", "emu-cpu/src", "workloads/src"];

/// Where arch names may appear freely.
const ARCH_HOMES: &[&str] = &["mm-core/src/arch/", "mm-core/src/config.rs"];

const VARIANTS: &[&str] = &["Arch::X86", "Arch::Arm64", "Arch::GenericNoRange", "Arch::*", "Arch::{"];

/// Lines of the shape of a scenario registry constant: the arch a scenario
/// defaults to or requires, and the arch `mmemu reproduce` runs a switch's
/// scenario on (`EXPOSERS`).  Configuration, not policy.
const CONFIGURATION_SHAPES: &[&str] = &["ArchReq::Default(Arch::", "ArchReq::Requires(Arch::", "Exposer { fix: Fix::"];

/// Single lines that pick or check the arch a run is configured with
/// (file name, the line without its indentation).  Configuration, not policy.
const CONFIGURATION: &[(&str, &str)] = &[
    // The RACES.md “khugepaged collapse versus GUP-fast” race driver runs on the arm64 profile, whatever it was given.
    ("khugepaged_gup.rs", "p.kcfg.arch = Arch::Arm64;"),
    ("khugepaged_gup.rs", "kcfg.arch = Arch::Arm64;"),
    // Race drivers refusing a profile they do not model (like ArchReq::Requires).
    ("iommu_sva.rs", "if p.kcfg.arch != Arch::Arm64 {"),
    ("lazy_tlb.rs", "if p.kcfg.arch != Arch::X86 {"),
    ("pfnmap_unmap.rs", "if p.kcfg.arch != Arch::GenericNoRange {"),
    // `mmemu list` printing a scenario's ArchReq (default / required); the
    // second is where main's workloads-structure merge put it.
    ("cli.rs", "let arch = match s.arch {"),
    ("output.rs", "let arch = match s.arch {"),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("mm-core is in the workspace").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_test_cfg(line: &str) -> bool {
    let l = line.trim();
    l.starts_with("#[cfg(test)]") || l.starts_with("#[cfg(all(test")
}

/// `mod NAME;` / `mod NAME {` after an attribute line: (NAME, inline).
fn mod_decl(line: &str) -> Option<(&str, bool)> {
    let l = line.trim().strip_prefix("pub ").unwrap_or(line.trim());
    let rest = l.strip_prefix("mod ")?;
    let name = rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next()?;
    Some((name, rest.trim_end().ends_with('{')))
}

/// The file of out-of-line module `name` declared in `file`.
fn module_file(file: &Path, name: &str) -> [PathBuf; 2] {
    let dir = file.parent().expect("a file has a directory");
    let stem = file.file_stem().expect("a file has a name").to_string_lossy();
    let base = if stem == "mod" || stem == "lib" || stem == "main" { dir.to_path_buf() } else { dir.join(&*stem) };
    [base.join(format!("{name}.rs")), base.join(name).join("mod.rs")]
}

/// The lines of `text` outside inline test modules (1-based numbers), and
/// the files of out-of-line test modules it declares.
fn non_test_lines(file: &Path, text: &str) -> (Vec<(usize, String)>, Vec<PathBuf>) {
    let lines: Vec<&str> = text.lines().collect();
    let (mut kept, mut test_files) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < lines.len() {
        if is_test_cfg(lines[i]) {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim().starts_with("#[") {
                j += 1;
            }
            if let Some((name, inline)) = lines.get(j).and_then(|l| mod_decl(l)) {
                if inline {
                    let indent = &lines[j][..lines[j].len() - lines[j].trim_start().len()];
                    let close = format!("{indent}}}");
                    let end = (j + 1..lines.len()).find(|&k| lines[k] == close).expect("test module is closed");
                    i = end + 1;
                } else {
                    test_files.extend(module_file(file, name));
                    i = j + 1;
                }
                continue;
            }
        }
        let code = lines[i].split("//").next().unwrap_or("");
        kept.push((i + 1, code.to_string()));
        i += 1;
    }
    (kept, test_files)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where `pat` starts in `code` not inside a longer identifier.
fn occurrences<'a>(code: &'a str, pat: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(pat).map(|(at, _)| at).filter(move |&at| !code[..at].chars().next_back().is_some_and(is_ident))
}

/// Does `code` decide something by the arch?  Returns what it found.
fn arch_policy(code: &str) -> Option<String> {
    if let Some(v) = VARIANTS.iter().find(|v| occurrences(code, v).next().is_some()) {
        return Some(format!("names `{v}`"));
    }
    for at in occurrences(code, "match") {
        let rest = &code[at + "match".len()..];
        if rest.chars().next().is_some_and(is_ident) {
            continue; // matches!, match_indices, ...
        }
        let scrutinee = rest.split('{').next().unwrap_or("");
        if scrutinee.split(|c: char| !is_ident(c)).any(|w| w == "arch") {
            return Some(format!("matches on `{}`", scrutinee.trim()));
        }
    }
    None
}

fn allowed(file: &Path, code: &str) -> bool {
    let line = code.trim();
    let name = file.file_name().expect("a file has a name").to_string_lossy();
    CONFIGURATION_SHAPES.iter().any(|s| line.contains(s)) || CONFIGURATION.iter().any(|(f, l)| *f == name && *l == line)
}

/// Every place outside the allowed ones that decides by the arch.
fn findings(root: &Path) -> (Vec<String>, usize) {
    let mut files = Vec::new();
    for r in ROOTS {
        let before = files.len();
        rust_files(&root.join(r), &mut files);
        assert!(files.len() - before >= 3, "{r}: only {} source files; was it moved?", files.len() - before);
    }
    let texts: Vec<(PathBuf, String)> =
        files.into_iter().map(|f| (f.clone(), fs::read_to_string(&f).expect("readable source"))).collect();
    let parsed: Vec<_> = texts.iter().map(|(f, t)| (f, non_test_lines(f, t))).collect();
    let test_files: Vec<&PathBuf> = parsed.iter().flat_map(|(_, (_, t))| t).collect();
    let mut out = Vec::new();
    for (file, (lines, _)) in &parsed {
        let rel = file.strip_prefix(root).expect("under the workspace").to_string_lossy().replace('\\', "/");
        if ARCH_HOMES.iter().any(|h| rel.starts_with(h)) || test_files.contains(file) {
            continue;
        }
        for (n, code) in lines {
            if let Some(what) = arch_policy(code) {
                if !allowed(file, code) {
                    out.push(format!("{rel}:{n}: {what}: {}", code.trim()));
                }
            }
        }
    }
    (out, parsed.len())
}

#[test]
fn no_match_on_the_arch_outside_arch() {
    let (found, scanned) = findings(&workspace());
    assert!(scanned > 50, "only {scanned} files read");
    assert!(
        found.is_empty(),
        "arch policy outside mm-core/src/arch/ (move it into the profiles, arch::ArchOps; a line that only \
         configures which arch a run uses belongs in CONFIGURATION of mm-core/tests/no_arch_match.rs):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_what_it_looks_for() {
    let f = Path::new("x.rs");
    for bad in [
        "match k.cfg.arch {",
        "let b = match cfg.arch {",
        "if k.cfg.arch == Arch::GenericNoRange {",
        "Arch::X86 | Arch::Arm64 => {}",
        "use mm_core::config::Arch::*;",
        "match self.k.arch.arch() {",
        "let x = if a { 1 } else { match arch { Arch::ALL => 0 } };",
    ] {
        assert!(arch_policy(bad).is_some() && !allowed(f, bad), "not seen: {bad}");
    }
    for fine in [
        "let arch = Arch::ALL;",
        "k.arch.tlb_flush(self);",
        "match sc {",
        "arch: ArchReq::Default(Arch::X86),",
        "s.parse::<MyArch::X86>()",
        "assert!(matches!(s.arch, ArchReq::Requires(_)));",
    ] {
        assert!(arch_policy(fine).is_none() || allowed(f, fine), "flagged: {fine}");
    }
    let text = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() { match arch { _ => {} } }\n}\nfn b() {}\n";
    let (kept, _) = non_test_lines(f, text);
    assert_eq!(kept.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 6], "the inline test module is skipped");
    let (_, files) = non_test_lines(Path::new("src/gather/mod.rs"), "#[cfg(all(test, not(mmemu_loom)))]\nmod tests;\n");
    assert_eq!(files[0], Path::new("src/gather/tests.rs"));
    let (_, files) = non_test_lines(Path::new("src/ops/gup.rs"), "#[cfg(test)]\nmod tests;\n");
    assert_eq!(files[0], Path::new("src/ops/gup/tests.rs"));
}
