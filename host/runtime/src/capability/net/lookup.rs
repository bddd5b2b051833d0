//! Name lookups (`wasi:sockets/ip-name-lookup`), served by Hoist rather than wasmtime.
//!
//! wasmtime's switch for lookups is all or nothing, and a lookup is traffic: the name
//! reaches the machine's resolver and, through it, whoever serves that domain, so
//! `secret.attacker.example` carries a secret out on a step granted only
//! `net:https://api.example.invalid`. Here a name is looked up only when one of the
//! step's `net` grants names that host or a wildcard covering it
//! ([`Grants::allows_lookup`]); any other name is refused with `access-denied` before
//! anything is sent, logged with the fix and recorded with the step's other denials.
//! The addresses a lookup returns are still checked, one by one, at connect.

use hoist_policy::text::sanitize;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use super::{NetCtx, NetHooks, Who};

/// What one lookup call sees: wasmtime's sockets (which do the lookup once the name
/// is allowed) and the step's network policy.
pub struct Lookup<'a> {
    sockets: WasiSocketsCtxView<'a>,
    net: &'a NetCtx,
}

impl<'a> Lookup<'a> {
    /// The view a call gets, from the store's parts.
    pub fn new(sockets: WasiSocketsCtxView<'a>, net: &'a NetCtx) -> Self {
        Self { sockets, net }
    }
}

/// Marks [`Lookup`] as the data of the linked interface.
pub struct Lookups;

impl HasData for Lookups {
    type Data<'a> = Lookup<'a>;
}

/// Link Hoist's `ip-name-lookup` over wasmtime's (which `add_to_linker_async` added).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Lookup<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = ip_name_lookup::add_to_linker::<T, Lookups>(linker, get);
    linker.allow_shadowing(false);
    linked
}

/// Names longer than this are cut in messages (a name may be 253 bytes).
const SHOWN: usize = 80;

impl ip_name_lookup::Host for Lookup<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        let hooks = &self.net.hooks;
        if !hooks.grants.allows_lookup(&name) {
            refuse(hooks, &name);
            return Err(ErrorCode::AccessDenied.into());
        }
        ip_name_lookup::Host::resolve_addresses(&mut self.sockets, network, name)
    }
}

fn refuse(hooks: &NetHooks, name: &str) {
    let who = Who(&hooks.info);
    let mut shown: String = sanitize(name).chars().take(SHOWN).collect();
    if name.chars().count() > SHOWN {
        shown.push('…');
    }
    let message = format!(
        "{who} may not look up the name `{shown}`: no `net` grant names that host (a \
         lookup is itself traffic, to the resolver); grant the host it is for, e.g. \
         `net:tcp://{shown}:PORT` or `net:https://{shown}`"
    );
    NetHooks::deny(&hooks.log, &hooks.denials, message);
}

impl HostResolveAddressStream for Lookup<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        self.sockets.resolve_next_address(stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

/// The `network` types the interface uses, as wasmtime serves them.
impl network::Host for Lookup<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for Lookup<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, this)
    }
}
