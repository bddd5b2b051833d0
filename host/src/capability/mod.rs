//! Host capabilities, one module per WIT interface a step imports. Each implements the
//! generated `Host` trait on the step's store state and checks the step's grants itself:
//! there is no other path from a guest to the resource.

pub mod context;
pub mod git;
pub mod log;
pub mod net;
pub mod process;
pub mod reap;
pub mod setup;
pub mod stdio;
