//! The registry's metadata through sqlx: SQLite in the data directory by default,
//! PostgreSQL by URL. Tokens (stored as their SHA-256, never in clear), manifests, and
//! the versions of each package with what the registry read from the component.
//!
//! A version is one row, inserted in the same transaction as its manifest: it is
//! visible whole or not at all, and the primary key makes a version immutable (a second
//! publish of it, concurrent or not, fails on the key and is answered 409).
//!
//! Blobs are stored once on disk, but belong to the repositories they were uploaded to
//! (`registry_repo_blobs`): a repository serves, and its manifests may name, only its
//! own blobs, and a namespace's quota counts the distinct blobs of its repositories.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::name::PackageName;
pub use crate::record::{SignatureRecord, VersionRecord};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS registry_tokens (hash TEXT PRIMARY KEY, namespace TEXT NOT NULL, \
     created TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS registry_manifests (repository TEXT NOT NULL, digest TEXT NOT NULL, \
     body TEXT NOT NULL, PRIMARY KEY (repository, digest))",
    "CREATE TABLE IF NOT EXISTS registry_versions (namespace TEXT NOT NULL, name TEXT NOT NULL, \
     version TEXT NOT NULL, manifest_digest TEXT NOT NULL, component_digest TEXT NOT NULL, \
     size BIGINT NOT NULL, step_name TEXT NOT NULL, summary TEXT NOT NULL, \
     input_schema TEXT NOT NULL, capabilities TEXT NOT NULL, wit_version TEXT NOT NULL, \
     yanked BIGINT NOT NULL, published TEXT NOT NULL, PRIMARY KEY (namespace, name, version))",
    "CREATE TABLE IF NOT EXISTS registry_signatures (namespace TEXT NOT NULL, name TEXT NOT NULL, \
     version TEXT NOT NULL, public_key TEXT NOT NULL, signature TEXT NOT NULL, \
     created TEXT NOT NULL, PRIMARY KEY (namespace, name, version, public_key))",
    "CREATE TABLE IF NOT EXISTS registry_repo_blobs (namespace TEXT NOT NULL, name TEXT NOT NULL, \
     digest TEXT NOT NULL, size BIGINT NOT NULL, created TEXT NOT NULL, \
     PRIMARY KEY (namespace, name, digest))",
    // One-off data migrations done, by name (the tables above are created idempotently).
    "CREATE TABLE IF NOT EXISTS registry_migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)",
];

/// The migration giving every repository the blobs its published manifests name (a
/// registry from before blobs belonged to repositories keeps serving its packages).
const REPO_BLOBS_MIGRATION: &str = "repo-blobs-from-manifests";

/// A database error (the URL's password masked).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Could not open or create the tables.
    #[error("cannot open the registry database {url}: {source}")]
    Open {
        /// The URL, password masked.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// The version exists already.
    #[error("{0} is already published; a published version never changes (publish a new version)")]
    Exists(String),
    /// A query.
    #[error("registry database: {0}")]
    Query(#[from] sqlx::Error),
}

/// The metadata database.
#[derive(Clone, Debug)]
pub struct RegistryDb {
    pool: AnyPool,
    /// Manifests already read, by (repository, tag or digest). A published version and
    /// its manifest never change, so an entry is never stale, on any replica; misses are
    /// not kept (the version may be published later).
    manifests: std::sync::Arc<std::sync::Mutex<ManifestCache>>,
    /// Blobs known to belong to a repository, by (repository, digest) → size. A blob
    /// never leaves a repository, so an entry is never stale; misses are not kept.
    repo_blobs: std::sync::Arc<std::sync::Mutex<HashMap<(String, String), u64>>>,
}

/// (repository, reference) → (digest, body).
type ManifestCache = HashMap<(String, String), (String, String)>;

/// At most this many manifests are kept in memory (then the cache starts again).
const MANIFEST_CACHE: usize = 4096;

/// At most this many (repository, blob) pairs are kept in memory (then it starts again).
const REPO_BLOB_CACHE: usize = 16384;

/// `url` with a password replaced by `********`.
pub fn masked(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:********{}", &url[..s + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// The stored form of a token: its SHA-256 (a token is 32 random bytes, so a plain hash
/// is enough; nothing can be learned from the table).
fn token_hash(token: &str) -> String {
    crate::oci::hex(&Sha256::digest(token.as_bytes()))
}

/// Give each repository the blobs its stored manifests name (once: see
/// [`REPO_BLOBS_MIGRATION`]). Idempotent, so replicas starting together may both run it.
async fn backfill_repo_blobs(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let done = sqlx::query("SELECT name FROM registry_migrations WHERE name = $1")
        .bind(REPO_BLOBS_MIGRATION)
        .fetch_optional(pool)
        .await?;
    if done.is_some() {
        return Ok(());
    }
    let now = hoist_policy::time::now_rfc3339();
    let rows = sqlx::query("SELECT repository, body FROM registry_manifests")
        .fetch_all(pool)
        .await?;
    for row in &rows {
        let repository: String = row.try_get("repository")?;
        let body: String = row.try_get("body")?;
        let (Some((ns, name)), Ok(m)) = (
            repository.split_once('/'),
            serde_json::from_str::<crate::oci::Manifest>(&body),
        ) else {
            continue;
        };
        for d in std::iter::once(&m.config).chain(&m.layers) {
            if !crate::oci::is_digest(&d.digest) {
                continue;
            }
            sqlx::query(
                "INSERT INTO registry_repo_blobs (namespace, name, digest, size, created) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, name, digest) DO NOTHING",
            )
            .bind(ns)
            .bind(name)
            .bind(&d.digest)
            .bind(i64::try_from(d.size).unwrap_or(i64::MAX))
            .bind(&now)
            .execute(pool)
            .await?;
        }
    }
    sqlx::query(
        "INSERT INTO registry_migrations (name, applied) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(REPO_BLOBS_MIGRATION)
    .bind(&now)
    .execute(pool)
    .await?;
    Ok(())
}

const VERSION_COLUMNS: &str = "namespace, name, version, manifest_digest, component_digest, size, \
     step_name, summary, input_schema, capabilities, wit_version, yanked, published";

fn record(row: &sqlx::any::AnyRow) -> Result<VersionRecord, sqlx::Error> {
    let ns: String = row.try_get("namespace")?;
    let name: String = row.try_get("name")?;
    let schema: String = row.try_get("input_schema")?;
    let caps: String = row.try_get("capabilities")?;
    Ok(VersionRecord {
        package: format!("{ns}/{name}"),
        version: row.try_get("version")?,
        manifest_digest: row.try_get("manifest_digest")?,
        component_digest: row.try_get("component_digest")?,
        size: u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or(0),
        step_name: row.try_get("step_name")?,
        summary: row.try_get("summary")?,
        input_schema: serde_json::from_str(&schema).unwrap_or(serde_json::Value::Null),
        capabilities: serde_json::from_str(&caps).unwrap_or_default(),
        wit_version: row.try_get("wit_version")?,
        yanked: row.try_get::<i64, _>("yanked")? != 0,
        published: row.try_get("published")?,
        signatures: Vec::new(),
    })
}

impl RegistryDb {
    /// Open by URL (`sqlite://...?mode=rwc` or `postgres://...`) and create the tables.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        install_default_drivers();
        let err = |source| DbError::Open {
            url: masked(url),
            source,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(err)?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await.map_err(err)?;
        }
        backfill_repo_blobs(&pool).await.map_err(err)?;
        Ok(Self {
            pool,
            manifests: Default::default(),
            repo_blobs: Default::default(),
        })
    }

    /// Record that `repo` has the blob `digest` (uploaded to it, `size` bytes).
    pub async fn add_repo_blob(
        &self,
        repo: &PackageName,
        digest: &str,
        size: u64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO registry_repo_blobs (namespace, name, digest, size, created) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, name, digest) DO NOTHING",
        )
        .bind(&repo.namespace)
        .bind(&repo.name)
        .bind(digest)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(hoist_policy::time::now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The size of `repo`'s blob `digest`, if the blob is `repo`'s.
    pub async fn repo_blob_size(
        &self,
        repo: &PackageName,
        digest: &str,
    ) -> Result<Option<u64>, DbError> {
        let key = (repo.repository(), digest.to_string());
        let lock = || self.repo_blobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(size) = lock().get(&key) {
            return Ok(Some(*size));
        }
        let row = sqlx::query(
            "SELECT size FROM registry_repo_blobs WHERE namespace = $1 AND name = $2 AND digest = $3",
        )
        .bind(&repo.namespace)
        .bind(&repo.name)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let size = u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or(0);
        let mut cache = lock();
        if cache.len() >= REPO_BLOB_CACHE {
            cache.clear();
        }
        cache.insert(key, size);
        Ok(Some(size))
    }

    /// Whether some repository of `namespace` has the blob `digest`.
    pub async fn namespace_has_blob(&self, namespace: &str, digest: &str) -> Result<bool, DbError> {
        let row = sqlx::query(
            "SELECT size FROM registry_repo_blobs WHERE namespace = $1 AND digest = $2 LIMIT 1",
        )
        .bind(namespace)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The bytes of the distinct blobs `namespace`'s repositories have (its quota's use).
    pub async fn namespace_bytes(&self, namespace: &str) -> Result<u64, DbError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS total FROM \
             (SELECT digest, MAX(size) AS size FROM registry_repo_blobs WHERE namespace = $1 \
              GROUP BY digest) AS t",
        )
        .bind(namespace)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("total")?).unwrap_or(0))
    }

    /// Create a token for publishing into `namespace`; the token (shown once).
    pub async fn create_token(&self, namespace: &str) -> Result<String, DbError> {
        let token = format!(
            "hoist_{}",
            crate::blobs::random_hex(32).map_err(|e| DbError::Query(sqlx::Error::Io(e)))?
        );
        sqlx::query("INSERT INTO registry_tokens (hash, namespace, created) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(namespace)
            .bind(hoist_policy::time::now_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The namespace a token may publish into, if it is a token.
    pub async fn token_namespace(&self, token: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT namespace FROM registry_tokens WHERE hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("namespace")).transpose()?)
    }

    /// Record a published version and its manifest, atomically; [`DbError::Exists`] if
    /// the version is published already.
    pub async fn publish(&self, v: &VersionRecord, manifest: &str) -> Result<(), DbError> {
        let (ns, name) = v.package.split_once('/').unwrap_or((&v.package, ""));
        let exists = || DbError::Exists(format!("{}@{}", v.package, v.version));
        // The version row first: its key is the lock (a concurrent publish of the same
        // version waits for this transaction, then fails on the key). No read before
        // the write, so SQLite never has to upgrade a read lock.
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO registry_versions ({VERSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(ns)
        .bind(name)
        .bind(&v.version)
        .bind(&v.manifest_digest)
        .bind(&v.component_digest)
        .bind(i64::try_from(v.size).unwrap_or(i64::MAX))
        .bind(&v.step_name)
        .bind(&v.summary)
        .bind(v.input_schema.to_string())
        .bind(serde_json::to_string(&v.capabilities).unwrap_or_default())
        .bind(&v.wit_version)
        .bind(i64::from(v.yanked))
        .bind(&v.published)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Err(exists()),
            Err(e) => return Err(e.into()),
        }
        sqlx::query(
            "INSERT INTO registry_manifests (repository, digest, body) VALUES ($1, $2, $3) \
             ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(&v.package)
        .bind(&v.manifest_digest)
        .bind(manifest)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.map_err(|e| match e {
            sqlx::Error::Database(ref d) if d.is_unique_violation() => exists(),
            e => e.into(),
        })
    }

    /// The versions of a package, newest first (semver order).
    pub async fn versions(&self, package: &PackageName) -> Result<Vec<VersionRecord>, DbError> {
        // One round trip: each version with its signatures (a row per signature, one
        // with NULLs for a version nobody signed), in signing order.
        static QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let columns: Vec<String> = VERSION_COLUMNS
                .split(',')
                .map(|c| format!("v.{}", c.trim()))
                .collect();
            format!(
                "SELECT {}, s.public_key AS sig_key, s.signature AS sig_value \
                 FROM registry_versions v LEFT JOIN registry_signatures s \
                 ON s.namespace = v.namespace AND s.name = v.name AND s.version = v.version \
                 WHERE v.namespace = $1 AND v.name = $2 \
                 ORDER BY v.version, s.created, s.public_key",
                columns.join(", ")
            )
        });
        let rows = sqlx::query(&QUERY)
            .bind(&package.namespace)
            .bind(&package.name)
            .fetch_all(&self.pool)
            .await?;
        let mut v: Vec<VersionRecord> = Vec::new();
        for row in &rows {
            let version: String = row.try_get("version")?;
            if v.last().is_none_or(|r| r.version != version) {
                v.push(record(row)?);
            }
            let key: Option<String> = row.try_get("sig_key")?;
            let value: Option<String> = row.try_get("sig_value")?;
            if let (Some(public_key), Some(signature), Some(rec)) = (key, value, v.last_mut()) {
                rec.signatures.push(SignatureRecord {
                    public_key,
                    signature,
                });
            }
        }
        v.sort_by(|a, b| {
            let (a, b) = (
                semver::Version::parse(&a.version).ok(),
                semver::Version::parse(&b.version).ok(),
            );
            b.cmp(&a)
        });
        Ok(v)
    }

    /// Add a signature to a version (the caller verified it); a key signs a version
    /// once ([`DbError::Exists`] after that).
    pub async fn add_signature(
        &self,
        package: &PackageName,
        version: &str,
        sig: &SignatureRecord,
    ) -> Result<(), DbError> {
        let done = sqlx::query(
            "INSERT INTO registry_signatures (namespace, name, version, public_key, signature, created) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&package.namespace)
        .bind(&package.name)
        .bind(version)
        .bind(&sig.public_key)
        .bind(&sig.signature)
        .bind(hoist_policy::time::now_rfc3339())
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(DbError::Exists(
                format!("a signature by {} on {package}@{version}", sig.public_key),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Mark a version yanked (or not); whether it exists.
    pub async fn set_yanked(
        &self,
        package: &PackageName,
        version: &str,
        yanked: bool,
    ) -> Result<bool, DbError> {
        let res = sqlx::query(
            "UPDATE registry_versions SET yanked = $1 WHERE namespace = $2 AND name = $3 AND version = $4",
        )
        .bind(i64::from(yanked))
        .bind(&package.namespace)
        .bind(&package.name)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Packages whose name or summary contains `query` (case-insensitive), with their
    /// newest version; every package for an empty query.
    pub async fn search(&self, query: &str) -> Result<Vec<VersionRecord>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM registry_versions ORDER BY namespace, name"
        ))
        .fetch_all(&self.pool)
        .await?;
        let q = query.to_lowercase();
        let mut newest: std::collections::BTreeMap<String, VersionRecord> = Default::default();
        for row in &rows {
            let r = record(row)?;
            let hit = q.is_empty()
                || r.package.contains(&q)
                || r.summary.to_lowercase().contains(&q)
                || r.capabilities.iter().any(|c| c.to_lowercase().contains(&q));
            if !hit {
                continue;
            }
            // The newest version a range would choose (not yanked); a package whose
            // every version is yanked still shows, by its newest.
            let rank = |v: &VersionRecord| (!v.yanked, semver::Version::parse(&v.version).ok());
            let newer = newest
                .get(&r.package)
                .is_none_or(|cur| rank(&r) > rank(cur));
            if newer {
                newest.insert(r.package.clone(), r);
            }
        }
        Ok(newest.into_values().collect())
    }

    /// A manifest of `package` by digest or by tag (a version): its digest and body.
    pub async fn manifest(
        &self,
        package: &PackageName,
        reference: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        let key = (package.repository(), reference.to_string());
        let lock = || self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = lock().get(&key) {
            return Ok(Some(hit.clone()));
        }
        let found = self.manifest_from_db(package, reference).await?;
        if let Some(m) = &found {
            let mut cache = lock();
            if cache.len() >= MANIFEST_CACHE {
                cache.clear();
            }
            cache.insert(key, m.clone());
        }
        Ok(found)
    }

    async fn manifest_from_db(
        &self,
        package: &PackageName,
        reference: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        let digest = if crate::oci::is_digest(reference) {
            reference.to_string()
        } else {
            let row = sqlx::query(
                "SELECT manifest_digest FROM registry_versions \
                 WHERE namespace = $1 AND name = $2 AND version = $3",
            )
            .bind(&package.namespace)
            .bind(&package.name)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(r) => r.try_get("manifest_digest")?,
                None => return Ok(None),
            }
        };
        let row = sqlx::query(
            "SELECT body FROM registry_manifests WHERE repository = $1 AND digest = $2",
        )
        .bind(package.repository())
        .bind(&digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| r.try_get::<String, _>("body"))
            .transpose()?
            .map(|body| (digest, body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: &str) -> VersionRecord {
        VersionRecord {
            package: "acme/x".into(),
            version: version.into(),
            manifest_digest: crate::oci::digest_of(version.as_bytes()),
            component_digest: crate::oci::digest_of(b"c"),
            size: 1,
            step_name: "x".into(),
            summary: "Does x".into(),
            input_schema: serde_json::json!({"type": "object"}),
            capabilities: vec!["process:git".into()],
            wit_version: "0.1.0".into(),
            yanked: false,
            published: "2026-12-03T00:00:00Z".into(),
            signatures: Vec::new(),
        }
    }

    #[tokio::test]
    async fn manifests_are_read_once_and_misses_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let db = RegistryDb::open(&url).await.unwrap();
        let pkg: PackageName = "acme/x".parse().unwrap();
        assert_eq!(db.manifest(&pkg, "1.0.0").await.unwrap(), None);
        let v = rec("1.0.0");
        db.publish(&v, "{\"m\":1}").await.unwrap();
        let found = db.manifest(&pkg, "1.0.0").await.unwrap().unwrap();
        assert_eq!(found, (v.manifest_digest.clone(), "{\"m\":1}".to_string()));
        // Served from memory from now on: the rows are not read again.
        sqlx::query("DELETE FROM registry_manifests")
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(db.manifest(&pkg, "1.0.0").await.unwrap(), Some(found));
        assert_eq!(db.manifest(&pkg, &v.manifest_digest).await.unwrap(), None);
    }

    #[tokio::test]
    async fn blobs_belong_to_repositories_and_count_once_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let db = RegistryDb::open(&url).await.unwrap();
        let (a, b): (PackageName, PackageName) =
            ("acme/a".parse().unwrap(), "acme/b".parse().unwrap());
        let other: PackageName = "other/a".parse().unwrap();
        let (d1, d2) = (crate::oci::digest_of(b"1"), crate::oci::digest_of(b"2"));
        db.add_repo_blob(&a, &d1, 10).await.unwrap();
        db.add_repo_blob(&a, &d1, 10).await.unwrap();
        db.add_repo_blob(&b, &d1, 10).await.unwrap();
        db.add_repo_blob(&b, &d2, 5).await.unwrap();
        assert_eq!(db.repo_blob_size(&a, &d1).await.unwrap(), Some(10));
        assert_eq!(db.repo_blob_size(&a, &d2).await.unwrap(), None);
        assert_eq!(db.repo_blob_size(&other, &d1).await.unwrap(), None);
        assert!(db.namespace_has_blob("acme", &d2).await.unwrap());
        assert!(!db.namespace_has_blob("other", &d1).await.unwrap());
        assert_eq!(db.namespace_bytes("acme").await.unwrap(), 15);
        assert_eq!(db.namespace_bytes("other").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_registry_from_before_gives_its_packages_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let db = RegistryDb::open(&url).await.unwrap();
        let config = crate::oci::wasm_config(&crate::oci::digest_of(b"wasm"));
        let m = crate::oci::package_manifest(&config, b"wasm", "1.0.0", "");
        let mut v = rec("1.0.0");
        v.manifest_digest = crate::oci::digest_of(b"m");
        db.publish(&v, &serde_json::to_string(&m).unwrap())
            .await
            .unwrap();
        // As a registry from before the table was filled: no blobs, no migration done.
        for stmt in [
            "DELETE FROM registry_repo_blobs",
            "DELETE FROM registry_migrations",
        ] {
            sqlx::query(stmt).execute(&db.pool).await.unwrap();
        }
        let db = RegistryDb::open(&url).await.unwrap();
        let pkg: PackageName = "acme/x".parse().unwrap();
        assert_eq!(
            db.repo_blob_size(&pkg, &m.layers[0].digest).await.unwrap(),
            Some(4)
        );
        assert_eq!(
            db.repo_blob_size(&pkg, &m.config.digest).await.unwrap(),
            Some(config.len() as u64)
        );
    }

    #[tokio::test]
    async fn versions_are_immutable_and_tokens_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let db = RegistryDb::open(&url).await.unwrap();
        let pkg: PackageName = "acme/x".parse().unwrap();
        db.publish(&rec("1.0.0"), "{}").await.unwrap();
        db.publish(&rec("1.10.0"), "{}").await.unwrap();
        db.publish(&rec("1.2.0"), "{}").await.unwrap();
        assert!(matches!(
            db.publish(&rec("1.0.0"), "{}").await,
            Err(DbError::Exists(_))
        ));
        let order: Vec<_> = db
            .versions(&pkg)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(order, ["1.10.0", "1.2.0", "1.0.0"]);
        // Signatures come with their version, in the order they were added.
        for key in ["ed25519:b", "ed25519:a"] {
            let sig = SignatureRecord {
                public_key: key.into(),
                signature: format!("sig-by-{key}"),
            };
            db.add_signature(&pkg, "1.2.0", &sig).await.unwrap();
        }
        let signed: Vec<(String, Vec<String>)> = db
            .versions(&pkg)
            .await
            .unwrap()
            .into_iter()
            .map(|v| {
                (
                    v.version,
                    v.signatures.into_iter().map(|s| s.public_key).collect(),
                )
            })
            .collect();
        assert_eq!(
            signed,
            [
                ("1.10.0".to_string(), vec![]),
                (
                    "1.2.0".to_string(),
                    vec!["ed25519:b".into(), "ed25519:a".into()]
                ),
                ("1.0.0".to_string(), vec![]),
            ]
        );
        assert_eq!(db.search("does").await.unwrap()[0].version, "1.10.0");
        assert!(db.search("nothing-like-it").await.unwrap().is_empty());

        let token = db.create_token("acme").await.unwrap();
        assert_eq!(
            db.token_namespace(&token).await.unwrap().as_deref(),
            Some("acme")
        );
        assert_eq!(db.token_namespace("hoist_bogus").await.unwrap(), None);
        let raw = std::fs::read(dir.path().join("r.db")).unwrap();
        assert!(
            !raw.windows(token.len()).any(|w| w == token.as_bytes()),
            "token stored in clear"
        );
    }
}
