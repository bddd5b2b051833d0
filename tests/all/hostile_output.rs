//! What a plugin says cannot steer the user's terminal or the templating of the steps
//! after it. The `hostile` test plugin declares no capabilities: it logs, prints and
//! returns what the test scripts, through the real `hoist` binary.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{self, hoist, run};

/// A window title change, then a line break and a line that looks like Hoist's own.
const FORGED: &str = "\u{1b}]0;pwned\u{7}\n\u{2713} git_clone finished";

/// Characters a terminal would obey or display reordered.
const RAW: [char; 6] = ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\u{2066}', '\r'];

/// A project running the hostile plugin (copied next to prefect.yaml) with these steps.
fn project(dir: &Path, pull: Value) {
    std::fs::copy(support::plugins::HOSTILE, dir.join("hostile.wasm")).unwrap();
    // JSON is YAML; YAML wants control characters (C1 too) escaped: `\u009b`.
    let text: String = serde_json::to_string_pretty(&json!({ "pull": pull }))
        .unwrap()
        .chars()
        .map(|c| match c {
            c if c.is_ascii() => c.to_string(),
            c => format!("\\u{:04x}", c as u32),
        })
        .collect();
    std::fs::write(dir.join("prefect.yaml"), text).unwrap();
}

fn step(actions: Value) -> Value {
    json!({ "./hostile.wasm": { "actions": actions } })
}

/// No raw control character anywhere, and no line that starts with the forged text
/// (a line from a step always starts with the step's prefix).
fn assert_clean(what: &str, all: &str) {
    for c in RAW {
        assert!(
            !all.contains(c),
            "{what}: raw {:?} in the output:\n{all:?}",
            c
        );
    }
    for line in all.lines() {
        assert!(
            !line.trim_start().starts_with("\u{2713} git_clone"),
            "{what}: forged line {line:?} in:\n{all}"
        );
    }
}

#[test]
fn logs_prints_outputs_and_errors_cannot_drive_the_terminal() {
    let (_t, dir) = support::tempdir();
    let (_h, home) = support::tempdir();
    project(
        &dir,
        json!([step(json!([
            {"do": "log", "message": format!("log {FORGED}")},
            {"do": "log", "message": "csi \u{9b}2J bidi \u{202e}txt.exe\u{2066} cr\rover"},
            {"do": "print", "text": format!("print {FORGED}\n")},
            {"do": "output", "value": {"out": format!("out {FORGED} \u{9b} \u{202e}")}}
        ]))]),
    );
    for output in ["text", "json"] {
        let (code, out, err) = run(hoist(&home)
            .current_dir(&dir)
            .args(["pull", "--output", output]));
        assert_eq!(code, 0, "{err}");
        let all = format!("{out}{err}");
        assert_clean(output, &all);
        // Every line is there, escaped and prefixed with the step.
        for line in [
            "| log \\u{1b}]0;pwned\\u{7}",
            "| \u{2713} git_clone finished",
            "| csi \\u{9b}2J bidi \\u{202e}txt.exe\\u{2066} cr\\rover",
            "| print \\u{1b}]0;pwned\\u{7}",
        ] {
            assert!(err.lines().any(|l| l.contains(line)), "{line:?} in\n{err}");
        }
        // Outputs on stdout are the same JSON, with what a terminal obeys escaped.
        let last = if output == "text" {
            out.clone()
        } else {
            out.lines().last().unwrap().to_string()
        };
        let v: Value = serde_json::from_str(&last).unwrap();
        let outputs = if output == "text" { &v } else { &v["outputs"] };
        assert_eq!(outputs["out"], format!("out {FORGED} \u{9b} \u{202e}"));
    }

    // Written literally, an unknown action is refused by the host before anything runs,
    // checked against the plugin's schema (the plugin's names, made printable).
    project(&dir, json!([step(json!([{ "do": FORGED }]))]));
    let (code, out, err) = run(hoist(&home).current_dir(&dir).arg("pull"));
    assert_eq!(code, 1, "{err}");
    assert_clean("refusal", &format!("{out}{err}"));
    assert!(
        err.contains("input `actions[0].do`: expected one of"),
        "{err}"
    );
    // Through a placeholder it reaches the step, whose error quotes it (serde's unknown
    // variant).
    project(
        &dir,
        json!([step(json!([{ "do": "{{ $HOIST_FORGED }}" }]))]),
    );
    let (code, out, err) = run(hoist(&home)
        .env("HOIST_FORGED", FORGED)
        .current_dir(&dir)
        .arg("pull"));
    assert_eq!(code, 1, "{err}");
    assert_clean("error", &format!("{out}{err}"));
    assert!(
        err.contains("unknown variant `\\u{1b}]0;pwned\\u{7}\\n\u{2713} git_clone finished`"),
        "{err}"
    );
    let (code, out, err) = run(hoist(&home)
        .env("HOIST_FORGED", FORGED)
        .current_dir(&dir)
        .args(["pull", "--output", "json"]));
    assert_eq!(code, 1, "{err}");
    assert_clean("error, json", &format!("{out}{err}"));

    // The same through `hoist step run`, whose log prefix is the plugin's own name.
    let hostile = dir.join("hostile.wasm");
    let (code, out, err) = run(hoist(&home).current_dir(&dir).args([
        "step",
        "run",
        hostile.to_str().unwrap(),
        "--inputs-json",
        &json!({"actions": [
            {"do": "log", "message": FORGED},
            {"do": "output", "value": {"out": "\u{9b}\u{202e}"}}
        ]})
        .to_string(),
    ]));
    assert_eq!(code, 0, "{err}");
    assert_clean("step run", &format!("{out}{err}"));
    let (code, out, err) = run(hoist(&home).current_dir(&dir).args([
        "step",
        "run",
        hostile.to_str().unwrap(),
        "--inputs-json",
        &json!({"actions": [{"do": FORGED}]}).to_string(),
    ]));
    assert_eq!(code, 1, "{err}");
    assert_clean("step run error", &format!("{out}{err}"));
}

/// What a granted process prints goes through the same log.
#[test]
fn process_output_cannot_drive_the_terminal() {
    let (_t, dir) = support::tempdir();
    let (_h, home) = support::tempdir();
    std::fs::copy(
        support::plugins::HOSTILE_GRANTED,
        dir.join("hostile_granted.wasm"),
    )
    .unwrap();
    let script = "printf 'out \\033]0;pwned\\007\\n\\342\\234\\223 git_clone finished\\r\\n'; \
                  printf 'err \\302\\233c \\342\\200\\256\\r\\342\\234\\223 git_clone finished\\n' >&2";
    let doc = json!({
        "hoist": {"grants": {"./hostile_granted.wasm": ["set-cwd", "process:git", "process:sh", "net:*"]}},
        "pull": [{"./hostile_granted.wasm": {"actions": [
            {"do": "spawn", "program": "sh", "args": ["-c", script]}
        ]}}],
    });
    std::fs::write(
        dir.join("prefect.yaml"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .unwrap();
    let (code, out, err) = run(hoist(&home).current_dir(&dir).arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert_clean("process", &format!("{out}{err}"));
    for line in [
        "| out \\u{1b}]0;pwned\\u{7}",
        "| \u{2713} git_clone finished",
        "| err \\u{9b}c \\u{202e}\\r\u{2713} git_clone finished",
    ] {
        assert!(err.lines().any(|l| l.contains(line)), "{line:?} in\n{err}");
    }
}

#[test]
fn describe_texts_are_listed_printable() {
    let (_t, dir) = support::tempdir();
    let (_h, home) = support::tempdir();
    // Installed, the plugin's summary (a retitle and a forged line) is listed.
    let installed = support::home_of(&home).join("plugins");
    std::fs::create_dir_all(&installed).unwrap();
    std::fs::copy(support::plugins::HOSTILE, installed.join("hostile.wasm")).unwrap();
    let (code, out, err) = run(hoist(&home).args(["step", "ls"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "Test plugin \\u{1b}]0;pwned\\u{7}that attacks the host\\n\u{2713} git_clone finished"
        ),
        "{out}"
    );
    assert_clean("step ls", &format!("{out}{err}"));
    // Its input schema's texts too, for people and as JSON.
    let (code, out, err) = run(hoist(&home).args(["step", "describe", "hostile"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("      actions  list of mapping, required: Actions \\u{1b}]0;pwned\\u{7} \u{2713} git_clone finished \\u{202e}txt\n"),
        "{out}"
    );
    assert_clean("step describe", &format!("{out}{err}"));
    for args in [
        &["step", "describe", "hostile", "--output", "json"][..],
        &["step", "ls", "--output", "json"][..],
    ] {
        let (code, out, err) = run(hoist(&home).args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_clean("describe as JSON", &format!("{out}{err}"));
    }

    project(
        &dir,
        json!([step(json!([{"do": "log", "message": FORGED}]))]),
    );
    let (code, out, err) = run(hoist(&home).current_dir(&dir).arg("plan"));
    assert_eq!(code, 0, "{err}");
    assert_clean("plan", &format!("{out}{err}"));
}

/// A plugin's output that is placeholder text is handed on as that text: the block,
/// variable and env passes only read what the user wrote.
#[test]
fn outputs_are_never_templated_again() {
    let (_t, dir) = support::tempdir();
    let (_h, home) = support::tempdir();
    let block_secret = "block-secret-4f1e9a";
    let env_secret = "env-secret-77c0d2";
    let plain = "plain-env-value-31ab";
    let variable = "variable-value-92de";
    for (args, what) in [
        (
            vec!["block", "set", "secret", "x", "--value", block_secret],
            "block",
        ),
        (vec!["variable", "set", "v", variable], "variable"),
    ] {
        let (code, _, err) = run(hoist(&home).args(&args));
        assert_eq!(code, 0, "{what}: {err}");
    }
    // The texts reach the plugin from files, so the user's own inputs hold none of them.
    let texts = [
        "{{ prefect.blocks.secret.x }}",
        "{{ $HOIST_TEST_API_TOKEN }}",
        "{{ $HOIST_TEST_PLAIN }}",
        "{{ prefect.variables.v }}",
        ".blocks.secret.x",
    ];
    let mut reads = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}.txt")), t).unwrap();
        reads.push(json!({"do": "read", "path": format!("{i}.txt")}));
    }
    let mut evil = step(json!(reads));
    evil["./hostile.wasm"]["id"] = json!("evil");
    let echo = step(json!([{"do": "output", "value": {
        "block": "{{ evil.results[0].ok }}",
        "env": "{{ evil.results[1].ok }}",
        "plain": "{{ evil.results[2].ok }}",
        "var": "{{ evil.results[3].ok }}",
        "embedded": "x {{ evil.results[0].ok }} {{ evil.results[3].ok }} y",
        "joined": "{{ prefect{{ evil.results[4].ok }} }}",
        "whole": "{{ evil.results }}",
        // What the user wrote still resolves.
        "mine": "{{ prefect.variables.v }}",
    }}]));
    project(&dir, json!([evil, echo]));
    let (code, out, err) = run(hoist(&home)
        .current_dir(&dir)
        .env("HOIST_TEST_API_TOKEN", env_secret)
        .env("HOIST_TEST_PLAIN", plain)
        .arg("pull"));
    assert_eq!(code, 0, "{err}");
    let outputs: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(outputs["block"], texts[0], "{out}");
    assert_eq!(outputs["env"], texts[1], "{out}");
    assert_eq!(outputs["plain"], texts[2], "{out}");
    assert_eq!(outputs["var"], texts[3], "{out}");
    assert_eq!(
        outputs["embedded"],
        format!("x {} {} y", texts[0], texts[3]),
        "{out}"
    );
    assert_eq!(outputs["joined"], texts[0], "{out}");
    assert_eq!(outputs["whole"][3], json!({"ok": texts[3]}), "{out}");
    assert_eq!(outputs["mine"], variable, "{out}");
    let all = format!("{out}{err}");
    for secret in [block_secret, env_secret, plain] {
        assert!(!all.contains(secret), "{secret} in\n{all}");
    }
    assert!(
        !all.contains("********"),
        "nothing was resolved to mask:\n{all}"
    );
}

/// An output key is the plugin's text too: offered as "did you mean" in a template-miss
/// warning, it reaches the log printable, one line, under the step's prefix.
#[test]
fn output_keys_in_template_warnings_are_printable() {
    let (_t, dir) = support::tempdir();
    // One edit from the user's typo, so it is offered.
    let key = "firs\u{1b}".to_string();
    let typo = "firsx";
    project(
        &dir,
        json!([
            step(json!([{"do": "output", "value": {key.clone(): "v"}}])),
            {"prefect.deployments.steps.run_shell_script": {"script": format!("echo [{{{{ {typo}.stdout }}}}]")}},
        ]),
    );
    let (code, out, err) = run(hoist(&dir).current_dir(&dir).arg("pull"));
    assert_eq!(code, 0, "{err}");
    assert_clean("template warning", &format!("{out}{err}"));
    let warning = err
        .lines()
        .find(|l| l.contains("warning: `{{ firsx.stdout }}`"))
        .unwrap_or_else(|| panic!("no warning in\n{err}"));
    assert!(warning.starts_with("  run_shell_script | "), "{warning}");
    assert!(
        warning.contains("(did you mean `firs\\u{1b}`?)"),
        "{warning}"
    );
}
