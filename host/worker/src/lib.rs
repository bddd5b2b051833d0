//! The worker (`hoist worker start` is its command line): a Prefect worker that claims flow runs from a work pool, runs
//! the deployment's pull steps in Hoist's sandbox (blocks and variables from the
//! server, logs shipped to the run), then starts the flow with `python -m
//! prefect.engine` and `PREFECT__FLOW_ENTRYPOINT`, so the engine does not run the pull
//! steps again (protocol: `prefect-worker-protocol.md` §2–§4).
//!
//! The loop here polls, heartbeats, watches for cancellations and sweeps up runs of
//! dead workers ([`recover`]); [`run`] is one claimed run; [`flow`] its process.
//! The server going away (a restart) never stops the worker: it says so once and
//! carries on when the server is back; a run's final state waits for the server.

#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod flow;
mod recover;
mod run;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hoist_prefect::{PrefectClient, PrefectError};
use hoist_runtime::capability::log::LogSink;
use hoist_runtime::{Capability, Limits, Runtime};
use tokio::sync::Notify;
use tokio::task::JoinSet;

pub use recover::Identity;

/// How often the worker tells the server it is alive (the server marks it OFFLINE after
/// three missed; other workers then end the runs it held).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// The type a missing pool is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolType {
    /// A pool the Prefect UI knows as a process pool.
    Process,
    /// A pool of type `hoist`.
    Hoist,
}

/// How a worker works its pool (the `hoist worker start` flags, whose help says more).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The work pool (created when missing).
    pub pool: String,
    /// Only runs of these work queues (empty: all of the pool's).
    pub queues: Vec<String>,
    /// The type a missing pool is created with.
    pub pool_type: PoolType,
    /// Flow runs in flight at most.
    pub limit: usize,
    /// The worker's name (default: hoist-<host>-<pid>).
    pub name: Option<String>,
    /// Poll once, run what was claimed, and return.
    pub run_once: bool,
    /// Seconds running flows get to finish once the worker is told to stop.
    pub grace_period: f64,
    /// Seconds between polls while the events stream is down.
    pub poll_interval: f64,
    /// Seconds between polls while the events stream is open.
    pub idle_poll: f64,
    /// Poll only; never open the events stream.
    pub no_events: bool,
    /// The Python that runs flows (default: the job variable `python`, else
    /// `$HOIST_PYTHON`, else python3).
    pub python: Option<String>,
    /// Worker environment variables deployments' pull steps may template (`NAME*`: a
    /// prefix).
    pub template_env: Vec<String>,
    /// Honour a run's own job variable `allow`.
    pub allow_from_runs: bool,
    /// Capabilities granted to every pull step's installed plugins.
    pub allow: Vec<Capability>,
    /// A pull step's limits (the job variables `timeout` and `memory_limit` override).
    pub limits: Limits,
}

/// A run this worker is working on: its flow process, once started, whether a
/// cancellation was asked for, and how to tell its task.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    pid: Option<u32>,
    cancelled: bool,
    cancel: Arc<Notify>,
}

type InFlight = Arc<Mutex<HashMap<String, Flight>>>;

fn lock(inflight: &InFlight) -> MutexGuard<'_, HashMap<String, Flight>> {
    inflight.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ask a run's task to cancel it (once).
fn request_cancel(inflight: &InFlight, id: &str) -> bool {
    let mut map = lock(inflight);
    let Some(f) = map.get_mut(id).filter(|f| !f.cancelled) else {
        return false;
    };
    f.cancelled = true;
    f.cancel.notify_one();
    true
}

/// A call whose answer a run's end depends on: retried while the server cannot be
/// reached or answers 5xx (a restart), for up to ten minutes.
async fn persist<T, F, Fut>(mut call: F) -> Result<T, PrefectError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PrefectError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        match call().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return other,
        }
    }
}

fn transient(e: &PrefectError) -> bool {
    matches!(e, PrefectError::Unreachable { .. })
        || matches!(e, PrefectError::Api { status, .. } if *status >= 500)
}

/// Work the pool `config` names on the server `client` talks to, running pull steps in
/// `runtime` (their log also goes to `terminal`), until told to stop (SIGTERM, SIGINT)
/// or, with `run_once`, after one poll's runs.
pub async fn run(
    config: WorkerConfig,
    client: PrefectClient,
    runtime: Arc<Runtime>,
    terminal: Arc<dyn LogSink>,
) -> anyhow::Result<()> {
    let args = &config;
    let me = Arc::new(Identity::current(
        args.name.clone().unwrap_or_else(Identity::default_name),
    ));
    let pool_type = match args.pool_type {
        PoolType::Process => "process",
        PoolType::Hoist => "hoist",
    };
    let pool = client.ensure_pool(&args.pool, pool_type).await?;
    let cx = Arc::new(run::Context {
        runtime,
        client,
        args: Arc::new(config.clone()),
        me,
        inflight: Arc::new(Mutex::new(HashMap::new())),
        terminal,
    });
    eprintln!(
        "worker `{}` polling pool `{}` on {}",
        cx.me.name, cx.args.pool, cx.client.url
    );
    let events = Arc::new(Events::default());
    if !cx.args.run_once && !cx.args.no_events {
        let pool_id = pool["id"].as_str().unwrap_or_default().to_string();
        tokio::spawn(listen(cx.client.clone(), pool_id, events.clone()));
    }
    Loop::new(cx, events).run().await
}

/// What the events stream tells the loop: whether it is open, and a wake-up per event.
#[derive(Debug, Default)]
struct Events {
    open: AtomicBool,
    wake: Notify,
}

/// The flow-run events that mean "poll now": a run to claim or one to cancel.
const WAKING_EVENTS: &[&str] = &[
    "prefect.flow-run.Scheduled",
    "prefect.flow-run.AwaitingRetry",
    "prefect.flow-run.AwaitingConcurrencySlot",
    "prefect.flow-run.Cancelling",
];

/// Keep the pool's events stream open (reopened after 1 s, backing off to 30 s while
/// it fails); each event wakes the loop. While it is closed the loop polls every
/// `--poll-interval`; a reopened stream also wakes it, to catch up on what it missed.
async fn listen(client: PrefectClient, pool_id: String, events: Arc<Events>) {
    let mut pause = Duration::from_secs(1);
    let mut said_down = false;
    loop {
        let filter = hoist_prefect::events::pool_filter(&pool_id, WAKING_EVENTS);
        match client.subscribe(filter).await {
            Ok(mut stream) => {
                events.open.store(true, Ordering::SeqCst);
                events.wake.notify_one();
                if said_down {
                    eprintln!("worker: the events stream is open again");
                } else {
                    eprintln!("worker: listening to the pool's events");
                }
                said_down = false;
                pause = Duration::from_secs(1);
                while let Ok(Some(_)) = stream.next().await {
                    events.wake.notify_one();
                }
                events.open.store(false, Ordering::SeqCst);
            }
            Err(e) => {
                if !said_down {
                    eprintln!("worker: no events stream ({e}); polling instead");
                    said_down = true;
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// The worker's loop and what it keeps between turns.
struct Loop {
    cx: Arc<run::Context>,
    events: Arc<Events>,
    tasks: JoinSet<()>,
    last_heartbeat: Option<tokio::time::Instant>,
    last_poll: Option<tokio::time::Instant>,
    last_sweep: Option<tokio::time::Instant>,
    /// Turns in a row the server could not be reached.
    failing: u32,
}

impl Loop {
    fn new(cx: Arc<run::Context>, events: Arc<Events>) -> Self {
        Loop {
            cx,
            events,
            tasks: JoinSet::new(),
            last_heartbeat: None,
            last_poll: None,
            last_sweep: None,
            failing: 0,
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut woken = true;
        loop {
            match self.turn(woken).await {
                Ok(()) if self.failing > 0 => {
                    eprintln!("worker: the Prefect server answers again");
                    self.failing = 0;
                }
                Ok(()) => {}
                Err(e) if transient(&e) && !self.cx.args.run_once => {
                    if self.failing == 0 {
                        eprintln!("worker: {e}; retrying until it answers");
                    }
                    self.failing += 1;
                }
                Err(e) => {
                    // Not a passing outage (refused credentials, a deleted pool): no
                    // new runs; the running ones end as on SIGTERM.
                    eprintln!("worker: {e}; stopping");
                    self.stop_gracefully().await?;
                    return Err(e.into());
                }
            }
            if self.cx.args.run_once {
                while self.tasks.join_next().await.is_some() {}
                return Ok(());
            }
            while self.tasks.try_join_next().is_some() {}
            let pause = self.pause();
            tokio::select! {
                () = tokio::time::sleep(pause) => woken = false,
                () = self.events.wake.notified() => woken = true,
                _ = term.recv() => return self.stop_gracefully().await,
                _ = interrupt.recv() => return self.stop_gracefully().await,
            }
        }
    }

    /// Seconds between polls now: `--idle-poll` while the events stream is open and the
    /// server answers, else `--poll-interval` (longer while the server is failing).
    fn poll_every(&self) -> Duration {
        let args = &self.cx.args;
        let every = if self.events.open.load(Ordering::SeqCst) && self.failing == 0 {
            args.idle_poll
        } else {
            args.poll_interval * f64::from(self.failing.min(5) + 1)
        };
        Duration::from_secs_f64(every.max(0.1))
    }

    /// How long to wait for an event: until the next poll, heartbeat or sweep is due.
    fn pause(&self) -> Duration {
        let now = tokio::time::Instant::now();
        let until = |last: Option<tokio::time::Instant>, every: Duration| {
            last.map_or(Duration::ZERO, |t| {
                (t + every).saturating_duration_since(now)
            })
        };
        until(self.last_poll, self.poll_every())
            .min(until(self.last_heartbeat, HEARTBEAT_EVERY))
            .min(until(self.last_sweep, recover::SWEEP_EVERY))
    }

    /// Heartbeat and sweep when due; when woken by an event or a poll is due, act on
    /// cancellations and claim what fits.
    async fn turn(&mut self, woken: bool) -> Result<(), PrefectError> {
        let cx = self.cx.clone();
        let now = tokio::time::Instant::now();
        if self
            .last_heartbeat
            .is_none_or(|t| now - t >= HEARTBEAT_EVERY)
        {
            cx.client
                .heartbeat(&cx.args.pool, &cx.me.name, HEARTBEAT_EVERY.as_secs())
                .await?;
            self.last_heartbeat = Some(now);
        }
        if self
            .last_sweep
            .is_none_or(|t| now - t >= recover::SWEEP_EVERY)
        {
            recover::sweep(&cx.client, &cx.args.pool, &cx.me, &cx.inflight).await?;
            self.last_sweep = Some(now);
        }
        if !woken && self.last_poll.is_some_and(|t| now - t < self.poll_every()) {
            return Ok(());
        }
        self.watch_cancellations().await?;
        self.last_poll = Some(now);
        self.claim().await
    }

    /// Claim the scheduled runs that fit under `--limit`; each runs on a task.
    async fn claim(&mut self) -> Result<(), PrefectError> {
        let cx = self.cx.clone();
        let free = cx.args.limit.saturating_sub(lock(&cx.inflight).len());
        if free == 0 {
            return Ok(());
        }
        let before = hoist_policy::time::rfc3339_in(Duration::from_secs(10));
        let runs = cx
            .client
            .scheduled_runs(&cx.args.pool, &cx.args.queues, &before)
            .await?;
        for run in runs.into_iter().take(free) {
            let Some(id) = server_id(&run["id"]) else {
                eprintln!(
                    "warning: the server listed a run whose id is not one: {}",
                    hoist_policy::text::sanitize(&run["id"].to_string())
                );
                continue;
            };
            let id = id.to_string();
            {
                let mut map = lock(&cx.inflight);
                if map.contains_key(&id) {
                    continue;
                }
                map.insert(id.clone(), Flight::default());
            }
            let cx = cx.clone();
            let events = self.events.clone();
            self.tasks.spawn(async move {
                if let Err(e) = run::handle(&cx, &run).await {
                    eprintln!("worker: run {id}: {e:#}");
                }
                lock(&cx.inflight).remove(&id);
                // A free slot: claim the next run now, not at the next idle poll.
                events.wake.notify_one();
            });
        }
        Ok(())
    }

    /// Runs of ours that were asked to cancel (`CANCELLING`, §4.3's polling): their
    /// tasks cancel them ([`flow`] says how).
    async fn watch_cancellations(&self) -> Result<(), PrefectError> {
        let ids: Vec<String> = lock(&self.cx.inflight)
            .iter()
            .filter(|(_, f)| !f.cancelled)
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        for id in self.cx.client.cancelling(&ids).await? {
            if request_cancel(&self.cx.inflight, &id) {
                eprintln!("run {id}: cancelling");
            }
        }
        Ok(())
    }

    /// No new runs; the running ones get `--grace-period` to finish, then are cancelled
    /// (each task cancels its flow and records the state).
    async fn stop_gracefully(mut self) -> anyhow::Result<()> {
        let running = self.tasks.len();
        let grace = Duration::from_secs_f64(self.cx.args.grace_period.max(0.0));
        if running > 0 {
            eprintln!(
                "worker stopping: no new runs; {running} running may finish within {} s",
                grace.as_secs_f64()
            );
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = self.tasks.join_next() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.tasks.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = lock(&self.cx.inflight).keys().cloned().collect();
        for id in ids {
            if request_cancel(&self.cx.inflight, &id) {
                eprintln!("run {id}: cancelling, the worker is stopping");
            }
        }
        // Their tasks record the state once the processes are gone.
        let bound = tokio::time::Instant::now() + flow::KILL_AFTER + Duration::from_secs(15);
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = self.tasks.join_next() => {}
                () = tokio::time::sleep_until(bound) => break,
            }
        }
        Ok(())
    }
}

/// An id the server sent, if it is one (a UUID's hex digits and dashes): ids go into
/// request paths and messages, so anything else (`../`, escape sequences) is refused.
pub(crate) fn server_id(v: &serde_json::Value) -> Option<&str> {
    let id = v.as_str()?;
    (!id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
        .then_some(id)
}
