//! prefect.yaml project files (spec §5): parsing, the shape of sections and steps,
//! per-deployment overrides (§5.5), and the 2.x layout (`deployment.yaml`).
//!
//! This crate only understands files and templates; it resolves no step and runs
//! nothing, and depends on neither wasmtime nor a database (CI checks `cargo tree`).
//! Every error names the file and, where there is one, the line, deployment and field.
//! [`template`] is the `{{ }}` engine, pure functions that fixtures and fuzzing test.

#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod events;
pub mod load;
pub mod recipes;
pub mod spec;
pub mod template;

use serde_json::{Map, Value};

pub use load::{ProjectError, load, parse};

/// One section (`build`, `push` or `pull`) as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Section {
    /// The key is not there.
    Absent,
    /// `key: null` (or `key:`).
    Null,
    /// `key: {}` — no steps, but not "explicitly empty" for `pull` inheritance.
    EmptyMapping,
    /// A list of steps (a single step mapping is normalised to a one-item list).
    Steps(Vec<StepEntry>),
}

impl Section {
    /// The steps, if any.
    pub fn steps(&self) -> &[StepEntry] {
        match self {
            Section::Steps(s) => s,
            _ => &[],
        }
    }

    fn has_steps(&self) -> bool {
        !self.steps().is_empty()
    }
}

/// Which section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// `build`
    Build,
    /// `push`
    Push,
    /// `pull`
    Pull,
}

impl Action {
    /// Its key in the file.
    pub fn key(self) -> &'static str {
        match self {
            Action::Build => "build",
            Action::Push => "push",
            Action::Pull => "pull",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// One step as written: `- <name>: {inputs}`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEntry {
    /// Where it is: `pull[2]` or `deployments[0].build[1]` (`deployments[my-dep]...`).
    pub position: String,
    /// 1-based line in the file, when it could be located.
    pub line: Option<usize>,
    /// The step's name (the mapping's key), e.g. `prefect.deployments.steps.git_clone`.
    pub name: String,
    /// The inputs without `id` and `requires`, untemplated.
    pub inputs: Map<String, Value>,
    /// `id`, if given.
    pub id: Option<String>,
    /// `requires`, normalised to a list.
    pub requires: Vec<String>,
    /// The entry exactly as written (for plans and records: never templated).
    pub raw: Value,
}

impl StepEntry {
    /// The last dotted segment of the name (`git_clone`), as Prefect prints it; for a
    /// plugin file, its file name without `.wasm` (`./plugins/greet.wasm` → `greet`).
    pub fn short_name(&self) -> &str {
        if is_plugin_path(&self.name) {
            let file = self.name.rsplit('/').next().unwrap_or(&self.name);
            let stem = file.strip_suffix(".wasm").unwrap_or(file);
            return if stem.is_empty() { &self.name } else { stem };
        }
        self.name.rsplit(['.', ':']).next().unwrap_or(&self.name)
    }
}

/// One entry of `deployments:`.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// Its index in the list.
    pub index: usize,
    /// `name`, if given.
    pub name: Option<String>,
    /// `build`.
    pub build: Section,
    /// `push`.
    pub push: Section,
    /// `pull`.
    pub pull: Section,
    /// The whole mapping, untemplated.
    pub raw: Map<String, Value>,
}

impl Deployment {
    /// How messages name it: `deployment `name`` or `deployment #3`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("deployment `{n}`"),
            None => format!("deployment #{}", self.index),
        }
    }
}

/// A parsed project.
#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    /// The file it came from.
    pub path: std::path::PathBuf,
    /// `name`.
    pub name: Option<String>,
    /// `prefect-version`.
    pub prefect_version: Option<String>,
    /// Top-level `build`.
    pub build: Section,
    /// Top-level `push`.
    pub push: Section,
    /// Top-level `pull`.
    pub pull: Section,
    /// `deployments` (from `deployment.yaml` in the 2.x layout).
    pub deployments: Vec<Deployment>,
    /// Capabilities granted to plugins by step name ([`grant_key`]), from the Hoist-only
    /// top-level key `hoist: {grants: {<step name>: [<capability>, ...]}}` (Prefect
    /// ignores it). Look a step up with [`Project::grants_for`].
    pub grants: std::collections::BTreeMap<String, Vec<hoist_policy::Capability>>,
}

/// The key a step's grants are filed under in `hoist.grants`: the step's name, with a
/// plugin path written one way (`plugins/greet.wasm`, `./plugins/./greet.wasm` and
/// `./plugins/greet.wasm` are one file, `./plugins/greet.wasm`).
pub fn grant_key(name: &str) -> String {
    if !is_plugin_path(name) {
        return name.to_string();
    }
    plugin_path(std::path::Path::new(name))
        .to_string_lossy()
        .into_owned()
}

/// Whether a step's name is a plugin file (`*.wasm`, or a path) rather than a name.
pub fn is_plugin_path(name: &str) -> bool {
    name.ends_with(".wasm") || name.contains('/')
}

/// A plugin file's path written one way: no `.` components or repeated `/`, a relative
/// one with a single leading `./` (`..` is kept: nothing on disk is asked).
pub fn plugin_path(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::{Component, Path, PathBuf};
    let clean: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if clean.is_relative() {
        Path::new(".").join(clean)
    } else {
        clean
    }
}

impl Project {
    /// The capabilities `hoist.grants` gives the step named `step` (its key compared as
    /// [`grant_key`] writes it).
    pub fn grants_for(&self, step: &str) -> &[hoist_policy::Capability] {
        self.grants
            .get(&grant_key(step))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Every step of the project: the top-level sections', then each deployment's.
    pub fn all_steps(&self) -> impl Iterator<Item = &StepEntry> {
        [&self.build, &self.push, &self.pull]
            .into_iter()
            .chain(
                self.deployments
                    .iter()
                    .flat_map(|d| [&d.build, &d.push, &d.pull]),
            )
            .flat_map(Section::steps)
    }

    /// The keys of `hoist.grants` that name no step of the project (top-level sections
    /// or any deployment's): a typo, or a step since renamed.
    pub fn unused_grants(&self) -> Vec<&str> {
        let used: std::collections::BTreeSet<String> =
            self.all_steps().map(|s| grant_key(&s.name)).collect();
        self.grants
            .keys()
            .filter(|k| !used.contains(*k))
            .map(String::as_str)
            .collect()
    }

    /// The top-level section.
    pub fn section(&self, action: Action) -> &Section {
        match action {
            Action::Build => &self.build,
            Action::Push => &self.push,
            Action::Pull => &self.pull,
        }
    }

    /// Find a deployment by name.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.name.as_deref() == Some(name))
    }

    /// Whether the pull section was explicitly emptied (`pull: []` on the deployment, or
    /// absent there with `pull: []` at the top level): then no default pull is generated.
    pub fn pull_explicitly_empty(&self, deployment: Option<&Deployment>) -> bool {
        let empty_list = |s: &Section| matches!(s, Section::Steps(v) if v.is_empty());
        match deployment.map(|d| &d.pull) {
            Some(Section::Steps(v)) if v.is_empty() => true,
            Some(Section::Absent) | None => empty_list(&self.pull),
            _ => false,
        }
    }

    /// The steps of `action` for a deployment (or the top level), by the rules of §5.5:
    /// - build: the deployment's `build` if the key is there (even null/empty), else top level;
    /// - push: the same, but an empty choice falls back to the top level;
    /// - pull: deployment `[]` (or absent with top-level `[]`) means no steps; non-empty
    ///   deployment pull wins; null/`{}`/absent falls back to the top level.
    ///   (The default pull Prefect generates at deploy time is not invented here.)
    pub fn steps<'a>(
        &'a self,
        action: Action,
        deployment: Option<&'a Deployment>,
    ) -> &'a [StepEntry] {
        let top = self.section(action);
        let Some(d) = deployment else {
            return top.steps();
        };
        match action {
            Action::Build => match &d.build {
                Section::Absent => top.steps(),
                s => s.steps(),
            },
            Action::Push => match &d.push {
                s if s.has_steps() => s.steps(),
                _ => top.steps(),
            },
            Action::Pull => match &d.pull {
                Section::Steps(s) if s.is_empty() => &[],
                s if s.has_steps() => s.steps(),
                _ => top.steps(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_as_prefect_prints_them_and_plugin_files_by_their_stem() {
        let short = |name: &str| {
            StepEntry {
                position: "pull[0]".into(),
                line: None,
                name: name.into(),
                inputs: Map::new(),
                id: None,
                requires: Vec::new(),
                raw: Value::Null,
            }
            .short_name()
            .to_string()
        };
        assert_eq!(short("prefect.deployments.steps.git_clone"), "git_clone");
        assert_eq!(short("./plugins/greet.wasm"), "greet");
        assert_eq!(short("greet.wasm"), "greet");
        assert_eq!(short("acme/sync"), "sync");
        assert_eq!(short("run_shell_script"), "run_shell_script");
    }
}
