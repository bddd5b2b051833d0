//! The library pipeline (`hoist::pipeline`) as a worker calls it: blocks and variables
//! from a provider of its own (here in memory, standing in for a Prefect server), the
//! sections run in order, a typed outcome; and the plan, templated without a runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hoist::capability::log::NullSink;
use hoist::pipeline::{self, Loaded, PipelineRequest};
use hoist::plan::Target;
use hoist::project::{Action, StepEntry};
use hoist::runner::{Reporter, StepReport};
use hoist::runtime::{Grants, Limits};
use hoist::template::{FoundBlocks, Values};
use hoist::templater::Templater;
use serde_json::{Value, json};

use crate::support;

/// Blocks and variables held in memory; counts the questions asked.
#[derive(Default)]
struct Memory {
    blocks: BTreeMap<(String, String), (Value, bool)>,
    variables: BTreeMap<String, Value>,
    asked: AtomicUsize,
}

impl Values for Memory {
    type Error = Infallible;

    async fn blocks(
        &self,
        names: &BTreeSet<(String, String)>,
        _ids: &BTreeSet<String>,
    ) -> Result<FoundBlocks, Infallible> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mut found = FoundBlocks::default();
        for key in names {
            if let Some((data, secret)) = self.blocks.get(key) {
                if *secret {
                    hoist_policy::secrets::secret_strings(data, &mut found.secrets);
                }
                found.blocks.by_name.insert(key.clone(), data.clone());
            }
        }
        Ok(found)
    }

    async fn variables(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Value>, Infallible> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(names
            .iter()
            .filter_map(|n| Some((n.clone(), self.variables.get(n)?.clone())))
            .collect())
    }
}

fn memory() -> Memory {
    let mut m = Memory::default();
    m.blocks.insert(
        ("secret".into(), "token".into()),
        (json!({"value": "hunter2-very-secret"}), true),
    );
    m.variables.insert("greeting".into(), json!("hello"));
    m
}

const PROJECT: &str = "name: demo
build:
  - prefect.deployments.steps.run_shell_script:
      id: first
      script: echo {{ prefect.variables.greeting }} {{ prefect.blocks.secret.token }}
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: flows
";

struct Sections(std::sync::Mutex<Vec<(Action, usize)>>);

impl Reporter for Sections {
    fn section(&self, action: Action, _: Option<&hoist::project::Deployment>, steps: usize) {
        self.0.lock().unwrap().push((action, steps));
    }
    fn started(&self, _: &StepEntry, _: usize, _: usize, _: &Target) {}
    fn finished(&self, _: &StepEntry, _: usize, _: &StepReport) {}
}

fn request(
    command: Action,
    dir: &std::path::Path,
    reporter: Arc<Sections>,
) -> PipelineRequest<Memory> {
    PipelineRequest {
        command,
        runtime: Arc::new(support::runtime()),
        templater: Templater::new(
            [("PATH".to_string(), std::env::var("PATH").unwrap())].into(),
            memory(),
        ),
        grants: Grants::none(),
        limits: Limits::default(),
        log: Arc::new(NullSink),
        reporter,
        events: None,
        cwd: Some(dir.to_path_buf()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_of_its_own_feeds_the_pipeline_and_its_secrets_are_masked() {
    let (_t, dir) = support::tempdir();
    std::fs::create_dir(dir.join("flows")).unwrap();
    let file = dir.join("prefect.yaml");
    std::fs::write(&file, PROJECT).unwrap();
    let loaded = Loaded::open(&file, None).unwrap();

    let sections = Arc::new(Sections(Default::default()));
    let outcome = pipeline::run(&loaded, request(Action::Build, &dir, sections.clone()))
        .await
        .unwrap();
    assert_eq!(
        outcome.outputs["first"]["stdout"],
        "hello hunter2-very-secret"
    );
    assert_eq!(outcome.shown_outputs()["first"]["stdout"], "hello ********");
    assert_eq!(outcome.working_directory, dir);
    assert!(outcome.deployment.is_none());
    assert_eq!(*sections.0.lock().unwrap(), [(Action::Build, 1)]);

    // pull: the final directory is the one the flow would run in.
    let outcome = pipeline::run(&loaded, request(Action::Pull, &dir, sections.clone()))
        .await
        .unwrap();
    assert_eq!(outcome.working_directory, dir.join("flows"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_templates_from_the_provider_without_running_anything() {
    let (_t, dir) = support::tempdir();
    let file = dir.join("prefect.yaml");
    std::fs::write(
        &file,
        format!(
            "{PROJECT}  - no.such.module.step:\n      x: '{{{{ prefect.blocks.secret.gone }}}}'\n"
        ),
    )
    .unwrap();
    let loaded = Loaded::open(&file, None).unwrap();
    let templater = Templater::new(Default::default(), memory());
    let plan = pipeline::plan(&loaded, None, &templater).await;

    let build = &plan.sections[0];
    assert_eq!(build.action, Action::Build);
    let step = &build.steps[0];
    assert_eq!(step.position, "build[0]");
    assert_eq!(step.line, Some(3));
    assert_eq!(step.id.as_deref(), Some("first"));
    assert!(step.target.is_ok(), "{:?}", step.target);
    assert_eq!(step.inputs["script"], "echo hello ********");
    assert!(step.will_fail.is_none());
    assert!(plan.sections[1].steps.is_empty());

    let bad = &plan.sections[2].steps[1];
    assert!(bad.target.is_err());
    assert!(
        bad.will_fail
            .as_deref()
            .unwrap()
            .contains("Block not found")
    );
    let problems = plan.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("pull[1]"), "{problems:?}");
    assert!(templater.values().asked.load(Ordering::SeqCst) > 0);
}
