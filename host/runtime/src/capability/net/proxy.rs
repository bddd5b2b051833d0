//! The proxy the host's environment names ([`hoist_policy::proxy`]) for a plugin's
//! `wasi:http` requests: HTTPS goes through a `CONNECT` tunnel to the request's name;
//! plain HTTP is sent to the proxy in absolute form. A plugin's `net` grants and the
//! address checks still apply to the request, and the proxy resolves names the machine
//! cannot.

use hoist_policy::proxy::TunnelError;
pub use hoist_policy::proxy::{Proxy, for_request, proxied};
use tokio::net::TcpStream;
use wasmtime_wasi_http::Error;

/// Open a `CONNECT` tunnel through `proxy` (connected as `tcp`) to `host:port`.
pub async fn tunnel(
    tcp: TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<TcpStream, Error> {
    hoist_policy::proxy::tunnel(tcp, proxy, host, port)
        .await
        .map_err(|e| match e {
            TunnelError::Io(e) => Error::Connect(e),
            TunnelError::TooLong(_) => Error::ConnectionTerminated,
            refused @ TunnelError::Refused { .. } => {
                Error::InternalError(Some(refused.to_string()))
            }
        })
}
