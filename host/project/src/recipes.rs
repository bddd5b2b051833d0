//! `hoist init`'s recipes: the starting `prefect.yaml` of each way to ship code that
//! `prefect init` knows (spec `prefect-steps.md` §6), written as data here and
//! templated with the values of the directory and the user's fields, unknown
//! placeholders kept verbatim (keep-unset mode, C04).
//!
//! Two recipes differ from Prefect's on purpose, because Prefect's do not work: `gcs`
//! pulls `folder: "{{ push_code.folder }}"` (Prefect's refers to its own step's output,
//! which never resolves, so the folder is dropped and the pull fails), and the `azure`
//! steps get `credentials` (Prefect's recipes have none, which the azure steps require).

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::template::{self, Options, Resolved};

/// The Prefect release Hoist speaks (written as `prefect-version`).
pub const PREFECT_VERSION: &str = "3.9.1";

/// A recipe: name, description, required fields.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    /// Its name (`--recipe`).
    pub name: &'static str,
    /// One line about it.
    pub description: &'static str,
    /// Fields it needs, with what each is.
    pub required: &'static [(&'static str, &'static str)],
}

const IMAGE: (&str, &str) = (
    "image_name",
    "the image name, with its registry and repository",
);
const TAG: (&str, &str) = ("tag", "the tag to give the built image");

/// Every recipe, in `prefect init`'s order.
pub const RECIPES: &[Recipe] = &[
    Recipe {
        name: "azure",
        description: "Store code within an Azure Blob Storage container",
        required: &[("container", "the container to store and retrieve code from")],
    },
    Recipe {
        name: "docker",
        description: "Store code within a custom docker image alongside its runtime environment",
        required: &[IMAGE, TAG],
    },
    Recipe {
        name: "docker-azure",
        description: "Store code within an Azure Blob Storage container and build a custom docker image for runtime",
        required: &[
            IMAGE,
            TAG,
            ("container", "the container to store and retrieve code from"),
        ],
    },
    Recipe {
        name: "docker-gcs",
        description: "Store code within a GCS bucket and build a custom docker image for runtime",
        required: &[
            IMAGE,
            TAG,
            ("bucket", "the bucket to store and retrieve code from"),
        ],
    },
    Recipe {
        name: "docker-git",
        description: "Store code within git and build a custom docker image for runtime",
        required: &[IMAGE, TAG],
    },
    Recipe {
        name: "docker-s3",
        description: "Store code within S3 and build a custom docker image for runtime",
        required: &[
            IMAGE,
            TAG,
            ("bucket", "the bucket to store and retrieve code from"),
        ],
    },
    Recipe {
        name: "gcs",
        description: "Store code within a GCS bucket",
        required: &[("bucket", "the bucket to store and retrieve code from")],
    },
    Recipe {
        name: "git",
        description: "Store code within a git repository",
        required: &[],
    },
    Recipe {
        name: "local",
        description: "Store code on a local filesystem",
        required: &[],
    },
    Recipe {
        name: "s3",
        description: "Store code within an S3 bucket",
        required: &[("bucket", "the bucket to store and retrieve code from")],
    },
];

fn docker_build() -> Value {
    json!([{"prefect_docker.deployments.steps.build_docker_image": {
        "id": "build_image", "requires": "prefect-docker>=0.3.1",
        "image_name": "{{ image_name }}", "tag": "{{ tag }}", "dockerfile": "{{ dockerfile }}"}}])
}

fn docker_push() -> Value {
    json!({"prefect_docker.deployments.steps.push_docker_image": {
        "requires": "prefect-docker>=0.3.1",
        "image_name": "{{ build_image.image_name }}", "tag": "{{ build_image.tag }}"}})
}

fn git_pull() -> Value {
    json!([{"prefect.deployments.steps.git_clone": {
        "repository": "{{ repository }}", "branch": "{{ branch }}", "access_token": null}}])
}

fn storage(kind: &str) -> (Value, Value) {
    match kind {
        "s3" => (
            json!({"prefect_aws.deployments.steps.push_to_s3": {"id": "push_code", "requires": "prefect-aws>=0.3.4", "bucket": "{{ bucket }}", "folder": "{{ name }}"}}),
            json!({"prefect_aws.deployments.steps.pull_from_s3": {"id": "pull_code", "requires": "prefect-aws>=0.3.4", "bucket": "{{ push_code.bucket }}", "folder": "{{ push_code.folder }}"}}),
        ),
        "gcs" => (
            json!({"prefect_gcp.deployments.steps.push_to_gcs": {"id": "push_code", "requires": "prefect-gcp>=0.4.3", "bucket": "{{ bucket }}", "folder": "{{ name }}"}}),
            json!({"prefect_gcp.deployments.steps.pull_from_gcs": {"id": "pull_code", "requires": "prefect-gcp>=0.4.3", "bucket": "{{ push_code.bucket }}", "folder": "{{ push_code.folder }}"}}),
        ),
        _ => (
            json!({"prefect_azure.deployments.steps.push_to_azure_blob_storage": {"id": "push_code", "requires": "prefect-azure[blob_storage]>=0.2.8", "container": "{{ container }}", "folder": "{{ name }}", "credentials": "{{ prefect.blocks.azure-blob-storage-credentials.azure-credentials }}"}}),
            json!({"prefect_azure.deployments.steps.pull_from_azure_blob_storage": {"id": "pull_code", "requires": "prefect-azure[blob_storage]>=0.2.8", "container": "{{ push_code.container }}", "folder": "{{ push_code.folder }}", "credentials": "{{ prefect.blocks.azure-blob-storage-credentials.azure-credentials }}"}}),
        ),
    }
}

/// The untemplated `build`, `push`, `pull` and `deployments` of a recipe.
fn sections(recipe: &str) -> Option<[Value; 4]> {
    let docker = recipe.starts_with("docker");
    let job_variables = if docker {
        json!({"image": "{{ build_image.image }}"})
    } else {
        json!({})
    };
    let deployments = json!([{
        "name": null, "version": null, "tags": [], "description": null, "schedule": {},
        "flow_name": null, "entrypoint": null, "parameters": {},
        "work_pool": {"name": null, "work_queue_name": null, "job_variables": job_variables},
    }]);
    let [build, push, pull] = match recipe {
        "local" => [
            Value::Null,
            Value::Null,
            json!([{"prefect.deployments.steps.set_working_directory": {"directory": "{{ directory }}"}}]),
        ],
        "git" => [Value::Null, Value::Null, git_pull()],
        "docker" => [
            docker_build(),
            json!([docker_push()]),
            json!([{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/prefect/{{ name }}"}}]),
        ],
        "docker-git" => [docker_build(), json!([docker_push()]), git_pull()],
        "s3" | "gcs" | "azure" => {
            let (push, pull) = storage(recipe);
            [Value::Null, json!([push]), json!([pull])]
        }
        "docker-s3" | "docker-gcs" | "docker-azure" => {
            let (push, pull) = storage(&recipe["docker-".len()..]);
            let mut docker_push = docker_push();
            if recipe == "docker-azure" {
                docker_push["prefect_docker.deployments.steps.push_docker_image"]["credentials"] =
                    Value::Null;
            }
            [docker_build(), json!([docker_push, push]), json!([pull])]
        }
        _ => return None,
    };
    Some([build, push, pull, deployments])
}

/// What a recipe is templated with (§6.3): the directory's facts, then the fields.
pub fn values(
    dir: &Path,
    recipe: &str,
    git: Option<(String, String)>,
    fields: &[(String, String)],
) -> Map<String, Value> {
    let mut v = Map::new();
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    v.insert("directory".into(), json!(dir.display().to_string()));
    v.insert(
        "name".into(),
        json!(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    );
    if let Some((repository, branch)) = git {
        v.insert("repository".into(), json!(repository));
        v.insert("branch".into(), json!(branch));
    }
    if dir.join("Dockerfile").exists() {
        v.insert("dockerfile".into(), json!("Dockerfile"));
    } else if recipe.contains("docker") {
        v.insert("dockerfile".into(), json!("auto"));
    }
    for (k, val) in fields {
        v.insert(k.clone(), json!(val));
    }
    v
}

/// The recipe `prefect init` infers for a directory (§6.2).
pub fn infer(has_git_remote: bool, has_dockerfile: bool) -> &'static str {
    match (has_git_remote, has_dockerfile) {
        (true, true) => "docker-git",
        (true, false) => "git",
        (false, true) => "docker",
        (false, false) => "local",
    }
}

/// The `prefect.yaml` text of `recipe` with `values`: a welcome comment, `name`,
/// `prefect-version`, then the templated sections. `None` for an unknown recipe.
pub fn render(recipe: &str, project_name: &str, values: &Map<String, Value>) -> Option<String> {
    let [build, push, pull, deployments] = sections(recipe)?;
    let keep = Options {
        remove_unset: false,
        skip_prefixes: &[],
    };
    let values = Value::Object(values.clone());
    let env = crate::template::Env::new();
    let t = |v: Value| match template::apply_values(&v, &values, &env, &keep) {
        Resolved::Value(x) => x,
        Resolved::Unset => v,
    };
    let yaml = |key: &str, v: &Value| {
        let mut m = Map::new();
        m.insert(key.into(), v.clone());
        serde_yaml_ng::to_string(&Value::Object(m)).unwrap_or_default()
    };
    let mut out = String::from(
        "# Welcome to your prefect.yaml file! You can use this file for storing and managing\n\
         # configuration for deploying your flows. We recommend committing this file to source\n\
         # control along with your flow code. Written by `hoist init`; `hoist deploy` and\n\
         # `prefect deploy` both read it.\n---\n",
    );
    out.push_str("# Generic metadata about this project\n");
    out.push_str(&yaml("name", &json!(project_name)));
    out.push_str(&yaml("prefect-version", &json!(PREFECT_VERSION)));
    out.push_str("\n# build section allows you to manage and build docker images\n");
    out.push_str(&yaml("build", &t(build)));
    out.push_str("\n# push section allows you to manage if and how this project is uploaded to remote locations\n");
    out.push_str(&yaml("push", &t(push)));
    out.push_str("\n# pull section allows you to provide instructions for cloning this project in remote locations\n");
    out.push_str(&yaml("pull", &t(pull)));
    out.push_str(
        "\n# the deployments section allows you to provide configuration for deploying flows\n",
    );
    out.push_str(&yaml("deployments", &t(deployments)));
    Some(out)
}

/// What `prefect init` writes as `.prefectignore` when there is none.
pub const PREFECTIGNORE: &str = "# prefect artifacts
.prefectignore

# python artifacts
__pycache__/
*.py[cod]
*$py.class
*.egg-info/
*.egg

# Type checking artifacts
.mypy_cache/
.dmypy.json
dmypy.json
.pyre/

# IPython
profile_default/
ipython_config.py
*.ipynb_checkpoints/*

# Environments
.python-version
.env
.venv
env/
venv/

# MacOS
.DS_Store

# Dask
dask-worker-space/

# Editors
.idea/
.vscode/

# VCS
.git/
.hg/
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_renders_and_keeps_unknown_placeholders() {
        for r in RECIPES {
            let text = render(r.name, "p", &Map::new()).unwrap();
            let v: Value = serde_yaml_ng::from_str(&text).unwrap();
            for k in [
                "name",
                "prefect-version",
                "build",
                "push",
                "pull",
                "deployments",
            ] {
                assert!(v.get(k).is_some(), "{}: {k}", r.name);
            }
        }
        assert!(render("not-a-recipe", "p", &Map::new()).is_none());
        let text = render("git", "p", &Map::new()).unwrap();
        assert!(text.contains("{{ repository }}") && text.contains("{{ branch }}"));
    }

    #[test]
    fn inference_follows_the_directory() {
        assert_eq!(infer(true, true), "docker-git");
        assert_eq!(infer(true, false), "git");
        assert_eq!(infer(false, true), "docker");
        assert_eq!(infer(false, false), "local");
    }
}
