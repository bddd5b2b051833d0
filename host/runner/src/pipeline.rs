//! A project's `build`, `push` and `pull` (and the deployment `push --deployment` would
//! register) as one library call, and `hoist plan` as another: the `hoist` command line
//! and a worker call the same functions and only differ in how they show the result.
//!
//! [`run`]: every step of every section resolved and loaded before anything runs (a
//! missing plugin stops the run with nothing done), the deployment's own declaration
//! resolved against blocks, variables and the environment (§3.10 step 2), then the
//! sections in order sharing their outputs, the final directory of `pull` (§2.9) and the
//! deployment spec (§3.10). [`plan`]: the same project resolved and templated as far
//! as is known without running anything, and without a wasmtime runtime.
//!
//! ```no_run
//! # async fn demo(
//! #     values: impl hoist_project::template::Values,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use hoist_runner::pipeline::{self, Loaded};
//! use hoist_runner::templater::Templater;
//! // `values`: where blocks and variables come from (the local store, a Prefect server).
//! let loaded = Loaded::open("prefect.yaml".as_ref(), None)?;
//! let env = std::env::vars().collect();
//! let plan = pipeline::plan(&loaded, None, &Templater::new(env, values)).await;
//! println!("{} step(s) cannot run", plan.problems().len());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::plan::{self as resolve, Target};
use crate::runner::{self, Events, Reporter, RunError, Runner, location, redact_value};
use crate::templater::Templater;
use hoist_policy::secrets::Redactor;
use hoist_project::template::{self, Options, Resolved, Values};
use hoist_project::{self as project, Action, Deployment, Project, StepEntry};
use hoist_runtime::capability::log::LogSink;
use hoist_runtime::{Capability, Grants, Limits, Runtime};

/// Why a project could not be opened or did not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The project file does not exist.
    #[error("{}: no such project file (looked in {})", file.display(), cwd.display())]
    NoProjectFile {
        /// The file asked for.
        file: PathBuf,
        /// The directory it was looked for in.
        cwd: PathBuf,
    },
    /// The project file is not a valid prefect.yaml.
    #[error(transparent)]
    Project(#[from] project::ProjectError),
    /// No deployment has the name asked for.
    #[error("{}: no deployment named `{name}` (deployments: {})", file.display(),
        if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoDeployment {
        /// The project file.
        file: PathBuf,
        /// The name asked for.
        name: String,
        /// The names there are.
        known: Vec<String>,
    },
    /// A step could not be resolved or failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The blocks and variables could not be fetched.
    #[error("{0}")]
    Values(String),
    /// The deployment's declaration (§3.10 step 2) or spec could not be resolved.
    #[error("{}: {label}: {problem}", file.display())]
    Deployment {
        /// The project file.
        file: PathBuf,
        /// `deployment `name``.
        label: String,
        /// What is wrong.
        problem: String,
    },
    /// The process's working directory is gone.
    #[error("cannot read the current directory")]
    Cwd(#[source] std::io::Error),
}

/// A project file, loaded, with the deployment whose sections are used.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The project file as given (messages name it so).
    pub file: PathBuf,
    /// The project.
    pub project: Project,
    /// The deployment chosen (its own sections override the top level, §5.5).
    pub deployment: Option<Deployment>,
}

impl Loaded {
    /// Load `file` and choose the deployment named `deployment`, if any.
    pub fn open(file: &Path, deployment: Option<&str>) -> Result<Self, PipelineError> {
        if !file.exists() {
            return Err(PipelineError::NoProjectFile {
                file: file.into(),
                cwd: std::env::current_dir().unwrap_or_default(),
            });
        }
        let project = project::load(file)?;
        let deployment = match deployment {
            None => None,
            Some(name) => Some(project.deployment(name).cloned().ok_or_else(|| {
                PipelineError::NoDeployment {
                    file: file.into(),
                    name: name.into(),
                    known: project
                        .deployments
                        .iter()
                        .filter_map(|d| d.name.clone())
                        .collect(),
                }
            })?),
        };
        Ok(Self {
            file: file.into(),
            project,
            deployment,
        })
    }

    /// A project given as JSON (a worker's pull steps from the server, as
    /// `{"pull": [...]}`), named `file` in messages; its directory is the project's.
    pub fn from_value(file: &Path, doc: serde_json::Value) -> Result<Self, PipelineError> {
        Ok(Self {
            file: file.into(),
            project: project::load::from_value(file, doc)?,
            deployment: None,
        })
    }

    /// The steps of one section, with the deployment's overrides.
    pub fn steps(&self, action: Action) -> &[StepEntry] {
        self.project.steps(action, self.deployment.as_ref())
    }
}

/// What to run and how.
pub struct PipelineRequest<V> {
    /// `build` (build), `push` (build then push), `pull` (pull).
    pub command: Action,
    /// The step runtime.
    pub runtime: Arc<Runtime>,
    /// Environment, blocks and variables for templates.
    pub templater: Templater<V>,
    /// Grants for the plugins that are not built in (the project file's are added).
    pub grants: Grants,
    /// Limits per step.
    pub limits: Limits,
    /// Step logs.
    pub log: Arc<dyn LogSink>,
    /// Progress.
    pub reporter: Arc<dyn Reporter>,
    /// Record pull-step events here (a flow-run id is known).
    pub events: Option<Events>,
    /// The directory the first step starts in [default: the current one, canonical].
    pub cwd: Option<PathBuf>,
}

/// What a completed run leaves.
#[derive(Clone)]
pub struct PipelineOutcome {
    /// All outputs, unmasked: show them through [`PipelineOutcome::shown_outputs`].
    pub outputs: Map<String, Value>,
    /// The working directory after the last section; for `pull`, the directory the flow
    /// runs in (the last `directory` output, §2.9).
    pub working_directory: PathBuf,
    /// The deployment `prefect deploy` would register (secrets masked), for `build` and
    /// `push` with a deployment.
    pub deployment: Option<Value>,
    /// The same, unmasked: what `hoist deploy` sends to the Prefect server (which
    /// stores resolved values, as `prefect deploy` does). Never print it.
    pub deployment_to_register: Option<Value>,
    /// Masks every secret resolved during the run.
    pub redactor: Redactor,
    /// From the first step to the end.
    pub elapsed: Duration,
}

impl PipelineOutcome {
    /// The outputs with secrets masked.
    pub fn shown_outputs(&self) -> Value {
        redact_value(&Value::Object(self.outputs.clone()), &self.redactor)
    }
}

/// Run the sections of `command` for the loaded project (see the module's doc).
pub async fn run<V: Values>(
    loaded: &Loaded,
    req: PipelineRequest<V>,
) -> Result<PipelineOutcome, PipelineError> {
    let command = req.command;
    let start = req.cwd.clone();
    let runner = runner_for(loaded, req);
    let sections = runner::sections_for(command);
    // Everything is resolved and loaded before the first step of the first section runs.
    let all: Vec<StepEntry> = sections
        .iter()
        .flat_map(|a| loaded.steps(*a).to_vec())
        .collect();
    runner.prepare(&all).await?;
    let config = match &loaded.deployment {
        Some(d) if command != Action::Pull => Some(deployment_config(loaded, d, &runner).await?),
        _ => None,
    };
    let started = Instant::now();
    let mut cwd = match start {
        Some(cwd) => cwd,
        None => {
            let cwd = std::env::current_dir().map_err(PipelineError::Cwd)?;
            std::fs::canonicalize(&cwd).unwrap_or(cwd)
        }
    };
    let start_dir = cwd.clone();
    let mut outputs = Map::new();
    for action in sections {
        let steps = loaded.steps(*action);
        runner
            .reporter
            .section(*action, loaded.deployment.as_ref(), steps.len());
        let outcome = runner.run(steps, outputs, cwd).await?;
        cwd = if *action == Action::Pull {
            runner::final_directory(&outcome)
        } else {
            outcome.cwd
        };
        outputs = outcome.outputs;
    }
    let redactor = runner.redactor();
    let spec = match (&loaded.deployment, &config) {
        (Some(d), Some(config)) => {
            let spec = project::spec::resolve(
                &loaded.project,
                d,
                config,
                &outputs,
                &runner.env,
                &start_dir,
            )
            .map_err(|e| PipelineError::Deployment {
                file: loaded.file.clone(),
                label: format!("deployment `{}`", d.name.as_deref().unwrap_or("?")),
                problem: e.to_string(),
            })?;
            Some(spec)
        }
        _ => None,
    };
    Ok(PipelineOutcome {
        outputs,
        working_directory: cwd,
        deployment: spec.as_ref().map(|s| redact_value(s, &redactor)),
        deployment_to_register: spec,
        redactor,
        elapsed: started.elapsed(),
    })
}

fn runner_for<V: Values>(loaded: &Loaded, req: PipelineRequest<V>) -> Runner<V> {
    let mut runner = Runner::new(
        req.runtime,
        loaded.file.clone(),
        req.log,
        req.reporter,
        req.templater,
    );
    runner.grants = req.grants;
    runner.project_grants = loaded.project.grants.clone();
    runner.events = req.events;
    runner.limits = req.limits;
    runner
}

/// §3.10 step 2: the deployment's declaration resolved against blocks, variables and the
/// environment before any step runs.
async fn deployment_config<V: Values>(
    loaded: &Loaded,
    d: &Deployment,
    runner: &Runner<V>,
) -> Result<Map<String, Value>, PipelineError> {
    let bad = |problem: String| PipelineError::Deployment {
        file: loaded.file.clone(),
        label: d.label(),
        problem,
    };
    let raw = Value::Object(d.raw.clone());
    let blocks = runner
        .fetch_blocks(&raw)
        .await
        .map_err(PipelineError::Values)?;
    let after = template::resolve_blocks(&raw, &blocks).map_err(|e| bad(e.to_string()))?;
    let variables = runner
        .fetch_variables(&after)
        .await
        .map_err(PipelineError::Values)?;
    project::spec::pre_resolve(&d.raw, &runner.env, &blocks, &variables)
        .map_err(|e| bad(e.to_string()))
}

/// What `hoist plan` shows: the project's steps resolved to plugins and templated as far
/// as is known before anything runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The project file.
    pub file: PathBuf,
    /// `deployment `name`` when one was chosen.
    pub deployment: Option<String>,
    /// The sections asked for, in order.
    pub sections: Vec<PlanSection>,
    /// Without a deployment chosen: the deployments that have steps of their own (by
    /// name, else `#index`).
    pub deployments_with_steps: Vec<String>,
}

/// One section of a [`Plan`].
#[derive(Clone, Debug)]
pub struct PlanSection {
    /// Which.
    pub action: Action,
    /// Its steps, in order.
    pub steps: Vec<PlannedStep>,
}

/// One step of a [`Plan`].
#[derive(Clone, Debug)]
pub struct PlannedStep {
    /// The step's name as written.
    pub name: String,
    /// `pull[1]`.
    pub position: String,
    /// Its line in the project file.
    pub line: Option<usize>,
    /// `prefect.yaml:12: pull[1]`, for messages.
    pub location: String,
    /// Its `id`.
    pub id: Option<String>,
    /// Its `requires` (Hoist installs nothing: steps are plugins).
    pub requires: Vec<String>,
    /// The plugin it runs, or why none can.
    pub target: Result<Target, String>,
    /// Capabilities the project file grants it (`hoist.grants`).
    pub grants: Vec<Capability>,
    /// Its inputs with the environment, blocks and variables substituted (placeholders
    /// to step outputs kept), secrets masked.
    pub inputs: Value,
    /// Why the step will fail when it runs, if that is known: templating (a block that
    /// is missing), or a literal input its plugin's schema refuses ([`check_steps`]).
    pub will_fail: Option<String>,
    /// Why its plugin will be refused before any step runs (it cannot be loaded, or it
    /// declares a capability that is not granted), once [`check_steps`] has looked.
    pub refused: Option<String>,
    /// Capabilities the project file grants it that its plugin does not declare (so
    /// never used), once [`check_steps`] has looked.
    pub undeclared: Vec<Capability>,
    /// Placeholders that will resolve to nothing (a step id that no earlier step has, an
    /// unset environment variable): they become empty, as in Prefect.
    pub warnings: Vec<String>,
}

impl Plan {
    /// Every reason a step cannot run, `location: problem`, in order.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for step in self.sections.iter().flat_map(|s| &s.steps) {
            if let Err(e) = &step.target {
                out.push(format!("{}: {e}", step.location));
            }
            if let Some(e) = &step.refused {
                out.push(format!("{}: {e}", step.location));
            }
            if let Some(e) = &step.will_fail {
                out.push(format!("{}: {e}", step.location));
            }
        }
        out
    }

    /// Whether some step resolved to a plugin ([`check_steps`] has something to load).
    pub fn has_plugins(&self) -> bool {
        self.sections
            .iter()
            .flat_map(|s| &s.steps)
            .any(|s| s.target.is_ok())
    }
}

/// Load the plugin of every planned step and note on the step what will stop it:
/// its plugin cannot be loaded, or declares a capability that `grants` and the project
/// file's grants for the step do not give (built-in steps are granted what they
/// declare) — the checks [`Runner::prepare`] makes before a section runs (`refused`) —
/// or a literal input does not fit the plugin's input schema (`will_fail`; values that
/// still hold a placeholder are checked when the step runs). These need a runtime, so
/// [`plan`] leaves them to callers that have one.
pub async fn check_steps(plan: &mut Plan, runtime: &Runtime, grants: &Grants) {
    for step in plan.sections.iter_mut().flat_map(|s| &mut s.steps) {
        let Ok(target) = &step.target else {
            continue;
        };
        let granted = runner::step_grants(grants, &step.grants);
        let plugin = match resolve::load(runtime, target).await {
            Ok(p) => p,
            Err(e) => {
                step.refused = Some(e.to_string());
                continue;
            }
        };
        if step.will_fail.is_none() {
            step.will_fail = crate::schema::check(&step.inputs, &plugin.description.input_schema);
        }
        if matches!(target, Target::Builtin(_)) {
            continue;
        }
        step.refused = plugin
            .ungranted(&granted)
            .map(|cap| runner::not_granted(&step.name, &plugin, &cap));
        let declared = &plugin.description.capabilities;
        step.undeclared = step
            .grants
            .iter()
            .filter(|g| {
                let one = Grants::new([(*g).clone()]);
                !declared.iter().any(|d| one.allows(d))
            })
            .cloned()
            .collect();
    }
}

/// Plan the sections `only` names (all three when `None`) of the loaded project,
/// templating with `templater`. Nothing is loaded or run.
pub async fn plan<V: Values>(
    loaded: &Loaded,
    only: Option<Action>,
    templater: &Templater<V>,
) -> Plan {
    let project_dir = loaded
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let installed = hoist_policy::paths::plugins();
    let actions = match only {
        Some(a) => vec![a],
        None => vec![Action::Build, Action::Push, Action::Pull],
    };
    let mut sections = Vec::new();
    // Step ids seen so far (outputs flow from build to push; a plan cannot know more).
    let mut ids: Vec<String> = Vec::new();
    for action in actions {
        let mut steps = Vec::new();
        for step in loaded.steps(action) {
            let target =
                resolve::resolve(&step.name, &project_dir, &installed).map_err(|e| e.to_string());
            let mut planned = plan_step(loaded, step, target, templater).await;
            planned.warnings = template::misses(&step.inputs, None, &ids, &templater.env)
                .iter()
                .map(|m| runner::describe_miss(m, &ids))
                .collect();
            steps.push(planned);
            ids.extend(step.id.clone());
        }
        sections.push(PlanSection { action, steps });
    }
    Plan {
        file: loaded.file.clone(),
        deployment: loaded.deployment.as_ref().map(Deployment::label),
        sections,
        deployments_with_steps: match loaded.deployment {
            None => deployments_with_steps(&loaded.project),
            Some(_) => Vec::new(),
        },
    }
}

async fn plan_step<V: Values>(
    loaded: &Loaded,
    step: &StepEntry,
    target: Result<Target, String>,
    templater: &Templater<V>,
) -> PlannedStep {
    // Step outputs are not known before running: their placeholders stay.
    let raw = Value::Object(step.inputs.clone());
    templater.note_env_secrets(&raw);
    let keep = Options {
        remove_unset: false,
        skip_prefixes: &[],
    };
    let first =
        match template::apply_values(&raw, &Value::Object(Map::new()), &templater.env, &keep) {
            Resolved::Value(v) => v,
            Resolved::Unset => raw.clone(),
        };
    let (shown, will_fail) = match blocks_and_variables(templater, step, &first).await {
        Ok(v) => (v, None),
        Err(e) => (first, Some(e)),
    };
    templater.note_keyed_secrets(&shown);
    PlannedStep {
        name: step.name.clone(),
        position: step.position.clone(),
        line: step.line,
        location: location(&loaded.file, step),
        id: step.id.clone(),
        requires: step.requires.clone(),
        target,
        grants: loaded.project.grants_for(&step.name).to_vec(),
        inputs: redact_value(&shown, &templater.redactor()),
        will_fail,
        refused: None,
        undeclared: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Blocks and variables resolved for display, where the provider has them.
async fn blocks_and_variables<V: Values>(
    templater: &Templater<V>,
    step: &StepEntry,
    v: &Value,
) -> Result<Value, String> {
    let (names, ids) = template::block_refs(v);
    if names.is_empty() && ids.is_empty() && template::variable_refs(v).is_empty() {
        return Ok(v.clone());
    }
    // The runner's templating does exactly this with outputs; with none, placeholders to
    // outputs would vanish, so only the block and variable passes are applied here.
    let mut only_store = step.clone();
    only_store.inputs = v.as_object().cloned().unwrap_or_default();
    let resolved = templater.template(&only_store, &Map::new()).await?;
    // Keep what the outputs pass dropped: show the merged view.
    Ok(merge_keep(v, &resolved))
}

fn merge_keep(original: &Value, resolved: &Value) -> Value {
    match (original, resolved) {
        (Value::Object(o), Value::Object(r)) => Value::Object(
            o.iter()
                .map(|(k, ov)| {
                    (
                        k.clone(),
                        r.get(k)
                            .map(|rv| merge_keep(ov, rv))
                            .unwrap_or_else(|| ov.clone()),
                    )
                })
                .collect(),
        ),
        (_, r) => r.clone(),
    }
}

/// The deployments that have sections of their own.
fn deployments_with_steps(project: &Project) -> Vec<String> {
    project
        .deployments
        .iter()
        .filter(|d| {
            [&d.build, &d.push, &d.pull]
                .iter()
                .any(|s| !matches!(s, project::Section::Absent))
        })
        .map(|d| d.name.clone().unwrap_or_else(|| format!("#{}", d.index)))
        .collect()
}
