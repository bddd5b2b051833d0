//! The registry's human pages: the plugin list with search, and a plugin's page
//! (versions, summary, declared capabilities, input schema as a table, install
//! command). Server-rendered HTML, no script; every text from a package is escaped.

use crate::db::VersionRecord;
use crate::name::PackageName;

/// `s` safe inside HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}}\
         code{{background:#f4f4f4;padding:0 .2rem}}.cap{{display:inline-block;background:#fff3cd;border-radius:.3rem;padding:0 .4rem;margin:.1rem}}\
         .yanked{{color:#a00}}</style></head><body><header><a href=\"/\">Hoist plugin registry</a></header>\n{body}\n</body></html>\n",
        escape(title)
    )
}

fn capabilities(caps: &[String]) -> String {
    if caps.is_empty() {
        return "<em>none</em>".into();
    }
    caps.iter()
        .map(|c| format!("<span class=\"cap\">{}</span>", escape(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plugin list (the newest version of each), with a search box.
pub fn index(query: &str, packages: &[VersionRecord]) -> String {
    let rows: String = packages
        .iter()
        .map(|p| {
            format!(
                "<tr><td><a href=\"/plugins/{0}\">{0}</a></td><td>{1}</td><td>{2}</td><td>{3}</td></tr>\n",
                escape(&p.package),
                escape(&p.version),
                escape(&p.summary),
                capabilities(&p.capabilities)
            )
        })
        .collect();
    let table = if packages.is_empty() {
        "<p id=\"empty\">No plugins found.</p>".to_string()
    } else {
        format!(
            "<table id=\"plugins\"><tr><th>Plugin</th><th>Newest</th><th>Summary</th><th>Declares</th></tr>\n{rows}</table>"
        )
    };
    page(
        "Hoist plugins",
        &format!(
            "<h1>Plugins</h1><form action=\"/\"><input name=\"q\" value=\"{}\" placeholder=\"name, summary or capability\">\
             <button>Search</button></form>\n{table}",
            escape(query)
        ),
    )
}

/// One input's row: name, type, required, description, default.
fn input_rows(schema: &serde_json::Value) -> String {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return "<tr><td colspan=\"5\"><em>no inputs</em></td></tr>".into();
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(name, p)| {
            let ty = match p.get("type") {
                Some(serde_json::Value::String(t)) => t.clone(),
                Some(serde_json::Value::Array(ts)) => ts
                    .iter()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" | "),
                _ => "any".into(),
            };
            let text = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let default = p.get("default").map(|d| d.to_string()).unwrap_or_default();
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(name),
                escape(&ty),
                if required.contains(&name.as_str()) {
                    "yes"
                } else {
                    ""
                },
                escape(&text("description")),
                escape(&default)
            )
        })
        .collect()
}

/// A plugin's page: its newest version's summary, capabilities and inputs; every
/// version with its digest.
pub fn package(pkg: &PackageName, versions: &[VersionRecord]) -> String {
    let newest = versions.iter().find(|v| !v.yanked).unwrap_or(&versions[0]);
    let rows: String = versions
        .iter()
        .map(|v| {
            format!(
                "<tr{}><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                if v.yanked { " class=\"yanked\"" } else { "" },
                escape(&v.version),
                escape(&v.component_digest),
                capabilities(&v.capabilities),
                escape(&v.published),
                if v.yanked { "yanked" } else { "" }
            )
        })
        .collect();
    let name = pkg.to_string();
    page(
        &name,
        &format!(
            "<h1>{n}</h1><p id=\"summary\">{summary}</p>\
             <p>Install: <code id=\"install\">hoist plugin install {n}@{v}</code></p>\
             <h2>Declares</h2><p id=\"capabilities\">{caps}</p>\
             <h2>Inputs</h2><table id=\"inputs\"><tr><th>Input</th><th>Type</th><th>Required</th><th>Description</th><th>Default</th></tr>\n{inputs}</table>\
             <h2>Versions</h2><table id=\"versions\"><tr><th>Version</th><th>Component digest</th><th>Declares</th><th>Published</th><th></th></tr>\n{rows}</table>",
            n = escape(&name),
            v = escape(&newest.version),
            summary = escape(&newest.summary),
            caps = capabilities(&newest.capabilities),
            inputs = input_rows(&newest.input_schema),
        ),
    )
}

/// No such plugin.
pub fn not_found(name: &str) -> String {
    page("Not found", &format!("<h1>No plugin {}</h1>", escape(name)))
}
