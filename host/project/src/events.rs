//! Where pull-step events go (Prefect emits one per pull step when a flow-run id is
//! known, spec §2.8): a trait the runner records through and the edges implement — the
//! local store, a Prefect server — as [`crate::template::Values`] is for blocks and
//! variables, so the runner knows neither.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

/// What recording one event gives: done, or why not (a warning for the caller, never a
/// step failure).
pub type Recorded<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A place events are recorded.
pub trait EventSink: Send + Sync {
    /// Record the event `name` about `resource` (`prefect.flow-run.<id>`) with
    /// `payload`.
    fn record<'a>(&'a self, name: &'a str, resource: &'a str, payload: &'a Value) -> Recorded<'a>;
}
