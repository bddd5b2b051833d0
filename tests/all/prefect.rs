//! Blocks and variables from a real Prefect server (`prefect server start` on loopback,
//! SQLite in a temporary `PREFECT_HOME`), started once per test binary and stopped by a
//! watchdog when it exits. Needs a Python with Prefect 3.9 (`$HOIST_TEST_PREFECT_PYTHON`,
//! which `.ci/run` makes in a venv); without one these tests say so and pass, unless
//! `HOIST_REQUIRE_PREFECT` is set (as `.ci/run` sets it).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use hoist::prefect::{Method, PrefectClient};
use serde_json::{Value, json};
use std::path::Path;

use crate::support::{self, hoist, run, supervised};

/// A Prefect server started by the tests.
pub struct Server {
    /// `http://127.0.0.1:<port>/api`.
    pub url: String,
    home: PathBuf,
    port: u16,
    /// The shell command that starts it.
    command: String,
    auth: Option<String>,
}

fn start() -> Option<Server> {
    // Short concurrency leases and waits, so the worker's lease test sees a lapsed lease
    // within seconds (deployments without a concurrency limit take no lease).
    start_with(
        &[
            (
                "PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION",
                "30",
            ),
            ("PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS", "5"),
            (
                "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS",
                "5",
            ),
        ],
        None,
    )
}

/// A server with more settings in its environment (`extra`), and, with `auth`, the basic
/// auth string it requires (`PREFECT_SERVER_API_AUTH_STRING`).
pub fn start_with(extra: &[(&str, &str)], auth: Option<&str>) -> Option<Server> {
    let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").ok().filter(|p| {
        Command::new(p)
            .args(["-c", "import prefect"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        assert!(
            std::env::var_os("HOIST_REQUIRE_PREFECT").is_none(),
            "HOIST_REQUIRE_PREFECT is set but HOIST_TEST_PREFECT_PYTHON is not a Python with prefect installed"
        );
        support::skip(
            "no Prefect here (set HOIST_TEST_PREFECT_PYTHON to a Python with prefect 3.9)",
        );
        return None;
    };
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let home = std::env::temp_dir().join(format!("hoist-prefect-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let port = support::free_port();
    let mut settings: String = extra.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    if let Some(a) = auth {
        settings.push_str(&format!("PREFECT_SERVER_API_AUTH_STRING='{a}' "));
    }
    let command = format!(
        "{settings}PREFECT_HOME={h} PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
         PREFECT_SERVER_UI_ENABLED=false {python} -m prefect server start --host 127.0.0.1 --port {port}",
        h = home.display()
    );
    let server = Server {
        url: format!("http://127.0.0.1:{port}/api"),
        home,
        port,
        command,
        auth: auth.map(str::to_string),
    };
    server.launch("server");
    Some(server)
}

impl Server {
    /// Start the server's process (under the watchdog) and wait until it answers.
    fn launch(&self, log: &str) {
        supervised(
            &self.home,
            log,
            &self.command,
            &format!("rm -rf {}", self.home.display()),
        );
        // Allow a minute and a half: 10–25 s on two busy cores.
        for _ in 0..900 {
            if self.answers() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let text =
            std::fs::read_to_string(self.home.join(format!("{log}.log"))).unwrap_or_default();
        panic!(
            "prefect server did not answer at {} within 90 s:\n{text}",
            self.url
        );
    }

    fn answers(&self) -> bool {
        Command::new("curl")
            .args([
                "-fsS",
                "-o",
                "/dev/null",
                "-u",
                self.auth.as_deref().unwrap_or(":"),
                &format!("{}/health", self.url),
            ])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stop the server (SIGTERM to its processes), wait until nothing answers, then
    /// start it again on the same port and database.
    pub fn restart(&self) {
        let pattern = format!(
            "prefect server start --host 127.0.0.1 --port {}$",
            self.port
        );
        let _ = Command::new("pkill")
            .args(["-TERM", "-f", &pattern])
            .status();
        let mut stopped = false;
        for _ in 0..300 {
            if !self.answers() {
                stopped = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(stopped, "the prefect server at {} did not stop", self.url);
        // Its port may linger a moment.
        std::thread::sleep(std::time::Duration::from_secs(1));
        self.launch("server-again");
    }
}

/// The shared server, started on first use; `None` where Prefect is not installed.
pub fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref()
}

/// `hoist` run in `dir`, pointed at the test's Prefect server.
pub fn hoist_at(dir: &Path, s: &Server) -> Command {
    let mut c = hoist(dir);
    c.current_dir(dir).env("PREFECT_API_URL", &s.url);
    c
}

/// The pull-step events the server holds about flow run `run_id`, once it holds at
/// least `want` of them (it stores events asynchronously; asked for up to 10 s).
pub async fn pull_step_events(client: &PrefectClient, run_id: &str, want: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for _ in 0..100 {
        let (_, page) = client
            .request(
                Method::POST,
                "/events/filter",
                Some(&json!({"filter": {"resource": {"id": [format!("prefect.flow-run.{run_id}")]}, "event": {"prefix": ["prefect.flow-run.pull-step"]}}, "limit": 50})),
            )
            .await
            .unwrap();
        events = page["events"].as_array().cloned().unwrap_or_default();
        if events.len() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    events
}

/// A process work pool on the server (created by the test, not by a worker).
pub async fn make_pool(client: &PrefectClient, name: &str) {
    let (status, p) = client
        .request(
            Method::POST,
            "/work_pools/",
            Some(&json!({"name": name, "type": "process"})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{p}");
}

/// The flow run once its state type is `want`, or as it is after `tries` tenths of a
/// second (the caller asserts).
pub async fn wait_state(client: &PrefectClient, id: &str, want: &str, tries: usize) -> Value {
    let mut run = Value::Null;
    for _ in 0..tries {
        run = client.flow_run(id).await.unwrap();
        if run["state_type"] == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    run
}

/// Create a secret block document through the API, as `Secret(value=…).save(name)` does.
async fn secret_block(client: &PrefectClient, name: &str, value: &str) {
    let (_, bt) = client
        .request(Method::GET, "/block_types/slug/secret", None)
        .await
        .unwrap();
    let type_id = bt["id"].as_str().unwrap().to_string();
    let (_, schemas) = client
        .request(
            Method::POST,
            "/block_schemas/filter",
            Some(&json!({"block_schemas": {"block_type_id": {"any_": [type_id]}}})),
        )
        .await
        .unwrap();
    let schema_id = schemas[0]["id"].as_str().unwrap();
    let (status, doc) = client
        .request(
            Method::POST,
            "/block_documents/",
            Some(&json!({"name": name, "data": {"value": value}, "block_schema_id": schema_id, "block_type_id": type_id})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{doc}");
}

/// `{{ prefect.variables.* }}` and `{{ prefect.blocks.* }}` resolve from the server
/// `PREFECT_API_URL` names; the secret block's value is masked everywhere; Hoist's own
/// store is never opened.
#[tokio::test(flavor = "multi_thread")]
async fn blocks_and_variables_come_from_the_prefect_server() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let suffix = std::process::id();
    let var = format!("greeting_{suffix}");
    let (status, v) = client
        .request(
            Method::POST,
            "/variables/",
            Some(&json!({"name": var, "value": "hello-from-server"})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{v}");
    let secret = "srv-secret-token-4711";
    let block = format!("api-token-{suffix}");
    secret_block(&client, &block, secret).await;

    let (_t, dir) = support::tempdir();
    let yaml = format!(
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    id: say\n    script: echo {{{{ prefect.variables.{var} }}}} {{{{ prefect.blocks.secret.{block} }}}}\n    stream_output: true\n"
    );
    support::write_project(&dir, &yaml);
    let (code, out, err) = run(hoist_at(&dir, s).arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("hello-from-server ********"), "{err}");
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "the secret leaked: {out}\n{err}"
    );
    let home = support::home_of(&dir);
    assert!(
        !home.join("hoist.db").exists(),
        "the local store was opened"
    );

    // `step run` templates its inputs the same way, and masks the secret in its outputs.
    let (code, out, err) = run(hoist_at(&dir, s).args([
        "step",
        "run",
        "run_shell_script",
        "-i",
        &format!(
            "script=echo {{{{ prefect.variables.{var} }}}} {{{{ prefect.blocks.secret.{block} }}}}"
        ),
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hello-from-server ********"), "{out}");
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "the secret leaked: {out}\n{err}"
    );

    // `plan` resolves them from the server too, masked.
    let (code, out, err) = run(hoist_at(&dir, s).arg("plan"));
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "the secret leaked in plan"
    );

    // A block the server does not have: named, with the server's URL nowhere secret.
    support::write_project(
        &dir,
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo {{ prefect.blocks.secret.no-such-block }}\n",
    );
    let (code, _, err) = run(hoist_at(&dir, s).arg("pull"));
    assert_ne!(code, 0);
    assert!(err.contains("no-such-block"), "{err}");
}

/// `hoist pull` under a flow-run id (as inside a flow's process) records its pull-step
/// events where its values come from: on the Prefect server `PREFECT_API_URL` names
/// (the run's, which shows them in its UI), not in the local store.
#[tokio::test(flavor = "multi_thread")]
async fn pull_step_events_go_to_the_server_the_values_come_from() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let (_t, dir) = support::tempdir();
    support::write_project(
        &dir,
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo evented\n",
    );
    let run_id = hoist::prefect::worker::uuid4();
    let (code, _, err) = run(hoist_at(&dir, s)
        .env("PREFECT__FLOW_RUN_ID", &run_id)
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = pull_step_events(&client, &run_id, 1)
        .await
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["prefect.flow-run.pull-step.executed"]);
    assert!(
        !support::home_of(&dir).join("hoist.db").exists(),
        "the local store was opened"
    );
}

/// A server that is down: one line naming the URL and what to check, non-zero exit.
#[test]
fn a_prefect_server_that_is_down_is_one_clear_line() {
    let (_t, dir) = support::tempdir();
    support::write_project(
        &dir,
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo {{ prefect.variables.anything }}\n",
    );
    let url = format!("http://127.0.0.1:{}/api", support::free_port());
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", &url)
        .env("PREFECT_CLIENT_MAX_RETRIES", "0")
        .arg("pull"));
    assert_ne!(code, 0);
    let line = err
        .lines()
        .find(|l| l.contains("cannot reach the Prefect server"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(&url) && line.contains("PREFECT_API_URL"),
        "{line}"
    );
    assert_eq!(err.matches("cannot reach").count(), 1, "{err}");
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", "127.0.0.1:4200")
        .arg("pull"));
    assert_ne!(code, 0);
    assert!(err.contains("is not an http(s) URL"), "{err}");
}

/// The fields of a stored deployment that depend on when and by whom it was made.
fn comparable(mut d: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for k in [
                    "id",
                    "created",
                    "updated",
                    "created_by",
                    "updated_by",
                    "deployment_id",
                    "anchor_date",
                ] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    // The global concurrency limit is named after the deployment's id.
    if let Some(g) = d
        .get_mut("global_concurrency_limit")
        .and_then(|g| g.as_object_mut())
    {
        g.remove("name");
    }
    strip(&mut d);
    d
}

const FLOW: &str = r#"import datetime
from datetime import timedelta
from enum import Enum
from typing import Any, Literal, Optional

from prefect import flow
from pydantic import BaseModel


class Color(Enum):
    RED = "RED"
    BLUE = "BLUE"


class Foo(BaseModel):
    bar: str
    first_count: int = 3


@flow
def typed(a: list[str], b: dict[str, Any], d: tuple[int, float], o: Optional[bool] = None,
          c: Color = Color.BLUE, m: Foo = Foo(bar="x"), t: datetime.timedelta = timedelta(seconds=5),
          n: Optional[Foo] = None):
    pass


@flow(log_prints=True)
def hello(who: str, name: str = "world", count: int = 1, ratio: float = 0.5,
          tags: list[str] = [], extra: Optional[dict] = None, mode: Literal["a", "b"] = "a",
          flag: bool = False, anything=None, *, when: Optional[int] = None):
    """Say hello.

    Args:
        who: who asks
        name: who to greet
        count (int): how many times
            and more
    """
    print(f"hello {name}")


@flow(name="Call API")
def call_api(url: str = "http://example.com"):
    print(url)
"#;

/// The oracle is Prefect: the same project deployed by `prefect deploy` and by
/// `hoist deploy` against the same server is stored the same, field by field (ids,
/// timestamps, authors aside): schedules of each kind, parameters of each type with
/// docstring descriptions, a templated version, tags, concurrency, queue, job variables,
/// two deployments of two flows. A second `hoist deploy` updates in place; an unknown
/// work pool is one fix-it line.
#[tokio::test(flavor = "multi_thread")]
async fn hoist_deploy_stores_what_prefect_deploy_stores() {
    let Some(s) = server() else { return };
    let python = std::env::var("HOIST_TEST_PREFECT_PYTHON").unwrap();
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let pool = format!("diff-pool-{}", std::process::id());
    make_pool(&client, &pool).await;
    let (_t, dir) = support::tempdir();
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(dir.join("flows/hello.py"), FLOW).unwrap();
    let yaml = format!(
        r#"name: diff
prefect-version: 3.9.1
definitions:
  work_pools:
    shared: &shared_pool
      name: {pool}
      work_queue_name: shared-q
      job_variables: {{env: {{FROM: anchor}}}}
  schedules:
    nightly: &nightly {{cron: "30 2 * * *", timezone: America/New_York}}
build:
- prefect.deployments.steps.run_shell_script:
    id: meta
    script: echo 1.2.3
pull:
- prefect.deployments.steps.set_working_directory:
    directory: {dir}
deployments:
- name: diff-dep
  entrypoint: flows/hello.py:hello
  version: "{{{{ meta.stdout }}}}"
  tags: [t1, t2]
  description: a described deployment
  parameters: {{who: me, name: from-yaml}}
  schedules:
  - {{cron: "0 0 * * *", timezone: UTC, active: false}}
  - {{interval: 3600}}
  - {{rrule: "FREQ=DAILY;INTERVAL=2", timezone: Europe/Paris}}
  concurrency_limit: {{limit: 2, collision_strategy: CANCEL_NEW}}
  work_pool:
    name: {pool}
    work_queue_name: q1
    job_variables: {{env: {{FOO: bar}}}}
- name: api-dep
  entrypoint: flows/hello.py:call_api
  work_pool: {{name: {pool}}}
- name: typed-dep
  entrypoint: flows/hello.py:typed
  work_pool: {{name: {pool}}}
- name: anchored
  entrypoint: flows/hello.py:call_api
  schedules: [*nightly]
  work_pool: *shared_pool
  build:
  - prefect.deployments.steps.run_shell_script:
      id: own
      script: echo own-build
  pull:
  - prefect.deployments.steps.run_shell_script:
      script: echo "{{{{ own.stdout }}}}"
"#,
        dir = dir.display()
    );
    support::write_project(&dir, &yaml);
    let get = |flow: &'static str, name: &'static str| {
        let client = client.clone();
        async move {
            let (status, d) = client
                .request(
                    Method::GET,
                    &format!("/deployments/name/{flow}/{name}"),
                    None,
                )
                .await
                .unwrap();
            assert!(status.is_success(), "{flow}/{name}: {d}");
            d
        }
    };
    let out = Command::new(&python)
        .args(["-m", "prefect", "--no-prompt", "deploy", "--all"])
        .current_dir(&dir)
        .env("PREFECT_API_URL", &s.url)
        .env("PREFECT_HOME", dir.join(".prefect-home"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "prefect deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_prefect = Vec::new();
    for (flow, name) in [
        ("hello", "diff-dep"),
        ("Call API", "api-dep"),
        ("Call API", "anchored"),
        ("typed", "typed-dep"),
    ] {
        let flow: &'static str = flow;
        let d = get(flow, name).await;
        let id = d["id"].as_str().unwrap().to_string();
        client
            .request(Method::DELETE, &format!("/deployments/{id}"), None)
            .await
            .unwrap();
        by_prefect.push(d);
    }

    let (code, out, err) = run(hoist_at(&dir, s).args(["deploy", "--all"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("deployment `hello/diff-dep` created"), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    for ((flow, name), prefect) in [
        ("hello", "diff-dep"),
        ("Call API", "api-dep"),
        ("Call API", "anchored"),
        ("typed", "typed-dep"),
    ]
    .into_iter()
    .zip(&by_prefect)
    {
        let hoisted = get(flow, name).await;
        assert_eq!(
            comparable(hoisted),
            comparable(prefect.clone()),
            "{flow}/{name}: hoist deploy (left) and prefect deploy (right) differ"
        );
    }

    // Not vacuous: the typed flow's schema holds what pydantic renders (models and enums
    // of the file as definitions, their defaults serialised).
    let typed = &by_prefect[3]["parameter_openapi_schema"];
    assert_eq!(
        typed["definitions"]["Foo"]["properties"]["first_count"]["title"],
        "First Count"
    );
    assert_eq!(
        typed["properties"]["m"]["default"],
        json!({"bar": "x", "first_count": 3})
    );
    assert_eq!(typed["properties"]["c"]["default"], "BLUE");
    assert_eq!(typed["properties"]["t"]["default"], "PT5S");

    // Redeploy: the same deployment, updated in place, with the command line's overrides.
    let first_id = summary["deployed"][0]["id"].as_str().unwrap().to_string();
    let (code, _, err) = run(hoist_at(&dir, s).args([
        "deploy",
        "-n",
        "diff-dep",
        "--tag",
        "cli",
        "--param",
        "count=3",
        "--version",
        "9",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("updated"), "{err}");
    let d = get("hello", "diff-dep").await;
    assert_eq!(d["id"], first_id.as_str());
    assert_eq!(d["tags"], json!(["cli"]));
    assert_eq!(
        d["parameters"],
        json!({"who": "me", "name": "from-yaml", "count": 3})
    );
    assert_eq!(d["version"], "9");

    // --params: one JSON mapping, merged over the file's parameters.
    let (code, _, err) = run(hoist_at(&dir, s).args([
        "deploy",
        "-n",
        "diff-dep",
        "--params",
        r#"{"count": 5, "tags": ["x"]}"#,
    ]));
    assert_eq!(code, 0, "{err}");
    let d = get("hello", "diff-dep").await;
    assert_eq!(
        d["parameters"],
        json!({"who": "me", "name": "from-yaml", "count": 5, "tags": ["x"]})
    );

    // By flow name, found by parsing (`@flow(name="Call API")`), never importing.
    let (code, _, err) =
        run(hoist_at(&dir, s).args(["deploy", "-n", "diff-dep", "-f", "Call API"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("deployment `Call API/diff-dep` created"),
        "{err}"
    );
    let d = get("Call API", "diff-dep").await;
    assert_eq!(d["entrypoint"], "flows/hello.py:call_api");
    let (code, _, err) = run(hoist_at(&dir, s).args(["deploy", "-n", "diff-dep", "-f", "nope"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("Flow 'nope' cannot be found") && err.contains("Call API"),
        "{err}"
    );

    // An unknown work pool: one line that says how to fix it.
    let (code, _, err) =
        run(hoist_at(&dir, s).args(["deploy", "-n", "api-dep", "--pool", "no-such-pool"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("work pool `no-such-pool` does not exist")
            && err.contains("prefect work-pool create"),
        "{err}"
    );
}

/// The Python with Prefect, where these tests have one.
pub fn prefect_python() -> Option<String> {
    let p = std::env::var("HOIST_TEST_PREFECT_PYTHON").ok().filter(|p| {
        Command::new(p)
            .args(["-c", "import prefect"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if p.is_none() {
        assert!(
            std::env::var_os("HOIST_REQUIRE_PREFECT").is_none(),
            "HOIST_REQUIRE_PREFECT is set but HOIST_TEST_PREFECT_PYTHON is not a Python with prefect"
        );
    }
    p
}

/// The oracle is `prefect init`: for every recipe and the same fields, in a directory
/// with a git remote and one without, `hoist init` writes the same prefect.yaml (parsed),
/// but where Prefect's recipe does not work (the `gcs` pull's folder, the azure steps'
/// credentials: README). Existing files are never overwritten; unknown recipes, missing
/// fields and inference as Prefect.
#[test]
fn hoist_init_writes_what_prefect_init_writes() {
    let Some(python) = prefect_python() else {
        return;
    };
    let (_h, home) = support::tempdir();
    for remote in [true, false] {
        for r in hoist::project::recipes::RECIPES {
            let mut fields = Vec::new();
            for (k, _) in r.required {
                fields.push("--field".to_string());
                fields.push(format!("{k}=value-of-{k}"));
            }
            let mut made = Vec::new();
            // The same directory for both (the recipes write its absolute path).
            let (_t, base) = support::tempdir();
            let dir = base.join("proj");
            std::fs::create_dir_all(&dir).unwrap();
            if remote {
                support::git(&dir, &["init", "-q", "-b", "trunk"]);
                support::git(
                    &dir,
                    &[
                        "remote",
                        "add",
                        "origin",
                        "https://example.com/org/proj.git",
                    ],
                );
            }
            for who in ["prefect", "hoist"] {
                for f in ["prefect.yaml", ".prefectignore"] {
                    let _ = std::fs::remove_file(dir.join(f));
                }
                let out = if who == "prefect" {
                    Command::new(&python)
                        .args(["-m", "prefect", "--no-prompt", "init", "--recipe", r.name])
                        .args(&fields)
                        .current_dir(&dir)
                        .env("PREFECT_HOME", &home)
                        .output()
                        .unwrap()
                } else {
                    hoist(&dir)
                        .args(["init", "--recipe", r.name])
                        .args(&fields)
                        .current_dir(&dir)
                        .output()
                        .unwrap()
                };
                assert!(
                    out.status.success(),
                    "{who} init {}: {}",
                    r.name,
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = std::fs::read_to_string(dir.join("prefect.yaml")).unwrap();
                let mut v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
                assert!(dir.join(".prefectignore").exists());
                v["prefect-version"] = json!("<version>");
                made.push((v, ()));
            }
            let (mut prefect, hoisted) = (made[0].0.clone(), made[1].0.clone());
            // Where Hoist's recipe differs on purpose.
            if r.name == "gcs" {
                prefect["pull"][0]["prefect_gcp.deployments.steps.pull_from_gcs"]["folder"] =
                    json!("{{ push_code.folder }}");
            }
            if r.name.ends_with("azure") {
                let creds =
                    json!("{{ prefect.blocks.azure-blob-storage-credentials.azure-credentials }}");
                let n = prefect["push"].as_array().unwrap().len();
                prefect["push"][n - 1]["prefect_azure.deployments.steps.push_to_azure_blob_storage"]
                    ["credentials"] = creds.clone();
                prefect["pull"][0]["prefect_azure.deployments.steps.pull_from_azure_blob_storage"]
                    ["credentials"] = creds;
            }
            assert_eq!(
                hoisted, prefect,
                "recipe {} (git remote: {remote}): hoist (left), prefect (right)",
                r.name
            );
        }
    }

    // Inference, never overwriting, errors.
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(dir.join("prefect.yaml"), "mine: true\n").unwrap();
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "init",
        "--field",
        "image_name=x",
        "--field",
        "tag=1",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("recipe: docker")
            || out.contains("prefect.yaml")
            || out.contains(".prefectignore"),
        "{out}{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("prefect.yaml")).unwrap(),
        "mine: true\n"
    );
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["init", "--recipe", "nope"]));
    assert_ne!(code, 0);
    assert!(err.contains("Unknown recipe 'nope'"), "{err}");
    let (_t2, dir2) = support::tempdir();
    let (code, _, err) = run(hoist(&dir2)
        .current_dir(&dir2)
        .args(["project", "init", "--recipe", "s3"]));
    assert_ne!(code, 0);
    assert!(err.contains("--field bucket="), "{err}");
    assert!(!dir2.join("prefect.yaml").exists());
}

/// A smaller set against a server on PostgreSQL that requires an auth string
/// (`PREFECT_SERVER_API_AUTH_STRING`): a wrong one is one line naming the settings to
/// check, never the string; the right one (`PREFECT_API_AUTH_STRING`) reads variables
/// and deploys.
#[tokio::test(flavor = "multi_thread")]
async fn a_prefect_server_on_postgresql_with_an_auth_string() {
    if prefect_python().is_none() {
        return;
    }
    let Some(pg) = crate::stores::Postgres::start() else {
        return;
    };
    let db = pg.url.replace("postgres://", "postgresql+asyncpg://");
    let auth = "admin:s3cret-auth-string";
    let s = &start_with(
        &[("PREFECT_API_DATABASE_CONNECTION_URL", db.as_str())],
        Some(auth),
    )
    .unwrap();
    let client = PrefectClient::new(&s.url, None, 5)
        .unwrap()
        .with_auth_string(auth);
    let (status, v) = client
        .request(
            Method::POST,
            "/variables/",
            Some(&json!({"name": "region", "value": "eu-pg"})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{v}");
    let (status, p) = client
        .request(
            Method::POST,
            "/work_pools/",
            Some(&json!({"name": "pg-pool", "type": "process"})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{p}");

    let (_t, dir) = support::tempdir();
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/f.py"),
        "from prefect import flow\n\n@flow\ndef f(x: int = 1):\n    pass\n",
    )
    .unwrap();
    support::write_project(
        &dir,
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo region={{ prefect.variables.region }}\n    stream_output: true\ndeployments:\n- name: pg-dep\n  entrypoint: flows/f.py:f\n  work_pool: {name: pg-pool}\n",
    );
    let wrong = "admin:not-the-string";
    let (code, out, err) = run(hoist_at(&dir, s)
        .env("PREFECT_API_AUTH_STRING", wrong)
        .arg("pull"));
    assert_ne!(code, 0);
    assert!(
        err.contains("refused the credentials") && err.contains("PREFECT_API_AUTH_STRING"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-string") && !out.contains("not-the-string"),
        "{err}"
    );

    let (code, _, err) = run(hoist_at(&dir, s)
        .env("PREFECT_API_AUTH_STRING", auth)
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("region=eu-pg"), "{err}");
    let (code, _, err) = run(hoist_at(&dir, s)
        .env("PREFECT_API_AUTH_STRING", auth)
        .arg("deploy"));
    assert_eq!(code, 0, "{err}");
    let (status, d) = client
        .request(Method::GET, "/deployments/name/f/pg-dep", None)
        .await
        .unwrap();
    assert!(status.is_success(), "{d}");
    assert_eq!(
        d["parameter_openapi_schema"]["properties"]["x"]["type"],
        "integer"
    );
}

/// Requests to the Prefect server go through `HTTP_PROXY`/`HTTPS_PROXY` (a real
/// tinyproxy on loopback, which logs what it forwards), except to hosts `NO_PROXY`
/// names. Needs Debian's `tinyproxy` (`.ci/run` installs it).
#[tokio::test(flavor = "multi_thread")]
async fn the_prefect_client_goes_through_the_proxy_unless_no_proxy() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let var = format!("proxied_{}", std::process::id());
    client
        .request(
            Method::POST,
            "/variables/",
            Some(&json!({"name": var, "value": "through-the-proxy"})),
        )
        .await
        .unwrap();
    let (_t, dir) = support::tempdir();
    let Some((_proxy, proxy, log)) = support::tinyproxy(&dir, "") else {
        return;
    };
    support::write_project(
        &dir,
        format!(
            "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo v={{{{ prefect.variables.{var} }}}}\n    stream_output: true\n"
        ),
    );
    let (code, _, err) = run(hoist_at(&dir, s)
        .env("HTTP_PROXY", &proxy)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("v=through-the-proxy"), "{err}");
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.contains(&format!("/variables/name/{var}")),
        "the proxy saw nothing: {seen}"
    );

    let before = seen.matches("/variables/name/").count();
    let (code, _, err) = run(hoist_at(&dir, s)
        .env("HTTP_PROXY", &proxy)
        .env("NO_PROXY", "127.0.0.1")
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("v=through-the-proxy"), "{err}");
    let after = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("/variables/name/")
        .count();
    assert_eq!(before, after, "NO_PROXY was not honoured");
}

/// `SSL_CERT_FILE` adds a private CA: a server whose certificate it signed is trusted,
/// and without it the error says what to set. The server is a stand-in (a Python TLS
/// server answering the one variable request), not Prefect: the test is about TLS.
#[test]
fn fake_prefect_api_over_tls_is_trusted_through_ssl_cert_file() {
    let (_t, dir) = support::tempdir();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=hoist test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let port = support::free_port();
    std::fs::write(
        dir.join("srv.py"),
        format!(
            r#"import http.server, ssl, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"name": "x", "value": "over-tls"}}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", {port}), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("srv.pem", "srv.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#
        ),
    )
    .unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("srv.py").current_dir(&dir);
    let _server = support::Server::start(cmd, port, "python3 TLS server");
    support::write_project(
        &dir,
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo v={{ prefect.variables.x }}\n    stream_output: true\n",
    );
    let url = format!("https://localhost:{port}/api");
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", &url)
        .env_remove("SSL_CERT_FILE")
        .env("SSL_CERT_DIR", dir.join("no-such-dir"))
        .arg("pull"));
    assert_ne!(code, 0);
    assert!(
        err.contains("does not trust") && err.contains("SSL_CERT_FILE"),
        "{err}"
    );
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", &url)
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("v=over-tls"), "{err}");
}

/// A work pool as a stand-in answers it.
const POOL: &str =
    r#"{"id": "00000000-0000-0000-0000-000000000001", "name": "some-pool", "type": "process"}"#;

/// The credentials of the hostile tests below: distinctive, so any echo is found.
const HOSTILE_KEY: &str = "pnu_hostile-test-key-7c31e9";
const HOSTILE_AUTH: &str = "admin:hostile-auth-pw-52d8";

/// Every way the test credentials could show: as given, the auth string's password,
/// and the base64 of the basic-auth header.
fn credential_spellings() -> Vec<String> {
    vec![
        HOSTILE_KEY.to_string(),
        HOSTILE_AUTH.to_string(),
        "hostile-auth-pw-52d8".to_string(),
        hoist_policy::encoding::base64(HOSTILE_AUTH.as_bytes()),
    ]
}

/// A project whose pull needs a variable from the server, and whose deployment
/// `hostile-dep` `hoist deploy` registers (a flow file beside it).
fn hostile_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/f.py"),
        "from prefect import flow\n\n@flow\ndef f(x: int = 1):\n    pass\n",
    )
    .unwrap();
    support::write_project(
        dir,
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo v={{ prefect.variables.x }}\ndeployments:\n- name: hostile-dep\n  entrypoint: flows/f.py:f\n  work_pool: {name: some-pool}\n",
    );
}

/// `hoist <args>` in `dir` against the API at `url`, with `PREFECT_API_KEY` or
/// `PREFECT_API_AUTH_STRING` (per `basic`) set to the test credentials; returns (exit
/// code, stdout + stderr), after asserting no spelling of the credentials is in either
/// or in any file under `stored` (what the run wrote: Hoist's home, the project).
fn hoist_with_credentials(
    dir: &Path,
    stored: &Path,
    url: &str,
    basic: bool,
    args: &[&str],
) -> (i32, String) {
    let mut cmd = hoist(dir);
    cmd.current_dir(dir)
        .env("PREFECT_API_URL", url)
        .env("PREFECT_CLIENT_MAX_RETRIES", "0")
        .env_remove("PREFECT_API_KEY")
        .env_remove("PREFECT_API_AUTH_STRING");
    if basic {
        cmd.env("PREFECT_API_AUTH_STRING", HOSTILE_AUTH);
    } else {
        cmd.env("PREFECT_API_KEY", HOSTILE_KEY);
    }
    let (code, out, err) = run(cmd.args(args));
    let all = format!("{out}\n{err}");
    for s in credential_spellings() {
        assert!(!all.contains(&s), "`hoist {args:?}` printed {s}:\n{all}");
        let files = support::files_containing(&[stored], &s);
        assert!(files.is_empty(), "`hoist {args:?}` stored {s} in {files:?}");
    }
    (code, all)
}

/// The attack: whoever answers at PREFECT_API_URL redirects (302, and 307, which
/// re-sends a POST's body) to another origin — a second loopback listener standing for
/// a server the attacker holds — hoping the client follows with `Authorization: Bearer
/// <PREFECT_API_KEY>` or `Basic <PREFECT_API_AUTH_STRING>`. Closed: the real `hoist`
/// never follows a redirect to another origin (so the other listener records no request
/// at all, let alone a credential), and says where it pointed and what to set. Both
/// servers are stand-ins: a real Prefect server does not redirect.
#[test]
fn a_redirect_to_another_origin_never_carries_the_credentials() {
    let (elsewhere, seen_elsewhere) =
        support::stand_in(|_, s| support::answer(s, "200 OK", "", r#"{"value": "taken"}"#));
    let target = elsewhere.clone();
    let (home, seen_home) = support::stand_in(move |head, s| {
        let path = head.split(' ').nth(1).unwrap_or("/");
        if head.starts_with("GET /api/work_pools/") {
            // The pool exists, so `hoist deploy` goes on to POST its flow.
            return support::answer(s, "200 OK", "", POOL);
        }
        let status = if head.starts_with("GET ") {
            "302 Found"
        } else {
            "307 Temporary Redirect"
        };
        support::answer(s, status, &format!("location: {target}{path}\r\n"), "");
    });
    let (t, dir) = support::tempdir();
    hostile_project(&dir);
    let url = format!("{home}/api");
    for basic in [false, true] {
        for args in [&["pull"][..], &["deploy", "--all"][..]] {
            let (code, all) = hoist_with_credentials(&dir, t.path(), &url, basic, args);
            assert_ne!(code, 0, "{all}");
            assert!(
                all.contains("redirected") && all.contains(&elsewhere),
                "{all}"
            );
            assert!(
                all.contains("does not follow") && all.contains("PREFECT_API_URL"),
                "{all}"
            );
        }
    }
    let heads = seen_home.lock().unwrap().clone();
    assert!(
        heads.iter().any(|h| h.starts_with("POST ")) && heads.iter().any(|h| h.starts_with("GET ")),
        "both a GET and a POST were redirected: {heads:?}"
    );
    // Not vacuous: the credentials did go to the origin they were meant for.
    assert!(heads.iter().any(|h| h.contains(HOSTILE_KEY)), "{heads:?}");
    let elsewhere_saw = seen_elsewhere.lock().unwrap().clone();
    assert!(
        elsewhere_saw.is_empty(),
        "the other origin was reached: {elsewhere_saw:?}"
    );
}

/// The attack: the server answers errors (500 to a read, 422 to a deploy, 401 and 403,
/// and a success without the flow id `hoist deploy` then quotes) whose bodies echo the
/// request's headers — the key, the basic-auth header — and carry
/// terminal escape sequences, so `hoist` would print them, or store them in a record.
/// Also: the key must not show when nothing answers, nor when PREFECT_API_URL carries
/// `user:password@`. Closed: the real `hoist`'s stdout, stderr and every file it wrote
/// hold no spelling of the credentials and no raw escape character. The server is a
/// stand-in (a real Prefect server does not echo headers).
#[test]
fn error_text_never_carries_the_credentials() {
    // `by-method`: 500 to a read, 422 to a write, and a 200 without the id asked for
    // (which `hoist deploy` quotes) to `POST /flows/`; else every answer has `status`.
    let echo = |status: &'static str| {
        support::stand_in(move |head, s| {
            let detail = format!("you sent: {head}\u{1b}]0;pwned\u{7}\u{1b}[2J");
            let body = json!({"detail": detail}).to_string();
            let status = match status {
                "by-method" if head.starts_with("GET /api/work_pools/") => {
                    return support::answer(s, "200 OK", "", POOL);
                }
                "by-method" if head.starts_with("POST /api/flows/") && head.contains("Basic") => {
                    return support::answer(s, "200 OK", "", &body);
                }
                "by-method" if head.starts_with("GET ") => "500 Internal Server Error",
                "by-method" => "422 Unprocessable Entity",
                other => other,
            };
            support::answer(s, status, "", &body);
        })
    };
    let (t, dir) = support::tempdir();
    hostile_project(&dir);
    let (server, heads) = echo("by-method");
    let url = format!("{server}/api");
    for basic in [false, true] {
        let (code, all) = hoist_with_credentials(&dir, t.path(), &url, basic, &["pull"]);
        assert_ne!(code, 0, "{all}");
        assert!(
            all.contains("answered 500") && all.contains("you sent: GET /api/variables/name/x"),
            "{all}"
        );
        assert!(all.contains("********"), "{all}");
        assert!(
            !all.contains('\u{1b}'),
            "a raw escape reached the terminal: {all:?}"
        );
        let (code, all) = hoist_with_credentials(&dir, t.path(), &url, basic, &["deploy", "--all"]);
        assert_ne!(code, 0, "{all}");
        let want = if basic {
            "answered no flow id"
        } else {
            "answered 422 to POST /flows/"
        };
        assert!(
            all.contains(want) && all.contains("you sent: POST /api/flows/"),
            "{all}"
        );
        assert!(
            !all.contains('\u{1b}'),
            "a raw escape reached the terminal: {all:?}"
        );
    }
    // Not vacuous: the stand-in was sent (and echoed) the credentials.
    let heads = heads.lock().unwrap().clone();
    assert!(heads.iter().any(|h| h.contains(HOSTILE_KEY)), "{heads:?}");
    let basic = hoist_policy::encoding::base64(HOSTILE_AUTH.as_bytes());
    assert!(heads.iter().any(|h| h.contains(&basic)), "{heads:?}");

    for status in ["401 Unauthorized", "403 Forbidden"] {
        let (server, _) = echo(status);
        let url = format!("{server}/api");
        for basic in [false, true] {
            let (code, all) = hoist_with_credentials(&dir, t.path(), &url, basic, &["pull"]);
            assert_ne!(code, 0, "{all}");
            assert!(all.contains("refused the credentials"), "{all}");
        }
    }

    // Nothing answers: the URL, never the key.
    let down = format!("http://127.0.0.1:{}/api", support::free_port());
    let (code, all) = hoist_with_credentials(&dir, t.path(), &down, false, &["pull"]);
    assert_ne!(code, 0);
    assert!(all.contains("cannot reach") && all.contains(&down), "{all}");
    // Credentials in the URL: refused, shown masked (also when nothing answers there).
    let port = support::free_port();
    let in_url = format!("http://admin:hostile-auth-pw-52d8@127.0.0.1:{port}/api");
    for args in [&["pull"][..], &["deploy", "--all"][..]] {
        let (code, all) = hoist_with_credentials(&dir, t.path(), &in_url, false, args);
        assert_ne!(code, 0);
        assert!(
            all.contains(&format!("http://********@127.0.0.1:{port}/api"))
                && all.contains("PREFECT_API_AUTH_STRING"),
            "{all}"
        );
    }
}

/// Create a secret block document whose `value` is any JSON (Prefect's `Secret[dict]`
/// stores mappings as they are), through the real server's API.
async fn secret_block_of(client: &PrefectClient, name: &str, value: Value) {
    let (_, bt) = client
        .request(Method::GET, "/block_types/slug/secret", None)
        .await
        .unwrap();
    let type_id = bt["id"].as_str().unwrap().to_string();
    let (_, schemas) = client
        .request(
            Method::POST,
            "/block_schemas/filter",
            Some(&json!({"block_schemas": {"block_type_id": {"any_": [type_id]}}})),
        )
        .await
        .unwrap();
    let schema_id = schemas[0]["id"].as_str().unwrap();
    let (status, doc) = client
        .request(
            Method::POST,
            "/block_documents/",
            Some(&json!({"name": name, "data": {"value": value}, "block_schema_id": schema_id, "block_type_id": type_id})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{doc}");
}

/// The attack, against a real Prefect server: secret blocks whose values are built to
/// slip past masking or take over the terminal — a string of OSC/CSI escape sequences
/// (retitle the terminal, clear the screen), and a mapping (`Secret[dict]`) whose
/// leaves are a string with quotes and escapes and a number, substituted inline by
/// `{{ prefect.blocks.secret.x.db.port }}` — and a (non-secret) variable full of escape
/// sequences; and a secret put in an input of the wrong type, so the error quotes it
/// escaped. Closed: in `hoist pull` (the step echoes them), `hoist step run`, and
/// `hoist plan` (text and JSON), no secret appears in any spelling (raw, sanitised,
/// JSON- or debug-escaped, as digits) and no raw escape character reaches the output.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_secret_blocks_from_a_real_server_stay_masked() {
    let Some(s) = server() else { return };
    let client = PrefectClient::new(&s.url, None, 5).unwrap();
    let n = std::process::id();
    let esc = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mesc-secret-4711\u{1b}[0m";
    secret_block_of(&client, &format!("esc-{n}"), json!(esc)).await;
    let nested = json!({"db": {"password": "ne\"st\u{1b}[1med-pw-98765", "port": 54329871}});
    secret_block_of(&client, &format!("nested-{n}"), nested).await;
    let var = format!("esc_var_{n}");
    let (status, v) = client
        .request(
            Method::POST,
            "/variables/",
            Some(&json!({"name": var, "value": "var-\u{1b}]0;retitled\u{7}-\u{1b}[2Jvalue"})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{v}");

    let (_t, dir) = support::tempdir();
    let script = format!(
        "echo 'a={{{{ prefect.blocks.secret.esc-{n} }}}} b={{{{ prefect.blocks.secret.nested-{n}.db.password }}}} c={{{{ prefect.blocks.secret.nested-{n}.db.port }}}} v={{{{ prefect.variables.{var} }}}}'"
    );
    let yaml = format!(
        "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: {}\n    stream_output: true\n",
        serde_json::to_string(&script).unwrap()
    );
    support::write_project(&dir, &yaml);
    let leaks = [
        "esc-secret-4711",
        "med-pw-98765",
        "54329871",
        "pwned",
        "ne\"st",
        "ne\\\"st",
    ];
    let check = |what: &str, out: &str, err: &str| {
        let all = format!("{out}\n{err}");
        for l in leaks {
            assert!(!all.contains(l), "{what}: the secret leaked ({l}):\n{all}");
        }
        assert!(
            !all.contains('\u{1b}') && !all.contains('\u{7}'),
            "{what}: a raw escape reached the output: {all:?}"
        );
    };
    let (code, out, err) = run(hoist_at(&dir, s).arg("pull"));
    assert_eq!(code, 0, "{err}");
    check("pull", &out, &err);
    assert!(
        err.contains("a=******** b=******** c=******** v=var-"),
        "{err}"
    );
    // Not vacuous: the variable (not secret) is shown, its escapes spelled out.
    assert!(
        err.contains("var-\\u{1b}]0;retitled\\u{7}-\\u{1b}[2Jvalue"),
        "{err}"
    );

    let (code, out, err) = run(hoist_at(&dir, s).args([
        "step",
        "run",
        "run_shell_script",
        "-i",
        &format!("script={script}"),
    ]));
    assert_eq!(code, 0, "{err}");
    check("step run", &out, &err);
    assert!(out.contains("a=******** b=******** c=********"), "{out}");
    for format in ["text", "json"] {
        let (code, out, err) = run(hoist_at(&dir, s).args(["plan", "--output", format]));
        assert_eq!(code, 0, "{err}");
        check(&format!("plan --output {format}"), &out, &err);
        assert!(out.contains("c=********"), "{out}");
    }

    // A secret in an input of the wrong type: the error quotes the value (Rust's `{:?}`,
    // its quote and escapes spelled out), masked all the same.
    for block in [format!("esc-{n}"), format!("nested-{n}.db.password")] {
        support::write_project(
            &dir,
            format!(
                "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo hi\n    stream_output: \"{{{{ prefect.blocks.secret.{block} }}}}\"\n"
            ),
        );
        let (code, out, err) = run(hoist_at(&dir, s).arg("pull"));
        assert_ne!(code, 0, "{err}");
        check(&format!("pull, {block} as a boolean"), &out, &err);
        assert!(
            err.contains("expected a boolean, got string \"********\""),
            "{err}"
        );
        let (code, out, err) = run(hoist_at(&dir, s).arg("plan"));
        assert_ne!(code, 0, "{err}");
        check(&format!("plan, {block} as a boolean"), &out, &err);
    }
}

/// The attack: a server answers a block read with a 100 MiB `Content-Length` it never
/// sends (to make the client allocate or wait), with 100 MiB actually streamed, or with
/// JSON nested 100 000 deep (to overflow a recursive reader). Closed: the real `hoist`
/// refuses each with one clear line naming the cap (16 MiB) or the parse failure, at
/// once for the claim, without crashing. The server is a stand-in (a real Prefect
/// server has no such block to give).
#[test]
fn a_huge_or_deep_block_answer_is_refused() {
    let (server, _) = support::stand_in(|head, s| {
        use std::io::Write;
        if head.contains("/name/claim") {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{{",
                100u64 << 20
            );
            std::thread::sleep(std::time::Duration::from_secs(20));
        } else if head.contains("/name/stream") {
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{{\"data\": {{\"value\": \""
            );
            let chunk = vec![b's'; 1 << 20];
            for _ in 0..100 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        } else {
            let deep = format!(
                "{{\"data\": {{\"value\": {}{}}}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            );
            support::answer(s, "200 OK", "", &deep);
        }
    });
    let (t, dir) = support::tempdir();
    for (block, want) in [
        (
            "claim",
            "a body of 104857600 bytes or more, over the 16 MiB Hoist reads",
        ),
        ("stream", "over the 16 MiB Hoist reads"),
        ("deep", "not JSON (recursion limit exceeded"),
    ] {
        support::write_project(
            &dir,
            format!(
                "pull:\n- prefect.deployments.steps.run_shell_script:\n    script: echo {{{{ prefect.blocks.secret.{block} }}}}\n"
            ),
        );
        let started = std::time::Instant::now();
        let (code, all) =
            hoist_with_credentials(&dir, t.path(), &format!("{server}/api"), false, &["pull"]);
        assert_ne!(code, 0, "{all}");
        assert!(all.contains(want), "{block}: {all}");
        assert_eq!(all.matches("error:").count(), 1, "{all}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{block}: took {:?}",
            started.elapsed()
        );
    }
}
