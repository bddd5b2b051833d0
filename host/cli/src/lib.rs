//! Hoist: runs `prefect.yaml` deployment steps as sandboxed WebAssembly components.
//!
//! This crate is the `hoist` command line ([`cli`]); the host's layers are crates under
//! `host/`, re-exported here by layer, from the bottom:
//! - `hoist-policy`: capabilities, grants, secrets, Hoist's paths (no wasmtime);
//! - [`project`] (`hoist-project`): prefect.yaml files, the `{{ }}` engine ([`template`]),
//!   the deployment spec (no wasmtime, no sqlx); [`store`] (`hoist-store`): variables,
//!   blocks and events through sqlx;
//! - [`runtime`] (`hoist-runtime`): the engine, the component cache, the sandbox, and
//!   [`capability`]: one room per host interface; [`bindings`]: the WIT host side;
//! - [`builtin`] (`hoist-builtins`): the built-in step components embedded in the binary;
//! - `hoist-runner`: [`plan`] (step name → plugin), [`templater`], [`runner`] (a
//!   section, Prefect's way), [`pipeline`] (build/push/pull and `plan` as library calls).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hoist::runtime::{Runtime, RuntimeConfig, StepRequest};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let plugin = hoist::plan::load_builtin(&runtime, "set_working_directory").await?;
//! let request = StepRequest::new("set_working_directory", std::env::current_dir()?)
//!     .inputs(serde_json::json!({ "directory": "." }));
//! let outcome = runtime.run(&plugin, request).await?;
//! println!("{}", outcome.outputs);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

/// The Prefect server client: blocks and variables from `PREFECT_API_URL`.
pub use hoist_prefect as prefect;
/// prefect.yaml projects (crate `hoist-project`, no wasmtime).
pub use hoist_project as project;
/// The `{{ }}` template engine (in `hoist-project`).
pub use hoist_project::template;
/// Variables, blocks and events (crate `hoist-store`, sqlx).
pub use hoist_store as store;

/// The step runtime (crate `hoist-runtime`).
pub use hoist_runtime as runtime;
/// The host side of the `hoist:step` WIT world (in `hoist-runtime`).
pub use hoist_runtime::bindings;
/// The host capabilities, one room each (in `hoist-runtime`).
pub use hoist_runtime::capability;

/// The built-in step components (crate `hoist-builtins`).
pub use hoist_builtins as builtin;

/// A project as library calls (in `hoist-runner`).
pub use hoist_runner::pipeline;
/// Step name → plugin (in `hoist-runner`).
pub use hoist_runner::plan;
/// A section run Prefect's way (in `hoist-runner`).
pub use hoist_runner::runner;
/// Templating against a `Values` provider (in `hoist-runner`).
pub use hoist_runner::templater;

pub mod cli;
pub mod values;
