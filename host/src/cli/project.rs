//! `hoist build | push | pull | plan`: run or show the sections of a prefect.yaml.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::{Map, Value, json};

use super::step::{TerminalSink, fmt_duration, parse_duration, parse_size};
use crate::capability::log::{LogSink, NullSink};
use crate::plan::{self, Target};
use crate::project::{self, Action, Deployment, Project, StepEntry};
use crate::runner::{self, Reporter, Runner, StepReport, location, redact_value};
use crate::runtime::{Capability, Grants, Limits, Runtime};
use crate::template::{self, Options, Resolved};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Step names, live logs and durations on stderr; final outputs as JSON on stdout.
    Text,
    /// One JSON object per step on stdout (logs still go to stderr).
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectArgs {
    /// The project file.
    #[arg(short, long, default_value = "prefect.yaml", value_name = "FILE")]
    file: PathBuf,
    /// Use this deployment's sections (its own build/push/pull override the top level).
    #[arg(short, long, value_name = "NAME")]
    deployment: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    project: ProjectArgs,
    /// Progress format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// Grant a capability to the plugins that are not built in (see `hoist step run --help`).
    #[arg(short, long = "allow", value_name = "CAPABILITY")]
    allow: Vec<Capability>,
    /// Stop any one step after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    timeout: Duration,
    /// Memory any one step may use (e.g. 64M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    memory_limit: usize,
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Only this section [default: build, push and pull].
    #[arg(value_enum)]
    section: Option<SectionArg>,
    #[command(flatten)]
    project: ProjectArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum SectionArg {
    Build,
    Push,
    Pull,
}

impl From<SectionArg> for Action {
    fn from(s: SectionArg) -> Self {
        match s {
            SectionArg::Build => Action::Build,
            SectionArg::Push => Action::Push,
            SectionArg::Pull => Action::Pull,
        }
    }
}

fn open(args: &ProjectArgs) -> anyhow::Result<(Project, Option<Deployment>)> {
    if !args.file.exists() {
        let cwd = std::env::current_dir().unwrap_or_default();
        bail!(
            "{}: no such project file (looked in {}); pass --file PATH",
            args.file.display(),
            cwd.display()
        );
    }
    let project = project::load(&args.file)?;
    let deployment = match &args.deployment {
        None => None,
        Some(name) => match project.deployment(name) {
            Some(d) => Some(d.clone()),
            None => {
                let names: Vec<String> = project
                    .deployments
                    .iter()
                    .filter_map(|d| d.name.clone())
                    .collect();
                bail!(
                    "{}: no deployment named `{name}` (deployments: {})",
                    args.file.display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        },
    };
    Ok((project, deployment))
}

pub(crate) async fn run(cli: &super::Cli, command: Action, args: &RunArgs) -> anyhow::Result<()> {
    let (project, deployment) = open(&args.project)?;
    let runtime =
        Arc::new(Runtime::new(cli.runtime_config()).map_err(|e| anyhow::anyhow!("{e:#}"))?);
    let reporter: Arc<dyn Reporter> = match args.output {
        OutputFormat::Text => Arc::new(TextReporter::default()),
        OutputFormat::Json => Arc::new(JsonReporter::default()),
    };
    let sink: Arc<dyn LogSink> = Arc::new(TerminalSink::default());
    let mut runner = Runner::new(runtime, args.project.file.clone(), sink, reporter);
    runner.grants = Grants::new(args.allow.iter().cloned());
    runner.project_grants = project.grants.clone();
    // With a flow-run id (as a worker sets it), pull steps are recorded as events.
    if command == Action::Pull
        && let Some(run_id) = std::env::var("PREFECT__FLOW_RUN_ID")
            .ok()
            .filter(|s| !s.is_empty())
    {
        let store = crate::store::Store::open_default().await?;
        runner.events = Some(runner::Events {
            resource: format!("prefect.flow-run.{run_id}"),
            store,
        });
    }
    runner.limits = Limits {
        memory: args.memory_limit,
        timeout: args.timeout,
    };

    let sections = runner::sections_for(command);
    // Everything is resolved and loaded before the first step of the first section runs.
    let all: Vec<StepEntry> = sections
        .iter()
        .flat_map(|a| project.steps(*a, deployment.as_ref()).to_vec())
        .collect();
    runner.prepare(&all).await?;

    // §3.10 step 2: the declaration is resolved against blocks, variables and the
    // environment before any step runs.
    let config = match &deployment {
        Some(d) if command != Action::Pull => {
            let raw = Value::Object(d.raw.clone());
            let blocks = runner
                .fetch_blocks(&raw)
                .await
                .map_err(anyhow::Error::msg)?;
            let after = crate::template::resolve_blocks(&raw, &blocks).map_err(|e| {
                anyhow::anyhow!("{}: {}: {e}", args.project.file.display(), d.label())
            })?;
            let variables = runner
                .fetch_variables(&after)
                .await
                .map_err(anyhow::Error::msg)?;
            Some(
                project::spec::pre_resolve(&d.raw, &runner.env, &blocks, &variables).map_err(
                    |e| anyhow::anyhow!("{}: {}: {e}", args.project.file.display(), d.label()),
                )?,
            )
        }
        _ => None,
    };
    let started = std::time::Instant::now();
    let mut outputs = Map::new();
    let mut cwd = std::env::current_dir().context("cannot read the current directory")?;
    cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    let start_dir = cwd.clone();
    for action in sections {
        let steps = project.steps(*action, deployment.as_ref());
        if args.output == OutputFormat::Text {
            let whose = deployment
                .as_ref()
                .map(|d| format!(" ({})", d.label()))
                .unwrap_or_default();
            eprintln!(
                "{action}{whose}: {} step{}",
                steps.len(),
                if steps.len() == 1 { "" } else { "s" }
            );
        }
        let outcome = runner.run(steps, outputs, cwd).await?;
        outputs = outcome.outputs.clone();
        cwd = if *action == Action::Pull {
            runner::final_directory(&outcome)
        } else {
            outcome.cwd
        };
    }
    let redactor = runner.redactor();
    let spec = match (&deployment, &config) {
        (Some(d), Some(config)) => Some(redact_value(
            &project::spec::resolve(&project, d, config, &outputs, &runner.env, &start_dir)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}: deployment `{}`: {e}",
                        args.project.file.display(),
                        d.name.as_deref().unwrap_or("?")
                    )
                })?,
            &redactor,
        )),
        _ => None,
    };
    let shown = redact_value(&Value::Object(outputs), &redactor);
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Text => {
            if command == Action::Pull {
                eprintln!("working directory: {}", cwd.display());
            }
            if let (Some(d), Some(spec)) = (&deployment, &spec) {
                eprintln!(
                    "{} would be registered as:\n{}",
                    d.label(),
                    super::json_text(spec, true)
                );
            }
            // Outputs are plugins' text: escaped so a terminal shows them, not obeys them.
            writeln!(out, "{}", super::json_text(&shown, true))?;
        }
        OutputFormat::Json => {
            let mut done = json!({
                "event": "done",
                "outputs": shown,
                "working_directory": cwd.display().to_string(),
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
            });
            if let Some(spec) = spec {
                done["deployment"] = spec;
            }
            writeln!(out, "{}", super::json_text(&done, false))?;
        }
    }
    Ok(())
}

/// The example project of `hoist demo`: build and pull sections chained by outputs.
const DEMO_PROJECT: &str = r#"# An example prefect.yaml, run by `hoist demo`.
name: hoist-demo
prefect-version: 3.1.0

build:
  - prefect.deployments.steps.run_shell_script:
      id: version
      script: echo 1.0.0

pull:
  - prefect.deployments.steps.set_working_directory:
      directory: flows
  - prefect.deployments.steps.run_shell_script:
      id: greet
      script: |
        echo hello from {{ directory }}
        ls
"#;

pub(crate) async fn demo(cli: &super::Cli) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("hoist-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("flows"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("flows/hello.py"), "print('hello')\n")?;
    std::fs::write(dir.join("prefect.yaml"), DEMO_PROJECT)?;
    std::env::set_current_dir(&dir)?;
    eprintln!("example project in {} (prefect.yaml):\n", dir.display());
    eprintln!("{DEMO_PROJECT}");
    let args = |file: &str| RunArgs {
        project: ProjectArgs {
            file: file.into(),
            deployment: None,
        },
        output: OutputFormat::Text,
        allow: Vec::new(),
        timeout: Duration::from_secs(60),
        memory_limit: crate::runtime::limits::DEFAULT_MEMORY_LIMIT,
    };
    let result = async {
        run(cli, Action::Build, &args("prefect.yaml")).await?;
        run(cli, Action::Pull, &args("prefect.yaml")).await
    }
    .await;
    let _ = std::env::set_current_dir(std::env::temp_dir());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Text progress on stderr.
#[derive(Default)]
struct TextReporter {
    lock: Mutex<()>,
}

impl Reporter for TextReporter {
    fn started(&self, step: &StepEntry, index: usize, total: usize, target: &Target) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let line = step.line.map(|l| format!(", line {l}")).unwrap_or_default();
        eprintln!(
            "▶ [{}/{total}] {} ({}{line}; {})",
            index + 1,
            step.name,
            step.position,
            target.describe()
        );
    }

    fn finished(&self, step: &StepEntry, _index: usize, report: &StepReport) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match &report.result {
            Ok(_) => eprintln!(
                "✓ {} finished in {}",
                step.short_name(),
                fmt_duration(report.elapsed)
            ),
            Err(_) => eprintln!(
                "✗ {} failed after {}",
                step.short_name(),
                fmt_duration(report.elapsed)
            ),
        }
    }
}

/// One JSON object per finished step on stdout.
#[derive(Default)]
struct JsonReporter {
    lock: Mutex<()>,
}

impl Reporter for JsonReporter {
    fn started(&self, _: &StepEntry, _: usize, _: usize, _: &Target) {}

    fn finished(&self, step: &StepEntry, index: usize, report: &StepReport) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut obj = json!({
            "event": "step",
            "index": index,
            "position": step.position,
            "line": step.line,
            "name": step.name,
            "id": step.id,
            "duration_ms": report.elapsed.as_secs_f64() * 1000.0,
        });
        match &report.result {
            Ok(outputs) => {
                obj["status"] = json!("ok");
                obj["outputs"] = outputs.clone();
            }
            Err(e) => {
                obj["status"] = json!("failed");
                obj["error"] = json!(e.message);
                obj["error_kind"] = json!(e.kind);
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", super::json_text(&obj, false));
    }
}

pub(crate) async fn plan(cli: &super::Cli, args: &PlanArgs) -> anyhow::Result<()> {
    let _ = cli;
    let (project, deployment) = open(&args.project)?;
    let file = &args.project.file;
    let project_dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let installed = hoist_policy::paths::plugins();
    let sections: Vec<Action> = match args.section {
        Some(s) => vec![s.into()],
        None => vec![Action::Build, Action::Push, Action::Pull],
    };
    // A runner only for templating (it opens the store if a step refers to blocks or
    // variables); nothing is run or loaded, so its runtime gets no instance pool.
    // (The architecture issue separates templating from the runner.)
    let runtime = Arc::new(
        Runtime::new(crate::runtime::RuntimeConfig {
            cache: crate::runtime::ComponentCache::disabled(),
            allocator: crate::runtime::Allocator::OnDemand,
            max_instances: 1,
            ..Default::default()
        })
        .map_err(|e| anyhow::anyhow!("{e:#}"))?,
    );
    let runner = Runner::new(
        runtime,
        file.clone(),
        Arc::new(NullSink),
        Arc::new(TextReporter::default()),
    );
    let mut problems = Vec::new();
    let mut out = std::io::stdout().lock();
    let whose = deployment
        .as_ref()
        .map(|d| format!(" for {}", d.label()))
        .unwrap_or_default();
    writeln!(out, "{}{whose}", file.display())?;
    for action in sections {
        let steps = project.steps(action, deployment.as_ref());
        writeln!(
            out,
            "\n{action}: {}",
            if steps.is_empty() { "no steps" } else { "" }.trim_end()
        )?;
        for step in steps {
            let runs = match plan::resolve(&step.name, &project_dir, &installed) {
                Ok(t) => t.describe(),
                Err(e) => {
                    problems.push(format!("{}: {e}", location(file, step)));
                    format!("CANNOT RUN: {e}")
                }
            };
            let line = step
                .line
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            writeln!(out, "  {}  {}{line}", step.position, step.name)?;
            writeln!(out, "      runs:   {runs}")?;
            if let Some(id) = &step.id {
                writeln!(out, "      id:     {id}")?;
            }
            if !step.requires.is_empty() {
                writeln!(
                    out,
                    "      requires: {} (not installed by Hoist: steps are plugins)",
                    step.requires.join(", ")
                )?;
            }
            // Step outputs are not known before running: their placeholders stay.
            let raw = Value::Object(step.inputs.clone());
            runner.note_env_secrets(&raw);
            let keep = Options {
                remove_unset: false,
                skip_prefixes: &[],
            };
            let first = match template::apply_values(
                &raw,
                &Value::Object(Map::new()),
                &runner.env,
                &keep,
            ) {
                Resolved::Value(v) => v,
                Resolved::Unset => raw.clone(),
            };
            let shown = match plan_blocks_and_variables(&runner, step, &first).await {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{}: {e}", location(file, step)));
                    writeln!(out, "      will fail: {e}")?;
                    first
                }
            };
            runner.note_keyed_secrets(&shown);
            let shown = redact_value(&shown, &runner.redactor());
            writeln!(out, "      inputs: {}", super::json_text(&shown, false))?;
        }
    }
    if deployment.is_none() {
        let own: Vec<String> = project
            .deployments
            .iter()
            .filter(|d| {
                [&d.build, &d.push, &d.pull]
                    .iter()
                    .any(|s| !matches!(s, project::Section::Absent))
            })
            .map(|d| d.name.clone().unwrap_or_else(|| format!("#{}", d.index)))
            .collect();
        if !own.is_empty() {
            writeln!(
                out,
                "\ndeployments with their own steps (show them with --deployment NAME): {}",
                own.join(", ")
            )?;
        }
    }
    drop(out);
    if !problems.is_empty() {
        bail!(
            "{} step{} cannot run:\n{}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n")
        );
    }
    Ok(())
}

/// Blocks and variables resolved for display, where the store has them.
async fn plan_blocks_and_variables(
    runner: &Runner,
    step: &StepEntry,
    v: &Value,
) -> Result<Value, String> {
    let (names, ids) = template::block_refs(v);
    if names.is_empty() && ids.is_empty() && template::variable_refs(v).is_empty() {
        return Ok(v.clone());
    }
    // The runner's templating does exactly this with outputs; with none, placeholders to
    // outputs would vanish, so only the block and variable passes are applied here.
    let mut only_store = step.clone();
    only_store.inputs = v.as_object().cloned().unwrap_or_default();
    let resolved = runner.template(&only_store, &Map::new()).await?;
    // Keep what the outputs pass dropped: show the merged view.
    Ok(merge_keep(v, &resolved))
}

fn merge_keep(original: &Value, resolved: &Value) -> Value {
    match (original, resolved) {
        (Value::Object(o), Value::Object(r)) => Value::Object(
            o.iter()
                .map(|(k, ov)| {
                    (
                        k.clone(),
                        r.get(k)
                            .map(|rv| merge_keep(ov, rv))
                            .unwrap_or_else(|| ov.clone()),
                    )
                })
                .collect(),
        ),
        (_, r) => r.clone(),
    }
}
