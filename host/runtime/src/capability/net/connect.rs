//! Hoist's own connector for `wasi:http`: one connection per request, made to the
//! address the policy checked (never to what a second DNS lookup returns), with TLS
//! verified against the *name* the request used.
//!
//! Trusted roots: [`hoist_policy::tls`]. Proxies: `proxy.rs`.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hoist_policy::HostEnv;
use hoist_policy::tls::{client_config, rustls};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions};

use super::proxy;

/// Anything a connection can run over (TCP, TLS over TCP).
trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// Used when the guest sets no timeout (wasi:http leaves the default to the host).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where to connect, as decided by the policy.
pub struct Target<'a> {
    /// The checked address (none when only a proxy can resolve the name).
    pub ip: Option<IpAddr>,
    /// The port.
    pub port: u16,
    /// The name the request used (TLS server name).
    pub host: &'a str,
    /// Whether to speak TLS.
    pub tls: bool,
    /// The host environment (proxy settings).
    pub env: &'a HostEnv,
}

type Response = http::Response<BetweenBytes>;

/// Send `request` over a new connection to `target`. Returns the response and the
/// future that drives the connection until the body has been read.
pub async fn send(
    mut request: http::Request<wasmtime_wasi_http::WasiBody>,
    options: Option<RequestOptions>,
    target: Target<'_>,
) -> Result<
    (
        Response,
        impl Future<Output = Result<(), Error>> + Send + 'static,
    ),
    Error,
> {
    let opt = |f: fn(&RequestOptions) -> Option<Duration>| {
        options.as_ref().and_then(f).unwrap_or(DEFAULT_TIMEOUT)
    };
    let connect_timeout = opt(|o| o.connect_timeout);
    let first_byte = opt(|o| o.first_byte_timeout);
    let between_bytes = opt(|o| o.between_bytes_timeout).max(Duration::from_nanos(1));

    let scheme = if target.tls { "https" } else { "http" };
    let proxy = proxy::for_request(target.env, scheme, target.host);
    let stream = connect(&target, proxy.as_ref(), connect_timeout).await?;
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    on_the_wire(&mut request, proxy.as_ref().filter(|_| !target.tls))?;

    // Drive the connection while waiting for the response head.
    let mut conn = Box::pin(conn);
    let mut conn_done = false;
    let head = tokio::time::timeout(first_byte, sender.send_request(request));
    tokio::pin!(head);
    let response = loop {
        tokio::select! {
            biased;
            r = &mut head => break r.map_err(|_| Error::ConnectionReadTimeout)??,
            // A server that closes after answering ends the connection as the head
            // arrives: keep waiting for the head; only a failed connection ends it.
            c = &mut conn, if !conn_done => {
                c?;
                conn_done = true;
            }
        }
    };
    let mut timer = tokio::time::interval(between_bytes);
    timer.reset();
    let response = response.map(|incoming| BetweenBytes { incoming, timer });
    let io = async move {
        if conn_done {
            return Ok(());
        }
        conn.await.map_err(|e| {
            if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                e.into()
            }
        })
    };
    Ok((response, io))
}

/// A connection to `target` (through `proxy` if any: a `CONNECT` tunnel for TLS), with
/// TLS verified against the request's name.
async fn connect(
    target: &Target<'_>,
    proxy: Option<&proxy::Proxy>,
    timeout: Duration,
) -> Result<Box<dyn Stream>, Error> {
    let dial = async {
        match (proxy, target.ip) {
            (Some(p), _) => TcpStream::connect((p.host.as_str(), p.port)).await,
            (None, Some(ip)) => TcpStream::connect((ip, target.port)).await,
            (None, None) => Err(std::io::ErrorKind::NotFound.into()),
        }
    };
    let tcp = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let tcp = match proxy {
        Some(p) if target.tls => proxy::tunnel(tcp, p, target.host, target.port).await?,
        _ => tcp,
    };
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(target.host.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client_config())
        .connect(name, tcp)
        .await
        .map_err(Error::Tls)?;
    Ok(Box::new(tls))
}

/// On the wire the request names only the path (the Host header names the server),
/// except to an HTTP proxy, which wants the absolute form (and its credentials).
fn on_the_wire(
    request: &mut http::Request<wasmtime_wasi_http::WasiBody>,
    http_proxy: Option<&proxy::Proxy>,
) -> Result<(), Error> {
    match http_proxy {
        Some(p) => {
            if let Some(auth) = &p.auth {
                let value =
                    http::HeaderValue::from_str(auth).map_err(|_| Error::HttpRequestUriInvalid)?;
                request
                    .headers_mut()
                    .insert(http::header::PROXY_AUTHORIZATION, value);
            }
        }
        None => {
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
        }
    }
    Ok(())
}

/// A response body that fails if no bytes arrive for the guest's between-bytes timeout.
pub struct BetweenBytes {
    incoming: hyper::body::Incoming,
    timer: tokio::time::Interval,
}

impl Body for BetweenBytes {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                e.into()
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.timer.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
