//! `pull_from_s3` (`prefect_aws.deployments.steps.pull_from_s3`, legacy
//! `prefect_aws.projects.steps.pull_project_from_s3`): download every object under
//! `<bucket>/<folder>/` into the working directory, keys made relative to the folder.
//!
//! Spec §4.9. Credentials as `prefect_aws` reads them (see `hoist_sdk::s3::Config`);
//! S3 is spoken over `wasi:http` and signed in the plugin, so the step needs nothing
//! but a network grant (and, for credentials from the environment, `env:AWS_*`).

use hoist_sdk::s3::{Client, Config};
use hoist_sdk::{Capability, JsonSchema, Result, log, schemars};
use serde::{Deserialize, Serialize};

type Map = serde_json::Map<String, serde_json::Value>;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The bucket.
    bucket: String,
    /// The folder (key prefix) to download.
    folder: String,
    /// An `aws-credentials` or `minio-credentials` block's data.
    #[serde(default)]
    credentials: Option<Map>,
    /// boto3 client parameters (`endpoint_url`, `region_name`).
    #[serde(default)]
    client_parameters: Option<Map>,
}

#[derive(Serialize)]
struct Outputs {
    bucket: String,
    folder: String,
    directory: String,
}

fn run(i: Inputs) -> Result<Outputs> {
    let client = Client::new(Config::from_prefect_aws(
        i.credentials.as_ref(),
        i.client_parameters.as_ref(),
    ))?;
    let cwd = std::env::current_dir()?;
    let (files, bytes) = client.download_folder(&i.bucket, &i.folder, &cwd)?;
    log::info!(
        "downloaded {files} files ({bytes} bytes) from s3://{}/{} to {}",
        i.bucket,
        i.folder,
        cwd.display()
    );
    Ok(Outputs {
        bucket: i.bucket,
        folder: i.folder,
        directory: cwd.display().to_string(),
    })
}

hoist_sdk::step! {
    name: "pull_from_s3",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Download an S3 folder into the working directory (prefect_aws pull_from_s3)",
    capabilities: [Capability::Net("*".into()), Capability::Env("AWS_*".into())],
    run: run,
}
