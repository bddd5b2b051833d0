//! A misbehaving plugin: each `action` tries one thing the sandbox must contain.

use hoist_sdk::{Capability, JsonSchema, Result, StepError, process::Command, schemars};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Inputs {
    /// Read a file (outside the preopened directories this must fail).
    Read { path: String },
    /// Write a file.
    Write { path: String, contents: String },
    /// Read an environment variable.
    Env { name: String },
    /// Run a program through the process capability.
    Spawn {
        program: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// Spin forever.
    Spin,
    /// Allocate until something stops us.
    Hog,
    /// Panic with this message.
    Panic { message: String },
    /// Sleep (a blocking WASI call), then return.
    Sleep { ms: u64 },
    /// Change the working directory without having declared `set-cwd`.
    Chdir { path: String },
    /// Clone a repository through the git interface (needs a `net` grant for its host).
    GitClone { url: String, dest: String },
}

fn run(inputs: Inputs) -> Result<Value> {
    Ok(match inputs {
        Inputs::Read { path } => json!({ "contents": std::fs::read_to_string(&path)? }),
        Inputs::Write { path, contents } => {
            std::fs::write(&path, contents)?;
            json!({ "written": path })
        }
        Inputs::Env { name } => json!({ "value": std::env::var(&name).ok() }),
        Inputs::Spawn { program, args } => {
            let out = Command::new(program).args(args).output()?;
            json!({ "exit_code": out.exit_code, "stdout": out.stdout, "stderr": out.stderr })
        }
        Inputs::Spin => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Inputs::Hog => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&keep);
            }
        }
        Inputs::Panic { message } => panic!("{message}"),
        Inputs::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            json!({ "slept_ms": ms })
        }
        Inputs::GitClone { url, dest } => {
            let opts = hoist_sdk::git::CloneOptions {
                url,
                destination: dest,
                branch: None,
                depth: Some(1),
                submodules: false,
                sparse: false,
                blobless_no_checkout: false,
                credentials: None,
            };
            match hoist_sdk::git::clone(&opts) {
                Ok(()) => json!({ "cloned": true }),
                Err(hoist_sdk::git::GitError::Refused(e)) => return Err(e.into()),
                Err(hoist_sdk::git::GitError::Failed(f)) => {
                    return Err(StepError::failed(f.stderr));
                }
            }
        }
        Inputs::Chdir { path } => {
            let dir = hoist_sdk::context::set_working_directory(&path)?;
            json!({ "directory": dir })
        }
    })
    .map_err(|e: StepError| e)
}

hoist_sdk::step! {
    name: "probe",
    version: "0.1.0",
    summary: "Test plugin that tries to escape its sandbox",
    capabilities: [
        Capability::Process("true".into()),
        Capability::Process("sleep".into()),
        Capability::Env("HOIST_PROBE".into()),
    ],
    run: run,
}
