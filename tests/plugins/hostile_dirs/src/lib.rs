//! The hostile actions, declaring a directory under a path a user may grant, reached
//! through a symlink the plugin planted there (`/tmp/hoist-hostile-dirs/link`).

use hoist_sdk::Capability;

include!("../../hostile/src/actions.rs");

hoist_sdk::step! {
    name: "hostile_dirs",
    version: "0.1.0",
    summary: "Test plugin that declares a directory through a symlink",
    capabilities: [Capability::WriteDir("/tmp/hoist-hostile-dirs/link".into())],
    run: run,
}
