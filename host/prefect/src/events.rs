//! The server's events stream (`ws(s)://…/api/events/out`, subprotocol `prefect`), as
//! Prefect's own observers read it (`prefect-worker-protocol.md` §4.3): authenticate
//! with `{"type":"auth","token":…}`, send one filter, then read events. A worker
//! subscribes to its pool's flow-run events so a run created on the server wakes it at
//! once (measured 0.03–0.1 s after the API call), instead of polling every second.
//!
//! The connection is Hoist's own (TCP, TLS with [`hoist_policy::tls`]), through the
//! proxy the environment names as the REST calls are (`HTTPS_PROXY` for `wss`,
//! `http_proxy` for `ws`, `NO_PROXY` exempting hosts; a `CONNECT` tunnel either way, as
//! Python's `websockets` opens one): a worker that cannot open the stream says so and
//! keeps polling.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Auth, MAX_ANSWER_BYTES, PrefectClient, PrefectError};

/// Anything the stream runs over (TCP, TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How long connecting, the handshake and the server's auth answer may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// An open, filtered subscription.
pub struct EventStream {
    ws: WebSocketStream<Pin<Box<dyn Io>>>,
    url: String,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("url", &self.url)
            .finish()
    }
}

/// The filter for flow-run events named `names` related to the work pool `pool_id`,
/// from now on (no backfill).
pub fn pool_filter(pool_id: &str, names: &[&str]) -> Value {
    let since = hoist_policy::time::rfc3339_in(Duration::ZERO);
    let until = hoist_policy::time::rfc3339_in(Duration::from_secs(366 * 24 * 3600));
    json!({
        "event": {"name": names},
        "any_resource": {"id": [format!("prefect.work-pool.{pool_id}")]},
        "occurred": {"since": since, "until": until},
    })
}

impl PrefectClient {
    /// The `/events/out` URL: the API URL with `ws`/`wss` for `http`/`https`.
    fn events_url(&self) -> String {
        let rest = self.url.strip_prefix("http").unwrap_or(&self.url);
        format!("ws{rest}/events/out")
    }

    /// Open the events stream and subscribe with `filter` (e.g. [`pool_filter`]).
    pub async fn subscribe(&self, filter: Value) -> Result<EventStream, PrefectError> {
        let url = self.events_url();
        let unreachable = |why: String| PrefectError::Unreachable {
            url: url.clone(),
            why,
        };
        let open = async {
            let mut ws = self.handshake(&url).await?;
            let token = match &self.auth {
                Some(Auth::Bearer(t) | Auth::Basic(t)) => Value::String(t.clone()),
                None => Value::Null,
            };
            let auth = json!({"type": "auth", "token": token}).to_string();
            ws.send(Message::text(auth))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let mut stream = EventStream {
                ws,
                url: url.clone(),
            };
            match stream.message().await? {
                Some(m) if m["type"] == "auth_success" => {}
                _ => {
                    return Err(PrefectError::Unauthorized {
                        url: url.clone(),
                        status: 403,
                    });
                }
            }
            let filter = json!({"type": "filter", "filter": filter}).to_string();
            stream
                .ws
                .send(Message::text(filter))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok(stream)
        };
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| unreachable("no answer within 10 s".into()))?
    }

    /// TCP (+ TLS for `wss`), then the websocket upgrade with the `prefect` subprotocol
    /// and the same HTTP credentials as the REST calls.
    async fn handshake(
        &self,
        url: &str,
    ) -> Result<WebSocketStream<Pin<Box<dyn Io>>>, PrefectError> {
        let unreachable = |why: String| PrefectError::Unreachable {
            url: url.to_string(),
            why,
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| PrefectError::BadUrl(url.into()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| PrefectError::BadUrl(url.into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let tls = parsed.scheme() == "wss";
        let port = parsed.port().unwrap_or(if tls { 443 } else { 80 });
        let scheme = if tls { "https" } else { "http" };
        let proxy =
            hoist_policy::proxy::for_request(&hoist_policy::HostEnv::from_process(), scheme, &host);
        let tcp = match &proxy {
            None => TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| unreachable(e.to_string()))?,
            Some(p) => {
                let through = |e: String| unreachable(format!("through the proxy {p}: {e}"));
                let tcp = TcpStream::connect((p.host.as_str(), p.port))
                    .await
                    .map_err(|e| through(e.to_string()))?;
                hoist_policy::proxy::tunnel(tcp, p, &host, port)
                    .await
                    .map_err(|e| through(e.to_string()))?
            }
        };
        let _ = tcp.set_nodelay(true);
        let io: Pin<Box<dyn Io>> = if tls {
            let name = hoist_policy::tls::rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| PrefectError::BadUrl(url.into()))?;
            let stream = tokio_rustls::TlsConnector::from(hoist_policy::tls::client_config())
                .connect(name, tcp)
                .await
                .map_err(|e| PrefectError::Untrusted {
                    url: url.to_string(),
                    why: e.to_string(),
                })?;
            Box::pin(stream)
        } else {
            Box::pin(tcp)
        };
        let mut request = url
            .into_client_request()
            .map_err(|_| PrefectError::BadUrl(url.into()))?;
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("prefect"),
        );
        let authorization = match &self.auth {
            Some(Auth::Bearer(key)) => Some(format!("Bearer {key}")),
            Some(Auth::Basic(pair)) => Some(format!(
                "Basic {}",
                hoist_policy::encoding::base64(pair.as_bytes())
            )),
            None => None,
        };
        if let Some(a) = authorization.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert("authorization", a);
        }
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config()))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r)
                    if matches!(r.status().as_u16(), 401 | 403) =>
                {
                    PrefectError::Unauthorized {
                        url: url.to_string(),
                        status: r.status().as_u16(),
                    }
                }
                e => unreachable(self.scrub(&e.to_string())),
            })?;
        Ok(ws)
    }
}

/// The stream's limits: a message (or frame) over [`MAX_ANSWER_BYTES`] ends the
/// stream with an error instead of being buffered (the library's default takes 64 MiB;
/// an event is a few KiB).
fn config() -> WebSocketConfig {
    let cap = usize::try_from(MAX_ANSWER_BYTES).unwrap_or(usize::MAX);
    WebSocketConfig::default()
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
}

impl EventStream {
    /// The next event (`{"event": …, "resource": …, …}`); `None` when the server closed
    /// the stream.
    pub async fn next(&mut self) -> Result<Option<Value>, PrefectError> {
        loop {
            match self.message().await? {
                None => return Ok(None),
                Some(m) if m["type"] == "event" => return Ok(Some(m["event"].clone())),
                Some(_) => {}
            }
        }
    }

    /// The next JSON message (pings are answered by the library).
    async fn message(&mut self) -> Result<Option<Value>, PrefectError> {
        loop {
            let m = match self.ws.next().await {
                None => return Ok(None),
                Some(m) => m.map_err(|e| PrefectError::Unreachable {
                    url: self.url.clone(),
                    why: e.to_string(),
                })?,
            };
            match m {
                Message::Text(t) => {
                    return Ok(Some(serde_json::from_str(&t).unwrap_or(Value::Null)));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
    }
}
