//! Checking a step's inputs against the JSON Schema its plugin declares, before it runs
//! (`hoist plan`): the subset plugins' schemas use (schemars' output): `type`,
//! `required`, `properties`, `additionalProperties: false`, `items`, `enum`, `anyOf` /
//! `oneOf`, `$ref` to `$defs`. Values that still hold a `{{ }}` placeholder are only
//! known when the step runs and are not checked. Messages read as the SDK's do when the
//! step itself refuses an input (`input `script`: expected a string, got a list`).

use std::cell::Cell;

use serde_json::{Map, Value};

/// The first problem with `inputs` under `schema`, if any. The schema is the plugin's
/// text (names, enum values): the message is made one printable line, and lists in it
/// are cut short.
pub fn check(inputs: &Value, schema: &Value) -> Option<String> {
    let cx = Cx {
        root: schema,
        depth: Cell::new(0),
        steps: Cell::new(0),
    };
    at(inputs, schema, &cx, "").map(|m| hoist_policy::text::sanitize(&m).into_owned())
}

/// At most this many names in a list of what a step takes.
const MAX_LISTED: usize = 12;

/// `items` as `a, b, c`, cut after [`MAX_LISTED`].
fn listing(items: impl Iterator<Item = String>) -> String {
    let all: Vec<String> = items.collect();
    let mut shown = all[..all.len().min(MAX_LISTED)].join(", ");
    if all.len() > MAX_LISTED {
        shown.push_str(&format!(" and {} more", all.len() - MAX_LISTED));
    }
    shown
}

/// A value of `tag` and the form (option) it selects.
type Form<'a> = (&'a Value, &'a Value);

/// For a serde-tagged enum (every option a mapping whose property `tag` is a `const`):
/// the tag and each option with its value of it.
fn tagged<'a>(options: &'a [Value], root: &'a Value) -> Option<(&'a str, Vec<Form<'a>>)> {
    let first = deref(options.first()?, root);
    let (tag, _) = first["properties"]
        .as_object()?
        .iter()
        .find(|(_, p)| p.get("const").is_some())?;
    let forms = options
        .iter()
        .map(|o| {
            let o = deref(o, root);
            Some((o["properties"].get(tag.as_str())?.get("const")?, o))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((tag.as_str(), forms))
}

/// The problem with a value none of `options` takes.
fn no_option(v: &Value, options: &[Value], cx: &Cx<'_>, path: &str) -> Option<String> {
    if let (Some(m), Some((tag, forms))) = (v.as_object(), tagged(options, cx.root)) {
        return match m.get(tag) {
            None => Some(say(path, format!("missing input `{tag}`"))),
            // The form the tag names: its own first problem.
            // Which form is known only when the step runs.
            Some(t) if placeholder(t) => None,
            Some(t) => match forms.iter().find(|(c, _)| *c == t) {
                Some((_, form)) => at(v, form, cx, path),
                None => {
                    let inner = if path.is_empty() {
                        tag.to_string()
                    } else {
                        format!("{path}.{tag}")
                    };
                    let names = listing(forms.iter().map(|(c, _)| c.to_string()));
                    Some(say(
                        &inner,
                        format!("expected one of {names}, got {}", got(t)),
                    ))
                }
            },
        };
    }
    let mut want: Vec<String> = options
        .iter()
        .map(|o| expected(deref(o, cx.root)))
        .collect();
    want.dedup();
    Some(say(
        path,
        format!("expected {}, got {}", want.join(" or "), got(v)),
    ))
}

/// The schema checked against, and what checking may cost: a plugin's schema can nest
/// (or `$ref` itself) without end, so depth and steps are bounded; past them a value
/// counts as unchecked (it is checked by the step itself when it runs).
struct Cx<'a> {
    root: &'a Value,
    depth: Cell<u32>,
    steps: Cell<u32>,
}

/// Schema nesting followed at most.
const MAX_DEPTH: u32 = 64;
/// Schema nodes visited at most for one step's inputs.
const MAX_STEPS: u32 = 100_000;

fn at(v: &Value, schema: &Value, cx: &Cx<'_>, path: &str) -> Option<String> {
    let (depth, steps) = (cx.depth.get(), cx.steps.get());
    if depth >= MAX_DEPTH || steps >= MAX_STEPS {
        return None;
    }
    cx.steps.set(steps + 1);
    cx.depth.set(depth + 1);
    let found = at_node(v, schema, cx, path);
    cx.depth.set(depth);
    found
}

fn at_node(v: &Value, schema: &Value, cx: &Cx<'_>, path: &str) -> Option<String> {
    if placeholder(v) {
        return None;
    }
    let schema = deref(schema, cx.root);
    if let Some(options) = schema["anyOf"].as_array().or(schema["oneOf"].as_array()) {
        if options.iter().any(|o| at(v, o, cx, path).is_none()) {
            return None;
        }
        return no_option(v, options, cx, path);
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Some(say(path, format!("expected {c}, got {}", got(v))));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        let names = listing(values.iter().map(Value::to_string));
        return Some(say(
            path,
            format!("expected one of {names}, got {}", got(v)),
        ));
    }
    if !types(schema).is_empty() && !types(schema).iter().any(|t| is(v, t)) {
        return Some(say(
            path,
            format!("expected {}, got {}", expected(schema), got(v)),
        ));
    }
    match v {
        Value::Object(m) => object(m, schema, cx, path),
        Value::Array(items) => {
            let each = schema.get("items")?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, x)| at(x, each, cx, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

fn object(m: &Map<String, Value>, schema: &Value, cx: &Cx<'_>, path: &str) -> Option<String> {
    let props = schema["properties"].as_object();
    // Unknown inputs first: `directry` is better reported as itself than as a missing
    // `directory`.
    let mut required = Vec::new();
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if !m.contains_key(name) {
            required.push(say(path, format!("missing input `{name}`")));
        }
    }
    for (k, x) in m {
        let inner = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match props.and_then(|p| p.get(k)) {
            Some(s) => {
                if let Some(e) = at(x, s, cx, &inner) {
                    return Some(e);
                }
            }
            None if schema["additionalProperties"] == Value::Bool(false) => {
                let known = listing(
                    props
                        .into_iter()
                        .flat_map(|p| p.keys())
                        .map(|k| format!("`{k}`")),
                );
                return Some(say(path, format!("unknown input `{k}` (it takes {known})")));
            }
            None => {
                if let Some(e) = schema
                    .get("additionalProperties")
                    .filter(|s| s.is_object())
                    .and_then(|s| at(x, s, cx, &inner))
                {
                    return Some(e);
                }
            }
        }
    }
    required.into_iter().next()
}

/// Whether `v` is a string holding a placeholder (its value is known only at run time).
fn placeholder(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.contains("{{"))
}

/// `schema`, or the definition its `$ref` names (`#/$defs/X`, `#/definitions/X`).
pub fn deref<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    let Some(r) = schema["$ref"].as_str() else {
        return schema;
    };
    let name = r.rsplit('/').next().unwrap_or_default();
    root["$defs"]
        .get(name)
        .or_else(|| root["definitions"].get(name))
        .unwrap_or(&Value::Null)
}

fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "null" => v.is_null(),
        _ => true,
    }
}

fn expected(schema: &Value) -> String {
    let ts = types(schema);
    if ts.is_empty() {
        return "a value".into();
    }
    ts.iter()
        .map(|t| match *t {
            "string" => "a string",
            "integer" => "an integer",
            "number" => "a number",
            "boolean" => "a boolean",
            "array" => "a list",
            "object" => "a mapping",
            "null" => "null",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn got(v: &Value) -> String {
    match v {
        Value::String(_) => v.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => format!("{b}"),
        Value::Null => "null".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn say(path: &str, message: String) -> String {
    if path.is_empty() {
        message
    } else {
        format!("input `{path}`: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literal_inputs_are_checked_and_placeholders_left_for_the_run() {
        let schema = json!({
            "type": "object",
            "required": ["script"],
            "additionalProperties": false,
            "properties": {
                "script": {"type": "string"},
                "env": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
                "dirs": {"type": "array", "items": {"type": "string"}},
                "mode": {"$ref": "#/$defs/Mode"},
                "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "$defs": {"Mode": {"enum": ["a", "b"]}},
        });
        let check = |v: Value| super::check(&v, &schema);
        assert_eq!(check(json!({"script": "echo"})), None);
        assert_eq!(check(json!({"script": "{{ a.b }}", "n": "{{ $N }}"})), None);
        assert_eq!(
            check(json!({"script": ["a"]})).unwrap(),
            "input `script`: expected a string, got a list"
        );
        assert_eq!(check(json!({})).unwrap(), "missing input `script`");
        assert_eq!(
            check(json!({"scirpt": "y"})).unwrap(),
            "unknown input `scirpt` (it takes `script`, `env`, `dirs`, `mode`, `n`)"
        );
        assert_eq!(
            check(json!({"script": "x", "scirpt": "y"})).unwrap(),
            "unknown input `scirpt` (it takes `script`, `env`, `dirs`, `mode`, `n`)"
        );
        assert_eq!(
            check(json!({"script": "x", "env": {"N": 3}})).unwrap(),
            "input `env.N`: expected a string, got the number 3"
        );
        assert_eq!(
            check(json!({"script": "x", "dirs": ["a", 1]})).unwrap(),
            "input `dirs[1]`: expected a string, got the number 1"
        );
        assert_eq!(
            check(json!({"script": "x", "mode": "c"})).unwrap(),
            "input `mode`: expected one of \"a\", \"b\", got \"c\""
        );
        assert_eq!(
            check(json!({"script": "x", "n": 1.5})).unwrap(),
            "input `n`: expected an integer or null, got the number 1.5"
        );
        assert_eq!(check(json!({"script": "x", "n": 2, "env": null})), None);
    }

    #[test]
    fn tagged_enums_are_told_by_their_tag_and_plugin_text_is_made_printable() {
        let schema = json!({
            "type": "object",
            "properties": {"actions": {"type": "array", "items": {"$ref": "#/$defs/A"}}},
            "$defs": {"A": {"oneOf": [
                {"type": "object", "properties": {"do": {"type": "string", "const": "log"}, "message": {"type": "string"}}, "required": ["do", "message"]},
                {"type": "object", "properties": {"do": {"type": "string", "const": "print\u{1b}]0;x\u{7}"}}, "required": ["do"]},
            ]}},
        });
        let check = |v: Value| super::check(&v, &schema);
        assert_eq!(
            check(json!({"actions": [{"do": "log", "message": "hi"}]})),
            None
        );
        assert_eq!(
            check(json!({"actions": [{"do": "log"}]})).unwrap(),
            "input `actions[0]`: missing input `message`"
        );
        let e = check(json!({"actions": [{"do": "nope"}]})).unwrap();
        assert!(
            e.starts_with("input `actions[0].do`: expected one of \"log\", "),
            "{e}"
        );
        assert!(!e.contains('\u{1b}') && !e.contains('\u{7}'), "{e:?}");
        assert_eq!(
            check(json!({"actions": [{}]})).unwrap(),
            "input `actions[0]`: missing input `do`"
        );
        assert_eq!(check(json!({"actions": [{"do": "{{ $ACTION }}"}]})), None);
    }

    #[test]
    fn a_schema_that_refers_to_itself_or_branches_without_end_is_bounded() {
        // A cycle through `anyOf` and `$ref`, and 2^40 paths through nested `anyOf`s.
        let cycle = json!({"$ref": "#/$defs/A", "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "string"}]}}});
        assert_eq!(super::check(&json!(3), &cycle), None);
        let mut defs = serde_json::Map::new();
        for i in 0..40 {
            let next = json!({"$ref": format!("#/$defs/L{}", i + 1)});
            defs.insert(format!("L{i}"), json!({"anyOf": [next.clone(), next]}));
        }
        defs.insert("L40".into(), json!({"type": "string"}));
        let wide = json!({"$ref": "#/$defs/L0", "$defs": defs});
        let start = std::time::Instant::now();
        assert_eq!(super::check(&json!(3), &wide), None);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
