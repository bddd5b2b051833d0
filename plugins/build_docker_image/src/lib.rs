//! `build_docker_image` (`prefect_docker.deployments.steps.build_docker_image`): build an
//! image on the host's Docker engine and tag it.
//!
//! Prefect semantics (spec §4.8): the namespace rules (with
//! `PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE`), the default tag (the UTC time, slugified),
//! `dockerfile: auto` (a generated Dockerfile, removed after the build even when it
//! fails; kept as `dockerfile_output_path` with `persist_dockerfile`), build keyword
//! arguments (`path`, `buildargs`, `labels`, `target`, `platform`, `pull`, `nocache`),
//! labels merged with `io.prefect.version`, the `build_backend` check. Identical calls
//! within one `hoist` process are memoised by the host's runner (`ignore_cache` forces
//! a build). Hoist adds `base_image` (or `HOIST_DOCKER_BASE_IMAGE`) for `auto`.

use std::collections::BTreeMap;
use std::path::Path;

use hoist_sdk::docker::{self, BuildOptions, prefect_image_name};
use hoist_sdk::{Capability, JsonSchema, Result, StepError, context, schemars};
use serde::{Deserialize, Serialize};

/// The Prefect release whose steps Hoist follows: the `io.prefect.version` label and the
/// default base image of `dockerfile: auto`.
const PREFECT_VERSION: &str = "3.9.1";
/// The Python of the default base image.
const PYTHON: &str = "3.12";

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The image's name (`[registry/][namespace/]repository`), without tag.
    image_name: String,
    /// The Dockerfile, relative to the build context; `auto` generates one.
    #[serde(default = "default_dockerfile")]
    dockerfile: String,
    /// The tag (default: the current UTC time, slugified).
    #[serde(default)]
    tag: Option<String>,
    /// More tags for the same image.
    #[serde(default)]
    additional_tags: Option<Vec<String>>,
    /// Build again even if an identical call already built in this process (read by
    /// the host's runner, which memoises the call).
    #[serde(default)]
    #[allow(dead_code)]
    ignore_cache: bool,
    /// With `dockerfile: auto`, keep the generated Dockerfile as `dockerfile_output_path`.
    #[serde(default)]
    persist_dockerfile: bool,
    /// Where a persisted generated Dockerfile is written.
    #[serde(default = "default_output_path")]
    dockerfile_output_path: String,
    /// `docker-py` (the engine's API); `buildx` is not supported.
    #[serde(default)]
    build_backend: Option<String>,
    /// The base image of a generated Dockerfile (default `HOIST_DOCKER_BASE_IMAGE`, else
    /// `prefecthq/prefect:<version>-python<x.y>`).
    #[serde(default)]
    base_image: Option<String>,
    /// The build context (default: the working directory).
    #[serde(default)]
    path: Option<String>,
    /// Build arguments (`ARG`s).
    #[serde(default)]
    buildargs: Option<BTreeMap<String, String>>,
    /// Labels added to the image.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// The stage to build.
    #[serde(default)]
    target: Option<String>,
    /// The platform, `os/arch[/variant]`.
    #[serde(default)]
    platform: Option<String>,
    /// Pull newer base images first (Prefect's default: true).
    #[serde(default)]
    pull: Option<bool>,
    /// Build without the engine's cache.
    #[serde(default)]
    nocache: bool,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn default_output_path() -> String {
    "Dockerfile.generated".into()
}

#[derive(Serialize)]
struct Outputs {
    image_name: String,
    tag: String,
    image: String,
    image_id: String,
    additional_tags: Vec<String>,
}

/// The Dockerfile `auto` writes (Prefect's, with a configurable base image).
fn generated_dockerfile(base: &str, cwd: &Path) -> String {
    let dir = cwd
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut lines = vec![format!("FROM {base}")];
    if cwd.join("requirements.txt").is_file() {
        lines.push(format!(
            "COPY requirements.txt /opt/prefect/{dir}/requirements.txt"
        ));
        lines.push(format!(
            "RUN uv pip install -r /opt/prefect/{dir}/requirements.txt"
        ));
    }
    lines.push(format!("COPY . /opt/prefect/{dir}/"));
    lines.push(format!("WORKDIR /opt/prefect/{dir}/"));
    lines.join("\n") + "\n"
}

/// Removes the generated Dockerfile when dropped: after the build, failed or not.
struct Generated(std::path::PathBuf);

impl Drop for Generated {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let namespace = std::env::var("PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE").ok();
    let image_name = prefect_image_name(&inputs.image_name, namespace.as_deref())?;
    let cwd = context::working_directory();
    let mut dockerfile = inputs.dockerfile.clone();
    let mut _generated = None;
    let generated_path = cwd.join("Dockerfile");
    if inputs.dockerfile == "auto" {
        if generated_path.exists() {
            return Err(StepError::invalid_input(
                "Dockerfile already exists. (input `dockerfile` is `auto`, which writes ./Dockerfile: remove the file or name it in `dockerfile`)",
            ));
        }
        let base = inputs
            .base_image
            .clone()
            .or_else(|| std::env::var("HOIST_DOCKER_BASE_IMAGE").ok())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| format!("prefecthq/prefect:{PREFECT_VERSION}-python{PYTHON}"));
        let text = generated_dockerfile(&base, &cwd);
        std::fs::write(&generated_path, &text).map_err(|e| {
            StepError::failed(format!("cannot write {}: {e}", generated_path.display()))
        })?;
        _generated = Some(Generated(generated_path.clone()));
        if inputs.persist_dockerfile {
            let out = cwd.join(&inputs.dockerfile_output_path);
            std::fs::write(&out, &text)
                .map_err(|e| StepError::failed(format!("cannot write {}: {e}", out.display())))?;
        }
        dockerfile = "Dockerfile".into();
    }
    docker::check_build_backend(inputs.build_backend.as_deref())?;
    let tag = inputs
        .tag
        .clone()
        .unwrap_or_else(docker::prefect_default_tag);
    let additional_tags = inputs.additional_tags.clone().unwrap_or_default();
    let mut tags = vec![format!("{image_name}:{tag}")];
    tags.extend(additional_tags.iter().map(|t| format!("{image_name}:{t}")));
    let mut labels = inputs.labels.clone().unwrap_or_default();
    labels.insert("io.prefect.version".into(), PREFECT_VERSION.into());
    // A generated Dockerfile lives in the working directory, so the context does too.
    let context_dir = match (&inputs.path, inputs.dockerfile == "auto") {
        (Some(p), false) => p.clone(),
        _ => cwd.to_string_lossy().into_owned(),
    };
    let image_id = docker::build(&BuildOptions {
        context: context_dir,
        dockerfile: Some(dockerfile),
        tags,
        build_args: inputs
            .buildargs
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        labels: labels.into_iter().collect(),
        target: inputs.target.clone(),
        platform: inputs.platform.clone(),
        pull: inputs.pull.unwrap_or(true),
        no_cache: inputs.nocache,
    })?;
    Ok(Outputs {
        image: format!("{image_name}:{tag}"),
        image_name,
        tag,
        image_id,
        additional_tags,
    })
}

hoist_sdk::step! {
    name: "build_docker_image",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Build a Docker image on the host's engine and tag it",
    capabilities: [
        Capability::DockerBuild,
        // Base images are pulled and RUN instructions reach the network, as with Prefect.
        Capability::Net("*".into()),
        Capability::Env("PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE".into()),
        Capability::Env("HOIST_DOCKER_BASE_IMAGE".into()),
    ],
    run: run,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_dockerfile_copies_the_project() {
        let dir = std::env::temp_dir().join(format!("hoist-bdi-{}", std::process::id()));
        let proj = dir.join("proj");
        std::fs::create_dir_all(&proj).unwrap();
        assert_eq!(
            generated_dockerfile("base:1", &proj),
            "FROM base:1\nCOPY . /opt/prefect/proj/\nWORKDIR /opt/prefect/proj/\n"
        );
        std::fs::write(proj.join("requirements.txt"), "x\n").unwrap();
        assert!(
            generated_dockerfile("base:1", &proj)
                .contains("RUN uv pip install -r /opt/prefect/proj/requirements.txt")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
