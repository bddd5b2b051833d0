//! Host capabilities, one module per WIT interface a step imports. Each owns its state
//! (a value `XCtx` built by `prepare` from the step's [`setup::StepSetup`]), implements
//! the generated `Host` trait on it or on a narrow borrowed view, links itself with its
//! own `add_to_linker`, and checks the step's grants itself: there is no other path from
//! a guest to the resource. [`crate::state`] composes them; nothing here imports it.

pub mod context;
pub mod docker;
pub mod git;
pub mod log;
pub mod net;
pub mod process;
pub mod reap;
pub mod setup;
pub mod stdio;
