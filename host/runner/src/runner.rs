//! Runs a section of steps the way Prefect's `run_steps` does (spec §2.5, §3.9):
//! every step resolved to a plugin and loaded before the first one runs; then, in order,
//! inputs templated (outputs + env → blocks → variables → env, outputs opaque to the
//! passes after the first: `template::resolve_step`), the step run in its own sandbox, its mapping outputs stored under its `id` and merged at the top level. The
//! first failure stops the section: later steps do not run.
//!
//! Secrets (values of secret blocks, of `{{ $NAME }}` environment variables whose
//! names say they are secret, and strings under secret-looking input keys) are collected
//! as they are resolved and masked in every log line, error, report and stored event
//! that leaves the runner. The templating half (environment, blocks and variables from a
//! [`Values`] provider, secrets) is [`Templater`], which a runner derefs to.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::plan::{self, Target};
use crate::templater::Templater;
pub use hoist_policy::secrets::{
    keyed_secrets, redact_value, secret_env_name, secret_input_key, secret_strings,
};
use hoist_project::events::EventSink;
use hoist_project::template::{Miss, Values};
use hoist_project::{Action, Deployment, StepEntry};
use hoist_runtime::bindings::Level;
use hoist_runtime::capability::log::{LogSink, Source, StepLog, sanitize};
use hoist_runtime::{Capability, Grants, Limits, Plugin, Runtime, StepRequest, StepRunError};

/// Progress of a section, for people (text) or machines (JSON lines).
pub trait Reporter: Send + Sync {
    /// A section is about to run (`deployment`: whose sections these are). Nothing by
    /// default.
    fn section(&self, action: Action, deployment: Option<&Deployment>, steps: usize) {
        let _ = (action, deployment, steps);
    }
    /// A step is about to run.
    fn started(&self, step: &StepEntry, index: usize, total: usize, target: &Target);
    /// A step finished (outputs are already redacted).
    fn finished(&self, step: &StepEntry, index: usize, report: &StepReport);
}

/// How one step ended.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Wall-clock time, templating included.
    pub elapsed: Duration,
    /// Outputs (redacted), or why the step failed (redacted).
    pub result: Result<Value, StepFailure>,
}

/// Why a step failed: a machine-readable kind and the message for people (one
/// printable line, secrets masked).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepFailure {
    /// `template`, or the runtime's [`ErrorKind::code`](hoist_runtime::ErrorKind::code)
    /// (`not-granted`, `denied`, `timeout`, `failed`...).
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

/// Where pull-step events go (Prefect emits them when a flow-run id is known, §2.8).
pub struct Events {
    /// `prefect.flow-run.<id>`.
    pub resource: String,
    /// Where they are recorded (the caller's choice: the local store, the run's server).
    pub target: Arc<dyn EventSink>,
}

/// Why a section did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Some steps name no runnable plugin; nothing ran.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Resolve(Vec<StepProblem>),
    /// A step failed; the steps after it did not run.
    #[error("{location}: Encountered error while running {name}: {}", cause.message)]
    Step {
        /// `prefect.yaml:12: pull[1]`.
        location: String,
        /// The step's name as written.
        name: String,
        /// The cause (redacted).
        cause: StepFailure,
    },
}

/// A step that cannot run, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct StepProblem {
    /// `prefect.yaml:12: pull[1]`.
    pub location: String,
    /// What is wrong.
    pub problem: String,
    /// The capability the step's plugin needs and was not granted, when that is what
    /// is wrong (the caller adds its own remedy: a flag, a job variable).
    pub ungranted: Option<Capability>,
}

/// What a completed section leaves.
#[derive(Clone, Debug)]
pub struct SectionOutcome {
    /// All outputs (upstream ones included).
    pub outputs: Map<String, Value>,
    /// The working directory after the last step.
    pub cwd: PathBuf,
}

/// Runs sections of one project; its templating half ([`Templater`]: `env`, secrets,
/// blocks and variables from `V`) is reached through `Deref`.
pub struct Runner<V> {
    /// The step runtime.
    pub runtime: Arc<Runtime>,
    /// The project file (for messages) and its directory (plugin paths, preopen).
    pub project_file: PathBuf,
    /// Where installed plugins live.
    pub installed_dir: PathBuf,
    /// Grants for plugins that are not built in (all of them; from the command line).
    pub grants: Grants,
    /// Grants by step name ([`hoist_project::grant_key`]), from the project file's
    /// `hoist.grants`.
    pub project_grants: std::collections::BTreeMap<String, Vec<hoist_runtime::Capability>>,
    /// Limits per step.
    pub limits: Limits,
    /// Step logs.
    pub log: Arc<dyn LogSink>,
    /// Progress.
    pub reporter: Arc<dyn Reporter>,
    /// Record pull-step events here (set for `hoist pull` with a flow-run id).
    pub events: Option<Events>,
    templater: Templater<V>,
    /// The project file's directory, resolved once.
    project_dir: PathBuf,
    /// Plugins already resolved and loaded, by step name: the CLI prepares every
    /// section before running any, and `run` must not load them again.
    prepared: std::sync::Mutex<std::collections::HashMap<String, (Target, Arc<Plugin>)>>,
    /// Outputs of memoised calls ([`MEMOISED`]), by plugin digest and inputs.
    memo: std::sync::Mutex<std::collections::HashMap<String, Value>>,
    run_id: String,
}

/// Built-in steps whose identical calls run once per runner, as Prefect memoises its
/// docker steps per process (spec §4.8); `ignore_cache: true` runs them again.
pub const MEMOISED: &[&str] = &["build_docker_image", "push_docker_image"];

/// The memo key of a call: the plugin and its inputs without `ignore_cache`, as
/// key-sorted JSON. `None` when the step is not memoised or `ignore_cache` is set
/// (the call runs, and its outputs replace what was remembered).
fn memo_key(plugin: &Plugin, inputs: &Value) -> (Option<String>, bool) {
    let Some(inputs) = inputs.as_object() else {
        return (None, false);
    };
    if !plugin.builtin || !MEMOISED.contains(&plugin.description.name.as_str()) {
        return (None, false);
    }
    let mut sorted: std::collections::BTreeMap<&String, &Value> = inputs.iter().collect();
    let ignore = sorted
        .remove(&"ignore_cache".to_string())
        .is_some_and(|v| v.as_bool() == Some(true));
    let key = format!(
        "{}\n{}",
        plugin.digest,
        serde_json::to_string(&sorted).unwrap_or_default()
    );
    (Some(key), ignore)
}

/// `file:line: position` for a step.
pub fn location(file: &Path, step: &StepEntry) -> String {
    match step.line {
        Some(l) => format!("{}:{l}: {}", file.display(), step.position),
        None => format!("{}: {}", file.display(), step.position),
    }
}

/// A step's grants: `base` (the command line's, for every plugin) and the project
/// file's for this step.
pub fn step_grants(base: &Grants, project: &[Capability]) -> Grants {
    let mut g = base.clone();
    for c in project {
        g.add(c.clone());
    }
    g
}

/// What the step's input schema says of the inputs written as literals (the rest are
/// checked by the step when its turn comes).
fn literal_problem(step: &StepEntry, plugin: &Plugin) -> Option<String> {
    let literal = Value::Object(step.inputs.clone());
    crate::schema::check(&literal, &plugin.description.input_schema)
}

/// A placeholder that resolves to nothing, for people: which, why, the closest of
/// `candidates` (step ids or output keys) if one is close, and what happens.
pub fn describe_miss(miss: &Miss, candidates: &[String]) -> String {
    match miss {
        Miss::Env { placeholder, name } => format!(
            "`{placeholder}`: environment variable `{name}` is not set, so it resolves to nothing (as in Prefect)"
        ),
        Miss::Output { placeholder, head } => {
            let near = plan::nearest(head, candidates)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            format!(
                "`{placeholder}`: no step output `{head}`{near}, so it resolves to nothing (as in Prefect)"
            )
        }
    }
}

/// Why `step`'s plugin cannot run: it declares `cap`, which `grants` (the caller's and
/// the project file's for this step) do not give. Says where a project grants it; a
/// command line adds its own flag.
pub fn not_granted(step: &str, plugin: &Plugin, cap: &Capability) -> String {
    format!(
        "`{step}` ({}) needs capability `{cap}`, which was not granted (a project grants it \
         to this step with `hoist: {{grants: {{\"{step}\": [\"{cap}\"]}}}}` in its file)",
        plugin.description.name
    )
}

impl<V> std::ops::Deref for Runner<V> {
    type Target = Templater<V>;
    fn deref(&self) -> &Templater<V> {
        &self.templater
    }
}

impl<V> std::ops::DerefMut for Runner<V> {
    fn deref_mut(&mut self) -> &mut Templater<V> {
        &mut self.templater
    }
}

impl<V: Values> Runner<V> {
    /// A runner for the project in `project_file` that templates with `templater` (the
    /// environment templates see and the blocks and variables come from it).
    pub fn new(
        runtime: Arc<Runtime>,
        project_file: PathBuf,
        log: Arc<dyn LogSink>,
        reporter: Arc<dyn Reporter>,
        templater: Templater<V>,
    ) -> Self {
        let dir = project_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let project_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Self {
            runtime,
            project_file,
            installed_dir: hoist_policy::paths::plugins(),
            grants: Grants::none(),
            project_grants: Default::default(),
            limits: Limits::default(),
            log,
            reporter,
            events: None,
            templater,
            run_id: hoist_runtime::new_run_id(),
            project_dir,
            prepared: Default::default(),
            memo: Default::default(),
        }
    }

    /// The grants of a step's plugin: the command line's plus the project file's for it.
    fn grants_for(&self, step: &StepEntry) -> Grants {
        let project = self
            .project_grants
            .get(&hoist_project::grant_key(&step.name));
        step_grants(&self.grants, project.map(Vec::as_slice).unwrap_or_default())
    }

    /// Resolve every step to a plugin, load it, check that it is granted what it
    /// declares and that its literal inputs fit its input schema. Fails, naming every
    /// bad step, before anything runs.
    pub async fn prepare(
        &self,
        steps: &[StepEntry],
    ) -> Result<Vec<(Target, Arc<Plugin>)>, RunError> {
        let mut problems = Vec::new();
        let mut ready = Vec::with_capacity(steps.len());
        for step in steps {
            let known = self
                .prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&step.name)
                .cloned();
            if let Some(done) = known {
                // The plugin is known; this step's own literal inputs are not.
                if let Some(problem) = literal_problem(step, &done.1) {
                    problems.push(StepProblem {
                        location: location(&self.project_file, step),
                        problem,
                        ungranted: None,
                    });
                    continue;
                }
                ready.push(done);
                continue;
            }
            let loc = location(&self.project_file, step);
            let target = match plan::resolve(&step.name, &self.project_dir, &self.installed_dir) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(StepProblem {
                        location: loc,
                        problem: e.to_string(),
                        ungranted: None,
                    });
                    continue;
                }
            };
            match plan::load(&self.runtime, &target).await {
                Ok(plugin) => {
                    if let Some(cap) = plugin.ungranted(&self.grants_for(step)) {
                        problems.push(StepProblem {
                            location: loc,
                            problem: not_granted(&step.name, &plugin, &cap),
                            ungranted: Some(cap),
                        });
                        continue;
                    }
                    if let Some(problem) = literal_problem(step, &plugin) {
                        problems.push(StepProblem {
                            location: loc,
                            problem,
                            ungranted: None,
                        });
                        continue;
                    }
                    self.prepared
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(step.name.clone(), (target.clone(), plugin.clone()));
                    ready.push((target, plugin));
                }
                Err(e) => problems.push(StepProblem {
                    location: loc,
                    problem: e.to_string(),
                    ungranted: None,
                }),
            }
        }
        if problems.is_empty() {
            Ok(ready)
        } else {
            Err(RunError::Resolve(problems))
        }
    }

    /// Run `steps` (one section) starting from `outputs` in `cwd`.
    pub async fn run(
        &self,
        steps: &[StepEntry],
        outputs: Map<String, Value>,
        cwd: PathBuf,
    ) -> Result<SectionOutcome, RunError> {
        let prepared = self.prepare(steps).await?;
        let mut outputs = outputs;
        let mut cwd = cwd;
        let total = steps.len();
        for (index, (step, (target, plugin))) in steps.iter().zip(prepared).enumerate() {
            self.reporter.started(step, index, total, &target);
            let start = std::time::Instant::now();
            let result = self.run_step(step, &plugin, &outputs, &cwd).await;
            self.record_event(step, index, result.is_ok()).await;
            let redactor = self.redactor();
            match result {
                Ok(outcome) => {
                    let shown = redact_value(&outcome.outputs, &redactor);
                    self.reporter.finished(
                        step,
                        index,
                        &StepReport {
                            elapsed: start.elapsed(),
                            result: Ok(shown),
                        },
                    );
                    cwd = outcome.cwd;
                    // Non-mapping outputs are ignored entirely, as Prefect does.
                    if let Value::Object(m) = outcome.outputs {
                        if let Some(id) = &step.id {
                            outputs.insert(id.clone(), Value::Object(m.clone()));
                        }
                        outputs.extend(m);
                    }
                }
                Err(cause) => {
                    // A plugin wrote the cause: one printable line, so it can neither
                    // drive the terminal nor forge a line of the report.
                    let cause = StepFailure {
                        kind: cause.kind,
                        message: sanitize(&redactor.redact(&cause.message)).into_owned(),
                    };
                    self.reporter.finished(
                        step,
                        index,
                        &StepReport {
                            elapsed: start.elapsed(),
                            result: Err(cause.clone()),
                        },
                    );
                    return Err(RunError::Step {
                        location: location(&self.project_file, step),
                        name: step.name.clone(),
                        cause,
                    });
                }
            }
        }
        Ok(SectionOutcome { outputs, cwd })
    }

    /// One `prefect.flow-run.pull-step.{executed,failed}` event, with the step's inputs
    /// exactly as written (untemplated: no resolved secret can be in them). A failure to
    /// record is a warning, never a step failure.
    async fn record_event(&self, step: &StepEntry, index: usize, ok: bool) {
        let Some(events) = &self.events else { return };
        let inputs = step.raw.get(&step.name).cloned().unwrap_or(Value::Null);
        // Untemplated, but a secret written literally (under a secret-looking key) is
        // masked like any other.
        self.add_secrets(keyed_secrets(&inputs));
        let inputs = redact_value(&inputs, &self.redactor());
        let payload = serde_json::json!({
            "index": index,
            "qualified_name": step.name,
            "step_name": step.short_name(),
            "id": step.id,
            "inputs": inputs,
        });
        let name = if ok {
            "prefect.flow-run.pull-step.executed"
        } else {
            "prefect.flow-run.pull-step.failed"
        };
        if let Err(e) = events.target.record(name, &events.resource, &payload).await {
            eprintln!("warning: could not record event {name}: {e}");
        }
    }

    /// Tell the step's log about placeholders that will resolve to nothing (they become
    /// empty, as in Prefect, but a misspelt id or an unset variable should be seen).
    fn warn_misses(&self, step: &StepEntry, outputs: &Map<String, Value>) {
        let misses = hoist_project::template::misses(&step.inputs, Some(outputs), &[], &self.env);
        if misses.is_empty() {
            return;
        }
        let log = StepLog::new(step.short_name(), self.log.clone(), self.redactor());
        let keys: Vec<String> = outputs.keys().cloned().collect();
        for miss in misses {
            log.emit(Level::Warn, Source::Step, &describe_miss(&miss, &keys), &[]);
        }
    }

    /// Template one step's inputs (§3.9) and run it.
    async fn run_step(
        &self,
        step: &StepEntry,
        plugin: &Plugin,
        outputs: &Map<String, Value>,
        cwd: &Path,
    ) -> Result<hoist_runtime::StepOutcome, StepFailure> {
        self.warn_misses(step, outputs);
        let inputs = self
            .template(step, outputs)
            .await
            .map_err(|message| StepFailure {
                kind: "template",
                message,
            })?;
        // Keys whose value was a lone placeholder that did not resolve are left out, as
        // Prefect does; if the step then misses one, say why.
        let dropped: Vec<(String, String)> = step
            .inputs
            .iter()
            .filter(|(k, _)| inputs.get(k.as_str()).is_none())
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let (memo, ignore_cache) = memo_key(plugin, &inputs);
        if let Some(key) = &memo
            && !ignore_cache
            && let Some(outputs) = self.memo.lock().unwrap_or_else(|p| p.into_inner()).get(key)
        {
            let log = StepLog::new(step.short_name(), self.log.clone(), self.redactor());
            log.emit(
                Level::Info,
                Source::Step,
                "an identical call already ran in this process: its outputs are reused (set `ignore_cache: true` to run it again)",
                &[],
            );
            return Ok(hoist_runtime::StepOutcome {
                outputs: outputs.clone(),
                cwd: cwd.to_path_buf(),
                elapsed: std::time::Duration::ZERO,
            });
        }
        let mut req = StepRequest::new(step.short_name(), cwd)
            .inputs(inputs)
            .grants(self.grants_for(step))
            .limits(self.limits)
            .log(self.log.clone());
        req.id = step.id.clone();
        req.run_id = self.run_id.clone();
        req.project_root = Some(self.project_dir.clone());
        req.secrets = self.secrets();
        let outcome = self
            .runtime
            .run(plugin, req)
            .await
            .map_err(|e: StepRunError| {
                let kind = e.kind.code();
                let mut message = e.kind.to_string();
                for (key, written) in &dropped {
                    if message.contains(&format!("`{key}`")) {
                        message.push_str(&format!(
                            " (`{key}: {written}` did not resolve, so the key was left out, as \
                         Prefect does: does the step it refers to run earlier in this section?)"
                        ));
                    }
                }
                StepFailure { kind, message }
            })?;
        if let Some(key) = memo {
            self.memo
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, outcome.outputs.clone());
        }
        Ok(outcome)
    }
}

/// After a pull section: the directory the flow would run in — the last truthy
/// `directory` output (relative to the final working directory), else that directory.
pub fn final_directory(outcome: &SectionOutcome) -> PathBuf {
    match outcome.outputs.get("directory") {
        Some(Value::String(d)) if !d.is_empty() => outcome.cwd.join(d),
        _ => outcome.cwd.clone(),
    }
}

/// Which sections a command runs.
pub fn sections_for(command: Action) -> &'static [Action] {
    match command {
        Action::Build => &[Action::Build],
        // `prefect deploy` runs build then push with shared outputs.
        Action::Push => &[Action::Build, Action::Push],
        Action::Pull => &[Action::Pull],
    }
}
