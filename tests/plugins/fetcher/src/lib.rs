//! Fetches a URL over `wasi:http`: exercises the network policy.

use hoist_sdk::{Capability, JsonSchema, Result, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct Inputs {
    url: String,
}

#[derive(Serialize)]
struct Outputs {
    status: u16,
    body: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let r = hoist_sdk::http::get(&inputs.url)?;
    Ok(Outputs {
        status: r.status,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    })
}

hoist_sdk::step! {
    name: "fetcher",
    version: "0.1.0",
    summary: "GET a URL",
    capabilities: [Capability::Net("*".into())],
    run: run,
}
