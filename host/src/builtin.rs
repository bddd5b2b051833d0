//! The built-in steps, compiled from `plugins/` by the build and embedded in the binary.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component bytes of a built-in step, by its short name.
pub fn find(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Names of all built-in steps.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|(n, _)| *n)
}
