//! `hoist:step/log`: levelled, structured records, attributed to the step and streamed
//! live to a [`LogSink`]. Every record passes through the step's [`Redactor`] first.

use std::borrow::Cow;
use std::sync::Arc;

use crate::bindings::Level;
use crate::bindings::hoist::step::log::Host;
use crate::runtime::state::StepState;

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The step's own `log.emit`.
    Step,
    /// A line the guest wrote to its stdout.
    GuestStdout,
    /// A line the guest wrote to its stderr.
    GuestStderr,
    /// A line from a process the step ran (stdout).
    ProcessStdout,
    /// A line from a process the step ran (stderr).
    ProcessStderr,
}

/// One log record.
#[derive(Debug)]
pub struct LogRecord<'a> {
    /// The step's display name.
    pub step: &'a str,
    /// Severity.
    pub level: Level,
    /// Where the record came from.
    pub source: Source,
    /// The text, already redacted.
    pub message: &'a str,
    /// Structured key/value pairs, already redacted.
    pub fields: &'a [(String, String)],
}

/// Receives log records as they happen. Must be cheap: it is called on the step's path.
pub trait LogSink: Send + Sync {
    /// Handle one record.
    fn record(&self, record: &LogRecord<'_>);
}

/// A sink that drops everything (benchmarks, embedders that do not care).
#[derive(Debug, Default)]
pub struct NullSink;

impl LogSink for NullSink {
    fn record(&self, _: &LogRecord<'_>) {}
}

/// Replaces known secret values with `********` in any text leaving the host.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Arc<std::sync::RwLock<Vec<String>>>,
}

/// What a redacted secret looks like.
pub const MASK: &str = "********";

impl Redactor {
    /// A redactor for these secret values (empty values are ignored).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is masked whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            secrets: Arc::new(std::sync::RwLock::new(v)),
        }
    }

    /// Mask one more value from now on (a credential a host call was handed, say).
    pub fn add(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut v = self.secrets.write().unwrap_or_else(|p| p.into_inner());
        if !v.iter().any(|s| s == secret) {
            v.push(secret.to_string());
            v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// The text with every secret masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        out
    }
}

/// A step's handle on the sink: knows the step's name and its redactor.
#[derive(Clone)]
pub struct StepLog {
    step: Arc<str>,
    sink: Arc<dyn LogSink>,
    redactor: Redactor,
}

impl StepLog {
    /// A handle writing records for `step` to `sink`.
    pub fn new(step: &str, sink: Arc<dyn LogSink>, redactor: Redactor) -> Self {
        Self {
            step: step.into(),
            sink,
            redactor,
        }
    }

    /// The redactor used for this step.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Emit a record, redacting message and fields.
    pub fn emit(&self, level: Level, source: Source, message: &str, fields: &[(String, String)]) {
        let message = self.redactor.redact(message);
        let redacted: Vec<(String, String)>;
        let fields = if fields.is_empty() {
            fields
        } else {
            redacted = fields
                .iter()
                .map(|(k, v)| (k.clone(), self.redactor.redact(v).into_owned()))
                .collect();
            &redacted
        };
        self.sink.record(&LogRecord {
            step: &self.step,
            level,
            source,
            message: &message,
            fields,
        });
    }
}

impl Host for StepState {
    fn emit(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        self.log.emit(level, Source::Step, &message, &fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_secret_longest_first() {
        let r = Redactor::new(["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(r.redact("x abcdef y abc z"), "x ******** y ******** z");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }
}
