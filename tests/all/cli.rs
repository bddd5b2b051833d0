//! End to end: the real `hoist` binary, as a user runs it.

use serde_json::Value;

use crate::fixtures::walk;
use crate::support::{self, hoist, plugins, run};

#[test]
fn step_run_prints_outputs_as_json_and_logs_to_stderr() {
    let (_t, dir) = support::tempdir();
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "run_shell_script",
        "--input",
        "script=echo hi\necho there",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({"stdout": "hi\nthere", "stderr": ""}));
    assert!(err.contains("run_shell_script | hi"), "{err}");
    assert!(err.contains("✓ run_shell_script finished in"), "{err}");
}

#[test]
fn step_run_takes_the_names_a_prefect_yaml_uses() {
    let (_t, dir) = support::tempdir();
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "prefect.projects.steps.run_shell_script",
        "-i",
        "script=echo legacy",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"stdout\": \"legacy\""), "{out}");
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "prefect_gcp.deployments.steps.pull_from_gcs",
    ]));
    assert_ne!(code, 0);
    assert!(
        err.contains("is a Prefect step Hoist does not run yet (its `pull_from_gcs` plugin is not available yet)"),
        "{err}"
    );
}

#[test]
fn set_working_directory_outputs_the_absolute_path() {
    let (_t, dir) = support::tempdir();
    std::fs::create_dir(dir.join("flows")).unwrap();
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "set_working_directory",
        "-i",
        "directory=flows",
        "-q",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["directory"], dir.join("flows").display().to_string());
}

#[test]
fn a_failing_step_exits_non_zero_with_the_cause() {
    let (_t, dir) = support::tempdir();
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "run_shell_script",
        "-i",
        "script=cat nothing",
    ]));
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("error: step `run_shell_script` (run_shell_script) failed: `run_shell_script` failed with error code 1: cat: nothing: No such file or directory"), "{err}");
}

#[test]
fn unknown_steps_suggest_the_closest_name() {
    let (_t, dir) = support::tempdir();
    let (code, _, err) = run(hoist(&dir).args(["step", "run", "run_shell_scrip"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown step `run_shell_scrip`; did you mean `run_shell_script`"),
        "{err}"
    );
}

#[test]
fn a_plugin_file_needs_explicit_grants() {
    let (_t, dir) = support::tempdir();
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        plugins::PROBE,
        "-i",
        "action=spin",
    ]));
    assert_eq!(code, 1);
    assert!(err.contains("needs capability `process:true`, which was not granted; grant it with `--allow process:true`"), "{err}");

    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("HOIST_PROBE", "visible")
        .args([
            "step",
            "run",
            plugins::PROBE,
            "-i",
            "action=env",
            "-i",
            "name=HOIST_PROBE",
        ])
        .args([
            "--allow",
            "process:*",
            "--allow",
            "env:HOIST_PROBE",
            "--allow",
            "process:sleep",
        ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["value"],
        "visible"
    );
}

#[test]
fn timeouts_and_limits_are_set_from_the_command_line() {
    let (_t, dir) = support::tempdir();
    let grants = ["--allow", "process:*", "--allow", "env:*"];
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args([
            "step",
            "run",
            plugins::PROBE,
            "-i",
            "action=spin",
            "--timeout",
            "200ms",
        ])
        .args(grants));
    assert_eq!(code, 1);
    assert!(
        err.contains("did not finish within 200 ms and was stopped"),
        "{err}"
    );
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args([
            "step",
            "run",
            plugins::PROBE,
            "-i",
            "action=hog",
            "--memory-limit",
            "16M",
        ])
        .args(grants));
    assert_eq!(code, 1);
    assert!(
        err.contains("tried to use more than 16 MiB of memory"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    let (_t, dir) = support::tempdir();
    let (code, _, err) =
        run(hoist(&dir).args(["step", "run", "run_shell_script", "--allow", "everything"]));
    assert_eq!(code, 2);
    assert!(err.contains("`everything` is not a capability"), "{err}");
    let (code, _, err) =
        run(hoist(&dir).args(["step", "run", "run_shell_script", "--inputs-json", "[1]"]));
    assert_eq!(code, 1);
    assert!(err.contains("--inputs-json must be a JSON object"), "{err}");
}

#[test]
fn step_ls_lists_builtins_and_installed_plugins() {
    let (_t, home) = support::tempdir();
    let installed = support::home_of(&home).join("plugins");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::copy(plugins::TRIVIAL, installed.join("echoer.wasm")).unwrap();
    let (code, out, err) = run(hoist(&home).args(["step", "ls"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("run_shell_script 0.1.0 (built-in)\n    Run each line of a script as a process, Prefect-style\n    capabilities: process:*, env:*"), "{out}");
    assert!(
        out.contains("set_working_directory 0.1.0 (built-in)"),
        "{out}"
    );
    assert!(
        out.contains(
            "echoer 0.1.0 (installed)\n    Echo the inputs back as outputs\n    capabilities: none"
        ),
        "{out}"
    );

    // Installed plugins run by name.
    let (code, out, err) = run(hoist(&home)
        .current_dir(&home)
        .args(["step", "run", "echoer", "-i", "n=3", "-q"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"n": 3})
    );
}

#[test]
fn version_names_what_matters() {
    let (_t, dir) = support::tempdir();
    let (code, out, _) = run(hoist(&dir).arg("version"));
    assert_eq!(code, 0);
    for needle in [
        "hoist 0.1.0",
        "wit api hoist:step@0.1.0",
        "wasmtime 48.0.8",
        "cache ",
        "allocator ",
    ] {
        assert!(out.contains(needle), "{needle} in {out}");
    }
}

#[test]
fn a_scaffolded_plugin_builds_and_runs() {
    let (_t, dir) = support::tempdir();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plugin", "new", "greeter"]));
    assert_eq!(code, 0, "{err}");
    // Share a target dir across runs so only the first build compiles the SDK.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scaffold");
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plugin", "build", "greeter"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("built "), "{err}");
    let wasm = dir.join("greeter/greeter.wasm");
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        wasm.to_str().unwrap(),
        "-i",
        "name=world",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"greeting": "hello world"})
    );
    assert!(err.contains("greeter | greeting world"), "{err}");

    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plugin", "new", "greeter"]));
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plugin", "new", "Bad-Name"]));
    assert_eq!(code, 1);
    assert!(err.contains("not a valid step name"), "{err}");
}

#[test]
fn demo_runs_the_embedded_example_project() {
    let (_t, dir) = support::tempdir();
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).arg("demo"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("✓ run_shell_script finished in"), "{err}");
    assert!(
        out.contains("\"stdout\": \"hello from /") && out.contains("/flows\\nhello.py\""),
        "{out}"
    );
    // It ends with the sandbox refusing an ungranted plugin, and the fix.
    assert!(
        err.contains("  refused: step `run_shell_script` (run_shell_script) needs capability `process:*`, which was not granted; grant it with `--allow process:*`\n"),
        "{err}"
    );
    assert!(err.contains("why `stdout` appears twice"), "{err}");
}

/// Usage mistakes: a malformed KEY=VALUE is a usage error (exit 2, as the README says),
/// a misspelt step name gets a suggestion, and a missing project file is explained
/// without telling a user who passed `--file` to pass `--file`.
#[test]
fn usage_mistakes_are_explained() {
    let (_t, dir) = support::tempdir();
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "run_shell_script",
        "-i",
        "noequals",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: invalid value 'noequals' for '--input <KEY=VALUE>': expected KEY=VALUE (no `=` in it)\n"),
        "{err}"
    );
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["block", "set", "x", "y", "--field", "=v"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the KEY before `=` is empty"), "{err}");

    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "prefect.deployments.steps.git_clon",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("did you mean `prefect.deployments.steps.git_clone`"),
        "{err}"
    );

    let here = dir.display();
    let (code, _, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["plan", "-f", "missing.yaml"]));
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        format!("error: missing.yaml: no such project file (looked in {here})")
    );
    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args(["plan"]));
    assert_eq!(code, 1);
    assert_eq!(
        err.trim_end(),
        format!("error: prefect.yaml: no such project file (looked in {here}); pass --file PATH")
    );
}

/// The CLI as a user meets it, as fixtures (`tests/fixtures/cli/`): a project (optional),
/// files to copy in (`plugins`: test components by name), `env`, the arguments, and the exact
/// exit code, stdout and stderr. `<T>` is the project directory, `<HOME>` Hoist's home,
/// `<DIGEST>` any sha256 (built-in digests change with the plugins' code), `<DURATION>`
/// a step's time.
#[test]
fn cli_fixtures() {
    walk("cli", |c| {
        let (_t, dir) = support::tempdir();
        if let Some(text) = c.get("project").and_then(Value::as_str) {
            support::write_project(&dir, text);
        }
        for (file, plugin) in c
            .get("plugins")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let from = match plugin.as_str().unwrap() {
                "probe" => plugins::PROBE,
                "trivial" => plugins::TRIVIAL,
                other => panic!("no test plugin `{other}`"),
            };
            std::fs::copy(from, dir.join(file)).unwrap();
        }
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let mut cmd = hoist(&dir);
        for (k, v) in c
            .get("env")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            cmd.env(k, v.as_str().unwrap());
        }
        let (code, out, err) = run(cmd.current_dir(&dir).args(&args));
        let home = support::home_of(&dir).display().to_string();
        let t = dir.display().to_string();
        let clean = |s: &str| durations(&digests(&s.replace(&home, "<HOME>").replace(&t, "<T>")));
        Ok(serde_json::json!({"code": code, "stdout": clean(&out), "stderr": clean(&err)}))
    });
}

/// `s` with the time after `finished in` / `failed after` replaced by `<DURATION>`.
fn durations(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|line| {
            for mark in [" finished in ", " failed after "] {
                if let Some(i) = line.find(mark) {
                    let end = if line.ends_with('\n') { "\n" } else { "" };
                    return format!("{}{mark}<DURATION>{end}", &line[..i]);
                }
            }
            line.to_string()
        })
        .collect()
}

/// `s` with every run of 64 hex digits replaced by `<DIGEST>`.
fn digests(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    for ch in s.chars() {
        if ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase() {
            run.push(ch);
            continue;
        }
        out.push_str(if run.len() == 64 { "<DIGEST>" } else { &run });
        run.clear();
        out.push(ch);
    }
    out.push_str(if run.len() == 64 { "<DIGEST>" } else { &run });
    out
}

/// `hoist completions SHELL` prints a script the shell accepts, naming the commands.
#[test]
fn completions_are_valid_shell() {
    let (_t, dir) = support::tempdir();
    let (code, out, err) = run(hoist(&dir).args(["completions", "bash"]));
    assert_eq!(code, 0, "{err}");
    for word in ["describe", "plan", "variable", "--allow"] {
        assert!(out.contains(word), "{word} missing");
    }
    let script = dir.join("hoist.bash");
    std::fs::write(&script, &out).unwrap();
    let (code, _, err) = run(std::process::Command::new("bash").arg("-n").arg(&script));
    assert_eq!(code, 0, "bash rejects it: {err}");
    let (code, out, _) = run(hoist(&dir).args(["completions", "zsh"]));
    assert_eq!(code, 0);
    assert!(
        out.starts_with("#compdef hoist"),
        "{}",
        &out[..out.len().min(80)]
    );
}

/// On a terminal (a pseudo-terminal from util-linux `script`), a step quiet for a few
/// seconds gets a line saying it is still running, cleared before the next line; on a
/// pipe nothing of the sort is printed.
#[test]
fn a_quiet_step_shows_that_it_is_running_on_a_terminal_only() {
    let (_t, dir) = support::tempdir();
    let hoist_bin = env!("CARGO_BIN_EXE_hoist");
    let command = format!("{hoist_bin} step run run_shell_script -i 'script=sleep 4'");
    let mut tty = std::process::Command::new("script");
    tty.args(["-qec", &command, "/dev/null"])
        .current_dir(&dir)
        .env("HOIST_HOME", support::home_of(&dir))
        .env("HOIST_CACHE_DIR", support::test_cache())
        .env("LANG", "C.UTF-8")
        .env_remove("LC_ALL");
    let (code, out, err) = run(&mut tty);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\r  … run_shell_script is running (3 s, no output for 3 s)\u{1b}[K"),
        "{out:?}"
    );
    assert!(
        out.contains("\r\u{1b}[K✓ run_shell_script finished in"),
        "{out:?}"
    );

    let (code, _, err) = run(hoist(&dir).current_dir(&dir).args([
        "step",
        "run",
        "run_shell_script",
        "-i",
        "script=sleep 4",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("is running") && !err.contains('\r'),
        "{err:?}"
    );
}
