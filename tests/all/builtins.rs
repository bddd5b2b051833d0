//! The built-in steps against the conformance cases of `shared/spec`: C34
//! (set_working_directory) and C44–C46 (run_shell_script) as fixtures
//! (`tests/fixtures/steps/`), their side effects, secrets and C47 (pip) here.

use std::path::Path;
use std::sync::Arc;

use hoist::runtime::{ErrorKind, Runtime, StepRequest, StepRunError};
use serde_json::{Map, Value, json};

use crate::fixtures::walk;
use crate::support::{self, Recorder};

async fn builtin(
    name: &str,
    cwd: &Path,
    inputs: Value,
    log: Arc<Recorder>,
) -> Result<(Value, std::path::PathBuf), StepRunError> {
    let rt = support::runtime();
    let plugin = hoist::plan::load_builtin(&rt, name).await.unwrap();
    let req = StepRequest::new(name, cwd).inputs(inputs).log(log);
    rt.run(&plugin, req).await.map(|o| (o.outputs, o.cwd))
}

async fn shell(cwd: &Path, inputs: Value) -> Result<Value, StepRunError> {
    builtin("run_shell_script", cwd, inputs, support::recorder())
        .await
        .map(|(v, _)| v)
}

/// C34, C44–C46 as fixtures (`tests/fixtures/steps/`): a built-in step's inputs → its
/// outputs, working directory and log, or its error's kind and whole message.
#[test]
fn step_fixtures() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let rt = support::runtime();
    walk("steps", |c| tokio.block_on(step_case(&rt, c)));
}

async fn step_case(rt: &Runtime, c: &Map<String, Value>) -> Result<Value, String> {
    let (_t, dir) = support::tempdir();
    for d in c
        .get("dirs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        std::fs::create_dir(dir.join(d.as_str().unwrap())).unwrap();
    }
    let t = dir.display().to_string();
    let parent = dir.parent().unwrap().display().to_string();
    let path = std::env::var("PATH").unwrap();
    let fill = |s: &str| s.replace("<T>", &t).replace("<PARENT>", &parent);
    // The longest first: `<T>` lies inside `<PARENT>`.
    let unfill = |s: &str| {
        s.replace(&path, "<PATH>")
            .replace(&t, "<T>")
            .replace(&parent, "<PARENT>")
    };
    let step = c["step"].as_str().unwrap();
    let log = support::recorder();
    let plugin = hoist::plan::load_builtin(rt, step).await.unwrap();
    let req = StepRequest::new(step, &dir)
        .inputs(map_strings(&c["inputs"], &fill))
        .log(log.clone());
    match rt.run(&plugin, req).await {
        Ok(o) => {
            let mut m = Map::new();
            m.insert("outputs".into(), map_strings(&o.outputs, &unfill));
            m.insert("cwd".into(), unfill(&o.cwd.display().to_string()).into());
            if c.get("log") == Some(&Value::Bool(true)) {
                m.insert("log".into(), json!(log.lines()));
            }
            Ok(Value::Object(m))
        }
        Err(e) => Err(unfill(&format!("{}: {e}", e.kind.code()))),
    }
}

/// `v` with `f` applied to every string in it.
fn map_strings(v: &Value, f: &dyn Fn(&str) -> String) -> Value {
    match v {
        Value::String(s) => Value::String(f(s)),
        Value::Array(a) => Value::Array(a.iter().map(|x| map_strings(x, f)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), map_strings(x, f)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// C46's side effects, which a fixture cannot show: a shell redirect writes its file,
/// and the lines after a failing one never run.
#[tokio::test]
async fn c46_side_effects() {
    let (_t, dir) = support::tempdir();
    let target = dir.join("output.txt");
    shell(
        &dir,
        json!({"script": format!("echo redirected > {}", target.display()), "shell": true}),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "redirected\n");

    let never = dir.join("never");
    let script = format!(
        "echo ok\nbash -c '>&2 echo bad; exit 3'\ntouch {}",
        never.display()
    );
    let err = shell(&dir, json!({"script": script})).await.unwrap_err();
    assert!(
        matches!(
            err.kind,
            ErrorKind::Failed {
                exit_code: Some(3),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!never.exists(), "lines after a failure must not run");
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    let (_t, dir) = support::tempdir();
    let rt = support::runtime();
    let plugin = hoist::plan::load_builtin(&rt, "run_shell_script")
        .await
        .unwrap();
    let log = support::recorder();
    let secret = "hunter2-SUPER-SECRET";
    let mut req = StepRequest::new("leaky", &dir)
        .inputs(json!({"script": format!("echo token={secret}\nbash -c '>&2 echo denied for {secret}; exit 4'")}))
        .log(log.clone());
    req.secrets = vec![secret.to_string()];
    let err = rt.run(&plugin, req).await.unwrap_err();
    let all = format!("{err} {:?} {:?}", err, log.lines());
    assert!(!all.contains(secret), "{all}");
    assert!(
        log.lines().contains(&"leaky|token=********".to_string()),
        "{:?}",
        log.lines()
    );
    assert!(err.to_string().contains("denied for ********"), "{err}");
}

/// C47: pip_install_requirements installs a local wheel (`--no-index --find-links`) into
/// the Python named by HOIST_PYTHON, and a failing requirement gives the exit code and
/// pip's stderr.
#[test]
fn c47_pip_install_requirements() {
    use crate::support::{hoist, run};
    let (_t, dir) = support::tempdir();
    let python = support::venv(&dir);
    // A minimal wheel, built by hand: a package and its dist-info.
    let wheels = dir.join("wheels");
    std::fs::create_dir(&wheels).unwrap();
    let make_wheel = r#"
import sys, zipfile, hashlib, base64
path = sys.argv[1] + "/hoistdemo-0.1-py3-none-any.whl"
files = {
    "hoistdemo/__init__.py": "GREETING = 'installed by hoist'\n",
    "hoistdemo-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: hoistdemo\nVersion: 0.1\n",
    "hoistdemo-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("hoistdemo-0.1.dist-info/RECORD,,")
    z.writestr("hoistdemo-0.1.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let ok = std::process::Command::new("python3")
        .args(["-c", make_wheel])
        .arg(&wheels)
        .status()
        .unwrap();
    assert!(ok.success());
    let project = dir.join("proj");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("requirements.txt"),
        format!(
            "--no-index\n--find-links {}\nhoistdemo==0.1\n",
            wheels.display()
        ),
    )
    .unwrap();
    std::fs::write(
        project.join("prefect.yaml"),
        "pull:\n  - prefect.deployments.steps.pip_install_requirements:\n      id: pip-install-step\n      stream_output: false\n",
    )
    .unwrap();
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&project)
        .env("HOIST_PYTHON", &python)
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["pip-install-step"]["stdout"]
            .as_str()
            .unwrap()
            .contains("Successfully installed hoistdemo-0.1"),
        "{v}"
    );
    let check = std::process::Command::new(&python)
        .args(["-c", "import hoistdemo; print(hoistdemo.GREETING)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "installed by hoist"
    );

    std::fs::write(
        project.join("prefect.yaml"),
        "pull:\n  - prefect.deployments.steps.pip_install_requirements:\n      requirements_file: doesnt-exist.txt\n",
    )
    .unwrap();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&project)
        .env("HOIST_PYTHON", &python)
        .arg("pull"));
    assert_eq!(code, 1);
    assert!(
        err.contains("pip_install_requirements failed with error code 1: ERROR: Could not open requirements file: [Errno 2] No such file or directory: 'doesnt-exist.txt'"),
        "{err}"
    );
}
