//! The built-in steps (crate `hoist-builtins`): the build script compiles every crate in
//! `plugins/` to a `wasm32-wasip2` component and this crate embeds the bytes. It knows
//! nothing of wasmtime: `hoist-runner` loads them into a `hoist_runtime::Runtime`.
//!
//! The same build compiles the test components in `tests/plugins/`; [`test_plugins`]
//! gives their paths to the end-to-end tests and the benchmark (nothing of them is
//! embedded).
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component bytes of a built-in step, by its short name, with their sha256
/// (computed by the build, so starting `hoist` hashes nothing).
pub fn find(name: &str) -> Option<(&'static [u8], &'static str)> {
    BUILTINS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, b, d)| (*b, *d))
}

/// Names of all built-in steps.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _, _)| *n)
}

/// Paths of the test components built from `tests/plugins/` (hostile plugins among
/// them): for tests and benchmarks only.
#[doc(hidden)]
pub mod test_plugins {
    include!(concat!(env!("OUT_DIR"), "/test_plugins.rs"));
}
