//! Lines of tokens (`lex`) into the syntax tree (`ast`): a recursive
//! descent over lines (one statement each, blocks from a `{` at the end
//! of a line to a `}` alone on one) and over each line's tokens.  Every
//! error is one `ScriptError`: where, what was found, what is allowed.

use super::ast::*;
use super::lex::{tokens, Tok, Token};
use super::ScriptError;

/// Deepest nesting of blocks, and of parentheses in an expression: far
/// more than a script needs, few enough that no input exhausts the stack.
const MAX_DEPTH: usize = 32;
/// Most operators in one expression (the tree is evaluated recursively).
const MAX_OPS: usize = 256;

#[derive(Clone)]
struct Line {
    toks: Vec<Token>,
    /// Just past the last character (where "end of line" is reported).
    end: Span,
}

struct Parser<'f> {
    file: &'f str,
    lines: Vec<Line>,
    pos: usize,
    /// Where the file ends (for an unclosed block).
    eof: Span,
}

/// One line's tokens and a cursor.
struct Cur<'l, 'f> {
    file: &'f str,
    toks: &'l [Token],
    i: usize,
    end: Span,
    /// Operators read on this line so far (`MAX_OPS`).
    ops: usize,
}

type R<T> = Result<T, ScriptError>;

/// Parse `src`, naming the file `file` in errors.
pub fn parse(file: &str, src: &str) -> R<Script> {
    let mut lines = Vec::new();
    let mut last = 0u32;
    for (n, text) in src.split('\n').enumerate() {
        let no = u32::try_from(n + 1).unwrap_or(u32::MAX);
        last = no;
        let toks = tokens(text, no).map_err(|e| ScriptError::new(file, Span { line: no, col: e.col }, e.msg))?;
        if !toks.is_empty() {
            let end = Span { line: no, col: text.trim_end_matches(['\r', ' ', '\t']).chars().count() as u32 + 1 };
            lines.push(Line { toks, end });
        }
    }
    let mut p = Parser { file, lines, pos: 0, eof: Span { line: last.max(1), col: 1 } };
    p.script()
}

fn found(t: Option<&Token>) -> String {
    match t {
        Some(t) => format!("'{}'", t.text),
        None => "end of line".to_string(),
    }
}

impl<'l, 'f> Cur<'l, 'f> {
    fn peek(&self) -> Option<&'l Token> {
        self.toks.get(self.i)
    }
    fn span(&self) -> Span {
        self.peek().map_or(self.end, |t| t.span)
    }
    fn err<T>(&self, allowed: &str) -> R<T> {
        Err(ScriptError::new(self.file, self.span(), format!("found {}; allowed {allowed}", found(self.peek()))))
    }
    fn at_end(&self) -> bool {
        self.i >= self.toks.len()
    }
    /// Nothing more on this line.
    fn end(&self, allowed: &str) -> R<()> {
        if self.at_end() {
            Ok(())
        } else {
            self.err(&format!("{allowed} or the end of the line"))
        }
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Name(n), .. }) if n == w)
    }
    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Punct(q), .. }) if *q == p)
    }
    /// Consume the word `w` if it is next.
    fn word_if(&mut self, w: &str) -> bool {
        let yes = self.is_word(w);
        self.i += yes as usize;
        yes
    }
    fn punct_if(&mut self, p: &str) -> bool {
        let yes = self.is_punct(p);
        self.i += yes as usize;
        yes
    }
    fn expect_word(&mut self, w: &str, allowed: &str) -> R<()> {
        if self.word_if(w) {
            Ok(())
        } else {
            self.err(allowed)
        }
    }
    fn expect_punct(&mut self, p: &str, allowed: &str) -> R<()> {
        if self.punct_if(p) {
            Ok(())
        } else {
            self.err(allowed)
        }
    }
    fn name(&mut self, what: &str) -> R<Name> {
        match self.peek() {
            Some(Token { tok: Tok::Name(n), span, .. }) => {
                self.i += 1;
                Ok(Name { text: n.clone(), span: *span })
            }
            _ => self.err(what),
        }
    }
    /// One of `choices` (words), as its index.
    fn choice(&mut self, choices: &[&str]) -> R<usize> {
        if let Some(Token { tok: Tok::Name(n), .. }) = self.peek() {
            if let Some(i) = choices.iter().position(|c| c == n) {
                self.i += 1;
                return Ok(i);
            }
        }
        self.err(&choices.join(", "))
    }
    fn string(&mut self) -> R<String> {
        match self.peek() {
            Some(Token { tok: Tok::Str(s), .. }) => {
                self.i += 1;
                Ok(s.clone())
            }
            _ => self.err("\"TEXT\""),
        }
    }
    fn int(&mut self, allowed: &str) -> R<u64> {
        match self.peek() {
            Some(Token { tok: Tok::Int(n), .. }) => {
                self.i += 1;
                Ok(*n)
            }
            _ => self.err(allowed),
        }
    }

    // ---- expressions ----

    fn expr(&mut self) -> R<Expr> {
        self.expr_at(0)
    }
    fn expr_at(&mut self, depth: usize) -> R<Expr> {
        let mut e = self.term(depth)?;
        loop {
            let op = if self.punct_if("+") {
                BinOp::Add
            } else if self.punct_if("-") {
                BinOp::Sub
            } else {
                return Ok(e);
            };
            self.count_op()?;
            let r = self.term(depth)?;
            let span = e.span;
            e = Expr { kind: ExprKind::Bin(op, Box::new(e), Box::new(r)), span };
        }
    }
    fn count_op(&mut self) -> R<()> {
        self.ops += 1;
        if self.ops > MAX_OPS {
            return Err(ScriptError::new(
                self.file,
                self.span(),
                format!("found more than {MAX_OPS} operators on one line; allowed at most {MAX_OPS}"),
            ));
        }
        Ok(())
    }

    fn term(&mut self, depth: usize) -> R<Expr> {
        let mut e = self.unary(depth)?;
        loop {
            let op = if self.punct_if("*") {
                BinOp::Mul
            } else if self.punct_if("/") {
                BinOp::Div
            } else if self.punct_if("%") {
                BinOp::Rem
            } else {
                return Ok(e);
            };
            self.count_op()?;
            let r = self.unary(depth)?;
            let span = e.span;
            e = Expr { kind: ExprKind::Bin(op, Box::new(e), Box::new(r)), span };
        }
    }
    fn unary(&mut self, depth: usize) -> R<Expr> {
        const ALLOWED: &str = "a number, $NAME, (, min/max/divup(a, b) or rand(n)";
        let span = self.span();
        if depth >= MAX_DEPTH {
            return Err(ScriptError::new(
                self.file,
                span,
                format!("expression nested more than {MAX_DEPTH} deep; allowed at most {MAX_DEPTH}"),
            ));
        }
        let kind = match self.peek().map(|t| &t.tok) {
            Some(Tok::Int(n)) => {
                self.i += 1;
                ExprKind::Int(*n)
            }
            Some(Tok::Var(v)) => {
                self.i += 1;
                ExprKind::Var(v.clone())
            }
            Some(Tok::Punct("(")) => {
                self.i += 1;
                let e = self.expr_at(depth + 1)?;
                self.expect_punct(")", "')' or an operator (+ - * / %)")?;
                return Ok(Expr { kind: e.kind, span });
            }
            Some(Tok::Name(n)) if n == "rand" => {
                self.i += 1;
                self.expect_punct("(", "'(' after rand")?;
                let a = self.expr_at(depth + 1)?;
                self.expect_punct(")", "')' after rand's argument")?;
                ExprKind::Rand(Box::new(a))
            }
            Some(Tok::Name(n)) if matches!(n.as_str(), "min" | "max" | "divup") => {
                let f = match n.as_str() {
                    "min" => Func::Min,
                    "max" => Func::Max,
                    _ => Func::DivUp,
                };
                self.i += 1;
                self.expect_punct("(", "'(' after the function name")?;
                let a = self.expr_at(depth + 1)?;
                self.expect_punct(",", "',' between the two arguments")?;
                let b = self.expr_at(depth + 1)?;
                self.expect_punct(")", "')' after the second argument")?;
                ExprKind::Call(f, Box::new(a), Box::new(b))
            }
            _ => return self.err(ALLOWED),
        };
        Ok(Expr { kind, span })
    }

    fn size(&mut self) -> R<Size> {
        let expr = self.expr()?;
        let pages = self.word_if("pages") || self.word_if("page");
        Ok(Size { expr, pages })
    }

    fn loc(&mut self) -> R<Loc> {
        let region = self.name("a region name")?;
        let pages = if self.punct_if("[") {
            let a = self.expr()?;
            let p = if self.punct_if("..") {
                let b = self.expr()?;
                LocPages::Range(a, b)
            } else {
                LocPages::One(a)
            };
            self.expect_punct("]", "']' or '..' (pages a..b)")?;
            p
        } else {
            LocPages::Whole
        };
        Ok(Loc { region, pages })
    }

    fn prot(&mut self) -> R<Prot> {
        Ok([Prot::Rw, Prot::Ro, Prot::None][self.choice(&["rw", "ro", "none"])?])
    }

    /// A number in an expectation: an integer or a decimal.
    fn number(&mut self) -> R<(f64, Span)> {
        let span = self.span();
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Int(n)) => {
                self.i += 1;
                Ok((*n as f64, span))
            }
            Some(Tok::Decimal(d)) => match d.parse::<f64>() {
                Ok(x) if x.is_finite() => {
                    self.i += 1;
                    Ok((x, span))
                }
                _ => self.err("a finite decimal number"),
            },
            _ => self.err("a number (such as 0, 12 or 1.5)"),
        }
    }
}

const HEADER_WORDS: &[&str] = &["about", "arch", "kernel", "cpus", "revert", "knob", "budget"];
const TOP_WORDS: &[&str] = &["param", "process", "file", "thread", "expect"];

impl<'f> Parser<'f> {
    fn cur(&self, i: usize) -> Cur<'_, 'f> {
        let l = &self.lines[i];
        Cur { file: self.file, toks: &l.toks, i: 0, end: l.end, ops: 0 }
    }

    /// A copy of line `i` (a cursor over it does not borrow the parser).
    fn line(&self, i: usize) -> Line {
        self.lines[i].clone()
    }

    fn err_at<T>(&self, span: Span, msg: String) -> R<T> {
        Err(ScriptError::new(self.file, span, msg))
    }

    fn script(&mut self) -> R<Script> {
        if self.lines.is_empty() {
            return self.err_at(self.eof, "found an empty script; allowed a first line 'script NAME'".into());
        }
        let mut c = self.cur(0);
        c.expect_word("script", "'script NAME' as the first statement")?;
        let name = c.name("the script's name")?;
        c.end("nothing more after the name")?;
        self.pos = 1;
        let mut header = Header::default();
        let mut s = Script {
            name,
            header: Header::default(),
            params: Vec::new(),
            processes: Vec::new(),
            files: Vec::new(),
            threads: Vec::new(),
            expects: Vec::new(),
        };
        let mut past_header: Option<Span> = None;
        while self.pos < self.lines.len() {
            let i = self.pos;
            let mut c = self.cur(i);
            let first = c.peek().map(|t| t.tok.clone());
            let span = c.span();
            let word = match first {
                Some(Tok::Name(w)) => w,
                _ => {
                    let all: Vec<&str> = HEADER_WORDS.iter().chain(TOP_WORDS).copied().collect();
                    return c.err(&all.join(", "));
                }
            };
            if HEADER_WORDS.contains(&word.as_str()) {
                if let Some(at) = past_header {
                    return self.err_at(
                        span,
                        format!(
                            "found header line '{word}' after the header ended at line {}; allowed header lines ({}) right after 'script'",
                            at.line,
                            HEADER_WORDS.join(", ")
                        ),
                    );
                }
                self.header_line(&mut header, &word)?;
                self.pos += 1;
                continue;
            }
            past_header.get_or_insert(span);
            c.i = 1;
            match word.as_str() {
                "param" => {
                    s.params.push(param(&mut c, span)?);
                    self.pos += 1;
                }
                "process" => {
                    s.processes.push(c.name("a process name")?);
                    c.end("nothing more after the process name")?;
                    self.pos += 1;
                }
                "file" => {
                    s.files.push(file_decl(&mut c)?);
                    self.pos += 1;
                }
                "thread" => {
                    let t = self.thread(span)?;
                    s.threads.push(t);
                }
                "expect" => {
                    s.expects.push(expect(&mut c, span)?);
                    self.pos += 1;
                }
                w => {
                    let what = if super::ast::STEP_KEYWORDS.contains(&w) {
                        format!(
                            "found step '{w}' outside a thread; allowed {} (steps go inside 'thread … {{ }}')",
                            TOP_WORDS.join(", ")
                        )
                    } else {
                        format!(
                            "found '{w}'{}; allowed {}",
                            crate::input::did_you_mean(&crate::input::suggest(
                                w,
                                &HEADER_WORDS.iter().chain(TOP_WORDS).copied().collect::<Vec<_>>()
                            )),
                            TOP_WORDS.join(", ")
                        )
                    };
                    return self.err_at(span, what);
                }
            }
        }
        s.header = header;
        Ok(s)
    }

    fn header_line(&self, h: &mut Header, word: &str) -> R<()> {
        let mut c = self.cur(self.pos);
        let span = c.span();
        c.i = 1;
        let dup = |set: bool| -> R<()> {
            if set {
                self.err_at(span, format!("found a second '{word}' line; allowed once"))
            } else {
                Ok(())
            }
        };
        match word {
            "about" => {
                dup(h.about.is_some())?;
                h.about = Some(c.string()?);
                c.end("nothing more after the text")?;
            }
            "arch" => {
                dup(h.arch.is_some())?;
                h.arch = Some(c.name("an arch (x86, arm64, generic)")?);
                c.end("nothing more after the arch")?;
            }
            "kernel" => {
                dup(h.kernel.is_some())?;
                let t = c.peek();
                match t.map(|t| &t.tok) {
                    Some(Tok::Decimal(_) | Tok::Int(_) | Tok::Name(_)) => {
                        let t = t.expect("peeked");
                        h.kernel = Some(Name { text: t.text.clone(), span: t.span });
                        c.i += 1;
                    }
                    _ => return c.err("a kernel profile (6.12, 6.18)"),
                }
                c.end("nothing more after the kernel profile")?;
            }
            "cpus" => {
                dup(h.cpus.is_some())?;
                h.cpus = Some(c.expr()?);
                c.end("an operator (+ - * / %)")?;
            }
            "revert" => {
                h.reverts.push(c.name("a fix name (see mmemu list)")?);
                while !c.at_end() {
                    h.reverts.push(c.name("a fix name (see mmemu list)")?);
                }
            }
            "knob" => {
                let name = c.name("a knob name")?;
                c.punct_if("=");
                let value_span = c.span();
                let value = if c.word_if("on") {
                    KnobValue::On
                } else if c.word_if("off") {
                    KnobValue::Off
                } else if matches!(c.peek().map(|t| &t.tok), Some(Tok::Int(_) | Tok::Var(_) | Tok::Punct("("))) {
                    KnobValue::Num(c.expr()?)
                } else {
                    return c.err("on, off or a number");
                };
                c.end("nothing more after the value")?;
                h.knobs.push(Knob { name, value, value_span });
            }
            "budget" => {
                dup(h.budget.is_some())?;
                let amount = c.expr()?;
                let unit = [BudgetUnit::Rounds, BudgetUnit::Rounds, BudgetUnit::Seconds, BudgetUnit::Millis]
                    [c.choice(&["rounds", "round", "s", "ms"])?];
                c.end("nothing more after the unit")?;
                h.budget = Some(Budget { amount, unit, span });
            }
            _ => unreachable!("HEADER_WORDS"),
        }
        Ok(())
    }

    fn thread(&mut self, span: Span) -> R<Thread> {
        let line = self.line(self.pos);
        let mut c = Cur { file: self.file, toks: &line.toks, i: 0, end: line.end, ops: 0 };
        c.i = 1;
        let name = c.name("a thread name")?;
        c.expect_word("on", "'on' (thread NAME on cpu N in PROCESS {)")?;
        let placement = match c.choice(&["cpu", "each", "cpus"])? {
            0 => Placement::Cpu(c.expr()?),
            1 => {
                c.expect_word("cpu", "'cpu' (on each cpu)")?;
                Placement::EachCpu
            }
            _ => {
                let a = c.expr()?;
                c.expect_punct("..", "'..' (on cpus A..B)")?;
                Placement::Cpus(a, c.expr()?)
            }
        };
        c.expect_word("in", "'in PROCESS'")?;
        let process = c.name("a process name")?;
        let held = c.word_if("held");
        let first = !held && c.word_if("first");
        let open = c.span();
        c.expect_punct("{", "'held', 'first' or '{' at the end of the line")?;
        c.end("nothing after '{'")?;
        self.pos += 1;
        let body = self.body(open, 1)?;
        Ok(Thread { name, placement, process, held, first, body, span })
    }

    /// Lines up to the `}` that closes the block opened at `open`.
    fn body(&mut self, open: Span, depth: usize) -> R<Vec<Step>> {
        if depth > MAX_DEPTH {
            return self.err_at(open, format!("blocks nested more than {MAX_DEPTH} deep; allowed at most {MAX_DEPTH}"));
        }
        let mut steps = Vec::new();
        loop {
            if self.pos >= self.lines.len() {
                return self.err_at(
                    open,
                    format!("found the end of the file before this block's '}}'; allowed '}}' alone on a line to close it (opened at line {})", open.line),
                );
            }
            let c = self.cur(self.pos);
            if c.is_punct("}") {
                let mut c2 = self.cur(self.pos);
                c2.i = 1;
                c2.end("nothing after '}'")?;
                self.pos += 1;
                return Ok(steps);
            }
            steps.push(self.step(depth)?);
        }
    }

    fn step(&mut self, depth: usize) -> R<Step> {
        let line = self.line(self.pos);
        let mut c = Cur { file: self.file, toks: &line.toks, i: 0, end: line.end, ops: 0 };
        let span = c.span();
        let kw = match c.peek().map(|t| &t.tok) {
            Some(Tok::Name(n)) => n.clone(),
            _ => return c.err(&format!("a step ({})", STEP_KEYWORDS.join(", "))),
        };
        c.i = 1;
        let file = self.file;
        let kind = match kw.as_str() {
            "mmap" => {
                let region = c.name("a region name (mmap NAME KIND SIZE)")?;
                let kind = match c.choice(&["anon", "anon-shared", "thp", "hugetlb", "file-private", "file-shared"])? {
                    0 => MapKind::Anon,
                    1 => MapKind::AnonShared,
                    2 => MapKind::Thp,
                    3 => MapKind::Hugetlb,
                    4 => MapKind::FilePrivate(c.name("a file name")?),
                    _ => MapKind::FileShared(c.name("a file name")?),
                };
                let size = c.size()?;
                let (mut at, mut prot, mut offset) = (None, Prot::Rw, None);
                while !c.at_end() {
                    match c.choice(&["at", "prot", "offset"])? {
                        0 if at.is_none() => at = Some(c.expr()?),
                        1 => prot = c.prot()?,
                        2 if offset.is_none() => offset = Some(c.expr()?),
                        _ => {
                            c.i -= 1;
                            return c.err("each of at, prot, offset once");
                        }
                    }
                }
                {
                    c.end("nothing more")?;
                    StepKind::Mmap { region, kind, size, at, prot, offset }
                }
            }
            "write" => {
                let loc = c.loc()?;
                let value = if c.punct_if("=") { Some(c.expr()?) } else { None };
                c.end("'= VALUE'")?;
                StepKind::Write { loc, value }
            }
            "read" => {
                let loc = c.loc()?;
                let expect = if c.word_if("expect") {
                    Some(if c.word_if("segv") { ReadExpect::Segv } else { ReadExpect::Value(c.expr()?) })
                } else {
                    None
                };
                c.end("'expect VALUE' or 'expect segv'")?;
                StepKind::Read { loc, expect }
            }
            "munmap" => {
                let loc = c.loc()?;
                if c.word_if("at") {
                    let stall = self.stall(&mut c, depth)?;
                    return Ok(Step { kind: StepKind::Munmap { loc, stall: Some(stall) }, span });
                }
                c.end("'at POINT {'")?;
                StepKind::Munmap { loc, stall: None }
            }
            "mprotect" => {
                let loc = c.loc()?;
                let prot = c.prot()?;
                {
                    c.end("nothing more")?;
                    StepKind::Mprotect { loc, prot }
                }
            }
            "madvise" => {
                let loc = c.loc()?;
                let advice = c.name("an advice (dontneed)")?;
                if c.word_if("at") {
                    let stall = self.stall(&mut c, depth)?;
                    return Ok(Step { kind: StepKind::Madvise { loc, advice, stall: Some(stall) }, span });
                }
                c.end("'at POINT {'")?;
                StepKind::Madvise { loc, advice, stall: None }
            }
            "msync" => {
                let loc = c.loc()?;
                {
                    c.end("nothing more")?;
                    StepKind::Msync { loc }
                }
            }
            "fadvise" => {
                let file = c.name("a file name")?;
                let advice = c.name("an advice (dontneed)")?;
                let pages = if c.word_if("pages") {
                    let a = c.expr()?;
                    c.expect_punct("..", "'..' (pages a..b)")?;
                    Some((a, c.expr()?))
                } else {
                    None
                };
                c.end("'pages a..b'")?;
                StepKind::Fadvise { file, advice, pages }
            }
            "truncate" => {
                let file = c.name("a file name")?;
                let size = if c.word_if("size") { Some(c.size()?) } else { None };
                c.end("'size SIZE'")?;
                StepKind::Truncate { file, size }
            }
            "exit" => {
                let process = c.word_if("process");
                {
                    c.end("nothing more")?;
                    StepKind::Exit { process }
                }
            }
            "start" => {
                let thread = c.name("a held thread's name")?;
                {
                    c.end("nothing more")?;
                    StepKind::Start { thread }
                }
            }
            "spin" => {
                c.end("nothing more")?;
                StepKind::Spin
            }
            "sleep" => {
                c.end("nothing more")?;
                StepKind::Sleep
            }
            "peek" => {
                let addr = c.expr()?;
                c.end("an operator (+ - * / %)")?;
                StepKind::Peek { addr }
            }
            "barrier" => {
                let name = c.name("a barrier name")?;
                {
                    c.end("nothing more")?;
                    StepKind::Barrier { name }
                }
            }
            "gup-fast" => {
                let loc = c.loc()?;
                let write = c.word_if("write");
                let pin = c.word_if("pin");
                if c.is_word("at") {
                    c.i += 1;
                    let stall = self.stall(&mut c, depth)?;
                    return Ok(Step { kind: StepKind::GupFast { loc, write, pin, stall: Some(stall) }, span });
                }
                c.end("'write', 'pin' or 'at POINT {'")?;
                StepKind::GupFast { loc, write, pin, stall: None }
            }
            "collapse" => {
                let loc = c.loc()?;
                if c.word_if("at") {
                    let stall = self.stall(&mut c, depth)?;
                    return Ok(Step { kind: StepKind::Collapse { loc, stall: Some(stall) }, span });
                }
                c.end("'at POINT {'")?;
                StepKind::Collapse { loc, stall: None }
            }
            "device" => {
                let write = c.choice(&["read", "write"])? == 1;
                let loc = c.loc()?;
                let value = if write && c.punct_if("=") { Some(c.expr()?) } else { None };
                let expect = if c.word_if("expect") { Some(c.expr()?) } else { None };
                c.end(if write { "'= VALUE' or 'expect VALUE'" } else { "'expect VALUE'" })?;
                StepKind::Device { write, loc, value, expect }
            }
            "fork" | "exec" => {
                let child = c.name("the child process's name")?;
                let body = self.block(&mut c, depth, "'{' at the end of the line")?;
                let kind = if kw == "fork" { StepKind::Fork { child, body } } else { StepKind::Exec { child, body } };
                return Ok(Step { kind, span });
            }
            "spawn" => {
                let thread = c.name("the new thread's name")?;
                let cpu = if c.word_if("on") {
                    c.expect_word("cpu", "'cpu' (spawn T on cpu N {)")?;
                    Some(c.expr()?)
                } else {
                    None
                };
                let body = self.block(&mut c, depth, "'on cpu N' or '{' at the end of the line")?;
                return Ok(Step { kind: StepKind::Spawn { thread, cpu, body }, span });
            }
            "join" => {
                let thread = c.name("a spawned thread's name")?;
                c.end("nothing more")?;
                StepKind::Join { thread }
            }
            "repeat" => {
                if c.word_if("until") {
                    c.expect_word("budget", "'budget' (repeat until budget {)")?;
                    let body = self.block(&mut c, depth, "'{' at the end of the line")?;
                    return Ok(Step { kind: StepKind::RepeatUntilBudget { body }, span });
                }
                let count = c.expr()?;
                let body = self.block(&mut c, depth, "an operator or '{' at the end of the line")?;
                return Ok(Step { kind: StepKind::Repeat { count, body }, span });
            }
            "for" => {
                let var = c.name("a variable name (for I in A..B {)")?;
                c.expect_word("in", "'in' (for I in A..B {)")?;
                let shuffled = c.word_if("shuffled");
                let from = c.expr()?;
                c.expect_punct("..", "'..' (A..B)")?;
                let to = c.expr()?;
                let step = if c.word_if("step") { Some(c.expr()?) } else { None };
                let body = self.block(&mut c, depth, "'step S' or '{' at the end of the line")?;
                return Ok(Step { kind: StepKind::For { var, shuffled, from, to, step, body }, span });
            }
            w => {
                let msg = format!(
                    "found unknown step '{w}'{}; allowed {}",
                    crate::input::did_you_mean(&crate::input::suggest(w, STEP_KEYWORDS)),
                    STEP_KEYWORDS.join(", ")
                );
                return Err(ScriptError::new(file, span, msg));
            }
        };
        self.pos += 1;
        Ok(Step { kind, span })
    }

    /// `{` ending the current line, then the block's lines.
    fn block(&mut self, c: &mut Cur, depth: usize, allowed: &str) -> R<Vec<Step>> {
        let open = c.span();
        c.expect_punct("{", allowed)?;
        c.end("nothing after '{'")?;
        self.pos += 1;
        self.body(open, depth + 1)
    }

    /// `POINT {` then `barrier NAME` lines and `}`.
    fn stall(&mut self, c: &mut Cur, depth: usize) -> R<Stall> {
        let point = c.name("a stall point (gup-fast: pud-read, pmd-read, pte-read, grabbed; collapse: after-collapse-flush, after-isolate; madvise, munmap: pte-table-done)")?;
        let body = self.block(c, depth, "'{' at the end of the line")?;
        let mut barriers = Vec::new();
        for s in body {
            match s.kind {
                StepKind::Barrier { name } => barriers.push(name),
                k => {
                    return self.err_at(
                        s.span,
                        format!("found step '{}' at a stall point; allowed only 'barrier NAME' lines (the kernel path waits there, mid-call)", k.keyword()),
                    )
                }
            }
        }
        Ok(Stall { point, barriers })
    }
}

fn param(c: &mut Cur, span: Span) -> R<Param> {
    let name = c.name("a parameter name")?;
    c.expect_punct("=", "'=' (param NAME = DEFAULT in MIN..MAX)")?;
    let default = c.int("the default value (an integer)")?;
    c.expect_word("in", "'in MIN..MAX'")?;
    let min = c.int("the smallest value (an integer)")?;
    c.expect_punct("..", "'..' (MIN..MAX, both inclusive)")?;
    let max = c.int("the largest value (an integer)")?;
    let help = if c.at_end() { None } else { Some(c.string()?) };
    c.end("nothing more after the help text")?;
    Ok(Param { name, default, min, max, help, span })
}

fn file_decl(c: &mut Cur) -> R<FileDecl> {
    let name = c.name("a file name")?;
    c.expect_word("size", "'size SIZE' (file NAME size SIZE)")?;
    let size = c.size()?;
    let contents = if c.word_if("contents") {
        match c.choice(&["zero", "index", "fill"])? {
            0 => Contents::Zero,
            1 => Contents::Index,
            _ => Contents::Fill(c.expr()?),
        }
    } else {
        Contents::Zero
    };
    c.end("'pages' or 'contents zero|index|fill V'")?;
    Ok(FileDecl { name, size, contents })
}

fn expect(c: &mut Cur, span: Span) -> R<Expect> {
    let on_cpu = |c: &mut Cur| -> R<Option<Expr>> {
        if c.word_if("on") {
            c.expect_word("cpu", "'cpu' (on cpu N)")?;
            Ok(Some(c.expr()?))
        } else {
            Ok(None)
        }
    };
    let target = match c.choice(&["violations", "leaked", "counter", "interrupts", "rate", "reads"])? {
        0 => {
            let kind =
                if matches!(c.peek().map(|t| &t.tok), Some(Tok::Name(_))) { Some(c.name("a kind")?) } else { None };
            Target::Violations(kind)
        }
        1 => Target::Leaked,
        2 => {
            let name = c.name("a counter name (mmemu list; e.g. nr_tlb_remote_flush)")?;
            Target::Counter { name, cpu: on_cpu(c)? }
        }
        3 => {
            let row = c.name("an interrupt row (TLB, CAL)")?;
            Target::Interrupts { row, cpu: on_cpu(c)? }
        }
        4 => {
            let counter = c.name("a counter name")?;
            c.expect_word("per", "'per round' or 'per op'")?;
            let per_op = c.choice(&["round", "op"])? == 1;
            Target::Rate { counter, per_op }
        }
        _ => {
            c.expect_word("failed", "'failed' (expect reads failed == N)")?;
            Target::ReadsFailed
        }
    };
    let ops = ["==", "!=", "<=", ">=", "<", ">"];
    let op = match ops.iter().position(|o| c.is_punct(o)) {
        Some(i) => {
            c.i += 1;
            [CmpOp::Eq, CmpOp::Ne, CmpOp::Le, CmpOp::Ge, CmpOp::Lt, CmpOp::Gt][i]
        }
        None => return c.err(&format!("a comparison ({})", ops.join(" "))),
    };
    let (value, value_span) = c.number()?;
    let tolerance = if c.punct_if("+-") {
        let (t, _) = c.number()?;
        Some(if c.punct_if("%") { Tolerance::Percent(t) } else { Tolerance::Abs(t) })
    } else {
        None
    };
    c.end("'+- TOLERANCE[%]'")?;
    Ok(Expect { target, cmp: Cmp { op, value, tolerance, value_span }, span })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        match parse("t.mmemu", src) {
            Ok(_) => panic!("parsed: {src}"),
            Err(e) => e.to_string(),
        }
    }

    const HEAD: &str = "script s\nprocess P\n";

    #[test]
    fn a_script_becomes_its_tree() {
        let s = parse(
            "t.mmemu",
            "# c\nscript x\narch arm64\ncpus 2 * 2\nrevert delay-rmap gup-pmd-recheck\nknob rcu-table-free off\nbudget 5 rounds\n\
             param pages = 8 in 1..64 \"help\"\nprocess P\nfile F size 4 pages contents fill 3\n\
             thread T on each cpu in P {\n  mmap R file-shared F $pages pages at 0x1000 prot ro\n  for i in shuffled 0..$pages step 2 {\n\
             \x20   read R[$i] expect 0\n  }\n  gup-fast R[0..2] write at pmd-read {\n    barrier a\n  }\n  spin\n}\n\
             expect rate nr_tlb_remote_flush per round == 1.5 +- 10%\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name.text, "x");
        assert_eq!(s.header.arch.as_ref().map(|a| a.text.as_str()), Some("arm64"));
        assert_eq!(s.header.reverts.len(), 2);
        assert_eq!(s.params[0].default, 8);
        assert_eq!(
            s.files[0].contents,
            Contents::Fill(Expr { kind: ExprKind::Int(3), span: Span { line: 10, col: 35 } })
        );
        let t = &s.threads[0];
        assert_eq!(t.placement, Placement::EachCpu);
        assert_eq!(t.body.len(), 4);
        assert!(
            matches!(&t.body[0].kind, StepKind::Mmap { kind: MapKind::FileShared(f), prot: Prot::Ro, at: Some(_), .. } if f.text == "F")
        );
        assert!(
            matches!(&t.body[1].kind, StepKind::For { shuffled: true, step: Some(_), body, .. } if body.len() == 1)
        );
        assert!(
            matches!(&t.body[2].kind, StepKind::GupFast { write: true, pin: false, stall: Some(st), .. } if st.point.text == "pmd-read" && st.barriers.len() == 1)
        );
        assert_eq!(t.body[3].span, Span { line: 19, col: 3 });
        let e = &s.expects[0];
        assert_eq!(e.cmp.tolerance, Some(Tolerance::Percent(10.0)));
        assert!(matches!(&e.target, Target::Rate { per_op: false, .. }));
    }

    #[test]
    fn expressions_have_precedence_and_spans() {
        let s = parse("t", "script s\ncpus 1 + 2 * (3 - 1)\nprocess P\n").unwrap_or_else(|e| panic!("{e}"));
        let e = s.header.cpus.expect("cpus");
        assert!(
            matches!(e.kind, ExprKind::Bin(BinOp::Add, _, ref r) if matches!(r.kind, ExprKind::Bin(BinOp::Mul, _, _)))
        );
        assert_eq!(e.span, Span { line: 2, col: 6 });
    }

    #[test]
    fn each_error_is_one_line_with_what_was_found_and_allowed() {
        assert_eq!(err(""), "t.mmemu:1:1: found an empty script; allowed a first line 'script NAME'");
        assert_eq!(err("arch x86\n"), "t.mmemu:1:1: found 'arch'; allowed 'script NAME' as the first statement");
        assert_eq!(err("script s\narch x86\narch arm64\n"), "t.mmemu:3:1: found a second 'arch' line; allowed once");
        assert_eq!(
            err(&format!("{HEAD}arch x86\n")),
            "t.mmemu:3:1: found header line 'arch' after the header ended at line 2; allowed header lines (about, arch, kernel, cpus, revert, knob, budget) right after 'script'"
        );
        assert_eq!(
            err(&format!("{HEAD}thred T on cpu 0 in P {{\n}}\n")),
            "t.mmemu:3:1: found 'thred' (did you mean 'thread'?); allowed param, process, file, thread, expect"
        );
        assert_eq!(
            err(&format!("{HEAD}thread T on cpu 0 in P {{\n  munmpa R\n}}\n")),
            "t.mmemu:4:3: found unknown step 'munmpa' (did you mean 'munmap'?); allowed mmap, write, read, munmap, mprotect, madvise, msync, fadvise, truncate, fork, exec, spawn, join, exit, start, spin, sleep, barrier, peek, gup-fast, collapse, device, repeat, for"
        );
        assert_eq!(
            err(&format!("{HEAD}thread T on cpu 0 in P {{\n  write R[0\n}}\n")),
            "t.mmemu:4:12: found end of line; allowed ']' or '..' (pages a..b)"
        );
        assert_eq!(
            err(&format!("{HEAD}thread T on cpu 0 in P {{\n  mmap R anon 1 page\n")),
            "t.mmemu:3:24: found the end of the file before this block's '}'; allowed '}' alone on a line to close it (opened at line 3)"
        );
        assert_eq!(
            err(&format!("{HEAD}thread T on cpu 0 in P {{\n  mmap R anonymous 1 page\n}}\n")),
            "t.mmemu:4:10: found 'anonymous'; allowed anon, anon-shared, thp, hugetlb, file-private, file-shared"
        );
        assert_eq!(
            err(&format!("{HEAD}thread T on cpu 0 in P {{\n  gup-fast R at pmd-read {{\n    munmap R\n  }}\n}}\n")),
            "t.mmemu:5:5: found step 'munmap' at a stall point; allowed only 'barrier NAME' lines (the kernel path waits there, mid-call)"
        );
        assert_eq!(
            err(&format!("{HEAD}expect leaked = 0\n")),
            "t.mmemu:3:15: found '='; allowed a comparison (== != <= >= < >)"
        );
        assert_eq!(err(&format!("{HEAD}mmap R anon 1M\n")), "t.mmemu:3:1: found step 'mmap' outside a thread; allowed param, process, file, thread, expect (steps go inside 'thread … { }')");
        assert_eq!(
            err("script s\ncpus ((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))\n")
                .split(": ")
                .nth(1),
            Some("expression nested more than 32 deep; allowed at most 32")
        );
    }
}
