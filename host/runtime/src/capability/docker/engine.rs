//! A small client of the Docker Engine API over its unix socket: only the calls the
//! `docker` capability makes (version, build, tag, push, auth, inspect), each on a
//! connection of its own. Streamed answers (build and push progress) are read as JSON
//! lines and handed to the caller as they arrive.
//!
//! The API version is negotiated once per client: the engine's own, capped at
//! [`MAX_API`] (Debian's dockerd 20.10 refuses anything newer; podman answers 1.41).

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hoist_policy::HostEnv;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use wasmtime_wasi_http::io::TokioIo;

/// The newest API version Hoist asks for.
pub const MAX_API: (u32, u32) = (1, 41);
/// The oldest it can work with (`/build` with `buildargs`, `labels`, `target`).
const MIN_API: (u32, u32) = (1, 29);

/// Where the engine is, and how to talk to it.
#[derive(Clone, Debug)]
pub struct Engine {
    socket: PathBuf,
    /// `DOCKER_HOST` as the user wrote it (or the default), for messages.
    pub host: String,
    api: String,
    /// Podman's buildah version (`Libpod-Buildah-Version` on `/_ping`), when it is Podman.
    pub podman_buildah: Option<String>,
}

/// Why the engine could not be used.
#[derive(Debug)]
pub enum EngineError {
    /// `DOCKER_HOST` names something other than a unix socket.
    Unsupported(String),
    /// Nothing answers at the socket.
    Unreachable(String),
    /// The engine answered with an error (status, its message).
    Api(StatusCode, String),
    /// The conversation broke off.
    Io(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Unsupported(m) | EngineError::Unreachable(m) | EngineError::Io(m) => {
                f.write_str(m)
            }
            EngineError::Api(status, m) => write!(f, "{m} (HTTP {})", status.as_u16()),
        }
    }
}

/// The body of a request: a whole buffer, or chunks from a producer (the build context).
pub enum ReqBody {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ReqBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
}

impl ReqBody {
    /// An empty body.
    pub fn empty() -> Self {
        ReqBody::Full(Full::new(Bytes::new()))
    }

    /// A JSON body.
    pub fn json(v: &serde_json::Value) -> Self {
        ReqBody::Full(Full::new(Bytes::from(v.to_string())))
    }
}

/// The socket `DOCKER_HOST` names (`unix:///path`), or the default one.
fn socket_of(env: &HostEnv) -> Result<(PathBuf, String), EngineError> {
    match env.get("DOCKER_HOST").filter(|h| !h.is_empty()) {
        None => Ok((
            PathBuf::from("/var/run/docker.sock"),
            "unix:///var/run/docker.sock".into(),
        )),
        Some(h) => match h.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') => Ok((PathBuf::from(path), h.to_string())),
            _ => Err(EngineError::Unsupported(format!(
                "DOCKER_HOST={h} is not supported: Hoist talks to the engine over its unix \
                 socket only; set DOCKER_HOST=unix:///path/to/docker.sock"
            ))),
        },
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Engine {
    /// Find the engine and agree on an API version with it.
    pub async fn connect(env: &HostEnv) -> Result<Engine, EngineError> {
        let (socket, host) = socket_of(env)?;
        let mut engine = Engine {
            socket,
            host,
            api: String::new(),
            podman_buildah: None,
        };
        // `/_ping` answers with the API version in a header, at once (Podman's
        // `/version` gathers system facts first: a third of a second).
        let ping = engine
            .send(Method::GET, "/_ping", &[], ReqBody::empty())
            .await?;
        let podman = ping.headers().contains_key("libpod-api-version");
        engine.podman_buildah = podman.then(|| {
            ping.headers()
                .get("libpod-buildah-version")
                .and_then(|v| v.to_str().ok())
                .map(|v| hoist_policy::text::sanitize(v).into_owned())
                .unwrap_or_else(|| "unknown".into())
        });
        let mut server = ping
            .headers()
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_version);
        if server.is_none() {
            let v = engine.call(Method::GET, "/version", None).await?;
            server = v
                .get("ApiVersion")
                .and_then(|a| a.as_str())
                .and_then(parse_version);
        }
        let server = server.ok_or_else(|| {
            EngineError::Io(format!("{} did not say its API version", engine.host))
        })?;
        if server < MIN_API {
            return Err(EngineError::Unsupported(format!(
                "the engine at {} speaks API {}.{}; Hoist needs {}.{} or newer",
                engine.host, server.0, server.1, MIN_API.0, MIN_API.1
            )));
        }
        let (a, b) = server.min(MAX_API);
        engine.api = format!("/v{a}.{b}");
        Ok(engine)
    }

    /// Send one request on a fresh connection; the response head and its body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: ReqBody,
    ) -> Result<http::Response<hyper::body::Incoming>, EngineError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                EngineError::Unreachable(format!("no Docker engine answers at {} ({e})", self.host))
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| EngineError::Io(format!("{}: {e}", self.host)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.api))
            .header("host", "docker");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(body)
            .map_err(|e| EngineError::Io(format!("bad request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| EngineError::Io(format!("{}: {e}", self.host)))
    }

    /// A call answered by one JSON document (or nothing); an error status becomes
    /// [`EngineError::Api`] with the engine's `message`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, EngineError> {
        let (headers, body) = match &body {
            Some(v) => (
                vec![("content-type", "application/json".to_string())],
                ReqBody::json(v),
            ),
            None => (Vec::new(), ReqBody::empty()),
        };
        let resp = self.send(method, path, &headers, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| EngineError::Io(format!("{}: {e}", self.host)))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).trim().to_string())
        });
        if !status.is_success() {
            return Err(EngineError::Api(status, message_of(&value)));
        }
        Ok(value)
    }

    /// A call answered by a stream of JSON lines (build, push): `each` sees every
    /// message as it arrives. An error status becomes [`EngineError::Api`].
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: ReqBody,
        mut each: impl FnMut(serde_json::Value),
    ) -> Result<(), EngineError> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut pending: Vec<u8> = Vec::new();
        let mut all_text = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| EngineError::Io(format!("{}: {e}", self.host)))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                handle_line(&line, status, &mut all_text, &mut each);
            }
        }
        if !pending.is_empty() {
            handle_line(&pending, status, &mut all_text, &mut each);
        }
        if !status.is_success() {
            let value = serde_json::from_str(&all_text)
                .unwrap_or(serde_json::Value::String(all_text.trim().to_string()));
            return Err(EngineError::Api(status, message_of(&value)));
        }
        Ok(())
    }
}

fn handle_line(
    line: &[u8],
    status: StatusCode,
    all_text: &mut String,
    each: &mut impl FnMut(serde_json::Value),
) {
    if !status.is_success() {
        all_text.push_str(&String::from_utf8_lossy(line));
        return;
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    match serde_json::from_str(text) {
        Ok(v) => each(v),
        Err(_) => each(serde_json::json!({ "stream": text })),
    }
}

/// The engine's message in an error answer (`{"message": ...}`), or the text itself.
pub fn message_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => s.clone(),
        serde_json::Value::Object(o) => o
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("the engine gave no message")
            .to_string(),
        _ => "the engine gave no message".into(),
    }
}

pub use hoist_policy::encoding::percent_encode as encode;

/// An image name for a URL path: `/` and `:` kept (the engine routes
/// `/images/{name}/push` with slashes in the name), anything else encoded.
pub fn path_name(s: &str) -> String {
    s.split('/')
        .map(|seg| {
            seg.split(':')
                .map(|p| encode(p).replace("%40", "@"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_is_a_unix_socket_or_the_default() {
        let env = |v: &str| -> HostEnv { [("DOCKER_HOST", v)].into_iter().collect() };
        assert_eq!(
            socket_of(&HostEnv::empty()).unwrap().0,
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_of(&env("unix:///tmp/p.sock")).unwrap().0,
            PathBuf::from("/tmp/p.sock")
        );
        for bad in ["tcp://1.2.3.4:2375", "unix://relative", "ssh://host"] {
            let e = socket_of(&env(bad)).unwrap_err().to_string();
            assert!(e.contains("unix socket only"), "{e}");
        }
    }

    #[test]
    fn names_and_values_are_encoded() {
        assert_eq!(path_name("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(path_name("a?b#c"), "a%3Fb%23c");
        assert_eq!(encode("{\"a\":1}"), "%7B%22a%22%3A1%7D");
        assert_eq!(parse_version("1.41"), Some((1, 41)));
    }
}
