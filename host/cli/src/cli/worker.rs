//! `hoist worker start`: a Prefect worker that claims flow runs from a work pool, runs
//! the deployment's pull steps in Hoist's sandbox (blocks and variables from the
//! server, logs shipped to the run), then starts the flow with `python -m
//! prefect.engine` and `PREFECT__FLOW_ENTRYPOINT`, so the engine does not run the pull
//! steps again (protocol: `prefect-worker-protocol.md` §2–§4).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::project::SandboxArgs;
use super::step::{TerminalSink, parse_duration, parse_size};
use crate::bindings::Level;
use crate::capability::log::{LogRecord, LogSink};
use crate::pipeline::{self, Loaded, PipelineRequest};
use crate::prefect::PrefectClient;
use crate::prefect::worker::Claim;
use crate::project::Action;
use crate::runner::{Reporter, StepReport};
use crate::runtime::{Capability, Grants, Runtime};
use crate::templater::Templater;

#[derive(Debug, Subcommand)]
pub(crate) enum WorkerCommand {
    /// Poll a work pool, claim its scheduled runs, run each deployment's pull steps in
    /// the sandbox and start the flow.
    Start(Box<WorkerArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum PoolType {
    /// A pool the Prefect UI knows as a process pool.
    Process,
    /// A pool of type `hoist`.
    Hoist,
}

#[derive(Clone, Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The work pool (created when missing).
    #[arg(short = 'p', long = "pool", value_name = "POOL")]
    pool: String,
    /// Only runs of these work queues (repeatable; default: all of the pool's).
    #[arg(short = 'q', long = "work-queue", value_name = "QUEUE")]
    queues: Vec<String>,
    /// The type a missing pool is created with.
    #[arg(long = "type", value_enum, default_value = "process")]
    pool_type: PoolType,
    /// Flow runs in flight at most (claimed runs run concurrently).
    #[arg(long, default_value_t = 8)]
    limit: usize,
    /// The worker's name (default: hoist-<host>-<pid>).
    #[arg(long)]
    name: Option<String>,
    /// Poll once, run what was claimed, and exit.
    #[arg(long)]
    run_once: bool,
    /// On SIGTERM or SIGINT: stop polling, let running flows finish this long, then
    /// cancel the rest.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    grace_period: f64,
    /// Seconds between polls (a run created on the server starts within about this).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    poll_interval: f64,
    /// The Python that runs flows (a venv with prefect and the flows' dependencies);
    /// default: the job variable `python`, else $HOIST_PYTHON, else python3.
    #[arg(long, value_name = "PATH")]
    python: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// Prints step logs as `hoist pull` does and keeps them to ship to the run's logs.
struct ShippingSink {
    terminal: TerminalSink,
    lines: Mutex<Vec<(u8, String, String)>>,
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
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).push((
            level,
            format!("{} | {}", r.step, r.message),
            hoist_policy::time::now_rfc3339(),
        ));
    }
}

/// Reports each pull step's start and end into the same shipped log.
struct ShippingReporter(Arc<ShippingSink>);

impl Reporter for ShippingReporter {
    fn started(
        &self,
        step: &crate::project::StepEntry,
        _: usize,
        _: usize,
        _: &crate::plan::Target,
    ) {
        self.0
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((
                20,
                format!("Executing deployment step: {}", step.short_name()),
                hoist_policy::time::now_rfc3339(),
            ));
    }
    fn finished(&self, step: &crate::project::StepEntry, _: usize, report: &StepReport) {
        let (level, text) = match &report.result {
            Ok(_) => (20, format!("{} finished", step.short_name())),
            Err(e) => (40, format!("{} failed: {}", step.short_name(), e.message)),
        };
        self.0
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((level, text, hoist_policy::time::now_rfc3339()));
    }
}

pub(crate) async fn worker(cmd: &WorkerCommand) -> anyhow::Result<()> {
    let WorkerCommand::Start(args) = cmd;
    let client = match PrefectClient::from_env(&crate::runtime::HostEnv::from_process()) {
        None => anyhow::bail!(
            "hoist worker works a Prefect server's pool: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        ),
        Some(c) => c?,
    };
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!("hoist-{host}-{}", std::process::id())
    });
    let pool_type = match args.pool_type {
        PoolType::Process => "process",
        PoolType::Hoist => "hoist",
    };
    client.ensure_pool(&args.pool, pool_type).await?;
    let runtime = args.sandbox.runtime()?;
    eprintln!(
        "worker `{name}` polling pool `{}` on {}",
        args.pool, client.url
    );
    let args = Arc::new((**args).clone());
    let inflight: InFlight = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = tokio::task::JoinSet::new();
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        client.heartbeat(&args.pool, &name).await?;
        watch_cancellations(&client, &inflight).await;
        let busy = inflight.lock().unwrap_or_else(|p| p.into_inner()).len();
        let free = args.limit.saturating_sub(busy);
        if free > 0 {
            let before = hoist_policy::time::rfc3339_in(Duration::from_secs(10));
            let runs = client
                .scheduled_runs(&args.pool, &args.queues, &before)
                .await?;
            for run in runs.into_iter().take(free) {
                let run_id = run["id"].as_str().unwrap_or("").to_string();
                inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(run_id.clone(), Flight::default());
                let (client, runtime, args, name, inflight) = (
                    client.clone(),
                    runtime.clone(),
                    args.clone(),
                    name.clone(),
                    inflight.clone(),
                );
                tasks.spawn(async move {
                    if let Err(e) = handle(&client, &runtime, &args, &name, &run, &inflight).await {
                        eprintln!("worker: run {run_id}: {e:#}");
                    }
                    inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&run_id);
                });
            }
        }
        if args.run_once {
            while tasks.join_next().await.is_some() {}
            return Ok(());
        }
        while tasks.try_join_next().is_some() {}
        let stop = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.poll_interval.max(0.1))) => false,
            _ = term.recv() => true,
            _ = interrupt.recv() => true,
        };
        if stop {
            return stop_gracefully(&args, &inflight, tasks).await;
        }
    }
}

/// No new runs; the running ones get `--grace-period` to finish, then are cancelled
/// (their process groups signalled; their tasks record CANCELLED).
async fn stop_gracefully(
    args: &WorkerArgs,
    inflight: &InFlight,
    mut tasks: tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let running = tasks.len();
    if running > 0 {
        eprintln!(
            "worker stopping: no new runs; {running} running may finish within {} s",
            args.grace_period
        );
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs_f64(args.grace_period.max(0.0));
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if tasks.is_empty() {
        return Ok(());
    }
    let pids: Vec<(String, Option<u32>)> = {
        let mut map = inflight.lock().unwrap_or_else(|p| p.into_inner());
        map.iter_mut()
            .map(|(id, f)| {
                f.cancelled = true;
                (id.clone(), f.pid)
            })
            .collect()
    };
    for (id, pid) in pids {
        eprintln!("run {id}: cancelling, the worker is stopping");
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    // Their tasks record CANCELLED once the processes are gone.
    let bound = tokio::time::Instant::now() + Duration::from_secs(15);
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = tokio::time::sleep_until(bound) => break,
        }
    }
    Ok(())
}

/// A run this worker is working on: its flow process, once started, and whether a
/// cancellation was acted on.
#[derive(Debug, Default)]
struct Flight {
    pid: Option<u32>,
    cancelled: bool,
}

type InFlight = Arc<Mutex<HashMap<String, Flight>>>;

/// Runs of ours that were asked to cancel (`CANCELLING`): their flow's process group
/// gets SIGKILL, and the run's task records CANCELLED. SIGKILL, not SIGTERM: on SIGTERM
/// the engine forces a CRASHED state first (§4.4), a spurious crash in the run's
/// history; the graceful path is the engine's control channel, not built yet.
async fn watch_cancellations(client: &PrefectClient, inflight: &InFlight) {
    let ids: Vec<String> = inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(_, f)| f.pid.is_some() && !f.cancelled)
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return;
    }
    let Ok(runs) = client.cancelling(&ids).await else {
        return;
    };
    for id in runs {
        let pid = {
            let mut map = inflight.lock().unwrap_or_else(|p| p.into_inner());
            let Some(f) = map.get_mut(&id) else { continue };
            f.cancelled = true;
            f.pid
        };
        let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
            continue;
        };
        eprintln!("run {id}: cancelling (SIGKILL to its process group)");
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// One scheduled run: check its deployment, claim it, run it.
async fn handle(
    client: &PrefectClient,
    runtime: &Arc<Runtime>,
    args: &WorkerArgs,
    worker: &str,
    run: &Value,
    inflight: &InFlight,
) -> anyhow::Result<()> {
    let run_id = run["id"].as_str().unwrap_or("").to_string();
    let Some(deployment_id) = run["deployment_id"].as_str() else {
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
    loop {
        match client.claim(&run_id).await? {
            Claim::Ours => break,
            Claim::Lost(why) => {
                eprintln!("run {run_id}: not ours ({why})");
                return Ok(());
            }
            Claim::Wait(s) => tokio::time::sleep(Duration::from_secs_f64(s.clamp(0.1, 60.0))).await,
        }
    }
    // Cancelled while it was being claimed: finish it, never start it.
    let current = client.flow_run(&run_id).await?;
    if current["state_type"] == "CANCELLING" {
        client
            .set_state(
                &run_id,
                "CANCELLED",
                "Cancelled",
                "Cancelled before it started.",
                true,
            )
            .await?;
        return Ok(());
    }
    eprintln!(
        "run {run_id} ({}) claimed by {worker}",
        run["name"].as_str().unwrap_or("")
    );
    let job = merged_job_variables(&deployment, run);
    let outcome = run_claimed(client, runtime, args, &run_id, &deployment, &job, inflight).await;
    let cancelled = inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&run_id)
        .is_some_and(|f| f.cancelled);
    if cancelled {
        client
            .set_state(
                &run_id,
                "CANCELLED",
                "Cancelled",
                "Flow run was cancelled successfully.",
                true,
            )
            .await?;
        eprintln!("run {run_id}: cancelled");
    } else if let Err(message) = outcome {
        client
            .set_state(&run_id, "CRASHED", "Crashed", &message, false)
            .await?;
        eprintln!("run {run_id}: {message}");
    }
    Ok(())
}

/// The pull steps' limits: the job variables `timeout` and `memory_limit` (as the
/// command line spells them) over the worker's own.
fn job_limits(
    job: &serde_json::Map<String, Value>,
    mut limits: crate::runtime::Limits,
) -> Result<crate::runtime::Limits, String> {
    if let Some(t) = job
        .get("timeout")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        limits.timeout = parse_duration(t).map_err(|e| format!("job variable `timeout`: {e}"))?;
    }
    if let Some(m) = job
        .get("memory_limit")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    {
        limits.memory = parse_size(m).map_err(|e| format!("job variable `memory_limit`: {e}"))?;
    }
    Ok(limits)
}

/// The deployment's job variables under the run's own.
fn merged_job_variables(deployment: &Value, run: &Value) -> serde_json::Map<String, Value> {
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

/// Pull steps, then the flow. `Err` is the CRASHED message.
async fn run_claimed(
    client: &PrefectClient,
    runtime: &Arc<Runtime>,
    args: &WorkerArgs,
    run_id: &str,
    deployment: &Value,
    job: &serde_json::Map<String, Value>,
    inflight: &InFlight,
) -> Result<(), String> {
    let scratch = tempfile::Builder::new()
        .prefix("hoist-run-")
        .tempdir()
        .map_err(|e| format!("Flow run could not start: no temporary directory: {e}"))?;
    let workspace = match job.get("working_dir").and_then(Value::as_str) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let w = scratch.path().join("workspace");
            std::fs::create_dir_all(&w).map_err(|e| format!("Flow run could not start: {e}"))?;
            w
        }
    };
    // The pull steps as a project file of their own, beside (not in) the workspace.
    let steps = deployment["pull_steps"].clone();
    let file = scratch.path().join("pull.yaml");
    let text = serde_yaml_ng::to_string(&json!({ "pull": steps }))
        .map_err(|e| format!("Flow run could not start: {e}"))?;
    std::fs::write(&file, text).map_err(|e| format!("Flow run could not start: {e}"))?;
    let sink = Arc::new(ShippingSink {
        terminal: TerminalSink::default(),
        lines: Mutex::new(Vec::new()),
    });
    let mut grants: Vec<Capability> = args.sandbox.allow.clone();
    for g in job
        .get("allow")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(c) = g.as_str().and_then(|s| s.parse().ok()) {
            grants.push(c);
        }
    }
    let final_dir = match Loaded::open(&file, None) {
        Err(e) => Err(format!("the deployment's pull steps cannot run: {e}")),
        Ok(loaded) => {
            let request = PipelineRequest {
                command: Action::Pull,
                runtime: runtime.clone(),
                // The worker's own client: blocks and variables come from its server.
                templater: Templater::new(
                    std::env::vars().collect(),
                    crate::templater::ProcessValues::Prefect(client.clone()),
                ),
                grants: Grants::new(grants),
                limits: job_limits(job, args.sandbox.limits())?,
                log: sink.clone(),
                reporter: Arc::new(ShippingReporter(sink.clone())),
                events: Some(crate::runner::Events {
                    resource: format!("prefect.flow-run.{run_id}"),
                    target: crate::runner::EventTarget::Prefect {
                        client: client.clone(),
                        deployment: deployment["id"].as_str().map(str::to_string),
                    },
                }),
                cwd: Some(workspace.clone()),
            };
            pipeline::run(&loaded, request)
                .await
                .map(|o| o.working_directory)
                .map_err(|e| {
                    let mut m = format!("a pull step failed: {e}");
                    // The project-file remedy does not apply to a deployment's steps.
                    if m.contains("which was not granted") {
                        m.push_str(
                            "; for a worker: add it to the deployment's job variable `allow` \
                             (work_pool.job_variables.allow), or start the worker with --allow",
                        );
                    }
                    m
                })
        }
    };
    let lines = std::mem::take(&mut *sink.lines.lock().unwrap_or_else(|p| p.into_inner()));
    if let Err(e) = client.ship_logs(run_id, "hoist.worker", &lines).await {
        eprintln!("warning: could not ship the pull steps' logs: {e}");
    }
    let final_dir = final_dir?;
    start_flow(client, args, run_id, deployment, job, &final_dir, inflight).await
}

/// `python -m prefect.engine` in the pull steps' final directory; CRASHED (the `Err`)
/// when it cannot start or exits non-zero without a final state.
async fn start_flow(
    client: &PrefectClient,
    args: &WorkerArgs,
    run_id: &str,
    deployment: &Value,
    job: &serde_json::Map<String, Value>,
    dir: &Path,
    inflight: &InFlight,
) -> Result<(), String> {
    let python = args
        .python
        .clone()
        .or_else(|| {
            job.get("python")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| std::env::var("HOIST_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let mut cmd = match job
        .get("command")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    {
        Some(c) => {
            let words = shlex::split(c).ok_or_else(|| {
                format!(
                    "Flow run could not start: job variable `command` is not a command line: {c}"
                )
            })?;
            let mut cmd = tokio::process::Command::new(&words[0]);
            cmd.args(&words[1..]);
            cmd
        }
        None => {
            let mut cmd = tokio::process::Command::new(&python);
            cmd.args(["-m", "prefect.engine"]);
            cmd
        }
    };
    let mut pythonpath = dir.display().to_string();
    if let Ok(p) = std::env::var("PYTHONPATH") {
        pythonpath = format!("{pythonpath}:{p}");
    }
    // Its own process group: a cancellation signals the flow and what it started.
    cmd.process_group(0);
    cmd.current_dir(dir)
        .env("PREFECT_API_URL", &client.url)
        .env("PREFECT__FLOW_RUN_ID", run_id)
        .env(
            "PREFECT__FLOW_ENTRYPOINT",
            deployment["entrypoint"].as_str().unwrap_or(""),
        )
        .env("PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS", "false")
        .env("PYTHONPATH", pythonpath);
    if let Some(id) = deployment["id"].as_str() {
        cmd.env("PREFECT__DEPLOYMENT_ID", id);
    }
    if let Some(Value::Object(env)) = job.get("env") {
        for (k, v) in env {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            cmd.env(k, v);
        }
    }
    if job.get("stream_output") == Some(&json!(false)) {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("Flow run could not start: {python}: {e}"))?;
    if let Some(pid) = child.id() {
        if let Some(f) = inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(run_id)
        {
            f.pid = Some(pid);
        }
        if let Err(e) = client.set_pid(run_id, pid).await {
            eprintln!("warning: could not record the flow's process id: {e}");
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("Flow run could not be waited for: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let code = status.code().map(|c| c.to_string()).unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        format!("-{}", status.signal().unwrap_or(0))
    });
    Err(format!(
        "Flow run infrastructure exited with non-zero status code {code}."
    ))
}
