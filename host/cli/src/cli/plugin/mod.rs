//! `hoist plugin new` scaffolds a custom step (a Rust crate, or a Python module built
//! with componentize-py: [`python`]); `hoist plugin build` builds either to a component
//! with one command.

mod python;

pub(crate) use hoist_packages::{ensure, lock_for};
use hoist_packages::{install as packages, signing, update};

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Create a new step plugin in ./NAME (or --path): a Rust crate, or a Python step.
    ///
    /// Rust: the crate depends on the Hoist SDK and builds to a component with
    /// `cargo build --release` (its .cargo/config.toml selects wasm32-wasip2).
    /// Python (`--lang python`): `app.py` with the Hoist Python SDK, built with
    /// componentize-py (pinned in requirements.txt). Either way `hoist plugin build NAME`
    /// makes `NAME/NAME.wasm`; run it with `hoist step run NAME/NAME.wasm --input name=world`.
    New {
        /// Step name: lowercase letters, digits and `_` (the crate or component name).
        name: String,
        /// Directory to create [default: ./NAME].
        #[arg(long)]
        path: Option<PathBuf>,
        /// The language the step is written in.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
    },
    /// Build a step plugin directory to a component (`DIR/<dir name>.wasm`, or -o).
    ///
    /// A directory with `Cargo.toml` is a Rust step: `cargo build --release` for
    /// wasm32-wasip2. A directory with `app.py` is a Python step: componentize-py
    /// (0.25.1; `pip install componentize-py==0.25.1`) with the WIT and the Python SDK
    /// that ship inside `hoist`.
    Build {
        /// The plugin's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component [default: DIR/<dir name>.wasm].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The componentize-py to use [default: $HOIST_COMPONENTIZE_PY, else
        /// componentize-py on PATH].
        #[arg(long, value_name = "PATH")]
        componentize_py: Option<PathBuf>,
    },
    /// Publish a component to a registry as NS/NAME@VERSION (a token for NS in
    /// HOIST_REGISTRY_TOKEN). It is described here first; the registry describes it
    /// again in its sandbox before accepting it. A version once published never changes.
    // `--version` here is the package's; `hoist --version` still prints hoist's.
    #[command(disable_version_flag = true)]
    Publish {
        /// The component (`.wasm`).
        file: PathBuf,
        /// The package: NAMESPACE/NAME (lowercase ASCII, digits, `-`, `_`).
        #[arg(long, required_unless_present = "oci")]
        name: Option<String>,
        /// Its version (semver, e.g. 1.2.0).
        #[arg(
            long = "version",
            id = "package_version",
            value_name = "SEMVER",
            required_unless_present = "oci"
        )]
        version: Option<String>,
        /// Push it to any OCI registry instead, as oci://HOST[:PORT]/NS/NAME:VERSION (a
        /// Wasm component artifact; HOIST_REGISTRY_TOKEN, if set, is sent as a bearer token).
        #[arg(long, value_name = "REF", conflicts_with_all = ["name", "package_version", "sign"])]
        oci: Option<String>,
        /// Sign it (ed25519 over the name, version and component digest) with --key.
        #[arg(long)]
        sign: bool,
        /// The signing key [default: $HOIST_HOME/keys/signing.key, from `hoist plugin keygen`].
        #[arg(long, value_name = "FILE", requires = "sign")]
        key: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Make an ed25519 signing key for `publish --sign`; prints its public key (give it
    /// to the people who install your packages: `hoist plugin trust KEY`).
    Keygen {
        /// Where to write the private key [default: $HOIST_HOME/keys/signing.key];
        /// an existing key is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Trust a publisher's public key (ed25519:...) for installs: a package signed by it
    /// says so, and `install --require-signed` accepts only packages signed by a trusted
    /// key. Without KEY, lists the trusted keys.
    Trust {
        /// The public key `hoist plugin keygen` printed.
        key: Option<String>,
    },
    /// Install NS/NAME[@REQ] (newest matching, not yanked): downloaded, verified
    /// against its digest, precompiled; `hoist step run NS/NAME` then runs it. Prints
    /// what it declares; an update that declares more than the installed version stops
    /// and shows the difference (--yes accepts it).
    ///
    /// Next to a project file (./prefect.yaml, or --file) the install is pinned in
    /// hoist.lock beside it: {package, version, registry, digest}. Without a package,
    /// installs exactly what hoist.lock pins (from each pin's registry; nothing is
    /// fetched for a pin already installed, so it works offline).
    Install {
        /// NS/NAME, NS/NAME@^1.2, NS/NAME@=1.2.0, or oci://HOST/NS/NAME:VERSION from any
        /// OCI registry [default: everything hoist.lock pins].
        package: Option<String>,
        /// The project file whose hoist.lock records the pin [default: ./prefect.yaml,
        /// when there is one].
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        review: Review,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Update packages to the newest version (not yanked) their registry serves that
    /// every requirement accepts: the one given here (NS/NAME@REQ) and every `requires:`
    /// in the project. Each goes through the same review as install: one that declares
    /// more capabilities than the installed version stops and shows the difference
    /// (--yes accepts it). Next to a project file the new versions are pinned in
    /// hoist.lock.
    Update {
        /// NS/NAME or NS/NAME@REQ [default: everything hoist.lock pins, else everything
        /// installed from a registry].
        packages: Vec<String>,
        /// The project file whose hoist.lock pins the packages [default: ./prefect.yaml,
        /// when there is one].
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        review: Review,
        /// Look for new versions on this registry (http(s)://... or oci://HOST) instead
        /// of the one each package was installed from.
        #[arg(long, value_name = "URL")]
        registry: Option<String>,
    },
    /// Search a registry by name, summary or capability.
    Search {
        /// Text to look for (all packages when empty).
        #[arg(default_value = "")]
        query: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Every version of a package: digest, summary, what it declares, yanked or not.
    Info {
        /// NS/NAME.
        package: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Yank a version (ranges stop choosing it) or, with --undo, restore it.
    Yank {
        /// NS/NAME@X.Y.Z.
        package: String,
        /// Restore a yanked version.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// List installed plugins.
    Ls,
    /// Remove an installed package.
    Rm {
        /// NS/NAME.
        package: String,
    },
}

/// What an install or update may accept.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct Review {
    /// Accept an update that declares more capabilities than the installed version.
    #[arg(long)]
    yes: bool,
    /// Refuse a package that no trusted key signed (`hoist plugin trust`).
    #[arg(long, env = "HOIST_REQUIRE_SIGNED", value_parser = clap::builder::FalseyValueParser::new())]
    require_signed: bool,
}

impl Review {
    fn how(&self) -> packages::How {
        packages::How {
            yes: self.yes,
            require_signed: self.require_signed,
        }
    }
}

/// Which registry.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct RegistryArg {
    /// The registry's URL (http://HOST:PORT or https://...).
    #[arg(long = "registry", env = "HOIST_REGISTRY", value_name = "URL")]
    url: Option<String>,
}

/// What a step is written in.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Lang {
    /// A crate depending on `hoist-sdk`.
    Rust,
    /// A module using `hoist_sdk` (sdk/python), built with componentize-py.
    Python,
}

/// `hoist plugin publish`: to a Hoist registry (optionally signed) or, with --oci, to any
/// OCI registry.
async fn publish(cmd: &PluginCommand) -> anyhow::Result<()> {
    let PluginCommand::Publish {
        file,
        name,
        version,
        oci,
        sign,
        key,
        registry,
    } = cmd
    else {
        unreachable!("called for publish only");
    };
    if let Some(reference) = oci {
        return packages::publish_oci(file, reference).await;
    }
    let (Some(name), Some(version)) = (name, version) else {
        bail!("publish needs --name and --version (or --oci REF)");
    };
    let signing = sign.then(|| signing::key_path(key.as_deref()));
    packages::publish(
        file,
        name,
        version,
        signing.as_deref(),
        registry.url.as_deref(),
    )
    .await
}

pub(crate) async fn run(cmd: &PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Publish { .. } => publish(cmd).await,
        PluginCommand::Keygen { out } => signing::keygen(out.as_deref()),
        PluginCommand::Trust { key } => signing::trust(key.as_deref()),
        PluginCommand::Install {
            package,
            file,
            review,
            registry,
        } => {
            packages::install(
                package.as_deref(),
                file.as_deref(),
                registry.url.as_deref(),
                review.how(),
            )
            .await
        }
        PluginCommand::Update {
            packages,
            file,
            review,
            registry,
        } => {
            let ask = update::Ask {
                packages,
                file: file.as_deref(),
                registry: registry.as_deref(),
                how: review.how(),
            };
            update::update(&ask).await
        }
        PluginCommand::Search { query, registry } => {
            packages::search(query, registry.url.as_deref()).await
        }
        PluginCommand::Info { package, registry } => {
            packages::info(package, registry.url.as_deref()).await
        }
        PluginCommand::Yank {
            package,
            undo,
            registry,
        } => packages::yank(package, *undo, registry.url.as_deref()).await,
        PluginCommand::Ls => packages::ls(),
        PluginCommand::Rm { package } => packages::rm(package),
        PluginCommand::New { name, path, lang } => {
            let dir = path.clone().unwrap_or_else(|| PathBuf::from(name));
            check_name(name)?;
            check_empty(&dir)?;
            match lang {
                Lang::Rust => scaffold(name, &dir)?,
                Lang::Python => python::scaffold(name, &dir)?,
            }
            eprintln!("created step `{name}` in {}", dir.display());
            eprintln!("build it:  hoist plugin build {}", dir.display());
            eprintln!(
                "run it:    hoist step run {}/{name}.wasm --input name=world",
                dir.display()
            );
            Ok(())
        }
        PluginCommand::Build {
            dir,
            output,
            componentize_py,
        } => build(dir, output.as_deref(), componentize_py.as_deref()),
    }
}

/// Build the plugin in `dir` to `output` (default `dir/<dir name>.wasm`).
fn build(dir: &Path, output: Option<&Path>, componentize_py: Option<&Path>) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(dir)
        .with_context(|| format!("cannot open the plugin directory {}", dir.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "step".into());
    let output = output.map_or_else(|| dir.join(format!("{name}.wasm")), Path::to_path_buf);
    let started = std::time::Instant::now();
    if dir.join("app.py").is_file() {
        python::build(&dir, &output, componentize_py)?;
    } else if dir.join("Cargo.toml").is_file() {
        build_rust(&dir, &output)?;
    } else {
        bail!(
            "{} holds neither app.py (a Python step) nor Cargo.toml (a Rust step); \
             `hoist plugin new NAME [--lang python]` makes one",
            dir.display()
        );
    }
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "built {} ({:.1} MiB) in {:.1} s",
        output.display(),
        size as f64 / (1024.0 * 1024.0),
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "run it:    hoist step run {}  (`hoist step describe` it for its inputs)",
        output.display()
    );
    Ok(())
}

/// `cargo build --release` (the crate's own config selects wasm32-wasip2), then the
/// component copied to `output`.
fn build_rust(dir: &Path, output: &Path) -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    let Some(krate) = package_name(&manifest) else {
        bail!("{}/Cargo.toml names no [package]", dir.display());
    };
    eprintln!("building `{krate}` with cargo (wasm32-wasip2, release)…");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(dir)
        .status()
        .context("cannot run cargo (is Rust installed?)")?;
    if !status.success() {
        bail!("cargo build failed ({status}); its errors are above");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| dir.join("target"), |t| dir.join(PathBuf::from(t)));
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", krate.replace('-', "_")));
    std::fs::copy(&built, output)
        .with_context(|| format!("cannot copy {} to {}", built.display(), output.display()))?;
    Ok(())
}

/// The `name` of the `[package]` table of a Cargo.toml.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(value) = line.strip_prefix("name")
            && let Some(value) = value.trim_start().strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn check_name(name: &str) -> anyhow::Result<()> {
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
    Ok(())
}

fn check_empty(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} already exists and is not empty; choose another --path",
            dir.display()
        );
    }
    Ok(())
}

/// Write `files` (relative path, text) under `dir`.
fn write_files(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap())
            .with_context(|| format!("cannot create {}", path.parent().unwrap().display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn scaffold(name: &str, dir: &Path) -> anyhow::Result<()> {
    let sdk = sdk_dependency();
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML.replace("{name}", name).replace("{sdk}", &sdk),
        ),
        (".cargo/config.toml", CARGO_CONFIG.to_string()),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (".gitignore", "/target\n*.wasm\n".to_string()),
    ];
    write_files(dir, &files)
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
