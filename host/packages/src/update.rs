//! `hoist plugin update`: move installed (or pinned) packages to the newest version their
//! registry serves that every requirement accepts (the one named on the command line and
//! every `requires:` in the project), through the same capability review as `install`,
//! and pin the result in the project's `hoist.lock`.

use std::path::Path;

use anyhow::{Context, bail};
use hoist_policy::package::{PackageName, Requirement, parse_version};
use hoist_registry::{OciRef, RegistryClient, VersionRecord};

use crate::install::{self, How, Installed};
use crate::lock::{Locked, Lockfile};

/// What `hoist plugin update` was asked.
pub struct Ask<'a> {
    /// NS/NAME or NS/NAME@REQ; empty: everything pinned, else everything installed.
    pub packages: &'a [String],
    pub file: Option<&'a Path>,
    /// Overrides each package's own registry.
    pub registry: Option<&'a str>,
    pub how: How,
}

/// One package to update: its name, the requirements on it, what it is now.
struct Target {
    pkg: PackageName,
    reqs: Vec<Requirement>,
    pin: Option<Locked>,
}

/// `hoist plugin update [NS/NAME[@REQ]...]`: each package in turn; one that cannot be
/// updated (refused review, unreachable registry) is reported and the others go on.
pub async fn update(ask: &Ask<'_>) -> anyhow::Result<()> {
    let lock_at = install::lock_path(ask.file)?;
    let lock = match &lock_at {
        Some(path) => Lockfile::read(path)?,
        None => None,
    };
    let project_reqs = match (ask.file, &lock_at) {
        (Some(f), _) => crate::ensure::requirements(f)?,
        (None, Some(_)) => crate::ensure::requirements(Path::new("prefect.yaml"))?,
        (None, None) => Vec::new(),
    };
    let targets = targets(ask.packages, lock.as_ref(), &project_reqs)?;
    if targets.is_empty() {
        eprintln!(
            "nothing to update: no package is pinned{} or installed from a registry",
            lock_at
                .as_ref()
                .map(|p| format!(" in {}", p.display()))
                .unwrap_or_default()
        );
        return Ok(());
    }
    let mut failed = Vec::new();
    for t in &targets {
        if let Err(e) = update_one(t, ask, lock_at.as_deref()).await {
            eprintln!("error: {}: {e:#}", t.pkg);
            failed.push(t.pkg.to_string());
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} packages not updated ({}); the others were",
            failed.len(),
            targets.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The packages to update and what each must satisfy.
fn targets(
    named: &[String],
    lock: Option<&Lockfile>,
    project_reqs: &[(PackageName, Vec<Requirement>)],
) -> anyhow::Result<Vec<Target>> {
    let mut out: Vec<Target> = Vec::new();
    let mut add = |pkg: PackageName, req: Option<Requirement>| {
        if let Some(t) = out.iter_mut().find(|t| t.pkg == pkg) {
            t.reqs.extend(req);
            return;
        }
        let mut reqs: Vec<Requirement> = req.into_iter().collect();
        if let Some((_, more)) = project_reqs.iter().find(|(p, _)| *p == pkg) {
            reqs.extend(more.iter().cloned());
        }
        let pin = lock.and_then(|l| l.get(&pkg)).cloned();
        out.push(Target { pkg, reqs, pin });
    };
    if !named.is_empty() {
        for text in named {
            let req: Requirement = text.parse().map_err(anyhow::Error::msg)?;
            // A bare NS/NAME parses as "any version": no constraint of its own.
            let constrains = text.contains('@');
            add(req.package.clone(), constrains.then_some(req));
        }
    } else if let Some(l) = lock.filter(|l| !l.packages.is_empty()) {
        for p in &l.packages {
            add(p.name(), None);
        }
    } else {
        let dir = hoist_policy::paths::plugins();
        for name in hoist_runner::plan::installed_names(&dir) {
            if let Ok(pkg) = name.parse::<PackageName>()
                && install::installed(&pkg).is_some()
            {
                add(pkg, None);
            }
        }
    }
    Ok(out)
}

/// Update one package: install its pin first when only pinned (the review's baseline),
/// choose the newest acceptable version, install it through the review, pin it.
async fn update_one(t: &Target, ask: &Ask<'_>, lock: Option<&Path>) -> anyhow::Result<()> {
    let pkg = &t.pkg;
    let current: Installed = match (&t.pin, lock) {
        (Some(pin), Some(lock)) => install::install_pin(pin, None, ask.how, lock).await?,
        _ => install::installed(pkg).with_context(|| {
            format!("{pkg} is not installed (install it with `hoist plugin install {pkg}`)")
        })?,
    };
    let from = ask.registry.unwrap_or(&current.registry);
    let (client, newest) = newest(pkg, from, &t.reqs).await?;
    let now = parse_version(&current.version).map_err(anyhow::Error::msg)?;
    let Some(chosen) = newest else {
        bail!(
            "the registry at {from} has no version of {pkg} that {} accepts",
            describe(&t.reqs)
        );
    };
    let next = parse_version(&chosen.version).map_err(anyhow::Error::msg)?;
    if next <= now {
        eprintln!(
            "{pkg}@{now} is up to date (newest{} on {}: {next})",
            if t.reqs.is_empty() {
                String::new()
            } else {
                format!(" matching {}", describe(&t.reqs))
            },
            client.url()
        );
        return Ok(());
    }
    let record = install::install_version(&client, pkg, &chosen, ask.how).await?;
    eprintln!("updated {pkg}: {now} -> {next}");
    if let Some(path) = lock {
        install::pin(path, &record)?;
    }
    Ok(())
}

fn describe(reqs: &[Requirement]) -> String {
    if reqs.is_empty() {
        return "any version".into();
    }
    let all: Vec<String> = reqs.iter().map(|r| format!("`{}`", r.versions)).collect();
    all.join(" and ")
}

/// The newest version of `pkg` on the registry `from` (a Hoist registry URL or
/// `oci://HOST`) that is not yanked and satisfies every requirement.
async fn newest(
    pkg: &PackageName,
    from: &str,
    reqs: &[Requirement],
) -> anyhow::Result<(RegistryClient, Option<VersionRecord>)> {
    if let Some(host) = from.strip_prefix("oci://") {
        let oci = OciRef {
            host: host.to_string(),
            package: pkg.clone(),
            tag: String::new(),
        };
        let client = RegistryClient::for_oci(&oci, None)?;
        // Tags that are not exact versions (`latest`) are not versions: never chosen.
        let best = client
            .oci_tags(pkg)
            .await?
            .into_iter()
            .filter_map(|t| Some((parse_version(&t).ok()?, t)))
            .filter(|(v, _)| reqs.iter().all(|r| r.versions.matches(v)))
            .max_by(|a, b| a.0.cmp(&b.0));
        let chosen = match best {
            Some((_, tag)) => Some(client.oci_version(pkg, &tag).await?),
            None => None,
        };
        return Ok((client, chosen));
    }
    let client = install::client(Some(from), false)?;
    let chosen = install::newest_matching(client.versions(pkg).await?, reqs);
    Ok((client, chosen))
}
