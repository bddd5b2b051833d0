//! Hoist: runs `prefect.yaml` deployment steps as sandboxed WebAssembly components.
//!
//! The layers, from the bottom:
//! - [`bindings`]: the host side of the `hoist:step` WIT world (generated, one place);
//! - [`capability`]: one module per host interface a step can import (log, context,
//!   process) plus the guest's stdout/stderr;
//! - [`runtime`]: the shared engine, the compiled-component cache, the sandbox policy
//!   and limits, and [`runtime::Runtime::run`] which runs one step in a fresh store;
//! - [`builtin`]: the built-in step components embedded in the binary;
//! - [`project`]: prefect.yaml files (sections, steps, deployments, overrides);
//! - [`template`]: the `{{ }}` engine, pure; [`store`]: variables and blocks (sqlx);
//! - [`plan`]: step name → plugin; [`templater`]: a step's inputs templated against a
//!   [`template::Values`] provider (no wasmtime); [`runner`]: runs a section, Prefect's
//!   way; [`pipeline`]: a project's build/push/pull and `plan`, as library calls;
//! - [`cli`]: the `hoist` command line.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hoist::runtime::{Runtime, RuntimeConfig, StepRequest};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let plugin = runtime.builtin("set_working_directory").await?;
//! let request = StepRequest::new("set_working_directory", std::env::current_dir()?)
//!     .inputs(serde_json::json!({ "directory": "." }));
//! let outcome = runtime.run(&plugin, request).await?;
//! println!("{}", outcome.outputs);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

/// prefect.yaml projects (crate `hoist-project`, no wasmtime).
pub use hoist_project as project;
/// The `{{ }}` template engine (in `hoist-project`).
pub use hoist_project::template;
/// Variables, blocks and events (crate `hoist-store`, sqlx).
pub use hoist_store as store;

pub mod bindings;
pub mod builtin;
pub mod capability;
pub mod cli;
pub mod pipeline;
pub mod plan;
pub mod runner;
pub mod runtime;
pub mod templater;
