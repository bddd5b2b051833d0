//! Hoist's step runtime (crate `hoist-runtime`): where a plugin is compiled and where
//! each capability is enforced.
//!
//! - [`bindings`]: the host side of the `hoist:step` WIT world (generated, one place);
//! - [`capability`]: one room per host interface a step can import (log, context, git,
//!   net, process) plus the guest's stdio; each owns its state, linker entry and checks;
//! - [`engine`], [`cache`] (compiled components on disk, MAC'd), [`limits`], [`policy`]
//!   (grants, from `hoist-policy`), [`state`] (a step's store data, composed of the rooms);
//! - [`Runtime`]: one engine and linker per process, one `InstancePre` per component,
//!   a fresh `Store` per step run.
//!
//! Data flow of [`Runtime::run`]: grants checked against the plugin's declared
//! capabilities → WASI context built (preopens, env, stdio) → store with memory limiter
//! and epoch yield → instantiate + `run(inputs)` under a wall-clock timeout → outputs, or
//! a [`StepRunError`] naming the step.
//!
//! It knows nothing of prefect.yaml projects, templates or the store: `hoist-runner`
//! drives it, `hoist-builtins` supplies the embedded components.
//!
//! ```no_run
//! # async fn demo(bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use hoist_runtime::{Runtime, RuntimeConfig, StepRequest};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let plugin = runtime.load(bytes, "my_step.wasm", false).await?;
//! let request = StepRequest::new("my_step", std::env::current_dir()?)
//!     .inputs(serde_json::json!({ "name": "world" }));
//! let outcome = runtime.run(&plugin, request).await?;
//! println!("{}", outcome.outputs);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
// No function in library code over 80 lines (clippy.toml): a CI check.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod bindings;
pub mod cache;
pub mod capability;
pub mod engine;
pub mod error;
pub mod limits;
pub mod policy;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::bindings::{StepError, StepPre};
use crate::capability::log::{LogSink, NullSink, Redactor, StepLog};
pub use cache::{ComponentCache, Loaded};
pub use engine::Allocator;
pub use error::{ErrorKind, StepRunError};
pub use hoist_policy::HostEnv;
use limits::{DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT, MAX_INSTANCES};
pub use policy::{Capability, Grants};
use state::{StepInfo, StepSetup, StepState};

/// How to build a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are kept.
    pub cache: ComponentCache,
    /// Instance allocator (pooling falls back to on-demand where it cannot reserve).
    pub allocator: Allocator,
    /// Step instances alive at once; more wait for a slot. With the pooling allocator
    /// this many slots are set up when the runtime starts, which costs time: a CLI that
    /// runs steps one after another wants few, a worker running many flows wants many.
    pub max_instances: u32,
    /// Hoist's own directories (its home; the cache's is added): no plugin is given a
    /// directory that is, holds or lies inside one of them.
    pub protected: Vec<PathBuf>,
    /// The host environment steps run in: what `env:` grants select from, the `PATH`
    /// granted programs (and git) are found on, proxy settings for `wasi:http`. (TLS
    /// roots from `SSL_CERT_FILE`/`SSL_CERT_DIR` are read from the process once.)
    pub env: HostEnv,
}

impl Default for RuntimeConfig {
    /// No disk cache, the pooling allocator (faster on every figure of the runtime
    /// benchmark, README "Benchmarks") with [`MAX_INSTANCES`] slots, nothing protected,
    /// an empty host environment (no `PATH`: no program is found): what an embedder gets
    /// without reading the process environment. The `hoist`
    /// program uses [`RuntimeConfig::from_env`].
    fn default() -> Self {
        Self {
            cache: ComponentCache::disabled(),
            allocator: Allocator::Pooling,
            max_instances: MAX_INSTANCES,
            protected: Vec::new(),
            env: HostEnv::empty(),
        }
    }
}

impl RuntimeConfig {
    /// The configuration the environment asks for: the disk cache at its place
    /// ([`hoist_policy::paths::cache`]), `HOIST_ALLOCATOR` (`pooling` | `on-demand`),
    /// `HOIST_MAX_INSTANCES`, Hoist's home protected, and this process's environment as
    /// the steps' host environment.
    pub fn from_env() -> Self {
        let cache = ComponentCache::default_dir()
            .map(ComponentCache::at)
            .unwrap_or_else(ComponentCache::disabled);
        let allocator = std::env::var("HOIST_ALLOCATOR")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Allocator::Pooling);
        let max_instances = std::env::var("HOIST_MAX_INSTANCES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(MAX_INSTANCES);
        Self {
            cache,
            allocator,
            max_instances,
            protected: vec![hoist_policy::paths::home()],
            env: HostEnv::from_process(),
        }
    }

    /// [`RuntimeConfig::from_env`] for a program that runs its steps one after another
    /// (a CLI command, an install's inspection): a small pool, which starts fast (a pool
    /// of 1024 slots took ~3 ms to set up at every start), unless `HOIST_MAX_INSTANCES`
    /// says otherwise.
    pub fn one_at_a_time() -> Self {
        let mut config = Self::from_env();
        if std::env::var_os("HOIST_MAX_INSTANCES").is_none() {
            config.max_instances = ONE_AT_A_TIME_INSTANCES;
        }
        config
    }
}

/// Instance slots of [`RuntimeConfig::one_at_a_time`].
const ONE_AT_A_TIME_INSTANCES: u32 = 4;

/// What a plugin says about itself (its `describe()`), in host types.
#[derive(Clone, Debug)]
pub struct Description {
    /// Short name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// One line.
    pub summary: String,
    /// JSON Schema of the inputs.
    pub input_schema: Value,
    /// Declared capabilities.
    pub capabilities: Vec<Capability>,
}

/// A loaded, ready-to-instantiate plugin.
pub struct Plugin {
    pre: StepPre<StepState>,
    /// Its description.
    pub description: Description,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Whether it ships inside `hoist`.
    pub builtin: bool,
    /// How the compiled form was obtained.
    pub loaded: Loaded,
    /// Where it came from (built-in name or file path), for messages.
    pub origin: String,
    /// The `hoist:step` version it was built against (what its imports and exports name).
    pub wit_version: String,
}

/// The `hoist:step` WIT package version this host implements (`wit/step.wit`).
pub const WIT_VERSION: &str = "0.1.0";

/// Versions that link to each other: `0.MINOR` below 1.0, `MAJOR` from 1.0 (as
/// wasmtime's linker matches them).
fn wit_compat(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_string(),
        _ => version.to_string(),
    }
}

/// The `hoist:step` version `component` targets: the newest one its imports and exports
/// name ([`WIT_VERSION`] for a component that names none). One this host cannot link is
/// an error that says which versions are which.
fn targeted_wit(component: &Component, engine: &Engine) -> Result<String, String> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(n, _)| n.to_string())
        .chain(ty.exports(engine).map(|(n, _)| n.to_string()))
        .collect();
    let mut newest: Option<semver::Version> = None;
    for name in &names {
        let Some(rest) = name.strip_prefix("hoist:step/") else {
            continue;
        };
        let Some((_, version)) = rest.split_once('@') else {
            continue;
        };
        if wit_compat(version) != wit_compat(WIT_VERSION) {
            return Err(format!(
                "it was built for hoist:step@{version} (it names `{name}`), and this hoist runs \
                 steps built for hoist:step@{WIT_VERSION} ({}.x): rebuild it with the SDK for \
                 that version, or use a hoist that supports {version}",
                wit_compat(WIT_VERSION)
            ));
        }
        if let Ok(v) = semver::Version::parse(version) {
            newest = Some(newest.map_or(v.clone(), |n| n.max(v)));
        }
    }
    Ok(newest.map_or_else(|| WIT_VERSION.to_string(), |v| v.to_string()))
}

impl Plugin {
    /// The first capability this plugin declares that `grants` does not give (compared
    /// canonical, as [`Runtime::run`] does); `None` for a built-in step, which is
    /// granted what it declares. Lets a caller refuse a run before any step starts.
    pub fn ungranted(&self, grants: &Grants) -> Option<Capability> {
        let user = Grants::new(grants.iter().map(policy::canonical));
        first_missing(self, &self.declared(), &user).cloned()
    }

    /// Its declared capabilities, directories as they are on disk.
    fn declared(&self) -> Vec<Capability> {
        self.description
            .capabilities
            .iter()
            .map(policy::canonical)
            .collect()
    }
}

/// The first of `declared` (canonical) that `user` (canonical) does not give; none for a
/// built-in step.
fn first_missing<'a>(
    plugin: &Plugin,
    declared: &'a [Capability],
    user: &Grants,
) -> Option<&'a Capability> {
    if plugin.builtin {
        return None;
    }
    declared.iter().find(|c| !user.allows(c))
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("origin", &self.origin)
            .field("digest", &self.digest)
            .finish()
    }
}

/// Memory and time a step may use.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Linear memory cap in bytes.
    pub memory: usize,
    /// Wall-clock deadline, host calls included.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY_LIMIT,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One step to run.
#[derive(Clone)]
pub struct StepRequest {
    /// Display name.
    pub name: String,
    /// The project file's `id`.
    pub id: Option<String>,
    /// The run this step belongs to.
    pub run_id: String,
    /// Inputs (a JSON object).
    pub inputs: Value,
    /// Working directory (absolute); preopened read-write.
    pub cwd: PathBuf,
    /// The project directory; preopened read-write too when it differs from `cwd`.
    pub project_root: Option<PathBuf>,
    /// What the user granted (built-in steps get their declarations regardless).
    pub grants: Grants,
    /// Limits.
    pub limits: Limits,
    /// Where logs go.
    pub log: Arc<dyn LogSink>,
    /// Values to mask in logs and errors.
    pub secrets: Vec<String>,
}

impl StepRequest {
    /// A request with no inputs, no grants, default limits and logs dropped.
    pub fn new(name: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            id: None,
            run_id: new_run_id(),
            inputs: Value::Object(Default::default()),
            cwd: cwd.into(),
            project_root: None,
            grants: Grants::none(),
            limits: Limits::default(),
            log: Arc::new(NullSink),
            secrets: Vec::new(),
        }
    }

    /// Set the inputs.
    pub fn inputs(mut self, inputs: Value) -> Self {
        self.inputs = inputs;
        self
    }

    /// Set the grants.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Set the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Set the log sink.
    pub fn log(mut self, log: Arc<dyn LogSink>) -> Self {
        self.log = log;
        self
    }
}

/// A fresh run id: time and process, unique enough to tell runs apart in logs.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}-{:x}", now.as_micros(), std::process::id())
}

/// What a successful step left.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    /// The outputs the step returned.
    pub outputs: Value,
    /// The working directory after the step (changed by `set_working_directory`).
    pub cwd: PathBuf,
    /// Wall-clock time of instantiate + run.
    pub elapsed: Duration,
}

/// Whether a step's error reads like a write the filesystem refused (WASI's errors as
/// Rust and wasi-libc word them).
fn refused_write(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["permission denied", "not permitted", "read-only"]
        .iter()
        .any(|s| m.contains(s))
}

/// What [`Runtime::sandbox_dirs`] decided for one step.
struct SandboxDirs {
    /// The working directory, canonical.
    cwd: PathBuf,
    /// Preopened directories and whether each is writable.
    roots: Vec<(PathBuf, bool)>,
    /// Set when a plugin's working directory was made read-only: added to its failure.
    read_only_note: Option<String>,
}

/// The runtime. Cheap to share (`Arc`); runs many steps concurrently.
pub struct Runtime {
    engine: Engine,
    allocator: Allocator,
    linker: Linker<StepState>,
    cache: ComponentCache,
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    slots: Semaphore,
    /// Hoist's own directories (canonical): never given to a plugin.
    protected: Vec<PathBuf>,
    /// Working directories already resolved: path → canonical path (see `resolve_dir`).
    resolved: Mutex<HashMap<PathBuf, PathBuf>>,
    /// The host environment steps run in.
    env: HostEnv,
}

impl Runtime {
    /// Build the engine, the linker and the cache.
    pub fn new(config: RuntimeConfig) -> wasmtime::Result<Self> {
        let max_instances = config.max_instances.max(1);
        let (engine, allocator) = engine::new_engine(config.allocator, max_instances)?;
        let mut linker = Linker::new(&engine);
        StepState::add_to_linker(&mut linker)?;
        let protected = config
            .protected
            .iter()
            .map(PathBuf::as_path)
            .chain(config.cache.dir())
            .map(policy::canonical_path)
            .collect();
        Ok(Self {
            engine,
            allocator,
            linker,
            cache: config.cache,
            loaded: Mutex::new(HashMap::new()),
            slots: Semaphore::new(max_instances as usize),
            protected,
            resolved: Mutex::new(HashMap::new()),
            env: config.env,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator actually in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// The component cache.
    pub fn cache(&self) -> &ComponentCache {
        &self.cache
    }

    /// Load a built-in step: component bytes embedded in the program, with the sha256
    /// the build computed (so nothing is hashed at start). A built-in is trusted as the
    /// host is (it may set its working directory anywhere it can write): pass only
    /// components you ship, e.g. `hoist-builtins`' (`hoist_runner::plan::load_builtin`).
    pub async fn load_builtin(
        &self,
        name: &str,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Arc<Plugin>, StepRunError> {
        self.load_digested(bytes, digest.to_string(), name, true)
            .await
    }

    /// Load a component file. While the file is unchanged since an earlier load (the
    /// cache remembers its digest by the file's identity), a cached compiled form is used
    /// without reading the file: reading and hashing an 18 MiB Python component was 40 %
    /// of a warm `hoist step run`.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<Plugin>, StepRunError> {
        let origin = path.display().to_string();
        if let Some(digest) = self.cache.remembered_digest(path) {
            if let Some(p) = self.already_loaded(&digest) {
                return Ok(p);
            }
            if let Some(component) = self.cache.load_cached(&self.engine, &digest) {
                return self
                    .prepare(component, Loaded::Cached, digest, &origin, false)
                    .await;
            }
        }
        let bytes = std::fs::read(path).map_err(|e| StepRunError {
            step: origin.clone(),
            plugin: origin.clone(),
            kind: ErrorKind::Load(format!("cannot read {origin}: {e}")),
        })?;
        let digest = cache::digest(&bytes);
        let plugin = self.load_digested(&bytes, digest, &origin, false).await?;
        self.cache.remember_digest(path, &plugin.digest);
        Ok(plugin)
    }

    /// Load component bytes: compiled form from memory, from the disk cache, or compiled
    /// now; then instantiated once to read its description.
    pub async fn load(
        &self,
        bytes: &[u8],
        origin: &str,
        builtin: bool,
    ) -> Result<Arc<Plugin>, StepRunError> {
        self.load_digested(bytes, cache::digest(bytes), origin, builtin)
            .await
    }

    /// Drop the loaded component with this digest (its compiled code stays in the disk
    /// cache): a long-lived runtime that loads many components once each, such as the
    /// registry's inspector, does not keep them all in memory.
    pub fn forget(&self, digest: &str) {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    fn already_loaded(&self, digest: &str) -> Option<Arc<Plugin>> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    async fn load_digested(
        &self,
        bytes: &[u8],
        digest: String,
        origin: &str,
        builtin: bool,
    ) -> Result<Arc<Plugin>, StepRunError> {
        if let Some(p) = self.already_loaded(&digest) {
            return Ok(p);
        }
        let (component, loaded) =
            self.cache
                .load(&self.engine, &digest, bytes)
                .map_err(|e| StepRunError {
                    step: origin.to_string(),
                    plugin: origin.to_string(),
                    kind: ErrorKind::Load(format!("not a valid WebAssembly component: {e:#}")),
                })?;
        self.prepare(component, loaded, digest, origin, builtin)
            .await
    }

    /// Link a compiled component, read its description, remember it by digest.
    async fn prepare(
        &self,
        component: Component,
        loaded: Loaded,
        digest: String,
        origin: &str,
        builtin: bool,
    ) -> Result<Arc<Plugin>, StepRunError> {
        let fail = |message: String| StepRunError {
            step: origin.to_string(),
            plugin: origin.to_string(),
            kind: ErrorKind::Load(message),
        };
        let wit_version = targeted_wit(&component, &self.engine).map_err(fail)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            fail(format!(
                "it imports something Hoist does not provide: {e:#}"
            ))
        })?;
        let pre = StepPre::new(pre)
            .map_err(|e| fail(format!("it is not a `hoist:step/step` component: {e:#}")))?;
        let description = self
            .describe(&pre)
            .await
            .map_err(|e| fail(format!("describe() failed: {e:#}")))?;
        let plugin = Arc::new(Plugin {
            pre,
            description,
            digest: digest.clone(),
            builtin,
            loaded,
            origin: origin.into(),
            wit_version,
        });
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, plugin.clone());
        Ok(plugin)
    }

    /// Call `describe()` in a store with no grants, no directories and logs dropped.
    async fn describe(&self, pre: &StepPre<StepState>) -> wasmtime::Result<Description> {
        let setup = StepSetup::describe(DEFAULT_MEMORY_LIMIT);
        let state = StepState::new(&setup).map_err(wasmtime::Error::msg)?;
        let mut store = state.into_store(&self.engine);
        let fut = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        };
        let d = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| wasmtime::Error::msg("describe() did not return within 10 s"))??;
        description(d)
    }

    /// `dir` with symlinks resolved, remembered: `realpath` costs a system call per
    /// component and a step's setup is on the path of every step. A remembered answer
    /// stays true until something could have swapped a component of the path for a
    /// symlink: a step that could write a directory above it, or any step that runs
    /// processes ([`Runtime::forget_under`], called when such a step starts and ends).
    fn resolve_dir(&self, dir: &Path) -> PathBuf {
        let mut seen = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(canonical) = seen.get(dir) {
            return canonical.clone();
        }
        let canonical = policy::canonical_path(dir);
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert(dir.to_path_buf(), canonical.clone());
        canonical
    }

    /// Forget what [`Runtime::resolve_dir`] remembered that a step with these
    /// directories (and processes, if it may run any) could invalidate: every path
    /// strictly below a directory it can write (it can replace what lies below), or all
    /// of them when it runs processes (they can write anywhere the user can).
    fn forget_under(&self, roots: &[(PathBuf, bool)], processes: bool) {
        let mut seen = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if processes {
            seen.clear();
            return;
        }
        let below = |p: &Path| {
            roots
                .iter()
                .any(|(root, writable)| *writable && p != root && p.starts_with(root))
        };
        seen.retain(|path, canonical| !below(path) && !below(canonical));
    }

    /// The directories a step is given, and which of them it may write.
    ///
    /// - The working directory, read-write; the project directory (when it differs),
    ///   read-write for built-in steps.
    /// - For plugins, the project directory is the user's code: it is read-only (and so is
    ///   a working directory that is or contains it) unless the user granted `write:` for
    ///   it. A plugin cannot rewrite `prefect.yaml` or plant configuration in the
    ///   project's `.git/`.
    /// - For plugins, no directory is given that is, contains or lies inside Hoist's own
    ///   directories (home, component cache): they hold host-owned git directories and
    ///   compiled code the host maps and runs.
    /// - Every path canonical, so what was checked is what is opened.
    fn sandbox_dirs(
        &self,
        plugin: &Plugin,
        req: &StepRequest,
        user: &Grants,
        grants: &Grants,
    ) -> Result<SandboxDirs, String> {
        let cwd = self.resolve_dir(&req.cwd);
        // The runner hands on the working directory a step left, canonical when it was
        // set. If it now resolves elsewhere, a symlink was planted in its place (by a
        // step that could write its parent): a plugin would be given wherever it points.
        if !plugin.builtin && cwd != req.cwd {
            return Err(format!(
                "its working directory {} now resolves to {}: a symlink was put in its \
                 place, and plugins are only given directories as they were set",
                req.cwd.display(),
                cwd.display()
            ));
        }
        let project = req.project_root.as_deref().map(policy::canonical_path);
        let holds_project = |d: &Path| project.as_deref().is_some_and(|p| p.starts_with(d));
        let user_writes = |d: &Path| user.allows(&Capability::WriteDir(d.to_path_buf()));
        let mut roots = Vec::new();
        let mut read_only_note = None;
        let cwd_writable = plugin.builtin || !holds_project(&cwd) || user_writes(&cwd);
        if !cwd_writable {
            read_only_note = Some(format!(
                "note: plugins get the project directory read-only; to let this one write \
                 in {}, grant `write:{}`",
                cwd.display(),
                cwd.display()
            ));
        }
        roots.push((cwd.clone(), cwd_writable));
        if let Some(root) = project.as_ref().filter(|r| !r.starts_with(&cwd)) {
            roots.push((root.clone(), plugin.builtin || user_writes(root)));
        }
        for (dir, writable) in grants.dirs() {
            roots.push((dir.to_path_buf(), writable));
        }
        if !plugin.builtin {
            for (dir, _) in &roots {
                if let Some(own) = self
                    .protected
                    .iter()
                    .find(|p| p.starts_with(dir) || dir.starts_with(p))
                {
                    return Err(format!(
                        "the plugin would be given {}, which is or holds Hoist's own \
                         directory {} (compiled components, git directories, the store); \
                         plugins never get it. Run the project from another directory, or \
                         move Hoist's directories (HOIST_HOME, HOIST_CACHE_DIR)",
                        dir.display(),
                        own.display()
                    ));
                }
            }
        }
        Ok(SandboxDirs {
            cwd,
            roots,
            read_only_note,
        })
    }

    /// Run one step in a fresh store: grants checked → the step's setup and state →
    /// instantiate and call under the timeout → the result classified.
    pub async fn run(
        &self,
        plugin: &Plugin,
        req: StepRequest,
    ) -> Result<StepOutcome, StepRunError> {
        let err = |kind: ErrorKind| StepRunError {
            step: req.name.clone(),
            plugin: plugin.description.name.clone(),
            kind,
        };
        let (user, grants) = check_grants(plugin, &req).map_err(err)?;
        let dirs = self
            .sandbox_dirs(plugin, &req, &user, &grants)
            .map_err(|m| err(ErrorKind::Denied(m)))?;
        // What this step could swap for a symlink is resolved afresh, now and after it.
        let processes = grants.iter().any(|c| matches!(c, Capability::Process(_)));
        let roots: Arc<[(PathBuf, bool)]> = dirs.roots.into();
        self.forget_under(&roots, processes);
        let _forget = Forget {
            runtime: self,
            roots: roots.clone(),
            processes,
        };
        let read_only_note = dirs.read_only_note;
        let setup = StepSetup {
            info: Arc::new(StepInfo {
                name: req.name.clone(),
                plugin: plugin.description.name.clone(),
                id: req.id.clone(),
                run_id: req.run_id.clone(),
                builtin: plugin.builtin,
            }),
            cwd: dirs.cwd,
            grants,
            user_grants: Arc::new(req.grants.clone()),
            roots,
            log: StepLog::new(
                &req.name,
                req.log.clone(),
                Redactor::new(req.secrets.iter().cloned()),
            ),
            memory: req.limits.memory,
            env: self.env.clone(),
        };
        let state = StepState::new(&setup).map_err(|m| err(ErrorKind::Setup(m)))?;
        let inputs = serde_json::to_string(&req.inputs).expect("JSON values always serialise");

        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| err(ErrorKind::Setup(e.to_string())))?;
        let start = Instant::now();
        let mut store = state.into_store(&self.engine);
        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance.call_run(&mut store, &inputs).await
        };
        let result = tokio::time::timeout(req.limits.timeout, call).await;
        let elapsed = start.elapsed();
        store.data().stdio.flush();
        let ended = Ended {
            state: store.data(),
            limits: &req.limits,
            redactor: setup.log.redactor(),
            read_only_note: read_only_note.as_deref(),
        };
        let outputs = ended.classify(result).map_err(err)?;
        let cwd = store.data_mut().context.take_cwd();
        Ok(StepOutcome {
            outputs,
            cwd,
            elapsed,
        })
    }
}

/// Calls [`Runtime::forget_under`] when a step ends, however it ends.
struct Forget<'a> {
    runtime: &'a Runtime,
    roots: Arc<[(PathBuf, bool)]>,
    processes: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.runtime.forget_under(&self.roots, self.processes);
    }
}

/// The capabilities a plugin is given: the user's grants (canonical), and what it
/// declared (canonical), or the first declaration the user did not grant. Default deny:
/// a plugin gets what it declares, and only if it was all granted; built-in steps are
/// granted their declarations.
fn check_grants(plugin: &Plugin, req: &StepRequest) -> Result<(Grants, Arc<Grants>), ErrorKind> {
    // Directory capabilities are compared and preopened as the directories they are
    // on disk: a symlink planted inside a granted directory cannot widen a grant.
    // Each canonicalised once: this is on every step's path.
    let declared = plugin.declared();
    let user = Grants::new(req.grants.iter().map(policy::canonical));
    if let Some(missing) = first_missing(plugin, &declared, &user) {
        return Err(ErrorKind::NotGranted {
            capability: missing.to_string(),
        });
    }
    Ok((user, Arc::new(Grants::new(declared))))
}

/// A plugin's `describe()` in host types, refused if a text is too long; every text
/// made one printable line (shown in listings, plans and errors).
fn description(
    d: crate::bindings::hoist::step::types::Description,
) -> wasmtime::Result<Description> {
    use limits::{MAX_NAME_BYTES, MAX_SCHEMA_BYTES, MAX_SUMMARY_BYTES};
    if d.input_schema.len() > MAX_SCHEMA_BYTES {
        return Err(wasmtime::Error::msg(format!(
            "its input schema is {} KiB; at most {} KiB",
            d.input_schema.len() >> 10,
            MAX_SCHEMA_BYTES >> 10
        )));
    }
    for (what, text, max) in [
        ("name", &d.name, MAX_NAME_BYTES),
        ("version", &d.version, MAX_NAME_BYTES),
        ("summary", &d.summary, MAX_SUMMARY_BYTES),
    ] {
        if text.len() > max {
            return Err(wasmtime::Error::msg(format!(
                "its {what} is {} bytes long; at most {max}",
                text.len()
            )));
        }
    }
    let clean = |s: String| crate::capability::log::sanitize(&s).into_owned();
    Ok(Description {
        name: clean(d.name),
        version: clean(d.version),
        summary: clean(d.summary),
        input_schema: serde_json::from_str(&d.input_schema).unwrap_or(Value::Null),
        capabilities: d
            .capabilities
            .into_iter()
            .map(policy::from_wit)
            .collect::<Result<_, _>>()?,
    })
}

/// What a finished (or timed-out) call left, to say how the step ended.
struct Ended<'a> {
    state: &'a StepState,
    limits: &'a Limits,
    redactor: &'a Redactor,
    read_only_note: Option<&'a str>,
}

/// The result of `run(inputs)` under the timeout.
type CallResult = Result<wasmtime::Result<Result<String, StepError>>, tokio::time::error::Elapsed>;

impl Ended<'_> {
    /// The step's outputs, or why it failed: timeout, out of memory, panic, trap, a
    /// denial it failed after, its own error, or outputs too large or not JSON.
    fn classify(&self, result: CallResult) -> Result<Value, ErrorKind> {
        let redact = |s: &str| self.redactor.redact(s).into_owned();
        let text = match result {
            Err(_) => return Err(ErrorKind::Timeout(self.limits.timeout)),
            Ok(Err(trap)) => return Err(self.trapped(&trap)),
            // A step that fails after the sandbox refused it something failed because
            // of that: say what was refused and how to allow it.
            Ok(Ok(Err(step_error))) => match self.state.net.denials() {
                Some(d) => return Err(ErrorKind::Denied(redact(&d))),
                None => return Err(self.failed(step_error)),
            },
            Ok(Ok(Ok(text))) => text,
        };
        if text.len() > limits::MAX_OUTPUT_BYTES {
            return Err(ErrorKind::BadOutput(format!(
                "they are {} KiB; a step's outputs may be at most {} KiB (write large \
                 results to a file and return its path)",
                text.len() >> 10,
                limits::MAX_OUTPUT_BYTES >> 10
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| ErrorKind::BadOutput(format!("they are not valid JSON: {e}")))
    }

    fn trapped(&self, trap: &wasmtime::Error) -> ErrorKind {
        if self.state.limiter.exceeded {
            return ErrorKind::OutOfMemory(self.limits.memory);
        }
        if let Some(msg) = self.state.stdio.panic_message() {
            return ErrorKind::Panicked(self.redactor.redact(&msg).into_owned());
        }
        let reason = match trap.downcast_ref::<wasmtime::Trap>() {
            Some(t) => t.to_string(),
            None => format!("{trap:#}"),
        };
        ErrorKind::Trapped(self.redactor.redact(&reason).into_owned())
    }

    fn failed(&self, step_error: StepError) -> ErrorKind {
        let redact = |s: &str| self.redactor.redact(s).into_owned();
        // A plugin that failed in a directory it could only read may have failed
        // because of that: say so, and how to let it write.
        let note = |m: String| match self.read_only_note {
            Some(n) if refused_write(&m) => format!("{m} ({n})"),
            _ => m,
        };
        match step_error {
            StepError::InvalidInput(m) => ErrorKind::InvalidInput(redact(&m)),
            StepError::Denied(m) => ErrorKind::Denied(note(redact(&m))),
            StepError::NotFound(m) => ErrorKind::NotFound(note(redact(&m))),
            StepError::Failed(f) => ErrorKind::Failed {
                message: note(redact(&f.message)),
                exit_code: f.exit_code,
                hint: f.hint.as_deref().map(redact),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{WIT_VERSION, wit_compat};

    #[test]
    fn the_wit_version_is_the_packages() {
        let wit = include_str!("../../../wit/step.wit");
        assert!(
            wit.contains(&format!("package hoist:step@{WIT_VERSION};")),
            "wit/step.wit and WIT_VERSION disagree"
        );
    }

    #[test]
    fn compatible_wit_versions_share_minor_below_one_and_major_above() {
        assert_eq!(wit_compat("0.1.0"), wit_compat("0.1.7"));
        assert_ne!(wit_compat("0.1.0"), wit_compat("0.2.0"));
        assert_eq!(wit_compat("1.0.0"), wit_compat("1.4.2"));
        assert_ne!(wit_compat("1.0.0"), wit_compat("2.0.0"));
    }
}
