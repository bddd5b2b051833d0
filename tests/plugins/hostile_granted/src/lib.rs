//! The hostile actions, declaring what a user might grant a plugin they half trust:
//! changing the working directory, running `git` and `sh`, and the network.

use hoist_sdk::Capability;

include!("../../hostile/src/actions.rs");

hoist_sdk::step! {
    name: "hostile_granted",
    version: "0.1.0",
    summary: "Test plugin that attacks the host with what it was granted",
    capabilities: [
        Capability::SetCwd,
        Capability::Process("git".into()),
        Capability::Process("sh".into()),
        Capability::Net("*".into()),
    ],
    run: run,
}
