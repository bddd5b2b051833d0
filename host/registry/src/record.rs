//! What the registry's JSON API says of a version: shared by the server (which stores
//! and serves it) and the client (which reads it, and builds one from an OCI manifest).

use serde::Serialize;

/// One published version, as the JSON API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VersionRecord {
    /// `namespace/name`.
    pub package: String,
    /// Semver.
    pub version: String,
    /// The manifest's digest (the OCI artifact).
    pub manifest_digest: String,
    /// The component's digest: what an install verifies and pins.
    pub component_digest: String,
    /// The component's size in bytes.
    pub size: u64,
    /// The step's own name (its `describe()`).
    pub step_name: String,
    /// Its summary.
    pub summary: String,
    /// Its input schema (JSON Schema).
    pub input_schema: serde_json::Value,
    /// The capabilities it declares, as written on the command line (`process:git`).
    pub capabilities: Vec<String>,
    /// The `hoist:step` WIT version it targets.
    pub wit_version: String,
    /// Yanked: still installable by exact version from a lock, never chosen by a range.
    pub yanked: bool,
    /// When (RFC 3339).
    pub published: String,
    /// Signatures over the package, version and component digest
    /// (`hoist_policy::signature::message`); the server checked each before storing it.
    #[serde(default)]
    pub signatures: Vec<SignatureRecord>,
}

/// One signature of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SignatureRecord {
    /// `ed25519:<hex>`.
    pub public_key: String,
    /// Hex.
    pub signature: String,
}
