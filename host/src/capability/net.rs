//! Outgoing HTTP (`wasi:http/outgoing-handler`) on the step's terms.
//!
//! Every request goes through [`NetHooks::send_request`], the one choke point:
//! 1. its `scheme://host:port` must be covered by the step's effective `net` grants;
//! 2. the host is resolved, and if any address is loopback, link-local (cloud metadata
//!    lives there) or unspecified, the request is refused unless the user granted that
//!    host or address explicitly (a grant with no wildcard in its host) — so `net:*` or
//!    `net:https://*.example.com` cannot be turned against the machine itself by DNS.
//!
//! A refusal is logged at error level with the fix and recorded, so the step's failure
//! can say why; the guest sees `HTTP-request-denied`. (The connection resolves the name
//! again: a rebinding DNS server could still race the check; see docs/architecture.md.)

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::bindings::Level;
use crate::capability::log::{Source, StepLog};
use crate::runtime::policy::{Capability, Grants, default_port, split_origin};

/// The step's network policy, as wasi-http hooks.
pub struct NetHooks {
    /// What the step may reach (its declarations, all granted).
    pub grants: Arc<Grants>,
    /// What the user granted (for the explicit-grant rule of special addresses).
    pub user_grants: Arc<Grants>,
    /// Where denials are logged.
    pub log: StepLog,
    /// `step `x` (plugin)`, for messages.
    pub who: String,
    /// Denials so far, for the step's error.
    pub denials: Arc<Mutex<Vec<String>>>,
}

/// Loopback, link-local (incl. 169.254.169.254 metadata), unspecified.
pub fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| special(IpAddr::V4(v4)))
        }
    }
}

/// Whether the user granted this host (or one of its addresses) by name, no wildcard.
pub(crate) fn explicitly_granted(user: &Grants, host: &str, addrs: &[IpAddr]) -> bool {
    user.iter().any(|g| match g {
        Capability::Net(pattern) => split_origin(pattern).is_some_and(|(_, h, _)| {
            !h.contains('*')
                && (h == host
                    || addrs
                        .iter()
                        .any(|a| h.trim_matches(['[', ']']) == a.to_string()))
        }),
        _ => false,
    })
}

impl NetHooks {
    fn deny(log: &StepLog, denials: &Mutex<Vec<String>>, message: String) -> Error {
        log.emit(
            Level::Error,
            Source::Step,
            &format!("denied: {message}"),
            &[],
        );
        denials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
        Error::HttpRequestDenied
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

impl WasiHttpHooks for NetHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let (grants, user, log, denials, who) = (
            self.grants.clone(),
            self.user_grants.clone(),
            self.log.clone(),
            self.denials.clone(),
            self.who.clone(),
        );
        Box::new(async move {
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
            let host = uri
                .host()
                .unwrap_or("")
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            let port = uri
                .port_u16()
                .or_else(|| default_port(&scheme))
                .unwrap_or(0);
            let origin = format!("{scheme}://{host}:{port}");
            if !grants.allows(&Capability::Net(origin.clone())) {
                return Err(Self::deny(
                    &log,
                    &denials,
                    format!(
                        "{who} may not reach {origin}: capability `net:{origin}` was not granted (a plugin must declare it and be run with `--allow net:{origin}`)"
                    ),
                ));
            }
            let addrs: Vec<IpAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(a) => a.map(|s| s.ip()).collect(),
                Err(_) => return Err(Error::DestinationNotFound),
            };
            if let Some(ip) = addrs.iter().find(|a| special(**a))
                && !explicitly_granted(&user, &host, &addrs)
            {
                return Err(Self::deny(
                    &log,
                    &denials,
                    format!(
                        "{who} may not reach {origin}: `{host}` resolves to {ip}, a loopback, link-local or metadata address; grant it by name to allow it: `--allow net:{scheme}://{ip}:{port}`"
                    ),
                ));
            }
            // Connect to the address just checked, not to whatever a second lookup returns
            // (DNS rebinding). Plain HTTP only: the Host header keeps the name. For HTTPS
            // the connection resolves the name again, but a rebound address would also have
            // to present a certificate for that name, which internal services cannot.
            let mut request = request;
            // IPv4 first: servers on loopback names usually listen on 127.0.0.1 only.
            if scheme == "http"
                && let Some(ip) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first())
            {
                *request.uri_mut() = pin(&uri, *ip, port)?;
            }
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// `uri` with its authority replaced by `ip:port`.
fn pin(uri: &http::Uri, ip: IpAddr, port: u16) -> Result<http::Uri, Error> {
    let authority = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(
        authority
            .parse()
            .map_err(|_| Error::InternalError(Some("pinning the address".into())))?,
    );
    http::Uri::from_parts(parts)
        .map_err(|_| Error::InternalError(Some("pinning the address".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_uris_keep_scheme_path_and_query() {
        let uri: http::Uri = "http://example.test:8080/a/b?x=1".parse().unwrap();
        let pinned = pin(&uri, "93.184.216.34".parse().unwrap(), 8080).unwrap();
        assert_eq!(pinned.to_string(), "http://93.184.216.34:8080/a/b?x=1");
        let pinned = pin(&uri, "2606:4700::1111".parse().unwrap(), 80).unwrap();
        assert_eq!(pinned.to_string(), "http://[2606:4700::1111]:80/a/b?x=1");
    }

    #[test]
    fn special_addresses() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(special(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(!special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn explicit_grants_name_the_host() {
        let g = Grants::new([
            "net:*".parse().unwrap(),
            "net:http://127.0.0.1:*".parse().unwrap(),
        ]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(explicitly_granted(&g, "127.0.0.1", &[lo]));
        assert!(
            explicitly_granted(&g, "localhost", &[lo]),
            "an address granted by name covers a name resolving to it"
        );
        assert!(!explicitly_granted(
            &Grants::new(["net:*".parse().unwrap()]),
            "localhost",
            &[lo]
        ));
    }
}
