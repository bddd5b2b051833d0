//! The `{{ }}` template engine of prefect.yaml (spec §3), as pure functions:
//! template + step outputs + environment + variables + blocks → value.
//!
//! Nothing here does I/O. The host collects which blocks and variables a step refers
//! to ([`block_refs`], [`variable_refs`]), asks a [`Values`] provider for them (the local
//! store, a Prefect server), and passes them in as maps.
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
    for (start, end, name) in occurrences(s) {
        let full = &s[start..end];
        if !found.iter().any(|p| p.full == full) {
            found.push(Placeholder {
                full,
                name,
                kind: kind_of(name),
            });
        }
    }
    found
}

/// Every placeholder occurrence as `(start, end, name)`, left to right.
fn occurrences(s: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(off) = s[i..].find("{{") {
            let start = i + off;
            match match_at(s, start) {
                Some((end, name)) => {
                    i = end;
                    return Some((start, end, name));
                }
                None => i = start + 1,
            }
        }
        None
    })
}

/// `s` with its placeholders replaced in one left-to-right pass: `with(name)` gives the
/// text for a placeholder, or `None` to keep it as written. A replacement is never
/// scanned again, so a value holding the text of another placeholder stays as it is
/// (Prefect replaces one distinct placeholder after the other, §3.9's "order-dependent").
fn substitute<E>(
    s: &str,
    mut with: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<String, E> {
    let mut out = String::with_capacity(s.len());
    let mut done = 0;
    for (start, end, name) in occurrences(s) {
        if let Some(text) = with(name)? {
            out.push_str(&s[done..start]);
            out.push_str(&text);
            done = end;
        }
    }
    out.push_str(&s[done..]);
    Ok(out)
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
    apply(template, values, env, opts, None)
}

/// [`apply_values`]; with `opaque`, each value taken from `values` is put in as a token
/// standing for it (see [`Opaque`]).
fn apply(
    template: &Value,
    values: &Value,
    env: &Env,
    opts: &Options<'_>,
    mut opaque: Option<&mut Opaque>,
) -> Resolved {
    match template {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                if let Resolved::Value(v) = apply(v, values, env, opts, opaque.as_deref_mut()) {
                    out.insert(k.clone(), v);
                }
            }
            Resolved::Value(Value::Object(out))
        }
        Value::Array(items) => Resolved::Value(Value::Array(
            items
                .iter()
                .filter_map(
                    |v| match apply(v, values, env, opts, opaque.as_deref_mut()) {
                        Resolved::Value(v) => Some(v),
                        Resolved::Unset => None,
                    },
                )
                .collect(),
        )),
        Value::String(s) => apply_to_str(s, values, env, opts, opaque),
        other => Resolved::Value(other.clone()),
    }
}

fn skipped(name: &str, opts: &Options<'_>) -> bool {
    opts.skip_prefixes.iter().any(|p| name.starts_with(p))
}

fn apply_to_str(
    s: &str,
    values: &Value,
    env: &Env,
    opts: &Options<'_>,
    mut opaque: Option<&mut Opaque>,
) -> Resolved {
    if !s.contains("{{") {
        return Resolved::Value(Value::String(s.to_string()));
    }
    if let Some(p) = whole(s).filter(|p| p.kind == Kind::Standard) {
        if skipped(p.name, opts) {
            return Resolved::Value(Value::String(s.to_string()));
        }
        return match lookup(values, p.name) {
            Some(v) => Resolved::Value(match opaque {
                Some(o) => Value::String(o.token(v.into_owned())),
                None => v.into_owned(),
            }),
            None if opts.remove_unset => Resolved::Unset,
            None => Resolved::Value(Value::String(s.to_string())),
        };
    }
    let out = substitute(s, |name| {
        if skipped(name, opts) {
            return Ok::<_, std::convert::Infallible>(None);
        }
        let value = match kind_of(name) {
            Kind::Standard => lookup(values, name).map(|v| {
                let text = python_str(&v);
                match opaque.as_deref_mut() {
                    Some(o) => o.token(Value::String(text)),
                    None => text,
                }
            }),
            Kind::Env => env.get(name.trim_start_matches('$')).cloned(),
            Kind::Block | Kind::Variable => return Ok(None),
        };
        Ok(match value {
            Some(v) => Some(v),
            None if opts.remove_unset => Some(String::new()),
            None => None,
        })
    });
    let Ok(out) = out;
    Resolved::Value(Value::String(out))
}

/// Step outputs stand-ins while the block, variable and env passes of one step run
/// (§3.9): an output is a plugin's text, and the passes after the first must only see
/// the text the user wrote, or a plugin returning `{{ prefect.blocks.secret.x }}` would
/// have the next step handed that secret. Each output value put into the inputs is
/// replaced by a token `U+E000 <nonce>-<n> U+E001`: no `{{`, no whitespace, bounded by
/// characters that are not name characters (so it cannot complete a placeholder with
/// the text around it), and with a nonce fresh for each resolution (so no text can
/// name one in advance). [`Opaque::restore`] puts the values back at the end, in one
/// pass.
#[derive(Debug, Default)]
struct Opaque {
    nonce: String,
    values: Vec<Value>,
}

const TOKEN_OPEN: char = '\u{e000}';
const TOKEN_CLOSE: char = '\u{e001}';

impl Opaque {
    /// A token standing for `v`.
    fn token(&mut self, v: Value) -> String {
        if self.nonce.is_empty() {
            self.nonce = nonce();
        }
        self.values.push(v);
        format!(
            "{TOKEN_OPEN}{}-{}{TOKEN_CLOSE}",
            self.nonce,
            self.values.len() - 1
        )
    }

    /// The value index of the token at the start of `s` and the token's length.
    fn parse(&self, s: &str) -> Option<(usize, usize)> {
        let rest = s
            .strip_prefix(TOKEN_OPEN)?
            .strip_prefix(self.nonce.as_str())?;
        let rest = rest.strip_prefix('-')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let i: usize = rest[..digits].parse().ok()?;
        rest[digits..].starts_with(TOKEN_CLOSE).then_some(())?;
        let len = s.len() - rest.len() + digits + TOKEN_CLOSE.len_utf8();
        (i < self.values.len()).then_some((i, len))
    }

    /// `v` with every token replaced by its value: a string that is exactly one token
    /// becomes the value (its type kept), tokens inside text become the value's Python
    /// `str()`. Anything that only looks like a token is left alone.
    fn restore(&self, v: Value) -> Value {
        if self.values.is_empty() {
            return v;
        }
        match v {
            Value::String(s) if s.contains(TOKEN_OPEN) => {
                if let Some((i, len)) = self.parse(&s)
                    && len == s.len()
                {
                    return self.values[i].clone();
                }
                let mut out = String::with_capacity(s.len());
                let mut rest = s.as_str();
                while let Some(at) = rest.find(TOKEN_OPEN) {
                    out.push_str(&rest[..at]);
                    rest = &rest[at..];
                    match self.parse(rest) {
                        Some((i, len)) => {
                            out.push_str(&python_str(&self.values[i]));
                            rest = &rest[len..];
                        }
                        None => {
                            out.push(TOKEN_OPEN);
                            rest = &rest[TOKEN_OPEN.len_utf8()..];
                        }
                    }
                }
                out.push_str(rest);
                Value::String(out)
            }
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|x| self.restore(x)).collect())
            }
            Value::Object(m) => {
                Value::Object(m.into_iter().map(|(k, x)| (k, self.restore(x))).collect())
            }
            other => other,
        }
    }
}

/// 64 unpredictable bits, fresh for each call (std's per-instance SipHash keys, seeded
/// from the OS, over a counter and the time): no dependency for a value that never
/// leaves the process.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
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

/// Block documents a [`Values`] provider found, with the strings of the secret ones (to
/// be masked wherever they could appear).
#[derive(Clone, Debug, Default)]
pub struct FoundBlocks {
    /// The documents found (missing ones are absent: the block pass reports them).
    pub blocks: Blocks,
    /// Every string value of the secret documents among them.
    pub secrets: Vec<String>,
}

/// Where the blocks and variables a template names come from: Hoist's local store
/// today, a Prefect server for a worker. Templating asks only for what the user's text
/// names; what is missing is left out of the answer (the passes report or blank it).
///
/// The futures are `Send` so a provider works in a multi-threaded runtime; implement the
/// methods with `async fn`.
pub trait Values {
    /// Why the source could not answer (its message is shown as the step's failure).
    type Error: std::fmt::Display;

    /// The block documents named by `(type slug, document name)` and by id (`$ref`).
    fn blocks(
        &self,
        names: &BTreeSet<(String, String)>,
        ids: &BTreeSet<String>,
    ) -> impl Future<Output = Result<FoundBlocks, Self::Error>> + Send;

    /// The variables named (missing ones absent).
    fn variables(
        &self,
        names: &BTreeSet<String>,
    ) -> impl Future<Output = Result<BTreeMap<String, Value>, Self::Error>> + Send;
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
    // Every block is checked first (in order of appearance, as Prefect reports the
    // first bad one), then substituted in one pass.
    let mut texts = BTreeMap::new();
    for p in ps.iter().filter(|p| p.kind == Kind::Block) {
        let v = block_value(s, p.name, blocks)?;
        if v.is_object() || v.is_array() {
            return Err(TemplateError::Inline(s.to_string(), p.name.to_string()));
        }
        texts.insert(p.name, python_str(&v));
    }
    let out = substitute(s, |name| {
        Ok::<_, std::convert::Infallible>(texts.get(name).cloned())
    });
    let Ok(out) = out;
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
            if !ps.iter().any(|p| p.kind == Kind::Variable) {
                return Value::String(s.clone());
            }
            let out = substitute(s, |name| {
                Ok::<_, std::convert::Infallible>(
                    name.strip_prefix(VARIABLE_PREFIX)
                        .map(|n| variables.get(n).map(python_str).unwrap_or_default()),
                )
            });
            let Ok(out) = out;
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

/// A placeholder that will resolve to nothing. Prefect then leaves the text empty (or
/// drops a key whose whole value it was), and so does Hoist, but the user is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// `{{ $NAME }}` with `NAME` not set.
    Env {
        /// The placeholder as written.
        placeholder: String,
        /// The variable's name.
        name: String,
    },
    /// `{{ id.key }}` or `{{ key }}` that no step output gives.
    Output {
        /// The placeholder as written.
        placeholder: String,
        /// Its first part: the step id (or top-level output key) it names.
        head: String,
    },
}

/// The placeholders of `inputs` (the text the user wrote) that will resolve to nothing,
/// each once. With `outputs` (a run: the outputs so far) every step-output placeholder
/// is looked up; without (a plan, before anything ran) only dotted ones can be checked:
/// their first part must be one of `earlier_ids`. Blocks and variables are not checked
/// here (a missing block is an error of its own).
pub fn misses(
    inputs: &Map<String, Value>,
    outputs: Option<&Map<String, Value>>,
    earlier_ids: &[String],
    env: &Env,
) -> Vec<Miss> {
    fn strings<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(m) => m.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let mut texts = Vec::new();
    inputs.values().for_each(|v| strings(v, &mut texts));
    let mut found: Vec<Miss> = Vec::new();
    for p in texts.into_iter().flat_map(placeholders) {
        let head = p.name.split(['.', '[']).next().unwrap_or(p.name);
        let miss = match p.kind {
            Kind::Env if !env.contains_key(&p.name[1..]) => Miss::Env {
                placeholder: p.full.to_string(),
                name: p.name[1..].to_string(),
            },
            Kind::Standard
                if match outputs {
                    Some(o) => !in_outputs(o, p.name, head),
                    None => head != p.name && !earlier_ids.iter().any(|id| id == head),
                } =>
            {
                Miss::Output {
                    placeholder: p.full.to_string(),
                    head: head.to_string(),
                }
            }
            _ => continue,
        };
        if !found.contains(&miss) {
            found.push(miss);
        }
    }
    found
}

/// Whether `name` (whose first part is `head`) finds a value among `outputs`, as
/// [`lookup`] would in the outputs as one mapping (without building that mapping).
fn in_outputs(outputs: &Map<String, Value>, name: &str, head: &str) -> bool {
    let Some(v) = outputs.get(head) else {
        return false;
    };
    let rest = name[head.len()..].replace('[', ".").replace(']', "");
    match rest.trim_start_matches('.') {
        "" => true,
        rest => lookup(v, rest).is_some(),
    }
}

/// Resolve one step's inputs in the order of §3.9 (see [`resolve_step`]).
pub fn resolve_step_inputs(inputs: &Value, cx: &Context) -> Result<Value, TemplateError> {
    resolve_step(inputs, &cx.outputs, &cx.env, &cx.blocks, &cx.variables)
}

/// The one place the passes of §3.9 are ordered (the runner, the fixtures and the fuzz
/// target all come here): outputs + env, blocks, variables, then env again as a values
/// dictionary (for placeholders that block or variable values brought in). `id` and
/// `requires` must already be removed.
///
/// Unlike Prefect, step outputs are opaque: the block, variable and env passes run over
/// the text the user wrote (and the environment values it refers to), with each output
/// value standing in as a token until the end, so a plugin whose output is
/// `{{ prefect.blocks.secret.x }}` hands the next step that text, not the secret.
/// [`step_sources`] is what to fetch blocks and variables for.
pub fn resolve_step(
    inputs: &Value,
    outputs: &Value,
    env: &Env,
    blocks: &Blocks,
    variables: &BTreeMap<String, Value>,
) -> Result<Value, TemplateError> {
    let opts = Options::default();
    let mut opaque = Opaque::default();
    let v = match apply(inputs, outputs, env, &opts, Some(&mut opaque)) {
        Resolved::Value(v) => v,
        Resolved::Unset => Value::Object(Map::new()),
    };
    let v = resolve_blocks(&v, blocks)?;
    let v = resolve_variables(&v, variables);
    let env_values = Value::Object(
        env.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    );
    let v = match apply_values(&v, &env_values, env, &opts) {
        Resolved::Value(v) => v,
        Resolved::Unset => Value::Object(Map::new()),
    };
    Ok(opaque.restore(v))
}

/// The text a step's block and variable placeholders can come from (§3.9 under
/// [`resolve_step`]): its inputs as written and the values of the `{{ $NAME }}` they
/// use, never step outputs. Fetch the blocks [`block_refs`] finds in it, then the
/// variables [`variable_refs`] finds in it and in those blocks' data.
pub fn step_sources(inputs: &Value, env: &Env) -> Value {
    fn walk(v: &Value, env: &Env, out: &mut Vec<Value>) {
        match v {
            Value::String(s) => {
                for p in placeholders(s).into_iter().filter(|p| p.kind == Kind::Env) {
                    if let Some(x) = env.get(p.name.trim_start_matches('$')) {
                        out.push(Value::String(x.clone()));
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|x| walk(x, env, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, env, out)),
            _ => {}
        }
    }
    let mut out = vec![inputs.clone()];
    walk(inputs, env, &mut out);
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_the_placeholders_that_resolve_to_nothing() {
        let env: Env = [("HOME".to_string(), "/root".to_string())].into();
        let inputs = serde_json::json!({
            "a": "{{ frist.stdout }} {{ first.stdout }} {{ $HOME }} {{ $NOPE }}",
            "b": ["{{ stdout }}", "{{ frist.stdout }}", "{{ prefect.variables.x }}"],
        });
        let miss = |head: &str, p: &str| Miss::Output {
            placeholder: p.into(),
            head: head.into(),
        };
        let nope = Miss::Env {
            placeholder: "{{ $NOPE }}".into(),
            name: "NOPE".into(),
        };
        // A plan: only dotted names, checked against earlier ids.
        assert_eq!(
            misses(inputs.as_object().unwrap(), None, &["first".into()], &env),
            [miss("frist", "{{ frist.stdout }}"), nope.clone()]
        );
        // A run: every output placeholder looked up.
        let outputs = serde_json::json!({"first": {"stdout": "x"}});
        assert_eq!(
            misses(inputs.as_object().unwrap(), outputs.as_object(), &[], &env),
            [
                miss("frist", "{{ frist.stdout }}"),
                nope,
                miss("stdout", "{{ stdout }}")
            ]
        );
    }
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

    fn step(inputs: Value, outputs: Value, env: &[(&str, &str)]) -> Value {
        let mut blocks = Blocks::default();
        blocks.by_name.insert(
            ("secret".into(), "x".into()),
            json!({"value": "THE-SECRET"}),
        );
        let variables = [("v".to_string(), json!("VAR-VALUE"))].into();
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve_step(&inputs, &outputs, &env, &blocks, &variables).unwrap()
    }

    #[test]
    fn substitution_is_positional_and_never_rescans_a_value() {
        // `a`'s value is the text of the next placeholder: it stays text.
        let values = json!({"a": "{{ b }}", "b": "B"});
        let r = apply_values(
            &json!("{{ a }}-{{ b }}-{{ a }}"),
            &values,
            &Env::new(),
            &Options::default(),
        );
        assert_eq!(r, Resolved::Value(json!("{{ b }}-B-{{ b }}")));
        let env: Env = [("E".to_string(), "{{ a }}".to_string())].into();
        let r = apply_values(
            &json!("{{ $E }}{{ a }}"),
            &values,
            &env,
            &Options::default(),
        );
        assert_eq!(r, Resolved::Value(json!("{{ a }}{{ b }}")));
        // Blocks and variables too.
        let mut blocks = Blocks::default();
        blocks.by_name.insert(
            ("s".into(), "a".into()),
            json!({"value": "{{ prefect.blocks.s.b }}"}),
        );
        blocks
            .by_name
            .insert(("s".into(), "b".into()), json!({"value": "B"}));
        assert_eq!(
            resolve_blocks(
                &json!("{{ prefect.blocks.s.a }} {{ prefect.blocks.s.b }}"),
                &blocks
            ),
            Ok(json!("{{ prefect.blocks.s.b }} B"))
        );
        let vars = [
            ("a".to_string(), json!("{{ prefect.variables.b }}")),
            ("b".to_string(), json!("B")),
        ]
        .into();
        assert_eq!(
            resolve_variables(
                &json!("{{ prefect.variables.a }}/{{ prefect.variables.b }}"),
                &vars
            ),
            json!("{{ prefect.variables.b }}/B")
        );
    }

    #[test]
    fn outputs_are_opaque_to_the_later_passes() {
        let evil = json!({
            "block": "{{ prefect.blocks.secret.x }}",
            "var": "{{ prefect.variables.v }}",
            "env": "{{ $TOKEN }}",
            "bare": "{{ HOME }}",
            "half": ".blocks.secret.x",
            "obj": {"k": "{{ prefect.blocks.secret.x }}", "n": [1, null, true]},
        });
        let inputs = json!({
            "a": "{{ evil.block }}",
            "b": "x {{ evil.var }} y",
            "c": ["{{ evil.env }}", "{{ evil.bare }}"],
            "d": "{{ prefect{{ evil.half }} }}",
            "e": "{{ evil.obj }}",
            "f": "in {{ evil.obj }}",
            "g": "{{ prefect.variables.v }}+{{ evil.block }}",
        });
        let got = step(
            inputs,
            json!({"evil": evil}),
            &[("TOKEN", "T"), ("HOME", "/root")],
        );
        assert_eq!(
            got,
            json!({
                "a": "{{ prefect.blocks.secret.x }}",
                "b": "x {{ prefect.variables.v }} y",
                "c": ["{{ $TOKEN }}", "{{ HOME }}"],
                "d": "{{ prefect.blocks.secret.x }}",
                "e": {"k": "{{ prefect.blocks.secret.x }}", "n": [1, null, true]},
                "f": "in {'k': '{{ prefect.blocks.secret.x }}', 'n': [1, None, True]}",
                "g": "VAR-VALUE+{{ prefect.blocks.secret.x }}",
            })
        );
        // What the user wrote is still resolved, whole values keep their type.
        let got = step(
            json!({"s": "{{ prefect.blocks.secret.x }}", "n": "{{ o.n }}", "t": "{{ $TOKEN }}"}),
            json!({"o": {"n": 3}}),
            &[("TOKEN", "T")],
        );
        assert_eq!(got, json!({"s": "THE-SECRET", "n": 3, "t": "T"}));
    }

    #[test]
    fn tokens_round_trip_and_lookalikes_stay_text() {
        let mut o = Opaque::default();
        let whole = o.token(json!({"a": [1, "b"]}));
        let embedded = o.token(json!("text"));
        assert!(!whole.contains("{{") && !whole.contains(char::is_whitespace));
        let forged = format!("{TOKEN_OPEN}{}-0{TOKEN_CLOSE}", "0".repeat(16));
        let v = json!({
            "w": whole,
            "e": format!("<{embedded}|{whole}>"),
            "l": [whole.clone(), forged.clone(), format!("{TOKEN_OPEN}{}-9{TOKEN_CLOSE}", o.nonce)],
            "open": format!("{TOKEN_OPEN}{TOKEN_OPEN}{whole}"),
        });
        assert_eq!(
            o.restore(v),
            json!({
                "w": {"a": [1, "b"]},
                "e": "<text|{'a': [1, 'b']}>",
                "l": [{"a": [1, "b"]}, forged, format!("{TOKEN_OPEN}{}-9{TOKEN_CLOSE}", o.nonce)],
                "open": format!("{TOKEN_OPEN}{TOKEN_OPEN}{{'a': [1, 'b']}}"),
            })
        );
        // An output holding a token-like string (even this resolution's) is not expanded.
        let got = step(
            json!({"a": "{{ o.x }}", "b": "{{ o.y }}"}),
            json!({"o": {"x": format!("{TOKEN_OPEN}{}-1{TOKEN_CLOSE}", "f".repeat(16)), "y": "Y"}}),
            &[],
        );
        assert_eq!(got["b"], "Y");
        assert!(got["a"].as_str().unwrap().starts_with(TOKEN_OPEN));
        // Nonces differ between resolutions.
        assert_ne!(nonce(), nonce());
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
