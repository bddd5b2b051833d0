//! Host bindings for the `hoist:step` world. The only `bindgen!` of the host.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "step",
    path: "../../wit",
    imports: {
        // Running a process waits on I/O: it must not block the executor.
        "hoist:step/process.run": async,
        "hoist:step/git": async,
        "hoist:step/docker": async,
    },
    exports: { default: async },
});

pub use self::hoist::step::types::{Capability as WitCapability, Failure, Level};
