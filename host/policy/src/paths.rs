//! Where Hoist keeps its own things, in one place. These directories are never given to
//! a plugin (the runtime's protected set), so the policy owns their names.
//!
//! | what                          | where                                           |
//! |-------------------------------|-------------------------------------------------|
//! | home                          | `$HOIST_HOME`, else `~/.hoist`                  |
//! | store (SQLite)                | `<home>/hoist.db` (`HOIST_DATABASE_URL` instead) |
//! | installed plugins             | `<home>/plugins/<name>.wasm`                     |
//! | host-owned git directories    | `<home>/git/<sha256 of the worktree>`            |
//! | cache MAC key                 | `<home>/cache.key`                               |
//! | compiled components           | `$HOIST_CACHE_DIR`, else `$XDG_CACHE_HOME/hoist/components`, else `~/.cache/hoist/components` |

use std::path::PathBuf;

/// `$HOIST_HOME` (default `~/.hoist`).
pub fn home() -> PathBuf {
    std::env::var_os("HOIST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| user_home().join(".hoist"))
}

fn user_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The default SQLite store.
pub fn database() -> PathBuf {
    home().join("hoist.db")
}

/// Installed plugins.
pub fn plugins() -> PathBuf {
    home().join("plugins")
}

/// Host-owned git directories of the clones steps make.
pub fn git() -> PathBuf {
    home().join("git")
}

/// The key that authenticates compiled components in the cache.
pub fn cache_key() -> PathBuf {
    home().join("cache.key")
}

/// The compiled-component cache (none if no home directory can be found).
pub fn cache() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HOIST_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hoist").join("components"))
}
