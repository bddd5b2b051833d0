//! Plugins from a registry: `hoist plugin publish`, `install`, `search`, `info`, `ls`,
//! `rm`, `yank`. An installed package is `$HOIST_HOME/plugins/NS/NAME.wasm` beside
//! `NAME.json` (version, registry, component digest, declared capabilities); `hoist step
//! run NS/NAME` runs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hoist_policy::package::{PackageName, Requirement, parse_version};
use hoist_registry::{OciRef, RegistryClient, VersionRecord};
use serde::{Deserialize, Serialize};

use crate::lock::{self, Locked, Lockfile};
use crate::signing;
use hoist_runtime::Runtime;

/// What `NAME.json` beside an installed package records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Installed {
    pub package: String,
    pub version: String,
    pub registry: String,
    pub digest: String,
    pub capabilities: Vec<String>,
    /// The trusted key whose signature was checked when it was installed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

impl Installed {
    /// Whether a key trusted now signed it (checked when it was installed).
    pub fn signed_by_trusted(&self) -> anyhow::Result<bool> {
        let Some(key) = &self.signed_by else {
            return Ok(false);
        };
        Ok(signing::trusted()?.iter().any(|k| k.to_string() == *key))
    }
}

/// The registry to talk to: `--registry`, else `$HOIST_REGISTRY`.
pub fn client(registry: Option<&str>, token: bool) -> anyhow::Result<RegistryClient> {
    let Some(url) = registry else {
        bail!("no registry: pass --registry URL or set HOIST_REGISTRY");
    };
    let token = if token {
        match std::env::var("HOIST_REGISTRY_TOKEN") {
            Ok(t) if !t.is_empty() => Some(t),
            _ => bail!(
                "publishing needs a token in HOIST_REGISTRY_TOKEN (on the registry: hoist registry token create --namespace NS)"
            ),
        }
    } else {
        None
    };
    Ok(RegistryClient::new(url, token)?)
}

/// An installed package's component and record, in `$HOIST_HOME/plugins`.
pub fn paths(pkg: &PackageName) -> (PathBuf, PathBuf) {
    pkg.installed_in(&hoist_policy::paths::plugins())
}

pub fn installed(pkg: &PackageName) -> Option<Installed> {
    let text = std::fs::read_to_string(paths(pkg).1).ok()?;
    serde_json::from_str(&text).ok()
}

fn runtime() -> anyhow::Result<Runtime> {
    Runtime::new(hoist_runtime::RuntimeConfig::one_at_a_time())
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e:#}"))
}

fn declared(caps: &[String]) -> String {
    if caps.is_empty() {
        "nothing (no capabilities)".into()
    } else {
        caps.join(", ")
    }
}

/// `hoist plugin publish FILE --name NS/NAME --version X.Y.Z`.
pub async fn publish(
    file: &Path,
    name: &str,
    version: &str,
    sign_with: Option<&Path>,
    registry: Option<&str>,
) -> anyhow::Result<()> {
    let pkg: PackageName = name.parse()?;
    let version = parse_version(version)
        .map_err(anyhow::Error::msg)?
        .to_string();
    let client = client(registry, true)?;
    // The key is read before anything is uploaded: a missing key publishes nothing.
    let key = sign_with.map(signing::load_key).transpose()?;
    let component = push(&client, file, &pkg, &version).await?;
    if let Some(key) = key {
        let sig = signing::sign(&key, &pkg, &version, &component);
        client.sign(&pkg, &version, &sig).await?;
        eprintln!("signed {pkg}@{version} with {}", sig.public_key);
    }
    Ok(())
}

/// `hoist plugin publish FILE --oci oci://HOST/NS/NAME:VERSION`: the same artifact a
/// Hoist registry stores, pushed to any OCI registry.
pub async fn publish_oci(file: &Path, reference: &str) -> anyhow::Result<()> {
    let oci: OciRef = reference.parse().map_err(anyhow::Error::msg)?;
    let token = std::env::var("HOIST_REGISTRY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let client = RegistryClient::for_oci(&oci, token)?;
    push(&client, file, &oci.package, &oci.tag).await?;
    Ok(())
}

/// Describe `file` here (a file that is not a step fails before any upload), then push
/// it as `pkg@version`; prints the manifest's digest, returns the component's.
async fn push(
    client: &RegistryClient,
    file: &Path,
    pkg: &PackageName,
    version: &str,
) -> anyhow::Result<String> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let plugin = runtime()?
        .load(&wasm, &file.display().to_string(), false)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let d = &plugin.description;
    let caps: Vec<String> = d.capabilities.iter().map(ToString::to_string).collect();
    eprintln!(
        "publishing {pkg}@{version} to {} ({:.1} MiB, step `{}`, declares {})",
        client.url(),
        wasm.len() as f64 / (1024.0 * 1024.0),
        d.name,
        declared(&caps)
    );
    let digest = client.publish(pkg, version, &wasm, &d.summary).await?;
    let component = hoist_registry::oci::digest_of(&wasm);
    eprintln!("published {pkg}@{version}: component {component}");
    println!("{digest}");
    Ok(component)
}

/// The newest of `versions` that is not yanked and satisfies every one of `reqs`.
pub fn newest_matching(
    versions: Vec<VersionRecord>,
    reqs: &[Requirement],
) -> Option<VersionRecord> {
    versions
        .into_iter()
        .filter(|r| !r.yanked)
        .filter_map(|r| Some((parse_version(&r.version).ok()?, r)))
        .filter(|(v, _)| reqs.iter().all(|q| q.versions.matches(v)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, r)| r)
}

/// Capabilities `new` declares that `old` did not.
fn added(old: &[String], new: &[String]) -> Vec<String> {
    new.iter().filter(|c| !old.contains(c)).cloned().collect()
}

/// The project's lock: `--file`'s (which must exist), else ./prefect.yaml's when
/// there is one.
pub fn lock_path(file: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match file {
        Some(f) if !f.is_file() => bail!("project file {} does not exist", f.display()),
        Some(f) => Ok(Some(lock::path_for(f))),
        None if Path::new("prefect.yaml").is_file() => {
            Ok(Some(lock::path_for(Path::new("prefect.yaml"))))
        }
        None => Ok(None),
    }
}

/// What an install may accept.
#[derive(Clone, Copy, Debug, Default)]
pub struct How {
    /// An update that declares more capabilities than the installed version.
    pub yes: bool,
    /// Only a package a trusted key signed.
    pub require_signed: bool,
}

impl How {
    /// Before a run: nothing confirmed; signatures required as `HOIST_REQUIRE_SIGNED` says.
    pub fn from_env() -> Self {
        let set = std::env::var("HOIST_REQUIRE_SIGNED")
            .is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "no" | "off"));
        Self {
            yes: false,
            require_signed: set,
        }
    }
}

/// `hoist plugin install [NS/NAME[@REQ]] [--file PROJECT]`.
pub async fn install(
    req: Option<&str>,
    file: Option<&Path>,
    registry: Option<&str>,
    how: How,
) -> anyhow::Result<()> {
    let lock_at = lock_path(file)?;
    let Some(req) = req else {
        let Some(path) = lock_at else {
            bail!(
                "nothing to install: name a package (hoist plugin install NS/NAME@REQ), or run \
                 it next to a project whose hoist.lock pins packages (--file PROJECT)"
            );
        };
        let Some(lock) = Lockfile::read(&path)? else {
            bail!(
                "{} does not exist: install packages by name first (hoist plugin install NS/NAME@REQ) to pin them",
                path.display()
            );
        };
        if lock.packages.is_empty() {
            eprintln!("{} pins no packages", path.display());
        }
        for pin in &lock.packages {
            install_pin(pin, registry, how, &path).await?;
        }
        return Ok(());
    };
    if req.starts_with("oci://") {
        let oci: OciRef = req.parse().map_err(anyhow::Error::msg)?;
        let client = RegistryClient::for_oci(&oci, None)?;
        let chosen = client.oci_version(&oci.package, &oci.tag).await?;
        let record = install_version(&client, &oci.package, &chosen, how).await?;
        if let Some(path) = lock_at {
            pin(&path, &record)?;
        }
        return Ok(());
    }
    let req: Requirement = req.parse().map_err(anyhow::Error::msg)?;
    let client = client(registry, false)?;
    let chosen = client.resolve(&req).await?;
    let record = install_version(&client, &req.package, &chosen, how).await?;
    if let Some(path) = lock_at {
        pin(&path, &record)?;
    }
    Ok(())
}

/// Record `record` in the lock at `path` (creating it).
pub fn pin(path: &Path, record: &Installed) -> anyhow::Result<()> {
    let mut lock = Lockfile::read(path)?.unwrap_or_default();
    let entry = Locked {
        package: record.package.clone(),
        version: record.version.clone(),
        registry: record.registry.clone(),
        digest: record.digest.clone(),
    };
    if lock.packages.contains(&entry) {
        return Ok(());
    }
    lock.pin(entry);
    lock.write(path)?;
    eprintln!(
        "pinned {}@{} in {}",
        record.package,
        record.version,
        path.display()
    );
    Ok(())
}

/// The digest of what is installed for `pkg`, from the file itself (the record beside
/// it is only a note): hashed once, then remembered by the component cache while the
/// file stays the same file (its memo is authenticated over the file's identity), so a
/// build does not hash every pinned package, an 18 MB Python step among them, each time.
fn installed_digest(pkg: &PackageName) -> Option<String> {
    let path = paths(pkg).0;
    let cache = hoist_runtime::RuntimeConfig::one_at_a_time().cache;
    if let Some(hex) = cache.remembered_digest(&path) {
        return Some(format!("sha256:{hex}"));
    }
    let bytes = std::fs::read(&path).ok()?;
    let digest = hoist_registry::oci::digest_of(&bytes);
    cache.remember_digest(&path, digest.trim_start_matches("sha256:"));
    Some(digest)
}

/// Install exactly what `pin` says (nothing fetched when it is installed already): the
/// registry (`registry`, else the pin's) must still serve that version with that digest.
pub async fn install_pin(
    pin: &Locked,
    registry: Option<&str>,
    how: How,
    lock: &Path,
) -> anyhow::Result<Installed> {
    let pkg = pin.name();
    if installed_digest(&pkg).as_deref() == Some(pin.digest.as_str())
        && let Some(record) = installed(&pkg)
    {
        // Installed before signatures were required (or by a key no longer trusted):
        // checked against the registry's signatures below, as a new install would be.
        if !how.require_signed || record.signed_by_trusted()? {
            eprintln!("{} is installed ({})", pin.label(), pin.digest);
            return Ok(record);
        }
    }
    let not_here = || {
        format!(
            "{} pins {} and it is not installed here",
            lock.display(),
            pin.label()
        )
    };
    let from = registry.unwrap_or(&pin.registry);
    let (client, chosen) = if from.starts_with("oci://") {
        let oci = OciRef {
            host: from.trim_start_matches("oci://").to_string(),
            package: pkg.clone(),
            tag: pin.version.clone(),
        };
        let client = RegistryClient::for_oci(&oci, None)?;
        let chosen = client
            .oci_version(&pkg, &pin.version)
            .await
            .with_context(not_here)?;
        (client, chosen)
    } else {
        let client = client(Some(from), false)?;
        let versions = client.versions(&pkg).await.with_context(not_here)?;
        let Some(chosen) = versions.into_iter().find(|v| v.version == pin.version) else {
            bail!(
                "{} pins {}, which the registry at {} does not have; nothing was installed",
                lock.display(),
                pin.label(),
                client.url()
            );
        };
        (client, chosen)
    };
    if chosen.component_digest != pin.digest {
        bail!(
            "{} pins {} as {}, but the registry at {} serves {}: the registry changed a \
             published version or the lock was edited; nothing was installed",
            lock.display(),
            pin.label(),
            pin.digest,
            client.url(),
            chosen.component_digest
        );
    }
    if chosen.yanked {
        eprintln!(
            "warning: {} is yanked on {}; installing it because {} pins it",
            pin.label(),
            client.url(),
            lock.display()
        );
    }
    install_version(&client, &pkg, &chosen, how).await
}

/// Download `chosen`, verify it against its digest, precompile it, review what it
/// declares against what is installed, then install it.
pub async fn install_version(
    client: &RegistryClient,
    pkg: &PackageName,
    chosen: &VersionRecord,
    how: How,
) -> anyhow::Result<Installed> {
    // Signatures first: a refused package is not even downloaded.
    let signer = signing::check(pkg, chosen, &signing::trusted()?, how.require_signed)?;
    let before = installed(pkg);
    if let Some(cur) = &before
        && cur.digest == chosen.component_digest
        && cur.version == chosen.version
        && installed_digest(pkg).as_deref() == Some(cur.digest.as_str())
    {
        eprintln!("{pkg}@{} is installed already", cur.version);
        let signed_by = signer.map(|k| k.to_string());
        if signed_by.is_some() && cur.signed_by != signed_by {
            let record = Installed {
                signed_by,
                ..cur.clone()
            };
            write_record(pkg, &record)?;
            return Ok(record);
        }
        return Ok(cur.clone());
    }
    eprintln!(
        "installing {pkg}@{} from {} ({:.1} MiB)",
        chosen.version,
        client.url(),
        chosen.size as f64 / (1024.0 * 1024.0),
    );
    let wasm = download(client, pkg, chosen).await?;
    // Precompiled into the cache now, so the first run is fast; and the capabilities
    // reviewed are the ones the component itself declares, not the registry's word.
    let plugin = runtime()?
        .load(&wasm, &pkg.to_string(), false)
        .await
        .map_err(|e| anyhow::anyhow!("{pkg}@{}: {e}", chosen.version))?;
    let caps: Vec<String> = plugin
        .description
        .capabilities
        .iter()
        .map(ToString::to_string)
        .collect();
    if let Some(cur) = &before {
        let more = added(&cur.capabilities, &caps);
        if !more.is_empty() && !how.yes {
            bail!(
                "{pkg}@{} declares more than the installed {}: {} (the installed one declares {}); \
                 nothing was changed: review it, then install again with --yes",
                chosen.version,
                cur.version,
                more.join(", "),
                declared(&cur.capabilities)
            );
        }
    }
    eprintln!("{pkg}@{} declares {}", chosen.version, declared(&caps));
    if let Some(key) = &signer {
        eprintln!(
            "{pkg}@{} is signed by {key}, a key you trust",
            chosen.version
        );
    }
    let record = Installed {
        package: pkg.to_string(),
        version: chosen.version.clone(),
        registry: client.url().to_string(),
        digest: chosen.component_digest.clone(),
        capabilities: caps,
        signed_by: signer.map(|k| k.to_string()),
    };
    write_installed(pkg, &wasm, &record)?;
    eprintln!(
        "installed {pkg}@{}; run it with `hoist step run {pkg}`",
        chosen.version
    );
    Ok(record)
}

async fn download(
    client: &RegistryClient,
    pkg: &PackageName,
    chosen: &VersionRecord,
) -> anyhow::Result<Vec<u8>> {
    let mut shown = 0u64;
    let wasm = client
        .blob(
            pkg,
            (&chosen.component_digest, chosen.size),
            |done, total| {
                // A line per 4 MiB: progress on a big (Python) component, quiet on small ones.
                if done - shown >= 4 << 20 {
                    shown = done;
                    match total {
                        Some(t) => eprintln!(
                            "  {:.1} / {:.1} MiB",
                            done as f64 / 1048576.0,
                            t as f64 / 1048576.0
                        ),
                        None => eprintln!("  {:.1} MiB", done as f64 / 1048576.0),
                    }
                }
            },
        )
        .await?;
    Ok(wasm)
}

/// Write the component and its record: each to a temporary file then renamed, the
/// component first, so an interrupted install leaves the previous version whole.
fn write_installed(pkg: &PackageName, wasm: &[u8], record: &Installed) -> anyhow::Result<()> {
    let wasm_path = paths(pkg).0;
    let dir = wasm_path.parent().expect("a package path has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    put(&wasm_path, wasm)?;
    write_record(pkg, record)
}

/// Write (only) the record beside an installed package.
fn write_record(pkg: &PackageName, record: &Installed) -> anyhow::Result<()> {
    put(&paths(pkg).1, &serde_json::to_vec_pretty(record)?)
}

/// `bytes` to `path` through a temporary file beside it, renamed over it.
fn put(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `hoist plugin search [QUERY]`.
pub async fn search(query: &str, registry: Option<&str>) -> anyhow::Result<()> {
    let found = client(registry, false)?.search(query).await?;
    if found.is_empty() {
        eprintln!("no package matches `{query}`");
    }
    for p in found {
        println!(
            "{}@{}  {}  [declares {}]",
            p.package,
            p.version,
            p.summary,
            declared(&p.capabilities)
        );
    }
    Ok(())
}

/// `hoist plugin info NS/NAME`.
pub async fn info(name: &str, registry: Option<&str>) -> anyhow::Result<()> {
    let pkg: PackageName = name.parse()?;
    let versions = client(registry, false)?.versions(&pkg).await?;
    for v in versions {
        let signed: Vec<&str> = v.signatures.iter().map(|s| s.public_key.as_str()).collect();
        println!(
            "{pkg}@{}{}  {}  {}  declares {}{}",
            v.version,
            if v.yanked { " (yanked)" } else { "" },
            v.component_digest,
            v.summary,
            declared(&v.capabilities),
            if signed.is_empty() {
                String::new()
            } else {
                format!("  signed by {}", signed.join(", "))
            }
        );
    }
    Ok(())
}

/// `hoist plugin yank NS/NAME@X.Y.Z [--undo]`.
pub async fn yank(spec: &str, undo: bool, registry: Option<&str>) -> anyhow::Result<()> {
    let Some((name, version)) = spec.split_once('@') else {
        bail!("yank needs NS/NAME@VERSION, e.g. acme/s3-sync@1.2.0");
    };
    let pkg: PackageName = name.parse()?;
    let version = parse_version(version).map_err(anyhow::Error::msg)?;
    client(registry, true)?
        .yank(&pkg, &version.to_string(), !undo)
        .await?;
    eprintln!(
        "{pkg}@{version} {}",
        if undo {
            "is installable again"
        } else {
            "is yanked: ranges no longer choose it"
        }
    );
    Ok(())
}

/// `hoist plugin ls`: installed packages.
pub fn ls() -> anyhow::Result<()> {
    let dir = hoist_policy::paths::plugins();
    let mut any = false;
    for name in hoist_runner::plan::installed_names(&dir) {
        let record = name.parse::<PackageName>().ok().and_then(|p| installed(&p));
        any = true;
        match record {
            Some(r) => println!(
                "{}@{}  from {}  {}  declares {}",
                r.package,
                r.version,
                r.registry,
                r.digest,
                declared(&r.capabilities)
            ),
            None => println!("{name}  (copied in by hand: {}/{name}.wasm)", dir.display()),
        }
    }
    if !any {
        eprintln!("no plugins installed in {}", dir.display());
    }
    Ok(())
}

/// `hoist plugin rm NS/NAME`.
pub fn rm(name: &str) -> anyhow::Result<()> {
    let pkg: PackageName = name.parse()?;
    let (wasm, json) = paths(&pkg);
    if !wasm.is_file() {
        bail!("{pkg} is not installed (`hoist plugin ls` lists what is)");
    }
    std::fs::remove_file(&wasm).with_context(|| format!("cannot remove {}", wasm.display()))?;
    let _ = std::fs::remove_file(json);
    eprintln!("removed {pkg}");
    Ok(())
}
