//! Steps written in Python (`sdk/python`, built with componentize-py by `hoist plugin
//! build`), run by the real binary in the same sandbox as Rust steps: the test step
//! `tests/plugins/python/app.py` (`py_probe`) and the scaffold of `hoist plugin new
//! --lang python`.
//!
//! componentize-py comes from `$HOIST_COMPONENTIZE_PY` or PATH (`.ci/run` installs it
//! in a venv); without it these tests say so and pass, unless
//! `HOIST_REQUIRE_PYTHON_SDK=1` (as CI sets it) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::support::{self, run, tempdir};

/// componentize-py, or `None` (skip) when it is missing and not required.
fn componentize_py() -> Option<PathBuf> {
    let found = std::env::var_os("HOIST_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("componentize-py"))
                .find(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var("HOIST_REQUIRE_PYTHON_SDK").as_deref() != Ok("1"),
            "HOIST_REQUIRE_PYTHON_SDK=1 but componentize-py is missing: \
             pip install componentize-py==0.25.1, or set HOIST_COMPONENTIZE_PY"
        );
        support::skip("componentize-py is not installed (HOIST_COMPONENTIZE_PY)");
    }
    found
}

/// `hoist` for `dir` whose Hoist home holds the key every Python test shares, so the
/// shared test cache compiles `py_probe` once (seconds) rather than once per test.
fn hoist(dir: &Path) -> Command {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = vec![0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut k)
            .unwrap();
        k
    });
    let home = support::home_of(dir);
    std::fs::create_dir_all(&home).unwrap();
    let key_file = home.join("cache.key");
    if !key_file.exists() {
        std::fs::write(&key_file, key).unwrap();
        let mut perms = std::fs::metadata(&key_file).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&key_file, perms).unwrap();
    }
    support::hoist(dir)
}

/// `py_probe.wasm`, built once per test run by `hoist plugin build` from a copy of
/// `tests/plugins/python` (the build leaves `__pycache__` beside the source).
fn py_probe() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    let tool = componentize_py()?;
    BUILT
        .get_or_init(|| {
            let (t, dir) = tempdir();
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/plugins/python");
            std::fs::copy(src.join("app.py"), dir.join("app.py")).unwrap();
            let out = dir.join("py_probe.wasm");
            let (code, _, err) = run(hoist(&dir)
                .args(["plugin", "build"])
                .arg(&dir)
                .arg("-o")
                .arg(&out)
                .arg("--componentize-py")
                .arg(&tool));
            assert_eq!(code, 0, "{err}");
            assert!(err.contains("built "), "{err}");
            Some((t, out))
        })
        .as_ref()
        .map(|(_, p)| p.as_path())
}

/// `hoist step run py_probe.wasm` in `dir` with `inputs` (JSON) and `args`.
fn probe(dir: &Path, inputs: Value, args: &[&str]) -> Option<(i32, String, String)> {
    let wasm = py_probe()?;
    Some(run(hoist(dir)
        .current_dir(dir)
        .args(["step", "run"])
        .arg(wasm)
        .arg("--inputs-json")
        .arg(inputs.to_string())
        .args(args)))
}

/// Inputs of every type round-trip: nested dataclasses, optional, list, dict, literal,
/// defaults filled in, an integer taken for a float.
#[test]
fn inputs_and_outputs_round_trip_with_nested_types() {
    let (_t, dir) = tempdir();
    let inputs = json!({
        "message": "hi",
        "count": 3,
        "ratio": 2,
        "items": ["a", "b"],
        "env": {"K": "v"},
        "nested": {"label": "L", "tags": ["t"], "target": {"host": "h", "port": 8}},
    });
    let Some((code, out, err)) = probe(&dir, inputs, &["--quiet"]) else {
        return;
    };
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out["inputs"],
        json!({
            "action": "echo", "message": "hi", "count": 3, "ratio": 2.0, "flag": false,
            "note": null, "items": ["a", "b"], "env": {"K": "v"},
            "nested": {"label": "L", "tags": ["t"], "target": {"host": "h", "port": 8}},
            "path": null, "program": null, "args": [],
            "target": {"host": "127.0.0.1", "port": 80}, "url": null,
        })
    );
}

/// `describe` carries the schema made from the type hints: required fields, defaults,
/// nested definitions, the literal's values, docstring descriptions; unknown inputs
/// are refused.
#[test]
fn the_schema_comes_from_the_type_hints() {
    let (_t, dir) = tempdir();
    let Some(wasm) = py_probe() else { return };
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["step", "describe"])
        .arg(wasm)
        .args(["--output", "json"]));
    assert_eq!(code, 0, "{err}");
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["plugin"], "py_probe", "{d}");
    let schema = &d["input_schema"];
    assert_eq!(schema["additionalProperties"], false, "{schema}");
    let props = &schema["properties"];
    assert_eq!(props["count"]["type"], "integer", "{props}");
    assert_eq!(props["count"]["default"], 1, "{props}");
    assert_eq!(props["count"]["description"], "An integer with a default.");
    assert!(
        props["action"].to_string().contains("\"socket\""),
        "{}",
        props["action"]
    );
    let text = schema.to_string();
    assert!(text.contains("A mapping nested twice."), "{text}");
    let (code, _, err) = probe(&dir, json!({"mesage": "x"}), &[]).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("unknown input `mesage`"), "{err}");
}

/// A wrong input is named by its path, in the Rust SDK's words; a raised exception is
/// the step's error with its message and where it was raised.
#[test]
fn errors_name_the_field_and_the_exception() {
    let (_t, dir) = tempdir();
    let Some((code, _, err)) = probe(
        &dir,
        json!({"nested": {"label": "x", "target": {"port": "x"}}}),
        &[],
    ) else {
        return;
    };
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "has invalid input: input `nested.target.port`: expected an integer, got string \"x\""
        ),
        "{err}"
    );
    let (code, _, err) = probe(&dir, json!({"action": "raise"}), &[]).unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("failed: ValueError: boom from python (hint: at app.py:")
            && err.contains("in run: raise ValueError(\"boom from python\"))"),
        "{err}"
    );
    let (code, _, err) = probe(&dir, json!({"action": "fail"}), &[]).unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("failed: failed on purpose (hint: fix it)"),
        "{err}"
    );
}

/// The sandbox holds for Python as for Rust: a file outside the working directory, a
/// program, a host and a raw socket, each refused with the fix, and nothing happened
/// outside (the canary unread... and unreached: the server counts connections).
#[test]
fn the_sandbox_refuses_what_was_not_granted() {
    let (_t, dir) = tempdir();
    let outside = dir.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    let Some((code, out, err)) = probe(
        &dir,
        json!({"action": "read", "path": outside.display().to_string()}),
        &[],
    ) else {
        return;
    };
    assert_eq!(code, 1, "{out}");
    assert!(
        !out.contains("secret") && !err.contains("secret"),
        "{out}{err}"
    );
    assert!(
        err.contains("a step sees only its working directory"),
        "{err}"
    );

    let marker = dir.join("ran");
    let (code, _, err) = probe(
        &dir,
        json!({"action": "run", "program": "touch", "args": [marker.display().to_string()]}),
        &[],
    )
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("may not run `touch`: capability `process:touch` was not granted"),
        "{err}"
    );
    assert!(!marker.exists(), "the program ran");

    let hits = dir.join("hits");
    let port = support::free_port();
    let mut server = Command::new("python3");
    server.arg("-c").arg(format!(
        "import socket\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen()\n\
         while True:\n    \
         c, _ = s.accept()\n    \
         data = c.recv(100)\n    \
         if data:\n        \
         open({hits:?}, 'a').write(data.decode(errors='replace').split('\\n')[0] + '\\n')\n    \
         c.close()\n",
        hits = hits.display().to_string()
    ));
    let _server = support::Server::start(server, port, "a TCP server on loopback");
    let url = format!("http://127.0.0.1:{port}/");
    let (code, _, err) = probe(&dir, json!({"action": "http", "url": url}), &[]).unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "may not reach http://127.0.0.1:{port}: capability `net:http://127.0.0.1:{port}` was not granted"
        )),
        "{err}"
    );
    let target = json!({"host": "127.0.0.1", "port": port});
    let (code, out, err) = probe(
        &dir,
        json!({"action": "socket", "target": target}),
        &["--quiet"],
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["result"]["connected"], false, "{out}");
    assert!(
        out["result"]["error"]
            .as_str()
            .unwrap()
            .contains("PermissionError"),
        "{out}"
    );
    // A marker of ours, after the step ended: the server takes connections in order,
    // so once the marker is recorded anything the step sent would be recorded before it.
    {
        use std::io::Write as _;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"marker\n").unwrap();
    }
    let seen = support::wait_until(|| {
        std::fs::read_to_string(&hits)
            .ok()
            .filter(|h| h.contains("marker"))
    });
    assert_eq!(
        seen, "marker\n",
        "a request or connection reached the server"
    );
}

/// A Python step between two built-in steps of a prefect.yaml: its inputs templated
/// from the first step's outputs, its outputs used by the third through `{{ id.key }}`.
#[test]
fn a_python_step_runs_between_built_in_steps() {
    let (_t, dir) = tempdir();
    let Some(wasm) = py_probe() else { return };
    std::fs::copy(wasm, dir.join("py_probe.wasm")).unwrap();
    let project = "pull:\n\
  - prefect.deployments.steps.run_shell_script:\n      id: first\n      script: echo from-shell\n\
  - ./py_probe.wasm:\n      id: py\n      message: \"{{ first.stdout }}\"\n      nested: {label: \"{{ first.stdout }}\", tags: [a]}\n\
  - prefect.deployments.steps.run_shell_script:\n      script: \"echo got {{ py.inputs.message }} and {{ py.inputs.nested.label }}\"\n";
    support::write_project(&dir, project);
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args(["pull"]));
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["stdout"], "got from-shell and from-shell", "{out}");
    assert_eq!(out["py"]["inputs"]["nested"]["tags"], json!(["a"]), "{out}");
}

/// `hoist plugin new --lang python` then `hoist plugin build`: the greeting step runs,
/// and refuses an input it does not take.
#[test]
fn the_python_scaffold_builds_and_runs() {
    let Some(tool) = componentize_py() else {
        return;
    };
    let (_t, dir) = tempdir();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plugin", "new", "greet", "--lang", "python"]));
    assert_eq!(code, 0, "{err}");
    let req = std::fs::read_to_string(dir.join("greet/requirements.txt")).unwrap();
    assert!(req.contains("componentize-py==0.25.1"), "{req}");
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plugin", "build", "greet", "--componentize-py"])
        .arg(&tool));
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "greet/greet.wasm",
        "--input",
        "name=world",
        "--quiet",
    ]));
    assert_eq!(code, 0, "{err}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out, json!({"greeting": "hello world"}));
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "greet/greet.wasm",
        "--input",
        "nmae=world",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("unknown input `nmae`"), "{err}");
}
