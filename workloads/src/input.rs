//! What the user typed, checked: names with a "did you mean" for near
//! misses, and decimal integers in a range.  The command line's value
//! parsers and the scenario registry (`--param`, scenario names) both use
//! it, so their messages read alike.

/// Near misses of `input` among `names` (at most 3, best first), for
/// "did you mean": the same name up to case and `_`/`-` (which are
/// suggested, never accepted); else the names it is a prefix of (or that
/// are a prefix of it), if no more than 3; else the closest by
/// Damerau-Levenshtein distance (a transposition is one edit), within one
/// edit per 5 characters.
pub fn suggest<'a>(input: &str, names: &[&'a str]) -> Vec<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace('_', "-");
    let n = norm(input);
    if n.is_empty() {
        return Vec::new();
    }
    let cands: Vec<(String, &'a str)> = names.iter().map(|c| (norm(c), *c)).collect();
    if let Some((_, c)) = cands.iter().find(|(c, _)| *c == n) {
        return vec![*c];
    }
    let dist = |c: &str| strsim::damerau_levenshtein(&n, c);
    let mut prefix: Vec<&(String, &'a str)> =
        cands.iter().filter(|(c, _)| c.starts_with(&n) || (c.len() >= 3 && n.starts_with(c.as_str()))).collect();
    if (1..=3).contains(&prefix.len()) {
        prefix.sort_by_key(|(c, _)| dist(c));
        return prefix.iter().map(|(_, c)| *c).collect();
    }
    let limit = (1 + n.chars().count() / 5).min(3);
    let best = match cands.iter().map(|(c, _)| dist(c)).min() {
        Some(d) if d <= limit => d,
        _ => return Vec::new(),
    };
    cands.iter().filter(|(c, _)| dist(c) == best).take(3).map(|(_, c)| *c).collect()
}

/// `unknown WHAT 'INPUT' (did you mean 'X'?); allowed: NAMES` (or
/// `empty WHAT name; ...`).
pub fn unknown_name(what: &str, input: &str, names: &[&str]) -> String {
    if input.is_empty() {
        return format!("empty {what} name; allowed: {}", names.join(", "));
    }
    format!("unknown {what} '{input}'{}; allowed: {}", did_you_mean(&suggest(input, names)), names.join(", "))
}

/// Why a string is not a decimal integer in range (`parse_decimal`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadNumber {
    Empty,
    NotDecimal,
    OutOfRange,
}

impl BadNumber {
    pub fn what(self) -> &'static str {
        match self {
            BadNumber::Empty => "empty value",
            BadNumber::NotDecimal => "not a decimal number (digits only, no sign or spaces)",
            BadNumber::OutOfRange => "out of range",
        }
    }
}

/// A decimal integer in `min..=max`: ASCII digits only, so `+4`, ` 4`,
/// `4 ` and `0x4` are refused rather than read as (or next to) 4; too many
/// digits for a u64 is out of range.
pub fn parse_decimal(s: &str, min: u64, max: u64) -> Result<u64, BadNumber> {
    if s.is_empty() {
        return Err(BadNumber::Empty);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadNumber::NotDecimal);
    }
    match s.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(BadNumber::OutOfRange),
    }
}

/// ` (did you mean 'a'?)`, ` (did you mean 'a' or 'b'?)`, or nothing.
pub fn did_you_mean<S: AsRef<str>>(names: &[S]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("'{}'", n.as_ref())).collect();
    match q.split_last() {
        None => String::new(),
        Some((last, [])) => format!(" (did you mean {last}?)"),
        Some((last, rest)) => format!(" (did you mean {} or {last}?)", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggest_matches_case_underscore_prefix_and_typos() {
        let names = ["munmap-storm", "mprotect-pingpong", "khugepaged-gup", "khugepaged-gup-file", "x86", "arm64"];
        assert_eq!(suggest("munmap_storm", &names), ["munmap-storm"]);
        assert_eq!(suggest("MUNMAP-STORM", &names), ["munmap-storm"]);
        assert_eq!(suggest("munmap-strom", &names), ["munmap-storm"]);
        assert_eq!(suggest("mprotect", &names), ["mprotect-pingpong"]);
        assert_eq!(suggest("khugepaged", &names), ["khugepaged-gup", "khugepaged-gup-file"]);
        assert_eq!(suggest("x68", &names), ["x86"]);
        assert_eq!(suggest("arm", &names), ["arm64"]);
        assert!(suggest("", &names).is_empty());
        assert!(suggest("zzz", &names).is_empty());
        assert!(suggest("sparc", &names).is_empty());
        // More than 3 names start with "m": no prefix guess, and too far for a typo.
        assert!(suggest("m", &["madvise", "mmap", "mprotect", "munmap"]).is_empty());
    }

    #[test]
    fn parse_decimal_is_digits_in_range() {
        assert_eq!(parse_decimal("42", 1, 100), Ok(42));
        assert_eq!(parse_decimal("007", 1, 100), Ok(7));
        assert_eq!(parse_decimal("18446744073709551615", 0, u64::MAX), Ok(u64::MAX));
        assert_eq!(parse_decimal("18446744073709551616", 0, u64::MAX), Err(BadNumber::OutOfRange));
        assert_eq!(parse_decimal("0", 1, 100), Err(BadNumber::OutOfRange));
        assert_eq!(parse_decimal("", 1, 100), Err(BadNumber::Empty));
        for bad in ["+4", "-4", " 4", "4 ", "4_0", "0x4", "4.0", "\u{0664}"] {
            assert_eq!(parse_decimal(bad, 0, 100), Err(BadNumber::NotDecimal), "{bad:?}");
        }
    }
}
