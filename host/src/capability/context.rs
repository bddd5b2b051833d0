//! `hoist:step/context`: who the step is and where it runs. Changing the working
//! directory needs the `set-cwd` capability, because the next steps get it preopened;
//! a plugin may only move within the directories it can write.

use std::path::{Path, PathBuf};

use crate::bindings::StepError;
use crate::bindings::hoist::step::context::Host;
use crate::runtime::policy::Capability;
use crate::runtime::state::StepState;

impl Host for StepState {
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
                self.denial(&Capability::SetCwd, "change the working directory"),
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
