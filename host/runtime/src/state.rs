//! What a step's store holds: the composition of its capabilities' states (each prepared
//! from the one [`StepSetup`] of the run), its WASI context and resource table, and the
//! memory limiter. One per step run, then dropped.
//!
//! A capability is added here with one field, its `prepare` in [`StepState::new`] and
//! its `add_to_linker` in [`StepState::add_to_linker`]; nothing here names its fields.

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::hoist::step::types;
use crate::capability::context::{self, ContextCtx};
use crate::capability::docker::{self, DockerCtx};
use crate::capability::git::{self, GitCtx};
use crate::capability::log::{self, LogCtx};
use crate::capability::net::{self, NetCtx};
use crate::capability::process::{self, ProcessCtx};
pub use crate::capability::setup::{StepInfo, StepSetup};
use crate::capability::stdio::StdioCtx;

/// The store data of one step run.
pub struct StepState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) context: ContextCtx,
    log: LogCtx,
    process: ProcessCtx,
    git: GitCtx,
    docker: DockerCtx,
    pub(crate) net: NetCtx,
    pub(crate) stdio: StdioCtx,
}

impl StepState {
    /// The state of a run: every capability prepared from `setup`, and a WASI context
    /// with the step's directories, granted environment and output streams. Fails only
    /// when a directory cannot be opened.
    pub(crate) fn new(setup: &StepSetup) -> Result<Self, String> {
        let stdio = StdioCtx::prepare(setup);
        let net = NetCtx::prepare(setup);
        Ok(Self {
            wasi: wasi_ctx(setup, &stdio, &net)?,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: setup.memory,
                exceeded: false,
            },
            context: ContextCtx::prepare(setup),
            log: LogCtx::prepare(setup),
            process: ProcessCtx::prepare(setup),
            git: GitCtx::prepare(setup),
            docker: DockerCtx::prepare(setup),
            net,
            stdio,
        })
    }

    /// Link WASI, `wasi:http` and every `hoist:step` interface, each to its own state.
    pub(crate) fn add_to_linker(linker: &mut Linker<Self>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        net::add_to_linker(linker)?;
        // Over wasmtime's: a name is looked up only when a grant names its host.
        net::add_lookup_to_linker(linker, |s| {
            let sockets = wasmtime_wasi::sockets::WasiSocketsCtxView {
                ctx: s.wasi.sockets(),
                table: &mut s.table,
            };
            net::Lookup::new(sockets, &s.net)
        })?;
        types::add_to_linker::<Self, Types>(linker, |_| Types)?;
        log::add_to_linker(linker, |s| &mut s.log)?;
        context::add_to_linker(linker, |s| &mut s.context)?;
        process::add_to_linker(linker, |s| s.process.view(s.context.cwd()))?;
        git::add_to_linker(linker, |s| s.git.view(s.context.cwd()))?;
        docker::add_to_linker(linker, |s| s.docker.view(s.context.cwd()))?;
        Ok(())
    }

    /// A fresh store for this state: memory capped, yielding at every epoch tick (so a
    /// timeout fires even while the guest spins without calling the host).
    pub(crate) fn into_store(self, engine: &wasmtime::Engine) -> Store<Self> {
        let mut store = Store::new(engine, self);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// The step's WASI context: its directories preopened at their host paths, the granted
/// environment, the guest's stdout and stderr to its log, its sockets on the network
/// policy's terms.
fn wasi_ctx(setup: &StepSetup, stdio: &StdioCtx, net: &NetCtx) -> Result<WasiCtx, String> {
    let mut wasi = WasiCtxBuilder::new();
    net::attach_sockets(&mut wasi, net);
    // Run filesystem calls on this thread: a step's file operations are small and
    // local, and a hop to the blocking pool per call cost ~10× the whole
    // instantiate + call of a trivial step (README, benchmark 1).
    wasi.allow_blocking_current_thread(true);
    stdio.attach(&mut wasi);
    let env = setup.grants.visible_env(&setup.env);
    if !env.is_empty() {
        wasi.envs(&env);
    }
    for (dir, writable) in setup.roots.iter() {
        let perms = if *writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        wasi.preopened_dir(dir, dir.to_string_lossy(), perms)
            .map_err(|e| format!("cannot open directory {}: {e}", dir.display()))?;
    }
    Ok(wasi.build())
}

impl wasmtime_wasi_http::WasiHttpView for StepState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        self.net.view(&mut self.table)
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The shared `types` interface: no functions, no state.
struct Types;

impl HasData for Types {
    type Data<'a> = Types;
}

impl types::Host for Types {}

/// Caps linear memory and remembers whether the cap was hit, so a trap can be reported
/// as "out of memory" rather than as whatever the guest did next.
#[derive(Debug)]
pub struct MemoryLimiter {
    pub(crate) limit: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // Trap at once: a Rust guest would otherwise abort with a less useful message.
            return Err(wasmtime::Error::msg("memory limit reached"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any real plugin.
        Ok(desired <= 1 << 20)
    }
}
