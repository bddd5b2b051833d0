//! Raw sockets (`wasi:sockets`), on the same terms as `wasi:http`. Components built by
//! componentize-py import them (Python's `socket` module), so they are linked; what a
//! step can do with them:
//! - **TCP connect** to `ip:port` when a `net` grant covers `tcp://ip:port` (`net:*`,
//!   `net:tcp://10.0.0.5:5432`, `net:tcp://*:5432`), or names, without a wildcard, a
//!   host that resolves to that address (`net:tcp://db.internal:5432`: the socket only
//!   sees addresses, so the host resolves the granted name and compares). An address of
//!   this machine or of a private network needs that explicit grant, as for HTTP.
//! - **Name lookup** only of a name a `net` grant covers (`lookup.rs`: a lookup is
//!   itself traffic, to the resolver).
//! - Never: listening, accepting, binding a chosen address, UDP (a step is a client).
//!
//! A refusal is logged with the fix and recorded with the step's other network
//! denials, so its failure names the grant; the guest sees `access-denied`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hoist_policy::{Capability, Grants, split_origin};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use super::{NetCtx, NetHooks, Who, explicitly_granted, special};
use crate::capability::log::StepLog;
use crate::capability::setup::StepInfo;

/// What a socket address is checked against (cloned into each check).
#[derive(Clone)]
struct SocketPolicy {
    grants: Arc<Grants>,
    user: Arc<Grants>,
    log: StepLog,
    info: Arc<StepInfo>,
    denials: Arc<Mutex<Vec<String>>>,
}

/// Give `wasi` the step's socket policy (see the module's documentation).
pub fn attach(wasi: &mut WasiCtxBuilder, net: &NetCtx) {
    let hooks = &net.hooks;
    let policy = SocketPolicy {
        grants: hooks.grants.clone(),
        user: hooks.user_grants.clone(),
        log: hooks.log.clone(),
        info: hooks.info.clone(),
        denials: hooks.denials.clone(),
    };
    let any_net = policy
        .grants
        .iter()
        .any(|g| matches!(g, Capability::Net(_)));
    // Lookups pass wasmtime's switch here and are checked name by name in `lookup.rs`.
    wasi.allow_tcp(any_net)
        .allow_udp(false)
        .allow_ip_name_lookup(any_net);
    wasi.socket_addr_check(move |addr, use_| {
        let policy = policy.clone();
        Box::pin(async move { policy.check(addr, use_).await })
    });
}

impl SocketPolicy {
    async fn check(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let who = Who(&self.info);
        match use_ {
            SocketAddrUse::TcpConnect => {}
            // The implicit bind of a connect: any local address, a port of the system's.
            SocketAddrUse::TcpBind if addr.ip().is_unspecified() && addr.port() == 0 => {
                return true;
            }
            _ => {
                self.deny(format!(
                    "{who} may not bind, listen or use UDP ({use_:?} {addr}): a step's sockets may only connect out"
                ));
                return false;
            }
        }
        let (ip, port) = (addr.ip(), addr.port());
        let origin = format!("tcp://{}:{port}", host_of(ip));
        if self.grants.allows(&Capability::Net(origin.clone())) {
            if !special(ip) || explicitly_granted(&self.user, &ip.to_string(), &[ip]) {
                return true;
            }
            if self.granted_by_name(ip, port).await {
                return true;
            }
            self.deny(format!(
                "{who} may not connect to {origin}: {ip} is an address of this machine or of a private network; grant it explicitly to allow it: `net:{origin}`"
            ));
            return false;
        }
        if self.granted_by_name(ip, port).await {
            return true;
        }
        self.deny(format!(
            "{who} may not connect to {origin}: capability `net:{origin}` was not granted (a socket is checked by address; a grant naming a host, `net:tcp://HOST:{port}`, covers the addresses HOST resolves to)"
        ));
        false
    }

    /// Whether the user granted, without a wildcard, a host that resolves to `ip` for
    /// `tcp` (or any scheme) on `port`, and the step's declarations cover that host.
    async fn granted_by_name(&self, ip: IpAddr, port: u16) -> bool {
        for g in self.user.iter() {
            let Capability::Net(pattern) = g else {
                continue;
            };
            let Some((scheme, host, p)) = split_origin(pattern) else {
                continue;
            };
            let named = format!("tcp://{host}:{port}");
            if host.contains('*')
                || !(scheme == "tcp" || scheme == "*")
                || p != Some(port)
                || !self.grants.allows(&Capability::Net(named))
            {
                continue;
            }
            let Ok(found) = tokio::net::lookup_host((host.as_str(), port)).await else {
                continue;
            };
            if found.map(|a| a.ip()).any(|a| a == ip) {
                return true;
            }
        }
        false
    }

    fn deny(&self, message: String) {
        NetHooks::deny(&self.log, &self.denials, message);
    }
}

/// An address as a URL host (IPv6 in brackets).
fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
