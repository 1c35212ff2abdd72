//! `.dockerignore`: which files of a build context are left out, matched as docker matches them (moby's
//! `patternmatcher` and `ignorefile`).
//!
//! One pattern a line; a line starting with `#` is a comment; blanks around a pattern are trimmed; a
//! pattern is cleaned like a path (`a//b/./c/..` is `a/b`, a trailing `/` goes) and a leading `/` is
//! dropped (patterns are relative to the context's root). `*` matches any run of characters but `/`, `?`
//! one character but `/`, `[...]` a class (`[^...]` negated, ranges), `\` escapes the next character;
//! `**` matches any number of directories (`**/x`, `a/**/b`) and a trailing `**` anything below. A pattern
//! starting with `!` is an exception: it re-includes what it matches. A path is excluded when the last
//! pattern that matches it, or one of its parent directories, is not an exception. So `dir` excludes
//! everything under `dir`, and `!dir/keep` after it re-includes `dir/keep` and what is under it.
//!
//! A walker can skip an excluded directory altogether when no exception after the last pattern that
//! excluded it could match anything below it ([`DockerIgnore::check`] answers [`Verdict::SkipDir`]).

/// A `.dockerignore` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerIgnoreError {
    #[error("line {line}: illegal exclusion pattern \"!\"")]
    EmptyException { line: usize },
    #[error("line {line}: bad pattern {pattern:?}: {reason}")]
    BadPattern {
        line: usize,
        pattern: String,
        reason: &'static str,
    },
}

/// What to do with a path of the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Include,
    /// Leave it out (a directory: still look inside, an exception may re-include something there).
    Exclude,
    /// A directory left out with everything below it: no need to walk it.
    SkipDir,
}

/// The patterns of a `.dockerignore`, in order.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without its `!`.
    text: String,
    exception: bool,
    matcher: Matcher,
}

/// How a pattern matches, as `patternmatcher` compiles it: literal patterns compare, a literal followed
/// by a trailing `**` is a prefix, a leading `**` followed by a literal a suffix, the rest a glob.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Glob(Vec<Token>),
}

#[derive(Debug, Clone)]
enum Token {
    Char(char),
    /// `?`: one character but `/`.
    One,
    /// `*`: any run of characters but `/`.
    Star,
    /// `**` before more pattern: nothing, or anything ending with `/`.
    Dirs,
    /// `**` at the end: anything.
    Rest,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A path cleaned as Go's `filepath.Clean` cleans it.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// A bracket expression after its `[`: the class and the characters it took; `None` if malformed (as
/// `filepath.Match` judges it).
fn parse_class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = chars.first() == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let item = |i: &mut usize| -> Option<char> {
        let c = *chars.get(*i)?;
        if c == '-' || c == ']' {
            return None;
        }
        *i += 1;
        if c == '\\' {
            let e = *chars.get(*i)?;
            *i += 1;
            return Some(e);
        }
        Some(c)
    };
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        let low = item(&mut i)?;
        let high = if chars.get(i) == Some(&'-') {
            i += 1;
            item(&mut i)?
        } else {
            low
        };
        ranges.push((low, high));
    }
}

fn compile(pattern: &str) -> Result<Matcher, &'static str> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Glob,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut kind = Kind::Exact;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let first = i == 0;
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    tokens.push(Token::Rest);
                    kind = if kind == Kind::Exact {
                        Kind::Prefix
                    } else {
                        Kind::Glob
                    };
                } else {
                    tokens.push(Token::Dirs);
                    kind = Kind::Glob;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Glob;
            }
            '?' => {
                tokens.push(Token::One);
                kind = Kind::Glob;
            }
            '\\' => match chars.get(i) {
                Some(&e) => {
                    i += 1;
                    tokens.push(Token::Char(e));
                    kind = Kind::Glob;
                }
                None => return Err("a trailing \\ escapes nothing"),
            },
            '[' => {
                let (class, used) = parse_class(&chars[i..]).ok_or("malformed [...] class")?;
                i += used;
                tokens.push(class);
                kind = Kind::Glob;
            }
            c => tokens.push(Token::Char(c)),
        }
    }
    // As patternmatcher: the kind detected last wins, and a prefix or suffix pattern is matched as a
    // string (`**` is two characters of the pattern).
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_string()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_string()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_string()),
        Kind::Glob => Matcher::Glob(tokens),
    })
}

impl Token {
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::One | Token::Star => c != '/',
            Token::Dirs | Token::Rest => true,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

/// The glob's states after reading `input`: (token index, inside a `**/`), closed under empty moves.
fn run(tokens: &[Token], input: &str) -> Vec<(usize, bool)> {
    fn close(tokens: &[Token], states: &mut Vec<(usize, bool)>) {
        let mut i = 0;
        while i < states.len() {
            let (t, inner) = states[i];
            if !inner && t < tokens.len() {
                let mut add = |s: (usize, bool)| {
                    if !states.contains(&s) {
                        states.push(s);
                    }
                };
                match tokens[t] {
                    Token::Star | Token::Rest => add((t + 1, false)),
                    Token::Dirs => {
                        add((t + 1, false));
                        add((t, true));
                    }
                    _ => {}
                }
            }
            i += 1;
        }
    }
    let mut states = vec![(0, false)];
    close(tokens, &mut states);
    for c in input.chars() {
        let mut next = Vec::new();
        for &(t, inner) in &states {
            if t == tokens.len() {
                continue;
            }
            let token = &tokens[t];
            let mut targets = [None, None];
            match (token, inner) {
                (Token::Dirs, true) => {
                    targets[0] = Some((t, true));
                    if c == '/' {
                        targets[1] = Some((t + 1, false));
                    }
                }
                (Token::Dirs, false) => {}
                (Token::Star | Token::Rest, _) if token.accepts(c) => targets[0] = Some((t, false)),
                (_, _) if token.accepts(c) => targets[0] = Some((t + 1, false)),
                _ => {}
            }
            for s in targets.into_iter().flatten() {
                if !next.contains(&s) {
                    next.push(s);
                }
            }
        }
        close(tokens, &mut next);
        if next.is_empty() {
            return next;
        }
        states = next;
    }
    states
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(p) => path == p,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|s| path == s)
            }
            Matcher::Glob(tokens) => run(tokens, path).contains(&(tokens.len(), false)),
        }
    }

    /// The pattern matches `path` or one of its parent directories.
    fn matches_or_parent(&self, path: &str) -> bool {
        self.matches(path) || path.match_indices('/').any(|(i, _)| self.matches(&path[..i]))
    }

    /// Whether some path below the directory `dir` could match.
    fn could_match_below(&self, dir: &str) -> bool {
        let below = format!("{dir}/");
        match &self.matcher {
            Matcher::Exact(p) => p.starts_with(&below),
            Matcher::Prefix(p) => p.starts_with(&below) || below.starts_with(p.as_str()),
            Matcher::Suffix(_) => true,
            Matcher::Glob(tokens) => !run(tokens, &below).is_empty(),
        }
    }
}

/// A path relative to the context's root, cleaned (`./a//b/` is `a/b`, the root is `.`).
fn relative(path: &str) -> String {
    let cleaned = clean(path);
    match cleaned.trim_start_matches('/') {
        "" => ".".to_string(),
        p => p.to_string(),
    }
}

impl DockerIgnore {
    /// Parses a `.dockerignore`'s text.
    pub fn parse(text: &str) -> Result<Self, DockerIgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let mut cleaned = String::new();
            if !pattern.is_empty() {
                cleaned = clean(pattern);
                if cleaned.len() > 1 && cleaned.starts_with('/') {
                    cleaned.remove(0);
                }
            }
            // patternmatcher cleans the pattern once more, `!` included.
            let full = clean(&if exception { format!("!{cleaned}") } else { cleaned });
            let (exception, text) = match full.strip_prefix('!') {
                Some("") => return Err(DockerIgnoreError::EmptyException { line }),
                Some(rest) => (true, rest.to_string()),
                None => (false, full),
            };
            let matcher = compile(&text).map_err(|reason| DockerIgnoreError::BadPattern {
                line,
                pattern: raw.trim().to_string(),
                reason,
            })?;
            patterns.push(Pattern {
                text,
                exception,
                matcher,
            });
        }
        Ok(DockerIgnore { patterns })
    }

    /// The patterns, cleaned, each with whether it is an exception (`!`).
    pub fn patterns(&self) -> impl Iterator<Item = (&str, bool)> {
        self.patterns.iter().map(|p| (p.text.as_str(), p.exception))
    }

    /// Whether there is no pattern at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The index of the last pattern matching `path` or a parent of it.
    fn last_match(&self, path: &str) -> Option<usize> {
        self.patterns.iter().rposition(|p| p.matches_or_parent(path))
    }

    /// What to do with `rel_path` (relative to the context's root, `/`-separated; it is cleaned): include
    /// it, exclude it, or — for a directory — skip it with everything below it. The root is never excluded.
    pub fn check(&self, rel_path: &str, is_dir: bool) -> Verdict {
        let path = relative(rel_path);
        if path == "." {
            return Verdict::Include;
        }
        let Some(last) = self.last_match(&path) else {
            return Verdict::Include;
        };
        if self.patterns[last].exception {
            return Verdict::Include;
        }
        let rescued = self.patterns[last + 1..]
            .iter()
            .any(|p| p.exception && p.could_match_below(&path));
        if is_dir && !rescued {
            Verdict::SkipDir
        } else {
            Verdict::Exclude
        }
    }

    /// Whether `rel_path` is left out of the context.
    pub fn excluded(&self, rel_path: &str, is_dir: bool) -> bool {
        self.check(rel_path, is_dir) != Verdict::Include
    }

    /// Whether the directory `rel_path` is left out with everything below it (no exception can re-include
    /// anything there), so that a walker need not enter it.
    pub fn can_skip_dir(&self, rel_path: &str) -> bool {
        self.check(rel_path, true) == Verdict::SkipDir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    fn ex(text: &str, path: &str) -> bool {
        di(text).excluded(path, false)
    }

    #[test]
    fn go_clean() {
        for (input, want) in [
            ("", "."),
            ("a/b", "a/b"),
            ("a//b/", "a/b"),
            ("./a/./b/.", "a/b"),
            ("a/b/../c", "a/c"),
            ("a/../..", ".."),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("/", "/"),
            ("//a", "/a"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_cleaning() {
        let d =
            di("\u{feff}# comment\n\n   \n  node_modules/  \n/build\n./tmp//x/../y\n #notacomment\n!/keep\n");
        let patterns: Vec<_> = d.patterns().collect();
        assert_eq!(
            patterns,
            vec![
                ("node_modules", false),
                ("build", false),
                ("tmp/y", false),
                ("#notacomment", false),
                ("keep", true)
            ]
        );
        assert!(DockerIgnore::parse("").unwrap().is_empty());
    }

    #[test]
    fn exact_paths_and_their_contents() {
        let text = "node_modules\nbuild/out\n";
        assert!(ex(text, "node_modules"));
        assert!(ex(text, "node_modules/a/b.js"));
        assert!(ex(text, "build/out/x"));
        assert!(!ex(text, "build"));
        assert!(!ex(text, "build/outer"));
        assert!(!ex(text, "src/node_modules"));
        assert!(!ex(text, "node_modules2"));
    }

    #[test]
    fn star_and_question_mark_stop_at_slashes() {
        let text = "*.log\ntemp?\n*/cache\n";
        assert!(ex(text, "a.log"));
        assert!(!ex(text, "dir/a.log"));
        assert!(ex(text, "temp1"));
        assert!(ex(text, "temp1/anything"));
        assert!(!ex(text, "temp"));
        assert!(!ex(text, "temp12"));
        assert!(ex(text, "x/cache"));
        assert!(ex(text, "x/cache/y"));
        assert!(!ex(text, "x/y/cache"));
    }

    #[test]
    fn double_star() {
        let text = "**/*.go\n";
        assert!(ex(text, "main.go"));
        assert!(ex(text, "a/b/c.go"));
        assert!(!ex(text, "a/b/c.gox"));
        let text = "a/**/b\n";
        assert!(ex(text, "a/b"));
        assert!(ex(text, "a/x/b"));
        assert!(ex(text, "a/x/y/b/z"));
        assert!(!ex(text, "a/xb"));
        let text = "docs/**\n";
        assert!(ex(text, "docs/a"));
        assert!(ex(text, "docs/a/b"));
        assert!(!ex(text, "docs"));
        let text = "**\n";
        assert!(ex(text, "anything/at/all"));
        let text = "**/secret\n";
        assert!(ex(text, "secret"));
        assert!(ex(text, "a/b/secret"));
        assert!(ex(text, "a/secret/inside"));
        assert!(!ex(text, "a/notsecret"));
        // A leading ** followed by a literal is a suffix match, as patternmatcher does it.
        let text = "**.bak\n";
        assert!(ex(text, "x.bak"));
        assert!(ex(text, "d/x.bak"));
        // A literal then a trailing ** is a prefix match.
        let text = "tmp**\n";
        assert!(ex(text, "tmp"));
        assert!(ex(text, "tmpfile"));
        assert!(ex(text, "tmp/x"));
        let text = "*/**\n";
        assert!(ex(text, "a/b"));
        assert!(!ex(text, "a"));
    }

    #[test]
    fn classes_and_escapes() {
        let text = "file[0-9].txt\n[^a]*.md\nlit\\*star\n";
        assert!(ex(text, "file3.txt"));
        assert!(!ex(text, "filex.txt"));
        assert!(ex(text, "README.md"));
        assert!(!ex(text, "about.md"));
        assert!(ex(text, "lit*star"));
        assert!(!ex(text, "litXstar"));
        let text = "[a-c][!x]\n";
        assert!(ex(text, "a!"));
        assert!(ex(text, "bx"));
        assert!(!ex(text, "dx"));
    }

    #[test]
    fn exceptions_last_match_wins() {
        let text = "*.md\n!README.md\nREADME*.md\n";
        assert!(ex(text, "CHANGES.md"));
        assert!(ex(text, "README.md"));
        let text = "*.md\n!README*.md\nREADME-secret.md\n";
        assert!(!ex(text, "README.md"));
        assert!(ex(text, "README-secret.md"));
        assert!(ex(text, "other.md"));
        assert!(!ex(text, "main.rs"));
    }

    #[test]
    fn exceptions_reinclude_below_excluded_directories() {
        let text = "dist\n!dist/keep\n";
        let d = di(text);
        assert!(d.excluded("dist", true));
        assert!(d.excluded("dist/a.js", false));
        assert!(!d.excluded("dist/keep", true));
        assert!(!d.excluded("dist/keep/file", false));
        assert_eq!(d.check("dist", true), Verdict::Exclude);
        assert!(!d.can_skip_dir("dist"));
        assert!(d.can_skip_dir("dist/other"));
        // An exception before the exclusion is overridden.
        let d = di("!dist/keep\ndist\n");
        assert!(d.excluded("dist/keep", false));
        assert!(d.can_skip_dir("dist"));
    }

    #[test]
    fn everything_but() {
        let d = di("*\n!src\n!Dockerfile\nsrc/**/*.tmp\n");
        assert!(d.excluded("README", false));
        assert!(d.can_skip_dir("target"));
        assert!(!d.excluded("Dockerfile", false));
        assert!(!d.excluded("src", true));
        assert!(!d.excluded("src/main.rs", false));
        assert!(d.excluded("src/a/b.tmp", false));
        assert!(d.excluded("src/x.tmp", false));
    }

    #[test]
    fn skipping_directories_with_wildcard_exceptions() {
        let d = di("vendor\n!vendor/**/LICENSE\n");
        assert!(d.excluded("vendor", true));
        assert!(!d.can_skip_dir("vendor"));
        assert!(!d.can_skip_dir("vendor/a/b"));
        assert!(!d.excluded("vendor/a/b/LICENSE", false));
        assert!(d.excluded("vendor/a/b/README", false));
        let d = di("vendor\n!**/keep\n");
        assert!(!d.can_skip_dir("vendor/deep"));
        let d = di("vendor\n!*/keep\n");
        assert!(!d.can_skip_dir("vendor"));
        assert!(d.can_skip_dir("vendor/deep"));
        assert_eq!(d.check("vendor/x", false), Verdict::Exclude);
        let d = di("a\n!ab**\n");
        assert!(d.can_skip_dir("a"));
        let d = di("a\n!a/b**\n");
        assert!(!d.can_skip_dir("a"));
        // Not excluded: nothing to skip.
        assert!(!di("x\n").can_skip_dir("y"));
    }

    #[test]
    fn paths_are_cleaned_and_the_root_is_never_excluded() {
        let d = di("*\n");
        assert!(!d.excluded(".", true));
        assert!(!d.excluded("", true));
        assert!(!d.excluded("./", true));
        assert!(d.excluded("./a//b/", false));
        assert!(d.excluded("/a", false));
        let d = di("a/b\n");
        assert!(d.excluded("a/./b/../b/c", false));
    }

    #[test]
    fn leading_slash_and_trailing_slash_in_patterns() {
        let d = di("/secret/\n");
        assert!(d.excluded("secret", false));
        assert!(d.excluded("secret/x", false));
        assert!(!d.excluded("a/secret", false));
    }

    #[test]
    fn errors_carry_the_line() {
        assert_eq!(
            DockerIgnore::parse("a\n!\n").unwrap_err().to_string(),
            "line 2: illegal exclusion pattern \"!\""
        );
        assert_eq!(
            DockerIgnore::parse("! \n").unwrap_err(),
            DockerIgnoreError::EmptyException { line: 1 }
        );
        assert_eq!(
            DockerIgnore::parse("ok\n\nfile[a\n").unwrap_err().to_string(),
            "line 3: bad pattern \"file[a\": malformed [...] class"
        );
        assert!(DockerIgnore::parse("[]\n").is_err());
        assert!(DockerIgnore::parse("[a-]\n").is_err());
        assert!(DockerIgnore::parse("x\\\n").is_err());
    }

    #[test]
    fn unicode_paths() {
        let d = di("dé?à/*\n");
        assert!(d.excluded("déjà/x", false));
        assert!(!d.excluded("déjà", false));
    }

    /// The behaviour moby's patternmatcher tests pin down (a pattern, a path, whether it is excluded).
    #[test]
    fn patternmatcher_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "fileutils.go", true),
            ("*.go", "fileutils.go", true),
            ("**", "file", true),
            ("**/", "file", true),
            ("**", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("dir/**", "dir/dir2/file", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**file", "file", true),
            ("**file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("a\\\\", "a\\", true),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\*b", "a*b", true),
            ("a\\*b", "ab", false),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[^c]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a?b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("*x", "xxx", true),
        ];
        for (pattern, path, want) in cases {
            let d = DockerIgnore::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(
                d.excluded(path, false),
                *want,
                "pattern {pattern:?} path {path:?}"
            );
        }
        for bad in [
            "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]",
        ] {
            assert!(DockerIgnore::parse(bad).is_err(), "{bad:?}");
        }
        let multi: &[(&str, &str, bool)] = &[
            ("**\n!util/docker/web", "util/docker/web/foo", false),
            (
                "**\n!util/docker/web\nutil/docker/web/foo",
                "util/docker/web/foo",
                true,
            ),
            (
                "**\n!dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            ("!fileutils.go\n*.go", "fileutils.go", true),
            ("*.go\n!fileutils.go", "fileutils.go", false),
            ("docs\n!docs/README.md", "docs/README.md", false),
            ("docs/\n!docs/README.md", "docs/README.md", false),
            ("docs/*\n!docs/README.md", "docs/README.md", false),
            ("*.go", ".", false),
        ];
        for (text, path, want) in multi {
            assert_eq!(
                di(text).excluded(path, false),
                *want,
                "patterns {text:?} path {path:?}"
            );
        }
    }

    /// Random patterns and paths never panic the parser or the matcher.
    #[test]
    fn arbitrary_patterns_never_panic() {
        const PIECES: &[&str] = &[
            "a", "b", "/", "*", "**", "?", "[", "]", "^", "-", "\\", "!", ".", "..", " ", "\n", "#", "é",
        ];
        let mut state: u64 = 0xd0c;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        for _ in 0..20_000 {
            let pattern: String = (0..next(12)).map(|_| PIECES[next(PIECES.len())]).collect();
            let path: String = (0..next(10))
                .map(|_| PIECES[next(PIECES.len())])
                .filter(|p| *p != "\n")
                .collect();
            if let Ok(d) = DockerIgnore::parse(&pattern) {
                let _ = d.check(&path, next(2) == 0);
            }
        }
    }
}
