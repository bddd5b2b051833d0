//! The `hoist` command line. Errors become `error: ...` on stderr and exit code 1;
//! usage errors exit with 2 (clap).

mod plugin;
mod step;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::runtime::{ComponentCache, RuntimeConfig};

/// Run prefect.yaml deployment steps as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "hoist", version, propagate_version = true)]
pub struct Cli {
    /// Where compiled components are cached [default: $HOIST_CACHE_DIR, else ~/.cache/hoist/components].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components in memory only; read and write no cache.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run, list and inspect steps.
    #[command(subcommand)]
    Step(step::StepCommand),
    /// Write your own steps.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Print the versions that matter: hoist, the WIT API, wasmtime, the cache.
    Version,
}

impl Cli {
    fn runtime_config(&self) -> RuntimeConfig {
        let mut config = RuntimeConfig::default();
        if self.no_cache {
            config.cache = ComponentCache::disabled();
        } else if let Some(dir) = &self.cache_dir {
            config.cache = ComponentCache::at(dir);
        }
        config
    }
}

/// The WIT package version this host implements.
pub const WIT_API: &str = "hoist:step@0.1.0";
/// The wasmtime version this host is built with.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
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
            Command::Step(cmd) => step::run(&cli, cmd).await,
            Command::Plugin(cmd) => plugin::run(cmd),
            Command::Version => {
                version(&cli);
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn version(cli: &Cli) {
    let config = cli.runtime_config();
    println!("hoist {}", env!("CARGO_PKG_VERSION"));
    println!("wit api {WIT_API}");
    println!("wasmtime {WASMTIME_VERSION}");
    match config.cache.dir() {
        Some(dir) => println!("cache {}", dir.display()),
        None => println!("cache disabled"),
    }
    println!("allocator {}", config.allocator);
    println!("plugins {}", step::installed_dir().display());
}
