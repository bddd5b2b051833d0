//! Hoist's plugin registry, both sides.
//!
//! - [`server`]: `hoist registry serve`, an OCI distribution registry whose repositories
//!   are packages (`namespace/name`, tags are versions, manifests are Wasm component
//!   artifacts), plus a JSON API and human pages. Metadata in SQL ([`db`]: SQLite in the
//!   data directory, PostgreSQL by URL), blobs content-addressed on disk ([`blobs`]).
//! - [`client`]: publish, resolve, download-and-verify, search, yank.
//!
//! No wasmtime here: the server is handed an [`server::Inspector`] (the CLI's runtime
//! loading the component and calling `describe()` with no capabilities).
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

#[cfg(feature = "server")]
pub mod blobs;
pub mod client;
#[cfg(feature = "server")]
pub mod db;
pub mod oci;
pub use hoist_policy::package as name;
#[cfg(feature = "server")]
pub mod pages;
pub mod record;
#[cfg(feature = "server")]
pub mod s3;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub use serve::*;

pub use client::{ClientError, OciRef, RegistryClient};
#[cfg(feature = "server")]
pub use db::RegistryDb;
pub use name::{PackageName, Requirement};
pub use record::{SignatureRecord, VersionRecord};
#[cfg(feature = "server")]
pub use server::{Inspected, Inspector, Registry};
