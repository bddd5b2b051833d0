//! The smallest useful step: echoes its inputs back. Used by benchmarks and tests of
//! plugins that need no capability.

use hoist_sdk::{JsonSchema, Result, schemars};
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
struct Inputs {
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

fn run(inputs: Inputs) -> Result<serde_json::Map<String, serde_json::Value>> {
    Ok(inputs.rest)
}

hoist_sdk::step! {
    name: "trivial",
    version: "0.1.0",
    summary: "Echo the inputs back as outputs",
    capabilities: [],
    run: run,
}
