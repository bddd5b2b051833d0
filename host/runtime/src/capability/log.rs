//! `hoist:step/log`: levelled, structured records, attributed to the step and streamed
//! live to a [`LogSink`]. Every record passes through the step's [`Redactor`] first, then
//! through [`sanitize`]: a plugin's text reaches a terminal as one printable line per
//! record, so it can neither send control sequences (retitle the terminal, move the
//! cursor, hide text) nor forge a line of its own without the step's prefix.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::Level;
use crate::bindings::hoist::step::log::{self, Host};
use crate::capability::setup::StepSetup;

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

pub use hoist_policy::secrets::{MASK, Redactor};
pub use hoist_policy::text::{sanitize, unprintable};

/// A step's handle on the sink: knows the step's name and its redactor.
#[derive(Clone)]
pub struct StepLog {
    step: Arc<str>,
    sink: Arc<dyn LogSink>,
    redactor: Redactor,
}

impl StepLog {
    /// A handle writing records for `step` to `sink`.
    /// The name is sanitised: a plugin's `describe()` name can hold anything.
    pub fn new(step: &str, sink: Arc<dyn LogSink>, redactor: Redactor) -> Self {
        Self {
            step: sanitize(step).into(),
            sink,
            redactor,
        }
    }

    /// The redactor used for this step.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Emit a message, redacted then sanitised: one record per line of it (a trailing
    /// line break and `\r\n` endings are dropped), so every line a sink prints carries
    /// the step's prefix; fields (keys and values) are single lines too, attached to
    /// the first record.
    pub fn emit(&self, level: Level, source: Source, message: &str, fields: &[(String, String)]) {
        // Redact the whole text first: a secret spanning a line break is still masked.
        let message = self.redactor.redact(message);
        let cleaned: Vec<(String, String)>;
        let mut fields = if fields.is_empty() {
            fields
        } else {
            cleaned = fields
                .iter()
                .map(|(k, v)| {
                    (
                        sanitize(k).into_owned(),
                        sanitize(&self.redactor.redact(v)).into_owned(),
                    )
                })
                .collect();
            &cleaned
        };
        let mut record = |line: &str| {
            self.sink.record(&LogRecord {
                step: &self.step,
                level,
                source,
                message: &sanitize(line),
                fields,
            });
            fields = &[];
        };
        if !message.contains('\n') {
            return record(message.strip_suffix('\r').unwrap_or(&message[..]));
        }
        let mut lines = message.lines();
        // `"".lines()` is empty, but an emitted message is always one record at least.
        record(lines.next().unwrap_or(""));
        lines.for_each(record);
    }
}

/// The state of `hoist:step/log`: the step's log handle.
pub struct LogCtx {
    log: StepLog,
}

impl LogCtx {
    /// The step's own records go to its setup's log.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            log: setup.log.clone(),
        }
    }
}

/// Link `hoist:step/log` to the [`LogCtx`] that `get` finds in the store.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogCtx,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, HasSelf<LogCtx>>(linker, get)
}

impl Host for LogCtx {
    fn emit(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        self.log.emit(level, Source::Step, &message, &fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn sanitize_spells_out_what_a_terminal_would_obey() {
        assert!(matches!(sanitize("plain\ttext, é ✓"), Cow::Borrowed(_)));
        assert_eq!(
            sanitize("\u{1b}]0;pwned\u{7}\n\u{2713} ok\r"),
            "\\u{1b}]0;pwned\\u{7}\\n\u{2713} ok\\r"
        );
        assert_eq!(
            sanitize("\u{9b}31m \u{7f} \u{202e}abc\u{2069} \u{2028}"),
            "\\u{9b}31m \\u{7f} \\u{202e}abc\\u{2069} \\u{2028}"
        );
        // Idempotent: the escapes are printable.
        let once = sanitize("a\u{1b}[2Jb").into_owned();
        assert_eq!(sanitize(&once), once);
    }

    /// Step, message and fields of each record.
    type Kept = (String, String, Vec<(String, String)>);

    #[derive(Default)]
    struct Keep(std::sync::Mutex<Vec<Kept>>);

    impl LogSink for Keep {
        fn record(&self, r: &LogRecord<'_>) {
            self.0.lock().unwrap().push((
                r.step.to_string(),
                r.message.to_string(),
                r.fields.to_vec(),
            ));
        }
    }

    #[test]
    fn every_line_is_its_own_clean_record() {
        let sink = Arc::new(Keep::default());
        let log = StepLog::new(
            "evil\u{1b}[2J",
            sink.clone(),
            Redactor::new(["s3cr\net".to_string()]),
        );
        let fields = vec![("k\n".to_string(), "v\u{1b}\ns3cr\net".to_string())];
        log.emit(
            Level::Info,
            Source::Step,
            "one\u{1b}]0;t\u{7}\r\n\u{2713} git_clone finished\nleak s3cr\net\n",
            &fields,
        );
        log.emit(Level::Info, Source::Step, "", &[]);
        let got = sink.0.lock().unwrap().clone();
        let f = vec![("k\\n".to_string(), "v\\u{1b}\\n********".to_string())];
        let step = "evil\\u{1b}[2J".to_string();
        assert_eq!(
            got,
            [
                (step.clone(), "one\\u{1b}]0;t\\u{7}".to_string(), f),
                (
                    step.clone(),
                    "\u{2713} git_clone finished".to_string(),
                    vec![]
                ),
                (step.clone(), "leak ********".to_string(), vec![]),
                (step, String::new(), vec![]),
            ]
        );
    }
}
