//! What a step's store holds: its WASI context, its identity and working directory, its
//! effective grants, its log, and the memory limiter. One per step run, then dropped.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::capability::log::StepLog;
use crate::runtime::policy::{Capability, Grants};

/// Who the step is.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// Display name (the name written in the project file, or the plugin's name).
    pub name: String,
    /// The plugin's own name, from `describe()`.
    pub plugin: String,
    /// The `id` given in the project file.
    pub id: Option<String>,
    /// The run this step belongs to.
    pub run_id: String,
    /// Whether the plugin is built in (affects the hint in denials).
    pub builtin: bool,
}

/// The store data of one step run.
pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) info: Arc<StepInfo>,
    pub(crate) cwd: PathBuf,
    pub(crate) grants: Arc<Grants>,
    pub(crate) log: StepLog,
    /// The preopened directories, and whether each is writable: the only places host
    /// calls acting on paths (git) may touch.
    pub(crate) roots: Vec<(PathBuf, bool)>,
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) net: crate::capability::net::NetHooks,
}

impl StepState {
    /// The message for a denied use of `cap`, saying which step, what, and how to fix it.
    pub(crate) fn denial(&self, cap: &Capability, what: &str) -> String {
        let who = &self.info.name;
        let plugin = &self.info.plugin;
        if self.info.builtin {
            format!(
                "step `{who}` ({plugin}) may not {what}: the built-in step does not declare capability `{cap}`"
            )
        } else {
            format!(
                "step `{who}` ({plugin}) may not {what}: capability `{cap}` was not granted. \
                 A plugin may only use what it declares in describe() and you grant; to allow \
                 this, declare `{cap}` in the plugin and run with `--allow {cap}`"
            )
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for StepState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.net,
        }
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

// The shared `types` interface has no functions.
impl crate::bindings::hoist::step::types::Host for StepState {}
