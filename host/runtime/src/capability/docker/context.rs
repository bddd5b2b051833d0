//! The build context as the engine receives it: a tar stream of a directory, without
//! what `.dockerignore` excludes (the Dockerfile and `.dockerignore` themselves are
//! always sent, as the docker CLI does). Symbolic links are stored as links, never
//! followed; files are opened with `O_NOFOLLOW` and checked again once open; anything
//! but files, directories and links (sockets, fifos, devices) is left out.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
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

/// One entry of the context, as listed before anything is sent.
#[derive(Debug)]
enum Kind {
    Dir(std::fs::Metadata),
    /// A link and its target, read once: what is checked is what is sent.
    Link(PathBuf, std::fs::Metadata),
    File,
}

/// The context as it will be sent: every entry (relative path, kind), listed once,
/// links checked. Files are read when sent, opened beneath the context without
/// following any link.
#[derive(Debug)]
pub struct Scan {
    root: PathBuf,
    entries: Vec<(String, Kind)>,
}

/// Why a context cannot be sent.
#[derive(Debug)]
pub enum ScanError {
    /// A link that is absolute or leads outside the context (path, target).
    Link(String, String),
    Io(std::io::Error),
}

impl From<std::io::Error> for ScanError {
    fn from(e: std::io::Error) -> Self {
        ScanError::Io(e)
    }
}

impl Scan {
    /// List `dir` without what `.dockerignore` excludes (`keep` is always listed), and
    /// refuse links the engine could follow out of the context: absolute targets, and
    /// relative ones that lead above it once every link on the way is followed as listed.
    /// (Some engines' `RUN --mount` follows context links from the host's side:
    /// CVE-2024-1753 in buildah before 1.35.3.)
    pub fn new(dir: PathBuf, keep: &[String]) -> Result<Self, ScanError> {
        let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(text) => Ignore::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        list(&dir, "", &ignore, keep, &mut entries)?;
        let links: std::collections::HashMap<&str, &Path> = entries
            .iter()
            .filter_map(|(p, k)| match k {
                Kind::Link(t, _) => Some((p.as_str(), t.as_path())),
                _ => None,
            })
            .collect();
        for (path, target) in &links {
            if !stays_inside(&links, path, target) {
                return Err(ScanError::Link(
                    path.to_string(),
                    target.to_string_lossy().into_owned(),
                ));
            }
        }
        Ok(Self { root: dir, entries })
    }
}

/// Whether the link at `path` to `target` stays inside the context when followed, every
/// link on the way followed as `links` records it (at most 40 hops, as the kernel).
fn stays_inside(links: &std::collections::HashMap<&str, &Path>, path: &str, target: &Path) -> bool {
    let mut cur: Vec<String> = path.split('/').map(str::to_string).collect();
    cur.pop();
    let mut todo: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let push_target = |todo: &mut std::collections::VecDeque<String>, t: &Path| -> bool {
        if t.is_absolute() {
            return false;
        }
        let parts: Vec<String> = t.to_string_lossy().split('/').map(str::to_string).collect();
        for p in parts.into_iter().rev() {
            todo.push_front(p);
        }
        true
    };
    if !push_target(&mut todo, target) {
        return false;
    }
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                if cur.pop().is_none() {
                    return false;
                }
            }
            name => {
                cur.push(name.to_string());
                if let Some(next) = links.get(cur.join("/").as_str()) {
                    hops += 1;
                    cur.pop();
                    if hops > 40 || !push_target(&mut todo, next) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Stream the scanned context as a tar archive into `tx` (on a blocking thread), with
/// `replace` (a relative path and its bytes) sent in place of that file's content: the
/// Dockerfile the engine builds is the text Hoist checked, not the file on disk.
pub fn stream(
    scan: Scan,
    replace: (String, Vec<u8>),
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> tokio::task::JoinHandle<std::io::Result<Sent>> {
    tokio::task::spawn_blocking(move || {
        let err_tx = tx.clone();
        let result = write_tar(
            &scan,
            &replace,
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

fn write_tar(
    scan: &Scan,
    replace: &(String, Vec<u8>),
    out: ChannelWriter,
) -> std::io::Result<Sent> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut sent = Sent::default();
    let root = std::fs::File::open(&scan.root)?;
    let mut replaced = false;
    for (path, kind) in &scan.entries {
        let mut h = tar::Header::new_gnu();
        match kind {
            Kind::Dir(meta) => {
                h.set_metadata_in_mode(meta, tar::HeaderMode::Deterministic);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Kind::Link(target, meta) => {
                h.set_metadata_in_mode(meta, tar::HeaderMode::Deterministic);
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, path, target)?;
            }
            Kind::File => {
                let file = open_beneath(&root, &scan.root, path)?;
                let meta = file.metadata()?;
                if !meta.is_file() {
                    continue;
                }
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
                if *path == replace.0 {
                    h.set_size(replace.1.len() as u64);
                    tar.append_data(&mut h, path, replace.1.as_slice())?;
                    sent.bytes += replace.1.len() as u64;
                    replaced = true;
                } else {
                    h.set_size(meta.len());
                    tar.append_data(&mut h, path, std::io::Read::take(file, meta.len()))?;
                    sent.bytes += meta.len();
                }
            }
        }
        sent.entries += 1;
    }
    if !replaced {
        return Err(std::io::Error::other(format!(
            "{} was not in the build context as listed",
            replace.0
        )));
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(sent)
}

/// Open `rel` for reading beneath the context without following any link on the way
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); where the kernel has no
/// `openat2` (before 5.6), `O_NOFOLLOW` on the last component.
fn open_beneath(
    root: &std::fs::File,
    root_path: &Path,
    rel: &str,
) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    match rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(rustix::io::Errno::NOSYS) => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(root_path.join(rel)),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

fn list(
    root: &Path,
    rel: &str,
    ignore: &Ignore,
    keep: &[String],
    out: &mut Vec<(String, Kind)>,
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
            let walk = !excluded
                || ignore.has_exceptions()
                || keep.iter().any(|k| k.starts_with(&format!("{path}/")));
            if !excluded {
                out.push((path.clone(), Kind::Dir(meta)));
            }
            if walk {
                list(root, &path, ignore, keep, out)?;
            }
        } else if excluded {
            continue;
        } else if ft.is_symlink() {
            out.push((path, Kind::Link(std::fs::read_link(&full)?, meta)));
        } else if ft.is_file() {
            out.push((path, Kind::File));
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

    #[test]
    fn links_that_leave_the_context_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("ctx");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let link = |name: &str, target: &str| {
            std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
        };
        link("ok", "a/b");
        link("a/up", "../ok");
        link("dangling", "a/missing");
        assert!(Scan::new(dir.clone(), &[]).is_ok());
        for (name, target) in [
            ("root", "/"),
            ("abs", "/etc/passwd"),
            ("out", "../x"),
            ("deep", "a/b/../../.."),
            // Inside when read letter by letter, outside once `self` is followed.
            ("self", "."),
            ("via", "self/.."),
        ] {
            link(name, target);
            let refused = matches!(Scan::new(dir.clone(), &[]), Err(ScanError::Link(..)));
            if name == "self" {
                assert!(!refused, "`self -> .` stays inside");
                continue;
            }
            assert!(refused, "{name} -> {target} was accepted");
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        // Excluded by .dockerignore: not sent, so not refused.
        link("root", "/");
        std::fs::write(dir.join(".dockerignore"), "root\n").unwrap();
        assert!(Scan::new(dir.clone(), &[]).is_ok());
    }
}
