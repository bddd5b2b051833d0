//! `hoist step describe` and the JSON forms of step listings: what a plugin says of
//! itself (`describe()`), shown so a user can write its inputs without reading code.
//! Everything here is the plugin's own text: made printable before it is shown.

use std::io::Write;

use serde_json::{Value, json};

use super::step::Format;
use crate::capability::log::sanitize;
use crate::runtime::Plugin;

/// The JSON form: name, version, summary, kind, origin, digest, capabilities, schema.
pub(crate) fn json(name: &str, kind: &str, p: &Plugin) -> Value {
    let d = &p.description;
    json!({
        "name": name,
        "plugin": d.name,
        "version": d.version,
        "summary": d.summary,
        "kind": kind,
        "origin": p.origin,
        "digest": format!("sha256:{}", p.digest),
        "capabilities": d.capabilities.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "input_schema": d.input_schema,
    })
}

/// Print one step's description.
pub(crate) fn print(name: &str, kind: &str, p: &Plugin, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        writeln!(out, "{}", super::json_text(&json(name, kind, p), true))?;
        return Ok(());
    }
    let d = &p.description;
    let caps: Vec<String> = d.capabilities.iter().map(ToString::to_string).collect();
    writeln!(
        out,
        "{} {} ({kind}: {})\n    {}\n    digest:       sha256:{}\n    capabilities: {}",
        sanitize(&d.name),
        sanitize(&d.version),
        sanitize(&p.origin),
        sanitize(&d.summary),
        p.digest,
        if caps.is_empty() {
            "none".to_string()
        } else {
            sanitize(&caps.join(", ")).into_owned()
        }
    )?;
    let rows = inputs(&d.input_schema);
    if rows.is_empty() {
        writeln!(out, "    inputs:       none")?;
        return Ok(());
    }
    writeln!(out, "    inputs:")?;
    let width = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0);
    for r in rows {
        let mut line = format!("      {:<width$}  {}", r.name, r.ty);
        if r.required {
            line.push_str(", required");
        }
        if let Some(d) = r.default {
            line.push_str(&format!(", default {d}"));
        }
        if let Some(doc) = r.doc {
            line.push_str(&format!(": {doc}"));
        }
        writeln!(out, "{}", sanitize(&line))?;
    }
    Ok(())
}

/// `s` cut to 200 characters.
fn shorten(s: String) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// How deep a type is spelled out, and how many alternatives are listed.
const MAX_NESTING: usize = 6;

/// One input of a step, read from its JSON Schema.
#[derive(Debug, PartialEq)]
struct Input {
    name: String,
    ty: String,
    required: bool,
    default: Option<String>,
    doc: Option<String>,
}

/// The top-level properties of an input schema, in the schema's order.
fn inputs(schema: &Value) -> Vec<Input> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let Some(props) = schema["properties"].as_object() else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, p)| Input {
            name: name.clone(),
            ty: shorten(type_of(p, schema, 0)),
            required: required.contains(&name.as_str()),
            default: p.get("default").map(|d| d.to_string()),
            doc: p["description"]
                .as_str()
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")),
        })
        .collect()
}

/// A property's type in words: `string`, `string or null`, `list of string`, `mapping`.
/// The schema is the plugin's: nesting (and `$ref` cycles) is followed [`MAX_NESTING`]
/// deep, then shown as `…`.
fn type_of(p: &Value, root: &Value, depth: usize) -> String {
    if depth >= MAX_NESTING {
        return "…".into();
    }
    let deeper = |q: &Value| type_of(q, root, depth + 1);
    if p.get("$ref").is_some() {
        // `#/$defs/Name` (schemars): the definition's own type.
        return match hoist_runner::schema::deref(p, root) {
            Value::Null => "object".into(),
            d => deeper(d),
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = p[key].as_array() {
            let mut names: Vec<String> = options.iter().take(MAX_NESTING).map(deeper).collect();
            names.dedup();
            return names.join(" or ");
        }
    }
    if let Some(values) = p["enum"].as_array() {
        let names: Vec<String> = values.iter().map(Value::to_string).collect();
        return format!("one of {}", names.join(", "));
    }
    let one = |t: &str| match t {
        "array" => match p.get("items") {
            Some(items) => format!("list of {}", deeper(items)),
            None => "list".into(),
        },
        "object" => "mapping".into(),
        other => other.into(),
    };
    match &p["type"] {
        Value::String(t) => one(t),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_read_from_the_schema() {
        let schema = json!({
            "type": "object",
            "required": ["script"],
            "properties": {
                "script": {"type": "string", "description": "The script.\n  Each line a command."},
                "env": {"type": ["object", "null"], "default": null},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mode": {"$ref": "#/$defs/Mode"},
                "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
            "$defs": {"Mode": {"enum": ["a", "b"]}},
        });
        let row =
            |name: &str, ty: &str, required: bool, default: Option<&str>, doc: Option<&str>| {
                Input {
                    name: name.into(),
                    ty: ty.into(),
                    required,
                    default: default.map(Into::into),
                    doc: doc.map(Into::into),
                }
            };
        assert_eq!(
            inputs(&schema),
            [
                row(
                    "script",
                    "string",
                    true,
                    None,
                    Some("The script. Each line a command.")
                ),
                row("env", "mapping or null", false, Some("null"), None),
                row("tags", "list of string", false, None, None),
                row("mode", "one of \"a\", \"b\"", false, None, None),
                row("n", "integer or null", false, None, None),
            ]
        );
        assert!(inputs(&json!({"type": "object"})).is_empty());
        // A plugin's schema that refers to itself is spelled out a few levels deep.
        let cycle = json!({
            "properties": {"x": {"$ref": "#/$defs/A"}},
            "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/B"}, {"type": "null"}]}, "B": {"$ref": "#/$defs/A"}},
        });
        assert!(inputs(&cycle)[0].ty.contains('…'));
    }
}
