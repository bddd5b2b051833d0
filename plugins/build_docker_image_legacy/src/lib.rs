//! `build_docker_image_legacy` (`prefect_docker.projects.steps.build_docker_image`, the
//! prefect-docker 0.2.x step of Prefect 2.10's docker recipes): build an image, tag it and,
//! unless `push: false`, push it, in one step (spec §4.8, *Legacy*).
//!
//! Parameters `image_name`, `dockerfile` (`Dockerfile`), `tag` (default: the UTC time,
//! slugified; early docs spelled it `image_tag`), `push` (true), `credentials`. Output
//! `{"image_name": "<name>:<tag>", "image_tag": <tag>}`: the name includes the tag, as it
//! did then.

use hoist_sdk::docker::{self, BuildOptions, PrefectCredentials, prefect_image_name};
use hoist_sdk::{Capability, JsonSchema, Result, StepError, log, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The image's name (`[registry/][namespace/]repository`), without tag.
    image_name: String,
    /// The Dockerfile, relative to the working directory (the build context).
    #[serde(default = "default_dockerfile")]
    dockerfile: String,
    /// The tag (default: the current UTC time, slugified).
    #[serde(default)]
    tag: Option<String>,
    /// The tag, as early Prefect 2.10 docs spelled it.
    #[serde(default)]
    image_tag: Option<String>,
    /// Push the image after building it.
    #[serde(default = "yes")]
    push: bool,
    /// Registry credentials: a `docker-registry-credentials` block's data.
    #[serde(default)]
    credentials: Option<PrefectCredentials>,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn yes() -> bool {
    true
}

#[derive(Serialize)]
struct Outputs {
    image_name: String,
    image_tag: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let name = prefect_image_name(&inputs.image_name, None)?;
    if inputs.tag.is_some() && inputs.image_tag.is_some() {
        return Err(StepError::invalid_input(
            "give the tag once: `tag` or `image_tag`, not both",
        ));
    }
    let tag = inputs
        .tag
        .or(inputs.image_tag)
        .unwrap_or_else(docker::prefect_default_tag);
    let image = format!("{name}:{tag}");
    let id = docker::build(&BuildOptions {
        context: ".".into(),
        dockerfile: Some(inputs.dockerfile),
        tags: vec![image.clone()],
        build_args: Vec::new(),
        labels: Vec::new(),
        target: None,
        platform: None,
        pull: true,
        no_cache: false,
    })?;
    log::info!("built {image} ({id})");
    if inputs.push {
        let credentials = inputs
            .credentials
            .as_ref()
            .map(PrefectCredentials::to_registry);
        let digest = docker::push(&image, credentials.as_ref())?;
        log::info!("pushed {image} ({digest})");
    }
    Ok(Outputs {
        image_name: image,
        image_tag: tag,
    })
}

hoist_sdk::step! {
    name: "build_docker_image_legacy",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Build a Docker image and push it (prefect-docker 0.2.x's one-step form)",
    capabilities: [
        Capability::DockerBuild,
        Capability::DockerPush("*".into()),
        Capability::Net("*".into()),
    ],
    run: run,
}
