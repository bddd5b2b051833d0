//! Compiled-component cache on disk.
//!
//! A component is compiled once per (wasm sha256, engine compatibility hash) and written
//! as `<sha256>-<compat>.cwasm`; later runs map that file instead of compiling.
//!
//! A `.cwasm` file is native code the host runs, so it is authenticated before it is
//! mapped: beside each file, `<file>.mac` holds an HMAC-SHA256, keyed by a secret kept in
//! Hoist's home (`cache.key`, 0600, made on first use), of the file's name and of its
//! identity as only the kernel records it — device, inode, size, modification and
//! change times. Writing, replacing, renaming or linking a file changes its change time
//! (which no unprivileged process can set), so a file that reached the cache any other
//! way than from this code — a plugin, another user, a copy from another machine —
//! fails the check and is compiled again. Checking the identity rather than hashing
//! the contents keeps a cached load at a `stat` and a small read (hashing 1.3 MiB of
//! code made it 9× slower); the cache directory itself is never given to a plugin, and
//! is only used when this user owns it and nobody else can write it.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
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
    /// Where the MAC key lives (Hoist's home by default).
    key_file: PathBuf,
}

/// Bytes of the MAC at the end of each cache file.
const MAC_LEN: usize = 32;

type CacheMac = Hmac<Sha256>;

/// Hex sha256 of a component's bytes: its identity everywhere in Hoist.
pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    hoist_policy::encoding::hex(&d)
}

impl ComponentCache {
    /// A cache in `dir` (created with mode 0700 if missing).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            key_file: hoist_policy::paths::cache_key(),
        }
    }

    /// The same cache, its entries authenticated with the key in `key_file`.
    pub fn with_key_file(mut self, key_file: impl Into<PathBuf>) -> Self {
        self.key_file = key_file.into();
        self
    }

    /// No disk cache: compile every time a process first loads a component.
    pub fn disabled() -> Self {
        Self {
            dir: None,
            key_file: PathBuf::new(),
        }
    }

    /// The cache directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The default location ([`hoist_policy::paths::cache`]).
    pub fn default_dir() -> Option<PathBuf> {
        hoist_policy::paths::cache()
    }

    /// Get the compiled form of `bytes` whose sha256 is `digest`: map it from the cache,
    /// or compile it and store it. A cache that cannot be used only costs a compile.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Loaded)> {
        let (Some(dir), Some(key)) = (self.trusted_dir(), self.key()) else {
            return Ok((compile(engine, bytes)?, Loaded::Compiled));
        };
        if let Some(component) = self.load_cached(engine, digest) {
            return Ok((component, Loaded::Cached));
        }
        let name = file_name(engine, digest);
        let path = dir.join(&name);
        let mac_path = dir.join(format!("{name}.mac"));
        let component = compile(engine, bytes)?;
        if let Ok(serialized) = component.serialize() {
            // Best effort: a full disk or a race with another process is not an error.
            if store(&path, &serialized).is_ok()
                && let Some(tag) = identity(&path).map(|id| mac(&key, &name, &id))
            {
                let hex: String = hoist_policy::encoding::hex(&tag);
                let _ = store(&mac_path, hex.as_bytes());
            }
        }
        Ok((component, Loaded::Compiled))
    }

    /// The compiled form of the component whose sha256 is `digest`, if the cache holds
    /// an authentic one (a file that fails the check is removed).
    pub fn load_cached(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let (dir, key) = (self.trusted_dir()?, self.key()?);
        let name = file_name(engine, digest);
        let path = dir.join(&name);
        let mac_path = dir.join(format!("{name}.mac"));
        if !path.exists() {
            return None;
        }
        if authentic(&key, &name, &path, &mac_path) {
            // SAFETY: the file is the one `load` wrote from `Component::serialize` of
            // this engine configuration (the compatibility hash is in the name; wasmtime
            // also checks its own header): the MAC over its name and kernel-kept
            // identity, keyed by a secret only this user can read, proves it was not
            // written, replaced or linked since, in a directory only this user can write.
            #[allow(unsafe_code)]
            if let Ok(component) = unsafe { Component::deserialize_file(engine, &path) } {
                return Some(component);
            }
        }
        let _ = std::fs::remove_file(&path);
        None
    }

    /// The digest of the component file at `path` as remembered from an earlier read,
    /// if the file is still the one that was read: the memo is named by the file's path
    /// and authenticated (like a compiled file) over the file's kernel-kept identity,
    /// which any write, replacement or rename changes.
    pub fn remembered_digest(&self, path: &Path) -> Option<String> {
        let (dir, key) = (self.trusted_dir()?, self.key()?);
        let path = std::fs::canonicalize(path).ok()?;
        let memo = std::fs::read_to_string(dir.join(memo_name(&path))).ok()?;
        let (digest, tag) = memo.split_once(' ')?;
        let expected = digest_mac(&key, &path, &identity(&path)?, digest);
        let hex: String = hoist_policy::encoding::hex(&expected);
        (tag.trim() == hex && digest.len() == 64).then(|| digest.to_string())
    }

    /// Remember that the file at `path`, as it is now, has sha256 `digest` (best
    /// effort). Call it after reading the file: a change since then makes the memo
    /// fail its check.
    pub fn remember_digest(&self, path: &Path, digest: &str) {
        let (Some(dir), Some(key)) = (self.trusted_dir(), self.key()) else {
            return;
        };
        let Ok(path) = std::fs::canonicalize(path) else {
            return;
        };
        let Some(id) = identity(&path) else {
            return;
        };
        let tag = hoist_policy::encoding::hex(&digest_mac(&key, &path, &id, digest));
        let _ = store(
            &dir.join(memo_name(&path)),
            format!("{digest} {tag}").as_bytes(),
        );
    }

    /// The MAC key: read from `key_file`, or made (32 random bytes, 0600) if missing. No
    /// key, no disk cache.
    fn key(&self) -> Option<[u8; 32]> {
        let read = || -> Option<[u8; 32]> {
            let meta = std::fs::metadata(&self.key_file).ok()?;
            let private =
                meta.mode() & 0o077 == 0 && meta.uid() == rustix::process::getuid().as_raw();
            if !private {
                return None;
            }
            std::fs::read(&self.key_file).ok()?.try_into().ok()
        };
        if let Some(k) = read() {
            return Some(k);
        }
        if self.key_file.exists() {
            return None;
        }
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").ok()?, &mut key).ok()?;
        if let Some(dir) = self.key_file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .ok()?;
        }
        // Another process may make it at the same time: whoever wins, both read it back.
        let _ = store(&self.key_file, &key);
        read()
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

/// Compile a component, after checking that compiling it is bounded: its size and its
/// number of functions (counted with the parser wasmtime itself uses, nested modules
/// included) are within [`MAX_COMPONENT_BYTES`] and [`MAX_FUNCTIONS`].
///
/// [`MAX_COMPONENT_BYTES`]: crate::limits::MAX_COMPONENT_BYTES
/// [`MAX_FUNCTIONS`]: crate::limits::MAX_FUNCTIONS
pub fn compile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    use crate::limits::{MAX_COMPONENT_BYTES, MAX_FUNCTIONS};
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(wasmtime::Error::msg(format!(
            "it is {} MiB; Hoist compiles components of at most {} MiB",
            bytes.len() >> 20,
            MAX_COMPONENT_BYTES >> 20
        )));
    }
    let mut functions = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::CodeSectionStart { count, .. } = payload? {
            functions += u64::from(count);
            if functions > MAX_FUNCTIONS {
                return Err(wasmtime::Error::msg(format!(
                    "it has more than {MAX_FUNCTIONS} functions; Hoist does not compile \
                     components that large (compiling them takes seconds and hundreds of MiB)"
                )));
            }
        }
    }
    Component::new(engine, bytes)
}

/// What the kernel records of a file that no unprivileged process can forge together:
/// device, inode, size, modification and change times (nanoseconds).
fn identity(path: &Path) -> Option<Vec<u8>> {
    let m = std::fs::metadata(path).ok()?;
    let mut id = Vec::with_capacity(48);
    for n in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
        m.ctime() as u64,
        m.ctime_nsec() as u64,
    ] {
        id.extend_from_slice(&n.to_le_bytes());
    }
    Some(id)
}

/// Where the digest of the component file at `path` is remembered.
fn memo_name(path: &Path) -> String {
    let d = Sha256::digest(path.as_os_str().as_encoded_bytes());
    let hex: String = hoist_policy::encoding::hex(&d);
    format!("{hex}.digest")
}

/// The MAC of "the file at `path`, with this identity, has this digest".
fn digest_mac(key: &[u8; 32], path: &Path, identity: &[u8], digest: &str) -> [u8; MAC_LEN] {
    let mut m = CacheMac::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"digest\0");
    m.update(path.as_os_str().as_encoded_bytes());
    m.update(&[0]);
    m.update(identity);
    m.update(&[0]);
    m.update(digest.as_bytes());
    m.finalize().into_bytes().into()
}

fn mac(key: &[u8; 32], name: &str, identity: &[u8]) -> [u8; MAC_LEN] {
    let mut m = CacheMac::new_from_slice(key).expect("HMAC takes any key length");
    m.update(name.as_bytes());
    m.update(&[0]);
    m.update(identity);
    m.finalize().into_bytes().into()
}

/// Whether the file at `path` is the one this code wrote under `name`.
fn authentic(key: &[u8; 32], name: &str, path: &Path, mac_path: &Path) -> bool {
    let (Some(id), Ok(hex)) = (identity(path), std::fs::read_to_string(mac_path)) else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut m = CacheMac::new_from_slice(key).expect("HMAC takes any key length");
    m.update(name.as_bytes());
    m.update(&[0]);
    m.update(&id);
    m.verify_slice(&tag).is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_this_code_wrote_under_that_name_are_authentic() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        let (path, mac_path) = (dir.path().join("a.cwasm"), dir.path().join("a.cwasm.mac"));
        let sign = |name: &str| {
            store(&path, b"compiled code").unwrap();
            let hex = hoist_policy::encoding::hex(&mac(&key, name, &identity(&path).unwrap()));
            std::fs::write(&mac_path, hex).unwrap();
        };
        sign("a.cwasm");
        assert!(authentic(&key, "a.cwasm", &path, &mac_path));
        assert!(
            !authentic(&key, "b.cwasm", &path, &mac_path),
            "another name"
        );
        assert!(
            !authentic(&[8u8; 32], "a.cwasm", &path, &mac_path),
            "another key"
        );
        // Rewritten in place with the same length: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"evil! code!!!").unwrap();
        assert!(!authentic(&key, "a.cwasm", &path, &mac_path), "rewritten");
        sign("a.cwasm");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let other = dir.path().join("other");
        std::fs::write(&other, b"compiled code").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(!authentic(&key, "a.cwasm", &path, &mac_path), "replaced");
        std::fs::write(&mac_path, "zz").unwrap();
        assert!(!authentic(&key, "a.cwasm", &path, &mac_path), "garbage MAC");
    }

    #[test]
    fn a_remembered_digest_holds_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let cache =
            ComponentCache::at(dir.path().join("cache")).with_key_file(dir.path().join("key"));
        let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
        std::fs::write(&a, b"component a").unwrap();
        std::fs::write(&b, b"component b").unwrap();
        let d = "ab".repeat(32);
        assert_eq!(cache.remembered_digest(&a), None, "nothing remembered yet");
        cache.remember_digest(&a, &d);
        assert_eq!(cache.remembered_digest(&a), Some(d.clone()));
        assert_eq!(cache.remembered_digest(&b), None, "another file");
        // Another file's memo copied over this one's: its MAC names the other path.
        let memo = |p: &Path| {
            dir.path()
                .join("cache")
                .join(memo_name(&std::fs::canonicalize(p).unwrap()))
        };
        cache.remember_digest(&b, &"cd".repeat(32));
        std::fs::copy(memo(&b), memo(&a)).unwrap();
        assert_eq!(cache.remembered_digest(&a), None, "a memo for another path");
        cache.remember_digest(&a, &d);
        // Rewritten with the same length: the change time moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&a, b"component A").unwrap();
        assert_eq!(cache.remembered_digest(&a), None, "rewritten");
        cache.remember_digest(&a, &d);
        let forged = format!("{} {}", "ef".repeat(32), "00".repeat(32));
        std::fs::write(memo(&a), forged).unwrap();
        assert_eq!(cache.remembered_digest(&a), None, "forged without the key");
    }
}
