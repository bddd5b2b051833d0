//! Blocks and variables from a real Prefect server (`prefect server start` on loopback,
//! SQLite in a temporary `PREFECT_HOME`), started once per test binary and stopped by a
//! watchdog when it exits. Needs a Python with Prefect 3.9 (`$HOIST_TEST_PREFECT_PYTHON`,
//! which `.ci/run` makes in a venv); without one these tests say so and pass, unless
//! `HOIST_REQUIRE_PREFECT` is set (as `.ci/run` sets it).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use hoist::prefect::{Method, PrefectClient};
use serde_json::json;

use crate::support::{self, hoist, run};

/// The shared server.
pub struct Server {
    /// `http://127.0.0.1:<port>/api`.
    pub url: String,
    _home: PathBuf,
}

fn start() -> Option<Server> {
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
        eprintln!(
            "skipped: no Prefect here (set HOIST_TEST_PREFECT_PYTHON to a Python with prefect 3.9)"
        );
        return None;
    };
    let home = std::env::temp_dir().join(format!("hoist-prefect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let port = support::free_port();
    let script = format!(
        "PREFECT_HOME={h} PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_SERVER_UI_ENABLED=false \
         {python} -m prefect server start --host 127.0.0.1 --port {port} > {h}/server.log 2>&1 & child=$!; \
         while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill $child; sleep 2; kill -9 $child 2>/dev/null; rm -rf {h}",
        h = home.display(),
        me = std::process::id(),
    );
    let started = Command::new("setsid")
        .args(["-f", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(started.success());
    let url = format!("http://127.0.0.1:{port}/api");
    // Allow a minute and a half: 10–25 s on two busy cores.
    for _ in 0..900 {
        let ok = Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", &format!("{url}/health")])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Server { url, _home: home });
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(home.join("server.log")).unwrap_or_default();
    panic!("prefect server did not answer at {url} within 90 s:\n{log}");
}

/// The shared server, started on first use; `None` where Prefect is not installed.
pub fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Option<Server>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref()
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
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", &s.url)
        .arg("pull"));
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

    // `plan` resolves them from the server too, masked.
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", &s.url)
        .arg("plan"));
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
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("PREFECT_API_URL", &s.url)
        .arg("pull"));
    assert_ne!(code, 0);
    assert!(err.contains("no-such-block"), "{err}");
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
