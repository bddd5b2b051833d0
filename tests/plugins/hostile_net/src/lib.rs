//! The hostile actions, declaring one narrow network grant: HTTPS to a single host,
//! `net:https://api.example.invalid` (what a user grants a plugin for one API).

use hoist_sdk::Capability;

include!("../../hostile/src/actions.rs");

hoist_sdk::step! {
    name: "hostile_net",
    version: "0.1.0",
    summary: "Test plugin that attacks the host with one narrow network grant",
    capabilities: [Capability::Net("https://api.example.invalid".into())],
    run: run,
}
