//! Proxies, as curl reads them from the host's environment: `HTTPS_PROXY`/`https_proxy`
//! for https, `http_proxy`/`HTTP_PROXY` for http (an `http://[user:pass@]host[:port]`
//! proxy), `NO_PROXY`/`no_proxy` exempting names (`*`, exact names, domain suffixes,
//! addresses). HTTPS goes through a `CONNECT` tunnel to the request's name; plain HTTP is
//! sent to the proxy in absolute form. The proxy is the operator's choice (the host's
//! environment), never the plugin's: a plugin's `net` grants and the address checks
//! still apply to the request, and the proxy resolves names the machine cannot.

use hoist_policy::HostEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmtime_wasi_http::Error;

/// An HTTP proxy from the environment.
pub struct Proxy {
    pub host: String,
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
        auth: userinfo.map(|u| format!("Basic {}", base64(&percent_decode(u)))),
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match s.get(i + 1..i + 3).filter(|_| b[i] == b'%') {
            Some(hex) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).unwrap_or_default());
                i += 3;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// Longest `CONNECT` answer head read from a proxy.
const MAX_ANSWER: usize = 16 << 10;

/// Open a `CONNECT` tunnel through `proxy` (connected as `tcp`) to `host:port`.
pub async fn tunnel(
    mut tcp: TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<TcpStream, Error> {
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
    tcp.write_all(head.as_bytes())
        .await
        .map_err(Error::Connect)?;
    // Byte by byte: nothing after the answer's head (the tunnel) may be consumed.
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() > MAX_ANSWER {
            return Err(Error::ConnectionTerminated);
        }
        answer.push(tcp.read_u8().await.map_err(Error::Connect)?);
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
        Err(Error::InternalError(Some(format!(
            "the proxy {}:{} refused to connect to {target}: {status}",
            proxy.host, proxy.port
        ))))
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
