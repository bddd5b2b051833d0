//! Fixture tests: each file under `tests/fixtures/<kind>/` holds cases with their
//! expected result (`expect`, or `expect_error`: the whole message, exactly).
//! `BLESS=1 cargo test` rewrites the expectations from what the code does now; review
//! the diff against `shared/spec/conformance-cases.md` before committing it. BLESS
//! together with `CI` or `HOIST_CI` fails: CI checks expectations, it never writes them.

use std::path::{Path, PathBuf};

use hoist::template::{self, Blocks, Context, Env, Options, Resolved};
use serde_json::{Map, Value};

const UNSET: &str = "<UNSET>";

pub fn fixture_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(kind)
}

/// Every `*.yaml` file of a fixture folder, parsed, with a function computing each case's
/// result; checks (or with BLESS=1 rewrites) the expectations.
pub fn walk(kind: &str, mut run: impl FnMut(&Map<String, Value>) -> Result<Value, String>) {
    let bless = crate::support::bless();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {kind}");
    let mut failures = Vec::new();
    let mut total = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut doc: Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let cases = doc["cases"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{}: no `cases` list", file.display()));
        for case in cases.iter_mut() {
            total += 1;
            let c = case.as_object_mut().unwrap();
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            let actual = run(c);
            if bless {
                c.remove("expect");
                c.remove("expect_error");
                match actual {
                    Ok(v) => c.insert("expect".into(), v),
                    Err(e) => c.insert("expect_error".into(), Value::String(e)),
                };
                continue;
            }
            let ok = match (&actual, c.get("expect"), c.get("expect_error")) {
                (Ok(v), Some(want), None) => v == want,
                (Err(e), None, Some(Value::String(want))) => e == want,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{} / {name}:\n  expected {}\n  got      {}",
                    file.file_name().unwrap().to_string_lossy(),
                    c.get("expect")
                        .map(|v| v.to_string())
                        .or_else(|| c.get("expect_error").map(|e| format!("error {e}")))
                        .unwrap_or_default(),
                    match &actual {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("error: {e}"),
                    }
                ));
            }
        }
        if bless {
            let body = serde_yaml_ng::to_string(&doc).unwrap();
            std::fs::write(&file, format!("{header}{body}")).unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} {kind} fixtures failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn env_of(c: &Map<String, Value>) -> Env {
    c.get("env")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn blocks_of(c: &Map<String, Value>) -> Blocks {
    let mut b = Blocks::default();
    if let Some(m) = c.get("blocks").and_then(Value::as_object) {
        for (k, v) in m {
            let (slug, name) = k.split_once('/').expect("blocks are keyed slug/name");
            b.by_name.insert((slug.into(), name.into()), v.clone());
        }
    }
    if let Some(m) = c.get("block_ids").and_then(Value::as_object) {
        for (k, v) in m {
            b.by_id.insert(k.clone(), v.clone());
        }
    }
    b
}

#[test]
fn template_fixtures() {
    walk("template", |c| {
        let template = c.get("template").cloned().unwrap_or(Value::Null);
        let outputs = c
            .get("outputs")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        let env = env_of(c);
        let mode = c.get("mode").cloned().unwrap_or(Value::Null);
        let prefixes: Vec<String> = mode["skip_prefixes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let opts = Options {
            remove_unset: !mode["keep_unset"].as_bool().unwrap_or(false),
            skip_prefixes: &prefixes,
        };
        let variables = c
            .get("variables")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        match c.get("pass").and_then(Value::as_str).unwrap_or("values") {
            "values" => Ok(
                match template::apply_values(&template, &outputs, &env, &opts) {
                    Resolved::Value(v) => v,
                    Resolved::Unset => Value::String(UNSET.into()),
                },
            ),
            "blocks" => {
                template::resolve_blocks(&template, &blocks_of(c)).map_err(|e| e.to_string())
            }
            "variables" => Ok(template::resolve_variables(&template, &variables)),
            "step" => {
                let cx = Context {
                    outputs,
                    env,
                    blocks: blocks_of(c),
                    variables,
                };
                template::resolve_step_inputs(&template, &cx).map_err(|e| e.to_string())
            }
            other => panic!("unknown pass {other}"),
        }
    });
}

/// The fuzz target's property, in CI: 20,000 generated templates (fixed seed) built
/// from the characters that matter to the grammar never make the engine panic.
#[test]
fn template_engine_never_panics_on_generated_input() {
    let alphabet: Vec<char> = "{{}} $.-[]0123456789-abcxyz_prefect.blocks.variables.valueé\n\"'"
        .chars()
        .collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let values = serde_json::json!({"a": [1, {"b": "{{ c }}"}], "s": "héllo", "value": {"x": null}, "secret": {"value": "{{ $HOME }}"}, "-1": 2});
    let mut blocks = Blocks::default();
    for (k, v) in values.as_object().unwrap() {
        blocks.by_name.insert((k.clone(), k.clone()), v.clone());
        blocks.by_id.insert(k.clone(), v.clone());
    }
    let variables = values
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let cx = Context {
        outputs: values.clone(),
        env: [("HOME".to_string(), "/root".to_string())].into(),
        blocks,
        variables,
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let tmpl = if next() % 3 == 0 {
            serde_json::json!({"k": s, "l": [s.clone(), 1]})
        } else {
            Value::String(s)
        };
        for remove_unset in [true, false] {
            let opts = Options {
                remove_unset,
                skip_prefixes: &["ctx."],
            };
            let _ = template::apply_values(&tmpl, &cx.outputs, &cx.env, &opts);
        }
        let _ = template::resolve_blocks(&tmpl, &cx.blocks);
        let _ = template::resolve_variables(&tmpl, &cx.variables);
        let _ = template::resolve_step_inputs(&tmpl, &cx);
    }
}
