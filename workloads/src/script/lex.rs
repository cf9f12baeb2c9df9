//! Tokens of one line of a script, with winnow: names, integers (decimal,
//! 0x hex, `_` separators, K/M/G suffixes), decimals (`6.12`, `1.5`),
//! `$vars`, strings and punctuation.  `#` ends the line.  Every token
//! keeps its column and its text, so that a parse error can say what it
//! found.

use winnow::combinator::{alt, opt, preceded};
use winnow::token::{one_of, take_while};
use winnow::{ModalResult, Parser};

use super::ast::Span;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Name(String),
    Int(u64),
    /// Digits, a dot and digits (`6.12`): kernel versions, rates.
    Decimal(String),
    Var(String),
    Str(String),
    Punct(&'static str),
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub tok: Tok,
    pub span: Span,
    /// As written (for "found '…'").
    pub text: String,
}

/// Why a line does not lex: the column and the message.
pub(super) struct LexError {
    pub col: u32,
    pub msg: String,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn name<'i>(i: &mut &'i str) -> ModalResult<&'i str> {
    (one_of(is_name_start), take_while(0.., is_name_char)).take().parse_next(i)
}

/// A name's trailing `-` is punctuation (`$n-` then `- 1`: reported at
/// the dash, not as a name `n-`).
fn trim_name(s: &str) -> &str {
    s.trim_end_matches('-')
}

const PUNCT: &[&str] =
    &["+-", "..", "==", "!=", "<=", ">=", "{", "}", "[", "]", "(", ")", ",", "=", "<", ">", "+", "-", "*", "/", "%"];

fn punct(i: &mut &str) -> ModalResult<&'static str> {
    for p in PUNCT {
        if i.starts_with(p) {
            *i = &i[p.len()..];
            return Ok(p);
        }
    }
    Err(winnow::error::ErrMode::Backtrack(winnow::error::ContextError::new()))
}

enum Number {
    Int(u64),
    Decimal(String),
    TooBig,
}

fn number(i: &mut &str) -> ModalResult<Number> {
    let hex = preceded(alt(("0x", "0X")), take_while(1.., |c: char| c.is_ascii_hexdigit() || c == '_'))
        .map(|d: &str| (d.to_string(), 16));
    let dec = take_while(1.., |c: char| c.is_ascii_digit() || c == '_').map(|d: &str| (d.to_string(), 10));
    let (digits, radix) = alt((hex, dec)).parse_next(i)?;
    if radix == 10 {
        // `6.12`: a dot followed by a digit (`0..4` is a range).
        let frac: Option<&str> = opt(preceded('.', take_while(1.., |c: char| c.is_ascii_digit()))).parse_next(i)?;
        if let Some(f) = frac {
            return Ok(Number::Decimal(format!("{}.{f}", digits.replace('_', ""))));
        }
    }
    let v = u64::from_str_radix(&digits.replace('_', ""), radix);
    // K / M / G: only when no name character follows (`2ms` is 2, `ms`).
    let mut mult = 1u64;
    let mut chars = i.chars();
    if let Some(c @ ('K' | 'M' | 'G')) = chars.next() {
        if !chars.next().is_some_and(is_name_char) {
            mult = match c {
                'K' => 1 << 10,
                'M' => 1 << 20,
                _ => 1 << 30,
            };
            *i = &i[1..];
        }
    }
    Ok(match v.ok().and_then(|v| v.checked_mul(mult)) {
        Some(n) => Number::Int(n),
        None => Number::TooBig,
    })
}

/// The tokens of `line` (line number `no`), up to a `#` comment.
pub(super) fn tokens(line: &str, no: u32) -> Result<Vec<Token>, LexError> {
    let mut out = Vec::new();
    let mut rest = line;
    let col_of = |rest: &str| (line[..line.len() - rest.len()].chars().count() + 1) as u32;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r']);
        if rest.is_empty() || rest.starts_with('#') {
            return Ok(out);
        }
        let col = col_of(rest);
        let span = Span { line: no, col };
        let before = rest;
        let c = rest.chars().next().unwrap_or(' ');
        let tok = if is_name_start(c) {
            let n = name(&mut rest).map_err(|_| LexError { col, msg: "bad name".into() })?;
            let t = trim_name(n);
            rest = &before[t.len()..];
            Tok::Name(t.to_string())
        } else if c.is_ascii_digit() {
            match number(&mut rest) {
                Ok(Number::Int(n)) => Tok::Int(n),
                Ok(Number::Decimal(d)) => Tok::Decimal(d),
                Ok(Number::TooBig) => {
                    let text = &before[..before.len() - rest.len()];
                    return Err(LexError {
                        col,
                        msg: format!("number '{text}' is too large; allowed 0..={}", u64::MAX),
                    });
                }
                Err(_) => {
                    return Err(LexError { col, msg: "found a malformed number; allowed digits, 0x hex digits".into() })
                }
            }
        } else if c == '$' {
            rest = &rest[1..];
            match name(&mut rest) {
                Ok(n) => {
                    let t = trim_name(n);
                    rest = &before[1 + t.len()..];
                    Tok::Var(t.to_string())
                }
                Err(_) => {
                    return Err(LexError {
                        col,
                        msg: "found '$' without a name; allowed $NAME (a param, a for variable, $cpu, $ncpus)".into(),
                    })
                }
            }
        } else if c == '"' {
            match rest[1..].find('"') {
                Some(end) => {
                    let s = rest[1..1 + end].to_string();
                    rest = &rest[end + 2..];
                    Tok::Str(s)
                }
                None => {
                    return Err(LexError {
                        col,
                        msg: "found a string that does not end on its line; allowed \"TEXT\" on one line".into(),
                    })
                }
            }
        } else {
            match punct(&mut rest) {
                Ok(p) => Tok::Punct(p),
                Err(_) => {
                    return Err(LexError {
                        col,
                        msg: format!(
                            "found '{c}'; allowed a name, a number, $NAME, \"TEXT\", punctuation ({}) or # comment",
                            PUNCT.join(" ")
                        ),
                    })
                }
            }
        };
        let text = before[..before.len() - rest.len()].to_string();
        out.push(Token { tok, span, text });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokens(s, 1).unwrap_or_else(|e| panic!("{}", e.msg)).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn names_numbers_ranges_and_suffixes() {
        use Tok::*;
        assert_eq!(
            toks("write R[0..$pages] = 0x1_0 # x"),
            vec![
                Name("write".into()),
                Name("R".into()),
                Punct("["),
                Int(0),
                Punct(".."),
                Var("pages".into()),
                Punct("]"),
                Punct("="),
                Int(16)
            ]
        );
        assert_eq!(toks("1M 2K 3G 2ms"), vec![Int(1 << 20), Int(2048), Int(3 << 30), Int(2), Name("ms".into())]);
        assert_eq!(toks("kernel 6.12"), vec![Name("kernel".into()), Decimal("6.12".into())]);
        assert_eq!(toks("== 1 +- 10%"), vec![Punct("=="), Int(1), Punct("+-"), Int(10), Punct("%")]);
        assert_eq!(toks("gup-fast file-shared"), vec![Name("gup-fast".into()), Name("file-shared".into())]);
    }

    #[test]
    fn errors_name_the_column() {
        let e = tokens("cpus 99999999999999999999", 1).expect_err("too big");
        assert_eq!(
            (e.col, e.msg.as_str()),
            (6, "number '99999999999999999999' is too large; allowed 0..=18446744073709551615")
        );
        let e = tokens("about \"x", 1).expect_err("open string");
        assert_eq!(e.col, 7);
        let e = tokens("a @", 1).expect_err("bad char");
        assert_eq!(e.col, 3);
    }
}
