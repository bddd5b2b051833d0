//! Reading git's config format ourselves, to check a repository's configuration before
//! git obeys it, and to answer `remote-url` / `is-sparse` without running git.
//!
//! Fail closed: anything this parser does not understand is an error, and every key
//! outside [`allowed`] makes the repository refused. The files read here are host-owned
//! (written by git from checked inputs); the check is the second line of defence against
//! git writing something a remote chose (`.gitmodules` values copied by `submodule init`).

use std::path::Path;

/// One `section[ "subsection"].key [= value]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Lower case.
    pub section: String,
    /// Case kept (git compares subsections case-sensitively).
    pub sub: Option<String>,
    /// Lower case.
    pub key: String,
    /// `None` for a bare key (boolean true).
    pub value: Option<String>,
}

impl Entry {
    pub fn is(&self, section: &str, sub: Option<&str>, key: &str) -> bool {
        self.section == section && self.sub.as_deref() == sub && self.key == key
    }

    /// The value read as git reads a boolean.
    pub fn truthy(&self) -> bool {
        match &self.value {
            None => true,
            Some(v) => matches!(v.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1"),
        }
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Parse a config file's text.
pub(crate) fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut section: Option<(String, Option<String>)> = None;
    let mut line = 1;
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            if chars.next() == Some('\n') {
                line += 1;
            }
        }
        let Some(c) = chars.next() else { break };
        match c {
            '#' | ';' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '[' => section = Some(section_header(&mut chars, line)?),
            c if c.is_ascii_alphabetic() => {
                let Some((sec, sub)) = section.clone() else {
                    return Err(format!("line {line}: key outside a section"));
                };
                let (key, value) = key_value(c, &mut chars, &mut line)?;
                out.push(Entry {
                    section: sec,
                    sub,
                    key,
                    value,
                });
            }
            _ => return Err(format!("line {line}: unexpected `{c}`")),
        }
    }
    Ok(out)
}

/// `[section]`, `[section "sub"]` or the deprecated `[section.sub]` (after its `[`).
fn section_header(chars: &mut Chars<'_>, line: usize) -> Result<(String, Option<String>), String> {
    let bad = || format!("line {line}: bad section header");
    let mut name = String::new();
    let mut sub = None;
    loop {
        match chars.next() {
            Some(']') => break,
            Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '.' => {
                name.push(c.to_ascii_lowercase())
            }
            Some(' ') | Some('\t') if sub.is_none() => {
                while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                    chars.next();
                }
                if chars.next() != Some('"') {
                    return Err(bad());
                }
                sub = Some(subsection(chars, line)?);
                if chars.next() != Some(']') {
                    return Err(bad());
                }
                break;
            }
            _ => return Err(bad()),
        }
    }
    // `[section.sub]`: the deprecated spelling, subsection lower-cased.
    if sub.is_none()
        && let Some((s, rest)) = name.split_once('.')
    {
        sub = Some(rest.to_string());
        name = s.to_string();
    }
    if name.is_empty() || name.contains('.') {
        return Err(format!("line {line}: bad section name"));
    }
    Ok((name, sub))
}

/// A quoted subsection name (after its opening quote).
fn subsection(chars: &mut Chars<'_>, line: usize) -> Result<String, String> {
    let mut s = String::new();
    loop {
        match chars.next() {
            Some('"') => return Ok(s),
            Some('\\') => match chars.next() {
                Some(c) if c != '\n' => s.push(c),
                _ => return Err(format!("line {line}: bad subsection")),
            },
            Some('\n') | None => return Err(format!("line {line}: bad subsection")),
            Some(c) => s.push(c),
        }
    }
}

/// `key [= value]` starting with `first`.
fn key_value(
    first: char,
    chars: &mut Chars<'_>,
    line: &mut usize,
) -> Result<(String, Option<String>), String> {
    let mut key = first.to_ascii_lowercase().to_string();
    while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '-') {
        key.push(c.to_ascii_lowercase());
    }
    while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
    let value = match chars.peek() {
        None | Some('\n') | Some('\r') | Some('#') | Some(';') => None,
        Some('=') => {
            chars.next();
            Some(value(chars, line)?)
        }
        _ => return Err(format!("line {line}: bad key `{key}`")),
    };
    Ok((key, value))
}

/// A value up to the end of its line: quotes, escapes, continuation lines, comments.
fn value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    line: &mut usize,
) -> Result<String, String> {
    let mut v = String::new();
    let mut quoted = false;
    // Length of `v` up to its last character that was quoted or not blank, so trailing
    // blanks outside quotes are dropped.
    let mut keep = 0;
    while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
        chars.next();
    }
    loop {
        match chars.next() {
            None => break,
            Some('\n') => {
                if quoted {
                    return Err(format!("line {line}: unterminated quote"));
                }
                *line += 1;
                break;
            }
            Some('#') | Some(';') if !quoted => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        *line += 1;
                        break;
                    }
                }
                break;
            }
            Some('"') => {
                quoted = !quoted;
                keep = v.len();
            }
            Some('\\') => {
                match chars.next() {
                    Some('\n') => *line += 1,
                    Some('\r') if chars.peek() == Some(&'\n') => {
                        chars.next();
                        *line += 1;
                    }
                    Some('n') => v.push('\n'),
                    Some('t') => v.push('\t'),
                    Some('b') => {
                        v.pop();
                    }
                    Some(c @ ('\\' | '"')) => v.push(c),
                    _ => return Err(format!("line {line}: bad escape")),
                }
                keep = v.len();
            }
            Some(c) => {
                v.push(c);
                if quoted || !c.is_whitespace() {
                    keep = v.len();
                }
            }
        }
    }
    v.truncate(keep);
    Ok(v)
}

/// Read and parse `path`; a missing file is empty.
pub(crate) fn read(path: &Path) -> Result<Vec<Entry>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
            parse(&text)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a repository config entry is one git writes for the operations Hoist runs,
/// with nothing that makes git run a program, read another file or reach another host.
/// `core.worktree` is judged by the caller (git writes it into submodule git dirs).
pub(crate) fn allowed(e: &Entry) -> bool {
    let sub = e.sub.as_deref();
    match (e.section.as_str(), e.key.as_str()) {
        (
            "core",
            "repositoryformatversion"
            | "filemode"
            | "bare"
            | "logallrefupdates"
            | "symlinks"
            | "ignorecase"
            | "precomposeunicode"
            | "sparsecheckout"
            | "sparsecheckoutcone",
        ) => sub.is_none(),
        ("extensions", "partialclone" | "worktreeconfig" | "objectformat") => sub.is_none(),
        ("index", "sparse") => sub.is_none(),
        // Only `origin`: every operation names it, and its URL is checked before use.
        ("remote", "url" | "fetch" | "promisor" | "partialclonefilter" | "tagopt") => {
            sub == Some("origin")
        }
        ("branch", "remote") => sub.is_some() && e.value.as_deref() == Some("origin"),
        ("branch", "merge") => sub.is_some(),
        ("submodule", "url" | "active") => sub.is_some(),
        ("submodule", "update") => {
            sub.is_some()
                && matches!(
                    e.value.as_deref(),
                    Some("checkout" | "rebase" | "merge" | "none")
                )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(section: &str, sub: Option<&str>, key: &str, value: Option<&str>) -> Entry {
        Entry {
            section: section.into(),
            sub: sub.map(Into::into),
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn parses_what_git_writes_and_what_an_attacker_would() {
        let text = "[core]\n\trepositoryformatversion = 0\n\tbare = false\n\
            [remote \"origin\"]\n\turl = file:///x/y # comment\n\
            [Core] FSMonitor = \"touch /tmp/c; \\\"q\\\"\" ; c\n\
            [submodule.Lib]\n\tactive\n\
            [include]\n path = a\\\n b\n";
        let got = parse(text).unwrap();
        assert_eq!(
            got,
            vec![
                e("core", None, "repositoryformatversion", Some("0")),
                e("core", None, "bare", Some("false")),
                e("remote", Some("origin"), "url", Some("file:///x/y")),
                e("core", None, "fsmonitor", Some("touch /tmp/c; \"q\"")),
                e("submodule", Some("lib"), "active", None),
                e("include", None, "path", Some("a b")),
            ]
        );
        for bad in [
            "key = v\n",
            "[core\n",
            "[a \"b]\n",
            "[a] k = \"open\n",
            "[a] 9 = 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_allow_list() {
        assert!(allowed(&e("remote", Some("origin"), "url", Some("x"))));
        assert!(allowed(&e(
            "submodule",
            Some("a"),
            "update",
            Some("rebase")
        )));
        for no in [
            e("remote", Some("evil"), "url", Some("x")),
            e("remote", Some("origin"), "uploadpack", Some("touch /c")),
            e("core", None, "fsmonitor", Some("touch /c")),
            e("core", None, "hookspath", Some(".")),
            e("core", None, "sshcommand", Some("x")),
            e("core", None, "gitproxy", Some("x")),
            e("credential", None, "helper", Some("x")),
            e("url", Some("x"), "insteadof", Some("y")),
            e("http", None, "proxy", Some("x")),
            e("include", None, "path", Some("x")),
            e("includeif", Some("gitdir:/"), "path", Some("x")),
            e("filter", Some("x"), "smudge", Some("x")),
            e("submodule", Some("a"), "update", Some("!touch /c")),
            e("branch", Some("main"), "remote", Some("evil")),
        ] {
            assert!(!allowed(&no), "{no:?}");
        }
    }
}
