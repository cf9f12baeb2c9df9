//! The scripts shipped in the binary: examples/scripts/*.mmemu, embedded
//! (tests/scripts.rs checks this list is the directory).  `mmemu list`
//! shows them; `mmemu run NAME` runs one by its script name when no
//! built-in scenario has that name.

/// (file name, source), in file-name order.
pub const SHIPPED: &[(&str, &str)] = &[
    ("dontneed-sibling-sleeps.mmemu", include_str!("../../../examples/scripts/dontneed-sibling-sleeps.mmemu")),
    ("dontneed-sibling-spins.mmemu", include_str!("../../../examples/scripts/dontneed-sibling-spins.mmemu")),
    ("exit-storm.mmemu", include_str!("../../../examples/scripts/exit-storm.mmemu")),
    ("file-contents-cow.mmemu", include_str!("../../../examples/scripts/file-contents-cow.mmemu")),
    ("fork-cow.mmemu", include_str!("../../../examples/scripts/fork-cow.mmemu")),
    ("gup-table-free-stall-rcu.mmemu", include_str!("../../../examples/scripts/gup-table-free-stall-rcu.mmemu")),
    ("gup-table-free-stall.mmemu", include_str!("../../../examples/scripts/gup-table-free-stall.mmemu")),
    ("madvise-dontneed.mmemu", include_str!("../../../examples/scripts/madvise-dontneed.mmemu")),
    ("mprotect-1.mmemu", include_str!("../../../examples/scripts/mprotect-1.mmemu")),
    ("mprotect-64.mmemu", include_str!("../../../examples/scripts/mprotect-64.mmemu")),
    ("mprotect-pingpong.mmemu", include_str!("../../../examples/scripts/mprotect-pingpong.mmemu")),
    ("munmap-frees-table.mmemu", include_str!("../../../examples/scripts/munmap-frees-table.mmemu")),
    ("munmap-storm.mmemu", include_str!("../../../examples/scripts/munmap-storm.mmemu")),
    ("nested-zap-stall.mmemu", include_str!("../../../examples/scripts/nested-zap-stall.mmemu")),
    ("sva-dontneed.mmemu", include_str!("../../../examples/scripts/sva-dontneed.mmemu")),
    ("tlb-flush1.mmemu", include_str!("../../../examples/scripts/tlb-flush1.mmemu")),
    ("tlb-flush2.mmemu", include_str!("../../../examples/scripts/tlb-flush2.mmemu")),
    ("tlb-flush3.mmemu", include_str!("../../../examples/scripts/tlb-flush3.mmemu")),
    ("truncate-mapped.mmemu", include_str!("../../../examples/scripts/truncate-mapped.mmemu")),
];

/// The script name of a source (its `script NAME` line), if it parses.
pub fn name_of(src: &str) -> Option<String> {
    super::parse("", src).ok().map(|s| s.name.text)
}

/// The shipped script named `name`: (file name, source).
pub fn find(name: &str) -> Option<(&'static str, &'static str)> {
    SHIPPED.iter().copied().find(|(_, src)| name_of(src).as_deref() == Some(name))
}
