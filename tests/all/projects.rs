//! prefect.yaml projects: fixture cases for sections (C53, C54) and for the runner with
//! real components (C24-C34), plus the `hoist build | push | pull | plan` commands and
//! the third-party corpus of real prefect.yaml files.

use std::path::Path;
use std::sync::Arc;

use hoist::capability::log::NullSink;
use hoist::plan::Target;
use hoist::project::{self, Action, StepEntry};
use hoist::runner::{self, Reporter, Runner, StepReport};
use hoist::store::LocalStore;
use hoist::store::Store;
use hoist::templater::Templater;
use serde_json::{Map, Value, json};

use crate::fixtures::walk;
use crate::support::{self, hoist, run};

struct Quiet;

impl Reporter for Quiet {
    fn started(&self, _: &StepEntry, _: usize, _: usize, _: &Target) {}
    fn finished(&self, _: &StepEntry, _: usize, _: &StepReport) {}
}

fn names(steps: &[StepEntry]) -> Value {
    Value::Array(
        steps
            .iter()
            .map(|s| Value::String(s.name.clone()))
            .collect(),
    )
}

#[test]
fn project_fixtures() {
    walk("project", |c| {
        let (_t, dir) = support::tempdir();
        let file = dir.join("prefect.yaml");
        std::fs::write(&file, c["project"].as_str().unwrap()).unwrap();
        let p = project::load(&file)
            .map_err(|e| e.to_string().replace(&format!("{}/", dir.display()), ""))?;
        let d = match c.get("deployment").and_then(Value::as_str) {
            Some(name) => Some(p.deployment(name).ok_or(format!("no deployment {name}"))?),
            None => None,
        };
        Ok(json!({
            "build": names(p.steps(Action::Build, d)),
            "push": names(p.steps(Action::Push, d)),
            "pull": names(p.steps(Action::Pull, d)),
        }))
    });
}

#[test]
fn runner_fixtures() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Arc::new(support::runtime());
    walk("runner", |c| {
        rt.block_on(async {
            let (_t, dir) = support::tempdir();
            let (_s, state) = support::tempdir();
            let t = dir.display().to_string();
            let scrub = |s: &str| {
                s.replace(&format!("{t}/prefect.yaml"), "prefect.yaml")
                    .replace(&t, "<T>")
            };
            for d in c
                .get("dirs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                std::fs::create_dir_all(dir.join(d.as_str().unwrap())).unwrap();
            }
            let file = dir.join("prefect.yaml");
            std::fs::write(&file, c["project"].as_str().unwrap()).unwrap();

            let store = Store::open_sqlite(&state.join("hoist.db")).await.unwrap();
            for (k, v) in c
                .get("blocks")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let (slug, name) = k.split_once('/').unwrap();
                store.set_block(slug, name, v, false).await.unwrap();
            }
            for (k, v) in c
                .get("variables")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                store.set_variable(k, v).await.unwrap();
            }
            let templater = Templater::new(Default::default(), LocalStore::with(store));
            let mut runner = Runner::new(
                runtime.clone(),
                file.clone(),
                Arc::new(NullSink),
                Arc::new(Quiet),
                templater,
            );
            runner.env = [("PATH".to_string(), std::env::var("PATH").unwrap())].into();
            for (k, v) in c
                .get("env")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                runner.env.insert(k.clone(), v.as_str().unwrap().into());
            }

            let result: Result<Value, String> = async {
                let p = project::load(&file).map_err(|e| e.to_string())?;
                let command = match c.get("section").and_then(Value::as_str).unwrap_or("pull") {
                    "build" => Action::Build,
                    "push" => Action::Push,
                    _ => Action::Pull,
                };
                let all: Vec<StepEntry> = runner::sections_for(command)
                    .iter()
                    .flat_map(|a| p.steps(*a, None).to_vec())
                    .collect();
                runner.prepare(&all).await.map_err(|e| e.to_string())?;
                let mut outputs = Map::new();
                let mut cwd = dir.clone();
                for action in runner::sections_for(command) {
                    let o = runner
                        .run(p.steps(*action, None), outputs, cwd)
                        .await
                        .map_err(|e| e.to_string())?;
                    outputs = o.outputs;
                    cwd = o.cwd;
                }
                Ok(runner::redact_value(
                    &Value::Object(outputs),
                    &runner.redactor(),
                ))
            }
            .await;
            for f in c
                .get("expect_files_absent")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if dir.join(f.as_str().unwrap()).exists() {
                    return Err(format!("`{f}` exists: a step ran that must not have"));
                }
            }
            match result {
                Ok(v) => Ok(serde_json::from_str(&scrub(&v.to_string())).unwrap()),
                Err(e) => Err(scrub(&e)),
            }
        })
    });
}

#[test]
fn hoist_pull_runs_a_project_and_reports_the_working_directory() {
    let (_t, dir) = support::tempdir();
    std::fs::create_dir(dir.join("flows")).unwrap();
    let (code, out, err) = support::run_project(
        &dir,
        "name: demo\npull:\n  - prefect.deployments.steps.set_working_directory:\n      directory: flows\n  - prefect.deployments.steps.run_shell_script:\n      id: hi\n      script: echo hello from {{ directory }}\n",
        &["pull"],
    );
    assert_eq!(code, 0, "{err}");
    let flows = dir.join("flows").display().to_string();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hi"]["stdout"], format!("hello from {flows}"));
    assert!(err.contains("▶ [1/2] prefect.deployments.steps.set_working_directory (pull[0], line 3; built-in set_working_directory)"), "{err}");
    assert!(
        err.contains(&format!("working directory: {flows}")),
        "{err}"
    );

    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .args(["pull", "--output", "json"]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["status"], "ok");
    assert_eq!(lines[0]["position"], "pull[0]");
    assert!(lines[0]["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[2]["event"], "done");
    assert_eq!(lines[2]["working_directory"], flows);
}

#[test]
fn secrets_from_blocks_and_env_never_reach_output_logs_or_errors() {
    let (_t, dir) = support::tempdir();
    let (_h, home) = support::tempdir();
    let secret = "tok-9f8e7d6c5b4a";
    let (code, _, err) =
        run(hoist(&home).args(["block", "set", "secret", "gh-token", "--value", secret]));
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(hoist(&home).args(["block", "get", "secret", "gh-token"]));
    assert_eq!(code, 0);
    assert!(out.contains("********") && !out.contains(secret), "{out}");
    std::fs::write(
        dir.join("prefect.yaml"),
        "pull:\n  - prefect.deployments.steps.run_shell_script:\n      script: |\n        echo token={{ prefect.blocks.secret.gh-token }} env={{ $MY_API_TOKEN }}\n        bash -c '>&2 echo rejected {{ prefect.blocks.secret.gh-token }}; exit 3'\n",
    )
    .unwrap();
    let env_secret = "env-secret-0123";
    for output in ["text", "json"] {
        let (code, out, err) = run(hoist(&home)
            .current_dir(&dir)
            .env("MY_API_TOKEN", env_secret)
            .args(["pull", "--output", output]));
        assert_eq!(code, 1);
        let all = format!("{out}{err}");
        assert!(!all.contains(secret) && !all.contains(env_secret), "{all}");
        assert!(all.contains("token=******** env=********"), "{all}");
        assert!(
            err.contains("failed with error code 3: rejected ********"),
            "{err}"
        );
    }
    let (code, out, err) = run(hoist(&home)
        .current_dir(&dir)
        .env("MY_API_TOKEN", env_secret)
        .arg("plan"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(secret) && !out.contains(env_secret), "{out}");
    // The database holding the secret is private to its owner.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(support::home_of(&home).join("hoist.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn variables_and_blocks_commands() {
    let (_h, home) = support::tempdir();
    for (args, want) in [
        (vec!["variable", "set", "n", "3"], ""),
        (vec!["variable", "set", "cfg", "{k: v}"], ""),
        (vec!["variable", "get", "n"], "3\n"),
        (vec!["variable", "get", "cfg"], "{\"k\":\"v\"}\n"),
        (vec!["variable", "ls"], "cfg = {\"k\":\"v\"}\nn = 3\n"),
        (vec!["variable", "unset", "n"], ""),
        (
            vec![
                "block",
                "set",
                "aws-credentials",
                "prod",
                "--field",
                "region=eu-west-1",
            ],
            "",
        ),
        (
            vec!["block", "get", "aws-credentials", "prod"],
            "{\n  \"region\": \"eu-west-1\"\n}\n",
        ),
    ] {
        let (code, out, err) = run(hoist(&home).args(&args));
        assert_eq!((code, out.as_str()), (0, want), "{args:?}: {err}");
    }
    let (code, _, err) = run(hoist(&home).args(["variable", "get", "n"]));
    assert_eq!(code, 1);
    assert!(err.contains("no variable named `n`"), "{err}");
}

#[test]
fn plan_shows_steps_without_running_and_refuses_what_cannot_run() {
    let (_t, dir) = support::tempdir();
    let (code, out, err) = support::run_project(
        &dir,
        "build:\n  - prefect.deployments.steps.run_shell_script:\n      script: touch built\npull:\n  - prefect_gcp.deployments.steps.pull_from_gcs:\n      bucket: b\n",
        &["plan"],
    );
    assert_eq!(code, 1);
    assert!(out.contains("build[0]  prefect.deployments.steps.run_shell_script (line 2)\n      runs:   built-in run_shell_script"), "{out}");
    assert!(out.contains("CANNOT RUN: `prefect_gcp.deployments.steps.pull_from_gcs` is a Prefect step Hoist does not run yet"), "{out}");
    assert!(
        err.contains("1 step cannot run:\n") && err.contains("prefect.yaml:5: pull[0]"),
        "{err}"
    );
    assert!(!dir.join("built").exists(), "plan must not run anything");
}

/// The third-party corpus of real prefect.yaml files (`../shared/corpus/prefect-yaml/`,
/// beside the project, never copied into it): each file's outcome of `hoist plan` — it
/// plans, or it is refused with a message naming the file and line — must be the one
/// recorded in `tests/fixtures/corpus.expected` (file names and outcomes only).
/// `BLESS=1` rewrites that file. Required when `HOIST_REQUIRE_CORPUS` is set (CI).
#[test]
fn every_corpus_file_plans_or_is_refused_as_recorded() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/prefect-yaml");
    let expected_file = crate::fixtures::fixture_dir("corpus.expected");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        assert!(
            std::env::var_os("HOIST_REQUIRE_CORPUS").is_none(),
            "HOIST_REQUIRE_CORPUS is set but there is no prefect.yaml file in {} \
             (the corpus is checked out beside the project, as ../shared)",
            corpus.display()
        );
        support::skip(&format!(
            "no corpus at {} (set HOIST_REQUIRE_CORPUS=1 to make this a failure); {} was not \
             checked",
            corpus.display(),
            expected_file.display()
        ));
        return;
    }
    let bless = support::bless();
    let (_h, home) = support::tempdir();
    let mut actual = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let (code, out, err) = run(hoist(&home)
            .current_dir(file.parent().unwrap())
            .args(["plan", "--file"])
            .arg(file));
        let outcome = match code {
            0 if out.contains("pull:") => "plans".to_string(),
            0 => {
                failures.push(format!("{name}: planned without a pull section:\n{out}"));
                continue;
            }
            1 => match refusal(&name, &err) {
                Some(r) => format!("refused: {r}"),
                None => {
                    failures.push(format!(
                        "{name}: refused without naming `{name}:<line>`:\n{err}"
                    ));
                    continue;
                }
            },
            _ => {
                failures.push(format!("{name}: exit {code}:\n{err}"));
                continue;
            }
        };
        actual.insert(name, outcome);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    if bless {
        let mut text = String::from(
            "# `hoist plan` on each file of ../shared/corpus/prefect-yaml/ (third-party data,\n\
             # not copied here): `plans`, or `refused: <file>:<line>: <first words>`.\n\
             # Written by `BLESS=1 cargo test --test all projects::every_corpus_file`.\n",
        );
        for (name, outcome) in &actual {
            text.push_str(&format!("{name}: {outcome}\n"));
        }
        std::fs::write(&expected_file, text).unwrap();
        return;
    }
    let recorded = std::fs::read_to_string(&expected_file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (write it with BLESS=1 and review it)",
            expected_file.display()
        )
    });
    let expected: std::collections::BTreeMap<String, String> = recorded
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, outcome) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("corpus.expected: not `<file>: <outcome>`: {l}"));
            (name.to_string(), outcome.to_string())
        })
        .collect();
    let mut diffs = Vec::new();
    for name in expected.keys().chain(actual.keys()) {
        let (want, got) = (expected.get(name), actual.get(name));
        if want != got
            && !diffs
                .iter()
                .any(|d: &String| d.starts_with(&format!("{name}:")))
        {
            diffs.push(format!(
                "{name}:\n  expected {}\n  got      {}",
                want.map_or("(no line in corpus.expected)", String::as_str),
                got.map_or("(not in the corpus)", String::as_str)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} corpus files differ from {} (BLESS=1 rewrites it; review the diff):\n{}",
        diffs.len(),
        files.len(),
        expected_file.display(),
        diffs.join("\n")
    );
}

/// `<file>:<line>: <first words of the message>` from the first line of `err` that names
/// `name` with a line number (any directory before the name dropped), or None.
fn refusal(name: &str, err: &str) -> Option<String> {
    err.lines().find_map(|l| {
        let at = l.find(&format!("{name}:"))?;
        let rest = &l[at + name.len() + 1..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return None;
        }
        let words: Vec<&str> = l[at..].split_whitespace().take(10).collect();
        Some(words.join(" "))
    })
}

/// C55-C58: `hoist push --deployment` reports the deployment as `prefect deploy` would
/// register it: fields from build outputs and the environment, schedules parsed, `ctx.`
/// kept, unresolved fields dropped, pull steps baked "safely"; the file is untouched.
#[test]
fn c55_c58_deployment_spec_from_outputs_and_environment() {
    let (_t, dir) = support::tempdir();
    let text = r#"
build:
  - prefect.deployments.steps.run_shell_script: {id: meta, script: "echo foo"}
  - prefect.deployments.steps.run_shell_script: {id: get-schedule-isactive, script: "echo false"}
pull:
  - x.y: {id: b, input: "{{ meta.stdout }}", secret-input: "{{ prefect.blocks.secret.test-secret }}", region: "{{ $REGION }}", other: "{{ $UNSET_ON_DEPLOYER }}"}
  - x.y: {input: "foo-{{ b.output1 }}"}
deployments:
  - name: test-name
    entrypoint: flows/hello.py:my_flow
    version: "{{ meta.stdout }}"
    tags: "{{ meta.stdout }}"
    description: "{{ $MY_DESCRIPTION }}"
    parameters: {greeting: "v-{{ meta.stdout }}", home: "{{ HOME }}"}
    schedules:
      - {active: "{{ get-schedule-isactive.stdout }}", cron: "0 * * * *", timezone: America/Chicago}
      - {active: "{{ $SCHEDULE_IS_ACTIVE }}", cron: "0 * * * *"}
    work_pool:
      name: "{{ $WORK_POOL }}"
      job_variables: {name: "job-{{ ctx.flow.name }}/{{ ctx.flow_run.name }}", image: "{{ this-is-the-wrong-placeholder }}", env: prod}
"#;
    std::fs::write(dir.join("prefect.yaml"), text).unwrap();
    let (code, out, err) = run(hoist(&dir)
        .current_dir(&dir)
        .env("REGION", "eu")
        .env("HOME", "/home/deployer")
        .env("MY_DESCRIPTION", "1")
        .env("SCHEDULE_IS_ACTIVE", "true")
        .env("WORK_POOL", "pool-from-env")
        .env_remove("UNSET_ON_DEPLOYER")
        .args(["push", "--deployment", "test-name", "--output", "json"]));
    assert_eq!(code, 0, "{err}");
    let done: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let d = &done["deployment"];
    assert_eq!(d["version"], "foo");
    assert_eq!(
        d["tags"],
        json!(["f", "o", "o"]),
        "string tags are one tag per character (C55)"
    );
    assert_eq!(d["description"], "1");
    assert_eq!(
        d["parameters"],
        json!({"greeting": "v-foo", "home": "/home/deployer"}),
        "bare {{{{ HOME }}}} is read from the environment in the declaration (§3.10)"
    );
    assert_eq!(d["schedules"][0]["active"], false, "C58 from a step output");
    assert_eq!(
        d["schedules"][1]["active"], true,
        "C58 from the environment"
    );
    assert_eq!(d["work_pool"]["name"], "pool-from-env", "C57");
    assert_eq!(
        d["work_pool"]["job_variables"],
        json!({"name": "job-{{ ctx.flow.name }}/{{ ctx.flow_run.name }}", "env": "prod"}),
        "C57: ctx kept, unresolved dropped"
    );
    assert_eq!(
        d["pull_steps"],
        json!([
            {"x.y": {"id": "b", "input": "foo", "secret-input": "{{ prefect.blocks.secret.test-secret }}", "region": "eu", "other": "{{ $UNSET_ON_DEPLOYER }}"}},
            {"x.y": {"input": "foo-{{ b.output1 }}"}}
        ]),
        "C56: baked with outputs, later references kept"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("prefect.yaml")).unwrap(),
        text,
        "the file is never rewritten"
    );
}

/// C33: with a flow-run id, each pull step is recorded as an event whose payload carries
/// the untemplated inputs, so no resolved secret reaches the stored record.
#[tokio::test]
async fn c33_pull_steps_are_recorded_as_events_without_secrets() {
    let (_t, dir) = support::tempdir();
    let (_h, home) = support::tempdir();
    let (code, _, err) = run(hoist(&home).args([
        "block",
        "set",
        "secret",
        "k",
        "--value",
        "block-secret-value",
    ]));
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        dir.join("prefect.yaml"),
        "pull:\n  - prefect.deployments.steps.run_shell_script:\n      script: echo {{ prefect.blocks.secret.k }} {{ $SECRET_ENV_VAR }}\n      id: step-one\n      requires: prefect>=3.0.0\n  - prefect.deployments.steps.run_shell_script:\n      script: boom\n",
    )
    .unwrap();
    let flow_run = "0b5e2a52-5a8e-4c1e-9f59-3f1e2f7e9d10";
    let (code, _, err) = run(hoist(&home)
        .current_dir(&dir)
        .env("PREFECT__FLOW_RUN_ID", flow_run)
        .env("SECRET_ENV_VAR", "super-secret-value")
        .arg("pull"));
    assert_eq!(code, 1, "the second step fails: {err}");

    let store = Store::open_sqlite(&support::home_of(&home).join("hoist.db"))
        .await
        .unwrap();
    let events = store
        .events(&format!("prefect.flow-run.{flow_run}"))
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].event, "prefect.flow-run.pull-step.executed");
    assert_eq!(
        events[0].payload,
        json!({"index": 0, "qualified_name": "prefect.deployments.steps.run_shell_script", "step_name": "run_shell_script", "id": "step-one",
               "inputs": {"script": "echo {{ prefect.blocks.secret.k }} {{ $SECRET_ENV_VAR }}", "id": "step-one", "requires": "prefect>=3.0.0"}})
    );
    assert_eq!(events[1].event, "prefect.flow-run.pull-step.failed");
    assert_eq!(events[1].payload["inputs"], json!({"script": "boom"}));
    let stored = format!("{events:?}");
    assert!(
        !stored.contains("block-secret-value") && !stored.contains("super-secret-value"),
        "{stored}"
    );

    // Without a flow-run id, nothing is recorded: the same project runs again (its first
    // step runs, its second fails, as above) and the table holds no new event, under any
    // resource.
    let all_events = || async {
        let db = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(support::home_of(&home).join("hoist.db"))
            .read_only(true);
        let mut conn = sqlx::ConnectOptions::connect(&db).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hoist_events")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n
    };
    assert_eq!(all_events().await, 2);
    let (code, _, err) = run(hoist(&home)
        .current_dir(&dir)
        .env_remove("PREFECT__FLOW_RUN_ID")
        .env("SECRET_ENV_VAR", "super-secret-value")
        .arg("pull"));
    assert_eq!(code, 1);
    assert!(
        err.contains("Encountered error while running prefect.deployments.steps.run_shell_script")
            && err.contains("boom"),
        "the second step ran and failed: {err}"
    );
    assert_eq!(
        all_events().await,
        2,
        "an event was recorded without a flow-run id"
    );
}

/// C54: the pull steps a deployment is registered with: an explicit empty pull stays
/// empty (even over a top-level one); nothing usable means the generated default.
#[test]
fn c54_default_and_explicitly_empty_pull() {
    let cases = [
        ("pull: []\ndeployments: [{name: d}]\n", json!([])),
        (
            "pull: [{prefect.deployments.steps.git_clone: {repository: \"https://example.com/org/repo.git\"}}]\ndeployments: [{name: d, pull: []}]\n",
            json!([]),
        ),
        ("pull: null\ndeployments: [{name: d}]\n", json!("<cwd>")),
        ("deployments: [{name: d}]\n", json!("<cwd>")),
        (
            "deployments: [{name: d, work_pool: {name: p, job_variables: {image: img}}}]\n",
            json!([{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/prefect"}}]),
        ),
        (
            "build: [{prefect_docker.deployments.steps.build_docker_image: {image_name: x, dockerfile: auto}}]\ndeployments: [{name: d}]\n",
            json!("<docker>"),
        ),
    ];
    for (yaml, want) in cases {
        let (_t, dir) = support::tempdir();
        std::fs::write(dir.join("prefect.yaml"), yaml).unwrap();
        let want = match want.as_str() {
            Some("<cwd>") => {
                json!([{"prefect.deployments.steps.set_working_directory": {"directory": dir.display().to_string()}}])
            }
            Some("<docker>") => {
                let base = dir.file_name().unwrap().to_string_lossy().into_owned();
                json!([{"prefect.deployments.steps.set_working_directory": {"directory": format!("/opt/prefect/{base}")}}])
            }
            _ => want,
        };
        if yaml.contains("build_docker_image") {
            // No engine here (tests/all/docker.rs has one): the build fails, saying so;
            // the deployment's pull steps are still what `dockerfile: auto` implies.
            let (code, _, err) = run(hoist(&dir)
                .current_dir(&dir)
                .env("DOCKER_HOST", format!("unix://{}/none.sock", dir.display()))
                .args(["push", "-d", "d", "-o", "json"]));
            assert_eq!(code, 1);
            assert!(
                err.contains("build_docker_image") && err.contains("no Docker engine"),
                "{err}"
            );
            let p = project::load(&dir.join("prefect.yaml")).unwrap();
            let d = p.deployment("d").unwrap();
            let spec =
                project::spec::resolve(&p, d, &d.raw, &Map::new(), &Default::default(), &dir)
                    .unwrap();
            assert_eq!(spec["pull_steps"], want, "{yaml}");
            continue;
        }
        let (code, out, err) = run(hoist(&dir)
            .current_dir(&dir)
            .args(["push", "-d", "d", "-o", "json"]));
        assert_eq!(code, 0, "{yaml}: {err}");
        let done: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(done["deployment"]["pull_steps"], want, "{yaml}");
    }
}

/// A plugin named by path in a project gets nothing unless granted, on the command line
/// or in the project file's Hoist-only `hoist.grants` (which Prefect ignores).
#[test]
fn plugin_files_in_projects_need_grants() {
    let (_t, dir) = support::tempdir();
    std::fs::copy(support::plugins::PROBE, dir.join("probe.wasm")).unwrap();
    let canary = dir.join("first-step-ran");
    let steps = format!(
        "pull:\n  - prefect.deployments.steps.run_shell_script: {{script: \"touch {}\"}}\n  - ./probe.wasm: {{action: spawn, program: \"true\"}}\n",
        canary.display()
    );
    // Refused before the first step runs, with both remedies, and `plan` says the same.
    let (code, _, err) = support::run_project(&dir, &steps, &["pull"]);
    assert_eq!(code, 1);
    let refusal = "prefect.yaml:3: pull[1]: `./probe.wasm` (probe) needs capability `process:true`, which was not granted; grant it with `--allow process:true` (a project grants it to this step with `hoist: {grants: {\"./probe.wasm\": [\"process:true\"]}}` in its file)";
    assert_eq!(err.trim_end(), format!("error: {refusal}"));
    assert!(!canary.exists(), "a step ran before the refusal");
    let (code, out, err) = support::run_project(&dir, &steps, &["plan", "pull"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("runs:   plugin file ./probe.wasm — CANNOT RUN: `./probe.wasm` (probe) needs capability `process:true`, which was not granted; grant it with `--allow process:true`"),
        "{out}"
    );
    assert_eq!(
        err.trim_end(),
        format!("error: 1 step cannot run:\n{refusal}")
    );
    // `plan --allow` plans as `pull --allow` runs.
    let all = [
        "plan",
        "pull",
        "--allow",
        "process:true",
        "--allow",
        "process:sleep",
        "--allow",
        "env:HOIST_PROBE",
    ];
    let (code, out, err) = support::run_project(&dir, &steps, &all);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("CANNOT RUN"), "{out}");

    let granted = format!(
        "hoist:\n  grants:\n    ./probe.wasm: [process:true, process:sleep, env:HOIST_PROBE]\n{steps}"
    );
    let (code, out, err) = support::run_project(&dir, granted, &["pull"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["exit_code"], 0);

    let (code, _, err) = support::run_project(
        &dir,
        format!("hoist:\n  grants:\n    ./probe.wasm: [everything]\n{steps}"),
        &["pull"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "prefect.yaml:1: `hoist.grants../probe.wasm`: `everything` is not a capability"
        ),
        "{err}"
    );
}

/// `hoist.grants` keys name a plugin file however its path is written; `plan` shows each
/// step's grants and the ones its plugin never uses; a key that names no step is warned
/// about, with the step it was probably meant for.
#[test]
fn grant_keys_are_paths_and_unused_grants_are_reported() {
    let (_t, dir) = support::tempdir();
    std::fs::copy(support::plugins::PROBE, dir.join("probe.wasm")).unwrap();
    let project = "hoist:\n  grants:\n    probe.wasm: [process:true, process:sleep]\n    ././probe.wasm: [env:HOIST_PROBE, env:NOT_DECLARED]\n    ./prob.wasm: [process:true]\npull:\n  - ./probe.wasm: {action: spawn, program: \"true\"}\n";
    let warning = "warning: prefect.yaml: `hoist.grants` names `./prob.wasm`, which is no step of this project; its grants are not used (did you mean `./probe.wasm`?)";

    let (code, out, err) = support::run_project(&dir, project, &["plan", "pull"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err.trim_end(), warning);
    assert!(
        out.contains("      grants: process:true, process:sleep, env:HOIST_PROBE, env:NOT_DECLARED (not declared by the plugin, so never used: env:NOT_DECLARED)\n"),
        "{out}"
    );
    assert!(out.contains("runs:   plugin file ./probe.wasm\n"), "{out}");

    let (code, out, err) = support::run_project(&dir, project, &["pull"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.starts_with(warning), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["exit_code"], 0);
}

/// Placeholders that resolve to nothing keep Prefect's behaviour (empty) but are warned
/// about, in `plan` and in the run's log, with the step id that was probably meant.
#[test]
fn template_misses_are_warned_about() {
    let (_t, dir) = support::tempdir();
    let project = "pull:\n  - prefect.deployments.steps.run_shell_script:\n      id: first\n      script: echo one\n  - prefect.deployments.steps.run_shell_script:\n      script: \"echo [{{ frist.stdout }}] [{{ $HOIST_UNSET_X }}] [{{ first.stdout }}]\"\n";
    let id = "`{{ frist.stdout }}`: no step output `frist` (did you mean `first`?), so it resolves to nothing (as in Prefect)";
    let env = "`{{ $HOIST_UNSET_X }}`: environment variable `HOIST_UNSET_X` is not set, so it resolves to nothing (as in Prefect)";
    let (code, out, err) = support::run_project(&dir, project, &["plan", "pull"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("      warning: {id}\n      warning: {env}\n")),
        "{out}"
    );
    assert_eq!(out.matches("warning:").count(), 2, "{out}");

    let (code, out, err) = support::run_project(&dir, project, &["pull"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["stdout"],
        "[] [] [one]"
    );
    assert!(
        err.contains(&format!("  run_shell_script | warning: {id}\n")),
        "{err}"
    );
    assert!(
        err.contains(&format!("  run_shell_script | warning: {env}\n")),
        "{err}"
    );
    assert_eq!(err.matches("warning:").count(), 2, "{err}");
}

/// The 2.x layout: `prefect.yaml` with the sections, `deployment.yaml` with the
/// deployments (a list, or one mapping), per-deployment sections honoured.
#[test]
fn legacy_layout_with_deployment_yaml() {
    let (_t, dir) = support::tempdir();
    std::fs::write(dir.join("prefect.yaml"), "name: old\nprefect-version: 2.10.3\npull:\n  - prefect.projects.steps.run_shell_script:\n      script: echo top\n").unwrap();
    std::fs::write(
        dir.join("deployment.yaml"),
        "name: legacy\nentrypoint: flows/f.py:f\npull:\n  - prefect.projects.steps.run_shell_script:\n      script: echo from deployment.yaml\n",
    )
    .unwrap();
    let p = project::load(&dir.join("prefect.yaml")).unwrap();
    assert_eq!(p.deployments.len(), 1);
    let (code, out, err) =
        run(hoist(&dir)
            .current_dir(&dir)
            .args(["pull", "--deployment", "legacy"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["stdout"],
        "from deployment.yaml"
    );
    let (code, out, _) = run(hoist(&dir).current_dir(&dir).arg("pull"));
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["stdout"],
        "top"
    );
}

/// `--output json` says why a step failed as a kind a program can act on, beside the
/// message for people.
#[test]
fn json_output_carries_the_kind_of_a_step_failure() {
    let (_t, dir) = support::tempdir();
    std::fs::copy(support::plugins::PROBE, dir.join("probe.wasm")).unwrap();
    let cases = [
        (
            "hoist: {grants: {./probe.wasm: [process:true, process:sleep, env:HOIST_PROBE]}}\npull:\n  - ./probe.wasm: {action: panic, message: boom}\n",
            "panicked",
        ),
        (
            "pull:\n  - prefect.deployments.steps.run_shell_script: {script: \"{{ prefect.blocks.secret.nope }}\"}\n",
            "template",
        ),
        (
            "pull:\n  - prefect.deployments.steps.set_working_directory: {directory: /no/such/dir}\n",
            "not-found",
        ),
    ];
    for (yaml, kind) in cases {
        let (code, out, err) = support::run_project(&dir, yaml, &["pull", "--output", "json"]);
        assert_eq!(code, 1, "{yaml}: {err}");
        let step: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(step["status"], "failed", "{out}");
        assert_eq!(step["error_kind"], kind, "{yaml}: {out}");
    }
}
