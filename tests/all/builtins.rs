//! The built-in steps against the conformance cases of `shared/spec`: C34
//! (set_working_directory) and C44–C46 (run_shell_script).

use std::path::Path;
use std::sync::Arc;

use hoist::runtime::{ErrorKind, StepRequest, StepRunError};
use serde_json::{Value, json};

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

#[tokio::test]
async fn c34_set_working_directory() {
    let (_t, dir) = support::tempdir();
    std::fs::create_dir(dir.join("subdir")).unwrap();
    let sub = dir.join("subdir").display().to_string();

    let (out, cwd) = builtin(
        "set_working_directory",
        &dir,
        json!({"directory": "subdir"}),
        support::recorder(),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"directory": sub}));
    assert_eq!(cwd.display().to_string(), sub);

    let (out, _) = builtin(
        "set_working_directory",
        &dir,
        json!({"directory": sub}),
        support::recorder(),
    )
    .await
    .unwrap();
    assert_eq!(out["directory"], sub);

    let err = builtin(
        "set_working_directory",
        &dir,
        json!({"directory": "missing"}),
        support::recorder(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NotFound(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("directory `missing` does not exist"),
        "{err}"
    );

    let err = builtin(
        "set_working_directory",
        &dir,
        json!({}),
        support::recorder(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("has invalid input: missing field `directory`"),
        "{err}"
    );
}

#[tokio::test]
async fn c44_basics() {
    let (_t, dir) = support::tempdir();
    let log = support::recorder();
    let (out, _) = builtin(
        "run_shell_script",
        &dir,
        json!({"script": "echo Hello World"}),
        log.clone(),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"stdout": "Hello World", "stderr": ""}));
    assert_eq!(
        log.lines(),
        ["run_shell_script|Hello World"],
        "streamed live to the log"
    );

    let out = shell(
        &dir,
        json!({"script": "\n        echo First Line\n        echo Second Line\n        "}),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!({"stdout": "First Line\nSecond Line", "stderr": ""})
    );

    let out = shell(&dir, json!({"script": "bash -c '>&2 echo Error Message'"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"stdout": "", "stderr": "Error Message"}));

    let log = support::recorder();
    let (out, _) = builtin(
        "run_shell_script",
        &dir,
        json!({"script": "echo quiet", "stream_output": false}),
        log.clone(),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "quiet");
    assert!(log.lines().is_empty(), "{:?}", log.lines());

    let parent = dir.parent().unwrap().display().to_string();
    let out = shell(
        &dir,
        json!({"script": "pwd", "directory": parent, "stream_output": false}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], parent);
}

#[tokio::test]
async fn c45_environment() {
    let (_t, dir) = support::tempdir();
    let env = json!({"TEST_ENV_VAR": "Test Value"});
    let out = shell(
        &dir,
        json!({"script": "bash -c 'echo $TEST_ENV_VAR'", "env": env}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "Test Value");
    let out = shell(&dir, json!({"script": "echo $TEST_ENV_VAR", "env": env}))
        .await
        .unwrap();
    assert_eq!(out["stdout"], "$TEST_ENV_VAR", "no shell, no expansion");
    let out = shell(&dir, json!({"script": "echo $TEST_ENV_VAR ${TEST_ENV_VAR} $$HOME $NOPE_NOT_SET", "env": env, "expand_env_vars": true}))
        .await
        .unwrap();
    assert_eq!(out["stdout"], "Test Value Test Value $HOME $NOPE_NOT_SET");
    // The whole host environment is visible to the script (it is the user's own code).
    let out = shell(
        &dir,
        json!({"script": "echo $PATH", "expand_env_vars": true}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], std::env::var("PATH").unwrap());

    let err = shell(&dir, json!({"script": "env", "env": {"N": 3}}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("input `env.N`"), "{err}");
}

#[tokio::test]
async fn c46_shell_mode_and_failures() {
    let (_t, dir) = support::tempdir();
    let out = shell(
        &dir,
        json!({"script": "echo hello world | tr '[:lower:]' '[:upper:]'", "shell": true}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "HELLO WORLD");
    let target = dir.join("output.txt");
    shell(
        &dir,
        json!({"script": format!("echo redirected > {}", target.display()), "shell": true}),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "redirected\n");
    let out = shell(
        &dir,
        json!({"script": "echo first && echo second", "shell": true}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "first\nsecond");
    let out = shell(&dir, json!({"script": "echo $MY_VAR | tr '[:lower:]' '[:upper:]'", "shell": true, "env": {"MY_VAR": "hello"}}))
        .await
        .unwrap();
    assert_eq!(out["stdout"], "HELLO");
    let out = shell(&dir, json!({"script": "\n echo first | tr '[:lower:]' '[:upper:]'\n echo second | tr '[:lower:]' '[:upper:]'\n", "shell": true}))
        .await
        .unwrap();
    assert_eq!(out["stdout"], "FIRST\nSECOND");

    let err = shell(&dir, json!({"script": "exit 1", "shell": true}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind,
            ErrorKind::Failed {
                exit_code: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("failed with error code 1"),
        "{err}"
    );

    let never = dir.join("never");
    let script = format!(
        "echo ok\nbash -c '>&2 echo bad; exit 3'\ntouch {}",
        never.display()
    );
    let err = shell(&dir, json!({"script": script})).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("`run_shell_script` failed with error code 3: bad"),
        "{err}"
    );
    assert!(!never.exists(), "lines after a failure must not run");

    let err = shell(&dir, json!({"script": "definitely-not-a-program-xyz"}))
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::NotFound(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("program `definitely-not-a-program-xyz` was not found"),
        "{err}"
    );

    let err = shell(&dir, json!({"script": "echo 'unbalanced"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unbalanced quotes"), "{err}");
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
