//! Write a Hoist deployment step as a plain Rust function.
//!
//! A step takes serde-typed inputs and returns serde-typed outputs; [`step!`] generates
//! the WebAssembly component glue, the `describe()` answer (with the JSON Schema of the
//! inputs) and the input/output conversion. Build with
//! `cargo build --release --target wasm32-wasip2` and run the `.wasm` with `hoist step run`.
//!
//! ```no_run
//! use hoist_sdk::{Capability, JsonSchema, Result, context, log, process, schemars};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Inputs {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Outputs {
//!     greeting: String,
//! }
//!
//! fn greet(inputs: Inputs) -> Result<Outputs> {
//!     log::info!("greeting {} in {}", inputs.name, context::working_directory().display());
//!     let out = process::Command::new("echo").arg(&inputs.name).output()?;
//!     Ok(Outputs { greeting: format!("hello {}", out.stdout.trim()) })
//! }
//!
//! hoist_sdk::step! {
//!     name: "greet",
//!     version: "0.1.0",
//!     summary: "Greets someone",
//!     capabilities: [Capability::Process("echo".into())],
//!     run: greet,
//! }
//! # fn main() {}
//! ```
#![deny(missing_docs)]

extern crate self as hoist_sdk;

pub use schemars::{self, JsonSchema};

/// Generated bindings for the `hoist:step` world. Prefer the typed wrappers of this crate.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "step",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_step_world",
        default_bindings_module: "::hoist_sdk::bindings",
        runtime_path: "::hoist_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::hoist::step::types as wit;

/// A capability a step declares in its description. The host grants none by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Run this program (bare name on PATH, absolute path, or `*` for any).
    Process(String),
    /// Read this host environment variable (`*` for all).
    Env(String),
    /// Change the working directory of the steps that follow.
    SetCwd,
    /// Read a host directory outside the working directory.
    ReadDir(String),
    /// Read and write a host directory outside the working directory.
    WriteDir(String),
    /// Outgoing network (`wasi:http`, and git remotes) to `scheme://host:port`; `*`
    /// wildcards a host's labels or the port (`https://*.amazonaws.com`). Addresses of
    /// the machine or of private networks also need the user's grant by name.
    Net(String),
    /// Build, tag and inspect images on the host's Docker engine (`docker:build`).
    DockerBuild,
    /// Push images to repositories matching a pattern (`docker:push:<registry/repo>`,
    /// `*` any run of characters).
    DockerPush(String),
}

impl From<Capability> for wit::Capability {
    fn from(c: Capability) -> Self {
        match c {
            Capability::Process(p) => wit::Capability::Process(p),
            Capability::Env(e) => wit::Capability::Env(e),
            Capability::SetCwd => wit::Capability::SetCwd,
            Capability::ReadDir(d) => wit::Capability::ReadDir(d),
            Capability::WriteDir(d) => wit::Capability::WriteDir(d),
            Capability::Net(n) => wit::Capability::Net(n),
            Capability::DockerBuild => wit::Capability::DockerBuild,
            Capability::DockerPush(p) => wit::Capability::DockerPush(p),
        }
    }
}

/// Why a step failed. The host shows each kind differently, so pick the one that tells
/// the user what to fix.
#[derive(Clone, Debug)]
pub struct StepError(wit::StepError);

impl StepError {
    /// An input is missing or wrong.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self(wit::StepError::InvalidInput(message.into()))
    }
    /// Something was refused by the sandbox.
    pub fn denied(message: impl Into<String>) -> Self {
        Self(wit::StepError::Denied(message.into()))
    }
    /// Something does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self(wit::StepError::NotFound(message.into()))
    }
    /// Anything else.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::failure(message, None, None)
    }
    /// A failure with the exit code of the process that failed and a hint for the user.
    pub fn failure(
        message: impl Into<String>,
        exit_code: Option<i32>,
        hint: Option<String>,
    ) -> Self {
        Self(wit::StepError::Failed(wit::Failure {
            message: message.into(),
            exit_code,
            hint,
        }))
    }
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match &self.0 {
            wit::StepError::InvalidInput(m)
            | wit::StepError::Denied(m)
            | wit::StepError::NotFound(m) => m,
            wit::StepError::Failed(f) => &f.message,
        }
    }
}

impl From<wit::StepError> for StepError {
    fn from(e: wit::StepError) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for StepError {}

/// Said of a path a step could not find or open: in the sandbox, everything outside the
/// step's directories looks missing.
pub const OUTSIDE_HINT: &str = "a step sees only its working directory and the directories it declares and is granted (`read:<dir>`, `write:<dir>`): anything else looks missing";

impl From<std::io::Error> for StepError {
    /// `NotFound` and `PermissionDenied` say why a path may be out of reach (WASI's
    /// `os error 44` / `63` mean nothing to a user).
    fn from(e: std::io::Error) -> Self {
        let text = e.to_string();
        let text = match text.find(" (os error ") {
            Some(i) => &text[..i],
            None => &text,
        };
        match e.kind() {
            std::io::ErrorKind::NotFound => Self::not_found(format!("{text} ({OUTSIDE_HINT})")),
            std::io::ErrorKind::PermissionDenied => {
                Self::denied(format!("{text} ({OUTSIDE_HINT})"))
            }
            _ => Self::failed(text.to_string()),
        }
    }
}

/// The result type of a step function.
pub type Result<T, E = StepError> = std::result::Result<T, E>;

/// Structured logging, shown live and attributed to the step.
pub mod log {
    pub use crate::bindings::hoist::step::types::Level;

    /// Emit a record with key/value fields.
    pub fn emit(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::bindings::hoist::step::log::emit(level, message, &fields);
    }

    /// Log at info level, `format!`-style.
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __log_info { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Info, &format!($($t)*), &[]) } }
    /// Log at warn level, `format!`-style.
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __log_warn { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Warn, &format!($($t)*), &[]) } }
    /// Log at error level, `format!`-style.
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __log_error { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Error, &format!($($t)*), &[]) } }
    /// Log at debug level, `format!`-style.
    #[doc(hidden)]
    #[macro_export]
    macro_rules! __log_debug { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Debug, &format!($($t)*), &[]) } }

    pub use crate::{
        __log_debug as debug, __log_error as error, __log_info as info, __log_warn as warn,
    };
}

/// Where the step runs: its id and name, the run, the working directory.
pub mod context {
    use crate::bindings::hoist::step::context as ctx;
    use std::path::{Path, PathBuf};

    /// The `id` the project file gave this step.
    pub fn step_id() -> Option<String> {
        ctx::step_id()
    }
    /// The step's name as written in the project file.
    pub fn step_name() -> String {
        ctx::step_name()
    }
    /// The identifier of this run.
    pub fn run_id() -> String {
        ctx::run_id()
    }
    /// Absolute path of the working directory (the same path inside and outside the sandbox).
    pub fn working_directory() -> PathBuf {
        PathBuf::from(ctx::working_directory())
    }
    /// Change the working directory of this step and the steps after it; returns the
    /// new absolute path. Needs [`Capability::SetCwd`](crate::Capability::SetCwd).
    pub fn set_working_directory(path: impl AsRef<Path>) -> crate::Result<PathBuf> {
        let new = ctx::set_working_directory(&path.as_ref().to_string_lossy())?;
        // Keep the guest's own notion of the cwd in step, so relative paths agree.
        let _ = std::env::set_current_dir(&new);
        Ok(PathBuf::from(new))
    }
}

/// Run programs on the host (only those the step declared and was granted).
pub mod process {
    use crate::bindings::hoist::step::process as wit;
    use std::path::Path;

    /// A program to run, built like `std::process::Command`.
    #[derive(Clone, Debug)]
    pub struct Command {
        cmd: wit::Command,
    }

    /// What a finished process left behind.
    #[derive(Clone, Debug)]
    pub struct Output {
        /// Exit code; `None` if a signal ended the process.
        pub exit_code: Option<i32>,
        /// Everything written to stdout (UTF-8, invalid bytes replaced).
        pub stdout: String,
        /// Everything written to stderr.
        pub stderr: String,
    }

    impl Output {
        /// Whether the process exited with code 0.
        pub fn success(&self) -> bool {
            self.exit_code == Some(0)
        }
    }

    impl Command {
        /// A command running `program` (a bare name on PATH or an absolute path).
        pub fn new(program: impl Into<String>) -> Self {
            Self {
                cmd: wit::Command {
                    program: program.into(),
                    args: Vec::new(),
                    env: Vec::new(),
                    cwd: None,
                    stream_output: true,
                },
            }
        }
        /// Add one argument.
        pub fn arg(mut self, arg: impl Into<String>) -> Self {
            self.cmd.args.push(arg.into());
            self
        }
        /// Add arguments.
        pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
            self.cmd.args.extend(args.into_iter().map(Into::into));
            self
        }
        /// Set an environment variable for the process.
        pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
            self.cmd.env.push((key.into(), value.into()));
            self
        }
        /// Run in this directory (relative to the step's working directory).
        pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
            self.cmd.cwd = Some(dir.as_ref().to_string_lossy().into_owned());
            self
        }
        /// Copy output lines to the log as they arrive (default: true).
        pub fn stream_output(mut self, stream: bool) -> Self {
            self.cmd.stream_output = stream;
            self
        }
        /// Run to completion and collect the output. A non-zero exit is not an error.
        pub fn output(&self) -> crate::Result<Output> {
            let out = wit::run(&self.cmd)?;
            Ok(Output {
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
    }
}

/// Container images through the host's Docker engine (see the `docker` interface in
/// `wit/step.wit`): building needs `docker:build`, pushing a `docker:push:<pattern>`
/// grant covering the repository.
pub mod docker {
    pub use crate::bindings::hoist::step::docker::{
        BuildOptions, Image, RegistryCredentials, build, inspect, push, tag,
    };

    /// An image name as Prefect's docker steps resolve it (spec §4.8): whitespace is
    /// refused; `registry/ns/repo`, `registry:port/repo` and `ns/repo` keep their
    /// namespace; a bare `repo` takes `default_namespace`
    /// (`PREFECT_DEFAULT_DOCKER_BUILD_NAMESPACE`) when one is set.
    pub fn prefect_image_name(
        image_name: &str,
        default_namespace: Option<&str>,
    ) -> crate::Result<String> {
        if image_name.is_empty() || image_name.chars().any(char::is_whitespace) {
            return Err(crate::StepError::invalid_input(format!(
                "Invalid Docker image name: {image_name:?} (input `image_name`)"
            )));
        }
        let parts: Vec<&str> = image_name.splitn(3, '/').collect();
        let (namespace, repository) = match parts.as_slice() {
            [first, _, _] | [first, _] if parts.len() == 3 || first.contains(['.', ':']) => {
                let (ns, repo) = image_name.rsplit_once('/').unwrap_or(("", image_name));
                (Some(ns.to_string()), repo)
            }
            [ns, repo] => (Some(ns.to_string()), *repo),
            _ => (
                default_namespace
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
                image_name,
            ),
        };
        Ok(match namespace {
            Some(ns) => format!("{ns}/{repository}"),
            None => repository.to_string(),
        })
    }

    /// A `docker-registry-credentials` block's data, as Prefect's docker steps take it
    /// (`credentials:`): the password goes to the host's engine only.
    #[derive(serde::Deserialize, crate::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PrefectCredentials {
        /// The registry user.
        pub username: String,
        /// The password or token.
        pub password: String,
        /// The registry to log in to (default: the image's registry).
        #[serde(default)]
        pub registry_url: Option<String>,
        /// Accepted for compatibility (the engine logs in on every push).
        #[serde(default)]
        pub reauth: Option<bool>,
    }

    impl PrefectCredentials {
        /// As the `docker` interface takes them.
        pub fn to_registry(&self) -> RegistryCredentials {
            RegistryCredentials {
                username: self.username.clone(),
                password: self.password.clone(),
                server: self
                    .registry_url
                    .as_deref()
                    .filter(|u| !u.is_empty())
                    .map(registry_host),
            }
        }
    }

    /// Prefect's `build_backend` input: `docker-py` (or none) is what Hoist does, through
    /// the engine's API; anything else (`buildx`) is refused, naming the input.
    pub fn check_build_backend(backend: Option<&str>) -> crate::Result<()> {
        match backend {
            None | Some("docker-py") => Ok(()),
            Some(other) => Err(crate::StepError::invalid_input(format!(
                "Invalid build_backend {other:?} (input `build_backend`): Hoist talks to the engine's API, as `docker-py` does; `buildx` is not supported"
            ))),
        }
    }

    /// Prefect's default image tag: the UTC time in ISO 8601 with microseconds,
    /// slugified (`2022-08-31t18-01-32-000123-00-00`).
    pub fn prefect_default_tag() -> String {
        let u = crate::time::utc(std::time::SystemTime::now());
        slugify(&format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            u.year, u.month, u.day, u.hour, u.minute, u.second, u.micros
        ))
    }

    /// Lower case; runs of anything but ASCII letters and digits become one `-`; trimmed.
    pub fn slugify(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars().flat_map(char::to_lowercase) {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        out.trim_matches('-').to_string()
    }

    /// A registry as blocks often hold it (`https://registry.example.com/`), as the
    /// engine wants it (`registry.example.com`).
    pub fn registry_host(url: &str) -> String {
        url.trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    #[cfg(test)]
    mod tests {
        use super::prefect_image_name as name;

        #[test]
        fn tags_are_slugified_iso_times() {
            assert_eq!(
                super::slugify("2022-08-31T18:01:32.000123+00:00"),
                "2022-08-31t18-01-32-000123-00-00"
            );
            assert_eq!(super::prefect_default_tag().len(), 32);
            assert_eq!(super::registry_host("https://r.io:5000/"), "r.io:5000");
        }

        #[test]
        fn namespaces_as_prefect_resolves_them() {
            assert_eq!(name("app", None).unwrap(), "app");
            assert_eq!(name("app", Some("ghcr.io/me")).unwrap(), "ghcr.io/me/app");
            assert_eq!(name("me/app", Some("x")).unwrap(), "me/app");
            assert_eq!(
                name("127.0.0.1:5000/app", Some("x")).unwrap(),
                "127.0.0.1:5000/app"
            );
            assert_eq!(
                name("reg.io/team/sub/app", None).unwrap(),
                "reg.io/team/sub/app"
            );
            assert!(
                name("my app", None)
                    .unwrap_err()
                    .message()
                    .starts_with("Invalid Docker image name")
            );
        }
    }
}

/// Wall-clock time in UTC, as a civil date (WASI gives the step the host's clock).
pub mod time {
    /// A UTC instant broken into its calendar parts.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Utc {
        /// Year (proleptic Gregorian).
        pub year: i64,
        /// Month, 1–12.
        pub month: u32,
        /// Day of the month, 1–31.
        pub day: u32,
        /// Hour, 0–23.
        pub hour: u32,
        /// Minute, 0–59.
        pub minute: u32,
        /// Second, 0–59.
        pub second: u32,
        /// Microseconds, 0–999999.
        pub micros: u32,
    }

    /// `t` in UTC (Howard Hinnant's civil-from-days algorithm).
    pub fn utc(t: std::time::SystemTime) -> Utc {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            micros: d.subsec_micros(),
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn civil_dates() {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_661_968_892_000_123);
            let u = super::utc(t);
            assert_eq!(
                (u.year, u.month, u.day, u.hour, u.minute, u.second, u.micros),
                (2022, 8, 31, 18, 1, 32, 123)
            );
        }
    }
}

/// Git through the host's `git` (see the `git` interface in `wit/step.wit`): the remote's
/// host must be covered by a `net` grant, credentials never reach argv or `.git/config`.
pub mod git {
    pub use crate::bindings::hoist::step::git::{
        CloneOptions, Credentials, GitError, GitFailure, checkout, clone, fetch, is_shallow,
        is_sparse, pull, remote_url, rev_parse, sparse_checkout_set,
    };
}

/// Outgoing HTTP (`wasi:http`): the request's `scheme://host:port` must be covered by
/// a `net` capability the step declares and the user grants.
pub mod http {
    use crate::StepError;
    use std::io::{Read, Write};
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, Method,
        OutgoingBody, OutgoingRequest, Scheme,
    };
    pub use wasi::io::poll::{Pollable, poll};
    use wasi::io::streams::{InputStream, StreamError};

    /// A response, body read to the end.
    #[derive(Clone, Debug)]
    pub struct Response {
        /// HTTP status code.
        pub status: u16,
        /// The body.
        pub body: Vec<u8>,
    }

    /// What a request sends.
    pub enum Body<'a> {
        /// No body.
        Empty,
        /// These bytes.
        Bytes(&'a [u8]),
        /// Exactly `len` bytes read from a reader (a file, say), streamed.
        Reader(&'a mut dyn Read, u64),
    }

    impl Body<'_> {
        fn len(&self) -> u64 {
            match self {
                Body::Empty => 0,
                Body::Bytes(b) => b.len() as u64,
                Body::Reader(_, n) => *n,
            }
        }
    }

    /// A response whose body has not been read yet: read it with [`Incoming::bytes`] or
    /// stream it with [`Incoming::copy_to`].
    pub struct Incoming {
        /// HTTP status code.
        pub status: u16,
        /// Response headers, names lower-case.
        pub headers: Vec<(String, String)>,
        url: String,
        // Drop order matters: the stream before its body, the body before its response.
        stream: Option<InputStream>,
        body: Option<IncomingBody>,
        _response: IncomingResponse,
    }

    impl std::fmt::Debug for Incoming {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Incoming")
                .field("status", &self.status)
                .field("url", &self.url)
                .finish()
        }
    }

    impl Incoming {
        /// The first header called `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// Stream the body into `out`; returns the number of bytes copied.
        pub fn copy_to(mut self, out: &mut dyn Write) -> crate::Result<u64> {
            let stream = self.stream.take().expect("body stream present");
            let mut total = 0u64;
            loop {
                match stream.blocking_read(256 * 1024) {
                    Ok(chunk) => {
                        total += chunk.len() as u64;
                        out.write_all(&chunk).map_err(|e| {
                            StepError::failed(format!("{}: writing the body: {e}", self.url))
                        })?;
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(StepError::failed(format!(
                            "{}: {}",
                            self.url,
                            e.to_debug_string()
                        )));
                    }
                }
            }
            drop(stream);
            if let Some(body) = self.body.take() {
                let _ = IncomingBody::finish(body);
            }
            Ok(total)
        }

        /// Ready when [`Incoming::read_some`] has something to return.
        pub fn pollable(&self) -> Pollable {
            self.stream
                .as_ref()
                .expect("body stream present")
                .subscribe()
        }

        /// Without blocking: the next chunk of the body (possibly empty when nothing has
        /// arrived yet), or `None` at its end.
        pub fn read_some(&mut self, max: u64) -> crate::Result<Option<Vec<u8>>> {
            let Some(stream) = self.stream.as_ref() else {
                return Ok(None);
            };
            match stream.read(max) {
                Ok(chunk) => Ok(Some(chunk)),
                Err(StreamError::Closed) => {
                    self.stream = None;
                    if let Some(body) = self.body.take() {
                        let _ = IncomingBody::finish(body);
                    }
                    Ok(None)
                }
                Err(StreamError::LastOperationFailed(e)) => Err(StepError::failed(format!(
                    "{}: {}",
                    self.url,
                    e.to_debug_string()
                ))),
            }
        }

        /// Read the whole body.
        pub fn bytes(self) -> crate::Result<Vec<u8>> {
            let mut buf = Vec::new();
            self.copy_to(&mut buf)?;
            Ok(buf)
        }
    }

    fn error(url: &str, e: ErrorCode) -> StepError {
        match e {
            ErrorCode::HttpRequestDenied => StepError::denied(format!(
                "the request to {url} was denied by the sandbox (see the log)"
            )),
            ErrorCode::DestinationNotFound | ErrorCode::DnsError(_) => {
                StepError::not_found(format!("{url}: host not found"))
            }
            ErrorCode::ConnectionRefused => StepError::failed(format!("{url}: connection refused")),
            other => StepError::failed(format!("{url}: {other:?}")),
        }
    }

    /// Split `scheme://authority/path?query` into its parts.
    pub fn split_url(url: &str) -> crate::Result<(&str, &str, &str)> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| StepError::invalid_input(format!("`{url}` is not an http(s) URL")))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
    }

    /// `GET url`, body read to the end.
    pub fn get(url: &str) -> crate::Result<Response> {
        let r = send("GET", url, &[], Body::Empty)?;
        let status = r.status;
        Ok(Response {
            status,
            body: r.bytes()?,
        })
    }

    /// Send a request with `headers` and `body`; the response's body is left to read.
    /// A sized body is sent with its `content-length`.
    pub fn send(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> crate::Result<Incoming> {
        start(method, url, headers, body)?.wait()
    }

    /// A request whose body is sent and whose response has not arrived yet; many can be
    /// in flight at once (see [`Pending::pollable`] and [`wasi::io::poll::poll`]).
    pub struct Pending {
        url: String,
        sent: crate::Result<()>,
        future: FutureIncomingResponse,
    }

    impl std::fmt::Debug for Pending {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Pending").field("url", &self.url).finish()
        }
    }

    impl Pending {
        /// Ready when the response (or an error) has arrived.
        pub fn pollable(&self) -> Pollable {
            self.future.subscribe()
        }

        /// Block until the response's status and headers arrive.
        pub fn wait(self) -> crate::Result<Incoming> {
            self.future.subscribe().block();
            let url = self.url.as_str();
            let resp = match self.future.get() {
                Some(Ok(Ok(r))) => r,
                // The body could not be sent: that is the better explanation.
                Some(Ok(Err(e))) => return Err(self.sent.err().unwrap_or_else(|| error(url, e))),
                _ => return Err(StepError::failed(format!("{url}: no response"))),
            };
            let status = resp.status();
            // A server may answer an error before reading the whole body: show its answer.
            if let Err(e) = self.sent
                && status < 400
            {
                return Err(e);
            }
            let headers = resp
                .headers()
                .entries()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
            let incoming = resp
                .consume()
                .map_err(|_| StepError::failed("response body already taken"))?;
            let stream = incoming
                .stream()
                .map_err(|_| StepError::failed("response body stream already taken"))?;
            Ok(Incoming {
                status,
                headers,
                url: self.url,
                stream: Some(stream),
                body: Some(incoming),
                _response: resp,
            })
        }
    }

    /// Start a request: headers and `body` are sent, the response is awaited later.
    pub fn start(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
    ) -> crate::Result<Pending> {
        let (scheme, authority, path) = split_url(url)?;
        let bad = |what: &str| StepError::invalid_input(format!("`{url}`: invalid {what}"));
        let fields = Fields::new();
        for (k, v) in headers {
            fields
                .append(k, v.as_bytes())
                .map_err(|e| bad(&format!("header `{k}` ({e:?})")))?;
        }
        if !matches!(body, Body::Empty) {
            fields
                .append("content-length", &body.len().to_string().into_bytes())
                .map_err(|_| bad("content-length"))?;
        }
        let req = OutgoingRequest::new(fields);
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(StepError::invalid_input(format!(
                    "unsupported scheme `{other}`"
                )));
            }
        };
        let method = match method {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "HEAD" => Method::Head,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        };
        req.set_method(&method).map_err(|_| bad("method"))?;
        req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
        req.set_authority(Some(authority))
            .map_err(|_| bad("host"))?;
        req.set_path_with_query(Some(path))
            .map_err(|_| bad("path"))?;
        let outgoing = req.body().map_err(|_| bad("body"))?;
        let future = outgoing_handler::handle(req, None).map_err(|e| error(url, e))?;
        let sent = match body {
            Body::Empty => Ok(()),
            _ => write_body(url, &outgoing, &mut body),
        };
        let sent = sent.and(OutgoingBody::finish(outgoing, None).map_err(|e| error(url, e)));
        Ok(Pending {
            url: url.to_string(),
            sent,
            future,
        })
    }

    fn write_body(url: &str, outgoing: &OutgoingBody, body: &mut Body<'_>) -> crate::Result<()> {
        let fail = |what: String| StepError::failed(format!("{url}: sending the body: {what}"));
        let out = outgoing.write().map_err(|_| fail("stream taken".into()))?;
        let send = |mut data: &[u8]| -> crate::Result<()> {
            while !data.is_empty() {
                let room = out.check_write().map_err(|e| fail(format!("{e:?}")))?;
                if room == 0 {
                    out.subscribe().block();
                    continue;
                }
                let n = (room as usize).min(data.len());
                out.write(&data[..n]).map_err(|e| fail(format!("{e:?}")))?;
                data = &data[n..];
            }
            Ok(())
        };
        match body {
            Body::Empty => {}
            Body::Bytes(b) => send(b)?,
            Body::Reader(r, len) => {
                let mut left = *len;
                let mut buf = vec![0u8; 256 * 1024];
                while left > 0 {
                    let want = (buf.len() as u64).min(left) as usize;
                    let n = r.read(&mut buf[..want]).map_err(|e| fail(e.to_string()))?;
                    if n == 0 {
                        return Err(fail(format!("the source ended {left} bytes early")));
                    }
                    send(&buf[..n])?;
                    left -= n as u64;
                }
            }
        }
        // Once every byte of the declared length is sent the host may close the stream
        // before this flush: that is success, not an error.
        match out.blocking_flush() {
            Ok(()) | Err(StreamError::Closed) => Ok(()),
            Err(e) => Err(fail(format!("{e:?}"))),
        }
    }
}

#[cfg(feature = "s3")]
pub mod s3;

/// Glue used by [`step!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    /// Make `dir` (an absolute path the host preopened) the guest's working directory.
    ///
    /// `chdir` would do, but it costs ~10 µs per run — a third of a trivial step — because
    /// it builds wasi-libc's preopen table and `stat`s the directory through the host,
    /// which the host has just created. wasi-libc keeps the cwd in `__wasilibc_cwd` and
    /// resolves relative paths against it; setting it directly is what `chdir` does after
    /// its checks. Outside a WASI guest, or for a path that cannot be a C string,
    /// `chdir` is used.
    pub fn start_in(dir: &str) {
        #[cfg(all(target_os = "wasi", target_env = "p2"))]
        if dir.starts_with('/')
            && let Ok(c) = std::ffi::CString::new(dir)
        {
            set_wasilibc_cwd(c);
            return;
        }
        // Also keeps `chdir` linked in: without it wasi-libc resolves relative paths
        // against `/` and ignores `__wasilibc_cwd`.
        let _ = std::env::set_current_dir(dir);
    }

    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    #[allow(unsafe_code)]
    fn set_wasilibc_cwd(dir: std::ffi::CString) {
        unsafe extern "C" {
            static mut __wasilibc_cwd: *mut core::ffi::c_char;
        }
        // SAFETY: a component instance runs one thread; `__wasilibc_cwd` is read by
        // wasi-libc as a NUL-terminated absolute path, which `dir` is (checked by the
        // caller), and it is never freed by wasi-libc unless its own `chdir` allocated it
        // (`__wasilibc_cwd_mallocd`), so leaking our string to it is sound. The instance
        // (and its memory) ends with the run.
        unsafe {
            __wasilibc_cwd = dir.into_raw();
        }
    }

    pub use wit_bindgen;

    use crate::bindings::hoist::step::types as wit;
    use crate::{Capability, StepError};
    use serde::{Serialize, de::DeserializeOwned};

    pub fn describe<I, O, F>(
        _f: &F,
        name: &str,
        version: &str,
        summary: &str,
        capabilities: Vec<Capability>,
    ) -> wit::Description
    where
        I: schemars::JsonSchema,
        F: Fn(I) -> Result<O, StepError>,
    {
        let schema = schemars::schema_for!(I);
        wit::Description {
            name: name.to_string(),
            version: version.to_string(),
            summary: summary.to_string(),
            input_schema: serde_json::to_string(&schema).unwrap_or_else(|_| "{}".into()),
            capabilities: capabilities.into_iter().map(Into::into).collect(),
        }
    }

    /// serde's message about the inputs, in the words of the project file the user wrote:
    /// no position in the JSON the host made of it, `expected a string, got a list`
    /// rather than `invalid type: sequence, expected a string`, fields called inputs.
    pub fn input_error(path: &str, message: &str) -> String {
        // serde_json ends its messages with " at line L column C" (of our JSON).
        let message = match message.rfind(" at line ") {
            Some(i)
                if message[i + 9..]
                    .split(" column ")
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                &message[..i]
            }
            _ => message,
        };
        let what = |got: &str| match got {
            "sequence" => "a list".to_string(),
            "map" => "a mapping".to_string(),
            "unit value" | "null" => "null".to_string(),
            other => other.to_string(),
        };
        let message = if let Some(rest) = message.strip_prefix("invalid type: ")
            && let Some((got, want)) = rest.split_once(", expected ")
        {
            format!("expected {want}, got {}", what(got))
        } else if let Some(rest) = message.strip_prefix("missing field ") {
            format!("missing input {rest}")
        } else if let Some(rest) = message.strip_prefix("unknown field ") {
            match rest.split_once(", expected ") {
                Some((name, known)) => format!("unknown input {name} (it takes {known})"),
                None => format!("unknown input {rest}"),
            }
        } else {
            message.to_string()
        };
        if path == "." {
            message
        } else {
            format!("input `{path}`: {message}")
        }
    }

    pub fn run<I, O, F>(f: F, inputs: String) -> Result<String, wit::StepError>
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(I) -> Result<O, StepError>,
    {
        // WASI's cwd starts at `/`; host and guest paths agree, so start where the host is.
        start_in(&crate::bindings::hoist::step::context::working_directory());
        let de = &mut serde_json::Deserializer::from_str(&inputs);
        let inputs: I = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            wit::StepError::InvalidInput(input_error(&path, &e.into_inner().to_string()))
        })?;
        let outputs = f(inputs).map_err(|e| e.0)?;
        serde_json::to_string(&outputs).map_err(|e| {
            wit::StepError::Failed(wit::Failure {
                message: format!("outputs could not be encoded as JSON: {e}"),
                exit_code: None,
                hint: None,
            })
        })
    }
}

/// Turn a function `fn(Inputs) -> Result<Outputs>` into a Hoist step component.
///
/// `Inputs` must implement `serde::Deserialize` and [`JsonSchema`]; `Outputs` must
/// implement `serde::Serialize`. See the crate documentation for a complete step.
#[macro_export]
macro_rules! step {
    (
        name: $name:expr,
        version: $version:expr,
        summary: $summary:expr,
        capabilities: [$($cap:expr),* $(,)?],
        run: $run:path $(,)?
    ) => {
        struct __HoistStep;

        impl $crate::bindings::Guest for __HoistStep {
            fn describe() -> $crate::bindings::hoist::step::types::Description {
                $crate::__private::describe(&$run, $name, $version, $summary, vec![$($cap),*])
            }
            fn run(
                inputs: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::hoist::step::types::StepError,
            > {
                $crate::__private::run($run, inputs)
            }
        }

        $crate::bindings::__export_step_world!(__HoistStep with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod input_error_tests {
    use super::__private::input_error;

    #[test]
    fn input_errors_speak_of_the_project_file() {
        assert_eq!(
            input_error(
                "script",
                "invalid type: sequence, expected a string at line 1 column 10"
            ),
            "input `script`: expected a string, got a list"
        );
        assert_eq!(
            input_error(
                "env.N",
                "invalid type: integer `3`, expected a string at line 1 column 28"
            ),
            "input `env.N`: expected a string, got integer `3`"
        );
        assert_eq!(
            input_error(".", "missing field `directory` at line 1 column 2"),
            "missing input `directory`"
        );
        assert_eq!(
            input_error(
                ".",
                "unknown field `nmae`, expected `name` at line 1 column 7"
            ),
            "unknown input `nmae` (it takes `name`)"
        );
        assert_eq!(
            input_error("credentials", "missing field `token`"),
            "input `credentials`: missing input `token`"
        );
        // A missing path says where a step can look, not WASI's errno.
        let e: crate::StepError = std::io::Error::from_raw_os_error(2).into(); // ENOENT natively, 44 on WASI
        let text = format!("{:?}", e.0);
        assert!(!text.contains("os error"), "{text}");
        assert!(text.contains(crate::OUTSIDE_HINT), "{text}");
        // A message that merely mentions a line is left whole.
        assert_eq!(input_error(".", "bad at line five"), "bad at line five");
    }
}
