//! `hoist registry serve` and `hoist registry token create`: the plugin registry's
//! server side (`hoist_registry`), with this binary's runtime as its component
//! inspector.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use hoist_registry::{Inspected, Inspector, ServeConfig};

use super::CacheArgs;
use crate::runtime::Runtime;

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Serve a plugin registry: the OCI distribution API (`/v2/`), a JSON API
    /// (`/api/v1/packages`) and pages (`/`). A package `NS/NAME@X.Y.Z` is also the OCI
    /// artifact `HOST:PORT/NS/NAME:X.Y.Z`. Publishing needs a token (`hoist registry
    /// token create`), checked before any request body is read; every upload is loaded
    /// and described in a sandbox with no capabilities before it is accepted. Blobs
    /// belong to the repository they were uploaded to; bodies are bounded per route
    /// (manifests 4 MiB, signatures 64 KiB, blobs --max-size, 8 streamed at once) and
    /// each namespace by --namespace-quota. Stops on Ctrl-C / SIGTERM.
    Serve(ServeArgs),
    /// Publish tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Where the registry's state is.
#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    /// The data directory: `registry.db` (SQLite) and `blobs/` [default: $HOIST_HOME/registry].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A database URL (`postgres://...`) instead of SQLite in the data directory.
    #[arg(
        long,
        value_name = "URL",
        env = "HOIST_REGISTRY_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Keep blobs in an S3 bucket: s3://BUCKET[/PREFIX]?endpoint=URL[&region=R], keys in
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (replicas share the bucket and the
    /// database) [default: DIR/blobs].
    #[arg(long, value_name = "URL")]
    blob_store: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port; the line printed says which).
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: String,
    #[command(flatten)]
    state: StateArgs,
    /// The largest component accepted (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = super::step::parse_size)]
    max_size: usize,
    /// The most bytes of blobs one namespace may hold (e.g. 10GiB): its blobs, published
    /// or not, and its uploads in progress; an upload past it is refused (413 DENIED).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = super::step::parse_size)]
    namespace_quota: usize,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token that publishes into one namespace; printed once, on the last
    /// line (only its hash is stored).
    Create {
        /// The namespace it publishes into (`acme` for `acme/NAME`).
        #[arg(long)]
        namespace: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

impl StateArgs {
    fn config(&self, size_limit: u64, namespace_quota: u64) -> ServeConfig {
        ServeConfig {
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| hoist_policy::paths::home().join("registry")),
            database_url: self.database_url.clone().filter(|u| !u.is_empty()),
            blob_store: self.blob_store.clone().filter(|u| !u.is_empty()),
            size_limit,
            namespace_quota,
        }
    }
}

/// The runtime as the registry's inspector: load the component (compiled into the
/// cache) and call `describe()` with no capabilities, under the runtime's deadline.
fn inspector(runtime: Arc<Runtime>) -> Inspector {
    Arc::new(move |bytes: Vec<u8>| {
        let runtime = runtime.clone();
        Box::pin(async move {
            let plugin = runtime
                .load(&bytes, "upload", false)
                .await
                .map_err(|e| e.to_string())?;
            // Described once: not kept loaded on a server that lives for months.
            runtime.forget(&plugin.digest);
            let d = &plugin.description;
            Ok(Inspected {
                step_name: d.name.clone(),
                summary: d.summary.clone(),
                input_schema: d.input_schema.clone(),
                capabilities: d.capabilities.iter().map(ToString::to_string).collect(),
                wit_version: plugin.wit_version.clone(),
            })
        })
    })
}

pub(crate) async fn registry(cmd: &RegistryCommand) -> anyhow::Result<()> {
    match cmd {
        RegistryCommand::Serve(args) => serve(args).await,
        RegistryCommand::Token(TokenCommand::Create { namespace, state }) => {
            hoist_policy::package::PackageName::new(namespace, "x")
                .map_err(|e| anyhow::anyhow!("namespace `{namespace}`: {}", e.why))?;
            let config = state.config(
                hoist_registry::DEFAULT_SIZE_LIMIT,
                hoist_registry::DEFAULT_NAMESPACE_QUOTA,
            );
            let registry = config
                .open(inspector_unused())
                .await
                .map_err(anyhow::Error::msg)?;
            let token = registry.db.create_token(namespace).await?;
            eprintln!(
                "a token publishing into `{namespace}` (shown once; use it as HOIST_REGISTRY_TOKEN):"
            );
            println!("{token}");
            Ok(())
        }
    }
}

/// Token commands open the registry's state without serving: nothing is inspected.
fn inspector_unused() -> Inspector {
    Arc::new(|_| Box::pin(async { Err("not serving".to_string()) }))
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args
        .state
        .config(args.max_size as u64, args.namespace_quota as u64);
    let runtime = Arc::new(
        Runtime::new(args.cache.runtime_config())
            .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e:#}"))?,
    );
    let registry = config
        .open(inspector(runtime))
        .await
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    println!(
        "hoist registry serving http://{addr} (data in {}, database {}, blobs in {})",
        config.data_dir.display(),
        hoist_registry::db::masked(&config.database_url()),
        registry.blobs.describe()
    );
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("stopping: finishing the requests in progress");
    };
    hoist_registry::serve(registry, listener, shutdown)
        .await
        .context("the registry server stopped")
}
