//! Proxies, as curl reads them from the host's environment: `HTTPS_PROXY`/`https_proxy`
//! for https, `http_proxy`/`HTTP_PROXY` for http (an `http://[user:pass@]host[:port]`
//! proxy), `NO_PROXY`/`no_proxy` exempting names (`*`, exact names, domain suffixes,
//! addresses), and a `CONNECT` tunnel through one. Used by a plugin's `wasi:http`
//! requests (the runtime) and by the Prefect events websocket: the proxy is always the
//! operator's choice (the host's environment), never a plugin's.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::HostEnv;

/// An HTTP proxy from the environment.
#[derive(Debug)]
pub struct Proxy {
    /// The proxy's host name or address.
    pub host: String,
    /// Its port (80 when the URL names none).
    pub port: u16,
    /// `Basic ...` for `Proxy-Authorization`, from the proxy URL's userinfo.
    pub auth: Option<String>,
}

/// Whether a request to `host` over `scheme` goes through a proxy.
pub fn proxied(env: &HostEnv, scheme: &str, host: &str) -> bool {
    for_request(env, scheme, host).is_some()
}

/// The proxy for a request to `host` over `scheme`, if the environment names one and
/// `NO_PROXY` does not exempt the host.
pub fn for_request(env: &HostEnv, scheme: &str, host: &str) -> Option<Proxy> {
    let var = |names: &[&str]| env.first_set(names);
    let url = if scheme == "https" {
        var(&["HTTPS_PROXY", "https_proxy"])
    } else {
        // curl ignores upper-case HTTP_PROXY only in CGI settings; Hoist is not one.
        var(&["http_proxy", "HTTP_PROXY"])
    }?;
    if var(&["NO_PROXY", "no_proxy"]).is_some_and(|list| exempt(list, host)) {
        return None;
    }
    parse(url)
}

/// Whether a `NO_PROXY` list exempts `host`: `*`, the name itself, or a domain it is in
/// (`example.com` and `.example.com` both cover `a.example.com`).
fn exempt(list: &str, host: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|e| {
            let e = e.to_ascii_lowercase();
            let e = e.split(':').next().unwrap_or(&e).trim_start_matches('.');
            e == "*" || host == e || host.ends_with(&format!(".{e}"))
        })
}

fn parse(url: &str) -> Option<Proxy> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => return None,
        None => url,
    };
    let authority = rest.split('/').next()?;
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, p.parse().ok()?),
        _ => (hostport, 80),
    };
    Some(Proxy {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
        auth: userinfo.map(|u| {
            format!(
                "Basic {}",
                crate::encoding::base64(
                    &crate::encoding::percent_decode(u).unwrap_or_else(|| u.as_bytes().to_vec()),
                )
            )
        }),
    })
}

/// Longest `CONNECT` answer head read from a proxy.
const MAX_ANSWER: usize = 16 << 10;

/// Why a `CONNECT` tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The connection to the proxy failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The proxy answered, and not with 2xx.
    #[error("the proxy {proxy} refused to connect to {target}: {status}")]
    Refused {
        /// The proxy, `host:port`.
        proxy: String,
        /// Where the tunnel was to go, `host:port`.
        target: String,
        /// The proxy's status line.
        status: String,
    },
    /// The proxy's answer head was longer than any proxy sends.
    #[error("the proxy {0} sent an answer too long to be one")]
    TooLong(String),
}

/// Open a `CONNECT` tunnel through `proxy` (connected as `tcp`) to `host:port`.
pub async fn tunnel(
    mut tcp: TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<TcpStream, TunnelError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.auth {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    // Byte by byte: nothing after the answer's head (the tunnel) may be consumed.
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() > MAX_ANSWER {
            return Err(TunnelError::TooLong(proxy.to_string()));
        }
        answer.push(tcp.read_u8().await?);
    }
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or("").trim();
    if status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
    {
        Ok(tcp)
    } else {
        Err(TunnelError::Refused {
            proxy: proxy.to_string(),
            target,
            status: status.to_string(),
        })
    }
}

impl std::fmt::Display for Proxy {
    /// `host:port`, never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_lists_exempt_names_domains_and_everything() {
        assert!(exempt("localhost,.internal", "localhost"));
        assert!(exempt("localhost, .internal", "minio.internal"));
        assert!(exempt("internal", "minio.internal"));
        assert!(!exempt("internal", "minio.internal.evil.com"));
        assert!(!exempt("ample.com", "example.com"));
        assert!(exempt("*", "anything"));
        assert!(exempt("10.0.0.5:9000", "10.0.0.5"));
    }

    #[test]
    fn proxy_urls() {
        let p = parse("http://u:p%40ss@proxy.corp:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.auth.as_deref(), Some("Basic dTpwQHNz"));
        let p = parse("proxy.corp").unwrap();
        assert_eq!((p.host.as_str(), p.port, p.auth), ("proxy.corp", 80, None));
        assert!(parse("socks5://proxy:1080").is_none());
    }
}
