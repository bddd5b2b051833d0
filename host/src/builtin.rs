//! The built-in steps, compiled from `plugins/` by the build and embedded in the binary.

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
