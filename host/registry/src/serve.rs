//! Serving a registry: where it keeps its state, opening it, binding it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Inspector, Registry, RegistryDb, blobs, s3, server};

/// The largest component a registry accepts by default (64 MiB: a componentize-py
/// step is ~18 MiB).
pub const DEFAULT_SIZE_LIMIT: u64 = 64 << 20;

/// The most bytes of blobs one namespace may hold by default (1 GiB: fifty versions of
/// a componentize-py step; an operator raises it with `--namespace-quota`).
pub const DEFAULT_NAMESPACE_QUOTA: u64 = 1 << 30;

/// Where a registry keeps its state.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The data directory (SQLite database and blobs unless said otherwise).
    pub data_dir: PathBuf,
    /// A database URL instead of `DATA_DIR/registry.db`.
    pub database_url: Option<String>,
    /// The largest blob accepted.
    pub size_limit: u64,
    /// The most bytes of blobs one namespace may hold (uploads in progress included).
    pub namespace_quota: u64,
    /// Finished blobs in an S3 bucket (`s3://BUCKET[/PREFIX]?endpoint=URL`) instead of
    /// `DATA_DIR/blobs`.
    pub blob_store: Option<String>,
}

impl ServeConfig {
    /// The database URL: the given one, else SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("registry.db").display()
            )
        })
    }

    /// Open the database and the blob store (creating the data directory, 0700).
    pub async fn open(&self, inspect: Inspector) -> Result<Registry, String> {
        create_private_dir(&self.data_dir)?;
        let db = RegistryDb::open(&self.database_url())
            .await
            .map_err(|e| e.to_string())?;
        let mut blobs = blobs::BlobStore::open(&self.data_dir.join("blobs"), self.size_limit)
            .map_err(|e| {
                format!(
                    "cannot open the blob store in {}: {e}",
                    self.data_dir.display()
                )
            })?;
        if let Some(url) = &self.blob_store {
            let bucket = s3::S3Blobs::from_url(url)?;
            // Checked now: a wrong key or bucket is said at start, not at the first publish.
            bucket
                .check()
                .await
                .map_err(|e| format!("cannot use the blob store: {e}"))?;
            blobs = blobs.with_remote(bucket);
        }
        Ok(Registry::new(db, blobs, inspect, self.namespace_quota))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))
}

/// Serve `registry` on `listener` until `shutdown` resolves.
pub async fn serve(
    registry: Registry,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = server::router(Arc::new(registry));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
