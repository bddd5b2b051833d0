//! What every capability is prepared from: the common facts of one step run (who it is,
//! where it runs, what it may do, where its logs go, its memory cap). The runtime builds
//! one [`StepSetup`] per run (an empty one for `describe()`); each capability's
//! `prepare` takes from it what it needs. Nothing here names a capability's own state.

use std::path::PathBuf;
use std::sync::Arc;

use hoist_policy::{Capability, Grants, HostEnv};

use crate::capability::log::{NullSink, Redactor, StepLog};

/// Who the step is.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// Display name (the name written in the project file, or the plugin's name).
    pub name: String,
    /// The plugin's own name, from `describe()`.
    pub plugin: String,
    /// The `id` given in the project file.
    pub id: Option<String>,
    /// The run this step belongs to.
    pub run_id: String,
    /// Whether the plugin is built in (affects the hint in denials).
    pub builtin: bool,
}

impl StepInfo {
    /// The message for a denied use of `cap`, saying which step, what, and how to fix it.
    pub(crate) fn denial(&self, cap: &Capability, what: &str) -> String {
        let who = &self.name;
        let plugin = &self.plugin;
        if self.builtin {
            format!(
                "step `{who}` ({plugin}) may not {what}: the built-in step does not declare capability `{cap}`"
            )
        } else {
            format!(
                "step `{who}` ({plugin}) may not {what}: capability `{cap}` was not granted. \
                 A plugin may only use what it declares in describe() and you grant; to allow \
                 this, declare `{cap}` in the plugin and grant it"
            )
        }
    }
}

/// A directory the step was given (preopened), and whether it may write there.
pub type Root = (PathBuf, bool);

/// The common per-step facts, decided by the runtime before anything runs.
pub struct StepSetup {
    /// Who the step is.
    pub info: Arc<StepInfo>,
    /// The working directory (canonical).
    pub cwd: PathBuf,
    /// The effective grants: what the step declared, all granted.
    pub grants: Arc<Grants>,
    /// What the user granted (for the explicit-grant rule of special addresses).
    pub user_grants: Arc<Grants>,
    /// The preopened directories: the only places host calls acting on paths may touch.
    pub roots: Arc<[Root]>,
    /// The step's log, with its redactor.
    pub log: StepLog,
    /// Linear memory cap in bytes.
    pub memory: usize,
    /// The host environment (the runtime's configuration): what `env:` grants select
    /// from, the `PATH` programs are found on, proxy settings.
    pub env: HostEnv,
}

impl StepSetup {
    /// The setup of a `describe()` call: no grants, no directories, logs dropped.
    pub fn describe(memory: usize) -> Self {
        let info = StepInfo {
            name: "describe".into(),
            plugin: "describe".into(),
            id: None,
            run_id: String::new(),
            builtin: false,
        };
        Self {
            info: Arc::new(info),
            cwd: PathBuf::from("/"),
            grants: Arc::new(Grants::none()),
            user_grants: Arc::new(Grants::none()),
            roots: Arc::new([]),
            log: StepLog::new("describe", Arc::new(NullSink), Redactor::default()),
            memory,
            env: HostEnv::empty(),
        }
    }
}
