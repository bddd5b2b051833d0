//! `hoist plugin new`: scaffold a custom step crate that builds with one command.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Create a new step plugin crate in ./NAME (or --path).
    ///
    /// The crate depends on the Hoist SDK and builds to a component with
    /// `cargo build --release` (its .cargo/config.toml selects wasm32-wasip2). Run it with
    /// `hoist step run target/wasm32-wasip2/release/NAME.wasm --input name=world`.
    New {
        /// Step name: lowercase letters, digits and `_` (it becomes the crate name).
        name: String,
        /// Directory to create [default: ./NAME].
        #[arg(long)]
        path: Option<PathBuf>,
    },
}

pub(crate) fn run(cmd: &PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::New { name, path } => {
            let dir = path.clone().unwrap_or_else(|| PathBuf::from(name));
            scaffold(name, &dir)?;
            eprintln!("created step `{name}` in {}", dir.display());
            eprintln!("build it:  cd {} && cargo build --release", dir.display());
            eprintln!(
                "run it:    hoist step run {}/target/wasm32-wasip2/release/{name}.wasm --input name=world",
                dir.display()
            );
            Ok(())
        }
    }
}

fn scaffold(name: &str, dir: &Path) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a valid step name: use lowercase letters, digits and `_`, starting with a letter"
        );
    }
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} already exists and is not empty; choose another --path",
            dir.display()
        );
    }
    let sdk = sdk_dependency();
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML.replace("{name}", name).replace("{sdk}", &sdk),
        ),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())
            .with_context(|| format!("cannot create {}", path.parent().unwrap().display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `hoist-sdk` by path to this repository's `sdk/` while the SDK is unpublished.
fn sdk_dependency() -> String {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk");
    match std::fs::canonicalize(&sdk) {
        Ok(p) => format!("{{ path = {:?} }}", p.display().to_string()),
        Err(_) => "\"0.1\"".to_string(),
    }
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
# hoist-sdk is not on crates.io yet: this points at the Hoist checkout `hoist` was
# built from. To build elsewhere, use a git dependency on your Hoist repository
# (hoist-sdk = { git = "...", tag = "..." }) or a path to your copy of its `sdk/`.
hoist-sdk = {sdk}
serde = { version = "1", features = ["derive"] }

[profile.release]
opt-level = "s"
strip = true

# A standalone crate, even when created inside another workspace.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! The `{name}` step.

use hoist_sdk::{JsonSchema, Result, log, schemars};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Inputs {
    /// Who to greet.
    name: String,
}

#[derive(Serialize)]
struct Outputs {
    greeting: String,
}

fn run(inputs: Inputs) -> Result<Outputs> {
    log::info!("greeting {}", inputs.name);
    Ok(Outputs { greeting: format!("hello {}", inputs.name) })
}

hoist_sdk::step! {
    name: "{name}",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Greets someone",
    capabilities: [],
    run: run,
}
"#;
