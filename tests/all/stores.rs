//! The variables-and-blocks store on both databases: SQLite (embedded, the default) and
//! a real PostgreSQL server started here from Debian's `postgresql` package.
//! `.ci/run` installs the package and sets `HOIST_REQUIRE_POSTGRES=1`, so in CI the
//! PostgreSQL half cannot be skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use hoist::store::Store;
use serde_json::json;

use crate::support::{self, hoist, run};

/// A PostgreSQL cluster in a temporary directory, stopped when dropped.
pub struct Postgres {
    pub url: String,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn as_postgres_user(bin: &Path, tool: &str) -> Command {
    // initdb refuses to run as root; run the server as `nobody` then.
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Postgres {
    pub fn start() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path().join("bin"))
                    .find(|b| b.join("pg_ctl").exists())
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("HOIST_REQUIRE_POSTGRES").is_none(),
                "HOIST_REQUIRE_POSTGRES is set but no PostgreSQL server is installed (apt-get install postgresql)"
            );
            support::skip("PostgreSQL is not installed: the PostgreSQL half of this test");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_postgres_user(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = support::free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.path().display()
        );
        let out = as_postgres_user(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-w", "-l"])
            .arg(dir.path().join("log"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            bin,
            data,
            _dir: dir,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres_user(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

async fn exercise(store: &Store) {
    store.set_variable("n", &json!(3)).await.unwrap();
    store
        .set_variable("cfg", &json!({"k": [1, "two"]}))
        .await
        .unwrap();
    store.set_variable("n", &json!(4)).await.unwrap();
    assert_eq!(store.variable("n").await.unwrap(), Some(json!(4)));
    assert_eq!(store.variable("missing").await.unwrap(), None);
    assert_eq!(
        store.list_variables().await.unwrap(),
        vec![
            ("cfg".into(), json!({"k": [1, "two"]})),
            ("n".into(), json!(4))
        ]
    );
    assert!(store.unset_variable("n").await.unwrap());
    assert!(!store.unset_variable("n").await.unwrap());

    let id = store
        .set_block("secret", "tok", &json!({"value": "s3cr3t"}), false)
        .await
        .unwrap();
    let again = store
        .set_block("secret", "tok", &json!({"value": "rotated"}), false)
        .await
        .unwrap();
    assert_eq!(id, again, "replacing a block keeps its id");
    let b = store.block("secret", "tok").await.unwrap().unwrap();
    assert!(b.secret, "secret-type blocks are secret");
    assert_eq!(b.data, json!({"value": "rotated"}));
    assert_eq!(store.block_by_id(&id).await.unwrap().unwrap().name, "tok");
    store
        .set_block("aws-credentials", "prod", &json!({"region": "eu"}), false)
        .await
        .unwrap();
    let all = store.list_blocks().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|b| format!("{}/{}", b.slug, b.name))
            .collect::<Vec<_>>(),
        ["aws-credentials/prod", "secret/tok"]
    );
    assert!(!all[0].secret);
    assert!(store.remove_block("aws-credentials", "prod").await.unwrap());
    assert!(
        store
            .block("aws-credentials", "prod")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn sqlite_store_round_trips() {
    let (_t, dir) = support::tempdir();
    let store = Store::open_sqlite(&dir.join("sub/hoist.db")).await.unwrap();
    exercise(&store).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("sub")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn postgres_store_round_trips_and_serves_a_pull() {
    let Some(pg) = Postgres::start() else { return };
    let store = Store::open(&pg.url).await.unwrap();
    exercise(&store).await;

    // The CLI and the runner on PostgreSQL, by URL.
    let (_t, dir) = support::tempdir();
    let (code, _, err) = run(hoist(&dir).env("HOIST_DATABASE_URL", &pg.url).args([
        "variable",
        "set",
        "greeting",
        "hi from postgres",
    ]));
    assert_eq!(code, 0, "{err}");
    std::fs::write(dir.join("prefect.yaml"), "pull:\n  - prefect.deployments.steps.run_shell_script:\n      script: \"echo {{ prefect.variables.greeting }} {{ prefect.blocks.secret.tok }}\"\n").unwrap();
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("HOIST_DATABASE_URL", &pg.url)
        .args(["pull", "--output=json"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"stdout\":\"hi from postgres ********\""),
        "{out}"
    );
    // The default SQLite store lives in the Hoist home: with a URL nothing is created
    // there (positive control: the same command without the URL creates it).
    let sqlite = support::home_of(&dir).join("hoist.db");
    assert!(
        !sqlite.exists(),
        "nothing written to SQLite when a URL is given ({})",
        sqlite.display()
    );
    let (code, _, err) =
        run(hoist(&dir)
            .current_dir(&dir)
            .args(["variable", "set", "greeting", "hi from sqlite"]));
    assert_eq!(code, 0, "{err}");
    assert!(sqlite.exists(), "the default store is {}", sqlite.display());

    // A bad URL names the database without its password.
    let (code, _, err) = run(hoist(&dir)
        .env("HOIST_DATABASE_URL", "postgres://me:hunter2@127.0.0.1:1/x")
        .args(["variable", "ls"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("postgres://me:********@127.0.0.1:1/x") && !err.contains("hunter2"),
        "{err}"
    );
}
