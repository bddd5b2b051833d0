//! Where git's own state lives, and what a local repository handed to git really is.
//!
//! A step owns its worktrees, so it owns whatever is in them — a `.git` directory would
//! let it plant hooks, config (`core.fsmonitor`, `remote.*.uploadpack`, filters...),
//! alternates or a gitfile pointing at another repository, all of which the host's git
//! obeys. So Hoist keeps every git directory itself, in `<HOIST_HOME>/git/<sha256 of
//! the worktree's canonical path>`, outside every directory a step can reach, and names
//! it to git explicitly (`GIT_DIR`, `GIT_WORK_TREE`) on every call. The worktree's
//! `.git` is only a gitfile for the user's own git; Hoist never reads it.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The file in a git directory naming the worktree it belongs to.
pub(crate) const MARKER: &str = "hoist-worktree";

/// How deep submodules of submodules go before Hoist stops (a loop in `.gitmodules`).
pub(crate) const MAX_SUBMODULE_DEPTH: u32 = 8;

/// A repository whose git directory Hoist owns.
#[derive(Debug, Clone)]
pub(crate) struct Repo {
    /// Canonical worktree path.
    pub work: PathBuf,
    /// Its git directory, in Hoist's store (or the `modules/` of one, for submodules).
    pub git_dir: PathBuf,
}

/// `<HOIST_HOME>/git`, created (0700) if missing, canonical.
pub(crate) fn store_root() -> std::io::Result<PathBuf> {
    let dir = hoist_policy::paths::git();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)?;
    std::fs::canonicalize(dir)
}

/// The git directory of the worktree at canonical path `work`.
pub(crate) fn git_dir_for(store: &Path, work: &Path) -> PathBuf {
    use sha2::Digest;
    let d = sha2::Sha256::digest(work.as_os_str().as_bytes());
    store.join(hoist_policy::encoding::hex(&d))
}

/// Whether `git_dir`'s marker names `work`.
pub(crate) fn marked_for(git_dir: &Path, work: &Path) -> bool {
    std::fs::read(git_dir.join(MARKER)).is_ok_and(|m| m == work.as_os_str().as_bytes())
}

pub(crate) fn write_marker(git_dir: &Path, work: &Path) -> std::io::Result<()> {
    std::fs::write(git_dir.join(MARKER), work.as_os_str().as_bytes())
}

/// Remove git directories whose worktree is gone (deleted by the user or a step).
/// Directories without a marker may be a clone in progress and are left alone.
pub(crate) fn collect_garbage(store: &Path) {
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if let Ok(m) = std::fs::read(dir.join(MARKER)) {
            let work = Path::new(std::ffi::OsStr::from_bytes(&m));
            if std::fs::symlink_metadata(work).is_err() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// What the `gitdir:` line of a gitfile points at, resolved against the gitfile's
/// directory. `None` if `file` is not a gitfile.
pub(crate) fn gitfile_target(file: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(file).ok()?;
    let target = text
        .strip_prefix("gitdir: ")?
        .trim_end_matches(['\n', '\r']);
    Some(file.parent()?.join(target))
}

/// Percent-decode a `file://` URL's path as git does. `None` on a malformed escape.
pub(crate) use hoist_policy::encoding::percent_decode;

/// Every symlink under `dir` (not following them), up to a bound on entries visited.
pub(crate) fn symlinks_under(dir: &Path) -> Result<Vec<PathBuf>, String> {
    /// A git directory with more entries than this is refused rather than walked.
    const MAX_ENTRIES: usize = 1_000_000;
    let mut seen = 0;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!("{} has too many files", dir.display()));
            }
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_symlink() {
                found.push(entry.path());
            } else if ft.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a/%2e%2E/b").unwrap(), b"/a/../b");
        assert_eq!(percent_decode("/a b").unwrap(), b"/a b");
        assert!(percent_decode("/a%2").is_none());
        assert!(percent_decode("/a%zz").is_none());
    }
}
