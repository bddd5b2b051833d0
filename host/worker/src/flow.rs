//! The flow's process: `python -m prefect.engine` (or the job's `command`) in the pull
//! steps' final directory, in a process group of its own that dies with the worker
//! (a parent-death signal, so a SIGKILLed worker leaves no flow running unsupervised).
//!
//! Cancellation (`prefect-worker-protocol.md` §4.4): the worker listens on a loopback
//! port of its own for Prefect's control channel (`PREFECT__CONTROL_PORT`,
//! `PREFECT__CONTROL_TOKEN`); once the engine has connected with the token, a cancel
//! is `c` on that channel, the engine's `a` ack, then SIGTERM to the group: the engine
//! records CANCELLED itself and runs the flow's `on_cancellation` hooks. A flow that
//! never opened the channel (still importing, or a job `command` that is not the
//! engine) gets SIGKILL on its group, and the worker records CANCELLED: never SIGTERM
//! without the channel, which the engine reports as a crash.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{InFlight, WorkerConfig};
use hoist_prefect::PrefectClient;

/// How long a flow told to cancel may take to stop after SIGTERM before its group gets
/// SIGKILL (Prefect's own figure).
pub(super) const KILL_AFTER: Duration = Duration::from_secs(30);

/// The command that starts the flow: the job's `command`, else `<python> -m
/// prefect.engine`, with the environment Prefect's process worker gives it.
pub(super) fn command(
    args: &WorkerConfig,
    api_url: &str,
    run_id: &str,
    deployment: &Value,
    job: &Map<String, Value>,
    dir: &Path,
) -> Result<tokio::process::Command, String> {
    let python = args
        .python
        .clone()
        .or_else(|| {
            job.get("python")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
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
            let words = shlex::split(c).filter(|w| !w.is_empty()).ok_or_else(|| {
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
    cmd.process_group(0)
        .current_dir(dir)
        .env("PREFECT_API_URL", api_url)
        .env("PREFECT__FLOW_RUN_ID", run_id)
        .env(
            "PREFECT__FLOW_ENTRYPOINT",
            deployment["entrypoint"].as_str().unwrap_or(""),
        )
        .env("PYTHONPATH", pythonpath)
        // The engine runs the flow's cancellation and crash hooks itself.
        .env_remove("PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS");
    if let Some(id) = deployment["id"].as_str() {
        cmd.env("PREFECT__DEPLOYMENT_ID", id);
    }
    if let Some(Value::Object(env)) = job.get("env") {
        for (k, v) in env {
            match v {
                Value::String(s) => cmd.env(k, s),
                Value::Null => continue,
                other => cmd.env(k, other.to_string()),
            };
        }
    }
    if job.get("stream_output") == Some(&json!(false)) {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    die_with_worker(&mut cmd);
    Ok(cmd)
}

/// The child gets SIGKILL when the worker's thread that started it dies (tokio's
/// worker threads live as long as the worker).
fn die_with_worker(cmd: &mut tokio::process::Command) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec; it makes one
    // prctl(2) system call, which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

/// How the flow's process ended.
pub(super) struct Ended {
    pub status: ExitStatus,
    /// It was cancelled through the control channel (the engine recorded the state).
    pub graceful: bool,
}

/// Start the flow, record its process id, and wait for it, cancelling it when `cancel`
/// is notified. Whatever the flow's group left running is killed once it exits.
pub(super) async fn supervise(
    mut cmd: tokio::process::Command,
    client: &PrefectClient,
    run_id: &str,
    inflight: &InFlight,
    cancel: Arc<Notify>,
) -> Result<Ended, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("Flow run could not start: no control port: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("Flow run could not start: {e}"))?
        .port();
    let token = hoist_prefect::worker::uuid4().replace('-', "");
    cmd.env("PREFECT__CONTROL_PORT", port.to_string())
        .env("PREFECT__CONTROL_TOKEN", &token);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("Flow run could not start: {program}: {e}"))?;
    let pid = child.id();
    if let Some(pid) = pid {
        if let Some(f) = super::lock(inflight).get_mut(run_id) {
            f.pid = Some(pid);
        }
        if let Err(e) = client.set_pid(run_id, pid).await {
            eprintln!("warning: run {run_id}: could not record the flow's process id: {e}");
        }
    }
    let mut control: Option<TcpStream> = None;
    // Each connection proves the token on a task of its own: one that sends nothing
    // delays neither the engine's connection nor a cancel.
    let (proven_tx, mut proven) = tokio::sync::mpsc::channel::<TcpStream>(1);
    let ended = loop {
        tokio::select! {
            status = child.wait() => {
                break Ended { status: waited(status)?, graceful: false };
            }
            accepted = listener.accept(), if control.is_none() => {
                if let Ok((stream, _)) = accepted {
                    let (tx, token) = (proven_tx.clone(), token.clone());
                    tokio::spawn(async move {
                        if let Some(s) = authenticated(stream, &token).await {
                            let _ = tx.try_send(s);
                        }
                    });
                }
            }
            Some(stream) = proven.recv(), if control.is_none() => control = Some(stream),
            () = cancel.notified() => {
                break stop(&mut child, pid, control.take(), run_id).await?;
            }
        }
    };
    kill_group(pid);
    Ok(ended)
}

/// The engine's connection, once it has sent the token (anything else on the port is
/// dropped).
async fn authenticated(mut stream: TcpStream, token: &str) -> Option<TcpStream> {
    let mut line = Vec::new();
    let read = async {
        while line.len() <= token.len() {
            let b = stream.read_u8().await.ok()?;
            if b == b'\n' {
                return Some(());
            }
            line.push(b);
        }
        None
    };
    let ok = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .flatten()
        .is_some();
    (ok && line == token.as_bytes()).then_some(stream)
}

/// Cancel the flow: through the control channel and SIGTERM when the engine
/// acknowledges, SIGKILL after [`KILL_AFTER`]; SIGKILL at once without it.
async fn stop(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    control: Option<TcpStream>,
    run_id: &str,
) -> Result<Ended, String> {
    let acked = match control {
        Some(mut s) => {
            // The engine's version-2 hello (`00 50 46 ..`) may come first: a version-1
            // peer (this worker) leaves it unanswered and skips it.
            let ack = async {
                s.write_all(b"c").await.ok()?;
                loop {
                    if s.read_u8().await.ok()? == b'a' {
                        return Some(());
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(2), ack).await == Ok(Some(()))
        }
        None => false,
    };
    if acked {
        eprintln!("run {run_id}: the flow acknowledged the cancel on its control channel: SIGTERM");
        signal_group(pid, rustix::process::Signal::TERM);
        if let Ok(status) = tokio::time::timeout(KILL_AFTER, child.wait()).await {
            return Ok(Ended {
                status: waited(status)?,
                graceful: true,
            });
        }
    }
    if !acked {
        eprintln!(
            "run {run_id}: the flow has no control channel open (or did not acknowledge): SIGKILL"
        );
    }
    kill_group(pid);
    Ok(Ended {
        status: waited(child.wait().await)?,
        graceful: false,
    })
}

fn waited(status: std::io::Result<ExitStatus>) -> Result<ExitStatus, String> {
    status.map_err(|e| format!("Flow run could not be waited for: {e}"))
}

fn kill_group(pid: Option<u32>) {
    signal_group(pid, rustix::process::Signal::KILL);
}

fn signal_group(pid: Option<u32>, signal: rustix::process::Signal) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Prefect's message for a flow process that exited non-zero.
pub(super) fn crash_message(status: ExitStatus) -> String {
    let code = status.code().map(|c| c.to_string()).unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        format!("-{}", status.signal().unwrap_or(0))
    });
    format!("Flow run infrastructure exited with non-zero status code {code}.")
}
