//! The build context as the engine receives it: a tar stream of a directory, without
//! what `.dockerignore` excludes (the Dockerfile and `.dockerignore` themselves are
//! always sent, as the docker CLI does). Symbolic links are stored as links, never
//! followed; files are opened with `O_NOFOLLOW` and checked again once open; anything
//! but files, directories and links (sockets, fifos, devices) is left out.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

/// One `.dockerignore` rule.
#[derive(Debug)]
struct Rule {
    segments: Vec<String>,
    exclude: bool,
}

/// The rules of a `.dockerignore` file (moby's pattern matcher: `filepath.Match` per
/// path segment, `**` for any number of segments, `!` for exceptions, the last matching
/// rule wins, a rule matching a directory matches everything under it).
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Ignore {
    /// Parse the text of a `.dockerignore`.
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclude, pat) = match line.strip_prefix('!') {
                Some(p) => (false, p.trim()),
                None => (true, line),
            };
            let segments: Vec<String> = pat
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            if segments.is_empty() {
                continue;
            }
            rules.push(Rule { segments, exclude });
        }
        Self { rules }
    }

    /// Whether any rule is an exception (then an excluded directory must still be walked).
    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| !r.exclude)
    }

    /// Whether `rel` (a path relative to the context, `/`-separated) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for rule in &self.rules {
            // The path itself or one of its parents.
            let hit = (1..=segs.len()).any(|n| match_segments(&rule.segments, &segs[..n]));
            if hit {
                excluded = rule.exclude;
            }
        }
        excluded
    }
}

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((s, prest)) => glob(p.as_bytes(), s.as_bytes()) && match_segments(rest, prest),
            None => false,
        },
    }
}

/// `filepath.Match` within one segment: `*`, `?`, `[...]` (with `^`/`!` and ranges), `\`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    match p[0] {
        b'*' => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        b'?' => !s.is_empty() && glob(&p[1..], &s[1..]),
        b'[' => {
            let Some(end) = p[1..].iter().position(|&c| c == b']').map(|i| i + 1) else {
                return false;
            };
            let Some(&c) = s.first() else { return false };
            let mut class = &p[1..end];
            let negate = matches!(class.first(), Some(b'^' | b'!'));
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(&p[end + 1..], &s[1..])
        }
        b'\\' if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        c => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// Chunks of the tar stream go to the channel the request body reads.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the engine stopped reading the context"))
    }
}

/// What was sent: counts for the log.
#[derive(Debug, Default)]
pub struct Sent {
    /// Entries in the tar stream.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Stream `dir` as a tar archive into `tx` (on a blocking thread). `keep` names paths
/// (relative) always sent even when `.dockerignore` excludes them.
pub fn stream(
    dir: PathBuf,
    keep: Vec<String>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> tokio::task::JoinHandle<std::io::Result<Sent>> {
    tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        let result = write_tar(
            &dir,
            &keep,
            ChannelWriter {
                tx,
                buf: Vec::new(),
            },
        );
        if let Err(e) = &result {
            let _ = err_tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        result
    })
}

fn write_tar(dir: &Path, keep: &[String], out: ChannelWriter) -> std::io::Result<Sent> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(e),
    };
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut sent = Sent::default();
    walk(dir, "", &ignore, keep, &mut tar, &mut sent)?;
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(sent)
}

fn walk(
    root: &Path,
    rel: &str,
    ignore: &Ignore,
    keep: &[String],
    tar: &mut tar::Builder<ChannelWriter>,
    sent: &mut Sent,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let Some(name) = name.to_str() else {
            // Not UTF-8: the engine's tar reader would mangle it; leave it out.
            continue;
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&path);
        let meta = std::fs::symlink_metadata(&full)?;
        let excluded = ignore.excluded(&path) && !keep.contains(&path);
        let ft = meta.file_type();
        if ft.is_dir() {
            if !excluded {
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
                sent.entries += 1;
            }
            if !excluded
                || ignore.has_exceptions()
                || keep.iter().any(|k| k.starts_with(&format!("{path}/")))
            {
                walk(root, &path, ignore, keep, tar, sent)?;
            }
        } else if excluded {
            continue;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&full)?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, &path, &target)?;
            sent.entries += 1;
        } else if ft.is_file() {
            // Opened without following a link, then checked: what is read is what was listed.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&full)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
            h.set_size(meta.len());
            tar.append_data(&mut h, &path, std::io::Read::take(file, meta.len()))?;
            sent.entries += 1;
            sent.bytes += meta.len();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_rules() {
        let ig = Ignore::parse(
            "# comment\n*.pyc\n/build\n**/__pycache__\ndocs\n!docs/keep.md\n.git\nsecret?.txt\n[ab].log\n",
        );
        assert!(ig.excluded("x.pyc"));
        assert!(!ig.excluded("src/x.pyc"), "`*.pyc` is the top level only");
        assert!(ig.excluded("build"));
        assert!(ig.excluded("build/out/a"));
        assert!(ig.excluded("src/deep/__pycache__/m.pyc"));
        assert!(ig.excluded("docs/index.md"));
        assert!(!ig.excluded("docs/keep.md"));
        assert!(ig.excluded(".git/config"));
        assert!(ig.excluded("secret1.txt"));
        assert!(!ig.excluded("secret12.txt"));
        assert!(ig.excluded("a.log") && !ig.excluded("c.log"));
        assert!(!ig.excluded("flows/main.py"));
        assert!(!Ignore::default().excluded("anything"));
    }
}
