//! `push_docker_image` (`prefect_docker.deployments.steps.push_docker_image`): push an
//! image from the host's Docker engine to its registry.
//!
//! Prefect semantics (spec §4.8): the namespace rules of `build_docker_image`,
//! `credentials` (a `docker-registry-credentials` block's data: `username`, `password`,
//! `registry_url`, `reauth`) logged in first, `<name>:<tag>` pushed, then each additional
//! tag; outputs as Prefect's, plus `digest` (the manifest digest of `<name>:<tag>`).
//! Identical calls within one `hoist` process are memoised by the host's runner
//! (`ignore_cache` forces a push). A missing `tag` pushes `latest` (Prefect's docker-py
//! pushes every tag of the repository; the output's `image` still reads `<name>:None`).

use hoist_sdk::docker::{self, PrefectCredentials, prefect_image_name};
use hoist_sdk::{Capability, JsonSchema, Result, log, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The image's name (`[registry/][namespace/]repository`), without tag.
    image_name: String,
    /// The tag to push (default `latest`).
    #[serde(default)]
    tag: Option<String>,
    /// Registry credentials: a `docker-registry-credentials` block's data.
    #[serde(default)]
    credentials: Option<PrefectCredentials>,
    /// More tags of the same image to push.
    #[serde(default)]
    additional_tags: Option<Vec<String>>,
    /// Push again even if an identical call already pushed in this process.
    #[serde(default)]
    #[allow(dead_code)]
    ignore_cache: bool,
    /// `docker-py` (the engine's API); `buildx` is not supported.
    #[serde(default)]
    build_backend: Option<String>,
}

#[derive(Serialize)]
struct Outputs {
    image_name: String,
    tag: Option<String>,
    image: String,
    additional_tags: Vec<String>,
    /// The manifest digest of `<image_name>:<tag>` (`sha256:<hex>`).
    digest: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let namespace = std::env::var("PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE").ok();
    let image_name = prefect_image_name(&inputs.image_name, namespace.as_deref())?;
    docker::check_build_backend(inputs.build_backend.as_deref())?;
    let credentials = inputs
        .credentials
        .as_ref()
        .map(PrefectCredentials::to_registry);
    let additional_tags = inputs.additional_tags.clone().unwrap_or_default();
    let first = format!("{image_name}:{}", inputs.tag.as_deref().unwrap_or("latest"));
    let digest = docker::push(&first, credentials.as_ref())?;
    log::info!("pushed {first} ({digest})");
    for t in &additional_tags {
        let reference = format!("{image_name}:{t}");
        let d = docker::push(&reference, credentials.as_ref())?;
        log::info!("pushed {reference} ({d})");
    }
    Ok(Outputs {
        image: format!("{image_name}:{}", inputs.tag.as_deref().unwrap_or("None")),
        image_name,
        tag: inputs.tag,
        additional_tags,
        digest,
    })
}

hoist_sdk::step! {
    name: "push_docker_image",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Push a Docker image from the host's engine to its registry",
    capabilities: [
        // The user wrote the image name in the project file: any registry.
        Capability::DockerPush("*".into()),
        Capability::Env("PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE".into()),
    ],
    run: run,
}
