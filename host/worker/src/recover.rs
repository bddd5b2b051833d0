//! Runs left behind by a worker that died without finishing them (SIGKILL, OOM, a lost
//! machine). Each claim labels its run with the worker that holds it (`hoist.worker.*`:
//! name, host, process id and the process's start time). Every worker sweeps its pool
//! when it starts and then every [`SWEEP_EVERY`]: a PENDING or RUNNING run whose holder
//! is gone ends CRASHED, after what is left of its processes on this machine is killed.
//! "Gone" is decided on the holder's machine by its process (the same id *and* start
//! time: a reused id is not mistaken for it), elsewhere by the server's view of the
//! holder's heartbeats (OFFLINE after three missed, [`super::HEARTBEAT_EVERY`] each).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{InFlight, lock};
use hoist_prefect::{PrefectClient, PrefectError};

/// How often a worker looks for runs whose worker is gone.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Who holds a run: this worker's name, machine and process.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    host: String,
    pid: u32,
    /// The process's start time (clock ticks after boot, `/proc/<pid>/stat` field 22).
    started: u64,
}

impl Identity {
    /// This process, working as `name`.
    pub(super) fn current(name: String) -> Self {
        let pid = std::process::id();
        Identity {
            name,
            host: hostname(),
            pid,
            started: start_time(pid).unwrap_or(0),
        }
    }

    /// The default worker name: `hoist-<host>-<pid>`.
    pub(super) fn default_name() -> String {
        format!("hoist-{}-{}", hostname(), std::process::id())
    }

    /// The labels a claimed run carries (Prefect's own worker labels, and Hoist's).
    pub(super) fn labels(&self, pool: &str) -> Value {
        json!({
            "prefect.worker.name": self.name,
            "prefect.worker.type": "hoist",
            "prefect.work-pool.name": pool,
            "hoist.worker.name": self.name,
            "hoist.worker.host": self.host,
            "hoist.worker.pid": self.pid.to_string(),
            "hoist.worker.started": self.started.to_string(),
        })
    }

    fn holds(&self, labels: &Value) -> bool {
        labels["hoist.worker.host"] == self.host.as_str()
            && labels["hoist.worker.pid"] == self.pid.to_string().as_str()
            && labels["hoist.worker.started"] == self.started.to_string().as_str()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// A process's start time, `None` when there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold any byte.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// End the pool's runs whose worker is gone; how many were ended.
pub(super) async fn sweep(
    client: &PrefectClient,
    pool: &str,
    me: &Identity,
    inflight: &InFlight,
) -> Result<usize, PrefectError> {
    let runs = client.active_runs(pool).await?;
    let mut statuses: Option<HashMap<String, String>> = None;
    let mut ended = 0;
    for run in runs {
        let Some(id) = super::server_id(&run["id"]).map(str::to_string) else {
            continue;
        };
        let labels = &run["labels"];
        let Some(holder) = labels["hoist.worker.name"].as_str() else {
            continue;
        };
        if me.holds(labels) || lock(inflight).contains_key(&id) {
            continue;
        }
        let here = labels["hoist.worker.host"] == me.host.as_str();
        let gone = if here {
            let pid = labels["hoist.worker.pid"]
                .as_str()
                .and_then(|p| p.parse().ok());
            let started = labels["hoist.worker.started"]
                .as_str()
                .and_then(|s| s.parse().ok());
            pid.is_none() || pid.and_then(start_time) != started
        } else {
            if statuses.is_none() {
                statuses = Some(client.worker_statuses(pool).await?);
            }
            let status = statuses.as_ref().and_then(|s| s.get(holder));
            status.is_none_or(|s| s == "OFFLINE")
        };
        if !gone {
            continue;
        }
        let killed = if here { kill_leftovers(&id) } else { 0 };
        let message = format!(
            "The worker `{holder}` that held this flow run stopped without finishing it \
             (found by worker `{}`{}).",
            me.name,
            if killed > 0 {
                format!("; {killed} process(es) it left were killed")
            } else {
                String::new()
            }
        );
        let status = client
            .set_state(&id, "CRASHED", "Crashed", &message, false)
            .await?;
        if status == "ACCEPT" {
            eprintln!(
                "run {id}: its worker `{}` is gone; CRASHED",
                hoist_policy::text::sanitize(holder)
            );
            ended += 1;
        }
    }
    Ok(ended)
}

/// Kill this machine's processes that run `run_id`'s flow (they carry
/// `PREFECT__FLOW_RUN_ID` in their environment: the engine and what it started).
fn kill_leftovers(run_id: &str) -> usize {
    let needle = format!("PREFECT__FLOW_RUN_ID={run_id}\0");
    let mut killed = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let found = env.windows(needle.len()).any(|w| w == needle.as_bytes());
        if let Some(pid) = rustix::process::Pid::from_raw(pid).filter(|_| found)
            && rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}
