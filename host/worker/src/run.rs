//! One claimed flow run: its deployment's pull steps in the sandbox (blocks and
//! variables from the server, their log shipped to the run's logs), then the flow's
//! process, then the state Prefect's rules ask of a worker (§4.1).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Identity, InFlight, WorkerConfig, flow, lock, persist};
use hoist_policy::units::{parse_duration, parse_size};
use hoist_prefect::PrefectClient;
use hoist_prefect::worker::Claim;
use hoist_project::Action;
use hoist_runner::pipeline::{self, Loaded, PipelineError, PipelineRequest};
use hoist_runner::runner::{Reporter, RunError, StepReport};
use hoist_runner::templater::Templater;
use hoist_runtime::bindings::Level;
use hoist_runtime::capability::log::{LogRecord, LogSink};
use hoist_runtime::{Capability, Grants, Runtime};

/// What a run needs from its worker.
pub(super) struct Context {
    pub client: PrefectClient,
    pub runtime: Arc<Runtime>,
    pub args: Arc<WorkerConfig>,
    pub me: Arc<Identity>,
    pub inflight: InFlight,
    /// Where the pull steps' log also goes (the worker's terminal).
    pub terminal: Arc<dyn LogSink>,
}

/// Prints step logs as `hoist pull` does and keeps them to ship to the run's logs.
struct ShippingSink {
    terminal: Arc<dyn LogSink>,
    lines: Mutex<Vec<(u8, String, String)>>,
}

impl ShippingSink {
    fn push(&self, level: u8, text: String) {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).push((
            level,
            text,
            hoist_policy::time::now_rfc3339(),
        ));
    }
}

impl LogSink for ShippingSink {
    fn record(&self, r: &LogRecord<'_>) {
        self.terminal.record(r);
        let level = match r.level {
            Level::Trace | Level::Debug => 10,
            Level::Info => 20,
            Level::Warn => 30,
            Level::Error => 40,
        };
        self.push(level, format!("{} | {}", r.step, r.message));
    }
}

/// Reports each pull step's start and end into the same shipped log.
struct ShippingReporter(Arc<ShippingSink>);

impl Reporter for ShippingReporter {
    fn started(
        &self,
        step: &hoist_project::StepEntry,
        _: usize,
        _: usize,
        _: &hoist_runner::plan::Target,
    ) {
        self.0.push(
            20,
            format!("Executing deployment step: {}", step.short_name()),
        );
    }
    fn finished(&self, step: &hoist_project::StepEntry, _: usize, report: &StepReport) {
        match &report.result {
            Ok(_) => self.0.push(20, format!("{} finished", step.short_name())),
            Err(e) => self
                .0
                .push(40, format!("{} failed: {}", step.short_name(), e.message)),
        }
    }
}

/// One scheduled run: check its deployment, claim it, run it, record how it ended.
pub(super) async fn handle(cx: &Context, run: &Value) -> anyhow::Result<()> {
    let client = &cx.client;
    let Some(run_id) = super::server_id(&run["id"]).map(str::to_string) else {
        return Ok(());
    };
    let Some(deployment_id) = super::server_id(&run["deployment_id"]) else {
        return Ok(());
    };
    let Some(deployment) = client.deployment(deployment_id).await? else {
        client
            .set_state(
                &run_id,
                "CANCELLED",
                "Cancelled",
                &format!("Deployment {deployment_id} no longer exists, cancelled run."),
                true,
            )
            .await?;
        return Ok(());
    };
    let Some(lease) = claim(client, &run_id).await? else {
        return Ok(());
    };
    // Renewed from the claim until the flow's process starts (the engine takes the lease
    // over at RUNNING; the last renewal gave it 300 s), stopped whichever way this goes.
    let keeper =
        lease.map(|l| AbortOnDrop(tokio::spawn(keep_lease(client.clone(), run_id.clone(), l))));
    // Labelled at once: a worker that finds the run later, its owner gone, ends it. So
    // the label is persisted through a busy or restarting server like a final state.
    let labels = cx.me.labels(&cx.args.pool);
    if let Err(e) = persist(|| client.set_labels(&run_id, &labels)).await {
        eprintln!("warning: run {run_id}: could not label it with this worker: {e}");
    }
    if cancel_requested(cx, &run_id).await? {
        drop(keeper);
        return finish_cancelled(client, &run_id, "Cancelled before it started.").await;
    }
    eprintln!(
        "run {run_id} ({}) claimed by {}",
        hoist_policy::text::sanitize(run["name"].as_str().unwrap_or("")),
        cx.me.name
    );
    let job = merged_job_variables(&deployment, run);
    let outcome = match grants_beyond_deployment(&cx.args, &deployment, run) {
        Some(message) => Outcome::Crashed(message),
        None => run_claimed(cx, &run_id, &deployment, &job, keeper).await,
    };
    record(cx, &run_id, outcome).await
}

/// Propose PENDING until the server answers; the claim's concurrency lease, or `None`
/// when another worker has the run.
async fn claim(client: &PrefectClient, run_id: &str) -> anyhow::Result<Option<Option<String>>> {
    loop {
        match client.claim(run_id).await? {
            Claim::Ours { lease } => return Ok(Some(lease)),
            Claim::Lost(why) => {
                eprintln!("run {run_id}: not ours ({why})");
                return Ok(None);
            }
            Claim::Wait(s) => tokio::time::sleep(Duration::from_secs_f64(s.clamp(0.1, 60.0))).await,
        }
    }
}

/// Asked to cancel, by the server's state or the worker (which is stopping).
async fn cancel_requested(cx: &Context, run_id: &str) -> anyhow::Result<bool> {
    if lock(&cx.inflight).get(run_id).is_some_and(|f| f.cancelled) {
        return Ok(true);
    }
    let current = cx.client.flow_run(run_id).await?;
    Ok(current["state_type"] == "CANCELLING")
}

/// How the run went, as the state the worker must set (§4.1): nothing when the engine
/// recorded the end itself.
enum Outcome {
    /// The flow's process ended on its own with status 0 (the engine set the state).
    Done,
    /// Cancelled; `graceful` when the engine recorded CANCELLED itself.
    Cancelled { graceful: bool },
    /// CRASHED with this message.
    Crashed(String),
}

async fn record(cx: &Context, run_id: &str, outcome: Outcome) -> anyhow::Result<()> {
    let client = &cx.client;
    match outcome {
        Outcome::Done => {}
        Outcome::Cancelled { graceful } => {
            let state = persist(|| client.flow_run(run_id)).await?;
            if !(graceful && state["state_type"] == "CANCELLED") {
                finish_cancelled(client, run_id, "Flow run was cancelled successfully.").await?;
            }
            eprintln!("run {run_id}: cancelled");
        }
        Outcome::Crashed(message) => {
            persist(|| client.set_state(run_id, "CRASHED", "Crashed", &message, false)).await?;
            eprintln!("run {run_id}: {message}");
        }
    }
    Ok(())
}

async fn finish_cancelled(client: &PrefectClient, run_id: &str, why: &str) -> anyhow::Result<()> {
    persist(|| client.set_state(run_id, "CANCELLED", "Cancelled", why, true)).await?;
    Ok(())
}

/// Keeps a deployment-concurrency lease alive while the pull steps run (the engine
/// renews it itself once the flow is RUNNING); stops when the server no longer has it
/// or the task is aborted.
/// The first renewal is at once: the server's first lease may be short (30 s) and a
/// loaded machine slow to answer. Each renewal asks for 300 s, as Prefect's engine does,
/// and they come every 10 s, so a server or machine stalled for minutes still keeps the
/// slot.
async fn keep_lease(client: PrefectClient, run_id: String, lease: String) {
    loop {
        // One slow answer (the client retries for minutes) must not hold up the next.
        let renewed =
            tokio::time::timeout(Duration::from_secs(20), client.renew_lease(&lease, 300)).await;
        let problem = match renewed {
            Ok(Ok(true)) => None,
            Ok(Ok(false)) => {
                eprintln!(
                    "warning: run {run_id}: the server no longer has its concurrency lease \
                     {lease} (expired or revoked): the run may be cancelled when it starts"
                );
                return;
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 20 s".into()),
        };
        if let Some(why) = problem {
            eprintln!("warning: run {run_id}: could not renew concurrency lease {lease}: {why}");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pull steps' limits: the job variables `timeout` and `memory_limit` (as the
/// command line spells them) over the worker's own.
fn job_limits(
    job: &Map<String, Value>,
    mut limits: hoist_runtime::Limits,
) -> Result<hoist_runtime::Limits, String> {
    let text = |k: &str| job.get(k).and_then(Value::as_str).filter(|t| !t.is_empty());
    if let Some(t) = text("timeout") {
        limits.timeout = parse_duration(t).map_err(|e| format!("job variable `timeout`: {e}"))?;
    }
    if let Some(m) = text("memory_limit") {
        limits.memory = parse_size(m).map_err(|e| format!("job variable `memory_limit`: {e}"))?;
    }
    Ok(limits)
}

/// The deployment's job variables under the run's own.
fn merged_job_variables(deployment: &Value, run: &Value) -> Map<String, Value> {
    let mut job = deployment["job_variables"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(r) = run["job_variables"].as_object() {
        for (k, v) in r {
            job.insert(k.clone(), v.clone());
        }
    }
    job
}

/// Pull steps, then the flow.
async fn run_claimed(
    cx: &Context,
    run_id: &str,
    deployment: &Value,
    job: &Map<String, Value>,
    keeper: Option<AbortOnDrop>,
) -> Outcome {
    let scratch = match tempfile::Builder::new().prefix("hoist-run-").tempdir() {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Crashed(format!(
                "Flow run could not start: no temporary directory: {e}"
            ));
        }
    };
    let pulled = pull(cx, run_id, deployment, job, scratch.path()).await;
    let started = match pulled {
        Err(message) => Err(message),
        Ok(_) if cancel_requested(cx, run_id).await.unwrap_or(false) => {
            return Outcome::Cancelled { graceful: false };
        }
        Ok(dir) => flow::command(&cx.args, &cx.client.url, run_id, deployment, job, &dir),
    };
    let cmd = match started {
        Ok(cmd) => cmd,
        Err(message) => return Outcome::Crashed(message),
    };
    let cancel = lock(&cx.inflight)
        .get(run_id)
        .map(|f| f.cancel.clone())
        .unwrap_or_default();
    drop(keeper);
    let ended = flow::supervise(cmd, &cx.client, run_id, &cx.inflight, cancel).await;
    let cancelled = lock(&cx.inflight).get(run_id).is_some_and(|f| f.cancelled);
    match ended {
        Err(message) => Outcome::Crashed(message),
        Ok(e) if cancelled => Outcome::Cancelled {
            graceful: e.graceful,
        },
        Ok(e) if e.status.success() => Outcome::Done,
        Ok(e) => Outcome::Crashed(flow::crash_message(e.status)),
    }
}

/// The deployment's pull steps, from a generated project file beside (not in) the
/// workspace; the directory the flow runs in, or the CRASHED message.
async fn pull(
    cx: &Context,
    run_id: &str,
    deployment: &Value,
    job: &Map<String, Value>,
    scratch: &std::path::Path,
) -> Result<PathBuf, String> {
    let could_not = |e: &dyn std::fmt::Display| format!("Flow run could not start: {e}");
    let workspace = match job.get("working_dir").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let w = scratch.join("workspace");
            std::fs::create_dir_all(&w).map_err(|e| could_not(&e))?;
            w
        }
    };
    if let Some(name) = plugin_file_step(deployment) {
        return Err(format!(
            "Flow run could not start: pull step `{name}` names a plugin file, which is on the \
             machine that deployed it: install the plugin on the worker's machine \
             ($HOIST_HOME/plugins/<name>.wasm) and name it by <name> in the deployment"
        ));
    }
    // Named like a project file beside the workspace (its directory is the project's);
    // nothing is written: the steps are checked as they came.
    let file = scratch.join("pull.yaml");
    let steps = json!({ "pull": deployment["pull_steps"] });
    let sink = Arc::new(ShippingSink {
        terminal: cx.terminal.clone(),
        lines: Mutex::new(Vec::new()),
    });
    let result = match Loaded::from_value(&file, steps) {
        Err(e) => Err(format!("the deployment's pull steps cannot run: {e}")),
        // A step's `requires: NS/NAME@REQ` is installed first (from HOIST_REGISTRY).
        Ok(loaded) => match hoist_packages::ensure(&loaded, &[Action::Pull], None).await {
            Err(e) => Err(format!("Flow run could not start: {e:#}")),
            Ok(()) => {
                let request = PipelineRequest {
                    command: Action::Pull,
                    runtime: cx.runtime.clone(),
                    // The worker's own client: blocks and variables come from its server.
                    templater: Templater::new(
                        template_env(&cx.args, std::env::vars(), job),
                        cx.client.clone(),
                    ),
                    grants: Grants::new(grants(&cx.args, job)),
                    limits: job_limits(job, cx.args.limits)?,
                    log: sink.clone(),
                    reporter: Arc::new(ShippingReporter(sink.clone())),
                    events: Some(hoist_runner::runner::Events {
                        resource: format!("prefect.flow-run.{run_id}"),
                        target: Arc::new(hoist_prefect::worker::PrefectEvents {
                            client: cx.client.clone(),
                            deployment: deployment["id"].as_str().map(str::to_string),
                        }),
                    }),
                    cwd: Some(workspace),
                };
                pipeline::run(&loaded, request)
                    .await
                    .map(|o| o.working_directory)
                    .map_err(|e| pull_failure(&e))
            }
        },
    };
    let lines = std::mem::take(&mut *sink.lines.lock().unwrap_or_else(|p| p.into_inner()));
    if let Err(e) = cx.client.ship_logs(run_id, "hoist.worker", &lines).await {
        eprintln!("warning: run {run_id}: could not ship the pull steps' logs: {e}");
    }
    result
}

/// The first pull step that names a plugin file (`./plugins/x.wasm`).
fn plugin_file_step(deployment: &Value) -> Option<String> {
    let steps = deployment["pull_steps"].as_array()?;
    steps
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|step| step.keys())
        .find(|name| hoist_project::is_plugin_path(name))
        .cloned()
}

/// Why the run may not start, when its own job variable `allow` grants more than its
/// deployment's and the worker does not take grants from runs (`--allow-from-runs`):
/// whoever may create a run could otherwise grant its pull steps anything.
fn grants_beyond_deployment(
    args: &WorkerConfig,
    deployment: &Value,
    run: &Value,
) -> Option<String> {
    if args.allow_from_runs {
        return None;
    }
    let listed = |v: &Value| -> Vec<String> {
        v["allow"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g.as_str().map_or_else(|| g.to_string(), str::to_string))
            .collect()
    };
    let granted = listed(&deployment["job_variables"]);
    let beyond: Vec<String> = listed(&run["job_variables"])
        .into_iter()
        .filter(|g| !granted.contains(g))
        .map(|g| format!("\"{}\"", hoist_policy::text::sanitize(&g)))
        .collect();
    (!beyond.is_empty()).then(|| {
        format!(
            "Flow run could not start: its job variable `allow` grants {} beyond its \
             deployment's; this worker takes grants only from the deployment (add them to \
             the deployment's job variables, or start the worker with --allow-from-runs to \
             let whoever creates runs grant capabilities)",
            beyond.join(", ")
        )
    })
}

/// What pull steps template as `{{ $NAME }}`: the worker's variables its operator
/// listed (`--template-env`), under the job variable `env` (Prefect templates pull steps
/// in the flow's process, whose environment is the worker's plus the job's `env`).
fn template_env(
    args: &WorkerConfig,
    worker: impl Iterator<Item = (String, String)>,
    job: &Map<String, Value>,
) -> std::collections::BTreeMap<String, String> {
    let listed = |name: &str| {
        args.template_env.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    };
    let mut env: std::collections::BTreeMap<String, String> =
        worker.filter(|(k, _)| listed(k)).collect();
    if let Some(Value::Object(vars)) = job.get("env") {
        for (k, v) in vars {
            match v {
                Value::String(s) => env.insert(k.clone(), s.clone()),
                Value::Null => env.remove(k),
                other => env.insert(k.clone(), other.to_string()),
            };
        }
    }
    env
}

/// The worker's grants (`--allow`) and the job variable `allow`.
fn grants(args: &WorkerConfig, job: &Map<String, Value>) -> Vec<Capability> {
    let mut grants: Vec<Capability> = args.allow.clone();
    let job_grants = job.get("allow").and_then(Value::as_array);
    for g in job_grants.into_iter().flatten() {
        if let Some(c) = g.as_str().and_then(|s| s.parse().ok()) {
            grants.push(c);
        }
    }
    grants
}

/// A failed pull as the CRASHED message, with the worker's remedies for a capability
/// that was not granted (the project-file remedy does not apply to a deployment).
fn pull_failure(e: &PipelineError) -> String {
    let mut m = format!("a pull step failed: {e}");
    if let PipelineError::Run(RunError::Resolve(problems)) = e {
        let caps: Vec<String> = problems
            .iter()
            .filter_map(|p| p.ungranted.as_ref().map(|c| format!("\"{c}\"")))
            .collect();
        if !caps.is_empty() {
            m.push_str(&format!(
                "; for a worker: add it to the deployment's job variable `allow` \
                 (work_pool: {{job_variables: {{allow: [{}]}}}}), or start the worker with --allow",
                caps.join(", ")
            ));
        }
    }
    m
}
