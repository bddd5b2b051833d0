//! `hoist step run | ls`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::bindings::Level;
use crate::capability::log::{LogRecord, LogSink, Source, sanitize};
use crate::runtime::{Capability, Grants, Limits, Plugin, Runtime, StepRequest};

#[derive(Debug, Subcommand)]
pub(crate) enum StepCommand {
    /// Run one step and print its outputs as JSON on stdout (logs go to stderr).
    ///
    /// STEP is a built-in step name (`hoist step ls`) or the name a prefect.yaml gives
    /// it (`prefect.deployments.steps.git_clone`), the name of an installed plugin, or a
    /// path to a component file (`./my_step.wasm`).
    ///
    /// Example: hoist step run run_shell_script --input 'script=echo hi'
    Run(RunArgs),
    /// List built-in and installed steps with their summaries and capabilities.
    Ls(ListArgs),
    /// Show one step: version, where it comes from, digest, capabilities and its inputs
    /// (type, default, whether required, description) from its input schema.
    ///
    /// Example: hoist step describe git_clone
    Describe(DescribeArgs),
}

/// How a listing is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// One JSON document on stdout, for programs.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// How to print the list.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) output: Format,
    #[command(flatten)]
    cache: super::CacheArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DescribeArgs {
    /// A step name as `hoist step run` takes it (built-in, Prefect's name, installed
    /// plugin, or a .wasm path).
    step: String,
    /// How to print the description.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(flatten)]
    cache: super::CacheArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Built-in name (short or Prefect's), installed plugin name, or path to a .wasm
    /// component.
    step: String,
    /// An input as KEY=VALUE; VALUE is read as YAML, so `true`, `3`, `null`, `[a, b]`
    /// and `{k: v}` keep their types, as they would in prefect.yaml. Repeatable.
    #[arg(short, long = "input", value_name = "KEY=VALUE", value_parser = key_value)]
    inputs: Vec<String>,
    /// All inputs as one JSON object; --input values are applied on top.
    #[arg(long, value_name = "JSON")]
    inputs_json: Option<String>,
    /// Grant a capability to a plugin: process:<program>, env:<NAME>, set-cwd,
    /// read:<dir>, write:<dir>, net:<scheme://host:port> (`*` for any program or
    /// variable; `net:https://*.example.com`). Built-in steps are granted what they
    /// declare. Repeatable.
    #[arg(short, long = "allow", value_name = "CAPABILITY")]
    allow: Vec<Capability>,
    /// The working directory the step sees (read-write) [default: current directory].
    #[arg(short = 'C', long, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// Stop the step after this long, killing any process it started (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    timeout: Duration,
    /// Memory the step may use (e.g. 64M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    memory_limit: usize,
    /// The step id, as `id:` would give it in prefect.yaml.
    #[arg(long)]
    id: Option<String>,
    /// Print nothing but the outputs (no progress, no logs).
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    cache: super::CacheArgs,
}

pub(crate) async fn run(cmd: &StepCommand) -> anyhow::Result<()> {
    let cache = match cmd {
        StepCommand::Run(a) => &a.cache,
        StepCommand::Ls(a) => &a.cache,
        StepCommand::Describe(a) => &a.cache,
    };
    let runtime = Runtime::new(cache.runtime_config()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    match cmd {
        StepCommand::Run(args) => run_one(&runtime, args).await,
        StepCommand::Ls(args) => list(&runtime, args.output).await,
        StepCommand::Describe(args) => {
            let (kind, plugin) = resolve_kind(&runtime, &args.step).await?;
            super::describe::print(&args.step, kind, &plugin, args.output)
        }
    }
}

async fn run_one(runtime: &Runtime, args: &RunArgs) -> anyhow::Result<()> {
    let inputs = parse_inputs(args.inputs_json.as_deref(), &args.inputs)?;
    // Inputs are templated as a project step's are: `{{ $VAR }}`, and blocks and
    // variables from the Prefect server (PREFECT_API_URL) or the local store, secrets
    // masked in everything shown.
    let templater = crate::values::process_templater();
    let entry = crate::project::StepEntry {
        position: "inputs".into(),
        line: None,
        name: args.step.clone(),
        inputs: match &inputs {
            serde_json::Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        },
        id: args.id.clone(),
        requires: Vec::new(),
        raw: serde_json::Value::Null,
    };
    let inputs = templater
        .template(&entry, &serde_json::Map::new())
        .await
        .map_err(|e| anyhow::anyhow!("{}: input: {e}", args.step))?;
    let cwd = match &args.directory {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let cwd = std::fs::canonicalize(&cwd)
        .with_context(|| format!("working directory {}", cwd.display()))?;
    let plugin = resolve(runtime, &args.step).await?;
    // The plugin names itself: printable, like everything else a plugin says.
    let name = sanitize(&plugin.description.name).into_owned();
    let sink: Arc<dyn LogSink> = if args.quiet {
        Arc::new(crate::capability::log::NullSink)
    } else {
        Arc::new(TerminalSink::default())
    };
    let mut req = StepRequest::new(name.clone(), cwd.clone())
        .inputs(inputs)
        .grants(Grants::new(args.allow.iter().cloned()))
        .limits(Limits {
            memory: args.memory_limit,
            timeout: args.timeout,
        })
        .log(sink);
    req.id = args.id.clone();
    req.secrets = templater.secrets();
    // No project: the directory given is the plugin's to write (a project's own
    // directory is read-only to plugins under `hoist build|push|pull`).
    req.project_root = None;
    if !args.quiet {
        eprintln!("{} {name} ({})", super::marks().start, plugin.origin);
        super::ticker::start(&name);
    }
    // The error quotes the plugin: one printable line, no forged line after it.
    let outcome = runtime
        .run(&plugin, req)
        .await
        .map_err(|e| anyhow::anyhow!("{}", sanitize(&e.to_string())))?;
    super::ticker::stop();
    if !args.quiet {
        eprintln!(
            "{} {name} finished in {}",
            super::marks().done,
            fmt_duration(outcome.elapsed)
        );
    }
    let shown = crate::runner::redact_value(&outcome.outputs, &templater.redactor());
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", super::json_text(&shown, true))?;
    Ok(())
}

/// Find a step the way a project's steps are found (`plan::resolve`): a Prefect name,
/// a built-in name, a plugin file (relative to the working directory) or an installed
/// plugin.
async fn resolve(runtime: &Runtime, step: &str) -> anyhow::Result<Arc<Plugin>> {
    Ok(resolve_kind(runtime, step).await?.1)
}

/// [`resolve`], with what kind of step it is (`built-in`, `plugin file`, `installed`).
async fn resolve_kind(
    runtime: &Runtime,
    step: &str,
) -> anyhow::Result<(&'static str, Arc<Plugin>)> {
    let here = std::env::current_dir().unwrap_or_default();
    let target = crate::plan::resolve(step, &here, &installed_dir())?;
    let kind = match target {
        crate::plan::Target::Builtin(_) => "built-in",
        crate::plan::Target::File(_) => "plugin file",
        crate::plan::Target::Installed(_) => "installed",
    };
    Ok((kind, crate::plan::load(runtime, &target).await?))
}

/// Where installed plugins live: `$HOIST_HOME/plugins` (default `~/.hoist/plugins`).
pub(crate) fn installed_dir() -> PathBuf {
    hoist_policy::paths::plugins()
}

fn installed_plugins() -> Vec<(String, PathBuf)> {
    let dir = installed_dir();
    crate::plan::installed_names(&dir)
        .into_iter()
        .map(|n| {
            let p = dir.join(format!("{n}.wasm"));
            (n, p)
        })
        .collect()
}

async fn list(runtime: &Runtime, format: Format) -> anyhow::Result<()> {
    let mut rows: Vec<(String, String, Arc<Plugin>)> = Vec::new();
    for name in crate::builtin::names() {
        rows.push((
            name.to_string(),
            "built-in".into(),
            crate::plan::load_builtin(runtime, name).await?,
        ));
    }
    for (name, path) in installed_plugins() {
        match runtime.load_file(&path).await {
            Ok(p) => rows.push((name, "installed".into(), p)),
            Err(e) => eprintln!("warning: skipping {}: {e}", path.display()),
        }
    }
    if format == Format::Json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(name, kind, p)| super::describe::json(name, kind, p))
            .collect();
        writeln!(
            std::io::stdout().lock(),
            "{}",
            super::json_text(&Value::Array(list), true)
        )?;
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for (name, kind, p) in rows {
        let caps: Vec<String> = p
            .description
            .capabilities
            .iter()
            .map(|c| c.to_string())
            .collect();
        let caps = if caps.is_empty() {
            "none".to_string()
        } else {
            caps.join(", ")
        };
        // Version, summary and capabilities are the plugin's own words.
        writeln!(
            out,
            "{} {} ({kind})\n    {}\n    capabilities: {}",
            sanitize(&name),
            sanitize(&p.description.version),
            sanitize(&p.description.summary),
            sanitize(&caps)
        )?;
    }
    Ok(())
}

/// A `KEY=VALUE` argument, checked by clap so a malformed one is a usage error (exit 2).
pub(crate) fn key_value(arg: &str) -> Result<String, String> {
    match arg.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(arg.to_string()),
        Some(_) => Err("the KEY before `=` is empty".into()),
        None => Err("expected KEY=VALUE (no `=` in it)".into()),
    }
}

fn parse_inputs(json: Option<&str>, pairs: &[String]) -> anyhow::Result<Value> {
    let mut map = match json {
        Some(text) => {
            match serde_json::from_str::<Value>(text).context("--inputs-json is not valid JSON")? {
                Value::Object(m) => m,
                other => bail!("--inputs-json must be a JSON object, got {other}"),
            }
        }
        None => Map::new(),
    };
    for pair in pairs {
        let (key, raw) = pair
            .split_once('=')
            .with_context(|| format!("--input `{pair}` is not KEY=VALUE"))?;
        if key.is_empty() {
            bail!("--input `{pair}` has an empty key");
        }
        let value = parse_value(key, raw)?;
        map.insert(key.to_string(), value);
    }
    Ok(Value::Object(map))
}

/// A command-line value read as a YAML scalar (`true`, `3`, `null`) or flow collection
/// (`[a, b]`, `{k: v}`); anything else stays exactly as typed, so `echo a: b` or a
/// multi-line script is not folded or read as a mapping.
pub(crate) fn parse_value(key: &str, raw: &str) -> anyhow::Result<Value> {
    if raw.is_empty() {
        return Ok(Value::String(String::new()));
    }
    Ok(
        match (serde_yaml_ng::from_str::<Value>(raw), looks_structured(raw)) {
            (Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Null)), _) => v,
            (Ok(v), true) => v,
            (Err(e), true) => bail!("{key}: `{raw}` is not a valid YAML value: {e}"),
            (_, false) => Value::String(raw.to_string()),
        },
    )
}

/// Whether a value was meant as a YAML collection (and so must parse as one).
fn looks_structured(raw: &str) -> bool {
    let t = raw.trim_start();
    t.starts_with('{') || t.starts_with('[')
}

pub(crate) use hoist_policy::units::{parse_duration, parse_size};

pub(crate) fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Prints each record on stderr, prefixed by its step.
#[derive(Default)]
pub(crate) struct TerminalSink {
    lock: Mutex<()>,
}

impl LogSink for TerminalSink {
    fn record(&self, r: &LogRecord<'_>) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let level = match (r.source, r.level) {
            (Source::ProcessStdout | Source::GuestStdout, _) => "",
            (Source::ProcessStderr | Source::GuestStderr, _) => "",
            (_, Level::Error) => "error: ",
            (_, Level::Warn) => "warning: ",
            (_, Level::Debug | Level::Trace) => "debug: ",
            (_, Level::Info) => "",
        };
        let mut line = format!("  {} | {level}{}", r.step, r.message);
        for (k, v) in r.fields {
            line.push_str(&format!(" {k}={v}"));
        }
        super::ticker::output();
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_yaml_scalars() {
        let v = parse_inputs(
            Some(r#"{"a": 1, "b": "x"}"#),
            &[
                "b=true".into(),
                "c=3".into(),
                "d=null".into(),
                "e=hi there".into(),
                "h=a: b\nc".into(),
                "i=echo a: b".into(),
                "f=".into(),
                "g={k: v}".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": true, "c": 3, "d": null, "e": "hi there", "h": "a: b\nc", "i": "echo a: b", "f": "", "g": {"k": "v"}})
        );
        assert!(parse_inputs(None, &["nokey".into()]).is_err());
        assert!(parse_inputs(Some("[1]"), &[]).is_err());
        assert!(parse_inputs(None, &["x={unclosed".into()]).is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
    }
}
