//! Runs a section of steps the way Prefect's `run_steps` does (spec §2.5, §3.9):
//! every step resolved to a plugin and loaded before the first one runs; then, in order,
//! inputs templated (outputs + env → blocks → variables → env, outputs opaque to the
//! passes after the first: `template::resolve_step`), the step run in its own sandbox, its mapping outputs stored under its `id` and merged at the top level. The
//! first failure stops the section: later steps do not run.
//!
//! Secrets (values of secret blocks, of `{{ $NAME }}` environment variables whose
//! names say they are secret, and strings under secret-looking input keys) are collected
//! as they are resolved and masked in every log line, error, report and stored event
//! that leaves the runner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::capability::log::{LogSink, Redactor, sanitize};
use crate::plan::{self, Target};
use crate::project::{Action, StepEntry};
use crate::runtime::{Grants, Limits, Plugin, Runtime, StepRequest, StepRunError};
use crate::store::{Store, StoreError};
use crate::template::{self, Blocks, Env, TemplateError};
pub use hoist_policy::secrets::{
    keyed_secrets, redact_value, secret_env_name, secret_input_key, secret_strings,
};

/// Progress of a section, for people (text) or machines (JSON lines).
pub trait Reporter: Send + Sync {
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
    /// `template`, or the runtime's [`ErrorKind::code`](crate::runtime::ErrorKind::code)
    /// (`not-granted`, `denied`, `timeout`, `failed`...).
    pub kind: &'static str,
    /// What happened.
    pub message: String,
}

/// Where pull-step events go (Prefect emits them when a flow-run id is known, §2.8).
pub struct Events {
    /// `prefect.flow-run.<id>`.
    pub resource: String,
    /// The store they are recorded in.
    pub store: Store,
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
    /// The variables/blocks store could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A step that cannot run, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct StepProblem {
    /// `prefect.yaml:12: pull[1]`.
    pub location: String,
    /// What is wrong.
    pub problem: String,
}

/// What a completed section leaves.
#[derive(Clone, Debug)]
pub struct SectionOutcome {
    /// All outputs (upstream ones included).
    pub outputs: Map<String, Value>,
    /// The working directory after the last step.
    pub cwd: PathBuf,
}

/// Runs sections of one project.
pub struct Runner {
    /// The step runtime.
    pub runtime: Arc<Runtime>,
    /// The project file (for messages) and its directory (plugin paths, preopen).
    pub project_file: PathBuf,
    /// Where installed plugins live.
    pub installed_dir: PathBuf,
    /// The environment templates see.
    pub env: Env,
    /// Grants for plugins that are not built in (all of them; from the command line).
    pub grants: Grants,
    /// Grants by step name, from the project file's `hoist.grants`.
    pub project_grants: std::collections::BTreeMap<String, Vec<crate::runtime::Capability>>,
    /// Limits per step.
    pub limits: Limits,
    /// Step logs.
    pub log: Arc<dyn LogSink>,
    /// Progress.
    pub reporter: Arc<dyn Reporter>,
    /// Record pull-step events here (set for `hoist pull` with a flow-run id).
    pub events: Option<Events>,
    store: tokio::sync::OnceCell<Store>,
    secrets: std::sync::Mutex<Vec<String>>,
    /// The project file's directory, resolved once.
    project_dir: PathBuf,
    /// Plugins already resolved and loaded, by step name: the CLI prepares every
    /// section before running any, and `run` must not load them again.
    prepared: std::sync::Mutex<std::collections::HashMap<String, (Target, Arc<Plugin>)>>,
    run_id: String,
}

/// `file:line: position` for a step.
pub fn location(file: &Path, step: &StepEntry) -> String {
    match step.line {
        Some(l) => format!("{}:{l}: {}", file.display(), step.position),
        None => format!("{}: {}", file.display(), step.position),
    }
}

impl Runner {
    /// A runner for the project in `project_file`.
    pub fn new(
        runtime: Arc<Runtime>,
        project_file: PathBuf,
        log: Arc<dyn LogSink>,
        reporter: Arc<dyn Reporter>,
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
            env: std::env::vars().collect(),
            grants: Grants::none(),
            project_grants: Default::default(),
            limits: Limits::default(),
            log,
            reporter,
            events: None,
            store: tokio::sync::OnceCell::new(),
            secrets: std::sync::Mutex::new(Vec::new()),
            run_id: crate::runtime::new_run_id(),
            project_dir,
            prepared: Default::default(),
        }
    }

    /// The grants of a step's plugin: the command line's plus the project file's for it.
    fn grants_for(&self, step: &StepEntry) -> Grants {
        let mut g = self.grants.clone();
        for c in self.project_grants.get(&step.name).into_iter().flatten() {
            g.add(c.clone());
        }
        g
    }

    /// Use this store instead of the default one.
    pub fn with_store(self, store: Store) -> Self {
        let cell = tokio::sync::OnceCell::new();
        let _ = cell.set(store);
        Self {
            store: cell,
            ..self
        }
    }

    async fn store(&self) -> Result<&Store, StoreError> {
        self.store.get_or_try_init(Store::open_default).await
    }

    /// The redactor for everything resolved so far.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(
            self.secrets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        )
    }

    /// Remember the values of secret-looking environment variables `v` refers to, so
    /// they are masked from now on.
    pub fn note_env_secrets(&self, v: &Value) {
        self.add_secrets(env_secrets(v, &self.env));
    }

    /// Remember the strings `v` holds under secret-looking keys (`password`,
    /// `aws_secret_access_key`, ...), so they are masked too.
    pub fn note_keyed_secrets(&self, v: &Value) {
        self.add_secrets(keyed_secrets(v));
    }

    fn add_secrets(&self, more: Vec<String>) {
        if !more.is_empty() {
            self.secrets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(more);
        }
    }

    /// Resolve every step to a plugin and load it. Fails, naming every bad step, before
    /// anything runs.
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
                    });
                    continue;
                }
            };
            let loaded = match &target {
                Target::Builtin(name) => self.runtime.builtin(name).await,
                Target::File(p) | Target::Installed(p) => self.runtime.load_file(p).await,
            };
            match loaded {
                Ok(plugin) => {
                    self.prepared
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(step.name.clone(), (target.clone(), plugin.clone()));
                    ready.push((target, plugin));
                }
                Err(e) => problems.push(StepProblem {
                    location: loc,
                    problem: e.to_string(),
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
        if let Err(e) = events
            .store
            .record_event(name, &events.resource, &payload)
            .await
        {
            eprintln!("warning: could not record event {name}: {e}");
        }
    }

    /// Template one step's inputs (§3.9) and run it.
    async fn run_step(
        &self,
        step: &StepEntry,
        plugin: &Plugin,
        outputs: &Map<String, Value>,
        cwd: &Path,
    ) -> Result<crate::runtime::StepOutcome, StepFailure> {
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
        let mut req = StepRequest::new(step.short_name(), cwd)
            .inputs(inputs)
            .grants(self.grants_for(step))
            .limits(self.limits)
            .log(self.log.clone());
        req.id = step.id.clone();
        req.run_id = self.run_id.clone();
        req.project_root = Some(self.project_dir.clone());
        req.secrets = self
            .secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.runtime
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
            })
    }

    /// Resolve a step's inputs against the outputs so far, the environment, and the
    /// blocks and variables it refers to ([`template::resolve_step`]). Blocks and
    /// variables are fetched for what the user wrote, before any output is substituted:
    /// outputs are a plugin's text and stay opaque.
    pub async fn template(
        &self,
        step: &StepEntry,
        outputs: &Map<String, Value>,
    ) -> Result<Value, String> {
        let raw = Value::Object(step.inputs.clone());
        self.note_env_secrets(&raw);
        let sources = template::step_sources(&raw, &self.env);
        let blocks = self.fetch_blocks(&sources).await?;
        let mut fetched: Vec<Value> = blocks
            .by_name
            .values()
            .chain(blocks.by_id.values())
            .cloned()
            .collect();
        let variables = if fetched.is_empty() {
            self.fetch_variables(&sources).await?
        } else {
            fetched.push(sources);
            self.fetch_variables(&Value::Array(fetched.clone())).await?
        };
        // `{{ $NAME }}` brought in by block or variable values (the last pass) are
        // resolved too: mask the secret-looking ones.
        if !fetched.is_empty() || !variables.is_empty() {
            fetched.extend(variables.values().cloned());
            self.add_secrets(env_secrets(&Value::Array(fetched), &self.env));
        }
        let v = template::resolve_step(
            &raw,
            &Value::Object(outputs.clone()),
            &self.env,
            &blocks,
            &variables,
        )
        .map_err(|e: TemplateError| e.to_string())?;
        self.add_secrets(keyed_secrets(&v));
        Ok(v)
    }
}

impl Runner {
    /// The block documents `v` refers to (by name or `$ref` id), from the store; the
    /// values of secret ones are remembered for masking. Missing ones are left out (the
    /// block pass reports them).
    pub async fn fetch_blocks(&self, v: &Value) -> Result<Blocks, String> {
        let (names, ids) = template::block_refs(v);
        let mut blocks = Blocks::default();
        if names.is_empty() && ids.is_empty() {
            return Ok(blocks);
        }
        let store = self.store().await.map_err(|e| e.to_string())?;
        let mut secrets = Vec::new();
        for (slug, name) in names {
            if let Some(b) = store.block(&slug, &name).await.map_err(|e| e.to_string())? {
                if b.secret {
                    secret_strings(&b.data, &mut secrets);
                }
                blocks.by_name.insert((slug, name), b.data);
            }
        }
        for id in ids {
            if let Some(b) = store.block_by_id(&id).await.map_err(|e| e.to_string())? {
                if b.secret {
                    secret_strings(&b.data, &mut secrets);
                }
                blocks.by_id.insert(id, b.data);
            }
        }
        self.add_secrets(secrets);
        Ok(blocks)
    }

    /// The variables `v` refers to, from the store (missing ones are left out).
    pub async fn fetch_variables(
        &self,
        v: &Value,
    ) -> Result<std::collections::BTreeMap<String, Value>, String> {
        let names = template::variable_refs(v);
        if names.is_empty() {
            return Ok(Default::default());
        }
        let store = self.store().await.map_err(|e| e.to_string())?;
        store.variables(&names).await.map_err(|e| e.to_string())
    }
}

/// Values of secret-looking environment variables that a value refers to as `{{ $NAME }}`.
fn env_secrets(v: &Value, env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, env: &Env, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                for p in template::placeholders(s) {
                    if p.kind == template::Kind::Env {
                        let name = p.name.trim_start_matches('$');
                        if secret_env_name(name)
                            && let Some(val) = env
                                .get(name)
                                .filter(|v| v.len() >= hoist_policy::secrets::MIN_SECRET_LEN)
                        {
                            out.push(val.clone());
                        }
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, env, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, env, out)),
            _ => {}
        }
    }
    walk(v, env, &mut out);
    out
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
