//! `pip_install_requirements`: `python -m pip install -r <requirements_file>`.
//!
//! Prefect semantics (spec §4.6): run in `directory` (the requirements path is relative
//! to it), always pip, output stdout/stderr trimmed, a non-zero exit fails with its code
//! and stderr. The Python is `$HOIST_PYTHON`, else `python3` on PATH.

use hoist_sdk::{Capability, JsonSchema, Result, StepError, process::Command, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// Directory to run pip in (default: the current one).
    #[serde(default)]
    directory: Option<String>,
    /// The requirements file, relative to `directory`.
    #[serde(default = "default_file")]
    requirements_file: String,
    /// Copy pip's output live to the log.
    #[serde(default = "yes")]
    stream_output: bool,
}

fn default_file() -> String {
    "requirements.txt".into()
}

fn yes() -> bool {
    true
}

#[derive(Serialize)]
struct Outputs {
    stdout: String,
    stderr: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    let python = std::env::var("HOIST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    let mut cmd = Command::new(&python)
        .args(["-m", "pip", "install", "-r", &inputs.requirements_file])
        .stream_output(inputs.stream_output);
    if let Some(dir) = &inputs.directory {
        cmd = cmd.current_dir(dir);
    }
    let out = cmd.output()?;
    if !out.success() {
        let code = out.exit_code.unwrap_or(-1);
        return Err(StepError::failure(
            format!(
                "pip_install_requirements failed with error code {code}: {}",
                out.stderr.trim()
            ),
            out.exit_code,
            Some(format!(
                "pip ran as `{python} -m pip`; set HOIST_PYTHON to use another Python"
            )),
        ));
    }
    Ok(Outputs {
        stdout: out.stdout.trim().to_string(),
        stderr: out.stderr.trim().to_string(),
    })
}

hoist_sdk::step! {
    name: "pip_install_requirements",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Install a requirements file with pip, Prefect-style",
    capabilities: [Capability::Process("*".into()), Capability::Env("*".into())],
    run: run,
}
