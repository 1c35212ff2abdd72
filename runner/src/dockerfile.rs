//! The Dockerfile language as the Dockerfile reference defines it, parsed the way BuildKit's frontend does.
//!
//! [`parse`] turns the text into a typed [`Dockerfile`]: parser directives (`# syntax=`, `# escape=`,
//! `# check=`, only before anything else), comments, line continuations with the escape character
//! (comment and empty lines inside a continuation are skipped), every instruction with its flags, and the
//! line number and original text of each instruction (for error messages and history's `created_by`).
//! Words keep their quotes and escapes, as BuildKit's parser keeps them: they are removed when the word is
//! expanded, because quoting is part of the substitution language.
//!
//! [`expand`] is the shell lexer's variable substitution (`$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?message}`, `${VAR#glob}`, `${VAR%glob}`,
//! `${VAR/glob/replacement}`, quote removal, no substitution inside single quotes, the escape character).
//! [`Resolver`] applies it where docker does (`ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR`
//! and `ARG` defaults; not `RUN CMD ENTRYPOINT SHELL HEALTHCHECK ONBUILD MAINTAINER`) with `ARG`'s scoping:
//! an `ARG` before the first `FROM` is usable in `FROM` lines only, and in a stage after a bare `ARG name`
//! re-declaration; a stage's own `ARG`s and `ENV`s are visible from the next instruction on; a stage built on
//! another stage starts from that stage's variables.
//!
//! Not supported, refused with a clear error: heredocs (`RUN <<EOF`), `RUN --mount`/`--network`/
//! `--security`/`--device`, `COPY --parents`/`--exclude`, `ADD --checksum`/`--keep-git-dir`/`--unpack`/
//! `--exclude`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A Dockerfile that cannot be parsed or resolved. Every error about an instruction carries the line the
/// instruction starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: unknown instruction {instruction:?}")]
    UnknownInstruction { line: usize, instruction: String },
    #[error("line {line}: heredocs are not supported")]
    Heredoc { line: usize },
    #[error("line {line}: {instruction} --{flag} is not supported")]
    UnsupportedFlag {
        line: usize,
        instruction: &'static str,
        flag: String,
    },
    #[error("line {line}: {source}")]
    Expand { line: usize, source: ExpandError },
    #[error("the dockerfile has no instructions")]
    Empty,
    #[error("the dockerfile has no FROM: there is no stage to build")]
    NoStage,
    #[error("no build stage named {0:?}")]
    UnknownTarget(String),
}

fn syntax(line: usize, message: impl Into<String>) -> DockerfileError {
    DockerfileError::Syntax {
        line,
        message: message.into(),
    }
}

/// A word that variable substitution cannot expand (an unterminated quote or `${`, a bad modifier, a
/// `${VAR?}` whose variable is unset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot expand {word:?}: {reason}")]
pub struct ExpandError {
    pub word: String,
    pub reason: String,
}

/// The parser directives found at the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `# syntax=`: the frontend image BuildKit would use; recorded, not acted upon.
    pub syntax: Option<String>,
    /// `# escape=`: `\` (the default) or `` ` ``.
    pub escape: char,
    /// `# check=`: the build checks' configuration; recorded, not acted upon.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// A parsed Dockerfile: the `ARG`s before the first `FROM` (the global scope) and the stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    pub args_before_from: Vec<Arg>,
    pub stages: Vec<Stage>,
}

/// One `ARG` declaration: a name and an optional default (unexpanded, as written; after
/// [`Resolver::stage`], the value the argument took).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    pub default: Option<String>,
    /// The line of the `ARG` instruction.
    pub line: usize,
}

/// A build stage: its `FROM` line and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The base as written (`scratch`, an image reference, a previous stage's name; may use global ARGs).
    pub base: String,
    /// `--platform=`, as written.
    pub platform: Option<String>,
    pub line: usize,
    pub original: String,
    pub instructions: Vec<Instruction>,
}

/// An instruction other than `FROM`, with the 1-based line it starts on and its original text (the logical
/// line: continuations joined, comment lines inside them dropped, surrounding whitespace trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub line: usize,
    pub original: String,
    pub command: Command,
}

/// The shell form (run by the `SHELL`, `/bin/sh -c` by default) or the exec form (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    Shell(String),
    Exec(Vec<String>),
}

/// A `KEY=value` pair of `ENV` or `LABEL` (legacy `ENV KEY value` too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// The arguments of `COPY` and `ADD` (`from` is `COPY`'s only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    pub sources: Vec<String>,
    pub dest: String,
    /// `--from=`: a stage name, a stage index or an image; never expanded (as docker).
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// `--link`: accepted; the layer is the same either way (only BuildKit's cache reuse differs).
    pub link: bool,
    /// Whether the JSON form was used.
    pub json: bool,
}

/// `HEALTHCHECK [OPTIONS] CMD ...`. Zero durations and an absent `--retries` mean "inherit the default".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: CommandLine,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub start_interval: Duration,
    pub retries: Option<u32>,
}

/// An instruction's typed arguments. Words are as written (quotes and escapes kept) until expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(CommandLine),
    /// An empty exec form for `CMD` or `ENTRYPOINT` with no argument.
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Env(Vec<KeyValue>),
    Arg(Vec<Arg>),
    Label(Vec<KeyValue>),
    Expose(Vec<String>),
    Workdir(String),
    User(String),
    Volume(Vec<String>),
    Copy(CopyArgs),
    Add(CopyArgs),
    /// The trigger's text as the image config records it, and the trigger parsed.
    Onbuild {
        expression: String,
        trigger: Box<Command>,
    },
    StopSignal(String),
    /// `None` for `HEALTHCHECK NONE`.
    Healthcheck(Option<Healthcheck>),
    Shell(Vec<String>),
    Maintainer(String),
}

impl Command {
    /// The instruction's name, upper case.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Env(_) => "ENV",
            Command::Arg(_) => "ARG",
            Command::Label(_) => "LABEL",
            Command::Expose(_) => "EXPOSE",
            Command::Workdir(_) => "WORKDIR",
            Command::User(_) => "USER",
            Command::Volume(_) => "VOLUME",
            Command::Copy(_) => "COPY",
            Command::Add(_) => "ADD",
            Command::Onbuild { .. } => "ONBUILD",
            Command::StopSignal(_) => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
            Command::Shell(_) => "SHELL",
            Command::Maintainer(_) => "MAINTAINER",
        }
    }
}

impl Dockerfile {
    /// The index of the stage named `name` (case-insensitive), for `--target`.
    pub fn stage_index(&self, name: &str) -> Result<usize, DockerfileError> {
        let lower = name.to_lowercase();
        self.stages
            .iter()
            .rposition(|s| s.name.as_deref() == Some(lower.as_str()))
            .ok_or_else(|| DockerfileError::UnknownTarget(name.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Lines: directives, comments, continuations.

/// Whitespace as Go's `unicode.IsSpace`.
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Whitespace as BuildKit's `[\t\v\f\r ]+` word separator.
fn is_sep(c: char) -> bool {
    matches!(c, '\t' | '\u{0b}' | '\u{0c}' | '\r' | ' ')
}

fn split_sep(s: &str) -> Vec<String> {
    s.split(is_sep)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// `s` split at its first run of separators: (first word, rest).
fn split_sep_once(s: &str) -> (&str, &str) {
    match s.find(is_sep) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(is_sep)),
        None => (s, ""),
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

struct DirectiveParser {
    done: bool,
    seen: BTreeSet<String>,
}

impl DirectiveParser {
    /// A directive in `line` (already left-trimmed), while directives are still allowed.
    fn parse_line(&mut self, line: &str, number: usize) -> Result<Option<(String, String)>, DockerfileError> {
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(None);
        };
        let rest = rest.trim_start_matches(is_space);
        let Some((key, value)) = rest.split_once('=') else {
            self.done = true;
            return Ok(None);
        };
        let key = key.trim_end_matches(is_space);
        let value = value.trim_matches(is_space);
        let valid_key = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric());
        let key = key.to_ascii_lowercase();
        if !valid_key || value.is_empty() || !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if !self.seen.insert(key.clone()) {
            return Err(syntax(
                number,
                format!("only one {key} parser directive can be used"),
            ));
        }
        Ok(Some((key, value.to_string())))
    }
}

/// The line without its escape character if it ends with one (then it continues on the next line), as
/// BuildKit's `([^E])E[ \t]*$|^E[ \t]*$`.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    let Some(before) = trimmed.strip_suffix(escape) else {
        return (line, false);
    };
    match before.chars().next_back() {
        None => ("", true),
        Some(c) if c != escape => (before, true),
        Some(_) => (line, false),
    }
}

/// A logical line: an instruction with its continuations joined.
struct LogicalLine {
    start: usize,
    text: String,
}

fn logical_lines(text: &str) -> Result<(Directives, Vec<LogicalLine>), DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut directives = Directives::default();
    let mut parser = DirectiveParser {
        done: false,
        seen: BTreeSet::new(),
    };
    let mut out = Vec::new();
    let mut lines = text
        .split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches(['\r', '\n'])));
    while let Some((number, raw)) = lines.next() {
        let line = raw.trim_start_matches(is_space);
        if let Some((key, value)) = parser.parse_line(line, number)? {
            match key.as_str() {
                "escape" => {
                    directives.escape = match value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        _ => {
                            return Err(syntax(
                                number,
                                format!("invalid escape token {value:?}: it must be ` or \\"),
                            ));
                        }
                    }
                }
                "syntax" => directives.syntax = Some(value),
                _ => directives.check = Some(value),
            }
            continue;
        }
        if is_comment(line) {
            continue;
        }
        let escape = directives.escape;
        let (first, mut continues) = trim_continuation(line, escape);
        if !continues && first.is_empty() {
            continue;
        }
        let mut joined = first.to_string();
        while continues {
            let Some((_, next)) = lines.next() else { break };
            if is_comment(next) || next.trim_start_matches(is_space).is_empty() {
                continue;
            }
            let (part, more) = trim_continuation(next, escape);
            joined.push_str(part);
            continues = more;
        }
        if joined.trim_matches(is_space).is_empty() {
            continue;
        }
        out.push(LogicalLine {
            start: number,
            text: joined,
        });
    }
    Ok((directives, out))
}

// ---------------------------------------------------------------------------------------------------------
// Words and flags, as BuildKit's parser splits them (quotes and escapes kept).

/// Words separated by whitespace, quotes keeping a word together; quotes and escapes stay in the words
/// (BuildKit's `parseWords`).
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// The leading `--flag[=value]` words of an instruction's arguments (quotes and escapes removed) and what
/// follows them (BuildKit's `extractBuilderFlags`; a `--` word ends the flags).
fn extract_flags(line: &str, escape: char) -> (Vec<String>, String) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = line.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            if ch != '-' || chars.get(pos + 1) != Some(&'-') {
                return (words, chars[pos..].iter().collect());
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (words, chars[pos..].iter().collect());
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == escape {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    (words, String::new())
}

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    String,
}

/// An instruction's flags, checked against the ones it takes.
struct Flags {
    values: BTreeMap<&'static str, String>,
}

impl Flags {
    fn parse(
        words: &[String],
        instruction: &'static str,
        known: &[(&'static str, FlagKind)],
        unsupported: &[&'static str],
        line: usize,
    ) -> Result<Flags, DockerfileError> {
        let mut values = BTreeMap::new();
        for word in words {
            let Some(flag) = word.strip_prefix("--") else {
                return Err(syntax(
                    line,
                    format!("{instruction}: a flag must start with --: {word}"),
                ));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (flag, None),
            };
            if let Some(&u) = unsupported.iter().find(|&&u| u == name) {
                return Err(DockerfileError::UnsupportedFlag {
                    line,
                    instruction,
                    flag: u.to_string(),
                });
            }
            let Some(&(key, kind)) = known.iter().find(|(k, _)| *k == name) else {
                return Err(syntax(line, format!("{instruction}: unknown flag --{name}")));
            };
            if values.contains_key(key) {
                return Err(syntax(line, format!("{instruction}: duplicate flag --{name}")));
            }
            let value = match (kind, value) {
                (FlagKind::Bool, None) => "true".to_string(),
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => "true".to_string(),
                    "false" => "false".to_string(),
                    "" => {
                        return Err(syntax(
                            line,
                            format!("{instruction}: missing a value on flag --{name}"),
                        ));
                    }
                    _ => {
                        return Err(syntax(
                            line,
                            format!("{instruction}: expecting a boolean value for flag --{name}, not {v:?}"),
                        ));
                    }
                },
                (FlagKind::String, Some(v)) => v.to_string(),
                (FlagKind::String, None) => {
                    return Err(syntax(
                        line,
                        format!("{instruction}: missing a value on flag --{name}"),
                    ));
                }
            };
            values.insert(key, value);
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    fn bool(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|v| v == "true")
    }
}

/// A JSON array of strings (`Ok(Some)`), not a JSON array (`Ok(None)`: the shell form), or a JSON array
/// with something else than strings (an error).
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(rest) {
        Err(_) => Ok(None),
        Ok(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => {
                    Err("when using JSON array syntax, arrays must be comprised of strings only".to_string())
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Whether a shell-form `RUN`, `COPY` or `ADD` uses a heredoc (`<<EOF`, `<<-EOF`, `2<<"EOF"`): a word
/// outside quotes made of optional digits, `<<`, an optional `-`, optional blanks and a word without `<`.
fn has_heredoc(rest: &str, escape: char) -> bool {
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    let mut word_start = true;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == escape && q == '"' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            word_start = false;
            continue;
        }
        if is_space(c) {
            word_start = true;
            i += 1;
            continue;
        }
        if word_start {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            if chars.get(j) == Some(&'<') && chars.get(j + 1) == Some(&'<') {
                j += 2;
                if chars.get(j) == Some(&'-') {
                    j += 1;
                }
                while j < chars.len() && matches!(chars[j], ' ' | '\t') {
                    j += 1;
                }
                let word: String = chars[j..].iter().take_while(|c| !is_space(**c)).collect();
                if !word.is_empty() && !word.contains('<') {
                    return true;
                }
            }
        }
        word_start = false;
        if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == escape {
            i += 1;
        }
        i += 1;
    }
    false
}

/// A Go duration (`1h30m`, `1.5s`, `300ms`, `10us`), for `HEALTHCHECK`'s options.
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    if negative && total > 0.0 {
        return Err(format!("{s:?} is negative"));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

// ---------------------------------------------------------------------------------------------------------
// Instructions.

const INSTRUCTIONS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "ARG",
    "LABEL",
    "EXPOSE",
    "WORKDIR",
    "USER",
    "VOLUME",
    "COPY",
    "ADD",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
    "MAINTAINER",
];

enum Parsed {
    From {
        base: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Command(Command),
}

/// `ENV` and `LABEL`: `k=v k2="v 2"`, or the legacy `KEY value` (the rest of the line is the value).
fn parse_key_values(
    rest: &str,
    instruction: &str,
    escape: char,
    line: usize,
) -> Result<Vec<KeyValue>, DockerfileError> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Err(syntax(
            line,
            format!("{instruction} requires at least one argument"),
        ));
    }
    if !words[0].contains('=') {
        let (key, value) = split_sep_once(rest);
        if value.is_empty() {
            return Err(syntax(line, format!("{instruction} must have two arguments")));
        }
        return Ok(vec![KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        }]);
    }
    words
        .into_iter()
        .map(|word| {
            let Some((key, value)) = word.split_once('=') else {
                return Err(syntax(
                    line,
                    format!("can't find = in {word:?}, {instruction} must be of the form name=value"),
                ));
            };
            if key.is_empty() {
                return Err(syntax(line, format!("{instruction} names can not be blank")));
            }
            Ok(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            })
        })
        .collect()
}

/// The shell or exec form of `RUN`, `CMD`, `ENTRYPOINT`.
fn command_line(rest: &str, line: usize) -> Result<CommandLine, DockerfileError> {
    if rest.is_empty() {
        return Ok(CommandLine::Exec(Vec::new()));
    }
    match parse_json(rest).map_err(|e| syntax(line, e))? {
        Some(args) => Ok(CommandLine::Exec(args)),
        None => Ok(CommandLine::Shell(rest.to_string())),
    }
}

/// A JSON array or whitespace-separated words (`COPY`, `ADD`, `VOLUME`).
fn json_or_words(rest: &str, line: usize) -> Result<(Vec<String>, bool), DockerfileError> {
    match parse_json(rest).map_err(|e| syntax(line, e))? {
        Some(args) => Ok((args, true)),
        None => Ok((split_sep(rest), false)),
    }
}

fn exactly_one(rest: &str, instruction: &str, line: usize) -> Result<String, DockerfileError> {
    if rest.is_empty() {
        return Err(syntax(
            line,
            format!("{instruction} requires exactly one argument"),
        ));
    }
    Ok(rest.to_string())
}

fn no_flags(flags: &[String], instruction: &'static str, line: usize) -> Result<(), DockerfileError> {
    Flags::parse(flags, instruction, &[], &[], line).map(|_| ())
}

fn parse_copy(
    rest: &str,
    flags: &[String],
    instruction: &'static str,
    escape: char,
    line: usize,
) -> Result<CopyArgs, DockerfileError> {
    let (known, unsupported): (&[(&str, FlagKind)], &[&str]) = if instruction == "COPY" {
        (
            &[
                ("chown", FlagKind::String),
                ("chmod", FlagKind::String),
                ("from", FlagKind::String),
                ("link", FlagKind::Bool),
            ],
            &["parents", "exclude"],
        )
    } else {
        (
            &[
                ("chown", FlagKind::String),
                ("chmod", FlagKind::String),
                ("link", FlagKind::Bool),
            ],
            &["checksum", "keep-git-dir", "unpack", "exclude"],
        )
    };
    let flags = Flags::parse(flags, instruction, known, unsupported, line)?;
    let (mut words, json) = json_or_words(rest, line)?;
    if !json && has_heredoc(rest, escape) {
        return Err(DockerfileError::Heredoc { line });
    }
    if words.len() < 2 {
        return Err(syntax(
            line,
            format!("{instruction} requires at least two arguments: sources and a destination"),
        ));
    }
    let dest = words.pop().unwrap_or_default();
    Ok(CopyArgs {
        sources: words,
        dest,
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link"),
        json,
    })
}

fn parse_healthcheck(
    rest: &str,
    flags: &[String],
    line: usize,
) -> Result<Option<Healthcheck>, DockerfileError> {
    let (kind, command) = split_sep_once(rest);
    let kind = kind.to_ascii_uppercase();
    match kind.as_str() {
        "" => Err(syntax(line, "HEALTHCHECK requires at least one argument")),
        "NONE" => {
            if !command.is_empty() {
                return Err(syntax(line, "HEALTHCHECK NONE takes no arguments"));
            }
            no_flags(flags, "HEALTHCHECK", line)?;
            Ok(None)
        }
        "CMD" => {
            let known = [
                ("interval", FlagKind::String),
                ("timeout", FlagKind::String),
                ("start-period", FlagKind::String),
                ("start-interval", FlagKind::String),
                ("retries", FlagKind::String),
            ];
            let flags = Flags::parse(flags, "HEALTHCHECK", &known, &[], line)?;
            let test = command_line(command, line)?;
            if matches!(&test, CommandLine::Exec(a) if a.is_empty()) {
                return Err(syntax(line, "missing command after HEALTHCHECK CMD"));
            }
            let duration = |name: &str| -> Result<Duration, DockerfileError> {
                let Some(value) = flags.string(name) else {
                    return Ok(Duration::ZERO);
                };
                if value.is_empty() {
                    return Ok(Duration::ZERO);
                }
                let d = parse_go_duration(&value)
                    .map_err(|e| syntax(line, format!("HEALTHCHECK --{name}: {e}")))?;
                if !d.is_zero() && d < Duration::from_millis(1) {
                    return Err(syntax(
                        line,
                        format!("HEALTHCHECK --{name} cannot be less than 1ms"),
                    ));
                }
                Ok(d)
            };
            let retries = match flags.string("retries").filter(|r| !r.is_empty()) {
                None => None,
                Some(r) => Some(r.parse::<u32>().map_err(|_| {
                    syntax(
                        line,
                        format!("HEALTHCHECK --retries must be a non-negative integer, not {r:?}"),
                    )
                })?),
            };
            Ok(Some(Healthcheck {
                test,
                interval: duration("interval")?,
                timeout: duration("timeout")?,
                start_period: duration("start-period")?,
                start_interval: duration("start-interval")?,
                retries,
            }))
        }
        _ => Err(syntax(
            line,
            format!("unknown type {kind:?} in HEALTHCHECK (try CMD)"),
        )),
    }
}

fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// One logical line: the instruction's name, its flags and its arguments.
fn parse_instruction(text: &str, escape: char, line: usize) -> Result<Parsed, DockerfileError> {
    let (word, rest) = split_sep_once(text.trim_matches(is_space));
    let (flags, rest) = extract_flags(rest, escape);
    let rest = rest.trim_matches(is_space);
    let upper = word.to_ascii_uppercase();
    let Some(&name) = INSTRUCTIONS.iter().find(|&&i| i == upper) else {
        return Err(DockerfileError::UnknownInstruction {
            line,
            instruction: word.to_string(),
        });
    };
    let command = match name {
        "FROM" => {
            let flags = Flags::parse(&flags, name, &[("platform", FlagKind::String)], &[], line)?;
            let args = split_sep(rest);
            let stage_name = match args.as_slice() {
                [_] => None,
                [_, as_, stage] if as_.eq_ignore_ascii_case("as") => {
                    let lower = stage.to_lowercase();
                    if !is_valid_stage_name(&lower) {
                        return Err(syntax(
                            line,
                            format!(
                                "invalid name for build stage {stage:?}: it must start with a letter and \
                                 contain only letters, digits, '-', '_' and '.'"
                            ),
                        ));
                    }
                    Some(lower)
                }
                _ => return Err(syntax(line, "FROM requires either one or three arguments")),
            };
            return Ok(Parsed::From {
                base: args[0].clone(),
                name: stage_name,
                platform: flags.string("platform"),
            });
        }
        "RUN" => {
            Flags::parse(
                &flags,
                name,
                &[],
                &["mount", "network", "security", "device"],
                line,
            )?;
            let cmd = command_line(rest, line)?;
            match &cmd {
                CommandLine::Exec(a) if a.is_empty() => {
                    return Err(syntax(line, "RUN requires at least one argument"));
                }
                CommandLine::Shell(s) if has_heredoc(s, escape) => {
                    return Err(DockerfileError::Heredoc { line });
                }
                _ => {}
            }
            Command::Run(cmd)
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(&flags, name, line)?;
            let cmd = command_line(rest, line)?;
            if name == "CMD" {
                Command::Cmd(cmd)
            } else {
                Command::Entrypoint(cmd)
            }
        }
        "SHELL" => {
            no_flags(&flags, name, line)?;
            match command_line(rest, line)? {
                CommandLine::Exec(a) if a.is_empty() => {
                    return Err(syntax(line, "SHELL requires at least one argument"));
                }
                CommandLine::Exec(a) => Command::Shell(a),
                CommandLine::Shell(_) => {
                    return Err(syntax(line, "SHELL requires the arguments to be in JSON form"));
                }
            }
        }
        "ENV" | "LABEL" => {
            no_flags(&flags, name, line)?;
            let pairs = parse_key_values(rest, name, escape, line)?;
            if name == "ENV" {
                Command::Env(pairs)
            } else {
                Command::Label(pairs)
            }
        }
        "ARG" => {
            no_flags(&flags, name, line)?;
            let words = parse_words(rest, escape);
            if words.is_empty() {
                return Err(syntax(line, "ARG requires at least one argument"));
            }
            let args = words
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some(("", _)) => Err(syntax(line, "ARG names can not be blank")),
                    Some((k, v)) => Ok(Arg {
                        name: k.to_string(),
                        default: Some(v.to_string()),
                        line,
                    }),
                    None => Ok(Arg {
                        name: w,
                        default: None,
                        line,
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Command::Arg(args)
        }
        "EXPOSE" => {
            no_flags(&flags, name, line)?;
            let ports = split_sep(rest);
            if ports.is_empty() {
                return Err(syntax(line, "EXPOSE requires at least one argument"));
            }
            Command::Expose(ports)
        }
        "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
            no_flags(&flags, name, line)?;
            let arg = exactly_one(rest, name, line)?;
            match name {
                "WORKDIR" => Command::Workdir(arg),
                "USER" => Command::User(arg),
                "STOPSIGNAL" => Command::StopSignal(arg),
                _ => Command::Maintainer(arg),
            }
        }
        "VOLUME" => {
            no_flags(&flags, name, line)?;
            let (words, _) = json_or_words(rest, line)?;
            if words.is_empty() {
                return Err(syntax(line, "VOLUME requires at least one argument"));
            }
            let mut volumes = Vec::new();
            for w in words {
                let w = w.trim_matches(is_space);
                if w.is_empty() {
                    return Err(syntax(line, "VOLUME specified can not be an empty string"));
                }
                volumes.push(w.to_string());
            }
            Command::Volume(volumes)
        }
        "COPY" | "ADD" => {
            let args = parse_copy(rest, &flags, name, escape, line)?;
            if name == "COPY" {
                Command::Copy(args)
            } else {
                Command::Add(args)
            }
        }
        "ONBUILD" => {
            no_flags(&flags, name, line)?;
            if rest.is_empty() {
                return Err(syntax(line, "ONBUILD requires at least one argument"));
            }
            // The trigger is the original text after ONBUILD (flags included), as the image config keeps it.
            let expression = split_sep_once(text.trim_matches(is_space))
                .1
                .trim_matches(is_space)
                .to_string();
            let trigger_name = split_sep_once(&expression).0.to_ascii_uppercase();
            match trigger_name.as_str() {
                "ONBUILD" => return Err(syntax(line, "chaining ONBUILD via ONBUILD ONBUILD isn't allowed")),
                "FROM" | "MAINTAINER" => {
                    return Err(syntax(
                        line,
                        format!("{trigger_name} isn't allowed as an ONBUILD trigger"),
                    ));
                }
                _ => {}
            }
            let trigger = match parse_instruction(&expression, escape, line)? {
                Parsed::Command(c) => c,
                Parsed::From { .. } => return Err(syntax(line, "FROM isn't allowed as an ONBUILD trigger")),
            };
            Command::Onbuild {
                expression,
                trigger: Box::new(trigger),
            }
        }
        "HEALTHCHECK" => Command::Healthcheck(parse_healthcheck(rest, &flags, line)?),
        _ => {
            return Err(DockerfileError::UnknownInstruction {
                line,
                instruction: word.to_string(),
            });
        }
    };
    Ok(Parsed::Command(command))
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    let (directives, lines) = logical_lines(text)?;
    if lines.is_empty() {
        return Err(DockerfileError::Empty);
    }
    let mut args_before_from = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for logical in lines {
        let line = logical.start;
        let original = logical.text.trim_matches(is_space).to_string();
        match parse_instruction(&logical.text, directives.escape, line)? {
            Parsed::From { base, name, platform } => {
                stages.push(Stage {
                    name,
                    base,
                    platform,
                    line,
                    original,
                    instructions: Vec::new(),
                });
            }
            Parsed::Command(command) => match stages.last_mut() {
                Some(stage) => stage.instructions.push(Instruction {
                    line,
                    original,
                    command,
                }),
                None => match command {
                    Command::Arg(args) => args_before_from.extend(args),
                    other => {
                        return Err(syntax(
                            line,
                            format!(
                                "{} before the first FROM: only ARG may come before it",
                                other.name()
                            ),
                        ));
                    }
                },
            },
        }
    }
    if stages.is_empty() {
        return Err(DockerfileError::NoStage);
    }
    Ok(Dockerfile {
        directives,
        args_before_from,
        stages,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Variable substitution (BuildKit's shell lexer).

/// A word's expansion, and its words split at unquoted whitespace after substitution.
struct Words {
    words: Vec<String>,
    buf: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if is_space(c) {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.buf.push(c);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

struct Lexer<'a, F: Fn(&str) -> Option<String>> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a F,
    escape: char,
    raw_escapes: bool,
    /// Substitutions open around the current position (`${A:-${B:-…}}`).
    depth: usize,
}

/// Most substitutions nested in one another: a word nesting more is refused, not recursed
/// into until the stack runs out.
const MAX_NESTING: usize = 64;

impl<F: Fn(&str) -> Option<String>> Lexer<'_, F> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Up to `stop` (consumed) or the end.
    fn process(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<(String, Vec<String>), String> {
        if self.depth > MAX_NESTING {
            return Err(format!("substitutions nested more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.process_inner(stop);
        self.raw_escapes = saved;
        self.depth -= 1;
        result
    }

    fn process_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words {
            words: Vec::new(),
            buf: String::new(),
            in_word: false,
        };
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match c {
                '$' => {
                    let value = self.dollar()?;
                    result.push_str(&value);
                    words.add_string(&value);
                }
                '\'' => {
                    let value = self.single_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                '"' => {
                    let value = self.double_quote()?;
                    result.push_str(&value);
                    words.add_raw_string(&value);
                }
                _ => {
                    self.pos += 1;
                    if c == self.escape {
                        if self.raw_escapes {
                            words.add_raw_char(c);
                            result.push(c);
                        }
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(c);
                        result.push(c);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err("unexpected end of statement while looking for matching single-quote".into());
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err("unexpected end of statement while looking for matching double-quote".into());
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(mut c) => {
                    self.pos += 1;
                    if c == self.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                c = n;
                                self.pos += 1;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return c.to_string();
            }
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.vars)(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let value = (self.vars)(&name);
        let mut modifier = match self.next() {
            None => return Err("syntax error: missing '}'".into()),
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(c) => c,
        };
        let mut null_is_unset = false;
        if modifier == ':' {
            null_is_unset = true;
            modifier = self.next().ok_or("syntax error: missing '}'")?;
        }
        let shown = if null_is_unset {
            format!(":{modifier}")
        } else {
            modifier.to_string()
        };
        match modifier {
            '-' | '+' | '?' | '#' | '%' => {
                let raw = modifier == '#' || modifier == '%';
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier ({shown}) in substitution"));
                }
                let (word, _) = self.process(Some('}'), raw).map_err(|e| {
                    if self.peek().is_none() {
                        "syntax error: missing '}'".to_string()
                    } else {
                        e
                    }
                })?;
                let unset = match &value {
                    None => true,
                    Some(v) => null_is_unset && v.is_empty(),
                };
                match modifier {
                    '-' => Ok(if unset { word } else { value.unwrap_or_default() }),
                    '+' => Ok(if unset { String::new() } else { word }),
                    '?' => match value {
                        Some(v) if !unset => Ok(v),
                        _ => {
                            let default = if value.is_none() {
                                "is not allowed to be unset"
                            } else {
                                "is not allowed to be empty"
                            };
                            Err(format!(
                                "{name}: {}",
                                if word.is_empty() { default } else { &word }
                            ))
                        }
                    },
                    _ => {
                        let (greedy, pattern) = match word.strip_prefix(modifier) {
                            Some(p) => (true, p),
                            None => (false, word.as_str()),
                        };
                        let pattern = glob_tokens(pattern)?;
                        let value: Vec<char> = value.unwrap_or_default().chars().collect();
                        Ok(if modifier == '#' {
                            trim_prefix(&pattern, &value, greedy)
                        } else {
                            trim_suffix(&pattern, &value, greedy)
                        })
                    }
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let (pattern, _) = self.process(Some('/'), true).map_err(|e| {
                    if self.peek().is_none() {
                        "syntax error: missing '/' in ${}".to_string()
                    } else {
                        e
                    }
                })?;
                let (replacement, _) = self.process(Some('}'), true).map_err(|e| {
                    if self.peek().is_none() {
                        "syntax error: missing '}'".to_string()
                    } else {
                        e
                    }
                })?;
                let pattern = glob_tokens(&pattern)?;
                let value: Vec<char> = value.unwrap_or_default().chars().collect();
                Ok(replace(&pattern, &value, &replacement, all))
            }
            _ => Err(format!("unsupported modifier ({shown}) in substitution")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum GlobToken {
    Char(char),
    Any,
    Star,
}

/// A substitution pattern: `*`, `?`, `\` escaping the next character (`\}` and `\/` are the characters).
fn glob_tokens(pattern: &str) -> Result<Vec<GlobToken>, String> {
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => GlobToken::Star,
            '?' => GlobToken::Any,
            '\\' => match chars.next() {
                Some(n @ ('}' | '/' | '*' | '?' | '\\')) => GlobToken::Char(n),
                Some(n) => {
                    return Err(format!(
                        "invalid pattern ({pattern}) in substitution: invalid escape '\\{n}'"
                    ));
                }
                None => GlobToken::Char('\\'),
            },
            c => GlobToken::Char(c),
        });
    }
    Ok(out)
}

fn glob_match(pattern: &[GlobToken], s: &[char]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((GlobToken::Star, rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
        Some((GlobToken::Any, rest)) => !s.is_empty() && glob_match(rest, &s[1..]),
        Some((GlobToken::Char(c), rest)) => s.first() == Some(c) && glob_match(rest, &s[1..]),
    }
}

fn trim_prefix(pattern: &[GlobToken], value: &[char], greedy: bool) -> String {
    let mut lengths: Vec<usize> = (0..=value.len()).collect();
    if greedy {
        lengths.reverse();
    }
    match lengths.into_iter().find(|&n| glob_match(pattern, &value[..n])) {
        Some(n) => value[n..].iter().collect(),
        None => value.iter().collect(),
    }
}

fn trim_suffix(pattern: &[GlobToken], value: &[char], greedy: bool) -> String {
    let mut starts: Vec<usize> = (0..=value.len()).collect();
    if !greedy {
        starts.reverse();
    }
    match starts.into_iter().find(|&n| glob_match(pattern, &value[n..])) {
        Some(n) => value[..n].iter().collect(),
        None => value.iter().collect(),
    }
}

/// `${VAR/pattern/replacement}`: the leftmost, longest match replaced (every match with `//`).
fn replace(pattern: &[GlobToken], value: &[char], replacement: &str, all: bool) -> String {
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i <= value.len() {
        let matched = if replaced && !all {
            None
        } else {
            (i..=value.len())
                .rev()
                .find(|&j| glob_match(pattern, &value[i..j]))
        };
        match matched {
            Some(j) => {
                out.push_str(replacement);
                replaced = true;
                if j > i {
                    i = j;
                    continue;
                }
                if let Some(c) = value.get(i) {
                    out.push(*c);
                }
                i += 1;
            }
            None => {
                if let Some(c) = value.get(i) {
                    out.push(*c);
                }
                i += 1;
            }
        }
    }
    out
}

fn lex<F: Fn(&str) -> Option<String>>(
    word: &str,
    vars: &F,
    escape: char,
) -> Result<(String, Vec<String>), ExpandError> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        vars,
        escape,
        raw_escapes: false,
        depth: 0,
    };
    lexer.process(None, false).map_err(|reason| ExpandError {
        word: word.to_string(),
        reason,
    })
}

/// Expands a word as docker does: variables substituted (`vars` answers a variable's value, `None` when
/// it is unset), quotes removed, the escape character escaping the next character; nothing is
/// substituted inside single quotes.
pub fn expand(
    word: &str,
    vars: &impl Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    lex(word, vars, escape).map(|(result, _)| result)
}

/// [`expand`], then the result split at whitespace that was not quoted or escaped (for `EXPOSE`).
pub fn expand_words(
    word: &str,
    vars: &impl Fn(&str) -> Option<String>,
    escape: char,
) -> Result<Vec<String>, ExpandError> {
    lex(word, vars, escape).map(|(_, words)| words)
}

// ---------------------------------------------------------------------------------------------------------
// ARG scoping and expansion per stage.

/// Variables in order of definition; setting one again replaces its value in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.0.push((name.to_string(), value.to_string())),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.0.clone()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut vars = Vars::default();
        for (k, v) in iter {
            vars.set(k.as_ref(), v.as_ref());
        }
        vars
    }
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image reference, after substitution.
    Image(String),
    /// An earlier stage, by index.
    Stage(usize),
}

/// A stage after substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedStage {
    pub name: Option<String>,
    pub base: Base,
    /// `--platform=` after substitution.
    pub platform: Option<String>,
    pub instructions: Vec<ResolvedInstruction>,
    /// The stage's variables after its last instruction (`ENV`s and `ARG`s with a value): where a stage
    /// built on this one starts.
    pub vars: Vars,
}

/// An instruction after substitution, with the build arguments in scope when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedInstruction {
    pub line: usize,
    pub original: String,
    /// Words expanded and unquoted where docker expands them; others as parsed. An `ARG`'s `default` is
    /// the value it took (`None` if it has none).
    pub command: Command,
    /// `COPY --from`: the stage (by name or index, defined earlier) or else the image it names.
    pub copy_from: Option<Base>,
    /// The `ARG`s declared in the stage so far (this one included), with their values as a `RUN` sees them
    /// (an `ENV` of the same name set later wins; empty when they have none): a `RUN`'s build-time
    /// environment on top of the config's, and the `|N K=V` prefix of its history entry.
    pub args: Vec<(String, String)>,
}

/// A stage's scope while its instructions are resolved.
#[derive(Debug, Clone, Default)]
struct Scope {
    vars: Vars,
    /// Declared ARGs, in order: name and value (if any).
    args: Vec<(String, Option<String>)>,
}

/// Applies `ARG` scoping and substitution to a parsed Dockerfile, given the `--build-arg` values. The
/// global scope (ARGs before the first FROM, on top of automatic ones such as `TARGETPLATFORM`) serves the
/// `FROM` lines; each stage is resolved in order with its base image's environment (a stage built on an
/// earlier stage takes that stage's scope instead).
#[derive(Debug)]
pub struct Resolver<'a> {
    df: &'a Dockerfile,
    build_args: &'a BTreeMap<String, String>,
    global: Vars,
    used: BTreeSet<String>,
    resolved: Vec<(Option<String>, Scope)>,
}

impl<'a> Resolver<'a> {
    /// Resolves the global scope: each ARG before the first FROM takes its `--build-arg` value, else its
    /// default expanded with the global ARGs before it. `automatic` are the predefined platform ARGs
    /// (`TARGETPLATFORM`, `BUILDPLATFORM`, …), available in FROM lines and to bare re-declarations.
    pub fn new(
        df: &'a Dockerfile,
        build_args: &'a BTreeMap<String, String>,
        automatic: &[(String, String)],
    ) -> Result<Self, DockerfileError> {
        let escape = df.directives.escape;
        let mut global: Vars = automatic.iter().map(|(k, v)| (k, v)).collect();
        let mut used = BTreeSet::new();
        for arg in &df.args_before_from {
            let value = match build_args.get(&arg.name) {
                Some(v) => Some(v.clone()),
                None => match &arg.default {
                    Some(d) => Some(
                        expand(d, &|n: &str| global.get(n).map(str::to_string), escape).map_err(
                            |source| DockerfileError::Expand {
                                line: arg.line,
                                source,
                            },
                        )?,
                    ),
                    None => None,
                },
            };
            used.insert(arg.name.clone());
            if let Some(v) = value {
                global.set(&arg.name, &v);
            }
        }
        Ok(Resolver {
            df,
            build_args,
            global,
            used,
            resolved: Vec::new(),
        })
    }

    /// The global scope's variables.
    pub fn global(&self) -> &Vars {
        &self.global
    }

    /// A stage's base and platform, expanded with the global scope.
    pub fn base(&self, index: usize) -> Result<(Base, Option<String>), DockerfileError> {
        let stage = &self.df.stages[index];
        let escape = self.df.directives.escape;
        let vars = |n: &str| self.global.get(n).map(str::to_string);
        let expand_from = |word: &str| {
            expand(word, &vars, escape).map_err(|source| DockerfileError::Expand {
                line: stage.line,
                source,
            })
        };
        let name = expand_from(&stage.base)?;
        if name.is_empty() {
            return Err(syntax(
                stage.line,
                format!("base name ({}) should not be blank", stage.base),
            ));
        }
        let platform = match &stage.platform {
            None => None,
            Some(p) => {
                let value = expand_from(p)?;
                if value.is_empty() {
                    return Err(syntax(
                        stage.line,
                        format!("empty platform value from expression {p}"),
                    ));
                }
                Some(value)
            }
        };
        let earlier = self.df.stages[..index]
            .iter()
            .rposition(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(&name)));
        let base = match earlier {
            Some(i) => Base::Stage(i),
            None if name.eq_ignore_ascii_case("scratch") => Base::Scratch,
            None => Base::Image(name),
        };
        Ok((base, platform))
    }

    /// Resolves stage `index`: `base_env` is its base image's `Env` (ignored when the stage is built on an
    /// earlier stage, whose scope it continues).
    ///
    /// # Panics
    ///
    /// When the stages before `index` were not resolved, in order, first.
    pub fn stage(
        &mut self,
        index: usize,
        base_env: &[(String, String)],
    ) -> Result<ResolvedStage, DockerfileError> {
        assert_eq!(index, self.resolved.len(), "stages are resolved in order");
        let df = self.df;
        let stage = &df.stages[index];
        let escape = df.directives.escape;
        let (base, platform) = self.base(index)?;
        let mut scope = match &base {
            Base::Stage(i) => self.resolved[*i].1.clone(),
            _ => Scope {
                vars: base_env.iter().map(|(k, v)| (k, v)).collect(),
                args: Vec::new(),
            },
        };
        let mut instructions = Vec::new();
        for instruction in &stage.instructions {
            let line = instruction.line;
            let vars = scope.vars.clone();
            let lookup = |n: &str| vars.get(n).map(str::to_string);
            let ex = |word: &str| {
                expand(word, &lookup, escape).map_err(|source| DockerfileError::Expand { line, source })
            };
            let mut copy_from = None;
            let command = match &instruction.command {
                Command::Env(pairs) | Command::Label(pairs) => {
                    let pairs = pairs
                        .iter()
                        .map(|kv| {
                            Ok(KeyValue {
                                key: ex(&kv.key)?,
                                value: ex(&kv.value)?,
                            })
                        })
                        .collect::<Result<Vec<_>, DockerfileError>>()?;
                    if let Command::Env(_) = instruction.command {
                        pairs.iter().for_each(|kv| scope.vars.set(&kv.key, &kv.value));
                        Command::Env(pairs)
                    } else {
                        Command::Label(pairs)
                    }
                }
                Command::Arg(args) => {
                    let mut out = Vec::new();
                    for arg in args {
                        let mut value = None;
                        if let Some(v) = self.build_args.get(&arg.name) {
                            value = Some(v.clone());
                        } else if let Some(d) = &arg.default {
                            let current = scope.vars.clone();
                            let lookup = |n: &str| current.get(n).map(str::to_string);
                            value = Some(
                                expand(d, &lookup, escape)
                                    .map_err(|source| DockerfileError::Expand { line, source })?,
                            );
                        } else if let Some(v) = self.global.get(&arg.name) {
                            value = Some(v.to_string());
                        }
                        self.used.insert(arg.name.clone());
                        if let Some(v) = &value {
                            scope.vars.set(&arg.name, v);
                        }
                        match scope.args.iter_mut().find(|(n, _)| *n == arg.name) {
                            Some(slot) => slot.1 = value.clone(),
                            None => scope.args.push((arg.name.clone(), value.clone())),
                        }
                        out.push(Arg {
                            name: arg.name.clone(),
                            default: value,
                            line,
                        });
                    }
                    Command::Arg(out)
                }
                Command::Expose(ports) => {
                    let mut out = Vec::new();
                    for p in ports {
                        out.extend(
                            expand_words(p, &lookup, escape)
                                .map_err(|source| DockerfileError::Expand { line, source })?,
                        );
                    }
                    Command::Expose(out)
                }
                Command::Workdir(w) => Command::Workdir(ex(w)?),
                Command::User(u) => Command::User(ex(u)?),
                Command::StopSignal(s) => Command::StopSignal(ex(s)?),
                Command::Volume(v) => Command::Volume(v.iter().map(|w| ex(w)).collect::<Result<_, _>>()?),
                Command::Copy(c) | Command::Add(c) => {
                    let expanded = CopyArgs {
                        sources: c.sources.iter().map(|w| ex(w)).collect::<Result<_, _>>()?,
                        dest: ex(&c.dest)?,
                        from: c.from.clone(),
                        chown: c.chown.as_deref().map(ex).transpose()?,
                        chmod: c.chmod.as_deref().map(ex).transpose()?,
                        link: c.link,
                        json: c.json,
                    };
                    if let Some(from) = &c.from {
                        copy_from = Some(self.copy_from(from, index, line, escape)?);
                    }
                    match instruction.command {
                        Command::Copy(_) => Command::Copy(expanded),
                        _ => Command::Add(expanded),
                    }
                }
                other => other.clone(),
            };
            let args = scope
                .args
                .iter()
                .map(|(n, v)| {
                    let value = scope
                        .vars
                        .get(n)
                        .map(str::to_string)
                        .or_else(|| v.clone())
                        .unwrap_or_default();
                    (n.clone(), value)
                })
                .collect();
            instructions.push(ResolvedInstruction {
                line,
                original: instruction.original.clone(),
                command,
                copy_from,
                args,
            });
        }
        let vars = scope.vars.clone();
        self.resolved.push((stage.name.clone(), scope));
        Ok(ResolvedStage {
            name: stage.name.clone(),
            base,
            platform,
            instructions,
            vars,
        })
    }

    fn copy_from(
        &self,
        from: &str,
        index: usize,
        line: usize,
        escape: char,
    ) -> Result<Base, DockerfileError> {
        let unexpanded = expand(from, &|_: &str| None, escape).ok();
        if unexpanded.as_deref() != Some(from) {
            return Err(syntax(
                line,
                "variable expansion is not supported for --from: define a stage with FROM using a global ARG instead",
            ));
        }
        if let Ok(i) = from.parse::<usize>() {
            if i >= index {
                return Err(syntax(
                    line,
                    format!("COPY --from={i}: no earlier stage with that index"),
                ));
            }
            return Ok(Base::Stage(i));
        }
        let earlier = self
            .resolved
            .iter()
            .rposition(|(n, _)| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(from)));
        if earlier.is_none()
            && self.df.stages[index..]
                .iter()
                .any(|s| s.name.as_deref() == Some(&from.to_lowercase()))
        {
            return Err(syntax(
                line,
                format!("COPY --from={from}: the stage must be defined before this one"),
            ));
        }
        Ok(earlier.map_or_else(|| Base::Image(from.to_string()), Base::Stage))
    }

    /// The `--build-arg`s no ARG declared so far (docker warns about them).
    pub fn unused_build_args(&self) -> Vec<String> {
        self.build_args
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }
}

/// Resolves every stage with `--build-arg` values, no automatic ARGs and empty base image environments:
/// each stage's base and each instruction's expanded form.
pub fn resolve(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<ResolvedStage>, DockerfileError> {
    resolve_with(df, build_args, &[])
}

/// [`resolve`] with the automatic platform ARGs `automatic` (see [`Resolver::new`]).
pub fn resolve_with(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    automatic: &[(String, String)],
) -> Result<Vec<ResolvedStage>, DockerfileError> {
    let mut resolver = Resolver::new(df, build_args, automatic)?;
    (0..df.stages.len()).map(|i| resolver.stage(i, &[])).collect()
}

/// The stages that building stage `target` needs: itself, the stages it is built on and the stages it
/// copies from, transitively (BuildKit builds only these; the classic builder builds every stage up to the
/// target).
pub fn needed_stages(stages: &[ResolvedStage], target: usize) -> BTreeSet<usize> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if i >= stages.len() || !needed.insert(i) {
            continue;
        }
        let stage = &stages[i];
        if let Base::Stage(b) = stage.base {
            todo.push(b);
        }
        todo.extend(stage.instructions.iter().filter_map(|ins| match ins.copy_from {
            Some(Base::Stage(s)) => Some(s),
            _ => None,
        }));
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let df = parse(&format!("FROM scratch\n{text}")).unwrap();
        assert_eq!(df.stages[0].instructions.len(), 1, "{text}");
        df.stages[0].instructions[0].clone()
    }

    fn cmd(text: &str) -> Command {
        one(text).command
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn shell(s: &str) -> CommandLine {
        CommandLine::Shell(s.to_string())
    }

    fn exec(a: &[&str]) -> CommandLine {
        CommandLine::Exec(a.iter().map(|s| s.to_string()).collect())
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
        }
    }

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |n: &str| map.get(n).cloned()
    }

    fn ex(word: &str, pairs: &[(&str, &str)]) -> String {
        expand(word, &vars(pairs), '\\').unwrap()
    }

    fn ex_err(word: &str, pairs: &[(&str, &str)]) -> String {
        expand(word, &vars(pairs), '\\').unwrap_err().reason
    }

    fn build_args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // --- lines, comments, directives, continuations

    #[test]
    fn directives_at_the_top() {
        let df = parse("# syntax=docker/dockerfile:1\n# check=skip=all\n#escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
        assert_eq!(df.directives.escape, '`');
    }

    #[test]
    fn directive_keys_are_case_insensitive_and_spaces_allowed() {
        let df = parse("#  ESCAPE = `\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '`');
    }

    #[test]
    fn directives_after_a_comment_or_blank_line_or_instruction_are_comments() {
        for text in [
            "# a comment\n# escape=`\nFROM a\n",
            "\n# escape=`\nFROM a\n",
            "FROM a\n# escape=`\n",
            "# unknown=x\n# escape=`\nFROM a\n",
        ] {
            assert_eq!(parse(text).unwrap().directives.escape, '\\', "{text:?}");
        }
    }

    #[test]
    fn repeated_or_invalid_directive_is_an_error() {
        assert_eq!(
            err("# escape=`\n# escape=\\\nFROM a"),
            "line 2: only one escape parser directive can be used"
        );
        assert_eq!(
            err("# escape=x\nFROM a"),
            "line 1: invalid escape token \"x\": it must be ` or \\"
        );
    }

    #[test]
    fn byte_order_mark_and_crlf() {
        let df = parse("\u{feff}# escape=`\r\nFROM a\r\nRUN echo `\r\n  hi\r\n").unwrap();
        assert_eq!(df.directives.escape, '`');
        assert_eq!(
            df.stages[0].instructions[0].command,
            Command::Run(shell("echo   hi"))
        );
    }

    #[test]
    fn escape_backtick_on_a_windows_style_dockerfile() {
        let text = "# escape=`\n\nFROM mcr.microsoft.com/windows/servercore\nCOPY testfile.txt c:\\\nRUN dir c:\\\nWORKDIR c:\\app `\n  \\sub\nENV GOPATH `\n\\go\n";
        let df = parse(text).unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(
            i[0].command,
            Command::Copy(CopyArgs {
                sources: strings(&["testfile.txt"]),
                dest: "c:\\".into(),
                ..Default::default()
            })
        );
        assert_eq!(i[1].command, Command::Run(shell("dir c:\\")));
        assert_eq!(i[2].command, Command::Workdir("c:\\app   \\sub".into()));
        assert_eq!(i[2].line, 6);
        assert_eq!(i[3].command, Command::Env(vec![kv("GOPATH", "\\go")]));
        // The backslashes survive expansion: only the backtick escapes.
        let resolved = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(resolved[0].instructions[0].command, i[0].command);
        assert_eq!(
            resolved[0].instructions[2].command,
            Command::Workdir("c:\\app   \\sub".into())
        );
        // With the default escape the same trailing backslash would continue the line.
        let df = parse("FROM a\nRUN dir c:\\\nRUN x\n").unwrap();
        assert_eq!(
            df.stages[0].instructions[0].command,
            Command::Run(shell("dir c:RUN x"))
        );
    }

    #[test]
    fn comments_anywhere_and_indented_instructions() {
        let df = parse("# c\nFROM a\n  # indented comment\n\t RUN x # not a comment\n").unwrap();
        assert_eq!(
            df.stages[0].instructions[0].command,
            Command::Run(shell("x # not a comment"))
        );
        assert_eq!(df.stages[0].instructions[0].line, 4);
    }

    #[test]
    fn continuations_skip_comments_and_empty_lines() {
        let text = "FROM a\nRUN foo \\\n\nbar \\\n  # comment inside\n\n   \nbaz\nRUN next\n";
        let df = parse(text).unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(i[0].command, Command::Run(shell("foo bar baz")));
        assert_eq!(i[0].line, 2);
        assert_eq!(i[0].original, "RUN foo bar baz");
        assert_eq!(i[1].line, 9);
    }

    #[test]
    fn continuation_keeps_indentation_of_following_lines() {
        assert_eq!(
            cmd("RUN apt-get update && \\\n    apt-get install x"),
            Command::Run(shell("apt-get update &&     apt-get install x"))
        );
    }

    #[test]
    fn continuation_with_trailing_blanks_and_at_end_of_file() {
        assert_eq!(cmd("RUN a \\   \t\n b"), Command::Run(shell("a  b")));
        assert_eq!(cmd("RUN a \\"), Command::Run(shell("a")));
        let df = parse("FROM a\nENV x=1 \\\n").unwrap();
        assert_eq!(
            df.stages[0].instructions[0].command,
            Command::Env(vec![kv("x", "1")])
        );
    }

    #[test]
    fn escaped_escape_is_not_a_continuation() {
        let df = parse("FROM a\nRUN echo \\\\\nRUN b\n").unwrap();
        assert_eq!(df.stages[0].instructions.len(), 2);
        assert_eq!(
            df.stages[0].instructions[0].command,
            Command::Run(shell("echo \\\\"))
        );
    }

    #[test]
    fn a_lone_escape_line_continues() {
        let df = parse("FROM a\nRUN a \\\n\\\nb\n").unwrap();
        assert_eq!(df.stages[0].instructions[0].command, Command::Run(shell("a b")));
    }

    #[test]
    fn empty_and_comment_only_files_are_errors() {
        assert_eq!(parse("").unwrap_err(), DockerfileError::Empty);
        assert_eq!(parse("# only\n\n  \n").unwrap_err(), DockerfileError::Empty);
        assert_eq!(parse("ARG x=1\n").unwrap_err(), DockerfileError::NoStage);
    }

    // --- instructions

    #[test]
    fn instructions_are_case_insensitive() {
        let df = parse("from alpine as Build\nrun echo\nCopY a b\n").unwrap();
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].instructions[0].command, Command::Run(shell("echo")));
        assert_eq!(df.stages[0].instructions[1].command.name(), "COPY");
    }

    #[test]
    fn unknown_instruction_has_its_line() {
        assert_eq!(err("FROM a\n\nFORM b\n"), "line 3: unknown instruction \"FORM\"");
    }

    #[test]
    fn from_forms() {
        let df =
            parse("FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nFROM build\nFROM scratch\n").unwrap();
        assert_eq!(df.stages.len(), 3);
        assert_eq!(df.stages[0].base, "golang:1.22");
        assert_eq!(df.stages[0].platform.as_deref(), Some("$BUILDPLATFORM"));
        assert_eq!(df.stages[0].name.as_deref(), Some("build"));
        assert_eq!(df.stages[0].line, 1);
        assert_eq!(
            df.stages[0].original,
            "FROM --platform=$BUILDPLATFORM golang:1.22 AS build"
        );
        assert_eq!(df.stages[1].name, None);
        assert_eq!(df.stage_index("BUILD").unwrap(), 0);
        assert_eq!(
            df.stage_index("nope").unwrap_err(),
            DockerfileError::UnknownTarget("nope".into())
        );
    }

    #[test]
    fn from_errors() {
        assert_eq!(
            err("FROM\n"),
            "line 1: FROM requires either one or three arguments"
        );
        assert_eq!(
            err("FROM a b\n"),
            "line 1: FROM requires either one or three arguments"
        );
        assert_eq!(
            err("FROM a IS b\n"),
            "line 1: FROM requires either one or three arguments"
        );
        assert!(err("FROM a AS 1x\n").starts_with("line 1: invalid name for build stage \"1x\""));
        assert_eq!(err("FROM --foo=x a\n"), "line 1: FROM: unknown flag --foo");
        assert_eq!(
            err("FROM --platform a\n"),
            "line 1: FROM: missing a value on flag --platform"
        );
    }

    #[test]
    fn only_arg_before_from() {
        let df = parse("ARG A=1 B\nARG C=\"x y\"\nFROM a\n").unwrap();
        assert_eq!(
            df.args_before_from,
            vec![
                Arg {
                    name: "A".into(),
                    default: Some("1".into()),
                    line: 1
                },
                Arg {
                    name: "B".into(),
                    default: None,
                    line: 1
                },
                Arg {
                    name: "C".into(),
                    default: Some("\"x y\"".into()),
                    line: 2
                },
            ]
        );
        assert_eq!(
            err("ARG a\nRUN x\nFROM a\n"),
            "line 2: RUN before the first FROM: only ARG may come before it"
        );
    }

    #[test]
    fn run_shell_and_exec_forms() {
        assert_eq!(
            cmd("RUN echo \"hi there\" 'x'"),
            Command::Run(shell("echo \"hi there\" 'x'"))
        );
        assert_eq!(
            cmd("RUN [\"echo\", \"hi there\"]"),
            Command::Run(exec(&["echo", "hi there"]))
        );
        // Not valid JSON: the shell form, as docker.
        assert_eq!(cmd("RUN [\"echo\", 'x']"), Command::Run(shell("[\"echo\", 'x']")));
        assert_eq!(cmd("RUN [ \"a\" ]"), Command::Run(exec(&["a"])));
        assert_eq!(
            err("FROM a\nRUN [\"a\", 1]"),
            "line 2: when using JSON array syntax, arrays must be comprised of strings only"
        );
        assert_eq!(err("FROM a\nRUN\n"), "line 2: RUN requires at least one argument");
    }

    #[test]
    fn run_flags_are_refused_clearly() {
        assert_eq!(
            err("FROM a\nRUN --mount=type=cache,target=/c make"),
            "line 2: RUN --mount is not supported"
        );
        assert_eq!(
            err("FROM a\nRUN --network=none x"),
            "line 2: RUN --network is not supported"
        );
        assert_eq!(
            err("FROM a\nRUN --security=insecure x"),
            "line 2: RUN --security is not supported"
        );
        assert_eq!(err("FROM a\nRUN --frob x"), "line 2: RUN: unknown flag --frob");
        // Not a flag once the command started.
        assert_eq!(cmd("RUN ls --all"), Command::Run(shell("ls --all")));
    }

    #[test]
    fn heredocs_are_refused() {
        for text in [
            "RUN <<EOF",
            "RUN cat <<-EOT > /x",
            "RUN python3 << 'PY'",
            "COPY <<EOF /dest",
            "RUN 3<<x cat",
        ] {
            let e = parse(&format!("FROM a\n{text}\nx\nEOF\n")).unwrap_err();
            assert_eq!(e, DockerfileError::Heredoc { line: 2 }, "{text}");
            assert_eq!(e.to_string(), "line 2: heredocs are not supported");
        }
        // Not heredocs: quoted, here-strings, shifts inside a word.
        assert_eq!(cmd("RUN echo '<<EOF'"), Command::Run(shell("echo '<<EOF'")));
        assert_eq!(cmd("RUN cat <<<\"x\""), Command::Run(shell("cat <<<\"x\"")));
        assert_eq!(cmd("RUN echo $((1<<2))"), Command::Run(shell("echo $((1<<2))")));
        assert_eq!(cmd("RUN [\"a\", \"<<EOF\"]"), Command::Run(exec(&["a", "<<EOF"])));
    }

    #[test]
    fn cmd_and_entrypoint() {
        assert_eq!(
            cmd("CMD [\"nginx\", \"-g\", \"daemon off;\"]"),
            Command::Cmd(exec(&["nginx", "-g", "daemon off;"]))
        );
        assert_eq!(cmd("CMD echo $HOME"), Command::Cmd(shell("echo $HOME")));
        assert_eq!(
            cmd("ENTRYPOINT [\"/bin/tini\", \"--\"]"),
            Command::Entrypoint(exec(&["/bin/tini", "--"]))
        );
        assert_eq!(
            cmd("ENTRYPOINT exec top -b"),
            Command::Entrypoint(shell("exec top -b"))
        );
        assert_eq!(cmd("CMD []"), Command::Cmd(exec(&[])));
        assert_eq!(cmd("ENTRYPOINT"), Command::Entrypoint(exec(&[])));
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            cmd("ENV a=1 b=\"two words\" c=x\\ y"),
            Command::Env(vec![kv("a", "1"), kv("b", "\"two words\""), kv("c", "x\\ y")])
        );
        assert_eq!(
            cmd("ENV name value with  spaces"),
            Command::Env(vec![kv("name", "value with  spaces")])
        );
        assert_eq!(cmd("ENV e="), Command::Env(vec![kv("e", "")]));
        assert_eq!(cmd("ENV x='a\\'b''"), Command::Env(vec![kv("x", "'a\\'b''")]));
        assert_eq!(err("FROM a\nENV"), "line 2: ENV requires at least one argument");
        assert_eq!(err("FROM a\nENV onlykey"), "line 2: ENV must have two arguments");
        assert_eq!(
            err("FROM a\nENV a=1 b"),
            "line 2: can't find = in \"b\", ENV must be of the form name=value"
        );
        assert_eq!(err("FROM a\nENV =1"), "line 2: ENV names can not be blank");
        assert_eq!(err("FROM a\nENV --x=1 a=b"), "line 2: ENV: unknown flag --x");
    }

    #[test]
    fn env_values_expand_with_quotes_removed() {
        let df = parse(
            "FROM a\nENV a=1 b=\"two words\" c=x\\ y d='$a' e=\"$a\" f=${a}0\nENV legacy  $a and \"q\"\n",
        )
        .unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(
            r[0].instructions[0].command,
            Command::Env(vec![
                kv("a", "1"),
                kv("b", "two words"),
                kv("c", "x y"),
                kv("d", "$a"),
                kv("e", ""),
                kv("f", "0")
            ])
        );
        assert_eq!(
            r[0].instructions[1].command,
            Command::Env(vec![kv("legacy", "1 and q")])
        );
    }

    #[test]
    fn label_forms() {
        assert_eq!(
            cmd("LABEL \"com.example.vendor\"=\"ACME Inc\" version=1.0 description=\"multi \\\n  line\""),
            Command::Label(vec![
                kv("\"com.example.vendor\"", "\"ACME Inc\""),
                kv("version", "1.0"),
                kv("description", "\"multi   line\"")
            ])
        );
        assert_eq!(
            cmd("LABEL maintainer someone@example.com"),
            Command::Label(vec![kv("maintainer", "someone@example.com")])
        );
        let df = parse("FROM a\nLABEL \"com.example.vendor\"=\"ACME Inc\"").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(
            r[0].instructions[0].command,
            Command::Label(vec![kv("com.example.vendor", "ACME Inc")])
        );
    }

    #[test]
    fn arg_forms() {
        assert_eq!(
            cmd("ARG a b=2 c=\"x y\" d="),
            Command::Arg(vec![
                Arg {
                    name: "a".into(),
                    default: None,
                    line: 2
                },
                Arg {
                    name: "b".into(),
                    default: Some("2".into()),
                    line: 2
                },
                Arg {
                    name: "c".into(),
                    default: Some("\"x y\"".into()),
                    line: 2
                },
                Arg {
                    name: "d".into(),
                    default: Some("".into()),
                    line: 2
                },
            ])
        );
        assert_eq!(err("FROM a\nARG"), "line 2: ARG requires at least one argument");
        assert_eq!(err("FROM a\nARG =x"), "line 2: ARG names can not be blank");
    }

    #[test]
    fn expose_workdir_user_stopsignal_maintainer() {
        assert_eq!(
            cmd("EXPOSE 80/tcp  443 53/udp"),
            Command::Expose(strings(&["80/tcp", "443", "53/udp"]))
        );
        assert_eq!(cmd("WORKDIR /a b"), Command::Workdir("/a b".into()));
        assert_eq!(cmd("USER app:app"), Command::User("app:app".into()));
        assert_eq!(cmd("STOPSIGNAL SIGKILL"), Command::StopSignal("SIGKILL".into()));
        assert_eq!(
            cmd("MAINTAINER Jane <jane@example.com>"),
            Command::Maintainer("Jane <jane@example.com>".into())
        );
        assert_eq!(
            err("FROM a\nEXPOSE"),
            "line 2: EXPOSE requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nWORKDIR"),
            "line 2: WORKDIR requires exactly one argument"
        );
        assert_eq!(err("FROM a\nUSER"), "line 2: USER requires exactly one argument");
        assert_eq!(
            err("FROM a\nSTOPSIGNAL"),
            "line 2: STOPSIGNAL requires exactly one argument"
        );
    }

    #[test]
    fn volume_json_or_list() {
        assert_eq!(
            cmd("VOLUME /data /logs"),
            Command::Volume(strings(&["/data", "/logs"]))
        );
        assert_eq!(
            cmd("VOLUME [\"/my data\", \"/x\"]"),
            Command::Volume(strings(&["/my data", "/x"]))
        );
        assert_eq!(
            err("FROM a\nVOLUME [\" \"]"),
            "line 2: VOLUME specified can not be an empty string"
        );
        assert_eq!(
            err("FROM a\nVOLUME"),
            "line 2: VOLUME requires at least one argument"
        );
    }

    #[test]
    fn copy_and_add() {
        assert_eq!(
            cmd("COPY --chown=1000:1000 --chmod=0644 --from=build --link a b /dest/"),
            Command::Copy(CopyArgs {
                sources: strings(&["a", "b"]),
                dest: "/dest/".into(),
                from: Some("build".into()),
                chown: Some("1000:1000".into()),
                chmod: Some("0644".into()),
                link: true,
                json: false,
            })
        );
        assert_eq!(
            cmd("COPY [\"my file.txt\", \"other\", \"/dest dir/\"]"),
            Command::Copy(CopyArgs {
                sources: strings(&["my file.txt", "other"]),
                dest: "/dest dir/".into(),
                json: true,
                ..Default::default()
            })
        );
        assert_eq!(
            cmd("ADD --chown=\"app\" --link=false rootfs.tar.gz /"),
            Command::Add(CopyArgs {
                sources: strings(&["rootfs.tar.gz"]),
                dest: "/".into(),
                chown: Some("app".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            err("FROM a\nCOPY onlyone"),
            "line 2: COPY requires at least two arguments: sources and a destination"
        );
        assert_eq!(
            err("FROM a\nADD --from=x a b"),
            "line 2: ADD: unknown flag --from"
        );
        assert_eq!(
            err("FROM a\nCOPY --parents a b"),
            "line 2: COPY --parents is not supported"
        );
        assert_eq!(
            err("FROM a\nCOPY --exclude=*.md a b"),
            "line 2: COPY --exclude is not supported"
        );
        assert_eq!(
            err("FROM a\nADD --checksum=sha256:x u b"),
            "line 2: ADD --checksum is not supported"
        );
        assert_eq!(
            err("FROM a\nCOPY --chown=1 --chown=2 a b"),
            "line 2: COPY: duplicate flag --chown"
        );
        assert_eq!(
            err("FROM a\nCOPY --link=maybe a b"),
            "line 2: COPY: expecting a boolean value for flag --link, not \"maybe\""
        );
        assert_eq!(
            err("FROM a\nCOPY --chown a b"),
            "line 2: COPY: missing a value on flag --chown"
        );
    }

    #[test]
    fn onbuild() {
        assert_eq!(
            cmd("ONBUILD  COPY --chown=app . /src"),
            Command::Onbuild {
                expression: "COPY --chown=app . /src".into(),
                trigger: Box::new(Command::Copy(CopyArgs {
                    sources: strings(&["."]),
                    dest: "/src".into(),
                    chown: Some("app".into()),
                    ..Default::default()
                })),
            }
        );
        assert_eq!(
            cmd("onbuild run echo $X"),
            Command::Onbuild {
                expression: "run echo $X".into(),
                trigger: Box::new(Command::Run(shell("echo $X")))
            }
        );
        assert_eq!(
            err("FROM a\nONBUILD ONBUILD RUN x"),
            "line 2: chaining ONBUILD via ONBUILD ONBUILD isn't allowed"
        );
        assert_eq!(
            err("FROM a\nONBUILD FROM b"),
            "line 2: FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err("FROM a\nONBUILD maintainer b"),
            "line 2: MAINTAINER isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err("FROM a\nONBUILD FORM b"),
            "line 2: unknown instruction \"FORM\""
        );
        assert_eq!(
            err("FROM a\nONBUILD"),
            "line 2: ONBUILD requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nONBUILD RUN <<EOF\nx\nEOF"),
            "line 2: heredocs are not supported"
        );
        // ONBUILD is not expanded.
        let df = parse("FROM a\nENV X=1\nONBUILD RUN echo $X").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].instructions[1].command, df.stages[0].instructions[1].command);
    }

    #[test]
    fn healthcheck() {
        assert_eq!(cmd("HEALTHCHECK NONE"), Command::Healthcheck(None));
        assert_eq!(cmd("HEALTHCHECK none"), Command::Healthcheck(None));
        assert_eq!(
            cmd(
                "HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=3 CMD curl -f http://localhost/ || exit 1"
            ),
            Command::Healthcheck(Some(Healthcheck {
                test: shell("curl -f http://localhost/ || exit 1"),
                interval: Duration::from_secs(300),
                timeout: Duration::from_secs(3),
                start_period: Duration::from_secs(90),
                start_interval: Duration::from_millis(500),
                retries: Some(3),
            }))
        );
        assert_eq!(
            cmd("HEALTHCHECK CMD [\"/bin/check\", \"-q\"]"),
            Command::Healthcheck(Some(Healthcheck {
                test: exec(&["/bin/check", "-q"]),
                interval: Duration::ZERO,
                timeout: Duration::ZERO,
                start_period: Duration::ZERO,
                start_interval: Duration::ZERO,
                retries: None,
            }))
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK"),
            "line 2: HEALTHCHECK requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK NONE x"),
            "line 2: HEALTHCHECK NONE takes no arguments"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK CMD"),
            "line 2: missing command after HEALTHCHECK CMD"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK RUN x"),
            "line 2: unknown type \"RUN\" in HEALTHCHECK (try CMD)"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --interval=5 CMD x"),
            "line 2: HEALTHCHECK --interval: invalid duration \"5\""
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --timeout=10us CMD x"),
            "line 2: HEALTHCHECK --timeout cannot be less than 1ms"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --retries=-1 CMD x"),
            "line 2: HEALTHCHECK --retries must be a non-negative integer, not \"-1\""
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --foo=1 CMD x"),
            "line 2: HEALTHCHECK: unknown flag --foo"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("2h45m10s").unwrap(), Duration::from_secs(9910));
        assert_eq!(parse_go_duration("10ns").unwrap(), Duration::from_nanos(10));
        assert_eq!(parse_go_duration("3µs").unwrap(), Duration::from_micros(3));
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("1d").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("-1s").is_err());
    }

    #[test]
    fn shell_is_json_only() {
        assert_eq!(
            cmd("SHELL [\"powershell\", \"-command\"]"),
            Command::Shell(strings(&["powershell", "-command"]))
        );
        assert_eq!(
            err("FROM a\nSHELL /bin/bash -c"),
            "line 2: SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(
            err("FROM a\nSHELL []"),
            "line 2: SHELL requires at least one argument"
        );
    }

    #[test]
    fn original_text_and_lines() {
        let df = parse("FROM a\n\n# c\n  LABEL a=b  \nRUN x \\\n  y\nCMD z\n").unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!((i[0].line, i[0].original.as_str()), (4, "LABEL a=b"));
        assert_eq!((i[1].line, i[1].original.as_str()), (5, "RUN x   y"));
        assert_eq!((i[2].line, i[2].original.as_str()), (7, "CMD z"));
    }

    #[test]
    fn error_lines_after_continuations() {
        assert_eq!(
            err("FROM a\nRUN a \\\n b \\\n c\nNOPE x\n"),
            "line 5: unknown instruction \"NOPE\""
        );
        assert_eq!(
            err("FROM a\nCOPY \\\n  onlyone\n"),
            "line 2: COPY requires at least two arguments: sources and a destination"
        );
    }

    // --- substitution

    #[test]
    fn expand_simple_forms() {
        let v = [("A", "a"), ("E", ""), ("P", "/usr/bin")];
        assert_eq!(ex("$A", &v), "a");
        assert_eq!(ex("${A}", &v), "a");
        assert_eq!(ex("x${A}y$A.z", &v), "xaya.z");
        assert_eq!(ex("$UNSET-x", &v), "-x");
        assert_eq!(ex("$", &v), "$");
        assert_eq!(ex("a $ b", &v), "a $ b");
        assert_eq!(ex("$P:/bin", &v), "/usr/bin:/bin");
        assert_eq!(ex("${A}_${A}", &v), "a_a");
        assert_eq!(ex("$A_b", &v), "");
    }

    #[test]
    fn expand_default_and_alternative() {
        let v = [("A", "a"), ("E", "")];
        assert_eq!(ex("${A:-d}", &v), "a");
        assert_eq!(ex("${E:-d}", &v), "d");
        assert_eq!(ex("${U:-d}", &v), "d");
        assert_eq!(ex("${A-d}", &v), "a");
        assert_eq!(ex("${E-d}", &v), "");
        assert_eq!(ex("${U-d}", &v), "d");
        assert_eq!(ex("${A:+alt}", &v), "alt");
        assert_eq!(ex("${E:+alt}", &v), "");
        assert_eq!(ex("${U:+alt}", &v), "");
        assert_eq!(ex("${A+alt}", &v), "alt");
        assert_eq!(ex("${E+alt}", &v), "alt");
        assert_eq!(ex("${U+alt}", &v), "");
        assert_eq!(ex("${U:-$A/x}", &v), "a/x");
        assert_eq!(ex("${U:-${V:-deep}}", &v), "deep");
        assert_eq!(ex("${U:-\"a b\"}", &v), "a b");
        assert_eq!(ex("${U:-a\\}b}", &v), "a}b");
    }

    #[test]
    fn expand_required() {
        let v = [("A", "a"), ("E", "")];
        assert_eq!(ex("${A:?}", &v), "a");
        assert_eq!(ex("${E?}", &v), "");
        assert_eq!(ex_err("${U?}", &v), "U: is not allowed to be unset");
        assert_eq!(ex_err("${E:?}", &v), "E: is not allowed to be empty");
        assert_eq!(ex_err("${U:?set it}", &v), "U: set it");
    }

    #[test]
    fn expand_patterns() {
        let v = [("F", "archive.tar.gz"), ("P", "/a/b/c")];
        assert_eq!(ex("${F%.*}", &v), "archive.tar");
        assert_eq!(ex("${F%%.*}", &v), "archive");
        assert_eq!(ex("${F#*.}", &v), "tar.gz");
        assert_eq!(ex("${F##*.}", &v), "gz");
        assert_eq!(ex("${P#/a}", &v), "/b/c");
        assert_eq!(ex("${P%nomatch}", &v), "/a/b/c");
        assert_eq!(ex("${P/b/x}", &v), "/a/x/c");
        assert_eq!(ex("${P//\\//_}", &v), "_a_b_c");
        assert_eq!(ex("${F/a*r/X}", &v), "X.gz");
        assert_eq!(ex_err("${F:#x}", &v), "unsupported modifier (:#) in substitution");
    }

    #[test]
    fn expand_quotes_and_escapes() {
        let v = [("A", "a")];
        assert_eq!(ex("'$A'", &v), "$A");
        assert_eq!(ex("\"$A\"", &v), "a");
        assert_eq!(ex("\\$A", &v), "$A");
        assert_eq!(ex("\"\\$A\"", &v), "$A");
        assert_eq!(ex("\"a\\\"b\"", &v), "a\"b");
        assert_eq!(ex("\"a\\nb\"", &v), "a\\nb");
        assert_eq!(ex("'a\\'", &v), "a\\");
        assert_eq!(ex("a\\ b", &v), "a b");
        assert_eq!(ex("\"it's\" '\"q\"'", &v), "it's \"q\"");
        assert_eq!(ex("trailing\\", &v), "trailing");
        // The backtick as escape character: backslashes are plain.
        let f = vars(&v);
        assert_eq!(expand("c:\\$A `$A", &f, '`').unwrap(), "c:\\a $A");
        assert_eq!(expand("\"`\"\"", &f, '`').unwrap(), "\"");
    }

    #[test]
    fn expand_errors() {
        let v = [("A", "a")];
        assert_eq!(ex_err("${A", &v), "syntax error: missing '}'");
        assert_eq!(ex_err("${A:-x", &v), "syntax error: missing '}'");
        assert_eq!(ex_err("${}", &v), "syntax error: bad substitution");
        assert_eq!(ex_err("${:a}", &v), "syntax error: bad substitution");
        assert_eq!(ex_err("${A!x}", &v), "unsupported modifier (!) in substitution");
        // Nesting is bounded, not recursed into until the stack overflows.
        let deep = |n: usize| format!("{}x{}", "${U:-".repeat(n), "}".repeat(n));
        assert_eq!(expand(&deep(60), &vars(&v), '\\').unwrap(), "x");
        assert_eq!(
            ex_err(&deep(100_000), &v),
            "substitutions nested more than 64 deep"
        );
        assert_eq!(
            ex_err("'abc", &v),
            "unexpected end of statement while looking for matching single-quote"
        );
        assert_eq!(
            ex_err("\"abc", &v),
            "unexpected end of statement while looking for matching double-quote"
        );
        assert_eq!(
            expand("'x", &vars(&v), '\\').unwrap_err().to_string(),
            "cannot expand \"'x\": unexpected end of statement while looking for matching single-quote"
        );
    }

    #[test]
    fn expand_words_splits_unquoted_whitespace() {
        let f = vars(&[("PORTS", "80 443"), ("ONE", "8080")]);
        assert_eq!(expand_words("$PORTS", &f, '\\').unwrap(), strings(&["80", "443"]));
        assert_eq!(
            expand_words("\"$PORTS\"", &f, '\\').unwrap(),
            strings(&["80 443"])
        );
        assert_eq!(
            expand_words("${ONE}/tcp", &f, '\\').unwrap(),
            strings(&["8080/tcp"])
        );
    }

    // --- resolution and ARG scoping

    #[test]
    fn global_args_only_in_from_lines() {
        let text = "ARG TAG=3.19\nARG IMG=alpine:${TAG}\nFROM $IMG\nRUN echo $TAG\nWORKDIR /w/${TAG:-none}\n";
        let df = parse(text).unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].base, Base::Image("alpine:3.19".into()));
        assert_eq!(r[0].instructions[1].command, Command::Workdir("/w/none".into()));
        assert!(r[0].instructions[0].args.is_empty());
    }

    #[test]
    fn bare_arg_redeclaration_takes_the_global_value() {
        let text = "ARG V=1\nFROM a\nARG V\nWORKDIR /$V\nFROM b\nWORKDIR /$V\n";
        let df = parse(text).unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].instructions[1].command, Command::Workdir("/1".into()));
        assert_eq!(
            r[0].instructions[1].args,
            vec![("V".to_string(), "1".to_string())]
        );
        assert_eq!(r[1].instructions[0].command, Command::Workdir("/".into()));
        // A --build-arg overrides the global default everywhere it is declared.
        let r = resolve(&df, &build_args(&[("V", "9")])).unwrap();
        assert_eq!(r[0].instructions[1].command, Command::Workdir("/9".into()));
        // A re-declaration with its own default does not take the global value.
        let df = parse("ARG V=1\nFROM a\nARG V=2\nUSER u$V\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].instructions[1].command, Command::User("u2".into()));
    }

    #[test]
    fn build_args_override_defaults_and_unused_ones_are_reported() {
        let text = "ARG BASE=alpine\nFROM ${BASE}\nARG USER=app\nARG NOVALUE\nUSER $USER\nLABEL n=\"${NOVALUE:-unset}\"\n";
        let df = parse(text).unwrap();
        let args = build_args(&[("BASE", "debian:12"), ("USER", "root"), ("EXTRA", "1")]);
        let mut resolver = Resolver::new(&df, &args, &[]).unwrap();
        let stage = resolver.stage(0, &[]).unwrap();
        assert_eq!(stage.base, Base::Image("debian:12".into()));
        assert_eq!(stage.instructions[2].command, Command::User("root".into()));
        assert_eq!(
            stage.instructions[3].command,
            Command::Label(vec![kv("n", "unset")])
        );
        assert_eq!(
            stage.instructions[3].args,
            vec![
                ("USER".to_string(), "root".to_string()),
                ("NOVALUE".to_string(), String::new())
            ]
        );
        assert_eq!(resolver.unused_build_args(), strings(&["EXTRA"]));
        // An undeclared build arg is not visible.
        let df = parse("FROM a\nWORKDIR /$EXTRA\n").unwrap();
        let r = resolve(&df, &args).unwrap();
        assert_eq!(r[0].instructions[0].command, Command::Workdir("/".into()));
    }

    #[test]
    fn args_and_env_are_visible_from_the_next_instruction() {
        let text = "FROM a\nARG A=1 B=$A\nENV X=$B Y=$X\nENV Z=$X\nARG A=2\nLABEL a=$A b=$B\n";
        let df = parse(text).unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        let i = &r[0].instructions;
        // Within one ARG, a later default sees the earlier one; within one ENV, not.
        assert_eq!(
            i[0].command,
            Command::Arg(vec![
                Arg {
                    name: "A".into(),
                    default: Some("1".into()),
                    line: 2
                },
                Arg {
                    name: "B".into(),
                    default: Some("1".into()),
                    line: 2
                },
            ])
        );
        assert_eq!(i[1].command, Command::Env(vec![kv("X", "1"), kv("Y", "")]));
        assert_eq!(i[2].command, Command::Env(vec![kv("Z", "1")]));
        assert_eq!(i[4].command, Command::Label(vec![kv("a", "2"), kv("b", "1")]));
        assert_eq!(r[0].vars.get("Z"), Some("1"));
    }

    #[test]
    fn env_wins_over_an_earlier_arg() {
        let df = parse("FROM a\nARG V=arg\nENV V=env\nWORKDIR /$V\n").unwrap();
        let r = resolve(&df, &build_args(&[("V", "cli")])).unwrap();
        assert_eq!(r[0].instructions[2].command, Command::Workdir("/env".into()));
        assert_eq!(
            r[0].instructions[2].args,
            vec![("V".to_string(), "env".to_string())]
        );
    }

    #[test]
    fn base_image_env_is_visible() {
        let df = parse("FROM golang\nWORKDIR $GOPATH/src\nENV PATH=/x:$PATH\n").unwrap();
        let args = BTreeMap::new();
        let mut resolver = Resolver::new(&df, &args, &[]).unwrap();
        let env = vec![
            ("GOPATH".to_string(), "/go".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let stage = resolver.stage(0, &env).unwrap();
        assert_eq!(stage.instructions[0].command, Command::Workdir("/go/src".into()));
        assert_eq!(
            stage.instructions[1].command,
            Command::Env(vec![kv("PATH", "/x:/bin")])
        );
    }

    #[test]
    fn stage_on_stage_inherits_scope() {
        let text =
            "FROM alpine AS base\nARG V=1\nENV E=e\nFROM base AS child\nRUN x\nLABEL v=$V e=$E\nFROM Base\n";
        let df = parse(text).unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].base, Base::Image("alpine".into()));
        assert_eq!(r[1].base, Base::Stage(0));
        assert_eq!(
            r[1].instructions[0].args,
            vec![("V".to_string(), "1".to_string())]
        );
        assert_eq!(
            r[1].instructions[1].command,
            Command::Label(vec![kv("v", "1"), kv("e", "e")])
        );
        assert_eq!(r[2].base, Base::Stage(0));
    }

    #[test]
    fn scratch_and_later_stage_names_are_not_stages() {
        let df = parse("FROM b AS a\nFROM scratch AS b\nFROM SCRATCH\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].base, Base::Image("b".into()));
        assert_eq!(r[1].base, Base::Scratch);
        assert_eq!(r[2].base, Base::Scratch);
    }

    #[test]
    fn from_platform_and_automatic_args() {
        let df = parse("FROM --platform=$BUILDPLATFORM golang AS build\nARG TARGETARCH\nRUN x\nFROM --platform=${P:-} a\n").unwrap();
        let args = BTreeMap::new();
        let auto = vec![
            ("BUILDPLATFORM".to_string(), "linux/amd64".to_string()),
            ("TARGETARCH".to_string(), "arm64".to_string()),
        ];
        let mut resolver = Resolver::new(&df, &args, &auto).unwrap();
        let stage = resolver.stage(0, &[]).unwrap();
        assert_eq!(stage.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(
            stage.instructions[1].args,
            vec![("TARGETARCH".to_string(), "arm64".to_string())]
        );
        assert_eq!(
            resolver.stage(1, &[]).unwrap_err().to_string(),
            "line 4: empty platform value from expression ${P:-}"
        );
    }

    #[test]
    fn blank_base_and_expansion_errors_have_lines() {
        let df = parse("ARG B\nFROM $B\n").unwrap();
        assert_eq!(
            resolve(&df, &BTreeMap::new()).unwrap_err().to_string(),
            "line 2: base name ($B) should not be blank"
        );
        let df = parse("FROM a\nRUN x\nWORKDIR ${X\n").unwrap();
        assert_eq!(
            resolve(&df, &BTreeMap::new()).unwrap_err(),
            DockerfileError::Expand {
                line: 3,
                source: ExpandError {
                    word: "${X".into(),
                    reason: "syntax error: missing '}'".into()
                }
            }
        );
        let df = parse("ARG A=\"x\nFROM a\n").unwrap();
        assert!(
            resolve(&df, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .starts_with("line 1: cannot expand")
        );
    }

    #[test]
    fn copy_sources_dest_chown_expand_but_not_from() {
        let text = "FROM a AS build\nFROM b\nARG D=/dst U=app\nCOPY --from=build --chown=$U:$U [\"$D/x y\", \"${D}/\"]\nCOPY --from=0 a b\nCOPY --from=nginx:1 a b\nADD --chmod=${M:-755} s* $D\n";
        let df = parse(text).unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        let i = &r[1].instructions;
        assert_eq!(
            i[1].command,
            Command::Copy(CopyArgs {
                sources: strings(&["/dst/x y"]),
                dest: "/dst/".into(),
                from: Some("build".into()),
                chown: Some("app:app".into()),
                json: true,
                ..Default::default()
            })
        );
        assert_eq!(i[1].copy_from, Some(Base::Stage(0)));
        assert_eq!(i[2].copy_from, Some(Base::Stage(0)));
        assert_eq!(i[3].copy_from, Some(Base::Image("nginx:1".into())));
        assert_eq!(
            i[4].command,
            Command::Add(CopyArgs {
                sources: strings(&["s*"]),
                dest: "/dst".into(),
                chmod: Some("755".into()),
                ..Default::default()
            })
        );
        for (from, message) in [
            (
                "$X",
                "line 2: variable expansion is not supported for --from: define a stage with FROM using a global ARG instead",
            ),
            ("1", "line 2: COPY --from=1: no earlier stage with that index"),
            (
                "later",
                "line 2: COPY --from=later: the stage must be defined before this one",
            ),
        ] {
            let df = parse(&format!("FROM a\nCOPY --from={from} a b\nFROM c AS later\n")).unwrap();
            assert_eq!(
                resolve(&df, &BTreeMap::new()).unwrap_err().to_string(),
                message,
                "{from}"
            );
        }
    }

    #[test]
    fn expose_volume_user_stopsignal_expand() {
        let df = parse("FROM a\nARG P=\"80 443\" S=TERM\nEXPOSE $P 53/udp\nVOLUME [\"/v/$S\"]\nSTOPSIGNAL SIG$S\nUSER ${S,,}x\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            r.to_string(),
            "line 6: cannot expand \"${S,,}x\": unsupported modifier (,) in substitution"
        );
        let df = parse(
            "FROM a\nARG P=\"80 443\" S=TERM\nEXPOSE $P 53/udp\nVOLUME [\"/v/$S\"]\nSTOPSIGNAL SIG$S\n",
        )
        .unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        let i = &r[0].instructions;
        assert_eq!(i[1].command, Command::Expose(strings(&["80", "443", "53/udp"])));
        assert_eq!(i[2].command, Command::Volume(strings(&["/v/TERM"])));
        assert_eq!(i[3].command, Command::StopSignal("SIGTERM".into()));
    }

    #[test]
    fn run_cmd_entrypoint_shell_are_not_expanded() {
        let df = parse("FROM a\nARG A=1\nRUN echo $A\nCMD [\"$A\"]\nENTRYPOINT $A\nSHELL [\"/bin/$A\"]\nHEALTHCHECK CMD $A\nMAINTAINER $A\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        for (resolved, parsed) in r[0].instructions.iter().zip(&df.stages[0].instructions).skip(1) {
            assert_eq!(resolved.command, parsed.command);
        }
        assert_eq!(
            r[0].instructions[1].args,
            vec![("A".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn escape_directive_applies_to_expansion() {
        let df = parse("# escape=`\nFROM a\nARG A=1\nWORKDIR c:\\dir\\`$A\\$A\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(
            r[0].instructions[1].command,
            Command::Workdir("c:\\dir\\$A\\1".into())
        );
    }

    #[test]
    fn parse_words_keeps_quotes_and_escapes() {
        assert_eq!(
            parse_words("a \"b c\" 'd e' f\\ g", '\\'),
            strings(&["a", "\"b c\"", "'d e'", "f\\ g"])
        );
        assert_eq!(parse_words("x=\"\"  y=''", '\\'), strings(&["x=\"\"", "y=''"]));
        assert_eq!(parse_words("a\\", '\\'), strings(&["a"]));
    }

    #[test]
    fn flags_extraction() {
        assert_eq!(
            extract_flags("--a=1 --b=\"x y\" rest --c", '\\'),
            (strings(&["--a=1", "--b=x y"]), "rest --c".to_string())
        );
        assert_eq!(
            extract_flags("--a -- --b", '\\'),
            (strings(&["--a"]), " --b".to_string())
        );
        assert_eq!(extract_flags("-x y", '\\'), (vec![], "-x y".to_string()));
        assert_eq!(
            extract_flags("--only", '\\'),
            (strings(&["--only"]), String::new())
        );
    }

    // --- more: whole files, multi-stage, edge cases

    #[test]
    fn a_realistic_multi_stage_build() {
        let text = r#"# syntax=docker/dockerfile:1.7
ARG GO_VERSION=1.22
ARG ALPINE=3.19

FROM golang:${GO_VERSION}-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -ldflags "-X main.version=${VERSION}" \
      -o /out/app ./cmd/app

FROM alpine:${ALPINE} AS runtime
ARG ALPINE
LABEL org.opencontainers.image.version="${ALPINE}" \
      maintainer="ops@example.com"
RUN addgroup -S app && adduser -S -G app app
COPY --from=build --chown=app:app /out/app /usr/local/bin/app
USER app
EXPOSE 8080
HEALTHCHECK --interval=30s CMD ["/usr/local/bin/app", "health"]
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["serve"]
"#;
        let df = parse(text).unwrap();
        assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1.7"));
        assert_eq!(df.args_before_from.len(), 2);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].instructions.len(), 6);
        assert_eq!(df.stages[0].instructions[5].line, 11);
        assert_eq!(
            df.stages[0].instructions[5].original,
            "RUN CGO_ENABLED=0 go build -ldflags \"-X main.version=${VERSION}\"       -o /out/app ./cmd/app"
        );
        assert_eq!(df.stages[1].line, 14);
        assert_eq!(df.stage_index("runtime").unwrap(), 1);

        let args = build_args(&[("VERSION", "1.2.3"), ("ALPINE", "3.20")]);
        let r = resolve(&df, &args).unwrap();
        assert_eq!(r[0].base, Base::Image("golang:1.22-alpine".into()));
        assert_eq!(r[0].name.as_deref(), Some("build"));
        assert_eq!(
            r[0].instructions[5].args,
            vec![("VERSION".to_string(), "1.2.3".to_string())]
        );
        assert_eq!(r[1].base, Base::Image("alpine:3.20".into()));
        assert_eq!(
            r[1].instructions[1].command,
            Command::Label(vec![
                kv("org.opencontainers.image.version", "3.20"),
                kv("maintainer", "ops@example.com")
            ])
        );
        assert_eq!(r[1].instructions[3].copy_from, Some(Base::Stage(0)));
        assert_eq!(needed_stages(&r, 1), BTreeSet::from([0, 1]));
        assert_eq!(needed_stages(&r, 0), BTreeSet::from([0]));
    }

    #[test]
    fn needed_stages_follow_bases_and_copies() {
        let text = "FROM a AS one\nFROM b AS two\nFROM one AS three\nCOPY --from=two x y\nFROM c\nCOPY --from=0 a b\n";
        let r = resolve(&parse(text).unwrap(), &BTreeMap::new()).unwrap();
        assert_eq!(needed_stages(&r, 2), BTreeSet::from([0, 1, 2]));
        assert_eq!(needed_stages(&r, 3), BTreeSet::from([0, 3]));
        assert_eq!(needed_stages(&r, 1), BTreeSet::from([1]));
    }

    #[test]
    fn duplicate_stage_names_refer_to_the_latest_earlier_one() {
        let text = "FROM a AS s\nFROM b AS s\nFROM s\nCOPY --from=s x y\n";
        let df = parse(text).unwrap();
        assert_eq!(df.stage_index("s").unwrap(), 1);
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[2].base, Base::Stage(1));
        assert_eq!(r[2].instructions[0].copy_from, Some(Base::Stage(1)));
    }

    #[test]
    fn copy_from_stage_names_are_case_insensitive() {
        let df = parse("FROM a AS Build\nFROM b\nCOPY --from=BUILD x y\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[1].instructions[0].copy_from, Some(Base::Stage(0)));
    }

    #[test]
    fn global_args_chain_and_build_args_replace_them() {
        let text =
            "ARG REG=docker.io\nARG REPO=${REG}/library/alpine\nARG TAG\nFROM ${REPO}:${TAG:-latest}\n";
        let df = parse(text).unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].base, Base::Image("docker.io/library/alpine:latest".into()));
        let r = resolve(&df, &build_args(&[("REG", "quay.io"), ("TAG", "3")])).unwrap();
        assert_eq!(r[0].base, Base::Image("quay.io/library/alpine:3".into()));
        let r = resolve(&df, &build_args(&[("REPO", "busybox")])).unwrap();
        assert_eq!(r[0].base, Base::Image("busybox:latest".into()));
        let args = build_args(&[("TAG", "3")]);
        let resolver = Resolver::new(&df, &args, &[]).unwrap();
        assert_eq!(resolver.global().get("REPO"), Some("docker.io/library/alpine"));
        assert!(resolver.unused_build_args().is_empty());
    }

    #[test]
    fn an_arg_declared_twice_keeps_the_build_arg() {
        let df = parse("FROM a\nARG V=1\nARG V=2\nUSER $V\n").unwrap();
        let r = resolve(&df, &build_args(&[("V", "cli")])).unwrap();
        assert_eq!(r[0].instructions[2].command, Command::User("cli".into()));
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].instructions[2].command, Command::User("2".into()));
        assert_eq!(
            r[0].instructions[2].args,
            vec![("V".to_string(), "2".to_string())]
        );
    }

    #[test]
    fn arg_default_with_quotes_and_build_arg_taken_verbatim() {
        let df = parse("FROM a\nARG Q=\"a b\" R='$HOME'\nLABEL q=$Q r=$R\n").unwrap();
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(
            r[0].instructions[1].command,
            Command::Label(vec![kv("q", "a b"), kv("r", "$HOME")])
        );
        // A build arg's value is not lexed again.
        let r = resolve(&df, &build_args(&[("Q", "'x' $y")])).unwrap();
        assert_eq!(
            r[0].instructions[1].command,
            Command::Label(vec![kv("q", "'x' $y"), kv("r", "$HOME")])
        );
    }

    #[test]
    fn separators_may_be_tabs() {
        assert_eq!(cmd("RUN\techo\thi"), Command::Run(shell("echo\thi")));
        assert_eq!(cmd("EXPOSE\t80\t\t443"), Command::Expose(strings(&["80", "443"])));
        assert_eq!(
            cmd("COPY\ta\tb"),
            Command::Copy(CopyArgs {
                sources: strings(&["a"]),
                dest: "b".into(),
                ..Default::default()
            })
        );
    }

    #[test]
    fn copy_shell_form_splits_on_whitespace_only() {
        // As docker: quotes do not group COPY's words in the shell form; expansion then sees them.
        assert_eq!(
            cmd("COPY \"a b\" /c"),
            Command::Copy(CopyArgs {
                sources: strings(&["\"a", "b\""]),
                dest: "/c".into(),
                ..Default::default()
            })
        );
        let df = parse("FROM x\nCOPY \"a b\" /c\n").unwrap();
        assert!(matches!(
            resolve(&df, &BTreeMap::new()),
            Err(DockerfileError::Expand { line: 2, .. })
        ));
    }

    #[test]
    fn backtick_escape_in_words_and_continuations() {
        let text = "# escape=`\nFROM a\nENV P=c:\\x Q=a` b `\n    R=\"x`\"y\"\n# comment\nRUN echo `\n  # comment in continuation\n  done\n";
        let df = parse(text).unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(
            i[0].command,
            Command::Env(vec![kv("P", "c:\\x"), kv("Q", "a` b"), kv("R", "\"x`\"y\"")])
        );
        assert_eq!(i[1].command, Command::Run(shell("echo   done")));
        assert_eq!(i[1].line, 6);
        let r = resolve(&df, &BTreeMap::new()).unwrap();
        assert_eq!(
            r[0].instructions[0].command,
            Command::Env(vec![kv("P", "c:\\x"), kv("Q", "a b"), kv("R", "x\"y")])
        );
    }

    #[test]
    fn flags_take_quotes_and_escapes_away() {
        assert_eq!(
            cmd("COPY --chown=\"user name\":'grp' a b"),
            Command::Copy(CopyArgs {
                sources: strings(&["a"]),
                dest: "b".into(),
                chown: Some("user name:grp".into()),
                ..Default::default()
            })
        );
    }

    #[test]
    fn every_instruction_name_is_known() {
        for name in INSTRUCTIONS {
            let text = format!("FROM a\n{name}\n");
            let e = parse(&text);
            assert!(
                !matches!(e, Err(DockerfileError::UnknownInstruction { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn instructions_parsed_for_commit_changes() {
        // `runner commit -c` parses single instructions the same way.
        let i = one("ENV PATH=/opt/bin:$PATH");
        assert_eq!(i.command, Command::Env(vec![kv("PATH", "/opt/bin:$PATH")]));
        let df = parse("FROM a\nENV PATH=/opt/bin:$PATH\n").unwrap();
        let args = BTreeMap::new();
        let mut resolver = Resolver::new(&df, &args, &[]).unwrap();
        let env = vec![("PATH".to_string(), "/usr/bin".to_string())];
        let stage = resolver.stage(0, &env).unwrap();
        assert_eq!(
            stage.instructions[0].command,
            Command::Env(vec![kv("PATH", "/opt/bin:/usr/bin")])
        );
        assert_eq!(stage.vars.get("PATH"), Some("/opt/bin:/usr/bin"));
    }

    #[test]
    fn vars_keep_order_and_replace_in_place() {
        let mut v: Vars = [("A", "1"), ("B", "2")].into_iter().collect();
        v.set("A", "3");
        v.set("C", "4");
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            vec![("A", "3"), ("B", "2"), ("C", "4")]
        );
        assert_eq!(v.to_vec().len(), 3);
    }

    #[test]
    fn special_parameters_and_numbers() {
        let v = [("1", "one")];
        assert_eq!(ex("$1x", &v), "onex");
        assert_eq!(ex("$$", &v), "");
        assert_eq!(ex("a$@b", &v), "ab");
        assert_eq!(ex("${10}", &v), "");
    }

    #[test]
    fn unicode_words() {
        let v = [("ÉTÉ", "summer")];
        assert_eq!(ex("$ÉTÉ/☃", &v), "summer/☃");
        assert_eq!(
            cmd("LABEL clé=\"valeur ☃\""),
            Command::Label(vec![kv("clé", "\"valeur ☃\"")])
        );
    }

    /// Random text made of the characters that matter never panics the parser, the resolver or `expand`.
    #[test]
    fn arbitrary_input_never_panics() {
        const PIECES: &[&str] = &[
            "FROM ",
            "RUN ",
            "ENV ",
            "ARG ",
            "COPY ",
            "ONBUILD ",
            "HEALTHCHECK ",
            "LABEL ",
            "EXPOSE ",
            "CMD ",
            "AS ",
            "a",
            "b",
            "=",
            " ",
            "\t",
            "\n",
            "\r\n",
            "\\",
            "`",
            "\"",
            "'",
            "$",
            "{",
            "}",
            ":",
            "-",
            "+",
            "?",
            "#",
            "%",
            "/",
            "*",
            "[",
            "]",
            ",",
            "--",
            "<<",
            "é",
            "☃",
            "# escape=`\n",
            "${A",
            "$A",
            "0",
        ];
        let mut state: u64 = 0x5eed;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let args = build_args(&[("A", "x y"), ("B", "")]);
        for _ in 0..20_000 {
            let len = next(24);
            let text: String = (0..len).map(|_| PIECES[next(PIECES.len())]).collect();
            if let Ok(df) = parse(&text) {
                let _ = resolve(&df, &args);
            }
            let vars = |n: &str| if n == "A" { Some("a*b".to_string()) } else { None };
            let _ = expand(&text, &vars, '\\');
            let _ = expand_words(&text, &vars, '`');
        }
    }
}
