//! The deployment as `prefect deploy` would register it (spec §3.10): the declaration's
//! fields templated with the build/push outputs, and its pull steps "baked" with those
//! outputs while references to later pull steps, blocks and variables stay for the worker.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Action, Deployment, Project};
use crate::template::{self, Blocks, Env, Options, Resolved};

/// Fields that are the steps themselves, not deployment configuration.
const STEP_KEYS: &[&str] = &["build", "push", "pull"];

fn unwrap_or(r: Resolved, empty: Value) -> Value {
    match r {
        Resolved::Value(v) => v,
        Resolved::Unset => empty,
    }
}

/// Step 2 of §3.10, before any step runs: blocks, variables, then the *environment as a
/// values dictionary* with unresolved placeholders kept (so `{{ HOME }}` is read from the
/// environment here — Prefect's quirk — and step-output placeholders survive).
pub fn pre_resolve(
    config: &Map<String, Value>,
    env: &Env,
    blocks: &Blocks,
    variables: &std::collections::BTreeMap<String, Value>,
) -> Result<Map<String, Value>, template::TemplateError> {
    let v = Value::Object(
        config
            .iter()
            .filter(|(k, _)| !STEP_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let v = template::resolve_blocks(&v, blocks)?;
    let v = template::resolve_variables(&v, variables);
    let env_values = Value::Object(
        env.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    let keep = Options {
        remove_unset: false,
        skip_prefixes: &[],
    };
    Ok(
        match unwrap_or(
            template::apply_values(&v, &env_values, env, &keep),
            Value::Object(Map::new()),
        ) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    )
}

/// A step output that would be written into the deployment as template text.
#[derive(Debug, thiserror::Error)]
#[error(
    "the output `{0}` of a build or push step holds template text (`{{{{`); Hoist does not \
     write it into the deployment, where Prefect would resolve it later (a step could \
     otherwise make the flow run read `{{{{ prefect.blocks.secret... }}}}`)"
)]
pub struct TemplateInOutput(pub String);

/// The first output string holding `{{`, as a key path.
fn template_text(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains("{{") => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| template_text(x, &format!("{path}[{i}]"))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            template_text(x, &p)
        }),
        _ => None,
    }
}

/// Steps 5–8 of §3.10, after build and push: the registered deployment.
///
/// Outputs are substituted into fields Prefect templates again later (pull steps, job
/// variables): an output holding template text is refused rather than baked in, as the
/// runner substitutes outputs as opaque values.
pub fn resolve(
    project: &Project,
    deployment: &Deployment,
    config: &Map<String, Value>,
    outputs: &Map<String, Value>,
    env: &Env,
    cwd: &Path,
) -> Result<Value, TemplateInOutput> {
    if let Some(path) = template_text(&Value::Object(outputs.clone()), "") {
        return Err(TemplateInOutput(path));
    }
    let values = Value::Object(outputs.clone());
    let on = Options {
        remove_unset: true,
        skip_prefixes: &["ctx."],
    };
    let schedules = schedules(config, &values, env, &on);
    let mut spec = declaration(config, &values, env, &on);
    spec.insert("schedules".into(), Value::Array(schedules));
    if let Some(Value::Array(t)) = config.get("triggers") {
        spec.insert("triggers".into(), triggers(t, &values, env, &on));
    }
    let pull = pull_steps(project, deployment, &spec, &values, env, cwd);
    spec.insert("pull_steps".into(), Value::Array(pull));
    Ok(Value::Object(spec))
}

/// Step 5: schedules templated, then `active` read as a boolean.
fn schedules(
    config: &Map<String, Value>,
    values: &Value,
    env: &Env,
    on: &Options<'_>,
) -> Vec<Value> {
    let mut schedules: Vec<Value> = match config.get("schedules") {
        Some(Value::Array(items)) => items.clone(),
        _ => match config.get("schedule") {
            Some(Value::Object(s)) if !s.is_empty() => vec![Value::Object(s.clone())],
            _ => Vec::new(),
        },
    };
    for s in schedules.iter_mut() {
        *s = unwrap_or(
            template::apply_values(s, values, env, on),
            Value::Object(Map::new()),
        );
        if let Some(active) = s.get_mut("active")
            && let Value::String(text) = active
        {
            match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => *active = Value::Bool(true),
                "false" | "0" | "no" | "off" => *active = Value::Bool(false),
                _ => {}
            }
        }
    }
    schedules
}

/// Step 6: the rest of the declaration; unresolved whole values vanish, embedded ones
/// become "", `{{ ctx.* }}` survives for the worker.
fn declaration(
    config: &Map<String, Value>,
    values: &Value,
    env: &Env,
    on: &Options<'_>,
) -> Map<String, Value> {
    let mut spec = Map::new();
    for (k, v) in config {
        if STEP_KEYS.contains(&k.as_str())
            || matches!(k.as_str(), "schedule" | "schedules" | "triggers")
        {
            continue;
        }
        if let Resolved::Value(v) = template::apply_values(v, values, env, on) {
            spec.insert(k.clone(), v);
        }
    }
    // `tags` given as a string is a sequence of characters to Prefect (one tag each).
    if let Some(Value::String(s)) = spec.get("tags") {
        let chars = s.chars().map(|c| Value::String(c.to_string())).collect();
        spec.insert("tags".into(), Value::Array(chars));
    }
    spec
}

/// Step 7: triggers templated except their `parameters`, kept for event templating.
fn triggers(triggers: &[Value], values: &Value, env: &Env, on: &Options<'_>) -> Value {
    let templated = |m: &Map<String, Value>| {
        m.iter()
            .filter_map(|(k, v)| {
                if k == "parameters" {
                    return Some((k.clone(), v.clone()));
                }
                match template::apply_values(v, values, env, on) {
                    Resolved::Value(v) => Some((k.clone(), v)),
                    Resolved::Unset => None,
                }
            })
            .collect()
    };
    Value::Array(
        triggers
            .iter()
            .map(|trig| match trig {
                Value::Object(m) => Value::Object(templated(m)),
                other => other.clone(),
            })
            .collect(),
    )
}

/// Step 8: pull steps, baked with the outputs but keeping what cannot resolve yet.
fn pull_steps(
    project: &Project,
    deployment: &Deployment,
    spec: &Map<String, Value>,
    values: &Value,
    env: &Env,
    cwd: &Path,
) -> Vec<Value> {
    let keep = Options {
        remove_unset: false,
        skip_prefixes: &[],
    };
    let steps = project.steps(Action::Pull, Some(deployment));
    if steps.is_empty() && !project.pull_explicitly_empty(Some(deployment)) {
        return default_pull(project, deployment, spec, cwd);
    }
    steps
        .iter()
        .map(|s| {
            unwrap_or(
                template::apply_values(&s.raw, values, env, &keep),
                s.raw.clone(),
            )
        })
        .collect()
}

/// The pull action `prefect deploy` generates, non-interactively, when a deployment has
/// none it can use (§5.5): into `/opt/prefect/<dir>` for an image built from the automatic
/// Dockerfile, nothing for another Dockerfile (Prefect would ask), `/opt/prefect` when the
/// work pool names an image, else the deploying machine's working directory.
fn default_pull(
    project: &Project,
    deployment: &Deployment,
    spec: &Map<String, Value>,
    cwd: &Path,
) -> Vec<Value> {
    let set_wd = |dir: String| {
        vec![
            serde_json::json!({ "prefect.deployments.steps.set_working_directory": { "directory": dir } }),
        ]
    };
    let docker = project
        .steps(Action::Build, Some(deployment))
        .iter()
        .find(|s| s.name == "prefect_docker.deployments.steps.build_docker_image");
    let base = cwd
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(step) = docker {
        return match step
            .inputs
            .get("dockerfile")
            .and_then(Value::as_str)
            .unwrap_or("auto")
        {
            "auto" => set_wd(format!("/opt/prefect/{base}")),
            _ => Vec::new(),
        };
    }
    let image = spec
        .get("work_pool")
        .and_then(|w| w.get("job_variables"))
        .and_then(|j| j.get("image"));
    if image.is_some_and(|i| !i.is_null()) {
        return set_wd("/opt/prefect".into());
    }
    set_wd(cwd.display().to_string())
}
