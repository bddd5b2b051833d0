//! `push_to_s3` (`prefect_aws.deployments.steps.push_to_s3`, legacy
//! `prefect_aws.projects.steps.push_project_to_s3`): upload the working directory,
//! recursively, under `<bucket>/<folder>/`, skipping what `ignore_file` (default
//! `.prefectignore`) excludes with gitignore patterns, as Prefect's `filter_files`
//! (pathspec's `gitwildmatch`) does.
//!
//! Spec §4.9. S3 is spoken over `wasi:http` and signed in the plugin.

mod ignore;

use hoist_sdk::s3::{Client, Config, key_under};
use hoist_sdk::{Capability, JsonSchema, Result, StepError, log, schemars};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Map = serde_json::Map<String, serde_json::Value>;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The bucket.
    bucket: String,
    /// The folder (key prefix) to upload under.
    folder: String,
    /// An `aws-credentials` or `minio-credentials` block's data.
    #[serde(default)]
    credentials: Option<Map>,
    /// boto3 client parameters (`endpoint_url`, `region_name`).
    #[serde(default)]
    client_parameters: Option<Map>,
    /// gitignore-style patterns of files not to upload, relative to the working directory.
    #[serde(default = "default_ignore")]
    ignore_file: Option<String>,
}

fn default_ignore() -> Option<String> {
    Some(".prefectignore".into())
}

#[derive(Serialize)]
struct Outputs {
    bucket: String,
    folder: String,
}

/// Every file under `root` (following no directory symlinks), as `/`-separated paths
/// relative to `root`, sorted.
fn files_under(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| StepError::failed(format!("listing {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| StepError::failed(format!("listing {}: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(|e| StepError::failed(format!("{}: {e}", path.display())))?;
            if kind.is_dir() {
                stack.push((rel, path));
            } else {
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn run(i: Inputs) -> Result<Outputs> {
    let client = Client::new(Config::from_prefect_aws(
        i.credentials.as_ref(),
        i.client_parameters.as_ref(),
    ))?;
    let cwd = std::env::current_dir()?;
    let rules = match &i.ignore_file {
        Some(f) if cwd.join(f).is_file() => {
            let text = std::fs::read_to_string(cwd.join(f))
                .map_err(|e| StepError::failed(format!("reading {f}: {e}")))?;
            ignore::Rules::parse(&text)
        }
        _ => ignore::Rules::default(),
    };
    let (mut files, mut bytes, mut skipped) = (0usize, 0u64, 0usize);
    for (rel, path) in files_under(&cwd)? {
        if rules.excludes(&rel) {
            skipped += 1;
            continue;
        }
        let key = key_under(&i.folder, &rel);
        bytes += client.upload_file(&i.bucket, &key, &path)?;
        files += 1;
        log::debug!("{rel} -> s3://{}/{key}", i.bucket);
    }
    log::info!(
        "uploaded {files} files ({bytes} bytes) to s3://{}/{}; {skipped} excluded by {}",
        i.bucket,
        i.folder,
        i.ignore_file.as_deref().unwrap_or("no ignore file")
    );
    Ok(Outputs {
        bucket: i.bucket,
        folder: i.folder,
    })
}

hoist_sdk::step! {
    name: "push_to_s3",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Upload the working directory to an S3 folder (prefect_aws push_to_s3)",
    capabilities: [Capability::Net("*".into()), Capability::Env("AWS_*".into())],
    run: run,
}
