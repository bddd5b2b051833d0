//! The `hoist` command line. Errors become `error: ...` on stderr and exit code 1;
//! usage errors exit with 2 (clap).

mod deploy;
mod describe;
mod init;
mod plugin;
mod project;
#[cfg(feature = "registry-server")]
mod registry;
mod step;
mod store;
mod ticker;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::capability::log::sanitize;
use crate::runtime::{ComponentCache, RuntimeConfig};

/// Run prefect.yaml deployment steps as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "hoist", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The compiled-component cache, for the commands that load steps.
#[derive(Clone, Debug, Default, clap::Args)]
pub(crate) struct CacheArgs {
    /// Where compiled components are cached [default: $HOIST_CACHE_DIR, else ~/.cache/hoist/components].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components in memory only; read and write no cache.
    #[arg(long)]
    no_cache: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run, list and inspect steps.
    #[command(subcommand)]
    Step(step::StepCommand),
    /// Write your own steps; publish, find and install them through a registry.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    #[cfg(feature = "registry-server")]
    /// Serve a plugin registry (OCI distribution API, JSON API, pages) and manage its
    /// publish tokens.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Run the build steps of ./prefect.yaml (or --file), or of one deployment.
    Build(project::RunArgs),
    /// Run the build then the push steps, sharing outputs as `prefect deploy` does.
    Push(project::RunArgs),
    /// Run the pull steps (what a worker does before a flow run) and print the final
    /// working directory.
    Pull(project::RunArgs),
    /// Register deployments on the Prefect server PREFECT_API_URL names, as `prefect
    /// deploy` does: each deployment's build and push steps run in the sandbox, its
    /// declaration is templated with their outputs, the flow's parameters are read from
    /// its source (never imported), then the flow and deployment are created or updated.
    #[command(disable_version_flag = true)]
    Deploy(Box<deploy::DeployArgs>),
    /// Start a prefect.yaml (and .prefectignore) from a recipe, as `prefect init` does:
    /// local, git, docker, docker-git, s3, gcs, azure, docker-s3, docker-gcs, docker-azure.
    /// Existing files are never overwritten.
    Init(init::InitArgs),
    /// Work a Prefect server's pool: claim flow runs, run their pull steps in the
    /// sandbox, start the flows.
    #[command(subcommand)]
    Worker(worker::WorkerCommand),
    /// `hoist project init` and `hoist project recipe ls` (Prefect 2.10's spellings).
    #[command(subcommand)]
    Project(init::ProjectCommand),
    /// Show the steps a section would run, resolved as far as possible without running
    /// anything (secrets masked). Exits 1 if some step cannot run.
    Plan(project::PlanArgs),
    /// Manage the variables `{{ prefect.variables.NAME }}` resolves from.
    #[command(subcommand)]
    Variable(store::VariableCommand),
    /// Manage the blocks `{{ prefect.blocks.TYPE.NAME }}` resolves from.
    #[command(subcommand)]
    Block(store::BlockCommand),
    /// Run an example project embedded in the binary (build, then pull) in a temporary
    /// directory: a first look at what Hoist does, with nothing to set up.
    Demo(CacheArgs),
    /// Print the versions that matter: hoist, the WIT API, wasmtime, the cache.
    Version(CacheArgs),
    /// Print a shell completion script: e.g. `hoist completions bash >
    /// ~/.local/share/bash-completion/completions/hoist`, or for zsh a file `_hoist` in
    /// a directory of your `$fpath`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

impl CacheArgs {
    /// The runtime's configuration: the environment's, this cache, a small pool.
    pub(crate) fn runtime_config(&self) -> RuntimeConfig {
        // One command runs its steps one after another: a small pool starts fast.
        let mut config = RuntimeConfig::one_at_a_time();
        if self.no_cache {
            config.cache = ComponentCache::disabled();
        } else if let Some(dir) = &self.cache_dir {
            config.cache = ComponentCache::at(dir);
        }
        config
    }
}

/// A duration in milliseconds, rounded to the microsecond (for JSON output).
pub(crate) fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The marks progress lines start with.
pub(crate) struct Marks {
    pub(crate) start: &'static str,
    pub(crate) done: &'static str,
    pub(crate) failed: &'static str,
}

/// `▶ ✓ ✗` where the locale is UTF-8, `> + x` elsewhere (a terminal in the C locale
/// would show mojibake).
pub(crate) fn marks() -> &'static Marks {
    const UNICODE: Marks = Marks {
        start: "▶",
        done: "✓",
        failed: "✗",
    };
    const ASCII: Marks = Marks {
        start: ">",
        done: "+",
        failed: "x",
    };
    static CHOSEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let utf8 = *CHOSEN
        .get_or_init(|| utf8_locale(["LC_ALL", "LC_CTYPE", "LANG"].map(|n| std::env::var(n).ok())));
    if utf8 { &UNICODE } else { &ASCII }
}

/// Whether the locale the variables name (`LC_ALL`, then `LC_CTYPE`, then `LANG`: the
/// first one set and not empty wins, as in POSIX) uses UTF-8. Unset: assume UTF-8
/// (terminals today; a C-locale user sets `LANG=C`).
fn utf8_locale(vars: [Option<String>; 3]) -> bool {
    match vars.into_iter().flatten().find(|v| !v.is_empty()) {
        None => true,
        Some(v) => {
            let v = v.to_ascii_lowercase();
            v.contains("utf-8") || v.contains("utf8")
        }
    }
}

/// The wasmtime version this host is built with.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    // Processes a step leaves behind (`cmd &`, a `setsid` daemon) are re-parented to this
    // process, which kills them when the step's process ends (`capability/reap.rs`).
    crate::capability::reap::become_subreaper();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async {
        match &cli.command {
            Command::Step(cmd) => step::run(cmd).await,
            Command::Plugin(cmd) => plugin::run(cmd).await,
            #[cfg(feature = "registry-server")]
            Command::Registry(cmd) => registry::registry(cmd).await,
            Command::Build(args) => project::run(crate::project::Action::Build, args).await,
            Command::Push(args) => project::run(crate::project::Action::Push, args).await,
            Command::Pull(args) => project::run(crate::project::Action::Pull, args).await,
            Command::Plan(args) => project::plan(args).await,
            Command::Deploy(args) => deploy::deploy(args).await,
            Command::Init(args) => init::init(args),
            Command::Worker(cmd) => worker::worker(cmd).await,
            Command::Project(cmd) => init::project(cmd),
            Command::Variable(cmd) => store::variable(cmd).await,
            Command::Block(cmd) => store::block(cmd).await,
            Command::Demo(cache) => project::demo(cache).await,
            Command::Version(cache) => {
                version(cache);
                Ok(())
            }
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                let mut out = std::io::stdout().lock();
                clap_complete::generate(*shell, &mut Cli::command(), "hoist", &mut out);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            // Causes can quote a plugin: every line printable (the runner already made a
            // step's cause one line; messages of several lines are ours).
            ticker::stop();
            let text = hints(&format!("{e:#}"));
            let lines: Vec<_> = text.split('\n').map(sanitize).collect();
            eprintln!("error: {}", lines.join("\n"));
            1
        }
    }
}

/// The library's messages name what to grant or raise, never a flag (a worker sets
/// grants elsewhere); on the command line, say how: `--allow X` for the capability the
/// message quoted last before the phrase, `--timeout` and `--memory-limit` for limits.
pub(crate) fn hints(message: &str) -> String {
    // (phrase the library writes, what the CLI says instead; `{}` is the capability)
    const GRANTS: &[(&str, &str)] = &[
        (
            ", which was not granted",
            ", which was not granted; grant it with `--allow {}`",
        ),
        (
            " in the plugin and grant it",
            " in the plugin and run with `--allow {}`",
        ),
        (
            "(a plugin must declare it and be granted it)",
            "(a plugin must declare it and be run with `--allow {}`)",
        ),
    ];
    let mut out = String::with_capacity(message.len() + 64);
    let mut rest = message;
    while let Some((i, (phrase, cli))) = GRANTS
        .iter()
        .filter_map(|p| rest.find(p.0).map(|i| (i, p)))
        .min_by_key(|(i, _)| *i)
    {
        let cap = last_quoted(&rest[..i]).unwrap_or_default();
        out.push_str(&rest[..i]);
        out.push_str(&cli.replace("{}", cap));
        rest = &rest[i + phrase.len()..];
    }
    out.push_str(rest);
    let mut out = out.replace(
        "grant it by name to allow it: `",
        "grant it by name to allow it: `--allow ",
    );
    // Only where the default file was looked for: after `--file X`, the flag is known.
    if message.starts_with("prefect.yaml: no such project file (looked in ") {
        out.push_str("; pass --file PATH");
    } else if message.contains("did not finish within") {
        out.push_str(" (raise the limit with --timeout)");
    } else if message.contains("MiB of memory and was stopped") {
        out.push_str(" (raise the limit with --memory-limit)");
    }
    out
}

/// The last `quoted` text of `s`.
fn last_quoted(s: &str) -> Option<&str> {
    let end = s.rfind('`')?;
    let start = s[..end].rfind('`')?;
    Some(&s[start + 1..end])
}

/// JSON for a terminal: the characters serde_json leaves raw that a terminal would obey
/// or reorder (DEL, C1 controls, bidi overrides, line separators: see
/// [`crate::capability::log::unprintable`]) written as `\uXXXX` escapes. The same JSON
/// value, so stdout stays exact for programs. (serde_json escapes C0 controls inside
/// strings itself; a raw `\n` is the layout of pretty output.)
pub(crate) fn json_text(v: &serde_json::Value, pretty: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    }
    .unwrap_or_default();
    let escape = |c: char| c != '\n' && crate::capability::log::unprintable(c);
    if !text.contains(escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            // All of them are in the basic plane: one `\uXXXX` each.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn version(cache: &CacheArgs) {
    let config = cache.runtime_config();
    println!("hoist {}", env!("CARGO_PKG_VERSION"));
    println!("wit api hoist:step@{}", crate::runtime::WIT_VERSION);
    println!("wasmtime {WASMTIME_VERSION}");
    match config.cache.dir() {
        Some(dir) => println!("cache {}", dir.display()),
        None => println!("cache disabled"),
    }
    println!("allocator {}", config.allocator);
    println!("plugins {}", step::installed_dir().display());
    match std::env::var("HOIST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            println!("database {}", url.split('@').next_back().unwrap_or("(set)"))
        }
        _ => println!(
            "database sqlite {}",
            hoist_policy::paths::database().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks the whole definition (conflicting names, bad defaults, missing value
    /// names) only when asked: a broken flag fails here, not in a user's hands.
    #[test]
    fn verify_cli() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn ascii_marks_outside_utf8_locales() {
        use super::utf8_locale;
        let s = |v: &str| Some(v.to_string());
        assert!(utf8_locale([None, None, None]));
        assert!(utf8_locale([None, None, s("en_US.UTF-8")]));
        assert!(utf8_locale([s("C.utf8"), s("C"), None]));
        assert!(!utf8_locale([s("C"), s("en_US.UTF-8"), None]));
        assert!(!utf8_locale([s(""), None, s("POSIX")]));
        assert_eq!(
            super::millis(std::time::Duration::from_nanos(710_421)),
            0.71
        );
    }

    #[test]
    fn hints_name_the_flags() {
        use super::hints;
        assert_eq!(
            hints("step `p` (p) needs capability `process:true`, which was not granted"),
            "step `p` (p) needs capability `process:true`, which was not granted; grant it with `--allow process:true`"
        );
        assert_eq!(
            hints("to allow this, declare `process:ls` in the plugin and grant it"),
            "to allow this, declare `process:ls` in the plugin and run with `--allow process:ls`"
        );
        assert_eq!(
            hints(
                "capability `net:https://x:443` was not granted (a plugin must declare it and be granted it)"
            ),
            "capability `net:https://x:443` was not granted (a plugin must declare it and be run with `--allow net:https://x:443`)"
        );
        assert_eq!(
            hints("grant it by name to allow it: `net:http://127.0.0.1:9`"),
            "grant it by name to allow it: `--allow net:http://127.0.0.1:9`"
        );
        assert!(
            hints("did not finish within 1 s and was stopped")
                .ends_with("(raise the limit with --timeout)")
        );
        assert_eq!(hints("nothing to say"), "nothing to say");
    }
}
