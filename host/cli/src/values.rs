//! Where the `hoist` program finds blocks and variables, chosen at the edge: the
//! Prefect server `PREFECT_API_URL` names, else Hoist's local store.

use std::collections::BTreeMap;

use hoist_project::template::{FoundBlocks, Values};
use hoist_store::LocalStore;
use serde_json::Value;

use crate::templater::Templater;

/// Where the `hoist` program's templates find blocks and variables: the Prefect server
/// `PREFECT_API_URL` names (a user's blocks live there), else Hoist's local store.
#[derive(Debug)]
pub enum ProcessValues {
    /// The local store (no `PREFECT_API_URL`).
    Local(LocalStore),
    /// A Prefect server's API.
    Prefect(hoist_prefect::PrefectClient),
    /// `PREFECT_API_URL` is set but unusable: said when a template needs a value.
    Invalid(String),
}

impl ProcessValues {
    /// Chosen from `env` (the process's environment, for the program).
    pub fn from_env(env: &hoist_policy::HostEnv) -> Self {
        match hoist_prefect::PrefectClient::from_env(env) {
            None => ProcessValues::Local(LocalStore::default()),
            Some(Ok(client)) => ProcessValues::Prefect(client),
            Some(Err(e)) => ProcessValues::Invalid(e.to_string()),
        }
    }
}

impl Values for ProcessValues {
    type Error = String;

    async fn blocks(
        &self,
        names: &std::collections::BTreeSet<(String, String)>,
        ids: &std::collections::BTreeSet<String>,
    ) -> Result<FoundBlocks, String> {
        match self {
            ProcessValues::Local(l) => l.blocks(names, ids).await.map_err(|e| e.to_string()),
            ProcessValues::Prefect(p) => p.blocks(names, ids).await.map_err(|e| e.to_string()),
            ProcessValues::Invalid(e) => Err(e.clone()),
        }
    }

    async fn variables(
        &self,
        names: &std::collections::BTreeSet<String>,
    ) -> Result<BTreeMap<String, Value>, String> {
        match self {
            ProcessValues::Local(l) => l.variables(names).await.map_err(|e| e.to_string()),
            ProcessValues::Prefect(p) => p.variables(names).await.map_err(|e| e.to_string()),
            ProcessValues::Invalid(e) => Err(e.clone()),
        }
    }
}

/// A templater over this process's environment, and the blocks and variables of the
/// Prefect server `PREFECT_API_URL` names or else of the default local store (what
/// the `hoist` program uses; a library caller passes its own to [`Templater::new`]).
pub fn process_templater() -> Templater<ProcessValues> {
    Templater::new(
        std::env::vars().collect(),
        ProcessValues::from_env(&hoist_policy::HostEnv::from_process()),
    )
}
