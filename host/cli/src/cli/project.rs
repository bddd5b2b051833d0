//! `hoist build | push | pull | plan`: run or show the sections of a prefect.yaml.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::step::{TerminalSink, fmt_duration, parse_duration, parse_size};
use crate::pipeline::{
    self, Loaded, PipelineError, PipelineOutcome, PipelineRequest, Plan, PlannedStep,
};
use crate::plan::Target;
use crate::project::{Action, Deployment, StepEntry};
use crate::runner::{self, Reporter, StepReport};
use crate::runtime::{Capability, Grants, Limits, Runtime};

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
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// What the commands that run steps share: grants, the component cache, limits.
#[derive(Clone, Debug, Args)]
pub(crate) struct SandboxArgs {
    /// Grant a capability to the plugins that are not built in (see `hoist step run --help`).
    #[arg(short, long = "allow", value_name = "CAPABILITY")]
    pub(crate) allow: Vec<Capability>,
    #[command(flatten)]
    pub(crate) cache: super::CacheArgs,
    /// Stop any one step after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub(crate) timeout: Duration,
    /// Memory any one step may use (e.g. 64M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub(crate) memory_limit: usize,
}

impl SandboxArgs {
    /// A runtime with this cache.
    pub(crate) fn runtime(&self) -> anyhow::Result<Arc<Runtime>> {
        Ok(Arc::new(
            Runtime::new(self.cache.runtime_config()).map_err(|e| anyhow::anyhow!("{e:#}"))?,
        ))
    }

    /// The per-step limits.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            memory: self.memory_limit,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// Only this section [default: build, push and pull].
    #[arg(value_enum)]
    section: Option<SectionArg>,
    #[command(flatten)]
    project: ProjectArgs,
    /// Plan as if this capability were granted to installed and file plugins, as
    /// `--allow` does for build/push/pull (repeatable).
    #[arg(short, long = "allow", value_name = "CAPABILITY")]
    allow: Vec<Capability>,
    /// How to print the plan: `text` for people, `json` (one document on stdout) for
    /// programs; the exit status is the same.
    #[arg(long, value_enum, default_value_t = super::step::Format::Text)]
    output: super::step::Format,
    #[command(flatten)]
    cache: super::CacheArgs,
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

/// Load the project, warning (on stderr) about `hoist.grants` keys that name no step.
fn open(args: &ProjectArgs) -> Result<Loaded, PipelineError> {
    let loaded = Loaded::open(&args.file, args.deployment.as_deref())?;
    let project = &loaded.project;
    let unused = project.unused_grants();
    if !unused.is_empty() {
        let names: Vec<String> = project
            .all_steps()
            .map(|s| crate::project::grant_key(&s.name))
            .collect();
        for key in unused {
            let hint = match crate::plan::nearest(key, &names) {
                Some(n) => format!(" (did you mean `{n}`?)"),
                None => String::new(),
            };
            eprintln!(
                "warning: {}: `hoist.grants` names `{key}`, which is no step of this project; its grants are not used{hint}",
                loaded.file.display()
            );
        }
    }
    Ok(loaded)
}

pub(crate) async fn run(command: Action, args: &RunArgs) -> anyhow::Result<()> {
    let loaded = open(&args.project)?;
    let sections = match command {
        Action::Build => &[Action::Build][..],
        Action::Push => &[Action::Build, Action::Push],
        Action::Pull => &[Action::Pull],
    };
    let lock = super::plugin::lock_for(&loaded.file);
    super::plugin::ensure(&loaded, sections, Some(&lock)).await?;
    let runtime = args.sandbox.runtime()?;
    let reporter: Arc<dyn Reporter> = match args.output {
        OutputFormat::Text => Arc::new(TextReporter::default()),
        OutputFormat::Json => Arc::new(JsonReporter::default()),
    };
    let templater = crate::values::process_templater();
    let events = match std::env::var("PREFECT__FLOW_RUN_ID") {
        Ok(run_id) if command == Action::Pull && !run_id.is_empty() => {
            Some(pull_events(&run_id, templater.values()).await?)
        }
        _ => None,
    };
    let request = PipelineRequest {
        command,
        runtime,
        templater,
        grants: Grants::new(args.sandbox.allow.iter().cloned()),
        limits: args.sandbox.limits(),
        log: Arc::new(TerminalSink::default()),
        reporter,
        events,
        cwd: None,
    };
    let outcome = pipeline::run(&loaded, request).await?;
    print_outcome(command, args.output, &loaded, &outcome)
}

/// With a flow-run id (as a worker sets it), pull steps are recorded as events where
/// the run's values come from: the Prefect server `PREFECT_API_URL` names (the run's
/// own, which shows them in its UI), else the local store.
async fn pull_events(
    run_id: &str,
    values: &crate::values::ProcessValues,
) -> anyhow::Result<runner::Events> {
    use crate::values::ProcessValues;
    let target: Arc<dyn hoist_project::events::EventSink> = match values {
        ProcessValues::Prefect(client) => Arc::new(crate::prefect::worker::PrefectEvents {
            client: client.clone(),
            deployment: std::env::var("PREFECT__DEPLOYMENT_ID")
                .ok()
                .filter(|d| !d.is_empty()),
        }),
        ProcessValues::Invalid(e) => anyhow::bail!("{e}"),
        ProcessValues::Local(_) => Arc::new(crate::store::Store::open_default().await?),
    };
    Ok(runner::Events {
        resource: format!("prefect.flow-run.{run_id}"),
        target,
    })
}

fn print_outcome(
    command: Action,
    format: OutputFormat,
    loaded: &Loaded,
    outcome: &PipelineOutcome,
) -> anyhow::Result<()> {
    let shown = outcome.shown_outputs();
    let cwd = &outcome.working_directory;
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Text => {
            if command == Action::Pull {
                eprintln!("working directory: {}", cwd.display());
            }
            if let (Some(d), Some(spec)) = (&loaded.deployment, &outcome.deployment) {
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
                "duration_ms": super::millis(outcome.elapsed),
            });
            if let Some(spec) = &outcome.deployment {
                done["deployment"] = spec.clone();
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

pub(crate) async fn demo(cache: &super::CacheArgs) -> anyhow::Result<()> {
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
        sandbox: SandboxArgs {
            allow: Vec::new(),
            timeout: Duration::from_secs(60),
            memory_limit: crate::runtime::limits::DEFAULT_MEMORY_LIMIT,
            cache: cache.clone(),
        },
    };
    let result = async {
        eprintln!(
            "Each section prints its outputs as JSON on stdout: what later steps can use, by\n\
             step id (`{{{{ version.stdout }}}}`) and at the top level (`{{{{ stdout }}}}`), which is\n\
             why `stdout` appears twice.\n"
        );
        run(Action::Build, &args("prefect.yaml")).await?;
        run(Action::Pull, &args("prefect.yaml")).await?;
        demo_refusal(cache, &dir).await
    }
    .await;
    let _ = std::env::set_current_dir(std::env::temp_dir());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The sandbox at work: the built-in `run_shell_script` loaded as an untrusted plugin
/// (as one you install would be) runs nothing until it is granted what it declares.
async fn demo_refusal(cache: &super::CacheArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    eprintln!(
        "\nBuilt-in steps are trusted with what they declare, as Prefect trusts its own.\n\
         A plugin is not: here is run_shell_script loaded as if you had installed it:"
    );
    let runtime = Runtime::new(cache.runtime_config()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let (bytes, _) = crate::builtin::find("run_shell_script")
        .ok_or_else(|| anyhow::anyhow!("run_shell_script is not built in"))?;
    let plugin = runtime.load(bytes, "run_shell_script.wasm", false).await?;
    let req = crate::runtime::StepRequest::new("run_shell_script", dir)
        .inputs(json!({"script": "cat /etc/hostname"}));
    match runtime.run(&plugin, req).await {
        Err(e) => eprintln!("  refused: {}", super::hints(&e.to_string())),
        Ok(_) => anyhow::bail!("the demo's ungranted plugin ran: the sandbox did not hold"),
    }
    eprintln!(
        "\nNext: `hoist step ls` and `hoist step describe NAME` (the built-in steps),\n\
         `hoist plan` in a project with a prefect.yaml, `hoist plugin new NAME` (your own step)."
    );
    Ok(())
}

/// Text progress on stderr.
#[derive(Default)]
pub(crate) struct TextReporter {
    lock: Mutex<()>,
}

impl Reporter for TextReporter {
    fn section(&self, action: Action, deployment: Option<&Deployment>, steps: usize) {
        let whose = deployment
            .map(|d| format!(" ({})", d.label()))
            .unwrap_or_default();
        eprintln!(
            "{action}{whose}: {steps} step{}",
            if steps == 1 { "" } else { "s" }
        );
    }

    fn started(&self, step: &StepEntry, index: usize, total: usize, target: &Target) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let line = step.line.map(|l| format!(", line {l}")).unwrap_or_default();
        eprintln!(
            "{} [{}/{total}] {} ({}{line}; {})",
            super::marks().start,
            index + 1,
            step.name,
            step.position,
            target.describe()
        );
        super::ticker::start(step.short_name());
    }

    fn finished(&self, step: &StepEntry, _index: usize, report: &StepReport) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        super::ticker::stop();
        match &report.result {
            Ok(_) => eprintln!(
                "{} {} finished in {}",
                super::marks().done,
                step.short_name(),
                fmt_duration(report.elapsed)
            ),
            Err(_) => eprintln!(
                "{} {} failed after {}",
                super::marks().failed,
                step.short_name(),
                fmt_duration(report.elapsed)
            ),
        }
    }
}

/// One JSON object per finished step on stdout.
#[derive(Default)]
pub(crate) struct JsonReporter {
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
            "duration_ms": super::millis(report.elapsed),
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

pub(crate) async fn plan(args: &PlanArgs) -> anyhow::Result<()> {
    let loaded = open(&args.project)?;
    // Templating needs no runtime (the store is opened if a step refers to blocks or
    // variables). The plugins are then loaded and described (from the cache: ~0.2 ms
    // each), to refuse here what build/push/pull would refuse before their first step
    // and to check literal inputs against each plugin's input schema.
    let mut plan = pipeline::plan(
        &loaded,
        args.section.map(Action::from),
        &crate::values::process_templater(),
    )
    .await;
    if plan.has_plugins() {
        let runtime = Runtime::new(args.cache.runtime_config())?;
        let grants = Grants::new(args.allow.iter().cloned());
        pipeline::check_steps(&mut plan, &runtime, &grants).await;
    }
    if args.output == super::step::Format::Json {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", super::json_text(&plan_json(&plan), true))?;
    } else {
        print_plan(&plan)?;
    }
    let problems = plan.problems();
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

/// The plan as one JSON document: per section, per step what `print_plan` shows, and
/// every problem (the exit status is 1 when there is one).
fn plan_json(plan: &Plan) -> serde_json::Value {
    let list = |caps: &[Capability]| caps.iter().map(ToString::to_string).collect::<Vec<_>>();
    let sections: Vec<serde_json::Value> = plan
        .sections
        .iter()
        .map(|section| {
            let steps: Vec<serde_json::Value> = section
                .steps
                .iter()
                .map(|s| {
                    json!({
                        "position": s.position,
                        "name": s.name,
                        "line": s.line,
                        "id": s.id,
                        "requires": s.requires,
                        "runs": s.target.as_ref().ok().map(|t| t.describe()),
                        "cannot_run": s.target.as_ref().err().or(s.refused.as_ref()),
                        "will_fail": s.will_fail,
                        "warnings": s.warnings,
                        "grants": list(&s.grants),
                        "undeclared_grants": list(&s.undeclared),
                        "inputs": s.inputs,
                    })
                })
                .collect();
            json!({"section": section.action.to_string(), "steps": steps})
        })
        .collect();
    json!({
        "file": plan.file.display().to_string(),
        "deployment": plan.deployment,
        "sections": sections,
        "deployments_with_steps": plan.deployments_with_steps,
        "problems": plan.problems(),
    })
}

fn print_plan(plan: &Plan) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let whose = plan
        .deployment
        .as_ref()
        .map(|d| format!(" for {d}"))
        .unwrap_or_default();
    writeln!(out, "{}{whose}", plan.file.display())?;
    for section in &plan.sections {
        let empty = if section.steps.is_empty() {
            " no steps"
        } else {
            ""
        };
        writeln!(out, "\n{}:{empty}", section.action)?;
        for step in &section.steps {
            print_planned_step(&mut out, step)?;
        }
    }
    if !plan.deployments_with_steps.is_empty() {
        writeln!(
            out,
            "\ndeployments with their own steps (show them with --deployment NAME): {}",
            plan.deployments_with_steps.join(", ")
        )?;
    }
    Ok(())
}

fn print_planned_step(out: &mut impl Write, step: &PlannedStep) -> std::io::Result<()> {
    let runs = match (&step.target, &step.refused) {
        (Ok(t), None) => t.describe(),
        (Ok(t), Some(e)) => format!("{} — CANNOT RUN: {}", t.describe(), super::hints(e)),
        (Err(e), _) => format!("CANNOT RUN: {e}"),
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
    if !step.grants.is_empty() {
        let list = |caps: &[Capability]| {
            caps.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unused = if step.undeclared.is_empty() {
            String::new()
        } else {
            format!(
                " (not declared by the plugin, so never used: {})",
                list(&step.undeclared)
            )
        };
        writeln!(out, "      grants: {}{unused}", list(&step.grants))?;
    }
    if let Some(e) = &step.will_fail {
        writeln!(out, "      will fail: {e}")?;
    }
    for w in &step.warnings {
        writeln!(out, "      warning: {w}")?;
    }
    writeln!(
        out,
        "      inputs: {}",
        super::json_text(&step.inputs, false)
    )
}
