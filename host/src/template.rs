//! The `{{ }}` template engine of prefect.yaml (spec §3), as pure functions:
//! template + step outputs + environment + variables + blocks → value.
//!
//! Nothing here does I/O. The runner collects which blocks and variables a step refers
//! to ([`block_refs`], [`variable_refs`]), fetches them, and passes them in as maps.
//! Values are `serde_json::Value` with insertion order kept, so Python-style string forms
//! (`{'k': 'v'}`) print keys in the order the file wrote them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde_json::{Map, Value};

/// Prefix of block placeholders.
pub const BLOCK_PREFIX: &str = "prefect.blocks.";
/// Prefix of variable placeholders.
pub const VARIABLE_PREFIX: &str = "prefect.variables.";

/// What a placeholder refers to, decided by its name's prefix (§3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `prefect.blocks.<slug>.<name>[.<path>]`
    Block,
    /// `prefect.variables.<name>`
    Variable,
    /// `$NAME`
    Env,
    /// Anything else: a key path into step outputs.
    Standard,
}

/// One `{{ name }}` occurrence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placeholder<'a> {
    /// The whole match, braces and spaces included.
    pub full: &'a str,
    /// The name between the braces.
    pub name: &'a str,
    /// Its kind.
    pub kind: Kind,
}

fn kind_of(name: &str) -> Kind {
    if name.starts_with(BLOCK_PREFIX) {
        Kind::Block
    } else if name.starts_with(VARIABLE_PREFIX) {
        Kind::Variable
    } else if name.starts_with('$') {
        Kind::Env
    } else {
        Kind::Standard
    }
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']' | '$')
}

/// The distinct placeholders of a string, in order of first appearance
/// (`{{\s*([\w.\-\[\]$]+)\s*}}`, leftmost non-overlapping matches).
pub fn placeholders(s: &str) -> Vec<Placeholder<'_>> {
    let mut found: Vec<Placeholder<'_>> = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("{{") {
        let start = i + off;
        match match_at(s, start) {
            Some((end, name)) => {
                let full = &s[start..end];
                if !found.iter().any(|p| p.full == full) {
                    found.push(Placeholder {
                        full,
                        name,
                        kind: kind_of(name),
                    });
                }
                i = end;
            }
            None => i = start + 1,
        }
    }
    found
}

/// Try to match a placeholder starting at `start` (which holds `{{`).
fn match_at(s: &str, start: usize) -> Option<(usize, &str)> {
    let rest = &s[start + 2..];
    let name_start = rest.len() - rest.trim_start().len();
    let after_ws = &rest[name_start..];
    let name_len = after_ws
        .find(|c: char| !is_name_char(c))
        .unwrap_or(after_ws.len());
    if name_len == 0 {
        return None;
    }
    let name = &after_ws[..name_len];
    let tail = &after_ws[name_len..];
    let ws = tail.len() - tail.trim_start().len();
    tail[ws..]
        .starts_with("}}")
        .then(|| (start + 2 + name_start + name_len + ws + 2, name))
}

/// The placeholder if `s` is exactly one placeholder and nothing else.
fn whole(s: &str) -> Option<Placeholder<'_>> {
    let ps = placeholders(s);
    (ps.len() == 1 && ps[0].full == s).then(|| ps.into_iter().next().unwrap())
}

/// Result of templating one value: a value, or "not found" (the key is then removed).
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved {
    /// A value.
    Value(Value),
    /// A whole-value placeholder that did not resolve (Prefect's `NotSet`).
    Unset,
}

/// Options of the step-output pass (§3.5).
#[derive(Clone, Debug)]
pub struct Options<'a> {
    /// Remove keys / list items whose whole-value placeholder is unresolved and turn
    /// embedded misses into "" (on when running steps); off keeps the placeholder text.
    pub remove_unset: bool,
    /// Placeholders whose names start with one of these are left verbatim.
    pub skip_prefixes: &'a [&'a str],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            remove_unset: true,
            skip_prefixes: &[],
        }
    }
}

/// The process environment as the templates see it.
pub type Env = BTreeMap<String, String>;

/// Follow a key path (§3.3): `a.b[0].c`, `l[-1]`; integer segments index lists and
/// strings only. `None` when any step fails.
pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<std::borrow::Cow<'v, Value>> {
    use std::borrow::Cow;
    let normalized = path.replace('[', ".").replace(']', "");
    let mut cur: Cow<'v, Value> = Cow::Borrowed(root);
    for seg in normalized.split('.') {
        let next = match (python_int(seg), cur.as_ref()) {
            (Some(i), Value::Array(items)) => index(items.len(), i).map(|k| items[k].clone()),
            (Some(i), Value::String(s)) => {
                let chars: Vec<char> = s.chars().collect();
                index(chars.len(), i).map(|k| Value::String(chars[k].to_string()))
            }
            (Some(_), _) => None,
            (None, Value::Object(m)) => m.get(seg).cloned(),
            (None, _) => None,
        };
        cur = Cow::Owned(next?);
    }
    Some(cur)
}

fn index(len: usize, i: i64) -> Option<usize> {
    let k = if i < 0 { len as i64 + i } else { i };
    (0..len as i64).contains(&k).then_some(k as usize)
}

/// Python's `int(s)` for the strings a placeholder name can hold.
fn python_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// The step-output pass (§3.3–§3.5): standard placeholders from `values`, `$` placeholders
/// from `env`; block and variable placeholders are left for their own passes.
pub fn apply_values(template: &Value, values: &Value, env: &Env, opts: &Options<'_>) -> Resolved {
    match template {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                if let Resolved::Value(v) = apply_values(v, values, env, opts) {
                    out.insert(k.clone(), v);
                }
            }
            Resolved::Value(Value::Object(out))
        }
        Value::Array(items) => Resolved::Value(Value::Array(
            items
                .iter()
                .filter_map(|v| match apply_values(v, values, env, opts) {
                    Resolved::Value(v) => Some(v),
                    Resolved::Unset => None,
                })
                .collect(),
        )),
        Value::String(s) => apply_to_str(s, values, env, opts),
        other => Resolved::Value(other.clone()),
    }
}

fn skipped(name: &str, opts: &Options<'_>) -> bool {
    opts.skip_prefixes.iter().any(|p| name.starts_with(p))
}

fn apply_to_str(s: &str, values: &Value, env: &Env, opts: &Options<'_>) -> Resolved {
    let ps = placeholders(s);
    if ps.is_empty() {
        return Resolved::Value(Value::String(s.to_string()));
    }
    if ps.len() == 1 && ps[0].full == s && ps[0].kind == Kind::Standard {
        if skipped(ps[0].name, opts) {
            return Resolved::Value(Value::String(s.to_string()));
        }
        return match lookup(values, ps[0].name) {
            Some(v) => Resolved::Value(v.into_owned()),
            None if opts.remove_unset => Resolved::Unset,
            None => Resolved::Value(Value::String(s.to_string())),
        };
    }
    let mut out = s.to_string();
    for p in &ps {
        if skipped(p.name, opts) {
            continue;
        }
        let value: Option<String> = match p.kind {
            Kind::Standard => lookup(values, p.name).map(|v| python_str(&v)),
            Kind::Env => env.get(p.name.trim_start_matches('$')).cloned(),
            Kind::Block | Kind::Variable => continue,
        };
        match value {
            Some(v) => out = out.replace(p.full, &v),
            None if opts.remove_unset => out = out.replace(p.full, ""),
            None => {}
        }
    }
    Resolved::Value(Value::String(out))
}

/// Python's `str()` of a value: strings as they are, containers with `repr` items.
pub fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => {
            let mut out = String::new();
            python_repr(other, &mut out);
            out
        }
    }
}

fn python_repr(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => write!(out, "{i}").unwrap(),
            (_, Some(u), _) => write!(out, "{u}").unwrap(),
            (_, _, Some(f)) => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => python_str_repr(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_repr(item, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_str_repr(k, out);
                out.push_str(": ");
                python_repr(item, out);
            }
            out.push('}');
        }
    }
}

/// `repr(float)`: shortest round-trip digits, exponent form outside 1e-4 ≤ |x| < 1e16.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{f:e}"); // e.g. "1.5e-5", "-1e16"
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

fn python_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                write!(out, "\\x{:02x}", c as u32).unwrap()
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// A template error (§3.6): a block reference that cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{ prefect.blocks.x }}` without a document name.
    #[error(
        "Invalid block placeholder format: '{0}'. Expected format: prefect.blocks.<block-type-slug>.<block-document-name>"
    )]
    BlockFormat(String),
    /// The block document does not exist.
    #[error(
        "Block not found: '{name}' of type '{slug}'. The block document no longer exists or was never created; create it with `hoist block set {slug} {name} ...`"
    )]
    BlockNotFound {
        /// Type slug.
        slug: String,
        /// Document name.
        name: String,
    },
    /// A `$ref` names a block id that does not exist.
    #[error("Block not found: block document with id '{0}' no longer exists")]
    BlockIdNotFound(String),
    /// The key path does not exist in the block's data.
    #[error("Invalid template: '{0}'. Could not resolve the keypath in the block document data.")]
    KeyPath(String),
    /// A block value that is a mapping or list used inside a longer string.
    #[error(
        "Invalid template: '{0}'. The block document data for '{1}' is a mapping or list and cannot be used for inline string substitution"
    )]
    Inline(String, String),
}

/// Block documents available to a resolution: by `(slug, name)` and by id.
#[derive(Clone, Debug, Default)]
pub struct Blocks {
    /// Data by `(type slug, document name)`.
    pub by_name: BTreeMap<(String, String), Value>,
    /// Data by document id (for `$ref`).
    pub by_id: BTreeMap<String, Value>,
}

/// A parsed block reference.
struct BlockRef<'a> {
    slug: &'a str,
    name: &'a str,
    path: Option<&'a str>,
}

fn block_ref(name: &str) -> Result<BlockRef<'_>, TemplateError> {
    let rest = &name[BLOCK_PREFIX.len()..];
    let mut parts = rest.splitn(3, '.');
    let slug = parts.next().unwrap_or("");
    let doc = parts
        .next()
        .ok_or_else(|| TemplateError::BlockFormat(name.to_string()))?;
    Ok(BlockRef {
        slug,
        name: doc,
        path: parts.next(),
    })
}

/// The `(slug, name)` of every block placeholder and the id of every `$ref` in a value.
/// Malformed references are reported by [`resolve_blocks`], not here.
pub fn block_refs(v: &Value) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    fn walk(v: &Value, names: &mut BTreeSet<(String, String)>, ids: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(id) = ref_id(m) {
                    ids.insert(id.to_string());
                    return;
                }
                m.values().for_each(|v| walk(v, names, ids));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, names, ids)),
            Value::String(s) => {
                for p in placeholders(s)
                    .into_iter()
                    .filter(|p| p.kind == Kind::Block)
                {
                    if let Ok(r) = block_ref(p.name) {
                        names.insert((r.slug.to_string(), r.name.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    let (mut names, mut ids) = Default::default();
    walk(v, &mut names, &mut ids);
    (names, ids)
}

fn ref_id(m: &Map<String, Value>) -> Option<&str> {
    m.get("$ref")?
        .as_object()?
        .get("block_document_id")?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// The block pass (§3.6): block placeholders and `$ref` mappings replaced by block data.
pub fn resolve_blocks(template: &Value, blocks: &Blocks) -> Result<Value, TemplateError> {
    match template {
        Value::Object(m) => {
            if let Some(id) = ref_id(m) {
                return blocks
                    .by_id
                    .get(id)
                    .cloned()
                    .ok_or_else(|| TemplateError::BlockIdNotFound(id.to_string()));
            }
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                out.insert(k.clone(), resolve_blocks(v, blocks)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|v| resolve_blocks(v, blocks))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::String(s) => resolve_blocks_in_str(s, blocks),
        other => Ok(other.clone()),
    }
}

fn block_value(s: &str, name: &str, blocks: &Blocks) -> Result<Value, TemplateError> {
    let r = block_ref(name)?;
    let data = blocks
        .by_name
        .get(&(r.slug.to_string(), r.name.to_string()))
        .ok_or_else(|| TemplateError::BlockNotFound {
            slug: r.slug.to_string(),
            name: r.name.to_string(),
        })?;
    // System blocks (Secret, String, JSON...) hold one `value`: it stands for the block,
    // unless the path asks for `value...` itself.
    let unwrap = matches!(data, Value::Object(m) if m.len() == 1 && m.contains_key("value"))
        && !r.path.is_some_and(|p| p.starts_with("value"));
    let data = if unwrap { &data["value"] } else { data };
    match r.path {
        None => Ok(data.clone()),
        Some(path) => lookup(data, path)
            .map(|v| v.into_owned())
            .ok_or_else(|| TemplateError::KeyPath(s.to_string())),
    }
}

fn resolve_blocks_in_str(s: &str, blocks: &Blocks) -> Result<Value, TemplateError> {
    let ps = placeholders(s);
    if !ps.iter().any(|p| p.kind == Kind::Block) {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(p) = whole(s).filter(|p| p.kind == Kind::Block) {
        return block_value(s, p.name, blocks);
    }
    let mut out = s.to_string();
    for p in ps.iter().filter(|p| p.kind == Kind::Block) {
        let v = block_value(s, p.name, blocks)?;
        if v.is_object() || v.is_array() {
            return Err(TemplateError::Inline(s.to_string(), p.name.to_string()));
        }
        out = out.replace(p.full, &python_str(&v));
    }
    Ok(Value::String(out))
}

/// Names of the variables a value refers to.
pub fn variable_refs(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => m.values().for_each(|v| walk(v, out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            Value::String(s) => {
                for p in placeholders(s)
                    .into_iter()
                    .filter(|p| p.kind == Kind::Variable)
                {
                    out.insert(p.name[VARIABLE_PREFIX.len()..].to_string());
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut out);
    out
}

/// The variable pass (§3.7): whole value keeps the variable's type; embedded uses its
/// Python string form; a missing variable is "" either way.
pub fn resolve_variables(template: &Value, variables: &BTreeMap<String, Value>) -> Value {
    match template {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), resolve_variables(v, variables)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| resolve_variables(v, variables))
                .collect(),
        ),
        Value::String(s) => {
            let ps = placeholders(s);
            if let Some(p) = whole(s).filter(|p| p.kind == Kind::Variable) {
                return variables
                    .get(&p.name[VARIABLE_PREFIX.len()..])
                    .cloned()
                    .unwrap_or_else(|| Value::String(String::new()));
            }
            let mut out = s.clone();
            for p in ps.iter().filter(|p| p.kind == Kind::Variable) {
                let v = variables
                    .get(&p.name[VARIABLE_PREFIX.len()..])
                    .map(python_str)
                    .unwrap_or_default();
                out = out.replace(p.full, &v);
            }
            Value::String(out)
        }
        other => other.clone(),
    }
}

/// Everything one step's inputs are resolved against (§3.9).
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Accumulated step outputs.
    pub outputs: Value,
    /// The process environment.
    pub env: Env,
    /// Block documents referred to.
    pub blocks: Blocks,
    /// Variables referred to.
    pub variables: BTreeMap<String, Value>,
}

/// Resolve one step's inputs in the order of §3.9: outputs + env, blocks, variables, then
/// env again as a values dictionary (for placeholders that block or variable values
/// brought in). `id` and `requires` must already be removed.
pub fn resolve_step_inputs(inputs: &Value, cx: &Context) -> Result<Value, TemplateError> {
    let opts = Options::default();
    let v = match apply_values(inputs, &cx.outputs, &cx.env, &opts) {
        Resolved::Value(v) => v,
        Resolved::Unset => Value::Object(Map::new()),
    };
    let v = resolve_blocks(&v, &cx.blocks)?;
    let v = resolve_variables(&v, &cx.variables);
    let env_values = Value::Object(
        cx.env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    Ok(match apply_values(&v, &env_values, &cx.env, &opts) {
        Resolved::Value(v) => v,
        Resolved::Unset => Value::Object(Map::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_placeholders_like_the_python_regex() {
        let names = |s| {
            placeholders(s)
                .into_iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("{{a}} {{ b.c[0] }} {{\n d \n}}"),
            ["a", "b.c[0]", "d"]
        );
        assert_eq!(names("{{ a b }} {{ a:b }} {{}} {{ }}"), Vec::<&str>::new());
        assert_eq!(names("{{{ a }}}"), ["a"]);
        assert_eq!(names("{{x}}{{x}}"), ["x"]);
    }

    #[test]
    fn python_forms() {
        assert_eq!(
            python_str(&json!({"k": true, "n": null})),
            "{'k': True, 'n': None}"
        );
        assert_eq!(python_str(&json!([1, "a'b", "c"])), "[1, \"a'b\", 'c']");
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(1.5e-5), "1.5e-05");
        assert_eq!(python_float(0.0001), "0.0001");
        assert_eq!(python_float(123456.789), "123456.789");
    }
}
