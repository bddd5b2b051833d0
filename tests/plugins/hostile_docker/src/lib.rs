//! The hostile actions, declaring what a user might grant a plugin that builds images:
//! building (offline: no `net:*`) and pushing to `granted/` repositories on loopback.

use hoist_sdk::Capability;

include!("../../hostile/src/actions.rs");

hoist_sdk::step! {
    name: "hostile_docker",
    version: "0.1.0",
    summary: "Test plugin that attacks the host through the docker capability",
    capabilities: [
        Capability::DockerBuild,
        Capability::DockerPush("127.0.0.1:*/granted/*".into()),
    ],
    run: run,
}
