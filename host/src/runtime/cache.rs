//! Compiled-component cache on disk.
//!
//! A component is compiled once per (wasm sha256, engine compatibility hash) and written
//! as `<sha256>-<compat>.cwasm`; later runs map that file instead of compiling. Only
//! files in a directory this user owns and nobody else can write are ever loaded, and
//! they are only ever written by this code, so deserialising them is sound.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Mapped from the disk cache.
    Cached,
    /// Compiled now (and written to the cache if it is enabled).
    Compiled,
}

/// The on-disk cache of compiled components.
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
}

/// Hex sha256 of a component's bytes: its identity everywhere in Hoist.
pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl ComponentCache {
    /// A cache in `dir` (created with mode 0700 if missing).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// No disk cache: compile every time a process first loads a component.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    /// The cache directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The default location: `$HOIST_CACHE_DIR`, else `$XDG_CACHE_HOME/hoist/components`,
    /// else `~/.cache/hoist/components`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("HOIST_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("hoist").join("components"))
    }

    /// Get the compiled form of `bytes` whose sha256 is `digest`: map it from the cache,
    /// or compile it and store it. A cache that cannot be used only costs a compile.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Loaded)> {
        let Some(path) = self
            .trusted_dir()
            .map(|dir| dir.join(file_name(engine, digest)))
        else {
            return Ok((Component::new(engine, bytes)?, Loaded::Compiled));
        };
        if path.exists() {
            // SAFETY: `trusted_dir` checked that only this user can write the directory,
            // and files in it are only written by `store` below from `Component::serialize`
            // of this same engine configuration (the compatibility hash is in the name;
            // wasmtime also checks its own header). A file that fails to load is removed.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, Loaded::Cached)),
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Ok(serialized) = component.serialize() {
            // Best effort: a full disk or a race with another process is not an error.
            let _ = store(&path, &serialized);
        }
        Ok((component, Loaded::Compiled))
    }

    /// The directory, created if missing, if it is safe to load from.
    fn trusted_dir(&self) -> Option<&Path> {
        let dir = self.dir.as_deref()?;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .ok()?;
        }
        let meta = std::fs::metadata(dir).ok()?;
        let mine = meta.uid() == rustix::process::getuid().as_raw();
        let private = meta.mode() & 0o022 == 0;
        (meta.is_dir() && mine && private).then_some(dir)
    }
}

fn file_name(engine: &Engine, digest: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{digest}-{:016x}.cwasm", h.finish())
}

/// Write atomically: a private temporary file renamed into place.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let res = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
