//! A flow's signature read from its source file, never imported: Python's own `ast`
//! module parses the file (as Prefect does for `prefect deploy`), and
//! [`parameter_schema`] renders the parameters as Prefect 3's `parameter_openapi_schema`
//! (pydantic v2 conventions, spec `prefect-deployments.md` §3): title, position,
//! default, description from a Google-style docstring, `required` in order, the
//! annotation's type mapping. Types Hoist cannot map without importing (user classes,
//! pydantic models, enums) become "any", as Prefect itself downgrades what it cannot
//! render.

use std::path::Path;

use serde_json::{Map, Value, json};

/// What the parser script prints.
const SCRIPT: &str = r#"
import ast, hashlib, json, sys
path, func = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
tree = ast.parse(raw.decode("utf-8"), filename=path)
flows = []
found = None
for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
    flow_name = None
    is_flow = False
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "flow":
            is_flow = True
            if isinstance(d, ast.Call):
                for kw in d.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        flow_name = kw.value.value
    if is_flow:
        flows.append({"function": node.name, "name": flow_name or node.name.replace("_", "-")})
    if node.name == func and found is None:
        found = node
if found is None:
    print(json.dumps({"error": "no function `%s` in %s" % (func, path), "flows": flows}))
    sys.exit(0)
a = found.args
params = []
def default(expr):
    if expr is None:
        return None
    try:
        return {"value": ast.literal_eval(expr)}
    except Exception:
        pass
    # `Color.BLUE`, `Foo(bar="x")`, `timedelta(seconds=5)`: rendered by the host.
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        return {"attr": [expr.value.id, expr.attr]}
    if isinstance(expr, ast.Call):
        name = expr.func.attr if isinstance(expr.func, ast.Attribute) else getattr(expr.func, "id", None)
        try:
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in expr.keywords}
            args = [ast.literal_eval(a) for a in expr.args]
            return {"call": name, "args": args, "kwargs": kwargs}
        except Exception:
            pass
    return {"expr": ast.unparse(expr)}
# Models and enums defined in the file, which annotations may name.
classes = {}
for node in tree.body:
    if not isinstance(node, ast.ClassDef):
        continue
    bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
    if any(b in ("Enum", "IntEnum", "StrEnum") for b in bases):
        members = []
        for st in node.body:
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                try:
                    members.append([st.targets[0].id, ast.literal_eval(st.value)])
                except Exception:
                    pass
        classes[node.name] = {"kind": "enum", "members": members}
    elif any(b == "BaseModel" for b in bases):
        fields = []
        for st in node.body:
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                fields.append({"name": st.target.id, "annotation": ast.unparse(st.annotation),
                               "default": default(st.value)})
        classes[node.name] = {"kind": "model", "fields": fields}
def add(arg, kind, d=None):
    params.append({"name": arg.arg, "kind": kind,
                   "annotation": ast.unparse(arg.annotation) if arg.annotation is not None else None,
                   "default": default(d)})
pos = a.posonlyargs + a.args
pos_defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
for arg, d in zip(pos, pos_defaults):
    add(arg, "positional", d)
if a.vararg:
    add(a.vararg, "varargs")
for arg, d in zip(a.kwonlyargs, a.kw_defaults):
    add(arg, "keyword", d)
if a.kwarg:
    add(a.kwarg, "varkw")
doc = ast.get_docstring(found)
flow = next((f for f in flows if f["function"] == func), None)
print(json.dumps({"params": params, "docstring": doc, "flow": flow, "flows": flows, "classes": classes,
                  "file_hash": hashlib.md5(raw).hexdigest()}))
"#;

/// Lists the flows of every `*.py` under a directory (spec `prefect-deployments.md`
/// §2.3: `def` and `async def` at any depth decorated `@flow`, `@flow(...)`,
/// `@prefect.flow`, `@prefect.flow(...)`; `name=` honoured when it is a string literal;
/// files that do not parse skipped; `site-packages` excluded).
const DISCOVER: &str = r#"
import ast, json, os, sys
root = sys.argv[1]
found = []
for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", ".git", "__pycache__"))
    for f in sorted(filenames):
        if not f.endswith(".py"):
            continue
        path = os.path.join(dirpath, f)
        try:
            tree = ast.parse(open(path, "rb").read(), filename=path)
        except Exception:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                if isinstance(target, ast.Name) and target.id == "flow":
                    pass
                elif isinstance(target, ast.Attribute) and target.attr == "flow" and isinstance(target.value, ast.Name) and target.value.id == "prefect":
                    pass
                else:
                    continue
                name = node.name
                if isinstance(d, ast.Call):
                    for kw in d.keywords:
                        if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                            name = kw.value.value
                found.append({"flow_name": name, "function_name": node.name,
                              "filepath": os.path.relpath(path, root)})
                break
found.sort(key=lambda r: (r["filepath"], r["function_name"]))
print(json.dumps(found))
"#;

/// The `path:function` entrypoint of the flow named `name` under `root`, found by
/// parsing (never importing) every Python file. A name matches the decorator's literal
/// `name=`, the function's name, or the flow name Prefect derives from it (`_` → `-`).
pub fn find_flow(python: &str, root: &Path, name: &str) -> Result<String, String> {
    let out = std::process::Command::new(python)
        .args(["-I", "-c", DISCOVER])
        .arg(root)
        .output()
        .map_err(|e| format!("cannot run `{python}` to find flows: {e} (set HOIST_PYTHON)"))?;
    let flows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("finding flows under {}: {e}", root.display()))?;
    let hit = flows.iter().find(|f| {
        let fname = f["function_name"].as_str().unwrap_or("");
        f["flow_name"] == name || fname == name || fname.replace('_', "-") == name
    });
    match hit {
        Some(f) => Ok(format!(
            "{}:{}",
            f["filepath"].as_str().unwrap_or(""),
            f["function_name"].as_str().unwrap_or("")
        )),
        None => {
            let names: Vec<&str> = flows
                .iter()
                .filter_map(|f| f["flow_name"].as_str())
                .collect();
            Err(format!(
                "Flow '{name}' cannot be found under {} (its flows: {})",
                root.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        }
    }
}

/// A function's signature as the parser read it.
#[derive(Debug)]
pub struct Signature {
    /// `[{name, kind, annotation, default}]`.
    pub params: Vec<Value>,
    /// The docstring, cleaned as `inspect.cleandoc` does.
    pub docstring: Option<String>,
    /// The flow's name if the function is decorated with `@flow`.
    pub flow_name: Option<String>,
    /// md5 of the file, hex: a flow's default version in Prefect.
    pub file_hash: String,
    /// Models (`BaseModel`) and enums defined in the file, by name.
    pub classes: Map<String, Value>,
}

/// Read `func` in `file` with `python` (`ast`, nothing imported).
pub fn read_signature(python: &str, file: &Path, func: &str) -> Result<Signature, String> {
    let out = std::process::Command::new(python)
        .args(["-I", "-c", SCRIPT])
        .arg(file)
        .arg(func)
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{python}` to read {}: {e} (set HOIST_PYTHON to a Python 3.9+)",
                file.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("cannot parse {}: {last}", file.display()));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("reading the signature of {func} in {}: {e}", file.display()))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        let flows: Vec<&str> = v["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["function"].as_str())
            .collect();
        let hint = if flows.is_empty() {
            String::new()
        } else {
            format!(" (its flows: {})", flows.join(", "))
        };
        return Err(format!("{e}{hint}"));
    }
    Ok(Signature {
        params: v["params"].as_array().cloned().unwrap_or_default(),
        docstring: v["docstring"].as_str().map(str::to_string),
        flow_name: v["flow"]["name"].as_str().map(str::to_string),
        file_hash: v["file_hash"].as_str().unwrap_or("").to_string(),
        classes: v["classes"].as_object().cloned().unwrap_or_default(),
    })
}

/// Prefect 3's `parameter_openapi_schema` for a signature.
pub fn parameter_schema(sig: &Signature) -> Value {
    let descriptions = sig
        .docstring
        .as_deref()
        .map(google_args)
        .unwrap_or_default();
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut defs = Defs {
        classes: &sig.classes,
        definitions: Map::new(),
    };
    for (position, p) in sig.params.iter().enumerate() {
        let name = p["name"].as_str().unwrap_or("").to_string();
        if name == "self" || name == "cls" {
            continue;
        }
        let mut prop = match p["annotation"].as_str() {
            Some(a) => annotation_schema(a, &mut defs),
            None => Map::new(),
        };
        prop.insert("title".into(), json!(name));
        prop.insert("position".into(), json!(position));
        if let Some(d) = descriptions.iter().find(|(n, _)| *n == name) {
            prop.insert("description".into(), json!(d.1));
        }
        if p["default"].is_null() {
            required.push(json!(name));
        } else if let Some(v) = defs.default(&p["default"]) {
            prop.insert("default".into(), v);
        }
        properties.insert(name, Value::Object(sort(prop)));
    }
    // As Prefect dumps its `ParameterSchema` (`exclude_unset`): `required` only when some
    // parameter has no default, `definitions` only when a model or an enum is named.
    let mut schema = json!({
        "title": "Parameters",
        "type": "object",
        "properties": properties,
    });
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    if !defs.definitions.is_empty() {
        schema["definitions"] = Value::Object(defs.definitions);
    }
    schema
}

/// The models and enums of the flow's file, and the definitions the schema refers to.
struct Defs<'a> {
    classes: &'a Map<String, Value>,
    definitions: Map<String, Value>,
}

impl Defs<'_> {
    /// `{"$ref": ...}` for a class of the file (its definition added), else `None`.
    fn reference(&mut self, name: &str) -> Option<Value> {
        let class = self.classes.get(name)?.clone();
        if !self.definitions.contains_key(name) {
            // Reserve the name first: a model that refers to itself stops here.
            self.definitions.insert(name.into(), json!({}));
            let def = match class["kind"].as_str() {
                Some("enum") => {
                    let values: Vec<Value> = class["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| m[1].clone())
                        .collect();
                    let mut d = json!({"enum": values, "title": name});
                    if values.iter().all(Value::is_string) {
                        d["type"] = json!("string");
                    } else if values.iter().all(Value::is_i64) {
                        d["type"] = json!("integer");
                    }
                    d
                }
                _ => {
                    let mut props = Map::new();
                    let mut required = Vec::new();
                    for f in class["fields"].as_array().into_iter().flatten() {
                        let fname = f["name"].as_str().unwrap_or("");
                        let mut prop =
                            annotation_schema(f["annotation"].as_str().unwrap_or(""), self);
                        prop.insert("title".into(), json!(title_case(fname)));
                        if f["default"].is_null() {
                            required.push(json!(fname));
                        } else if let Some(v) = self.default(&f["default"]) {
                            prop.insert("default".into(), v);
                        }
                        props.insert(fname.into(), Value::Object(sort(prop)));
                    }
                    let mut d = json!({"properties": props, "title": name, "type": "object"});
                    if !required.is_empty() {
                        d["required"] = Value::Array(required);
                    }
                    d
                }
            };
            self.definitions.insert(name.into(), def);
        }
        Some(json!({"$ref": format!("#/definitions/{name}")}))
    }

    /// A default as pydantic serialises it: literals as they are, an enum member as its
    /// value, a model call as its fields, a `timedelta` as an ISO 8601 duration. `None`
    /// for what cannot be known without running the code.
    fn default(&self, d: &Value) -> Option<Value> {
        if let Some(v) = d.get("value") {
            return Some(v.clone());
        }
        if let Some([class, member]) = d["attr"].as_array().map(Vec::as_slice) {
            let members = self.classes.get(class.as_str()?)?["members"].as_array()?;
            return members
                .iter()
                .find(|m| m[0] == *member)
                .map(|m| m[1].clone());
        }
        let call = d["call"].as_str()?;
        let kwargs = d["kwargs"].as_object()?;
        if call == "timedelta" {
            let n = |k: &str| kwargs.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let total = n("weeks") * 604_800.0
                + n("days") * 86_400.0
                + n("hours") * 3600.0
                + n("minutes") * 60.0
                + n("seconds")
                + n("milliseconds") / 1000.0;
            return Some(json!(iso_duration(total)));
        }
        let class = self.classes.get(call)?;
        if class["kind"] != "model" {
            return None;
        }
        let mut out = Map::new();
        for f in class["fields"].as_array()? {
            let fname = f["name"].as_str()?;
            let v = match kwargs.get(fname) {
                Some(v) => v.clone(),
                None => self.default(&f["default"])?,
            };
            out.insert(fname.into(), v);
        }
        Some(Value::Object(out))
    }
}

/// pydantic's title of a field: `first_name` → `First Name`.
fn title_case(name: &str) -> String {
    name.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// pydantic v2's ISO 8601 duration: `PT5S`, `PT1M30S`, `P1DT2H`, `PT0.5S`.
fn iso_duration(seconds: f64) -> String {
    let days = (seconds / 86_400.0).floor();
    let mut rest = seconds - days * 86_400.0;
    let hours = (rest / 3600.0).floor();
    rest -= hours * 3600.0;
    let minutes = (rest / 60.0).floor();
    rest -= minutes * 60.0;
    let mut out = String::from("P");
    if days > 0.0 {
        out.push_str(&format!("{days}D"));
    }
    let mut time = String::new();
    if hours > 0.0 {
        time.push_str(&format!("{hours}H"));
    }
    if minutes > 0.0 {
        time.push_str(&format!("{minutes}M"));
    }
    if rest > 0.0 || (days == 0.0 && time.is_empty()) {
        time.push_str(&format!("{rest}S"));
    }
    if !time.is_empty() {
        out.push('T');
        out.push_str(&time);
    }
    out
}

/// Keys in the order pydantic writes them does not matter to the server; sorted for
/// stable output.
fn sort(m: Map<String, Value>) -> Map<String, Value> {
    let mut v: Vec<(String, Value)> = m.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().collect()
}

/// `Args:` entries of a Google-style docstring: `name (type): text`, continuation lines
/// joined with `\n`.
fn google_args(doc: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_args = false;
    let mut indent = None;
    for line in doc.lines() {
        let t = line.trim();
        let lead = line.len() - line.trim_start().len();
        if matches!(t, "Args:" | "Arguments:" | "Parameters:" | "Params:") {
            in_args = true;
            indent = None;
            continue;
        }
        if !in_args {
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if lead == 0 && t.ends_with(':') {
            in_args = false;
            continue;
        }
        let base = *indent.get_or_insert(lead);
        if lead <= base {
            if let Some((head, text)) = t.split_once(':') {
                let name = head.split_whitespace().next().unwrap_or("").to_string();
                out.push((name, text.trim().to_string()));
            }
        } else if let Some(last) = out.last_mut() {
            last.1.push('\n');
            last.1.push_str(t);
        }
    }
    out
}

/// A parsed annotation.
#[derive(Debug, PartialEq)]
enum Ann {
    Name(String),
    Sub(String, Vec<Ann>),
    Union(Vec<Ann>),
    Lit(Value),
}

fn parse_annotation(s: &str) -> Option<Ann> {
    let toks = tokens(s)?;
    let mut i = 0;
    let a = union(&toks, &mut i)?;
    (i == toks.len()).then_some(a)
}

fn tokens(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if "[],|".contains(c) {
            out.push(c.to_string());
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != c {
                j += 1;
            }
            if j >= b.len() {
                return None;
            }
            out.push(b[i..=j].iter().collect());
            i = j + 1;
        } else {
            let mut j = i;
            while j < b.len() && !b[j].is_whitespace() && !"[],|".contains(b[j]) {
                j += 1;
            }
            out.push(b[i..j].iter().collect());
            i = j;
        }
    }
    Some(out)
}

fn union(t: &[String], i: &mut usize) -> Option<Ann> {
    let mut parts = vec![atom(t, i)?];
    while t.get(*i).map(String::as_str) == Some("|") {
        *i += 1;
        parts.push(atom(t, i)?);
    }
    Some(if parts.len() == 1 {
        parts.pop()?
    } else {
        Ann::Union(parts)
    })
}

fn atom(t: &[String], i: &mut usize) -> Option<Ann> {
    let tok = t.get(*i)?.clone();
    *i += 1;
    if tok.starts_with('\'') || tok.starts_with('"') {
        return Some(Ann::Lit(json!(tok[1..tok.len() - 1])));
    }
    if let Ok(n) = tok.parse::<i64>() {
        return Some(Ann::Lit(json!(n)));
    }
    if t.get(*i).map(String::as_str) == Some("[") {
        *i += 1;
        let mut args = Vec::new();
        if t.get(*i).map(String::as_str) != Some("]") {
            loop {
                args.push(union(t, i)?);
                match t.get(*i).map(String::as_str) {
                    Some(",") => *i += 1,
                    Some("]") => break,
                    _ => return None,
                }
            }
        }
        *i += 1;
        return Some(Ann::Sub(tok, args));
    }
    Some(Ann::Name(tok))
}

fn base(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The JSON schema of an annotation (Prefect 3, pydantic v2): what Hoist cannot map
/// without importing is "any".
fn annotation_schema(a: &str, defs: &mut Defs<'_>) -> Map<String, Value> {
    match parse_annotation(a).map(|a| schema_of(&a, defs)) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn schema_of(a: &Ann, defs: &mut Defs<'_>) -> Value {
    match a {
        Ann::Lit(v) => v.clone(),
        Ann::Name(n) => match base(n) {
            "int" => json!({"type": "integer"}),
            "float" => json!({"type": "number"}),
            "str" => json!({"type": "string"}),
            "bool" => json!({"type": "boolean"}),
            "bytes" => json!({"type": "string", "format": "binary"}),
            "None" | "NoneType" => json!({"type": "null"}),
            "list" | "List" | "Sequence" => json!({"type": "array", "items": {}}),
            "set" | "Set" => json!({"type": "array", "items": {}, "uniqueItems": true}),
            "dict" | "Dict" | "Mapping" => json!({"type": "object", "additionalProperties": true}),
            "datetime" => json!({"type": "string", "format": "date-time"}),
            "date" => json!({"type": "string", "format": "date"}),
            "timedelta" => json!({"type": "string", "format": "duration"}),
            "SecretStr" => json!({"type": "string", "format": "password", "writeOnly": true}),
            other => defs.reference(other).unwrap_or_else(|| json!({})),
        },
        Ann::Union(parts) => any_of(parts.iter().map(|p| schema_of(p, defs)).collect()),
        Ann::Sub(n, args) => match (base(n), args.as_slice()) {
            ("Optional", [x]) => any_of(vec![schema_of(x, defs), json!({"type": "null"})]),
            ("Union", xs) => any_of(xs.iter().map(|x| schema_of(x, defs)).collect()),
            ("list" | "List" | "Sequence", [x]) => {
                json!({"type": "array", "items": schema_of(x, defs)})
            }
            ("set" | "Set", [x]) => {
                json!({"type": "array", "items": schema_of(x, defs), "uniqueItems": true})
            }
            ("dict" | "Dict" | "Mapping", [_, v]) => {
                let v = schema_of(v, defs);
                let extra = if v.as_object().is_some_and(Map::is_empty) {
                    json!(true)
                } else {
                    v
                };
                json!({"type": "object", "additionalProperties": extra})
            }
            ("tuple" | "Tuple", xs) if !xs.is_empty() => json!({
                "type": "array",
                "prefixItems": xs.iter().map(|x| schema_of(x, defs)).collect::<Vec<_>>(),
                "minItems": xs.len(),
                "maxItems": xs.len(),
            }),
            ("Literal", xs) => {
                let values: Vec<Value> = xs.iter().map(|x| schema_of(x, defs)).collect();
                let ty = if values.iter().all(Value::is_string) {
                    Some("string")
                } else if values.iter().all(Value::is_i64) {
                    Some("integer")
                } else {
                    None
                };
                if values.len() == 1 {
                    let mut m = json!({"const": values[0]});
                    if let Some(t) = ty {
                        m["type"] = json!(t);
                    }
                    m
                } else {
                    let mut m = json!({"enum": values});
                    if let Some(t) = ty {
                        m["type"] = json!(t);
                    }
                    m
                }
            }
            ("Annotated", [x, ..]) => schema_of(x, defs),
            _ => json!({}),
        },
    }
}

fn any_of(parts: Vec<Value>) -> Value {
    // Any member that is "any" makes the union "any", as pydantic renders it.
    if parts
        .iter()
        .any(|p| p.as_object().is_some_and(Map::is_empty))
    {
        return json!({});
    }
    json!({ "anyOf": parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(params: Value, doc: Option<&str>) -> Signature {
        Signature {
            params: params.as_array().unwrap().clone(),
            docstring: doc.map(str::to_string),
            flow_name: None,
            file_hash: String::new(),
            classes: Map::new(),
        }
    }

    /// Conformance case D04 (`prefect-deployments.md`): scalar types.
    #[test]
    fn d04_scalar_types() {
        let s = sig(
            json!([
                {"name": "x", "annotation": "int", "default": null},
                {"name": "y", "annotation": "float", "default": {"value": 5.0}},
                {"name": "name", "annotation": "str", "default": {"value": "default"}},
                {"name": "flag", "annotation": "bool", "default": {"value": false}},
                {"name": "z", "annotation": null, "default": {"value": 42}},
            ]),
            None,
        );
        assert_eq!(
            parameter_schema(&s),
            json!({
                "title": "Parameters", "type": "object",
                "properties": {
                    "x": {"title": "x", "position": 0, "type": "integer"},
                    "y": {"title": "y", "position": 1, "type": "number", "default": 5.0},
                    "name": {"title": "name", "position": 2, "type": "string", "default": "default"},
                    "flag": {"title": "flag", "position": 3, "type": "boolean", "default": false},
                    "z": {"title": "z", "position": 4, "default": 42},
                },
                "required": ["x"],
            })
        );
    }

    #[test]
    fn containers_unions_literals_and_docstrings() {
        let s = sig(
            json!([
                {"name": "a", "annotation": "list[str]", "default": null},
                {"name": "b", "annotation": "dict[str, Any]", "default": null},
                {"name": "d", "annotation": "tuple[int, float]", "default": null},
                {"name": "o", "annotation": "Optional[bool]", "default": {"value": null}},
                {"name": "u", "annotation": "int | None", "default": {"value": null}},
                {"name": "m", "annotation": "Literal['x', 'y']", "default": {"value": "x"}},
                {"name": "t", "annotation": "datetime.datetime", "default": null},
            ]),
            Some(
                "Run.\n\nArgs:\n    a: the list\n        on two lines\n    b (dict): a mapping\n\nReturns:\n    nothing",
            ),
        );
        let p = &parameter_schema(&s)["properties"];
        assert_eq!(p["a"]["items"], json!({"type": "string"}));
        assert_eq!(p["a"]["description"], "the list\non two lines");
        assert_eq!(p["b"]["additionalProperties"], json!(true));
        assert_eq!(p["b"]["description"], "a mapping");
        assert_eq!(
            p["d"]["prefixItems"],
            json!([{"type": "integer"}, {"type": "number"}])
        );
        assert_eq!(
            p["o"]["anyOf"],
            json!([{"type": "boolean"}, {"type": "null"}])
        );
        assert_eq!(p["o"]["default"], Value::Null);
        assert_eq!(
            p["u"]["anyOf"],
            json!([{"type": "integer"}, {"type": "null"}])
        );
        assert_eq!(p["m"]["enum"], json!(["x", "y"]));
        assert_eq!(p["t"]["format"], "date-time");
    }
}
