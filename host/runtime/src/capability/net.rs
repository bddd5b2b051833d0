//! Outgoing HTTP (`wasi:http/outgoing-handler`) on the step's terms.
//!
//! Every request goes through [`NetHooks::send_request`], the one choke point:
//! 1. its `scheme://host:port` must be covered by the step's effective `net` grants;
//! 2. the host is resolved, and if any address is loopback, link-local (cloud metadata
//!    lives there), unspecified, private, shared or one of the machine's own, the request
//!    is refused unless the user granted that host or address explicitly (a grant with no
//!    wildcard in its host) — so `net:*` or `net:https://*.example.com` cannot be turned
//!    against the machine itself or its private networks by DNS;
//! 3. at most [`MAX_IN_FLIGHT`] requests of a step are in flight at once.
//!
//! A refusal is logged at error level with the fix and recorded, so the step's failure
//! can say why; the guest sees `HTTP-request-denied`. The request is then sent by
//! Hoist's own connector (`connect.rs`) to the address that was checked.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hoist_policy::{Capability, Grants, HostEnv, default_port, split_origin};
use http_body_util::BodyExt;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

mod connect;
mod lookup;
mod proxy;
mod sockets;

pub use lookup::{Lookup, add_to_linker as add_lookup_to_linker};
pub use sockets::attach as attach_sockets;

use crate::bindings::Level;
use crate::capability::log::{Source, StepLog};
use crate::capability::setup::{StepInfo, StepSetup};

/// The state of `wasi:http` for one step: wasi-http's context and the step's hooks.
pub struct NetCtx {
    http: WasiHttpCtx,
    hooks: NetHooks,
}

impl NetCtx {
    /// The network capability of a step: its grants, nothing in flight, no denials.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            http: WasiHttpCtx::default(),
            hooks: NetHooks {
                grants: setup.grants.clone(),
                user_grants: setup.user_grants.clone(),
                log: setup.log.clone(),
                info: setup.info.clone(),
                denials: Default::default(),
                in_flight: Default::default(),
                env: setup.env.clone(),
            },
        }
    }

    /// wasi-http's view of the store: this state and the store's resource table.
    pub fn view<'a>(&'a mut self, table: &'a mut ResourceTable) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table,
            hooks: &mut self.hooks,
        }
    }

    /// What was refused so far (`; `-separated), if anything: why the step failed.
    pub fn denials(&self) -> Option<String> {
        let d = self.hooks.denials.lock().unwrap_or_else(|p| p.into_inner());
        (!d.is_empty()).then(|| d.join("; "))
    }
}

/// Link `wasi:http`'s outgoing handler and types; requests reach [`NetHooks`] through
/// the store's [`WasiHttpView`] (composed from [`NetCtx::view`]).
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// The step's network policy, as wasi-http hooks.
struct NetHooks {
    /// What the step may reach (its declarations, all granted).
    grants: Arc<Grants>,
    /// What the user granted (for the explicit-grant rule of special addresses).
    user_grants: Arc<Grants>,
    /// Where denials are logged.
    log: StepLog,
    /// Who the step is, for messages.
    info: Arc<StepInfo>,
    /// Denials so far, for the step's error.
    denials: Arc<Mutex<Vec<String>>>,
    /// Requests of this step in flight (connecting or streaming a body).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The host environment (proxy settings).
    env: HostEnv,
}

/// Requests one step may have in flight. The storage steps keep 8; each holds a socket
/// (a file descriptor of the host's), so a plugin cannot hold thousands.
pub const MAX_IN_FLIGHT: usize = 64;

/// Counts a request in flight until dropped.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Addresses that reach this machine or its private networks rather than the internet:
/// loopback, link-local (incl. 169.254.169.254 metadata), unspecified and `0.0.0.0/8`,
/// private (RFC 1918, `fc00::/7`), shared (`100.64.0.0/10`), and any address of the
/// machine's own interfaces (a server bound to `::` answers on all of them).
pub fn special(ip: IpAddr) -> bool {
    let by_range = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_private()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .or_else(|| v6.to_ipv4_compat_nonzero())
                    .is_some_and(|v4| special(IpAddr::V4(v4)))
        }
    };
    by_range || local_address(ip)
}

trait Ipv4Compat {
    fn to_ipv4_compat_nonzero(&self) -> Option<std::net::Ipv4Addr>;
}

impl Ipv4Compat for std::net::Ipv6Addr {
    /// `::a.b.c.d` (deprecated IPv4-compatible form), other than `::` and `::1`.
    fn to_ipv4_compat_nonzero(&self) -> Option<std::net::Ipv4Addr> {
        let s = self.segments();
        (s[..6].iter().all(|&x| x == 0) && (s[6] != 0 || s[7] > 1)).then(|| {
            std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8)
        })
    }
}

/// Whether `ip` is one of this machine's own addresses: only those can be bound.
fn local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
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

/// `step `x` (plugin)`, for messages.
struct Who<'a>(&'a StepInfo);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step `{}` ({})", self.0.name, self.0.plugin)
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

/// What a request is checked against (the hooks' state, owned by its future).
struct Policy {
    grants: Arc<Grants>,
    user: Arc<Grants>,
    log: StepLog,
    denials: Arc<Mutex<Vec<String>>>,
    info: Arc<StepInfo>,
    env: HostEnv,
}

/// Where a request may go: its origin's parts and the addresses checked.
struct Destination {
    scheme: String,
    host: String,
    port: u16,
    addrs: Vec<IpAddr>,
}

impl Policy {
    fn deny(&self, message: String) -> Error {
        NetHooks::deny(&self.log, &self.denials, message)
    }

    /// The request's `scheme://host:port` granted, its name resolved, and none of its
    /// addresses special unless the user granted the host by name.
    async fn check(&self, uri: &http::Uri) -> Result<Destination, Error> {
        let who = Who(&self.info);
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
        if !self.grants.allows(&Capability::Net(origin.clone())) {
            return Err(self.deny(format!(
                "{who} may not reach {origin}: capability `net:{origin}` was not granted (a plugin must declare it and be granted it)"
            )));
        }
        // A name this machine cannot resolve may still be reached through a proxy,
        // which resolves it (behind a proxy, DNS often knows internal names only).
        let addrs: Vec<IpAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.map(|s| s.ip()).collect(),
            Err(_) if proxy::proxied(&self.env, &scheme, &host) => Vec::new(),
            Err(_) => return Err(Error::DestinationNotFound),
        };
        if let Some(ip) = addrs.iter().find(|a| special(**a))
            && !explicitly_granted(&self.user, &host, &addrs)
        {
            return Err(self.deny(format!(
                "{who} may not reach {origin}: `{host}` resolves to {ip}, an address of this machine or of a private network (loopback, link-local or metadata, private, shared, or one of its own); grant it by name to allow it: `net:{scheme}://{host}:{port}`"
            )));
        }
        Ok(Destination {
            scheme,
            host,
            port,
            addrs,
        })
    }
}

impl WasiHttpHooks for NetHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let policy = Policy {
            grants: self.grants.clone(),
            user: self.user_grants.clone(),
            log: self.log.clone(),
            denials: self.denials.clone(),
            info: self.info.clone(),
            env: self.env.clone(),
        };
        let counted = self
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        Box::new(async move {
            if counted >= MAX_IN_FLIGHT {
                let who = Who(&policy.info);
                return Err(policy.deny(format!(
                    "{who} may not have more than {MAX_IN_FLIGHT} requests in flight at once"
                )));
            }
            let dest = policy.check(request.uri()).await?;
            // Connect to the address just checked, not to whatever a second lookup returns
            // (DNS rebinding), for HTTPS too: TLS verifies the name the request used.
            // IPv4 first: servers on loopback names usually listen on 127.0.0.1 only.
            let ip = dest
                .addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or(dest.addrs.first())
                .copied();
            let target = connect::Target {
                ip,
                port: dest.port,
                host: &dest.host,
                tls: dest.scheme == "https",
                env: &policy.env,
            };
            let (res, io) = connect::send(request, options, target).await?;
            // The connection's task holds the count until it ends.
            let io = async move {
                let _guard = guard;
                io.await
            };
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "0.1.2.3",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:10.1.2.3",
            "::10.1.2.3",
        ] {
            assert!(special(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "100.128.0.1",
            "172.32.0.1",
        ] {
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
