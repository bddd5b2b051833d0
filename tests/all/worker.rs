//! `hoist worker` against a real Prefect server (the one `prefect.rs` starts, and
//! servers of their own where a test restarts one or needs PostgreSQL): pull steps in the
//! sandbox then the flow, failures, concurrency, cancellation through the control
//! channel, a stopping worker, a killed worker's runs, a server restart, deployment
//! concurrency leases, and three workers sharing 36 runs, each run exactly once.

use std::path::Path;
use std::process::Command;

use hoist::prefect::{Method, PrefectClient};
use serde_json::{Value, json};

use crate::prefect::{hoist_at, make_pool, pull_step_events, server, wait_state};
use crate::support::{self, hoist, plugins, run};

/// Run `id` as it ended: its state type must be `want`; its state message, returned.
async fn ended_as(client: &PrefectClient, id: &str, want: &str) -> String {
    let run = client.flow_run(id).await.unwrap();
    assert_eq!(run["state_type"], want, "{run}");
    run["state"]["message"].as_str().unwrap_or("").to_string()
}

/// A run's state types, oldest first.
async fn history(client: &PrefectClient, run_id: &str) -> Vec<String> {
    let (_, states) = client
        .request(
            Method::GET,
            &format!("/flow_run_states/?flow_run_id={run_id}"),
            None,
        )
        .await
        .unwrap();
    let mut states: Vec<(String, String)> = states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["timestamp"].as_str().unwrap_or("").to_string(),
                s["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    states.sort();
    states.into_iter().map(|(_, t)| t).collect()
}

/// `hoist worker start --run-once`: the pool is created when missing; a run created on
/// the server is claimed, its deployment's pull steps run in the sandbox (their log
/// shipped to the run's logs), the flow runs with the run's parameters in the
/// directory the pull steps left, and the run ends COMPLETED; a run whose pull step
/// fails ends CRASHED with the step's error, and its flow never starts.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_pull_steps_in_the_sandbox_then_the_flow() {
    let Some(s) = server() else { return };
    let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-pool-{}", std::process::id());
    let (_t, dir) = support::tempdir();
    let (_h, prefect_home) = support::tempdir();
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/work.py"),
        "import os\nfrom prefect import flow\n\n\n@flow(log_prints=True)\ndef work(name: str = \"x\"):\n    if name == \"boom\":\n        raise ValueError(\"kaboom\")\n    open(\"ran.txt\", \"w\").write(f\"{name} in {os.getcwd()}\")\n    print(f\"flow says {name}\")\n",
    )
    .unwrap();
    support::write_project(
        &dir,
        format!(
            r#"deployments:
- name: ok
  entrypoint: flows/work.py:work
  work_pool: {{name: {pool}}}
  pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {d}
  - prefect.deployments.steps.run_shell_script:
      script: echo pulled-by-hoist
      stream_output: true
- name: broken
  entrypoint: flows/work.py:work
  work_pool: {{name: {pool}}}
  pull:
  - prefect.deployments.steps.run_shell_script:
      script: sh -c 'echo about to fail; exit 3'
- name: needs-grant
  entrypoint: flows/work.py:work
  work_pool: {{name: {pool}}}
  pull:
  - needs:
      action: spawn
      program: "true"
- name: granted
  entrypoint: flows/work.py:work
  work_pool: {{name: {pool}, job_variables: {{allow: ["process:true", "process:sleep", "env:HOIST_PROBE"]}}}}
  pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {d}
  - needs:
      action: spawn
      program: "true"
- name: file-step
  entrypoint: flows/work.py:work
  work_pool: {{name: {pool}}}
  pull:
  - ./plugins/probe.wasm:
      action: spawn
      program: "true"
- name: limited
  entrypoint: flows/work.py:work
  work_pool: {{name: {pool}, job_variables: {{timeout: 1s}}}}
  pull:
  - prefect.deployments.steps.run_shell_script:
      script: sleep 30
"#,
            d = dir.display()
        ),
    );
    let worker = |extra: &[&str]| {
        let mut c = hoist(&dir);
        c.current_dir(&dir)
            .env("PREFECT_API_URL", &s.url)
            .env("PREFECT_HOME", &prefect_home)
            .args([
                "worker",
                "start",
                "-p",
                &pool,
                "--run-once",
                "--python",
                &python,
            ])
            .args(extra);
        run(&mut c)
    };
    // The pool is created by the worker.
    let (code, _, err) = worker(&[]);
    assert_eq!(code, 0, "{err}");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(plugins::PROBE, dir.join("plugins/probe.wasm")).unwrap();
    let (code, _, err) = run(hoist_at(&dir, s).args(["deploy", "--all"]));
    assert_eq!(code, 0, "{err}");
    let mut runs = Vec::new();
    // An installed plugin (by name) among the pull steps: it needs grants.
    let installed = support::home_of(&dir).join("plugins");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::copy(plugins::PROBE, installed.join("needs.wasm")).unwrap();
    for name in [
        "ok",
        "broken",
        "limited",
        "needs-grant",
        "granted",
        "file-step",
    ] {
        let (_, d) = client
            .request(Method::GET, &format!("/deployments/name/work/{name}"), None)
            .await
            .unwrap();
        let id = d["id"].as_str().unwrap().to_string();
        let (status, r) = client
            .request(
                Method::POST,
                &format!("/deployments/{id}/create_flow_run"),
                Some(&json!({"parameters": {"name": "from-run"}})),
            )
            .await
            .unwrap();
        assert!(status.is_success(), "{r}");
        runs.push(r["id"].as_str().unwrap().to_string());
    }
    // On the `ok` deployment: a flow that raises, and parameters the flow does not take.
    let (_, d) = client
        .request(Method::GET, "/deployments/name/work/ok", None)
        .await
        .unwrap();
    let ok_id = d["id"].as_str().unwrap().to_string();
    for params in [json!({"name": "boom"}), json!({"nope": 1})] {
        let (status, r) = client
            .request(
                Method::POST,
                &format!("/deployments/{ok_id}/create_flow_run"),
                Some(&json!({"parameters": params})),
            )
            .await
            .unwrap();
        assert!(status.is_success(), "{r}");
        runs.push(r["id"].as_str().unwrap().to_string());
    }
    let (code, _, err) = worker(&[]);
    assert_eq!(code, 0, "{err}");

    let ok = client.flow_run(&runs[0]).await.unwrap();
    assert_eq!(ok["state_type"], "COMPLETED", "{ok}\n{err}");
    assert!(
        ok["infrastructure_pid"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{ok}"
    );
    let ran = std::fs::read_to_string(dir.join("ran.txt")).unwrap();
    assert_eq!(
        ran,
        format!(
            "from-run in {}",
            std::fs::canonicalize(&dir).unwrap().display()
        )
    );
    let (_, logs) = client
        .request(
            Method::POST,
            "/logs/filter",
            Some(&json!({"logs": {"flow_run_id": {"any_": [runs[0]]}}})),
        )
        .await
        .unwrap();
    let text = logs.to_string();
    assert!(
        text.contains("Executing deployment step: set_working_directory"),
        "{text}"
    );
    assert!(text.contains("pulled-by-hoist"), "{text}");
    assert!(text.contains("flow says from-run"), "{text}");

    let message = ended_as(&client, &runs[1], "CRASHED").await;
    assert!(message.contains("pull step failed"), "{message}");
    let (_, logs) = client
        .request(
            Method::POST,
            "/logs/filter",
            Some(&json!({"logs": {"flow_run_id": {"any_": [runs[1]]}}})),
        )
        .await
        .unwrap();
    assert!(logs.to_string().contains("about to fail"), "{logs}");
    // Pull-step events, as Prefect emits them: one per step, about the run, with the
    // step's untemplated inputs (the server stores them asynchronously).
    let mut names: Vec<(String, String)> = pull_step_events(&client, &runs[0], 2)
        .await
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or("").to_string(),
                e["payload"]["step_name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            (
                "prefect.flow-run.pull-step.executed".to_string(),
                "run_shell_script".to_string()
            ),
            (
                "prefect.flow-run.pull-step.executed".to_string(),
                "set_working_directory".to_string()
            ),
        ]
    );

    // A plugin's ungranted capability: CRASHED, naming it and the worker's remedies;
    // granted through the job variable `allow`, the same step runs and the flow completes.
    let why = ended_as(&client, &runs[3], "CRASHED").await;
    assert!(
        why.contains("process:true")
            && why.contains("job variable `allow`")
            && why.contains("--allow"),
        "{why}"
    );
    let granted = client.flow_run(&runs[4]).await.unwrap();
    assert_eq!(granted["state_type"], "COMPLETED", "{granted}");

    // A plugin file in a deployment's pull steps is on the deploying machine: refused
    // by name, with what to do instead.
    let why = ended_as(&client, &runs[5], "CRASHED").await;
    assert!(
        why.contains("pull step `./plugins/probe.wasm` names a plugin file")
            && why.contains("$HOIST_HOME/plugins/"),
        "{why}"
    );

    // A flow that raises ends FAILED (the engine says so; the worker adds nothing); a run
    // whose parameters the flow does not take never starts: CRASHED, with the exit status.
    let message = ended_as(&client, &runs[6], "FAILED").await;
    assert!(message.contains("kaboom"), "{message}");
    let message = ended_as(&client, &runs[7], "CRASHED").await;
    assert!(message.contains("non-zero status code 1"), "{message}");

    // The job variable `timeout` limits the pull steps.
    let message = ended_as(&client, &runs[2], "CRASHED").await;
    assert!(message.contains("did not finish within"), "{message}");
    assert!(
        !logs.to_string().contains("flow says"),
        "the flow started after a failed pull step"
    );
}

/// A worker runs its claimed runs concurrently (two flows RUNNING at once with
/// `--limit 2`), and cancels a running one when asked, through Prefect's control
/// channel: the engine runs the flow's `on_cancellation` hook and records CANCELLED
/// (no CRASHED in the history), the process is gone, while the other run completes. A
/// local process that connects to the control port without the token cannot cancel.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_flows_concurrently_and_cancels_on_request() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-cancel-{}", std::process::id());
    let (_t, dir) = support::tempdir();
    make_pool(&client, &pool).await;
    let flow = "import time\nfrom prefect import flow\n\n\ndef noted(flow, flow_run, state):\n    open(\"cancel-hook.txt\", \"w\").write(str(flow_run.id))\n\n\n@flow(on_cancellation=[noted])\ndef slow(seconds: float = 60):\n    open(f\"started-{seconds:.0f}\", \"w\").close()\n    time.sleep(seconds)\n";
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        &pool,
        ("slow.py", "slow", flow),
        "slow-dep",
        ("", ""),
    )
    .await;
    let mut runs = Vec::new();
    for seconds in [4.0, 120.0] {
        runs.push(create_run(&client, &dep, json!({"seconds": seconds})).await);
    }
    let _worker = Worker::start(s, &dir, &pool, "canceller", &["--limit", "2"]);
    let state = |id: String| {
        let client = client.clone();
        async move { client.flow_run(&id).await.unwrap() }
    };
    // Hostile: as soon as the second flow's process exists (before its engine connects),
    // another local process connects to the worker's control port: one connection
    // sends a wrong token and a cancel, one holds still. Neither cancels the flow nor
    // keeps the engine's own connection out (the cancel below is still graceful).
    let mut pid = None;
    for _ in 0..600 {
        pid = state(runs[1].clone()).await["infrastructure_pid"]
            .as_str()
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let environ = std::fs::read(format!("/proc/{}/environ", pid.unwrap())).unwrap();
    let port: u16 = environ
        .split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| v.strip_prefix("PREFECT__CONTROL_PORT="))
        .expect("the flow was given a control port")
        .parse()
        .unwrap();
    let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut forger = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    let _ = forger.write_all(b"not-the-token\nc");
    // Both RUNNING at the same time.
    let mut both = false;
    for _ in 0..3000 {
        let a = state(runs[0].clone()).await;
        let b = state(runs[1].clone()).await;
        if a["state_type"] == "RUNNING" && b["state_type"] == "RUNNING" {
            both = true;
            break;
        }
        if a["state_type"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(both, "the two runs never ran at once");
    // The flow's body has started: the engine has opened its control channel by then.
    for _ in 0..300 {
        if dir.join("started-120").exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(dir.join("started-120").exists(), "the flow never started");
    let b = state(runs[1].clone()).await;
    assert_eq!(
        b["state_type"], "RUNNING",
        "a forged cancel reached the flow: {b}"
    );
    let pid: i32 = b["infrastructure_pid"].as_str().unwrap().parse().unwrap();
    client
        .request(
            Method::POST,
            &format!("/flow_runs/{}/set_state", runs[1]),
            Some(&json!({"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": false})),
        )
        .await
        .unwrap();
    let final_b = wait_state(&client, &runs[1], "CANCELLED", 300).await;
    assert_eq!(final_b["state_type"], "CANCELLED", "{final_b}");
    // The engine records CANCELLED, then exits.
    for _ in 0..100 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!alive(pid), "the cancelled flow's process {pid} still runs");
    // Cancelled through the control channel: the engine ran the flow's on_cancellation
    // hook and recorded CANCELLED itself, with no CRASHED on the way (§4.4).
    assert_eq!(
        std::fs::read_to_string(dir.join("cancel-hook.txt")).unwrap_or_default(),
        runs[1],
        "the flow's on_cancellation hook did not run; the worker said:\n{}",
        std::fs::read_to_string(dir.join("canceller.log")).unwrap_or_default()
    );
    // (The engine proposes CANCELLING again itself before CANCELLED.)
    let mut states = history(&client, &runs[1]).await;
    states.dedup();
    assert_eq!(
        states,
        ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "CANCELLED"]
    );
    let final_a = wait_state(&client, &runs[0], "COMPLETED", 300).await;
    assert_eq!(final_a["state_type"], "COMPLETED", "{final_a}");
}

/// A worker told to stop (SIGTERM) polls no more, gives its running flow the grace
/// period, then cancels it cleanly: the run ends CANCELLED (never a spurious CRASHED),
/// the flow's process is gone, the worker exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_cancels_what_outlives_its_grace_period() {
    let Some(s) = server() else { return };
    let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-stop-{}", std::process::id());
    let (_t, dir) = support::tempdir();
    let (_h, prefect_home) = support::tempdir();
    make_pool(&client, &pool).await;
    let flow =
        "import time\nfrom prefect import flow\n\n\n@flow\ndef lingers():\n    time.sleep(120)\n";
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        &pool,
        ("slow.py", "lingers", flow),
        "lingering",
        ("", ""),
    )
    .await;
    let run_id = create_run(&client, &dep, json!({})).await;
    let worker = hoist_at(&dir, s)
        .env("PREFECT_HOME", &prefect_home)
        .args([
            "worker",
            "start",
            "-p",
            &pool,
            "--grace-period",
            "1",
            "--poll-interval",
            "0.5",
            "--python",
            &python,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = wait_state(&client, &run_id, "RUNNING", 600).await;
    assert_eq!(running["state_type"], "RUNNING", "{running}");
    let pid: i32 = running["infrastructure_pid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let worker_pid = rustix::process::Pid::from_raw(worker.id() as i32).unwrap();
    rustix::process::kill_process(worker_pid, rustix::process::Signal::TERM).unwrap();
    let out = tokio::task::spawn_blocking(move || worker.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = client.flow_run(&run_id).await.unwrap();
    assert_eq!(done["state_type"], "CANCELLED", "{done}");
    assert!(!alive(pid), "the flow's process {pid} outlived the worker");
    let types = history(&client, &run_id).await;
    assert!(
        !types.iter().any(|t| t == "CRASHED"),
        "a spurious CRASHED: {types:?}"
    );
}

/// The seeds' workflow end to end: a deployment whose pull steps clone a local git
/// repository (the flow's code lives there) and set the directory into the clone; the
/// run is created by Prefect's own CLI (`prefect deployment run --param`); Hoist's worker
/// clones in the sandbox, starts the flow in the clone, and the run's output and
/// COMPLETED state are read back through the API.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_created_by_prefects_cli_clones_and_runs_the_flow() {
    let Some(s) = server() else { return };
    let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-git-{}", std::process::id());
    let (_r, repo_root) = support::tempdir();
    let repo = repo_root.join("flows-repo");
    std::fs::create_dir_all(repo.join("flows")).unwrap();
    std::fs::write(
        repo.join("flows/greet.py"),
        "import os\nfrom prefect import flow\n\n\n@flow(log_prints=True)\ndef greet(name: str = \"nobody\"):\n    print(f\"hello {name} from {os.path.basename(os.getcwd())}\")\n",
    )
    .unwrap();
    support::git(&repo, &["init", "-q"]);
    support::git(&repo, &["add", "."]);
    support::git(&repo, &["commit", "-q", "-m", "flows"]);

    let (_t, dir) = support::tempdir();
    std::fs::copy(repo.join("flows/greet.py"), {
        std::fs::create_dir_all(dir.join("flows")).unwrap();
        dir.join("flows/greet.py")
    })
    .unwrap();
    support::write_project(
        &dir,
        format!(
            "deployments:\n- name: from-git\n  entrypoint: flows/greet.py:greet\n  work_pool: {{name: {pool}}}\n  pull:\n  - prefect.deployments.steps.git_clone:\n      id: clone\n      repository: {}\n  - prefect.deployments.steps.set_working_directory:\n      directory: \"{{{{ clone.directory }}}}\"\n",
            repo.display()
        ),
    );
    make_pool(&client, &pool).await;
    let (code, _, err) = run(hoist_at(&dir, s).args(["deploy"]));
    assert_eq!(code, 0, "{err}");
    let (_h, prefect_home) = support::tempdir();
    let out = Command::new(&python)
        .args([
            "-m",
            "prefect",
            "deployment",
            "run",
            "greet/from-git",
            "--param",
            "name=prefect-cli",
        ])
        .env("PREFECT_API_URL", &s.url)
        .env("PREFECT_HOME", &prefect_home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prefect deployment run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, err) = run(hoist_at(&dir, s).env("PREFECT_HOME", &prefect_home).args([
        "worker",
        "start",
        "-p",
        &pool,
        "--run-once",
        "--python",
        &python,
    ]));
    assert_eq!(code, 0, "{err}");
    let (_, d) = client
        .request(Method::GET, "/deployments/name/greet/from-git", None)
        .await
        .unwrap();
    let (_, runs) = client
        .request(
            Method::POST,
            "/flow_runs/filter",
            Some(&json!({"flow_runs": {"deployment_id": {"any_": [d["id"]]}}})),
        )
        .await
        .unwrap();
    let r = &runs[0];
    assert_eq!(r["state_type"], "COMPLETED", "{r}\n{err}");
    let id = r["id"].as_str().unwrap();
    let mut text = String::new();
    for _ in 0..50 {
        let (_, logs) = client
            .request(
                Method::POST,
                "/logs/filter",
                Some(&json!({"logs": {"flow_run_id": {"any_": [id]}}})),
            )
            .await
            .unwrap();
        text = logs.to_string();
        if text.contains("hello prefect-cli") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text.contains("hello prefect-cli from flows-repo"), "{text}");
    assert!(
        text.contains("Executing deployment step: git_clone"),
        "{text}"
    );
}

/// A deployment of `flows/<file>` (written from `source`) named `name` in `pool`, with
/// `extra` YAML keys under the deployment and `extra_pull` steps; its id. The first pull
/// step sets the directory to `dir`, where the flow's code is.
async fn deploy_flow(
    s: &crate::prefect::Server,
    client: &PrefectClient,
    dir: &Path,
    pool: &str,
    (file, entry, source): (&str, &str, &str),
    name: &str,
    (extra, extra_pull): (&str, &str),
) -> String {
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(dir.join("flows").join(file), source).unwrap();
    support::write_project(
        dir,
        format!(
            "deployments:\n- name: {name}\n  entrypoint: flows/{file}:{entry}\n  work_pool: {{name: {pool}}}\n{extra}  pull:\n  - prefect.deployments.steps.set_working_directory:\n      directory: {}\n{extra_pull}",
            dir.display()
        ),
    );
    let (code, _, err) = run(hoist_at(dir, s).args(["deploy", "-n", name]));
    assert_eq!(code, 0, "{err}");
    let (_, d) = client
        .request(
            Method::GET,
            &format!("/deployments/name/{entry}/{name}"),
            None,
        )
        .await
        .unwrap();
    d["id"].as_str().unwrap().to_string()
}

/// Create a run of deployment `dep`; its id.
async fn create_run(client: &PrefectClient, dep: &str, parameters: Value) -> String {
    create_run_with(client, dep, json!({ "parameters": parameters })).await
}

/// Create a run of deployment `dep` from `body` (parameters, job variables); its id.
async fn create_run_with(client: &PrefectClient, dep: &str, body: Value) -> String {
    let (status, r) = client
        .request(
            Method::POST,
            &format!("/deployments/{dep}/create_flow_run"),
            Some(&body),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{r}");
    r["id"].as_str().unwrap().to_string()
}

/// A `hoist worker start` on `pool` in the background (killed when dropped), its
/// output in `dir/<name>.log`.
struct Worker(std::process::Child);

impl Worker {
    fn start(
        s: &crate::prefect::Server,
        dir: &Path,
        pool: &str,
        name: &str,
        extra: &[&str],
    ) -> Worker {
        Self::start_with(s, dir, pool, name, extra, &[])
    }

    /// [`Worker::start`] with `env` set for the worker.
    fn start_with(
        s: &crate::prefect::Server,
        dir: &Path,
        pool: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = hoist_at(dir, s)
            .envs(env.iter().copied())
            .env("PREFECT_HOME", dir.join(".prefect-home"))
            .args([
                "worker",
                "start",
                "-p",
                pool,
                "--name",
                name,
                "--poll-interval",
                "0.5",
            ])
            .args(["--python", &python])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Worker(child)
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.0.id() as i32).unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

/// Wait until the worker's log (`dir/<name>.log`) says `what`, at most `secs` seconds.
async fn log_says(dir: &Path, name: &str, what: &str, secs: u64) -> String {
    let mut log = String::new();
    for _ in 0..secs * 10 {
        log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        if log.contains(what) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    log
}

/// An idle worker listens to its pool's events: a run created on the server wakes it
/// at once, though it polls only every 600 s here while the stream is open (heartbeats
/// do not poll).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_created_on_the_server_wakes_an_idle_worker_through_its_events() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-events-{}", std::process::id());
    let (_t, dir) = support::tempdir();
    make_pool(&client, &pool).await;
    let flow = "from prefect import flow\n\n\n@flow\ndef woken():\n    pass\n";
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        &pool,
        ("woken.py", "woken", flow),
        "woken-dep",
        ("", ""),
    )
    .await;
    let _worker = Worker::start(s, &dir, &pool, "listener", &["--idle-poll", "600"]);
    let log = log_says(&dir, "listener", "listening to the pool's events", 60).await;
    assert!(log.contains("listening to the pool's events"), "{log}");
    // Past the worker's first poll (the server records it on the pool's queue), so
    // only an event can wake it.
    let mut polled = false;
    for _ in 0..300 {
        let (_, queues) = client
            .request(
                Method::POST,
                &format!("/work_pools/{pool}/queues/filter"),
                Some(&json!({})),
            )
            .await
            .unwrap();
        polled = queues
            .as_array()
            .is_some_and(|q| q.iter().any(|q| !q["last_polled"].is_null()));
        if polled {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(polled, "the worker never polled its pool");
    for _ in 0..2 {
        let id = create_run(&client, &dep, json!({})).await;
        // Within 30 s, far inside the 600 s idle poll: only the event can have woken it
        // (a loaded server delivers its events seconds late; CI saw more than 10 s).
        let mut state = Value::Null;
        for _ in 0..300 {
            state = client.flow_run(&id).await.unwrap()["state_type"].clone();
            if state != "SCHEDULED" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_ne!(
            state, "SCHEDULED",
            "not claimed within 30 s of its creation"
        );
        let done = wait_state(&client, &id, "COMPLETED", 900).await;
        assert_eq!(done["state_type"], "COMPLETED", "{done}");
    }
    // The stream stayed open throughout (a closed one falls back to quick polls).
    let log = std::fs::read_to_string(dir.join("listener.log")).unwrap();
    assert!(!log.contains("events stream"), "{log}");
}

/// The events websocket goes through the proxy the environment names, as the REST calls
/// do (a `CONNECT` tunnel, what Python's `websockets` opens); a proxy that refuses the
/// tunnel leaves the worker polling through it, saying why. A real tinyproxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_events_stream_goes_through_the_environments_proxy() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-proxied-{}", std::process::id());
    make_pool(&client, &pool).await;
    let port = s
        .url
        .trim_end_matches("/api")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let (_t, dir) = support::tempdir();
    let Some((_proxy, proxy, log)) = support::tinyproxy(&dir, "") else {
        return;
    };
    let env = |proxy: &str| {
        [
            ("http_proxy", proxy.to_string()),
            ("HTTP_PROXY", proxy.to_string()),
            ("NO_PROXY", String::new()),
            ("no_proxy", String::new()),
        ]
    };
    let through = env(&proxy);
    let through: Vec<(&str, &str)> = through.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _worker = Worker::start_with(s, &dir, &pool, "proxied", &["--idle-poll", "600"], &through);
    let wlog = log_says(&dir, "proxied", "listening to the pool's events", 60).await;
    assert!(
        wlog.contains("listening to the pool's events") && !wlog.contains("no events stream"),
        "{wlog}"
    );
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.contains(&format!("CONNECT 127.0.0.1:{port}")),
        "the stream did not go through the proxy: {seen}"
    );

    // A proxy that tunnels only to port 443: refused, said, and the worker polls on.
    let (_u, other) = support::tempdir();
    let Some((_strict, strict, _)) = support::tinyproxy(&other, "ConnectPort 443\n") else {
        return;
    };
    let refused = env(&strict);
    let refused: Vec<(&str, &str)> = refused.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _polling = Worker::start_with(s, &other, &pool, "refused", &[], &refused);
    let wlog = log_says(&other, "refused", "polling instead", 60).await;
    assert!(
        wlog.contains("no events stream")
            && wlog.contains(&format!(
                "through the proxy {}",
                strict.trim_start_matches("http://")
            ))
            && wlog.contains("refused to connect"),
        "{wlog}"
    );
}

/// A worker killed with SIGKILL mid-run takes its flow's process with it (no orphan
/// runs unsupervised), and the run is not left RUNNING: the next worker to start on the
/// pool finds it (its holder's process is gone) and ends it CRASHED, naming both.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_run_is_ended_by_the_next_worker() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-killed-{}", std::process::id());
    let (_t, dir) = support::tempdir();
    make_pool(&client, &pool).await;
    let flow =
        "import time\nfrom prefect import flow\n\n\n@flow\ndef lasting():\n    time.sleep(120)\n";
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        &pool,
        ("lasting.py", "lasting", flow),
        "lasting-dep",
        ("", ""),
    )
    .await;
    let run_id = create_run(&client, &dep, json!({})).await;
    let first = Worker::start(s, &dir, &pool, "first", &[]);
    let running = wait_state(&client, &run_id, "RUNNING", 600).await;
    assert_eq!(running["state_type"], "RUNNING", "{running}");
    assert_eq!(running["labels"]["hoist.worker.name"], "first", "{running}");
    let pid: i32 = running["infrastructure_pid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    rustix::process::kill_process(first.pid(), rustix::process::Signal::KILL).unwrap();
    drop(first);
    let mut gone = false;
    for _ in 0..50 {
        if !alive(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the flow's process {pid} outlived its SIGKILLed worker"
    );
    assert_eq!(
        client.flow_run(&run_id).await.unwrap()["state_type"],
        "RUNNING"
    );

    let _second = Worker::start(s, &dir, &pool, "second", &[]);
    let ended = wait_state(&client, &run_id, "CRASHED", 300).await;
    assert_eq!(ended["state_type"], "CRASHED", "{ended}");
    let message = ended["state"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("`first`")
            && message.contains("`second`")
            && message.contains("stopped without finishing"),
        "{message}"
    );
}

/// The Prefect server restarted while a flow runs: the worker says it lost the server,
/// keeps going, the run finishes COMPLETED, its events stream reopens, and a run
/// created after the restart is picked up by the same worker (woken by an event).
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_carries_on_through_a_server_restart() {
    if crate::prefect::prefect_python().is_none() {
        return;
    }
    let s = &crate::prefect::start_with(&[], None).unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = "restarted-pool";
    let (_t, dir) = support::tempdir();
    make_pool(&client, pool).await;
    let flow = "import time\nfrom prefect import flow\n\n\n@flow(log_prints=True)\ndef naps(seconds: float = 0):\n    time.sleep(seconds)\n    print(f\"woke after {seconds}\")\n";
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        pool,
        ("naps.py", "naps", flow),
        "naps-dep",
        ("", ""),
    )
    .await;
    let during = create_run(&client, &dep, json!({"seconds": 25})).await;
    let worker = Worker::start(s, &dir, pool, "steady", &["--idle-poll", "600"]);
    let running = wait_state(&client, &during, "RUNNING", 600).await;
    assert_eq!(running["state_type"], "RUNNING", "{running}");
    tokio::task::block_in_place(|| s.restart());
    let done = wait_state(&client, &during, "COMPLETED", 900).await;
    assert_eq!(done["state_type"], "COMPLETED", "{done}");
    // Only the reopened events stream can wake it for the next run in time.
    let log = log_says(&dir, "steady", "the events stream is open again", 60).await;
    assert!(log.contains("the events stream is open again"), "{log}");
    let after = create_run(&client, &dep, json!({"seconds": 0})).await;
    let done = wait_state(&client, &after, "COMPLETED", 900).await;
    assert_eq!(done["state_type"], "COMPLETED", "{done}");
    let log = std::fs::read_to_string(dir.join("steady.log")).unwrap();
    // The events stream always notices the outage; a poll or heartbeat notices it only
    // when one falls inside it, and then the worker says when the server is back.
    assert!(log.contains("cannot reach the Prefect server"), "{log}");
    if log.contains("retrying until it answers") {
        assert!(log.contains("answers again"), "{log}");
    }
    drop(worker);
}

/// A deployment with a concurrency limit of 1: a claim takes the limit's lease, which
/// the worker renews while the pull steps run (longer than the server's 30 s lease
/// here), so the second run waits (AwaitingConcurrencySlot) until the first is over.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_concurrency_lease_holds_while_pull_steps_run() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-lease-{}", std::process::id());
    let (_t, dir) = support::tempdir();
    make_pool(&client, &pool).await;
    let flow = "from prefect import flow\n\n\n@flow\ndef limited():\n    pass\n";
    // The first run's pull step outlasts the lease; the second's is quick.
    let extra = (
        "  concurrency_limit: {limit: 1, collision_strategy: ENQUEUE}\n",
        "  - prefect.deployments.steps.run_shell_script:\n      script: sh -c 'if mkdir first 2>/dev/null; then sleep 45; fi'\n",
    );
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        &pool,
        ("limited.py", "limited", flow),
        "limited-dep",
        extra,
    )
    .await;
    let a = create_run(&client, &dep, json!({})).await;
    let b = create_run(&client, &dep, json!({})).await;
    let _worker = Worker::start(s, &dir, &pool, "leaser", &["--limit", "2"]);
    let mut ends = Vec::new();
    for id in [&a, &b] {
        let done = wait_state(&client, id, "COMPLETED", 1500).await;
        let log = std::fs::read_to_string(dir.join("leaser.log")).unwrap_or_default();
        assert_eq!(
            done["state_type"], "COMPLETED",
            "{done}\nworker's log:\n{log}"
        );
        ends.push(done);
    }
    // Whichever was claimed first ran alone: the other's claim came after its end.
    let (first, second) = if ends[0]["start_time"].as_str() < ends[1]["start_time"].as_str() {
        (&ends[0], &ends[1])
    } else {
        (&ends[1], &ends[0])
    };
    let (_, states) = client
        .request(
            Method::GET,
            &format!(
                "/flow_run_states/?flow_run_id={}",
                second["id"].as_str().unwrap()
            ),
            None,
        )
        .await
        .unwrap();
    let claimed = states
        .as_array()
        .unwrap()
        .iter()
        .filter(|st| st["type"] == "PENDING")
        .filter_map(|st| st["timestamp"].as_str())
        .min()
        .unwrap()
        .to_string();
    let first_end = first["end_time"].as_str().unwrap();
    assert!(
        claimed.as_str() >= first_end,
        "the second run was claimed at {claimed}, before the first ended at {first_end}"
    );
}

/// Scale out on the engine users run: three workers on one Prefect server backed by
/// PostgreSQL, runs created at once: each runs exactly once (each flow creates a file
/// named by its run id, exclusively) and all end COMPLETED. Sized by what it proves:
/// three workers of `--limit 3` hold 9 slots, so 36 runs make every worker claim again
/// and again while the other two claim the same queue (the races a claim must win or
/// lose cleanly), at a tenth of the time 300 runs took. `HOIST_SCALE_RUNS` sets the
/// count (a soak: `HOIST_SCALE_RUNS=300`).
#[tokio::test(flavor = "multi_thread")]
async fn three_workers_on_postgresql_run_each_run_exactly_once() {
    if crate::prefect::prefect_python().is_none() {
        return;
    }
    let Some(pg) = crate::stores::Postgres::start() else {
        return;
    };
    let count: usize = std::env::var("HOIST_SCALE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(36);
    let db = pg.url.replace("postgres://", "postgresql+asyncpg://");
    let s = &crate::prefect::start_with(
        &[("PREFECT_API_DATABASE_CONNECTION_URL", db.as_str())],
        None,
    )
    .unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = "scale-pool";
    let (_t, dir) = support::tempdir();
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    make_pool(&client, pool).await;
    let flow = "import os\nfrom prefect import flow\nfrom prefect.runtime import flow_run\n\n\n@flow\ndef mark(into: str):\n    open(os.path.join(into, flow_run.id), \"x\").close()\n";
    let dep = deploy_flow(
        s,
        &client,
        &dir,
        pool,
        ("mark.py", "mark", flow),
        "mark-dep",
        ("", ""),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(create_run(&client, &dep, json!({"into": marks.display().to_string()})).await);
    }
    let _workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| Worker::start(s, &dir, pool, n, &["--limit", "3"]))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40 * 60);
    loop {
        let (_, n) = client
            .request(
                Method::POST,
                "/flow_runs/count",
                Some(&json!({"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]}}}, "deployments": {"id": {"any_": [dep]}}})),
            )
            .await
            .unwrap();
        if n.as_u64() == Some(count as u64) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let (_, n) = client
        .request(
            Method::POST,
            "/flow_runs/count",
            Some(&json!({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "deployments": {"id": {"any_": [dep]}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        n.as_u64(),
        Some(count as u64),
        "runs COMPLETED out of {count}"
    );
    let mut marked: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    marked.sort();
    ids.sort();
    assert_eq!(marked, ids, "each run's flow ran exactly once");
    // The work was shared.
    for w in ["w1", "w2", "w3"] {
        let log = std::fs::read_to_string(dir.join(format!("{w}.log"))).unwrap();
        assert!(log.contains("claimed by"), "{w} claimed nothing:\n{log}");
    }
}

/// What a deployment's pull steps may read of the worker: `{{ $NAME }}` resolves from
/// the job variable `env` (as in Prefect, which templates pull steps in the flow's
/// process: the worker's environment plus the job's) and from the worker's own
/// environment only for the names its operator listed (`--template-env`), so a
/// deployment cannot template the worker's other variables into logs on the server.
/// And a run's own job variable `allow` grants nothing beyond its deployment's unless
/// the worker opts in (`--allow-from-runs`): whoever may create runs is not whoever
/// wrote the deployment.
#[tokio::test(flavor = "multi_thread")]
async fn pull_steps_see_the_jobs_env_and_only_what_the_worker_lists() {
    let Some(s) = server() else { return };
    let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("hoist-tmpl-{}", std::process::id());
    make_pool(&client, &pool).await;
    let (_t, dir) = support::tempdir();
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/t.py"),
        "from prefect import flow\n\n\n@flow\ndef t():\n    pass\n",
    )
    .unwrap();
    support::write_project(
        &dir,
        format!(
            r#"deployments:
- name: tmpl
  entrypoint: flows/t.py:t
  work_pool: {{name: {pool}, job_variables: {{env: {{FROM_JOB: job-value-1, HOIST_T_UNSET: null}}}}}}
  pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {d}
  - prefect.deployments.steps.run_shell_script:
      script: "echo job={{{{ $FROM_JOB }}}} listed={{{{ $HOIST_T_LISTED }}}} hidden={{{{ $HOIST_T_HIDDEN }}}} unset={{{{ $HOIST_T_UNSET }}}} end"
      stream_output: true
- name: needs
  entrypoint: flows/t.py:t
  work_pool: {{name: {pool}, job_variables: {{allow: ["env:HOIST_PROBE"]}}}}
  pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {d}
  - needs:
      action: spawn
      program: "true"
"#,
            d = dir.display()
        ),
    );
    let (code, _, err) = run(hoist_at(&dir, s).args(["deploy", "--all"]));
    assert_eq!(code, 0, "{err}");
    let installed = support::home_of(&dir).join("plugins");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::copy(plugins::PROBE, installed.join("needs.wasm")).unwrap();
    let id_of = async |name: &str| {
        let (_, d) = client
            .request(Method::GET, &format!("/deployments/name/t/{name}"), None)
            .await
            .unwrap();
        d["id"].as_str().unwrap().to_string()
    };
    let run_of = async |dep: &str, job: Value| {
        create_run_with(&client, dep, json!({"job_variables": job})).await
    };
    let worker = |extra: &[&str]| {
        let mut c = hoist_at(&dir, s);
        c.env("PREFECT_HOME", dir.join(".prefect-home"))
            .env("HOIST_T_LISTED", "listed-value-2")
            .env("HOIST_T_HIDDEN", "hidden-value-3")
            .env("HOIST_T_UNSET", "worker-value-4")
            .args(["worker", "start", "-p", &pool, "--run-once"])
            .args(["--python", &python, "--template-env", "HOIST_T_LIST*"])
            .args(extra);
        run(&mut c)
    };
    let tmpl = run_of(&id_of("tmpl").await, json!({})).await;
    let needs = id_of("needs").await;
    let full = json!({"allow": ["env:HOIST_PROBE", "process:true", "process:sleep"]});
    let beyond = run_of(&needs, full.clone()).await;
    let same = run_of(&needs, json!({"allow": ["env:HOIST_PROBE"]})).await;
    let (code, _, err) = worker(&[]);
    assert_eq!(code, 0, "{err}");

    ended_as(&client, &tmpl, "COMPLETED").await;
    let (_, logs) = client
        .request(
            Method::POST,
            "/logs/filter",
            Some(&json!({"logs": {"flow_run_id": {"any_": [tmpl]}}})),
        )
        .await
        .unwrap();
    let text = logs.to_string();
    assert!(
        text.contains("job=job-value-1 listed=listed-value-2 hidden= unset= end"),
        "{text}"
    );
    assert!(
        !text.contains("hidden-value-3") && !text.contains("worker-value-4"),
        "{text}"
    );

    let message = ended_as(&client, &beyond, "CRASHED").await;
    assert!(
        message
            .contains("`allow` grants \"process:true\", \"process:sleep\" beyond its deployment's")
            && message.contains("--allow-from-runs"),
        "{message}"
    );
    // The deployment's own grant is not enough for the step: it declares process:true.
    let message = ended_as(&client, &same, "CRASHED").await;
    assert!(message.contains("process:true"), "{message}");

    // Opted in, the run's grants count.
    let granted = run_of(&needs, full).await;
    let (code, _, err) = worker(&["--allow-from-runs"]);
    assert_eq!(code, 0, "{err}");
    ended_as(&client, &granted, "COMPLETED").await;
}
