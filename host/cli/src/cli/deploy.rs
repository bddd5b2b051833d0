//! `hoist deploy`: run a deployment's build and push steps in the sandbox, template its
//! declaration with their outputs, read the flow's signature without importing it, and
//! register the deployment on the Prefect server `PREFECT_API_URL` names, as
//! `prefect deploy` would have.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::{Map, Value, json};

use super::project::{JsonReporter, OutputFormat, SandboxArgs, TextReporter};
use super::step::TerminalSink;
use crate::pipeline::{self, Loaded, PipelineRequest};
use crate::prefect::PrefectClient;
use crate::prefect::deploy::deployment_body;
use crate::prefect::flow::{find_flow, parameter_schema, read_signature};
use crate::project::Action;
use crate::runner::Reporter;
use crate::runtime::Grants;

#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The flow to deploy, `path/to/file.py:function` (overrides the deployment's
    /// `entrypoint`).
    entrypoint: Option<String>,
    /// The deployment(s) of the project file to deploy (repeatable).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Deploy every deployment of the project file.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// The work pool (overrides `work_pool.name`).
    #[arg(short = 'p', long = "pool", value_name = "POOL")]
    pool: Option<String>,
    /// The work queue (overrides `work_pool.work_queue_name`).
    #[arg(short = 'q', long = "work-queue", value_name = "QUEUE")]
    queue: Option<String>,
    /// The deployment's version.
    #[arg(long = "version", id = "deployment_version", value_name = "VERSION")]
    deployment_version: Option<String>,
    /// A tag (repeatable; replaces the file's tags).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// The deployment's description (default: the flow's docstring).
    #[arg(short = 'd', long, value_name = "TEXT")]
    description: Option<String>,
    /// A default parameter, `key=value` (the value is read as JSON if it parses as JSON).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Default parameters as one JSON mapping (instead of --param).
    #[arg(long = "params", value_name = "JSON", conflicts_with = "params")]
    params_json: Option<String>,
    /// A job variable, `key=value` (JSON values as for --param).
    #[arg(short = 'v', long = "job-variable", value_name = "KEY=VALUE")]
    job_variables: Vec<String>,
    /// A cron schedule (replaces the file's schedules).
    #[arg(long, value_name = "CRON", conflicts_with_all = ["interval", "rrule"])]
    cron: Option<String>,
    /// An interval schedule in seconds (replaces the file's schedules).
    #[arg(long, value_name = "SECONDS", conflicts_with = "rrule")]
    interval: Option<f64>,
    /// An RRule schedule (replaces the file's schedules).
    #[arg(long, value_name = "RRULE")]
    rrule: Option<String>,
    /// The schedule's time zone (with --cron, --interval or --rrule).
    #[arg(long, value_name = "TZ")]
    timezone: Option<String>,
    /// Deploy the flow with this name (found by parsing the project's Python files,
    /// never importing them) instead of an ENTRYPOINT.
    #[arg(
        short = 'f',
        long = "flow",
        value_name = "FLOW_NAME",
        conflicts_with = "entrypoint"
    )]
    flow: Option<String>,
    /// The project file.
    #[arg(
        long = "prefect-file",
        default_value = "prefect.yaml",
        value_name = "FILE"
    )]
    file: PathBuf,
    /// Progress format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// `key=value`, the value as JSON when it parses, else as a string.
fn key_value(flag: &str, s: &str) -> anyhow::Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("{flag} `{s}`: write KEY=VALUE"))?;
    let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.to_string(), v))
}

/// The command line's overrides applied to a templated declaration.
fn apply_overrides(spec: &mut Value, args: &DeployArgs) -> anyhow::Result<()> {
    let Value::Object(m) = spec else {
        anyhow::bail!("the deployment is not a mapping");
    };
    if let Some(e) = &args.entrypoint {
        m.insert("entrypoint".into(), json!(e));
    }
    let pool = m.entry("work_pool").or_insert_with(|| json!({}));
    if pool.is_null() {
        *pool = json!({});
    }
    if let Some(p) = &args.pool {
        pool["name"] = json!(p);
    }
    if let Some(q) = &args.queue {
        pool["work_queue_name"] = json!(q);
    }
    if !args.job_variables.is_empty() {
        let mut jv = pool
            .get("job_variables")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for s in &args.job_variables {
            let (k, v) = key_value("--job-variable", s)?;
            jv.insert(k, v);
        }
        pool["job_variables"] = Value::Object(jv);
    }
    if let Some(v) = &args.deployment_version {
        m.insert("version".into(), json!(v));
    }
    if !args.tags.is_empty() {
        m.insert("tags".into(), json!(args.tags));
    }
    if let Some(d) = &args.description {
        m.insert("description".into(), json!(d));
    }
    if let Some(j) = &args.params_json {
        let given: Map<String, Value> = serde_json::from_str(j)
            .map_err(|e| anyhow::anyhow!("--params must be a JSON mapping: {e}"))?;
        let mut p: Map<String, Value> = m
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        p.extend(given);
        m.insert("parameters".into(), Value::Object(p));
    }
    if !args.params.is_empty() {
        let mut p: Map<String, Value> = m
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for s in &args.params {
            let (k, v) = key_value("--param", s)?;
            p.insert(k, v);
        }
        m.insert("parameters".into(), Value::Object(p));
    }
    let tz = args.timezone.clone();
    let schedule = if let Some(c) = &args.cron {
        Some(json!({"cron": c, "timezone": tz}))
    } else if let Some(i) = args.interval {
        Some(json!({"interval": i, "timezone": tz}))
    } else {
        args.rrule
            .as_ref()
            .map(|r| json!({"rrule": r, "timezone": tz}))
    };
    if let Some(s) = schedule {
        m.insert("schedules".into(), json!([s]));
    }
    Ok(())
}

/// The deployments to deploy: `--all`, the `--name`s, or the file's only one.
fn chosen_deployments(project: &Loaded, args: &DeployArgs) -> anyhow::Result<Vec<String>> {
    let declared: Vec<String> = project
        .project
        .deployments
        .iter()
        .filter_map(|d| d.name.clone())
        .collect();
    Ok(if args.all {
        declared.clone()
    } else if !args.names.is_empty() {
        args.names.clone()
    } else if declared.len() == 1 {
        declared.clone()
    } else if declared.is_empty() {
        anyhow::bail!(
            "{}: no deployments to deploy: add one under `deployments:`",
            args.file.display()
        )
    } else {
        anyhow::bail!(
            "{}: which deployment? It has {}: pass --name NAME (repeatable) or --all",
            args.file.display(),
            declared.join(", ")
        )
    })
}

/// The flow's name and the body `POST /deployments/` takes, from the templated spec and
/// the flow's signature (read with Python's `ast`, never imported).
fn registration(
    spec: &Value,
    python: &str,
    project_dir: &std::path::Path,
    where_: &str,
) -> anyhow::Result<(String, serde_json::Map<String, Value>)> {
    let entrypoint = spec
        .get("entrypoint")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            anyhow::anyhow!("{where_}: no `entrypoint`: add `entrypoint: path/to/flow.py:function` or pass it as ENTRYPOINT")
        })?
        .to_string();
    let (file, func) = entrypoint.rsplit_once(':').ok_or_else(|| {
        anyhow::anyhow!("{where_}: entrypoint `{entrypoint}` is not `path/to/file.py:function`")
    })?;
    let sig = read_signature(python, &project_dir.join(file), func)
        .map_err(|e| anyhow::anyhow!("{where_}: entrypoint `{entrypoint}`: {e}"))?;
    let flow_name = sig
        .flow_name
        .clone()
        .unwrap_or_else(|| func.replace('_', "-"));
    let schema = parameter_schema(&sig);
    let body = deployment_body(spec, "", schema, sig.docstring.as_deref(), &sig.file_hash)
        .map_err(|e| anyhow::anyhow!("{where_}: {e}"))?;
    Ok((flow_name, body))
}

pub(crate) async fn deploy(args: &DeployArgs) -> anyhow::Result<()> {
    let client = match PrefectClient::from_env(&crate::runtime::HostEnv::from_process()) {
        None => anyhow::bail!(
            "hoist deploy registers deployments on a Prefect server: set PREFECT_API_URL \
             (e.g. http://127.0.0.1:4200/api, and PREFECT_API_KEY for Prefect Cloud)"
        ),
        Some(c) => c?,
    };
    let project = Loaded::open(&args.file, None)?;
    let names = chosen_deployments(&project, args)?;
    let python = std::env::var("HOIST_PYTHON").unwrap_or_else(|_| "python3".into());
    let project_dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let by_flow = match &args.flow {
        Some(f) => Some(find_flow(&python, &project_dir, f).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let runtime = args.sandbox.runtime()?;
    let mut results = Vec::new();
    for name in &names {
        let loaded = Loaded::open(&args.file, Some(name))?;
        // Its pull steps' packages are the worker's to install.
        let lock = super::plugin::lock_for(&loaded.file);
        super::plugin::ensure(&loaded, &[Action::Build, Action::Push], Some(&lock)).await?;
        let reporter: Arc<dyn Reporter> = match args.output {
            OutputFormat::Text => Arc::new(TextReporter::default()),
            OutputFormat::Json => Arc::new(JsonReporter::default()),
        };
        let request = PipelineRequest {
            command: Action::Push,
            runtime: runtime.clone(),
            templater: crate::values::process_templater(),
            grants: Grants::new(args.sandbox.allow.iter().cloned()),
            limits: args.sandbox.limits(),
            log: Arc::new(TerminalSink::default()),
            reporter,
            events: None,
            cwd: None,
        };
        let outcome = pipeline::run(&loaded, request).await?;
        let mut spec = outcome
            .deployment_to_register
            .clone()
            .ok_or_else(|| anyhow::anyhow!("deployment `{name}`: nothing to register"))?;
        apply_overrides(&mut spec, args)?;
        if let Some(e) = &by_flow {
            spec["entrypoint"] = json!(e);
        }
        let where_ = format!("{}: deployment `{name}`", args.file.display());
        let (flow_name, body) = registration(&spec, &python, &project_dir, &where_)?;
        let done = client.deploy(&flow_name, body).await.map_err(|e| {
            anyhow::anyhow!("{where_}: {}", outcome.redactor.redact(&e.to_string()))
        })?;
        let verb = if done.created { "created" } else { "updated" };
        eprintln!(
            "deployment `{flow_name}/{name}` {verb} on {} (id {})",
            client.url, done.id
        );
        results.push(json!({
            "flow": flow_name,
            "deployment": name,
            "id": done.id,
            "flow_id": done.flow_id,
            "created": done.created,
        }));
    }
    let summary: BTreeMap<&str, Value> = [("deployed", Value::Array(results))].into();
    println!(
        "{}",
        super::json_text(&json!(summary), args.output == OutputFormat::Text)
    );
    Ok(())
}
