//! From a step's name in prefect.yaml to the plugin that runs it.
//!
//! Prefect names (3.x, the 2.x `prefect.projects` aliases, integration packages) map to
//! built-in plugins; names ending in `.wasm` or containing `/` are plugin files relative
//! to the project; other names are installed plugins. Names Hoist knows but has no plugin
//! for yet are refused as "not available yet", never skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_runtime::{ErrorKind, Plugin, Runtime, StepRunError};

/// Prefect names and the built-in plugin that implements them.
pub const BUILTIN_NAMES: &[(&str, &str)] = &[
    (
        "prefect.deployments.steps.set_working_directory",
        "set_working_directory",
    ),
    (
        "prefect.deployments.steps.pull.set_working_directory",
        "set_working_directory",
    ),
    (
        "prefect.projects.steps.set_working_directory",
        "set_working_directory",
    ),
    (
        "prefect.deployments.steps.run_shell_script",
        "run_shell_script",
    ),
    (
        "prefect.deployments.steps.utility.run_shell_script",
        "run_shell_script",
    ),
    (
        "prefect.projects.steps.run_shell_script",
        "run_shell_script",
    ),
    (
        "prefect.deployments.steps.pip_install_requirements",
        "pip_install_requirements",
    ),
    (
        "prefect.deployments.steps.utility.pip_install_requirements",
        "pip_install_requirements",
    ),
    (
        "prefect.projects.steps.pip_install_requirements",
        "pip_install_requirements",
    ),
    ("prefect.deployments.steps.git_clone", "git_clone"),
    ("prefect.deployments.steps.pull.git_clone", "git_clone"),
    ("prefect.deployments.steps.pull.agit_clone", "git_clone"),
    ("prefect.deployments.steps.git_clone_project", "git_clone"),
    (
        "prefect.deployments.steps.pull.git_clone_project",
        "git_clone",
    ),
    ("prefect.projects.steps.git_clone_project", "git_clone"),
    ("prefect.projects.steps.git_clone", "git_clone"),
    (
        "prefect.deployments.steps.pull_from_remote_storage",
        "pull_from_remote_storage",
    ),
    (
        "prefect.deployments.steps.pull.pull_from_remote_storage",
        "pull_from_remote_storage",
    ),
    ("prefect_aws.deployments.steps.push_to_s3", "push_to_s3"),
    ("prefect_aws.deployments.steps.pull_from_s3", "pull_from_s3"),
    (
        "prefect_aws.projects.steps.push_project_to_s3",
        "push_to_s3",
    ),
    (
        "prefect_aws.projects.steps.pull_project_from_s3",
        "pull_from_s3",
    ),
    (
        "prefect_docker.deployments.steps.build_docker_image",
        "build_docker_image",
    ),
    (
        "prefect_docker.deployments.steps.push_docker_image",
        "push_docker_image",
    ),
    (
        "prefect_docker.projects.steps.build_docker_image",
        "build_docker_image_legacy",
    ),
    (
        "prefect_docker.projects.steps.push_docker_image",
        "push_docker_image",
    ),
];

/// Prefect names Hoist recognises but cannot run yet, with the step they belong to.
pub const NOT_YET: &[(&str, &str)] = &[
    (
        "prefect.deployments.steps.pull_with_block",
        "pull_with_block",
    ),
    (
        "prefect.deployments.steps.pull.pull_with_block",
        "pull_with_block",
    ),
    ("prefect_gcp.deployments.steps.push_to_gcs", "push_to_gcs"),
    (
        "prefect_gcp.deployments.steps.pull_from_gcs",
        "pull_from_gcs",
    ),
    (
        "prefect_gcp.projects.steps.push_project_to_gcs",
        "push_to_gcs",
    ),
    (
        "prefect_gcp.projects.steps.pull_project_from_gcs",
        "pull_from_gcs",
    ),
    (
        "prefect_azure.deployments.steps.push_to_azure_blob_storage",
        "push_to_azure_blob_storage",
    ),
    (
        "prefect_azure.deployments.steps.pull_from_azure_blob_storage",
        "pull_from_azure_blob_storage",
    ),
];

/// What runs a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A built-in plugin, by short name.
    Builtin(&'static str),
    /// A plugin file (path as resolved against the project directory).
    File(PathBuf),
    /// An installed plugin.
    Installed(PathBuf),
}

impl Target {
    /// How plans print it.
    pub fn describe(&self) -> String {
        match self {
            Target::Builtin(n) => format!("built-in {n}"),
            Target::File(p) => format!("plugin file {}", p.display()),
            Target::Installed(p) => format!("installed plugin {}", p.display()),
        }
    }
}

/// Why a name does not lead to a plugin.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Known to Prefect, not implemented by Hoist yet.
    #[error(
        "`{name}` is a Prefect step Hoist does not run yet (its `{step}` plugin is not available yet)"
    )]
    NotAvailableYet {
        /// The name as written.
        name: String,
        /// The step it belongs to.
        step: &'static str,
    },
    /// A plugin file that does not exist.
    #[error("plugin file `{}` does not exist", .0.display())]
    MissingFile(PathBuf),
    /// A registry package (`namespace/name`) that is not installed.
    #[error("package `{0}` is not installed; install it with `hoist plugin install {0}`")]
    NotInstalled(String),
    /// Nothing by that name.
    #[error("unknown step `{name}`{}", suggestion(.closest))]
    Unknown {
        /// The name as written.
        name: String,
        /// The closest known names.
        closest: Vec<String>,
    },
}

fn suggestion(closest: &[String]) -> String {
    match closest {
        [] => String::from(
            "; it is not a Prefect step name, a plugin file (`./x.wasm`) or an installed plugin",
        ),
        names => format!(
            "; did you mean {}?",
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

/// Resolve a step name. `installed` is the installed-plugins directory.
pub fn resolve(name: &str, project_dir: &Path, installed: &Path) -> Result<Target, ResolveError> {
    if let Some((_, b)) = BUILTIN_NAMES.iter().find(|(n, _)| *n == name) {
        return Ok(Target::Builtin(b));
    }
    if let Some(b) = hoist_builtins::names().find(|b| *b == name) {
        return Ok(Target::Builtin(b));
    }
    if let Some((_, step)) = NOT_YET.iter().find(|(n, _)| *n == name) {
        return Err(ResolveError::NotAvailableYet {
            name: name.into(),
            step,
        });
    }
    // `acme/s3-sync`: an installed registry package, unless a file by that name is there.
    if hoist_policy::package::PackageName::looks_like(name)
        && !project_dir.join(name).is_file()
        && let Ok(pkg) = name.parse::<hoist_policy::package::PackageName>()
    {
        let path = pkg.installed_in(installed).0;
        return if path.is_file() {
            Ok(Target::Installed(path))
        } else {
            Err(ResolveError::NotInstalled(pkg.to_string()))
        };
    }
    if hoist_project::is_plugin_path(name) {
        let path = clean_join(project_dir, name);
        return if path.is_file() {
            Ok(Target::File(path))
        } else {
            Err(ResolveError::MissingFile(path))
        };
    }
    let path = installed.join(format!("{name}.wasm"));
    if path.is_file() {
        return Ok(Target::Installed(path));
    }
    Err(ResolveError::Unknown {
        name: name.into(),
        closest: closest(name, &installed_names(installed)),
    })
}

/// `dir/name` without `.` components (`./` + `./greet.wasm` is `./greet.wasm`, not
/// `././greet.wasm`); a relative result keeps one leading `./` to show it is a path.
fn clean_join(dir: &Path, name: &str) -> PathBuf {
    hoist_project::plugin_path(&dir.join(name))
}

/// Load the plugin a name resolved to: a built-in from `hoist-builtins`, or a component
/// file (a project's plugin file or an installed plugin).
pub async fn load(runtime: &Runtime, target: &Target) -> Result<Arc<Plugin>, StepRunError> {
    match target {
        Target::Builtin(name) => load_builtin(runtime, name).await,
        Target::File(p) | Target::Installed(p) => runtime.load_file(p).await,
    }
}

/// Load the built-in step `name` (its short name, e.g. `git_clone`) from the components
/// `hoist-builtins` embeds.
pub async fn load_builtin(runtime: &Runtime, name: &str) -> Result<Arc<Plugin>, StepRunError> {
    let Some((bytes, digest)) = hoist_builtins::find(name) else {
        return Err(StepRunError {
            step: name.into(),
            plugin: name.into(),
            kind: ErrorKind::Load(format!(
                "there is no built-in step `{name}` (built-in: {})",
                hoist_builtins::names().collect::<Vec<_>>().join(", ")
            )),
        });
    };
    runtime.load_builtin(name, bytes, digest).await
}

/// Names of the plugins installed in `dir`, sorted: `<name>.wasm` (copied in by hand)
/// and `<namespace>/<name>.wasm` (installed from a registry).
pub fn installed_names(dir: &Path) -> Vec<String> {
    let wasm_in = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
                    .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = wasm_in(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for ns in rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            v.extend(
                wasm_in(&ns.path())
                    .into_iter()
                    .map(|n| format!("{ns_name}/{n}")),
            );
        }
    }
    v.sort();
    v
}

/// The one of `candidates` closest to `name`, if it is close (a typo, not another name):
/// for "did you mean" after a step id or a grant key.
pub fn nearest<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), c.as_str()))
        .filter(|(d, _)| *d > 0 && *d <= (name.len() / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

/// Up to two known names (Prefect's, built-in, installed) closest to `name` (by edit
/// distance on the whole name and on the last segment).
pub fn closest(name: &str, installed: &[String]) -> Vec<String> {
    let short = name.rsplit('.').next().unwrap_or(name);
    let mut names: Vec<&str> = BUILTIN_NAMES
        .iter()
        .chain(NOT_YET)
        .map(|(n, _)| *n)
        .collect();
    for n in hoist_builtins::names() {
        names.push(n);
    }
    for n in installed {
        names.push(n);
    }
    let mut scored: Vec<(usize, &str)> = names
        .into_iter()
        .map(|n| {
            let last = n.rsplit('.').next().unwrap_or(n);
            (
                edit_distance(n, name).min(edit_distance(last, short) + usize::from(n != name)),
                n,
            )
        })
        .collect();
    scored.sort();
    scored.dedup_by_key(|(_, n)| *n);
    let limit = (name.len() / 3).max(2);
    scored
        .into_iter()
        .filter(|(d, _)| *d <= limit)
        .take(2)
        .map(|(_, n)| n.to_string())
        .collect()
}

/// Levenshtein distance.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_paths_are_shown_clean() {
        let p = |dir: &str, name: &str| clean_join(Path::new(dir), name).display().to_string();
        assert_eq!(p(".", "./plugins/greet.wasm"), "./plugins/greet.wasm");
        assert_eq!(p("", "greet.wasm"), "./greet.wasm");
        assert_eq!(p("/proj/./x", "./a/./b.wasm"), "/proj/x/a/b.wasm");
        assert_eq!(p("/proj", "../b.wasm"), "/proj/../b.wasm");
    }

    #[test]
    fn prefect_names_map_to_builtins_or_say_not_yet() {
        let here = Path::new("/nonexistent");
        assert_eq!(
            resolve("prefect.deployments.steps.run_shell_script", here, here),
            Ok(Target::Builtin("run_shell_script"))
        );
        assert_eq!(
            resolve("prefect.projects.steps.set_working_directory", here, here),
            Ok(Target::Builtin("set_working_directory"))
        );
        assert_eq!(
            resolve(
                "prefect_aws.projects.steps.pull_project_from_s3",
                here,
                here
            ),
            Ok(Target::Builtin("pull_from_s3"))
        );
        let e = resolve("prefect_gcp.deployments.steps.pull_from_gcs", here, here).unwrap_err();
        assert!(e.to_string().contains("not available yet"), "{e}");
        let e = resolve("prefect.deployments.steps.run_shel_script", here, here).unwrap_err();
        assert!(
            e.to_string()
                .contains("did you mean `prefect.deployments.steps.run_shell_script`"),
            "{e}"
        );
        assert!(matches!(
            resolve("./x.wasm", here, here),
            Err(ResolveError::MissingFile(_))
        ));
    }
}
