//! The guest's own stdout and stderr (WASI `cli/stdout`, `cli/stderr`): each complete
//! line goes to the step's log as it is written, and the tail of stderr is kept so a
//! crash can be explained with the guest's panic message.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use wasmtime_wasi::WasiCtxBuilder;

use crate::bindings::Level;
use crate::capability::log::{Source, StepLog};
use crate::capability::setup::StepSetup;
use crate::limits::GUEST_STDERR_TAIL;

/// The guest's stdout and stderr of one step, both to its log.
pub struct StdioCtx {
    stdout: GuestOutput,
    stderr: GuestOutput,
}

impl StdioCtx {
    /// The step's output streams, logging to its setup's log.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            stdout: GuestOutput::stdout(setup.log.clone()),
            stderr: GuestOutput::stderr(setup.log.clone()),
        }
    }

    /// Give the streams to the step's WASI context (WASI links `cli/stdout`, `stderr`).
    pub fn attach(&self, wasi: &mut WasiCtxBuilder) {
        wasi.stdout(self.stdout.clone()).stderr(self.stderr.clone());
    }

    /// Log the unterminated last lines: the step has ended.
    pub fn flush(&self) {
        self.stdout.flush_partial();
        self.stderr.flush_partial();
    }

    /// The guest's panic message, if its stderr ended with one.
    pub fn panic_message(&self) -> Option<String> {
        panic_message(&self.stderr.tail())
    }
}

/// Longest line kept whole; longer ones are logged in pieces of this size.
const MAX_LINE: usize = 64 << 10;

/// One of the guest's output streams. Cloning shares the buffer.
#[derive(Clone)]
pub struct GuestOutput {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    log: StepLog,
    source: Source,
    partial: Vec<u8>,
    tail: Vec<u8>,
}

impl GuestOutput {
    /// The guest's stdout, logged at info level.
    pub fn stdout(log: StepLog) -> Self {
        Self::new(log, Source::GuestStdout)
    }

    /// The guest's stderr, logged at warn level, its tail kept.
    pub fn stderr(log: StepLog) -> Self {
        Self::new(log, Source::GuestStderr)
    }

    fn new(log: StepLog, source: Source) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                log,
                source,
                partial: Vec::new(),
                tail: Vec::new(),
            })),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.push(bytes);
    }

    /// Log any unterminated last line.
    pub fn flush_partial(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !inner.partial.is_empty() {
            let line = std::mem::take(&mut inner.partial);
            inner.emit(&line);
        }
    }

    /// The last bytes written (stderr only), as text.
    pub fn tail(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&inner.tail).into_owned()
    }
}

impl Inner {
    fn push(&mut self, mut bytes: &[u8]) {
        if self.source == Source::GuestStderr {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > GUEST_STDERR_TAIL {
                let cut = self.tail.len() - GUEST_STDERR_TAIL;
                self.tail.drain(..cut);
            }
        }
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let (line, rest) = bytes.split_at(nl);
            if self.partial.is_empty() {
                self.emit(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.emit(&whole);
            }
            bytes = &rest[1..];
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() >= MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        let level = if self.source == Source::GuestStderr {
            Level::Warn
        } else {
            Level::Info
        };
        self.log.emit(level, self.source, line, &[]);
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The guest's panic message, if its stderr tail holds one (Rust's default hook writes
/// `thread '…' panicked at <file>:<line>:<col>:\n<message>`).
pub fn panic_message(stderr_tail: &str) -> Option<String> {
    let start = stderr_tail.rfind("panicked at ")?;
    let rest = &stderr_tail[start + "panicked at ".len()..];
    let (location, after) = rest.split_once(":\n").unwrap_or((rest.trim(), ""));
    let message: Vec<&str> = after
        .lines()
        .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let message = message.join("\n");
    Some(if message.trim().is_empty() {
        format!("panicked at {location}")
    } else {
        format!("{} (at {location})", message.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_rust_panic_messages() {
        let tail = "noise\nthread '<unnamed>' panicked at src/lib.rs:4:5:\nboom: it broke\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(tail).unwrap(),
            "boom: it broke (at src/lib.rs:4:5)"
        );
        assert!(panic_message("just an error line").is_none());
    }
}
