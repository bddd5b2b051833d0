//! `hoist:step/context`: who the step is and where it runs. Changing the working
//! directory needs the `set-cwd` capability, because the next steps get it preopened;
//! a plugin may only move within the directories it can write.
//!
//! Owns the step's working directory: the other capabilities acting on paths (process,
//! git) borrow it from here, read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hoist_policy::{Capability, Grants};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::StepError;
use crate::bindings::hoist::step::context::{self, Host};
use crate::capability::setup::{Root, StepInfo, StepSetup};

/// The step's identity and its working directory, which `set-working-directory` moves.
pub struct ContextCtx {
    info: Arc<StepInfo>,
    grants: Arc<Grants>,
    cwd: PathBuf,
    roots: Arc<[Root]>,
}

impl ContextCtx {
    /// The step's context, starting in its setup's working directory.
    pub fn prepare(setup: &StepSetup) -> Self {
        Self {
            info: setup.info.clone(),
            grants: setup.grants.clone(),
            cwd: setup.cwd.clone(),
            roots: setup.roots.clone(),
        }
    }

    /// The working directory now.
    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// The working directory the step leaves to the next ones.
    pub fn take_cwd(&mut self) -> PathBuf {
        std::mem::take(&mut self.cwd)
    }
}

/// Link `hoist:step/context` to the [`ContextCtx`] that `get` finds in the store.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut ContextCtx,
) -> wasmtime::Result<()> {
    context::add_to_linker::<T, HasSelf<ContextCtx>>(linker, get)
}

impl Host for ContextCtx {
    fn step_id(&mut self) -> Option<String> {
        self.info.id.clone()
    }

    fn step_name(&mut self) -> String {
        self.info.name.clone()
    }

    fn run_id(&mut self) -> String {
        self.info.run_id.clone()
    }

    fn working_directory(&mut self) -> String {
        self.cwd.to_string_lossy().into_owned()
    }

    fn set_working_directory(&mut self, path: String) -> Result<String, StepError> {
        if !self.grants.allows(&Capability::SetCwd) {
            return Err(StepError::Denied(
                self.info
                    .denial(&Capability::SetCwd, "change the working directory"),
            ));
        }
        let new = resolve_dir(&self.cwd, &path)?;
        // The next steps get the new directory read-write. A plugin may only move within
        // the directories it can write itself, so it cannot hand the steps after it a
        // directory it was never given (`/`, Hoist's cache...). The built-in
        // `set_working_directory` keeps Prefect's semantics: the user wrote its target.
        if !self.info.builtin
            && !self
                .roots
                .iter()
                .any(|(root, writable)| *writable && new.starts_with(root))
        {
            return Err(StepError::Denied(format!(
                "step `{}` ({}) may not change the working directory to {}: a plugin may only \
                 move within the directories it can write ({})",
                self.info.name,
                self.info.plugin,
                new.display(),
                self.roots
                    .iter()
                    .filter(|(_, w)| *w)
                    .map(|(r, _)| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.cwd = new;
        Ok(self.cwd.to_string_lossy().into_owned())
    }
}

/// `path` resolved against `cwd`, made absolute and free of symlinks, and checked to be a
/// directory.
pub(crate) fn resolve_dir(cwd: &Path, path: &str) -> Result<PathBuf, StepError> {
    let joined = cwd.join(path);
    match std::fs::canonicalize(&joined) {
        Ok(p) if p.is_dir() => Ok(p),
        Ok(p) => Err(StepError::InvalidInput(format!(
            "`{}` is not a directory",
            p.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StepError::NotFound(format!(
            "directory `{path}` does not exist (looked for {})",
            joined.display()
        ))),
        Err(e) => Err(StepError::Failed(crate::bindings::Failure {
            message: format!("cannot use directory `{}`: {e}", joined.display()),
            exit_code: None,
            hint: None,
        })),
    }
}
