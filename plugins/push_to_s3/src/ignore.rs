//! gitignore patterns as pathspec's `gitwildmatch` applies them in Prefect's
//! `filter_files`: every pattern is tried on a path, the last one that matches decides
//! (`!` re-includes), and a pattern that matches a directory matches everything in it.

/// One pattern.
#[derive(Debug)]
struct Rule {
    negate: bool,
    dir_only: bool,
    /// Path segments; `**` matches any number of segments.
    segments: Vec<String>,
}

/// The patterns of an ignore file, in order.
#[derive(Debug, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Parse gitignore text: blank lines and `#` comments skipped, trailing spaces
    /// trimmed, `!` negates, a trailing `/` matches directories only, a pattern with a
    /// `/` elsewhere is anchored at the root, others match at any depth.
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let mut p = line.trim_end_matches(['\r', ' ']);
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let negate = p.starts_with('!');
            if negate {
                p = &p[1..];
            }
            if let Some(rest) = p.strip_prefix('\\')
                && (rest.starts_with('#') || rest.starts_with('!'))
            {
                p = rest;
            }
            let dir_only = p.ends_with('/');
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                continue;
            }
            let anchored = p.contains('/');
            let mut segments: Vec<String> = p
                .trim_start_matches('/')
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if !anchored && segments.first().map(String::as_str) != Some("**") {
                segments.insert(0, "**".into());
            }
            rules.push(Rule {
                negate,
                dir_only,
                segments,
            });
        }
        Rules(rules)
    }

    /// Whether the file at `path` (`/`-separated, relative to the root) is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for rule in &self.0 {
            // A match of the whole path (a file) or of a leading directory.
            let hit = (1..=parts.len()).any(|n| {
                let is_dir = n < parts.len();
                (is_dir || !rule.dir_only) && match_segments(&rule.segments, &parts[..n])
            });
            if hit {
                excluded = !rule.negate;
            }
        }
        excluded
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((seg, more)) => {
                glob(first.as_bytes(), seg.as_bytes()) && match_segments(rest, more)
            }
            None => false,
        },
    }
}

/// One segment: `*` (any run), `?` (one byte), `[...]` / `[!...]` classes with ranges,
/// `\x` a literal `x`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|k| glob(&p[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let mut i = 1;
            let negate = matches!(p.get(i), Some(b'!' | b'^'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != b']') {
                first = false;
                let lo = p[i];
                if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
                    matched |= lo <= c && c <= p[i + 2];
                    i += 3;
                } else {
                    matched |= lo == c;
                    i += 1;
                }
            }
            if i >= p.len() {
                // No closing `]`: a literal `[`.
                return c == b'[' && glob(&p[1..], &s[1..]);
            }
            matched != negate && glob(&p[i + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::Rules;

    #[test]
    fn prefect_default_ignore_file() {
        // The patterns of Prefect's bundled `.prefectignore`.
        let r = Rules::parse(
            "# prefect artifacts\n.prefectignore\n\n# python artifacts\n__pycache__/\n*.py[cod]\n\
             *$py.class\n*.egg-info/\n*.egg\n\n# Type checking artifacts\n.mypy_cache/\n\
             .dmypy.json\ndmypy.json\n.pyre/\n\n# IPython\nprofile_default/\nipython_config.py\n\
             *.ipynb_checkpoints/*\n\n# Environments\n.python-version\n.env\n.venv\nenv/\nvenv/\n\n\
             # MacOS\n.DS_Store\n\n# Dask\ndask-worker-space/\n\n# Editors\n.idea/\n.vscode/\n\n\
             # VCS\n.git/\n.hg/\n",
        );
        for path in [
            ".prefectignore",
            "__pycache__/a.cpython-311.pyc",
            "pkg/__pycache__/x.pyc",
            "flows/x.pyc",
            "flows/x.pyd",
            ".git/HEAD",
            ".git/objects/ab/cd",
            "sub/.DS_Store",
            "venv/bin/python",
            "a.egg-info/PKG-INFO",
            ".ipynb_checkpoints/x",
        ] {
            assert!(r.excludes(path), "{path} should be excluded");
        }
        for path in [
            "flows/main.py",
            "requirements.txt",
            "environment/x",
            "x.pyx",
            ".gitignore",
            "venv",
            "nb/.ipynb_checkpoints/x",
        ] {
            assert!(!r.excludes(path), "{path} should be kept");
        }
    }

    #[test]
    fn anchoring_negation_and_double_star() {
        let r =
            Rules::parse("/build\ndocs/*.md\n!docs/keep.md\n**/tmp/**\nlogs/**/*.log\n\\#hash\n");
        assert!(r.excludes("build/out.o"));
        assert!(
            !r.excludes("src/build/out.o"),
            "a leading / anchors at the root"
        );
        assert!(r.excludes("docs/a.md"));
        assert!(
            !r.excludes("docs/keep.md"),
            "the last matching pattern decides"
        );
        assert!(!r.excludes("docs/sub/a.md"), "* does not cross /");
        assert!(r.excludes("a/tmp/b/c"));
        assert!(r.excludes("logs/x.log") && r.excludes("logs/a/b/x.log"));
        assert!(!r.excludes("logs/x.txt"));
        assert!(r.excludes("#hash"));
        let r = Rules::parse("data/\n[a-c]?.txt\n[!x]z\n");
        assert!(
            r.excludes("data/x") && !r.excludes("data"),
            "dir/ matches directories only"
        );
        assert!(r.excludes("b1.txt") && !r.excludes("d1.txt"));
        assert!(r.excludes("yz") && !r.excludes("xz"));
    }
}
