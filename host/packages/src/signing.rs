//! Signed packages: `hoist plugin keygen` (a private key in `$HOIST_HOME/keys/`, mode
//! 0600), `publish --sign`, `hoist plugin trust KEY` (`$HOIST_HOME/trusted-keys`, one key
//! a line), and the check every install makes ([`check`]): a signature by a trusted key
//! that does not verify stops the install whatever the policy; with `--require-signed`
//! (or `HOIST_REQUIRE_SIGNED=1`) only a package a trusted key signed installs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hoist_policy::package::PackageName;
use hoist_policy::signature::{PublicKey, SigningKey, message};
use hoist_registry::VersionRecord;

/// `--key`, else `$HOIST_HOME/keys/signing.key`.
pub fn key_path(key: Option<&Path>) -> PathBuf {
    key.map(Path::to_path_buf)
        .unwrap_or_else(|| hoist_policy::paths::home().join("keys/signing.key"))
}

fn trusted_path() -> PathBuf {
    hoist_policy::paths::home().join("trusted-keys")
}

/// `hoist plugin keygen [--out FILE]`.
pub fn keygen(out: Option<&Path>) -> anyhow::Result<()> {
    let path = key_path(out);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let key = SigningKey::generate()?;
    // create_new: an existing key (someone's published identity) is never replaced.
    let mut file = open_private(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already: a key is never overwritten (choose another with --out)",
                path.display()
            )
        } else {
            anyhow::anyhow!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(key.to_file_text().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote the private key to {} (keep it secret); publish with --sign. Those who \
         install your packages trust the public key with `hoist plugin trust KEY`:",
        path.display()
    );
    println!("{}", key.public());
    Ok(())
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// The key at `path`, for `publish --sign`.
pub fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the signing key {} (make one with `hoist plugin keygen`)",
            path.display()
        )
    })?;
    SigningKey::from_file_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The signature record for `pkg@version` with component `digest`.
pub fn sign(
    key: &SigningKey,
    pkg: &PackageName,
    version: &str,
    digest: &str,
) -> hoist_registry::SignatureRecord {
    hoist_registry::SignatureRecord {
        public_key: key.public().to_string(),
        signature: key.sign(&message(pkg, version, digest)),
    }
}

/// The keys this user trusts; a line that is not a key is an error naming the line.
pub fn trusted() -> anyhow::Result<Vec<PublicKey>> {
    let path = trusted_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            l.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// `hoist plugin trust [KEY]`.
pub fn trust(key: Option<&str>) -> anyhow::Result<()> {
    let mut keys = trusted()?;
    if let Some(k) = key {
        let k: PublicKey = k.parse()?;
        if keys.contains(&k) {
            eprintln!("{k} is trusted already");
        } else {
            keys.push(k.clone());
            let path = trusted_path();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, text)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("trusting {k} for installs");
        }
    } else if keys.is_empty() {
        eprintln!("no trusted keys (add one with `hoist plugin trust KEY`)");
    }
    for k in keys {
        println!("{k}");
    }
    Ok(())
}

/// The trusted key that signed `chosen` of `pkg`, if one did; an error when a trusted
/// key's signature does not verify, or when `require` and no trusted key signed it.
pub fn check(
    pkg: &PackageName,
    chosen: &VersionRecord,
    trusted: &[PublicKey],
    require: bool,
) -> anyhow::Result<Option<PublicKey>> {
    let msg = message(pkg, &chosen.version, &chosen.component_digest);
    let mut good = None;
    let mut others = Vec::new();
    for sig in &chosen.signatures {
        let Ok(key) = sig.public_key.parse::<PublicKey>() else {
            continue;
        };
        if !trusted.contains(&key) {
            others.push(key.to_string());
        } else if key.verifies(&msg, &sig.signature) {
            good = Some(key);
        } else {
            bail!(
                "{pkg}@{}: the signature by {key}, a key you trust, does not verify over its \
                 component {}: the package or the registry's record was altered; nothing was installed",
                chosen.version,
                chosen.component_digest
            );
        }
    }
    if good.is_none() && require {
        let by = if others.is_empty() {
            "it is not signed".to_string()
        } else {
            format!(
                "it is signed only by keys you do not trust: {}",
                others.join(", ")
            )
        };
        bail!(
            "{pkg}@{}: signatures are required (--require-signed / HOIST_REQUIRE_SIGNED) and \
             {by}; trust the publisher's key with `hoist plugin trust KEY`; nothing was installed",
            chosen.version
        );
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_registry::SignatureRecord;

    fn version(signatures: Vec<SignatureRecord>) -> VersionRecord {
        VersionRecord {
            package: "acme/x".into(),
            version: "1.0.0".into(),
            manifest_digest: format!("sha256:{}", "00".repeat(32)),
            component_digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1,
            step_name: "x".into(),
            summary: String::new(),
            input_schema: serde_json::json!({}),
            capabilities: Vec::new(),
            wit_version: "0.1.0".into(),
            yanked: false,
            published: String::new(),
            signatures,
        }
    }

    #[test]
    fn installs_accept_only_what_a_trusted_key_signed_when_required() {
        let pkg: PackageName = "acme/x".parse().unwrap();
        let (a, b) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let v = version(Vec::new());
        let by_a = sign(&a, &pkg, &v.version, &v.component_digest);
        let signed = version(vec![by_a.clone()]);
        // Signed by a trusted key.
        let got = check(&pkg, &signed, &[a.public()], true).unwrap();
        assert_eq!(got, Some(a.public()));
        // Unsigned, or signed by a key not trusted: fine unless required.
        assert_eq!(check(&pkg, &v, &[a.public()], false).unwrap(), None);
        let err = check(&pkg, &v, &[a.public()], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("it is not signed") && err.contains("nothing was installed"),
            "{err}"
        );
        let err = check(&pkg, &signed, &[b.public()], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("only by keys you do not trust: {}", a.public())),
            "{err}"
        );
        // A trusted key's signature over something else (another version's): refused,
        // required or not.
        let moved = SignatureRecord {
            signature: sign(&a, &pkg, "1.0.1", &v.component_digest).signature,
            ..by_a
        };
        let forged = version(vec![moved]);
        for require in [false, true] {
            let err = check(&pkg, &forged, &[a.public()], require)
                .unwrap_err()
                .to_string();
            assert!(err.contains("does not verify"), "{err}");
        }
    }
}
