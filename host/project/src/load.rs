//! Reading a project file into a [`Project`]: YAML (anchors, aliases and `<<` merges
//! expanded), then the shape of every section, step and deployment checked, so nothing
//! runs when the file cannot be understood.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Deployment, Project, Section, StepEntry};

/// Why a project file could not be used. Messages start with `file[:line[:column]]`.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The file could not be read.
    #[error("{}: cannot read the project file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML itself is invalid.
    #[error("{}:{line}:{column}: invalid YAML: {message}\n{snippet}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
        /// The offending line with a caret.
        snippet: String,
    },
    /// The content has the wrong shape.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Shape {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong, naming the deployment and field.
        message: String,
    },
}

/// Read and parse a project file (and, for the 2.x layout, its `deployment.yaml`).
pub fn load(path: &Path) -> Result<Project, ProjectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProjectError::Read {
        path: path.into(),
        source,
    })?;
    let mut project = parse(path, &text)?;
    let legacy = path.with_file_name("deployment.yaml");
    if project.deployments.is_empty() && legacy.exists() {
        let text = std::fs::read_to_string(&legacy).map_err(|source| ProjectError::Read {
            path: legacy.clone(),
            source,
        })?;
        let doc = yaml_to_json(&legacy, &text)?;
        let lines = LineFinder::new(&text);
        let list = match doc {
            Value::Object(mut m) if m.contains_key("deployments") => {
                m.remove("deployments").unwrap_or(Value::Null)
            }
            Value::Object(m) => Value::Array(vec![Value::Object(m)]),
            Value::Null => Value::Array(vec![]),
            other => {
                return Err(shape(
                    &legacy,
                    None,
                    format!("the file must be a mapping, got {}", type_name(&other)),
                ));
            }
        };
        project.deployments = deployments(&legacy, &list, &mut lines.clone())?;
    }
    Ok(project)
}

/// Parse project-file text; `path` is used in messages only.
pub fn parse(path: &Path, text: &str) -> Result<Project, ProjectError> {
    let doc = yaml_to_json(path, text)?;
    parse_doc(path, doc, LineFinder::new(text))
}

/// A project already in JSON form (the pull steps a Prefect server hands a worker, as
/// `{"pull": [...]}`), checked as a file's would be; `path` names it in messages,
/// which carry no line numbers.
pub fn from_value(path: &Path, doc: Value) -> Result<Project, ProjectError> {
    parse_doc(path, doc, LineFinder::new(""))
}

fn parse_doc(path: &Path, doc: Value, mut lines: LineFinder<'_>) -> Result<Project, ProjectError> {
    let top = match doc {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            return Err(shape(
                path,
                None,
                format!(
                    "the file must be a mapping of `name`, `build`, `push`, `pull`, `deployments`...; got {}",
                    type_name(&other)
                ),
            ));
        }
    };
    let opt_str = |key: &str| -> Result<Option<String>, ProjectError> {
        match top.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(shape(
                path,
                lines.clone().key_line(key),
                format!(
                    "field `{key}` must be a string, got {} (quote it: {key}: \"{}\")",
                    type_name(other),
                    plain(other)
                ),
            )),
        }
    };
    let name = opt_str("name")?;
    let prefect_version = opt_str("prefect-version")?;
    let build = section(path, &top, "build", "", &mut lines)?;
    let push = section(path, &top, "push", "", &mut lines)?;
    let pull = section(path, &top, "pull", "", &mut lines)?;
    let deployments = deployments(
        path,
        top.get("deployments").unwrap_or(&Value::Null),
        &mut lines,
    )?;
    let grants = grants(path, top.get("hoist"), &mut lines)?;
    Ok(Project {
        path: path.into(),
        name,
        prefect_version,
        build,
        push,
        pull,
        deployments,
        grants,
    })
}

/// `hoist: {grants: {<step name>: [<capability>...]}}`.
fn grants(
    path: &Path,
    v: Option<&Value>,
    lines: &mut LineFinder,
) -> Result<std::collections::BTreeMap<String, Vec<hoist_policy::Capability>>, ProjectError> {
    let mut out = std::collections::BTreeMap::new();
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let line = lines.key_line("hoist");
    let grants = match v {
        Value::Object(m) => m.get("grants").cloned().unwrap_or(Value::Null),
        other => {
            return Err(shape(
                path,
                line,
                format!(
                    "field `hoist` must be a mapping with `grants`, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let Value::Object(grants) = grants else {
        if grants.is_null() {
            return Ok(out);
        }
        return Err(shape(
            path,
            line,
            "`hoist.grants` must map step names to lists of capabilities".into(),
        ));
    };
    for (step, caps) in grants {
        let list = match caps {
            Value::Array(items) => items,
            Value::String(s) => vec![Value::String(s)],
            other => {
                return Err(shape(
                    path,
                    line,
                    format!(
                        "`hoist.grants.{step}` must be a list of capabilities, got {}",
                        type_name(&other)
                    ),
                ));
            }
        };
        let mut parsed = Vec::new();
        for c in list {
            let text = plain(&c);
            parsed.push(text.parse().map_err(|e: hoist_policy::CapabilityError| {
                shape(path, line, format!("`hoist.grants.{step}`: {e}"))
            })?);
        }
        out.entry(crate::grant_key(&step))
            .or_insert_with(Vec::new)
            .extend(parsed);
    }
    Ok(out)
}

fn shape(path: &Path, line: Option<usize>, message: String) -> ProjectError {
    ProjectError::Shape {
        path: path.into(),
        line,
        message,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn deployments(
    path: &Path,
    v: &Value,
    lines: &mut LineFinder,
) -> Result<Vec<Deployment>, ProjectError> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(shape(
                path,
                lines.key_line("deployments"),
                format!(
                    "field `deployments` must be a list of deployments, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(shape(
                path,
                None,
                format!(
                    "deployments[{index}] must be a mapping with `name`, `entrypoint`, ...; got {}",
                    type_name(item)
                ),
            ));
        };
        let name = match m.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(shape(
                    path,
                    None,
                    format!(
                        "deployments[{index}]: field `name` must be a string, got {}",
                        type_name(other)
                    ),
                ));
            }
        };
        let label = name
            .as_ref()
            .map(|n| format!("deployment `{n}`"))
            .unwrap_or_else(|| format!("deployment #{index}"));
        check_fields(path, &label, m)?;
        let prefix = match &name {
            Some(n) => format!("deployments[{n}]."),
            None => format!("deployments[{index}]."),
        };
        out.push(Deployment {
            index,
            name,
            build: section(path, m, "build", &prefix, lines)?,
            push: section(path, m, "push", &prefix, lines)?,
            pull: section(path, m, "pull", &prefix, lines)?,
            raw: m.clone(),
        });
    }
    Ok(out)
}

/// Types of the deployment fields Prefect validates (§5.3).
fn check_fields(path: &Path, label: &str, m: &Map<String, Value>) -> Result<(), ProjectError> {
    use Value::*;
    for (key, v) in m {
        let ok = match (key.as_str(), v) {
            (_, Null) => true,
            (
                "version" | "version_type" | "description" | "entrypoint" | "flow_name",
                String(_),
            ) => true,
            ("version" | "version_type" | "description" | "entrypoint" | "flow_name", _) => false,
            ("tags", Array(_) | String(_)) => true,
            ("tags", _) => false,
            ("schedule" | "parameters" | "work_pool", Object(_)) => true,
            ("schedule" | "parameters" | "work_pool", _) => false,
            ("schedules" | "triggers" | "sla", Array(_)) => true,
            ("schedules" | "triggers" | "sla", _) => false,
            ("paused" | "enforce_parameter_schema", Bool(_)) => true,
            ("paused" | "enforce_parameter_schema", _) => false,
            ("concurrency_limit", Number(_) | Object(_)) => true,
            ("concurrency_limit", _) => false,
            _ => true,
        };
        if !ok {
            let hint = if matches!(v, Number(_)) && key == "version" {
                format!(" (quote it: version: \"{v}\")")
            } else {
                std::string::String::new()
            };
            return Err(shape(
                path,
                None,
                format!(
                    "{label}: field `{key}` has the wrong type: {}{hint}",
                    type_name(v)
                ),
            ));
        }
    }
    if let Some(Object(wp)) = m.get("work_pool") {
        for (key, v) in wp {
            let ok = match (key.as_str(), v) {
                (_, Null) => true,
                ("name" | "work_queue_name", String(_)) => true,
                ("job_variables", Object(_)) => true,
                ("name" | "work_queue_name" | "job_variables", _) => false,
                _ => true,
            };
            if !ok {
                return Err(shape(
                    path,
                    None,
                    format!(
                        "{label}: field `work_pool.{key}` has the wrong type: {}",
                        type_name(v)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn section(
    path: &Path,
    m: &Map<String, Value>,
    key: &str,
    prefix: &str,
    lines: &mut LineFinder,
) -> Result<Section, ProjectError> {
    let items: Vec<Value> = match m.get(key) {
        None => return Ok(Section::Absent),
        Some(Value::Null) => return Ok(Section::Null),
        Some(Value::Object(o)) if o.is_empty() => return Ok(Section::EmptyMapping),
        Some(Value::Object(o)) => vec![Value::Object(o.clone())],
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return Err(shape(
                path,
                lines.clone().key_line(key),
                format!(
                    "{prefix}{key} must be a list of steps, a single step mapping, or null; got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let position = format!("{prefix}{key}[{i}]");
        let entry = match item {
            Value::Null => continue,
            Value::Object(o) if o.is_empty() => continue,
            Value::Object(o) => o,
            other => {
                return Err(shape(
                    path,
                    None,
                    format!(
                        "{position}: a step must be a mapping `- <step name>: {{inputs}}`, got {}",
                        type_name(&other)
                    ),
                ));
            }
        };
        steps.push(step(path, entry, position, lines)?);
    }
    Ok(Section::Steps(steps))
}

/// One step of a section: `<name>: {inputs}` with `id` and `requires` taken out.
fn step(
    path: &Path,
    entry: Map<String, Value>,
    position: String,
    lines: &mut LineFinder,
) -> Result<StepEntry, ProjectError> {
    let name = entry.keys().next().expect("a non-empty mapping").clone();
    let line = lines.step_line(&name);
    let fail = |what: String| shape(path, line, format!("{position} (`{name}`): {what}"));
    if entry.len() > 1 {
        let extra: Vec<&str> = entry.keys().skip(1).map(String::as_str).collect();
        return Err(fail(format!(
            "Step has unexpected additional keys: {} (a step is a mapping with exactly one key, the step's name; indent its inputs under it)",
            extra.join(", ")
        )));
    }
    let mut inputs = match &entry[&name] {
        Value::Object(o) => o.clone(),
        Value::Null => {
            return Err(fail(format!(
                "the step has no inputs; write `{name}: {{}}` if it needs none"
            )));
        }
        other => {
            return Err(fail(format!(
                "the step's inputs must be a mapping, got {}",
                type_name(other)
            )));
        }
    };
    let id = match inputs.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(plain(&other)),
    };
    let requires = match inputs.remove("requires") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => items.iter().map(plain).collect(),
        Some(other) => {
            return Err(fail(format!(
                "`requires` must be a string or a list of strings, got {}",
                type_name(&other)
            )));
        }
    };
    Ok(StepEntry {
        position,
        line,
        name,
        inputs,
        id,
        requires,
        raw: Value::Object(entry),
    })
}

/// YAML text → JSON value, with anchors, aliases and merge keys expanded.
fn yaml_to_json(path: &Path, text: &str) -> Result<Value, ProjectError> {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        yaml_error(path, text, line, column, e.to_string())
    })?;
    doc.apply_merge()
        .map_err(|e| yaml_error(path, text, 1, 1, format!("cannot apply `<<` merge: {e}")))?;
    convert(&doc).map_err(|what| {
        // The usual cause: an unquoted placeholder, which YAML reads as a flow mapping.
        let (line, column) = unquoted_placeholder(text).unwrap_or((1, 1));
        yaml_error(path, text, line, column, what)
    })
}

fn yaml_error(
    path: &Path,
    text: &str,
    line: usize,
    column: usize,
    message: String,
) -> ProjectError {
    let src = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let snippet = format!(
        "{line:>5} | {src}\n      | {}^",
        " ".repeat(column.saturating_sub(1))
    );
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string();
    ProjectError::Yaml {
        path: path.into(),
        line,
        column,
        message,
        snippet,
    }
}

fn unquoted_placeholder(text: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let code = l.split(" #").next().unwrap_or(l);
        let pos = code
            .find(": {{")
            .map(|p| p + 2)
            .or_else(|| code.find("- {{").map(|p| p + 2))?;
        Some((i + 1, pos + 1))
    })
}

fn convert(v: &serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(convert).collect::<Result<_, _>>()?),
        Y::Mapping(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s.clone(),
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => {
                        if *b {
                            "True".into()
                        } else {
                            "False".into()
                        }
                    }
                    Y::Null => "None".into(),
                    Y::Mapping(_) | Y::Sequence(_) | Y::Tagged(_) => {
                        return Err("a mapping key is itself a mapping or list; an unquoted `{{ placeholder }}` is read this way by YAML: quote it, e.g. directory: \"{{ clone.directory }}\"".into());
                    }
                };
                out.insert(key, convert(v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => convert(&t.value)?,
    })
}

/// Finds the line of the n-th `<name>:` in the text, in the order steps are read.
#[derive(Clone)]
struct LineFinder<'a> {
    text: &'a str,
    seen: HashMap<String, usize>,
}

impl<'a> LineFinder<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            seen: HashMap::new(),
        }
    }

    fn step_line(&mut self, name: &str) -> Option<usize> {
        let n = self.seen.entry(name.to_string()).or_insert(0);
        let lines: Vec<usize> = self
            .text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ").trim_start();
                t.strip_prefix(name).is_some_and(|r| r.starts_with(':'))
            })
            .map(|(i, _)| i + 1)
            .collect();
        let line = lines.get(*n).or(lines.last()).copied();
        *n += 1;
        line
    }

    fn key_line(&mut self, key: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|r| r.starts_with(':'))
            })
            .map(|i| i + 1)
    }
}
