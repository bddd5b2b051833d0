//! Before `build`, `push`, `pull` or `deploy` runs (and before a worker's pull steps):
//! every registry package a step names or `requires:` is installed as `hoist.lock` pins
//! it, or, for a requirement nothing pins, installed from `HOIST_REGISTRY` and pinned.
//! Nothing is fetched when all is installed; nothing runs when something is missing.

use std::path::Path;

use anyhow::{Context, bail};
use hoist_policy::package::{PackageName, Requirement, parse_version};
use hoist_registry::{RegistryClient, VersionRecord};

use crate::install::{
    How, client, install_pin, install_version, installed, newest_matching, paths, pin,
};
use crate::lock::{self, Locked, Lockfile};
use hoist_project::{Action, StepEntry};
use hoist_runner::pipeline::Loaded;

/// A package the project needs: where first, and every requirement on it.
struct Need {
    pkg: PackageName,
    /// `prefect.yaml:12: pull[0]`.
    at: String,
    reqs: Vec<Requirement>,
}

/// The packages the sections `actions` of `loaded` name or require.
fn needs(loaded: &Loaded, actions: &[Action]) -> anyhow::Result<Vec<Need>> {
    let sections: Vec<&[StepEntry]> = actions.iter().map(|a| loaded.steps(*a)).collect();
    needs_in(&loaded.file, &sections)
}

/// Every requirement `requires:` states in the project `file`: in every section, at the
/// top level and in each deployment (what `hoist plugin update` must respect).
pub fn requirements(file: &Path) -> anyhow::Result<Vec<(PackageName, Vec<Requirement>)>> {
    let loaded = Loaded::open(file, None)?;
    let project = &loaded.project;
    let all = [Action::Build, Action::Push, Action::Pull];
    let mut sections: Vec<&[StepEntry]> = all.iter().map(|a| project.steps(*a, None)).collect();
    for d in &project.deployments {
        sections.extend(all.iter().map(|a| project.steps(*a, Some(d))));
    }
    Ok(needs_in(file, &sections)?
        .into_iter()
        .map(|n| (n.pkg, n.reqs))
        .collect())
}

/// The packages the steps of `sections` of the project `file` name or require.
fn needs_in(file: &Path, sections: &[&[StepEntry]]) -> anyhow::Result<Vec<Need>> {
    let project_dir = lock::path_for(file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut needs: Vec<Need> = Vec::new();
    let mut need = |pkg: PackageName, at: &str, req: Option<Requirement>| match needs
        .iter_mut()
        .find(|n| n.pkg == pkg)
    {
        Some(n) => n.reqs.extend(req),
        None => needs.push(Need {
            pkg,
            at: at.to_string(),
            reqs: req.into_iter().collect(),
        }),
    };
    for section in sections {
        for step in *section {
            let at = hoist_runner::runner::location(file, step);
            for text in &step.requires {
                match lock::package_requirement(text) {
                    None => {}
                    Some(Ok(req)) => need(req.package.clone(), &at, Some(req)),
                    Some(Err(e)) => bail!("{at}: `requires`: {e}"),
                }
            }
            if PackageName::looks_like(&step.name)
                && !project_dir.join(&step.name).is_file()
                && let Ok(pkg) = step.name.parse::<PackageName>()
            {
                need(pkg, &at, None);
            }
        }
    }
    Ok(needs)
}

/// Install what the sections `actions` of `loaded` need; `lock` is the project's
/// `hoist.lock` (`None` for a worker's generated project: nothing is pinned).
pub async fn ensure(
    loaded: &Loaded,
    actions: &[Action],
    lock: Option<&Path>,
) -> anyhow::Result<()> {
    let needs = needs(loaded, actions)?;
    if needs.is_empty() {
        return Ok(());
    }
    let pins = match lock {
        Some(path) => Lockfile::read(path)?,
        None => None,
    };
    for need in needs {
        match pins.as_ref().and_then(|l| l.get(&need.pkg)) {
            Some(p) => ensure_pinned(&need, p, lock.unwrap_or(Path::new(lock::LOCK_FILE))).await?,
            None => ensure_required(&need, lock).await?,
        }
    }
    Ok(())
}

/// A pinned package: its requirements must accept the pin, which is then installed.
async fn ensure_pinned(need: &Need, pin: &Locked, lock: &Path) -> anyhow::Result<()> {
    let at = &need.at;
    let version = parse_version(&pin.version).map_err(anyhow::Error::msg)?;
    if let Some(req) = need.reqs.iter().find(|r| !r.versions.matches(&version)) {
        bail!(
            "{at}: requires {}@{}, but {} pins {}: update the pin with \
             `hoist plugin install {}@{}`",
            req.package,
            req.versions,
            lock.display(),
            pin.label(),
            req.package,
            req.versions
        );
    }
    install_pin(pin, None, How::from_env(), lock)
        .await
        .with_context(|| format!("{at}: step needs {}", pin.label()))?;
    Ok(())
}

/// A package nothing pins: installed (and pinned) when a requirement is not met by what
/// is installed; a package only named is left to the step's resolution.
async fn ensure_required(need: &Need, lock: Option<&Path>) -> anyhow::Result<()> {
    let (pkg, at, reqs) = (&need.pkg, &need.at, &need.reqs);
    let Some(first) = reqs.first() else {
        return Ok(());
    };
    let how = How::from_env();
    let satisfied = match installed(pkg) {
        Some(cur) if paths(pkg).0.is_file() => {
            parse_version(&cur.version).is_ok_and(|v| reqs.iter().all(|r| r.versions.matches(&v)))
                // Installed before signatures were required: checked at the registry.
                && (!how.require_signed || cur.signed_by_trusted()?)
        }
        _ => false,
    };
    if satisfied {
        return Ok(());
    }
    let registry = std::env::var("HOIST_REGISTRY")
        .ok()
        .filter(|r| !r.is_empty());
    let Some(registry) = registry else {
        bail!(
            "{at}: requires {pkg}@{}, which is not installed, and no registry is set: set \
             HOIST_REGISTRY=URL, or install it first (hoist plugin install {pkg}@{} --registry URL)",
            first.versions,
            first.versions
        );
    };
    let client = client(Some(&registry), false)?;
    let chosen = choose_all(&client, reqs)
        .await
        .with_context(|| format!("{at}: `requires`"))?;
    let record = install_version(&client, pkg, &chosen, how)
        .await
        .with_context(|| format!("{at}: `requires`"))?;
    if let Some(path) = lock {
        pin(path, &record)?;
    }
    Ok(())
}

/// The newest version that satisfies every requirement (all on one package).
async fn choose_all(
    client: &RegistryClient,
    reqs: &[Requirement],
) -> anyhow::Result<VersionRecord> {
    if let [one] = reqs {
        return Ok(client.resolve(one).await?);
    }
    let versions = client.versions(&reqs[0].package).await?;
    newest_matching(versions, reqs).ok_or_else(|| {
        let all: Vec<String> = reqs.iter().map(|r| r.versions.to_string()).collect();
        anyhow::anyhow!(
            "no version of {} satisfies all of {}",
            reqs[0].package,
            all.join(", ")
        )
    })
}
