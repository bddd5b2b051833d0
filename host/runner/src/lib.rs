//! Runs prefect.yaml projects (crate `hoist-runner`): the middle of the host, between
//! the project model (`hoist-project`) and the step runtime (`hoist-runtime`).
//!
//! - [`plan`]: step name → plugin (Prefect names, 2.x aliases, plugin files, installed
//!   plugins) — the one resolver — and loading a built-in from `hoist-builtins`;
//! - [`templater`]: a step's inputs templated against a `template::Values` provider
//!   (the local store by default), secrets collected; no runtime;
//! - [`runner`]: a section run Prefect's way (`run_steps`): template, run, merge outputs;
//! - [`schema`]: a step's literal inputs checked against its plugin's input schema;
//! - [`pipeline`]: a project's build/push/pull and `plan` as library calls with a typed
//!   outcome — what the CLI calls and what a worker will call.
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod pipeline;
pub mod plan;
pub mod runner;
pub mod schema;
pub mod templater;
