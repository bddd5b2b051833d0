//! A client of a Prefect server's REST API (`PREFECT_API_URL`; `PREFECT_API_KEY` for
//! Prefect Cloud, sent as a bearer token; `PREFECT_API_AUTH_STRING` for a self-hosted
//! server started with `PREFECT_SERVER_API_AUTH_STRING`, sent as basic auth): where a user's blocks and variables live when they
//! run Prefect. [`PrefectClient`] implements the templates' [`Values`], so
//! `{{ prefect.blocks.* }}` and `{{ prefect.variables.* }}` resolve from the server.
//!
//! Requests are retried as Prefect's own client retries them (408, 429, 502, 503 —
//! the SQLite server answers 503 under write contention — honouring `Retry-After`,
//! exponential backoff with jitter, `PREFECT_CLIENT_MAX_RETRIES` times, default 5).
//! Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`; TLS trusts the Mozilla
//! roots and the system's, which `SSL_CERT_FILE`/`SSL_CERT_DIR` extend. A server that
//! cannot be reached is one line naming the URL and what to check. The API key never
//! appears in an error.
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod deploy;
pub mod events;
pub mod flow;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hoist_policy::HostEnv;
use hoist_project::template::{Blocks, FoundBlocks, Values};
pub use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Why the server could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PrefectError {
    /// Nothing answered at the URL (or the connection broke).
    #[error(
        "cannot reach the Prefect server at {url}: {why}. Is it running (`prefect server start`), \
         and is PREFECT_API_URL right?"
    )]
    Unreachable {
        /// The API URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The server's certificate is not trusted.
    #[error(
        "the Prefect server at {url} presented a certificate Hoist does not trust ({why}): add \
         its CA with SSL_CERT_FILE (or SSL_CERT_DIR)"
    )]
    Untrusted {
        /// The API URL.
        url: String,
        /// What TLS said.
        why: String,
    },
    /// The server refused the API key.
    #[error(
        "the Prefect server at {url} refused the credentials ({status}): check PREFECT_API_KEY \
         (Prefect Cloud) or PREFECT_API_AUTH_STRING (a server with PREFECT_SERVER_API_AUTH_STRING)"
    )]
    Unauthorized {
        /// The API URL.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// Any other error answer.
    #[error("the Prefect server at {url} answered {status} to {what}: {detail}")]
    Api {
        /// The API URL.
        url: String,
        /// The status code.
        status: u16,
        /// The request, `METHOD /path`.
        what: String,
        /// The server's `detail`.
        detail: String,
    },
    /// `PREFECT_API_URL` is not a URL.
    #[error("PREFECT_API_URL={0} is not an http(s) URL (e.g. http://127.0.0.1:4200/api)")]
    BadUrl(String),
}

/// A Prefect server's API. Its `Debug` shows the URL, never the key.
#[derive(Clone)]
pub struct PrefectClient {
    http: reqwest::Client,
    /// The API's base URL, without a trailing `/` (e.g. `http://127.0.0.1:4200/api`).
    pub url: String,
    auth: Option<Auth>,
    max_retries: u32,
}

/// How requests authenticate.
#[derive(Clone)]
enum Auth {
    /// Prefect Cloud's API key.
    Bearer(String),
    /// A self-hosted server's `user:password`.
    Basic(String),
}

impl std::fmt::Debug for PrefectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefectClient")
            .field("url", &self.url)
            .field("auth", &self.auth.as_ref().map(|_| "********"))
            .finish()
    }
}

impl PrefectClient {
    /// The server `PREFECT_API_URL` names in `env` (with `PREFECT_API_KEY`), if set.
    pub fn from_env(env: &HostEnv) -> Option<Result<Self, PrefectError>> {
        let url = env
            .get("PREFECT_API_URL")
            .filter(|u| !u.trim().is_empty())?;
        let retries = env
            .get("PREFECT_CLIENT_MAX_RETRIES")
            .and_then(|r| r.parse().ok())
            .unwrap_or(5);
        let client = Self::new(
            url,
            env.get("PREFECT_API_KEY").filter(|k| !k.is_empty()),
            retries,
        );
        let auth = env.get("PREFECT_API_AUTH_STRING").filter(|a| !a.is_empty());
        Some(client.map(|c| match auth {
            Some(a) if c.auth.is_none() => c.with_auth_string(a),
            _ => c,
        }))
    }

    /// A client of the API at `url`.
    pub fn new(url: &str, key: Option<&str>, max_retries: u32) -> Result<Self, PrefectError> {
        let url = url.trim().trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PrefectError::BadUrl(url));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("hoist/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| PrefectError::Unreachable {
                url: url.clone(),
                why: e.to_string(),
            })?;
        Ok(Self {
            http,
            url,
            auth: key.map(|k| Auth::Bearer(k.to_string())),
            max_retries,
        })
    }

    /// Authenticate with a self-hosted server's `user:password` (basic auth).
    pub fn with_auth_string(mut self, auth: &str) -> Self {
        self.auth = Some(Auth::Basic(auth.to_string()));
        self
    }

    /// Send a request (retrying what Prefect retries); the answer's status and JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), PrefectError> {
        let what = format!("{method} {path}");
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.url));
            match &self.auth {
                Some(Auth::Bearer(key)) => req = req.bearer_auth(key),
                Some(Auth::Basic(pair)) => {
                    let (user, password) = pair.split_once(':').unwrap_or((pair, ""));
                    req = req.basic_auth(user, Some(password));
                }
                None => {}
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e)
                    if attempt < self.max_retries
                        && (e.is_timeout() || e.is_request())
                        && !e.is_connect() =>
                {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt, None)).await;
                    continue;
                }
                Err(e) => {
                    let why = cause(&e);
                    let url = self.url.clone();
                    return Err(if why.contains("certificate") {
                        PrefectError::Untrusted { url, why }
                    } else {
                        PrefectError::Unreachable { url, why }
                    });
                }
            };
            let status = resp.status();
            if matches!(status.as_u16(), 408 | 429 | 502 | 503) && attempt < self.max_retries {
                attempt += 1;
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<f64>().ok());
                tokio::time::sleep(backoff(attempt, after)).await;
                continue;
            }
            let text = resp.text().await.map_err(|e| PrefectError::Unreachable {
                url: self.url.clone(),
                why: cause(&e),
            })?;
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(PrefectError::Unauthorized {
                    url: self.url.clone(),
                    status: status.as_u16(),
                });
            }
            if status.is_client_error() && status != StatusCode::NOT_FOUND
                || status.is_server_error()
            {
                return Err(PrefectError::Api {
                    url: self.url.clone(),
                    status: status.as_u16(),
                    what,
                    detail: detail(&value),
                });
            }
            return Ok((status, value));
        }
    }

    /// `GET path`: `None` on 404.
    async fn get(&self, path: &str) -> Result<Option<Value>, PrefectError> {
        let (status, v) = self.request(Method::GET, path, None).await?;
        Ok((status != StatusCode::NOT_FOUND).then_some(v))
    }

    /// A block document by type slug and name, secrets included.
    pub async fn block_document(
        &self,
        slug: &str,
        name: &str,
    ) -> Result<Option<Value>, PrefectError> {
        self.get(&format!(
            "/block_types/slug/{}/block_documents/name/{}?include_secrets=true",
            segment(slug),
            segment(name)
        ))
        .await
    }

    /// A block document by id, secrets included.
    pub async fn block_document_by_id(&self, id: &str) -> Result<Option<Value>, PrefectError> {
        self.get(&format!(
            "/block_documents/{}?include_secrets=true",
            segment(id)
        ))
        .await
    }

    /// A variable's value by name.
    pub async fn variable(&self, name: &str) -> Result<Option<Value>, PrefectError> {
        Ok(self
            .get(&format!("/variables/name/{}", segment(name)))
            .await?
            .map(|v| v.get("value").cloned().unwrap_or(Value::Null)))
    }
}

/// Prefect's backoff: exponential from 2 s with ±20 % jitter, or what `Retry-After` says.
fn backoff(attempt: u32, retry_after: Option<f64>) -> Duration {
    if let Some(s) = retry_after.filter(|s| s.is_finite() && *s >= 0.0) {
        return Duration::from_secs_f64(s.min(60.0));
    }
    let base = 2f64.powi(attempt as i32).min(30.0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    Duration::from_secs_f64(base * jitter)
}

/// The innermost cause of a transport error, one line (never the URL's credentials:
/// reqwest's messages name the URL, which carries none here).
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}

/// The `detail` of a FastAPI error answer, or the body.
fn detail(v: &Value) -> String {
    match v.get("detail") {
        Some(Value::String(s)) => s.clone(),
        Some(d) => d.to_string(),
        None => match v {
            Value::String(s) => s.chars().take(500).collect(),
            other => other.to_string(),
        },
    }
}

/// A path segment, percent-encoded.
pub(crate) use hoist_policy::encoding::percent_encode as segment;

/// The strings of a block document a redactor must mask: everything in a `secret`
/// block, and what the block schema's `secret_fields` name (dotted paths, `*` for any
/// key) in any other.
pub fn secret_strings(doc: &Value) -> Vec<String> {
    let data = doc.get("data").cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    let slug = doc
        .pointer("/block_type/slug")
        .and_then(Value::as_str)
        .unwrap_or("");
    if slug == "secret" {
        hoist_policy::secrets::secret_strings(&data, &mut out);
        return out;
    }
    let fields = doc
        .pointer("/block_schema/fields/secret_fields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for f in fields.iter().filter_map(Value::as_str) {
        let parts: Vec<&str> = f.split('.').collect();
        collect_at(&data, &parts, &mut out);
    }
    out
}

fn collect_at(v: &Value, path: &[&str], out: &mut Vec<String>) {
    match path.split_first() {
        None => hoist_policy::secrets::secret_strings(v, out),
        Some((&"*", rest)) => {
            if let Value::Object(m) = v {
                m.values().for_each(|x| collect_at(x, rest, out));
            }
        }
        Some((key, rest)) => {
            if let Some(x) = v.get(*key) {
                collect_at(x, rest, out);
            }
        }
    }
}

impl Values for PrefectClient {
    type Error = PrefectError;

    async fn blocks(
        &self,
        names: &BTreeSet<(String, String)>,
        ids: &BTreeSet<String>,
    ) -> Result<FoundBlocks, PrefectError> {
        let mut found = FoundBlocks {
            blocks: Blocks::default(),
            secrets: Vec::new(),
        };
        for (slug, name) in names {
            if let Some(doc) = self.block_document(slug, name).await? {
                found.secrets.extend(secret_strings(&doc));
                let data = doc.get("data").cloned().unwrap_or(json!({}));
                found
                    .blocks
                    .by_name
                    .insert((slug.clone(), name.clone()), data);
            }
        }
        for id in ids {
            if let Some(doc) = self.block_document_by_id(id).await? {
                found.secrets.extend(secret_strings(&doc));
                let data = doc.get("data").cloned().unwrap_or(json!({}));
                found.blocks.by_id.insert(id.clone(), data);
            }
        }
        Ok(found)
    }

    async fn variables(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Value>, PrefectError> {
        let mut out = BTreeMap::new();
        for name in names {
            if let Some(v) = self.variable(name).await? {
                out.insert(name.clone(), v);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_fields_are_found_by_path() {
        let doc = json!({
            "data": {"username": "u", "password": "p4ssword", "nested": {"a": {"token": "tok-123"}, "b": {"token": "tok-456"}}},
            "block_type": {"slug": "docker-registry-credentials"},
            "block_schema": {"fields": {"secret_fields": ["password", "nested.*.token"]}},
        });
        let mut s = secret_strings(&doc);
        s.sort();
        assert_eq!(s, ["p4ssword", "tok-123", "tok-456"]);
        let secret = json!({"data": {"value": "the-secret"}, "block_type": {"slug": "secret"}});
        assert_eq!(secret_strings(&secret), ["the-secret"]);
    }

    /// A real HTTP server on loopback that answers 503 (with `Retry-After: 0`) `fails`
    /// times, then 200; returns its address and a counter of the requests it served.
    fn flaky_server(fails: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (status, body) = if n < fails {
                    (
                        "503 Service Unavailable\r\nRetry-After: 0",
                        r#"{"detail":"database locked"}"#,
                    )
                } else {
                    ("200 OK", r#"{"name":"x","value":41}"#)
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        (format!("http://{addr}/api"), seen)
    }

    #[tokio::test]
    async fn answers_prefect_retries_are_retried() {
        let (url, seen) = flaky_server(2);
        let c = PrefectClient::new(&url, None, 5).unwrap();
        assert_eq!(c.variable("x").await.unwrap(), Some(json!(41)));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);

        let (url, seen) = flaky_server(5);
        let c = PrefectClient::new(&url, None, 1).unwrap();
        let e = c.variable("x").await.unwrap_err().to_string();
        assert!(e.contains("503") && e.contains("database locked"), "{e}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn urls_and_backoff() {
        assert!(PrefectClient::new("ftp://x", None, 0).is_err());
        let c = PrefectClient::new("http://127.0.0.1:4200/api/", Some("k"), 0).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:4200/api");
        assert_eq!(backoff(1, Some(3.0)), Duration::from_secs(3));
        let b = backoff(2, None).as_secs_f64();
        assert!((3.2..=4.8).contains(&b), "{b}");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
