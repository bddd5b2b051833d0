//! Why a step did not produce outputs, in words that name the step and say what to do.
//! The words name capabilities, never a command line's flags: the `hoist` CLI adds its
//! own (`cli::hints`), a worker would say where its grants and limits are set.

use std::time::Duration;

/// A step run that failed. Displays as `step `<name>` (<plugin>) <what happened>`.
#[derive(Debug, thiserror::Error)]
#[error("step `{step}` ({plugin}) {kind}")]
pub struct StepRunError {
    /// The step's display name.
    pub step: String,
    /// The plugin it ran (name, or path for a plugin file).
    pub plugin: String,
    /// What went wrong.
    pub kind: ErrorKind,
}

/// What went wrong, by cause.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The plugin file could not be read, compiled or described.
    #[error("could not be loaded: {0}")]
    Load(String),
    /// The step declares a capability the user did not grant.
    #[error("needs capability `{capability}`, which was not granted")]
    NotGranted {
        /// The missing capability, in its command-line spelling.
        capability: String,
    },
    /// The step rejected its inputs.
    #[error("has invalid input: {0}")]
    InvalidInput(String),
    /// The sandbox refused something the step tried.
    #[error("was denied: {0}")]
    Denied(String),
    /// Something the step needed does not exist.
    #[error("failed: not found: {0}")]
    NotFound(String),
    /// The step reported a failure.
    #[error("failed: {message}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Failed {
        /// The step's message.
        message: String,
        /// Exit code of the process that failed, if a process failed.
        exit_code: Option<i32>,
        /// What the user could do.
        hint: Option<String>,
    },
    /// The guest panicked.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The guest trapped (a bug in the plugin).
    #[error("crashed: {0}")]
    Trapped(String),
    /// The step ran past its deadline.
    #[error(
        "did not finish within {} and was stopped; processes it started were killed",
        humanize(*.0)
    )]
    Timeout(Duration),
    /// The step hit its memory cap.
    #[error(
        "tried to use more than {} MiB of memory and was stopped",
        .0 >> 20
    )]
    OutOfMemory(usize),
    /// The outputs were not JSON, or too large.
    #[error("returned unusable outputs: {0}")]
    BadOutput(String),
    /// The host could not set the step up (a directory vanished, the instance pool...).
    #[error("could not be started: {0}")]
    Setup(String),
}

impl ErrorKind {
    /// A short machine-readable name for the cause.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::Load(_) => "load",
            ErrorKind::NotGranted { .. } => "not-granted",
            ErrorKind::InvalidInput(_) => "invalid-input",
            ErrorKind::Denied(_) => "denied",
            ErrorKind::NotFound(_) => "not-found",
            ErrorKind::Failed { .. } => "failed",
            ErrorKind::Panicked(_) => "panicked",
            ErrorKind::Trapped(_) => "trapped",
            ErrorKind::Timeout(_) => "timeout",
            ErrorKind::OutOfMemory(_) => "out-of-memory",
            ErrorKind::BadOutput(_) => "bad-output",
            ErrorKind::Setup(_) => "setup",
        }
    }
}

fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
