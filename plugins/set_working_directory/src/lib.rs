//! `set_working_directory`: change the directory the following steps run in.
//!
//! Prefect semantics (spec §4.1): relative paths resolve against the current working
//! directory, `~` is not expanded, the output is the absolute path after the change,
//! and a missing path or a file is an error.

use hoist_sdk::{Capability, JsonSchema, Result, context, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// The directory to change to (absolute, or relative to the current one).
    directory: String,
}

#[derive(Serialize)]
struct Outputs {
    /// Absolute path of the working directory after the change.
    directory: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let directory = context::set_working_directory(&inputs.directory)?;
    Ok(Outputs {
        directory: directory.to_string_lossy().into_owned(),
    })
}

hoist_sdk::step! {
    name: "set_working_directory",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Change the working directory of the steps that follow",
    capabilities: [Capability::SetCwd],
    run: run,
}
