//! `hoist.lock`, beside a project file: the registry packages its steps use, each pinned
//! to `{package, version, registry, digest}`. `hoist plugin install NS/NAME@REQ` next to
//! a project writes the pin; `hoist plugin install` (no package) installs exactly what the
//! lock says; `hoist build|push|pull|deploy` check every package step against it and
//! install what is missing (a `requires: NS/NAME@REQ` on a step installs before running).
//! With the lock's digests installed nothing needs the network: the digest is the truth,
//! the registry only where to fetch it from.
//!
//! The lock is JSON (stable order, one package per object) so a review diff reads well;
//! a lock from someone else's repository is hostile input, checked field by field.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hoist_policy::package::{PackageName, Requirement, parse_version};
use serde::{Deserialize, Serialize};

/// The file's name, beside the project file.
pub const LOCK_FILE: &str = "hoist.lock";

/// One pinned package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    /// `namespace/name`.
    pub package: String,
    /// The exact version.
    pub version: String,
    /// Where it was installed from.
    pub registry: String,
    /// The component's sha256 digest: what is installed must hash to it.
    pub digest: String,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// The format's version (1).
    #[serde(rename = "lock-version")]
    pub lock_version: u32,
    /// By package name.
    pub packages: Vec<Locked>,
}

impl Default for Lockfile {
    fn default() -> Self {
        Self {
            lock_version: 1,
            packages: Vec::new(),
        }
    }
}

/// `hoist.lock` beside `project_file`.
pub fn path_for(project_file: &Path) -> PathBuf {
    project_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(LOCK_FILE)
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Locked {
    /// Each field as the registry and the installer need it; the error names the field.
    fn check(&self) -> Result<PackageName, String> {
        let pkg: PackageName = self
            .package
            .parse()
            .map_err(|e| format!("`package`: {e}"))?;
        let v = parse_version(&self.version).map_err(|e| format!("`version`: {e}"))?;
        if v.to_string() != self.version {
            return Err(format!(
                "`version`: `{}` is not an exact version",
                self.version.escape_debug()
            ));
        }
        if !is_digest(&self.digest) {
            return Err(format!(
                "`digest`: `{}` is not sha256:<64 lowercase hex digits>",
                self.digest.escape_debug()
            ));
        }
        let oci_host = self.registry.strip_prefix("oci://");
        let url_ok = self.registry.starts_with("http://") || self.registry.starts_with("https://");
        let oci_ok = oci_host.is_some_and(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
        if !(url_ok || oci_ok) || self.registry.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "`registry`: `{}` is not an http(s) URL or oci://HOST",
                self.registry.escape_debug()
            ));
        }
        Ok(pkg)
    }

    /// The package's name (checked when the lock was read).
    pub fn name(&self) -> PackageName {
        self.package.parse().expect("checked when read")
    }

    /// `acme/s3-sync@1.2.0`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.package, self.version)
    }
}

impl Lockfile {
    /// The lock at `path`: `None` when there is none; an error naming the file and the
    /// entry when it cannot be read.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let lock: Lockfile = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not a hoist.lock: {e} (delete it and install again to rewrite it)",
                path.display(),
                e.line()
            )
        })?;
        if lock.lock_version != 1 {
            bail!(
                "{}: lock-version {} is newer than this hoist understands (1)",
                path.display(),
                lock.lock_version
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in lock.packages.iter().enumerate() {
            let pkg = p
                .check()
                .map_err(|why| anyhow::anyhow!("{}: packages[{i}]: {why}", path.display()))?;
            if !seen.insert(pkg.clone()) {
                bail!("{}: packages[{i}]: {pkg} is pinned twice", path.display());
            }
        }
        Ok(Some(lock))
    }

    /// Write it (to a temporary file, then renamed: a reader never sees half a lock).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        let tmp = path.with_extension("lock.partial");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The pin for `pkg`.
    pub fn get(&self, pkg: &PackageName) -> Option<&Locked> {
        let name = pkg.to_string();
        self.packages.iter().find(|p| p.package == name)
    }

    /// Pin `entry` (replacing the package's pin), keeping the packages sorted.
    pub fn pin(&mut self, entry: Locked) {
        self.packages.retain(|p| p.package != entry.package);
        self.packages.push(entry);
        self.packages.sort_by(|a, b| a.package.cmp(&b.package));
    }
}

/// A step's `requires` entry, when it names a registry package (`acme/s3-sync@^1.2`);
/// `None` for Prefect's pip requirements (`prefect-aws>=0.3.4`), which Hoist does not
/// need (its steps are plugins). An entry with a `/` that is not a valid package
/// requirement is an error: it was meant as one.
pub fn package_requirement(text: &str) -> Option<Result<Requirement, String>> {
    let name = text.split('@').next().unwrap_or(text);
    if !name.contains('/') || text.contains("://") {
        return None;
    }
    Some(text.parse::<Requirement>().map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(package: &str, version: &str) -> Locked {
        Locked {
            package: package.into(),
            version: version.into(),
            registry: "http://127.0.0.1:5000".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
        }
    }

    #[test]
    fn a_lock_round_trips_sorted_and_pins_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let mut lock = Lockfile::default();
        lock.pin(entry("zeta/b", "1.0.0"));
        lock.pin(entry("acme/a", "1.0.0"));
        lock.pin(entry("acme/a", "1.1.0"));
        lock.write(&path).unwrap();
        let back = Lockfile::read(&path).unwrap().unwrap();
        assert_eq!(back, lock);
        let names: Vec<&str> = back.packages.iter().map(|p| p.package.as_str()).collect();
        assert_eq!(names, ["acme/a", "zeta/b"]);
        assert_eq!(
            back.get(&"acme/a".parse().unwrap()).unwrap().version,
            "1.1.0"
        );
        assert!(Lockfile::read(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn a_hostile_lock_is_refused_naming_the_entry_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let cases: [(Locked, &str); 5] = [
            (entry("../etc/passwd", "1.0.0"), "packages[0]: `package`"),
            (entry("acme/a", "^1.0"), "packages[0]: `version`"),
            (
                Locked {
                    digest: "sha256:../../x".into(),
                    ..entry("acme/a", "1.0.0")
                },
                "packages[0]: `digest`",
            ),
            (
                Locked {
                    registry: "file:///etc".into(),
                    ..entry("acme/a", "1.0.0")
                },
                "packages[0]: `registry`",
            ),
            (
                Locked {
                    package: "аcme/a".into(),
                    ..entry("acme/a", "1.0.0")
                },
                "non-ASCII",
            ),
        ];
        for (bad, want) in cases {
            let lock = Lockfile {
                lock_version: 1,
                packages: vec![bad],
            };
            lock.write(&path).unwrap();
            let err = Lockfile::read(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(err.contains("hoist.lock"), "{err}");
        }
        std::fs::write(&path, "{\"lock-version\": 1, \"packages\": [}").unwrap();
        let err = Lockfile::read(&path).unwrap_err().to_string();
        assert!(err.contains("hoist.lock:1: not a hoist.lock"), "{err}");
        let twice = Lockfile {
            lock_version: 1,
            packages: vec![entry("acme/a", "1.0.0"), entry("acme/a", "1.1.0")],
        };
        twice.write(&path).unwrap();
        let err = Lockfile::read(&path).unwrap_err().to_string();
        assert!(err.contains("pinned twice"), "{err}");
    }

    #[test]
    fn only_requirements_with_a_namespace_are_packages() {
        assert!(package_requirement("prefect-aws>=0.3.4").is_none());
        assert!(package_requirement("prefect-azure[blob_storage]>=0.2.8").is_none());
        let r = package_requirement("acme/s3-sync@^1.2").unwrap().unwrap();
        assert_eq!(r.package.to_string(), "acme/s3-sync");
        assert!(package_requirement("Acme/S3@^1").unwrap().is_err());
    }
}
