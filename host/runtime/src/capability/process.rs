//! `hoist:step/process`: run an allow-listed program on the host.
//!
//! The child gets: the arguments as given (never through a shell), the granted part of
//! the host environment plus `PATH`, the variables the step set, and a working directory
//! resolved like the step's own. Output lines are streamed to the log as they arrive and
//! returned, up to [`MAX_CAPTURED_OUTPUT`]. Nothing it starts outlives the call
//! (`capability/reap.rs`).
//!
//! For a plugin (not a built-in step, whose commands the user wrote), a program is
//! found on the *host's* `PATH` only (absolute entries), never on a `PATH` the plugin
//! sets, and is refused if it lies in a directory the step was given: this plugin, or
//! an earlier one, could have put it there. The child's `PATH` is the host's, and the dynamic loader's
//! variables (`LD_*`) cannot be set. A granted program still runs with the arguments
//! and variables the plugin chooses: `process:git` trusts git with them
//! (`-c alias.x=!cmd` is a shell); plugins should use the `git` interface instead.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use hoist_policy::{Capability, Grants, HostEnv};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use wasmtime::component::{HasData, Linker};

use crate::bindings::hoist::step::process::{self, Command, Host, Output};
use crate::bindings::{Failure, Level, StepError};
use crate::capability::context::resolve_dir;
use crate::capability::log::{Source, StepLog};
use crate::capability::setup::{Root, StepInfo, StepSetup};
use crate::limits::MAX_CAPTURED_OUTPUT;

/// The state of `hoist:step/process`: who may run what, and where output is logged.
pub struct ProcessCtx {
    info: Arc<StepInfo>,
    grants: Arc<Grants>,
    roots: Arc<[Root]>,
    log: StepLog,
    env: HostEnv,
}

impl ProcessCtx {
    /// The process capability of a step.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            info: setup.info.clone(),
            grants: setup.grants.clone(),
            roots: setup.roots.clone(),
            log: setup.log.clone(),
            env: setup.env.clone(),
        }
    }

    /// The view the host calls run on: this state and the step's working directory.
    pub fn view<'a>(&'a self, cwd: &'a Path) -> ProcessView<'a> {
        ProcessView { ctx: self, cwd }
    }
}

/// What `hoist:step/process` sees of a step's store.
pub struct ProcessView<'a> {
    ctx: &'a ProcessCtx,
    cwd: &'a Path,
}

struct HasProcess;

impl HasData for HasProcess {
    type Data<'a> = ProcessView<'a>;
}

/// Link `hoist:step/process` to the [`ProcessView`] that `get` makes of the store.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> ProcessView<'_>,
) -> wasmtime::Result<()> {
    process::add_to_linker::<T, HasProcess>(linker, get)
}

impl Host for ProcessView<'_> {
    async fn run(&mut self, cmd: Command) -> Result<Output, StepError> {
        if !self.ctx.grants.allows_program(&cmd.program) {
            let what = format!("run `{}`", cmd.program);
            return Err(StepError::Denied(
                self.ctx
                    .info
                    .denial(&Capability::Process(cmd.program), &what),
            ));
        }
        let cwd = match &cmd.cwd {
            Some(dir) => resolve_dir(self.cwd, dir)?,
            None => self.cwd.to_path_buf(),
        };
        let host_path = self.ctx.env.get("PATH").map(std::ffi::OsString::from);
        let plugin = !self.ctx.info.builtin;
        if plugin {
            self.check_plugin_command(&cmd)?;
        }
        // Built-in steps run what the user wrote, as Prefect does: a `PATH` they set is
        // used to find the program. A plugin's is not.
        let path_var = match cmd.env.iter().find(|(k, _)| k == "PATH") {
            Some((_, v)) if !plugin => Some(std::ffi::OsString::from(v)),
            _ => host_path.clone(),
        };
        // Resolve the program here: with an absolute path the standard library can use
        // posix_spawn; a bare name with a changed environment makes it fork, which copies
        // this process's (large) address-space mappings and costs a millisecond or more.
        let program = find_program(&cmd.program, &cwd, path_var.as_deref()).ok_or_else(|| {
            StepError::NotFound(format!(
                "program `{}` was not found (searched PATH; working directory {})",
                cmd.program,
                cwd.display()
            ))
        })?;
        if plugin {
            self.check_plugin_program(&program)?;
        }
        let mut child = tokio::process::Command::new(&program);
        child
            .arg0(&cmd.program)
            .args(&cmd.args)
            .current_dir(&cwd)
            .env_clear()
            .envs(self.ctx.grants.visible_env(&self.ctx.env))
            .envs(
                cmd.env
                    .iter()
                    .filter(|(k, _)| !plugin || k != "PATH")
                    .map(|(k, v)| (k, v)),
            );
        // The programs a program starts are found on PATH too.
        if let Some(path) = &path_var {
            child.env("PATH", path);
        }
        let (exit_code, out, err) = run_child(child, &self.ctx.log, cmd.stream_output)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StepError::NotFound(format!(
                    "program `{}` was not found (searched PATH; working directory {})",
                    cmd.program,
                    cwd.display()
                )),
                _ => StepError::Failed(Failure {
                    message: format!("cannot run `{}`: {e}", cmd.program),
                    exit_code: None,
                    hint: None,
                }),
            })?;
        Ok(Output {
            exit_code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }
}

impl ProcessView<'_> {
    /// What a plugin may not ask of a program: loader variables, a relative path.
    fn check_plugin_command(&self, cmd: &Command) -> Result<(), StepError> {
        if let Some((k, _)) = cmd.env.iter().find(|(k, _)| loader_variable(k)) {
            return Err(StepError::Denied(format!(
                "step `{}` ({}) may not set `{k}` for `{}`: a plugin cannot change how \
                 the host loads programs",
                self.ctx.info.name, self.ctx.info.plugin, cmd.program
            )));
        }
        if cmd.program.contains('/') && !cmd.program.starts_with('/') {
            return Err(StepError::Denied(format!(
                "step `{}` ({}) may not run `{}`: a plugin runs programs by name (found on \
                 the host's PATH) or by absolute path",
                self.ctx.info.name, self.ctx.info.plugin, cmd.program
            )));
        }
        Ok(())
    }

    /// A plugin's program must not lie in a directory the step was given.
    fn check_plugin_program(&self, program: &Path) -> Result<(), StepError> {
        let real = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
        if let Some((root, _)) = self
            .ctx
            .roots
            .iter()
            .find(|(root, _)| real.starts_with(root))
        {
            return Err(StepError::Denied(format!(
                "step `{}` ({}) may not run {}: it lies in {}, a directory the step was \
                 given, where this plugin or an earlier step may have put it",
                self.ctx.info.name,
                self.ctx.info.plugin,
                real.display(),
                root.display()
            )));
        }
        Ok(())
    }
}

/// Spawn `child` in its own process group (killed if this future is dropped), stream
/// its output lines to the log if asked, and collect exit code, stdout and stderr.
pub(crate) async fn run_child(
    mut child: tokio::process::Command,
    log: &StepLog,
    stream: bool,
) -> std::io::Result<(Option<i32>, Vec<u8>, Vec<u8>)> {
    child
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = child.spawn()?;
    let pid = child.id().map(|p| p as i32);
    if let Some(pid) = pid {
        crate::capability::reap::started(pid);
    }
    let group = GroupKill(pid);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // When the child exits, what it left behind is killed at once: a background process
    // holding the output pipes would otherwise keep the step waiting for their end.
    let waited = async {
        let status = child.wait().await;
        group.disarm();
        if let Some(pid) = pid {
            crate::capability::reap::done(pid);
        }
        status
    };
    let (out, err, status) = tokio::join!(
        pump(stdout, log, Source::ProcessStdout, stream),
        pump(stderr, log, Source::ProcessStderr, stream),
        waited,
    );
    let status = status?;
    Ok((status.code(), out, err))
}

/// Variables that make the dynamic loader run other code in the child.
fn loader_variable(name: &str) -> bool {
    name.starts_with("LD_") || name.starts_with("DYLD_")
}

/// The file to execute for `program`: a path (relative to `cwd`) as given, a bare name
/// searched on the absolute entries of `path_var` like `execvp` does (empty and relative
/// entries would search the working directory, which the step may write).
pub(crate) fn find_program(
    program: &str,
    cwd: &std::path::Path,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return executable(&p).then_some(p);
    }
    if program.is_empty() {
        return None;
    }
    std::env::split_paths(path_var?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Read a stream to its end, logging each line if asked and keeping the first
/// [`MAX_CAPTURED_OUTPUT`] bytes.
async fn pump(
    reader: impl AsyncRead + Unpin,
    log: &StepLog,
    source: Source,
    stream: bool,
) -> Vec<u8> {
    let mut reader = BufReader::new(reader);
    let mut kept = Vec::new();
    let mut line = Vec::new();
    let level = if source == Source::ProcessStderr {
        Level::Warn
    } else {
        Level::Info
    };
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if kept.len() < MAX_CAPTURED_OUTPUT {
            let room = MAX_CAPTURED_OUTPUT - kept.len();
            kept.extend_from_slice(&line[..line.len().min(room)]);
        }
        if stream {
            let text = String::from_utf8_lossy(&line);
            log.emit(level, source, text.trim_end_matches(['\n', '\r']), &[]);
        }
    }
    kept
}

/// Kills the child's whole tree and process group when dropped (the step was
/// cancelled), unless the child was reaped.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            crate::capability::reap::cancel(pid);
        }
    }
}
