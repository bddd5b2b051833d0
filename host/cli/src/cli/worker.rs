//! `hoist worker start`: the command line of the worker (crate `hoist-worker`), which
//! claims a pool's flow runs, runs their pull steps in the sandbox and starts the flows.

use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use hoist_worker::WorkerConfig;

use super::project::SandboxArgs;
use super::step::TerminalSink;
use crate::prefect::PrefectClient;

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
    /// Seconds between polls while the server's events stream is down (a run created
    /// on the server starts within about this).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    poll_interval: f64,
    /// Seconds between polls while the events stream is open: its events wake the
    /// worker at once, this poll only catches what no event announced (runs that
    /// became due later).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    idle_poll: f64,
    /// Do not open the server's events stream (`/api/events/out`, a websocket): poll
    /// every `--poll-interval` instead (for a proxy that cannot carry websockets).
    #[arg(long)]
    no_events: bool,
    /// The Python that runs flows (a venv with prefect and the flows' dependencies);
    /// default: the job variable `python`, else $HOIST_PYTHON, else python3.
    #[arg(long, value_name = "PATH")]
    python: Option<String>,
    /// A variable of the worker's own environment that deployments' pull steps may
    /// template as `{{ $NAME }}` (repeatable; `NAME*` for every name with that prefix).
    /// Default: none. Pull steps always see the job variable `env`, as the flow's
    /// process does; what they template can reach logs on the server, so list only
    /// what every deployment on this pool may read.
    #[arg(long = "template-env", value_name = "NAME")]
    template_env: Vec<String>,
    /// Honour a flow run's own job variable `allow` (whoever may create runs then
    /// grants capabilities to the pull steps). Default: `allow` counts only from the
    /// deployment; a run asking for more is CRASHED, saying so.
    #[arg(long)]
    allow_from_runs: bool,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

impl WorkerArgs {
    /// The worker's configuration from these flags.
    fn config(&self) -> WorkerConfig {
        WorkerConfig {
            pool: self.pool.clone(),
            queues: self.queues.clone(),
            pool_type: match self.pool_type {
                PoolType::Process => hoist_worker::PoolType::Process,
                PoolType::Hoist => hoist_worker::PoolType::Hoist,
            },
            limit: self.limit,
            name: self.name.clone(),
            run_once: self.run_once,
            grace_period: self.grace_period,
            poll_interval: self.poll_interval,
            idle_poll: self.idle_poll,
            no_events: self.no_events,
            python: self.python.clone(),
            template_env: self.template_env.clone(),
            allow_from_runs: self.allow_from_runs,
            allow: self.sandbox.allow.clone(),
            limits: self.sandbox.limits(),
        }
    }
}

/// `hoist worker start`.
pub(crate) async fn worker(cmd: &WorkerCommand) -> anyhow::Result<()> {
    let WorkerCommand::Start(args) = cmd;
    let client = match PrefectClient::from_env(&crate::runtime::HostEnv::from_process()) {
        None => anyhow::bail!(
            "hoist worker works a Prefect server's pool: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)"
        ),
        Some(c) => c?,
    };
    let runtime = args.sandbox.runtime()?;
    hoist_worker::run(
        args.config(),
        client,
        runtime,
        Arc::new(TerminalSink::default()),
    )
    .await
}
